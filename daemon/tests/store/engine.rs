//! The engines the conformance suite runs against: SQLite in a temporary directory, and
//! PostgreSQL in a database of its own on the server `TERN_TEST_POSTGRES` names (an
//! admin URL whose user may create databases, e.g.
//! `postgres://tern:tern@127.0.0.1/tern`). Without that variable the PostgreSQL tests
//! say so and pass, except under CI (`CI` set), where they fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use daemon::store::{PgStore, SqliteStore, Store, StoreOptions};

pub const POSTGRES_ENV: &str = "TERN_TEST_POSTGRES";

pub enum Engine {
    Sqlite(tempfile::TempDir),
    Postgres(PgDatabase),
}

impl Engine {
    pub fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A fresh database, or `None` (with a message) when no server is configured.
    pub async fn postgres() -> Option<Self> {
        Some(Self::Postgres(PgDatabase::create().await?))
    }

    pub async fn open(&self) -> Arc<Store> {
        self.open_with(StoreOptions::default()).await
    }

    pub async fn open_with(&self, options: StoreOptions) -> Arc<Store> {
        match self {
            Self::Sqlite(dir) => Arc::new(SqliteStore::open_in(dir.path(), options).unwrap()),
            Self::Postgres(db) => Arc::new(PgStore::connect(&db.url, options).await.unwrap()),
        }
    }

    /// Empties every table (the event seq counter keeps counting).
    pub async fn clear(&self) {
        match self {
            Self::Sqlite(dir) => {
                for f in ["tern.db", "tern.db-wal", "tern.db-shm"] {
                    let _ = std::fs::remove_file(dir.path().join(f));
                }
            }
            Self::Postgres(db) => {
                // The schema first, should this be the first use.
                drop(self.open().await);
                let c = connect(&db.url).await;
                c.batch_execute(
                    "TRUNCATE ca, server_identity, endpoint_keys, devices, revocations, pairings,
                        nodes, calls, events, journals, journal_meta, journal_messages,
                        journal_calls, journal_seen, owners, operator_ca, operators",
                )
                .await
                .unwrap();
            }
        }
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// A database created for one test, dropped after it.
pub struct PgDatabase {
    admin: String,
    name: String,
    pub url: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl PgDatabase {
    pub async fn create() -> Option<Self> {
        let Ok(admin) = std::env::var(POSTGRES_ENV) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "{POSTGRES_ENV} is not set: CI runs the PostgreSQL tests"
            );
            eprintln!("{POSTGRES_ENV} is not set: PostgreSQL store test skipped");
            return None;
        };
        let name = format!(
            "tern_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let c = connect(&admin).await;
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&name);
        Some(Self {
            admin,
            name,
            url: url.to_string(),
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Off the test's runtime: a drop cannot await.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let c = connect(&admin).await;
                let _ = c
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}
