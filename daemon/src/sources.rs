//! Block sources for device kinds whose blocks come from somewhere other than the
//! volume's live image: [`SnapshotSource`] serves one snapshot of the engine, frozen.

use snapmap::Engine;
use std::io;
use std::sync::Arc;
use ublk_target::source::BlockSource;

/// One snapshot of a running engine, read through its delta chain. What it returns
/// never changes while the snapshot exists: later writes to the origin preserve the
/// snapshot's blocks before overwriting them. The source pins the snapshot for as long as
/// it lives, so the snapshot cannot be deleted from under a device serving it.
pub struct SnapshotSource {
    engine: Arc<Engine>,
    name: String,
    pin: u64,
}

impl SnapshotSource {
    /// A source for snapshot `name`, or the engine's error when it does not exist.
    pub fn new(engine: Arc<Engine>, name: &str) -> snapmap::Result<SnapshotSource> {
        let pin = engine.pin_snapshot(name)?;
        Ok(SnapshotSource {
            engine,
            name: name.to_string(),
            pin,
        })
    }

    /// The snapshot's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for SnapshotSource {
    fn drop(&mut self) {
        self.engine.unpin_snapshot(self.pin);
    }
}

impl BlockSource for SnapshotSource {
    fn size(&self) -> u64 {
        self.engine.size()
    }

    fn block_size(&self) -> u32 {
        self.engine.block_size()
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.engine
            .read_snapshot(&self.name, off, buf)
            .map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapmap::{BlockDev, MemDev, OpenOptions};
    use ublk_target::io_op::IoBackend;
    use ublk_target::source::ReadOnly;

    #[test]
    fn a_snapshot_source_keeps_its_content_while_the_origin_changes() {
        let origin: Arc<dyn BlockDev> = Arc::new(MemDev::new("origin", 1 << 20, false));
        let store: Arc<dyn BlockDev> = Arc::new(MemDev::new("store", 0, true));
        let engine = Arc::new(Engine::format(origin, store, &OpenOptions::default()).unwrap());
        engine.write(0, &[7u8; 8192]).unwrap();
        engine.create_snapshot("s1").unwrap();
        let dev = ReadOnly::new(SnapshotSource::new(engine.clone(), "s1").unwrap());
        engine.write(4096, &[9u8; 4096]).unwrap();
        let mut buf = vec![0u8; 8192];
        dev.read(0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        let e = dev.write(0, &[1u8; 4096]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        assert!(dev.read_only());
        assert!(SnapshotSource::new(engine.clone(), "nope").is_err());
        // Pinned while served, free again once the device goes.
        assert!(engine.delete_snapshot("s1").is_err());
        drop(dev);
        engine.delete_snapshot("s1").unwrap();
    }
}
