//! Node state machine <-> daemon state machine + pairing service + the real CA, in
//! memory, with a relay in between that may read, change or replace frames.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::Arc;

use chacha20::ChaCha20Rng;
use daemon::ca::{CertificateAuthority, IssuancePolicy, ServerIdentity};
use daemon::pairing::{
    PairingChanges, PairingRecord, PairingService, PairingSettings, ServiceEvent,
};
use protocol_core::frame::FrameDecoder;
use protocol_core::pairing::{
    ApprovalState, Challenge, Confirm, DaemonConfig, DaemonPairing, MAX_FAILED_ATTEMPTS,
    NodeConfig, NodePairing, NodePairingEvent, OwnedIssued, PAIRING_MAX_FRAME, PAKE_CONTEXT,
    PairingCode, PairingError, PairingMessage, PairingUri, Sealed, Start, VERIFIER_ID,
    decode_pairing, encode_pairing,
};
use protocol_core::time::Instant;
use protocol_core::transmit::Transmit;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use spake2plus::rand_core::SeedableRng;
use spake2plus::{Context, P256Sha256, Prover, Verifier, VerifierRecord};
use x509_parser::prelude::{FromDer, X509Certificate};

const T0: Instant = Instant::from_millis(1_800_000_000_000);

#[derive(Debug, Clone, PartialEq, Eq)]
enum NodeEvent {
    AwaitingApproval,
    Paired(OwnedIssued),
    Failed(PairingError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToDaemon,
    ToNode,
}

struct World {
    rng: ChaCha20Rng,
    ca: Arc<CertificateAuthority>,
    server: ServerIdentity,
    service: PairingService,
    now: Instant,
}

impl World {
    fn new(settings: PairingSettings) -> Self {
        let mut rng = ChaCha20Rng::from_seed([42; 32]);
        let ca = Arc::new(
            CertificateAuthority::create(
                "tern CA",
                T0.as_millis(),
                IssuancePolicy::default(),
                &mut rng,
            )
            .unwrap(),
        );
        let server = ca
            .issue_server(&["ternd.test".into()], T0.as_millis(), &mut rng)
            .unwrap();
        let service = PairingService::new(ca.clone(), server.fingerprint, settings, T0).unwrap();
        Self {
            rng,
            ca,
            server,
            service,
            now: T0,
        }
    }

    fn code(&mut self, device: &str) -> PairingCode {
        self.service
            .create_code(self.now, device, None, None, &mut self.rng)
            .unwrap()
    }

    fn advance(&mut self, ms: u64) {
        self.now = self.now.plus_ms(ms);
    }
}

struct NodeKey {
    key: KeyPair,
    csr: Vec<u8>,
}

fn node_key() -> NodeKey {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    NodeKey { key, csr }
}

/// Strips the frame prefix with the real decoder.
fn unframe(bytes: &[u8]) -> Vec<u8> {
    let mut dec =
        FrameDecoder::new(vec![0u8; PAIRING_MAX_FRAME as usize], PAIRING_MAX_FRAME).unwrap();
    let p = dec.decode(bytes).unwrap();
    assert_eq!(p.consumed, bytes.len());
    p.frame.unwrap().to_vec()
}

struct Outcome {
    node: Vec<NodeEvent>,
    daemon: Vec<ServiceEvent>,
    /// Each side asked to close the connection.
    node_closed: bool,
    daemon_closed: bool,
}

/// Runs both sides until neither moves, the way a transport would: deadlines, events,
/// then frames. `relay` sees every frame payload in flight.
fn run(
    w: &mut World,
    node: &mut NodePairing<'_, Vec<u8>>,
    conn: &mut DaemonPairing<Vec<u8>>,
    relay: &mut dyn FnMut(Dir, Vec<u8>) -> Vec<u8>,
) -> Outcome {
    let mut out = vec![0u8; node.transmit_len().max(conn.transmit_len())];
    let mut outcome = Outcome {
        node: vec![],
        daemon: vec![],
        node_closed: false,
        daemon_closed: false,
    };
    let (mut to_daemon, mut to_node) = (VecDeque::new(), VecDeque::new());
    for _ in 0..100 {
        let mut moved = false;
        if node.poll_timeout().is_some_and(|at| at <= w.now) {
            node.handle_timeout(w.now);
        }
        if conn.poll_timeout().is_some_and(|at| at <= w.now) {
            conn.handle_timeout(w.now);
        }
        while let Some(e) = node.poll_event() {
            outcome.node.push(match e {
                NodePairingEvent::AwaitingApproval => NodeEvent::AwaitingApproval,
                NodePairingEvent::Paired(p) => NodeEvent::Paired(p.to_owned()),
                NodePairingEvent::Failed(e) => NodeEvent::Failed(e),
            });
            moved = true;
        }
        loop {
            match node.poll_transmit(w.now, &mut out).unwrap() {
                Some(Transmit::Frame(n)) => {
                    to_daemon.push_back(relay(Dir::ToDaemon, unframe(&out[..n])))
                }
                Some(Transmit::Close) => {
                    assert!(node.is_finished() && !outcome.node_closed);
                    outcome.node_closed = true;
                }
                None => break,
            }
        }
        while let Some(e) = w.service.drive(w.now, conn, &mut w.rng) {
            outcome.daemon.push(e);
            moved = true;
        }
        loop {
            match conn.poll_transmit(w.now, &mut out).unwrap() {
                Some(Transmit::Frame(n)) => {
                    to_node.push_back(relay(Dir::ToNode, unframe(&out[..n])));
                    // Handing the last answer over completes the run.
                    moved = true;
                }
                Some(Transmit::Close) => {
                    assert!(conn.is_finished() && !outcome.daemon_closed);
                    outcome.daemon_closed = true;
                }
                None => break,
            }
        }
        while let Some(f) = to_daemon.pop_front() {
            let _ = conn.handle_frame(w.now, &f);
            moved = true;
        }
        while let Some(f) = to_node.pop_front() {
            let _ = node.handle_frame(w.now, &f);
            moved = true;
        }
        if !moved {
            return outcome;
        }
    }
    panic!("no quiescence");
}

fn pass(_: Dir, f: Vec<u8>) -> Vec<u8> {
    f
}

fn new_node<'c>(
    w: &mut World,
    code: &PairingCode,
    csr: &'c [u8],
    config: NodeConfig,
) -> NodePairing<'c, Vec<u8>> {
    NodePairing::new(
        w.now,
        code,
        csr,
        vec![0u8; PAIRING_MAX_FRAME as usize],
        config,
        &mut w.rng,
    )
    .unwrap()
}

fn new_conn(w: &World) -> DaemonPairing<Vec<u8>> {
    DaemonPairing::new(
        w.now,
        vec![0u8; 2 * PAIRING_MAX_FRAME as usize],
        DaemonConfig::default(),
    )
    .unwrap()
}

fn attempt(
    w: &mut World,
    code: &PairingCode,
    relay: &mut dyn FnMut(Dir, Vec<u8>) -> Vec<u8>,
) -> Outcome {
    let key = node_key();
    let mut node = new_node(w, code, &key.csr, NodeConfig::default());
    let mut conn = new_conn(w);
    run(w, &mut node, &mut conn, relay)
}

fn failed(events: &[NodeEvent]) -> Option<PairingError> {
    events.iter().find_map(|e| match e {
        NodeEvent::Failed(e) => Some(*e),
        _ => None,
    })
}

fn wrong(code: &PairingCode) -> PairingCode {
    // Same public id, another secret.
    let text = code.display().to_string();
    let last = text.chars().last().unwrap().to_digit(10).unwrap();
    let flipped = format!("{}{}", &text[..text.len() - 1], (last + 1) % 10);
    PairingCode::parse(&flipped).unwrap()
}

#[test]
fn full_pairing_ends_with_a_certificate_for_the_nodes_own_key() {
    let mut w = World::new(PairingSettings::default());
    let code = w.code("node-1");
    let key = node_key();
    let config = NodeConfig {
        expected_fingerprint: Some(w.server.fingerprint.0),
        ..NodeConfig::default()
    };
    let mut node = new_node(&mut w, &code, &key.csr, config);
    let mut conn = new_conn(&w);
    let outcome = run(&mut w, &mut node, &mut conn, &mut pass);

    let [NodeEvent::Paired(paired)] = &outcome.node[..] else {
        panic!("node: {:?}", outcome.node);
    };
    assert!(outcome.node_closed && outcome.daemon_closed);
    assert!(node.is_finished() && conn.is_finished());
    assert_eq!((node.poll_timeout(), conn.poll_timeout()), (None, None));
    assert!(
        matches!(
            &outcome.daemon[..],
            [ServiceEvent::Issued(_), ServiceEvent::Completed]
        ),
        "{:?}",
        outcome.daemon
    );

    let (_, cert) = X509Certificate::from_der(&paired.client_cert).unwrap();
    assert_eq!(
        cert.public_key().raw,
        key.key.subject_public_key_info().as_slice(),
        "the certificate carries the node's own public key"
    );
    assert_eq!(paired.device_id, "node-1");
    assert_eq!(paired.ca_cert, w.ca.certificate_der());
    assert_eq!(paired.server_fingerprint, w.server.fingerprint.0);
    // What the node later compares at each handshake with the daemon.
    assert_eq!(
        protocol_core::pairing::certificate_fingerprint(&w.server.cert_der),
        paired.server_fingerprint
    );
    assert!(!cert.is_ca());
    let info = w.ca.verify_client(&paired.client_cert).unwrap();
    assert_eq!(info.device_id, "node-1");
    assert_eq!(node.paired().unwrap().to_owned(), *paired);

    let record = w.service.record(code.id()).unwrap();
    assert_eq!(record.approval.state, ApprovalState::Completed);
    assert!(record.window.used);
    assert_eq!(record.window.failures, 0);
    assert_eq!(record.issued, Some(info.fingerprint));

    // A used code does not pair a second node.
    let again = attempt(&mut w, &code, &mut pass);
    assert_eq!(failed(&again.node), Some(PairingError::AlreadyUsed));
}

#[test]
fn wrong_code_is_a_typed_failure_and_counts_an_attempt() {
    let mut w = World::new(PairingSettings::default());
    let code = w.code("node-2");
    let outcome = attempt(&mut w, &wrong(&code), &mut pass);
    assert_eq!(failed(&outcome.node), Some(PairingError::WrongCode));
    assert!(
        outcome
            .daemon
            .contains(&ServiceEvent::Failed(PairingError::WrongCode)),
        "{:?}",
        outcome.daemon
    );
    assert_eq!(w.service.record(code.id()).unwrap().window.failures, 1);
}

#[test]
fn window_closes_after_twenty_failures_even_for_the_right_code() {
    let mut w = World::new(PairingSettings::default());
    let code = w.code("node-3");
    let bad = wrong(&code);
    for i in 1..=MAX_FAILED_ATTEMPTS {
        w.advance(7_000); // stay under the start rate limit
        let outcome = attempt(&mut w, &bad, &mut pass);
        assert_eq!(failed(&outcome.node), Some(PairingError::WrongCode));
        assert_eq!(w.service.record(code.id()).unwrap().window.failures, i);
    }
    w.advance(7_000);
    let outcome = attempt(&mut w, &code, &mut pass);
    assert_eq!(failed(&outcome.node), Some(PairingError::WindowClosed));
    assert!(
        !outcome
            .node
            .iter()
            .any(|e| matches!(e, NodeEvent::Paired(_)))
    );
}

#[test]
fn abandoned_attempt_still_counts() {
    // A prover that learns from confirmV that its guess was wrong and hangs up.
    let mut w = World::new(PairingSettings::default());
    let code = w.code("node-4");
    let outcome = attempt(&mut w, &wrong(&code), &mut |dir, f| {
        if dir == Dir::ToDaemon && matches!(decode_pairing(&f), Ok(PairingMessage::Abort(_))) {
            // Drop the abort: the daemon never hears back.
            return encode_payload(&PairingMessage::Start(Start {
                version: 1,
                code_id: 0,
                share_p: &[],
            }));
        }
        f
    });
    assert_eq!(failed(&outcome.node), Some(PairingError::WrongCode));
    assert_eq!(w.service.record(code.id()).unwrap().window.failures, 1);
}

fn encode_payload(msg: &PairingMessage<'_>) -> Vec<u8> {
    let mut out = vec![0u8; PAIRING_MAX_FRAME as usize + 4];
    let n = encode_pairing(msg, PAIRING_MAX_FRAME, &mut out).unwrap();
    out[4..n].to_vec()
}

#[test]
fn expired_code_is_refused() {
    let mut w = World::new(PairingSettings::default());
    let code = w.code("node-5");
    w.advance(10 * 60 * 1000);
    let outcome = attempt(&mut w, &code, &mut pass);
    assert_eq!(failed(&outcome.node), Some(PairingError::Expired));
    assert!(
        outcome
            .daemon
            .contains(&ServiceEvent::Failed(PairingError::Expired))
    );
}

#[test]
fn lifetime_settings_are_bounded() {
    let mut w = World::new(PairingSettings::default());
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    for bad in [29_999, 24 * 3600 * 1000 + 1] {
        assert!(matches!(
            w.service.create_code(w.now, "n", Some(bad), None, &mut rng),
            Err(daemon::pairing::ServiceError::Limit(_))
        ));
    }
    let code = w
        .service
        .create_code(w.now, "n", Some(30_000), None, &mut rng)
        .unwrap();
    w.advance(30_000);
    assert_eq!(
        failed(&attempt(&mut w, &code, &mut pass).node),
        Some(PairingError::Expired)
    );
}

#[test]
fn pairing_starts_are_rate_limited() {
    let mut w = World::new(PairingSettings {
        starts_burst: 2,
        starts_refill_ms: 60_000,
        ..PairingSettings::default()
    });
    let code = w.code("node-6");
    let bad = wrong(&code);
    for _ in 0..2 {
        assert_eq!(
            failed(&attempt(&mut w, &bad, &mut pass).node),
            Some(PairingError::WrongCode)
        );
    }
    let limited = attempt(&mut w, &code, &mut pass);
    assert!(
        matches!(failed(&limited.node), Some(PairingError::RateLimited { retry_after_ms }) if retry_after_ms > 0)
    );
    // Rate-limited starts do not use up the code's attempts.
    assert_eq!(w.service.record(code.id()).unwrap().window.failures, 2);
    w.advance(60_000);
    assert!(matches!(
        &attempt(&mut w, &code, &mut pass).node[..],
        [NodeEvent::Paired(_)]
    ));
}

#[test]
fn unknown_code_id_is_refused() {
    let mut w = World::new(PairingSettings::default());
    let code = w.code("node-u");
    let other = PairingCode::new((code.id() + 1) % 10_000, 1).unwrap();
    assert_eq!(
        failed(&attempt(&mut w, &other, &mut pass).node),
        Some(PairingError::UnknownCode)
    );
}

/// A relay without the code replaces the node's share with one of its own (a guess).
#[test]
fn relay_swapping_share_p_fails() {
    let mut w = World::new(PairingSettings::default());
    let code = w.code("node-7");
    let guess = wrong(&code);
    let mut rng = ChaCha20Rng::from_seed([3; 32]);
    let outcome = attempt(&mut w, &code, &mut |dir, f| {
        if let (Dir::ToDaemon, Ok(PairingMessage::Start(s))) = (dir, decode_pairing(&f)) {
            let id = guess.prover_id();
            let ctx = Context {
                context: PAKE_CONTEXT,
                prover_id: &id,
                verifier_id: VERIFIER_ID,
            };
            let (_, share) = Prover::start(&guess.prover_secret().unwrap(), &ctx, &mut rng);
            return encode_payload(&PairingMessage::Start(Start {
                share_p: share.as_bytes(),
                ..s
            }));
        }
        f
    });
    assert_eq!(failed(&outcome.node), Some(PairingError::WrongCode));
    assert!(
        !outcome
            .daemon
            .iter()
            .any(|o| matches!(o, ServiceEvent::Issued(_)))
    );
    assert_eq!(w.service.record(code.id()).unwrap().window.failures, 1);
}

/// A relay posing as the daemon answers with its own share and confirmation.
#[test]
fn relay_swapping_share_v_fails() {
    let mut w = World::new(PairingSettings::default());
    let code = w.code("node-8");
    let guess = wrong(&code);
    let mut rng = ChaCha20Rng::from_seed([4; 32]);
    let mut node_share = Vec::new();
    let outcome = attempt(&mut w, &code, &mut |dir, f| {
        match decode_pairing(&f) {
            Ok(PairingMessage::Start(s)) if dir == Dir::ToDaemon => node_share = s.share_p.to_vec(),
            Ok(PairingMessage::Challenge(_)) if dir == Dir::ToNode => {
                let id = guess.prover_id();
                let ctx = Context {
                    context: PAKE_CONTEXT,
                    prover_id: &id,
                    verifier_id: VERIFIER_ID,
                };
                let record =
                    VerifierRecord::<P256Sha256>::from_bytes(&guess.verifier_record().unwrap())
                        .unwrap();
                let (verifier, share_v) = Verifier::start(&record, &ctx, &mut rng);
                let share_p = spake2plus::ShareP::from_bytes(&node_share).unwrap();
                let (_, confirm_v) = verifier.receive(&share_p).unwrap();
                return encode_payload(&PairingMessage::Challenge(Challenge {
                    share_v: share_v.as_bytes(),
                    confirm_v: confirm_v.as_bytes(),
                }));
            }
            _ => {}
        }
        f
    });
    assert_eq!(failed(&outcome.node), Some(PairingError::WrongCode));
    assert!(
        !outcome
            .node
            .iter()
            .any(|e| matches!(e, NodeEvent::Paired(_)))
    );
}

#[test]
fn tampered_answer_is_detected() {
    let mut w = World::new(PairingSettings::default());
    let code = w.code("node-9");
    let outcome = attempt(&mut w, &code, &mut |dir, f| {
        if let (Dir::ToNode, Ok(PairingMessage::Sealed(s))) = (dir, decode_pairing(&f)) {
            let mut c = s.ciphertext.to_vec();
            let mid = c.len() / 2;
            c[mid] ^= 0x20;
            return encode_payload(&PairingMessage::Sealed(Sealed {
                ciphertext: &c,
                ..s
            }));
        }
        f
    });
    assert_eq!(failed(&outcome.node), Some(PairingError::Tampered));
}

#[test]
fn swapped_csr_is_detected() {
    // A relay that forwards the PAKE untouched but puts its own key's CSR in.
    let mut w = World::new(PairingSettings::default());
    let code = w.code("node-10");
    let evil = node_key();
    let outcome = attempt(&mut w, &code, &mut |dir, f| {
        if let (Dir::ToDaemon, Ok(PairingMessage::Confirm(c))) = (dir, decode_pairing(&f)) {
            let mut sealed = evil.csr.clone();
            sealed.extend_from_slice(&[0u8; 16]);
            return encode_payload(&PairingMessage::Confirm(Confirm {
                sealed_csr: &sealed,
                ..c
            }));
        }
        f
    });
    assert!(
        outcome
            .daemon
            .contains(&ServiceEvent::Failed(PairingError::Tampered)),
        "{:?}",
        outcome.daemon
    );
    assert_eq!(failed(&outcome.node), Some(PairingError::Tampered));
    assert!(
        !outcome
            .daemon
            .iter()
            .any(|o| matches!(o, ServiceEvent::Issued(_)))
    );
}

#[test]
fn approval_pending_then_approved() {
    let mut w = World::new(PairingSettings {
        require_approval: true,
        ..PairingSettings::default()
    });
    let code = w.code("node-11");
    let key = node_key();
    let mut node = new_node(&mut w, &code, &key.csr, NodeConfig::default());
    let mut conn = new_conn(&w);
    let first = run(&mut w, &mut node, &mut conn, &mut pass);
    assert_eq!(first.node, [NodeEvent::AwaitingApproval]);
    assert_eq!(
        first.daemon,
        [ServiceEvent::AwaitingApproval { code_id: code.id() }]
    );
    assert_eq!(
        w.service.record(code.id()).unwrap().approval.state,
        ApprovalState::Pending
    );

    w.advance(60_000);
    w.service.approve(w.now, code.id()).unwrap();
    let second = run(&mut w, &mut node, &mut conn, &mut pass);
    let [NodeEvent::Paired(p)] = &second.node[..] else {
        panic!("{:?}", second.node)
    };
    let (_, cert) = X509Certificate::from_der(&p.client_cert).unwrap();
    assert_eq!(
        cert.public_key().raw,
        key.key.subject_public_key_info().as_slice()
    );
    assert_eq!(
        w.service.record(code.id()).unwrap().approval.state,
        ApprovalState::Completed
    );
}

#[test]
fn approval_rejected_and_expired() {
    let mut w = World::new(PairingSettings {
        require_approval: true,
        ..PairingSettings::default()
    });
    let code = w.code("node-12");
    let key = node_key();
    let mut node = new_node(&mut w, &code, &key.csr, NodeConfig::default());
    let mut conn = new_conn(&w);
    run(&mut w, &mut node, &mut conn, &mut pass);
    w.service.reject(w.now, code.id()).unwrap();
    let out = run(&mut w, &mut node, &mut conn, &mut pass);
    assert_eq!(failed(&out.node), Some(PairingError::RejectedByOperator));

    let code = w.code("node-13");
    let patient = NodeConfig {
        timeout_ms: 60 * 60 * 1000,
        ..NodeConfig::default()
    };
    let mut node = new_node(&mut w, &code, &key.csr, patient);
    let mut conn = new_conn(&w);
    run(&mut w, &mut node, &mut conn, &mut pass);
    w.advance(21 * 60 * 1000);
    let out = run(&mut w, &mut node, &mut conn, &mut pass);
    assert_eq!(failed(&out.node), Some(PairingError::ApprovalExpired));
    assert_eq!(
        w.service.record(code.id()).map(|r| r.approval.state),
        Some(ApprovalState::Expired)
    );
}

#[test]
fn node_refuses_a_daemon_other_than_the_pinned_one() {
    let mut w = World::new(PairingSettings::default());
    let code = w.code("node-14");
    let key = node_key();
    let config = NodeConfig {
        expected_fingerprint: Some([0xee; 32]),
        ..NodeConfig::default()
    };
    let mut node = new_node(&mut w, &code, &key.csr, config);
    let mut conn = new_conn(&w);
    let out = run(&mut w, &mut node, &mut conn, &mut pass);
    assert_eq!(failed(&out.node), Some(PairingError::FingerprintMismatch));
}

#[test]
fn qr_uri_carries_address_code_and_fingerprint() {
    let mut w = World::new(PairingSettings::default());
    let code = w.code("node-15");
    let uri = w.service.uri("ternd.test:7443", &code).unwrap();
    let parsed = PairingUri::parse(&uri).unwrap();
    assert_eq!(parsed.addr, "ternd.test:7443");
    assert_eq!(parsed.code, code);
    assert_eq!(parsed.fingerprint, w.server.fingerprint.0);
}

#[test]
fn records_are_plain_persistable_data() {
    let mut w = World::new(PairingSettings {
        require_approval: true,
        ..PairingSettings::default()
    });
    let code = w.code("node-16");
    let records = w.service.records();
    let json = serde_json::to_string(&records).unwrap();
    assert!(
        !json.contains(&code.display().to_string()[5..]),
        "the code is not stored"
    );
    // Instants are stored as Unix milliseconds.
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let expires = T0.as_millis() + 10 * 60 * 1000;
    assert_eq!(value[0]["window"]["created_ms"], T0.as_millis());
    assert_eq!(value[0]["window"]["expires_ms"], expires);
    assert_eq!(
        value[0]["approval"]["deadline_ms"],
        expires + 10 * 60 * 1000
    );
    assert_eq!(value[0]["approval"]["changed_ms"], T0.as_millis());
    let back: Vec<PairingRecord> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, records);

    // A restarted daemon pairs with the restored record.
    let mut fresh = PairingService::new(
        w.ca.clone(),
        w.server.fingerprint,
        PairingSettings::default(),
        w.now,
    )
    .unwrap();
    fresh.restore(back);
    fresh.approve(w.now, code.id()).unwrap();
    w.service = fresh;
    assert!(matches!(
        &attempt(&mut w, &code, &mut pass).node[..],
        [NodeEvent::Paired(_)]
    ));
}

#[test]
fn two_runs_with_the_right_code_issue_one_certificate() {
    let mut w = World::new(PairingSettings::default());
    let code = w.code("node-17");
    let (k1, k2) = (node_key(), node_key());
    let mut node2 = new_node(&mut w, &code, &k2.csr, NodeConfig::default());
    let mut conn2 = new_conn(&w);
    let mut out = vec![0u8; PAIRING_MAX_FRAME as usize + 4];

    // The second run gets as far as its Confirm, which is held back.
    let Some(Transmit::Frame(n)) = node2.poll_transmit(w.now, &mut out).unwrap() else {
        panic!()
    };
    conn2.handle_frame(w.now, &unframe(&out[..n])).unwrap();
    assert_eq!(w.service.drive(w.now, &mut conn2, &mut w.rng), None);
    let Some(Transmit::Frame(n)) = conn2.poll_transmit(w.now, &mut out).unwrap() else {
        panic!()
    };
    node2.handle_frame(w.now, &unframe(&out[..n])).unwrap();
    let Some(Transmit::Frame(n)) = node2.poll_transmit(w.now, &mut out).unwrap() else {
        panic!()
    };
    let held = unframe(&out[..n]);

    // The first run completes.
    let mut node1 = new_node(&mut w, &code, &k1.csr, NodeConfig::default());
    let mut conn1 = new_conn(&w);
    let first = run(&mut w, &mut node1, &mut conn1, &mut pass);
    assert!(matches!(&first.node[..], [NodeEvent::Paired(_)]));

    // The second run proves the code too, but the code is used up.
    conn2.handle_frame(w.now, &held).unwrap();
    let second = run(&mut w, &mut node2, &mut conn2, &mut pass);
    assert!(
        second
            .daemon
            .contains(&ServiceEvent::Failed(PairingError::AlreadyUsed)),
        "{:?}",
        second.daemon
    );
    assert_eq!(failed(&second.node), Some(PairingError::AlreadyUsed));
    assert_eq!(w.service.record(code.id()).unwrap().window.failures, 0);
}

#[test]
fn bad_csr_is_refused_and_the_code_stays_usable() {
    let mut w = World::new(PairingSettings::default());
    let code = w.code("node-18");
    let good = node_key();
    let mut bad_sig = good.csr.clone();
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 1;
    let mut node = new_node(&mut w, &code, &bad_sig, NodeConfig::default());
    let mut conn = new_conn(&w);
    let out = run(&mut w, &mut node, &mut conn, &mut pass);
    assert_eq!(failed(&out.node), Some(PairingError::BadCsr));
    assert!(
        out.daemon
            .contains(&ServiceEvent::Failed(PairingError::BadCsr))
    );
    let r = w.service.record(code.id()).unwrap();
    assert!(!r.window.used && r.window.failures == 0 && r.issued.is_none());

    let mut node = new_node(&mut w, &code, &good.csr, NodeConfig::default());
    let mut conn = new_conn(&w);
    assert!(matches!(
        &run(&mut w, &mut node, &mut conn, &mut pass).node[..],
        [NodeEvent::Paired(_)]
    ));
}

#[test]
fn node_that_drops_while_pending_can_come_back() {
    let mut w = World::new(PairingSettings {
        require_approval: true,
        ..PairingSettings::default()
    });
    let code = w.code("node-19");
    let key = node_key();
    let mut node = new_node(&mut w, &code, &key.csr, NodeConfig::default());
    let mut conn = new_conn(&w);
    assert_eq!(
        run(&mut w, &mut node, &mut conn, &mut pass).node,
        [NodeEvent::AwaitingApproval]
    );
    assert!(w.service.record(code.id()).unwrap().window.used);
    w.service.connection_closed(&conn);
    drop((node, conn));

    w.service.approve(w.now, code.id()).unwrap();
    w.advance(1_000);
    let mut node = new_node(&mut w, &code, &key.csr, NodeConfig::default());
    let mut conn = new_conn(&w);
    let out = run(&mut w, &mut node, &mut conn, &mut pass);
    assert!(
        matches!(&out.node[..], [NodeEvent::Paired(_)]),
        "{:?}",
        out.node
    );
}

#[test]
fn rejected_code_is_refused_before_the_pake() {
    let mut w = World::new(PairingSettings {
        require_approval: true,
        ..PairingSettings::default()
    });
    let code = w.code("node-20");
    w.service.reject(w.now, code.id()).unwrap();
    let out = attempt(&mut w, &code, &mut pass);
    assert_eq!(failed(&out.node), Some(PairingError::RejectedByOperator));
    assert_eq!(w.service.record(code.id()).unwrap().window.failures, 0);
}

#[test]
fn a_decision_after_the_runs_deadline_issues_nothing() {
    let mut w = World::new(PairingSettings {
        require_approval: true,
        ..PairingSettings::default()
    });
    let code = w.code("node-21");
    let key = node_key();
    let patient = NodeConfig {
        timeout_ms: 60 * 60 * 1000,
        ..NodeConfig::default()
    };
    let mut node = new_node(&mut w, &code, &key.csr, patient);
    let mut conn = new_conn(&w);
    run(&mut w, &mut node, &mut conn, &mut pass);
    let deadline = conn.poll_timeout().unwrap();
    // The operator approves within the code's approval window, but after the run's own
    // decision deadline, before the transport's timer fired.
    w.now = deadline;
    w.service.approve(w.now, code.id()).unwrap();
    assert_eq!(
        w.service.drive(w.now, &mut conn, &mut w.rng),
        Some(ServiceEvent::Failed(PairingError::ApprovalExpired))
    );
    assert_eq!(w.service.drive(w.now, &mut conn, &mut w.rng), None);
    assert_eq!(w.service.record(code.id()).unwrap().issued, None);
    let out = run(&mut w, &mut node, &mut conn, &mut pass);
    assert_eq!(failed(&out.node), Some(PairingError::ApprovalExpired));
    assert!(out.daemon_closed);
}

#[test]
fn the_store_is_given_only_what_changed_and_what_went() {
    let mut w = World::new(PairingSettings::default());
    let first = w.code("node-a");
    let _ = w.service.take_changes();
    let second = w.code("node-b");
    let changes = w.service.take_changes();
    assert_eq!(
        changes.put.iter().map(|r| r.code_id).collect::<Vec<_>>(),
        vec![second.id()],
        "minting a code writes that code's record, not every record"
    );
    assert!(changes.deleted.is_empty());
    assert_eq!(w.service.take_changes(), PairingChanges::default());

    // A full run changes its own code's record only.
    let outcome = attempt(&mut w, &first, &mut pass);
    assert!(outcome.daemon.contains(&ServiceEvent::Completed));
    let changes = w.service.take_changes();
    assert_eq!(
        changes.put.iter().map(|r| r.code_id).collect::<Vec<_>>(),
        vec![first.id()]
    );
    assert!(changes.put[0].issued.is_some());

    // Records that can lead nowhere (a used code, an expired one) are deleted from the
    // store when they are dropped, not kept forever.
    w.advance(10 * 60 * 1000);
    let _third = w.code("node-c");
    let changes = w.service.take_changes();
    let mut deleted: Vec<u16> = changes.deleted.iter().map(|(id, _)| *id).collect();
    deleted.sort_unstable();
    let mut gone = vec![first.id(), second.id()];
    gone.sort_unstable();
    assert_eq!(deleted, gone);
    // Each with the verifier of the code it held, so a shared store drops that code only.
    assert!(
        changes
            .deleted
            .iter()
            .all(|(_, verifier)| !verifier.is_empty())
    );
    assert_eq!(changes.put.len(), 1);
}

/// Daemons sharing a store take in each other's pairing records: a code minted on one is
/// known to the other, an operator's decision on one wakes the other, and a code used on
/// one is used on all.
#[test]
fn pairing_records_from_another_daemon_are_taken_in() {
    let mut a = World::new(PairingSettings::default());
    let mut b = World::new(PairingSettings::default());
    let code = a
        .service
        .create_code(a.now, "node-shared", None, Some(true), &mut a.rng)
        .unwrap();
    let id = code.id();
    assert!(b.service.record(id).is_none());
    assert!(!b.service.absorb(a.service.records()), "no decision yet");
    let seen = b.service.record(id).unwrap().clone();
    assert_eq!(seen.device_id, "node-shared");
    assert_eq!(seen.approval.state, ApprovalState::Pending);

    // Approved on a: b learns of the decision (its waiting runs look again).
    a.service.approve(a.now, id).unwrap();
    assert!(b.service.absorb(a.service.records()));
    assert_eq!(
        b.service.record(id).unwrap().approval.state,
        ApprovalState::Approved
    );
    // Taking the same records in again changes nothing.
    assert!(!b.service.absorb(a.service.records()));

    // Used on b: a keeps it used, even though it never saw the node.
    let mut used = b.service.record(id).unwrap().clone();
    used.window.used = true;
    assert!(!a.service.absorb([used]));
    assert!(a.service.record(id).unwrap().window.used);
    // A decision never goes back to pending from a stale record.
    assert!(!a.service.absorb([seen]));
    assert_eq!(
        a.service.record(id).unwrap().approval.state,
        ApprovalState::Approved
    );
}
