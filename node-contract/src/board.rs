//! A board's LED (`board.led`) and temperature sensor (`sensor.temperature`).

use serde::{Deserialize, Serialize};

/// `board.led`'s input: `{"on": true}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetLed {
    pub on: bool,
}

/// `board.led`'s output: the LED's state once switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedState {
    pub on: bool,
}

/// A `sensor.temperature` event: `{"celsius": 21.5, "seq": 7}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Temperature {
    /// Finite: JSON has no NaN or infinity, and both encoders write `null` for them,
    /// which no reader takes as a temperature.
    pub celsius: f32,
    /// Counts readings from boot, wrapping: a jump shows readings that never reached
    /// the daemon (a small node may evict old telemetry when its buffer is full), a
    /// fall back to 0 a reboot.
    pub seq: u32,
}
