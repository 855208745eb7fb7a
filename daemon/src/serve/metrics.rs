//! Prometheus metrics, served on `/metrics` when `--metrics ADDR` is given.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::runtime::Runtime;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Transport {
    transport: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Failure {
    transport: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Flow {
    transport: String,
    direction: String,
}

/// The daemon's counters.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Family<Transport, Gauge>,
    connections_total: Family<Transport, Counter>,
    calls: Family<State, Counter>,
    events: Counter,
    nodes_online: Gauge,
    nodes_known: Gauge,
    calls_open: Gauge,
    handshake_failures: Family<Failure, Counter>,
    frames: Family<Flow, Counter>,
    bytes: Family<Flow, Counter>,
    /// The transports' counters as last exported (counters advance by the difference).
    last: std::sync::Mutex<[transport_tokio::stats::Snapshot; 2]>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tern");
        let connections = Family::<Transport, Gauge>::default();
        let connections_total = Family::<Transport, Counter>::default();
        let calls = Family::<State, Counter>::default();
        let events = Counter::default();
        let nodes_online = Gauge::default();
        let nodes_known = Gauge::default();
        let calls_open = Gauge::default();
        let handshake_failures = Family::<Failure, Counter>::default();
        let frames = Family::<Flow, Counter>::default();
        let bytes = Family::<Flow, Counter>::default();
        registry.register("connections", "Open node connections", connections.clone());
        registry.register(
            "connections_opened",
            "Node connections accepted",
            connections_total.clone(),
        );
        registry.register("calls_finished", "Calls by final state", calls.clone());
        registry.register(
            "events_received",
            "Events received from nodes",
            events.clone(),
        );
        registry.register("nodes_online", "Nodes connected now", nodes_online.clone());
        registry.register("nodes_known", "Nodes the daemon knows", nodes_known.clone());
        registry.register("calls_open", "Calls not yet final", calls_open.clone());
        registry.register(
            "handshake_failures",
            "Connections refused before carrying a session, by reason",
            handshake_failures.clone(),
        );
        registry.register("frames", "Node-plane frames", frames.clone());
        registry.register("bytes", "Node-plane frame bytes", bytes.clone());
        Self {
            registry,
            connections,
            connections_total,
            calls,
            events,
            nodes_online,
            nodes_known,
            calls_open,
            handshake_failures,
            frames,
            bytes,
            last: std::sync::Mutex::new(Default::default()),
        }
    }

    /// Brings the transports' counters into the registry.
    fn sync_transports(&self) {
        use transport_tokio::host::TransportKind;
        use transport_tokio::stats::{HandshakeFailure, snapshot};
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (i, (kind, name)) in [(TransportKind::Quic, "quic"), (TransportKind::Tcp, "tcp")]
            .into_iter()
            .enumerate()
        {
            let now = snapshot(kind);
            let Some(before) = last.get_mut(i) else {
                continue;
            };
            let t = Transport {
                transport: name.into(),
            };
            self.connections
                .get_or_create(&t)
                .set(i64::try_from(now.open).unwrap_or(i64::MAX));
            self.connections_total
                .get_or_create(&t)
                .inc_by(now.opened.saturating_sub(before.opened));
            for (j, why) in HandshakeFailure::ALL.iter().enumerate() {
                let (n, b) = (
                    now.failures.get(j).copied().unwrap_or(0),
                    before.failures.get(j).copied().unwrap_or(0),
                );
                self.handshake_failures
                    .get_or_create(&Failure {
                        transport: name.into(),
                        reason: why.as_str().into(),
                    })
                    .inc_by(n.saturating_sub(b));
            }
            for (direction, f, fb, by, bb) in [
                (
                    "in",
                    now.frames_in,
                    before.frames_in,
                    now.bytes_in,
                    before.bytes_in,
                ),
                (
                    "out",
                    now.frames_out,
                    before.frames_out,
                    now.bytes_out,
                    before.bytes_out,
                ),
            ] {
                let flow = Flow {
                    transport: name.into(),
                    direction: direction.into(),
                };
                self.frames
                    .get_or_create(&flow)
                    .inc_by(f.saturating_sub(fb));
                self.bytes
                    .get_or_create(&flow)
                    .inc_by(by.saturating_sub(bb));
            }
            *before = now;
        }
    }

    pub fn call_finished(&self, state: &str) {
        self.calls
            .get_or_create(&State {
                state: state.into(),
            })
            .inc();
    }

    pub fn event(&self) {
        self.events.inc();
    }

    /// The text exposition, with the runtime's gauges read now.
    pub fn render(&self, runtime: &Runtime) -> String {
        self.sync_transports();
        let (known, online) = runtime.counts();
        self.nodes_known
            .set(i64::try_from(known).unwrap_or(i64::MAX));
        self.nodes_online
            .set(i64::try_from(online).unwrap_or(i64::MAX));
        self.calls_open
            .set(i64::try_from(runtime.open_calls()).unwrap_or(i64::MAX));
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` on `addr`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    runtime: Arc<Runtime>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let (metrics, runtime) = (metrics.clone(), runtime.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sock.read(&mut buf),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let request = String::from_utf8_lossy(&buf[..n]);
                let response = if request.starts_with("GET /metrics ") {
                    let body = metrics.render(&runtime);
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .into()
                };
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_family() {
        let m = Metrics::new();
        m.call_finished("succeeded");
        m.event();
        m.sync_transports();
        let mut out = String::new();
        let _ = encode(&mut out, &m.registry);
        for name in [
            "tern_connections",
            "tern_handshake_failures_total",
            "tern_frames_total",
            "tern_bytes_total",
            "tern_calls_finished_total",
            "tern_events_received_total",
        ] {
            assert!(out.contains(name), "{name} missing from\n{out}");
        }
        assert!(out.contains("reason=\"revoked\""));
    }
}
