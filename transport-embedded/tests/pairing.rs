//! Pairing over TLS against the daemon's real pairing path (listener, `serve_pairing`,
//! the daemon's pairing service and CA), ending with an identity that authenticates the
//! node plane.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{Daemon, EchoApp, HostDialer, arena, rng};
use daemon::ca::Fingerprint as CaFingerprint;
use protocol_core::pairing::PairingError;
use protocol_core::session::Config;
use protocol_core::wire::ErrorCode;
use transport_embedded::session::Node;
use transport_embedded::tls::TlsFailure;
use transport_embedded::{
    Identity, Invitation, NodeKey, NodeOptions, PairError, PairOptions, PairingBuffers,
    SessionBuffers, pair, run_session,
};
use transport_tokio::clock::now;
use transport_tokio::tcp::ListenerConfig;

const CONFIG: Config = Config::embedded(1024);

async fn pair_with(
    invitation: &Invitation<'_>,
    key: &NodeKey,
    on_awaiting_approval: &mut dyn FnMut(),
) -> Result<Identity, PairError> {
    let mut memory = arena(PairingBuffers::arena_len());
    let buffers = PairingBuffers::carve(&mut memory).unwrap();
    pair(
        &mut HostDialer::default(),
        invitation,
        key,
        buffers,
        &mut rng(11),
        PairOptions::default(),
        on_awaiting_approval,
    )
    .await
}

/// The node plane with a paired identity: the daemon answers the node's registration
/// with a call, and the node's answer arrives.
async fn node_plane_works(daemon: &mut Daemon, identity: &Identity) {
    let mut memory = arena(SessionBuffers::arena_len(&CONFIG));
    let buffers = SessionBuffers::carve(&CONFIG, &mut memory).unwrap();
    let mut node = Node::new(CONFIG, identity, "test", buffers, NodeOptions::default()).unwrap();
    let mut app = EchoApp::default();
    let (mut dialer, mut rng) = (HostDialer::default(), rng(2));
    let (outcome, answered) = tokio::join!(
        run_session(&mut node, identity, &mut dialer, &mut app, &mut rng),
        daemon.answered()
    );
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(answered, 7);
}

#[tokio::test]
async fn a_code_alone_pairs_and_the_identity_authenticates_the_node_plane() {
    let mut daemon = Daemon::start().await;
    let code = daemon.code("sensor-7", false);
    let address = daemon.address();
    let invitation = Invitation::Code {
        code,
        daemon: &address,
    };
    let key = NodeKey::generate(&mut rng(7));
    let identity = pair_with(&invitation, &key, &mut || panic!("no approval asked"))
        .await
        .unwrap();
    assert_eq!(identity.device_id(), "sensor-7");
    assert_eq!(identity.server_pin(), daemon.pin());
    assert_eq!(identity.daemon(), address);
    assert_eq!(identity.key(), &key);
    assert_eq!(identity.ca_cert(), daemon.ca.certificate_der());
    let info = daemon.ca.verify_client(identity.client_cert()).unwrap();
    assert_eq!(info.device_id, "sensor-7");
    node_plane_works(&mut daemon, &identity).await;
}

#[tokio::test]
async fn a_uri_pairs_with_the_daemon_it_names() {
    let mut daemon = Daemon::start().await;
    let code = daemon.code("sensor-8", false);
    let uri = daemon
        .responder
        .service()
        .lock()
        .unwrap()
        .uri(&daemon.address(), &code)
        .unwrap();
    let invitation = Invitation::uri(&uri).unwrap();
    let key = NodeKey::generate(&mut rng(8));
    let identity = pair_with(&invitation, &key, &mut || {}).await.unwrap();
    assert_eq!(identity.server_pin(), daemon.pin());
    node_plane_works(&mut daemon, &identity).await;
}

#[tokio::test]
async fn a_uri_naming_another_daemon_is_refused_at_the_handshake() {
    let daemon = Daemon::start().await;
    let code = daemon.code("sensor-8", false);
    let uri = protocol_core::pairing::PairingUri::new(&daemon.address(), code, [9; 32])
        .unwrap()
        .to_string();
    let invitation = Invitation::uri(&uri).unwrap();
    let refused = pair_with(&invitation, &NodeKey::generate(&mut rng(8)), &mut || {}).await;
    match refused {
        Err(PairError::Tls(TlsFailure::Refused(
            transport_embedded::tls::VerifyRefusal::PinMismatch,
        ))) => {}
        other => panic!("expected a pin mismatch, got {other:?}"),
    }
}

/// A listener at its cap answers with `Error(Overloaded)` instead of pairing: the node
/// reports that refusal, not a broken pairing.
#[tokio::test]
async fn a_listener_at_its_cap_refuses_the_pairing_out_loud() {
    let daemon = Daemon::start_listening(ListenerConfig {
        max_connections: 0,
        ..ListenerConfig::default()
    })
    .await;
    let address = daemon.address();
    let invitation = Invitation::Code {
        code: daemon.code("sensor-9", false),
        daemon: &address,
    };
    let refused = pair_with(&invitation, &NodeKey::generate(&mut rng(9)), &mut || {}).await;
    match refused {
        Err(PairError::Refused(ErrorCode::Overloaded)) => {}
        other => panic!("expected Overloaded, got {other:?}"),
    }
}

#[tokio::test]
async fn the_sealed_answer_must_name_the_certificate_of_this_connection() {
    // A daemon reached through a relay that terminates TLS with its own certificate:
    // the PAKE goes through, but the daemon names its real certificate, not the one the
    // node saw on this connection.
    let base = Daemon::start().await;
    let relay = base
        .ca
        .issue_server(&["127.0.0.1".into()], now().as_millis(), &mut rng(31))
        .unwrap();
    let announced = CaFingerprint(base.server.fingerprint.0);
    let daemon = Daemon::start_with(Arc::clone(&base.ca), relay, announced).await;
    let address = daemon.address();
    let invitation = Invitation::Code {
        code: daemon.code("sensor-9", false),
        daemon: &address,
    };
    let refused = pair_with(&invitation, &NodeKey::generate(&mut rng(9)), &mut || {}).await;
    match refused {
        Err(PairError::Pairing(PairingError::FingerprintMismatch)) => {}
        other => panic!("expected a fingerprint mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_code_fails_with_the_pakes_verdict() {
    let daemon = Daemon::start().await;
    let code = daemon.code("sensor-10", false);
    let wrong = protocol_core::pairing::PairingCode::new(code.id(), 12_345_678).unwrap();
    let address = daemon.address();
    let invitation = Invitation::Code {
        code: wrong,
        daemon: &address,
    };
    let refused = pair_with(&invitation, &NodeKey::generate(&mut rng(10)), &mut || {}).await;
    match refused {
        Err(PairError::Pairing(PairingError::WrongCode)) => {}
        other => panic!("expected a wrong code, got {other:?}"),
    }
}

#[tokio::test]
async fn an_operators_approval_completes_a_waiting_pairing() {
    let daemon = Daemon::start().await;
    let code = daemon.code("sensor-11", true);
    let code_id = code.id();
    let address = daemon.address();
    let invitation = Invitation::Code {
        code,
        daemon: &address,
    };
    let key = NodeKey::generate(&mut rng(12));
    let (asked_tx, mut asked) = tokio::sync::mpsc::unbounded_channel();
    let mut told = move || {
        let _ = asked_tx.send(());
    };
    let responder = daemon.responder.clone();
    let (paired, ()) = tokio::join!(pair_with(&invitation, &key, &mut told), async move {
        tokio::time::timeout(common::WAIT, asked.recv())
            .await
            .unwrap()
            .unwrap();
        responder.approve(now(), code_id).unwrap();
    });
    assert_eq!(paired.unwrap().device_id(), "sensor-11");
}
