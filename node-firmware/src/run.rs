//! From power-on to the node plane: identity, pairing at first boot, then connection
//! after connection.

use chacha20::ChaCha20Rng;
use protocol_core::session::Config;
use rand_core::{CryptoRng, SeedableRng};
use transport_embedded::identity::RECORD_LEN;
use transport_embedded::{
    Backoff, Dialer, IdentityStore, LoadError, Node, NodeKey, NodeOptions, PairError, PairOptions,
    PairingBuffers, RecordError, Refused, SessionBuffers, load_identity, pair, run_node,
    save_identity,
};

use crate::app::{FirmwareApp, State};
use crate::board::{Board, Console};
use crate::provision::{ProvisionError, parse_invitation};

/// Bytes of messages the node keeps for replay until the daemon acknowledges them.
pub const REPLAY_BYTES: usize = 4096;

/// The node's session: 2 KiB frames, state in RAM.
pub const CONFIG: Config = Config::embedded(REPLAY_BYTES);

/// The one arena a board gives [`run`]: pairing's buffers, then the session's.
pub const ARENA_LEN: usize = {
    let pairing = PairingBuffers::arena_len();
    let session = SessionBuffers::arena_len(&CONFIG);
    if pairing > session { pairing } else { session }
};

/// How many times a pairing that failed on the network is tried again.
const PAIR_ATTEMPTS: u32 = 5;

/// A board's choices.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'s> {
    /// The pairing invitation given at build or flash time; without one, the console is
    /// asked at first boot.
    pub invitation: Option<&'s str>,
    /// A `sensor.temperature` reading every so many milliseconds (0: none).
    pub sensor_every_ms: u64,
    /// Renew the certificate this long before it ends.
    pub renew_window_s: u64,
    pub backoff: Backoff,
}

impl Default for Settings<'_> {
    fn default() -> Self {
        Self {
            invitation: None,
            sensor_every_ms: 10_000,
            renew_window_s: 30 * 24 * 3600,
            backoff: Backoff::default(),
        }
    }
}

/// Why [`run`] returned.
#[derive(Debug)]
pub enum Exit<E> {
    /// The board asked to stop, and the daemon acknowledged everything first.
    Stopped,
    /// The daemon refused the node for good (revoked, certificate refused, another
    /// daemon at its address...).
    Refused(Refused),
    /// The identity store failed.
    Store(E),
    /// The store holds a record that is not this firmware's identity; it is left alone.
    Record(RecordError),
    /// No pairing invitation, or one that cannot be read.
    Provision(ProvisionError),
    /// Pairing failed.
    Pair(PairError),
    /// The arena does not fit the session.
    Setup,
}

impl<E: core::fmt::Debug> core::fmt::Display for Exit<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Exit::Stopped => f.write_str("stopped; the daemon acknowledged everything"),
            Exit::Refused(r) => r.fmt(f),
            Exit::Store(e) => write!(f, "identity store failed: {e:?}"),
            Exit::Record(e) => write!(f, "{e}; erase it to pair again"),
            Exit::Provision(e) => e.fmt(f),
            Exit::Pair(e) => write!(f, "pairing failed: {e}"),
            Exit::Setup => f.write_str("the arena is smaller than ARENA_LEN"),
        }
    }
}

/// The firmware's RNG: ChaCha20 seeded from the board's entropy source.
pub fn rng_from_seed(seed: [u8; 32]) -> ChaCha20Rng {
    ChaCha20Rng::from_seed(seed)
}

/// Runs the node until it is refused or asked to stop; see the crate's docs.
pub async fn run<B, C, S, D, R>(
    board: &mut B,
    console: &mut C,
    store: &mut S,
    dialer: &mut D,
    rng: &mut R,
    arena: &mut [u8],
    settings: &Settings<'_>,
) -> Exit<S::Error>
where
    B: Board,
    C: Console,
    S: IdentityStore,
    D: Dialer,
    R: CryptoRng,
{
    let mut identity = match load(store).await {
        Ok(identity) => identity,
        Err(LoadError::Record(RecordError::Blank)) => {
            let identity = match first_boot(console, dialer, rng, arena, settings).await {
                Ok(identity) => identity,
                Err(exit) => return exit,
            };
            if let Err(e) = save(store, &identity).await {
                return Exit::Store(e);
            }
            identity
        }
        Err(LoadError::Record(e)) => return Exit::Record(e),
        Err(LoadError::Store(e)) => return Exit::Store(e),
    };
    console.say(format_args!(
        "node id {}, daemon {}",
        identity.device_id(),
        identity.daemon()
    ));
    let Ok(buffers) = SessionBuffers::carve(&CONFIG, arena) else {
        return Exit::Setup;
    };
    let options = NodeOptions::default();
    let mut node = match Node::new(CONFIG, &identity, board.platform(), buffers, options) {
        Ok(node) => node,
        Err(_) => return Exit::Setup,
    };
    let mut state = State::new(settings.sensor_every_ms, settings.renew_window_s);
    loop {
        let mut app = FirmwareApp::new(board, console, &identity, &mut state);
        let outcome = run_node(
            &mut node,
            &identity,
            dialer,
            &mut app,
            rng,
            settings.backoff,
        )
        .await;
        if let Some(renewed) = state.renewed.take() {
            if let Err(e) = save(store, &renewed).await {
                // The current certificate is still valid; the next connection asks again.
                console.say(format_args!(
                    "storing the renewed certificate failed: {e:?}"
                ));
            } else {
                console.say(format_args!("renewed certificate stored"));
                identity = renewed;
            }
        }
        match outcome {
            Err(refused) => return Exit::Refused(refused),
            Ok(()) if state.drained => {
                console.say(format_args!(
                    "stopped after {} reading(s), all acknowledged",
                    state.sensor.queued()
                ));
                return Exit::Stopped;
            }
            Ok(()) => {}
        }
    }
}

// The record is scratch for one load or save: held in these futures, not across the
// whole run (the run's future is static RAM on a board).
async fn load<S: IdentityStore>(
    store: &mut S,
) -> Result<transport_embedded::Identity, LoadError<S::Error>> {
    load_identity(store, &mut [0u8; RECORD_LEN]).await
}

async fn save<S: IdentityStore>(
    store: &mut S,
    identity: &transport_embedded::Identity,
) -> Result<(), S::Error> {
    save_identity(store, identity, &mut [0u8; RECORD_LEN]).await
}

/// Pairs from the invitation in `settings`, or one read from the console.
async fn first_boot<C, D, R, E>(
    console: &mut C,
    dialer: &mut D,
    rng: &mut R,
    arena: &mut [u8],
    settings: &Settings<'_>,
) -> Result<transport_embedded::Identity, Exit<E>>
where
    C: Console,
    D: Dialer,
    R: CryptoRng,
{
    let mut typed = [0u8; 256];
    let text = match settings.invitation {
        Some(text) => text,
        None => {
            console.say(format_args!(
                "not paired: enter a tern://pair?... URI or CODE@HOST:PORT"
            ));
            match console.read_line(&mut typed).await {
                Some(line) => line,
                None => return Err(Exit::Provision(ProvisionError::NoAddress)),
            }
        }
    };
    let invitation = parse_invitation(text).map_err(Exit::Provision)?;
    let key = NodeKey::generate(rng);
    let mut attempt = 0;
    loop {
        let buffers = PairingBuffers::carve(arena).map_err(|_| Exit::Setup)?;
        let mut waiting = || console.say(format_args!("waiting for an operator to approve"));
        let paired = pair(
            dialer,
            &invitation,
            &key,
            buffers,
            rng,
            PairOptions::default(),
            &mut waiting,
        )
        .await;
        match paired {
            Ok(identity) => {
                console.say(format_args!("paired: node id {}", identity.device_id()));
                return Ok(identity);
            }
            Err(
                e @ (PairError::Dial(_)
                | PairError::HandshakeTimeout
                | PairError::Broken
                | PairError::ConnectionClosed),
            ) if attempt + 1 < PAIR_ATTEMPTS => {
                attempt += 1;
                console.say(format_args!(
                    "pairing attempt {attempt} failed: {e}; trying again"
                ));
                embassy_time::Timer::after_secs(2 * u64::from(attempt)).await;
            }
            Err(e) => return Err(Exit::Pair(e)),
        }
    }
}
