//! The firmware's capabilities, called as the app calls them.
#![allow(clippy::unwrap_used)]

use node_contract::{Health, Stack, Usage};
use node_firmware::Board;
use node_firmware::capabilities::{self, Capability, REGISTERED};
use proptest::prelude::*;
use protocol_core::wire::RejectCode;

#[derive(Default)]
struct TestBoard {
    led: bool,
}

impl Board for TestBoard {
    fn platform(&self) -> &'static str {
        "test"
    }
    fn set_led(&mut self, on: bool) {
        self.led = on;
    }
    fn led(&self) -> bool {
        self.led
    }
    fn temperature(&mut self) -> Option<f32> {
        Some(21.5)
    }
    fn static_ram(&self) -> Option<Usage> {
        Some(Usage {
            used_bytes: 30_000,
            free_bytes: 166_608,
        })
    }
    fn stack(&self) -> Option<Stack> {
        Some(Stack {
            size_bytes: 16_384,
            high_water_bytes: 5_000,
        })
    }
}

#[test]
fn the_registered_capabilities_are_the_contract_s() {
    let names: Vec<_> = REGISTERED.iter().map(|d| d.name).collect();
    assert_eq!(
        names,
        ["echo", "system.health", "board.led", "tern.certificate"]
    );
    for d in REGISTERED {
        assert_eq!(Capability::named(d.name, d.input).map(|_| ()), Ok(()));
    }
}

#[test]
fn unknown_capabilities_and_content_types_are_refused() {
    let e = Capability::named("desktop.open_url", "application/json").unwrap_err();
    assert_eq!(e.code, RejectCode::UnknownCapability);
    let e = Capability::named("echo", "text/plain").unwrap_err();
    assert_eq!(e.code, RejectCode::BadInput);
}

#[test]
fn echo_answers_its_input_unchanged() {
    for input in [&b"{\"x\":1}"[..], b" [1, 2] ", b"null", b"1.5", b""] {
        assert_eq!(capabilities::echo(input), input);
    }
}

#[test]
fn health_carries_uptime_and_the_board_s_figures() {
    let board = TestBoard::default();
    let mut out = [0u8; capabilities::ANSWER_LEN];
    let json = capabilities::health(&board, 12_345, &mut out).unwrap();
    let health: Health<'_> = serde_json::from_slice(json).unwrap();
    assert_eq!(health.uptime_s, 12.345);
    assert_eq!(health.static_ram, board.static_ram());
    assert_eq!(health.stack, board.stack());
    assert_eq!(
        (health.heap, health.hostname, health.load),
        (None, None, None)
    );
}

#[test]
fn the_led_switches_and_says_its_state() {
    let mut board = TestBoard::default();
    let mut out = [0u8; 64];
    let json = capabilities::led(&mut board, br#"{"on":true}"#, &mut out).unwrap();
    assert_eq!(json, br#"{"on":true}"#);
    assert!(board.led);
    for bad in [
        &br#"{"on":"yes"}"#[..],
        b"{}",
        br#"{"on":true,"x":1}"#,
        b"on",
    ] {
        let e = capabilities::led(&mut board, bad, &mut out).unwrap_err();
        assert_eq!(e.code, RejectCode::BadInput, "{bad:?}");
        assert!(board.led, "a refused call changed the LED");
    }
}

#[test]
fn an_answer_too_large_for_the_buffer_is_a_typed_refusal() {
    let board = TestBoard::default();
    let mut out = [0u8; 8];
    let e = capabilities::health(&board, 1, &mut out).unwrap_err();
    assert_eq!(e.code, RejectCode::Busy);
}

proptest! {
    #[test]
    fn no_input_makes_a_capability_panic(input in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut board = TestBoard::default();
        let mut out = [0u8; capabilities::ANSWER_LEN];
        let _ = capabilities::led(&mut board, &input, &mut out);
    }
}
