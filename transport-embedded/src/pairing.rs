//! Pairing: from a pairing code (or a `tern://pair?…` URI) to an [`Identity`], over a
//! TLS connection without a client certificate.
//!
//! The node's key is generated on the device and only its CSR leaves it. The TLS
//! connection is bound to the PAKE: the run requires the daemon's sealed answer to name
//! the fingerprint of the certificate this very connection was made with (the URI's pin
//! when there is one, else the certificate the daemon proved it holds), so a relay that
//! terminates TLS with its own certificate fails the pairing even if it passes the PAKE
//! messages through.

use core::cell::RefCell;

use embassy_time::{Duration, with_timeout};
use embedded_tls::{Aes128GcmSha256, TlsConnection};
use protocol_core::pairing::{
    NodeConfig, NodePairing, NodePairingEvent, PAIRING_MAX_FRAME, PairingCode, PairingError,
    PairingUri, Watched,
};
use protocol_core::pump::{Pump, ReadBuf, Slots};
use protocol_core::time::Instant;
use protocol_core::wire::ErrorCode;
use rand_core::CryptoRng;

use crate::buffers::{Buffer, BufferTooSmall, PairingBuffers};
use crate::csr::{CSR_COMMON_NAME, CsrError, MAX_CSR_LEN, build_csr};
use crate::dial::{Connection, DialError, DialFailed, Dialer, dial_within};
use crate::drive::{self, DriveEnd, Inbound, ReadEnd, Turn, now, pump_connection, read_into};
use crate::identity::{Identity, IdentityError};
use crate::key::NodeKey;
use crate::tls::{Fingerprint, NodeProvider, ServerCheck, SharedSocket, TlsFailure, open};

/// What the node pairs with.
#[derive(Debug, Clone)]
pub enum Invitation<'a> {
    /// A code typed in or printed on a label; the daemon is at `daemon` (`host:port`)
    /// and its certificate is not known yet.
    Code { code: PairingCode, daemon: &'a str },
    /// A `tern://pair?…` URI (a QR code): the daemon's address, the code, and the
    /// daemon's certificate fingerprint, checked at the TLS handshake already.
    Uri(PairingUri<'a>),
}

impl<'a> Invitation<'a> {
    /// Parses a `tern://pair?…` URI.
    pub fn uri(uri: &'a str) -> Result<Self, protocol_core::pairing::CodeError> {
        PairingUri::parse(uri).map(Invitation::Uri)
    }

    fn code(&self) -> &PairingCode {
        match self {
            Invitation::Code { code, .. } => code,
            Invitation::Uri(uri) => &uri.code,
        }
    }

    fn daemon(&self) -> &'a str {
        match self {
            Invitation::Code { daemon, .. } => daemon,
            Invitation::Uri(uri) => uri.addr,
        }
    }

    fn check(&self) -> ServerCheck {
        match self {
            Invitation::Code { .. } => ServerCheck::Observe,
            Invitation::Uri(uri) => ServerCheck::Pinned(Fingerprint(uri.fingerprint)),
        }
    }
}

/// Settings of a pairing run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairOptions {
    /// TCP connect and TLS handshake together.
    pub handshake_timeout: Duration,
    /// The whole run, an operator's approval included.
    pub timeout: Duration,
}

impl Default for PairOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            timeout: Duration::from_millis(NodeConfig::default().timeout_ms),
        }
    }
}

/// Why the node did not pair.
#[derive(Debug, Clone, Copy)]
pub enum PairError {
    /// A buffer is too small.
    Buffer(BufferTooSmall),
    /// The CSR could not be built.
    Csr(CsrError),
    /// The daemon could not be reached.
    Dial(DialError),
    /// TCP connect and TLS handshake did not finish in time.
    HandshakeTimeout,
    /// The TLS handshake failed: with a URI, the daemon is not the one it names.
    Tls(TlsFailure),
    /// The daemon refused the connection before pairing (`Error` frame: `Overloaded`, ...).
    Refused(ErrorCode),
    /// The pairing failed; the daemon and the node agree on why (wrong code, expired,
    /// rejected by the operator, rate limited, the certificate the daemon names is not
    /// the one this connection was made with: `FingerprintMismatch`, ...).
    Pairing(PairingError),
    /// The daemon closed the connection before the run finished.
    ConnectionClosed,
    /// The connection failed during the run.
    Broken,
    /// The run did not finish within [`PairOptions::timeout`].
    TimedOut,
    /// What the daemon issued does not fit an identity record.
    Identity(IdentityError),
}

impl core::error::Error for PairError {}

impl core::fmt::Display for PairError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PairError::Buffer(e) => e.fmt(f),
            PairError::Csr(e) => e.fmt(f),
            PairError::Dial(e) => e.fmt(f),
            PairError::HandshakeTimeout => f.write_str("connecting to the daemon timed out"),
            PairError::Tls(e) => e.fmt(f),
            PairError::Refused(code) => write!(f, "the daemon refused the connection: {code:?}"),
            PairError::Pairing(e) => e.fmt(f),
            PairError::ConnectionClosed => {
                f.write_str("the daemon closed the connection before pairing finished")
            }
            PairError::Broken => f.write_str("the pairing connection failed"),
            PairError::TimedOut => f.write_str("pairing timed out"),
            PairError::Identity(e) => e.fmt(f),
        }
    }
}

/// Pairs with the daemon `invitation` names: dials it, opens TLS without a client
/// certificate, runs the PAKE with a CSR for `key` (generate it with
/// [`NodeKey::generate`]), and returns the identity to store. `on_awaiting_approval` is
/// called when an operator must approve the pairing (the node may say so).
pub async fn pair<D, R>(
    dialer: &mut D,
    invitation: &Invitation<'_>,
    key: &NodeKey,
    buffers: PairingBuffers<'_>,
    rng: &mut R,
    options: PairOptions,
    on_awaiting_approval: &mut dyn FnMut(),
) -> Result<Identity, PairError>
where
    D: Dialer,
    R: CryptoRng + ?Sized,
{
    buffers.check().map_err(PairError::Buffer)?;
    let mut csr = [0u8; MAX_CSR_LEN];
    let csr = build_csr(key, CSR_COMMON_NAME, &mut csr).map_err(PairError::Csr)?;
    let PairingBuffers {
        run: run_buf,
        frame,
        transmit,
        read,
        tls_read,
        tls_write,
    } = buffers;
    let limit = options.handshake_timeout;
    let (mut conn, remaining) = match dial_within(dialer, invitation.daemon(), limit).await {
        Ok(dialed) => dialed,
        Err(DialFailed::Refused(e)) => return Err(PairError::Dial(e)),
        Err(DialFailed::TimedOut) => return Err(PairError::HandshakeTimeout),
    };
    let paired = {
        let (reader, writer) = conn.split();
        let (reader, writer) = (RefCell::new(reader), RefCell::new(writer));
        let mut tls: TlsConnection<'_, _, Aes128GcmSha256> =
            TlsConnection::new(SharedSocket::new(&reader, &writer), tls_read, tls_write);
        let mut provider = NodeProvider::new(&mut *rng, invitation.check(), None);
        let opened = with_timeout(remaining, open(&mut tls, &mut provider)).await;
        match opened {
            Err(_) => Err(PairError::HandshakeTimeout),
            Ok(Err(failure)) => Err(PairError::Tls(failure)),
            Ok(Ok(seen)) => {
                let result = match start_run(invitation, csr, run_buf, seen, options, rng) {
                    Ok(run) if transmit.len() < run.transmit_len() => {
                        Err(PairError::Buffer(BufferTooSmall {
                            buffer: Buffer::Transmit,
                            needed: run.transmit_len(),
                            available: transmit.len(),
                        }))
                    }
                    Ok(run) => {
                        let mut lender = Slots::new(None, frame, transmit);
                        let rx = RefCell::new(ReadBuf::new(read));
                        let turn = PairingTurn {
                            key,
                            daemon: invitation.daemon(),
                            on_awaiting_approval,
                            result: None,
                        };
                        let exchanged = exchange(run, turn, &mut tls, &mut lender, &rx);
                        with_timeout(options.timeout, exchanged)
                            .await
                            .unwrap_or(Err(PairError::TimedOut))
                    }
                    Err(e) => Err(e),
                };
                crate::session::close_tls(tls).await;
                result
            }
        }
    };
    conn.close().await;
    paired
}

/// The run, bound to the certificate `seen` on this connection: the daemon's sealed
/// answer must name it.
fn start_run<'c, 'b, R: CryptoRng + ?Sized>(
    invitation: &Invitation<'_>,
    csr: &'c [u8],
    buf: &'b mut [u8],
    seen: Fingerprint,
    options: PairOptions,
    rng: &mut R,
) -> Result<NodePairing<'c, &'b mut [u8]>, PairError> {
    let config = NodeConfig {
        timeout_ms: options.timeout.as_millis(),
        expected_fingerprint: Some(seen.0),
        peer_max_frame: PAIRING_MAX_FRAME,
    };
    // The buffers were checked: a refusal here is the CSR's.
    NodePairing::new(now(), invitation.code(), csr, buf, config, rng).map_err(PairError::Pairing)
}

/// Runs the pairing exchange over an open TLS connection until the run ends.
async fn exchange<'b, S>(
    run: NodePairing<'_, &'b mut [u8]>,
    mut turn: PairingTurn<'_>,
    tls: &mut TlsConnection<'_, S, Aes128GcmSha256>,
    lender: &mut Slots<&'b mut [u8]>,
    rx: &RefCell<ReadBuf<&'b mut [u8]>>,
) -> Result<Identity, PairError>
where
    S: embedded_io_async::Read + embedded_io_async::Write + Clone,
{
    let (mut reader, mut writer) = tls.split();
    let inbound = Inbound::new(rx);
    let mut machine = Watched::new(run);
    let mut pump = Pump::new();
    // The pairing exchange has no idle timeout of its own; the run's deadline bounds it.
    let write_limit = Duration::from_secs(30);
    let end = drive::with_reader(
        pump_connection(
            &mut pump,
            &mut machine,
            &mut turn,
            lender,
            &inbound,
            &mut writer,
            write_limit,
        ),
        read_into(&mut reader, &inbound),
    )
    .await;
    // Events the last input left (the answer that came with the close).
    drive::settle(&mut pump, &mut machine, &mut turn, lender);
    pump.release(&mut machine, lender);
    if let Some(code) = machine.take_refused() {
        return Err(PairError::Refused(code));
    }
    match turn.result {
        Some(result) => result,
        None => Err(match end {
            DriveEnd::Closed => {
                PairError::Pairing(machine.run.error().unwrap_or(PairingError::Internal))
            }
            DriveEnd::Read(ReadEnd::Closed | ReadEnd::Eof) => PairError::ConnectionClosed,
            DriveEnd::Read(_) | DriveEnd::Write(_) | DriveEnd::WriteStalled => PairError::Broken,
        }),
    }
}

/// The run's events, taken at the pump's `Events` step: what the daemon issued becomes
/// the identity straight out of the run's buffer.
struct PairingTurn<'a> {
    key: &'a NodeKey,
    daemon: &'a str,
    on_awaiting_approval: &'a mut dyn FnMut(),
    result: Option<Result<Identity, PairError>>,
}

impl<'b> Turn<Watched<'_, &'b mut [u8]>> for PairingTurn<'_> {
    fn events(&mut self, machine: &mut Watched<'_, &'b mut [u8]>, _now: Instant) {
        while let Some(event) = machine.run.poll_event() {
            match event {
                NodePairingEvent::AwaitingApproval => (self.on_awaiting_approval)(),
                NodePairingEvent::Paired(p) => {
                    let identity = Identity::new(
                        p.device_id,
                        self.key.clone(),
                        p.client_cert,
                        p.ca_cert,
                        Fingerprint(p.server_fingerprint),
                        self.daemon,
                    );
                    self.result = Some(identity.map_err(PairError::Identity));
                }
                NodePairingEvent::Failed(e) => self.result = Some(Err(PairError::Pairing(e))),
            }
        }
    }
}
