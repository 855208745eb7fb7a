//! The daemon's pairing service: outstanding codes, their limits and approvals, and
//! the glue that answers a connection's [`DaemonPairing`] with the CA.
//!
//! The service keeps no connection and no clock: a transport owns one `DaemonPairing` per
//! pairing connection and drives it by the crate's sans-IO convention (`SANS_IO.md` in
//! `protocol-core`): it feeds frames and timers in, calls [`PairingService::drive`] to
//! answer what the run asks of its application, then takes frames out with
//! `poll_transmit` and the next deadline with `poll_timeout`. Time is always passed in.
//! Everything the store persists is in [`PairingRecord`]. The code itself is never
//! stored: only its SPAKE2+ registration record, from which the code can only be
//! recovered by guessing, so records are kept as secret as keys.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use protocol_core::pairing::{
    Approval, ApprovalError, ApprovalState, CodeLifetime, CodeWindow, DaemonPairing,
    DaemonPairingEvent, Issued, LimitError, MAX_CODE_ID, PairingCode, PairingError, PairingUri,
    RecordBytes, TokenBucket,
};
use protocol_core::time::Instant;
use serde::{Deserialize, Serialize};
use spake2plus::rand_core::CryptoRng;

use crate::ca::{CaError, CertificateAuthority, ClientCertificate, Fingerprint, check_device_id};

/// Default daemon-wide pairing starts allowed at once...
pub const DEFAULT_STARTS_BURST: u32 = 10;
/// ...then one per this many milliseconds.
pub const DEFAULT_STARTS_REFILL_MS: u64 = 6_000;

/// Service settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingSettings {
    /// Lifetime of a code unless its creator sets another.
    pub lifetime: CodeLifetime,
    /// Whether codes need an operator's approval unless their creator says otherwise.
    pub require_approval: bool,
    /// Pairing starts the whole service admits at once, from every address together
    /// (one token bucket, taken before the code id is looked up, so probes of unknown
    /// ids count too; a refused start is answered `RateLimited { retry_after_ms }` and
    /// counts against no code). The transports keep a separate per-address limit in
    /// front of it. `ternd serve --pairing-burst`.
    pub starts_burst: u32,
    /// ...then one more start per this many milliseconds, up to `starts_burst`
    /// (`ternd serve --pairing-refill`).
    pub starts_refill_ms: u64,
    /// How long after a code's expiry an operator may still decide on its pairing.
    pub decision_ms: u64,
}

impl Default for PairingSettings {
    fn default() -> Self {
        Self {
            lifetime: CodeLifetime::default(),
            require_approval: false,
            starts_burst: DEFAULT_STARTS_BURST,
            starts_refill_ms: DEFAULT_STARTS_REFILL_MS,
            decision_ms: 10 * 60 * 1000,
        }
    }
}

/// One outstanding (or finished) pairing, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingRecord {
    pub code_id: u16,
    /// The device id the certificate will name.
    pub device_id: String,
    /// SPAKE2+ registration record: `w0 || L`.
    pub verifier_record: Vec<u8>,
    pub window: CodeWindow,
    pub approval: Approval,
    /// A connection holds an authenticated CSR and waits for the operator.
    pub awaiting_decision: bool,
    /// The certificate issued, once issued.
    pub issued: Option<Fingerprint>,
}

/// Why an operator's request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceError {
    Limit(LimitError),
    Ca(CaError),
    Approval(ApprovalError),
    UnknownCode(u16),
    /// Every code id is taken by an outstanding code.
    NoFreeCodeId,
    /// An outstanding code already names this device.
    DeviceBusy(String),
    Uri(protocol_core::pairing::CodeError),
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::Limit(e) => e.fmt(f),
            ServiceError::Ca(e) => e.fmt(f),
            ServiceError::Approval(e) => e.fmt(f),
            ServiceError::UnknownCode(id) => write!(f, "no pairing with code id {id:04}"),
            ServiceError::NoFreeCodeId => f.write_str("no free pairing code id"),
            ServiceError::DeviceBusy(d) => write!(f, "device {d} already has an outstanding code"),
            ServiceError::Uri(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ServiceError {}

/// What [`PairingService::drive`] reports about a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceEvent {
    /// A certificate was issued (it is on its way to the node).
    Issued(ClientCertificate),
    /// The node waits for an operator; call `drive` again after a decision.
    AwaitingApproval { code_id: u16 },
    /// The node's certificate was handed over for sending; the run is finished.
    Completed,
    /// The run failed; it is finished.
    Failed(PairingError),
}

/// A connection's event, owned, so the connection can be answered while it is handled.
enum ConnEvent {
    RecordNeeded(u16),
    CsrReceived(u16),
    Completed,
    Failed(PairingError),
}

/// Outstanding codes, limits, approvals, and issuance.
pub struct PairingService {
    ca: Arc<CertificateAuthority>,
    server_fingerprint: Fingerprint,
    settings: PairingSettings,
    records: HashMap<u16, PairingRecord>,
    /// Codes whose record changed (or went) since the store last took them.
    changed: BTreeSet<u16>,
    /// The verifiers of codes dropped since the store last took the changes.
    dropped: std::collections::HashMap<u16, Vec<u8>>,
    starts: TokenBucket,
}

/// What the store must do to match the service: records to write, code ids to delete.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PairingChanges {
    pub put: Vec<PairingRecord>,
    /// Code ids dropped, each with the verifier of the code it held (so that a store
    /// shared with other daemons drops that code, not a newer one on the same id).
    pub deleted: Vec<(u16, Vec<u8>)>,
}

impl fmt::Debug for PairingService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingService")
            .field("server_fingerprint", &self.server_fingerprint)
            .field("settings", &self.settings)
            .field("codes", &self.records.len())
            .finish_non_exhaustive()
    }
}

impl PairingService {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        server_fingerprint: Fingerprint,
        settings: PairingSettings,
        now: Instant,
    ) -> Result<Self, ServiceError> {
        let starts = TokenBucket::new(now, settings.starts_burst, settings.starts_refill_ms)
            .map_err(ServiceError::Limit)?;
        Ok(Self {
            ca,
            server_fingerprint,
            settings,
            records: HashMap::new(),
            changed: BTreeSet::new(),
            dropped: std::collections::HashMap::new(),
            starts,
        })
    }

    /// Issues a new code for `device_id`. `lifetime_ms` outside 30 s..=24 h is refused.
    pub fn create_code<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        device_id: &str,
        lifetime_ms: Option<u64>,
        require_approval: Option<bool>,
        rng: &mut R,
    ) -> Result<PairingCode, ServiceError> {
        check_device_id(device_id).map_err(ServiceError::Ca)?;
        let lifetime = match lifetime_ms {
            Some(ms) => CodeLifetime::from_millis(ms).map_err(ServiceError::Limit)?,
            None => self.settings.lifetime,
        };
        self.purge(now);
        if self
            .records
            .values()
            .any(|r| r.device_id == device_id && !r.window.used)
        {
            return Err(ServiceError::DeviceBusy(device_id.to_owned()));
        }
        let id = self.free_id(rng)?;
        // A code whose record cannot be derived (probability 2^-256) is drawn again.
        let (code, record) = loop {
            let code = PairingCode::generate(id, rng).map_err(ServiceError::Uri)?;
            if let Ok(record) = code.verifier_record() {
                break (code, record);
            }
        };
        let window = CodeWindow::new(now, lifetime);
        let required = require_approval.unwrap_or(self.settings.require_approval);
        let deadline = window.expires.plus_ms(self.settings.decision_ms);
        self.changed.insert(id);
        self.records.insert(
            id,
            PairingRecord {
                code_id: id,
                device_id: device_id.to_owned(),
                verifier_record: record.to_vec(),
                window,
                approval: Approval::new(now, deadline, required),
                awaiting_decision: false,
                issued: None,
            },
        );
        Ok(code)
    }

    fn free_id<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Result<u16, ServiceError> {
        // Random ids keep one code's id from hinting at the next.
        let span = u32::from(MAX_CODE_ID) + 1;
        for _ in 0..64 {
            let id = (rng.next_u32() % span) as u16;
            if !self.records.contains_key(&id) {
                return Ok(id);
            }
        }
        (0..=MAX_CODE_ID)
            .find(|id| !self.records.contains_key(id))
            .ok_or(ServiceError::NoFreeCodeId)
    }

    /// The QR payload for a code: `tern://pair?...` with this daemon's fingerprint.
    pub fn uri(&self, addr: &str, code: &PairingCode) -> Result<String, ServiceError> {
        let uri = PairingUri::new(addr, code.clone(), self.server_fingerprint.0)
            .map_err(ServiceError::Uri)?;
        Ok(uri.to_string())
    }

    pub fn approve(&mut self, now: Instant, code_id: u16) -> Result<ApprovalState, ServiceError> {
        self.record_mut(code_id)?
            .approval
            .approve(now)
            .map_err(ServiceError::Approval)
    }

    pub fn reject(&mut self, now: Instant, code_id: u16) -> Result<ApprovalState, ServiceError> {
        self.record_mut(code_id)?
            .approval
            .reject(now)
            .map_err(ServiceError::Approval)
    }

    pub fn record(&self, code_id: u16) -> Option<&PairingRecord> {
        self.records.get(&code_id)
    }

    /// The records changed or dropped since the last call, for the store: writing
    /// each change, not every record, keeps a pairing's cost flat however many codes
    /// are outstanding.
    pub fn take_changes(&mut self) -> PairingChanges {
        let mut changes = PairingChanges::default();
        for id in std::mem::take(&mut self.changed) {
            match self.records.get(&id) {
                Some(r) => changes.put.push(r.clone()),
                None => {
                    if let Some(verifier) = self.dropped.remove(&id) {
                        changes.deleted.push((id, verifier));
                    }
                }
            }
        }
        changes
    }

    /// A record about to change, marked for the store.
    fn touch(&mut self, code_id: u16) -> Option<&mut PairingRecord> {
        let r = self.records.get_mut(&code_id)?;
        self.changed.insert(code_id);
        Some(r)
    }

    /// Every record, sorted by code id.
    pub fn records(&self) -> Vec<PairingRecord> {
        let mut all: Vec<_> = self.records.values().cloned().collect();
        all.sort_by_key(|r| r.code_id);
        all
    }

    /// Loads stored records. A connection does not survive a restart, so a record that
    /// was waiting for a decision no longer has a node attached: its code is reopened for
    /// the node to come back with.
    pub fn restore(&mut self, records: impl IntoIterator<Item = PairingRecord>) {
        for mut r in records {
            if r.awaiting_decision {
                r.awaiting_decision = false;
                r.window.reopen();
            }
            self.records.insert(r.code_id, r);
        }
    }

    /// Drops a code minted here whose id another daemon took first (it never reached
    /// the store); nothing is written for it.
    pub fn forget(&mut self, code_id: u16) {
        self.records.remove(&code_id);
        self.changed.remove(&code_id);
    }

    /// Takes in what other daemons sharing the store did with the codes: codes they
    /// minted, decisions their operators made, codes used or guessed at there. Local
    /// state that is further along stays. Returns whether a decision came in (runs
    /// waiting for one should look again).
    pub fn absorb(&mut self, records: impl IntoIterator<Item = PairingRecord>) -> bool {
        let mut decided = false;
        for mut stored in records {
            let Some(local) = self.records.get_mut(&stored.code_id) else {
                // A code minted elsewhere; no connection here waits on it.
                stored.awaiting_decision = false;
                self.records.insert(stored.code_id, stored);
                continue;
            };
            if local.verifier_record != stored.verifier_record {
                // The code id was reused for another code: the store's is the newer.
                stored.awaiting_decision = false;
                *local = stored;
                continue;
            }
            if local.approval.state == ApprovalState::Pending
                && matches!(
                    stored.approval.state,
                    ApprovalState::Approved | ApprovalState::Rejected
                )
            {
                local.approval = stored.approval;
                decided = true;
            }
            if stored.window.used && !local.window.used {
                local.window.used = true;
                local.issued = local.issued.or(stored.issued);
            }
            local.window.failures = local.window.failures.max(stored.window.failures);
        }
        decided
    }

    /// The transport closed a pairing connection. One that held a proven code without
    /// a certificate yet gives the code back, so the node can reconnect with it.
    pub fn connection_closed<B: AsRef<[u8]> + AsMut<[u8]>>(&mut self, conn: &DaemonPairing<B>) {
        if conn.csr().is_none() {
            return;
        }
        let Some(r) = conn.code_id().and_then(|id| self.touch(id)) else {
            return;
        };
        if r.awaiting_decision {
            r.awaiting_decision = false;
            r.window.reopen();
        }
    }

    /// Drops records that can no longer lead anywhere.
    pub fn purge(&mut self, now: Instant) {
        let changed = &mut self.changed;
        let dropped = &mut self.dropped;
        self.records.retain(|id, r| {
            let state = r.approval.tick(now);
            let finished = matches!(
                state,
                ApprovalState::Completed | ApprovalState::Rejected | ApprovalState::Expired
            );
            let dead = !r.window.used && r.window.is_closed(now);
            let keep = !(finished || dead);
            if !keep {
                changed.insert(*id);
                dropped.insert(*id, r.verifier_record.clone());
            }
            keep
        });
    }

    fn record_mut(&mut self, code_id: u16) -> Result<&mut PairingRecord, ServiceError> {
        self.touch(code_id)
            .ok_or(ServiceError::UnknownCode(code_id))
    }

    /// Lets a pairing start: rate limit first (unknown ids are probes too), then the
    /// code's window, which counts the attempt.
    fn admit(&mut self, now: Instant, code_id: u16) -> Result<RecordBytes, PairingError> {
        self.starts.try_take(now)?;
        let r = self.touch(code_id).ok_or(PairingError::UnknownCode)?;
        match r.approval.tick(now) {
            ApprovalState::Rejected => return Err(PairingError::RejectedByOperator),
            ApprovalState::Expired => return Err(PairingError::ApprovalExpired),
            ApprovalState::Completed => return Err(PairingError::AlreadyUsed),
            ApprovalState::Pending | ApprovalState::Approved => {}
        }
        r.window.begin_attempt(now)?;
        RecordBytes::try_from(r.verifier_record.as_slice()).map_err(|_| PairingError::Internal)
    }

    /// Answers what one connection's run asks of its application, and an operator's
    /// decision it waits for; returns the next thing to report, `None` when there is
    /// nothing (call until `None`). Call it after each `handle_frame`/`handle_timeout`,
    /// after each `poll_transmit` that handed a frame over (the last answer completes the
    /// run), and after an operator decided. Frames, the close and the deadline then come
    /// from the connection itself (`poll_transmit`, `poll_timeout`).
    pub fn drive<B, R>(
        &mut self,
        now: Instant,
        conn: &mut DaemonPairing<B>,
        rng: &mut R,
    ) -> Option<ServiceEvent>
    where
        B: AsRef<[u8]> + AsMut<[u8]>,
        R: CryptoRng + ?Sized,
    {
        if let Some(decided) = self.take_decision(now, conn, rng) {
            return Some(decided);
        }
        loop {
            let event = match conn.poll_event()? {
                DaemonPairingEvent::RecordNeeded { code_id } => ConnEvent::RecordNeeded(code_id),
                DaemonPairingEvent::CsrReceived { code_id, .. } => ConnEvent::CsrReceived(code_id),
                DaemonPairingEvent::Completed => ConnEvent::Completed,
                DaemonPairingEvent::Failed(e) => ConnEvent::Failed(e),
            };
            match event {
                ConnEvent::RecordNeeded(code_id) => {
                    let accepted = self
                        .admit(now, code_id)
                        .and_then(|record| conn.accept_record(now, &record, rng));
                    if let Err(e) = accepted {
                        // The run is live (it just asked), so the refusal is taken.
                        let _ = conn.refuse(e);
                    }
                }
                ConnEvent::CsrReceived(code_id) => {
                    let refused = match self.touch(code_id) {
                        Some(r) => {
                            // The run proved the code: its attempt was not a failure,
                            // but only the first such run gets a certificate.
                            let first = !r.window.used;
                            r.window.confirmed();
                            (!first).then_some(PairingError::AlreadyUsed)
                        }
                        None => Some(PairingError::UnknownCode),
                    };
                    match refused {
                        Some(e) => {
                            let _ = conn.refuse(e);
                        }
                        None => {
                            if let Some(event) = self.decide(now, code_id, conn, rng) {
                                return Some(event);
                            }
                        }
                    }
                }
                ConnEvent::Completed => return Some(ServiceEvent::Completed),
                ConnEvent::Failed(e) => {
                    // A run may end on the deadline of its code's approval: let the
                    // record show it.
                    if let Some(r) = conn.code_id().and_then(|id| self.touch(id)) {
                        r.approval.tick(now);
                    }
                    return Some(ServiceEvent::Failed(e));
                }
            }
        }
    }

    /// A connection parked on an operator's decision, now that there is one.
    fn take_decision<B, R>(
        &mut self,
        now: Instant,
        conn: &mut DaemonPairing<B>,
        rng: &mut R,
    ) -> Option<ServiceEvent>
    where
        B: AsRef<[u8]> + AsMut<[u8]>,
        R: CryptoRng + ?Sized,
    {
        conn.csr()?;
        let code_id = conn.code_id()?;
        let r = self.touch(code_id)?;
        if !r.awaiting_decision || r.approval.tick(now) == ApprovalState::Pending {
            return None;
        }
        r.awaiting_decision = false;
        self.decide(now, code_id, conn, rng)
    }

    /// Answers an authenticated CSR according to the pairing's approval.
    fn decide<B, R>(
        &mut self,
        now: Instant,
        code_id: u16,
        conn: &mut DaemonPairing<B>,
        rng: &mut R,
    ) -> Option<ServiceEvent>
    where
        B: AsRef<[u8]> + AsMut<[u8]>,
        R: CryptoRng + ?Sized,
    {
        // A run past its decision deadline fails here (and reports it from the
        // connection's events) rather than get an answer.
        conn.handle_timeout(now);
        if conn.is_finished() {
            return None;
        }
        // Fields apart: the CA is read while the record changes.
        let r = self.records.get_mut(&code_id)?;
        self.changed.insert(code_id);
        match r.approval.tick(now) {
            ApprovalState::Pending => {
                r.awaiting_decision = true;
                if let Err(e) = conn.pending(now) {
                    r.awaiting_decision = false;
                    let _ = conn.refuse(e);
                    return None;
                }
                Some(ServiceEvent::AwaitingApproval { code_id })
            }
            ApprovalState::Approved => {
                let csr = conn.csr()?.to_vec();
                match self
                    .ca
                    .issue_client(&csr, &r.device_id, now.as_millis(), rng)
                {
                    Ok(cert) => {
                        let issued = Issued {
                            device_id: &r.device_id,
                            client_cert: &cert.der,
                            ca_cert: self.ca.certificate_der(),
                            server_fingerprint: self.server_fingerprint.0,
                        };
                        if conn.issue(now, &issued).is_err() {
                            let _ = conn.refuse(PairingError::Internal);
                            return None;
                        }
                        let _ = r.approval.complete(now);
                        r.issued = Some(cert.fingerprint);
                        Some(ServiceEvent::Issued(cert))
                    }
                    Err(_) => {
                        // The node proved the code; let it retry with a good CSR.
                        r.window.reopen();
                        let _ = conn.refuse(PairingError::BadCsr);
                        None
                    }
                }
            }
            ApprovalState::Rejected => {
                if let Err(e) = conn.reject(now) {
                    let _ = conn.refuse(e);
                }
                None
            }
            ApprovalState::Expired => {
                let _ = conn.refuse(PairingError::ApprovalExpired);
                None
            }
            ApprovalState::Completed => {
                let _ = conn.refuse(PairingError::AlreadyUsed);
                None
            }
        }
    }
}
