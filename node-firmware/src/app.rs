//! The node application: what the firmware does on the node plane, one turn at a time
//! ([`NodeApp::on_events`]). It registers the capabilities, answers calls, streams the
//! sensor, renews the certificate, and on a stop request drains the session and says
//! goodbye.
//!
//! **Renewal.** The certificate is due within `renew_window_s` of its end. A board with
//! a wall clock judges that by the clock; one without judges by uptime: it is due once
//! the node has run for half the certificate's lifetime since boot (a node that reboots
//! more often than that renews when it pairs again). The renewed certificate, checked
//! against the node's key, device id and CA, is stored ([`crate::run()`]) and presented
//! from the next connection: once the daemon has acknowledged the answer, the node says
//! goodbye (`Restart`) and reconnects at once, resuming its session.

use embassy_time::Instant as Clock;
use node_contract::names::{JSON, RENEW_EVENT};
use node_contract::{Installed, RenewRequest, Renewed};
use protocol_core::session::{NodeEvent, NodeSession, SessionError};
use protocol_core::time::Instant;
use protocol_core::wire::{
    CallId, Capabilities, GoodbyeReason, Outcome, Payload, Register, RejectCode,
};
use transport_embedded::csr::MAX_CSR_LEN;
use transport_embedded::identity::MAX_CERT_LEN;
use transport_embedded::renewal::{Validity, renewal_csr, validity};
use transport_embedded::{Ended, Identity, LinkError, NodeApp};

use crate::board::{Board, Console};
use crate::capabilities::{self, Capability, REGISTERED, Refusal};
use crate::sensor::SensorStream;

/// How often a due certificate is asked for again while no answer came.
const RENEW_RETRY_MS: u64 = 3_600_000;

/// The largest answer: an echo of a whole frame's input.
const ANSWER_LEN: usize = crate::run::CONFIG.max_frame as usize;

/// What outlives one [`run_node`](transport_embedded::run_node): the sensor's numbering,
/// the renewal's progress.
#[derive(Debug)]
pub struct State {
    pub sensor: SensorStream,
    renew_window_s: u64,
    renew_asked_at: Option<u64>,
    /// A checked certificate, to store before the next connection.
    pub renewed: Option<Identity>,
    /// A stop was asked for.
    pub stopping: bool,
    /// The session said goodbye after the daemon acknowledged everything.
    pub drained: bool,
}

impl State {
    pub const fn new(sensor_every_ms: u64, renew_window_s: u64) -> Self {
        Self {
            sensor: SensorStream::new(sensor_every_ms),
            renew_window_s,
            renew_asked_at: None,
            renewed: None,
            stopping: false,
            drained: false,
        }
    }
}

/// An answer the session could not take yet (its replay buffer was full).
#[derive(Debug)]
enum Answer {
    Success {
        len: usize,
    },
    Rejected {
        code: RejectCode,
        reason: &'static str,
    },
}

/// The application, for one [`run_node`](transport_embedded::run_node).
pub struct FirmwareApp<'a, B, C> {
    board: &'a mut B,
    console: &'a mut C,
    identity: &'a Identity,
    validity: Option<Validity>,
    state: &'a mut State,
    /// Calls are answered in order; one waiting answer holds back the next event.
    waiting: Option<(CallId, Answer)>,
    answer: [u8; ANSWER_LEN],
    next_stop_poll: Option<Instant>,
    /// This connection's goodbye was said.
    closed: bool,
}

impl<B, C> core::fmt::Debug for FirmwareApp<'_, B, C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FirmwareApp")
            .field("state", &self.state)
            .field("waiting", &self.waiting)
            .finish_non_exhaustive()
    }
}

impl<'a, B: Board, C: Console> FirmwareApp<'a, B, C> {
    pub fn new(
        board: &'a mut B,
        console: &'a mut C,
        identity: &'a Identity,
        state: &'a mut State,
    ) -> Self {
        Self {
            board,
            console,
            identity,
            validity: validity(identity.client_cert()).ok(),
            state,
            waiting: None,
            answer: [0; ANSWER_LEN],
            next_stop_poll: None,
            closed: false,
        }
    }

    fn register(&mut self, session: &mut NodeSession<&mut [u8]>) {
        let capabilities = Capabilities::new(&REGISTERED).ok();
        if let Some(capabilities) = capabilities
            && let Err(e) = session.register(Register { capabilities })
        {
            self.console
                .say(format_args!("registering capabilities failed: {e}"));
        }
    }

    /// Runs a call and keeps its answer until the session takes it.
    fn serve(&mut self, call_id: CallId, capability: &str, content_type: &str, input: &[u8]) {
        let answer = match self.run_call(capability, content_type, input) {
            Ok(len) => Answer::Success { len },
            Err(refusal) => Answer::Rejected {
                code: refusal.code,
                reason: refusal.reason,
            },
        };
        self.waiting = Some((call_id, answer));
    }

    fn run_call(
        &mut self,
        capability: &str,
        content_type: &str,
        input: &[u8],
    ) -> Result<usize, Refusal> {
        let out = &mut self.answer;
        let written = match Capability::named(capability, content_type)? {
            Capability::Echo => {
                let input = capabilities::echo(input);
                let Some(out) = out.get_mut(..input.len()) else {
                    return Err(Refusal {
                        code: RejectCode::Busy,
                        reason: "the input does not fit the node's answer buffer",
                    });
                };
                out.copy_from_slice(input);
                return Ok(input.len());
            }
            Capability::Health => {
                capabilities::health(&*self.board, Clock::now().as_millis(), out)?
            }
            Capability::Led => capabilities::led(self.board, input, out)?,
            Capability::InstallCertificate => {
                return install(
                    self.identity,
                    self.board.unix_time(),
                    input,
                    self.state,
                    self.console,
                    out,
                );
            }
        };
        Ok(written.len())
    }

    /// Hands the waiting answer to the session; `false` while it has no room.
    fn flush_answer(&mut self, session: &mut NodeSession<&mut [u8]>) -> bool {
        let Some((call_id, answer)) = &self.waiting else {
            return true;
        };
        let outcome = match answer {
            Answer::Success { len } => Outcome::Success(Payload {
                content_type: JSON,
                data: &self.answer[..*len],
            }),
            Answer::Rejected { code, reason } => Outcome::Rejected {
                code: *code,
                reason,
            },
        };
        match session.complete(*call_id, outcome) {
            Err(SessionError::Full | SessionError::NoStorage) => false,
            // Answered, or the call ended meanwhile (expired, cancelled): either way done.
            _ => {
                self.waiting = None;
                true
            }
        }
    }

    fn renew_if_due(&mut self, session: &mut NodeSession<&mut [u8]>) {
        let Some(v) = self.validity else { return };
        let uptime_s = Clock::now().as_secs();
        let due = match self.board.unix_time() {
            Some(now) => now.saturating_add(self.state.renew_window_s) >= v.not_after,
            None => uptime_s >= v.not_after.saturating_sub(v.not_before) / 2,
        };
        let asked_lately = self
            .state
            .renew_asked_at
            .is_some_and(|at| uptime_s < at.saturating_add(RENEW_RETRY_MS / 1000));
        if !due || asked_lately || self.state.renewed.is_some() {
            return;
        }
        let mut csr = [0u8; MAX_CSR_LEN];
        let mut hex = [0u8; 2 * MAX_CSR_LEN];
        let mut json = [0u8; 2 * MAX_CSR_LEN + 16];
        let Ok(csr) = renewal_csr(self.identity, &mut csr) else {
            return;
        };
        let Ok(request) = RenewRequest::new(csr, &mut hex) else {
            return;
        };
        let Ok(data) = capabilities::json(&request, &mut json) else {
            return;
        };
        if session
            .send_event(
                RENEW_EVENT,
                Payload {
                    content_type: JSON,
                    data,
                },
            )
            .is_ok()
        {
            self.state.renew_asked_at = Some(uptime_s);
            self.console
                .say(format_args!("certificate due: renewal asked for"));
        }
    }

    fn note_stop_request(&mut self, session: &NodeSession<&mut [u8]>) {
        if !self.state.stopping && self.board.stop_requested() {
            self.state.stopping = true;
            self.state.sensor.stop();
            self.console.say(format_args!(
                "stopping after {} reading(s): waiting for the daemon to acknowledge {} message(s)",
                self.state.sensor.queued(),
                session.unacked()
            ));
        }
    }

    /// Says goodbye once the daemon has acknowledged everything, when the node stops
    /// (`Shutdown`) or holds a renewed certificate to store and present (`Restart`: the
    /// next connection resumes the session with it).
    fn close_when_drained(&mut self, session: &mut NodeSession<&mut [u8]>, now: Instant) {
        let reason = if self.state.stopping {
            GoodbyeReason::Shutdown
        } else if self.state.renewed.is_some() {
            GoodbyeReason::Restart
        } else {
            return;
        };
        if self.closed
            || self.waiting.is_some()
            || session.unacked() != 0
            || session.active_calls() != 0
            || !session.is_connected()
        {
            return;
        }
        session.close(now, reason);
        self.closed = true;
        self.state.drained = self.state.stopping;
    }
}

/// `tern.certificate`: checks the renewed certificate and keeps it for the next connection.
fn install<C: Console>(
    identity: &Identity,
    now_unix: Option<u64>,
    input: &[u8],
    state: &mut State,
    console: &mut C,
    out: &mut [u8],
) -> Result<usize, Refusal> {
    let bad = |reason| Refusal {
        code: RejectCode::BadInput,
        reason,
    };
    let (renewed, _) = serde_json_core::from_slice::<Renewed<'_>>(input)
        .map_err(|_| bad("expected {\"cert\": \"<hex DER>\"}"))?;
    let mut der = [0u8; MAX_CERT_LEN];
    let der = renewed
        .cert_der(&mut der)
        .map_err(|_| bad("the certificate is not hex of at most 1 KiB"))?;
    let identity = identity.renewed(der, now_unix).map_err(|e| {
        console.say(format_args!("renewed certificate refused: {e}"));
        bad("the certificate does not fit this node (key, device, CA or validity)")
    })?;
    state.renewed = Some(identity);
    console.say(format_args!(
        "renewed certificate checked; reconnecting with it"
    ));
    Ok(capabilities::json(&Installed { installed: true }, out)?.len())
}

impl<B: Board, C: Console> NodeApp for FirmwareApp<'_, B, C> {
    fn on_events(&mut self, session: &mut NodeSession<&mut [u8]>, now: Instant) {
        self.note_stop_request(session);
        while self.flush_answer(session) {
            let Some(event) = session.poll_event() else {
                break;
            };
            match event {
                NodeEvent::Connected { resumed, .. } => {
                    self.console.say(format_args!(
                        "connected; {}",
                        if resumed {
                            "session resumed"
                        } else {
                            "new session"
                        }
                    ));
                    if !resumed {
                        self.register(session);
                    }
                    self.renew_if_due(session);
                }
                // The daemon lost what we sent, the registration perhaps with it.
                NodeEvent::SessionReset { .. } => self.register(session),
                // The call borrows the session; the answer goes to the app's own buffer.
                NodeEvent::Call { call, .. } => self.serve(
                    call.call_id,
                    call.capability,
                    call.input.content_type,
                    call.input.data,
                ),
                _ => {}
            }
        }
        if self.waiting.is_none()
            && let Err(e) = self.state.sensor.turn(self.board, session, now)
        {
            self.console
                .say(format_args!("a reading could not be sent: {e}"));
        }
        if let Some(every) = B::STOP_POLL_MS {
            self.next_stop_poll = Some(now.plus_ms(every));
        }
        self.close_when_drained(session, now);
    }

    fn next_wake(&self) -> Option<Instant> {
        match (self.state.sensor.next_wake(), self.next_stop_poll) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn connection_ended(&mut self, outcome: &Result<Ended, LinkError>) {
        match outcome {
            Ok(ended) => self
                .console
                .say(format_args!("connection ended: {ended:?}")),
            Err(e) => self.console.say(format_args!("connection failed: {e}")),
        }
    }

    fn keep_running(&mut self) -> bool {
        self.state.renewed.is_none() && !self.state.drained
    }
}
