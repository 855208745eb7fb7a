//! The caller's memory: what each buffer costs and how a bad one is refused.
#![allow(clippy::unwrap_used)]

mod common;

use common::rng;
use protocol_core::session::Config;
use transport_embedded::buffers::{Buffer, BufferTooSmall};
use transport_embedded::session::{Node, NodeSetupError};
use transport_embedded::tls::{TLS_READ_LEN, TLS_WRITE_LEN, tls_write_len};
use transport_embedded::{Identity, NodeKey, NodeOptions, PairingBuffers, SessionBuffers};

fn identity() -> Identity {
    Identity::new(
        "sensor-7",
        NodeKey::generate(&mut rng(1)),
        &[0x30; 500],
        &[],
        transport_embedded::tls::Fingerprint([7; 32]),
        "192.0.2.1:7443",
    )
    .unwrap()
}

#[test]
fn the_documented_sizes_hold() {
    // Records of at most 1024 bytes from the daemon: 1019 of plaintext, sealed.
    assert_eq!(TLS_READ_LEN, 1036);
    // The largest client certificate an identity keeps, as one record.
    assert_eq!(TLS_WRITE_LEN, 1059);
    assert_eq!(tls_write_len(500), 535);
    let config = Config::embedded(1024);
    assert_eq!(config.storage_len(), 3085);
    assert_eq!(SessionBuffers::arena_len(&config), 11_332);
    assert_eq!(PairingBuffers::arena_len(), 11_276);
}

#[test]
fn an_arena_is_carved_once_and_a_short_one_refused() {
    let config = Config::embedded(1024);
    let mut memory = vec![0u8; SessionBuffers::arena_len(&config)];
    let buffers = SessionBuffers::carve(&config, &mut memory).unwrap();
    assert_eq!(buffers.storage.len(), config.storage_len());
    assert_eq!(buffers.tls_read.len(), TLS_READ_LEN);
    let mut short = vec![0u8; SessionBuffers::arena_len(&config) - 1];
    assert!(SessionBuffers::carve(&config, &mut short).is_err());
    let mut short = vec![0u8; PairingBuffers::arena_len() - 1];
    assert!(PairingBuffers::carve(&mut short).is_err());
}

#[test]
fn a_node_refuses_buffers_too_small_and_a_journaled_session() {
    let config = Config::embedded(1024);
    let identity = identity();

    let mut memory = vec![0u8; SessionBuffers::arena_len(&config)];
    let mut buffers = SessionBuffers::carve(&config, &mut memory).unwrap();
    let len = buffers.tls_read.len();
    buffers.tls_read = &mut buffers.tls_read[..len - 1];
    assert_eq!(
        Node::new(config, &identity, "test", buffers, NodeOptions::default()).unwrap_err(),
        NodeSetupError::Buffer(BufferTooSmall {
            buffer: Buffer::TlsRead,
            needed: TLS_READ_LEN,
            available: TLS_READ_LEN - 1,
        })
    );

    let mut memory = vec![0u8; SessionBuffers::arena_len(&config)];
    let buffers = SessionBuffers::carve(&config, &mut memory).unwrap();
    let journaled = Config::server(1024);
    assert_eq!(
        Node::new(
            journaled,
            &identity,
            "test",
            buffers,
            NodeOptions::default()
        )
        .unwrap_err(),
        NodeSetupError::Journaled
    );
}
