//! An in-memory engine for tests: the same semantics as sled, nothing on disk.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use super::{Engine, Op, Pair, StoreError, Tree};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
pub struct MemoryEngine {
    trees: Mutex<BTreeMap<Tree, Map>>,
}

impl MemoryEngine {
    pub fn new() -> MemoryEngine {
        MemoryEngine::default()
    }

    fn with<T>(&self, tree: Tree, f: impl FnOnce(&mut Map) -> T) -> T {
        // A panic while holding the lock cannot leave a tree half-written: every op below is a single map call.
        let mut trees = self.trees.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(trees.entry(tree).or_default())
    }
}

impl Engine for MemoryEngine {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(tree, |t| t.get(key).cloned()))
    }

    fn write(&self, tree: Tree, ops: Vec<Op>) -> Result<(), StoreError> {
        self.with(tree, |t| {
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        t.insert(k, v);
                    }
                    Op::Delete(k) => {
                        t.remove(&k);
                    }
                }
            }
        });
        Ok(())
    }

    fn range(
        &self,
        tree: Tree,
        from: Bound<Vec<u8>>,
        to: Bound<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<Pair>, StoreError> {
        Ok(self.with(tree, |t| t.range((from, to)).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect()))
    }

    fn last(&self, tree: Tree) -> Result<Option<Pair>, StoreError> {
        Ok(self.with(tree, |t| t.iter().next_back().map(|(k, v)| (k.clone(), v.clone()))))
    }

    fn delete_range(&self, tree: Tree, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<(), StoreError> {
        self.with(tree, |t| {
            let keys: Vec<Vec<u8>> = t.range((from, to)).map(|(k, _)| k.clone()).collect();
            for k in keys {
                t.remove(&k);
            }
        });
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passes_the_engine_suite() {
        super::super::conformance::check(&super::MemoryEngine::new());
    }
}
