//! Pairing end to end over real loopback TCP + TLS: a node driving `transport_tokio`'s
//! `pair`, the daemon's listener routing it to `serve_pairing`, answered by the real
//! `PairingService` and CA through `ServiceResponder`.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chacha20::ChaCha20Rng;
use daemon::ca::{CertificateAuthority, IssuancePolicy, ServerIdentity};
use daemon::pairing::{PairingService, PairingSettings, ServiceEvent};
use daemon::pairing_responder::{PairingReport, ServiceResponder};
use protocol_core::pairing::{ApprovalState, DaemonConfig, PairingCode, PairingError};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spake2plus::rand_core::SeedableRng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use transport_tokio::clock::now;
use transport_tokio::pairing::{
    PairError, PairOptions, PairingBundle, PairingOutcome, PairingServeError, pair, pair_uri,
    pair_with, serve_pairing,
};
use transport_tokio::tcp::{Connector, DeviceConnection, Listener, ListenerConfig, Routes};
use transport_tokio::tls::{Fingerprint, RevocationList, server_config};

const WAIT: Duration = Duration::from_secs(10);

type Served = Result<PairingOutcome, PairingServeError>;

/// A daemon on loopback: its CA, its pairing service behind a `ServiceResponder`, a
/// listener whose pairing route is served by `serve_pairing`.
struct Daemon {
    addr: SocketAddr,
    ca: Arc<CertificateAuthority>,
    server: ServerIdentity,
    responder: Arc<ServiceResponder>,
    reports: mpsc::UnboundedReceiver<PairingReport>,
    served: mpsc::UnboundedReceiver<Served>,
    nodes: mpsc::Receiver<DeviceConnection>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl Daemon {
    async fn start(pairing_burst: u32) -> Self {
        let mut rng = ChaCha20Rng::from_seed([9; 32]);
        let t0 = now().as_millis();
        let ca = Arc::new(
            CertificateAuthority::create("tern CA", t0, IssuancePolicy::default(), &mut rng)
                .unwrap(),
        );
        let server = ca
            .issue_server(&["127.0.0.1".into()], t0, &mut rng)
            .unwrap();
        let settings = PairingSettings {
            // The service's own limit stays out of the way; the listener's is tested.
            starts_burst: 100,
            ..PairingSettings::default()
        };
        let service = PairingService::new(ca.clone(), server.fingerprint, settings, now()).unwrap();
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let responder = Arc::new(
            ServiceResponder::new(Arc::new(Mutex::new(service)), DaemonConfig::default())
                .unwrap()
                .on_report(move |r| {
                    let _ = reports_tx.send(r);
                }),
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
        let config = ListenerConfig {
            pairing_burst,
            pairing_refill: Duration::from_secs(60),
            ..ListenerConfig::default()
        };
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), tls, revocation, config)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (nodes_tx, nodes) = mpsc::channel(8);
        let (pairing_tx, mut pairing_rx) = mpsc::channel(8);
        let listen = tokio::spawn(async move {
            let _ = listener
                .run(Routes {
                    nodes: nodes_tx,
                    pairing: Some(pairing_tx),
                })
                .await;
        });
        let (served_tx, served) = mpsc::unbounded_channel();
        let serving = responder.clone();
        let serve = tokio::spawn(async move {
            while let Some(conn) = pairing_rx.recv().await {
                let (responder, served_tx) = (serving.clone(), served_tx.clone());
                tokio::spawn(async move {
                    let _ = served_tx.send(serve_pairing(conn, &*responder).await);
                });
            }
        });
        Self {
            addr,
            ca,
            server,
            responder,
            reports,
            served,
            nodes,
            tasks: vec![listen, serve],
        }
    }

    fn pin(&self) -> Fingerprint {
        Fingerprint(self.server.fingerprint.0)
    }

    fn code(&self, device: &str, approval: bool) -> PairingCode {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        self.responder
            .service()
            .lock()
            .unwrap()
            .create_code(now(), device, None, Some(approval), &mut rng)
            .unwrap()
    }

    fn failures(&self, code_id: u16) -> u8 {
        let service = self.responder.service().lock().unwrap();
        service.record(code_id).unwrap().window.failures
    }

    /// How the next served pairing connection ended.
    async fn served(&mut self) -> Served {
        tokio::time::timeout(WAIT, self.served.recv())
            .await
            .unwrap()
            .unwrap()
    }

    /// The next report the responder made that `pick` selects.
    async fn report<T>(&mut self, mut pick: impl FnMut(&PairingReport) -> Option<T>) -> T {
        tokio::time::timeout(WAIT, async {
            loop {
                let r = self.reports.recv().await.unwrap();
                if let Some(t) = pick(&r) {
                    return t;
                }
            }
        })
        .await
        .unwrap()
    }
}

/// A node's key pair and its CSR.
struct NodeKey {
    key: KeyPair,
    csr: Vec<u8>,
}

impl NodeKey {
    fn new() -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec();
        Self { key, csr }
    }

    fn private(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

fn node_rng(seed: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([seed; 32])
}

/// The bundle from pairing works: the node connects with it, pinned, and the listener
/// hands the connection to the node plane under the bundle's device id.
async fn connect_with(daemon: &mut Daemon, bundle: &PairingBundle, key: &NodeKey) {
    let connector = Connector::new(bundle.client_config(key.private()).unwrap());
    let _stream = connector.connect(daemon.addr).await.unwrap();
    let conn = tokio::time::timeout(WAIT, daemon.nodes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.device_id(), bundle.device_id);
    assert_eq!(conn.fingerprint(), Fingerprint::of(&bundle.client_cert));
}

/// A node with a code gets a certificate for its own key, the CA and the daemon's pin;
/// with them it passes the daemon's client verification on a fresh connection and is
/// routed to the node plane as the device the code was made for.
#[tokio::test]
async fn a_node_pairs_with_a_code_then_connects_with_its_certificate() {
    let mut daemon = Daemon::start(10).await;
    let code = daemon.code("sensor-1", false);
    let key = NodeKey::new();

    let bundle = pair(daemon.addr, &code, &key.csr, None, &mut node_rng(1))
        .await
        .unwrap();

    assert_eq!(bundle.device_id, "sensor-1");
    assert_eq!(bundle.server_fingerprint, daemon.pin());
    assert_eq!(bundle.ca_cert, daemon.ca.certificate_der());
    let info = daemon.ca.verify_client(&bundle.client_cert).unwrap();
    assert_eq!(info.device_id, "sensor-1");
    // The daemon reported the certificate it issued (to record the device), then the end.
    let issued = daemon
        .report(|r| match &r.event {
            ServiceEvent::Issued(cert) => Some(cert.clone()),
            _ => None,
        })
        .await;
    assert_eq!(issued.der, bundle.client_cert);
    assert_eq!(daemon.served().await.unwrap(), PairingOutcome::Completed);

    connect_with(&mut daemon, &bundle, &key).await;
}

/// A QR-code URI carries the address, the code and the pin; a URI whose fingerprint is
/// not the daemon's fails at the TLS handshake, before any pairing message.
#[tokio::test]
async fn a_node_pairs_from_a_uri_and_a_wrong_pin_is_a_tls_failure() {
    let mut daemon = Daemon::start(10).await;
    let code = daemon.code("cam-7", false);
    let uri = {
        let service = daemon.responder.service().lock().unwrap();
        service.uri(&daemon.addr.to_string(), &code).unwrap()
    };
    let key = NodeKey::new();

    let mut forged = uri.clone();
    let fp_at = forged.find("fp=").unwrap() + 3;
    forged.replace_range(
        fp_at..fp_at + 2,
        if &uri[fp_at..fp_at + 2] == "00" {
            "11"
        } else {
            "00"
        },
    );
    let err = pair_uri(&PairOptions::default(), &forged, &key.csr, &mut node_rng(2))
        .await
        .unwrap_err();
    assert!(matches!(err, PairError::Tls(_)), "{err}");

    let bundle = pair_uri(&PairOptions::default(), &uri, &key.csr, &mut node_rng(3))
        .await
        .unwrap();
    assert_eq!(bundle.device_id, "cam-7");
    assert_eq!(daemon.served().await.unwrap(), PairingOutcome::Completed);
    connect_with(&mut daemon, &bundle, &key).await;
}

/// A wrong code fails with `WrongCode` on both ends and counts in the code's attempt
/// window; the right code still pairs afterwards.
#[tokio::test]
async fn a_wrong_code_is_refused_and_counted() {
    let mut daemon = Daemon::start(10).await;
    let code = daemon.code("pump-2", false);
    let secret: u32 = code.display().to_string()[5..]
        .replace('-', "")
        .parse()
        .unwrap();
    let wrong = PairingCode::new(code.id(), (secret + 1) % 100_000_000).unwrap();
    let key = NodeKey::new();

    let err = pair(daemon.addr, &wrong, &key.csr, None, &mut node_rng(4))
        .await
        .unwrap_err();
    assert!(matches!(err, PairError::WrongCode), "{err}");
    assert_eq!(err.to_string(), "wrong pairing code");
    assert_eq!(
        daemon.served().await.unwrap(),
        PairingOutcome::Failed(PairingError::WrongCode)
    );
    assert_eq!(daemon.failures(code.id()), 1);

    let bundle = pair(daemon.addr, &code, &key.csr, None, &mut node_rng(5))
        .await
        .unwrap();
    assert_eq!(bundle.device_id, "pump-2");
}

/// A code pairs one node: the same code again is `AlreadyUsed`.
#[tokio::test]
async fn a_code_pairs_once() {
    let mut daemon = Daemon::start(10).await;
    let code = daemon.code("door-3", false);
    pair(
        daemon.addr,
        &code,
        &NodeKey::new().csr,
        None,
        &mut node_rng(6),
    )
    .await
    .unwrap();
    assert_eq!(daemon.served().await.unwrap(), PairingOutcome::Completed);

    let err = pair(
        daemon.addr,
        &code,
        &NodeKey::new().csr,
        None,
        &mut node_rng(7),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PairError::AlreadyUsed), "{err}");
    assert_eq!(
        daemon.served().await.unwrap(),
        PairingOutcome::Failed(PairingError::AlreadyUsed)
    );
}

/// A pairing run in a task, telling the test when the daemon said "awaiting approval".
fn pair_in_task(
    daemon: &Daemon,
    code: PairingCode,
    timeout: Duration,
    seed: u8,
) -> (
    oneshot::Receiver<()>,
    JoinHandle<Result<PairingBundle, PairError>>,
    NodeKey,
) {
    let (told_tx, told) = oneshot::channel();
    let told_tx = Mutex::new(Some(told_tx));
    let options = PairOptions {
        timeout,
        on_awaiting_approval: Some(Arc::new(move || {
            if let Some(tx) = told_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
        })),
        ..PairOptions::default()
    };
    let key = NodeKey::new();
    let csr = key.csr.clone();
    let addr = daemon.addr;
    let run = tokio::spawn(async move {
        pair_with(&options, addr, &code, &csr, None, &mut node_rng(seed)).await
    });
    (told, run, key)
}

/// With approval required the node waits, connection open, until an operator approves
/// from another task; then it gets its certificate.
#[tokio::test]
async fn an_approved_pairing_completes() {
    let mut daemon = Daemon::start(10).await;
    let code = daemon.code("valve-4", true);
    let (told, run, key) = pair_in_task(&daemon, code.clone(), Duration::from_secs(60), 8);

    let waiting = daemon
        .report(|r| match r.event {
            ServiceEvent::AwaitingApproval { code_id } => Some(code_id),
            _ => None,
        })
        .await;
    assert_eq!(waiting, code.id());
    tokio::time::timeout(WAIT, told).await.unwrap().unwrap();
    // Still waiting: nothing finished on either end.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!run.is_finished());
    assert!(daemon.served.try_recv().is_err());

    let responder = daemon.responder.clone();
    let operator = tokio::spawn(async move { responder.approve(now(), code.id()) });
    assert_eq!(operator.await.unwrap().unwrap(), ApprovalState::Approved);

    let bundle = tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(bundle.device_id, "valve-4");
    assert_eq!(daemon.served().await.unwrap(), PairingOutcome::Completed);
    connect_with(&mut daemon, &bundle, &key).await;
}

/// An operator's rejection reaches the waiting node as `Rejected`.
#[tokio::test]
async fn a_rejected_pairing_tells_the_node() {
    let mut daemon = Daemon::start(10).await;
    let code = daemon.code("lamp-5", true);
    let (told, run, _key) = pair_in_task(&daemon, code.clone(), Duration::from_secs(60), 9);
    tokio::time::timeout(WAIT, told).await.unwrap().unwrap();

    daemon.responder.reject(now(), code.id()).unwrap();

    let err = tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, PairError::Rejected), "{err}");
    assert_eq!(
        daemon.served().await.unwrap(),
        PairingOutcome::Failed(PairingError::RejectedByOperator)
    );
}

/// A node that gives up while waiting for approval hands the code back: once approved,
/// the same code pairs the node on its next try.
#[tokio::test]
async fn a_node_that_stops_waiting_gives_the_code_back() {
    let mut daemon = Daemon::start(10).await;
    let code = daemon.code("gate-6", true);
    let (told, run, _key) = pair_in_task(&daemon, code.clone(), Duration::from_millis(1500), 10);
    tokio::time::timeout(WAIT, told).await.unwrap().unwrap();

    let err = tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, PairError::ApprovalTimedOut), "{err}");
    assert_eq!(
        daemon.served().await.unwrap(),
        PairingOutcome::Failed(PairingError::TimedOut)
    );
    {
        let service = daemon.responder.service().lock().unwrap();
        let record = service.record(code.id()).unwrap();
        assert!(!record.window.used && !record.awaiting_decision);
    }

    daemon.responder.approve(now(), code.id()).unwrap();
    let bundle = pair(
        daemon.addr,
        &code,
        &NodeKey::new().csr,
        None,
        &mut node_rng(11),
    )
    .await
    .unwrap();
    assert_eq!(bundle.device_id, "gate-6");
}

/// Pairing starts from one address beyond the listener's burst read `RateLimited` with
/// the time to wait; the refused start never reaches the pairing service.
#[tokio::test]
async fn many_starts_from_one_address_are_rate_limited() {
    let mut daemon = Daemon::start(2).await;
    // No code is outstanding: the service answers the start without a PAKE.
    let unknown = PairingCode::new(9999, 12_345_678).unwrap();
    for seed in 0..2 {
        let err = pair(
            daemon.addr,
            &unknown,
            &NodeKey::new().csr,
            None,
            &mut node_rng(seed),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, PairError::UnknownCode), "{err}");
        assert_eq!(
            daemon.served().await.unwrap(),
            PairingOutcome::Failed(PairingError::UnknownCode)
        );
    }
    let err = pair(
        daemon.addr,
        &unknown,
        &NodeKey::new().csr,
        None,
        &mut node_rng(3),
    )
    .await
    .unwrap_err();
    match err {
        PairError::RateLimited { retry_after } => {
            assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(60));
        }
        other => panic!("{other}"),
    }
    assert!(
        daemon.served.try_recv().is_err(),
        "refused before the service"
    );
}

/// A daemon that is not there is `Unreachable`, not a protocol error.
#[tokio::test]
async fn an_absent_daemon_is_unreachable() {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    drop(socket);
    let code = PairingCode::new(1, 1).unwrap();
    let err = pair(addr, &code, &NodeKey::new().csr, None, &mut node_rng(12))
        .await
        .unwrap_err();
    assert!(matches!(err, PairError::Unreachable(_)), "{err}");
}

/// A node that hangs up while it waits for approval: the daemon's side ends
/// `PeerClosed` and the proven code is given back for the node to come back with.
#[tokio::test]
async fn hanging_up_while_waiting_gives_the_code_back() {
    let mut daemon = Daemon::start(10).await;
    let code = daemon.code("fan-8", true);
    let (told, run, _key) = pair_in_task(&daemon, code.clone(), Duration::from_secs(60), 13);
    tokio::time::timeout(WAIT, told).await.unwrap().unwrap();
    {
        let service = daemon.responder.service().lock().unwrap();
        let record = service.record(code.id()).unwrap();
        assert!(record.window.used && record.awaiting_decision);
    }

    run.abort();
    let served = daemon.served().await;
    assert!(
        matches!(served, Err(PairingServeError::PeerClosed)),
        "{served:?}"
    );
    let service = daemon.responder.service().lock().unwrap();
    let record = service.record(code.id()).unwrap();
    assert!(!record.window.used && !record.awaiting_decision);
}
