//! The node plane: a [`Node`] (its session, which outlives connections, and its static
//! buffers), one connection with [`run_session`], and connection after connection with
//! [`run_node`] until the daemon refuses the node for good or the application stops it.

use core::cell::RefCell;

use embassy_time::{Duration, with_timeout};
use embedded_io_async::{Read, Write};
use embedded_tls::{Aes128GcmSha256, TlsConnection};
use heapless::String;
use protocol_core::backoff::Backoff;
use protocol_core::frame::FrameError;
use protocol_core::pump::{Machine, Offer, Pump, ReadBuf, Slots};
use protocol_core::session::{
    BatchId, Config, JournalOp, NodeSession, SetupError, Transmit, TransmitError,
};
use protocol_core::time::Instant;
use protocol_core::wire::{ErrorCode, GoodbyeReason, Message, VersionRange, decode_message};
use rand_core::CryptoRng;

use crate::buffers::{BufferTooSmall, SessionBuffers};
use crate::dial::{Connection, DialError, DialFailed, Dialer, dial_within};
use crate::drive::{self, DriveEnd, Inbound, ReadEnd, Turn, now, pump_connection, read_into};
use crate::identity::{Identity, MAX_DEVICE_ID_LEN};
use crate::tls::{
    ClientAuth, NodeProvider, ServerCheck, SharedSocket, TlsFailure, VerifyRefusal, open,
    tls_write_len,
};

/// The session every node-plane connection of a [`Node`] drives.
pub type Session<'b> = NodeSession<&'b mut [u8]>;

/// Time to say goodbye to TLS and TCP once a connection is over.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// What the application does on the node plane. Called by the driver at the pump's
/// `Events` step (after every input, with the session's storage lent, so a command that
/// sends does not meet `NoStorage`).
pub trait NodeApp {
    /// The application's turn: take every event (`session.poll_event()` until `None`)
    /// and give commands (`register`, `send_event`, `complete`, ...). Events borrow the
    /// session; copy what must outlive one.
    fn on_events(&mut self, session: &mut NodeSession<&mut [u8]>, now: Instant);

    /// When the application next wants a turn without any input (a periodic sensor
    /// reading, say). Asked before every wait; each instant is served once.
    fn next_wake(&self) -> Option<Instant> {
        None
    }

    /// How a connection attempt of [`run_node`] ended (for the board's log). The next
    /// attempt follows after a backoff, unless the daemon refused the node for good or
    /// [`keep_running`](Self::keep_running) says no.
    fn connection_ended(&mut self, outcome: &Result<Ended, LinkError>) {
        let _ = outcome;
    }

    /// Asked after every connection ends (after `connection_ended`): `false` makes
    /// `run_node` return `Ok(())` instead of reconnecting (a graceful shutdown, or a
    /// renewed certificate to store before the next connection).
    fn keep_running(&mut self) -> bool {
        true
    }
}

/// What the daemon said when it closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerClose {
    Error(ErrorCode),
    Goodbye(GoodbyeReason),
}

impl PeerClose {
    /// The refusals that will not heal by reconnecting.
    fn refusal(self) -> Option<Refused> {
        match self {
            PeerClose::Error(ErrorCode::Revoked) | PeerClose::Goodbye(GoodbyeReason::Revoked) => {
                Some(Refused::Revoked)
            }
            PeerClose::Error(ErrorCode::Unauthorized) => Some(Refused::Unauthorized),
            PeerClose::Error(ErrorCode::VersionMismatch { client, server }) => {
                Some(Refused::VersionMismatch {
                    node: client,
                    daemon: server,
                })
            }
            _ => None,
        }
    }
}

/// How a connection ended without a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// This node's session closed it (a goodbye, an idle or acknowledgement timeout, an
    /// error it sent, or its answer to what the daemon said).
    Closed { daemon: Option<PeerClose> },
    /// The daemon closed TLS or TCP.
    DaemonClosed { daemon: Option<PeerClose> },
}

/// A refusal that reconnecting will not heal: [`run_node`] stops and reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The daemon revoked this node (`Error(Revoked)`, `Goodbye(Revoked)`, or a
    /// `certificate_revoked` alert during the handshake). Pair again.
    Revoked,
    /// The daemon refused this node's certificate at the TLS handshake: revoked, expired,
    /// or not from its CA. TLS 1.3 refuses a client certificate after the client finished
    /// its handshake, with an alert that embedded-tls 0.19 reports without its
    /// description; it is the first thing the daemon sends, and it is authenticated (the
    /// record keys come from the pinned daemon), so it is taken as the refusal. Pair
    /// again.
    Certificate,
    /// The daemon does not accept this node's identity (`Error(Unauthorized)`).
    Unauthorized,
    /// The daemon's certificate is not the one pinned at pairing: another server, or a
    /// daemon whose certificate changed. Pair again if it changed.
    PinMismatch,
    /// The daemon speaks no protocol version this node does.
    VersionMismatch {
        node: VersionRange,
        daemon: VersionRange,
    },
}

impl core::fmt::Display for Refused {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Refused::Revoked => f.write_str("the daemon revoked this node; pair it again"),
            Refused::Certificate => f.write_str(
                "the daemon refused this node's certificate (revoked, expired or not from its CA)",
            ),
            Refused::Unauthorized => f.write_str("the daemon does not accept this node's identity"),
            Refused::PinMismatch => {
                f.write_str("the daemon's certificate is not the one pinned at pairing")
            }
            Refused::VersionMismatch { node, daemon } => write!(
                f,
                "no common protocol version: node speaks {}-{}, daemon {}-{}",
                node.min, node.max, daemon.min, daemon.max
            ),
        }
    }
}

impl core::error::Error for Refused {}

/// How an established connection broke.
#[derive(Debug, Clone, Copy)]
pub enum Broken {
    /// The transport failed.
    Io(embedded_io_async::ErrorKind),
    /// A TLS failure while connected (a record too large for the read buffer: the daemon
    /// does not cap its records).
    Tls(embedded_tls::TlsError),
    /// The daemon sent a TLS alert after data had flowed.
    Alert,
    /// A write made no progress for the session's idle timeout.
    WriteStalled,
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, Copy)]
pub enum LinkError {
    /// The node's buffers or identity do not fit this connection.
    Setup(LinkSetupError),
    /// The daemon could not be reached.
    Dial(DialError),
    /// TCP connect and TLS handshake did not finish in time.
    HandshakeTimeout,
    /// The TLS handshake failed in a way a later attempt may not (an impostor that shows
    /// the daemon's certificate without its key, a transport failure, a malformed message).
    Tls(TlsFailure),
    /// The connection broke.
    Broken(Broken),
    /// The daemon refused the node for good.
    Refused(Refused),
}

impl LinkError {
    /// The refusal, if reconnecting will not heal this.
    pub fn refusal(&self) -> Option<Refused> {
        match self {
            LinkError::Refused(r) => Some(*r),
            _ => None,
        }
    }
}

impl core::fmt::Display for LinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LinkError::Setup(e) => e.fmt(f),
            LinkError::Dial(e) => e.fmt(f),
            LinkError::HandshakeTimeout => f.write_str("connecting to the daemon timed out"),
            LinkError::Tls(e) => e.fmt(f),
            LinkError::Broken(e) => write!(f, "connection broke: {e:?}"),
            LinkError::Refused(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for LinkError {}

/// A node and an identity that do not go together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkSetupError {
    /// The identity names another device than the node's session.
    WrongIdentity,
    /// The TLS write buffer cannot hold the client certificate's record.
    TlsWrite(BufferTooSmall),
}

impl core::fmt::Display for LinkSetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LinkSetupError::WrongIdentity => {
                f.write_str("the identity names another device than the node's session")
            }
            LinkSetupError::TlsWrite(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for LinkSetupError {}

/// Why a [`Node`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeSetupError {
    /// The configuration is journaled (`durable`); a node on this transport keeps its
    /// session in RAM.
    Journaled,
    /// A buffer is smaller than the configuration needs.
    Buffer(BufferTooSmall),
    /// The session refused the configuration or the names.
    Session(SetupError),
}

impl core::fmt::Display for NodeSetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NodeSetupError::Journaled => {
                f.write_str("a journaled session configuration needs a journal store")
            }
            NodeSetupError::Buffer(e) => e.fmt(f),
            NodeSetupError::Session(e) => write!(f, "session setup: {e:?}"),
        }
    }
}

impl core::error::Error for NodeSetupError {}

/// Settings of a node's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeOptions {
    /// TCP connect and TLS handshake together.
    pub handshake_timeout: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// What a connection drives: the session and the buffers the pump lends.
struct Pumped<'b> {
    session: Session<'b>,
    lender: Slots<&'b mut [u8]>,
    rx: RefCell<ReadBuf<&'b mut [u8]>>,
}

/// A node: its session, which outlives connections (a reconnect resumes it), and the
/// static buffers every connection uses.
pub struct Node<'b> {
    pumped: Pumped<'b>,
    tls_read: &'b mut [u8],
    tls_write: &'b mut [u8],
    device_id: String<MAX_DEVICE_ID_LEN>,
    write_limit: Duration,
    options: NodeOptions,
    /// A session came up (hello exchange done) on the last connection.
    came_up: bool,
}

impl core::fmt::Debug for Node<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Node")
            .field("session", &self.pumped.session)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<'b> Node<'b> {
    /// A node for `identity` (its device id names the session) running on `platform`,
    /// with `config` (not journaled: `Config::embedded`, say) and its buffers.
    pub fn new(
        config: Config,
        identity: &Identity,
        platform: &str,
        buffers: SessionBuffers<'b>,
        options: NodeOptions,
    ) -> Result<Self, NodeSetupError> {
        if config.durable {
            return Err(NodeSetupError::Journaled);
        }
        buffers.check(&config).map_err(NodeSetupError::Buffer)?;
        let SessionBuffers {
            storage,
            frame,
            transmit,
            read,
            tls_read,
            tls_write,
        } = buffers;
        let session = NodeSession::new(config, identity.device_id(), platform, Some(storage))
            .map_err(NodeSetupError::Session)?;
        let device_id = String::try_from(identity.device_id())
            .map_err(|_| NodeSetupError::Session(SetupError::NameTooLong))?;
        Ok(Self {
            pumped: Pumped {
                session,
                lender: Slots::new(None, frame, transmit),
                rx: RefCell::new(ReadBuf::new(read)),
            },
            tls_read,
            tls_write,
            device_id,
            write_limit: Duration::from_millis(u64::from(config.idle_timeout_ms)),
            options,
            came_up: false,
        })
    }

    pub fn session(&self) -> &Session<'b> {
        &self.pumped.session
    }

    /// The session, for commands between connections (an event to send when the node
    /// is back, say). Its storage may be with the pump's lender while it holds nothing;
    /// a command then meets `NoStorage`, and waits for the application's next turn.
    pub fn session_mut(&mut self) -> &mut Session<'b> {
        &mut self.pumped.session
    }
}

/// Connects to the daemon `identity` names (TCP, then TLS with the node's certificate,
/// the daemon pinned), drives the node's session until the connection ends, and closes
/// it. The session resumes where it stopped at the next call.
pub async fn run_session<D, A, R>(
    node: &mut Node<'_>,
    identity: &Identity,
    dialer: &mut D,
    app: &mut A,
    rng: &mut R,
) -> Result<Ended, LinkError>
where
    D: Dialer,
    A: NodeApp,
    R: CryptoRng + ?Sized,
{
    if identity.device_id() != node.device_id.as_str() {
        return Err(LinkError::Setup(LinkSetupError::WrongIdentity));
    }
    let needed = tls_write_len(identity.client_cert().len());
    if node.tls_write.len() < needed {
        return Err(LinkError::Setup(LinkSetupError::TlsWrite(BufferTooSmall {
            buffer: crate::buffers::Buffer::TlsWrite,
            needed,
            available: node.tls_write.len(),
        })));
    }
    let limit = node.options.handshake_timeout;
    let (mut conn, remaining) = match dial_within(dialer, identity.daemon(), limit).await {
        Ok(dialed) => dialed,
        Err(DialFailed::Refused(e)) => return Err(LinkError::Dial(e)),
        Err(DialFailed::TimedOut) => return Err(LinkError::HandshakeTimeout),
    };
    let ended = {
        let (reader, writer) = conn.split();
        let (reader, writer) = (RefCell::new(reader), RefCell::new(writer));
        let mut tls: TlsConnection<'_, _, Aes128GcmSha256> = TlsConnection::new(
            SharedSocket::new(&reader, &writer),
            node.tls_read,
            node.tls_write,
        );
        let client = ClientAuth {
            key: identity.key(),
            certificate: identity.client_cert(),
        };
        let mut provider = NodeProvider::new(
            rng,
            ServerCheck::Pinned(identity.server_pin()),
            Some(client),
        );
        match with_timeout(remaining, open(&mut tls, &mut provider)).await {
            Err(_) => Err(LinkError::HandshakeTimeout),
            Ok(Err(failure)) => Err(handshake_failure(failure)),
            Ok(Ok(_)) => {
                let ended = connected(
                    &mut node.pumped,
                    &mut tls,
                    app,
                    node.write_limit,
                    &mut node.came_up,
                )
                .await;
                close_tls(tls).await;
                ended
            }
        }
    };
    conn.close().await;
    ended
}

/// Connection after connection, with an exponential backoff and full jitter (drawn from
/// `rng`, started over once a session came up) between them, each resuming the same
/// session, until the daemon refuses the node for good (`Err` with that refusal) or
/// [`NodeApp::keep_running`] says no after a connection ended (`Ok(())`). Every attempt's outcome goes to
/// [`NodeApp::connection_ended`] first.
pub async fn run_node<D, A, R>(
    node: &mut Node<'_>,
    identity: &Identity,
    dialer: &mut D,
    app: &mut A,
    rng: &mut R,
    backoff: Backoff,
) -> Result<(), Refused>
where
    D: Dialer,
    A: NodeApp,
    R: CryptoRng + ?Sized,
{
    let mut attempt = 0u32;
    loop {
        let started = embassy_time::Instant::now();
        let outcome = run_session(node, identity, dialer, app, rng).await;
        app.connection_ended(&outcome);
        if let Some(refused) = outcome.as_ref().err().and_then(LinkError::refusal) {
            return Err(refused);
        }
        if !app.keep_running() {
            return Ok(());
        }
        // A session that came up says the daemon is back: start over, or a node cut
        // off for long would wait its longest delay after the daemon's next restart.
        if core::mem::take(&mut node.came_up) || backoff.starts_over(started.elapsed().as_millis())
        {
            attempt = 0;
        }
        let delay = backoff.delay_ms(attempt, rng.next_u64());
        attempt = attempt.saturating_add(1);
        embassy_time::Timer::after(Duration::from_millis(delay)).await;
    }
}

/// Says goodbye to TLS (`close_notify`), so the daemon learns the close was ours and not
/// a cut. Not after the daemon's own `close_notify`: embedded-tls 0.19 then sends its
/// alert unencrypted, which the daemon reads as a broken record.
pub(crate) async fn close_tls<S: Read + Write>(mut tls: TlsConnection<'_, S, Aes128GcmSha256>) {
    if tls.is_opened() {
        let _ = with_timeout(CLOSE_LINGER, tls.close()).await;
    }
}

fn handshake_failure(failure: TlsFailure) -> LinkError {
    match failure {
        TlsFailure::Refused(VerifyRefusal::PinMismatch) => LinkError::Refused(Refused::PinMismatch),
        TlsFailure::Alert(embedded_tls::alert::AlertDescription::CertificateRevoked) => {
            LinkError::Refused(Refused::Revoked)
        }
        f if f.certificate_refused() => LinkError::Refused(Refused::Certificate),
        f => LinkError::Tls(f),
    }
}

/// Drives the session over an open TLS connection until it ends.
async fn connected<S, A>(
    pumped: &mut Pumped<'_>,
    tls: &mut TlsConnection<'_, S, Aes128GcmSha256>,
    app: &mut A,
    write_limit: Duration,
    came_up: &mut bool,
) -> Result<Ended, LinkError>
where
    S: Read + Write + Clone,
    A: NodeApp,
{
    let (mut reader, mut writer) = tls.split();
    let inbound = Inbound::new(&pumped.rx);
    let mut watched = Watched {
        session: &mut pumped.session,
        daemon: None,
    };
    let mut turn = AppTurn {
        app,
        came_up: false,
    };
    let mut pump = Pump::new();
    watched.session.handle_connected(now());
    let end = drive::with_reader(
        pump_connection(
            &mut pump,
            &mut watched,
            &mut turn,
            &mut pumped.lender,
            &inbound,
            &mut writer,
            write_limit,
        ),
        read_into(&mut reader, &inbound),
    )
    .await;
    if !matches!(end, DriveEnd::Closed) {
        watched.session.handle_disconnected(now());
    }
    drive::settle(&mut pump, &mut watched, &mut turn, &mut pumped.lender);
    pump.release(&mut watched, &mut pumped.lender);
    *came_up = turn.came_up;
    outcome(end, watched.daemon)
}

fn outcome(end: DriveEnd, daemon: Option<PeerClose>) -> Result<Ended, LinkError> {
    if let Some(refused) = daemon.and_then(PeerClose::refusal) {
        return Err(LinkError::Refused(refused));
    }
    match end {
        DriveEnd::Closed => Ok(Ended::Closed { daemon }),
        // The daemon said why before the connection went; how it went adds nothing.
        _ if daemon.is_some() => Ok(Ended::DaemonClosed { daemon }),
        DriveEnd::Read(ReadEnd::Closed | ReadEnd::Eof) => Ok(Ended::DaemonClosed { daemon }),
        DriveEnd::Read(ReadEnd::Alert { before_data: true }) => {
            Err(LinkError::Refused(Refused::Certificate))
        }
        DriveEnd::Read(ReadEnd::Alert { before_data: false }) => {
            Err(LinkError::Broken(Broken::Alert))
        }
        DriveEnd::Read(ReadEnd::Io(kind)) => Err(LinkError::Broken(Broken::Io(kind))),
        DriveEnd::Read(ReadEnd::Tls(e)) | DriveEnd::Write(e) => {
            Err(LinkError::Broken(Broken::Tls(e)))
        }
        DriveEnd::WriteStalled => Err(LinkError::Broken(Broken::WriteStalled)),
    }
}

/// The application's turn at the pump's `Events` step.
struct AppTurn<'a, A> {
    app: &'a mut A,
    /// The session was up at one of the application's turns.
    came_up: bool,
}

impl<A: NodeApp> Turn<Watched<'_, '_>> for AppTurn<'_, A> {
    fn events(&mut self, machine: &mut Watched<'_, '_>, now: Instant) {
        self.came_up |= machine.session.is_connected();
        self.app.on_events(machine.session, now);
    }

    fn wake_at(&self) -> Option<Instant> {
        self.app.next_wake()
    }
}

/// The session as the pump drives it, noting what the daemon says when it closes the
/// connection (an `Error` or a `Goodbye` frame): the session tells only the application,
/// and the driver needs it to tell a refusal from a dropped connection.
struct Watched<'s, 'b> {
    session: &'s mut Session<'b>,
    daemon: Option<PeerClose>,
}

/// Wire tags of `Error` and `Goodbye` (`WIRE.md`): one-byte varints.
const TAG_ERROR: u8 = 7;
const TAG_GOODBYE: u8 = 8;

impl Watched<'_, '_> {
    fn note(&mut self, frame: &[u8]) {
        if !matches!(frame.first(), Some(&(TAG_ERROR | TAG_GOODBYE))) {
            return;
        }
        match decode_message(frame) {
            Ok(Message::Error(e)) => self.daemon = Some(PeerClose::Error(e.code)),
            Ok(Message::Goodbye(g)) => self.daemon = Some(PeerClose::Goodbye(g.reason)),
            _ => {}
        }
    }
}

impl<'b> Machine for Watched<'_, 'b> {
    type Buf = &'b mut [u8];

    fn max_frame(&self) -> u32 {
        Machine::max_frame(&*self.session)
    }
    fn transmit_len(&self) -> usize {
        Machine::transmit_len(&*self.session)
    }
    fn offer_frame(&mut self, now: Instant, frame: &[u8]) -> Offer {
        self.note(frame);
        Machine::offer_frame(self.session, now, frame)
    }
    fn offer_ahead(&mut self, now: Instant, frame: &[u8]) -> Offer {
        Machine::offer_ahead(self.session, now, frame)
    }
    fn handle_frame_error(&mut self, now: Instant, e: FrameError) {
        Machine::handle_frame_error(self.session, now, e);
    }
    fn handle_timeout(&mut self, now: Instant) {
        Machine::handle_timeout(self.session, now);
    }
    fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, TransmitError> {
        Machine::poll_transmit(self.session, now, buf)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Machine::poll_timeout(&*self.session)
    }
    fn storage_len(&self) -> usize {
        Machine::storage_len(&*self.session)
    }
    fn has_storage(&self) -> bool {
        Machine::has_storage(&*self.session)
    }
    fn lend(&mut self, buf: Self::Buf) -> Result<(), Self::Buf> {
        Machine::lend(self.session, buf)
    }
    fn reclaim(&mut self) -> Option<Self::Buf> {
        Machine::reclaim(self.session)
    }
    fn journal_pending(&self) -> bool {
        Machine::journal_pending(&*self.session)
    }
    fn poll_journal(&mut self) -> Option<JournalOp<'_>> {
        Machine::poll_journal(self.session)
    }
    fn closed_batch(&self) -> Option<BatchId> {
        Machine::closed_batch(&*self.session)
    }
}
