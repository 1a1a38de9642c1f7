//! Test doubles for the I/O layer: a device in memory and a wrapper that counts calls.
//! Built for snapmap's own tests and, behind the `testing` feature, for other crates' tests,
//! fuzz targets and benchmarks; a production build carries none of it.

use std::io;
use std::sync::RwLock;

use crate::io::{BlockDev, Identity};

/// An in-memory device, for tests and benchmarks of the engine alone.
pub struct MemDev {
    data: RwLock<Vec<u8>>,
    name: String,
    identity: Option<Identity>,
    grow: bool,
}

impl MemDev {
    /// A zeroed device of `len` bytes that grows on writes past its end when `grow`.
    pub fn new(name: &str, len: u64, grow: bool) -> MemDev {
        MemDev {
            data: RwLock::new(vec![0; len as usize]),
            name: name.to_string(),
            identity: None,
            grow,
        }
    }

    /// The same device reporting `identity` (to test store/origin matching).
    pub fn with_identity(mut self, identity: Identity) -> MemDev {
        self.identity = Some(identity);
        self
    }

    /// A copy of the current contents.
    pub fn contents(&self) -> Vec<u8> {
        self.data.read().map(|d| d.clone()).unwrap_or_default()
    }
}

fn poisoned() -> io::Error {
    io::Error::other("memory device lock poisoned")
}

impl BlockDev for MemDev {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let d = self.data.read().map_err(|_| poisoned())?;
        let off = off as usize;
        buf.fill(0);
        if off < d.len() {
            let n = buf.len().min(d.len() - off);
            buf[..n].copy_from_slice(&d[off..off + n]);
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let mut d = self.data.write().map_err(|_| poisoned())?;
        let end = off as usize + buf.len();
        if end > d.len() {
            if !self.grow {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            d.resize(end, 0);
        }
        d[off as usize..end].copy_from_slice(buf);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.data.read().map_err(|_| poisoned())?.len() as u64)
    }

    fn can_grow(&self) -> bool {
        self.grow
    }

    fn identity(&self) -> Option<Identity> {
        self.identity.clone()
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

/// Wraps a device and counts the calls made to it (tests and benchmarks assert on these).
pub struct CountingDev {
    inner: std::sync::Arc<dyn BlockDev>,
    /// Completed `read_at` calls.
    pub reads: std::sync::atomic::AtomicU64,
    /// Completed `write_at` and `zero_range` calls.
    pub writes: std::sync::atomic::AtomicU64,
    /// Bytes written.
    pub write_bytes: std::sync::atomic::AtomicU64,
    /// Completed `sync` calls.
    pub syncs: std::sync::atomic::AtomicU64,
}

impl CountingDev {
    /// Counts calls to `inner`.
    pub fn new(inner: std::sync::Arc<dyn BlockDev>) -> Self {
        CountingDev {
            inner,
            reads: 0.into(),
            writes: 0.into(),
            write_bytes: 0.into(),
            syncs: 0.into(),
        }
    }

    /// (reads, writes, syncs) so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.reads.load(Relaxed),
            self.writes.load(Relaxed),
            self.syncs.load(Relaxed),
        )
    }
}

impl BlockDev for CountingDev {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.inner.read_at(buf, off)?;
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.inner.write_at(buf, off)?;
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.write_bytes
            .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn write_vectored_at(&self, bufs: &[&[u8]], off: u64) -> io::Result<()> {
        self.inner.write_vectored_at(bufs, off)?;
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.write_bytes.fetch_add(
            bufs.iter().map(|b| b.len() as u64).sum(),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()?;
        self.syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn can_grow(&self) -> bool {
        self.inner.can_grow()
    }
    fn zero_range(&self, off: u64, len: u64) -> io::Result<()> {
        self.inner.zero_range(off, len)?;
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn identity(&self) -> Option<Identity> {
        self.inner.identity()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
    fn grow_to(&self, len: u64) -> io::Result<()> {
        self.inner.grow_to(len)
    }
    fn sector_size(&self) -> u32 {
        self.inner.sector_size()
    }
}
