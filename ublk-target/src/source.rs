//! Device kinds whose blocks come from elsewhere (a snapshot, a shipped point) plug into
//! the queue machinery through [`BlockSource`]: the daemon implements the source, and
//! [`ReadOnly`] turns it into an [`IoBackend`] the queues serve like any other.

use crate::io_op::IoBackend;
use std::io;

/// Where a read-only device kind reads its blocks.
pub trait BlockSource: Send + Sync {
    /// Device size in bytes.
    fn size(&self) -> u64;
    /// The source's block size in bytes (the device's physical sector size).
    fn block_size(&self) -> u32;
    /// Reads `buf.len()` bytes at `off`; `off + buf.len()` never exceeds [`size`](Self::size).
    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// Serves a [`BlockSource`] as a read-only device. The kernel is told the disk is
/// read-only, but in-kernel writers are only warned about that, so every write,
/// discard and write-zeroes that still arrives fails here with `EROFS`; a flush has
/// nothing to make durable.
pub struct ReadOnly<S> {
    source: S,
}

impl<S: BlockSource> ReadOnly<S> {
    /// Wraps `source`.
    pub fn new(source: S) -> ReadOnly<S> {
        ReadOnly { source }
    }

    /// The wrapped source.
    pub fn source(&self) -> &S {
        &self.source
    }
}

fn read_only() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

impl<S: BlockSource> IoBackend for ReadOnly<S> {
    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.source.read(off, buf)
    }
    fn read_only(&self) -> bool {
        true
    }
    fn write(&self, _off: u64, _buf: &[u8]) -> io::Result<()> {
        Err(read_only())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn discard(&self, _off: u64, _len: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn write_zeroes(&self, _off: u64, _len: u64) -> io::Result<()> {
        Err(read_only())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io_op::{execute, IoRequest, IoStats};

    struct Pattern;
    impl BlockSource for Pattern {
        fn size(&self) -> u64 {
            1 << 16
        }
        fn block_size(&self) -> u32 {
            4096
        }
        fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = ((off as usize + i) / 4096) as u8;
            }
            Ok(())
        }
    }

    #[test]
    fn a_read_only_source_serves_reads_and_fails_every_change_with_erofs() {
        let dev = ReadOnly::new(Pattern);
        let stats = IoStats::default();
        let mut buf = vec![0u8; 8192];
        let r = execute(
            &dev,
            IoRequest::Read {
                off: 4096,
                len: 8192,
            },
            &mut buf,
            &stats,
        );
        assert_eq!(r, 8192);
        assert!(buf[..4096].iter().all(|&b| b == 1) && buf[4096..].iter().all(|&b| b == 2));
        for req in [
            IoRequest::Write {
                off: 0,
                len: 4096,
                fua: false,
            },
            IoRequest::Discard { off: 0, len: 4096 },
            IoRequest::WriteZeroes { off: 0, len: 4096 },
        ] {
            assert_eq!(
                execute(&dev, req, &mut buf, &stats),
                -libc::EROFS,
                "{req:?}"
            );
        }
        assert_eq!(execute(&dev, IoRequest::Flush, &mut buf, &stats), 0);
    }
}
