//! The daemon's real TLS listener, CA and pairing service on loopback, and a node's
//! dialer over host sockets, for the embedded transport's tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chacha20::ChaCha20Rng;
use daemon::ca::{
    CertificateAuthority, Fingerprint as CaFingerprint, IssuancePolicy, ServerIdentity,
};
use daemon::pairing::{PairingService, PairingSettings};
use daemon::pairing_responder::ServiceResponder;
use embedded_io_adapters::tokio_1::FromTokio;
use protocol_core::pairing::{DaemonConfig, PairingCode};
use protocol_core::session::{
    CallState, Config, DaemonSession, Instant, NodeSession, OwnedDaemonEvent, OwnedNodeEvent,
    OwnedOutcome,
};
use protocol_core::wire::{
    Capabilities, CapabilityDescriptor, GoodbyeReason, Outcome, Payload, Register,
};
use rand_core::SeedableRng;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use transport_embedded::dial::{Connection, DialError, Dialer};
use transport_embedded::tls::Fingerprint;
use transport_embedded::{Ended, Identity, LinkError, NodeApp, NodeKey};
use transport_tokio::clock::now;
use transport_tokio::pairing::serve_pairing;
use transport_tokio::tcp::{DeviceConnection, Listener, ListenerConfig, Routes};
use transport_tokio::tls::{RevocationList, server_config};
use transport_tokio::{Application, Driver, Journal, MemJournals, StoragePool};

pub const WAIT: Duration = Duration::from_secs(10);
pub const JSON: &str = "application/json";

/// A node's dialer over the host's TCP.
#[derive(Debug, Default)]
pub struct HostDialer {
    pub dials: usize,
}

pub struct HostConnection(tokio::net::TcpStream);

impl Connection for HostConnection {
    type Reader<'r> = FromTokio<tokio::net::tcp::ReadHalf<'r>>;
    type Writer<'w> = FromTokio<tokio::net::tcp::WriteHalf<'w>>;

    fn split(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        let (r, w) = self.0.split();
        (FromTokio::new(r), FromTokio::new(w))
    }

    async fn close(mut self) {
        let _ = self.0.shutdown().await;
    }
}

impl Dialer for HostDialer {
    type Connection<'c> = HostConnection;

    async fn dial(&mut self, daemon: &str) -> Result<HostConnection, DialError> {
        self.dials += 1;
        let addr: SocketAddr = daemon.parse().map_err(|_| DialError::Unresolvable)?;
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|_| DialError::Unreachable)?;
        let _ = stream.set_nodelay(true);
        Ok(HostConnection(stream))
    }
}

pub fn rng(seed: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([seed; 32])
}

/// What a test daemon's application does on a node's connection.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Input of the `echo` calls made when the node registers...
    pub echo_input: Vec<u8>,
    /// ...and how many.
    pub calls: usize,
    /// Once a call succeeded, say goodbye with this reason...
    pub goodbye: Option<GoodbyeReason>,
    /// ...on this many connections more.
    pub goodbyes: usize,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            echo_input: br#"{"x":1}"#.to_vec(),
            calls: 1,
            goodbye: Some(GoodbyeReason::Shutdown),
            goodbyes: usize::MAX,
        }
    }
}

/// What the daemon's application saw, by device.
pub type Seen = (String, OwnedDaemonEvent);

/// The daemon on loopback: its CA (the daemon's own code), its server certificate, the
/// transport's TCP + TLS listener, a pairing service behind the daemon's responder, and
/// one session per device that outlives its connections.
pub struct Daemon {
    pub addr: SocketAddr,
    pub ca: Arc<CertificateAuthority>,
    pub server: ServerIdentity,
    pub revocation: Arc<RevocationList>,
    pub responder: Arc<ServiceResponder>,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl Daemon {
    pub async fn start() -> Self {
        Self::start_listening(ListenerConfig::default()).await
    }

    /// A daemon whose listener runs with `listener` (its cap, say).
    pub async fn start_listening(listener: ListenerConfig) -> Self {
        let mut rng = rng(9);
        let t0 = now().as_millis();
        let ca = Arc::new(
            CertificateAuthority::create("tern CA", t0, IssuancePolicy::default(), &mut rng)
                .unwrap(),
        );
        let server = ca
            .issue_server(&["127.0.0.1".into()], t0, &mut rng)
            .unwrap();
        Self::serve(ca, server.clone(), server.fingerprint, listener).await
    }

    /// A daemon whose pairing service announces `announced` as its server fingerprint
    /// (a daemon behind a relay that terminates TLS with `server`).
    pub async fn start_with(
        ca: Arc<CertificateAuthority>,
        server: ServerIdentity,
        announced: CaFingerprint,
    ) -> Self {
        Self::serve(ca, server, announced, ListenerConfig::default()).await
    }

    async fn serve(
        ca: Arc<CertificateAuthority>,
        server: ServerIdentity,
        announced: CaFingerprint,
        listener: ListenerConfig,
    ) -> Self {
        let service =
            PairingService::new(ca.clone(), announced, PairingSettings::default(), now()).unwrap();
        let responder = Arc::new(
            ServiceResponder::new(Arc::new(Mutex::new(service)), DaemonConfig::default()).unwrap(),
        );
        let revocation = Arc::new(RevocationList::new());
        let tls = server_config(
            CertificateDer::from(ca.certificate_der().to_vec()),
            vec![CertificateDer::from(server.cert_der.clone())],
            private_key(&server.key_pem),
            revocation.clone(),
        )
        .unwrap();
        let listener = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            tls,
            revocation.clone(),
            listener,
        )
        .await
        .unwrap();
        let addr = listener.local_addr().unwrap();
        let (nodes_tx, nodes_rx) = mpsc::channel(8);
        let (pairing_tx, mut pairing_rx) = mpsc::channel(8);
        let listen = tokio::spawn(async move {
            let _ = listener
                .run(Routes {
                    nodes: nodes_tx,
                    pairing: Some(pairing_tx),
                })
                .await;
        });
        let serving = responder.clone();
        let pairing = tokio::spawn(async move {
            while let Some(conn) = pairing_rx.recv().await {
                let responder = serving.clone();
                tokio::spawn(async move {
                    let _ = serve_pairing(conn, &*responder).await;
                });
            }
        });
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let nodes = tokio::spawn(serve_nodes(nodes_rx, seen_tx, behaviour.clone()));
        Self {
            addr,
            ca,
            server,
            revocation,
            responder,
            seen,
            behaviour,
            tasks: vec![listen, pairing, nodes],
        }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn pin(&self) -> Fingerprint {
        Fingerprint(self.server.fingerprint.0)
    }

    /// A pairing code for `device`.
    pub fn code(&self, device: &str, approval: bool) -> PairingCode {
        self.responder
            .service()
            .lock()
            .unwrap()
            .create_code(now(), device, None, Some(approval), &mut rng(3))
            .unwrap()
    }

    /// An identity issued by this daemon's CA for a fresh node key, without pairing.
    pub fn issue(&self, device: &str, pin: Fingerprint) -> Identity {
        issue(&self.ca, device, pin, &self.address())
    }

    /// The next thing the daemon's application saw that `pick` selects.
    pub async fn expect<T>(&mut self, mut pick: impl FnMut(&Seen) -> Option<T>) -> T {
        tokio::time::timeout(WAIT, async {
            loop {
                let seen = self.seen.recv().await.expect("daemon running");
                if let Some(t) = pick(&seen) {
                    return t;
                }
            }
        })
        .await
        .expect("daemon event in time")
    }

    /// The answer to the next `echo` call that succeeded, by size.
    pub async fn answered(&mut self) -> usize {
        self.expect(|(_, ev)| match ev {
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
}

/// A client certificate from `ca` for a fresh node key, as the identity a paired node
/// keeps.
pub fn issue(ca: &CertificateAuthority, device: &str, pin: Fingerprint, daemon: &str) -> Identity {
    let key = NodeKey::generate(&mut rng(device.len() as u8));
    let mut csr = [0u8; transport_embedded::csr::MAX_CSR_LEN];
    let csr = transport_embedded::csr::build_csr(&key, "tern-node", &mut csr).unwrap();
    let cert = ca
        .issue_client(csr, device, now().as_millis(), &mut rng(5))
        .unwrap();
    Identity::new(device, key, &cert.der, ca.certificate_der(), pin, daemon).unwrap()
}

pub fn private_key(pem: &str) -> PrivateKeyDer<'static> {
    let der = KeyPair::from_pem(pem).unwrap().serialize_der();
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))
}

/// A P-256 key pair from rcgen (for certificates the daemon's CA issues to other keys).
pub fn rcgen_key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
}

pub fn rcgen_csr(key: &KeyPair) -> Vec<u8> {
    CertificateParams::default()
        .serialize_request(key)
        .unwrap()
        .der()
        .to_vec()
}

/// Serves node connections one after the other, each device's session kept across its
/// connections (so a reconnect resumes it).
async fn serve_nodes(
    mut nodes: mpsc::Receiver<DeviceConnection>,
    seen: mpsc::UnboundedSender<Seen>,
    behaviour: Arc<Mutex<Behaviour>>,
) {
    let config = Config::server(64 * 1024);
    let pool = StoragePool::new(config.storage_len(), 4);
    let journal = Arc::new(MemJournals::new());
    let mut sessions: HashMap<String, DaemonSession<Box<[u8]>>> = HashMap::new();
    let mut seed = 0u8;
    while let Some(conn) = nodes.recv().await {
        let id = conn.device_id().to_owned();
        seed = seed.wrapping_add(1);
        let session = sessions
            .entry(id.clone())
            .or_insert_with(|| DaemonSession::new(config, &id, &mut rng(seed)).unwrap());
        let this = {
            let mut shared = behaviour.lock().unwrap();
            let mut this = shared.clone();
            match shared.goodbyes {
                0 => this.goodbye = None,
                n => shared.goodbyes = n - 1,
            }
            this
        };
        let mut app = DaemonApp {
            id: id.clone(),
            seen: seen.clone(),
            behaviour: this,
        };
        let driver = Driver::new(
            session,
            &pool,
            Journal::new(journal.clone(), id.as_str()),
            &mut app,
        );
        let _ = conn.serve(driver).await;
    }
}

struct DaemonApp {
    id: String,
    seen: mpsc::UnboundedSender<Seen>,
    behaviour: Behaviour,
}

impl Application<DaemonSession<Box<[u8]>>> for DaemonApp {
    type Command = ();

    fn handle_events(&mut self, s: &mut DaemonSession<Box<[u8]>>, now: Instant) {
        while let Some(ev) = s.poll_event() {
            let ev = OwnedDaemonEvent::from(ev);
            let mut goodbye = None;
            match &ev {
                OwnedDaemonEvent::Register { .. } => {
                    for _ in 0..self.behaviour.calls {
                        let input = Payload {
                            content_type: JSON,
                            data: &self.behaviour.echo_input,
                        };
                        s.call(now, "echo", input, 5_000).unwrap();
                    }
                }
                OwnedDaemonEvent::CallUpdate {
                    state: CallState::Succeeded,
                    ..
                } => goodbye = self.behaviour.goodbye,
                _ => {}
            }
            let _ = self.seen.send((self.id.clone(), ev));
            if let Some(reason) = goodbye {
                s.close(now, reason);
            }
        }
    }

    fn handle_command(&mut self, _: &mut DaemonSession<Box<[u8]>>, _: Instant, (): ()) {}
}

const ECHO: [CapabilityDescriptor<'static>; 1] = [CapabilityDescriptor {
    name: "echo",
    version: 1,
    input: JSON,
    output: JSON,
    needs_approval: false,
}];

/// A node application: registers `echo` on a fresh session and answers every call with
/// its input; keeps what it saw.
#[derive(Debug, Default)]
pub struct EchoApp {
    pub events: Vec<OwnedNodeEvent>,
    pub outcomes: Vec<Result<Ended, String>>,
}

impl NodeApp for EchoApp {
    fn on_events(&mut self, s: &mut NodeSession<&mut [u8]>, _now: Instant) {
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
            self.events.push(ev);
        }
    }

    fn connection_ended(&mut self, outcome: &Result<Ended, LinkError>) {
        self.outcomes
            .push(outcome.as_ref().copied().map_err(|e| e.to_string()));
    }
}

impl EchoApp {
    /// How many hello exchanges finished, and how many of them resumed.
    pub fn connects(&self) -> (usize, usize) {
        let connected = self
            .events
            .iter()
            .filter_map(|e| match e {
                OwnedNodeEvent::Connected { resumed, .. } => Some(*resumed),
                _ => None,
            })
            .collect::<Vec<_>>();
        (connected.len(), connected.iter().filter(|r| **r).count())
    }
}

/// A fresh arena for a node's buffers.
pub fn arena(len: usize) -> Vec<u8> {
    vec![0u8; len]
}
