//! The Raft log and vote on the storage seam.
//!
//! Every change is written and made durable in place, in Raft's own task, before the call returns: openraft 0.9
//! waits for each append to be flushed before it does anything else (replication included), so handing the write
//! to another thread would only add two thread wake-ups to every commit. Each append is one engine write and one
//! flush, and a batch of up to `member::MAX_BATCH` commands travels as one entry, so heavy load still shares a flush
//! among many writes. The newest entries are also kept in memory (the tail), where replication reads them.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::network::EarlyReplication;
use super::{codec, io_err, NodeId, StorageError, TypeConfig};
use crate::store::{Engine, Op, StoreError, Tree};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"last_purged";

/// Durable entries kept in memory behind the newest one, so followers a little behind are served without disk reads.
/// Entries are batches of up to `MAX_BATCH` commands, so this stays small.
const TAIL_KEEP: u64 = 64;

/// The committed marker is written once this many entries have committed since it was last written. It only saves
/// re-applying at start-up what a leader would commit again anyway, so writing it on every commit (a write per
/// member per commit) bought nothing.
const COMMITTED_EVERY: u64 = 64;

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
    /// How long each flush takes.
    flush_seconds: prometheus::Histogram,
    tail: Mutex<Tail>,
    /// The encoded form of the newest entries, as the log store made it for the disk: replication sends these bytes
    /// instead of encoding every entry again for every follower.
    encoded: Mutex<BTreeMap<u64, (LogId<NodeId>, Bytes)>>,
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

    /// Keeps the encodings a follower received with the entries, so its log store writes them as they came.
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

    /// Writes `entries` to the engine, reusing the encodings already made (a follower's from its leader).
    /// The writes that store `entries`, their encodings kept for replication: a follower already has the bytes the
    /// leader sent; a leader encodes once, here.
    fn encode_entries(&self, entries: &[Entry<TypeConfig>]) -> Result<Vec<Op>, StoreError> {
        let mut ops = Vec::with_capacity(entries.len());
        let mut made = Vec::with_capacity(entries.len());
        for e in entries {
            let bytes = match self.cached(e) {
                Some(b) => b.to_vec(),
                None => {
                    let bytes = codec::encode(e).map_err(|err| StoreError(err.to_string()))?;
                    made.push((e.log_id.index, (e.log_id, Bytes::copy_from_slice(&bytes))));
                    bytes
                }
            };
            ops.push(Op::Put(key(e.log_id.index), bytes));
        }
        self.encoded.lock().unwrap_or_else(|p| p.into_inner()).extend(made);
        Ok(ops)
    }

    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), StoreError> {
        let start = std::time::Instant::now();
        let result = self.engine.flush();
        self.flush_seconds.observe(start.elapsed().as_secs_f64());
        result
    }

    /// Drops from memory what is durable and more than `TAIL_KEEP` entries behind `durable`.
    fn trim(&self, durable: u64) {
        let keep_from = durable.saturating_sub(TAIL_KEEP);
        let mut tail = self.tail();
        while tail.first_key_value().is_some_and(|(i, _)| *i < keep_from) {
            tail.pop_first();
        }
        drop(tail);
        let mut encoded = self.encoded.lock().unwrap_or_else(|p| p.into_inner());
        *encoded = encoded.split_off(&keep_from);
    }
}

fn log_err(verb: ErrorVerb, e: StoreError) -> StorageError {
    io_err(ErrorSubject::Logs, verb, &e)
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
    last_purged: Option<LogId<NodeId>>,
    committed: Arc<AtomicU64>,
    /// The index the committed marker on disk holds.
    committed_written: u64,
    /// A committed id newer than the marker on disk, not yet written.
    committed_unwritten: Option<LogId<NodeId>>,
    /// The vote last saved.
    vote: Option<Vote<NodeId>>,
    /// Sends a leader's entries to its followers before its own sync.
    early: Option<EarlyReplication>,
}

impl LogStore {
    /// Opens the log on `engine`; `flush_seconds` observes every flush.
    pub fn open(engine: Arc<dyn Engine>, flush_seconds: prometheus::Histogram) -> Result<LogStore, StorageError> {
        let last_purged = meta(engine.as_ref(), PURGED)?;
        let shared = Arc::new(Shared {
            engine,
            flush_seconds,
            tail: Mutex::new(BTreeMap::new()),
            encoded: Mutex::new(BTreeMap::new()),
        });
        let committed_written =
            meta::<Option<LogId<NodeId>>>(shared.engine.as_ref(), COMMITTED)?.flatten().map_or(0, |c| c.index);
        let vote = meta(shared.engine.as_ref(), VOTE)?;
        Ok(LogStore {
            shared,
            last_purged,
            committed: Arc::new(AtomicU64::new(0)),
            committed_written,
            committed_unwritten: None,
            vote,
            early: None,
        })
    }

    /// Has a leader send its new entries to its followers before it syncs them (see `EarlyReplication`).
    pub fn replicate_early(&mut self, early: EarlyReplication) {
        self.early = Some(early);
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
        self.write_meta(VOTE, vote)?;
        self.shared.engine.flush().map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, &e))?;
        self.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        meta(self.shared.engine.as_ref(), VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError> {
        let Some(c) = committed else { return Ok(()) };
        self.committed.fetch_max(c.index, Ordering::Relaxed);
        if c.index < self.committed_written.saturating_add(COMMITTED_EVERY) {
            self.committed_unwritten = Some(c);
            return Ok(());
        }
        // Not flushed: a lost or older committed marker only means re-applying less at start-up, never applying
        // wrongly.
        self.write_meta(COMMITTED, &committed)?;
        self.committed_written = c.index;
        self.committed_unwritten = None;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        if let Some(c) = self.committed_unwritten {
            return Ok(Some(c));
        }
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
        let ops = self.shared.encode_entries(&entries);
        // Early appends go out first: a follower's sync then starts before the leader's own write, not after it.
        if let (Ok(_), Some(early), Some(vote), Some(first)) = (&ops, &self.early, &self.vote, entries.first()) {
            let prev = match first.log_id.index.checked_sub(1) {
                None => None,
                Some(i) => self.shared.read(i..=i).ok().and_then(|e| e.first().map(|e| e.log_id)),
            };
            if prev.is_some() || first.log_id.index == 0 {
                early.send(vote, prev, &entries).await;
            }
        }
        let written = ops.and_then(|ops| self.shared.engine.write(Tree::Log, ops));
        let written = written.and_then(|()| self.shared.flush());
        if written.is_ok() {
            if let Some(last) = entries.last() {
                self.shared.trim(last.log_id.index);
            }
        }
        callback.log_io_completed(written.map_err(|e| std::io::Error::other(e.0)));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        self.shared.tail().split_off(&log_id.index);
        let engine = self.shared.engine.as_ref();
        engine
            .delete_range(Tree::Log, Bound::Included(key(log_id.index)), Bound::Unbounded)
            .map_err(|e| log_err(ErrorVerb::Delete, e))?;
        self.shared.flush().map_err(|e| log_err(ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        {
            let mut tail = self.shared.tail();
            while tail.first_key_value().is_some_and(|(i, _)| *i <= log_id.index) {
                tail.pop_first();
            }
        }
        self.last_purged = Some(log_id);
        // The marker first: a crash between the two leaves extra entries, which is harmless.
        self.write_meta(PURGED, &log_id)?;
        let engine = self.shared.engine.as_ref();
        engine
            .delete_range(Tree::Log, Bound::Unbounded, Bound::Included(key(log_id.index)))
            .map_err(|e| log_err(ErrorVerb::Delete, e))?;
        self.shared.flush().map_err(|e| log_err(ErrorVerb::Delete, e))
    }
}
