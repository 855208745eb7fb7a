//! Serving a TCP + TLS connection with a session lent by the application's
//! [`Sessions`], as the QUIC endpoint does: one registry serves both transports.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use protocol_core::session::{DaemonSession, Session};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::listener::DeviceConnection;
use super::refuse::{close_after, error_frame};
use crate::driver::{Application, Driver, Ended, Journal};
use crate::host::{
    Bound, Closed, Commands, Peer, Route, Sessions, TransportKind, next_connection_id,
};
use crate::journal::JournalStore;
use crate::pool::StoragePool;
use crate::tls::{Fingerprint, RevocationWatch};

/// Commands queued per TCP connection.
const COMMAND_QUEUE: usize = 256;

type DSession = DaemonSession<Box<[u8]>>;

impl DeviceConnection {
    /// Serves this device with the session `sessions` lends it, closing the connection
    /// as soon as the device or its certificate is revoked; the session goes back to
    /// `sessions` when the connection ends. A refusal from `sessions` reaches the peer
    /// as an `Error` frame.
    pub async fn serve_with<H>(
        self,
        sessions: H,
        journal: Arc<dyn JournalStore>,
        pool: StoragePool,
    ) -> Closed
    where
        H: Sessions<DSession>,
    {
        let peer = Peer {
            addr: self.peer_addr(),
            transport: TransportKind::Tcp,
            device_id: self.device_id().to_owned(),
            fingerprint: self.fingerprint(),
        };
        let watch = RevocationWatch::new(
            self.revocation.clone(),
            self.fingerprint(),
            self.device_id(),
        );
        let (stream, permit) = self.into_parts();
        let closed = serve(stream, peer, sessions, journal, pool, Some(watch)).await;
        drop(permit);
        closed
    }
}

/// Drives one connection of either role with a session lent by `sessions`, and gives
/// it back at the end. On the daemon the session must be bound to `peer.device_id`.
pub async fn serve<S, H, IO>(
    mut io: IO,
    peer: Peer,
    mut sessions: H,
    journal: Arc<dyn JournalStore>,
    pool: StoragePool,
    revocation: Option<RevocationWatch>,
) -> Closed
where
    S: Session<Buf = Box<[u8]>> + Bound,
    H: Sessions<S>,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<<H::App as Application<S>>::Command>(COMMAND_QUEUE);
    let commands = Commands {
        conn: next_connection_id(),
        route: Route::Direct(tx),
    };
    let opened = match sessions.open(&peer, commands) {
        Ok(opened) => opened,
        Err(r) => {
            close_after(&mut io, &error_frame(r.code, &r.reason)).await;
            return Closed::Lost {
                reason: format!("refused: {}", r.reason),
            };
        }
    };
    let mut session = opened.session;
    let mut app = opened.app;
    crate::stats::opened(peer.transport);
    if let Err(denied) = crate::admission::bound_to(&session, &peer.device_id) {
        super::listener::deny(&mut io, &denied).await;
        let how = Closed::Lost {
            reason: "session bound to another node than the certificate".into(),
        };
        sessions.closed(&peer, session, app, how.clone());
        return how;
    }
    let journal = Journal {
        store: journal,
        key: opened.journal_key,
    };
    let mut driver = Driver::new(&mut session, &pool, journal, &mut app).with_commands(&mut rx);
    if let Some(watch) = revocation {
        driver = driver.with_revocation(watch);
    }
    let ran = driver.run(&mut io).await;
    crate::stats::closed(peer.transport);
    let how = match ran {
        Ok(Ended::Closed) => Closed::BySession,
        Ok(Ended::PeerClosed) => Closed::Lost {
            reason: "the peer closed the connection".into(),
        },
        Ok(Ended::Revoked) => Closed::Revoked,
        Err(e) => Closed::Lost {
            reason: io_reason(&e),
        },
    };
    sessions.closed(&peer, session, app, how.clone());
    how
}

fn io_reason(e: &io::Error) -> String {
    e.to_string()
}

/// The peer a node sees when it dialed the daemon at `addr` with pin `pin`.
pub fn daemon_peer(addr: SocketAddr, pin: Fingerprint) -> Peer {
    Peer {
        addr,
        transport: TransportKind::Tcp,
        device_id: String::new(),
        fingerprint: pin,
    }
}
