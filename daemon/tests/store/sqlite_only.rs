//! What only the SQLite engine has: a lock another process can hold, its schema
//! version in the file, the file's mode and WAL, and durability across `kill -9` of
//! the process that owns the file.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use daemon::store::{EventOrigin, Receipt, SqliteStore, StoreError, StoreOptions, Write};
use protocol_core::session::{JournalRead, OwnedJournalOp};

use crate::conformance::{NOW, event, journal_batch, meta, node};

fn db(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("tern.db")
}

#[test]
fn a_failed_group_fails_every_waiter_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        busy_timeout: Duration::from_millis(200),
        ..StoreOptions::default()
    };
    let store = SqliteStore::open_with(&db(&dir), options).unwrap();
    store
        .write_blocking(vec![Write::AppendEvent(event("n", 0, NOW))])
        .unwrap();
    let commits = store.commits();

    // Another process takes the write lock: the writer cannot begin its transaction.
    let other = rusqlite::Connection::open(db(&dir)).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let pending: Vec<_> = (1..=5)
        .map(|i| store.write(vec![Write::AppendEvent(event("n", i, NOW))]))
        .collect();
    for p in pending {
        let err = p.wait().unwrap_err();
        assert!(matches!(err, StoreError::Busy(_)), "{err}");
    }
    assert!(store.failed_groups() >= 1);
    assert_eq!(store.commits(), commits);
    other.execute_batch("ROLLBACK").unwrap();

    let receipt = store
        .write_blocking(vec![Write::AppendEvent(event("n", 6, NOW))])
        .unwrap();
    assert_eq!(store.commits(), commits + 1);
    let bodies: Vec<Vec<u8>> = store
        .events_after(0, None, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.event.body)
        .collect();
    assert_eq!(bodies, [0u64, 6].map(|n| n.to_le_bytes().to_vec()));
    assert_eq!(receipt.events.len(), 1);
}

#[test]
fn a_database_from_a_newer_binary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(&db(&dir)).unwrap());
    let conn = rusqlite::Connection::open(db(&dir)).unwrap();
    let current: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert!(current >= 1);
    conn.pragma_update(None, "user_version", current + 1)
        .unwrap();
    drop(conn);
    let err = SqliteStore::open(&db(&dir)).unwrap_err();
    assert_eq!(
        err,
        StoreError::TooNew {
            found: current + 1,
            supported: current
        }
    );
    assert!(err.to_string().contains("newer version"));
}

#[test]
fn the_file_is_private_and_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in(&dir.path().join("state"), StoreOptions::default()).unwrap();
    store
        .write_blocking(vec![Write::PutNode(node("n", NOW))])
        .unwrap();
    let path = dir.path().join("state").join(daemon::store::DB_FILE);
    assert_eq!(store.path(), path);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

const CHILD_ENV: &str = "TERN_STORE_KILL_CHILD";
const WRITERS: u64 = 4;

/// Child half of `kill_9_loses_nothing_acknowledged`: writes events and journal
/// batches from several threads as fast as it can, printing each acknowledgement.
#[test]
fn kill_child_mode() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Arc::new(SqliteStore::open(Path::new(&path)).unwrap());
    let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let deadline = WallInstant::now() + Duration::from_secs(60);
    let threads: Vec<_> = (0..WRITERS)
        .map(|t| {
            let (store, stdout) = (store.clone(), stdout.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while WallInstant::now() < deadline {
                    i += 1;
                    let mut e = event(&format!("n{t}"), i, NOW + i);
                    e.origin = Some(EventOrigin {
                        session: [t as u8; 16],
                        stream_seq: i,
                    });
                    let batch = journal_batch(
                        &format!("k{t}"),
                        vec![
                            OwnedJournalOp::Append {
                                seq: i,
                                body: i.to_le_bytes().to_vec(),
                            },
                            OwnedJournalOp::Meta(meta(i)),
                        ],
                    );
                    let receipt: Receipt = store
                        .write_blocking(vec![Write::AppendEvent(e), Write::Journal(batch)])
                        .unwrap();
                    let seq = receipt.events[0].unwrap();
                    let mut out = stdout.lock().unwrap();
                    writeln!(out, "ack {t} {i} {seq}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn kill_9_loses_nothing_acknowledged() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sqlite_only::kill_child_mode",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Highest acknowledged counter per writer, and the event seq each ack reported.
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut acked_seqs: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut total = 0;
    while total < 600 {
        let Some(line) = lines.next() else { break };
        let line = line.unwrap();
        let Some(rest) = line.strip_prefix("ack ") else {
            continue;
        };
        let v: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
        acked.insert(v[0], v[1]);
        acked_seqs.insert((v[0], v[1]), v[2]);
        total += 1;
    }
    // SIGKILL while the writers are still going.
    child.kill().unwrap();
    child.wait().unwrap();
    // Acknowledgements printed before the kill but not read yet count too.
    for line in lines.map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("ack ") {
            let v: Vec<u64> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
            if v.len() == 3 {
                acked.insert(v[0], v[1]);
                acked_seqs.insert((v[0], v[1]), v[2]);
            }
        }
    }
    assert_eq!(
        acked.len() as u64,
        WRITERS,
        "every writer got acknowledgements"
    );

    let store = SqliteStore::open(&path).unwrap();
    for (&t, &high) in &acked {
        let events = store
            .events_after(0, Some(&format!("n{t}")), 1_000_000)
            .unwrap();
        let counters: Vec<u64> = events
            .iter()
            .map(|e| u64::from_le_bytes(e.event.body.as_slice().try_into().unwrap()))
            .collect();
        // Every acknowledged event, in order, once; possibly more not yet acknowledged.
        let expected: Vec<u64> = (1..=counters.len() as u64).collect();
        assert_eq!(
            counters, expected,
            "writer {t}: events out of order or duplicated"
        );
        assert!(
            counters.len() as u64 >= high,
            "writer {t}: acknowledged {high}, stored {}",
            counters.len()
        );
        for e in &events {
            let n = u64::from_le_bytes(e.event.body.as_slice().try_into().unwrap());
            if let Some(&seq) = acked_seqs.get(&(t, n)) {
                assert_eq!(e.seq, seq, "writer {t}: event {n} renumbered");
            }
        }

        let journal = store.load_journal(&format!("k{t}")).unwrap();
        let mut seqs = Vec::new();
        journal.messages(&mut |seq, _| seqs.push(seq)).unwrap();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        assert!(seqs.len() as u64 >= high);
        // Event and journal batch were one submission: they landed together.
        assert_eq!(seqs.len(), counters.len());
        assert_eq!(journal.stored_meta().unwrap().last_sent, seqs.len() as u64);
    }
    println!(
        "kill -9 after {total} acknowledgements: {:?} acknowledged per writer, all present",
        acked
    );
}
