//! One QUIC connection as the endpoint task keeps it: the quinn-proto connection, where
//! it stands (handshaking, carrying a session, closing), and the session's stream with
//! the pump between it and the session.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant as StdInstant;

use protocol_core::pump::{Pump, Step, Wait};
use protocol_core::session::{BatchId, Session};
use quinn_proto::{Connection, StreamId, VarInt};
use tokio::sync::oneshot;

use super::stream::{self, Received};
use crate::clock;
use crate::driver::{self, Application};
use crate::host::{Closed, Opened, Peer, Refusal, TransportKind};
use crate::journal::Batch;
use crate::pool::PoolLender;
use crate::stats;

/// How long a session that asked to close waits for its last frames to be acknowledged
/// before the connection is closed anyway.
pub(crate) const FINISH_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

pub(crate) struct Conn<S: Session, A: Application<S>> {
    pub(crate) id: u64,
    pub(crate) quic: Connection,
    pub(crate) stage: Stage<S, A>,
    /// Counts against the connection cap (a connection being refused does not).
    pub(crate) counted: bool,
    /// Accepted over the cap only to be refused: holds one of the refusal slots.
    pub(crate) over_cap: bool,
    pub(crate) handshake_deadline: Option<StdInstant>,
    /// The deadline in the timer heap, and its generation (older heap entries are stale).
    pub(crate) armed: Option<StdInstant>,
    pub(crate) generation: u64,
    /// In the endpoint's send queue.
    pub(crate) queued: bool,
    /// In this pass's list of connections to revisit.
    pub(crate) dirty: bool,
}

pub(crate) enum Stage<S: Session, A: Application<S>> {
    Handshaking {
        /// Refused once the handshake completes (over the cap), so the peer can read why.
        refuse: Option<Refusal>,
        /// A client connect waiting for the handshake.
        reply: Option<oneshot::Sender<Result<u64, Closed>>>,
    },
    Live(Box<Live<S, A>>),
    /// No client certificate: a pairing run, and nothing else.
    Pairing(Box<super::pairing::PairingConn>),
    /// Closed by us or the peer; waiting for quinn to drain it.
    Closing,
}

/// A connection carrying a session.
pub(crate) struct Live<S: Session, A: Application<S>> {
    pub(crate) peer: Peer,
    pub(crate) session: S,
    pub(crate) app: A,
    journal_key: Arc<str>,
    pub(crate) stream: Option<StreamId>,
    /// The drive order between the stream and the session.
    pump: Pump<Box<[u8]>>,
    /// Chunks read from the stream that the pump has not taken yet.
    received: Received,
    /// The stream may hold data not read yet. It stays in quinn while the pump refuses
    /// input (backpressure), so the stream's flow control holds the peer back.
    pub(crate) unread: bool,
    /// The pump took input at its last wait.
    reading: bool,
    /// A frame the session refused waited in the pump at its last wait.
    held: bool,
    /// The peer finished or reset its side.
    peer_finished: bool,
    /// Commands for the application's next turn.
    pub(crate) commands: VecDeque<A::Command>,
    /// The session asked to close: its stream is finished and the connection closes
    /// when the peer has everything, or at this deadline.
    pub(crate) finishing: Option<StdInstant>,
    /// The journal batch of this session being committed.
    pub(crate) in_flight: Option<BatchId>,
    /// The connection is gone: how, for the application once the session goes back.
    pub(crate) ended: Option<Closed>,
}

/// The journal batches one pass produced, and whose they are: the connection and the
/// batch its confirmation names.
#[derive(Default)]
pub(crate) struct Group {
    pub(crate) batches: Vec<Batch>,
    pub(crate) conns: Vec<(u64, BatchId)>,
}

/// What reading the stream found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// More may come.
    Open,
    /// The peer finished or reset its side, and everything it sent was taken.
    Ended,
}

impl<S, A> Live<S, A>
where
    S: Session<Buf = Box<[u8]>>,
    A: Application<S>,
{
    pub(crate) fn new(peer: Peer, opened: Opened<S, A>) -> Self {
        Self {
            peer,
            session: opened.session,
            app: opened.app,
            journal_key: opened.journal_key,
            stream: None,
            pump: Pump::new(),
            received: Received::keeping_split_frames(),
            unread: false,
            reading: true,
            held: false,
            peer_finished: false,
            commands: VecDeque::new(),
            finishing: None,
            in_flight: None,
            ended: None,
        }
    }

    /// Reads the stream while the pump takes input, runs the pump until it waits, and
    /// writes what the stream takes. A pump that takes input again after refusing it
    /// reads what waited in the stream meanwhile.
    pub(crate) fn drive(
        &mut self,
        id: u64,
        quic: &mut Connection,
        at: StdInstant,
        lender: &mut PoolLender,
        group: &mut Group,
    ) -> ReadEnd {
        let Some(stream) = self.stream else {
            return ReadEnd::Open;
        };
        // A revisit retries a write the stream refused; refused again, it waits again.
        self.pump.writable();
        loop {
            if self.unread && self.reading {
                self.unread = false;
                self.peer_finished |= stream::read_into(quic, stream, &mut self.received);
                if self.peer_finished {
                    self.received.ended();
                }
            }
            let wait = self.run(id, Some((&mut *quic, stream)), at, lender, group);
            self.reading = wait.read;
            self.held = wait.held;
            if !(self.unread && self.reading) {
                break;
            }
        }
        if self.peer_finished && self.reading && !self.held && self.received.is_empty() {
            ReadEnd::Ended
        } else {
            ReadEnd::Open
        }
    }

    /// The connection is gone: what the application still has to do and the journal
    /// batch it leaves. Frames go nowhere.
    pub(crate) fn settle(&mut self, id: u64, lender: &mut PoolLender, group: &mut Group) {
        self.received.clear();
        self.run(id, None, StdInstant::now(), lender, group);
    }

    /// Runs the pump until it waits: the application's turns (queued commands, then
    /// events), journal batches into the pass's group, frames into the stream.
    fn run(
        &mut self,
        id: u64,
        mut link: Option<(&mut Connection, StreamId)>,
        at: StdInstant,
        lender: &mut PoolLender,
        group: &mut Group,
    ) -> Wait {
        let now = clock::now();
        let wait = loop {
            match self
                .pump
                .poll(now, &mut self.session, lender, &mut self.received)
            {
                Step::Events(session) => {
                    for command in self.commands.drain(..) {
                        self.app.handle_command(session, now, command);
                    }
                    self.app.handle_events(session, now);
                }
                Step::Journal(batch) => {
                    if let Some((batch, ops)) = batch.into_owned() {
                        group.batches.push(Batch {
                            key: self.journal_key.clone(),
                            ops,
                        });
                        group.conns.push((id, batch));
                        self.in_flight = Some(batch);
                    }
                }
                Step::Transmit(out) => {
                    if let Some((quic, id)) = link.as_mut() {
                        stream::write(quic, *id, out);
                    }
                }
                Step::Close(out) => {
                    if let Some((quic, id)) = link.as_mut()
                        && stream::write(quic, *id, out)
                    {
                        let _ = quic.send_stream(*id).finish();
                        self.finishing = Some(at + FINISH_GRACE);
                    }
                }
                Step::Wait(wait) => break wait,
            }
        };
        stats::add(TransportKind::Quic, self.pump.take_counts());
        wait
    }

    /// The store's answer for batch `batch` of this session.
    pub(crate) fn confirm(&mut self, batch: BatchId, committed: bool) {
        if self.in_flight == Some(batch) {
            self.in_flight = None;
        }
        driver::confirm(&mut self.session, batch, committed);
    }

    /// The pump's buffers, and the session's storage if it holds no data, back to the
    /// pools: before the session goes back to the application.
    pub(crate) fn release(&mut self, lender: &mut PoolLender) {
        self.received.clear();
        self.pump.release(&mut self.session, lender);
    }

    /// The session's deadline on the process clock.
    pub(crate) fn deadline(&self) -> Option<StdInstant> {
        let at = self.session.poll_timeout()?;
        Some(StdInstant::now() + clock::until(at))
    }
}

impl<S: Session, A: Application<S>> Stage<S, A> {
    /// The stream the connection's session or pairing run rides on, once open.
    pub(crate) fn stream(&self) -> Option<StreamId> {
        match self {
            Stage::Live(live) => live.stream,
            Stage::Pairing(p) => p.stream,
            Stage::Handshaking { .. } | Stage::Closing => None,
        }
    }
}

impl<S: Session, A: Application<S>> Conn<S, A> {
    /// A connection whose handshake has just begun: a server's (`refuse` when it is
    /// over the cap) or a client's (`reply` waits for the handshake).
    pub(crate) fn handshaking(
        quic: Connection,
        stage: Stage<S, A>,
        over_cap: bool,
        deadline: StdInstant,
    ) -> Self {
        Conn {
            id: crate::host::next_connection_id(),
            quic,
            stage,
            counted: !over_cap,
            over_cap,
            handshake_deadline: Some(deadline),
            armed: None,
            generation: 0,
            queued: false,
            dirty: false,
        }
    }

    /// Refuses the connection before it carries anything: counted, closed with the
    /// error's code and a reason the peer reads.
    pub(crate) fn refuse(
        &mut self,
        now: StdInstant,
        why: crate::stats::HandshakeFailure,
        code: &protocol_core::wire::ErrorCode,
        reason: &str,
    ) {
        stats::failed(TransportKind::Quic, why);
        self.close(now, crate::host::close_code(code), reason);
        self.stage = Stage::Closing;
    }

    /// Refuses the peer as admission decided.
    pub(crate) fn deny(&mut self, now: StdInstant, denied: &crate::admission::Denied) {
        let r = &denied.refusal;
        self.refuse(now, denied.failure, &r.code, &r.reason);
    }

    pub(crate) fn close(&mut self, now: StdInstant, code: u32, reason: &str) {
        self.quic.close(
            now,
            VarInt::from_u32(code),
            reason.as_bytes().to_vec().into(),
        );
    }
}

/// How quinn's report of a lost connection reads to the application.
pub(crate) fn closed_from(error: &quinn_proto::ConnectionError) -> Closed {
    use quinn_proto::ConnectionError as E;
    match error {
        E::ApplicationClosed(close) => Closed::ByPeer {
            code: close.error_code.into_inner(),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        E::LocallyClosed => Closed::BySession,
        E::ConnectionClosed(close) => match tls_alert(close.error_code) {
            Some(alert) => Closed::Tls {
                alert,
                by_peer: true,
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            None => Closed::Lost {
                reason: error.to_string(),
            },
        },
        E::TransportError(e) => match tls_alert(e.code) {
            Some(alert) => Closed::Tls {
                alert,
                by_peer: false,
                reason: e.reason.clone(),
            },
            None => Closed::Lost {
                reason: error.to_string(),
            },
        },
        other => Closed::Lost {
            reason: other.to_string(),
        },
    }
}

/// The TLS alert a QUIC `CRYPTO_ERROR` carries (RFC 9001 §4.8: 0x100 + the alert).
fn tls_alert(code: quinn_proto::TransportErrorCode) -> Option<rustls::AlertDescription> {
    let code = u64::from(code);
    let alert = u8::try_from(code.checked_sub(0x100)?).ok()?;
    Some(rustls::AlertDescription::from(alert))
}
