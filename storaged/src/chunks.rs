//! Block semantics of a replicated volume, below Raft: 4 KiB chunks in the `data` column
//! family (inline, or pointers into the value log; absent when unwritten or all zero), and
//! the one check of an I/O against a volume.

use std::collections::BTreeMap;

use crate::engine::vlog::{self, ValuePtr};
use crate::engine::{Batch, Cf, Engine, keys};
use crate::{Error, Result};

pub const CHUNK: u64 = 4096;
pub const SECTOR: u64 = 512;
pub const MAX_IO: u64 = 1 << 20;

/// What an I/O does, for its checks: reads and writes are capped at `MAX_IO` (the field
/// named in the error differs), discards are not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
    Discard,
}

impl IoKind {
    fn capped_field(self) -> Option<&'static str> {
        match self {
            IoKind::Read => Some("length"),
            IoKind::Write => Some("data"),
            IoKind::Discard => None,
        }
    }
}

/// Validates an I/O against the sector size, the request cap and the volume size: the
/// one bounds check of the block path (frontends turn its `OutOfRange` into their errno).
pub fn check_io(offset: u64, len: u64, size: u64, kind: IoKind) -> Result<()> {
    if !offset.is_multiple_of(SECTOR) {
        return Err(Error::invalid(
            "offset",
            format!("{offset} is not a multiple of {SECTOR}"),
        ));
    }
    if !len.is_multiple_of(SECTOR) {
        return Err(Error::invalid(
            "length",
            format!("{len} is not a multiple of {SECTOR}"),
        ));
    }
    if len == 0 {
        return Err(Error::invalid("length", "must be greater than 0"));
    }
    if let Some(field) = kind.capped_field()
        && len > MAX_IO
    {
        return Err(Error::invalid(
            field,
            format!("{len} bytes exceeds the {MAX_IO}-byte request limit"),
        ));
    }
    check_bounds(offset, len, size)
}

/// Whether `[offset, offset+len)` lies within a volume of `size` bytes: the one bounds rule,
/// also applied by the frontends before they answer with their own errno.
pub fn check_bounds(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange(format!(
            "range {offset}+{len} is beyond the volume end ({size} bytes)"
        ))),
    }
}

/// A chunk's new bytes, and where the value log holds them if it does (pointer, CRC).
struct Chunk {
    /// A whole chunk is a slice of the entry's payload (not copied); an edited one its own.
    bytes: bytes::Bytes,
    at: Option<(ValuePtr, u32)>,
}

/// Chunks touched while applying one batch of entries; `None` means zeroed.
#[derive(Default)]
pub struct Overlay {
    chunks: BTreeMap<u64, Option<Chunk>>,
    /// Whole-chunk ranges `[start, end)` zeroed by discards, deleted with one range delete.
    cleared: Vec<(u64, u64)>,
}

impl Overlay {
    fn load(&mut self, engine: &dyn Engine, group: u64, idx: u64) -> Result<Vec<u8>> {
        if let Some(c) = self.chunks.get(&idx) {
            return Ok(c
                .as_ref()
                .map_or_else(|| vec![0; CHUNK as usize], |c| c.bytes.to_vec()));
        }
        if self.cleared.iter().any(|(s, e)| (*s..*e).contains(&idx)) {
            return Ok(vec![0; CHUNK as usize]);
        }
        Ok(engine
            .get(Cf::Data, &keys::group_key(group, idx))?
            .unwrap_or_else(|| vec![0; CHUNK as usize]))
    }

    /// Applies `data` at `offset` (read-modify-write for partial chunks). `at`: where
    /// the value log holds `data` (durable); whole chunks then point there, written once.
    pub fn write(
        &mut self,
        engine: &dyn Engine,
        group: u64,
        offset: u64,
        data: &bytes::Bytes,
        at: Option<ValuePtr>,
    ) -> Result<()> {
        let mut pos = 0usize;
        while pos < data.len() {
            let abs = offset + pos as u64;
            let idx = abs / CHUNK;
            let within = (abs % CHUNK) as usize;
            let n = (CHUNK as usize - within).min(data.len() - pos);
            let piece = &data[pos..pos + n];
            let chunk = if within == 0 && n == CHUNK as usize {
                let at = at.map(|p| (p.slice(pos as u32, n as u32), crc32fast::hash(piece)));
                Chunk {
                    bytes: data.slice(pos..pos + n),
                    at,
                }
            } else {
                let mut c = self.load(engine, group, idx)?;
                c[within..within + n].copy_from_slice(piece);
                Chunk {
                    bytes: c.into(),
                    at: None,
                }
            };
            let zero = chunk.bytes.iter().all(|b| *b == 0);
            self.chunks
                .insert(idx, if zero { None } else { Some(chunk) });
            pos += n;
        }
        Ok(())
    }

    /// Zeroes `[offset, offset+len)`; whole chunks are deleted, edges rewritten.
    pub fn discard(
        &mut self,
        engine: &dyn Engine,
        group: u64,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        let end = offset + len;
        let first_whole = offset.div_ceil(CHUNK);
        let end_whole = end / CHUNK;
        if end_whole > first_whole {
            self.chunks
                .retain(|i, _| !(first_whole..end_whole).contains(i));
            self.cleared.push((first_whole, end_whole));
        }
        let mut abs = offset;
        while abs < end {
            let idx = abs / CHUNK;
            let within = abs % CHUNK;
            let n = (CHUNK - within).min(end - abs);
            if within == 0 && n == CHUNK {
                // Covered by the range delete above.
            } else {
                let mut c = self.load(engine, group, idx)?;
                c[within as usize..(within + n) as usize].fill(0);
                let zero = c.iter().all(|b| *b == 0);
                let chunk = Chunk {
                    bytes: c.into(),
                    at: None,
                };
                self.chunks
                    .insert(idx, if zero { None } else { Some(chunk) });
            }
            abs += n;
        }
        Ok(())
    }

    pub fn into_batch(self, group: u64, batch: &mut Batch) {
        // Range deletes first: later writes in `chunks` were recorded after them.
        for (s, e) in self.cleared {
            batch.delete_range(
                Cf::Data,
                keys::group_key(group, s).to_vec(),
                keys::group_key(group, e).to_vec(),
            );
        }
        for (idx, c) in self.chunks {
            let k = keys::group_key(group, idx).to_vec();
            match c {
                Some(Chunk {
                    at: Some((ptr, crc)),
                    ..
                }) => batch.put(Cf::Data, k, vlog::chunk_value(ptr, crc)),
                Some(Chunk { bytes, at: None }) => batch.put(Cf::Data, k, Vec::from(bytes)),
                None => batch.delete(Cf::Data, k),
            }
        }
    }
}

/// Reads `[offset, offset+len)`; absent chunks read as zeros.
pub fn read(engine: &dyn Engine, group: u64, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut out = vec![0u8; len as usize];
    if len == 0 {
        return Ok(out);
    }
    let first = offset / CHUNK;
    let last = (offset + len - 1) / CHUNK;
    let kvs = engine.scan(
        Cf::Data,
        &keys::group_key(group, first),
        &keys::group_key(group, last + 1),
        (last - first + 1) as usize,
    )?;
    for (k, v) in kvs {
        let idx = keys::suffix_of(&k);
        let chunk_start = idx * CHUNK;
        let from = offset.max(chunk_start);
        let to = (offset + len).min(chunk_start + v.len() as u64);
        if from >= to {
            continue;
        }
        let src = &v[(from - chunk_start) as usize..(to - chunk_start) as usize];
        out[(from - offset) as usize..(to - offset) as usize].copy_from_slice(src);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MemEngine;
    use proptest::prelude::*;

    fn apply(e: &MemEngine, f: impl FnOnce(&mut Overlay)) {
        let mut o = Overlay::default();
        f(&mut o);
        let mut b = Batch::default();
        o.into_batch(7, &mut b);
        e.write(b, false).unwrap();
    }

    #[test]
    fn holes_read_as_zero_and_zero_chunks_are_not_stored() {
        let e = MemEngine::new();
        assert_eq!(read(&e, 7, 0, 8192).unwrap(), vec![0; 8192]);
        apply(&e, |o| {
            o.write(&e, 7, 4096, &vec![0u8; 4096].into(), None).unwrap()
        });
        assert_eq!(
            e.approximate_size(Cf::Data, &keys::group_start(7), &keys::group_end(7)),
            0
        );
    }

    #[test]
    fn io_checks_name_the_field() {
        assert!(matches!(
            check_io(1, 512, 1 << 20, IoKind::Write),
            Err(Error::InvalidArgument {
                field: "offset",
                ..
            })
        ));
        assert!(matches!(
            check_io(0, 100, 1 << 20, IoKind::Write),
            Err(Error::InvalidArgument {
                field: "length",
                ..
            })
        ));
        assert!(matches!(
            check_io(1 << 20, 512, 1 << 20, IoKind::Discard),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(
            check_io(0, 2 << 20, 4 << 20, IoKind::Write),
            Err(Error::InvalidArgument { field: "data", .. })
        ));
        assert!(check_io(512, 512, 1 << 20, IoKind::Read).is_ok());
        assert!(check_io(0, 2 << 20, 4 << 20, IoKind::Discard).is_ok());
    }

    proptest! {
        // Any sequence of sector-aligned writes and discards reads back like a flat byte array.
        #[test]
        fn chunks_behave_like_a_flat_array(ops in proptest::collection::vec((0u64..64, 1u64..24, any::<u8>(), any::<bool>()), 1..24)) {
            let size = 64 * 512 + 24 * 512;
            let e = MemEngine::new();
            let mut model = vec![0u8; size as usize];
            for (sector, n, byte, is_discard) in ops {
                let off = sector * 512;
                let len = n * 512;
                if is_discard {
                    apply(&e, |o| o.discard(&e, 7, off, len).unwrap());
                    model[off as usize..(off + len) as usize].fill(0);
                } else {
                    let data = bytes::Bytes::from(vec![byte; len as usize]);
                    apply(&e, |o| o.write(&e, 7, off, &data, None).unwrap());
                    model[off as usize..(off + len) as usize].copy_from_slice(&data);
                }
            }
            prop_assert_eq!(read(&e, 7, 0, size).unwrap(), model.clone());
            prop_assert_eq!(read(&e, 7, 1536, 5120).unwrap(), model[1536..6656].to_vec());
        }
    }
}
