//! Reading and replaying a dm-log-writes log, for the power-cut scenario in the VM
//! (tests/vm/scenarios/power-cut.sh; method in tests/vm/README.md).
//!
//! dm-log-writes records, in the order they became durable on the device under it, every
//! write, flush, FUA write and discard, plus named marks sent with `dmsetup message`. The
//! layout (the kernel's `drivers/md/dm-log-writes.c` and its admin-guide page) is:
//! - byte 0: the super block — magic, version, entry count (little-endian u64 each) and the
//!   data device's logical sector size (u32), padded to one sector;
//! - from byte `sectorsize`: one entry per record, each a header sector — the data device
//!   sector and sector count (in `sectorsize` units), flags and data length (u64 each), a
//!   mark's name following the header in the same sector — then, unless the record is a
//!   discard or a mark, `count` sectors of data. A write with no payload (write-zeroes)
//!   still reserves its data sectors; the log device starts zeroed, so they read as zero.
//!
//! Writes are logged when a flush covers them, so every record before a FLUSH record was
//! durable when that flush completed: replaying a prefix that ends at a FLUSH is what a
//! disk holds after a power cut right then. Between two flushes the disk may have kept any
//! subset of the writes in between (a volatile cache loses what it likes), except FUA
//! writes, durable as they completed: [`Log::replay`] can drop a random subset of those.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// `WRITE_LOG_MAGIC`.
pub const MAGIC: u64 = 0x006a_7366_7773_6872;
/// The only log version there is.
pub const VERSION: u64 = 1;
/// The record is a flush: everything before it is durable.
pub const FLUSH: u64 = 1;
/// The record is a FUA write: durable on its own.
pub const FUA: u64 = 1 << 1;
/// The record is a discard (no data in the log).
pub const DISCARD: u64 = 1 << 2;
/// The record is a named mark.
pub const MARK: u64 = 1 << 3;

/// One record of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// First data-device sector (in `sectorsize` units).
    pub sector: u64,
    /// Sectors written or discarded.
    pub count: u64,
    /// `FLUSH`, `FUA`, `DISCARD`, `MARK` (and bits this reader ignores).
    pub flags: u64,
    /// A mark's name (empty otherwise).
    pub mark: String,
    /// Byte offset of the data in the log (meaningless for discards and marks).
    pub data_at: u64,
}

impl Entry {
    /// Whether it writes data (a write, a FUA write, a flush carrying data, write-zeroes).
    pub fn writes(&self) -> bool {
        self.count > 0 && self.flags & (DISCARD | MARK) == 0
    }
}

/// A parsed log.
pub struct Log {
    file: File,
    /// The data device's logical sector size.
    pub sectorsize: u64,
    /// Every record, in log order.
    pub entries: Vec<Entry>,
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Log {
    /// Reads the super block and every entry header of the log in `file`.
    pub fn open(file: File) -> io::Result<Log> {
        let mut sb = [0u8; 28];
        file.read_exact_at(&mut sb, 0)?;
        if le64(&sb, 0) != MAGIC {
            return Err(bad("not a dm-log-writes log (bad magic)".into()));
        }
        if le64(&sb, 8) != VERSION {
            return Err(bad(format!(
                "log version {} (only 1 is known)",
                le64(&sb, 8)
            )));
        }
        let n = le64(&sb, 16);
        let ss = u32::from_le_bytes([sb[24], sb[25], sb[26], sb[27]]) as u64;
        if !ss.is_power_of_two() || !(512..=65536).contains(&ss) {
            return Err(bad(format!("log sector size {ss}")));
        }
        let mut entries = Vec::with_capacity(n as usize);
        let mut at = ss;
        let mut head = vec![0u8; ss as usize];
        for i in 0..n {
            file.read_exact_at(&mut head, at)
                .map_err(|e| bad(format!("entry {i} at byte {at}: {e}")))?;
            let (sector, count, flags, len) = (
                le64(&head, 0),
                le64(&head, 8),
                le64(&head, 16),
                le64(&head, 24),
            );
            let mark = if flags & MARK != 0 {
                let end = (32 + len as usize).min(head.len());
                String::from_utf8_lossy(&head[32..end]).into_owned()
            } else {
                String::new()
            };
            at += ss;
            entries.push(Entry {
                sector,
                count,
                flags,
                mark,
                data_at: at,
            });
            if flags & (DISCARD | MARK) == 0 {
                at += count * ss;
            }
        }
        Ok(Log {
            file,
            sectorsize: ss,
            entries,
        })
    }

    /// The index of the mark named `name`.
    pub fn find_mark(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.mark == name)
    }

    /// Applies entries `from..to` onto `dev`, in order. With `drop`, every entry written
    /// after the last FLUSH before `to` (and at or after `from`) that is not FUA is kept
    /// only when `drop` says so: the writes a volatile cache may have lost. Before writing,
    /// the bytes each write replaces are appended to `undo` when given, so that
    /// [`undo`] can take the device back to where it was. Returns (entries applied,
    /// entries dropped).
    pub fn replay(
        &self,
        dev: &File,
        from: usize,
        to: usize,
        mut drop: Option<&mut dyn FnMut(usize) -> bool>,
        mut undo: Option<&mut Vec<(u64, Vec<u8>)>>,
    ) -> io::Result<(usize, usize)> {
        let to = to.min(self.entries.len());
        let last_flush = (from..to)
            .rev()
            .find(|&i| self.entries[i].flags & FLUSH != 0)
            .map_or(from, |i| i + 1);
        let (mut applied, mut dropped) = (0, 0);
        let ss = self.sectorsize;
        for i in from..to {
            let e = &self.entries[i];
            if i >= last_flush && e.flags & FUA == 0 && (e.writes() || e.flags & DISCARD != 0) {
                if let Some(keep) = drop.as_mut() {
                    if !keep(i) {
                        dropped += 1;
                        continue;
                    }
                }
            }
            let off = e.sector * ss;
            let len = (e.count * ss) as usize;
            let data = if e.writes() {
                let mut d = vec![0u8; len];
                self.file.read_exact_at(&mut d, e.data_at)?;
                d
            } else if e.flags & DISCARD != 0 && len > 0 {
                // What snapblk's origin and store (dm-linear over a loop file) return after
                // a discard: zeroes.
                vec![0u8; len]
            } else {
                continue;
            };
            if let Some(u) = undo.as_mut() {
                let mut old = vec![0u8; len];
                dev.read_exact_at(&mut old, off)?;
                u.push((off, old));
            }
            dev.write_all_at(&data, off)?;
            applied += 1;
        }
        dev.sync_data()?;
        Ok((applied, dropped))
    }
}

/// Writes back what [`Log::replay`] saved, newest first.
pub fn undo(dev: &File, saved: &[(u64, Vec<u8>)]) -> io::Result<()> {
    for (off, old) in saved.iter().rev() {
        dev.write_all_at(old, *off)?;
    }
    dev.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of `records` (sector, count, flags, payload byte or mark name) as the kernel
    /// lays it out, with 512-byte sectors.
    fn log_file(records: &[(u64, u64, u64, &str)]) -> File {
        let ss = 512u64;
        let f = tempfile();
        let mut sb = vec![0u8; ss as usize];
        sb[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        sb[8..16].copy_from_slice(&VERSION.to_le_bytes());
        sb[16..24].copy_from_slice(&(records.len() as u64).to_le_bytes());
        sb[24..28].copy_from_slice(&(ss as u32).to_le_bytes());
        f.write_all_at(&sb, 0).unwrap();
        let mut at = ss;
        for &(sector, count, flags, p) in records {
            let mut h = vec![0u8; ss as usize];
            h[0..8].copy_from_slice(&sector.to_le_bytes());
            h[8..16].copy_from_slice(&count.to_le_bytes());
            h[16..24].copy_from_slice(&flags.to_le_bytes());
            let len = if flags & MARK != 0 {
                p.len() as u64
            } else {
                count * ss
            };
            h[24..32].copy_from_slice(&len.to_le_bytes());
            if flags & MARK != 0 {
                h[32..32 + p.len()].copy_from_slice(p.as_bytes());
            }
            f.write_all_at(&h, at).unwrap();
            at += ss;
            if flags & (MARK | DISCARD) == 0 {
                let byte = p.bytes().next().unwrap_or(0);
                f.write_all_at(&vec![byte; (count * ss) as usize], at)
                    .unwrap();
                at += count * ss;
            }
        }
        f
    }

    fn tempfile() -> File {
        tempfile::tempfile().unwrap()
    }

    fn read(dev: &File, off: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        dev.read_exact_at(&mut b, off).unwrap();
        b
    }

    #[test]
    fn parses_writes_flushes_discards_and_marks() {
        let log = Log::open(log_file(&[
            (0, 2, 0, "a"),
            (0, 0, FLUSH, ""),
            (4, 1, FUA, "b"),
            (2, 2, DISCARD, ""),
            (0, 0, MARK, "done"),
        ]))
        .unwrap();
        assert_eq!(log.entries.len(), 5);
        assert_eq!(log.find_mark("done"), Some(4));
        assert!(log.entries[0].writes() && !log.entries[1].writes() && !log.entries[3].writes());
        // super, header + 2 data sectors, flush header, FUA header: its data follows.
        assert_eq!(log.entries[2].data_at, 512 * 6);
    }

    #[test]
    fn replays_prefixes_drops_only_unflushed_non_fua_writes_and_undoes() {
        let log = Log::open(log_file(&[
            (0, 1, 0, "a"),
            (0, 0, FLUSH, ""),
            (1, 1, 0, "b"),
            (2, 1, FUA, "c"),
            (3, 1, 0, "d"),
        ]))
        .unwrap();
        let dev = tempfile();
        dev.set_len(8 * 512).unwrap();
        log.replay(&dev, 0, 2, None, None).unwrap();
        assert_eq!(read(&dev, 0, 512), vec![b'a'; 512]);
        let mut saved = Vec::new();
        let mut never = |_: usize| false;
        let (applied, dropped) = log
            .replay(&dev, 2, 5, Some(&mut never), Some(&mut saved))
            .unwrap();
        assert_eq!((applied, dropped), (1, 2), "only the FUA write survives");
        assert_eq!(read(&dev, 512, 512), vec![0; 512]);
        assert_eq!(read(&dev, 1024, 512), vec![b'c'; 512]);
        undo(&dev, &saved).unwrap();
        assert_eq!(read(&dev, 1024, 512), vec![0; 512]);
        assert_eq!(
            read(&dev, 0, 512),
            vec![b'a'; 512],
            "undo keeps the flushed prefix"
        );
    }

    #[test]
    fn refuses_what_is_not_a_log() {
        let f = tempfile();
        f.write_all_at(&[0u8; 4096], 0).unwrap();
        assert!(Log::open(f).is_err());
    }
}
