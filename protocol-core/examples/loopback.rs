//! A daemon and a node over a real TCP connection on loopback, both driven by the same
//! loop (`drive`): the node registers `echo`, the daemon calls it, the node answers.
//!
//! `cargo run -p protocol-core --example loopback`

use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use chacha20::ChaCha20Rng;
use protocol_core::pump::{Alloc, Pump, ReadBuf, Step};
use protocol_core::session::{
    CallState, Config, DaemonSession, Instant, MemJournal, NodeSession, OwnedDaemonEvent,
    OwnedNodeEvent, Session,
};
use protocol_core::wire::{
    Capabilities, CapabilityDescriptor, GoodbyeReason, Outcome, Payload, Register,
};
use rand_core::SeedableRng;

/// Drives one connection until it closes. `app` polls the events and reacts.
fn drive<S: Session<Buf = Vec<u8>>>(
    s: &mut S,
    journal: &mut MemJournal,
    mut conn: TcpStream,
    mut app: impl FnMut(&mut S),
) -> io::Result<()> {
    let (mut pump, mut rx) = (Pump::new(), ReadBuf::new(vec![0u8; 16384]));
    s.handle_connected(now());
    loop {
        match pump.poll(now(), s, &mut Alloc, &mut rx) {
            Step::Events(s) => app(s), // poll_event until None: react, send commands
            Step::Journal(batch) => {
                // A real store writes the batch in one transaction, then confirms it.
                if let Some(id) = batch.stage(|op| journal.apply(&op)) {
                    s.handle_journal_committed(now(), id)
                        .map_err(io::Error::other)?;
                }
            }
            Step::Transmit(out) => conn.write_all(out.bytes())?,
            Step::Close(out) => return conn.write_all(out.bytes()),
            Step::Wait(wait) if !wait.read => {
                // A frame waits for the application: nothing to read until the timer.
                std::thread::sleep(wait.deadline.map_or(Duration::from_millis(10), wait_until));
                s.handle_timeout(now());
            }
            Step::Wait(wait) => {
                conn.set_read_timeout(wait.deadline.map(wait_until))?;
                match conn.read(rx.space()) {
                    Ok(0) => break s.handle_disconnected(now()),
                    Ok(n) => rx.filled(n),
                    Err(e) if is_timeout(&e) => s.handle_timeout(now()),
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
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
                            if let (CallState::Succeeded, Some(o)) = (state, &outcome)
                                && let Outcome::Success(p) = o.as_outcome()
                            {
                                answer = Some(p.data.to_vec());
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
