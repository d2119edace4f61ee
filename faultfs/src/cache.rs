//! The page cache of one file: the bytes written (and truncations done) since its last sync,
//! kept in memory over the backing file until an fsync writes them through.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Unsynced changes of one file over its backing file.
#[derive(Debug)]
pub struct Dirty {
    /// The file's size as readers see it.
    size: u64,
    /// Backing bytes at or past this offset are hidden: a truncation since the last sync.
    cut: u64,
    /// Written extents by offset; they never overlap and all end at or before `size`.
    extents: BTreeMap<u64, Vec<u8>>,
}

impl Dirty {
    /// A clean cache over a backing file of `backing_len` bytes.
    pub fn new(backing_len: u64) -> Self {
        Dirty {
            size: backing_len,
            cut: backing_len,
            extents: BTreeMap::new(),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes held in memory.
    pub fn held(&self) -> u64 {
        self.extents.values().map(|e| e.len() as u64).sum()
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        self.carve(offset, end);
        self.extents.insert(offset, data.to_vec());
        self.size = self.size.max(end);
    }

    /// Sets the size; bytes past it are dropped now and hidden in the backing file.
    pub fn truncate(&mut self, size: u64) {
        self.carve(size, u64::MAX);
        self.cut = self.cut.min(size);
        self.size = size;
    }

    /// Grows the size to at least `size` (zeros), as `fallocate` without KEEP_SIZE does.
    pub fn extend(&mut self, size: u64) {
        self.size = self.size.max(size);
    }

    /// Removes `[start, end)` from the extents, keeping the parts of extents outside it.
    fn carve(&mut self, start: u64, end: u64) {
        let hits: Vec<u64> = self
            .extents
            .range(..end)
            .rev()
            .take_while(|(off, e)| *off + e.len() as u64 > start)
            .map(|(off, _)| *off)
            .collect();
        for off in hits {
            let e = self.extents.remove(&off).expect("listed above");
            let e_end = off + e.len() as u64;
            if off < start {
                self.extents
                    .insert(off, e[..(start - off) as usize].to_vec());
            }
            if e_end > end {
                self.extents.insert(end, e[(end - off) as usize..].to_vec());
            }
        }
    }

    /// Reads `[offset, offset+len)` as a reader sees it: the backing file under the extents.
    pub fn read(&self, file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        if offset >= self.size {
            return Ok(Vec::new());
        }
        let end = self.size.min(offset.saturating_add(len));
        let mut buf = vec![0u8; (end - offset) as usize];
        let visible = end.min(self.cut);
        if visible > offset {
            read_full(file, &mut buf[..(visible - offset) as usize], offset)?;
        }
        for (&off, e) in self.extents.range(..end) {
            let e_end = off + e.len() as u64;
            if e_end <= offset {
                continue;
            }
            let (from, to) = (off.max(offset), e_end.min(end));
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&e[(from - off) as usize..(to - off) as usize]);
        }
        Ok(buf)
    }

    /// Writes the changes into the backing file (the caller syncs it and drops the cache).
    pub fn write_through(&self, file: &File) -> io::Result<()> {
        if file.metadata()?.len() > self.cut {
            file.set_len(self.cut)?;
        }
        for (&off, e) in &self.extents {
            file.write_all_at(e, off)?;
        }
        if file.metadata()?.len() < self.size {
            file.set_len(self.size)?;
        }
        Ok(())
    }
}

/// Reads into `buf` from `offset`, leaving zeros past the end of the file.
pub fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backing(content: &[u8]) -> File {
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(content, 0).unwrap();
        f
    }

    #[test]
    fn reads_see_writes_over_the_backing_file() {
        let f = backing(b"0123456789");
        let mut d = Dirty::new(10);
        d.write(2, b"ab");
        d.write(8, b"xyz");
        assert_eq!(d.read(&f, 0, 100).unwrap(), b"01ab4567xyz");
        d.write(1, b"QQQ");
        assert_eq!(d.read(&f, 0, 100).unwrap(), b"0QQQ4567xyz");
        assert_eq!(d.read(&f, 3, 2).unwrap(), b"Q4");
        assert_eq!(d.held(), 3 + 3);
        // The backing file is untouched until written through.
        assert_eq!(Dirty::new(10).read(&f, 0, 100).unwrap(), b"0123456789");
    }

    #[test]
    fn an_overwrite_in_the_middle_of_an_extent_splits_it() {
        let f = backing(b"");
        let mut d = Dirty::new(0);
        d.write(0, b"aaaaaaaa");
        d.write(3, b"bb");
        assert_eq!(d.read(&f, 0, 8).unwrap(), b"aaabbaaa");
        assert_eq!(d.extents.len(), 3);
    }

    #[test]
    fn truncation_hides_the_backing_tail_and_extension_reads_zeros() {
        let f = backing(b"0123456789");
        let mut d = Dirty::new(10);
        d.write(6, b"ab");
        d.truncate(4);
        assert_eq!(d.read(&f, 0, 100).unwrap(), b"0123");
        d.truncate(7);
        assert_eq!(d.read(&f, 0, 100).unwrap(), b"0123\0\0\0");
        d.write(9, b"z");
        assert_eq!(d.read(&f, 0, 100).unwrap(), b"0123\0\0\0\0\0z");
        d.write_through(&f).unwrap();
        let mut out = vec![0; 20];
        let n = read_full(&f, &mut out, 0).unwrap();
        assert_eq!(&out[..n], b"0123\0\0\0\0\0z");
    }

    #[test]
    fn write_through_extends_to_the_logical_size() {
        let f = backing(b"abc");
        let mut d = Dirty::new(3);
        d.extend(6);
        d.write(1, b"X");
        d.write_through(&f).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 6);
        let mut out = vec![0; 6];
        read_full(&f, &mut out, 0).unwrap();
        assert_eq!(out, b"aXc\0\0\0");
    }
}
