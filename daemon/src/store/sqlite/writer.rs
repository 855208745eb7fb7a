//! The single writer: a dedicated thread that owns the write connection and commits
//! everything queued in one transaction (one fsync), then completes every waiter.
//!
//! Each submission ([`Job`]) runs inside its own savepoint, so a submission whose
//! writes are refused (a missing row, an invalid value) is rolled back and fails alone
//! while the rest of the group commits. When the group's transaction itself fails (it
//! cannot begin, SQLite rolled it back, or the commit fails) nothing of it is applied
//! and every waiter gets the error; the thread goes on with the next group.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

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
}

/// The writer thread's loop; returns once every sender is gone and the queue is empty.
pub(crate) fn run(
    mut conn: Connection,
    rx: Receiver<Job>,
    stats: Arc<Stats>,
    retention: RetentionPolicy,
    max_group: usize,
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < max_group {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        commit_group(&mut conn, group, &stats, &retention);
    }
}

fn commit_group(
    conn: &mut Connection,
    group: Vec<Job>,
    stats: &Stats,
    retention: &RetentionPolicy,
) {
    let outcomes = match apply_group(conn, &group, retention) {
        Ok((committed, outcomes)) => {
            if committed {
                stats.commits.fetch_add(1, Ordering::Relaxed);
            }
            outcomes
        }
        Err((err, partial)) => {
            stats.failed_groups.fetch_add(1, Ordering::Relaxed);
            // A submission refused on its own keeps its own reason.
            partial
                .into_iter()
                .map(|o| o.and_then(|_| Err(err.clone())))
                .chain(std::iter::repeat_with(|| Err(err.clone())))
                .take(group.len())
                .collect()
        }
    };
    for (job, outcome) in group.into_iter().zip(outcomes) {
        // A waiter that went away does not care.
        let _ = job.reply.send(outcome);
    }
}

type Outcome = Result<Receipt, StoreError>;

/// Runs the group in one transaction and commits it, unless every submission was
/// refused (then it rolls back: `false`). On a group failure, the outcomes so far.
fn apply_group(
    conn: &mut Connection,
    group: &[Job],
    retention: &RetentionPolicy,
) -> Result<(bool, Vec<Outcome>), (StoreError, Vec<Outcome>)> {
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(group.len());
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| (StoreError::db("begin a group commit")(e), Vec::new()))?;
    for job in group {
        let sp = match tx.savepoint() {
            Ok(sp) => sp,
            Err(e) => return Err((StoreError::db("open a savepoint")(e), outcomes)),
        };
        let mut receipt = Receipt::default();
        let result = job
            .writes
            .iter()
            .try_for_each(|w| super::apply(&sp, w, retention, &mut receipt));
        match result {
            Ok(()) => {
                if let Err(e) = sp.commit() {
                    return Err((StoreError::db("release a savepoint")(e), outcomes));
                }
                outcomes.push(Ok(receipt));
            }
            Err(err) => {
                // Some errors (I/O, a full disk) make SQLite roll the whole transaction
                // back: then the group is lost, not just this submission.
                if sp.is_autocommit() {
                    return Err((err, outcomes));
                }
                // Rolls back to the savepoint and releases it.
                if let Err(e) = sp.finish() {
                    return Err((StoreError::db("roll back a savepoint")(e), outcomes));
                }
                outcomes.push(Err(err));
            }
        }
    }
    if !outcomes.iter().any(Result::is_ok) {
        tx.rollback()
            .map_err(|e| (StoreError::db("roll back a group")(e), Vec::new()))?;
        return Ok((false, outcomes));
    }
    tx.commit().map_err(|e| {
        (
            StoreError::db("commit a group")(e),
            outcomes_lost(&outcomes),
        )
    })?;
    Ok((true, outcomes))
}

/// After a failed commit, only the submissions refused on their own keep their reason.
fn outcomes_lost(outcomes: &[Outcome]) -> Vec<Outcome> {
    outcomes
        .iter()
        .map(|o| match o {
            Ok(_) => Ok(Receipt::default()),
            Err(e) => Err(e.clone()),
        })
        .collect()
}
