//! The TCP + TLS transport over real loopback sockets, with certificates made by rcgen.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chacha20::ChaCha20Rng;
use common::{
    Ca, Daemon, DaemonSetup, Node, NodeCommand, alert, answered_calls, node_config, read_until_end,
    received_events,
};
use protocol_core::pairing::{
    Abort, PAIRING_MAX_FRAME, PairingCode, PairingError, PairingMessage, Start, decode_pairing,
    encode_pairing,
};
use protocol_core::session::{
    CallState, CloseReason, Config, OwnedDaemonEvent, OwnedNodeEvent, OwnedOutcome,
};
use protocol_core::wire::{ErrorCode, PROTOCOL_VERSIONS, VersionRange};
use rand_core::SeedableRng;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use rustls::{AlertDescription, HandshakeKind};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transport_tokio::Ended;
use transport_tokio::pairing::{PairError, pair};
use transport_tokio::tcp::{Connector, ListenerConfig, MAX_RECORD};
use transport_tokio::tls::{Fingerprint, pairing_client_config};

fn peer_error(ev: &OwnedNodeEvent) -> Option<ErrorCode> {
    match ev {
        OwnedNodeEvent::Disconnected(CloseReason::PeerError(code)) => Some(*code),
        _ => None,
    }
}

/// (a) A paired node connects, registers, answers `echo`, streams an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_registers_answers_and_streams_events() {
    let mut daemon = Daemon::start(ListenerConfig::default()).await;
    let leaf = daemon.ca.leaf("node-a", false);
    let stream = Connector::new(leaf.client(daemon.pin()))
        .connect(daemon.addr)
        .await
        .unwrap();
    let node = Node::spawn(stream, "node-a", node_config());

    let caps = daemon
        .expect(|(id, ev)| match ev {
            OwnedDaemonEvent::Register { capabilities, .. } if id == "node-a" => Some(
                capabilities
                    .iter()
                    .map(|c| c.name.clone())
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .await;
    assert_eq!(caps, ["echo"]);
    let answer = daemon
        .expect(|(_, ev)| match ev {
            OwnedDaemonEvent::CallUpdate {
                state: CallState::Succeeded,
                outcome: Some(OwnedOutcome::Success(p)),
                ..
            } => Some(p.data.clone()),
            _ => None,
        })
        .await;
    assert_eq!(answer, br#"{"x":1}"#);

    node.commands
        .send(NodeCommand::SendEvent("temperature"))
        .await
        .unwrap();
    let name = daemon
        .expect(|(_, ev)| match ev {
            OwnedDaemonEvent::Event { name, .. } => Some(name.clone()),
            _ => None,
        })
        .await;
    assert_eq!(name, "temperature");

    node.commands.send(NodeCommand::Close).await.unwrap();
    assert_eq!(node.ended().await.unwrap(), Ended::Closed);
}

/// (b) A revoked node is refused at the handshake with the alert that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_node_is_refused_at_the_handshake() {
    let daemon = Daemon::start(ListenerConfig::default()).await;
    let by_device = daemon.ca.leaf("node-r", false);
    let by_cert = daemon.ca.leaf("node-s", false);
    daemon.revocation.revoke_device("node-r");
    daemon.revocation.revoke_certificate(by_cert.fingerprint());
    for leaf in [by_device, by_cert] {
        let connector = Connector::new(leaf.client(daemon.pin()));
        let e = match connector.connect(daemon.addr).await {
            // TLS 1.3: the client's side finishes first; the alert comes on the first read.
            Ok(mut stream) => read_until_end(&mut stream).await.1.unwrap_err(),
            Err(e) => e,
        };
        assert_eq!(alert(&e), Some(AlertDescription::CertificateRevoked), "{e}");
    }
}

/// (b) A node revoked while connected is closed, with `Error(Revoked)`, within a second;
/// revoking the certificate or the device both do it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_revoked_while_connected_is_closed_within_a_second() {
    let mut daemon = Daemon::start(ListenerConfig::default()).await;
    for (id, by_cert) in [("node-c", true), ("node-d", false)] {
        let leaf = daemon.ca.leaf(id, false);
        let stream = Connector::new(leaf.client(daemon.pin()))
            .connect(daemon.addr)
            .await
            .unwrap();
        let node = Node::spawn(stream, id, node_config());
        daemon
            .expect(|(who, ev)| {
                matches!(ev, OwnedDaemonEvent::Register { .. } if who == id).then_some(())
            })
            .await;

        let start = std::time::Instant::now();
        if by_cert {
            daemon.revocation.revoke_certificate(leaf.fingerprint());
        } else {
            daemon.revocation.revoke_device(id);
        }
        let mut node = node;
        let code = node.expect(peer_error).await;
        assert_eq!(code, ErrorCode::Revoked);
        // The node's session closes after the peer's error frame.
        assert_eq!(node.ended().await.unwrap(), Ended::Closed);
        let elapsed = start.elapsed();
        assert!(elapsed < Duration::from_secs(1), "closed after {elapsed:?}");
        let (who, ended) = daemon.ended.recv().await.unwrap();
        assert_eq!((who.as_str(), ended.unwrap()), (id, Ended::Revoked));
    }
}

/// (c) A node whose pin is not the daemon's server certificate refuses the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_server_pin_refuses_the_daemon() {
    let daemon = Daemon::start(ListenerConfig::default()).await;
    let leaf = daemon.ca.leaf("node-p", false);
    // Another certificate from the very same CA: a chain check would accept it.
    let other = daemon.ca.leaf("ternd", true).fingerprint();
    for pin in [Fingerprint([0; 32]), other] {
        let e = Connector::new(leaf.client(pin))
            .connect(daemon.addr)
            .await
            .unwrap_err();
        let inner = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
        assert_eq!(
            inner,
            Some(&rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure
            )),
            "{e}"
        );
    }
    // The right pin connects.
    Connector::new(leaf.client(daemon.pin()))
        .connect(daemon.addr)
        .await
        .unwrap();
}

/// (d) A certificate from another CA is refused: one whose issuer the daemon does not
/// know, and one from an impostor CA with the same name as the daemon's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() {
    let mut daemon = Daemon::start(ListenerConfig::default()).await;
    for (ca_name, expected) in [
        ("another CA", AlertDescription::UnknownCA),
        // Found by name, refused by its signature.
        ("tern test CA", AlertDescription::DecryptError),
    ] {
        let stranger = Ca::new(ca_name).leaf("node-a", false);
        let connector = Connector::new(stranger.client(daemon.pin()));
        let e = match connector.connect(daemon.addr).await {
            Ok(mut stream) => read_until_end(&mut stream).await.1.unwrap_err(),
            Err(e) => e,
        };
        assert_eq!(alert(&e), Some(expected), "{e}");
    }
    assert!(
        daemon.events.try_recv().is_err(),
        "nothing reached the node plane"
    );
}

/// (e) A node whose hello names another node's id gets `Error(Unauthorized)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_naming_another_node_is_unauthorized() {
    let daemon = Daemon::start(ListenerConfig::default()).await;
    let leaf = daemon.ca.leaf("node-e", false);
    let stream = Connector::new(leaf.client(daemon.pin()))
        .connect(daemon.addr)
        .await
        .unwrap();
    let mut node = Node::spawn(stream, "node-a", node_config());
    assert_eq!(node.expect(peer_error).await, ErrorCode::Unauthorized);
    // The node's session closes after the peer's error frame.
    assert_eq!(node.ended().await.unwrap(), Ended::Closed);
}

/// (f) A connection without a certificate is routed to pairing, and cannot use the
/// node plane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connection_pairs_only() {
    let mut daemon = Daemon::start(ListenerConfig::default()).await;
    let connector = Connector::new(pairing_client_config(Some(daemon.pin())).unwrap());

    // A pairing start reaches the pairing route, whole.
    let mut stream = connector.connect(daemon.addr).await.unwrap();
    let share_p = [4u8; 65];
    let start = PairingMessage::Start(Start {
        version: 1,
        code_id: 7,
        share_p: &share_p,
    });
    let mut frame = vec![0u8; PAIRING_MAX_FRAME as usize];
    let n = encode_pairing(&start, PAIRING_MAX_FRAME, &mut frame).unwrap();
    stream.write_all(&frame[..n]).await.unwrap();
    stream.flush().await.unwrap();
    let conn = tokio::time::timeout(common::WAIT, daemon.pairing.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(decode_pairing(conn.first_frame()).unwrap(), start);

    // A node-plane hello without a certificate is refused.
    let stream = connector.connect(daemon.addr).await.unwrap();
    let mut node = Node::spawn(stream, "node-a", node_config());
    assert_eq!(node.expect(peer_error).await, ErrorCode::Unauthorized);
    // The node's session closes after the peer's error frame.
    assert_eq!(node.ended().await.unwrap(), Ended::Closed);
    assert!(
        daemon.events.try_recv().is_err(),
        "nothing reached the node plane"
    );
}

/// (g) An oversize frame gets `Error(FrameTooLarge)` and a close, while another
/// connection keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_is_refused_while_others_are_served() {
    let mut daemon = Daemon::start(ListenerConfig::default()).await;
    let good = daemon.ca.leaf("node-g", false);
    let stream = Connector::new(good.client(daemon.pin()))
        .connect(daemon.addr)
        .await
        .unwrap();
    let node = Node::spawn(stream, "node-g", node_config());
    daemon
        .expect(|(_, ev)| matches!(ev, OwnedDaemonEvent::Register { .. }).then_some(()))
        .await;

    let bad = daemon.ca.leaf("node-h", false);
    let mut raw = Connector::new(bad.client(daemon.pin()))
        .connect(daemon.addr)
        .await
        .unwrap();
    let len: u32 = 1 << 20;
    raw.write_all(&len.to_be_bytes()).await.unwrap();
    raw.write_all(&[0u8; 1024]).await.unwrap();
    raw.flush().await.unwrap();
    let (codes, end) = read_until_end(&mut raw).await;
    assert_eq!(
        codes,
        [ErrorCode::FrameTooLarge {
            len,
            max: protocol_core::frame::DEFAULT_MAX_FRAME
        }]
    );
    end.unwrap();

    node.commands
        .send(NodeCommand::SendEvent("still-here"))
        .await
        .unwrap();
    let name = daemon
        .expect(|(id, ev)| match ev {
            OwnedDaemonEvent::Event { name, .. } if id == "node-g" => Some(name.clone()),
            _ => None,
        })
        .await;
    assert_eq!(name, "still-here");
}

/// (h) A version mismatch gets the error naming both ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_mismatch_names_both_ranges() {
    let daemon = Daemon::start(ListenerConfig::default()).await;
    let leaf = daemon.ca.leaf("node-v", false);
    let stream = Connector::new(leaf.client(daemon.pin()))
        .connect(daemon.addr)
        .await
        .unwrap();
    let mut config = node_config();
    config.versions = VersionRange::new(7, 9);
    let mut node = Node::spawn(stream, "node-v", config);
    assert_eq!(
        node.expect(peer_error).await,
        ErrorCode::VersionMismatch {
            client: VersionRange::new(7, 9),
            server: PROTOCOL_VERSIONS,
        }
    );
}

/// (i) With the cap at one connection, the second reads `Error(Overloaded)` and is
/// closed; the first keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_refuses_out_loud() {
    let mut daemon = Daemon::start(ListenerConfig {
        max_connections: 1,
        ..ListenerConfig::default()
    })
    .await;
    let leaf = daemon.ca.leaf("node-i", false);
    let connector = Connector::new(leaf.client(daemon.pin()));
    let node = Node::spawn(
        connector.connect(daemon.addr).await.unwrap(),
        "node-i",
        node_config(),
    );
    daemon
        .expect(|(_, ev)| matches!(ev, OwnedDaemonEvent::Register { .. }).then_some(()))
        .await;

    let mut second = connector.connect(daemon.addr).await.unwrap();
    let (codes, end) = read_until_end(&mut second).await;
    assert_eq!(codes, [ErrorCode::Overloaded]);
    end.unwrap();

    node.commands
        .send(NodeCommand::SendEvent("first"))
        .await
        .unwrap();
    daemon
        .expect(|(_, ev)| matches!(ev, OwnedDaemonEvent::Event { .. }).then_some(()))
        .await;
}

/// (i) A node that comes to pair while the listener is at its cap learns the refusal,
/// its code and its reason, rather than a pairing failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_at_the_cap_reports_the_refusal() {
    let daemon = Daemon::start(ListenerConfig {
        max_connections: 0,
        ..ListenerConfig::default()
    })
    .await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    let code = PairingCode::new(7, 24_681_357).unwrap();
    let mut rng = ChaCha20Rng::from_seed([5; 32]);
    let paired = pair(daemon.addr, &code, &csr, Some(daemon.pin()), &mut rng).await;
    match paired {
        Err(PairError::Refused { code, reason }) => {
            assert_eq!(code, ErrorCode::Overloaded);
            assert_eq!(reason, "connection limit reached");
        }
        other => panic!("{other:?}"),
    }
}

/// Counts the TLS 1.3 tickets a client receives.
#[derive(Debug)]
struct CountingStore {
    inner: ClientSessionMemoryCache,
    tickets: AtomicUsize,
}

impl ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, name: rustls_pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group);
    }
    fn kx_hint(&self, name: &rustls_pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: rustls_pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value);
    }
    fn tls12_session(
        &self,
        name: &rustls_pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &rustls_pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(name);
    }
    fn insert_tls13_ticket(
        &self,
        name: rustls_pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets.fetch_add(1, Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, value);
    }
    fn take_tls13_ticket(
        &self,
        name: &rustls_pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

/// (j) Resumption is off: even a client that would resume gets no ticket, and a second
/// connection does a full handshake on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_resumption_is_off() {
    let mut daemon = Daemon::start(ListenerConfig::default()).await;
    let leaf = daemon.ca.leaf("node-j", false);
    let store = Arc::new(CountingStore {
        inner: ClientSessionMemoryCache::new(8),
        tickets: AtomicUsize::new(0),
    });
    let mut config = (*leaf.client(daemon.pin())).clone();
    config.resumption = Resumption::store(store.clone());
    let connector = Connector::new(Arc::new(config));
    for round in 0..2 {
        let stream = connector.connect(daemon.addr).await.unwrap();
        assert_eq!(
            stream.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Full)
        );
        let mut node = Node::spawn(stream, "node-j", node_config());
        // A full exchange, so any ticket sent after the handshake would have been read.
        node.expect(|ev| matches!(ev, OwnedNodeEvent::Call { .. }).then_some(()))
            .await;
        node.commands.send(NodeCommand::Close).await.unwrap();
        assert_eq!(node.ended().await.unwrap(), Ended::Closed, "round {round}");
        let kind = tokio::time::timeout(common::WAIT, daemon.kinds.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kind, Some(HandshakeKind::Full), "round {round}");
    }
    assert_eq!(store.tickets.load(Ordering::SeqCst), 0);
}

/// Pairing starts are rate-limited per peer address, not only globally: over its budget
/// an address reads a pairing `Abort(RateLimited { retry_after_ms })`, while another
/// address still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_starts_are_limited_per_address() {
    let config = ListenerConfig {
        pairing_burst: 2,
        pairing_refill: Duration::from_secs(60),
        ..ListenerConfig::default()
    };
    let mut daemon = Daemon::start(config).await;
    let connector = Connector::new(pairing_client_config(Some(daemon.pin())).unwrap());
    let share_p = [4u8; 65];
    let start = PairingMessage::Start(Start {
        version: 1,
        code_id: 7,
        share_p: &share_p,
    });
    let mut frame = vec![0u8; PAIRING_MAX_FRAME as usize];
    let n = encode_pairing(&start, PAIRING_MAX_FRAME, &mut frame).unwrap();
    // A connection from `ip` that sends a pairing start.
    let start_from = async |ip: [u8; 4]| {
        let local = std::net::SocketAddr::from((ip, 0));
        let mut stream = connector.connect_from(local, daemon.addr).await.unwrap();
        stream.write_all(&frame[..n]).await.unwrap();
        stream.flush().await.unwrap();
        stream
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        let stream = start_from([127, 0, 0, 1]).await;
        let conn = tokio::time::timeout(common::WAIT, daemon.pairing.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            conn.peer_addr().ip(),
            std::net::IpAddr::from([127, 0, 0, 1])
        );
        held.push((stream, conn));
    }

    // The third start from the same address is refused, in the pairing protocol's terms.
    let mut stream = start_from([127, 0, 0, 1]).await;
    let mut prefix = [0u8; 4];
    tokio::time::timeout(common::WAIT, stream.read_exact(&mut prefix))
        .await
        .unwrap()
        .unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(prefix) as usize];
    stream.read_exact(&mut payload).await.unwrap();
    match decode_pairing(&payload).unwrap() {
        PairingMessage::Abort(Abort {
            error: PairingError::RateLimited { retry_after_ms },
        }) => assert!(
            retry_after_ms > 0 && retry_after_ms <= 60_000,
            "{retry_after_ms}"
        ),
        other => panic!("expected Abort(RateLimited), got {other:?}"),
    }
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(common::WAIT, stream.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "closed after the abort");
    assert!(daemon.pairing.try_recv().is_err(), "not routed to pairing");

    // Another address has its own budget.
    let _other = start_from([127, 0, 0, 2]).await;
    let conn = tokio::time::timeout(common::WAIT, daemon.pairing.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        conn.peer_addr().ip(),
        std::net::IpAddr::from([127, 0, 0, 2])
    );
}

/// Backpressure over TCP: a daemon session with 4 KiB frames has inbox room for one
/// ~3,000-byte event at a time. Two arriving back to back take their turns instead of
/// closing the connection with `Error(Overloaded)`, and both are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_events_wait_for_inbox_room() {
    let setup = DaemonSetup {
        sessions: Config::server(64 * 1024).with_max_frame(4096),
        ..DaemonSetup::default()
    };
    let mut daemon = Daemon::start_with(ListenerConfig::default(), setup).await;
    let leaf = daemon.ca.leaf("node-q", false);
    let stream = Connector::new(leaf.client(daemon.pin()))
        .connect(daemon.addr)
        .await
        .unwrap();
    let mut node = Node::spawn(stream, "node-q", node_config());
    daemon
        .expect(|(_, ev)| matches!(ev, OwnedDaemonEvent::Register { .. }).then_some(()))
        .await;

    let big = NodeCommand::SendEvents {
        name: "big",
        count: 2,
        len: 3000,
    };
    node.commands.send(big).await.unwrap();
    assert_eq!(
        received_events(&mut daemon.events, "big", 2).await,
        [3000, 3000]
    );

    // The connection is still up: another event gets through.
    node.commands
        .send(NodeCommand::SendEvent("after"))
        .await
        .unwrap();
    received_events(&mut daemon.events, "after", 1).await;
    assert!(
        daemon.ended.try_recv().is_err(),
        "the connection was closed"
    );
    while let Ok(ev) = node.events.try_recv() {
        assert!(peer_error(&ev).is_none(), "{ev:?}");
    }
}

/// Backpressure over TCP the other way: a journaled node with 4 KiB frames holds a call
/// until the journal entry naming it is committed, and a second ~3,000-byte call right
/// behind it waits for that. Both are answered; the connection stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_calls_wait_for_the_journal() {
    let setup = DaemonSetup {
        calls: 2,
        input: vec![b'1'; 3000],
        ..DaemonSetup::default()
    };
    let mut daemon = Daemon::start_with(ListenerConfig::default(), setup).await;
    let leaf = daemon.ca.leaf("node-w", false);
    let stream = Connector::new(leaf.client(daemon.pin()))
        .connect(daemon.addr)
        .await
        .unwrap();
    let config = node_config().with_max_frame(4096);
    assert!(config.durable);
    let mut node = Node::spawn(stream, "node-w", config);
    assert_eq!(answered_calls(&mut daemon.events, 2).await, [3000, 3000]);

    node.commands
        .send(NodeCommand::SendEvent("after"))
        .await
        .unwrap();
    received_events(&mut daemon.events, "after", 1).await;
    assert!(
        daemon.ended.try_recv().is_err(),
        "the connection was closed"
    );
    while let Ok(ev) = node.events.try_recv() {
        assert!(peer_error(&ev).is_none(), "{ev:?}");
    }
}

/// A TCP stream that keeps a copy of every byte it reads, as they came off the wire.
struct Recorded {
    tcp: tokio::net::TcpStream,
    seen: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl tokio::io::AsyncRead for Recorded {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf);
        let read = buf.filled()[before..].to_vec();
        self.seen.lock().unwrap().extend_from_slice(&read);
        polled
    }
}

impl tokio::io::AsyncWrite for Recorded {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// The TLS records the daemon sends on TCP stay within `MAX_RECORD` bytes (header
/// included), however large the frame: a microcontroller holds one whole record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_to_nodes_are_capped_for_small_tls_stacks() {
    let setup = DaemonSetup {
        input: vec![b'x'; 6000],
        ..DaemonSetup::default()
    };
    let mut daemon = Daemon::start_with(ListenerConfig::default(), setup).await;
    let leaf = daemon.ca.leaf("node-m", false);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tcp = Recorded {
        tcp: tokio::net::TcpStream::connect(daemon.addr).await.unwrap(),
        seen: seen.clone(),
    };
    let tls = tokio_rustls::TlsConnector::from(leaf.client(daemon.pin()))
        .connect(ServerName::IpAddress(daemon.addr.ip().into()), tcp)
        .await
        .unwrap();
    let node = Node::spawn(tls, "node-m", node_config());
    assert_eq!(answered_calls(&mut daemon.events, 1).await, [6000]);
    drop(node);

    let wire = seen.lock().unwrap().clone();
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(header) = wire.get(at..at + 5) {
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        records.push(5 + len);
        at += 5 + len;
    }
    // 1019 bytes of plaintext, its content type and the AEAD tag, and the header.
    let largest = records.iter().copied().max().unwrap();
    assert_eq!(largest, MAX_RECORD + 17, "{records:?}");
    assert!(
        records.len() > 6,
        "the call crossed several records: {records:?}"
    );
}

/// A client that offers no ALPN completes its handshake (rustls allows it over TCP),
/// and is refused with `Error(Unauthorized)`: on the node plane and for pairing alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_alpn_is_refused() {
    let daemon = Daemon::start(ListenerConfig::default()).await;
    let leaf = daemon.ca.leaf("node-n", false);
    let configs = [
        leaf.client(daemon.pin()),
        pairing_client_config(Some(daemon.pin())).unwrap(),
    ];
    for config in configs {
        let mut config = (*config).clone();
        config.alpn_protocols.clear();
        let tcp = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::IpAddress(daemon.addr.ip().into()), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), None);
        let (codes, _) = read_until_end(&mut tls).await;
        assert_eq!(codes, [ErrorCode::Unauthorized]);
    }
}

/// A node whose certificate is refused learns why, even when it sends its first record
/// right after its side of the handshake (TLS 1.3: the client finishes first, and hears
/// of the refusal only afterwards). The daemon reads on after its alert instead of
/// closing with those bytes unread, which would make the close a reset: a reset can
/// destroy the alert before the node reads it (a stack that drops what it holds on a
/// reset, an alert segment lost and never sent again), and a node that sees only a
/// reset cannot tell it must stop retrying. So the node reads the alert, then the
/// daemon's orderly close, never a reset; for a revoked certificate and for one from
/// another CA alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_certificate_reads_the_alert_not_a_reset() {
    let daemon = Daemon::start(ListenerConfig::default()).await;
    let revoked = daemon.ca.leaf("node-x", false);
    daemon.revocation.revoke_device("node-x");
    let stranger = Ca::new("another CA").leaf("node-y", false);
    let cases = [
        (revoked, AlertDescription::CertificateRevoked),
        (stranger, AlertDescription::UnknownCA),
    ];
    for (leaf, expected) in cases {
        let connector = tokio_rustls::TlsConnector::from(leaf.client(daemon.pin()));
        for attempt in 0..5 {
            let tcp = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let mut tls = connector
                .connect(ServerName::IpAddress(daemon.addr.ip().into()), tcp)
                .await
                .unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"tern/1"[..]));
            // What a node sends right after its Finished: its first record. This one
            // is larger than the daemon reads at once while it checks the certificate
            // (rustls reads 4 KiB at a time), so some of it is surely still unread
            // when the daemon refuses.
            tls.write_all(&[0x5a; 16 * 1024]).await.unwrap();
            tls.flush().await.unwrap();
            // Time for the alert, and for whatever ends the connection, to arrive.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut buf = [0u8; 512];
            let e = match tokio::time::timeout(common::WAIT, tls.read(&mut buf)).await {
                Ok(Err(e)) => e,
                other => panic!("attempt {attempt}: expected the alert, read {other:?}"),
            };
            assert_ne!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "attempt {attempt}: {e}"
            );
            assert_eq!(alert(&e), Some(expected), "attempt {attempt}: {e:?}");
            // After the alert, the daemon's FIN: the connection was closed, not reset.
            let (mut tcp, _) = tls.into_inner();
            let end = tokio::time::timeout(common::WAIT, tcp.read(&mut buf)).await;
            // A reset that follows the FIN (the answer to bytes reaching a socket already
            // closed) does not show on the read, only as the socket's pending error.
            let pending = tcp.take_error().unwrap();
            assert!(
                matches!(end, Ok(Ok(0))) && pending.is_none(),
                "attempt {attempt}: after the {expected:?} alert, expected the daemon's \
                 close, got {end:?}, then {pending:?}"
            );
        }
    }
}

/// A storm of malformed, unknown, untimely and oversize frames from authenticated
/// connections: each connection is told why with one typed error and closed, and a node
/// connected before the storm is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_bad_frames_closes_each_connection_with_a_typed_error() {
    use protocol_core::wire::{Ack, Message, encode_message};

    let mut daemon = Daemon::start(ListenerConfig::default()).await;
    let good = daemon.ca.leaf("node-good", false);
    let node = Node::spawn(
        Connector::new(good.client(daemon.pin()))
            .connect(daemon.addr)
            .await
            .unwrap(),
        "node-good",
        node_config(),
    );
    daemon
        .expect(|(_, ev)| matches!(ev, OwnedDaemonEvent::Register { .. }).then_some(()))
        .await;

    let framed = |payload: &[u8]| {
        let mut f = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    };
    let mut ack = [0u8; 64];
    let n = encode_message(&Message::Ack(Ack { received: 1 }), u32::MAX, &mut ack).unwrap();
    let max = protocol_core::frame::DEFAULT_MAX_FRAME;
    let storm: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        ("garbage", framed(&[0xA5; 64]), ErrorCode::Malformed),
        ("empty frame", framed(&[]), ErrorCode::Malformed),
        (
            "unknown tag",
            framed(&[0x7F, 1, 2, 3]),
            ErrorCode::UnknownMessage { tag: 0x7F },
        ),
        (
            "ack before hello",
            ack[..n].to_vec(),
            ErrorCode::UnexpectedMessage,
        ),
        (
            "oversize prefix",
            (max + 1).to_be_bytes().to_vec(),
            ErrorCode::FrameTooLarge { len: max + 1, max },
        ),
        (
            "u32::MAX prefix",
            u32::MAX.to_be_bytes().to_vec(),
            ErrorCode::FrameTooLarge { len: u32::MAX, max },
        ),
    ];
    let bad = daemon.ca.leaf("node-bad", false);
    let connector = Connector::new(bad.client(daemon.pin()));
    for round in 0..5 {
        let mut tasks = Vec::new();
        for (what, bytes, expected) in storm.clone() {
            let connector = connector.clone();
            let addr = daemon.addr;
            tasks.push(tokio::spawn(async move {
                let mut raw = connector.connect(addr).await.unwrap();
                raw.write_all(&bytes).await.unwrap();
                raw.flush().await.unwrap();
                let (codes, _end) = read_until_end(&mut raw).await;
                assert_eq!(codes, [expected], "round {round}: {what}");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        node.commands
            .send(NodeCommand::SendEvent("between-storms"))
            .await
            .unwrap();
        daemon
            .expect(|(id, ev)| match ev {
                OwnedDaemonEvent::Event { name, .. } if id == "node-good" => {
                    (name == "between-storms").then_some(())
                }
                _ => None,
            })
            .await;
    }
}
