//! Benchmarks live in `benches/`; run them with `cargo bench -p benches`.

pub mod transports;
