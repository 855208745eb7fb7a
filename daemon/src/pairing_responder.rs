//! The pairing service as the transports see it: a [`PairingResponder`] over a shared
//! [`PairingService`].
//!
//! Transports drive each pairing connection and call [`ServiceResponder`] to answer it;
//! operators approve or reject through the same responder, so that runs waiting for a
//! decision are woken at once. Every report about a run (issued certificates above all,
//! which the daemon records as paired devices) goes to the callback set with
//! [`ServiceResponder::on_report`].

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chacha20::ChaCha20Rng;
use protocol_core::pairing::{ApprovalState, DaemonConfig, DaemonPairing};
use protocol_core::time::Instant;
use spake2plus::rand_core::SeedableRng;
use tokio::sync::watch;
use transport_tokio::pairing::{PairingOutcome, PairingResponder, RunBuffer};
use transport_tokio::tls::Fingerprint;

use crate::pairing::{PairingService, ServiceError, ServiceEvent};

/// One report about a pairing run, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingReport {
    /// The code id the node named, once it named one.
    pub code_id: Option<u16>,
    /// What happened; [`ServiceEvent::Issued`] carries the certificate to record.
    pub event: ServiceEvent,
}

/// The operating system gave no randomness to seed the responder's RNG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedError(getrandom::Error);

impl fmt::Display for SeedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no randomness from the operating system: {}", self.0)
    }
}

impl std::error::Error for SeedError {}

type ReportFn = dyn Fn(PairingReport) + Send + Sync;

/// Answers pairing runs with the shared [`PairingService`], and carries operators'
/// decisions to the runs waiting for them.
pub struct ServiceResponder {
    service: Arc<Mutex<PairingService>>,
    rng: Mutex<ChaCha20Rng>,
    config: DaemonConfig,
    decisions: watch::Sender<u64>,
    reports: Option<Box<ReportFn>>,
}

impl fmt::Debug for ServiceResponder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceResponder")
            .field("config", &self.config)
            .field("decisions", &*self.decisions.borrow())
            .field("reports", &self.reports.is_some())
            .finish_non_exhaustive()
    }
}

impl ServiceResponder {
    /// A responder whose RNG (PAKE shares, certificate serials) is seeded from the
    /// operating system.
    pub fn new(
        service: Arc<Mutex<PairingService>>,
        config: DaemonConfig,
    ) -> Result<Self, SeedError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(SeedError)?;
        Ok(Self::with_rng(
            service,
            config,
            ChaCha20Rng::from_seed(seed),
        ))
    }

    /// A responder with the given RNG (tests replaying a seed).
    pub fn with_rng(
        service: Arc<Mutex<PairingService>>,
        config: DaemonConfig,
        rng: ChaCha20Rng,
    ) -> Self {
        Self {
            service,
            rng: Mutex::new(rng),
            config,
            decisions: watch::Sender::new(0),
            reports: None,
        }
    }

    /// Every report about a run goes to `report`, called from the run's task while the
    /// run is driven: keep it quick (send it on a channel, record it).
    pub fn on_report(mut self, report: impl Fn(PairingReport) + Send + Sync + 'static) -> Self {
        self.reports = Some(Box::new(report));
        self
    }

    /// The service, for operations that wake no run (creating codes, listing records).
    pub fn service(&self) -> &Arc<Mutex<PairingService>> {
        &self.service
    }

    /// An operator approves the pairing of `code_id`; a node waiting on it gets its
    /// certificate.
    pub fn approve(&self, now: Instant, code_id: u16) -> Result<ApprovalState, ServiceError> {
        let state = self.lock().approve(now, code_id)?;
        self.decided();
        Ok(state)
    }

    /// An operator rejects the pairing of `code_id`; a node waiting on it is told so.
    pub fn reject(&self, now: Instant, code_id: u16) -> Result<ApprovalState, ServiceError> {
        let state = self.lock().reject(now, code_id)?;
        self.decided();
        Ok(state)
    }

    /// Takes in the pairing records another daemon stored (see
    /// [`PairingService::absorb`]); a decision made there wakes the runs waiting here.
    pub fn absorb(&self, records: Vec<crate::pairing::PairingRecord>) {
        if self.lock().absorb(records) {
            self.decided();
        }
    }

    fn decided(&self) {
        self.decisions.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn lock(&self) -> MutexGuard<'_, PairingService> {
        // The service's records stay consistent between its calls: a panic elsewhere
        // leaves nothing half-done to protect from.
        self.service.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PairingResponder for ServiceResponder {
    fn config(&self) -> DaemonConfig {
        self.config
    }

    fn drive(&self, now: Instant, run: &mut DaemonPairing<RunBuffer>) -> Option<PairingOutcome> {
        let event = {
            let mut service = self.lock();
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            service.drive(now, run, &mut *rng)?
        };
        let outcome = match &event {
            ServiceEvent::Issued(cert) => PairingOutcome::Issued {
                device_id: cert.device_id.clone(),
                fingerprint: Fingerprint(cert.fingerprint.0),
            },
            ServiceEvent::AwaitingApproval { code_id } => {
                PairingOutcome::AwaitingApproval { code_id: *code_id }
            }
            ServiceEvent::Completed => PairingOutcome::Completed,
            ServiceEvent::Failed(e) => PairingOutcome::Failed(*e),
        };
        if let Some(report) = &self.reports {
            report(PairingReport {
                code_id: run.code_id(),
                event,
            });
        }
        Some(outcome)
    }

    fn closed(&self, run: &DaemonPairing<RunBuffer>) {
        self.lock().connection_closed(run);
    }

    fn decisions(&self) -> watch::Receiver<u64> {
        self.decisions.subscribe()
    }
}
