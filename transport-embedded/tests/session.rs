//! The node plane over time: reconnects that resume the session, and the refusals that
//! stop a node for good.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Daemon, EchoApp, HostDialer, arena, rng};
use protocol_core::session::{CloseReason, Config, OwnedDaemonEvent, OwnedNodeEvent};
use protocol_core::wire::GoodbyeReason;
use transport_embedded::session::Node;
use transport_embedded::{
    Backoff, Ended, LinkError, NodeApp, NodeOptions, PeerClose, Refused, SessionBuffers, run_node,
    run_session,
};

const CONFIG: Config = Config::embedded(1024);

const QUICK: Backoff = Backoff {
    initial_ms: 20,
    max_ms: 100,
    reset_after_ms: 60_000,
};

#[tokio::test]
async fn a_reconnect_resumes_the_session_until_the_node_is_revoked() {
    let mut daemon = Daemon::start().await;
    {
        let mut behaviour = daemon.behaviour.lock().unwrap();
        behaviour.goodbye = Some(GoodbyeReason::Restart);
        behaviour.goodbyes = 1;
    }
    let identity = daemon.issue("node-1", daemon.pin());
    let mut memory = arena(SessionBuffers::arena_len(&CONFIG));
    let buffers = SessionBuffers::carve(&CONFIG, &mut memory).unwrap();
    let mut node = Node::new(CONFIG, &identity, "test", buffers, NodeOptions::default()).unwrap();
    let (mut app, mut dialer, mut rng) = (EchoApp::default(), HostDialer::default(), rng(3));
    let revocation = daemon.revocation.clone();
    let (refused, ()) = tokio::join!(
        tokio::time::timeout(
            common::WAIT,
            run_node(&mut node, &identity, &mut dialer, &mut app, &mut rng, QUICK)
        ),
        async {
            assert_eq!(daemon.answered().await, 7);
            // The daemon said goodbye; the node comes back and resumes.
            daemon
                .expect(|(_, ev)| match ev {
                    OwnedDaemonEvent::Connected { resumed: true, .. } => Some(()),
                    _ => None,
                })
                .await;
            revocation.revoke_device("node-1");
        }
    );
    assert_eq!(refused.unwrap(), Err(Refused::Revoked));
    assert_eq!(dialer.dials, 2);
    assert_eq!(app.connects(), (2, 1));
    assert_eq!(
        app.outcomes.first().unwrap(),
        &Ok(Ended::Closed {
            daemon: Some(PeerClose::Goodbye(GoodbyeReason::Restart))
        })
    );
}

#[tokio::test]
async fn a_revoked_node_is_refused_at_the_handshake_and_stops() {
    let daemon = Daemon::start().await;
    let identity = daemon.issue("node-1", daemon.pin());
    daemon.revocation.revoke_device("node-1");
    let mut memory = arena(SessionBuffers::arena_len(&CONFIG));
    let buffers = SessionBuffers::carve(&CONFIG, &mut memory).unwrap();
    let mut node = Node::new(CONFIG, &identity, "test", buffers, NodeOptions::default()).unwrap();
    let (mut app, mut dialer, mut rng) = (EchoApp::default(), HostDialer::default(), rng(4));
    let refused = tokio::time::timeout(
        common::WAIT,
        run_node(&mut node, &identity, &mut dialer, &mut app, &mut rng, QUICK),
    )
    .await
    .unwrap();
    assert_eq!(refused, Err(Refused::Certificate));
    assert_eq!(dialer.dials, 1, "a refusal is not retried");
    assert_eq!(app.connects(), (0, 0), "no hello exchange finished");
}

#[tokio::test]
async fn an_unreachable_daemon_is_retried_with_backoff() {
    // A port nothing listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = closed.local_addr().unwrap().to_string();
    drop(closed);
    let daemon = Daemon::start().await;
    let identity = common::issue(&daemon.ca, "node-1", daemon.pin(), &address);
    let mut memory = arena(SessionBuffers::arena_len(&CONFIG));
    let buffers = SessionBuffers::carve(&CONFIG, &mut memory).unwrap();
    let mut node = Node::new(CONFIG, &identity, "test", buffers, NodeOptions::default()).unwrap();
    let (mut app, mut dialer, mut rng) = (EchoApp::default(), HostDialer::default(), rng(5));
    let gave_up = tokio::time::timeout(
        Duration::from_millis(600),
        run_node(&mut node, &identity, &mut dialer, &mut app, &mut rng, QUICK),
    )
    .await;
    assert!(gave_up.is_err(), "a dial failure is not a refusal");
    assert!(dialer.dials >= 4, "{} attempts in 600 ms", dialer.dials);
    assert!(app.outcomes.iter().all(|o| o.is_err()));
}

#[tokio::test]
async fn an_identity_for_another_device_is_refused_before_dialing() {
    let daemon = Daemon::start().await;
    let identity = daemon.issue("node-1", daemon.pin());
    let other = daemon.issue("node-2", daemon.pin());
    let mut memory = arena(SessionBuffers::arena_len(&CONFIG));
    let buffers = SessionBuffers::carve(&CONFIG, &mut memory).unwrap();
    let mut node = Node::new(CONFIG, &identity, "test", buffers, NodeOptions::default()).unwrap();
    let mut dialer = HostDialer::default();
    let refused = run_session(
        &mut node,
        &other,
        &mut dialer,
        &mut EchoApp::default(),
        &mut rng(6),
    )
    .await;
    assert!(matches!(refused, Err(LinkError::Setup(_))), "{refused:?}");
    assert_eq!(dialer.dials, 0);
}

/// An application with a wake-up of its own: a reading every 30 ms, sent whether or not
/// anything arrives in between.
#[derive(Default)]
struct Sensor {
    echo: EchoApp,
    due: Option<protocol_core::session::Instant>,
    sent: u32,
}

impl NodeApp for Sensor {
    fn on_events(
        &mut self,
        session: &mut protocol_core::session::NodeSession<&mut [u8]>,
        now: protocol_core::session::Instant,
    ) {
        self.echo.on_events(session, now);
        if self.echo.connects().0 == 0 {
            return;
        }
        match self.due {
            Some(due) if due > now => {}
            _ => {
                let reading = protocol_core::wire::Payload {
                    content_type: common::JSON,
                    data: b"21.5",
                };
                session.send_event("sensor.temperature", reading).unwrap();
                self.sent += 1;
                self.due = Some(now.plus_ms(30));
            }
        }
    }

    fn next_wake(&self) -> Option<protocol_core::session::Instant> {
        self.due
    }
}

#[tokio::test]
async fn an_application_wakes_up_on_its_own_schedule() {
    let mut daemon = Daemon::start().await;
    daemon.behaviour.lock().unwrap().goodbye = None;
    let identity = daemon.issue("node-1", daemon.pin());
    let mut memory = arena(SessionBuffers::arena_len(&CONFIG));
    let buffers = SessionBuffers::carve(&CONFIG, &mut memory).unwrap();
    let mut node = Node::new(CONFIG, &identity, "test", buffers, NodeOptions::default()).unwrap();
    let (mut app, mut dialer, mut rng) = (Sensor::default(), HostDialer::default(), rng(7));
    let mut readings = 0;
    // Without the wake-ups only the keep-alive (every 5 s) would give it a turn.
    let within = tokio::time::sleep(Duration::from_secs(2));
    tokio::select! {
        () = within => panic!("{readings} readings in 2 s"),
        ended = run_session(&mut node, &identity, &mut dialer, &mut app, &mut rng) => {
            panic!("the connection ended: {ended:?}")
        }
        () = async {
            while readings < 4 {
                daemon
                    .expect(|(_, ev)| match ev {
                        OwnedDaemonEvent::Event { name, .. } if name == "sensor.temperature" => {
                            Some(())
                        }
                        _ => None,
                    })
                    .await;
                readings += 1;
            }
        } => {}
    }
    assert!(app.sent >= 4);
}

/// An application that takes no event before `from`: the calls behind the first wait in
/// TLS and TCP (the pump stops reading while it holds one back), and none is lost.
struct Busy {
    echo: EchoApp,
    from: protocol_core::session::Instant,
}

impl NodeApp for Busy {
    fn on_events(
        &mut self,
        session: &mut protocol_core::session::NodeSession<&mut [u8]>,
        now: protocol_core::session::Instant,
    ) {
        if now >= self.from || self.echo.connects().0 == 0 {
            self.echo.on_events(session, now);
        }
    }

    fn next_wake(&self) -> Option<protocol_core::session::Instant> {
        Some(self.from)
    }
}

#[tokio::test]
async fn calls_wait_behind_a_busy_application_and_none_is_lost() {
    let mut daemon = Daemon::start().await;
    {
        let mut behaviour = daemon.behaviour.lock().unwrap();
        behaviour.goodbye = None;
        behaviour.calls = 6;
        behaviour.echo_input = vec![b'1'; 300];
    }
    let identity = daemon.issue("node-1", daemon.pin());
    // The inbox holds one 1 KiB frame at a time.
    let config = Config::embedded(4096).with_max_frame(1024);
    let mut memory = arena(SessionBuffers::arena_len(&config));
    let buffers = SessionBuffers::carve(&config, &mut memory).unwrap();
    let mut node = Node::new(config, &identity, "test", buffers, NodeOptions::default()).unwrap();
    let from = protocol_core::session::Instant::from_millis(
        embassy_time::Instant::now().as_millis() + 300,
    );
    let mut app = Busy {
        echo: EchoApp::default(),
        from,
    };
    let (mut dialer, mut rng) = (HostDialer::default(), rng(8));
    tokio::select! {
        ended = run_session(&mut node, &identity, &mut dialer, &mut app, &mut rng) => {
            panic!("the connection ended: {ended:?}")
        }
        () = async {
            for _ in 0..6 {
                assert_eq!(daemon.answered().await, 300);
            }
        } => {}
    }
    assert!(
        embassy_time::Instant::now().as_millis() >= from.as_millis(),
        "answered before the application took its events"
    );
}

/// An application that shuts down gracefully: once its answer to the daemon's call is
/// acknowledged (nothing left in the replay buffer), it says goodbye and asks
/// `run_node` not to reconnect.
#[derive(Default)]
struct Shutdown {
    echo: EchoApp,
    closed: bool,
}

impl NodeApp for Shutdown {
    fn on_events(
        &mut self,
        session: &mut protocol_core::session::NodeSession<&mut [u8]>,
        now: protocol_core::session::Instant,
    ) {
        self.echo.on_events(session, now);
        let answered = self
            .echo
            .events
            .iter()
            .any(|e| matches!(e, OwnedNodeEvent::Call { .. }));
        if answered && !self.closed && session.replay_usage().0 == 0 {
            session.close(now, GoodbyeReason::Shutdown);
            self.closed = true;
        }
    }

    fn connection_ended(&mut self, outcome: &Result<Ended, LinkError>) {
        self.echo.connection_ended(outcome);
    }

    fn keep_running(&mut self) -> bool {
        !self.closed
    }
}

#[tokio::test]
async fn the_application_stops_the_node_with_a_goodbye() {
    let mut daemon = Daemon::start().await;
    daemon.behaviour.lock().unwrap().goodbye = None;
    let identity = daemon.issue("node-1", daemon.pin());
    let mut memory = arena(SessionBuffers::arena_len(&CONFIG));
    let buffers = SessionBuffers::carve(&CONFIG, &mut memory).unwrap();
    let mut node = Node::new(CONFIG, &identity, "test", buffers, NodeOptions::default()).unwrap();
    let (mut app, mut dialer, mut rng) = (Shutdown::default(), HostDialer::default(), rng(10));
    let stopped = tokio::time::timeout(
        common::WAIT,
        run_node(&mut node, &identity, &mut dialer, &mut app, &mut rng, QUICK),
    )
    .await
    .unwrap();
    assert_eq!(stopped, Ok(()));
    assert_eq!(
        dialer.dials, 1,
        "no reconnect after the application stopped"
    );
    assert_eq!(
        app.echo.outcomes,
        vec![Ok(Ended::Closed { daemon: None })],
        "the node closed the connection"
    );
    assert_eq!(daemon.answered().await, 7);
    let reason = daemon
        .expect(|(_, ev)| match ev {
            OwnedDaemonEvent::Disconnected(reason) => Some(*reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, CloseReason::Peer(GoodbyeReason::Shutdown));
}
