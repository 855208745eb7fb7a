//! The checks every store engine passes, each run against SQLite and PostgreSQL (see
//! `main.rs`): records, group commit, refusals, events, journals against the in-memory
//! reference, extreme numbers, ownership fencing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant as WallInstant;

use chacha20::ChaCha20Rng;
use daemon::ca::{CertificateAuthority, Fingerprint, IssuancePolicy};
use daemon::pairing::{PairingService, PairingSettings};
use daemon::revocation::{RevocationRecord, Revoked};
use daemon::store::{
    Call, CallFilter, CallStatus, CallUpdate, Capability, Device, EventOrigin, NewEvent, Node,
    Operator, OperatorRole, Payload, RetentionPolicy, StoreError, StoreOptions, Write,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use protocol_core::session::{
    CallRecord, CallState, Config, DaemonSession, JournalMeta, JournalRead, MemJournal,
    OwnedJournalOp, SeenCall, Slot,
};
use protocol_core::time::Instant;
use protocol_core::wire::Payload as SessionPayload;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use spake2plus::rand_core::SeedableRng;
use transport_tokio::journal::{Batch, JournalStore, MemJournals};

use crate::WriteNow;
use crate::engine::Engine;

pub const NOW: u64 = 1_800_000_000_000;

pub fn event(node: &str, n: u64, at_ms: u64) -> NewEvent {
    NewEvent {
        node: node.into(),
        name: "tick".into(),
        content_type: "application/octet-stream".into(),
        body: n.to_le_bytes().to_vec(),
        at_ms,
        origin: None,
    }
}

pub fn node(id: &str, seen: u64) -> Node {
    Node {
        id: id.into(),
        first_seen_ms: seen,
        last_seen_ms: seen,
        online: true,
        platform: Some("linux".into()),
        address: None,
        capabilities: vec![Capability {
            name: "system.health".into(),
            version: 1,
            input: "application/json".into(),
            output: "application/json".into(),
            needs_approval: false,
        }],
    }
}

fn call(id: u64, node: &str) -> Call {
    Call {
        id,
        node: node.into(),
        capability: "system.health".into(),
        input: Payload {
            content_type: "application/json".into(),
            bytes: b"{}".to_vec(),
        },
        state: CallStatus::Queued,
        output: None,
        error: None,
        created_ms: NOW,
        updated_ms: NOW,
        deadline_ms: u64::MAX,
        session_call: None,
        timed_out_ms: None,
    }
}

pub fn meta(last_sent: u64) -> JournalMeta {
    JournalMeta {
        session: Some([9; 16]),
        established: true,
        last_sent,
        acked: 0,
        received: u64::MAX,
        next_call_id: u64::MAX,
        id_state: [u64::MAX, 1],
    }
}

pub fn journal_batch(key: &str, ops: Vec<OwnedJournalOp>) -> Batch {
    Batch {
        key: key.into(),
        ops,
    }
}

pub async fn identity_devices_revocations_and_pairings_persist(e: &Engine) {
    let mut rng = ChaCha20Rng::from_seed([3; 32]);
    let ca =
        CertificateAuthority::create("tern CA", NOW, IssuancePolicy::default(), &mut rng).unwrap();
    let server = ca
        .issue_server(&["ternd.test".into()], NOW, &mut rng)
        .unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let client = ca.issue_client(csr.der(), "node-1", NOW, &mut rng).unwrap();
    let device = Device {
        device_id: "node-1".into(),
        fingerprint: client.fingerprint,
        cert_der: client.der.clone(),
        paired_at_ms: NOW,
        name: Some("kitchen".into()),
    };
    let ca = Arc::new(ca);
    let mut pairing = PairingService::new(
        ca.clone(),
        server.fingerprint,
        PairingSettings::default(),
        Instant::from_millis(NOW),
    )
    .unwrap();
    pairing
        .create_code(
            Instant::from_millis(NOW),
            "node-2",
            None,
            Some(true),
            &mut rng,
        )
        .unwrap();
    pairing
        .create_code(Instant::from_millis(NOW), "node-3", None, None, &mut rng)
        .unwrap();
    let records = pairing.records();
    assert_eq!(records.len(), 2);
    let revoked_cert = RevocationRecord {
        what: Revoked::Certificate(Fingerprint([0xab; 32])),
        revoked_at_ms: NOW,
        reason: "lost".into(),
    };
    let revoked_device = RevocationRecord {
        what: Revoked::Device("node-9".into()),
        revoked_at_ms: NOW + 1,
        reason: "stolen".into(),
    };

    {
        let store = e.open().await;
        assert_eq!(store.ca().await.unwrap(), None);
        assert!(store.server_identity().await.unwrap().is_none());
        let mut writes = vec![
            Write::PutCa(ca.to_stored()),
            Write::PutServerIdentity(server.clone()),
            Write::PutDevice(device.clone()),
            Write::PutRevocation(revoked_cert.clone()),
            Write::PutRevocation(revoked_device.clone()),
        ];
        writes.extend(records.iter().cloned().map(Write::PutPairing));
        store.write_now(writes).unwrap();

        // A device whose fingerprint is not its certificate's is refused, whole.
        let mut forged = device.clone();
        forged.device_id = "node-2".into();
        forged.fingerprint = Fingerprint([1; 32]);
        let err = store
            .write_now(vec![
                Write::DeletePairing {
                    code_id: records[0].code_id,
                    verifier: records[0].verifier_record.clone(),
                },
                Write::PutDevice(forged),
            ])
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
        assert_eq!(store.pairing_records().await.unwrap().len(), 2);
    }

    let store = e.open().await;
    let stored = store.ca().await.unwrap().unwrap();
    assert_eq!(stored, ca.to_stored());
    let reloaded = CertificateAuthority::from_stored(&stored).unwrap();
    assert_eq!(reloaded.fingerprint(), ca.fingerprint());
    let back = store.server_identity().await.unwrap().unwrap();
    assert!(back == server, "server identity differs after reopening");
    assert_eq!(store.devices().await.unwrap(), vec![device.clone()]);
    assert_eq!(store.device("node-1").await.unwrap(), Some(device.clone()));
    // A renewal changes the certificate, not when the device paired or its name.
    let renewed = Device {
        paired_at_ms: NOW + 99,
        name: None,
        ..device.clone()
    };
    store
        .write(vec![Write::RenewDevice(renewed)])
        .await
        .unwrap();
    assert_eq!(store.device("node-1").await.unwrap(), Some(device.clone()));
    assert_eq!(
        store
            .device_by_fingerprint(&client.fingerprint)
            .await
            .unwrap(),
        Some(device.clone())
    );
    assert_eq!(store.device("node-2").await.unwrap(), None);
    assert_eq!(
        store.revocations().await.unwrap(),
        vec![revoked_cert.clone(), revoked_device.clone()]
    );
    let mut sorted = records.clone();
    sorted.sort_by_key(|r| r.code_id);
    assert_eq!(store.pairing_records().await.unwrap(), sorted);

    // The records rebuild the live services.
    let set = daemon::revocation::RevocationSet::from_records(store.revocations().await.unwrap());
    assert!(set.is_revoked(&Fingerprint([0xab; 32]), "node-1"));
    assert!(set.is_revoked(&client.fingerprint, "node-9"));

    store
        .write_now(vec![
            Write::DeleteRevocation(Revoked::Device("node-9".into())),
            Write::DeletePairing {
                code_id: sorted[0].code_id,
                verifier: sorted[0].verifier_record.clone(),
            },
            Write::DeleteDevice("node-1".into()),
        ])
        .unwrap();
    assert_eq!(store.revocations().await.unwrap(), vec![revoked_cert]);
    assert_eq!(store.pairing_records().await.unwrap(), sorted[1..].to_vec());
    assert!(store.devices().await.unwrap().is_empty());
}

pub async fn nodes_and_calls(e: &Engine) {
    let store = e.open().await;
    store
        .write_now(vec![
            Write::PutNode(node("n1", NOW)),
            Write::PutNode(node("n2", NOW + 5)),
        ])
        .unwrap();
    // A later put keeps the first sighting; touches never move last_seen back.
    store
        .write_now(vec![
            Write::PutNode(node("n1", NOW + 100)),
            Write::TouchNode {
                id: "n1".into(),
                last_seen_ms: NOW + 500,
            },
            Write::TouchNode {
                id: "n1".into(),
                last_seen_ms: NOW + 200,
            },
        ])
        .unwrap();
    let n1 = store.node("n1").await.unwrap().unwrap();
    // Seen lately: n1 (touched at NOW + 500), not n2 (NOW + 5).
    let lately: Vec<String> = store
        .nodes_since(NOW + 100)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(lately, ["n1"]);
    assert_eq!((n1.first_seen_ms, n1.last_seen_ms), (NOW, NOW + 500));
    assert_eq!(n1.capabilities, node("n1", 0).capabilities);
    assert_eq!(
        store
            .nodes()
            .await
            .unwrap()
            .iter()
            .map(|n| n.id.as_str())
            .collect::<Vec<_>>(),
        ["n1", "n2"]
    );
    let err = store
        .write_now(vec![Write::TouchNode {
            id: "ghost".into(),
            last_seen_ms: NOW,
        }])
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::NotFound {
            what: "node",
            key: "ghost".into()
        }
    );

    // Ids at both ends of u64 keep their value and their order.
    let ids = [
        0,
        1,
        1 << 62,
        (1 << 63) - 1,
        1 << 63,
        u64::MAX - 1,
        u64::MAX,
    ];
    store
        .write_now(
            ids.iter()
                .rev()
                .map(|&id| Write::PutCall(call(id, "n1")))
                .collect(),
        )
        .unwrap();
    store
        .write_now(vec![Write::PutCall(call(7, "n2"))])
        .unwrap();
    let listed: Vec<u64> = store
        .calls_for("n1")
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(
        store.call(u64::MAX).await.unwrap(),
        Some(call(u64::MAX, "n1"))
    );

    let output = Payload {
        content_type: "application/json".into(),
        bytes: br#"{"ok":true}"#.to_vec(),
    };
    store
        .write_now(vec![Write::UpdateCall(CallUpdate {
            id: u64::MAX,
            state: CallStatus::Dispatched,
            updated_ms: NOW + 1,
            output: None,
            error: None,
            session_call: Some(u64::MAX),
        })])
        .unwrap();
    store
        .write_now(vec![Write::UpdateCall(CallUpdate {
            id: u64::MAX,
            state: CallStatus::Succeeded,
            updated_ms: NOW + 2,
            output: Some(output.clone()),
            error: None,
            session_call: None,
        })])
        .unwrap();
    let done = store.call(u64::MAX).await.unwrap().unwrap();
    assert_eq!(done.state, CallStatus::Succeeded);
    assert_eq!(done.output, Some(output));
    assert_eq!(
        done.session_call,
        Some(u64::MAX),
        "kept from the earlier update"
    );
    assert_eq!((done.created_ms, done.updated_ms), (NOW, NOW + 2));
    assert_eq!(done.deadline_ms, u64::MAX);

    let err = store
        .write_now(vec![Write::UpdateCall(CallUpdate {
            id: 12345,
            state: CallStatus::Failed,
            updated_ms: NOW,
            output: None,
            error: Some("boom".into()),
            session_call: None,
        })])
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { what: "call", .. }));
    drop(store);

    let store = e.open().await;
    assert_eq!(store.calls_for("n1").await.unwrap().len(), ids.len());
    assert_eq!(store.calls_for("n2").await.unwrap(), vec![call(7, "n2")]);
    assert_eq!(store.node("n1").await.unwrap(), Some(n1));
}

pub async fn refused_submission_fails_alone_and_is_not_half_applied(e: &Engine) {
    let store = e.open().await;
    // Queued together, so they share a group commit (or several: either way the
    // refused one must leave no trace and the others must land).
    let good1 = store.write(vec![Write::AppendEvent(event("a", 1, NOW))]);
    let bad = store.write(vec![
        Write::PutNode(node("half", NOW)),
        Write::AppendEvent(event("half", 2, NOW)),
        Write::TouchNode {
            id: "nobody".into(),
            last_seen_ms: NOW,
        },
    ]);
    let good2 = store.write(vec![Write::PutNode(node("b", NOW))]);
    assert!(good1.await.is_ok());
    assert!(matches!(bad.await, Err(StoreError::NotFound { .. })));
    assert!(good2.await.is_ok());
    assert_eq!(store.node("half").await.unwrap(), None);
    assert!(
        store
            .events_after(0, Some("half"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.events_after(0, Some("a"), 10).await.unwrap().len(), 1);
    assert!(store.node("b").await.unwrap().is_some());
    assert_eq!(store.failed_groups(), 0);
}

pub async fn concurrent_writes_share_commits(e: &Engine) {
    const N: u64 = 400;
    let store = e.open().await;

    // One write after another: one commit each.
    let start = WallInstant::now();
    for i in 0..50 {
        store
            .write(vec![Write::AppendEvent(event("serial", i, NOW))])
            .await
            .unwrap();
    }
    let serial = start.elapsed();
    assert_eq!(store.commits(), 50);

    // Many tasks and threads at once: far fewer commits than writes.
    let before = store.commits();
    let start = WallInstant::now();
    let mut tasks = Vec::new();
    // Released together, so the tasks submit while the writer is busy.
    let barrier = Arc::new(tokio::sync::Barrier::new(N as usize));
    for i in 0..N {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store
                .write(vec![Write::AppendEvent(event("task", i, NOW))])
                .await
        }));
    }
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    store
                        .write_now(vec![Write::AppendEvent(event("thread", t * 100 + i, NOW))])
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        let receipt = t.await.unwrap().unwrap();
        assert_eq!(receipt.events.len(), 1);
    }
    for t in threads {
        t.join().unwrap();
    }
    let grouped = start.elapsed();
    let commits = store.commits() - before;
    let writes = N + 100;
    println!(
        "group commit: {writes} concurrent writes in {commits} commits ({:.0} writes/s); \
         serial: 50 writes in 50 commits ({:.0} writes/s)",
        writes as f64 / grouped.as_secs_f64(),
        50.0 / serial.as_secs_f64()
    );
    assert!(
        commits * 4 <= writes,
        "{commits} commits for {writes} writes"
    );
    let stored = store.events_after(0, None, 10_000).await.unwrap();
    assert_eq!(stored.len() as u64, 50 + writes);
    let seqs: BTreeSet<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(seqs.len(), stored.len(), "every event has its own seq");
}

pub async fn events_are_filtered_deduplicated_and_never_renumbered(e: &Engine) {
    let store = e.open().await;
    let origin = |n| {
        Some(EventOrigin {
            session: [5; 16],
            stream_seq: n,
        })
    };
    let mut writes = Vec::new();
    for i in 0..10u64 {
        let mut e = event(if i % 2 == 0 { "even" } else { "odd" }, i, NOW + i);
        e.origin = origin(u64::MAX - i);
        writes.push(Write::AppendEvent(e));
    }
    let first = store.write_now(writes.clone()).unwrap();
    assert!(first.events.iter().all(Option::is_some));
    // The same origins replayed after a crash are stored once.
    let again = store.write_now(writes).unwrap();
    assert_eq!(again.events, vec![None; 10]);

    let all = store.events_after(0, None, 100).await.unwrap();
    assert_eq!(all.len(), 10);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(all[3].event.origin, origin(u64::MAX - 3));
    let odd = store.events_after(0, Some("odd"), 100).await.unwrap();
    assert_eq!(odd.len(), 5);
    assert!(odd.iter().all(|e| e.event.node == "odd"));
    let page = store.events_after(all[2].seq, None, 3).await.unwrap();
    assert_eq!(page, all[3..6].to_vec());
    let last = all[9].seq;
    drop(store);

    // Pruning everything then reopening never hands a seq out twice.
    let options = StoreOptions {
        retention: RetentionPolicy {
            max_events: Some(0),
            max_age_ms: None,
        },
        ..StoreOptions::default()
    };
    let store = e.open_with(options.clone()).await;
    let r = store
        .write_now(vec![Write::PruneEvents { now_ms: NOW }])
        .unwrap();
    assert_eq!(r.pruned, 10);
    drop(store);
    let store = e.open_with(options).await;
    let r = store
        .write_now(vec![Write::AppendEvent(event("odd", 99, NOW))])
        .unwrap();
    assert!(r.events[0].unwrap() > last);
}

pub async fn extreme_seqs_and_ids_round_trip_and_trim_in_order(e: &Engine) {
    let store = e.open().await;
    let seqs = [0, 1, (1 << 63) - 1, 1 << 63, u64::MAX - 1, u64::MAX];
    let mut ops: Vec<OwnedJournalOp> = seqs
        .iter()
        .map(|&seq| OwnedJournalOp::Append {
            seq,
            body: seq.to_be_bytes().to_vec(),
        })
        .collect();
    let rec = CallRecord {
        id: u64::MAX,
        seq: u64::MAX,
        deadline: Instant::from_millis(u64::MAX),
        timeout_ms: u32::MAX,
        state: CallState::Dispatched,
        unreported: false,
        cancel_requested: false,
    };
    ops.push(OwnedJournalOp::PutCall(rec));
    ops.push(OwnedJournalOp::Meta(meta(u64::MAX)));
    store
        .write_now(vec![Write::Journal(journal_batch("k", ops))])
        .unwrap();
    let j = store.load_journal("k").await.unwrap();
    let mut got = Vec::new();
    j.messages(&mut |seq, body| got.push((seq, body.to_vec())))
        .unwrap();
    assert_eq!(
        got,
        seqs.iter()
            .map(|s| (*s, s.to_be_bytes().to_vec()))
            .collect::<Vec<_>>()
    );
    assert_eq!(j.stored_meta(), Some(meta(u64::MAX)));
    let mut calls = Vec::new();
    j.calls(&mut |c| calls.push(*c)).unwrap();
    assert_eq!(calls, vec![rec]);

    // A trim above 2^63 drops everything below it, in u64 order.
    store
        .write_now(vec![Write::Journal(journal_batch(
            "k",
            vec![OwnedJournalOp::Trim { through: 1 << 63 }],
        ))])
        .unwrap();
    let mut left = Vec::new();
    store
        .load_journal("k")
        .await
        .unwrap()
        .messages(&mut |seq, _| left.push(seq))
        .unwrap();
    assert_eq!(left, [u64::MAX - 1, u64::MAX]);

    store
        .write_now(vec![Write::DropJournal("k".into())])
        .unwrap();
    assert!(store.journal_keys().await.unwrap().is_empty());
    assert_eq!(store.load_journal("k").await.unwrap(), MemJournal::new());
    let err = store
        .write_now(vec![Write::Journal(journal_batch("", vec![]))])
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)));
}

pub async fn a_daemon_session_restores_from_its_stored_journal(e: &Engine) {
    let config = Config::server(64 * 1024);
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    let t0 = Instant::from_millis(NOW);
    let input = SessionPayload {
        content_type: "application/json",
        data: b"{}",
    };
    let mut session: DaemonSession<Vec<u8>> =
        DaemonSession::new(config, "node-1", &mut rng).unwrap();
    session.lend(vec![0; config.storage_len()]).unwrap();
    let first = session.call(t0, "system.health", input, 5_000).unwrap();
    let mut ops = Vec::new();
    while let Some(op) = session.poll_journal() {
        ops.push(OwnedJournalOp::from(&op));
    }
    assert!(!ops.is_empty());
    let batch = session.closed_batch().unwrap();
    let store: Arc<dyn JournalStore> = e.open().await;
    store
        .commit(vec![journal_batch("node-1", ops)])
        .await
        .unwrap();
    session.handle_journal_committed(t0, batch).unwrap();
    drop(store);

    // A restarted daemon: the call is still open and its id is never handed out again.
    let store = e.open().await;
    assert_eq!(store.journal_keys().await.unwrap(), ["node-1"]);
    let journal = store.load_journal("node-1").await.unwrap();
    assert_eq!((journal.call_count(), journal.message_count()), (1, 1));
    let mut restored: DaemonSession<Vec<u8>> = DaemonSession::restore(
        config,
        "node-1",
        Some(vec![0; config.storage_len()]),
        &journal,
        &mut rng,
    )
    .unwrap();
    let second = restored.call(t0, "system.health", input, 5_000).unwrap();
    assert!(second > first, "call id {second} reused after {first}");
}

pub async fn the_endpoint_keys_outlive_a_restart(e: &Engine) {
    let names = vec!["127.0.0.1".to_owned()];
    let first = {
        let store = e.open().await;
        daemon::serve::identity::load_or_create(&*store, &names)
            .await
            .unwrap()
            .endpoint_keys
    };
    let store = e.open().await;
    let again = daemon::serve::identity::load_or_create(&*store, &names)
        .await
        .unwrap()
        .endpoint_keys;
    assert_eq!(first, again);
    assert_eq!(store.endpoint_keys().await.unwrap(), Some(first.clone()));
    // Another deployment's store has keys of its own.
    e.clear().await;
    let other = e.open().await;
    let theirs = daemon::serve::identity::load_or_create(&*other, &names)
        .await
        .unwrap()
        .endpoint_keys;
    assert_ne!(first, theirs);
}

fn wide_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..12,
        1 => Just(u64::MAX),
        1 => Just(u64::MAX - 1),
        1 => Just(1u64 << 63),
        1 => Just((1u64 << 63) - 1),
        1 => Just(1u64 << 62),
        1 => any::<u64>(),
    ]
}

fn call_record() -> impl Strategy<Value = CallRecord> {
    (
        wide_u64(),
        wide_u64(),
        wide_u64(),
        any::<u32>(),
        0u8..4,
        any::<bool>(),
    )
        .prop_map(
            |(id, seq, deadline, timeout_ms, state, unreported)| CallRecord {
                id,
                seq,
                deadline: Instant::from_millis(deadline),
                timeout_ms,
                state: [
                    CallState::Queued,
                    CallState::Dispatched,
                    CallState::Succeeded,
                    CallState::Lost,
                ][usize::from(state)],
                unreported,
                cancel_requested: !unreported,
            },
        )
}

fn seen_call() -> impl Strategy<Value = SeenCall> {
    (wide_u64(), wide_u64(), any::<bool>(), any::<u64>()).prop_map(|(id, at, done, age)| SeenCall {
        id,
        slot: if done {
            Slot::Done { result_seq: at }
        } else {
            Slot::Active {
                stage: None,
                deadline: Instant::from_millis(at),
            }
        },
        age,
    })
}

fn journal_meta() -> impl Strategy<Value = JournalMeta> {
    (
        proptest::option::of(any::<[u8; 16]>()),
        any::<bool>(),
        wide_u64(),
        wide_u64(),
        wide_u64(),
        wide_u64(),
        any::<[u64; 2]>(),
    )
        .prop_map(
            |(session, established, last_sent, acked, received, next_call_id, id_state)| {
                JournalMeta {
                    session,
                    established,
                    last_sent,
                    acked,
                    received,
                    next_call_id,
                    id_state,
                }
            },
        )
}

fn journal_op() -> impl Strategy<Value = OwnedJournalOp> {
    prop_oneof![
        1 => Just(OwnedJournalOp::Clear),
        2 => wide_u64().prop_map(|through| OwnedJournalOp::Trim { through }),
        6 => (wide_u64(), proptest::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(seq, body)| OwnedJournalOp::Append { seq, body }),
        3 => call_record().prop_map(OwnedJournalOp::PutCall),
        2 => wide_u64().prop_map(OwnedJournalOp::RemoveCall),
        3 => (0u8..40, seen_call()).prop_map(|(slot, call)| OwnedJournalOp::PutSeen { slot, call }),
        2 => journal_meta().prop_map(OwnedJournalOp::Meta),
    ]
}

const KEYS: [&str; 3] = ["node-a", "node-b", "self"];

fn commits() -> impl Strategy<Value = Vec<Vec<(usize, Vec<OwnedJournalOp>)>>> {
    let batch = (
        0..KEYS.len(),
        proptest::collection::vec(journal_op(), 0..12),
    );
    proptest::collection::vec(proptest::collection::vec(batch, 1..4), 1..8)
}

/// Every field a session restores from, read through `JournalRead`.
fn restored(j: &impl JournalRead) -> String {
    let mut out = format!("{:?}\n", j.meta().unwrap());
    j.messages(&mut |seq, body| out.push_str(&format!("m {seq} {body:?}\n")))
        .unwrap();
    j.calls(&mut |c| out.push_str(&format!("c {c:?}\n")))
        .unwrap();
    j.seen(&mut |slot, s| out.push_str(&format!("s {slot} {s:?}\n")))
        .unwrap();
    out
}

/// Draws `cases` values from `strategy` (no shrinking: a failure prints its case).
fn draws<S: Strategy>(strategy: S, cases: u32) -> Vec<S::Value> {
    use proptest::strategy::ValueTree;
    let mut runner = TestRunner::new(ProptestConfig::default());
    (0..cases)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

/// Whatever is appended and pruned, exactly the events the policy allows remain.
pub async fn retention_keeps_exactly_what_the_policy_allows(e: &Engine) {
    let strategy = (
        proptest::collection::vec(0u64..10_000, 0..60),
        proptest::option::of(0u64..70),
        proptest::option::of(0u64..12_000),
    );
    for (ages, max_events, max_age_ms) in draws(strategy, 24) {
        e.clear().await;
        let policy = RetentionPolicy {
            max_events,
            max_age_ms,
        };
        let options = StoreOptions {
            retention: policy,
            ..StoreOptions::default()
        };
        let store = e.open_with(options).await;
        let now = NOW + 10_000;
        let writes = ages
            .iter()
            .enumerate()
            .map(|(i, age)| Write::AppendEvent(event("n", i as u64, now - age)))
            .collect();
        let receipt = store.write(writes).await.unwrap();
        let seqs: Vec<u64> = receipt.events.iter().map(|s| s.unwrap()).collect();
        let r = store
            .write(vec![Write::PruneEvents { now_ms: now }])
            .await
            .unwrap();

        // The most the policy allows: of the events not too old, the newest `max_events`.
        let keep: BTreeSet<u64> = (0..ages.len())
            .rev()
            .filter(|&i| max_age_ms.is_none_or(|a| ages[i] <= a))
            .take(max_events.map_or(usize::MAX, |m| m as usize))
            .map(|i| seqs[i])
            .collect();
        let left: BTreeSet<u64> = store
            .events_after(0, None, 1000)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        let case = format!("{ages:?} {max_events:?} {max_age_ms:?}");
        assert_eq!(left, keep, "{case}");
        assert_eq!(r.pruned as usize, ages.len() - keep.len(), "{case}");
    }
}

/// Random op sequences give the same journals in the store as in `MemJournal`, before
/// and after reopening the store.
pub async fn journals_match_the_in_memory_reference(e: &Engine) {
    for commits in draws(commits(), 40) {
        e.clear().await;
        let reference = MemJournals::new();
        let mut used = BTreeSet::new();
        {
            let store = e.open().await;
            for (n, commit) in commits.iter().enumerate() {
                let batches: Vec<Batch> = commit
                    .iter()
                    .map(|(k, ops)| journal_batch(KEYS[*k], ops.clone()))
                    .collect();
                used.extend(commit.iter().map(|(k, _)| KEYS[*k].to_owned()));
                // Alternate the two ways in: the journal trait and plain writes.
                if n % 2 == 0 {
                    store.commit(batches.clone()).await.unwrap();
                } else {
                    store
                        .write(batches.iter().cloned().map(Write::Journal).collect())
                        .await
                        .unwrap();
                }
                reference.commit(batches).await.unwrap();
            }
        }
        for pass in 0..2 {
            let store = e.open().await;
            let keys: BTreeSet<String> = store.journal_keys().await.unwrap().into_iter().collect();
            assert_eq!(keys, used, "pass {pass}");
            for key in KEYS {
                let stored = store.load_journal(key).await.unwrap();
                let expected = reference.journal(key);
                assert_eq!(
                    restored(&stored),
                    restored(&expected),
                    "key {key} pass {pass}: {commits:?}"
                );
                assert_eq!(stored, expected);
            }
        }
    }
}

/// A claim raises the epoch; a fence with an older epoch or another owner refuses its
/// whole submission, and the submission before the claim committed.
pub async fn ownership_fences_a_former_owner(e: &Engine) {
    let store = e.open().await;
    let claim = |owner: &str| Write::ClaimSession {
        node: "n1".into(),
        owner: owner.into(),
        epoch: 0,
        at_ms: NOW,
    };
    let fence = |owner: &str, epoch| Write::Fence {
        node: "n1".into(),
        owner: owner.into(),
        epoch,
    };
    let a = store.write(vec![claim("daemon-a")]).await.unwrap().epochs;
    assert_eq!(a, [1]);
    // Daemon A writes for the session it owns.
    store
        .write(vec![
            fence("daemon-a", 1),
            Write::Journal(journal_batch("n1", vec![OwnedJournalOp::Meta(meta(1))])),
        ])
        .await
        .unwrap();
    // Daemon B takes the node over.
    let b = store.write(vec![claim("daemon-b")]).await.unwrap().epochs;
    assert_eq!(b, [2]);
    // A's next write is refused whole: nothing of it lands.
    let err = store
        .write(vec![
            fence("daemon-a", 1),
            Write::Journal(journal_batch("n1", vec![OwnedJournalOp::Meta(meta(7))])),
            Write::AppendEvent(event("n1", 7, NOW)),
        ])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Fenced {
            node: "n1".into(),
            epoch: 1
        }
    );
    assert_eq!(
        store.load_journal("n1").await.unwrap().stored_meta(),
        Some(meta(1))
    );
    assert!(store.events_after(0, None, 10).await.unwrap().is_empty());
    // The right owner at the wrong epoch is refused too; B at its epoch is not.
    assert!(store.write(vec![fence("daemon-b", 1)]).await.is_err());
    store.write(vec![fence("daemon-b", 2)]).await.unwrap();
    // A claim may ask for at least an epoch (a daemon that remembers a higher one).
    let c = store
        .write(vec![Write::ClaimSession {
            node: "n1".into(),
            owner: "daemon-a".into(),
            epoch: 10,
            at_ms: NOW,
        }])
        .await
        .unwrap()
        .epochs;
    assert_eq!(c, [10]);
    // Another node's ownership is its own.
    let other = store
        .write(vec![Write::ClaimSession {
            node: "n2".into(),
            owner: "daemon-b".into(),
            epoch: 0,
            at_ms: NOW,
        }])
        .await
        .unwrap()
        .epochs;
    assert_eq!(other, [1]);
    // What another daemon reads to learn of claims lately.
    let mut claims = store.claims_since(NOW).await.unwrap();
    claims.sort();
    assert_eq!(
        claims,
        [
            ("n1".to_owned(), "daemon-a".to_owned(), 10),
            ("n2".to_owned(), "daemon-b".to_owned(), 1)
        ]
    );
    assert!(store.claims_since(NOW + 1).await.unwrap().is_empty());
    assert_eq!(
        store.owned_by("daemon-b").await.unwrap(),
        [("n2".to_owned(), 1)]
    );
}

/// A daemon's older, undecided copy of a pairing never undoes an operator's decision
/// stored by another daemon; a new code on the same id replaces the old one.
pub async fn a_decided_pairing_is_not_undone_by_an_older_copy(e: &Engine) {
    let mut rng = ChaCha20Rng::from_seed([8; 32]);
    let ca = Arc::new(
        CertificateAuthority::create("tern CA", NOW, IssuancePolicy::default(), &mut rng).unwrap(),
    );
    let server = ca
        .issue_server(&["ternd.test".into()], NOW, &mut rng)
        .unwrap();
    let mut service = PairingService::new(
        ca,
        server.fingerprint,
        PairingSettings::default(),
        Instant::from_millis(NOW),
    )
    .unwrap();
    let code = service
        .create_code(
            Instant::from_millis(NOW),
            "node-p",
            None,
            Some(true),
            &mut rng,
        )
        .unwrap();
    let pending = service.record(code.id()).unwrap().clone();
    service
        .approve(Instant::from_millis(NOW + 1), code.id())
        .unwrap();
    let approved = service.record(code.id()).unwrap().clone();
    let store = e.open().await;
    store
        .write(vec![Write::PutPairing(approved.clone())])
        .await
        .unwrap();
    // Another daemon, not yet aware of the decision, writes its copy.
    let mut stale = pending.clone();
    stale.awaiting_decision = true;
    store.write(vec![Write::PutPairing(stale)]).await.unwrap();
    assert_eq!(
        store.pairing_records().await.unwrap(),
        std::slice::from_ref(&approved)
    );
    // Another code on the same id never replaces it through a plain write; once the
    // old one is dropped, a new code is created there.
    let mut fresh = pending;
    fresh.verifier_record = vec![7; fresh.verifier_record.len()];
    store
        .write(vec![Write::PutPairing(fresh.clone())])
        .await
        .unwrap();
    assert_eq!(
        store.pairing_records().await.unwrap(),
        std::slice::from_ref(&approved)
    );
    store
        .write(vec![Write::DeletePairing {
            code_id: approved.code_id,
            verifier: approved.verifier_record.clone(),
        }])
        .await
        .unwrap();
    store
        .write(vec![Write::CreatePairing(fresh.clone())])
        .await
        .unwrap();
    assert_eq!(store.pairing_records().await.unwrap(), [fresh.clone()]);
    // A code minted on an id another daemon holds is refused, and nothing changes.
    let mut other = fresh.clone();
    other.verifier_record = vec![9; other.verifier_record.len()];
    let err = store
        .write(vec![Write::CreatePairing(other)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Taken { .. }), "{err}");
    assert_eq!(store.pairing_records().await.unwrap(), [fresh.clone()]);
    // Dropping the old code on that id leaves the new one; dropping the new one frees it.
    store
        .write(vec![Write::DeletePairing {
            code_id: fresh.code_id,
            verifier: approved.verifier_record.clone(),
        }])
        .await
        .unwrap();
    assert_eq!(store.pairing_records().await.unwrap(), [fresh.clone()]);
    store
        .write(vec![Write::DeletePairing {
            code_id: fresh.code_id,
            verifier: fresh.verifier_record.clone(),
        }])
        .await
        .unwrap();
    store
        .write(vec![Write::CreatePairing(fresh.clone())])
        .await
        .unwrap();
    assert_eq!(store.pairing_records().await.unwrap(), [fresh]);
}

/// An operator with a stand-in certificate (the store keeps the bytes, never parses
/// them): `serial` tells certificates apart.
fn operator(name: &str, role: OperatorRole, serial: u8) -> Operator {
    let cert_der = [b"operator certificate ".as_slice(), &[serial; 40]].concat();
    Operator {
        name: name.into(),
        role,
        fingerprint: Fingerprint::of(&cert_der).0,
        cert_der,
        not_after_ms: u64::MAX - u64::from(serial),
        created_ms: NOW + u64::from(serial),
        revoked_ms: None,
    }
}

/// The operator CA is created once and kept apart from the device CA; operators are
/// added, found by fingerprint, revoked once, and their names freed by revocation.
pub async fn operators_are_added_revoked_and_replaced(e: &Engine) {
    let mut rng = ChaCha20Rng::from_seed([11; 32]);
    let first =
        CertificateAuthority::create("tern operators", NOW, IssuancePolicy::default(), &mut rng)
            .unwrap()
            .to_stored();
    let second =
        CertificateAuthority::create("tern operators", NOW, IssuancePolicy::default(), &mut rng)
            .unwrap()
            .to_stored();
    assert_ne!(first, second);
    let alice = operator("alice", OperatorRole::Admin, 1);
    let bob = operator("bob", OperatorRole::Viewer, 2);
    {
        let store = e.open().await;
        assert_eq!(store.operator_ca().await.unwrap(), None);
        assert!(store.operators().await.unwrap().is_empty());
        // Two daemons starting together: the first CA written stays.
        let a = store.write(vec![Write::CreateOperatorCa(first.clone())]);
        let b = store.write(vec![Write::CreateOperatorCa(second.clone())]);
        a.await.unwrap();
        b.await.unwrap();
        assert_eq!(store.operator_ca().await.unwrap(), Some(first.clone()));
        // It is not the device CA, and the device CA is not it.
        assert_eq!(store.ca().await.unwrap(), None);
        store
            .write(vec![Write::CreateCa(second.clone())])
            .await
            .unwrap();
        assert_eq!(store.operator_ca().await.unwrap(), Some(first.clone()));

        store
            .write(vec![
                Write::AddOperator(bob.clone()),
                Write::AddOperator(alice.clone()),
            ])
            .await
            .unwrap();
    }

    let store = e.open().await;
    assert_eq!(store.operator_ca().await.unwrap(), Some(first));
    assert_eq!(store.ca().await.unwrap(), Some(second));
    assert_eq!(
        store.operators().await.unwrap(),
        [alice.clone(), bob.clone()]
    );
    assert_eq!(
        store
            .operator_by_fingerprint(&bob.fingerprint)
            .await
            .unwrap(),
        Some(bob.clone())
    );
    assert_eq!(store.operator_by_fingerprint(&[7; 32]).await.unwrap(), None);

    // A live name is taken, whatever the certificate; nothing changes.
    let impostor = operator("alice", OperatorRole::Viewer, 3);
    let err = store
        .write(vec![Write::AddOperator(impostor.clone())])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Taken {
            what: "operator",
            key: "alice".into()
        }
    );
    assert_eq!(
        store
            .operator_by_fingerprint(&impostor.fingerprint)
            .await
            .unwrap(),
        None
    );
    // The same certificate again (a retried submission) changes nothing.
    store
        .write(vec![Write::AddOperator(alice.clone())])
        .await
        .unwrap();
    assert_eq!(
        store.operators().await.unwrap(),
        [alice.clone(), bob.clone()]
    );
    // A certificate is one operator's.
    let twin = Operator {
        name: "carol".into(),
        ..bob.clone()
    };
    assert!(store.write(vec![Write::AddOperator(twin)]).await.is_err());
    assert_eq!(
        store.operators().await.unwrap(),
        [alice.clone(), bob.clone()]
    );

    // Names follow the device id rule; a fingerprint must be its certificate's.
    let long = "a".repeat(65);
    for name in ["", "has space", "slash/", "ünï", long.as_str()] {
        let err = store
            .write(vec![Write::AddOperator(operator(
                name,
                OperatorRole::Admin,
                4,
            ))])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{name:?}: {err}");
    }
    // The longest name, of every kind of character; it sorts by bytes, before "alice".
    let longest = "A.z_0-9".repeat(10)[..64].to_owned();
    store
        .write(vec![Write::AddOperator(operator(
            &longest,
            OperatorRole::Viewer,
            4,
        ))])
        .await
        .unwrap();
    let forged = Operator {
        fingerprint: [1; 32],
        ..operator("dave", OperatorRole::Admin, 5)
    };
    let err = store
        .write(vec![Write::AddOperator(forged)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert_eq!(store.operators().await.unwrap().len(), 3);

    // A revocation keeps its first time; an unknown name is not found.
    store
        .write(vec![Write::RevokeOperator {
            name: "alice".into(),
            at_ms: NOW + 10,
        }])
        .await
        .unwrap();
    store
        .write(vec![Write::RevokeOperator {
            name: "alice".into(),
            at_ms: NOW + 20,
        }])
        .await
        .unwrap();
    let revoked = Operator {
        revoked_ms: Some(NOW + 10),
        ..alice.clone()
    };
    assert_eq!(
        store
            .operator_by_fingerprint(&alice.fingerprint)
            .await
            .unwrap(),
        Some(revoked.clone())
    );
    assert_eq!(store.operators().await.unwrap()[1], revoked);
    assert_eq!(store.operators().await.unwrap()[0].name, longest);
    let err = store
        .write(vec![Write::RevokeOperator {
            name: "ghost".into(),
            at_ms: NOW,
        }])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::NotFound {
            what: "operator",
            key: "ghost".into()
        }
    );

    // A revoked certificate never comes back under its name.
    let err = store
        .write(vec![Write::AddOperator(alice.clone())])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Taken { .. }), "{err}");
    assert_eq!(
        store
            .operator_by_fingerprint(&alice.fingerprint)
            .await
            .unwrap(),
        Some(revoked)
    );
    // A revoked name is free for a new certificate; the old one is gone with it.
    let again = operator("alice", OperatorRole::Viewer, 6);
    store
        .write(vec![Write::AddOperator(again.clone())])
        .await
        .unwrap();
    assert_eq!(
        store
            .operator_by_fingerprint(&alice.fingerprint)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .operator_by_fingerprint(&again.fingerprint)
            .await
            .unwrap(),
        Some(again.clone())
    );
    let names: Vec<(String, Option<u64>)> = store
        .operators()
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.name, o.revoked_ms))
        .collect();
    assert_eq!(
        names,
        [
            (longest, None),
            ("alice".into(), None),
            ("bob".into(), None),
        ]
    );
}

fn listed(calls: &[Call]) -> Vec<u64> {
    calls.iter().map(|c| c.id).collect()
}

/// Listings apply every bound of the filter, newest first, and page without gaps.
pub async fn calls_are_listed_newest_first_by_filter(e: &Engine) {
    let store = e.open().await;
    let states = [
        CallStatus::Queued,
        CallStatus::Running,
        CallStatus::Succeeded,
    ];
    // Ids 1..=25: odd ones on n1, even on n2; created 100 ms apart.
    let all: Vec<Call> = (1..=25u64)
        .map(|id| Call {
            state: states[(id % 3) as usize],
            created_ms: NOW + id * 100,
            ..call(id, if id % 2 == 1 { "n1" } else { "n2" })
        })
        .collect();
    store
        .write(all.iter().cloned().map(Write::PutCall).collect())
        .await
        .unwrap();
    let list = |filter: CallFilter| {
        let store = store.clone();
        async move { listed(&store.calls(&filter).await.unwrap()) }
    };
    let limit = 100;
    let newest: Vec<u64> = (1..=25).rev().collect();
    assert_eq!(
        list(CallFilter {
            limit,
            ..CallFilter::default()
        })
        .await,
        newest
    );
    assert_eq!(
        store
            .calls(&CallFilter {
                limit,
                ..CallFilter::default()
            })
            .await
            .unwrap()[0],
        all[24]
    );
    // The store takes at least one.
    assert_eq!(list(CallFilter::default()).await, [25]);
    let n1: Vec<u64> = newest.iter().copied().filter(|id| id % 2 == 1).collect();
    assert_eq!(
        list(CallFilter {
            node: Some("n1".into()),
            limit,
            ..CallFilter::default()
        })
        .await,
        n1
    );
    assert!(
        list(CallFilter {
            node: Some("n3".into()),
            limit,
            ..CallFilter::default()
        })
        .await
        .is_empty()
    );
    let running: Vec<u64> = newest.iter().copied().filter(|id| id % 3 == 1).collect();
    assert_eq!(
        list(CallFilter {
            state: Some(CallStatus::Running),
            limit,
            ..CallFilter::default()
        })
        .await,
        running
    );
    let n2_succeeded: Vec<u64> = newest
        .iter()
        .copied()
        .filter(|id| id % 2 == 0 && id % 3 == 2)
        .collect();
    assert_eq!(
        list(CallFilter {
            node: Some("n2".into()),
            state: Some(CallStatus::Succeeded),
            limit,
            ..CallFilter::default()
        })
        .await,
        n2_succeeded
    );
    // Created at or after `since`, before `until`.
    assert_eq!(
        list(CallFilter {
            since_ms: NOW + 1000,
            until_ms: Some(NOW + 1500),
            limit,
            ..CallFilter::default()
        })
        .await,
        [14, 13, 12, 11, 10]
    );
    assert_eq!(
        list(CallFilter {
            until_ms: Some(NOW + 300),
            limit,
            ..CallFilter::default()
        })
        .await,
        [2, 1]
    );
    assert_eq!(
        list(CallFilter {
            since_ms: NOW + 2400,
            limit,
            ..CallFilter::default()
        })
        .await,
        [25, 24]
    );

    // Pages of ten: every call once, newest first.
    let mut pages = Vec::new();
    let mut before_id = None;
    loop {
        let page = list(CallFilter {
            before_id,
            limit: 10,
            ..CallFilter::default()
        })
        .await;
        if page.is_empty() {
            break;
        }
        before_id = page.last().copied();
        pages.push(page);
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
    assert_eq!(pages.concat(), newest);
    // Paging one node's calls.
    let page = list(CallFilter {
        node: Some("n1".into()),
        before_id: Some(15),
        limit: 3,
        ..CallFilter::default()
    })
    .await;
    assert_eq!(page, [13, 11, 9]);
}

/// What a straightforward filter over the calls gives.
fn reference(calls: &[Call], f: &CallFilter) -> Vec<u64> {
    let mut want: Vec<u64> = calls
        .iter()
        .filter(|c| {
            f.node.as_ref().is_none_or(|n| &c.node == n)
                && f.state.is_none_or(|s| c.state == s)
                && c.created_ms >= f.since_ms
                && f.until_ms.is_none_or(|u| c.created_ms < u)
                && f.before_id.is_none_or(|b| c.id < b)
        })
        .map(|c| c.id)
        .collect();
    want.sort_unstable_by(|a, b| b.cmp(a));
    want.truncate(f.limit.max(1) as usize);
    want
}

const LIST_NODES: [&str; 3] = ["n1", "n2", "node-3"];
const LIST_STATES: [CallStatus; 4] = [
    CallStatus::Queued,
    CallStatus::Running,
    CallStatus::Succeeded,
    CallStatus::TimedOut,
];

fn listed_call() -> impl Strategy<Value = Call> {
    (
        wide_u64(),
        0..LIST_NODES.len(),
        0..LIST_STATES.len(),
        wide_u64(),
    )
        .prop_map(|(id, node, state, created_ms)| Call {
            state: LIST_STATES[state],
            created_ms,
            ..call(id, LIST_NODES[node])
        })
}

fn call_filter() -> impl Strategy<Value = CallFilter> {
    (
        proptest::option::of(0..LIST_NODES.len() + 1),
        proptest::option::of(0..LIST_STATES.len()),
        prop_oneof![Just(0u64), wide_u64()],
        proptest::option::of(wide_u64()),
        proptest::option::of(wide_u64()),
        prop_oneof![0u32..4, 0u32..50, Just(u32::MAX)],
    )
        .prop_map(
            |(node, state, since_ms, until_ms, before_id, limit)| CallFilter {
                // One past the nodes: a node with no calls.
                node: node.map(|n| LIST_NODES.get(n).copied().unwrap_or("nobody").to_owned()),
                state: state.map(|s| LIST_STATES[s]),
                since_ms,
                until_ms,
                before_id,
                limit,
            },
        )
}

/// Random calls and random filters: the store lists what an in-memory filter picks,
/// and paging through a filter's calls gives each of them once.
pub async fn call_listings_match_an_in_memory_filter(e: &Engine) {
    let cases = (
        proptest::collection::vec(listed_call(), 0..40),
        proptest::collection::vec(call_filter(), 1..12),
    );
    for (drawn, filters) in draws(cases, 24) {
        e.clear().await;
        let store = e.open().await;
        // One call per id (a later put would replace it).
        let mut seen = BTreeSet::new();
        let calls: Vec<Call> = drawn.into_iter().filter(|c| seen.insert(c.id)).collect();
        store
            .write(calls.iter().cloned().map(Write::PutCall).collect())
            .await
            .unwrap();
        for filter in filters {
            let got = listed(&store.calls(&filter).await.unwrap());
            assert_eq!(got, reference(&calls, &filter), "{filter:?} over {calls:?}");
            // Pages of three from where the filter starts: the whole unlimited listing.
            let whole = reference(
                &calls,
                &CallFilter {
                    limit: u32::MAX,
                    ..filter.clone()
                },
            );
            let mut paged = Vec::new();
            let mut page_filter = CallFilter {
                limit: 3,
                ..filter.clone()
            };
            loop {
                let page = listed(&store.calls(&page_filter).await.unwrap());
                paged.extend_from_slice(&page);
                match page.last() {
                    Some(&last) if page.len() == 3 => page_filter.before_id = Some(last),
                    _ => break,
                }
            }
            assert_eq!(paged, whole, "paging {filter:?} over {calls:?}");
        }
    }
}
