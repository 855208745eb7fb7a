//! Benchmarks live in `benches/`; run them with `cargo bench -p benches`. The fleet load
//! generator against a real `ternd` is `src/bin/fleet.rs` (`fleet`).

pub mod fleet;
pub mod transports;
