//! Round-trip percentiles and throughput sampling.

use std::time::{Duration, Instant};

/// Percentiles of a set of round trips.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    pub samples: usize,
}

impl Latency {
    /// `None` for an empty set.
    pub fn of(mut samples: Vec<Duration>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: usize| samples[(samples.len() * q / 100).min(samples.len() - 1)];
        Some(Self {
            p50: at(50),
            p99: at(99),
            samples: samples.len(),
        })
    }
}

/// Payload throughput in MB/s (10^6 bytes) of a byte counter that a running sender
/// drives: read after `warm_up`, and again `window` later.
pub async fn throughput(counter: impl Fn() -> u64, warm_up: Duration, window: Duration) -> f64 {
    tokio::time::sleep(warm_up).await;
    let (b0, t0) = (counter(), Instant::now());
    tokio::time::sleep(window).await;
    let (b1, t1) = (counter(), Instant::now());
    b1.saturating_sub(b0) as f64 / t1.duration_since(t0).as_secs_f64() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_set() {
        let samples = (1..=100).rev().map(Duration::from_micros).collect();
        let l = Latency::of(samples).expect("samples");
        assert_eq!(l.p50, Duration::from_micros(51));
        assert_eq!(l.p99, Duration::from_micros(100));
        assert_eq!(l.samples, 100);
        assert_eq!(Latency::of(Vec::new()), None);
    }
}
