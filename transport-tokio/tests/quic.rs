//! The QUIC transport over real loopback UDP sockets: the same rules as over TCP + TLS.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::quic::{QuicDaemon, QuicNode, raw_client};
use common::{Ca, DaemonSetup, NodeCommand, answered_calls, node_config, received_events};
use protocol_core::frame::{DEFAULT_MAX_FRAME, FrameDecoder};
use protocol_core::session::Config;
use protocol_core::session::{
    CallState, CloseReason, OwnedDaemonEvent, OwnedNodeEvent, OwnedOutcome,
};
use protocol_core::wire::{ErrorCode, Message, PROTOCOL_VERSIONS, VersionRange, decode_message};
use transport_tokio::host::{Closed, close_code};
use transport_tokio::quic::{ConnectError, EndpointKeys, QuicLimits};
use transport_tokio::tcp::{Connector, Listener, ListenerConfig, Routes};
use transport_tokio::tls::{Fingerprint, pairing_client_config};
use transport_tokio::{MemJournals, StoragePool};

fn peer_error(ev: &OwnedNodeEvent) -> Option<ErrorCode> {
    match ev {
        OwnedNodeEvent::Disconnected(CloseReason::PeerError(code)) => Some(*code),
        _ => None,
    }
}

fn registered(id: &'static str) -> impl FnMut(&common::DaemonSeen) -> Option<()> {
    move |(who, ev)| matches!(ev, OwnedDaemonEvent::Register { .. } if who == id).then_some(())
}

/// The application close a raw client reads.
async fn closed_with(conn: &quinn::Connection) -> (u64, String) {
    match tokio::time::timeout(common::WAIT, conn.closed())
        .await
        .unwrap()
    {
        quinn::ConnectionError::ApplicationClosed(c) => (
            c.error_code.into_inner(),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        other => panic!("closed otherwise: {other}"),
    }
}

/// Reads the error frames a raw stream carries until it ends.
async fn error_frames(recv: &mut quinn::RecvStream) -> Vec<ErrorCode> {
    let bytes = tokio::time::timeout(common::WAIT, recv.read_to_end(1 << 20))
        .await
        .unwrap()
        .unwrap_or_default();
    let mut dec = FrameDecoder::new(vec![0u8; 1 << 20], 1 << 20).unwrap();
    let mut input = &bytes[..];
    let mut codes = Vec::new();
    while !input.is_empty() {
        let p = dec.decode(input).unwrap();
        if let Some(frame) = p.frame
            && let Ok(Message::Error(e)) = decode_message(frame)
        {
            codes.push(e.code);
        }
        input = &input[p.consumed..];
    }
    codes
}

/// A paired node connects, registers, answers `echo`, streams an event, closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_registers_answers_and_streams_events() {
    let mut daemon = QuicDaemon::start(QuicLimits::default());
    let leaf = daemon.ca.leaf("node-a", false);
    let mut node = QuicNode::connect(
        daemon.addr,
        leaf.client(daemon.pin()),
        "node-a",
        node_config(),
    )
    .await
    .unwrap();
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

    node.send(NodeCommand::SendEvent("temperature")).await;
    let name = daemon
        .expect(|(_, ev)| match ev {
            OwnedDaemonEvent::Event { name, .. } => Some(name.clone()),
            _ => None,
        })
        .await;
    assert_eq!(name, "temperature");

    node.send(NodeCommand::Close).await;
    assert_eq!(node.expect_closed().await, Closed::BySession);
    // The daemon's session answered the goodbye and came back to its registry.
    assert_eq!(daemon.expect_closed("node-a").await, Closed::BySession);
}

/// A dropped connection resumes on the next one with the same session: the daemon's
/// registry keeps it between connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_resumes_the_session() {
    let mut daemon = QuicDaemon::start(QuicLimits::default());
    let leaf = daemon.ca.leaf("node-b", false);
    let tls = leaf.client(daemon.pin());
    let mut node = QuicNode::connect(daemon.addr, tls.clone(), "node-b", node_config())
        .await
        .unwrap();
    daemon.expect(registered("node-b")).await;
    node.expect(|ev| matches!(ev, OwnedNodeEvent::Connected { resumed: false, .. }).then_some(()))
        .await;

    // The daemon drops the connection (as a lost network would).
    let conn = daemon.registry.connection_of("node-b").unwrap();
    daemon
        .handle
        .close(conn, ErrorCode::Overloaded, "test drop")
        .await;
    assert!(matches!(node.expect_closed().await, Closed::ByPeer { .. }));
    node.handle
        .connect(daemon.addr, "127.0.0.1", tls)
        .await
        .unwrap();
    node.expect(|ev| matches!(ev, OwnedNodeEvent::Connected { resumed: true, .. }).then_some(()))
        .await;
}

/// A revoked node is refused at the handshake, by device and by certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_node_is_refused_at_the_handshake() {
    let mut daemon = QuicDaemon::start(QuicLimits::default());
    let by_device = daemon.ca.leaf("node-r", false);
    let by_cert = daemon.ca.leaf("node-s", false);
    daemon.revocation.revoke_device("node-r");
    daemon.revocation.revoke_certificate(by_cert.fingerprint());
    for (leaf, id) in [(by_device, "node-r"), (by_cert, "node-s")] {
        let result = raw_client(daemon.addr, leaf.client(daemon.pin())).await;
        let e = match result {
            Ok(conn) => conn.closed().await,
            Err(e) => e,
        };
        // The TLS alert certificate_revoked (44).
        assert!(e.to_string().contains("error 44"), "{id}: {e}");
    }
    assert!(
        daemon.events.try_recv().is_err(),
        "nothing reached the node plane"
    );
}

/// A node revoked while connected is closed within a second, and told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_revoked_while_connected_is_closed_within_a_second() {
    let mut daemon = QuicDaemon::start(QuicLimits::default());
    for (id, by_cert) in [("node-c", true), ("node-d", false)] {
        let leaf = daemon.ca.leaf(id, false);
        let mut node = QuicNode::connect(daemon.addr, leaf.client(daemon.pin()), id, node_config())
            .await
            .unwrap();
        daemon
            .expect(registered(if by_cert { "node-c" } else { "node-d" }))
            .await;
        let start = std::time::Instant::now();
        if by_cert {
            daemon.revocation.revoke_certificate(leaf.fingerprint());
        } else {
            daemon.revocation.revoke_device(id);
        }
        let how = node.expect_closed().await;
        let elapsed = start.elapsed();
        assert_eq!(
            how,
            Closed::ByPeer {
                code: u64::from(close_code(&ErrorCode::Revoked)),
                reason: "revoked".into()
            }
        );
        assert!(elapsed < Duration::from_secs(1), "closed after {elapsed:?}");
        assert_eq!(daemon.expect_closed(id).await, Closed::Revoked);
    }
}

/// A node whose pin is not the daemon's certificate refuses the daemon; the right pin
/// connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_server_pin_refuses_the_daemon() {
    let daemon = QuicDaemon::start(QuicLimits::default());
    let leaf = daemon.ca.leaf("node-p", false);
    let other = daemon.ca.leaf("ternd", true).fingerprint();
    for pin in [Fingerprint([0; 32]), other] {
        let e = QuicNode::connect(daemon.addr, leaf.client(pin), "node-p", node_config())
            .await
            .err()
            .unwrap();
        match e {
            ConnectError::Handshake(Closed::Tls { by_peer, .. }) => {
                assert!(!by_peer, "the node refuses the daemon, not the other way");
            }
            other => panic!("{other}"),
        }
    }
    QuicNode::connect(
        daemon.addr,
        leaf.client(daemon.pin()),
        "node-p",
        node_config(),
    )
    .await
    .unwrap();
}

/// Certificates from another CA, or from an impostor with the CA's name, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() {
    let mut daemon = QuicDaemon::start(QuicLimits::default());
    for ca_name in ["another CA", "tern test CA"] {
        let stranger = Ca::new(ca_name).leaf("node-a", false);
        let e = match raw_client(daemon.addr, stranger.client(daemon.pin())).await {
            Ok(conn) => conn.closed().await,
            Err(e) => e,
        };
        assert!(
            matches!(e, quinn::ConnectionError::ConnectionClosed(_)),
            "{ca_name}: {e}"
        );
    }
    assert!(
        daemon.events.try_recv().is_err(),
        "nothing reached the node plane"
    );
}

/// A hello naming another node than the certificate is `Unauthorized`; a session bound
/// to another node than the certificate never reaches the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_speak_for_another() {
    let daemon = QuicDaemon::start(QuicLimits::default());
    let leaf = daemon.ca.leaf("node-e", false);
    let mut node = QuicNode::connect(
        daemon.addr,
        leaf.client(daemon.pin()),
        "node-a",
        node_config(),
    )
    .await
    .unwrap();
    assert_eq!(node.expect(peer_error).await, ErrorCode::Unauthorized);

    let daemon = QuicDaemon::start_with(QuicLimits::default(), Some("node-z"));
    let leaf = daemon.ca.leaf("node-f", false);
    let conn = raw_client(daemon.addr, leaf.client(daemon.pin()))
        .await
        .unwrap();
    assert_eq!(
        closed_with(&conn).await,
        (
            u64::from(close_code(&ErrorCode::Unauthorized)),
            "wrong node".into()
        )
    );
}

/// Without a client certificate the QUIC node plane is closed with a reason; pairing
/// runs over TCP + TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connection_gets_no_node_plane() {
    let mut daemon = QuicDaemon::start(QuicLimits::default());
    let conn = raw_client(
        daemon.addr,
        pairing_client_config(Some(daemon.pin())).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        closed_with(&conn).await,
        (
            u64::from(close_code(&ErrorCode::Unauthorized)),
            "a client certificate is required".into()
        )
    );
    assert!(daemon.events.try_recv().is_err());
}

/// An oversize frame gets `Error(FrameTooLarge)` and a close, while another connection
/// keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_is_refused_while_others_are_served() {
    let mut daemon = QuicDaemon::start(QuicLimits::default());
    let good = daemon.ca.leaf("node-g", false);
    let node = QuicNode::connect(
        daemon.addr,
        good.client(daemon.pin()),
        "node-g",
        node_config(),
    )
    .await
    .unwrap();
    daemon.expect(registered("node-g")).await;

    let bad = daemon.ca.leaf("node-h", false);
    let conn = raw_client(daemon.addr, bad.client(daemon.pin()))
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let len: u32 = 1 << 20;
    send.write_all(&len.to_be_bytes()).await.unwrap();
    send.write_all(&[0u8; 1024]).await.unwrap();
    assert_eq!(
        error_frames(&mut recv).await,
        [ErrorCode::FrameTooLarge {
            len,
            max: DEFAULT_MAX_FRAME
        }]
    );

    node.send(NodeCommand::SendEvent("still-here")).await;
    let name = daemon
        .expect(|(id, ev)| match ev {
            OwnedDaemonEvent::Event { name, .. } if id == "node-g" => Some(name.clone()),
            _ => None,
        })
        .await;
    assert_eq!(name, "still-here");
}

/// A version mismatch gets the error naming both ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_mismatch_names_both_ranges() {
    let daemon = QuicDaemon::start(QuicLimits::default());
    let leaf = daemon.ca.leaf("node-v", false);
    let mut config = node_config();
    config.versions = VersionRange::new(7, 9);
    let mut node = QuicNode::connect(daemon.addr, leaf.client(daemon.pin()), "node-v", config)
        .await
        .unwrap();
    assert_eq!(
        node.expect(peer_error).await,
        ErrorCode::VersionMismatch {
            client: VersionRange::new(7, 9),
            server: PROTOCOL_VERSIONS,
        }
    );
}

/// With the cap at one connection, the second is closed with `Overloaded` and a reason
/// it reads; the first keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_refuses_out_loud() {
    let mut daemon = QuicDaemon::start(QuicLimits {
        max_connections: 1,
        ..QuicLimits::default()
    });
    let leaf = daemon.ca.leaf("node-i", false);
    let node = QuicNode::connect(
        daemon.addr,
        leaf.client(daemon.pin()),
        "node-i",
        node_config(),
    )
    .await
    .unwrap();
    daemon.expect(registered("node-i")).await;
    assert_eq!(daemon.handle.open_connections(), 1);

    let other = daemon.ca.leaf("node-j", false);
    let conn = raw_client(daemon.addr, other.client(daemon.pin()))
        .await
        .unwrap();
    assert_eq!(
        closed_with(&conn).await,
        (
            u64::from(close_code(&ErrorCode::Overloaded)),
            "connection limit reached".into()
        )
    );

    node.send(NodeCommand::SendEvent("first")).await;
    daemon
        .expect(|(_, ev)| matches!(ev, OwnedDaemonEvent::Event { .. }).then_some(()))
        .await;
}

/// One registry serves both transports: a node that registered over QUIC resumes its
/// session over TCP + TLS (the fallback where UDP is blocked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_across_transports() {
    let mut daemon = QuicDaemon::start(QuicLimits::default());
    let leaf = daemon.ca.leaf("node-x", false);
    let tls = leaf.client(daemon.pin());
    let mut node = QuicNode::connect(daemon.addr, tls.clone(), "node-x", node_config())
        .await
        .unwrap();
    daemon.expect(registered("node-x")).await;
    node.send(NodeCommand::Close).await;
    assert_eq!(node.expect_closed().await, Closed::BySession);
    daemon.expect_closed("node-x").await;

    // The same registry behind a TCP listener.
    let server_tls = transport_tokio::tls::server_config(
        daemon.ca.der.clone(),
        vec![daemon.server.cert.clone()],
        daemon.server.key(),
        daemon.revocation.clone(),
    )
    .unwrap();
    let listener = Listener::bind(
        "127.0.0.1:0".parse().unwrap(),
        server_tls,
        daemon.revocation.clone(),
        ListenerConfig::default(),
    )
    .await
    .unwrap();
    let tcp_addr = listener.local_addr().unwrap();
    let (nodes_tx, mut nodes_rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(listener.run(Routes {
        nodes: nodes_tx,
        pairing: None,
    }));
    let registry = daemon.registry.clone();
    tokio::spawn(async move {
        while let Some(conn) = nodes_rx.recv().await {
            let registry = registry.clone();
            tokio::spawn(
                conn.serve_with(
                    registry,
                    std::sync::Arc::new(MemJournals::new()),
                    StoragePool::new(
                        node_config()
                            .storage_len()
                            .max(Config::server(64 * 1024).storage_len()),
                        4,
                    ),
                ),
            );
        }
    });
    let stream = Connector::new(tls).connect(tcp_addr).await.unwrap();
    // The node's own session, as the QUIC connection gave it back, now over TCP.
    let session = node.take_session().await;
    let mut tcp_node = common::Node::spawn_session(stream, session);
    tcp_node
        .expect(|ev| matches!(ev, OwnedNodeEvent::Connected { resumed: true, .. }).then_some(()))
        .await;
    tcp_node
        .commands
        .send(NodeCommand::SendEvent("over-tcp"))
        .await
        .unwrap();
    let (transport_id, name) = daemon
        .expect(|(id, ev)| match ev {
            OwnedDaemonEvent::Event { name, .. } => Some((id.clone(), name.clone())),
            _ => None,
        })
        .await;
    assert_eq!(
        (transport_id.as_str(), name.as_str()),
        ("node-x", "over-tcp")
    );
}

/// Refusals over the cap free their slot when done: long after the first 64, a peer
/// over the cap still reads why instead of a bare `CONNECTION_REFUSED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_over_the_cap_keep_their_reason() {
    let mut daemon = QuicDaemon::start(QuicLimits {
        max_connections: 1,
        ..QuicLimits::default()
    });
    let leaf = daemon.ca.leaf("node-k", false);
    let _node = QuicNode::connect(
        daemon.addr,
        leaf.client(daemon.pin()),
        "node-k",
        node_config(),
    )
    .await
    .unwrap();
    daemon.expect(registered("node-k")).await;
    let other = daemon.ca.leaf("node-l", false);
    let tls = other.client(daemon.pin());
    for i in 0..80 {
        let conn = raw_client(daemon.addr, tls.clone())
            .await
            .unwrap_or_else(|e| panic!("refusal {i}: {e}"));
        assert_eq!(
            closed_with(&conn).await,
            (
                u64::from(close_code(&ErrorCode::Overloaded)),
                "connection limit reached".into()
            ),
            "refusal {i}"
        );
        // Let the refused connection drain on the daemon's side.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Backpressure over QUIC: a daemon session with 4 KiB frames has inbox room for one
/// ~3,000-byte event at a time. Two arriving back to back take their turns instead of
/// closing the connection with `Error(Overloaded)`, and both are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_events_wait_for_inbox_room() {
    let setup = DaemonSetup {
        sessions: Config::server(64 * 1024).with_max_frame(4096),
        ..DaemonSetup::default()
    };
    let mut daemon = QuicDaemon::start_setup(QuicLimits::default(), None, setup);
    let leaf = daemon.ca.leaf("node-q", false);
    let mut node = QuicNode::connect(
        daemon.addr,
        leaf.client(daemon.pin()),
        "node-q",
        node_config(),
    )
    .await
    .unwrap();
    daemon.expect(registered("node-q")).await;

    let big = NodeCommand::SendEvents {
        name: "big",
        count: 2,
        len: 3000,
    };
    node.send(big).await;
    assert_eq!(
        received_events(&mut daemon.events, "big", 2).await,
        [3000, 3000]
    );

    // The connection is still up: another event gets through.
    node.send(NodeCommand::SendEvent("after")).await;
    received_events(&mut daemon.events, "after", 1).await;
    assert!(
        daemon.closed.try_recv().is_err(),
        "the connection was closed"
    );
    assert!(node.closed.try_recv().is_err(), "the connection was closed");
    while let Ok(ev) = node.events.try_recv() {
        assert!(peer_error(&ev).is_none(), "{ev:?}");
    }
}

/// Backpressure over QUIC the other way: a journaled node with 4 KiB frames holds a call
/// until the journal entry naming it is committed, with the endpoint's group commit,
/// after the frames of the same read. A second ~3,000-byte call right behind it is
/// refused and stays in the stream until then. Both are answered; the connection stays
/// up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_calls_wait_for_the_journal() {
    let setup = DaemonSetup {
        calls: 2,
        input: vec![b'1'; 3000],
        ..DaemonSetup::default()
    };
    let mut daemon = QuicDaemon::start_setup(QuicLimits::default(), None, setup);
    let leaf = daemon.ca.leaf("node-w", false);
    let config = node_config().with_max_frame(4096);
    assert!(config.durable);
    let mut node = QuicNode::connect(daemon.addr, leaf.client(daemon.pin()), "node-w", config)
        .await
        .unwrap();
    assert_eq!(answered_calls(&mut daemon.events, 2).await, [3000, 3000]);

    node.send(NodeCommand::SendEvent("after")).await;
    received_events(&mut daemon.events, "after", 1).await;
    assert!(
        daemon.closed.try_recv().is_err(),
        "the connection was closed"
    );
    assert!(node.closed.try_recv().is_err(), "the connection was closed");
    while let Ok(ev) = node.events.try_recv() {
        assert!(peer_error(&ev).is_none(), "{ev:?}");
    }
}

/// A raw client whose keep-alives reach a daemon that died without a word.
async fn keepalive_client(
    daemon: &QuicDaemon,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> quinn::Connection {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_millis(100)))
        .max_idle_timeout(Some(Duration::from_secs(2).try_into().unwrap()));
    let mut config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    config.transport_config(std::sync::Arc::new(transport));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint
        .connect_with(config, daemon.addr, "127.0.0.1")
        .unwrap()
        .await
        .unwrap()
}

fn keys(byte: u8) -> EndpointKeys {
    EndpointKeys::new([byte; 64], [byte ^ 0xff; 64])
}

/// How a connected client's connection ends when its daemon, started with keys 1, is
/// killed without a word and started again with `restarted_with`.
async fn end_after_restart(restarted_with: EndpointKeys) -> quinn::ConnectionError {
    let mut daemon = QuicDaemon::start_keyed(
        QuicLimits::default(),
        None,
        Default::default(),
        Some(&keys(1)),
    );
    let leaf = daemon.ca.leaf("node-a", false);
    let conn = keepalive_client(&daemon, leaf.client(daemon.pin())).await;
    daemon.crash_and_restart(Some(&restarted_with)).await;
    tokio::time::timeout(common::WAIT, conn.closed())
        .await
        .unwrap()
}

/// With its keys kept, a daemon that was killed and started again answers a node's next
/// packet on the dead connection with a stateless reset the node trusts: the node knows
/// at once, instead of at its idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_with_its_keys_resets_dead_connections() {
    let reason = end_after_restart(keys(1)).await;
    assert!(
        matches!(reason, quinn::ConnectionError::Reset),
        "ended otherwise: {reason}"
    );
}

/// The control: with other keys the reset cannot be trusted, and the connection only
/// ends at its idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_with_new_keys_leaves_dead_connections_to_time_out() {
    let reason = end_after_restart(keys(2)).await;
    assert!(
        matches!(reason, quinn::ConnectionError::TimedOut),
        "ended otherwise: {reason}"
    );
}

/// The TCP storm over QUIC: malformed, unknown, untimely and oversize frames on the
/// stream of authenticated connections each end their connection with one typed error
/// frame (then a close saying the session ended), while a connected node keeps being
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_bad_frames_closes_each_connection_with_a_typed_error() {
    use protocol_core::wire::{Ack, encode_message};

    let mut daemon = QuicDaemon::start(QuicLimits::default());
    let good = daemon.ca.leaf("node-good", false);
    let node = QuicNode::connect(
        daemon.addr,
        good.client(daemon.pin()),
        "node-good",
        node_config(),
    )
    .await
    .unwrap();
    daemon.expect(registered("node-good")).await;

    let framed = |payload: &[u8]| {
        let mut f = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    };
    let mut ack = [0u8; 64];
    let n = encode_message(&Message::Ack(Ack { received: 1 }), u32::MAX, &mut ack).unwrap();
    let max = DEFAULT_MAX_FRAME;
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
    for round in 0..5 {
        let mut tasks = Vec::new();
        for (what, bytes, expected) in storm.clone() {
            let tls = bad.client(daemon.pin());
            let addr = daemon.addr;
            tasks.push(tokio::spawn(async move {
                let conn = raw_client(addr, tls).await.unwrap();
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                send.write_all(&bytes).await.unwrap();
                assert_eq!(
                    error_frames(&mut recv).await,
                    [expected],
                    "round {round}: {what}"
                );
                // The error frame carries the detail; the close says the session ended.
                let (code, _) = closed_with(&conn).await;
                assert_eq!(
                    code,
                    u64::from(transport_tokio::host::CLOSE_SESSION_ENDED),
                    "round {round}: {what}"
                );
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        node.send(NodeCommand::SendEvent("between-storms")).await;
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
