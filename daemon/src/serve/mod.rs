//! `ternd serve`: the daemon. It opens (or creates) its state directory and store,
//! creates the CA and server certificate on first start, restores every node's session
//! from its journal, and serves nodes on QUIC and TCP + TLS, pairing on TCP + TLS, and
//! the operator on a Unix socket.

pub mod cluster;
pub mod identity;
pub mod metrics;
pub mod operator;
pub mod operators;
pub mod revocations;
pub mod settings;
pub mod store_adapter;

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol_core::pairing::DaemonConfig;
use protocol_core::session::{Config, Instant};
use tokio::sync::mpsc;
use tracing::{info, warn};
use transport_tokio::pairing::serve_pairing;
use transport_tokio::quic::{QuicEndpoint, QuicLimits};
use transport_tokio::tcp::{Listener, ListenerConfig, Routes};
use transport_tokio::{JournalStore, StoragePool};

use crate::api::{ApiServer, OperatorListener, ServerConfig};
use crate::pairing::{PairingChanges, PairingService, PairingSettings, ServiceEvent};
use crate::pairing_responder::ServiceResponder;
use crate::runtime::{NodeInfo, Registry, Runtime};
use crate::store::{Device, Store, StoreOptions, Write};

pub use settings::Settings;

/// Why the daemon could not start.
#[derive(Debug)]
pub struct ServeError(pub String);

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServeError {}

fn err(what: &str) -> impl FnOnce(String) -> ServeError + '_ {
    move |e| ServeError(format!("{what}: {e}"))
}

/// Replay buffer per node session: events and calls waiting for an acknowledgement.
const REPLAY_BYTES: usize = 256 * 1024;
/// Bytes of session storage kept for reuse after a burst (about 40 sessions' worth):
/// enough that sessions waking together rarely allocate, little enough that what a
/// burst leaves behind does not stay resident.
const POOL_IDLE_BYTES: usize = 32 << 20;

/// The session configuration of every node on this daemon.
pub const fn session_config() -> Config {
    Config::server(REPLAY_BYTES)
}

/// What a running daemon shares between its parts.
pub struct Shared {
    pub settings: Settings,
    pub store: Arc<Store>,
    pub runtime: Arc<Runtime>,
    pub pairing: Arc<ServiceResponder>,
    pub revocations: Arc<revocations::LiveRevocations>,
    pub identity: identity::Identity,
    pub listening: Vec<String>,
    pub started_at_ms: u64,
    pub metrics: Arc<metrics::Metrics>,
    /// Present when the store is shared with other daemons.
    pub cluster: Option<Arc<cluster::Cluster>>,
    /// Operator identities and the operator CA.
    pub operators: Arc<operators::OperatorRegistry>,
    /// Where the operator API listens with TLS.
    pub operator_listening: Vec<String>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("settings", &self.settings)
            .field("listening", &self.listening)
            .finish_non_exhaustive()
    }
}

fn now() -> Instant {
    Instant::from_millis(crate::runtime::persist::now_ms())
}

/// Runs the daemon until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    std::fs::create_dir_all(&settings.state_dir).map_err(|e| {
        ServeError(format!(
            "cannot create the state directory {}: {e}",
            settings.state_dir.display()
        ))
    })?;
    let _ = std::fs::set_permissions(&settings.state_dir, std::fs::Permissions::from_mode(0o700));
    let options = StoreOptions {
        retention: crate::store::RetentionPolicy {
            max_events: Some(settings.events_retention.max_events),
            max_age_ms: Some(
                u64::try_from(settings.events_retention.max_age.as_millis()).unwrap_or(u64::MAX),
            ),
        },
        ..StoreOptions::default()
    };
    let location = settings.store_location();
    let store = crate::store::open(&location, options)
        .await
        .map_err(|e| err("opening the store")(format!("{}: {e}", location.redacted())))?;
    info!(store = %location.redacted(), "store open");
    let identity = identity::load_or_create(&*store, &settings.public_names)
        .await
        .map_err(err("the CA and server identity"))?;
    info!(
        ca = %identity.ca_fingerprint_hex(),
        server = %identity.server_fingerprint_hex(),
        "identity ready"
    );

    let revocations = Arc::new(
        revocations::LiveRevocations::load(&*store)
            .await
            .map_err(err("revocations"))?,
    );
    let metrics = Arc::new(metrics::Metrics::new());

    // A shared store: several daemons, each node's session owned by one of them.
    let cluster = match &location {
        crate::store::StoreLocation::Postgres(_) => {
            let id = cluster::daemon_id(settings.daemon_id.as_deref(), &settings.state_dir)
                .map_err(err("daemon id"))?;
            info!(daemon = %id, "sharing the store with other daemons");
            Some(
                cluster::Cluster::start(store.clone(), id)
                    .await
                    .map_err(|e| err("session ownership")(e.to_string()))?,
            )
        }
        crate::store::StoreLocation::Sqlite(_) => None,
    };
    let store_journal: Arc<dyn JournalStore> = match &cluster {
        Some(c) => Arc::new(cluster::FencedJournal { cluster: c.clone() }),
        None => store.clone(),
    };
    let config = session_config();
    let pool = StoragePool::with_idle_bytes(config.storage_len(), POOL_IDLE_BYTES);
    let runtime = Runtime::new(
        config,
        Arc::new(store_adapter::RuntimeWrites::new(
            store.clone(),
            metrics.clone(),
        )),
        pool.clone(),
        seed().map_err(err("seeding"))?,
    );
    if let Some(c) = &cluster {
        c.attach(&runtime);
        runtime.set_ownership(c.clone());
    }
    store_adapter::restore(&*store, &runtime, cluster.as_deref())
        .await
        .map_err(err("restoring nodes"))?;
    if cluster.is_some() {
        // Call ids of a range no other daemon takes.
        let receipt = store
            .write(vec![Write::ReserveIds {
                counter: "call_id",
                count: cluster::CALL_ID_BLOCK,
            }])
            .await
            .map_err(|e| err("call ids")(e.to_string()))?;
        let first = receipt.reserved.first().copied().unwrap_or(1);
        runtime.continue_call_ids(first.saturating_sub(1));
    }
    runtime.set_renewer(Arc::new(CaRenewer {
        ca: identity.ca.clone(),
        store: store.clone(),
    }));
    let _deadlines = runtime.spawn_deadlines();

    // Pairing: the service over the CA, its records from the store.
    let mut service = PairingService::new(
        identity.ca.clone(),
        identity.server_fingerprint(),
        PairingSettings {
            lifetime: protocol_core::pairing::CodeLifetime::from_millis(
                u64::try_from(settings.pairing.default_ttl.as_millis()).unwrap_or(600_000),
            )
            .map_err(|e| err("pairing TTL")(format!("{e:?}")))?,
            require_approval: settings.pairing.approval_required,
            starts_burst: settings.pairing.starts_burst,
            starts_refill_ms: u64::try_from(settings.pairing.starts_refill.as_millis())
                .unwrap_or(u64::MAX),
            ..PairingSettings::default()
        },
        now(),
    )
    .map_err(|e| err("pairing service")(e.to_string()))?;
    service.restore(
        store
            .pairing_records()
            .await
            .map_err(|e| err("pairing records")(e.to_string()))?,
    );
    let service = Arc::new(Mutex::new(service));
    let pairing = Arc::new(
        ServiceResponder::new(service.clone(), DaemonConfig::default())
            .map_err(|e| err("pairing")(e.to_string()))?
            .on_report({
                let store = store.clone();
                let runtime = runtime.clone();
                let service = service.clone();
                move |report| on_pairing_report(&*store, &runtime, &service, report.event)
            }),
    );

    let tls = identity
        .server_tls(revocations.clone())
        .map_err(err("TLS configuration"))?;
    let mut listening = Vec::new();
    let mut tasks = Vec::new();

    let quic = match settings.listen_quic {
        Some(addr) => {
            let limits = QuicLimits {
                max_connections: settings.max_connections,
                pairing_burst: settings.pairing.address_burst,
                pairing_refill: settings.pairing.address_refill,
                handshake_timeout: settings.handshake_timeout,
                ..QuicLimits::default()
            };
            let responder: Arc<dyn transport_tokio::pairing::PairingResponder> = pairing.clone();
            let (handle, task) = QuicEndpoint::server_with_pairing(
                addr,
                tls.clone(),
                revocations.clone(),
                limits,
                Registry::new(runtime.clone()),
                store_journal.clone(),
                pool.clone(),
                Some(responder),
                Some(&identity.endpoint_keys),
            )
            .map_err(|e| err("QUIC")(e.to_string()))?;
            listening.push(format!("quic://{}", handle.local_addr()));
            info!(addr = %handle.local_addr(), "QUIC listening");
            tasks.push(task);
            Some(handle)
        }
        None => None,
    };

    if let Some(addr) = settings.listen_tcp {
        let listener = Listener::bind(
            addr,
            tls.clone(),
            revocations.clone(),
            ListenerConfig {
                max_connections: settings.max_connections,
                pairing_burst: settings.pairing.address_burst,
                pairing_refill: settings.pairing.address_refill,
                handshake_timeout: settings.handshake_timeout,
            },
        )
        .await
        .map_err(|e| err("TCP listener")(e.to_string()))?;
        let local = listener
            .local_addr()
            .map_err(|e| err("TCP")(e.to_string()))?;
        listening.push(format!("tcp://{local}"));
        info!(addr = %local, "TCP + TLS listening");
        let (nodes_tx, mut nodes_rx) = mpsc::channel(1024);
        let (pairing_tx, mut pairing_rx) = mpsc::channel(64);
        tasks.push(tokio::spawn(async move {
            let _ = listener
                .run(Routes {
                    nodes: nodes_tx,
                    pairing: Some(pairing_tx),
                })
                .await;
        }));
        let registry = Registry::new(runtime.clone());
        let journal = store_journal.clone();
        let node_pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(conn) = nodes_rx.recv().await {
                let (registry, journal, pool) =
                    (registry.clone(), journal.clone(), node_pool.clone());
                tokio::spawn(async move {
                    let how = conn.serve_with(registry, journal, pool).await;
                    tracing::debug!(?how, "TCP connection ended");
                });
            }
        }));
        let responder = pairing.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(conn) = pairing_rx.recv().await {
                let responder = responder.clone();
                tokio::spawn(async move {
                    let peer = conn.peer_addr();
                    match serve_pairing(conn, &*responder).await {
                        Ok(outcome) => info!(%peer, ?outcome, "pairing run ended"),
                        Err(e) => warn!(%peer, error = %e, "pairing run failed"),
                    }
                });
            }
        }));
    }

    if let Some(addr) = settings.metrics {
        let bound = metrics::serve(addr, metrics.clone(), runtime.clone())
            .await
            .map_err(|e| err("metrics")(e.to_string()))?;
        info!(addr = %bound, "metrics on /metrics");
        listening.push(format!("http://{bound}/metrics"));
    }

    // Events past the retention policy go, once an hour.
    {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                let now_ms = crate::runtime::persist::now_ms();
                if let Err(e) = store.write(vec![Write::PruneEvents { now_ms }]).await {
                    warn!(error = %e, "pruning events failed");
                }
            }
        }));
    }

    if let Some(c) = &cluster {
        tasks.push(c.spawn_sync(runtime.clone(), revocations.clone(), pairing.clone()));
    }

    let operators = Arc::new(
        operators::OperatorRegistry::load(&*store)
            .await
            .map_err(err("operator identities"))?,
    );
    {
        // Another daemon sharing the store may add or revoke an operator.
        let (store, operators) = (store.clone(), operators.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Err(e) = operators.refresh(&*store).await {
                    warn!(error = %e, "reading operator identities failed");
                }
            }
        }));
    }
    let operator_listener = match settings.operator_listen {
        Some(addr) => {
            let tls = operators
                .listener_tls(&identity.ca, addr, &settings.public_names)
                .map_err(err("operator TLS"))?;
            let listener = OperatorListener::bind(addr, tls, ServerConfig::default())
                .await
                .map_err(|e| err("operator listener")(e.to_string()))?;
            let local = listener
                .local_addr()
                .map_err(|e| err("operator listener")(e.to_string()))?;
            info!(addr = %local, "operator API and console on https://{local}/");
            Some((listener, format!("https://{local}")))
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        store: store.clone(),
        runtime: runtime.clone(),
        pairing,
        revocations,
        identity,
        listening,
        started_at_ms: crate::runtime::persist::now_ms(),
        metrics,
        cluster: cluster.clone(),
        operators,
        operator_listening: operator_listener.iter().map(|(_, a)| a.clone()).collect(),
    });
    let api = ApiServer::bind(settings.socket_path())
        .map_err(|e| err("operator socket")(e.to_string()))?;
    info!(socket = %settings.socket_path().display(), "operator API listening");
    let operator = Arc::new(operator::Operator::new(shared.clone()));
    // Both listeners stop when `shutdown` does.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let remote = operator_listener.map(|(listener, _)| {
        let operator = operator.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { listener.serve(operator, stop).await })
    });
    let served = api
        .serve(operator, async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await;
    if let Some(remote) = remote {
        let _ = remote.await;
    }
    if let Some(q) = quic {
        q.shutdown().await;
    }
    for t in tasks {
        t.abort();
    }
    served.map_err(|e| err("operator API")(e.to_string()))
}

/// The store writes that bring it up to the pairing service's changes.
fn pairing_writes(changes: PairingChanges) -> impl Iterator<Item = Write> {
    let PairingChanges { put, deleted } = changes;
    put.into_iter().map(Write::PutPairing).chain(
        deleted
            .into_iter()
            .map(|(code_id, verifier)| Write::DeletePairing { code_id, verifier }),
    )
}

fn on_pairing_report(
    store: &Store,
    runtime: &Runtime,
    service: &Mutex<PairingService>,
    event: ServiceEvent,
) {
    let mut writes = Vec::new();
    if let ServiceEvent::Issued(cert) = &event {
        info!(device = %cert.device_id, "certificate issued");
        writes.push(Write::PutDevice(Device {
            device_id: cert.device_id.clone(),
            fingerprint: cert.fingerprint,
            cert_der: cert.der.clone(),
            paired_at_ms: crate::runtime::persist::now_ms(),
            name: None,
        }));
        runtime.know_node(NodeInfo {
            id: cert.device_id.clone(),
            online: false,
            last_seen_ms: 0,
            address: None,
            transport: None,
            platform: None,
            capabilities: Vec::new(),
        });
    }
    let changes = service
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take_changes();
    writes.extend(pairing_writes(changes));
    // Queued ahead of anything later; the run's answer is already on its way.
    drop(store.write(writes));
}

/// Renews node certificates with the daemon's CA and records them as the device's.
struct CaRenewer {
    ca: Arc<crate::ca::CertificateAuthority>,
    store: Arc<Store>,
}

impl crate::runtime::Renewer for CaRenewer {
    fn renew(&self, device_id: &str, csr_der: &[u8]) -> Result<Vec<u8>, String> {
        use rand_core::SeedableRng;
        let mut rng = chacha20::ChaCha20Rng::from_seed(seed()?);
        let now_ms = crate::runtime::persist::now_ms();
        let cert = self
            .ca
            .issue_client(csr_der, device_id, now_ms, &mut rng)
            .map_err(|e| e.to_string())?;
        info!(device = %device_id, "certificate renewed");
        // Recorded before the node has it: the next `node show` names the new one.
        drop(self.store.write(vec![Write::RenewDevice(Device {
            device_id: device_id.to_owned(),
            fingerprint: cert.fingerprint,
            cert_der: cert.der.clone(),
            paired_at_ms: now_ms,
            name: None,
        })]));
        Ok(cert.der)
    }
}

fn seed() -> Result<[u8; 32], String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| e.to_string())?;
    Ok(seed)
}

/// The address nodes should dial, for pairing URIs: the first public name with the
/// TCP port (pairing runs over TCP + TLS).
pub fn pairing_address(settings: &Settings, tcp: Option<SocketAddr>) -> String {
    let port = tcp.map_or(settings::DEFAULT_PORT, |a| a.port());
    let host = settings
        .public_names
        .first()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1".into());
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
