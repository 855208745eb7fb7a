//! Pairing over QUIC: a connection without a client certificate runs one pairing on its
//! first stream and nothing else; the certificate it gets then opens the node plane.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chacha20::ChaCha20Rng;
use daemon::ca::{CertificateAuthority, IssuancePolicy, ServerIdentity};
use daemon::pairing::{PairingService, PairingSettings};
use daemon::pairing_responder::ServiceResponder;
use daemon::runtime::{Registry, Runtime, RuntimeStore, persist};
use protocol_core::pairing::{DaemonConfig, PairingCode};
use protocol_core::session::Config;
use protocol_core::wire::{ErrorCode, Hello, Message, PROTOCOL_VERSIONS, encode_message};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spake2plus::rand_core::SeedableRng;
use tokio::task::JoinHandle;
use transport_tokio::clock::now;
use transport_tokio::host::close_code;
use transport_tokio::pairing::{PairError, PairOptions, pair_over};
use transport_tokio::quic::{QuicEndpoint, QuicHandle, QuicLimits};
use transport_tokio::tls::{Fingerprint, RevocationList, pairing_client_config, server_config};
use transport_tokio::{MemJournals, StoragePool};

/// Runtime writes go nowhere: the store is not under test.
struct NoStore;

impl RuntimeStore for NoStore {
    fn submit(&self, _: Vec<persist::Write>) {}
}

struct Daemon {
    addr: SocketAddr,
    server: ServerIdentity,
    responder: Arc<ServiceResponder>,
    // The endpoint runs while a handle does.
    _handle: QuicHandle<daemon::runtime::RuntimeCommand>,
    task: JoinHandle<()>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Daemon {
    fn start() -> Self {
        let mut rng = ChaCha20Rng::from_seed([5; 32]);
        let t0 = now().as_millis();
        let ca = Arc::new(
            CertificateAuthority::create("tern CA", t0, IssuancePolicy::default(), &mut rng)
                .unwrap(),
        );
        let server = ca
            .issue_server(&["127.0.0.1".into()], t0, &mut rng)
            .unwrap();
        let service = PairingService::new(
            ca.clone(),
            server.fingerprint,
            PairingSettings::default(),
            now(),
        )
        .unwrap();
        let responder = Arc::new(
            ServiceResponder::new(Arc::new(Mutex::new(service)), DaemonConfig::default()).unwrap(),
        );
        let revocation = Arc::new(RevocationList::new());
        let key = KeyPair::from_pem(&server.key_pem).unwrap().serialize_der();
        let tls = server_config(
            CertificateDer::from(ca.certificate_der().to_vec()),
            vec![CertificateDer::from(server.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            revocation.clone(),
        )
        .unwrap();
        let config = Config::server(64 * 1024);
        let pool = StoragePool::new(config.storage_len(), 4);
        let runtime = Runtime::new(config, Arc::new(NoStore), pool.clone(), [1; 32]);
        let (handle, task) = QuicEndpoint::server_with_pairing(
            "127.0.0.1:0".parse().unwrap(),
            tls,
            revocation,
            QuicLimits::default(),
            Registry::new(runtime),
            Arc::new(MemJournals::new()),
            pool,
            Some(responder.clone()),
            None,
        )
        .unwrap();
        Self {
            addr: handle.local_addr(),
            server,
            responder,
            _handle: handle,
            task,
        }
    }

    fn pin(&self) -> Fingerprint {
        Fingerprint(self.server.fingerprint.0)
    }

    fn code(&self, device: &str) -> PairingCode {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        self.responder
            .service()
            .lock()
            .unwrap()
            .create_code(now(), device, None, Some(false), &mut rng)
            .unwrap()
    }
}

async fn quic(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> quinn::Connection {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint
        .connect_with(
            quinn::ClientConfig::new(Arc::new(crypto)),
            addr,
            "127.0.0.1",
        )
        .unwrap()
        .await
        .unwrap()
}

async fn pair_on(
    d: &Daemon,
    code: &PairingCode,
    csr: &[u8],
) -> Result<transport_tokio::pairing::PairingBundle, PairError> {
    let conn = quic(d.addr, pairing_client_config(Some(d.pin())).unwrap()).await;
    let (send, recv) = conn.open_bi().await.unwrap();
    let mut rng = ChaCha20Rng::from_seed([8; 32]);
    tokio::time::timeout(
        Duration::from_secs(20),
        pair_over(
            &PairOptions::default(),
            tokio::io::join(recv, send),
            code,
            csr,
            Some(d.pin()),
            &mut rng,
        ),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_pairs_over_quic_then_its_certificate_opens_the_node_plane() {
    let d = Daemon::start();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    let code = d.code("node-q1");
    let bundle = pair_on(&d, &code, &csr).await.unwrap();
    assert_eq!(bundle.device_id, "node-q1");
    assert_eq!(bundle.server_fingerprint, d.pin());

    // The code was used: a second run with it fails, typed.
    assert!(matches!(
        pair_on(&d, &code, &csr).await,
        Err(PairError::AlreadyUsed)
    ));

    // The issued certificate is accepted on the node plane (the handshake completes
    // and the connection stays up).
    let tls = bundle
        .client_config(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.serialize_der(),
        )))
        .unwrap();
    let conn = quic(d.addr, tls).await;
    let closed = tokio::time::timeout(Duration::from_millis(500), conn.closed()).await;
    assert!(closed.is_err(), "the node plane closed: {closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_only_pairing_is_allowed() {
    let d = Daemon::start();
    let conn = quic(d.addr, pairing_client_config(Some(d.pin())).unwrap()).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    // A node-plane hello instead of a pairing start.
    let hello = Message::Hello(Hello {
        versions: PROTOCOL_VERSIONS,
        node_id: "node-x",
        platform: "linux",
        max_frame: 16 * 1024,
        resume: None,
        idle_timeout_ms: 30_000,
    });
    let mut frame = vec![0u8; 1024];
    let n = encode_message(&hello, 1024, &mut frame).unwrap();
    send.write_all(&frame[..n]).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap()
    {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(
                c.error_code.into_inner(),
                u64::from(close_code(&ErrorCode::Unauthorized))
            );
            assert_eq!(
                &c.reason[..],
                b"without a client certificate only pairing is allowed"
            );
        }
        other => panic!("closed otherwise: {other}"),
    }
}
