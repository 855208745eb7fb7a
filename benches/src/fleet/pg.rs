//! A PostgreSQL database of its own for each run on a shared store, created from an
//! admin URL and dropped afterwards, and what the generator reads there itself: which
//! daemon owns each node's session, and the server processes that serve the database.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::transports::BenchError;

/// Where the admin URL comes from when `--postgres` is not given.
pub const ADMIN_ENV: &str = "TERN_FLEET_POSTGRES";
/// The admin URL without `--postgres` or `TERN_FLEET_POSTGRES`.
pub const DEFAULT_ADMIN: &str = "postgres://tern:tern@127.0.0.1/tern";

/// The admin URL in force: `TERN_FLEET_POSTGRES`, else [`DEFAULT_ADMIN`].
pub fn admin_from_env() -> String {
    std::env::var(ADMIN_ENV).unwrap_or_else(|_| DEFAULT_ADMIN.into())
}

/// `url` with its password replaced, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(unparsable URL)".into(),
    }
}

async fn connect(url: &str) -> Result<Client, BenchError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| BenchError(format!("connecting to {}: {e}", redact(url))))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn pg(what: &'static str) -> impl Fn(tokio_postgres::Error) -> BenchError {
    move |e| {
        let detail = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned());
        BenchError(format!("{what}: {detail}"))
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A database created for one run; [`drop_database`](Self::drop_database) removes it
/// (so does dropping this, less gracefully).
pub struct Database {
    admin: String,
    pub name: String,
    /// The URL the daemons are given (`TERN_STORE`).
    pub url: String,
    client: Option<Client>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Creates `tern_fleet_<pid>_<k>` on the server `admin` names.
    pub async fn create(admin: &str) -> Result<Self, BenchError> {
        let name = format!(
            "tern_fleet_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut url = url::Url::parse(admin)
            .map_err(|e| BenchError(format!("PostgreSQL URL {}: {e}", redact(admin))))?;
        url.set_path(&name);
        let c = connect(admin).await?;
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .map_err(pg("dropping an old database of the same name"))?;
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(pg("creating the run's database"))?;
        let url = url.to_string();
        let client = connect(&url).await?;
        Ok(Self {
            admin: admin.to_owned(),
            name,
            url,
            client: Some(client),
        })
    }

    fn client(&self) -> Result<&Client, BenchError> {
        self.client
            .as_ref()
            .ok_or_else(|| BenchError("the run's database is gone".into()))
    }

    /// Sessions each daemon owns in the store, by daemon name.
    pub async fn owners(&self) -> Result<Vec<(String, usize)>, BenchError> {
        let rows = self
            .client()?
            .query(
                "SELECT owner, count(*) FROM owners GROUP BY owner ORDER BY owner",
                &[],
            )
            .await
            .map_err(pg("reading session owners"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let count: i64 = r.get(1);
                (r.get(0), usize::try_from(count).unwrap_or(0))
            })
            .collect())
    }

    /// The server processes serving this database's other connections (the daemons').
    pub async fn backends(&self) -> Result<Vec<u32>, BenchError> {
        let rows = self
            .client()?
            .query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .map_err(pg("listing the server's processes"))?;
        Ok(rows
            .iter()
            .filter_map(|r| u32::try_from(r.get::<_, i32>(0)).ok())
            .collect())
    }

    /// Drops the database, whoever is still connected to it.
    pub async fn drop_database(mut self) -> Result<(), BenchError> {
        self.client = None;
        let c = connect(&self.admin).await?;
        let name = std::mem::take(&mut self.name);
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .map_err(pg("dropping the run's database"))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        self.client = None;
        let (admin, name) = (self.admin.clone(), std::mem::take(&mut self.name));
        // A drop cannot await: on a runtime of its own, off the caller's.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(c) = connect(&admin).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ =
                        tokio::time::timeout(Duration::from_secs(30), c.batch_execute(&sql)).await;
                }
            });
        })
        .join();
    }
}
