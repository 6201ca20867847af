//! The Raft log and vote on the storage seam, with group commit: appends are written at once and made durable
//! by a flusher thread that covers every append waiting on it with one flush.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{io_err, NodeId, StorageError, TypeConfig};
use crate::store::{Engine, Op, Tree};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"last_purged";

fn key(index: u64) -> Vec<u8> {
    index.to_be_bytes().to_vec()
}

fn encode<T: Serialize>(v: &T, subject: ErrorSubject<NodeId>) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(v).map_err(|e| io_err(subject, ErrorVerb::Write, &e))
}

fn decode<T: DeserializeOwned>(b: &[u8], subject: ErrorSubject<NodeId>) -> Result<T, StorageError> {
    serde_json::from_slice(b).map_err(|e| io_err(subject, ErrorVerb::Read, &e))
}

fn meta<T: DeserializeOwned>(engine: &dyn Engine, k: &[u8]) -> Result<Option<T>, StorageError> {
    match engine
        .get(Tree::Meta, k)
        .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, &e))?
    {
        Some(b) => decode(&b, ErrorSubject::Store).map(Some),
        None => Ok(None),
    }
}

/// Reads log entries; cheap to clone, one per replication stream.
#[derive(Clone)]
pub struct LogReader {
    engine: Arc<dyn Engine>,
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        read_entries(self.engine.as_ref(), range)
    }
}

fn read_entries(
    engine: &dyn Engine,
    range: impl RangeBounds<u64>,
) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
    let from = range.start_bound().map(|i| key(*i));
    let to = range.end_bound().map(|i| key(*i));
    let pairs = engine
        .range(Tree::Log, from, to, usize::MAX)
        .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
    pairs
        .iter()
        .map(|(_, v)| decode(v, ErrorSubject::Logs))
        .collect()
}

/// The log store: entries in `Tree::Log`, vote, committed and purge marker in `Tree::Meta`.
pub struct LogStore {
    engine: Arc<dyn Engine>,
    flusher: mpsc::Sender<LogFlushed<TypeConfig>>,
    committed: Arc<AtomicU64>,
}

impl LogStore {
    pub fn open(engine: Arc<dyn Engine>) -> Result<LogStore, StorageError> {
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let e = engine.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || {
                // Each loop flushes once for everything appended before it started: group commit.
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let result = e
                        .flush()
                        .map_err(|err| std::io::Error::other(err.to_string()));
                    for cb in waiting {
                        cb.log_io_completed(match &result {
                            Ok(()) => Ok(()),
                            Err(err) => Err(std::io::Error::other(err.to_string())),
                        });
                    }
                }
            })
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        Ok(LogStore {
            engine,
            flusher: tx,
            committed: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The highest log index this member knows to be committed, for status and metrics.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn write_meta<T: Serialize>(&self, k: &[u8], v: &T) -> Result<(), StorageError> {
        let b = encode(v, ErrorSubject::Store)?;
        self.engine
            .write(Tree::Meta, vec![Op::Put(k.to_vec(), b)])
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        read_entries(self.engine.as_ref(), range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId<NodeId>> = meta(self.engine.as_ref(), PURGED)?;
        let last = self
            .engine
            .last(Tree::Log)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        let last_log_id = match last {
            Some((_, v)) => Some(decode::<Entry<TypeConfig>>(&v, ErrorSubject::Logs)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            engine: self.engine.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta(VOTE, vote)?;
        self.engine
            .flush()
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, &e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        meta(self.engine.as_ref(), VOTE)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError> {
        // Not flushed: a lost committed marker only means re-applying less at start-up, never applying wrongly.
        if let Some(c) = committed {
            self.committed.fetch_max(c.index, Ordering::Relaxed);
        }
        self.write_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        Ok(meta::<Option<LogId<NodeId>>>(self.engine.as_ref(), COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let ops = entries
            .into_iter()
            .map(|e| {
                Ok(Op::Put(
                    key(e.log_id.index),
                    encode(&e, ErrorSubject::Logs)?,
                ))
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        self.engine
            .write(Tree::Log, ops)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        self.flusher
            .send(callback)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, &e))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        self.engine
            .delete_range(
                Tree::Log,
                Bound::Included(key(log_id.index)),
                Bound::Unbounded,
            )
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        // The marker first: a crash between the two leaves extra entries, which is harmless.
        self.write_meta(PURGED, &log_id)?;
        self.engine
            .delete_range(
                Tree::Log,
                Bound::Unbounded,
                Bound::Included(key(log_id.index)),
            )
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }
}
