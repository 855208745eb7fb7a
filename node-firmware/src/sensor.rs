//! The `sensor.temperature` stream: a reading every period while the node is connected,
//! numbered from boot.
//!
//! A reading is taken only once the previous one is in the session's replay buffer, so
//! readings queue in the session (which replays them across reconnects) and never
//! anywhere else: when the buffer is full the stream waits, and `seq` stays contiguous.
//! While the node is not connected no reading is taken.

use node_contract::Temperature;
use node_contract::names::{JSON, TEMPERATURE_EVENT};
use protocol_core::session::{NodeSession, SessionError};
use protocol_core::time::Instant;
use protocol_core::wire::Payload;

use crate::board::Board;
use crate::capabilities::json;

/// The stream's state, kept across connections.
#[derive(Debug)]
pub struct SensorStream {
    every_ms: u64,
    next_at: Option<Instant>,
    /// A reading taken but not queued yet (the replay buffer was full).
    waiting: Option<Temperature>,
    next_seq: u32,
}

impl SensorStream {
    /// A reading every `every_ms` milliseconds; 0 turns the stream off.
    pub const fn new(every_ms: u64) -> Self {
        Self {
            every_ms,
            next_at: None,
            waiting: None,
            next_seq: 0,
        }
    }

    /// Takes no more readings.
    pub fn stop(&mut self) {
        self.every_ms = 0;
        self.waiting = None;
    }

    /// Readings queued so far (the next reading's `seq`).
    pub fn queued(&self) -> u32 {
        self.next_seq
    }

    /// When the stream next wants a turn.
    pub fn next_wake(&self) -> Option<Instant> {
        if self.every_ms == 0 {
            return None;
        }
        self.next_at
    }

    /// Takes a reading if one is due and queues it; `Err` only for a reading that can
    /// never be sent (it is dropped, its `seq` skipped).
    pub fn turn<B: Board>(
        &mut self,
        board: &mut B,
        session: &mut NodeSession<&mut [u8]>,
        now: Instant,
    ) -> Result<(), SessionError> {
        if self.every_ms == 0 {
            return Ok(());
        }
        let due = self.next_at.is_none_or(|at| now >= at);
        if self.waiting.is_none() && due {
            if let Some(celsius) = board.temperature().filter(|c| c.is_finite()) {
                self.waiting = Some(Temperature {
                    celsius,
                    seq: self.next_seq,
                });
            }
            self.next_at = Some(now.plus_ms(self.every_ms));
        }
        let Some(reading) = self.waiting else {
            return Ok(());
        };
        let mut out = [0u8; 64];
        let Ok(data) = json(&reading, &mut out) else {
            self.waiting = None;
            return Err(SessionError::TooLarge);
        };
        let payload = Payload {
            content_type: JSON,
            data,
        };
        match session.send_event(TEMPERATURE_EVENT, payload) {
            Ok(_) => {
                self.waiting = None;
                self.next_seq = self.next_seq.wrapping_add(1);
                Ok(())
            }
            // Room comes with the daemon's acknowledgement; storage with the next turn.
            Err(SessionError::Full | SessionError::NoStorage) => Ok(()),
            Err(e) => {
                self.waiting = None;
                self.next_seq = self.next_seq.wrapping_add(1);
                Err(e)
            }
        }
    }
}
