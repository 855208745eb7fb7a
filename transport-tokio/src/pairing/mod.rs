//! Pairing over the transport, both ends.
//!
//! - Daemon side: [`serve_pairing`] runs one anonymous connection the listener routed to
//!   pairing ([`PairingConnection`](crate::tcp::PairingConnection)) through a
//!   `protocol-core` [`DaemonPairing`], asking a [`PairingResponder`] (the daemon's
//!   pairing service, behind a small synchronous trait) to answer what the run asks:
//!   the code's record, the certificate, an operator's decision.
//! - Node side: [`pair`] dials the daemon with a certificate-less TLS configuration,
//!   drives a [`NodePairing`](protocol_core::pairing::NodePairing) to its end and
//!   returns an owned [`PairingBundle`]: the client certificate, the CA certificate, the
//!   daemon's fingerprint to pin, the device id.
//!
//! The responder is synchronous and sans-IO-friendly on purpose: any driver (this TCP one,
//! or one that drives many connections inline in a single task) calls it between its own
//! reads and writes, and never awaits it.

mod node;
pub(crate) mod serve;

use protocol_core::pairing::{DaemonConfig, DaemonPairing, PairingError};
use protocol_core::time::Instant;
use tokio::sync::watch;

use crate::tls::Fingerprint;

pub use node::{PairError, PairOptions, PairingBundle, pair, pair_over, pair_uri, pair_with};
pub use serve::{PairingServeError, serve_pairing};

/// The buffer every daemon-side run is built with (the opened CSR, then the answer being
/// sealed: [`DaemonPairing::new`] asks for twice the pairing frame limit).
pub type RunBuffer = Box<[u8]>;

/// What a responder reports about a run, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairingOutcome {
    /// A certificate was issued for `device_id`; it is on its way to the node.
    Issued {
        device_id: String,
        fingerprint: Fingerprint,
    },
    /// The node proved the code and waits for an operator's decision.
    AwaitingApproval { code_id: u16 },
    /// The certificate was handed over for sending; the run is finished.
    Completed,
    /// The run failed; it is finished.
    Failed(PairingError),
}

/// How a transport asks the daemon to answer pairing runs, without depending on the
/// daemon.
///
/// Every method is synchronous and quick (a PAKE step or a certificate signature at
/// most): a driver calls them between its reads and writes.
pub trait PairingResponder: Send + Sync {
    /// The settings to build each run with.
    fn config(&self) -> DaemonConfig;

    /// Answers what `run` asks of the daemon (its code's record, what to do with its
    /// CSR, an operator's decision it waits for) and returns the next thing to report;
    /// `None` when there is nothing. Call it until `None` after every input
    /// (`handle_frame`, `handle_timeout`), after every `poll_transmit` that handed a
    /// frame over, and whenever [`Self::decisions`] changes.
    fn drive(&self, now: Instant, run: &mut DaemonPairing<RunBuffer>) -> Option<PairingOutcome>;

    /// The run's connection is gone, or the run is about to end without an answer: a run
    /// that proved its code but got no certificate gives the code back. A run forgets its
    /// CSR when it fails, so a driver calls this before the input (a frame, the deadline)
    /// that ends a run waiting for a decision, and again once the connection is over,
    /// whatever state the run is in: it must be idempotent.
    fn closed(&self, run: &DaemonPairing<RunBuffer>);

    /// A receiver whose value changes whenever an operator decides on a pairing: runs
    /// that wait for approval then call [`Self::drive`] again.
    fn decisions(&self) -> watch::Receiver<u64>;
}
