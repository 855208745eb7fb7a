//! One pass over a connection that changed: quinn's events, its stream, its stage.

use super::*;

impl<S, H> Task<S, H>
where
    S: Session<Buf = Box<[u8]>> + Bound + Send + 'static,
    H: Sessions<S>,
{
    /// Revisits every connection marked this pass.
    pub(super) fn revisit(&mut self, now: StdInstant) {
        while let Some(ch) = self.dirty.pop() {
            self.drive(now, ch);
        }
    }

    pub(super) fn drive(&mut self, now: StdInstant, ch: ConnectionHandle) {
        let Some(mut conn) = self.conns.remove(&ch) else {
            return;
        };
        conn.dirty = false;
        while let Some(event) = conn.quic.poll_endpoint_events() {
            if let Some(event) = self.endpoint.handle_event(ch, event) {
                conn.quic.handle_event(event);
            }
        }
        let mut lost = None;
        let mut timed_out = false;
        // The connection's one stream has data (or opened with some: no `Readable`
        // follows for data that came with the opening).
        let mut input = false;
        while let Some(event) = conn.quic.poll() {
            match event {
                Event::Connected => self.connected(now, &mut conn),
                Event::ConnectionLost { reason } => {
                    timed_out = matches!(reason, quinn_proto::ConnectionError::TimedOut);
                    lost = Some(closed_from(&reason));
                }
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                    input |= accept_streams(&mut conn);
                }
                Event::Stream(StreamEvent::Readable { id }) => {
                    input |= conn.stage.stream() == Some(id);
                }
                // All we wrote is acknowledged: a closing stage can close now.
                Event::Stream(StreamEvent::Finished { id }) if conn.stage.stream() == Some(id) => {
                    match &conn.stage {
                        Stage::Pairing(p) if p.finishing.is_some() => {
                            conn.close(now, CLOSE_SESSION_ENDED, "pairing done");
                        }
                        Stage::Live(live) if live.finishing.is_some() => {
                            conn.close(now, CLOSE_SESSION_ENDED, "session closed");
                            lost.get_or_insert(Closed::BySession);
                        }
                        _ => {}
                    }
                }
                Event::Stream(StreamEvent::Stopped { id, .. })
                    if matches!(conn.stage, Stage::Live(_)) && conn.stage.stream() == Some(id) =>
                {
                    conn.close(now, CLOSE_SESSION_ENDED, "stream stopped");
                    lost.get_or_insert(Closed::Lost {
                        reason: "the peer stopped the stream".into(),
                    });
                }
                _ => {}
            }
        }
        // Closed on our side (a session's goodbye whose deadline passed): quinn reports
        // no loss for a close of ours, and draining can last many backed-off PTOs when
        // the peer went silent. The session is done with this connection now.
        if lost.is_none()
            && conn.quic.is_closed()
            && matches!(conn.stage, Stage::Live(_) | Stage::Pairing(_))
        {
            lost = Some(Closed::BySession);
        }
        if let Stage::Handshaking { reply, .. } = &mut conn.stage
            && let Some(reason) = &lost
        {
            let why = if timed_out {
                HandshakeFailure::Timeout
            } else {
                HandshakeFailure::Tls
            };
            stats::failed(TransportKind::Quic, why);
            if let Some(reply) = reply.take() {
                let _ = reply.send(Err(reason.clone()));
            }
            conn.stage = Stage::Closing;
        }
        if let Stage::Live(live) = &mut conn.stage {
            live.unread |= input;
            let end = live.drive(
                conn.id,
                &mut conn.quic,
                now,
                &mut self.lender,
                &mut self.commit.group,
            );
            if end == ReadEnd::Ended && live.finishing.is_none() {
                conn.close(now, CLOSE_SESSION_ENDED, "stream ended");
                lost.get_or_insert(Closed::Lost {
                    reason: "the peer ended its stream".into(),
                });
            }
        }
        if matches!(conn.stage, Stage::Pairing(_)) {
            self.pairing_io(now, &mut conn, input, lost.is_some());
        }
        if let Some(mut how) = lost {
            if matches!(&conn.stage, Stage::Live(live) if live.finishing.is_some()) {
                // The session had said goodbye: however the peer closes now, it was ours.
                how = Closed::BySession;
            }
            self.end(&mut conn, how);
        }
        if conn.quic.is_drained() {
            self.remove(conn);
            return;
        }
        self.arm(now, ch, &mut conn);
        if !conn.queued {
            conn.queued = true;
            self.io.sendq.push_back(ch);
        }
        self.conns.insert(ch, conn);
    }
}

/// Takes the node's stream: the first one carries the session or the pairing run;
/// others are refused. True if the connection's stream was just taken (read it now).
fn accept_streams<S: Session, A: Application<S>>(conn: &mut Conn<S, A>) -> bool {
    let mut taken = false;
    while let Some(id) = conn.quic.streams().accept(Dir::Bi) {
        let slot = match &mut conn.stage {
            Stage::Live(live) if live.stream.is_none() => Some(&mut live.stream),
            Stage::Pairing(p) if p.stream.is_none() => Some(&mut p.stream),
            _ => None,
        };
        match slot {
            Some(slot) => {
                *slot = Some(id);
                if let Stage::Live(live) = &mut conn.stage {
                    live.session.handle_connected(clock::now());
                }
                taken = true;
            }
            None => {
                let code = VarInt::from_u32(CLOSE_SESSION_ENDED);
                let _ = conn.quic.recv_stream(id).stop(code);
                let _ = conn.quic.send_stream(id).reset(code);
            }
        }
    }
    taken
}
