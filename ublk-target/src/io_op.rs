//! How one ublk request maps to an engine call.
//!
//! Decoding is separate from execution so both can be tested without a
//! kernel: [`IoRequest::decode`] validates what the driver sent, and
//! [`execute`] runs it against any [`IoBackend`].

use libublk::sys;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

/// The surface the I/O path needs. Implemented by [`snapmap::Engine`] (the volume,
/// in `volume.rs`) and by [`crate::source::ReadOnly`] for kinds that read from
/// elsewhere; tests use an in-memory disk.
pub trait IoBackend: Send + Sync {
    /// Reads `buf.len()` bytes at `off`.
    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `buf` at `off`.
    fn write(&self, off: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes every completed write durable (origin and store).
    fn flush(&self) -> io::Result<()>;
    /// Drops `len` bytes at `off`; they read back as zeroes.
    fn discard(&self, off: u64, len: u64) -> io::Result<()>;
    /// Writes `len` zero bytes at `off`.
    fn write_zeroes(&self, off: u64, len: u64) -> io::Result<()>;
    /// The origin's file descriptor, when reads of the live image and
    /// admitted plain writes may be issued on it directly (io_uring on the
    /// queue thread). `None` sends everything through the worker pool.
    fn origin_fd(&self) -> Option<RawFd> {
        None
    }
    /// Whether the device is read-only: the kernel is told (`UBLK_ATTR_READ_ONLY`:
    /// `blockdev --getro` is 1 and users' writes fail with EPERM), and the backend still
    /// fails any change that an in-kernel writer sends anyway.
    fn read_only(&self) -> bool {
        false
    }
    /// The logical block size to advertise (bytes, a power of two from 512 to 4096): the
    /// smallest request the backend's origin takes as it is.
    fn sector_size(&self) -> u32 {
        512
    }
    /// Admits `buf` at `off` as a plain origin write the caller issues itself
    /// on [`IoBackend::origin_fd`], without ever blocking; the caller must
    /// [`snapmap::DirectWrite::finish`] it with the write's outcome (`true`:
    /// every byte written; dropping it counts as a failure). `None`: run
    /// [`IoBackend::write`] instead.
    fn try_direct_write<'a>(&'a self, _off: u64, _buf: &[u8]) -> Option<snapmap::DirectWrite<'a>> {
        None
    }
    /// Admits `buf` at `off` as a copy-on-write the caller drives (reads the
    /// originals, has the preserve committed, then writes the origin; see
    /// [`snapmap::CowWrite`]), without ever blocking. `None`: run
    /// [`IoBackend::write`] instead.
    fn try_cow_write<'a>(&'a self, _off: u64, _buf: &[u8]) -> Option<snapmap::CowWrite<'a>> {
        None
    }
    /// Makes a batch of preserves durable; one result per preserve, in order:
    /// 0, or the negative errno to complete its request with.
    fn commit_preserves(&self, batch: Vec<snapmap::Preserve>) -> Vec<i32> {
        vec![-libc::EIO; batch.len()]
    }
}

/// A validated block request. Offsets and lengths are in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoRequest {
    /// Read into the tag's buffer.
    Read {
        /// Byte offset.
        off: u64,
        /// Byte count.
        len: u32,
    },
    /// Write from the tag's buffer; `fua` asks for durability before completion.
    Write {
        /// Byte offset.
        off: u64,
        /// Byte count.
        len: u32,
        /// Forced unit access.
        fua: bool,
    },
    /// Make all completed writes durable.
    Flush,
    /// Drop a range (reads back as zeroes).
    Discard {
        /// Byte offset.
        off: u64,
        /// Byte count.
        len: u64,
    },
    /// Zero a range.
    WriteZeroes {
        /// Byte offset.
        off: u64,
        /// Byte count.
        len: u64,
    },
}

impl IoRequest {
    /// Decodes a ublk descriptor, or returns the negative errno to complete it with.
    ///
    /// `dev_size` bounds every range; `buf_len` bounds data transfers.
    pub fn decode(
        op_flags: u32,
        start_sector: u64,
        nr_sectors: u32,
        dev_size: u64,
        buf_len: usize,
    ) -> Result<IoRequest, i32> {
        let op = op_flags & 0xff;
        // A flush carries no range (the kernel sends start_sector = u64::MAX).
        if op == sys::UBLK_IO_OP_FLUSH {
            return Ok(IoRequest::Flush);
        }
        let off = start_sector.checked_mul(512).ok_or(-libc::EINVAL)?;
        let len = u64::from(nr_sectors) * 512;
        let end = off.checked_add(len).ok_or(-libc::EINVAL)?;
        if end > dev_size {
            return Err(-libc::EIO);
        }
        let data_len = || -> Result<u32, i32> {
            if len as usize > buf_len {
                Err(-libc::EINVAL)
            } else {
                Ok(len as u32)
            }
        };
        match op {
            sys::UBLK_IO_OP_READ => Ok(IoRequest::Read {
                off,
                len: data_len()?,
            }),
            sys::UBLK_IO_OP_WRITE => Ok(IoRequest::Write {
                off,
                len: data_len()?,
                fua: op_flags & sys::UBLK_IO_F_FUA != 0,
            }),
            sys::UBLK_IO_OP_DISCARD => Ok(IoRequest::Discard { off, len }),
            sys::UBLK_IO_OP_WRITE_ZEROES => Ok(IoRequest::WriteZeroes { off, len }),
            _ => Err(-libc::EOPNOTSUPP),
        }
    }
}

/// Per-device I/O counters, shown by `status`.
#[derive(Debug, Default)]
pub struct IoStats {
    /// Completed reads.
    pub reads: AtomicU64,
    /// Completed writes.
    pub writes: AtomicU64,
    /// Completed flushes (including FUA writes' flushes).
    pub flushes: AtomicU64,
    /// Completed discards.
    pub discards: AtomicU64,
    /// Completed write-zeroes.
    pub write_zeroes: AtomicU64,
    /// Bytes read.
    pub bytes_read: AtomicU64,
    /// Bytes written.
    pub bytes_written: AtomicU64,
    /// Requests completed with an error.
    pub errors: AtomicU64,
    /// Reads served on the queue thread's ring (included in `reads`).
    pub direct_reads: AtomicU64,
    /// Writes served on the queue thread's ring (included in `writes`).
    pub direct_writes: AtomicU64,
    /// Copy-on-write writes served on the queue thread (origin I/O on its
    /// ring, the preserve committed by the commit thread; included in `writes`).
    pub direct_cow_writes: AtomicU64,
    /// Batches of preserves a queue committed itself (commits were quick).
    pub commit_batches_inline: AtomicU64,
    /// Batches of preserves handed to the commit thread.
    pub commit_batches_thread: AtomicU64,
}

/// A point-in-time copy of [`IoStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoCounters {
    /// Completed reads.
    pub reads: u64,
    /// Completed writes.
    pub writes: u64,
    /// Completed flushes.
    pub flushes: u64,
    /// Completed discards.
    pub discards: u64,
    /// Completed write-zeroes.
    pub write_zeroes: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Requests completed with an error.
    pub errors: u64,
    /// Reads served on the queue thread's ring (included in `reads`).
    #[serde(default)]
    pub direct_reads: u64,
    /// Writes served on the queue thread's ring (included in `writes`).
    #[serde(default)]
    pub direct_writes: u64,
    /// Copy-on-write writes served on the queue thread (included in `writes`).
    #[serde(default)]
    pub direct_cow_writes: u64,
    /// Batches of preserves a queue committed itself.
    #[serde(default)]
    pub commit_batches_inline: u64,
    /// Batches of preserves handed to the commit thread.
    #[serde(default)]
    pub commit_batches_thread: u64,
}

impl IoStats {
    /// Copies the counters.
    pub fn snapshot(&self) -> IoCounters {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IoCounters {
            reads: l(&self.reads),
            writes: l(&self.writes),
            flushes: l(&self.flushes),
            discards: l(&self.discards),
            write_zeroes: l(&self.write_zeroes),
            bytes_read: l(&self.bytes_read),
            bytes_written: l(&self.bytes_written),
            errors: l(&self.errors),
            direct_reads: l(&self.direct_reads),
            direct_writes: l(&self.direct_writes),
            direct_cow_writes: l(&self.direct_cow_writes),
            commit_batches_inline: l(&self.commit_batches_inline),
            commit_batches_thread: l(&self.commit_batches_thread),
        }
    }
}

fn errno_of(e: &io::Error) -> i32 {
    match e.raw_os_error() {
        Some(n) if n > 0 => -n,
        _ => -libc::EIO,
    }
}

/// Runs `req` against `backend`; returns what the ublk command completes with
/// (bytes transferred for reads/writes, 0 for the rest, or a negative errno).
pub fn execute(backend: &dyn IoBackend, req: IoRequest, buf: &mut [u8], stats: &IoStats) -> i32 {
    let inc = |a: &AtomicU64, n: u64| {
        a.fetch_add(n, Ordering::Relaxed);
    };
    let res = match req {
        IoRequest::Read { off, len } => backend.read(off, &mut buf[..len as usize]).map(|_| {
            inc(&stats.reads, 1);
            inc(&stats.bytes_read, u64::from(len));
            len as i32
        }),
        IoRequest::Write { off, len, fua } => {
            // FUA: the data must be durable when the command completes; a
            // flush after the write gives exactly that through the engine's
            // ordering (preserved copies are durable before the origin write).
            let r = backend.write(off, &buf[..len as usize]).and_then(|_| {
                if fua {
                    inc(&stats.flushes, 1);
                    backend.flush()
                } else {
                    Ok(())
                }
            });
            r.map(|_| {
                inc(&stats.writes, 1);
                inc(&stats.bytes_written, u64::from(len));
                len as i32
            })
        }
        IoRequest::Flush => backend.flush().map(|_| {
            inc(&stats.flushes, 1);
            0
        }),
        IoRequest::Discard { off, len } => backend.discard(off, len).map(|_| {
            inc(&stats.discards, 1);
            0
        }),
        IoRequest::WriteZeroes { off, len } => backend.write_zeroes(off, len).map(|_| {
            inc(&stats.write_zeroes, 1);
            0
        }),
    };
    match res {
        Ok(n) => n,
        Err(e) => {
            inc(&stats.errors, 1);
            tracing::warn!(?req, error = %e, "request failed");
            errno_of(&e)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An in-memory disk recording flushes.
    pub(crate) struct MemDisk {
        pub data: Mutex<Vec<u8>>,
        pub flushes: AtomicU64,
        pub fail_writes: bool,
    }

    impl MemDisk {
        pub(crate) fn new(size: usize) -> MemDisk {
            MemDisk {
                data: Mutex::new(vec![0; size]),
                flushes: AtomicU64::new(0),
                fail_writes: false,
            }
        }
    }

    impl IoBackend for MemDisk {
        fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
            let d = self.data.lock().unwrap();
            buf.copy_from_slice(&d[off as usize..off as usize + buf.len()]);
            Ok(())
        }
        fn write(&self, off: u64, buf: &[u8]) -> io::Result<()> {
            if self.fail_writes {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let mut d = self.data.lock().unwrap();
            d[off as usize..off as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn discard(&self, off: u64, len: u64) -> io::Result<()> {
            self.write_zeroes(off, len)
        }
        fn write_zeroes(&self, off: u64, len: u64) -> io::Result<()> {
            let mut d = self.data.lock().unwrap();
            d[off as usize..(off + len) as usize].fill(0);
            Ok(())
        }
    }

    const MB: u64 = 1 << 20;

    #[test]
    fn decode_maps_each_op() {
        let r = IoRequest::decode(sys::UBLK_IO_OP_READ, 8, 8, MB, 4096).unwrap();
        assert_eq!(
            r,
            IoRequest::Read {
                off: 4096,
                len: 4096
            }
        );
        let w = IoRequest::decode(sys::UBLK_IO_OP_WRITE | sys::UBLK_IO_F_FUA, 1, 1, MB, 4096);
        assert_eq!(
            w.unwrap(),
            IoRequest::Write {
                off: 512,
                len: 512,
                fua: true
            }
        );
        let w = IoRequest::decode(sys::UBLK_IO_OP_WRITE, 1, 1, MB, 4096).unwrap();
        assert_eq!(
            w,
            IoRequest::Write {
                off: 512,
                len: 512,
                fua: false
            }
        );
        assert_eq!(
            IoRequest::decode(sys::UBLK_IO_OP_FLUSH, 0, 0, MB, 4096).unwrap(),
            IoRequest::Flush
        );
        // What the kernel really sends for a flush: no range, sector -1.
        assert_eq!(
            IoRequest::decode(sys::UBLK_IO_OP_FLUSH, u64::MAX, 0, MB, 4096).unwrap(),
            IoRequest::Flush
        );
        assert_eq!(
            IoRequest::decode(sys::UBLK_IO_OP_DISCARD, 16, 1024, MB, 4096).unwrap(),
            IoRequest::Discard {
                off: 8192,
                len: MB / 2
            }
        );
        assert_eq!(
            IoRequest::decode(sys::UBLK_IO_OP_WRITE_ZEROES, 0, 8, MB, 4096).unwrap(),
            IoRequest::WriteZeroes { off: 0, len: 4096 }
        );
    }

    #[test]
    fn decode_rejects_out_of_range_and_oversized() {
        // Past the end of the device.
        assert_eq!(
            IoRequest::decode(sys::UBLK_IO_OP_READ, 2047, 2, MB, 4096),
            Err(-libc::EIO)
        );
        // Larger than the tag buffer.
        assert_eq!(
            IoRequest::decode(sys::UBLK_IO_OP_WRITE, 0, 16, MB, 4096),
            Err(-libc::EINVAL)
        );
        // Unknown op.
        assert_eq!(
            IoRequest::decode(sys::UBLK_IO_OP_WRITE_SAME, 0, 1, MB, 4096),
            Err(-libc::EOPNOTSUPP)
        );
        // Overflowing sector number.
        assert_eq!(
            IoRequest::decode(sys::UBLK_IO_OP_READ, u64::MAX, 1, MB, 4096),
            Err(-libc::EINVAL)
        );
    }

    #[test]
    fn execute_moves_bytes_and_flushes_on_fua() {
        let disk = MemDisk::new(MB as usize);
        let stats = IoStats::default();
        let mut buf = vec![0xabu8; 4096];
        let w = IoRequest::Write {
            off: 4096,
            len: 4096,
            fua: true,
        };
        assert_eq!(execute(&disk, w, &mut buf, &stats), 4096);
        assert_eq!(disk.flushes.load(Ordering::SeqCst), 1);
        let mut out = vec![0u8; 4096];
        assert_eq!(
            execute(
                &disk,
                IoRequest::Read {
                    off: 4096,
                    len: 4096
                },
                &mut out,
                &stats
            ),
            4096
        );
        assert_eq!(out, buf);
        assert_eq!(
            execute(
                &disk,
                IoRequest::Discard {
                    off: 4096,
                    len: 512
                },
                &mut out,
                &stats
            ),
            0
        );
        execute(
            &disk,
            IoRequest::Read {
                off: 4096,
                len: 1024,
            },
            &mut out,
            &stats,
        );
        assert!(out[..512].iter().all(|&b| b == 0));
        assert!(out[512..1024].iter().all(|&b| b == 0xab));
        let c = stats.snapshot();
        assert_eq!(
            (c.writes, c.reads, c.discards, c.flushes, c.errors),
            (1, 2, 1, 1, 0)
        );
    }

    #[test]
    fn execute_returns_engine_errno() {
        let mut disk = MemDisk::new(MB as usize);
        disk.fail_writes = true;
        let stats = IoStats::default();
        let mut buf = vec![1u8; 512];
        let w = IoRequest::Write {
            off: 0,
            len: 512,
            fua: false,
        };
        assert_eq!(execute(&disk, w, &mut buf, &stats), -libc::ENOSPC);
        assert_eq!(stats.snapshot().errors, 1);
    }
}
