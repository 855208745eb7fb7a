//! Admission: a new connection within the cap or refused with a reason, and the peer
//! checked once its handshake is done (certificate, revocation, the session it is lent).

use super::*;

/// Connections over the cap being refused at once (each costs a handshake); beyond
/// this they are refused during the handshake with `CONNECTION_REFUSED`.
const MAX_REFUSING: usize = 64;

/// What decides whether a connection is served: the cap and the revocation set.
pub(super) struct Admission {
    /// The daemon side: peers need a certificate naming a device.
    pub(super) server: bool,
    pub(super) revocation: Option<Arc<dyn Revocation>>,
    /// Wakes the task when the revocation set changes.
    pub(super) notices: Option<watch::Receiver<u64>>,
    /// Connections over the cap being refused now.
    pub(super) refusing: usize,
    /// Connections counted against the cap (shared with the handles).
    pub(super) open: Arc<AtomicUsize>,
}

impl<S, H> Task<S, H>
where
    S: Session<Buf = Box<[u8]>> + Bound + Send + 'static,
    H: Sessions<S>,
{
    pub(super) fn incoming(&mut self, now: StdInstant, incoming: quinn_proto::Incoming) {
        let mut buf = Vec::new();
        let over = self.admission.open.load(Ordering::Relaxed) >= self.limits.max_connections;
        if over && self.admission.refusing >= MAX_REFUSING {
            let t = self.endpoint.refuse(incoming, &mut buf);
            self.send_now(&t, &buf);
            return;
        }
        match self.endpoint.accept(incoming, now, &mut buf, None) {
            Ok((ch, quic)) => {
                let refuse =
                    over.then(|| Refusal::new(ErrorCode::Overloaded, "connection limit reached"));
                if over {
                    self.admission.refusing = self.admission.refusing.saturating_add(1);
                } else {
                    self.admission.open.fetch_add(1, Ordering::Relaxed);
                }
                let stage = Stage::Handshaking {
                    refuse,
                    reply: None,
                };
                let deadline = now + self.limits.handshake_timeout;
                let conn = Conn::handshaking(quic, stage, over, deadline);
                self.ids.insert(conn.id, ch);
                self.conns.insert(ch, conn);
                if let Some(conn) = self.conns.get_mut(&ch) {
                    mark(&mut self.dirty, ch, conn);
                }
            }
            Err(e) => {
                if let Some(t) = e.response {
                    self.send_now(&t, &buf);
                }
            }
        }
    }

    pub(super) fn connected(&mut self, now: StdInstant, conn: &mut Conn<S, H::App>) {
        conn.handshake_deadline = None;
        let Stage::Handshaking { refuse, reply } = &mut conn.stage else {
            return;
        };
        let (refuse, reply) = (refuse.take(), reply.take());
        if let Some(r) = refuse {
            conn.refuse(now, HandshakeFailure::Overloaded, &r.code, &r.reason);
            return;
        }
        let certs = conn
            .quic
            .crypto_session()
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok());
        let first = certs.as_ref().and_then(|c| c.first());
        let addr = conn.quic.remote_address();
        let peer = if self.admission.server {
            let Some(cert) = first else {
                // Pairing only, when this endpoint pairs; the node plane needs a
                // certificate.
                match self
                    .pairing
                    .responder
                    .as_ref()
                    .map(|_| PairingConn::new(addr))
                {
                    Some(p) => conn.stage = Stage::Pairing(Box::new(p)),
                    None => conn.refuse(
                        now,
                        HandshakeFailure::Identity,
                        &ErrorCode::Unauthorized,
                        "a client certificate is required",
                    ),
                }
                return;
            };
            let revocation = self.admission.revocation.as_deref();
            let (device_id, fingerprint) = match crate::admission::device(cert, revocation) {
                Ok(device) => device,
                Err(denied) => return conn.deny(now, &denied),
            };
            Peer {
                addr,
                transport: TransportKind::Quic,
                device_id,
                fingerprint,
            }
        } else {
            let fingerprint = first.map_or(Fingerprint([0; 32]), |c| Fingerprint::of(c));
            Peer {
                addr,
                transport: TransportKind::Quic,
                device_id: String::new(),
                fingerprint,
            }
        };
        let commands = Commands {
            conn: conn.id,
            route: Route::Tagged(self.inbox.commands_tx.clone()),
        };
        let opened = match self.sessions.open(&peer, commands) {
            Ok(opened) => opened,
            Err(r) => {
                let why = if r.code == ErrorCode::Overloaded {
                    HandshakeFailure::Overloaded
                } else {
                    HandshakeFailure::Identity
                };
                conn.refuse(now, why, &r.code, &r.reason);
                if let Some(reply) = reply {
                    let _ = reply.send(Err(Closed::Lost {
                        reason: format!("refused: {}", r.reason),
                    }));
                }
                return;
            }
        };
        if self.admission.server
            && let Err(denied) = crate::admission::bound_to(&opened.session, &peer.device_id)
        {
            conn.deny(now, &denied);
            self.sessions.closed(
                &peer,
                opened.session,
                opened.app,
                Closed::Lost {
                    reason: "session bound to another node than the certificate".into(),
                },
            );
            return;
        }
        let mut live = Box::new(Live::new(peer, opened));
        if !self.admission.server {
            // The node opens the one stream its session rides on.
            if let Some(id) = conn.quic.streams().open(Dir::Bi) {
                live.stream = Some(id);
                live.session.handle_connected(clock::now());
            }
        }
        conn.stage = Stage::Live(live);
        stats::opened(TransportKind::Quic);
        if let Some(reply) = reply {
            let _ = reply.send(Ok(conn.id));
        }
    }
}
