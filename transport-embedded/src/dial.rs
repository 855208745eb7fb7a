//! How a node reaches the daemon: a [`Dialer`] opens a TCP connection to an address and
//! hands it over as a [`Connection`] whose reader and writer run side by side. On a board
//! that is [`TcpDialer`] over an embassy-net stack; tests dial over the host's sockets.

use core::net::SocketAddrV4;

use embassy_net::Stack;
use embassy_net::tcp::{ConnectError, TcpReader, TcpSocket, TcpWriter};
use embassy_time::{Duration, with_timeout};
use embedded_io_async::{Read, Write};

/// One TCP connection to the daemon.
// Executors on microcontrollers are single-threaded: the futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Connection {
    type Reader<'r>: Read
    where
        Self: 'r;
    type Writer<'w>: Write
    where
        Self: 'w;

    /// The connection's two halves, used at the same time by one reader and one writer.
    fn split(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>);

    /// Ends the connection after what was written (a FIN, not a reset), waiting at most
    /// a short while for the peer to take it.
    async fn close(self);
}

/// Why the daemon could not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialError {
    /// The address is not one this dialer can reach (a name where only IPv4 literals
    /// are resolved, say).
    Unresolvable,
    /// The TCP connection was refused or timed out.
    Unreachable,
    /// The network is not up.
    NoRoute,
}

impl core::error::Error for DialError {}

impl core::fmt::Display for DialError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            DialError::Unresolvable => "the daemon address cannot be resolved",
            DialError::Unreachable => "the daemon did not accept the TCP connection",
            DialError::NoRoute => "no route to the daemon",
        })
    }
}

/// Opens TCP connections to the daemon.
#[allow(async_fn_in_trait)]
pub trait Dialer {
    type Connection<'c>: Connection
    where
        Self: 'c;

    /// Connects to `daemon` (`host:port`, as stored in the identity or carried by a
    /// pairing URI).
    async fn dial(&mut self, daemon: &str) -> Result<Self::Connection<'_>, DialError>;
}

/// A dial that did not connect within its time limit.
pub(crate) enum DialFailed {
    Refused(DialError),
    TimedOut,
}

/// Dials `daemon` within `limit`; returns the connection and what is left of `limit`
/// for the TLS handshake (TCP connect and handshake share one time limit).
pub(crate) async fn dial_within<'d, D: Dialer>(
    dialer: &'d mut D,
    daemon: &str,
    limit: Duration,
) -> Result<(D::Connection<'d>, Duration), DialFailed> {
    let started = embassy_time::Instant::now();
    match embassy_time::with_timeout(limit, dialer.dial(daemon)).await {
        Ok(Ok(conn)) => {
            let remaining = limit
                .checked_sub(started.elapsed())
                .unwrap_or(Duration::from_ticks(0));
            Ok((conn, remaining))
        }
        Ok(Err(e)) => Err(DialFailed::Refused(e)),
        Err(_) => Err(DialFailed::TimedOut),
    }
}

/// Time allowed for the peer to take our last bytes and FIN before a socket is dropped.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Dials over an embassy-net stack, one connection at a time, in the socket buffers it
/// was given. Addresses are IPv4 literals (`192.0.2.1:7443`).
pub struct TcpDialer<'d> {
    stack: Stack<'d>,
    rx: &'d mut [u8],
    tx: &'d mut [u8],
    /// A connection with no progress for this long is aborted by the TCP stack (writes
    /// to a daemon that vanished fail instead of waiting forever).
    pub timeout: Duration,
    /// TCP keep-alive interval.
    pub keep_alive: Option<Duration>,
}

impl core::fmt::Debug for TcpDialer<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TcpDialer")
            .field("rx", &self.rx.len())
            .field("tx", &self.tx.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<'d> TcpDialer<'d> {
    /// A dialer on `stack` whose sockets use `rx` and `tx` as their TCP buffers (1 to 2
    /// KiB each is plenty: TLS records are at most about 1 KiB).
    pub fn new(stack: Stack<'d>, rx: &'d mut [u8], tx: &'d mut [u8]) -> Self {
        Self {
            stack,
            rx,
            tx,
            timeout: Duration::from_secs(30),
            keep_alive: Some(Duration::from_secs(10)),
        }
    }
}

impl Dialer for TcpDialer<'_> {
    type Connection<'c>
        = TcpSocket<'c>
    where
        Self: 'c;

    async fn dial(&mut self, daemon: &str) -> Result<TcpSocket<'_>, DialError> {
        let endpoint: SocketAddrV4 = daemon.parse().map_err(|_| DialError::Unresolvable)?;
        let mut socket = TcpSocket::new(self.stack, self.rx, self.tx);
        socket.set_timeout(Some(self.timeout));
        socket.set_keep_alive(self.keep_alive);
        socket.connect(endpoint).await.map_err(|e| match e {
            ConnectError::NoRoute => DialError::NoRoute,
            ConnectError::InvalidState | ConnectError::ConnectionReset | ConnectError::TimedOut => {
                DialError::Unreachable
            }
        })?;
        Ok(socket)
    }
}

impl Connection for TcpSocket<'_> {
    type Reader<'r>
        = TcpReader<'r>
    where
        Self: 'r;
    type Writer<'w>
        = TcpWriter<'w>
    where
        Self: 'w;

    fn split(&mut self) -> (TcpReader<'_>, TcpWriter<'_>) {
        TcpSocket::split(self)
    }

    async fn close(mut self) {
        TcpSocket::close(&mut self);
        if with_timeout(CLOSE_LINGER, self.flush()).await.is_err() {
            self.abort();
            let _ = with_timeout(CLOSE_LINGER, self.flush()).await;
        }
    }
}
