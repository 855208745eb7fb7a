//! The state store's conformance suite: every check in `conformance.rs` runs against
//! SQLite and against PostgreSQL (`engine.rs` says how a server is found), then what
//! only one engine has (`sqlite_only.rs`, `postgres_only.rs`).
#![allow(clippy::unwrap_used)]

mod conformance;
mod engine;
mod postgres_only;
mod sqlite_only;

use daemon::store::{Receipt, Store, StoreError, Write};

/// A write awaited from a plain thread or from inside a multi-threaded runtime.
pub trait WriteNow {
    fn write_now(&self, writes: Vec<Write>) -> Result<Receipt, StoreError>;
}

impl WriteNow for Store {
    fn write_now(&self, writes: Vec<Write>) -> Result<Receipt, StoreError> {
        let pending = self.write(writes);
        match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| pending.wait()),
            Err(_) => pending.wait(),
        }
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::conformance::$name(&crate::engine::Engine::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(engine) = crate::engine::Engine::postgres().await else {
                        return;
                    };
                    crate::conformance::$name(&engine).await;
                }
            )*
        }
    };
}

conformance!(
    identity_devices_revocations_and_pairings_persist,
    nodes_and_calls,
    refused_submission_fails_alone_and_is_not_half_applied,
    concurrent_writes_share_commits,
    events_are_filtered_deduplicated_and_never_renumbered,
    extreme_seqs_and_ids_round_trip_and_trim_in_order,
    a_daemon_session_restores_from_its_stored_journal,
    the_endpoint_keys_outlive_a_restart,
    retention_keeps_exactly_what_the_policy_allows,
    journals_match_the_in_memory_reference,
    ownership_fences_a_former_owner,
    a_decided_pairing_is_not_undone_by_an_older_copy,
    operators_are_added_revoked_and_replaced,
    calls_are_listed_newest_first_by_filter,
    call_listings_match_an_in_memory_filter,
);
