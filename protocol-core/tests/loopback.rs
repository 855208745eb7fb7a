//! The loopback example runs as a test: a daemon and a node over a real TCP connection,
//! both driven by the loop `SESSION.md` shows, round-trip an `echo` call.

#[path = "../examples/loopback.rs"]
mod loopback;

#[test]
fn an_echo_call_round_trips_over_tcp() {
    loopback::main().expect("the echo call round-trips");
}
