//! The timer heap: one entry per connection's earliest deadline (quinn's, the
//! handshake's, the session's), stale entries skipped by generation.

use super::*;

/// Each connection's earliest deadline, with the generation it was armed at.
#[derive(Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(StdInstant, ConnectionHandle, u64)>>,
}

impl Timers {
    /// The earliest deadline, stale or not.
    pub(super) fn next(&self) -> Option<StdInstant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The next entry due at `now`, if any.
    fn pop_due(&mut self, now: StdInstant) -> Option<(ConnectionHandle, u64)> {
        let Reverse((at, ch, generation)) = *self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        Some((ch, generation))
    }

    fn push(&mut self, at: StdInstant, ch: ConnectionHandle, generation: u64) {
        self.heap.push(Reverse((at, ch, generation)));
    }
}

impl<S, H> Task<S, H>
where
    S: Session<Buf = Box<[u8]>> + Bound + Send + 'static,
    H: Sessions<S>,
{
    pub(super) fn expire_timers(&mut self, now: StdInstant) {
        while let Some((ch, generation)) = self.timers.pop_due(now) {
            let Some(conn) = self.conns.get_mut(&ch) else {
                continue;
            };
            if conn.generation != generation {
                continue;
            }
            conn.armed = None;
            conn.quic.handle_timeout(now);
            if conn
                .handshake_deadline
                .is_some_and(|d| d <= now && conn.quic.is_handshaking())
            {
                conn.handshake_deadline = None;
                stats::failed(TransportKind::Quic, HandshakeFailure::Timeout);
                conn.close(
                    now,
                    close_code(&ErrorCode::Unauthorized),
                    "handshake timed out",
                );
            }
            let session_now = clock::now();
            let mut finish_due = false;
            if let Stage::Live(live) = &mut conn.stage {
                live.session.handle_timeout(session_now);
                finish_due = live.finishing.is_some_and(|d| d <= now);
            }
            if let Stage::Pairing(p) = &mut conn.stage {
                p.on_timeout();
                finish_due = p.finishing.is_some_and(|d| d <= now);
            }
            if finish_due {
                conn.close(now, CLOSE_SESSION_ENDED, "session closed");
            }
            mark(&mut self.dirty, ch, conn);
        }
    }

    pub(super) fn arm(
        &mut self,
        now: StdInstant,
        ch: ConnectionHandle,
        conn: &mut Conn<S, H::App>,
    ) {
        let mut at = conn.quic.poll_timeout();
        let mut consider = |d: Option<StdInstant>| {
            if let Some(d) = d {
                at = Some(at.map_or(d, |a| a.min(d)));
            }
        };
        consider(conn.handshake_deadline);
        if let Stage::Live(live) = &conn.stage {
            consider(live.deadline());
            consider(live.finishing);
        }
        if let Stage::Pairing(p) = &conn.stage {
            consider(p.deadline());
            consider(p.finishing);
        }
        let at = at.map(|a| a.max(now));
        if at != conn.armed {
            conn.armed = at;
            conn.generation += 1;
            if let Some(at) = at {
                self.timers.push(at, ch, conn.generation);
            }
        }
    }
}
