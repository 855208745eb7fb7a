//! Certificates, a daemon and nodes on loopback for the transport tests.
#![allow(dead_code, clippy::unwrap_used)]

pub mod quic;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chacha20::ChaCha20Rng;
use protocol_core::frame::FrameDecoder;
use protocol_core::session::{
    CallState, Config, DaemonSession, Instant, NodeSession, OwnedDaemonEvent, OwnedNodeEvent,
    OwnedOutcome,
};
use protocol_core::wire::{
    Capabilities, CapabilityDescriptor, GoodbyeReason, Message, Outcome, Payload, Register,
    decode_message,
};
use rand_core::SeedableRng;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use transport_tokio::tcp::{DeviceConnection, Listener, ListenerConfig, PairingConnection, Routes};
use transport_tokio::tls::{Fingerprint, RevocationList, client_config, server_config};
use transport_tokio::{Application, Driver, Ended, Journal, MemJournals, StoragePool};

pub const JSON: &str = "application/json";
pub const WAIT: Duration = Duration::from_secs(5);

/// A certificate authority for tests.
pub struct Ca {
    pub der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let cert = params.self_signed(&key).unwrap();
        Self {
            der: CertificateDer::from(cert.der().to_vec()),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate with subject CN `cn`: a server's (with an IP SAN for
    /// 127.0.0.1) or a node's.
    pub fn leaf(&self, cn: &str, server: bool) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names = if server {
            vec!["127.0.0.1".to_owned()]
        } else {
            vec![]
        };
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: CertificateDer::from(cert.der().to_vec()),
            key: key.serialize_der(),
        }
    }
}

pub struct Leaf {
    pub cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert)
    }

    /// A node's client configuration with this certificate, pinning `pin`.
    pub fn client(&self, pin: Fingerprint) -> Arc<rustls::ClientConfig> {
        client_config(pin, vec![self.cert.clone()], self.key()).unwrap()
    }
}

/// What the daemon's application saw of one connection.
pub type DaemonSeen = (String, OwnedDaemonEvent);

/// A daemon on loopback: the listener, and a task that drives a session per device
/// connection. Its application calls `echo` when a node registers.
pub struct Daemon {
    pub addr: SocketAddr,
    pub ca: Ca,
    pub server: Leaf,
    pub revocation: Arc<RevocationList>,
    pub events: mpsc::UnboundedReceiver<DaemonSeen>,
    pub ended: mpsc::UnboundedReceiver<(String, io::Result<Ended>)>,
    pub kinds: mpsc::UnboundedReceiver<Option<rustls::HandshakeKind>>,
    pub pairing: mpsc::Receiver<PairingConnection>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// What a test daemon's sessions are, and the `echo` calls its application makes when a
/// node registers.
#[derive(Debug, Clone)]
pub struct DaemonSetup {
    pub sessions: Config,
    pub calls: usize,
    pub input: Vec<u8>,
}

impl Default for DaemonSetup {
    fn default() -> Self {
        Self {
            sessions: Config::server(64 * 1024),
            calls: 1,
            input: br#"{"x":1}"#.to_vec(),
        }
    }
}

impl Daemon {
    pub async fn start(config: ListenerConfig) -> Self {
        Self::start_with(config, DaemonSetup::default()).await
    }

    pub async fn start_with(config: ListenerConfig, setup: DaemonSetup) -> Self {
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
        let listener = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            tls,
            revocation.clone(),
            config,
        )
        .await
        .unwrap();
        let addr = listener.local_addr().unwrap();
        let (nodes_tx, mut nodes_rx) = mpsc::channel::<DeviceConnection>(64);
        let (pairing_tx, pairing) = mpsc::channel(8);
        let (events_tx, events) = mpsc::unbounded_channel();
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let (kinds_tx, kinds) = mpsc::unbounded_channel();
        let routes = Routes {
            nodes: nodes_tx,
            pairing: Some(pairing_tx),
        };
        let listen = tokio::spawn(async move {
            let _ = listener.run(routes).await;
        });
        let serve = tokio::spawn(async move {
            let config = setup.sessions;
            let pool = StoragePool::new(config.storage_len(), 16);
            let mut seed = 0u8;
            while let Some(conn) = nodes_rx.recv().await {
                seed = seed.wrapping_add(1);
                let pool = pool.clone();
                let (events_tx, ended_tx) = (events_tx.clone(), ended_tx.clone());
                let setup = setup.clone();
                let _ = kinds_tx.send(conn.handshake_kind());
                tokio::spawn(async move {
                    let id = conn.device_id().to_owned();
                    let mut rng = ChaCha20Rng::from_seed([seed; 32]);
                    let mut session: DaemonSession<Box<[u8]>> =
                        DaemonSession::new(config, &id, &mut rng).unwrap();
                    let journal = Journal::new(Arc::new(MemJournals::new()), id.as_str());
                    let mut app = DaemonApp::new(&id, events_tx, &setup);
                    let driver = Driver::new(&mut session, &pool, journal, &mut app);
                    let ended = conn.serve(driver).await;
                    let _ = ended_tx.send((id, ended));
                });
            }
        });
        Self {
            addr,
            ca,
            server,
            revocation,
            events,
            ended,
            kinds,
            pairing,
            tasks: vec![listen, serve],
        }
    }

    pub fn pin(&self) -> Fingerprint {
        self.server.fingerprint()
    }

    /// The next event of the application that `pick` selects.
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
}

pub struct DaemonApp {
    id: String,
    events: mpsc::UnboundedSender<DaemonSeen>,
    calls: usize,
    input: Vec<u8>,
}

impl DaemonApp {
    pub fn new(id: &str, events: mpsc::UnboundedSender<DaemonSeen>, setup: &DaemonSetup) -> Self {
        Self {
            id: id.to_owned(),
            events,
            calls: setup.calls,
            input: setup.input.clone(),
        }
    }
}

impl Application<DaemonSession<Box<[u8]>>> for DaemonApp {
    type Command = ();

    fn handle_events(&mut self, s: &mut DaemonSession<Box<[u8]>>, now: Instant) {
        while let Some(ev) = s.poll_event() {
            let ev = OwnedDaemonEvent::from(ev);
            if let OwnedDaemonEvent::Register { .. } = ev {
                for _ in 0..self.calls {
                    let input = Payload {
                        content_type: JSON,
                        data: &self.input,
                    };
                    s.call(now, "echo", input, 5_000).unwrap();
                }
            }
            let _ = self.events.send((self.id.clone(), ev));
        }
    }

    fn handle_command(&mut self, _: &mut DaemonSession<Box<[u8]>>, _: Instant, (): ()) {}
}

/// Commands a test sends to a node.
#[derive(Debug)]
pub enum NodeCommand {
    SendEvent(&'static str),
    /// `count` events named `name` with `len` bytes of payload each, queued at once so
    /// their frames leave back to back.
    SendEvents {
        name: &'static str,
        count: usize,
        len: usize,
    },
    Close,
}

/// A node driven on its own task: it registers `echo` and answers calls with their input.
pub struct Node {
    pub events: mpsc::UnboundedReceiver<OwnedNodeEvent>,
    pub commands: mpsc::Sender<NodeCommand>,
    pub task: JoinHandle<io::Result<Ended>>,
}

impl Node {
    pub fn spawn<IO>(io: IO, node_id: &str, config: Config) -> Self
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        Self::spawn_session(
            io,
            NodeSession::new(config, node_id, "linux-test", None).unwrap(),
        )
    }

    /// Drives an existing session (resuming it) over `io`.
    pub fn spawn_session<IO>(io: IO, mut session: NodeSession<Box<[u8]>>) -> Self
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (commands, mut rx) = mpsc::channel(8);
        let node_id = String::from("node");
        let config = *session.config();
        let task = tokio::spawn(async move {
            let pool = StoragePool::new(config.storage_len(), 1);
            let journal = Journal::new(Arc::new(MemJournals::new()), node_id.as_str());
            let mut app = NodeApp { events: events_tx };
            Driver::new(&mut session, &pool, journal, &mut app)
                .with_commands(&mut rx)
                .run(io)
                .await
        });
        Self {
            events,
            commands,
            task,
        }
    }

    /// The next event that `pick` selects.
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

    /// How the node's connection ended.
    pub async fn ended(self) -> io::Result<Ended> {
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("node ends in time")
            .expect("node task")
    }
}

pub struct NodeApp {
    events: mpsc::UnboundedSender<OwnedNodeEvent>,
}

impl NodeApp {
    pub fn new(events: mpsc::UnboundedSender<OwnedNodeEvent>) -> Self {
        Self { events }
    }
}

const ECHO: [CapabilityDescriptor<'static>; 1] = [CapabilityDescriptor {
    name: "echo",
    version: 1,
    input: JSON,
    output: JSON,
    needs_approval: false,
}];

impl Application<NodeSession<Box<[u8]>>> for NodeApp {
    type Command = NodeCommand;

    fn handle_events(&mut self, s: &mut NodeSession<Box<[u8]>>, _: Instant) {
        while let Some(ev) = s.poll_event() {
            let ev = OwnedNodeEvent::from(ev);
            match &ev {
                OwnedNodeEvent::Connected { resumed: false, .. } => {
                    let capabilities = Capabilities::new(&ECHO).unwrap();
                    s.register(Register { capabilities }).unwrap();
                }
                OwnedNodeEvent::Call { call_id, input, .. } => {
                    let out = Payload {
                        content_type: &input.content_type,
                        data: &input.data,
                    };
                    s.complete(*call_id, Outcome::Success(out)).unwrap();
                }
                _ => {}
            }
            let _ = self.events.send(ev);
        }
    }

    fn handle_command(&mut self, s: &mut NodeSession<Box<[u8]>>, now: Instant, c: NodeCommand) {
        match c {
            NodeCommand::SendEvent(name) => {
                let payload = Payload {
                    content_type: JSON,
                    data: b"{}",
                };
                s.send_event(name, payload).unwrap();
            }
            NodeCommand::SendEvents { name, count, len } => {
                let data = vec![b'x'; len];
                for _ in 0..count {
                    let payload = Payload {
                        content_type: JSON,
                        data: &data,
                    };
                    s.send_event(name, payload).unwrap();
                }
            }
            NodeCommand::Close => s.close(now, GoodbyeReason::Shutdown),
        }
    }
}

/// A node's default configuration in these tests.
pub fn node_config() -> Config {
    Config::server(16 * 1024)
}

/// Reads frames until the stream ends (or fails); returns the frames' messages' error
/// codes and how the stream ended.
pub async fn read_until_end<IO: AsyncRead + Unpin>(
    io: &mut IO,
) -> (Vec<protocol_core::wire::ErrorCode>, io::Result<()>) {
    let mut dec = FrameDecoder::new(vec![0u8; 1 << 20], 1 << 20).unwrap();
    let mut codes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let end = tokio::time::timeout(WAIT, async {
        loop {
            let n = match io.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) => return Err(e),
            };
            let mut input = &buf[..n];
            while !input.is_empty() {
                let p = dec.decode(input).unwrap();
                if let Some(frame) = p.frame
                    && let Ok(Message::Error(e)) = decode_message(frame)
                {
                    codes.push(e.code);
                }
                input = &input[p.consumed..];
            }
        }
    })
    .await
    .expect("stream ends in time");
    (codes, end)
}

/// The TLS alert the peer sent, if `e` is one.
pub fn alert(e: &io::Error) -> Option<rustls::AlertDescription> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(a) => Some(*a),
        _ => None,
    }
}

/// The events of `name` the daemon receives next, by payload size; a connection closed
/// meanwhile fails the test.
pub async fn received_events(
    events: &mut mpsc::UnboundedReceiver<DaemonSeen>,
    name: &str,
    count: usize,
) -> Vec<usize> {
    next_seen(events, count, |ev| match ev {
        OwnedDaemonEvent::Event {
            name: n, payload, ..
        } if n == name => Some(payload.data.len()),
        _ => None,
    })
    .await
}

/// The answers to the daemon's `echo` calls, by size; a call that ends otherwise, or a
/// connection closed meanwhile, fails the test.
pub async fn answered_calls(
    events: &mut mpsc::UnboundedReceiver<DaemonSeen>,
    count: usize,
) -> Vec<usize> {
    next_seen(events, count, |ev| match ev {
        OwnedDaemonEvent::CallUpdate {
            state: CallState::Succeeded,
            outcome: Some(OwnedOutcome::Success(p)),
            ..
        } => Some(p.data.len()),
        OwnedDaemonEvent::CallUpdate { state, .. } if state.is_final() => {
            panic!("call ended {state:?}")
        }
        _ => None,
    })
    .await
}

/// The next `count` values `pick` finds among the daemon's events.
async fn next_seen<T>(
    events: &mut mpsc::UnboundedReceiver<DaemonSeen>,
    count: usize,
    mut pick: impl FnMut(&OwnedDaemonEvent) -> Option<T>,
) -> Vec<T> {
    tokio::time::timeout(WAIT, async {
        let mut found = Vec::new();
        while found.len() < count {
            let (_, ev) = events.recv().await.expect("daemon running");
            if let OwnedDaemonEvent::Disconnected(why) = ev {
                panic!("disconnected: {why:?}");
            }
            found.extend(pick(&ev));
        }
        found
    })
    .await
    .expect("daemon events in time")
}
