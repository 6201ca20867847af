//! The Raft log and vote on the storage seam.
//!
//! A leader's appends never wait on the disk in Raft's own task: entries go into an in-memory tail of the log at
//! once (which is also where replication reads recent entries from), and a writer thread writes them to the engine
//! and makes them durable with one flush for everything that queued up meanwhile (group commit), then tells Raft,
//! so replication to followers runs while the leader's disk syncs. Truncate and purge travel the same queue, so the
//! disk sees every change in the order Raft made it. A follower answers its leader only once an append is durable,
//! so it writes and syncs in place when nothing is queued, sparing the trip to the writer thread and back.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use super::{codec, io_err, NodeId, StorageError, TypeConfig};
use crate::store::{Engine, Op, StoreError, Tree};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"last_purged";

/// Durable entries kept in memory behind the newest one, so followers a little behind are served without disk reads.
/// Entries are batches of up to `MAX_BATCH` commands, so this stays small.
const TAIL_KEEP: u64 = 64;

fn key(index: u64) -> Vec<u8> {
    index.to_be_bytes().to_vec()
}

fn encode<T: Serialize>(v: &T, subject: ErrorSubject<NodeId>) -> Result<Vec<u8>, StorageError> {
    codec::encode(v).map_err(|e| io_err(subject, ErrorVerb::Write, &e))
}

fn decode<T: DeserializeOwned>(b: &[u8], subject: ErrorSubject<NodeId>) -> Result<T, StorageError> {
    codec::decode(b).map_err(|e| io_err(subject, ErrorVerb::Read, &e))
}

fn meta<T: DeserializeOwned>(engine: &dyn Engine, k: &[u8]) -> Result<Option<T>, StorageError> {
    match engine.get(Tree::Meta, k).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, &e))? {
        Some(b) => decode(&b, ErrorSubject::Store).map(Some),
        None => Ok(None),
    }
}

/// The newest entries, contiguous: everything appended since start-up that is not yet trimmed.
type Tail = BTreeMap<u64, Entry<TypeConfig>>;

struct Shared {
    engine: Arc<dyn Engine>,
    /// How long each flush of the writer takes.
    flush_seconds: prometheus::Histogram,
    tail: Mutex<Tail>,
    /// The encoded form of the newest entries, as the writer made it for the disk: replication sends these bytes
    /// instead of encoding every entry again for every follower.
    encoded: Mutex<BTreeMap<u64, (LogId<NodeId>, Bytes)>>,
    /// Writes sent to the writer thread and not yet answered.
    queued: AtomicUsize,
}

/// Entries in their `codec` encoding, reused where the log store already made it.
#[derive(Clone)]
pub struct EncodedEntries {
    shared: Arc<Shared>,
}

impl EncodedEntries {
    /// The encoding of `entry`: the one written to disk when it is still in memory, else a fresh one.
    pub fn get(&self, entry: &Entry<TypeConfig>) -> Result<Bytes, rmp_serde::encode::Error> {
        match self.shared.cached(entry) {
            Some(b) => Ok(b),
            None => codec::encode(entry).map(Bytes::from),
        }
    }

    /// Keeps the encodings a follower received with the entries, so its log writer stores them as they came.
    pub fn remember(&self, received: impl IntoIterator<Item = (LogId<NodeId>, Bytes)>) {
        let mut encoded = self.shared.encoded.lock().unwrap_or_else(|p| p.into_inner());
        encoded.extend(received.into_iter().map(|(id, b)| (id.index, (id, b))));
    }
}

impl Shared {
    /// The known encoding of exactly this entry (same index and log id), if any.
    fn cached(&self, entry: &Entry<TypeConfig>) -> Option<Bytes> {
        let encoded = self.encoded.lock().unwrap_or_else(|p| p.into_inner());
        encoded.get(&entry.log_id.index).filter(|(id, _)| *id == entry.log_id).map(|(_, b)| b.clone())
    }

    fn tail(&self) -> MutexGuard<'_, Tail> {
        // Tail updates are single map operations; a panic elsewhere cannot leave it half-changed.
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries in `range`: the part below the in-memory tail from the engine (it is durable there), the rest from
    /// the tail.
    fn read(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        if start >= end {
            return Ok(Vec::new());
        }
        let (low, from_tail) = {
            let tail = self.tail();
            let low = tail.keys().next().copied().unwrap_or(u64::MAX);
            let from = start.max(low);
            let part: Vec<Entry<TypeConfig>> =
                if from < end { tail.range(from..end).map(|(_, e)| e.clone()).collect() } else { Vec::new() };
            (low, part)
        };
        let mut out = Vec::new();
        if start < low {
            let pairs = self
                .engine
                .range(Tree::Log, Bound::Included(key(start)), Bound::Excluded(key(end.min(low))), usize::MAX)
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
            for (_, v) in pairs {
                out.push(decode(&v, ErrorSubject::Logs)?);
            }
        }
        out.extend(from_tail);
        Ok(out)
    }
}

/// Work for the writer thread, in Raft's order.
enum Write {
    Append(Vec<Entry<TypeConfig>>, LogFlushed<TypeConfig>),
    Truncate(u64, oneshot::Sender<Result<(), StoreError>>),
    Purge(LogId<NodeId>, oneshot::Sender<Result<(), StoreError>>),
}

fn write_one(shared: &Shared, w: &Write) -> Result<(), StoreError> {
    let engine = shared.engine.as_ref();
    match w {
        Write::Append(entries, _) => {
            let mut ops = Vec::with_capacity(entries.len());
            let mut made = Vec::with_capacity(entries.len());
            for e in entries {
                // A follower already has the bytes the leader sent; a leader encodes once, here.
                let bytes = match shared.cached(e) {
                    Some(b) => b.to_vec(),
                    None => {
                        let bytes = codec::encode(e).map_err(|err| StoreError(err.to_string()))?;
                        made.push((e.log_id.index, (e.log_id, Bytes::copy_from_slice(&bytes))));
                        bytes
                    }
                };
                ops.push(Op::Put(key(e.log_id.index), bytes));
            }
            shared.encoded.lock().unwrap_or_else(|p| p.into_inner()).extend(made);
            engine.write(Tree::Log, ops)
        }
        Write::Truncate(index, _) => engine.delete_range(Tree::Log, Bound::Included(key(*index)), Bound::Unbounded),
        Write::Purge(log_id, _) => {
            // The marker first: a crash between the two leaves extra entries, which is harmless.
            let marker = codec::encode(log_id).map_err(|err| StoreError(err.to_string()))?;
            engine.write(Tree::Meta, vec![Op::Put(PURGED.to_vec(), marker)])?;
            engine.delete_range(Tree::Log, Bound::Unbounded, Bound::Included(key(log_id.index)))
        }
    }
}

/// The writer thread: each round writes everything queued, flushes once, then answers every waiter.
fn writer(shared: Arc<Shared>, rx: mpsc::Receiver<Write>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let n = batch.len();
        persist(&shared, batch);
        shared.queued.fetch_sub(n, Ordering::Release);
    }
}

/// Writes a batch, flushes once, trims what memory keeps of the log, then answers every waiter.
fn persist(shared: &Shared, batch: Vec<Write>) {
    let mut result = Ok(());
    let mut durable = None;
    for w in &batch {
        if result.is_ok() {
            result = write_one(shared, w);
        }
        if let Write::Append(entries, _) = w {
            durable = entries.last().map(|e| e.log_id.index).or(durable);
        }
    }
    if result.is_ok() {
        let start = std::time::Instant::now();
        result = shared.engine.flush();
        shared.flush_seconds.observe(start.elapsed().as_secs_f64());
    }
    if let (Ok(()), Some(d)) = (&result, durable) {
        let mut tail = shared.tail();
        let keep_from = d.saturating_sub(TAIL_KEEP);
        while tail.first_key_value().is_some_and(|(i, _)| *i < keep_from) {
            tail.pop_first();
        }
        drop(tail);
        let mut encoded = shared.encoded.lock().unwrap_or_else(|p| p.into_inner());
        *encoded = encoded.split_off(&keep_from);
    }
    for w in batch {
        let r = result.clone();
        match w {
            Write::Append(_, cb) => cb.log_io_completed(r.map_err(|e| std::io::Error::other(e.0))),
            Write::Truncate(_, tx) | Write::Purge(_, tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

/// Whether `vote` makes `me` the leader.
fn leads(vote: Option<&Vote<NodeId>>, me: NodeId) -> bool {
    vote.is_some_and(|v| v.is_committed() && v.leader_id().voted_for() == Some(me))
}

/// Reads log entries; cheap to clone, one per replication stream.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        self.shared.read(range)
    }
}

/// The log store: entries in `Tree::Log`, vote, committed and purge marker in `Tree::Meta`.
pub struct LogStore {
    shared: Arc<Shared>,
    /// This member's id, to tell from the vote whether it leads.
    me: NodeId,
    /// Whether the last vote saved or read makes this member the leader: a leader's appends go to the writer thread
    /// so replication to followers runs while its disk syncs; a follower has nothing to do until its own append is
    /// durable, so it writes and syncs at once, sparing the trip to the writer thread and back.
    leading: AtomicBool,
    writes: mpsc::Sender<Write>,
    last_purged: Option<LogId<NodeId>>,
    committed: Arc<AtomicU64>,
}

impl LogStore {
    /// Opens member `me`'s log on `engine`; `flush_seconds` observes every flush.
    pub fn open(
        engine: Arc<dyn Engine>,
        me: NodeId,
        flush_seconds: prometheus::Histogram,
    ) -> Result<LogStore, StorageError> {
        let last_purged = meta(engine.as_ref(), PURGED)?;
        let vote: Option<Vote<NodeId>> = meta(engine.as_ref(), VOTE)?;
        let shared = Arc::new(Shared {
            engine,
            flush_seconds,
            tail: Mutex::new(BTreeMap::new()),
            encoded: Mutex::new(BTreeMap::new()),
            queued: AtomicUsize::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer(s, rx))
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        Ok(LogStore {
            shared,
            me,
            leading: AtomicBool::new(leads(vote.as_ref(), me)),
            writes: tx,
            last_purged,
            committed: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The encodings replication can reuse.
    pub fn encoded_entries(&self) -> EncodedEntries {
        EncodedEntries { shared: self.shared.clone() }
    }

    /// The highest log index this member knows to be committed, for status and metrics.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn write_meta<T: Serialize>(&self, k: &[u8], v: &T) -> Result<(), StorageError> {
        let b = encode(v, ErrorSubject::Store)?;
        self.shared
            .engine
            .write(Tree::Meta, vec![Op::Put(k.to_vec(), b)])
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))
    }

    fn send(&self, w: Write, subject: ErrorSubject<NodeId>) -> Result<(), StorageError> {
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        self.writes.send(w).map_err(|e| {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            io_err(subject, ErrorVerb::Write, &e)
        })
    }

    async fn wait(rx: oneshot::Receiver<Result<(), StoreError>>) -> Result<(), StorageError> {
        match rx.await {
            Ok(r) => r.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, &e)),
            Err(e) => Err(io_err(ErrorSubject::Logs, ErrorVerb::Delete, &e)),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        self.shared.read(range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let in_tail = self.shared.tail().last_key_value().map(|(_, e)| e.log_id);
        let last_log_id = match in_tail {
            Some(id) => Some(id),
            None => {
                let last =
                    self.shared.engine.last(Tree::Log).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
                match last {
                    Some((_, v)) => Some(decode::<Entry<TypeConfig>>(&v, ErrorSubject::Logs)?.log_id),
                    None => self.last_purged,
                }
            }
        };
        Ok(LogState { last_purged_log_id: self.last_purged, last_log_id })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader { shared: self.shared.clone() }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.leading.store(leads(Some(vote), self.me), Ordering::Relaxed);
        self.write_meta(VOTE, vote)?;
        self.shared.engine.flush().map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, &e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        meta(self.shared.engine.as_ref(), VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError> {
        if let Some(c) = committed {
            self.committed.fetch_max(c.index, Ordering::Relaxed);
        }
        // Not flushed: a lost committed marker only means re-applying less at start-up, never applying wrongly.
        self.write_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        Ok(meta::<Option<LogId<NodeId>>>(self.shared.engine.as_ref(), COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        {
            let mut tail = self.shared.tail();
            for e in &entries {
                tail.insert(e.log_id.index, e.clone());
            }
        }
        // In place only with nothing queued before it, so the disk still sees every change in Raft's order.
        if !self.leading.load(Ordering::Relaxed) && self.shared.queued.load(Ordering::Acquire) == 0 {
            persist(&self.shared, vec![Write::Append(entries, callback)]);
            return Ok(());
        }
        self.send(Write::Append(entries, callback), ErrorSubject::Logs)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        self.shared.tail().split_off(&log_id.index);
        let (tx, rx) = oneshot::channel();
        self.send(Write::Truncate(log_id.index, tx), ErrorSubject::Logs)?;
        LogStore::wait(rx).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        {
            let mut tail = self.shared.tail();
            while tail.first_key_value().is_some_and(|(i, _)| *i <= log_id.index) {
                tail.pop_first();
            }
        }
        self.last_purged = Some(log_id);
        let (tx, rx) = oneshot::channel();
        self.send(Write::Purge(log_id, tx), ErrorSubject::Logs)?;
        LogStore::wait(rx).await
    }
}
