//! Feeds arbitrary frames to both pairing state machines, at every stage of a run.
//!
//! A real run between a node and a daemon is driven to a point chosen by the input, then
//! the input's frames go to one side or the other, mixed with the genuine frames (which
//! the fuzzer may corrupt). Whatever happens, nothing panics, a failed side stays failed,
//! a node never reports being paired with a certificate for another key, the daemon
//! never hands out a CSR it did not authenticate, no output repeats forever, a finished
//! side asks to close exactly once and has no deadline, and every frame fits the
//! buffer size the side announced.
#![no_main]

use chacha20::ChaCha20Rng;
use libfuzzer_sys::fuzz_target;
use protocol_core::pairing::{
    DaemonConfig, DaemonPairing, DaemonPairingEvent, Issued, NodeConfig, NodePairing,
    NodePairingEvent, PAIRING_MAX_FRAME, PairingCode, PairingError, RecordBytes, certificate_spki,
    csr_spki,
};
use protocol_core::time::Instant;
use protocol_core::transmit::Transmit;
use spake2plus::rand_core::SeedableRng;
use std::sync::OnceLock;

/// A CSR for a fixed P-256 key (the node's own), and a self-signed certificate for the
/// same key (`openssl req -new` / `openssl req -x509`, DER; the key was discarded).
const CSR: &[u8] = include_bytes!("../fixtures/pairing_csr.der");
const CERT: &[u8] = include_bytes!("../fixtures/pairing_cert.der");

const MAX: usize = PAIRING_MAX_FRAME as usize;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn chunk(&mut self) -> Option<&'a [u8]> {
        let len = usize::from(self.byte()?) * 4;
        let len = len.min(self.0.len());
        let (c, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(c)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Reader(data);
    let Some(seed) = input.byte() else { return };
    let Some(mode) = input.byte() else { return };
    let mut rng = ChaCha20Rng::from_seed([seed; 32]);
    let code = PairingCode::new(42, 12_345_678).expect("valid code");
    // Half of the runs use the right code, so the sealed stages are reached.
    let node_code = if mode & 1 == 0 {
        code.clone()
    } else {
        PairingCode::new(42, 87_654_321).expect("valid code")
    };
    // Deriving the record is the slow part of a run; it is the same every time.
    static RECORD: OnceLock<RecordBytes> = OnceLock::new();
    let record = *RECORD.get_or_init(|| code.verifier_record().expect("valid record"));
    let mut now = Instant::from_millis(1_000);
    let mut node = NodePairing::new(
        now,
        &node_code,
        CSR,
        vec![0u8; MAX],
        NodeConfig::default(),
        &mut rng,
    )
    .expect("valid node set-up");
    let mut daemon =
        DaemonPairing::new(now, vec![0u8; 2 * MAX], DaemonConfig::default()).expect("valid set-up");
    // Exactly the announced sizes: a frame that does not fit is a bug.
    let mut node_out = vec![0u8; node.transmit_len()];
    let mut daemon_out = vec![0u8; daemon.transmit_len()];
    let (mut to_daemon, mut to_node): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (vec![], vec![]);
    let (mut node_closed, mut daemon_closed) = (false, false);

    for _ in 0..64 {
        // Drain both sides' outputs; each drain ends (a bounded number of polls).
        for _ in 0..8 {
            let Some(event) = node.poll_event() else {
                break;
            };
            if let NodePairingEvent::Paired(p) = event {
                assert_eq!(csr_spki(CSR), certificate_spki(p.client_cert));
            }
        }
        assert!(node.poll_event().is_none(), "node events repeat");
        for _ in 0..8 {
            match node
                .poll_transmit(now, &mut node_out)
                .expect("a transmit_len buffer holds every frame")
            {
                Some(Transmit::Frame(n)) => to_daemon.push(node_out[4..n].to_vec()),
                Some(Transmit::Close) => {
                    assert!(
                        node.is_finished() && !node_closed,
                        "node closes once, finished"
                    );
                    node_closed = true;
                }
                None => break,
            }
        }
        assert_eq!(
            node.poll_transmit(now, &mut node_out),
            Ok(None),
            "node frames repeat"
        );
        for _ in 0..8 {
            let event = match daemon.poll_event() {
                None => break,
                Some(DaemonPairingEvent::RecordNeeded { code_id }) => Some(code_id),
                Some(DaemonPairingEvent::CsrReceived { csr, .. }) => {
                    // Only the node's own CSR can come through the sealed channel.
                    assert_eq!(csr, CSR);
                    let issued = Issued {
                        device_id: "fuzz-node",
                        client_cert: CERT,
                        ca_cert: CERT,
                        server_fingerprint: [1; 32],
                    };
                    let _ = daemon.issue(now, &issued);
                    None
                }
                Some(_) => None,
            };
            if let Some(code_id) = event {
                if code_id == 42 {
                    let _ = daemon.accept_record(now, &record, &mut rng);
                } else {
                    let _ = daemon.refuse(PairingError::UnknownCode);
                }
            }
        }
        assert!(daemon.poll_event().is_none(), "daemon events repeat");
        for _ in 0..8 {
            match daemon
                .poll_transmit(now, &mut daemon_out)
                .expect("a transmit_len buffer holds every frame")
            {
                Some(Transmit::Frame(n)) => to_node.push(daemon_out[4..n].to_vec()),
                Some(Transmit::Close) => {
                    assert!(
                        daemon.is_finished() && !daemon_closed,
                        "daemon closes once, finished"
                    );
                    daemon_closed = true;
                }
                None => break,
            }
        }
        assert_eq!(
            daemon.poll_transmit(now, &mut daemon_out),
            Ok(None),
            "daemon frames repeat"
        );
        if node.is_finished() {
            assert_eq!(node.poll_timeout(), None);
        }
        if daemon.is_finished() {
            assert_eq!(daemon.poll_timeout(), None);
        }

        let Some(op) = input.byte() else { break };
        match op % 6 {
            // Deliver the genuine frames.
            0 => {
                for f in to_daemon.drain(..) {
                    let _ = daemon.handle_frame(now, &f);
                }
                for f in to_node.drain(..) {
                    let _ = node.handle_frame(now, &f);
                }
            }
            // An arbitrary frame to either side.
            1 => {
                let Some(f) = input.chunk() else { break };
                let _ = daemon.handle_frame(now, f);
            }
            2 => {
                let Some(f) = input.chunk() else { break };
                let _ = node.handle_frame(now, f);
            }
            // Corrupt a genuine frame in flight.
            3 => {
                let (Some(at), Some(x)) = (input.byte(), input.byte()) else {
                    break;
                };
                for f in to_daemon.iter_mut().chain(to_node.iter_mut()) {
                    if !f.is_empty() {
                        let i = usize::from(at) % f.len();
                        f[i] ^= x;
                    }
                }
            }
            // Time passes; timers fire.
            4 => {
                now = now.plus_ms(u64::from(input.byte().unwrap_or(0)) * 10_000);
                daemon.handle_timeout(now);
                node.handle_timeout(now);
            }
            // Replay: deliver genuine frames twice.
            _ => {
                for f in to_daemon.iter().chain(to_daemon.clone().iter()) {
                    let _ = daemon.handle_frame(now, f);
                }
                to_daemon.clear();
            }
        }
        if let Some(e) = node.error() {
            node.handle_timeout(now);
            assert_eq!(node.handle_frame(now, &[]), Err(e));
            assert_eq!(node.error(), Some(e));
        }
        if let Some(e) = daemon.error() {
            daemon.handle_timeout(now);
            assert_eq!(daemon.handle_frame(now, &[]), Err(e));
            assert_eq!(daemon.error(), Some(e));
        }
    }
});
