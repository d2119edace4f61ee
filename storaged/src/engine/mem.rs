//! In-memory engine: a BTreeMap per column family, for unit tests and simulation.
//! Writes are atomic under one lock; durability calls are no-ops.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use super::{Batch, Cf, Engine, Kv, Op};
use crate::Result;

type Table = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
pub struct MemEngine {
    cfs: RwLock<BTreeMap<Cf, Table>>,
}

impl MemEngine {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Engine for MemEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let g = self.cfs.read().expect("mem engine poisoned");
        Ok(g.get(&cf).and_then(|m| m.get(key).cloned()))
    }

    fn write(&self, batch: Batch, _sync: bool) -> Result<()> {
        let mut g = self.cfs.write().expect("mem engine poisoned");
        for op in batch.ops {
            match op {
                Op::Put(cf, k, v) => {
                    g.entry(cf).or_default().insert(k, v);
                }
                Op::Delete(cf, k) => {
                    g.entry(cf).or_default().remove(&k);
                }
                Op::DeleteRange(cf, s, e) => {
                    let m = g.entry(cf).or_default();
                    let doomed: Vec<Vec<u8>> = m.range(s..e).map(|(k, _)| k.clone()).collect();
                    for k in doomed {
                        m.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Kv>> {
        let g = self.cfs.read().expect("mem engine poisoned");
        let Some(m) = g.get(&cf) else {
            return Ok(Vec::new());
        };
        Ok(
            m.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    fn last_in_range(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<Kv>> {
        let g = self.cfs.read().expect("mem engine poisoned");
        let Some(m) = g.get(&cf) else { return Ok(None) };
        Ok(
            m.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
                .next_back()
                .map(|(k, v)| (k.clone(), v.clone())),
        )
    }

    fn sync_wal(&self) -> Result<()> {
        Ok(())
    }

    fn approximate_size(&self, cf: Cf, start: &[u8], end: &[u8]) -> u64 {
        let g = self.cfs.read().expect("mem engine poisoned");
        g.get(&cf)
            .map(|m| {
                m.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
                    .map(|(k, v)| (k.len() + v.len()) as u64)
                    .sum()
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mem_engine_passes_the_engine_suite() {
        super::super::suite::run(&super::MemEngine::new());
    }
}
