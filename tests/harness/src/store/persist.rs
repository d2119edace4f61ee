//! Durability for the object store: an append-only JSON-lines log in the
//! data directory, replayed and compacted into a fresh log at start-up.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ObjectKey;
use crate::error::{Error, Result};

#[derive(Serialize, Deserialize)]
struct Record {
    rv: u64,
    res: String,
    ns: String,
    name: String,
    /// `None` records a deletion.
    obj: Option<Value>,
}

/// The open log file plus enough bookkeeping to decide when to compact.
pub struct Log {
    path: PathBuf,
    file: File,
    records: usize,
}

impl Log {
    /// Replays `dir/objects.jsonl`, then rewrites it compacted. Returns the
    /// objects, the highest resourceVersion seen and the open log.
    pub fn open(dir: &Path) -> Result<(BTreeMap<ObjectKey, Value>, u64, Log)> {
        std::fs::create_dir_all(dir).map_err(Error::internal)?;
        let path = dir.join("objects.jsonl");
        let mut objects = BTreeMap::new();
        let mut rv = 0;
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let line = line.map_err(Error::internal)?;
                // A torn last line (crash mid-write) is skipped, not fatal.
                let Ok(rec) = serde_json::from_str::<Record>(&line) else {
                    continue;
                };
                rv = rv.max(rec.rv);
                let key = ObjectKey {
                    res: rec.res,
                    ns: rec.ns,
                    name: rec.name,
                };
                match rec.obj {
                    Some(o) => objects.insert(key, o),
                    None => objects.remove(&key),
                };
            }
        }
        let file = Self::rewrite(&path, &objects, rv)?;
        let records = objects.len();
        Ok((
            objects,
            rv,
            Log {
                path,
                file,
                records,
            },
        ))
    }

    fn rewrite(path: &Path, objects: &BTreeMap<ObjectKey, Value>, rv: u64) -> Result<File> {
        let tmp = path.with_extension("jsonl.tmp");
        {
            let mut f = File::create(&tmp).map_err(Error::internal)?;
            // A marker record keeps the resourceVersion counter across restarts
            // even when every object has been deleted.
            let marker = Record {
                rv,
                res: String::new(),
                ns: String::new(),
                name: String::new(),
                obj: None,
            };
            let mut buf = serde_json::to_vec(&marker).map_err(Error::internal)?;
            buf.push(b'\n');
            for (k, v) in objects {
                let obj_rv = v["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(rv);
                let rec = Record {
                    rv: obj_rv,
                    res: k.res.clone(),
                    ns: k.ns.clone(),
                    name: k.name.clone(),
                    obj: Some(v.clone()),
                };
                serde_json::to_writer(&mut buf, &rec).map_err(Error::internal)?;
                buf.push(b'\n');
            }
            f.write_all(&buf).map_err(Error::internal)?;
            f.sync_all().map_err(Error::internal)?;
        }
        std::fs::rename(&tmp, path).map_err(Error::internal)?;
        OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(Error::internal)
    }

    /// Appends one mutation; compacts when the log has grown well past the live set.
    pub fn append(
        &mut self,
        rv: u64,
        key: &ObjectKey,
        obj: Option<&Value>,
        live: &BTreeMap<ObjectKey, Value>,
    ) -> Result<()> {
        self.records += 1;
        if self.records > 4 * live.len() + 10_000 {
            self.file = Self::rewrite(&self.path, live, rv)?;
            self.records = live.len();
            return Ok(());
        }
        let rec = Record {
            rv,
            res: key.res.clone(),
            ns: key.ns.clone(),
            name: key.name.clone(),
            obj: obj.cloned(),
        };
        let mut line = serde_json::to_vec(&rec).map_err(Error::internal)?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(Error::internal)
    }
}
