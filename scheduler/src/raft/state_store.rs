//! The state machine side of Raft: committed entries applied to `CellState`, and snapshots of it kept as files so a
//! restarted member starts from its last snapshot and re-applies the log after it.
//!
//! A snapshot is one file, `<id>.snap` (JSON: the format version and the state), in the member's `snapshots`
//! directory. It is written whole under a temporary name, synced, renamed into place and the directory synced; only
//! then does the storage seam's `Snapshot` tree name it (its meta), and only then are older files removed. A crash at
//! any step leaves the named snapshot whole; files nothing names are removed on open. Snapshots are kept out of the
//! storage engine because a snapshot is as big as the whole state: in the file engine it would be held in memory
//! as a second copy of the state, and appended to the write-ahead file every time.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StoredMembership,
};
use prometheus::{HistogramVec, IntGauge, Registry};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{io_err, NodeId, StorageError, TypeConfig};
use crate::command::Response;
use crate::snapshot::{self, SnapshotV7};
use crate::state::CellState;
use crate::store::{Engine, Op, Tree};

/// The state every reader of the cell sees; the state machine is its only writer.
pub type SharedState = Arc<RwLock<CellState>>;

type Meta = SnapshotMeta<NodeId, BasicNode>;

/// The key of the current snapshot's meta in the `Snapshot` tree.
const META: &[u8] = b"meta";
/// Where stores written before snapshot files kept the snapshot itself; read once on open, then moved to a file.
const LEGACY_DATA: &[u8] = b"data";
const SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".snap.tmp";

/// What a Grafana panel plots of snapshots: the current one's size, and how long building one takes by phase:
/// `copy`, the copy of the state taken while applying waits, and `write`, serializing and syncing that copy.
#[derive(Clone)]
pub struct SnapshotMetrics {
    bytes: IntGauge,
    seconds: HistogramVec,
}

impl SnapshotMetrics {
    pub fn new(registry: &Registry, cell: &str, node: NodeId) -> Result<SnapshotMetrics, prometheus::Error> {
        let r = crate::metrics::registrar(registry, cell, node);
        Ok(SnapshotMetrics {
            bytes: r.gauge(&crate::metrics::raft::SNAPSHOT_BYTES)?,
            seconds: r.histogram_vec(&crate::metrics::raft::SNAPSHOT_SECONDS)?,
        })
    }

    /// Metrics no registry shows, for tests.
    pub fn unregistered() -> SnapshotMetrics {
        SnapshotMetrics::new(&Registry::new(), "test", 0).expect("the catalogue's metrics register")
    }
}

/// The directory of a member's snapshot files.
#[derive(Clone)]
struct SnapshotDir {
    dir: PathBuf,
    /// Names anonymous files for snapshots being received.
    received: Arc<AtomicU64>,
}

fn read_err(e: &(impl std::error::Error + 'static)) -> StorageError {
    io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e)
}

fn write_err(e: &(impl std::error::Error + 'static)) -> StorageError {
    io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e)
}

/// A snapshot file that cannot be read, named in the error.
fn unreadable(path: &Path, e: std::io::Error) -> StorageError {
    read_err(&std::io::Error::new(e.kind(), format!("snapshot file {}: {e}", path.display())))
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

impl SnapshotDir {
    fn open(dir: &Path) -> std::io::Result<SnapshotDir> {
        std::fs::create_dir_all(dir)?;
        Ok(SnapshotDir { dir: dir.to_path_buf(), received: Arc::default() })
    }

    /// The file of snapshot `id`. Ids become file names, so only letters, digits, `-` and `_` are taken (ours are
    /// `term-index-count`); a snapshot from a leader with any other id is refused.
    fn path(&self, id: &str) -> std::io::Result<PathBuf> {
        let fits = !id.is_empty()
            && id.len() <= 128
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !fits {
            return Err(invalid(format!("snapshot id {id:?} cannot name a file")));
        }
        Ok(self.dir.join(format!("{id}{SUFFIX}")))
    }

    /// Writes snapshot `id` with `write`, whole or not at all, and returns its size. Blocking.
    fn write(
        &self,
        id: &str,
        write: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        let path = self.path(id)?;
        let temp = self.dir.join(format!("{id}{TEMP_SUFFIX}"));
        let file = File::create(&temp)?;
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        write(&mut out)?;
        out.flush()?;
        drop(out);
        file.sync_all()?;
        let size = file.metadata()?.len();
        std::fs::rename(&temp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(size)
    }

    /// Removes every snapshot file but `keep`'s, temporary ones included.
    fn remove_all_but(&self, keep: Option<&str>) {
        let keep = keep.map(|id| format!("{id}{SUFFIX}"));
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name.ends_with(SUFFIX) || name.ends_with(TEMP_SUFFIX);
            if ours && Some(&name) != keep.as_ref() {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove an old snapshot file");
                }
            }
        }
    }

    /// An empty file with no name, for a snapshot being received: nothing is left behind if it never completes.
    fn anonymous(&self) -> std::io::Result<File> {
        let n = self.received.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("receiving-{}-{n}{TEMP_SUFFIX}", std::process::id()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(file)
    }
}

fn decode_state(data: &[u8]) -> Result<CellState, StorageError> {
    let snapshot = snapshot::read(data).map_err(|e| read_err(&e))?;
    Ok(CellState::from_snapshot(snapshot))
}

/// Names `meta`'s snapshot as the current one (its file is already in place), and drops a legacy in-store copy.
fn name_current(engine: &dyn Engine, meta: &Meta) -> Result<(), StorageError> {
    let m = serde_json::to_vec(meta).map_err(|e| write_err(&e))?;
    engine
        .write(Tree::Snapshot, vec![Op::Put(META.to_vec(), m), Op::Delete(LEGACY_DATA.to_vec())])
        .map_err(|e| write_err(&e))?;
    engine.flush().map_err(|e| write_err(&e))
}

fn current_meta(engine: &dyn Engine) -> Result<Option<Meta>, StorageError> {
    match engine.get(Tree::Snapshot, META).map_err(|e| read_err(&e))? {
        Some(m) => Ok(Some(serde_json::from_slice(&m).map_err(|e| read_err(&e))?)),
        None => Ok(None),
    }
}

/// Runs blocking snapshot file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(std::io::Error::other)?
}

/// Where a member's snapshots are kept: their files, the seam that names the current one, and their metrics.
#[derive(Clone)]
struct Snapshots {
    engine: Arc<dyn Engine>,
    dir: SnapshotDir,
    metrics: SnapshotMetrics,
}

impl Snapshots {
    /// Writes the snapshot `meta` describes with `write` (in a blocking thread), names it the current one and
    /// removes the others; returns its size.
    async fn keep(
        &self,
        meta: &Meta,
        write: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()> + Send + 'static,
    ) -> Result<u64, StorageError> {
        let (dir, id) = (self.dir.clone(), meta.snapshot_id.clone());
        let bytes = blocking(move || dir.write(&id, write)).await.map_err(|e| write_err(&e))?;
        name_current(self.engine.as_ref(), meta)?;
        self.dir.remove_all_but(Some(&meta.snapshot_id));
        self.metrics.bytes.set(bytes as i64);
        Ok(bytes)
    }

    /// Snapshot `id`'s file, read-only: a written snapshot never changes.
    async fn open(&self, id: &str) -> Result<tokio::fs::File, StorageError> {
        let path = self.dir.path(id).map_err(|e| read_err(&e))?;
        tokio::fs::File::open(&path).await.map_err(|e| unreadable(&path, e))
    }
}

pub struct StateStore {
    snapshots: Snapshots,
    state: SharedState,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    built: u64,
    watchers: Arc<crate::watch::Watchers>,
    events: Arc<crate::watch::EventLog>,
    changes: Arc<crate::state::Changes>,
}

impl StateStore {
    /// Opens the state machine at its last snapshot (empty when there is none), with snapshot files in
    /// `snapshot_dir`. A store written before snapshot files has its snapshot moved out to one.
    pub fn open(
        engine: Arc<dyn Engine>,
        snapshot_dir: &Path,
        metrics: SnapshotMetrics,
    ) -> Result<StateStore, StorageError> {
        let dir = SnapshotDir::open(snapshot_dir).map_err(|e| write_err(&e))?;
        let mut store = StateStore {
            snapshots: Snapshots { engine, dir, metrics },
            state: SharedState::default(),
            last_applied: None,
            membership: StoredMembership::default(),
            built: 0,
            watchers: Default::default(),
            events: Arc::new(crate::watch::EventLog::new(0)),
            changes: Arc::default(),
        };
        let Snapshots { engine, dir, metrics } = store.snapshots.clone();
        let meta = current_meta(engine.as_ref())?;
        if let Some(meta) = &meta {
            let path = dir.path(&meta.snapshot_id).map_err(|e| read_err(&e))?;
            let data = match engine.get(Tree::Snapshot, LEGACY_DATA).map_err(|e| read_err(&e))? {
                Some(data) => {
                    dir.write(&meta.snapshot_id, |w| w.write_all(&data)).map_err(|e| write_err(&e))?;
                    name_current(engine.as_ref(), meta)?;
                    tracing::info!(snapshot = %meta.snapshot_id, "snapshot moved out of the store to its own file");
                    data
                }
                None => std::fs::read(&path).map_err(|e| unreadable(&path, e))?,
            };
            let state = decode_state(&data)?;
            store.events.reset(state.events_made());
            *store.write() = state;
            metrics.bytes.set(data.len() as i64);
            store.last_applied = meta.last_log_id;
            store.membership = meta.last_membership.clone();
        }
        dir.remove_all_but(meta.as_ref().map(|m| m.snapshot_id.as_str()));
        Ok(store)
    }

    pub fn state(&self) -> SharedState {
        self.state.clone()
    }

    /// The event stream this store feeds as it applies.
    pub fn events(&self) -> Arc<crate::watch::EventLog> {
        self.events.clone()
    }

    /// What the scheduler takes of the applied commands' effects (changed jobs, capacity moves).
    pub fn changes(&self) -> Arc<crate::state::Changes> {
        self.changes.clone()
    }

    /// The long-poll wake-ups this store signals after each applied batch.
    pub fn watchers(&self) -> Arc<crate::watch::Watchers> {
        self.watchers.clone()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CellState> {
        // Applying a command never panics half-way (it is plain map updates), so a poisoned lock holds a whole state.
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Builds a snapshot of the state as it was when the builder was taken.
pub struct Builder {
    snapshots: Snapshots,
    state: SnapshotV7,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    id: String,
    /// How long copying the state took.
    copy_seconds: f64,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let start = Instant::now();
        let state = std::mem::take(&mut self.state);
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: self.id.clone(),
        };
        // Serialized straight into the file, and the copy of the state dropped there too: neither waits on, nor
        // holds up, the async threads.
        let bytes =
            self.snapshots.keep(&meta, move |w| snapshot::write(w, &state).map_err(std::io::Error::from)).await?;
        let seconds = start.elapsed().as_secs_f64();
        self.snapshots.metrics.seconds.with_label_values(&["write"]).observe(seconds);
        tracing::info!(snapshot = %self.id, bytes, copy_seconds = self.copy_seconds, seconds, "snapshot built");
        let file = self.snapshots.open(&self.id).await?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

impl RaftStateMachine<TypeConfig> for StateStore {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let mut events = Vec::new();
        let mut touched = Vec::new();
        let (mut dirty_jobs, mut capacity_moved) = (std::collections::BTreeSet::new(), false);
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            out.push(match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(cmd) => {
                    let (answer, fx) = state.apply(&cmd);
                    events.extend(fx.events.into_iter().map(|mut e| {
                        e.index = entry.log_id.index;
                        e
                    }));
                    touched.extend(fx.touched);
                    if dirty_jobs.is_empty() {
                        dirty_jobs = fx.dirty_jobs;
                    } else {
                        dirty_jobs.extend(fx.dirty_jobs);
                    }
                    capacity_moved |= fx.capacity_moved;
                    answer
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::None
                }
            });
        }
        // Noted under the state's lock, so a reader of the state sees the counter that goes with it.
        self.changes.note(dirty_jobs, capacity_moved);
        drop(state);
        self.watchers.notify(crate::state::Effects::latest(touched));
        self.events.publish(events);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        self.built += 1;
        let id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.built),
            None => format!("0-0-{}", self.built),
        };
        let start = Instant::now();
        let state = self.state.read().unwrap_or_else(|p| p.into_inner()).snapshot();
        let copy_seconds = start.elapsed().as_secs_f64();
        self.snapshots.metrics.seconds.with_label_values(&["copy"]).observe(copy_seconds);
        Builder {
            snapshots: self.snapshots.clone(),
            state,
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            id,
            copy_seconds,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let file = self.snapshots.dir.anonymous().map_err(|e| write_err(&e))?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(&mut self, meta: &Meta, mut snapshot: Box<tokio::fs::File>) -> Result<(), StorageError> {
        // Whatever file it came in (the one `begin_receiving_snapshot` gave, or another), it is read whole and
        // written under its own id, so the named file is always one this store wrote and synced.
        let mut data = Vec::new();
        snapshot.flush().await.map_err(|e| write_err(&e))?;
        snapshot.seek(std::io::SeekFrom::Start(0)).await.map_err(|e| read_err(&e))?;
        snapshot.read_to_end(&mut data).await.map_err(|e| read_err(&e))?;
        drop(snapshot);
        let state = decode_state(&data)?;
        let bytes = self.snapshots.keep(meta, move |w| w.write_all(&data)).await?;
        let versions: Vec<(String, u64)> = state.agents().map(|a| (a.registration.id.clone(), a.version)).collect();
        self.events.reset(state.events_made());
        *self.write() = state;
        self.changes.capacity_moved();
        self.watchers.notify(versions);
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        tracing::info!(snapshot = %meta.snapshot_id, bytes, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(meta) = current_meta(self.snapshots.engine.as_ref())? else { return Ok(None) };
        let file = self.snapshots.open(&meta.snapshot_id).await?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(file) }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use titan_api::job::{BodyFormat, JobSpec};

    use super::*;
    use crate::command::{Command, Meta as RequestMeta};
    use crate::spec::Spec;
    use crate::store::{FileEngine, MemoryEngine};

    fn put_job(index: u64, id: &str) -> Entry<TypeConfig> {
        let body =
            r#"{"name":"web","applicationName":"shop","location":"dc1:2","cpus":1,"memory":512,"image":"busybox"}"#;
        let spec = Arc::new(Spec::from(&JobSpec::parse(body.as_bytes(), BodyFormat::Json).expect("valid spec")));
        let meta =
            RequestMeta { who: "alice".into(), why: None, at_ms: 1, request: format!("r{index}"), cell: String::new() };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Arc::new(Command::PutJob {
                id: id.into(),
                spec,
                idempotency_key: None,
                meta,
            })),
        }
    }

    fn snapshot_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn open(engine: &Arc<dyn Engine>, dir: &Path) -> StateStore {
        StateStore::open(engine.clone(), dir, SnapshotMetrics::unregistered()).expect("open")
    }

    /// A file engine and a snapshot directory whose store applied one job and built a snapshot, then closed.
    async fn one_snapshot() -> (tempfile::TempDir, tempfile::TempDir, Arc<dyn Engine>, Snapshot<TypeConfig>) {
        let (raft, snaps) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
        let engine: Arc<dyn Engine> = Arc::new(FileEngine::open(raft.path()).expect("engine"));
        let mut store = open(&engine, snaps.path());
        store.apply(vec![put_job(1, "j1")]).await.expect("apply");
        let built = store.get_snapshot_builder().await.build_snapshot().await.expect("build");
        (raft, snaps, engine, built)
    }

    fn job_ids(store: &StateStore) -> Vec<String> {
        store.state().read().expect("state").jobs().map(|j| j.id.clone()).collect()
    }

    #[tokio::test]
    async fn a_snapshot_is_a_file_the_store_only_names_and_the_state_comes_back_from_it() {
        let (raft, snaps) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
        let engine: Arc<dyn Engine> = Arc::new(FileEngine::open(raft.path()).expect("engine"));
        let mut store = open(&engine, snaps.path());
        store.apply(vec![put_job(1, "j1")]).await.expect("apply");
        let first = store.get_snapshot_builder().await.build_snapshot().await.expect("build");
        store.apply(vec![put_job(2, "j2")]).await.expect("apply");
        let second = store.get_snapshot_builder().await.build_snapshot().await.expect("build");

        // One file, the newest; the store holds its meta and no copy of it.
        assert_eq!(snapshot_files(snaps.path()), vec![format!("{}.snap", second.meta.snapshot_id)]);
        assert_ne!(first.meta.snapshot_id, second.meta.snapshot_id);
        assert_eq!(engine.get(Tree::Snapshot, LEGACY_DATA).expect("get"), None);
        assert!(engine.size_on_disk() < 64 * 1024, "the store holds only the meta");

        // A snapshot built at index 2 holds both jobs, on reopening and when read back as openraft sends it.
        drop(store);
        let mut reopened = open(&engine, snaps.path());
        assert_eq!(job_ids(&reopened), vec!["j1", "j2"]);
        assert_eq!(reopened.applied_state().await.expect("applied").0.map(|l| l.index), Some(2));
        let mut current = reopened.get_current_snapshot().await.expect("current").expect("a snapshot");
        assert_eq!(current.meta, second.meta);
        let mut sent = Vec::new();
        current.snapshot.read_to_end(&mut sent).await.expect("read");
        let sent_state = decode_state(&sent).expect("decodes");
        assert_eq!(sent_state.jobs().count(), 2);
    }

    #[tokio::test]
    async fn installing_a_snapshot_writes_it_under_its_id_and_a_bad_id_is_refused_without_a_trace() {
        let (a, b) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
        let leader_engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let mut leader = open(&leader_engine, a.path());
        leader.apply(vec![put_job(1, "j1")]).await.expect("apply");
        let built = leader.get_snapshot_builder().await.build_snapshot().await.expect("build");
        let mut bytes = Vec::new();
        let mut sent = leader.get_current_snapshot().await.expect("current").expect("a snapshot");
        sent.snapshot.read_to_end(&mut bytes).await.expect("read");

        let follower_engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let mut follower = open(&follower_engine, b.path());
        // As openraft delivers it: chunks written into the file `begin_receiving_snapshot` gave.
        let mut receiving = follower.begin_receiving_snapshot().await.expect("begin");
        for chunk in bytes.chunks(7) {
            receiving.write_all(chunk).await.expect("write");
        }
        let mut bad = built.meta.clone();
        bad.snapshot_id = "../../etc/x".into();
        let err = follower.install_snapshot(&bad, receiving).await.expect_err("a path is not an id");
        assert!(err.to_string().contains("cannot name a file"), "{err}");
        assert!(snapshot_files(b.path()).is_empty(), "nothing written: {:?}", snapshot_files(b.path()));
        assert!(job_ids(&follower).is_empty());

        let mut receiving = follower.begin_receiving_snapshot().await.expect("begin");
        receiving.write_all(&bytes).await.expect("write");
        follower.install_snapshot(&built.meta, receiving).await.expect("install");
        assert_eq!(job_ids(&follower), vec!["j1"]);
        assert_eq!(snapshot_files(b.path()), vec![format!("{}.snap", built.meta.snapshot_id)]);
        drop(follower);
        assert_eq!(job_ids(&open(&follower_engine, b.path())), vec!["j1"]);
    }

    #[tokio::test]
    async fn a_store_from_before_snapshot_files_has_its_snapshot_moved_out_and_leftovers_are_removed() {
        let (_raft, snaps, engine, built) = one_snapshot().await;
        // The layout before: the snapshot's bytes in the store beside its meta, no file.
        let id = built.meta.snapshot_id.clone();
        let data = std::fs::read(snaps.path().join(format!("{id}.snap"))).expect("file");
        engine.write(Tree::Snapshot, vec![Op::Put(LEGACY_DATA.to_vec(), data)]).expect("write");
        engine.flush().expect("flush");
        std::fs::remove_file(snaps.path().join(format!("{id}.snap"))).expect("remove");
        // Leftovers of a crash: a temporary file and a snapshot the store never named.
        std::fs::write(snaps.path().join("9-9-9.snap.tmp"), b"half").expect("write");
        std::fs::write(snaps.path().join("1-0-1.snap"), b"{}").expect("write");
        std::fs::write(snaps.path().join("notes.txt"), b"not ours").expect("write");

        let reopened = open(&engine, snaps.path());
        assert_eq!(job_ids(&reopened), vec!["j1"]);
        assert_eq!(engine.get(Tree::Snapshot, LEGACY_DATA).expect("get"), None, "the in-store copy is dropped");
        assert_eq!(snapshot_files(snaps.path()), vec![format!("{id}.snap"), "notes.txt".to_string()]);
    }

    #[tokio::test]
    async fn a_named_snapshot_file_that_is_missing_is_an_error_naming_it() {
        let (_raft, snaps, engine, built) = one_snapshot().await;
        std::fs::remove_file(snaps.path().join(format!("{}.snap", built.meta.snapshot_id))).expect("remove");
        let err = StateStore::open(engine, snaps.path(), SnapshotMetrics::unregistered()).err().expect("an error");
        assert!(err.to_string().contains(&format!("{}.snap", built.meta.snapshot_id)), "{err}");
    }
}
