//! The sensor stream against a real node session: readings queue in the session's
//! replay buffer and nowhere else, numbered without a gap.
#![allow(clippy::unwrap_used)]

use node_firmware::Board;
use node_firmware::sensor::SensorStream;
use protocol_core::session::{Config, NodeSession};
use protocol_core::time::Instant;

struct Thermometer {
    reads: u32,
    broken: bool,
}

impl Board for Thermometer {
    fn platform(&self) -> &'static str {
        "test"
    }
    fn set_led(&mut self, _: bool) {}
    fn led(&self) -> bool {
        false
    }
    fn temperature(&mut self) -> Option<f32> {
        self.reads += 1;
        (!self.broken).then_some(20.0 + self.reads as f32)
    }
}

fn session(storage: &mut [u8]) -> NodeSession<&mut [u8]> {
    let config = Config::embedded(512);
    NodeSession::new(config, "node-1", "test", Some(storage)).unwrap()
}

#[test]
fn a_reading_every_period_numbered_from_zero() {
    let mut storage = vec![0u8; Config::embedded(512).storage_len()];
    let mut s = session(&mut storage);
    let mut board = Thermometer {
        reads: 0,
        broken: false,
    };
    let mut stream = SensorStream::new(1000);
    let t0 = Instant::from_millis(5_000);
    stream.turn(&mut board, &mut s, t0).unwrap();
    assert_eq!((stream.queued(), s.unacked()), (1, 1));
    // Not due yet: nothing read, nothing sent.
    stream.turn(&mut board, &mut s, t0.plus_ms(999)).unwrap();
    assert_eq!((stream.queued(), board.reads), (1, 1));
    assert_eq!(stream.next_wake(), Some(t0.plus_ms(1000)));
    stream.turn(&mut board, &mut s, t0.plus_ms(1000)).unwrap();
    assert_eq!((stream.queued(), s.unacked()), (2, 2));
}

#[test]
fn a_full_replay_buffer_holds_the_reading_and_the_numbering() {
    let mut storage = vec![0u8; Config::embedded(512).storage_len()];
    let mut s = session(&mut storage);
    let mut board = Thermometer {
        reads: 0,
        broken: false,
    };
    let mut stream = SensorStream::new(10);
    let mut now = Instant::from_millis(0);
    // Never acknowledged: the 512-byte replay buffer fills.
    for _ in 0..200 {
        stream.turn(&mut board, &mut s, now).unwrap();
        now = now.plus_ms(10);
    }
    let queued = stream.queued();
    assert_eq!(
        s.unacked() as u32,
        queued,
        "every queued reading is in the session"
    );
    assert!(queued < 200, "the buffer never filled");
    // One reading was taken and waits; no more are read while it does.
    assert_eq!(board.reads, queued + 1);
}

#[test]
fn a_sensor_that_cannot_be_read_skips_the_period_not_a_number() {
    let mut storage = vec![0u8; Config::embedded(512).storage_len()];
    let mut s = session(&mut storage);
    let mut board = Thermometer {
        reads: 0,
        broken: true,
    };
    let mut stream = SensorStream::new(100);
    stream
        .turn(&mut board, &mut s, Instant::from_millis(0))
        .unwrap();
    assert_eq!((stream.queued(), s.unacked()), (0, 0));
    board.broken = false;
    stream
        .turn(&mut board, &mut s, Instant::from_millis(100))
        .unwrap();
    assert_eq!((stream.queued(), s.unacked()), (1, 1));
}

#[test]
fn a_stopped_stream_reads_nothing_more() {
    let mut storage = vec![0u8; Config::embedded(512).storage_len()];
    let mut s = session(&mut storage);
    let mut board = Thermometer {
        reads: 0,
        broken: false,
    };
    let mut stream = SensorStream::new(100);
    stream
        .turn(&mut board, &mut s, Instant::from_millis(0))
        .unwrap();
    stream.stop();
    stream
        .turn(&mut board, &mut s, Instant::from_millis(1000))
        .unwrap();
    assert_eq!(
        (stream.queued(), board.reads, stream.next_wake()),
        (1, 1, None)
    );
}
