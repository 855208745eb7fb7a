//! The two pairing state machines against each other, without the daemon's CA: the
//! daemon role here answers with self-signed certificates made with rcgen.
#![allow(clippy::unwrap_used)]

use chacha20::ChaCha20Rng;
use protocol_core::pairing::*;
use protocol_core::pump::{Machine, Offer};
use protocol_core::time::Instant;
use protocol_core::transmit::{Transmit, TransmitError};
use protocol_core::wire::{ErrorCode, ErrorFrame, Message, Ping, encode_payload};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use spake2plus::rand_core::SeedableRng;

const MAX: usize = PAIRING_MAX_FRAME as usize;

struct Keyed {
    csr: Vec<u8>,
    cert: Vec<u8>,
}

fn keyed() -> Keyed {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let params = CertificateParams::new(vec!["node".to_string()]).unwrap();
    Keyed {
        csr: CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec(),
        cert: params.self_signed(&key).unwrap().der().to_vec(),
    }
}

fn code() -> PairingCode {
    PairingCode::new(7, 24_681_357).unwrap()
}

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

struct Pair<'c> {
    node: NodePairing<'c, Vec<u8>>,
    daemon: DaemonPairing<Vec<u8>>,
    rng: ChaCha20Rng,
    out: Vec<u8>,
}

impl<'c> Pair<'c> {
    fn new(node_code: &PairingCode, csr: &'c [u8], config: NodeConfig) -> Self {
        let mut rng = ChaCha20Rng::from_seed([9; 32]);
        let node = NodePairing::new(at(0), node_code, csr, vec![0; MAX], config, &mut rng).unwrap();
        let daemon = DaemonPairing::new(at(0), vec![0; 2 * MAX], DaemonConfig::default()).unwrap();
        let out = vec![0; node.transmit_len().max(daemon.transmit_len())];
        Self {
            node,
            daemon,
            rng,
            out,
        }
    }

    /// Next frame payload the node sends, if any.
    fn node_frame(&mut self, now: u64) -> Option<Vec<u8>> {
        match self.node.poll_transmit(at(now), &mut self.out).unwrap() {
            Some(Transmit::Frame(n)) => Some(self.out[4..n].to_vec()),
            _ => None,
        }
    }

    fn daemon_frame(&mut self, now: u64) -> Option<Vec<u8>> {
        match self.daemon.poll_transmit(at(now), &mut self.out).unwrap() {
            Some(Transmit::Frame(n)) => Some(self.out[4..n].to_vec()),
            _ => None,
        }
    }

    /// Start -> record -> Challenge -> Confirm -> CSR at the daemon.
    fn run_to_csr(&mut self) -> Vec<u8> {
        let start = self.node_frame(0).unwrap();
        self.daemon.handle_frame(at(1), &start).unwrap();
        assert_eq!(
            self.daemon.poll_event(),
            Some(DaemonPairingEvent::RecordNeeded { code_id: 7 })
        );
        assert_eq!(self.daemon.poll_event(), None);
        assert_eq!(
            self.daemon.poll_timeout(),
            None,
            "the record wait is untimed"
        );
        self.daemon
            .accept_record(at(1), &code().verifier_record().unwrap(), &mut self.rng)
            .unwrap();
        assert_eq!(self.daemon.poll_timeout(), Some(at(30_000)));
        let challenge = self.daemon_frame(1).unwrap();
        self.node.handle_frame(at(2), &challenge).unwrap();
        let confirm = self.node_frame(2).unwrap();
        self.daemon.handle_frame(at(3), &confirm).unwrap();
        assert_eq!(
            self.daemon.poll_timeout(),
            Some(at(3 + 10 * 60 * 1000)),
            "the decision deadline runs from the CSR"
        );
        match self.daemon.poll_event() {
            Some(DaemonPairingEvent::CsrReceived { code_id: 7, csr }) => csr.to_vec(),
            other => panic!("{other:?}"),
        }
    }
}

fn issued<'a>(cert: &'a [u8], fp: [u8; 32]) -> Issued<'a> {
    Issued {
        device_id: "node-a",
        client_cert: cert,
        ca_cert: cert,
        server_fingerprint: fp,
    }
}

#[test]
fn happy_path_with_pending_answer() {
    let k = keyed();
    let mut p = Pair::new(&code(), &k.csr, NodeConfig::default());
    assert_eq!(
        p.run_to_csr(),
        k.csr,
        "the daemon gets the node's CSR unchanged"
    );
    p.daemon.pending(at(4)).unwrap();
    let pending = p.daemon_frame(4).unwrap();
    p.node.handle_frame(at(5), &pending).unwrap();
    assert_eq!(
        p.node.poll_event(),
        Some(NodePairingEvent::AwaitingApproval)
    );
    assert_eq!(p.node.poll_event(), None);
    assert_eq!(p.node.poll_transmit(at(5), &mut p.out), Ok(None));
    p.daemon.issue(at(6), &issued(&k.cert, [3; 32])).unwrap();
    assert_eq!(p.daemon.poll_event(), None, "complete once handed over");
    let answer = p.daemon_frame(6).unwrap();
    assert_eq!(p.daemon.poll_event(), Some(DaemonPairingEvent::Completed));
    assert!(p.daemon.is_finished());
    assert_eq!(p.daemon.poll_timeout(), None);
    // The daemon asks to close once, after its last frame.
    assert_eq!(
        p.daemon.poll_transmit(at(6), &mut p.out),
        Ok(Some(Transmit::Close))
    );
    assert_eq!(p.daemon.poll_transmit(at(6), &mut p.out), Ok(None));
    assert_eq!(p.daemon.poll_event(), None);

    p.node.handle_frame(at(7), &answer).unwrap();
    let Some(NodePairingEvent::Paired(paired)) = p.node.poll_event() else {
        panic!()
    };
    assert_eq!(paired, issued(&k.cert, [3; 32]));
    assert_eq!(p.node.poll_event(), None);
    assert_eq!(p.node.paired(), Some(issued(&k.cert, [3; 32])));
    assert_eq!(p.node.poll_timeout(), None);
    assert_eq!(
        p.node.poll_transmit(at(7), &mut p.out),
        Ok(Some(Transmit::Close))
    );
    assert_eq!(p.node.poll_transmit(at(7), &mut p.out), Ok(None));
    assert!(p.node.is_finished() && p.daemon.is_finished());
    // Frames after a successful run are ignored.
    assert_eq!(p.node.handle_frame(at(8), &answer), Ok(()));
    assert_eq!(p.node.poll_event(), None);
}

#[test]
fn certificate_for_another_key_is_refused() {
    let (k, other) = (keyed(), keyed());
    let mut p = Pair::new(&code(), &k.csr, NodeConfig::default());
    p.run_to_csr();
    p.daemon
        .issue(at(4), &issued(&other.cert, [0; 32]))
        .unwrap();
    let answer = p.daemon_frame(4).unwrap();
    assert_eq!(
        p.node.handle_frame(at(5), &answer),
        Err(PairingError::BadCertificate)
    );
    // The node tells the daemon why, then closes.
    let abort = p.node_frame(5).unwrap();
    assert_eq!(
        decode_pairing(&abort).unwrap(),
        PairingMessage::Abort(Abort {
            error: PairingError::BadCertificate
        })
    );
    assert_eq!(
        p.node.poll_transmit(at(5), &mut p.out),
        Ok(Some(Transmit::Close))
    );
    assert_eq!(
        p.node.poll_event(),
        Some(NodePairingEvent::Failed(PairingError::BadCertificate))
    );
    assert_eq!(p.node.paired(), None);
}

#[test]
fn replayed_answer_is_refused() {
    let k = keyed();
    let mut p = Pair::new(&code(), &k.csr, NodeConfig::default());
    p.run_to_csr();
    p.daemon.pending(at(4)).unwrap();
    let pending = p.daemon_frame(4).unwrap();
    p.node.handle_frame(at(5), &pending).unwrap();
    assert_eq!(
        p.node.handle_frame(at(6), &pending),
        Err(PairingError::Tampered)
    );
}

#[test]
fn wrong_version_and_unexpected_messages() {
    let k = keyed();
    let mut p = Pair::new(&code(), &k.csr, NodeConfig::default());
    let mut start = p.node_frame(0).unwrap();
    let PairingMessage::Start(s) = decode_pairing(&start).unwrap() else {
        panic!()
    };
    let share = s.share_p.to_vec();
    let mut out = vec![0; MAX];
    let n = encode_pairing(
        &PairingMessage::Start(Start {
            version: 9,
            code_id: 7,
            share_p: &share,
        }),
        PAIRING_MAX_FRAME,
        &mut out,
    )
    .unwrap();
    start = out[4..n].to_vec();
    assert_eq!(
        p.daemon.handle_frame(at(1), &start),
        Err(PairingError::VersionMismatch { ours: 1, theirs: 9 })
    );

    // A node never accepts a Start; a daemon never accepts a Challenge.
    let mut q = Pair::new(&code(), &k.csr, NodeConfig::default());
    let start = q.node_frame(0).unwrap();
    assert_eq!(
        q.node.handle_frame(at(1), &start),
        Err(PairingError::UnexpectedMessage)
    );
    let mut r = Pair::new(&code(), &k.csr, NodeConfig::default());
    let n = encode_pairing(
        &PairingMessage::Challenge(Challenge {
            share_v: &[4; 65],
            confirm_v: &[0; 32],
        }),
        PAIRING_MAX_FRAME,
        &mut out,
    )
    .unwrap();
    assert_eq!(
        r.daemon.handle_frame(at(1), &out[4..n]),
        Err(PairingError::UnexpectedMessage)
    );
    assert_eq!(
        r.daemon.handle_frame(at(2), &[0xff, 0xff]),
        Err(PairingError::UnexpectedMessage),
        "a failed run stays failed"
    );
    r.daemon.handle_timeout(at(1_000_000));
    assert_eq!(r.daemon.error(), Some(PairingError::UnexpectedMessage));
}

#[test]
fn garbage_and_off_curve_shares_are_malformed() {
    let k = keyed();
    let mut p = Pair::new(&code(), &k.csr, NodeConfig::default());
    assert_eq!(
        p.daemon.handle_frame(at(1), &[0x00, 0x01]),
        Err(PairingError::Malformed)
    );
    let mut q = Pair::new(&code(), &k.csr, NodeConfig::default());
    let mut out = vec![0; MAX];
    let n = encode_pairing(
        &PairingMessage::Start(Start {
            version: 1,
            code_id: 7,
            share_p: &[4; 65],
        }),
        PAIRING_MAX_FRAME,
        &mut out,
    )
    .unwrap();
    assert_eq!(
        q.daemon.handle_frame(at(1), &out[4..n]),
        Err(PairingError::Malformed)
    );
}

#[test]
fn timeouts_on_both_sides() {
    let k = keyed();
    let mut p = Pair::new(
        &code(),
        &k.csr,
        NodeConfig {
            timeout_ms: 1_000,
            ..NodeConfig::default()
        },
    );
    p.node_frame(0).unwrap();
    assert_eq!(p.node.poll_timeout(), Some(at(1_000)));
    p.node.handle_timeout(at(999));
    assert_eq!(p.node.error(), None);
    assert_eq!(p.node.poll_event(), None);
    p.node.handle_timeout(at(1_000));
    assert_eq!(p.node.error(), Some(PairingError::TimedOut));
    assert_eq!(
        p.node.poll_event(),
        Some(NodePairingEvent::Failed(PairingError::TimedOut))
    );
    assert_eq!(p.node.poll_timeout(), None);
    assert_eq!(
        p.node.handle_frame(at(1_001), &[0]),
        Err(PairingError::TimedOut),
        "a failed run stays failed"
    );

    assert_eq!(p.daemon.poll_timeout(), Some(at(30_000)));
    p.daemon.handle_timeout(at(29_999));
    assert_eq!(p.daemon.error(), None);
    p.daemon.handle_timeout(at(30_000));
    assert_eq!(p.daemon.error(), Some(PairingError::TimedOut));
    let abort = p.daemon_frame(30_000).unwrap();
    assert_eq!(
        decode_pairing(&abort).unwrap(),
        PairingMessage::Abort(Abort {
            error: PairingError::TimedOut
        })
    );
    assert_eq!(
        p.daemon.poll_transmit(at(30_000), &mut p.out),
        Ok(Some(Transmit::Close))
    );
    assert_eq!(p.daemon.poll_transmit(at(30_000), &mut p.out), Ok(None));
    assert_eq!(
        p.daemon.poll_event(),
        Some(DaemonPairingEvent::Failed(PairingError::TimedOut))
    );
    assert_eq!(p.daemon.poll_event(), None);
    assert_eq!(p.daemon.poll_timeout(), None);
}

#[test]
fn a_frame_past_the_deadline_times_out() {
    let k = keyed();
    let mut p = Pair::new(&code(), &k.csr, NodeConfig::default());
    let start = p.node_frame(0).unwrap();
    assert_eq!(
        p.daemon.handle_frame(at(30_000), &start),
        Err(PairingError::TimedOut)
    );
}

#[test]
fn decision_deadline_expires_the_approval() {
    let k = keyed();
    let mut p = Pair::new(&code(), &k.csr, NodeConfig::default());
    p.run_to_csr();
    p.daemon.pending(at(4)).unwrap();
    p.daemon_frame(4).unwrap();
    let deadline = p.daemon.poll_timeout().unwrap();
    // A decision at the deadline is refused and changes nothing...
    assert_eq!(
        p.daemon.issue(deadline, &issued(&k.cert, [3; 32])),
        Err(PairingError::ApprovalExpired)
    );
    assert_eq!(
        p.daemon.reject(deadline),
        Err(PairingError::ApprovalExpired)
    );
    assert_eq!(p.daemon.poll_transmit(deadline, &mut p.out), Ok(None));
    assert_eq!(p.daemon.csr(), Some(&k.csr[..]));
    // ...and the timer ends the run.
    p.daemon.handle_timeout(deadline);
    assert_eq!(p.daemon.error(), Some(PairingError::ApprovalExpired));
    let abort = p.daemon_frame(deadline.as_millis()).unwrap();
    assert_eq!(
        p.node.handle_frame(at(5), &abort),
        Err(PairingError::ApprovalExpired)
    );
}

#[test]
fn refusal_reaches_the_node_typed() {
    let k = keyed();
    let mut p = Pair::new(&code(), &k.csr, NodeConfig::default());
    let start = p.node_frame(0).unwrap();
    p.daemon.handle_frame(at(1), &start).unwrap();
    assert_eq!(
        p.daemon.poll_event(),
        Some(DaemonPairingEvent::RecordNeeded { code_id: 7 })
    );
    p.daemon
        .refuse(PairingError::RateLimited {
            retry_after_ms: 5_000,
        })
        .unwrap();
    let abort = p.daemon_frame(1).unwrap();
    assert_eq!(
        p.node.handle_frame(at(2), &abort),
        Err(PairingError::RateLimited {
            retry_after_ms: 5_000
        })
    );
    // The node does not answer an abort with another; it only closes.
    assert_eq!(
        p.node.poll_event(),
        Some(NodePairingEvent::Failed(PairingError::RateLimited {
            retry_after_ms: 5_000
        }))
    );
    assert_eq!(
        p.node.poll_transmit(at(2), &mut p.out),
        Ok(Some(Transmit::Close))
    );
    assert_eq!(p.node.poll_transmit(at(2), &mut p.out), Ok(None));
    // A finished run refuses further commands.
    assert_eq!(
        p.daemon.refuse(PairingError::Internal),
        Err(PairingError::UnexpectedMessage)
    );
}

#[test]
fn commands_out_of_turn_change_nothing() {
    let k = keyed();
    let mut p = Pair::new(&code(), &k.csr, NodeConfig::default());
    let record = code().verifier_record().unwrap();
    // Nothing asked yet.
    assert_eq!(
        p.daemon.accept_record(at(0), &record, &mut p.rng),
        Err(PairingError::UnexpectedMessage)
    );
    assert_eq!(
        p.daemon.pending(at(0)),
        Err(PairingError::UnexpectedMessage)
    );
    assert_eq!(p.daemon.poll_transmit(at(0), &mut p.out), Ok(None));

    let start = p.node_frame(0).unwrap();
    p.daemon.handle_frame(at(1), &start).unwrap();
    // A record that does not parse, or one offered too late, is refused; the run still
    // waits for a record.
    let mut bad = record;
    bad[0] ^= 0xff;
    bad[1..].fill(0xff);
    assert_eq!(
        p.daemon.accept_record(at(1), &bad, &mut p.rng),
        Err(PairingError::Internal)
    );
    assert_eq!(
        p.daemon.accept_record(at(30_000), &record, &mut p.rng),
        Err(PairingError::TimedOut)
    );
    assert_eq!(p.daemon.code_id(), Some(7));
    assert_eq!(p.daemon.poll_transmit(at(1), &mut p.out), Ok(None));
    p.daemon.accept_record(at(1), &record, &mut p.rng).unwrap();
    assert_eq!(
        p.daemon.accept_record(at(1), &record, &mut p.rng),
        Err(PairingError::UnexpectedMessage)
    );
    let challenge = p.daemon_frame(1).unwrap();
    p.node.handle_frame(at(2), &challenge).unwrap();
    let confirm = p.node_frame(2).unwrap();
    p.daemon.handle_frame(at(3), &confirm).unwrap();

    // One answer at a time.
    p.daemon.pending(at(4)).unwrap();
    assert_eq!(
        p.daemon.issue(at(4), &issued(&k.cert, [0; 32])),
        Err(PairingError::UnexpectedMessage)
    );
    let pending = p.daemon_frame(4).unwrap();
    p.node.handle_frame(at(5), &pending).unwrap();
    p.daemon.reject(at(5)).unwrap();
    assert_eq!(p.daemon.error(), None, "rejected once the answer is out");
    let rejected = p.daemon_frame(5).unwrap();
    assert_eq!(p.daemon.error(), Some(PairingError::RejectedByOperator));
    assert_eq!(
        p.daemon.poll_transmit(at(5), &mut p.out),
        Ok(Some(Transmit::Close))
    );
    assert_eq!(
        p.node.handle_frame(at(6), &rejected),
        Err(PairingError::RejectedByOperator)
    );
}

#[test]
fn set_up_errors_and_small_buffers() {
    let k = keyed();
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    let c = code();
    assert_eq!(
        NodePairing::new(
            at(0),
            &c,
            b"not a csr",
            vec![0; MAX],
            NodeConfig::default(),
            &mut rng
        )
        .unwrap_err(),
        PairingError::BadCsr
    );
    assert_eq!(
        NodePairing::new(
            at(0),
            &c,
            &k.csr,
            vec![0; 100],
            NodeConfig::default(),
            &mut rng
        )
        .unwrap_err(),
        PairingError::BufferTooSmall
    );
    // The Confirm carries the CSR: it must fit the daemon's frame limit.
    let tight = NodeConfig {
        peer_max_frame: k.csr.len() as u32,
        ..NodeConfig::default()
    };
    assert_eq!(
        NodePairing::new(at(0), &c, &k.csr, vec![0; MAX], tight, &mut rng).unwrap_err(),
        PairingError::BufferTooSmall
    );
    assert_eq!(
        DaemonPairing::new(at(0), vec![0; MAX], DaemonConfig::default()).unwrap_err(),
        PairingError::BufferTooSmall
    );
    let tiny_peer = DaemonConfig {
        peer_max_frame: 64,
        ..DaemonConfig::default()
    };
    assert_eq!(
        DaemonPairing::new(at(0), vec![0; 2 * MAX], tiny_peer).unwrap_err(),
        PairingError::BufferTooSmall
    );

    // An output buffer too small consumes nothing and says what it needs.
    let mut node = NodePairing::new(
        at(0),
        &c,
        &k.csr,
        vec![0; MAX],
        NodeConfig::default(),
        &mut rng,
    )
    .unwrap();
    let mut tiny = [0u8; 16];
    let Err(TransmitError::BufferTooSmall { needed }) = node.poll_transmit(at(0), &mut tiny) else {
        panic!()
    };
    assert!(needed > tiny.len() && needed <= node.transmit_len());
    let mut exact = vec![0; needed];
    assert_eq!(
        node.poll_transmit(at(0), &mut exact),
        Ok(Some(Transmit::Frame(needed)))
    );
    assert_eq!(node.poll_transmit(at(0), &mut exact), Ok(None));
}

/// A buffer of `transmit_len()` bytes holds every frame of a run, the largest included.
#[test]
fn transmit_len_holds_every_frame() {
    let k = keyed();
    let mut p = Pair::new(&code(), &k.csr, NodeConfig::default());
    let (node_len, daemon_len) = (p.node.transmit_len(), p.daemon.transmit_len());
    assert!(node_len <= MAX + 4 && daemon_len <= MAX + 4);
    let mut node_out = vec![0; node_len];
    let mut daemon_out = vec![0; daemon_len];
    let Ok(Some(Transmit::Frame(n))) = p.node.poll_transmit(at(0), &mut node_out) else {
        panic!()
    };
    p.daemon.handle_frame(at(1), &node_out[4..n]).unwrap();
    p.daemon.poll_event().unwrap();
    p.daemon
        .accept_record(at(1), &code().verifier_record().unwrap(), &mut p.rng)
        .unwrap();
    let Ok(Some(Transmit::Frame(n))) = p.daemon.poll_transmit(at(1), &mut daemon_out) else {
        panic!()
    };
    p.node.handle_frame(at(2), &daemon_out[4..n]).unwrap();
    // The Confirm, with the sealed CSR, is the node's largest frame.
    let Ok(Some(Transmit::Frame(n))) = p.node.poll_transmit(at(2), &mut node_out) else {
        panic!()
    };
    assert_eq!(n, node_len);
    p.daemon.handle_frame(at(3), &node_out[4..n]).unwrap();
    // The largest answer the node's frame limit allows; larger ones are refused and
    // change nothing.
    let cert = vec![0x30; MAX];
    let answer = |len| Issued {
        device_id: "node-a",
        client_cert: &cert[..len],
        ca_cert: &k.cert,
        server_fingerprint: [0; 32],
    };
    let mut len = MAX;
    while p.daemon.issue(at(4), &answer(len)) == Err(PairingError::BufferTooSmall) {
        assert_eq!(p.daemon.poll_transmit(at(4), &mut daemon_out), Ok(None));
        len -= 1;
    }
    assert!(len > MAX - 1_000);
    let Ok(Some(Transmit::Frame(n))) = p.daemon.poll_transmit(at(4), &mut daemon_out) else {
        panic!()
    };
    assert!(n > MAX, "{n}");
    let Ok(PairingMessage::Sealed(sealed)) = decode_pairing(&daemon_out[4..n]) else {
        panic!()
    };
    assert_eq!(sealed.seq, 0, "refused answers used no sequence number");
    assert!(n <= daemon_len);
}

/// A node-plane message's payload, as a listener that will not pair sends it.
fn node_plane(msg: &Message<'_>) -> Vec<u8> {
    let mut out = vec![0u8; 256];
    let n = encode_payload(msg, &mut out).unwrap();
    out.truncate(n);
    out
}

/// The listener's `Error` frame instead of a pairing message is noted, once, and leaves
/// the run as it was; pairing messages and any other frame are the run's.
#[test]
fn a_watched_run_notes_the_listeners_refusal() {
    let k = keyed();
    let mut p = Pair::new(&code(), &k.csr, NodeConfig::default());
    let mut watched: Watched<'_, Vec<u8>> = Watched::new(p.node);
    let mut out = vec![0; Machine::transmit_len(&watched)];
    assert_eq!(Machine::max_frame(&watched), PAIRING_MAX_FRAME);
    let Ok(Some(Transmit::Frame(n))) = Machine::poll_transmit(&mut watched, at(0), &mut out) else {
        panic!()
    };

    let refusal = node_plane(&Message::Error(ErrorFrame {
        code: ErrorCode::Overloaded,
        reason: "too many connections",
    }));
    assert!(decode_pairing(&refusal).is_err());
    assert_eq!(watched.offer_frame(at(1), &refusal), Offer::Taken);
    assert_eq!(watched.take_refused(), Some(ErrorCode::Overloaded));
    assert_eq!(watched.take_refused(), None);
    assert_eq!(watched.run.error(), None);
    assert_eq!(watched.run.poll_event(), None);

    // The run goes on with the daemon's answer to its `Start`.
    p.daemon.handle_frame(at(1), &out[4..n]).unwrap();
    p.daemon.poll_event().unwrap();
    p.daemon
        .accept_record(at(1), &code().verifier_record().unwrap(), &mut p.rng)
        .unwrap();
    let mut daemon_out = vec![0; p.daemon.transmit_len()];
    let Ok(Some(Transmit::Frame(n))) = p.daemon.poll_transmit(at(1), &mut daemon_out) else {
        panic!()
    };
    assert_eq!(watched.offer_frame(at(2), &daemon_out[4..n]), Offer::Taken);
    assert_eq!(watched.run.error(), None);
    assert!(matches!(
        Machine::poll_transmit(&mut watched, at(2), &mut out),
        Ok(Some(Transmit::Frame(_)))
    ));

    // Another node-plane message is no refusal: the run fails on it, as without the watch.
    let ping = node_plane(&Message::Ping(Ping { nonce: 7 }));
    assert_eq!(watched.offer_frame(at(3), &ping), Offer::Taken);
    assert_eq!(watched.take_refused(), None);
    assert!(watched.run.error().is_some());
}

/// What a host keeps of a refusal is its own: here the reason too.
#[derive(Debug, PartialEq)]
struct Reasoned(ErrorCode, String);

impl Refusal for Reasoned {
    fn from_frame(frame: &ErrorFrame<'_>) -> Self {
        Reasoned(frame.code, frame.reason.to_owned())
    }
}

#[test]
fn a_watched_run_keeps_what_the_host_asks_of_a_refusal() {
    let k = keyed();
    let p = Pair::new(&code(), &k.csr, NodeConfig::default());
    let mut watched: Watched<'_, Vec<u8>, Reasoned> = Watched::new(p.node);
    let refusal = node_plane(&Message::Error(ErrorFrame {
        code: ErrorCode::Unauthorized,
        reason: "no ALPN",
    }));
    assert_eq!(watched.offer_frame(at(1), &refusal), Offer::Taken);
    assert_eq!(
        watched.take_refused(),
        Some(Reasoned(ErrorCode::Unauthorized, "no ALPN".to_owned()))
    );
}
