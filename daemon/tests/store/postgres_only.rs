//! What only the PostgreSQL engine has: several daemons migrating one database at once,
//! a schema version in a table, and a writer that outlives its connection.

use daemon::store::{PgStore, StateStore, StoreError, StoreOptions, Write};

use crate::conformance::{NOW, event};
use crate::engine::{PgDatabase, connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_starting_together_migrate_once() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let opens = (0..4).map(|_| PgStore::connect(&db.url, StoreOptions::default()));
    let stores: Vec<PgStore> = futures_util::future::join_all(opens)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    // Every store writes and reads the one schema.
    for (i, s) in stores.iter().enumerate() {
        s.write(vec![Write::AppendEvent(event("n", i as u64, NOW))])
            .await
            .unwrap();
    }
    assert_eq!(stores[0].events_after(0, None, 10).await.unwrap().len(), 4);
    let c = connect(&db.url).await;
    let version: i32 = c
        .query_one("SELECT version FROM tern_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert!(version >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_a_newer_binary_is_refused() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    drop(
        PgStore::connect(&db.url, StoreOptions::default())
            .await
            .unwrap(),
    );
    let c = connect(&db.url).await;
    let current: i32 = c
        .query_one(
            "UPDATE tern_schema SET version = version + 1 RETURNING version",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let err = PgStore::connect(&db.url, StoreOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::TooNew {
            found: current as u32,
            supported: current as u32 - 1
        }
    );
}

/// The server drops every connection of the database (a restart, a failover): the
/// writer connects again and the write that met the dead connection still commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_reconnects_after_the_server_dropped_it() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let store = PgStore::connect(&db.url, StoreOptions::default())
        .await
        .unwrap();
    store
        .write(vec![Write::AppendEvent(event("n", 1, NOW))])
        .await
        .unwrap();
    let c = connect(&db.url).await;
    let killed: i64 = c
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()) t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1, "the writer's connection was there to drop");
    store
        .write(vec![Write::AppendEvent(event("n", 2, NOW))])
        .await
        .unwrap();
    let bodies: Vec<Vec<u8>> = store
        .events_after(0, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event.body)
        .collect();
    assert_eq!(bodies, [1u64, 2].map(|n| n.to_le_bytes().to_vec()));
}

#[test]
fn a_store_url_is_never_logged_with_its_password() {
    let shown = daemon::store::postgres::redact("postgres://tern:secret@db.example:5432/tern");
    assert!(!shown.contains("secret"), "{shown}");
    assert!(shown.contains("db.example"));
}
