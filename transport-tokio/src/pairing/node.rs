//! The node's side of pairing over TCP + TLS: dial, drive a [`NodePairing`], keep what it
//! was given.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol_core::pairing::{
    CodeError, NodeConfig, NodePairing, NodePairingEvent, PAIRING_MAX_FRAME, PairingCode,
    PairingError, PairingUri, Refusal, TAG_LEN, Watched,
};
use protocol_core::pump::{Alloc, Pump, ReadBuf, Step};
use protocol_core::wire::{ErrorCode, ErrorFrame};
use rand_core::CryptoRng;
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::clock::{now, until};
use crate::tcp::Connector;
use crate::tcp::refuse::close_after;
use crate::tls::{Fingerprint, TlsSetupError, client_config, pairing_client_config};

/// Bytes read from the stream at a time: one whole pairing frame.
const READ_CHUNK: usize = PAIRING_MAX_FRAME as usize + 4;

/// What a node keeps from a successful pairing, owned.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingBundle {
    /// The device id the certificate names (its subject CN).
    pub device_id: String,
    /// The node's client certificate (DER), for the key that signed the CSR.
    pub client_cert: Vec<u8>,
    /// The daemon's CA certificate (DER).
    pub ca_cert: Vec<u8>,
    /// The daemon's server certificate fingerprint: pin it at every connection.
    pub server_fingerprint: Fingerprint,
}

impl fmt::Debug for PairingBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingBundle")
            .field("device_id", &self.device_id)
            .field("client_cert", &Fingerprint::of(&self.client_cert))
            .field("server_fingerprint", &self.server_fingerprint)
            .finish_non_exhaustive()
    }
}

impl PairingBundle {
    /// The node-plane client configuration: this certificate with `key` (the private key
    /// of the CSR), the daemon pinned.
    pub fn client_config(
        &self,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<ClientConfig>, TlsSetupError> {
        client_config(
            self.server_fingerprint,
            vec![CertificateDer::from(self.client_cert.clone())],
            key,
        )
    }
}

/// Settings of a node's pairing run.
#[derive(Clone)]
pub struct PairOptions {
    /// The TCP connect and TLS handshake together.
    pub handshake_timeout: Duration,
    /// The whole run, an operator's approval included.
    pub timeout: Duration,
    /// Called when the daemon says an operator must approve (the node may tell its user).
    pub on_awaiting_approval: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Default for PairOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: crate::tcp::DEFAULT_HANDSHAKE_TIMEOUT,
            timeout: Duration::from_millis(NodeConfig::default().timeout_ms),
            on_awaiting_approval: None,
        }
    }
}

impl fmt::Debug for PairOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairOptions")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("timeout", &self.timeout)
            .field("on_awaiting_approval", &self.on_awaiting_approval.is_some())
            .finish()
    }
}

/// Why a node did not pair.
#[derive(Debug)]
pub enum PairError {
    /// The pairing URI does not parse.
    BadUri(CodeError),
    /// The CSR does not parse or is too large for a pairing frame.
    BadCsr,
    /// The daemon could not be reached (address, TCP connect, handshake timeout).
    Unreachable(io::Error),
    /// The TLS handshake failed: the daemon is not the pinned one, or refused the
    /// connection.
    Tls(io::Error),
    /// The daemon holds another code: the digits are wrong.
    WrongCode,
    /// The code's lifetime is over.
    Expired,
    /// The daemon has no outstanding code with this id.
    UnknownCode,
    /// The code already paired a node.
    AlreadyUsed,
    /// The code saw too many failed attempts and is refused, even when right.
    WindowClosed,
    /// The operator rejected the pairing.
    Rejected,
    /// Too many pairing attempts; the daemon accepts another after `retry_after`.
    RateLimited { retry_after: Duration },
    /// No operator decided in time.
    ApprovalTimedOut,
    /// The run did not finish within [`PairOptions::timeout`], or the daemon's own
    /// deadline passed.
    TimedOut,
    /// The daemon announced another server fingerprint than the pinned one.
    FingerprintMismatch,
    /// The daemon refused the connection before pairing (e.g. `Overloaded`).
    Refused { code: ErrorCode, reason: String },
    /// The daemon closed the connection before the run finished.
    ConnectionClosed,
    /// The connection failed during the run.
    Io(io::Error),
    /// Any other protocol failure (a tampered or malformed message, a certificate that
    /// does not carry the node's key, ...).
    Protocol(PairingError),
}

impl PairError {
    /// `error` as the node reads it; `awaited` tells whether the daemon had said an
    /// operator must decide (a timeout then is the operator's).
    fn from_run(error: PairingError, awaited: bool) -> Self {
        match error {
            PairingError::WrongCode => PairError::WrongCode,
            PairingError::Expired => PairError::Expired,
            PairingError::UnknownCode => PairError::UnknownCode,
            PairingError::AlreadyUsed => PairError::AlreadyUsed,
            PairingError::WindowClosed => PairError::WindowClosed,
            PairingError::RejectedByOperator => PairError::Rejected,
            PairingError::RateLimited { retry_after_ms } => PairError::RateLimited {
                retry_after: Duration::from_millis(retry_after_ms),
            },
            PairingError::ApprovalExpired => PairError::ApprovalTimedOut,
            PairingError::TimedOut if awaited => PairError::ApprovalTimedOut,
            PairingError::TimedOut => PairError::TimedOut,
            PairingError::FingerprintMismatch => PairError::FingerprintMismatch,
            PairingError::BadCsr => PairError::BadCsr,
            other => PairError::Protocol(other),
        }
    }

    /// The TLS handshake's failures are rustls errors (`InvalidData`); everything before
    /// it is the network's.
    fn from_connect(e: io::Error) -> Self {
        let tls = e.kind() == io::ErrorKind::InvalidData
            || e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>());
        if tls {
            PairError::Tls(e)
        } else {
            PairError::Unreachable(e)
        }
    }
}

/// A listener's `Error` frame instead of a pairing message, with its reason.
impl Refusal for PairError {
    fn from_frame(frame: &ErrorFrame<'_>) -> Self {
        PairError::Refused {
            code: frame.code,
            reason: frame.reason.to_owned(),
        }
    }
}

impl fmt::Display for PairError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PairError::BadUri(e) => write!(f, "pairing URI refused: {e}"),
            PairError::BadCsr => f.write_str("the certificate signing request is not usable"),
            PairError::Unreachable(e) => write!(f, "daemon unreachable: {e}"),
            PairError::Tls(e) => write!(f, "TLS handshake with the daemon failed: {e}"),
            PairError::WrongCode => f.write_str("wrong pairing code"),
            PairError::Expired => f.write_str("pairing code expired"),
            PairError::UnknownCode => f.write_str("the daemon knows no such pairing code"),
            PairError::AlreadyUsed => f.write_str("pairing code already used"),
            PairError::WindowClosed => {
                f.write_str("pairing code closed after too many failed attempts")
            }
            PairError::Rejected => f.write_str("pairing rejected by the operator"),
            PairError::RateLimited { retry_after } => write!(
                f,
                "too many pairing attempts; retry in {} s",
                retry_after.as_millis().div_ceil(1000)
            ),
            PairError::ApprovalTimedOut => f.write_str("no operator approved the pairing in time"),
            PairError::TimedOut => f.write_str("pairing timed out"),
            PairError::FingerprintMismatch => {
                f.write_str("the daemon's certificate is not the one the pairing code names")
            }
            PairError::Refused { code, reason } => {
                write!(f, "the daemon refused the connection ({code:?}): {reason}")
            }
            PairError::ConnectionClosed => {
                f.write_str("the daemon closed the connection before pairing finished")
            }
            PairError::Io(e) => write!(f, "pairing connection failed: {e}"),
            PairError::Protocol(e) => write!(f, "pairing failed: {e}"),
        }
    }
}

impl std::error::Error for PairError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PairError::BadUri(e) => Some(e),
            PairError::Unreachable(e) | PairError::Tls(e) | PairError::Io(e) => Some(e),
            PairError::Protocol(e) => Some(e),
            _ => None,
        }
    }
}

/// Pairs with the daemon at `addr` using `code`, with default [`PairOptions`].
///
/// `csr_der` is the node's PKCS#10 request, signed with the private key it keeps; the
/// certificate that comes back carries that key. `pin`, when the node knows the daemon
/// (from a QR code or an earlier pairing), is checked twice: at the TLS handshake and in
/// the sealed answer. Without it, the PAKE alone authenticates the daemon.
///
/// ```no_run
/// # async fn run(csr_der: &[u8], key: rustls_pki_types::PrivateKeyDer<'static>)
/// #     -> Result<(), Box<dyn std::error::Error>> {
/// use protocol_core::pairing::PairingCode;
/// use rand_core::SeedableRng;
///
/// let code = PairingCode::parse("0042-1234-5678")?;
/// let mut rng = chacha20::ChaCha20Rng::from_seed([7; 32]); // seed from the OS in practice
/// let bundle = transport_tokio::pairing::pair(
///     "192.0.2.1:7443".parse()?, &code, csr_der, None, &mut rng,
/// ).await?;
/// let tls = bundle.client_config(key)?; // the node plane from now on
/// # let _ = tls; Ok(()) }
/// ```
pub async fn pair<R: CryptoRng + ?Sized>(
    addr: SocketAddr,
    code: &PairingCode,
    csr_der: &[u8],
    pin: Option<Fingerprint>,
    rng: &mut R,
) -> Result<PairingBundle, PairError> {
    pair_with(&PairOptions::default(), addr, code, csr_der, pin, rng).await
}

/// Pairs from a `tern://pair?...` URI (a QR code): its address (resolved here), its
/// code, and its fingerprint as the pin.
pub async fn pair_uri<R: CryptoRng + ?Sized>(
    options: &PairOptions,
    uri: &str,
    csr_der: &[u8],
    rng: &mut R,
) -> Result<PairingBundle, PairError> {
    let uri = PairingUri::parse(uri).map_err(PairError::BadUri)?;
    let addr = tokio::net::lookup_host(uri.addr)
        .await
        .map_err(PairError::Unreachable)?
        .next()
        .ok_or_else(|| {
            PairError::Unreachable(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} resolves to no address", uri.addr),
            ))
        })?;
    let pin = Some(Fingerprint(uri.fingerprint));
    pair_with(options, addr, &uri.code, csr_der, pin, rng).await
}

/// [`pair`] with chosen [`PairOptions`].
pub async fn pair_with<R: CryptoRng + ?Sized>(
    options: &PairOptions,
    addr: SocketAddr,
    code: &PairingCode,
    csr_der: &[u8],
    pin: Option<Fingerprint>,
    rng: &mut R,
) -> Result<PairingBundle, PairError> {
    let config = NodeConfig {
        timeout_ms: u64::try_from(options.timeout.as_millis()).unwrap_or(u64::MAX),
        expected_fingerprint: pin.map(|p| p.0),
        peer_max_frame: PAIRING_MAX_FRAME,
    };
    let buf = vec![0u8; (PAIRING_MAX_FRAME as usize).max(csr_der.len() + TAG_LEN)];
    let run = NodePairing::new(now(), code, csr_der, buf, config, rng).map_err(|e| match e {
        // The CSR is the only input that can make the buffer or the frame too small.
        PairingError::BufferTooSmall => PairError::BadCsr,
        e => PairError::from_run(e, false),
    })?;
    let tls = pairing_client_config(pin)
        .map_err(|e| PairError::Tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let connector = Connector::new(tls).with_handshake_timeout(options.handshake_timeout);
    let stream = connector
        .connect(addr)
        .await
        .map_err(PairError::from_connect)?;
    drive(options, run, stream).await
}

/// Pairs over a stream the caller opened with
/// [`pairing_client_config`](crate::tls::pairing_client_config) — a TCP + TLS
/// connection, or a QUIC connection's bidirectional stream (the daemon's QUIC endpoint
/// pairs connections without a client certificate the same way).
pub async fn pair_over<IO, R>(
    options: &PairOptions,
    stream: IO,
    code: &PairingCode,
    csr_der: &[u8],
    pin: Option<Fingerprint>,
    rng: &mut R,
) -> Result<PairingBundle, PairError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    R: CryptoRng + ?Sized,
{
    let config = NodeConfig {
        timeout_ms: u64::try_from(options.timeout.as_millis()).unwrap_or(u64::MAX),
        expected_fingerprint: pin.map(|p| p.0),
        peer_max_frame: PAIRING_MAX_FRAME,
    };
    let buf = vec![0u8; (PAIRING_MAX_FRAME as usize).max(csr_der.len() + TAG_LEN)];
    let run = NodePairing::new(now(), code, csr_der, buf, config, rng).map_err(|e| match e {
        PairingError::BufferTooSmall => PairError::BadCsr,
        e => PairError::from_run(e, false),
    })?;
    drive(options, run, stream).await
}

async fn drive<IO: AsyncRead + AsyncWrite + Unpin>(
    options: &PairOptions,
    run: NodePairing<'_, Vec<u8>>,
    mut stream: IO,
) -> Result<PairingBundle, PairError> {
    let mut machine: Watched<'_, Vec<u8>, PairError> = Watched::new(run);
    let mut node = NodeRun {
        awaited: false,
        result: None,
    };
    let (mut pump, mut rx) = (Pump::new(), ReadBuf::new(vec![0u8; READ_CHUNK]));
    loop {
        match pump.poll(now(), &mut machine, &mut Alloc, &mut rx) {
            Step::Events(machine) => node.events(machine, options)?,
            // A pairing run keeps no journal.
            Step::Journal(_) => {}
            Step::Transmit(out) => write(&mut stream, out.bytes())
                .await
                .map_err(PairError::Io)?,
            Step::Close(out) => {
                close_after(&mut stream, out.bytes()).await;
                return node
                    .result
                    .unwrap_or(Err(PairError::Protocol(PairingError::Internal)));
            }
            Step::Wait(wait) => {
                let timer = async {
                    match wait.deadline {
                        Some(at) => tokio::time::sleep(until(at)).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    read = stream.read(rx.space()), if wait.read => match read {
                        Ok(0) => return Err(PairError::ConnectionClosed),
                        Ok(n) => rx.filled(n),
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            return Err(PairError::ConnectionClosed);
                        }
                        Err(e) => return Err(PairError::Io(e)),
                    },
                    () = timer => machine.run.handle_timeout(now()),
                }
            }
        }
    }
}

/// What the node learnt of its run.
struct NodeRun {
    /// The daemon said an operator must decide (a timeout then is the operator's).
    awaited: bool,
    result: Option<Result<PairingBundle, PairError>>,
}

impl NodeRun {
    /// The node's turn: the run's events, or the listener's refusal that ends it.
    fn events(
        &mut self,
        machine: &mut Watched<'_, Vec<u8>, PairError>,
        options: &PairOptions,
    ) -> Result<(), PairError> {
        if let Some(refusal) = machine.take_refused() {
            return Err(refusal);
        }
        while let Some(event) = machine.run.poll_event() {
            match event {
                NodePairingEvent::AwaitingApproval => {
                    self.awaited = true;
                    if let Some(tell) = &options.on_awaiting_approval {
                        tell();
                    }
                }
                NodePairingEvent::Paired(p) => {
                    self.result = Some(Ok(PairingBundle {
                        device_id: p.device_id.to_owned(),
                        client_cert: p.client_cert.to_vec(),
                        ca_cert: p.ca_cert.to_vec(),
                        server_fingerprint: Fingerprint(p.server_fingerprint),
                    }));
                }
                NodePairingEvent::Failed(e) => {
                    self.result = Some(Err(PairError::from_run(e, self.awaited)));
                }
            }
        }
        Ok(())
    }
}

async fn write<IO: AsyncWrite + Unpin>(io: &mut IO, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}
