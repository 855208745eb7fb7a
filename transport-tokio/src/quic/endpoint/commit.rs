//! Group commit of the pass's journal batches, and the sessions whose connection ended
//! while a batch of theirs was in flight (zombies) until the store confirms it.

use super::*;

/// The pass's journal batches, the commits in flight, and the sessions waiting on them.
pub(super) struct Commits<S: Session, A: Application<S>> {
    pub(super) group: Group,
    pub(super) tx: mpsc::UnboundedSender<Committed>,
    pub(super) rx: mpsc::UnboundedReceiver<Committed>,
    /// Sessions whose connection is gone but whose journal batch is still in flight;
    /// they go back to the application once it is confirmed.
    pub(super) zombies: HashMap<u64, Box<Live<S, A>>>,
}

impl<S: Session, A: Application<S>> Commits<S, A> {
    pub(super) fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            group: Group::default(),
            tx,
            rx,
            zombies: HashMap::new(),
        }
    }
}

impl<S, H> Task<S, H>
where
    S: Session<Buf = Box<[u8]>> + Bound + Send + 'static,
    H: Sessions<S>,
{
    pub(super) fn commit_group(&mut self) {
        if self.commit.group.batches.is_empty() {
            return;
        }
        let group = std::mem::take(&mut self.commit.group);
        let commit = self.journal.commit(group.batches);
        let tx = self.commit.tx.clone();
        let conns = group.conns;
        tokio::spawn(async move {
            let result = commit.await;
            let _ = tx.send((conns, result));
        });
    }

    pub(super) fn committed(
        &mut self,
        conns: Vec<(u64, BatchId)>,
        result: Result<(), JournalError>,
    ) {
        let committed = result.is_ok();
        for (id, batch) in conns {
            if let Some(mut live) = self.commit.zombies.remove(&id) {
                live.confirm(batch, committed);
                live.settle(id, &mut self.lender, &mut self.commit.group);
                if live.in_flight.is_some() {
                    self.commit.zombies.insert(id, live);
                } else {
                    self.give_back(*live, None);
                }
                continue;
            }
            let Some(&ch) = self.ids.get(&id) else {
                continue;
            };
            if let Some(conn) = self.conns.get_mut(&ch) {
                if let Stage::Live(live) = &mut conn.stage {
                    live.confirm(batch, committed);
                }
                mark(&mut self.dirty, ch, conn);
            }
        }
        self.revisit(StdInstant::now());
        self.commit_group();
    }

    /// The connection ended: the session is told, and goes back to the application
    /// once no journal batch of it is in flight.
    pub(super) fn end(&mut self, conn: &mut Conn<S, H::App>, how: Closed) {
        match std::mem::replace(&mut conn.stage, Stage::Closing) {
            Stage::Pairing(mut p) => p.closed(&mut self.lender),
            Stage::Live(mut live) => {
                stats::closed(TransportKind::Quic);
                self.finish_live(conn.id, &mut live, how);
                if live.in_flight.is_some() {
                    self.commit.zombies.insert(conn.id, live);
                } else {
                    self.give_back(*live, None);
                }
            }
            Stage::Handshaking { .. } | Stage::Closing => {}
        }
        if conn.counted {
            conn.counted = false;
            self.admission.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(super) fn finish_live(&mut self, id: u64, live: &mut Live<S, H::App>, how: Closed) {
        live.session.handle_disconnected(clock::now());
        live.settle(id, &mut self.lender, &mut self.commit.group);
        live.release(&mut self.lender);
        live.ended = Some(how);
    }

    /// A session with no batch in flight goes back to the application; `how` overrides
    /// how its connection ended.
    pub(super) fn give_back(&mut self, mut live: Live<S, H::App>, how: Option<Closed>) {
        live.release(&mut self.lender);
        let how = how.or(live.ended).unwrap_or(Closed::BySession);
        self.sessions
            .closed(&live.peer, live.session, live.app, how);
    }

    pub(super) fn remove(&mut self, mut conn: Conn<S, H::App>) {
        if matches!(conn.stage, Stage::Live(_) | Stage::Pairing(_)) {
            self.end(
                &mut conn,
                Closed::Lost {
                    reason: "connection drained".into(),
                },
            );
        }
        if conn.counted {
            self.admission.open.fetch_sub(1, Ordering::Relaxed);
        }
        if conn.over_cap {
            // Its refusal is done: the slot is free for the next one.
            self.admission.refusing = self.admission.refusing.saturating_sub(1);
        }
        self.ids.remove(&conn.id);
    }
}
