//! The single writer of one daemon: a task that owns one connection and commits
//! whatever was queued in one transaction, then completes every waiter.
//!
//! Fast path: every statement of every submission of the group is sent at once and the
//! group commits (one round trip for the statements, one for the commit). When a submission is
//! refused (a missing row, a fence), the group is rolled back and replayed with one
//! savepoint per submission, so that one fails alone while the rest commit: the same
//! outcome as SQLite's writer. A group that fails for a transient reason (a deadlock or
//! serialization failure between daemons, a lost connection) is retried whole after a
//! short wait, on a new connection if the old one is gone; every statement is
//! idempotent or guarded, so a retry after an unknown commit outcome stores the same.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;
use tracing::warn;

use super::apply::{Op, Statements, apply, prepare, run};
use super::{connect_client, pg};
use crate::store::{Receipt, RetentionPolicy, StoreError, Write};

/// One submission: applied all or nothing, answered once.
pub(crate) struct Job {
    pub(crate) writes: Vec<Write>,
    pub(crate) reply: oneshot::Sender<Result<Receipt, StoreError>>,
}

/// Counters the writer keeps.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) commits: AtomicU64,
    pub(crate) failed_groups: AtomicU64,
    pub(crate) retries: AtomicU64,
}

/// How often a group is tried when it fails for a transient reason.
const ATTEMPTS: u32 = 5;

pub(crate) struct Writer {
    pub(crate) url: String,
    pub(crate) client: Option<(Client, Statements)>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) retention: RetentionPolicy,
    pub(crate) max_group: usize,
}

type Outcome = Result<Receipt, StoreError>;

impl Writer {
    /// Runs until every sender is gone and the queue is empty.
    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        while let Some(first) = rx.recv().await {
            let mut group = vec![first];
            while group.len() < self.max_group {
                match rx.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            let outcomes = self.commit(&group).await;
            for (job, outcome) in group.into_iter().zip(outcomes) {
                // A waiter that went away does not care.
                let _ = job.reply.send(outcome);
            }
        }
    }

    async fn commit(&mut self, group: &[Job]) -> Vec<Outcome> {
        let mut last = StoreError::Closed;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
            match self.try_commit(group).await {
                Ok((committed, outcomes)) => {
                    if committed {
                        self.stats.commits.fetch_add(1, Ordering::Relaxed);
                    }
                    return outcomes;
                }
                Err(Failure::Transient(e)) => {
                    warn!(error = %e, attempt, "store group failed; trying again");
                    last = e;
                }
                Err(Failure::Fatal(e)) => {
                    last = e;
                    break;
                }
            }
        }
        self.stats.failed_groups.fetch_add(1, Ordering::Relaxed);
        group.iter().map(|_| Err(last.clone())).collect()
    }

    async fn try_commit(&mut self, group: &[Job]) -> Result<(bool, Vec<Outcome>), Failure> {
        if self.client.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            self.client = None;
            let client = connect_client(&self.url)
                .await
                .map_err(Failure::Transient)?;
            let stmts = Statements::prepare(&client)
                .await
                .map_err(Failure::Transient)?;
            self.client = Some((client, stmts));
        }
        let Some((client, stmts)) = self.client.as_mut() else {
            return Err(Failure::Transient(StoreError::Closed));
        };
        let retention = self.retention;
        // Fast path: every submission's statements in one pipeline. A submission its
        // checks refuse never reaches the database and fails alone here.
        {
            let prepared: Vec<Result<Vec<Op>, StoreError>> = group
                .iter()
                .map(|job| prepare(stmts, &job.writes, &retention))
                .collect();
            let lists: Vec<&[Op]> = prepared
                .iter()
                .filter_map(|p| p.as_ref().ok().map(Vec::as_slice))
                .collect();
            let tx = client
                .transaction()
                .await
                .map_err(failure("begin a group"))?;
            let mut answers = run(&tx, &lists).await.into_iter();
            let mut refused_by_database = None;
            let outcomes: Vec<Outcome> = prepared
                .into_iter()
                .map(|p| match p {
                    Ok(_) => {
                        let answer = answers.next().unwrap_or(Err(StoreError::Closed));
                        if let Err(e) = &answer {
                            refused_by_database.get_or_insert_with(|| e.clone());
                        }
                        answer
                    }
                    Err(e) => Err(e),
                })
                .collect();
            match refused_by_database {
                None if outcomes.iter().any(Result::is_ok) => {
                    tx.commit().await.map_err(failure("commit a group"))?;
                    return Ok((true, outcomes));
                }
                None => {
                    tx.rollback().await.map_err(failure("roll back a group"))?;
                    return Ok((false, outcomes));
                }
                Some(e) if is_transient(&e) => return Err(Failure::Transient(e)),
                Some(_) => {
                    tx.rollback().await.map_err(failure("roll back a group"))?;
                }
            }
        }
        // Slow path: a savepoint per submission.
        let mut tx = client
            .transaction()
            .await
            .map_err(failure("begin a group"))?;
        let mut outcomes = Vec::with_capacity(group.len());
        for job in group {
            let sp = tx
                .savepoint("job")
                .await
                .map_err(failure("open a savepoint"))?;
            match apply(&sp, stmts, &job.writes, &retention).await {
                Ok(r) => {
                    sp.commit().await.map_err(failure("release a savepoint"))?;
                    outcomes.push(Ok(r));
                }
                Err(e) if is_transient(&e) => return Err(Failure::Transient(e)),
                Err(e) => {
                    sp.rollback()
                        .await
                        .map_err(failure("roll back a savepoint"))?;
                    outcomes.push(Err(e));
                }
            }
        }
        if !outcomes.iter().any(Result::is_ok) {
            tx.rollback().await.map_err(failure("roll back a group"))?;
            return Ok((false, outcomes));
        }
        tx.commit().await.map_err(failure("commit a group"))?;
        Ok((true, outcomes))
    }
}

enum Failure {
    /// Worth trying the whole group again.
    Transient(StoreError),
    Fatal(StoreError),
}

fn is_transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Busy(_) | StoreError::Unavailable(_))
}

fn failure(what: &'static str) -> impl Fn(tokio_postgres::Error) -> Failure {
    move |e| {
        let e = pg(what)(e);
        if is_transient(&e) {
            Failure::Transient(e)
        } else {
            Failure::Fatal(e)
        }
    }
}
