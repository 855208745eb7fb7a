//! The two pairing state machines against each other, without the daemon's CA: the
//! daemon role here answers with self-signed certificates made with rcgen.
#![allow(clippy::unwrap_used)]

use chacha20::ChaCha20Rng;
use protocol_core::pairing::*;
use protocol_core::wire::EncodeError;
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

struct Pair<'c> {
    node: NodePairing<'c, Vec<u8>>,
    daemon: DaemonPairing<Vec<u8>>,
    rng: ChaCha20Rng,
    out: Vec<u8>,
}

impl<'c> Pair<'c> {
    fn new(node_code: &PairingCode, csr: &'c [u8], config: NodeConfig) -> Self {
        let mut rng = ChaCha20Rng::from_seed([9; 32]);
        let node = NodePairing::new(0, node_code, csr, vec![0; MAX], config, &mut rng).unwrap();
        let daemon = DaemonPairing::new(0, vec![0; 2 * MAX], DaemonConfig::default()).unwrap();
        Self {
            node,
            daemon,
            rng,
            out: vec![0; MAX + 4],
        }
    }

    /// Next frame payload the node sends, if any.
    fn node_frame(&mut self, now: u64) -> Option<Vec<u8>> {
        match self.node.poll_output(now, &mut self.out).unwrap() {
            NodeOutput::Transmit(n) => Some(self.out[4..n].to_vec()),
            _ => None,
        }
    }

    fn daemon_frame(&mut self, now: u64) -> Option<Vec<u8>> {
        match self.daemon.poll_output(now, &mut self.out).unwrap() {
            DaemonOutput::Transmit(n) => Some(self.out[4..n].to_vec()),
            _ => None,
        }
    }

    /// Start -> record -> Challenge -> Confirm -> CSR at the daemon.
    fn run_to_csr(&mut self) -> Vec<u8> {
        let start = self.node_frame(0).unwrap();
        self.daemon.handle_input(1, Input::Frame(&start)).unwrap();
        assert_eq!(
            self.daemon.poll_output(1, &mut self.out).unwrap(),
            DaemonOutput::RecordNeeded { code_id: 7 }
        );
        self.daemon
            .accept_record(&code().verifier_record().unwrap(), &mut self.rng)
            .unwrap();
        let challenge = self.daemon_frame(1).unwrap();
        self.node.handle_input(2, Input::Frame(&challenge)).unwrap();
        let confirm = self.node_frame(2).unwrap();
        self.daemon.handle_input(3, Input::Frame(&confirm)).unwrap();
        match self.daemon.poll_output(3, &mut self.out).unwrap() {
            DaemonOutput::CsrReceived { code_id: 7, csr } => csr.to_vec(),
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
    p.daemon.pending().unwrap();
    let pending = p.daemon_frame(4).unwrap();
    p.node.handle_input(5, Input::Frame(&pending)).unwrap();
    assert_eq!(
        p.node.poll_output(5, &mut p.out).unwrap(),
        NodeOutput::AwaitingApproval
    );
    p.daemon.issue(&issued(&k.cert, [3; 32])).unwrap();
    let answer = p.daemon_frame(6).unwrap();
    assert_eq!(
        p.daemon.poll_output(6, &mut p.out).unwrap(),
        DaemonOutput::Completed
    );
    p.node.handle_input(7, Input::Frame(&answer)).unwrap();
    let NodeOutput::Paired(paired) = p.node.poll_output(7, &mut p.out).unwrap() else {
        panic!()
    };
    assert_eq!(paired, issued(&k.cert, [3; 32]));
    assert_eq!(p.node.poll_output(7, &mut p.out).unwrap(), NodeOutput::Done);
    assert!(p.node.is_finished() && p.daemon.is_finished());
}

#[test]
fn certificate_for_another_key_is_refused() {
    let (k, other) = (keyed(), keyed());
    let mut p = Pair::new(&code(), &k.csr, NodeConfig::default());
    p.run_to_csr();
    p.daemon.issue(&issued(&other.cert, [0; 32])).unwrap();
    let answer = p.daemon_frame(4).unwrap();
    assert_eq!(
        p.node.handle_input(5, Input::Frame(&answer)),
        Err(PairingError::BadCertificate)
    );
    // The node tells the daemon why.
    let abort = p.node_frame(5).unwrap();
    assert_eq!(
        decode_pairing(&abort).unwrap(),
        PairingMessage::Abort(Abort {
            error: PairingError::BadCertificate
        })
    );
}

#[test]
fn replayed_answer_is_refused() {
    let k = keyed();
    let mut p = Pair::new(&code(), &k.csr, NodeConfig::default());
    p.run_to_csr();
    p.daemon.pending().unwrap();
    let pending = p.daemon_frame(4).unwrap();
    p.node.handle_input(5, Input::Frame(&pending)).unwrap();
    assert_eq!(
        p.node.handle_input(6, Input::Frame(&pending)),
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
        p.daemon.handle_input(1, Input::Frame(&start)),
        Err(PairingError::VersionMismatch { ours: 1, theirs: 9 })
    );

    // A node never accepts a Start; a daemon never accepts a Challenge.
    let mut q = Pair::new(&code(), &k.csr, NodeConfig::default());
    let start = q.node_frame(0).unwrap();
    assert_eq!(
        q.node.handle_input(1, Input::Frame(&start)),
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
        r.daemon.handle_input(1, Input::Frame(&out[4..n])),
        Err(PairingError::UnexpectedMessage)
    );
    assert_eq!(
        r.daemon.handle_input(2, Input::Frame(&[0xff, 0xff])),
        Err(PairingError::UnexpectedMessage),
        "a failed run stays failed"
    );
}

#[test]
fn garbage_and_off_curve_shares_are_malformed() {
    let k = keyed();
    let mut p = Pair::new(&code(), &k.csr, NodeConfig::default());
    assert_eq!(
        p.daemon.handle_input(1, Input::Frame(&[0x00, 0x01])),
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
        q.daemon.handle_input(1, Input::Frame(&out[4..n])),
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
    assert_eq!(
        p.node.poll_output(0, &mut p.out).unwrap(),
        NodeOutput::Timeout(1_000)
    );
    p.node.handle_input(999, Input::Timeout).unwrap();
    assert_eq!(
        p.node.handle_input(1_000, Input::Timeout),
        Err(PairingError::TimedOut)
    );
    assert_eq!(p.node.error(), Some(PairingError::TimedOut));

    assert_eq!(
        p.daemon.poll_output(0, &mut p.out).unwrap(),
        DaemonOutput::Timeout(30_000)
    );
    assert_eq!(
        p.daemon.handle_input(30_000, Input::Timeout),
        Err(PairingError::TimedOut)
    );
    let abort = p.daemon_frame(30_000).unwrap();
    assert_eq!(
        decode_pairing(&abort).unwrap(),
        PairingMessage::Abort(Abort {
            error: PairingError::TimedOut
        })
    );
    assert_eq!(
        p.daemon.poll_output(30_000, &mut p.out).unwrap(),
        DaemonOutput::Failed(PairingError::TimedOut)
    );
    assert_eq!(
        p.daemon.poll_output(30_000, &mut p.out).unwrap(),
        DaemonOutput::Done
    );
}

#[test]
fn refusal_reaches_the_node_typed() {
    let k = keyed();
    let mut p = Pair::new(&code(), &k.csr, NodeConfig::default());
    let start = p.node_frame(0).unwrap();
    p.daemon.handle_input(1, Input::Frame(&start)).unwrap();
    p.daemon.poll_output(1, &mut p.out).unwrap();
    p.daemon.refuse(PairingError::RateLimited {
        retry_after_ms: 5_000,
    });
    let abort = p.daemon_frame(1).unwrap();
    assert_eq!(
        p.node.handle_input(2, Input::Frame(&abort)),
        Err(PairingError::RateLimited {
            retry_after_ms: 5_000
        })
    );
    // The node does not answer an abort with another.
    assert_eq!(
        p.node.poll_output(2, &mut p.out).unwrap(),
        NodeOutput::Failed(PairingError::RateLimited {
            retry_after_ms: 5_000
        })
    );
}

#[test]
fn set_up_errors_and_small_buffers() {
    let k = keyed();
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    let c = code();
    assert_eq!(
        NodePairing::new(
            0,
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
        NodePairing::new(0, &c, &k.csr, vec![0; 100], NodeConfig::default(), &mut rng).unwrap_err(),
        PairingError::BufferTooSmall
    );
    assert_eq!(
        DaemonPairing::new(0, vec![0; MAX], DaemonConfig::default()).unwrap_err(),
        PairingError::BufferTooSmall
    );
    // An output buffer too small keeps the frame queued.
    let mut node =
        NodePairing::new(0, &c, &k.csr, vec![0; MAX], NodeConfig::default(), &mut rng).unwrap();
    let mut tiny = [0u8; 16];
    assert!(matches!(
        node.poll_output(0, &mut tiny),
        Err(EncodeError::BufferTooSmall { .. })
    ));
    let mut out = vec![0; MAX];
    assert!(matches!(
        node.poll_output(0, &mut out),
        Ok(NodeOutput::Transmit(_))
    ));
}
