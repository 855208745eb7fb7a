//! The application's commands and controls (connect, close, shutdown), and revocations
//! that close live connections.

use super::*;

/// How long a shutting-down endpoint waits for journal batches in flight.
const SHUTDOWN_COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the handles send the task.
pub(super) struct Inbox<C> {
    /// Given to each connection's [`Commands`].
    pub(super) commands_tx: mpsc::Sender<(u64, C)>,
    pub(super) commands: mpsc::Receiver<(u64, C)>,
    pub(super) control: mpsc::Receiver<Control>,
}

impl<S, H> Task<S, H>
where
    S: Session<Buf = Box<[u8]>> + Bound + Send + 'static,
    H: Sessions<S>,
{
    pub(super) fn command(&mut self, id: u64, command: CommandOf<S, H>) {
        if let Some(&ch) = self.ids.get(&id)
            && let Some(conn) = self.conns.get_mut(&ch)
            && let Stage::Live(live) = &mut conn.stage
        {
            live.commands.push_back(command);
            mark(&mut self.dirty, ch, conn);
            return;
        }
        if let Some(live) = self.commit.zombies.get_mut(&id) {
            // Gone, its session not back yet: its application still takes commands.
            live.commands.push_back(command);
            live.settle(id, &mut self.lender, &mut self.commit.group);
            return;
        }
        self.sessions.undelivered(command);
    }

    pub(super) fn control(&mut self, control: Control) {
        let now = StdInstant::now();
        match control {
            Control::Connect {
                addr,
                server_name,
                tls,
                reply,
            } => {
                let config = match config::client(tls, &self.limits) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = reply.send(Err(Closed::Lost {
                            reason: e.to_string(),
                        }));
                        return;
                    }
                };
                match self.endpoint.connect(now, config, addr, &server_name) {
                    Ok((ch, quic)) => {
                        self.admission.open.fetch_add(1, Ordering::Relaxed);
                        let stage = Stage::Handshaking {
                            refuse: None,
                            reply: Some(reply),
                        };
                        let deadline = now + self.limits.handshake_timeout;
                        let mut conn = Conn::handshaking(quic, stage, false, deadline);
                        let id = conn.id;
                        self.ids.insert(id, ch);
                        mark(&mut self.dirty, ch, &mut conn);
                        self.conns.insert(ch, conn);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Closed::Lost {
                            reason: e.to_string(),
                        }));
                    }
                }
            }
            Control::Close { conn, code, reason } => {
                let Some(&ch) = self.ids.get(&conn) else {
                    return;
                };
                if let Some(mut c) = self.conns.remove(&ch) {
                    c.close(now, code, &reason);
                    self.end(&mut c, Closed::BySession);
                    mark(&mut self.dirty, ch, &mut c);
                    self.conns.insert(ch, c);
                }
            }
            Control::Shutdown => {}
        }
    }

    pub(super) fn check_revocations(&mut self) {
        let Some(revocation) = self.admission.revocation.clone() else {
            return;
        };
        let now = StdInstant::now();
        let revoked: Vec<ConnectionHandle> = self
            .conns
            .iter()
            .filter_map(|(ch, c)| match &c.stage {
                Stage::Live(live)
                    if revocation.is_revoked(&live.peer.fingerprint, &live.peer.device_id) =>
                {
                    Some(*ch)
                }
                _ => None,
            })
            .collect();
        for ch in revoked {
            if let Some(mut conn) = self.conns.remove(&ch) {
                conn.close(now, close_code(&ErrorCode::Revoked), "revoked");
                self.end(&mut conn, Closed::Revoked);
                mark(&mut self.dirty, ch, &mut conn);
                self.conns.insert(ch, conn);
            }
        }
    }

    pub(super) async fn shutdown(&mut self) {
        let now = StdInstant::now();
        let handles: Vec<ConnectionHandle> = self.conns.keys().copied().collect();
        for ch in handles {
            if let Some(mut conn) = self.conns.remove(&ch) {
                conn.close(now, CLOSE_SESSION_ENDED, "shutting down");
                self.end(&mut conn, Closed::Shutdown);
                mark(&mut self.dirty, ch, &mut conn);
                self.conns.insert(ch, conn);
            }
        }
        // Commands still queued reach their application (or `Sessions::undelivered`),
        // never the floor.
        while let Ok((id, command)) = self.inbox.commands.try_recv() {
            self.command(id, command);
        }
        self.revisit(now);
        self.commit_group();
        // Say goodbye on the wire.
        while self.transmit(now) {}
        // A session goes back with no batch in flight: wait for the store, within reason;
        // a batch still unconfirmed then counts as failed, and the session emits it again
        // wherever it is driven next (its operations are idempotent).
        let deadline = tokio::time::Instant::now() + SHUTDOWN_COMMIT_WAIT;
        while !self.commit.zombies.is_empty() {
            match tokio::time::timeout_at(deadline, self.commit.rx.recv()).await {
                Ok(Some((conns, result))) => self.committed(conns, result),
                Ok(None) | Err(_) => break,
            }
        }
        let zombies: Vec<_> = self.commit.zombies.drain().map(|(_, live)| live).collect();
        for mut live in zombies {
            if let Some(batch) = live.in_flight {
                live.confirm(batch, false);
            }
            self.give_back(*live, Some(Closed::Shutdown));
        }
    }
}
