//! The simulated board: an LED that is a flag, a temperature sensor that drifts, the
//! figures of a 192 KiB part, and a stop request from a signal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use node_contract::Usage;
use node_firmware::Board;

/// The RAM of the part this board stands in for (an STM32F429's SRAM).
const PART_RAM: u32 = 192 * 1024;

/// Set by SIGTERM or SIGINT.
pub static STOP: AtomicBool = AtomicBool::new(false);

#[derive(Debug)]
pub struct SimBoard {
    led: bool,
    readings: u32,
    /// What the firmware reserves statically: its arena, sockets and record.
    reserved: u32,
}

impl SimBoard {
    pub fn new(reserved: usize) -> Self {
        Self {
            led: false,
            readings: 0,
            reserved: u32::try_from(reserved).unwrap_or(u32::MAX),
        }
    }
}

impl Board for SimBoard {
    const STOP_POLL_MS: Option<u64> = Some(200);

    fn platform(&self) -> &'static str {
        "linux-tap"
    }

    fn set_led(&mut self, on: bool) {
        if self.led != on {
            log::info!("LED {}", if on { "on" } else { "off" });
        }
        self.led = on;
    }

    fn led(&self) -> bool {
        self.led
    }

    fn temperature(&mut self) -> Option<f32> {
        // A slow sawtooth around 24 °C, so a reader sees readings change.
        self.readings = self.readings.wrapping_add(1);
        Some(24.0 + (self.readings % 20) as f32 * 0.05)
    }

    fn static_ram(&self) -> Option<Usage> {
        Some(Usage {
            used_bytes: self.reserved,
            free_bytes: PART_RAM.saturating_sub(self.reserved),
        })
    }

    fn unix_time(&self) -> Option<u64> {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    }

    fn stop_requested(&self) -> bool {
        STOP.load(Ordering::Relaxed)
    }
}
