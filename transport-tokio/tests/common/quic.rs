//! A QUIC daemon and QUIC nodes on loopback, over the endpoint task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use chacha20::ChaCha20Rng;
use protocol_core::session::{Config, DaemonSession, NodeSession, OwnedNodeEvent};
use rand_core::SeedableRng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use transport_tokio::host::{Closed, Commands, Opened, Peer, Refusal, Sessions};
use transport_tokio::quic::{ConnectError, EndpointKeys, QuicEndpoint, QuicHandle, QuicLimits};
use transport_tokio::tls::{Fingerprint, RevocationList, server_config};
use transport_tokio::{MemJournals, StoragePool};

use super::{Ca, DaemonApp, DaemonSeen, DaemonSetup, Leaf, NodeApp, NodeCommand, WAIT};

type DSession = DaemonSession<Box<[u8]>>;
type NSession = NodeSession<Box<[u8]>>;

/// The daemon's registry: one session per node id, kept between connections, shared by
/// the QUIC endpoint and the TCP listener.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Mutex<RegistryInner>>,
}

struct RegistryInner {
    setup: DaemonSetup,
    sessions: HashMap<String, DSession>,
    conns: HashMap<String, u64>,
    events: mpsc::UnboundedSender<DaemonSeen>,
    closed: mpsc::UnboundedSender<(String, Closed)>,
    rng: ChaCha20Rng,
    /// Builds every session for this node id instead of the certificate's (a test of
    /// the binding).
    force_id: Option<String>,
}

impl Registry {
    /// The connection id the device's current connection has.
    pub fn connection_of(&self, id: &str) -> Option<u64> {
        self.inner.lock().unwrap().conns.get(id).copied()
    }
}

impl Sessions<DSession> for Registry {
    type App = DaemonApp;

    fn open(
        &mut self,
        peer: &Peer,
        commands: Commands<()>,
    ) -> Result<Opened<DSession, DaemonApp>, Refusal> {
        let mut r = self.inner.lock().unwrap();
        let r = &mut *r;
        let id = r.force_id.clone().unwrap_or_else(|| peer.device_id.clone());
        let session = match r.sessions.remove(&id) {
            Some(s) => s,
            None => DaemonSession::new(r.setup.sessions, &id, &mut r.rng).map_err(|e| {
                Refusal::new(protocol_core::wire::ErrorCode::Internal, format!("{e:?}"))
            })?,
        };
        r.conns
            .insert(peer.device_id.clone(), commands.connection());
        Ok(Opened {
            session,
            app: DaemonApp::new(&peer.device_id, r.events.clone(), &r.setup),
            journal_key: id.into(),
        })
    }

    fn closed(&mut self, peer: &Peer, session: DSession, _: DaemonApp, how: Closed) {
        let mut r = self.inner.lock().unwrap();
        r.sessions.insert(session.node_id().to_owned(), session);
        let _ = r.closed.send((peer.device_id.clone(), how));
    }
}

/// A daemon on a QUIC loopback endpoint. Its application calls `echo` when a node
/// registers.
pub struct QuicDaemon {
    pub addr: SocketAddr,
    pub ca: Ca,
    pub server: Leaf,
    pub revocation: Arc<RevocationList>,
    pub events: mpsc::UnboundedReceiver<DaemonSeen>,
    pub closed: mpsc::UnboundedReceiver<(String, Closed)>,
    pub handle: QuicHandle<()>,
    pub registry: Registry,
    task: JoinHandle<()>,
    tls: Arc<rustls::ServerConfig>,
    limits: QuicLimits,
    storage_len: usize,
}

impl Drop for QuicDaemon {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl QuicDaemon {
    pub fn start(limits: QuicLimits) -> Self {
        Self::start_with(limits, None)
    }

    pub fn start_with(limits: QuicLimits, force_id: Option<&str>) -> Self {
        Self::start_setup(limits, force_id, DaemonSetup::default())
    }

    pub fn start_setup(limits: QuicLimits, force_id: Option<&str>, setup: DaemonSetup) -> Self {
        Self::start_keyed(limits, force_id, setup, None)
    }

    /// Dies at once (no goodbye, no close on the wire) and starts again on the same
    /// address, with the same certificates and sessions, and the endpoint keys `keys`.
    pub async fn crash_and_restart(&mut self, keys: Option<&EndpointKeys>) {
        self.task.abort();
        let (handle, task) = loop {
            match QuicEndpoint::server_with_pairing(
                self.addr,
                self.tls.clone(),
                self.revocation.clone(),
                self.limits,
                self.registry.clone(),
                Arc::new(MemJournals::new()),
                StoragePool::new(self.storage_len, 16),
                None,
                keys,
            ) {
                Ok(started) => break started,
                // The aborted task lets go of the socket at its next poll.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        self.handle = handle;
        self.task = task;
    }

    pub fn start_keyed(
        limits: QuicLimits,
        force_id: Option<&str>,
        setup: DaemonSetup,
        keys: Option<&EndpointKeys>,
    ) -> Self {
        let config = setup.sessions;
        let ca = Ca::new("tern test CA");
        let server = ca.leaf("ternd", true);
        let revocation = Arc::new(RevocationList::new());
        let tls = server_config(
            ca.der.clone(),
            vec![server.cert.clone()],
            server.key(),
            revocation.clone(),
        )
        .unwrap();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let registry = Registry {
            inner: Arc::new(Mutex::new(RegistryInner {
                setup,
                sessions: HashMap::new(),
                conns: HashMap::new(),
                events: events_tx,
                closed: closed_tx,
                rng: ChaCha20Rng::from_seed([7; 32]),
                force_id: force_id.map(str::to_owned),
            })),
        };
        let (handle, task) = QuicEndpoint::server_with_pairing(
            "127.0.0.1:0".parse().unwrap(),
            tls.clone(),
            revocation.clone(),
            limits,
            registry.clone(),
            Arc::new(MemJournals::new()),
            StoragePool::new(config.storage_len(), 16),
            None,
            keys,
        )
        .unwrap();
        Self {
            addr: handle.local_addr(),
            ca,
            server,
            revocation,
            events,
            closed,
            handle,
            registry,
            task,
            tls,
            limits,
            storage_len: config.storage_len(),
        }
    }

    pub fn pin(&self) -> Fingerprint {
        self.server.fingerprint()
    }

    pub async fn expect<T>(&mut self, mut pick: impl FnMut(&DaemonSeen) -> Option<T>) -> T {
        tokio::time::timeout(WAIT, async {
            loop {
                let seen = self.events.recv().await.expect("daemon running");
                if let Some(t) = pick(&seen) {
                    return t;
                }
            }
        })
        .await
        .expect("daemon event in time")
    }

    pub async fn expect_closed(&mut self, id: &str) -> Closed {
        tokio::time::timeout(WAIT, async {
            loop {
                let (who, how) = self.closed.recv().await.expect("daemon running");
                if who == id {
                    return how;
                }
            }
        })
        .await
        .expect("connection closed in time")
    }
}

/// The node's side: its one session, lent to each connection.
struct Holder {
    session: Arc<Mutex<Option<NSession>>>,
    events: mpsc::UnboundedSender<OwnedNodeEvent>,
    closed: mpsc::UnboundedSender<Closed>,
}

impl Sessions<NSession> for Holder {
    type App = NodeApp;

    fn open(
        &mut self,
        _: &Peer,
        _: Commands<NodeCommand>,
    ) -> Result<Opened<NSession, NodeApp>, Refusal> {
        let session = self.session.lock().unwrap().take().ok_or_else(|| {
            Refusal::new(protocol_core::wire::ErrorCode::Overloaded, "session in use")
        })?;
        Ok(Opened {
            session,
            app: NodeApp::new(self.events.clone()),
            journal_key: "self".into(),
        })
    }

    fn closed(&mut self, _: &Peer, session: NSession, _: NodeApp, how: Closed) {
        *self.session.lock().unwrap() = Some(session);
        let _ = self.closed.send(how);
    }
}

/// A node on its own QUIC client endpoint: it registers `echo` and answers calls with
/// their input.
pub struct QuicNode {
    pub events: mpsc::UnboundedReceiver<OwnedNodeEvent>,
    pub closed: mpsc::UnboundedReceiver<Closed>,
    pub handle: QuicHandle<NodeCommand>,
    pub conn: u64,
    session: Arc<Mutex<Option<NSession>>>,
    task: JoinHandle<()>,
}

impl Drop for QuicNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl QuicNode {
    pub async fn connect(
        daemon: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        node_id: &str,
        config: Config,
    ) -> Result<Self, ConnectError> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let session = Arc::new(Mutex::new(Some(
            NodeSession::new(config, node_id, "linux-test", None).unwrap(),
        )));
        let holder = Holder {
            session: session.clone(),
            events: events_tx,
            closed: closed_tx,
        };
        let (handle, task) = QuicEndpoint::client(
            "127.0.0.1:0".parse().unwrap(),
            QuicLimits::default(),
            holder,
            Arc::new(MemJournals::new()),
            StoragePool::new(config.storage_len(), 1),
        )
        .unwrap();
        let conn = match handle.connect(daemon, "127.0.0.1", tls).await {
            Ok(conn) => conn,
            Err(e) => {
                task.abort();
                return Err(e);
            }
        };
        Ok(Self {
            events,
            closed,
            handle,
            conn,
            session,
            task,
        })
    }

    pub async fn send(&self, command: NodeCommand) {
        self.handle.commands(self.conn).send(command).await.unwrap();
    }

    pub async fn expect<T>(&mut self, mut pick: impl FnMut(&OwnedNodeEvent) -> Option<T>) -> T {
        tokio::time::timeout(WAIT, async {
            loop {
                let ev = self.events.recv().await.expect("node running");
                if let Some(t) = pick(&ev) {
                    return t;
                }
            }
        })
        .await
        .expect("node event in time")
    }

    /// The session, once its connection has given it back.
    pub async fn take_session(&self) -> NSession {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(s) = self.session.lock().unwrap().take() {
                    return s;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("session back in time")
    }

    pub async fn expect_closed(&mut self) -> Closed {
        tokio::time::timeout(WAIT, self.closed.recv())
            .await
            .expect("closed in time")
            .expect("node endpoint running")
    }
}

/// A raw QUIC client (the `quinn` crate) for tests that write bytes no session would.
pub async fn raw_client(
    daemon: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint
        .connect_with(
            quinn::ClientConfig::new(Arc::new(crypto)),
            daemon,
            "127.0.0.1",
        )
        .unwrap()
        .await
}
