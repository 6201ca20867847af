//! The storage seam: the few key-value operations the Raft log, vote and snapshot meta need, behind one trait.
//!
//! `FileEngine` (an append-only write-ahead file behind in-memory maps) and `SledEngine` are the production
//! adapters, chosen by `raft.storage`; `MemoryEngine` serves tests. All three pass the same suite (`conformance`,
//! below) and, through the Raft storage built on them, openraft's storage test suite. Nothing above this module
//! names sled or the file format.

mod file_engine;
mod memory;
mod sled_engine;

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

pub use file_engine::FileEngine;
pub use memory::MemoryEngine;
pub use sled_engine::SledEngine;

/// Which engine holds a member's Raft store. Each keeps its own files in the directory, so switching is a choice
/// made explicitly: `open` refuses a directory that holds the other engine's store instead of starting empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// `FileEngine`: one fdatasync per flush, several times cheaper than sled's.
    #[default]
    File,
    /// `SledEngine`.
    Sled,
}

impl StorageKind {
    pub fn name(self) -> &'static str {
        match self {
            StorageKind::File => "file",
            StorageKind::Sled => "sled",
        }
    }

    /// Whether `dir` holds this engine's store: the file engine's log, or sled's `conf` and `db`.
    fn present_in(self, dir: &Path) -> bool {
        match self {
            StorageKind::File => dir.join(file_engine::FILE_NAME).exists(),
            StorageKind::Sled => dir.join("conf").exists() || dir.join("db").exists(),
        }
    }
}

/// Opens the chosen engine in `dir`, refusing one that holds only the other engine's store.
pub fn open(kind: StorageKind, dir: &Path) -> Result<Arc<dyn Engine>, StoreError> {
    let other = match kind {
        StorageKind::File => StorageKind::Sled,
        StorageKind::Sled => StorageKind::File,
    };
    if other.present_in(dir) && !kind.present_in(dir) {
        return Err(StoreError(format!(
            "{} holds a {} store but raft.storage is {:?}; set raft.storage = {:?} to keep using it (opening the \
             {} engine here would start this member with an empty log)",
            dir.display(),
            other.name(),
            kind.name(),
            other.name(),
            kind.name()
        )));
    }
    Ok(match kind {
        StorageKind::File => Arc::new(FileEngine::open(dir)?),
        StorageKind::Sled => Arc::new(SledEngine::open(dir)?),
    })
}

/// The trees (key spaces) the cell stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tree {
    /// Raft log entries by big-endian index.
    Log,
    /// Small records: vote, committed, last purged log id.
    Meta,
    /// Which state machine snapshot is current (its meta); the snapshot itself is a file (`raft::state_store`).
    Snapshot,
}

impl Tree {
    pub const ALL: [Tree; 3] = [Tree::Log, Tree::Meta, Tree::Snapshot];

    pub fn name(self) -> &'static str {
        match self {
            Tree::Log => "raft-log",
            Tree::Meta => "raft-meta",
            Tree::Snapshot => "raft-snapshot",
        }
    }
}

/// A storage failure: the engine's own words, since nothing above the seam can do better than report it.
#[derive(Clone, Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StoreError(pub String);

/// One write in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

pub type Pair = (Vec<u8>, Vec<u8>);

/// An ordered key-value store with named trees. Writes become durable at `flush`, which callers batch (group
/// commit): one flush makes every earlier write durable.
pub trait Engine: Send + Sync + 'static {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Applies the ops atomically, in order.
    fn write(&self, tree: Tree, ops: Vec<Op>) -> Result<(), StoreError>;

    /// Pairs with keys in the range, in key order, at most `limit`.
    fn range(
        &self,
        tree: Tree,
        from: Bound<Vec<u8>>,
        to: Bound<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<Pair>, StoreError>;

    fn last(&self, tree: Tree) -> Result<Option<Pair>, StoreError>;

    /// Removes every key in the range.
    fn delete_range(&self, tree: Tree, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<(), StoreError>;

    /// Makes every earlier write durable.
    fn flush(&self) -> Result<(), StoreError>;

    /// Bytes of data the engine holds on disk, not counting space kept ahead of it (0 when in memory).
    fn size_on_disk(&self) -> u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_refuses_the_other_engines_store() {
        for (made, asked) in [(StorageKind::Sled, StorageKind::File), (StorageKind::File, StorageKind::Sled)] {
            let dir = tempfile::tempdir().expect("temp dir");
            {
                let engine = open(made, dir.path()).expect("open");
                engine.write(Tree::Meta, vec![Op::Put(b"vote".to_vec(), b"x".to_vec())]).expect("write");
                engine.flush().expect("flush");
            }
            let err = open(asked, dir.path()).err().expect("the other engine must not open here");
            assert!(err.0.contains(&format!("holds a {} store", made.name())), "{err}");
            let again = open(made, dir.path()).expect("the same engine opens");
            assert_eq!(again.get(Tree::Meta, b"vote").expect("get"), Some(b"x".to_vec()));
        }
    }
}

/// The suite every engine passes.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    fn k(i: u64) -> Vec<u8> {
        i.to_be_bytes().to_vec()
    }

    pub(crate) fn check(engine: &dyn Engine) {
        assert_eq!(engine.get(Tree::Log, &k(1)).expect("get"), None);
        assert_eq!(engine.last(Tree::Log).expect("last"), None);
        let ops = (1..=10).map(|i| Op::Put(k(i), format!("v{i}").into_bytes())).collect();
        engine.write(Tree::Log, ops).expect("write");
        engine.write(Tree::Meta, vec![Op::Put(b"vote".to_vec(), b"x".to_vec())]).expect("write");
        engine.flush().expect("flush");

        assert_eq!(engine.get(Tree::Log, &k(3)).expect("get"), Some(b"v3".to_vec()));
        assert_eq!(engine.get(Tree::Meta, &k(3)).expect("get"), None, "trees are separate");
        assert_eq!(engine.last(Tree::Log).expect("last"), Some((k(10), b"v10".to_vec())));
        let got = engine.range(Tree::Log, Bound::Included(k(4)), Bound::Excluded(k(8)), usize::MAX).expect("range");
        assert_eq!(got.iter().map(|(key, _)| key.clone()).collect::<Vec<_>>(), vec![k(4), k(5), k(6), k(7)]);
        let limited = engine.range(Tree::Log, Bound::Unbounded, Bound::Unbounded, 2).expect("range");
        assert_eq!(limited.len(), 2);
        assert_eq!(limited[0].0, k(1));

        engine.delete_range(Tree::Log, Bound::Unbounded, Bound::Included(k(3))).expect("delete");
        engine.delete_range(Tree::Log, Bound::Included(k(9)), Bound::Unbounded).expect("delete");
        let left = engine.range(Tree::Log, Bound::Unbounded, Bound::Unbounded, usize::MAX).expect("range");
        assert_eq!(left.iter().map(|(key, _)| key.clone()).collect::<Vec<_>>(), (4..=8).map(k).collect::<Vec<_>>());

        engine
            .write(Tree::Log, vec![Op::Delete(k(4)), Op::Put(k(4), b"again".to_vec()), Op::Delete(k(5))])
            .expect("write");
        assert_eq!(engine.get(Tree::Log, &k(4)).expect("get"), Some(b"again".to_vec()), "ops apply in order");
        assert_eq!(engine.get(Tree::Log, &k(5)).expect("get"), None);
        engine.flush().expect("flush");
    }
}
