//! Feeds arbitrary frames to both pairing state machines, at every stage of a run.
//!
//! A real run between a node and a daemon is driven to a point chosen by the input, then
//! the input's frames go to one side or the other, mixed with the genuine frames (which
//! the fuzzer may corrupt). Whatever happens, nothing panics, a failed side stays failed,
//! a node never reports being paired with a certificate for another key, and the daemon
//! never hands out a CSR it did not authenticate.
#![no_main]

use chacha20::ChaCha20Rng;
use libfuzzer_sys::fuzz_target;
use protocol_core::pairing::{
    DaemonConfig, DaemonOutput, DaemonPairing, Input, Issued, NodeConfig, NodeOutput, NodePairing,
    PAIRING_MAX_FRAME, PairingCode, RecordBytes, certificate_spki, csr_spki,
};
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
    let mut now = 1_000u64;
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
    let mut out = vec![0u8; MAX + 4];
    let (mut to_daemon, mut to_node): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (vec![], vec![]);

    for _ in 0..64 {
        // Drain both sides' outputs.
        while let Ok(o) = node.poll_output(now, &mut out) {
            match o {
                NodeOutput::Transmit(n) => to_daemon.push(out[4..n].to_vec()),
                NodeOutput::Paired(p) => {
                    assert_eq!(csr_spki(CSR), certificate_spki(p.client_cert));
                }
                NodeOutput::Timeout(_) | NodeOutput::Done => break,
                _ => {}
            }
        }
        loop {
            match daemon.poll_output(now, &mut out) {
                Ok(DaemonOutput::Transmit(n)) => to_node.push(out[4..n].to_vec()),
                Ok(DaemonOutput::RecordNeeded { code_id }) => {
                    if code_id == 42 {
                        let _ = daemon.accept_record(&record, &mut rng);
                    } else {
                        daemon.refuse(protocol_core::pairing::PairingError::UnknownCode);
                    }
                }
                Ok(DaemonOutput::CsrReceived { csr, .. }) => {
                    // Only the node's own CSR can come through the sealed channel.
                    assert_eq!(csr, CSR);
                    let issued = Issued {
                        device_id: "fuzz-node",
                        client_cert: CERT,
                        ca_cert: CERT,
                        server_fingerprint: [1; 32],
                    };
                    let _ = daemon.issue(&issued);
                }
                _ => break,
            }
        }
        let Some(op) = input.byte() else { break };
        match op % 6 {
            // Deliver the genuine frames.
            0 => {
                for f in to_daemon.drain(..) {
                    let _ = daemon.handle_input(now, Input::Frame(&f));
                }
                for f in to_node.drain(..) {
                    let _ = node.handle_input(now, Input::Frame(&f));
                }
            }
            // An arbitrary frame to either side.
            1 => {
                let Some(f) = input.chunk() else { break };
                let _ = daemon.handle_input(now, Input::Frame(f));
            }
            2 => {
                let Some(f) = input.chunk() else { break };
                let _ = node.handle_input(now, Input::Frame(f));
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
                now += u64::from(input.byte().unwrap_or(0)) * 10_000;
                let _ = daemon.handle_input(now, Input::Timeout);
                let _ = node.handle_input(now, Input::Timeout);
            }
            // Replay: deliver genuine frames twice.
            _ => {
                for f in to_daemon.iter().chain(to_daemon.clone().iter()) {
                    let _ = daemon.handle_input(now, Input::Frame(f));
                }
                to_daemon.clear();
            }
        }
        if let Some(e) = node.error() {
            assert_eq!(node.handle_input(now, Input::Timeout), Err(e));
        }
        if let Some(e) = daemon.error() {
            assert_eq!(daemon.handle_input(now, Input::Timeout), Err(e));
        }
    }
});
