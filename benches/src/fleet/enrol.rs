//! Enrolment through the real pairing path: codes minted on the operator socket, each
//! node generating its key and CSR and pairing from its own source address over the
//! transport under test. With several daemons the nodes are dealt out in turn, each
//! pairing with the daemon that minted its code.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use chacha20::ChaCha20Rng;
use daemon::api::ApiClient;
use daemon::api::v1::PairCodeRequest;
use protocol_core::pairing::PairingUri;
use rand_core::SeedableRng;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use transport_tokio::pairing::{PairError, PairOptions, pair_over};
use transport_tokio::tcp::Connector;
use transport_tokio::tls::{Fingerprint, client_config, pairing_client_config};

use super::Transport;
use crate::transports::BenchError;

/// Codes minted (and paired) per wave: well under the 10,000 ids live at once.
pub const WAVE: usize = 1_000;
/// Pairing runs in flight at once.
const PAIRINGS_IN_FLIGHT: usize = 64;
/// Code requests in flight at once on the operator socket.
const MINTS_IN_FLIGHT: usize = 16;
/// Pairing runs per node before its failure ends the enrolment.
const PAIRING_ATTEMPTS: u32 = 3;
/// A code outlives its wave by far.
const CODE_TTL_SECONDS: u32 = 600;
/// Most source addresses used: the daemon's per-address table holds 4,096.
pub const MAX_SOURCES: usize = 4_000;

/// A paired node: its identity, where it dials from and which daemon it paired with.
#[derive(Clone)]
pub struct Enrolled {
    pub device_id: String,
    /// The daemon it paired with (an index into the daemons enrolment was given).
    pub home: usize,
    pub source: Ipv4Addr,
    pub pin: Fingerprint,
    pub tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolled")
            .field("device_id", &self.device_id)
            .field("home", &self.home)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The `a`-th source address: 127.0.1.1, 127.0.1.2, ... (never 127.0.0.1, where the
/// daemon and the operator's own pairing attempts are).
pub fn source(a: usize) -> Ipv4Addr {
    let a = a % MAX_SOURCES;
    Ipv4Addr::new(127, 0, 1 + (a / 250) as u8, 1 + (a % 250) as u8)
}

/// How many source addresses `n` nodes are spread over so that none pairs more than
/// `per_address` times.
pub fn sources_for(n: usize, per_address: usize) -> usize {
    n.div_ceil(per_address.max(1)).clamp(1, MAX_SOURCES)
}

/// The device id of node `i`.
pub fn device_id(i: usize) -> String {
    format!("fleet-{i:05}")
}

/// The daemon node `i` pairs with, of `daemons`.
pub fn home(i: usize, daemons: usize) -> usize {
    i % daemons.max(1)
}

/// Pairs `n` nodes over `transport`, `WAVE` codes at a time: node `i` with daemon
/// `home(i, daemons.len())` (its operator client and node address), from
/// `source(i % sources)`. Also returns how many pairing runs were retried after a
/// network failure.
pub async fn enrol(
    daemons: &[(ApiClient, SocketAddr)],
    transport: Transport,
    n: usize,
    sources: usize,
) -> Result<(Vec<Enrolled>, usize), BenchError> {
    let mut all = Vec::with_capacity(n);
    let slots = Arc::new(Semaphore::new(PAIRINGS_IN_FLIGHT));
    let retries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for start in (0..n).step_by(WAVE) {
        let end = (start + WAVE).min(n);
        let mut uris = Vec::with_capacity(end - start);
        for (d, (api, _)) in daemons.iter().enumerate() {
            let wave = (start..end).filter(|&i| home(i, daemons.len()) == d);
            uris.extend(
                mint(api, wave)
                    .await?
                    .into_iter()
                    .map(|(i, uri)| (i, d, uri)),
            );
        }
        // QUIC: one client endpoint per source address in this wave.
        let mut endpoints: HashMap<Ipv4Addr, quinn::Endpoint> = HashMap::new();
        let mut runs = JoinSet::new();
        for (i, d, uri) in uris {
            let addr = daemons[d].1;
            let src = source(i % sources);
            let stream = match transport {
                Transport::Quic => {
                    let ep = match endpoints.get(&src) {
                        Some(e) => e.clone(),
                        None => {
                            let e = quinn::Endpoint::client(SocketAddr::from((src, 0)))
                                .map_err(BenchError::context("quinn endpoint"))?;
                            endpoints.insert(src, e.clone());
                            e
                        }
                    };
                    Opener::Quic(ep)
                }
                Transport::Tcp => Opener::Tcp(src),
            };
            let (slots, retries) = (slots.clone(), retries.clone());
            runs.spawn(async move {
                let _slot = slots
                    .acquire()
                    .await
                    .map_err(BenchError::context("slots"))?;
                // A real node retries pairing after a network failure, with the same
                // code (a run that never proved the code does not use it up).
                let mut attempt = 1;
                loop {
                    match pair_one(i, &uri, addr, src, &stream).await {
                        Ok(enrolled) => {
                            return Ok(Enrolled {
                                home: d,
                                ..enrolled
                            });
                        }
                        Err(Failure::Transient(e)) if attempt < PAIRING_ATTEMPTS => {
                            retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            crate::fleet::log(&format!("retrying: {e}"));
                            attempt += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        }
                        Err(Failure::Transient(e) | Failure::Fatal(e)) => return Err(e),
                    }
                }
            });
        }
        while let Some(r) = runs.join_next().await {
            all.push(r.map_err(BenchError::context("pairing task"))??);
        }
        for e in endpoints.values() {
            e.close(0u32.into(), b"done");
        }
    }
    all.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    Ok((all, retries.load(std::sync::atomic::Ordering::Relaxed)))
}

/// Mints codes for `nodes` on the operator socket.
async fn mint(
    api: &ApiClient,
    nodes: impl Iterator<Item = usize>,
) -> Result<Vec<(usize, String)>, BenchError> {
    let slots = Arc::new(Semaphore::new(MINTS_IN_FLIGHT));
    let mut mints = JoinSet::new();
    for i in nodes {
        let (api, slots) = (api.clone(), slots.clone());
        mints.spawn(async move {
            let _slot = slots
                .acquire()
                .await
                .map_err(BenchError::context("slots"))?;
            let code = api
                .pair_code(PairCodeRequest {
                    ttl_seconds: CODE_TTL_SECONDS,
                    require_approval: Some(false),
                    device_id: device_id(i),
                })
                .await
                .map_err(BenchError::context("minting a code"))?;
            Ok::<_, BenchError>((i, code.uri))
        });
    }
    let mut uris = Vec::new();
    while let Some(r) = mints.join_next().await {
        uris.push(r.map_err(BenchError::context("mint task"))??);
    }
    Ok(uris)
}

enum Opener {
    Quic(quinn::Endpoint),
    Tcp(Ipv4Addr),
}

/// Why one pairing run failed: worth another run, or not.
enum Failure {
    Transient(BenchError),
    Fatal(BenchError),
}

impl From<BenchError> for Failure {
    fn from(e: BenchError) -> Self {
        Failure::Fatal(e)
    }
}

async fn pair_one(
    i: usize,
    uri: &str,
    addr: SocketAddr,
    src: Ipv4Addr,
    opener: &Opener,
) -> Result<Enrolled, Failure> {
    let uri = PairingUri::parse(uri).map_err(|e| BenchError(format!("pairing URI: {e:?}")))?;
    let pin = Fingerprint(uri.fingerprint);
    // The node's key and CSR, generated on the node as the node host does.
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(BenchError::context("node key"))?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(BenchError::context("CSR"))?
        .der()
        .to_vec();
    let tls = pairing_client_config(Some(pin)).map_err(BenchError::context("pairing TLS"))?;
    let mut rng = ChaCha20Rng::seed_from_u64(0x5eed ^ i as u64);
    let options = PairOptions::default();
    let bundle = match opener {
        Opener::Tcp(src) => {
            let stream = Connector::new(tls)
                .connect_from(SocketAddr::from((*src, 0)), addr)
                .await
                .map_err(|e| {
                    Failure::Transient(BenchError(format!("pairing connect (TCP): {e}")))
                })?;
            pair_over(&options, stream, &uri.code, &csr, Some(pin), &mut rng).await
        }
        Opener::Quic(ep) => {
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
                .map_err(BenchError::context("pairing QUIC config"))?;
            let conn = ep
                .connect_with(
                    quinn::ClientConfig::new(Arc::new(crypto)),
                    addr,
                    "127.0.0.1",
                )
                .map_err(BenchError::context("pairing connect (QUIC)"))?
                .await
                .map_err(|e| {
                    Failure::Transient(BenchError(format!("pairing handshake (QUIC): {e}")))
                })?;
            let (send, recv) = conn
                .open_bi()
                .await
                .map_err(|e| Failure::Transient(BenchError(format!("pairing stream: {e}"))))?;
            let r = pair_over(
                &options,
                tokio::io::join(recv, send),
                &uri.code,
                &csr,
                Some(pin),
                &mut rng,
            )
            .await;
            conn.close(0u32.into(), b"paired");
            r
        }
    }
    .map_err(|e| {
        let why = BenchError(format!("pairing node {i} from {src}: {e}"));
        match e {
            PairError::ConnectionClosed
            | PairError::Io(_)
            | PairError::Unreachable(_)
            | PairError::TimedOut => Failure::Transient(why),
            _ => Failure::Fatal(why),
        }
    })?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let tls = client_config(
        bundle.server_fingerprint,
        vec![CertificateDer::from(bundle.client_cert)],
        key_der,
    )
    .map_err(BenchError::context("node TLS"))?;
    Ok(Enrolled {
        device_id: bundle.device_id,
        home: 0,
        source: src,
        pin: bundle.server_fingerprint,
        tls,
    })
}
