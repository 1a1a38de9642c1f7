//! What a device is made of: files, geometry and queue shape. Written as
//! `config.json` in the run directory so `recover` can rebuild the daemon.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Default number of hardware queues.
pub const DEFAULT_QUEUES: u16 = 1;
/// Default queue depth: requests in flight per queue.
pub const DEFAULT_DEPTH: u16 = 64;
/// Largest single request in bytes (becomes the queue's max_sectors).
pub const DEFAULT_IO_BUF_BYTES: u32 = 512 * 1024;

/// Everything the daemon needs to serve (or re-serve) one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    /// Requested ublk device id; `None` lets the kernel pick one.
    pub id: Option<u32>,
    /// Origin: the backing file or disk holding live data (absolute path).
    pub backing: PathBuf,
    /// Snapshot store file (absolute path).
    pub store: PathBuf,
    /// Origin size in bytes when the backing file is to be created/extended.
    pub size: Option<u64>,
    /// Tracking block size used when the store is formatted.
    pub block_size: u32,
    /// Number of ublk hardware queues.
    pub nr_queues: u16,
    /// Requests in flight per queue.
    pub depth: u16,
    /// Engine worker threads; 0 picks `min(nr_queues * depth, 64)`.
    pub workers: u16,
    /// Largest request in bytes.
    pub io_buf_bytes: u32,
    /// Open origin and store with O_DIRECT.
    pub direct_io: bool,
    /// Cap on the store's size; writes that need a preserve beyond it fail
    /// with ENOSPC (every snapshot stays intact).
    #[serde(default)]
    pub max_store_bytes: Option<u64>,
    /// Accept a store whose recorded backing path and inode both differ from the
    /// backing's (the pair was moved or copied together; `create --adopt`), and record
    /// the new identity in it. Written only when set, so specs from older builds and
    /// for older builds read the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt_origin: bool,
}

impl DeviceSpec {
    /// A spec with default geometry for the given files.
    pub fn new(backing: PathBuf, store: PathBuf) -> DeviceSpec {
        DeviceSpec {
            id: None,
            backing,
            store,
            size: None,
            block_size: 4096,
            nr_queues: DEFAULT_QUEUES,
            depth: DEFAULT_DEPTH,
            workers: 0,
            io_buf_bytes: DEFAULT_IO_BUF_BYTES,
            direct_io: false,
            max_store_bytes: None,
            adopt_origin: false,
        }
    }

    /// The store path used when none is given: `<backing>.snapstore`.
    pub fn default_store(backing: &std::path::Path) -> PathBuf {
        let mut s = backing.as_os_str().to_owned();
        s.push(".snapstore");
        PathBuf::from(s)
    }

    /// Worker threads actually started.
    pub fn effective_workers(&self) -> usize {
        if self.workers > 0 {
            self.workers as usize
        } else {
            (self.nr_queues as usize * self.depth as usize).clamp(1, 64)
        }
    }

    /// Checks the numbers the kernel would reject with a bare EINVAL.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !(1..=32).contains(&self.nr_queues) {
            return Err(SpecError::Queues(self.nr_queues));
        }
        if !(1..=4096).contains(&self.depth) {
            return Err(SpecError::Depth(self.depth));
        }
        if !self.block_size.is_power_of_two() || !(4096..=65536).contains(&self.block_size) {
            return Err(SpecError::BlockSize(self.block_size));
        }
        if !self.io_buf_bytes.is_multiple_of(4096) || !(4096..=1 << 20).contains(&self.io_buf_bytes)
        {
            return Err(SpecError::IoBuffer(self.io_buf_bytes));
        }
        if let Some(size) = self.size {
            if size == 0 || !size.is_multiple_of(512) {
                return Err(SpecError::Size(size));
            }
        }
        if !self.backing.is_absolute() || !self.store.is_absolute() {
            return Err(SpecError::RelativePath);
        }
        Ok(())
    }
}

/// A device spec the kernel would refuse. Each variant names the setting and the value; the
/// frontend that took the value (a command-line flag, say) names it in its own terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Hardware queues outside 1..=32.
    #[error("{0} queues out of range: use 1..=32")]
    Queues(u16),
    /// Queue depth outside 1..=4096.
    #[error("queue depth {0} out of range: use 1..=4096")]
    Depth(u16),
    /// Block size not a power of two from 4 KiB to 64 KiB.
    #[error("block size {0} invalid: use a power of two from 4K to 64K")]
    BlockSize(u32),
    /// I/O buffer size not a multiple of 4 KiB up to 1 MiB.
    #[error("io buffer size {0} invalid: use a multiple of 4K up to 1M")]
    IoBuffer(u32),
    /// Device size zero or not a multiple of 512 bytes.
    #[error("size {0} invalid: use a non-zero multiple of 512 bytes")]
    Size(u64),
    /// The backing or store path is relative (the daemon runs in another directory).
    #[error("backing and store paths must be absolute")]
    RelativePath,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_store_appends_suffix() {
        assert_eq!(
            DeviceSpec::default_store(std::path::Path::new("/data/disk.img")),
            PathBuf::from("/data/disk.img.snapstore")
        );
    }

    #[test]
    fn validate_rejects_bad_geometry() {
        let mut s = DeviceSpec::new("/a".into(), "/b".into());
        assert!(s.validate().is_ok());
        s.block_size = 3000;
        assert_eq!(s.validate(), Err(SpecError::BlockSize(3000)));
        s.block_size = 4096;
        s.depth = 0;
        assert_eq!(s.validate(), Err(SpecError::Depth(0)));
        s.depth = 64;
        s.size = Some(1000);
        assert_eq!(s.validate(), Err(SpecError::Size(1000)));
        s.size = None;
        s.backing = "rel".into();
        assert_eq!(s.validate(), Err(SpecError::RelativePath));
        assert!(SpecError::RelativePath.to_string().contains("absolute"));
    }

    #[test]
    fn spec_round_trips_through_json() {
        let mut s = DeviceSpec::new("/a".into(), "/b".into());
        s.id = Some(3);
        s.size = Some(1 << 30);
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<DeviceSpec>(&text).unwrap(), s);
    }
}
