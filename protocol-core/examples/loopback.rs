//! A daemon and a node over a real TCP connection on loopback, both driven by the same
//! loop (`drive`): the node registers `echo`, the daemon calls it, the node answers.
//!
//! `cargo run -p protocol-core --example loopback`

use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use chacha20::ChaCha20Rng;
use protocol_core::frame::FrameDecoder;
use protocol_core::session::{
    CallState, Config, DaemonSession, Instant, MemJournal, NodeSession, OwnedDaemonEvent,
    OwnedNodeEvent, Session, Transmit,
};
use protocol_core::wire::{
    Capabilities, CapabilityDescriptor, GoodbyeReason, Outcome, Payload, Register,
};
use rand_core::SeedableRng;

/// Drives one connection until it closes. `app` polls the events and reacts.
fn drive<S>(
    s: &mut S,
    journal: &mut MemJournal,
    mut conn: TcpStream,
    mut app: impl FnMut(&mut S),
) -> io::Result<()>
where
    S: Session<Storage = Vec<u8>>,
{
    let max = s.config().max_frame;
    let mut dec = FrameDecoder::new(vec![0; max as usize], max).map_err(io::Error::other)?;
    let (mut rx, mut tx) = ([0u8; 16384], vec![0; s.config().transmit_len()]);
    s.handle_connected(now());
    loop {
        app(s); // poll_event until None: the application reacts and sends commands
        commit(s, journal); // poll_journal until None, write the batch, confirm it
        let mut filled = 0;
        let full = loop {
            match s.poll_transmit(now(), &mut tx[filled..]) {
                Ok(Some(Transmit::Frame(n))) => filled += n,
                Ok(Some(Transmit::Close)) => return conn.write_all(&tx[..filled]),
                Ok(None) => break false,
                Err(_) => break true, // the batch is full: write it, then go on
            }
        };
        conn.write_all(&tx[..filled])?;
        if !full {
            conn.set_read_timeout(s.poll_timeout().map(wait_until))?;
            match conn.read(&mut rx) {
                Ok(0) => break s.handle_disconnected(now()),
                Ok(n) => feed(s, &mut dec, &rx[..n]),
                Err(e) if is_timeout(&e) => s.handle_timeout(now()),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Cuts frames out of the bytes read and feeds them; lends storage when a frame needs it.
fn feed<S: Session<Storage = Vec<u8>>>(
    s: &mut S,
    dec: &mut FrameDecoder<Vec<u8>>,
    mut input: &[u8],
) {
    while !input.is_empty() {
        match dec.decode(input) {
            Ok(p) => {
                if let Some(frame) = p.frame {
                    if !s.has_storage() {
                        let _ = s.lend(vec![0; s.config().storage_len()]);
                    }
                    let _ = s.handle_frame(now(), frame);
                }
                input = &input[p.consumed..];
            }
            Err(e) => return s.handle_frame_error(now(), e),
        }
    }
}

/// Writes a batch to the journal (in a real store: one transaction, with the
/// application's effects), confirms it, and takes back storage the session no longer
/// needs.
fn commit<S: Session<Storage = Vec<u8>>>(s: &mut S, journal: &mut MemJournal) {
    let mut wrote = false;
    while let Some(op) = s.poll_journal() {
        journal.apply(&op);
        wrote = true;
    }
    if wrote {
        s.handle_journal_committed(now());
    }
    drop(s.reclaim());
}

fn now() -> Instant {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    let elapsed = START.get_or_init(std::time::Instant::now).elapsed();
    Instant::from_millis(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

fn wait_until(at: Instant) -> Duration {
    Duration::from_millis(now().ms_until(at).max(1))
}

const JSON: &str = "application/json";

pub fn main() -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let daemon = std::thread::spawn(move || -> io::Result<Option<Vec<u8>>> {
        let (conn, _) = listener.accept()?;
        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        let mut s: DaemonSession<Vec<u8>> =
            DaemonSession::new(Config::server(64 * 1024), "node-1", &mut rng)
                .map_err(io::Error::other)?;
        let mut journal = MemJournal::new();
        let mut answer = None;
        drive(&mut s, &mut journal, conn, |s| {
            while let Some(ev) = s.poll_event() {
                match OwnedDaemonEvent::from(ev) {
                    OwnedDaemonEvent::Register { capabilities, .. } => {
                        println!(
                            "daemon: node registered {:?}",
                            capabilities.iter().map(|c| &c.name).collect::<Vec<_>>()
                        );
                        let input = Payload {
                            content_type: JSON,
                            data: br#"{"x":1}"#,
                        };
                        if !s.has_storage() {
                            let _ = s.lend(vec![0; s.config().storage_len()]);
                        }
                        let id = s
                            .call(now(), "echo", input, 5_000)
                            .map_err(io::Error::other);
                        println!("daemon: call {id:?} queued");
                    }
                    OwnedDaemonEvent::CallUpdate {
                        call_id,
                        state,
                        outcome,
                        ..
                    } => {
                        println!("daemon: call {call_id} {state:?}");
                        if state.is_final() {
                            if let (CallState::Succeeded, Some(o)) = (state, &outcome) {
                                if let Outcome::Success(p) = o.as_outcome() {
                                    answer = Some(p.data.to_vec());
                                }
                            }
                            s.close(now(), GoodbyeReason::Shutdown);
                        }
                    }
                    other => println!("daemon: {other:?}"),
                }
            }
        })?;
        Ok(answer)
    });

    let conn = TcpStream::connect(addr)?;
    let mut node: NodeSession<Vec<u8>> = NodeSession::new(
        Config::embedded(1024),
        "node-1",
        "loopback",
        Some(vec![0; Config::embedded(1024).storage_len()]),
    )
    .map_err(io::Error::other)?;
    let echo = [CapabilityDescriptor {
        name: "echo",
        version: 1,
        input: JSON,
        output: JSON,
        needs_approval: false,
    }];
    let mut journal = MemJournal::new();
    drive(&mut node, &mut journal, conn, |s| {
        while let Some(ev) = s.poll_event() {
            match OwnedNodeEvent::from(ev) {
                OwnedNodeEvent::Connected { resumed: false, .. } => {
                    let caps = Capabilities::new(&echo).expect("one capability");
                    let _ = s.register(Register { capabilities: caps });
                }
                OwnedNodeEvent::Call {
                    call_id,
                    capability,
                    input,
                    ..
                } => {
                    println!("node: call {call_id} {capability}");
                    let out = Payload {
                        content_type: &input.content_type,
                        data: &input.data,
                    };
                    let _ = s.complete(call_id, Outcome::Success(out));
                }
                other => println!("node: {other:?}"),
            }
        }
    })?;
    let answer = daemon
        .join()
        .map_err(|_| io::Error::other("daemon thread"))??;
    let answer = answer.ok_or_else(|| io::Error::other("no answer"))?;
    println!("echo answered {}", String::from_utf8_lossy(&answer));
    assert_eq!(answer, br#"{"x":1}"#);
    Ok(())
}
