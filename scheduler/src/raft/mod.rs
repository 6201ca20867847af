//! Raft for one cell: openraft's type configuration, the log and state machine storage over the storage seam,
//! and the HTTP transport between members.

pub mod codec;
mod log_store;
pub mod membership;
mod network;
mod serve;
mod state_store;
mod streams;

pub use log_store::{EncodedEntries, LogStore};
pub use network::{EarlyReplication, HttpNetwork};
pub use serve::{raft_routes, Leader, Packed};
pub use state_store::{SharedState, SnapshotMetrics, StateStore};
pub use streams::{NetworkMetrics, Streams, LEADER, MAX_INTERNAL_BODY, PROPOSE};

use crate::command::{Command, Response};

openraft::declare_raft_types!(
    /// The cell's Raft types: commands in, responses out, members named by number and reached at an address.
    /// Commands are shared (`Arc`, encoded as the command itself): openraft clones entries to keep them in memory
    /// and to hand them to each replication stream, and a batch of 512 commands was deep-copied every time.
    pub TypeConfig:
        D = std::sync::Arc<Command>,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type StorageError = openraft::StorageError<NodeId>;

fn io_err(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    e: &(impl std::error::Error + 'static),
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(e)).into()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::testing::{StoreBuilder, Suite};

    use super::*;
    use crate::store::{Engine, FileEngine, MemoryEngine, SledEngine};

    struct Builder<F>(F);

    /// The engine's directory (if it has one) and the snapshot files' directory, removed when the suite is done.
    type Dirs = (Option<tempfile::TempDir>, tempfile::TempDir);

    impl<F> StoreBuilder<TypeConfig, LogStore, StateStore, Dirs> for Builder<F>
    where
        F: Fn() -> (Option<tempfile::TempDir>, Arc<dyn Engine>) + Send + Sync,
    {
        async fn build(&self) -> Result<(Dirs, LogStore, StateStore), StorageError> {
            let (dir, engine) = (self.0)();
            let snapshots = tempfile::tempdir().expect("temp dir");
            let flush = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("flush", "flush"))
                .expect("a histogram with a name");
            let log = LogStore::open(engine.clone(), flush)?;
            let sm = StateStore::open(engine, snapshots.path(), SnapshotMetrics::unregistered())?;
            Ok(((dir, snapshots), log, sm))
        }
    }

    #[test]
    fn memory_engine_passes_openraft_storage_suite() -> Result<(), StorageError> {
        Suite::test_all(Builder(|| (None, Arc::new(MemoryEngine::new()) as Arc<dyn Engine>)))
    }

    #[test]
    fn sled_engine_passes_openraft_storage_suite() -> Result<(), StorageError> {
        Suite::test_all(Builder(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let engine = SledEngine::open(dir.path()).expect("open sled");
            (Some(dir), Arc::new(engine) as Arc<dyn Engine>)
        }))
    }

    #[test]
    fn file_engine_passes_openraft_storage_suite() -> Result<(), StorageError> {
        Suite::test_all(Builder(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let engine = FileEngine::open(dir.path()).expect("open file engine");
            (Some(dir), Arc::new(engine) as Arc<dyn Engine>)
        }))
    }

    fn log_id(index: u64) -> openraft::LogId<NodeId> {
        openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index)
    }

    #[tokio::test]
    async fn the_committed_marker_is_written_every_so_many_entries_and_read_back_at_once() {
        use openraft::storage::RaftLogStorage;
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let flush = || prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("f", "f")).expect("histogram");
        let mut log = LogStore::open(engine.clone(), flush()).expect("open");
        log.save_committed(Some(log_id(70))).await.expect("save");
        log.save_committed(Some(log_id(71))).await.expect("save");
        // This store answers with the newest; the disk holds the one written at 70, the first past 64.
        assert_eq!(log.read_committed().await.expect("read"), Some(log_id(71)));
        let mut reopened = LogStore::open(engine.clone(), flush()).expect("reopen");
        assert_eq!(reopened.read_committed().await.expect("read"), Some(log_id(70)));
        // Written again only 64 entries on.
        reopened.save_committed(Some(log_id(133))).await.expect("save");
        let mut again = LogStore::open(engine.clone(), flush()).expect("reopen");
        assert_eq!(again.read_committed().await.expect("read"), Some(log_id(70)));
        reopened.save_committed(Some(log_id(134))).await.expect("save");
        let mut again = LogStore::open(engine, flush()).expect("reopen");
        assert_eq!(again.read_committed().await.expect("read"), Some(log_id(134)));
    }
}
