//! The sled adapter: one sled tree per `Tree`, batches applied atomically, flush for durability.

use std::ops::Bound;
use std::path::Path;

use super::{Engine, Op, Pair, StoreError, Tree};

/// sled's page cache.
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// sled's segment size; persisted by sled, so changing it needs a new data directory.
pub const SEGMENT_BYTES: usize = 8 * 1024 * 1024;

pub struct SledEngine {
    db: sled::Db,
    trees: Vec<(Tree, sled::Tree)>,
}

fn err(e: sled::Error) -> StoreError {
    StoreError(e.to_string())
}

impl SledEngine {
    pub fn open(dir: &Path) -> Result<SledEngine, StoreError> {
        // sled's own periodic flush stays on as a backstop; durability comes from our explicit flushes. Its page
        // cache is bounded: the log is read back rarely (catch-up), and the state machine lives in memory anyway.
        // Segments are large so that a log entry (a batch of up to `MAX_BATCH` commands, hundreds of KiB) is
        // written inline: sled stores values over a quarter segment as separate blob files, one file per entry.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .segment_size(SEGMENT_BYTES)
            .open()
            .map_err(err)?;
        let trees = Tree::ALL
            .iter()
            .map(|t| db.open_tree(t.name()).map(|tree| (*t, tree)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        Ok(SledEngine { db, trees })
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.trees.iter().find(|(t, _)| *t == tree).expect("every Tree is opened in open()").1
    }
}

impl Engine for SledEngine {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(tree).get(key).map_err(err)?.map(|v| v.to_vec()))
    }

    fn write(&self, tree: Tree, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put(k, v) => batch.insert(k, v),
                Op::Delete(k) => batch.remove(k),
            }
        }
        self.tree(tree).apply_batch(batch).map_err(err)
    }

    fn range(
        &self,
        tree: Tree,
        from: Bound<Vec<u8>>,
        to: Bound<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<Pair>, StoreError> {
        self.tree(tree)
            .range::<Vec<u8>, _>((from, to))
            .take(limit)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(err))
            .collect()
    }

    fn last(&self, tree: Tree) -> Result<Option<Pair>, StoreError> {
        Ok(self.tree(tree).last().map_err(err)?.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn delete_range(&self, tree: Tree, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<(), StoreError> {
        let t = self.tree(tree);
        let mut batch = sled::Batch::default();
        for r in t.range::<Vec<u8>, _>((from, to)) {
            let (k, _) = r.map_err(err)?;
            batch.remove(k);
        }
        t.apply_batch(batch).map_err(err)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(err)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_engine_suite_and_keeps_data_across_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let engine = SledEngine::open(dir.path()).expect("open");
            super::super::conformance::check(&engine);
        }
        let engine = SledEngine::open(dir.path()).expect("reopen");
        assert_eq!(engine.get(Tree::Log, &4u64.to_be_bytes()).expect("get"), Some(b"again".to_vec()));
        assert_eq!(engine.get(Tree::Meta, b"vote").expect("get"), Some(b"x".to_vec()));
    }
}
