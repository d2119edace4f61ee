//! The injected disk faults (EIO on chosen operations, an ENOSPC byte budget, an fsync delay)
//! and the text commands of the control interface that set them.

use std::str::FromStr;
use std::time::Duration;

use crate::{Error, Result};

/// A filesystem operation that an `eio` fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    /// `fsync`/`fdatasync` of a file.
    Fsync,
    /// `fsync` of a directory.
    Fsyncdir,
    Open,
    Create,
    Mkdir,
    Unlink,
    Rmdir,
    Rename,
    /// `truncate`, `chmod` and other attribute changes.
    Setattr,
    /// Every operation above.
    Any,
}

impl FromStr for Op {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "read" => Op::Read,
            "write" => Op::Write,
            "fsync" | "fdatasync" => Op::Fsync,
            "fsyncdir" => Op::Fsyncdir,
            "open" => Op::Open,
            "create" => Op::Create,
            "mkdir" => Op::Mkdir,
            "unlink" => Op::Unlink,
            "rmdir" => Op::Rmdir,
            "rename" => Op::Rename,
            "setattr" | "truncate" => Op::Setattr,
            "any" | "all" => Op::Any,
            other => return Err(Error::Command(format!("unknown operation {other:?}"))),
        })
    }
}

/// One command of the control interface, as parsed from a line of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Drop every unsynced byte and undo every unsynced metadata operation.
    Powerloss,
    /// Answer EIO to `op` on paths matching the glob (every path when `None`).
    Eio { op: Op, glob: Option<String> },
    /// Answer ENOSPC once this many more bytes have been written.
    Enospc(u64),
    /// Delay every file and directory fsync by this long.
    FsyncDelay(Duration),
    /// Remove every injected fault (not a power loss).
    Clear,
    /// Report the unsynced bytes and the metadata operations waiting for a directory fsync.
    Status,
}

impl FromStr for Command {
    type Err = Error;
    /// `powerloss` | `eio OP [GLOB]` | `enospc BYTES` | `fsync-delay MS` | `clear` | `status`.
    fn from_str(line: &str) -> Result<Self> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |w: Option<&&str>| -> Result<u64> {
            w.ok_or_else(|| Error::Command(format!("{line:?} needs a number")))?
                .parse()
                .map_err(|e| Error::Command(format!("{line:?}: {e}")))
        };
        match words.as_slice() {
            ["powerloss"] => Ok(Command::Powerloss),
            ["clear"] => Ok(Command::Clear),
            ["status"] => Ok(Command::Status),
            ["eio", op] => Ok(Command::Eio {
                op: op.parse()?,
                glob: None,
            }),
            ["eio", op, glob] => Ok(Command::Eio {
                op: op.parse()?,
                glob: Some((*glob).to_string()),
            }),
            ["enospc", ..] if words.len() == 2 => Ok(Command::Enospc(number(words.get(1))?)),
            ["fsync-delay", ..] if words.len() == 2 => Ok(Command::FsyncDelay(
                Duration::from_millis(number(words.get(1))?),
            )),
            _ => Err(Error::Command(format!(
                "{line:?}: expected powerloss | eio OP [GLOB] | enospc BYTES | fsync-delay MS | clear | status"
            ))),
        }
    }
}

/// The faults in force. Paths are relative to the mount's root, without a leading `/`.
#[derive(Debug, Default)]
pub struct Faults {
    eio: Vec<(Op, Option<String>)>,
    /// Bytes that writes may still use before ENOSPC; `None` is no budget.
    budget: Option<u64>,
    fsync_delay: Duration,
    /// File fsyncs on paths matching these globs (`None`: every path) answer success without
    /// making anything durable (a disk that ignores flushes).
    lie_fsync: Vec<Option<String>>,
    /// EIO and ENOSPC answers given since the faults were last cleared.
    injected: std::sync::atomic::AtomicU64,
}

impl Faults {
    pub fn add_eio(&mut self, op: Op, glob: Option<String>) {
        self.eio.push((op, glob));
    }

    pub fn set_enospc(&mut self, bytes: u64) {
        self.budget = Some(bytes);
    }

    pub fn set_fsync_delay(&mut self, delay: Duration) {
        self.fsync_delay = delay;
    }

    pub fn clear(&mut self) {
        *self = Faults::default();
    }

    pub fn add_lie_fsync(&mut self, glob: Option<String>) {
        self.lie_fsync.push(glob);
    }

    /// Whether an fsync of `path` succeeds without syncing.
    pub fn lies_fsync(&self, path: &str) -> bool {
        self.lie_fsync
            .iter()
            .any(|glob| glob.as_deref().is_none_or(|g| glob_match(g, path)))
    }

    /// How many operations were answered EIO or ENOSPC since the last `clear`.
    pub fn injected(&self) -> u64 {
        self.injected.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts one EIO or ENOSPC answered.
    pub fn count_injected(&self) {
        self.injected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn fsync_delay(&self) -> Duration {
        self.fsync_delay
    }

    /// Whether `op` on `path` must fail with EIO.
    pub fn eio(&self, op: Op, path: &str) -> bool {
        self.eio.iter().any(|(o, glob)| {
            (*o == op || *o == Op::Any) && glob.as_deref().is_none_or(|g| glob_match(g, path))
        })
    }

    /// Takes `len` bytes from the budget; false (and nothing taken) when it would overflow.
    pub fn charge(&mut self, len: u64) -> bool {
        match &mut self.budget {
            None => true,
            Some(left) if *left >= len => {
                *left -= len;
                true
            }
            Some(_) => false,
        }
    }
}

/// Shell-like matching: `*` is any run of characters (`/` included), `?` is one character.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let (g, t): (Vec<char>, Vec<char>) = (glob.chars().collect(), text.chars().collect());
    let (mut gi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == t[ti]) {
            gi += 1;
            ti += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some((gi, ti));
            gi += 1;
        } else if let Some((sg, st)) = star {
            gi = sg + 1;
            ti = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob_match("*", "a/b/c"));
        assert!(glob_match("db/*.log", "db/000012.log"));
        assert!(!glob_match("db/*.log", "db/000012.sst"));
        assert!(glob_match("f?le", "file"));
        assert!(!glob_match("file", "file2"));
        assert!(glob_match("*2", "file2"));
        assert!(!glob_match("", "x"));
    }

    #[test]
    fn commands_parse() {
        assert_eq!("powerloss".parse::<Command>().unwrap(), Command::Powerloss);
        assert_eq!(
            "eio fsync db/*".parse::<Command>().unwrap(),
            Command::Eio {
                op: Op::Fsync,
                glob: Some("db/*".into())
            }
        );
        assert_eq!(
            "enospc 4096".parse::<Command>().unwrap(),
            Command::Enospc(4096)
        );
        assert_eq!(
            "fsync-delay 250".parse::<Command>().unwrap(),
            Command::FsyncDelay(Duration::from_millis(250))
        );
        assert!("eio frobnicate".parse::<Command>().is_err());
        assert!("enospc lots".parse::<Command>().is_err());
        assert!("reboot".parse::<Command>().is_err());
    }

    #[test]
    fn eio_and_budget_apply() {
        let mut f = Faults::default();
        assert!(!f.eio(Op::Fsync, "a"));
        f.add_eio(Op::Fsync, Some("a*".into()));
        assert!(f.eio(Op::Fsync, "abc") && !f.eio(Op::Fsync, "b") && !f.eio(Op::Write, "abc"));
        f.add_eio(Op::Any, None);
        assert!(f.eio(Op::Read, "b"));
        f.set_enospc(10);
        assert!(f.charge(6) && !f.charge(5) && f.charge(4) && !f.charge(1));
        f.clear();
        assert!(f.charge(u64::MAX) && !f.eio(Op::Read, "b"));
    }
}
