//! Routing pairing runs: a connection without a client certificate, and the operator's
//! decisions that move waiting runs on.

use super::*;

/// Pairing on this endpoint: the responder, the per-address limit on starts, and the
/// operator's decisions.
pub(super) struct PairingRuns {
    pub(super) responder: Option<Arc<dyn PairingResponder>>,
    pub(super) starts: PairingStarts,
    pub(super) decisions: Option<watch::Receiver<u64>>,
}

impl PairingRuns {
    pub(super) fn new(responder: Option<Arc<dyn PairingResponder>>, starts: PairingStarts) -> Self {
        let decisions = responder.as_ref().map(|p| {
            let mut d = p.decisions();
            d.borrow_and_update();
            d
        });
        Self {
            responder,
            starts,
            decisions,
        }
    }
}

impl<S, H> Task<S, H>
where
    S: Session<Buf = Box<[u8]>> + Bound + Send + 'static,
    H: Sessions<S>,
{
    /// A pairing connection's reads and writes; closes it when the run is over or the
    /// peer is not pairing.
    pub(super) fn pairing_io(
        &mut self,
        now: StdInstant,
        conn: &mut Conn<S, H::App>,
        input: bool,
        lost: bool,
    ) {
        let Some(responder) = self.pairing.responder.as_ref() else {
            return;
        };
        let Stage::Pairing(p) = &mut conn.stage else {
            return;
        };
        if lost {
            p.closed(&mut self.lender);
            conn.stage = Stage::Closing;
            return;
        }
        p.unread |= input;
        let driven = p.drive(
            &mut conn.quic,
            now,
            responder,
            &self.pairing.starts,
            &mut self.lender,
        );
        if let Err(NotPairing(reason)) = driven {
            p.closed(&mut self.lender);
            conn.refuse(
                now,
                HandshakeFailure::Identity,
                &ErrorCode::Unauthorized,
                reason,
            );
        }
    }

    /// An operator decided: every pairing run waiting for it moves on.
    pub(super) fn decided(&mut self) {
        let waiting: Vec<ConnectionHandle> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.stage, Stage::Pairing(_)))
            .map(|(ch, _)| *ch)
            .collect();
        for ch in waiting {
            if let Some(conn) = self.conns.get_mut(&ch) {
                if let Stage::Pairing(p) = &mut conn.stage {
                    p.on_decision();
                }
                mark(&mut self.dirty, ch, conn);
            }
        }
    }
}
