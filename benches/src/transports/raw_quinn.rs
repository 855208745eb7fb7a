//! The baseline: the `quinn` crate used the usual way — an endpoint per side, a task per
//! connection, one bidirectional stream per connection carrying length-prefixed frames
//! (4-byte big-endian length, then the payload: the same framing as Tern's), read with
//! `read_exact` and written with `write_all`. Raw payloads of the same sizes as the
//! sessions' (64 B round trips, 64 KiB bulk frames), so the baseline does the least work.
//!
//! The stream's first byte picks what the server does with it: echo every frame, or
//! count its bytes and drop it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, ReadExactError, TransportConfig, VarInt};
use tokio::task::JoinHandle;
use transport_tokio::quic::QuicLimits;

use super::BenchError;
use super::certs::DaemonIdentity;

/// The stream's frames are echoed back.
pub const MODE_ECHO: u8 = b'E';
/// The stream's frames are counted and dropped.
pub const MODE_SINK: u8 = b'S';
/// Largest frame payload the server accepts (the sessions' default).
const MAX_FRAME: usize = 512 * 1024;

/// The same transport limits the QUIC driver runs under (`QuicLimits::default()`): idle
/// 30 s, keep-alive 5 s, 32 bidirectional streams, the same flow-control windows.
pub fn transport_config() -> Result<Arc<TransportConfig>, BenchError> {
    let limits = QuicLimits::default();
    let idle =
        IdleTimeout::try_from(limits.idle_timeout).map_err(BenchError::context("idle timeout"))?;
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(limits.keep_alive))
        .max_concurrent_bidi_streams(VarInt::from_u32(limits.max_bidi_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(limits.stream_window))
        .receive_window(VarInt::from_u32(limits.stream_window.saturating_mul(2)))
        .datagram_receive_buffer_size(None);
    Ok(Arc::new(t))
}

/// A frame: the length prefix and `len` bytes of payload.
pub fn frame(len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(4 + len);
    f.extend_from_slice(&(len as u32).to_be_bytes());
    f.extend((0..len).map(|i| i as u8));
    f
}

/// A `quinn` server endpoint on loopback with the daemon's TLS configuration.
pub struct Server {
    pub addr: SocketAddr,
    received: Arc<AtomicU64>,
    live: Arc<AtomicUsize>,
    endpoint: quinn::Endpoint,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("live", &self.live())
            .finish_non_exhaustive()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Starts serving on `127.0.0.1:0`. Must be called inside a tokio runtime.
    pub fn start(identity: &DaemonIdentity) -> Result<Self, BenchError> {
        let (tls, _revocation) = identity.server_tls()?;
        let crypto = QuicServerConfig::try_from(tls).map_err(BenchError::context("quinn TLS"))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport_config()?).migration(true);
        let endpoint = quinn::Endpoint::server(config, ([127, 0, 0, 1], 0).into())
            .map_err(BenchError::context("quinn server endpoint"))?;
        let addr = endpoint.local_addr()?;
        let received = Arc::new(AtomicU64::new(0));
        let live = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (endpoint, received, live) = (endpoint.clone(), received.clone(), live.clone());
            async move {
                while let Some(incoming) = endpoint.accept().await {
                    tokio::spawn(serve_connection(incoming, received.clone(), live.clone()));
                }
            }
        });
        Ok(Self {
            addr,
            received,
            live,
            endpoint,
            task,
        })
    }

    /// Payload bytes of the frames sink streams received.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub fn shutdown(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"bench over");
    }
}

async fn serve_connection(
    incoming: quinn::Incoming,
    received: Arc<AtomicU64>,
    live: Arc<AtomicUsize>,
) {
    let Ok(conn) = incoming.await else {
        return;
    };
    live.fetch_add(1, Ordering::Relaxed);
    if let Ok((send, recv)) = conn.accept_bi().await {
        let _ = serve_stream(send, recv, &received).await;
    }
    conn.closed().await;
    live.fetch_sub(1, Ordering::Relaxed);
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    received: &AtomicU64,
) -> Result<(), BenchError> {
    let mut mode = [0u8; 1];
    recv.read_exact(&mut mode)
        .await
        .map_err(BenchError::context("mode byte"))?;
    let echo = match mode[0] {
        MODE_ECHO => true,
        MODE_SINK => false,
        other => return Err(BenchError(format!("unknown stream mode {other:#x}"))),
    };
    loop {
        let mut head = [0u8; 4];
        match recv.read_exact(&mut head).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(0)) => return Ok(()),
            Err(e) => return Err(BenchError(format!("frame length: {e}"))),
        }
        let len = u32::from_be_bytes(head) as usize;
        if len > MAX_FRAME {
            return Err(BenchError(format!(
                "a frame of {len} bytes is over the limit"
            )));
        }
        // A buffer per frame, freed after it, so an idle connection holds none.
        let mut frame = vec![0u8; 4 + len];
        frame[..4].copy_from_slice(&head);
        recv.read_exact(&mut frame[4..])
            .await
            .map_err(BenchError::context("frame payload"))?;
        if echo {
            send.write_all(&frame)
                .await
                .map_err(BenchError::context("echo"))?;
        } else {
            received.fetch_add(len as u64, Ordering::Relaxed);
        }
    }
}

/// A `quinn` client endpoint; one connection per node, each with its own certificate.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: quinn::Endpoint,
}

impl Client {
    /// A client endpoint on `127.0.0.1:0`. Must be called inside a tokio runtime.
    pub fn new() -> Result<Self, BenchError> {
        let endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into())
            .map_err(BenchError::context("quinn client endpoint"))?;
        Ok(Self { endpoint })
    }

    /// Connects with `tls` (a node's configuration), opens the stream and names its mode.
    pub async fn open(
        &self,
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        mode: u8,
    ) -> Result<RawStream, BenchError> {
        let crypto = QuicClientConfig::try_from(tls).map_err(BenchError::context("quinn TLS"))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport_config()?);
        let conn = self
            .endpoint
            .connect_with(config, addr, "127.0.0.1")
            .map_err(BenchError::context("quinn connect"))?
            .await
            .map_err(BenchError::context("quinn handshake"))?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(BenchError::context("open stream"))?;
        send.write_all(&[mode])
            .await
            .map_err(BenchError::context("mode byte"))?;
        Ok(RawStream { conn, send, recv })
    }

    pub fn close(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"bench over");
    }
}

/// A connection's one stream.
#[derive(Debug)]
pub struct RawStream {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl RawStream {
    /// Writes a whole frame (prefix included).
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), BenchError> {
        self.send
            .write_all(frame)
            .await
            .map_err(BenchError::context("write frame"))
    }

    /// Writes `frame` and reads its echo into `reply` (as long as `frame`), checking it
    /// came back unchanged.
    pub async fn round_trip(&mut self, frame: &[u8], reply: &mut [u8]) -> Result<(), BenchError> {
        self.send(frame).await?;
        self.recv
            .read_exact(reply)
            .await
            .map_err(BenchError::context("read echo"))?;
        if reply != frame {
            return Err(BenchError("the echo differs from the frame sent".into()));
        }
        Ok(())
    }

    pub fn close(&self) {
        self.conn.close(VarInt::from_u32(0), b"done");
    }
}
