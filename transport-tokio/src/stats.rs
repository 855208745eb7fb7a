//! Counters both transports keep, for the daemon's metrics: connections, handshake
//! failures by reason, frames and bytes each way. Process-wide and lock-free.

use std::sync::atomic::{AtomicU64, Ordering};

use protocol_core::pump::Counts;

use crate::host::TransportKind;

/// Why a connection did not get past its handshake and checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The handshake did not finish in time.
    Timeout,
    /// TLS failed: a refused or revoked certificate, no common parameters, a broken peer.
    Tls,
    /// The handshake finished without the ALPN `tern/1`.
    Alpn,
    /// The certificate is valid but unusable here (no device id, the session bound to
    /// another node, no certificate where one is required).
    Identity,
    /// Revoked between the handshake's check and the hand-off.
    Revoked,
    /// Over the connection cap.
    Overloaded,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 6] = [
        Self::Timeout,
        Self::Tls,
        Self::Alpn,
        Self::Identity,
        Self::Revoked,
        Self::Overloaded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Tls => "tls",
            Self::Alpn => "alpn",
            Self::Identity => "identity",
            Self::Revoked => "revoked",
            Self::Overloaded => "overloaded",
        }
    }
}

#[derive(Debug, Default)]
struct PerTransport {
    open: AtomicU64,
    opened: AtomicU64,
    failures: [AtomicU64; 6],
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// A snapshot of one transport's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Node-plane connections carrying a session now.
    pub open: u64,
    /// Node-plane connections that got a session, ever.
    pub opened: u64,
    /// Handshake failures, in [`HandshakeFailure::ALL`] order.
    pub failures: [u64; 6],
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

static QUIC: PerTransport = PerTransport::new();
static TCP: PerTransport = PerTransport::new();

impl PerTransport {
    const fn new() -> Self {
        Self {
            open: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            failures: [const { AtomicU64::new(0) }; 6],
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }
}

fn of(t: TransportKind) -> &'static PerTransport {
    match t {
        TransportKind::Quic => &QUIC,
        TransportKind::Tcp => &TCP,
    }
}

pub(crate) fn opened(t: TransportKind) {
    let s = of(t);
    s.open.fetch_add(1, Ordering::Relaxed);
    s.opened.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn closed(t: TransportKind) {
    let _ = of(t)
        .open
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
}

pub(crate) fn failed(t: TransportKind, why: HandshakeFailure) {
    let i = HandshakeFailure::ALL
        .iter()
        .position(|f| *f == why)
        .unwrap_or(0);
    if let Some(c) = of(t).failures.get(i) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Frames and bytes a connection's pump moved since it was last asked.
pub(crate) fn add(t: TransportKind, counts: Counts) {
    if counts == Counts::default() {
        return;
    }
    let s = of(t);
    s.frames_in.fetch_add(counts.frames_in, Ordering::Relaxed);
    s.bytes_in.fetch_add(counts.bytes_in, Ordering::Relaxed);
    s.frames_out.fetch_add(counts.frames_out, Ordering::Relaxed);
    s.bytes_out.fetch_add(counts.bytes_out, Ordering::Relaxed);
}

/// The counters of transport `t` now.
pub fn snapshot(t: TransportKind) -> Snapshot {
    let s = of(t);
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Snapshot {
        open: load(&s.open),
        opened: load(&s.opened),
        failures: std::array::from_fn(|i| s.failures.get(i).map_or(0, load)),
        frames_in: load(&s.frames_in),
        frames_out: load(&s.frames_out),
        bytes_in: load(&s.bytes_in),
        bytes_out: load(&s.bytes_out),
    }
}
