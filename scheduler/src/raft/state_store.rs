//! The state machine side of Raft: committed entries applied to `CellState`, and snapshots of it kept on the
//! storage seam so a restarted member starts from its last snapshot and re-applies the log after it.

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{io_err, NodeId, StorageError, TypeConfig};
use crate::state_machine::{CellState, Response, SnapshotV1};
use crate::store::{Engine, Op, Tree};

/// The state every reader of the cell sees; the state machine is its only writer.
pub type SharedState = Arc<RwLock<CellState>>;

type Meta = SnapshotMeta<NodeId, BasicNode>;

const META: &[u8] = b"meta";
const DATA: &[u8] = b"data";
/// The snapshot format this build writes.
const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    format: u32,
    body: SnapshotV1,
}

pub struct StateStore {
    engine: Arc<dyn Engine>,
    state: SharedState,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    built: u64,
    watchers: Arc<crate::watch::Watchers>,
    events: Arc<crate::watch::EventLog>,
}

fn read_err(e: &(impl std::error::Error + 'static)) -> StorageError {
    io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e)
}

fn write_err(e: &(impl std::error::Error + 'static)) -> StorageError {
    io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e)
}

fn decode_state(data: &[u8]) -> Result<CellState, StorageError> {
    let file: SnapshotFile = serde_json::from_slice(data).map_err(|e| read_err(&e))?;
    if file.format != SNAPSHOT_FORMAT {
        let e = std::io::Error::other(format!("snapshot format {} is not {SNAPSHOT_FORMAT}", file.format));
        return Err(read_err(&e));
    }
    let mut state = file.body.state;
    state.reindex();
    Ok(state)
}

fn persist(engine: &dyn Engine, meta: &SnapshotMeta<NodeId, BasicNode>, data: Vec<u8>) -> Result<(), StorageError> {
    let m = serde_json::to_vec(meta).map_err(|e| write_err(&e))?;
    engine
        .write(Tree::Snapshot, vec![Op::Put(DATA.to_vec(), data), Op::Put(META.to_vec(), m)])
        .map_err(|e| write_err(&e))?;
    engine.flush().map_err(|e| write_err(&e))
}

fn load(engine: &dyn Engine) -> Result<Option<(Meta, Vec<u8>)>, StorageError> {
    let meta = engine.get(Tree::Snapshot, META).map_err(|e| read_err(&e))?;
    let data = engine.get(Tree::Snapshot, DATA).map_err(|e| read_err(&e))?;
    match (meta, data) {
        (Some(m), Some(d)) => Ok(Some((serde_json::from_slice(&m).map_err(|e| read_err(&e))?, d))),
        _ => Ok(None),
    }
}

impl StateStore {
    /// Opens the state machine at its last snapshot (empty when there is none).
    pub fn open(engine: Arc<dyn Engine>) -> Result<StateStore, StorageError> {
        let mut store = StateStore {
            engine,
            state: SharedState::default(),
            last_applied: None,
            membership: StoredMembership::default(),
            built: 0,
            watchers: Default::default(),
            events: Arc::new(crate::watch::EventLog::new(0)),
        };
        if let Some((meta, data)) = load(store.engine.as_ref())? {
            *store.write() = decode_state(&data)?;
            store.last_applied = meta.last_log_id;
            store.membership = meta.last_membership;
            store.events.reset(meta.last_log_id.map(|l| l.index).unwrap_or(0));
        }
        Ok(store)
    }

    pub fn state(&self) -> SharedState {
        self.state.clone()
    }

    /// The event stream this store feeds as it applies.
    pub fn events(&self) -> Arc<crate::watch::EventLog> {
        self.events.clone()
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
    engine: Arc<dyn Engine>,
    state: CellState,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    id: String,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let file =
            SnapshotFile { format: SNAPSHOT_FORMAT, body: SnapshotV1 { state: std::mem::take(&mut self.state) } };
        let data = serde_json::to_vec(&file).map_err(|e| write_err(&e))?;
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: self.id.clone(),
        };
        persist(self.engine.as_ref(), &meta, data.clone())?;
        tracing::info!(snapshot = %self.id, bytes = data.len(), "snapshot built");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
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
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            out.push(match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(cmd) => {
                    let answer = state.apply(&cmd);
                    events.extend(state.take_events().into_iter().map(|mut e| {
                        e.index = entry.log_id.index;
                        e
                    }));
                    answer
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::None
                }
            });
        }
        let touched = state.take_touched();
        drop(state);
        self.watchers.notify(touched);
        self.events.publish(events);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        self.built += 1;
        let id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.built),
            None => format!("0-0-{}", self.built),
        };
        Builder {
            engine: self.engine.clone(),
            state: self.state.read().unwrap_or_else(|p| p.into_inner()).clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            id,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state = decode_state(&data)?;
        persist(self.engine.as_ref(), meta, data)?;
        let versions: Vec<(String, u64)> = state.agents().map(|a| (a.registration.id.clone(), a.version)).collect();
        *self.write() = state;
        self.watchers.notify(versions);
        self.events.reset(meta.last_log_id.map(|l| l.index).unwrap_or(0));
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(load(self.engine.as_ref())?.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}
