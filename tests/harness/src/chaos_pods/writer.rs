//! The fs workload's writer (a python3 program a pod runs) and the checker of what it left:
//! its ack lines parsed from the container log, and its file checked against every ack.

use std::path::Path;

/// Bytes per record: `SEQ(16) FILLER(37) FNV1A32(8)\n` with separating spaces.
pub const RECORD: usize = 64;

/// Appends 64-byte records `SEQ(16) FILLER(37) FNV1A32(8)\n` to `/data/log` with an fsync
/// after each, and prints `ack SEQ UNIX_TIME` only once the fsync returned. On start it keeps
/// the longest prefix of valid records (a kill may leave an unacknowledged tail), prints
/// `start SEQ UNIX_TIME` and goes on from there; a failed write or fsync prints `error SEQ
/// MESSAGE` and exits 1 (the kubelet starts it again). Once `/data/stop` exists it prints
/// `stopped COUNT` and idles.
pub const WRITER: &str = r#"
import os, sys, time
R = 64
def fnv(b):
    h = 0x811c9dc5
    for x in b:
        h = ((h ^ x) * 0x01000193) & 0xffffffff
    return h
def rec(n):
    body = b"%016d %037x" % (n, (n * 2654435761) % (1 << 64))
    return body + b" %08x\n" % fnv(body)
fd = os.open("/data/log", os.O_RDWR | os.O_CREAT, 0o644)
data = os.pread(fd, os.fstat(fd).st_size, 0)
n = 0
while (n + 1) * R <= len(data) and data[n * R:(n + 1) * R] == rec(n):
    n += 1
os.ftruncate(fd, n * R)
os.fsync(fd)
print("start %d %.3f" % (n, time.time()), flush=True)
while not os.path.exists("/data/stop"):
    try:
        os.pwrite(fd, rec(n), n * R)
        os.fsync(fd)
    except OSError as e:
        print("error %d %s" % (n, str(e).replace("\n", " ")), flush=True)
        sys.exit(1)
    print("ack %d %.3f" % (n, time.time()), flush=True)
    n += 1
print("stopped %d" % n, flush=True)
while True:
    time.sleep(3600)
"#;

/// The record the writer writes at position `n` (the same bytes as its `rec`).
pub fn record(n: u64) -> Vec<u8> {
    let filler = n.wrapping_mul(2654435761);
    let body = format!("{n:016} {filler:037x}");
    let mut h: u32 = 0x811c9dc5;
    for b in body.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x01000193);
    }
    format!("{body} {h:08x}\n").into_bytes()
}

/// What a writer printed, in order: its acks (sequence, unix time), starts, errors, its stop.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AckLog {
    pub acks: Vec<(u64, f64)>,
    /// Each start: (the sequence it goes on from, its unix time, how many acks came before).
    pub starts: Vec<(u64, f64, usize)>,
    /// Each failed write or fsync: (the sequence, the message).
    pub errors: Vec<(u64, String)>,
    pub stopped: Option<u64>,
}

impl AckLog {
    /// Parses the writer's lines (a container log: other lines are ignored).
    pub fn parse(text: &str) -> AckLog {
        let mut out = AckLog::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["ack", n, t] => {
                    if let (Ok(n), Ok(t)) = (n.parse(), t.parse()) {
                        out.acks.push((n, t));
                    }
                }
                ["start", n, t] => {
                    if let (Ok(n), Ok(t)) = (n.parse(), t.parse()) {
                        out.starts.push((n, t, out.acks.len()));
                    }
                }
                ["error", n, rest @ ..] => {
                    if let Ok(n) = n.parse() {
                        out.errors.push((n, rest.join(" ")));
                    }
                }
                ["stopped", n] => out.stopped = n.parse().ok(),
                _ => {}
            }
        }
        out
    }

    /// Reads and parses a container log; a missing file is an empty log.
    pub fn read(path: &Path) -> AckLog {
        AckLog::parse(&std::fs::read_to_string(path).unwrap_or_default())
    }

    /// Each ack's time and its latency: the time since the writer's previous ack or start
    /// (its write and fsync began right after it), in unix seconds.
    pub fn latencies(&self) -> Vec<(f64, f64)> {
        let mut out = Vec::with_capacity(self.acks.len());
        let mut starts = self.starts.iter().peekable();
        let mut prev: Option<f64> = None;
        for (i, (_, t)) in self.acks.iter().enumerate() {
            while let Some((_, st, _)) = starts.next_if(|s| s.2 <= i) {
                prev = Some(*st);
            }
            out.push((*t, t - prev.unwrap_or(*t)));
            prev = Some(*t);
        }
        out
    }
}

/// What the checker found in one writer's file against its acks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileCheck {
    /// Records in the file's longest valid prefix (each equal to `record(n)` at position n).
    pub intact: u64,
    /// Acknowledged sequences not in that prefix, plus those a start went back over (the
    /// writer rewrote them, so the file alone cannot show that they were gone).
    pub lost: Vec<u64>,
    /// Acks out of order after a start (a sequence skipped or repeated).
    pub disordered: u64,
}

/// Checks `file` against `log`: every acknowledged record must be in the valid prefix (intact,
/// in order), no start may begin at or below a record acknowledged before it, and after each
/// start the acks count up by one.
pub fn check(file: &[u8], log: &AckLog) -> FileCheck {
    let mut intact = 0u64;
    for chunk in file.chunks(RECORD) {
        if chunk != record(intact).as_slice() {
            break;
        }
        intact += 1;
    }
    let mut lost: Vec<u64> = log
        .acks
        .iter()
        .map(|a| a.0)
        .filter(|n| *n >= intact)
        .collect();
    let mut disordered = 0;
    for (k, (from, _, pos)) in log.starts.iter().enumerate() {
        if let Some(max) = log.acks[..*pos].iter().map(|a| a.0).max()
            && *from <= max
        {
            lost.extend(*from..=max);
        }
        let end = log.starts.get(k + 1).map_or(log.acks.len(), |s| s.2);
        for (i, (n, _)) in log.acks[*pos..end].iter().enumerate() {
            disordered += u64::from(*n != from + i as u64);
        }
    }
    lost.sort_unstable();
    lost.dedup();
    FileCheck {
        intact,
        lost,
        disordered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(seqs: impl IntoIterator<Item = u64>) -> Vec<u8> {
        seqs.into_iter().flat_map(record).collect()
    }

    fn log(text: &str) -> AckLog {
        AckLog::parse(text)
    }

    const FIVE: &str = "start 0 1.0\nack 0 1.1\nack 1 1.2\nack 2 1.3\nack 3 1.4\nack 4 1.5\n";

    #[test]
    fn every_acked_record_present_is_clean() {
        let c = check(&file(0..5), &log(FIVE));
        assert_eq!((c.intact, c.lost.len(), c.disordered), (5, 0, 0));
        // An unacknowledged tail (a record written, its ack never printed) is fine too.
        let c = check(&file(0..6), &log(FIVE));
        assert_eq!((c.intact, c.lost.len()), (6, 0));
    }

    #[test]
    fn a_truncated_file_loses_the_acked_records_past_its_end() {
        let mut f = file(0..5);
        f.truncate(3 * RECORD);
        let c = check(&f, &log(FIVE));
        assert_eq!(c.lost, [3, 4]);
    }

    #[test]
    fn a_torn_record_loses_it_and_every_later_one() {
        let mut f = file(0..5);
        f[2 * RECORD + 10] ^= 0x01;
        assert_eq!(check(&f, &log(FIVE)).lost, [2, 3, 4]);
        // A half-written last record: the acked record 4 is torn.
        let mut f = file(0..5);
        f.truncate(4 * RECORD + 20);
        assert_eq!(check(&f, &log(FIVE)).lost, [4]);
    }

    #[test]
    fn reordered_records_are_lost_from_the_first_out_of_place() {
        let f = file([0, 1, 3, 2, 4]);
        assert_eq!(check(&f, &log(FIVE)).lost, [2, 3, 4]);
    }

    #[test]
    fn a_start_below_an_acked_record_loses_what_it_rewrote() {
        // Records 3 and 4 were acknowledged, then the writer found only 0..3 and rewrote them:
        // the file is whole again, but 3 was lost in between.
        let text = format!("{FIVE}start 3 2.0\nack 3 2.1\nack 4 2.2\nack 5 2.3\n");
        let c = check(&file(0..6), &log(&text));
        assert_eq!(c.lost, [3, 4]);
        // A start past every ack (after a kill) loses nothing.
        let text = format!("{FIVE}start 5 2.0\nack 5 2.1\n");
        assert!(check(&file(0..6), &log(&text)).lost.is_empty());
    }

    #[test]
    fn acks_that_skip_a_sequence_are_disordered() {
        let text = "start 0 1.0\nack 0 1.1\nack 2 1.2\n";
        assert_eq!(check(&file(0..3), &log(text)).disordered, 1);
    }

    #[test]
    fn the_log_parses_errors_stops_and_latencies() {
        let l = log(
            "noise\nstart 0 10.0\nack 0 10.5\nerror 1 [Errno 5] EIO\nstart 1 12.0\nack 1 12.25\nstopped 2\n",
        );
        assert_eq!(l.errors, [(1, "[Errno 5] EIO".to_string())]);
        assert_eq!(l.stopped, Some(2));
        assert_eq!(l.latencies(), [(10.5, 0.5), (12.25, 0.25)]);
    }
}
