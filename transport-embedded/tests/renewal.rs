//! Certificate renewal on a microcontroller node: the checks before a renewed
//! certificate is kept, against certificates from the daemon's own CA, and the whole
//! exchange over the daemon's runtime.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{HostDialer, arena, rng};
use daemon::ca::{CertificateAuthority, IssuancePolicy};
use daemon::model::Call;
use daemon::runtime::persist::Write;
use daemon::runtime::{CallStatus, Registry, Renewer, Runtime, RuntimeStore};
use node_contract::{Installed, RenewRequest, Renewed, descriptors, hex, names};
use proptest::prelude::*;
use protocol_core::session::{Config, Instant, NodeSession, OwnedNodeEvent};
use protocol_core::wire::{
    Capabilities, CapabilityDescriptor, GoodbyeReason, Outcome, Payload, Register, RejectCode,
};
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;
use transport_embedded::csr::MAX_CSR_LEN;
use transport_embedded::identity::MAX_CERT_LEN;
use transport_embedded::session::Node;
use transport_embedded::tls::Fingerprint;
use transport_embedded::{
    Backoff, CertificateError, Ended, Identity, LinkError, NodeApp, NodeOptions, Refused,
    RenewalRefused, SessionBuffers, renewal_csr, run_node, run_session, validity,
};
use transport_tokio::StoragePool;
use transport_tokio::clock::now;
use transport_tokio::tcp::{Listener, ListenerConfig, Routes};
use transport_tokio::tls::{RevocationList, server_config};
use transport_tokio::{JournalStore, MemJournals};

const DAY_S: u64 = 24 * 3600;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn ca(name: &str, policy: IssuancePolicy) -> CertificateAuthority {
    CertificateAuthority::create(name, now().as_millis(), policy, &mut rng(11)).unwrap()
}

/// A paired node of `ca` (no daemon listening: only its identity matters here).
fn paired(ca: &CertificateAuthority, device: &str) -> Identity {
    common::issue(ca, device, Fingerprint([7; 32]), "127.0.0.1:1")
}

/// A certificate from `ca` for `device` and the key in `csr`, issued at `at_ms`.
fn issue_at(ca: &CertificateAuthority, csr: &[u8], device: &str, at_ms: u64) -> Vec<u8> {
    ca.issue_client(csr, device, at_ms, &mut rng(12))
        .unwrap()
        .der
}

fn issue(ca: &CertificateAuthority, csr: &[u8], device: &str) -> Vec<u8> {
    issue_at(ca, csr, device, now().as_millis())
}

fn csr_of(identity: &Identity) -> Vec<u8> {
    let mut out = [0u8; MAX_CSR_LEN];
    renewal_csr(identity, &mut out).unwrap().to_vec()
}

#[test]
fn a_certificate_the_ca_issued_for_the_node_s_request_is_taken() {
    let ca = ca("tern CA", IssuancePolicy::default());
    let identity = paired(&ca, "node-1");
    let cert = issue(&ca, &csr_of(&identity), "node-1");
    assert_ne!(cert, identity.client_cert());
    let renewed = identity.renewed(&cert, Some(now_unix())).unwrap();
    assert_eq!(renewed.client_cert(), &cert[..]);
    assert_eq!(renewed.device_id(), "node-1");
    assert_eq!(renewed.key(), identity.key());
    assert_eq!(renewed.ca_cert(), identity.ca_cert());
    assert_eq!(renewed.server_pin(), identity.server_pin());
    assert_eq!(renewed.daemon(), identity.daemon());
    // Without a wall clock the validity is not checked.
    assert_eq!(identity.renewed(&cert, None).unwrap(), renewed);
}

#[test]
fn validity_reads_utc_and_generalized_times() {
    let policy = IssuancePolicy::default();
    let ca90 = ca("tern CA", policy);
    let identity = paired(&ca90, "node-1");
    let at_ms = now().as_millis();
    let cert = issue_at(&ca90, &csr_of(&identity), "node-1", at_ms);
    let v = validity(&cert).unwrap();
    assert_eq!(v.not_before, (at_ms - policy.backdate_ms) / 1000);
    assert_eq!(v.not_after, (at_ms + policy.client_validity_ms) / 1000);
    assert!(v.contains(at_ms / 1000));
    assert!(!v.contains(v.not_after + 1));

    // Past 2049 a certificate carries GeneralizedTime.
    let long = IssuancePolicy {
        client_validity_ms: 60 * 365 * DAY_S * 1000,
        ca_validity_ms: 70 * 365 * DAY_S * 1000,
        ..policy
    };
    let ca60 = ca("tern CA", long);
    let cert = issue_at(&ca60, &csr_of(&identity), "node-1", at_ms);
    assert!(
        cert.windows(2).any(|w| w == [0x18, 0x0f]),
        "a GeneralizedTime"
    );
    let v = validity(&cert).unwrap();
    assert_eq!(v.not_after, (at_ms + long.client_validity_ms) / 1000);
}

#[test]
fn a_certificate_for_another_key_is_refused() {
    let ca = ca("tern CA", IssuancePolicy::default());
    let identity = paired(&ca, "node-1");
    let other = common::rcgen_csr(&common::rcgen_key());
    let cert = issue(&ca, &other, "node-1");
    assert_eq!(
        identity.renewed(&cert, Some(now_unix())),
        Err(RenewalRefused::OtherKey)
    );
}

#[test]
fn a_certificate_naming_another_device_is_refused() {
    let ca = ca("tern CA", IssuancePolicy::default());
    let identity = paired(&ca, "node-1");
    let cert = issue(&ca, &csr_of(&identity), "node-11");
    assert_eq!(
        identity.renewed(&cert, Some(now_unix())),
        Err(RenewalRefused::OtherDevice)
    );
}

#[test]
fn an_identity_whose_device_id_differs_from_its_certificate_takes_neither_name() {
    let ca = ca("tern CA", IssuancePolicy::default());
    let identity = paired(&ca, "node-1");
    let confused = Identity::new(
        "node-2",
        identity.key().clone(),
        identity.client_cert(),
        identity.ca_cert(),
        identity.server_pin(),
        identity.daemon(),
    )
    .unwrap();
    let csr = csr_of(&identity);
    for device in ["node-1", "node-2"] {
        assert_eq!(
            confused.renewed(&issue(&ca, &csr, device), None),
            Err(RenewalRefused::OtherDevice),
            "{device}"
        );
    }
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let ours = ca("tern CA", IssuancePolicy::default());
    let identity = paired(&ours, "node-1");
    let csr = csr_of(&identity);
    // Another daemon's CA, named alike: only the signature tells.
    let alike = CertificateAuthority::create(
        "tern CA",
        now().as_millis(),
        IssuancePolicy::default(),
        &mut rng(40),
    )
    .unwrap();
    assert_eq!(
        identity.renewed(&issue(&alike, &csr, "node-1"), Some(now_unix())),
        Err(RenewalRefused::BadSignature)
    );
    let named = ca("other CA", IssuancePolicy::default());
    assert_eq!(
        identity.renewed(&issue(&named, &csr, "node-1"), Some(now_unix())),
        Err(RenewalRefused::OtherCa)
    );
}

#[test]
fn without_a_ca_certificate_nothing_is_taken() {
    let ca = ca("tern CA", IssuancePolicy::default());
    let identity = paired(&ca, "node-1");
    let cert = issue(&ca, &csr_of(&identity), "node-1");
    let bare = Identity::new(
        identity.device_id(),
        identity.key().clone(),
        identity.client_cert(),
        &[],
        identity.server_pin(),
        identity.daemon(),
    )
    .unwrap();
    assert_eq!(
        bare.renewed(&cert, None),
        Err(RenewalRefused::NoCaCertificate)
    );
    let broken = Identity::new(
        identity.device_id(),
        identity.key().clone(),
        identity.client_cert(),
        b"\x30\x00",
        identity.server_pin(),
        identity.daemon(),
    )
    .unwrap();
    assert_eq!(
        broken.renewed(&cert, None),
        Err(RenewalRefused::BadCaCertificate)
    );
}

#[test]
fn a_certificate_outside_its_validity_is_refused() {
    let policy = IssuancePolicy::default();
    let ca = ca("tern CA", policy);
    let identity = paired(&ca, "node-1");
    let csr = csr_of(&identity);
    let now_ms = now().as_millis();

    // Issued 100 days ago for 90 days.
    let old = issue_at(&ca, &csr, "node-1", now_ms - 100 * DAY_S * 1000);
    let not_after = validity(&old).unwrap().not_after;
    assert!(matches!(
        identity.renewed(&old, Some(now_unix())),
        Err(RenewalRefused::Expired { not_after: n, now }) if n == not_after && now > n
    ));
    // A board without a clock cannot tell.
    assert!(identity.renewed(&old, None).is_ok());

    let cert = issue(&ca, &csr, "node-1");
    let v = validity(&cert).unwrap();
    assert!(identity.renewed(&cert, Some(v.not_before)).is_ok());
    assert!(identity.renewed(&cert, Some(v.not_after)).is_ok());
    assert_eq!(
        identity.renewed(&cert, Some(v.not_before - 1)),
        Err(RenewalRefused::NotYetValid {
            not_before: v.not_before,
            now: v.not_before - 1
        })
    );
    assert_eq!(
        identity.renewed(&cert, Some(v.not_after + 1)),
        Err(RenewalRefused::Expired {
            not_after: v.not_after,
            now: v.not_after + 1
        })
    );
}

#[test]
fn garbage_is_a_typed_refusal() {
    let ca = ca("tern CA", IssuancePolicy::default());
    let identity = paired(&ca, "node-1");
    let cert = issue(&ca, &csr_of(&identity), "node-1");
    let mut trailing = cert.clone();
    trailing.push(0);
    let cases: [&[u8]; 6] = [
        b"",
        b"\x30\x00",
        b"not a certificate at all",
        &cert[..cert.len() / 2],
        &trailing,
        identity.ca_cert(),
    ];
    for bytes in cases {
        assert_eq!(validity(bytes).is_err(), bytes != identity.ca_cert());
        let refused = identity.renewed(bytes, Some(now_unix())).unwrap_err();
        assert!(!refused.to_string().is_empty());
        if bytes != identity.ca_cert() {
            assert_eq!(refused, RenewalRefused::Malformed, "{bytes:02x?}");
            assert_eq!(validity(bytes), Err(CertificateError::Malformed));
        }
    }
    assert_eq!(
        identity.renewed(&[0x30; MAX_CERT_LEN + 1], None),
        Err(RenewalRefused::TooLong {
            len: MAX_CERT_LEN + 1
        })
    );
}

#[test]
fn every_refusal_names_its_reason() {
    let all = [
        RenewalRefused::Malformed,
        RenewalRefused::TooLong { len: 2000 },
        RenewalRefused::NoCaCertificate,
        RenewalRefused::BadCaCertificate,
        RenewalRefused::OtherKey,
        RenewalRefused::OtherDevice,
        RenewalRefused::OtherCa,
        RenewalRefused::UnsupportedSignature,
        RenewalRefused::BadSignature,
        RenewalRefused::NotYetValid {
            not_before: 2,
            now: 1,
        },
        RenewalRefused::Expired {
            not_after: 1,
            now: 2,
        },
    ];
    let texts: Vec<String> = all.iter().map(ToString::to_string).collect();
    for (i, t) in texts.iter().enumerate() {
        assert!(!t.is_empty());
        assert!(!texts[..i].contains(t), "{t} twice");
    }
}

/// A node, its CA and a certificate the CA renewed for it, made once for the property
/// tests.
struct Fixture {
    identity: Identity,
    cert: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let ca = ca("tern CA", IssuancePolicy::default());
        let identity = paired(&ca, "node-1");
        let cert = issue(&ca, &csr_of(&identity), "node-1");
        Fixture { identity, cert }
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
        let f = fixture();
        let _ = validity(&bytes);
        prop_assert!(f.identity.renewed(&bytes, Some(now_unix())).is_err());
    }

    /// A valid certificate with bytes changed, cut or inserted: refused unless the
    /// change left it as it was, and never a panic.
    #[test]
    fn mutated_certificates_are_refused_without_panicking(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4)
    ) {
        let f = fixture();
        let mut bytes = f.cert.clone();
        for (at, value, kind) in edits {
            let i = at.index(bytes.len().max(1));
            match kind {
                0 if !bytes.is_empty() => bytes[i] = value,
                1 => bytes.insert(i.min(bytes.len()), value),
                _ => bytes.truncate(i),
            }
        }
        let _ = validity(&bytes);
        match f.identity.renewed(&bytes, None) {
            Ok(renewed) => prop_assert_eq!(renewed.client_cert(), &f.cert[..]),
            Err(refused) => prop_assert!(!refused.to_string().is_empty()),
        }
    }
}

// ----- the exchange over the daemon's runtime -----

/// The daemon's runtime writes, kept for the test to read.
struct Recorded(mpsc::UnboundedSender<Write>);

impl RuntimeStore for Recorded {
    fn submit(&self, writes: Vec<Write>) {
        for w in writes {
            let _ = self.0.send(w);
        }
    }
}

/// Renews with the test CA, as the daemon's own renewer does.
struct CaRenewer(Arc<CertificateAuthority>);

impl Renewer for CaRenewer {
    fn renew(&self, device_id: &str, csr_der: &[u8]) -> Result<Vec<u8>, String> {
        self.0
            .issue_client(csr_der, device_id, now().as_millis(), &mut rng(21))
            .map(|c| c.der)
            .map_err(|e| e.to_string())
    }
}

/// The daemon's runtime (its renewal included) behind the TCP + TLS listener.
struct RuntimeDaemon {
    addr: String,
    ca: Arc<CertificateAuthority>,
    pin: Fingerprint,
    revocation: Arc<RevocationList>,
    writes: mpsc::UnboundedReceiver<Write>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RuntimeDaemon {
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

impl RuntimeDaemon {
    async fn start() -> Self {
        let t0 = now().as_millis();
        let ca = Arc::new(
            CertificateAuthority::create("tern CA", t0, IssuancePolicy::default(), &mut rng(9))
                .unwrap(),
        );
        let server = ca
            .issue_server(&["127.0.0.1".into()], t0, &mut rng(9))
            .unwrap();
        let revocation = Arc::new(RevocationList::new());
        let tls = server_config(
            CertificateDer::from(ca.certificate_der().to_vec()),
            vec![CertificateDer::from(server.cert_der.clone())],
            common::private_key(&server.key_pem),
            revocation.clone(),
        )
        .unwrap();
        let listener = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            tls,
            revocation.clone(),
            ListenerConfig::default(),
        )
        .await
        .unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let config = daemon::serve::session_config();
        let pool = StoragePool::new(config.storage_len(), 4);
        let (writes_tx, writes) = mpsc::unbounded_channel();
        let runtime = Runtime::new(config, Arc::new(Recorded(writes_tx)), pool.clone(), [3; 32]);
        runtime.set_renewer(Arc::new(CaRenewer(ca.clone())));
        let deadlines = runtime.spawn_deadlines();
        let (nodes_tx, mut nodes_rx) = mpsc::channel(8);
        let listen = tokio::spawn(async move {
            let _ = listener
                .run(Routes {
                    nodes: nodes_tx,
                    pairing: None,
                })
                .await;
        });
        let journal: Arc<dyn JournalStore> = Arc::new(MemJournals::new());
        let registry = Registry::new(runtime);
        let serve = tokio::spawn(async move {
            while let Some(conn) = nodes_rx.recv().await {
                let (registry, journal, pool) = (registry.clone(), journal.clone(), pool.clone());
                tokio::spawn(async move {
                    let _ = conn.serve_with(registry, journal, pool).await;
                });
            }
        });
        Self {
            addr,
            ca,
            pin: Fingerprint(server.fingerprint.0),
            revocation,
            writes,
            tasks: vec![listen, serve, deadlines],
        }
    }

    /// The final state of the daemon's call of `capability`.
    async fn finished(&mut self, capability: &str) -> Call {
        tokio::time::timeout(common::WAIT, async {
            loop {
                match self.writes.recv().await.expect("runtime running") {
                    Write::PutCall(row) if row.capability == capability && row.state.is_final() => {
                        return row;
                    }
                    _ => {}
                }
            }
        })
        .await
        .expect("the call finished in time")
    }
}

fn install_certificate() -> [CapabilityDescriptor<'static>; 1] {
    let d = descriptors::INSTALL_CERTIFICATE;
    [CapabilityDescriptor {
        name: d.name,
        version: d.version,
        input: d.input,
        output: d.output,
        needs_approval: d.needs_approval,
    }]
}

/// A board's renewal: asks for a certificate on its first connection, keeps the one the
/// daemon sends if `Identity::renewed` takes it, and stops `run_node` (to store it)
/// once its answer is acknowledged. `renew: false` only connects, then stops.
struct Renewing {
    identity: Identity,
    renew: bool,
    asked: bool,
    renewed: Option<Identity>,
    refused: Option<RenewalRefused>,
    events: Vec<OwnedNodeEvent>,
    outcomes: Vec<Result<Ended, String>>,
    stop: bool,
}

impl Renewing {
    fn new(identity: &Identity, renew: bool) -> Self {
        Self {
            identity: identity.clone(),
            renew,
            asked: false,
            renewed: None,
            refused: None,
            events: Vec::new(),
            outcomes: Vec::new(),
            stop: false,
        }
    }

    fn ask(&mut self, s: &mut NodeSession<&mut [u8]>) {
        let mut csr = [0u8; MAX_CSR_LEN];
        let csr = renewal_csr(&self.identity, &mut csr).unwrap();
        let mut text = [0u8; 2 * MAX_CSR_LEN];
        let request = RenewRequest::new(csr, &mut text).unwrap();
        let mut json = [0u8; 2 * MAX_CSR_LEN + 16];
        let len = serde_json_core::to_slice(&request, &mut json).unwrap();
        let payload = Payload {
            content_type: names::JSON,
            data: &json[..len],
        };
        s.send_event(names::RENEW_EVENT, payload).unwrap();
        self.asked = true;
    }

    /// `tern.certificate`: the certificate kept, or why not.
    fn install(&mut self, input: &[u8]) -> Result<(), RenewalRefused> {
        let (renewed, _) = serde_json_core::from_slice::<Renewed<'_>>(input).unwrap();
        let mut der = [0u8; MAX_CERT_LEN];
        let der = renewed
            .cert_der(&mut der)
            .map_err(|_| RenewalRefused::Malformed)?;
        self.renewed = Some(self.identity.renewed(der, Some(now_unix()))?);
        Ok(())
    }
}

impl NodeApp for Renewing {
    fn on_events(&mut self, s: &mut NodeSession<&mut [u8]>, now: Instant) {
        while let Some(ev) = s.poll_event() {
            let ev = OwnedNodeEvent::from(ev);
            match &ev {
                OwnedNodeEvent::Connected { resumed: false, .. } => {
                    let capabilities = install_certificate();
                    let capabilities = Capabilities::new(&capabilities).unwrap();
                    s.register(Register { capabilities }).unwrap();
                }
                OwnedNodeEvent::Call {
                    call_id,
                    capability,
                    input,
                    ..
                } if capability == names::INSTALL_CERTIFICATE => match self.install(&input.data) {
                    Ok(()) => {
                        let mut out = [0u8; 32];
                        let len =
                            serde_json_core::to_slice(&Installed { installed: true }, &mut out)
                                .unwrap();
                        let out = Payload {
                            content_type: names::JSON,
                            data: &out[..len],
                        };
                        s.complete(*call_id, Outcome::Success(out)).unwrap();
                    }
                    Err(refused) => {
                        self.refused = Some(refused);
                        let reason = refused.to_string();
                        let outcome = Outcome::Rejected {
                            code: RejectCode::BadInput,
                            reason: &reason,
                        };
                        s.complete(*call_id, outcome).unwrap();
                    }
                },
                _ => {}
            }
            self.events.push(ev);
        }
        let connected = self
            .events
            .iter()
            .any(|e| matches!(e, OwnedNodeEvent::Connected { .. }));
        if self.renew && connected && !self.asked {
            self.ask(s);
        }
        let done = if self.renew {
            self.renewed.is_some() || self.refused.is_some()
        } else {
            connected
        };
        if done && !self.stop && s.replay_usage().0 == 0 {
            s.close(now, GoodbyeReason::Shutdown);
            self.stop = true;
        }
    }

    fn connection_ended(&mut self, outcome: &Result<Ended, LinkError>) {
        self.outcomes
            .push(outcome.as_ref().copied().map_err(|e| e.to_string()));
    }

    fn keep_running(&mut self) -> bool {
        !self.stop
    }
}

const CONFIG: Config = Config::embedded(1024);

const QUICK: Backoff = Backoff {
    initial_ms: 20,
    max_ms: 100,
    reset_after_ms: 60_000,
};

#[tokio::test]
async fn a_node_renews_over_its_session_and_reconnects_with_the_new_certificate() {
    let mut daemon = RuntimeDaemon::start().await;
    let identity = common::issue(&daemon.ca, "node-1", daemon.pin, &daemon.addr);
    let mut memory = arena(SessionBuffers::arena_len(&CONFIG));
    let buffers = SessionBuffers::carve(&CONFIG, &mut memory).unwrap();
    let mut node = Node::new(CONFIG, &identity, "test", buffers, NodeOptions::default()).unwrap();
    let (mut dialer, mut rng) = (HostDialer::default(), rng(13));

    let mut app = Renewing::new(&identity, true);
    let stopped = tokio::time::timeout(
        common::WAIT,
        run_node(&mut node, &identity, &mut dialer, &mut app, &mut rng, QUICK),
    )
    .await
    .unwrap();
    assert_eq!(stopped, Ok(()));
    assert_eq!(app.refused, None);
    let renewed = app.renewed.take().expect("a renewed identity");
    assert_ne!(renewed.client_cert(), identity.client_cert());
    assert_eq!(app.outcomes, vec![Ok(Ended::Closed { daemon: None })]);

    // The daemon's runtime saw the node install it.
    let call = daemon.finished(names::INSTALL_CERTIFICATE).await;
    assert_eq!(call.node, "node-1");
    assert_eq!(call.state, CallStatus::Succeeded, "{:?}", call.error);
    let (installed, _): (Installed, _) =
        serde_json_core::from_slice(&call.output.as_ref().unwrap().bytes).unwrap();
    assert!(installed.installed);
    let (sent, _): (Renewed<'_>, _) = serde_json_core::from_slice(&call.input.bytes).unwrap();
    let mut der = vec![0; hex::decoded_len(sent.cert.len())];
    assert_eq!(sent.cert_der(&mut der).unwrap(), renewed.client_cert());

    // Only the renewed certificate is accepted from now on.
    daemon
        .revocation
        .revoke_certificate(transport_tokio::tls::Fingerprint::of(
            identity.client_cert(),
        ));
    let old = run_session(
        &mut node,
        &identity,
        &mut dialer,
        &mut Renewing::new(&identity, false),
        &mut rng,
    )
    .await;
    assert_eq!(
        old.as_ref().err().and_then(LinkError::refusal),
        Some(Refused::Certificate),
        "{old:?}"
    );

    let mut app = Renewing::new(&renewed, false);
    let stopped = tokio::time::timeout(
        common::WAIT,
        run_node(&mut node, &renewed, &mut dialer, &mut app, &mut rng, QUICK),
    )
    .await
    .unwrap();
    assert_eq!(stopped, Ok(()));
    assert!(
        app.events
            .iter()
            .any(|e| matches!(e, OwnedNodeEvent::Connected { resumed: true, .. })),
        "the daemon took the renewed certificate and the session resumed: {:?}",
        app.events
    );
}
