//! Who the node accepts as the daemon, over the daemon's real TLS listener: the pinned
//! certificate with its key, and nobody else.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{Daemon, EchoApp, HostDialer, arena, private_key, rcgen_csr, rcgen_key, rng};
use daemon::ca::{CertificateAuthority, IssuancePolicy};
use protocol_core::session::{Config, OwnedDaemonEvent};
use protocol_core::wire::GoodbyeReason;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use transport_embedded::session::Node;
use transport_embedded::tls::{TlsFailure, VerifyRefusal};
use transport_embedded::{
    Ended, Identity, LinkError, NodeOptions, PeerClose, Refused, SessionBuffers, run_session,
};
use transport_tokio::clock::now;
use transport_tokio::tcp::{Listener, ListenerConfig, Routes};
use transport_tokio::tls::{RevocationList, server_config};

const CONFIG: Config = Config::embedded(1024);

/// Runs one node-plane connection for `identity` against whatever listens at its
/// address.
async fn connect_once(identity: &Identity) -> (Result<Ended, LinkError>, EchoApp) {
    connect_with(CONFIG, identity).await
}

async fn connect_with(config: Config, identity: &Identity) -> (Result<Ended, LinkError>, EchoApp) {
    let mut memory = arena(SessionBuffers::arena_len(&config));
    let buffers = SessionBuffers::carve(&config, &mut memory).unwrap();
    let mut node = Node::new(config, identity, "test", buffers, NodeOptions::default()).unwrap();
    let mut app = EchoApp::default();
    let outcome = run_session(
        &mut node,
        identity,
        &mut HostDialer::default(),
        &mut app,
        &mut rng(1),
    )
    .await;
    (outcome, app)
}

/// A TLS listener that is not the daemon: `tls` decides what it shows.
struct Impostor {
    addr: String,
    _tasks: Vec<JoinHandle<()>>,
}

impl Impostor {
    async fn start(tls: Arc<rustls::ServerConfig>) -> Self {
        let revocation = Arc::new(RevocationList::new());
        let listener = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            tls,
            revocation,
            ListenerConfig::default(),
        )
        .await
        .unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (nodes, mut nodes_rx) = mpsc::channel(1);
        let run = tokio::spawn(async move {
            let _ = listener
                .run(Routes {
                    nodes,
                    pairing: None,
                })
                .await;
        });
        let drain = tokio::spawn(async move { while nodes_rx.recv().await.is_some() {} });
        Self {
            addr,
            _tasks: vec![run, drain],
        }
    }
}

/// The daemon's server configuration with another certificate and key.
fn shown(
    ca: &CertificateAuthority,
    cert: Vec<u8>,
    key: PrivateKeyDer<'static>,
) -> Arc<rustls::ServerConfig> {
    server_config(
        CertificateDer::from(ca.certificate_der().to_vec()),
        vec![CertificateDer::from(cert)],
        key,
        Arc::new(RevocationList::new()),
    )
    .unwrap()
}

#[tokio::test]
async fn the_pinned_daemon_is_accepted_and_the_node_authenticated() {
    let mut daemon = Daemon::start().await;
    let identity = daemon.issue("node-1", daemon.pin());
    let ((outcome, app), ()) = tokio::join!(connect_once(&identity), async {
        // The daemon's listener saw the node's certificate: its session runs.
        let platform = daemon
            .expect(|(id, ev)| match ev {
                OwnedDaemonEvent::Connected { platform, .. } if id == "node-1" => {
                    Some(platform.clone())
                }
                _ => None,
            })
            .await;
        assert_eq!(platform, "test");
        assert_eq!(daemon.answered().await, 7);
    });
    assert_eq!(
        outcome.unwrap(),
        Ended::Closed {
            daemon: Some(PeerClose::Goodbye(GoodbyeReason::Shutdown))
        }
    );
    assert_eq!(app.connects(), (1, 0));
}

#[tokio::test]
async fn a_wrong_pin_is_refused_for_good() {
    let daemon = Daemon::start().await;
    let mut pin = daemon.pin();
    pin.0[31] ^= 1;
    let identity = daemon.issue("node-1", pin);
    let (outcome, app) = connect_once(&identity).await;
    assert_eq!(outcome.unwrap_err().refusal(), Some(Refused::PinMismatch));
    assert!(
        app.events.is_empty(),
        "nothing was said to an unpinned server"
    );
}

#[tokio::test]
async fn a_server_certificate_from_a_foreign_ca_is_refused() {
    let daemon = Daemon::start().await;
    let mut r = rng(21);
    let foreign = CertificateAuthority::create(
        "other CA",
        now().as_millis(),
        IssuancePolicy::default(),
        &mut r,
    )
    .unwrap();
    let server = foreign
        .issue_server(&["127.0.0.1".into()], now().as_millis(), &mut r)
        .unwrap();
    let impostor = Impostor::start(shown(
        &foreign,
        server.cert_der.clone(),
        private_key(&server.key_pem),
    ))
    .await;
    let identity = common::issue(&daemon.ca, "node-1", daemon.pin(), &impostor.addr);
    let (outcome, _) = connect_once(&identity).await;
    assert_eq!(outcome.unwrap_err().refusal(), Some(Refused::PinMismatch));
}

#[tokio::test]
async fn another_nodes_certificate_shown_as_the_server_is_refused() {
    let daemon = Daemon::start().await;
    // A certificate the daemon's own CA issued, to a node that now plays the daemon.
    let other_key = rcgen_key();
    let other = daemon
        .ca
        .issue_client(
            &rcgen_csr(&other_key),
            "node-2",
            now().as_millis(),
            &mut rng(4),
        )
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(other_key.serialize_der()));
    let impostor = Impostor::start(shown(&daemon.ca, other.der.clone(), key)).await;
    let identity = common::issue(&daemon.ca, "node-1", daemon.pin(), &impostor.addr);
    let (outcome, _) = connect_once(&identity).await;
    assert_eq!(outcome.unwrap_err().refusal(), Some(Refused::PinMismatch));
}

/// Shows one certificate and signs with a key that is not its own.
#[derive(Debug)]
struct Borrowed(Arc<CertifiedKey>);

impl ResolvesServerCert for Borrowed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[tokio::test]
async fn the_daemons_certificate_without_its_key_is_refused() {
    let daemon = Daemon::start().await;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let wrong_key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            rcgen_key().serialize_der(),
        )))
        .unwrap();
    let replayed = CertifiedKey::new(
        vec![CertificateDer::from(daemon.server.cert_der.clone())],
        wrong_key,
    );
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Borrowed(Arc::new(replayed))));
    tls.alpn_protocols = vec![b"tern/1".to_vec()];
    let impostor = Impostor::start(Arc::new(tls)).await;
    let identity = common::issue(&daemon.ca, "node-1", daemon.pin(), &impostor.addr);
    let (outcome, app) = connect_once(&identity).await;
    match outcome.unwrap_err() {
        LinkError::Tls(TlsFailure::Refused(VerifyRefusal::BadSignature)) => {}
        other => panic!("expected a refused signature, got {other:?}"),
    }
    assert!(app.events.is_empty());
}

#[tokio::test]
async fn large_calls_cross_records_capped_for_the_nodes_buffers() {
    let mut daemon = Daemon::start().await;
    // Larger than one record's 1019 bytes of plaintext; the node's read buffer holds one
    // capped record (1036 bytes) and no more.
    daemon.behaviour.lock().unwrap().echo_input = vec![b'7'; 1800];
    let identity = daemon.issue("node-1", daemon.pin());
    // A replay buffer that holds the 1800-byte answer.
    let config = Config::embedded(4096);
    let ((outcome, _), answered) = tokio::join!(connect_with(config, &identity), daemon.answered());
    assert_eq!(answered, 1800);
    assert!(outcome.is_ok(), "{outcome:?}");
}
