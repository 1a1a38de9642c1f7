//! The volume: today's device kind, a backing disk and its store served by the engine.
//! Plain reads and writes may go straight to the origin on the queue's ring
//! ([`IoBackend::origin_fd`]); everything else runs through the engine.

use crate::io_op::IoBackend;
use std::io;
use std::os::fd::RawFd;

/// Keeps the engine's errno (ENOSPC for a full store, EINVAL, EIO) and logs
/// its message, which names the object and the fix.
fn engine_err(op: &str, off: u64, e: snapmap::Error) -> io::Error {
    tracing::warn!(op, off, error = %e, "engine refused a request");
    io::Error::from_raw_os_error(e.errno())
}

impl IoBackend for snapmap::Engine {
    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        snapmap::Engine::read(self, off, buf).map_err(|e| engine_err("read", off, e))
    }
    fn write(&self, off: u64, buf: &[u8]) -> io::Result<()> {
        snapmap::Engine::write(self, off, buf).map_err(|e| engine_err("write", off, e))
    }
    fn flush(&self) -> io::Result<()> {
        snapmap::Engine::flush(self).map_err(|e| engine_err("flush", 0, e))
    }
    fn discard(&self, off: u64, len: u64) -> io::Result<()> {
        snapmap::Engine::discard(self, off, len).map_err(|e| engine_err("discard", off, e))
    }
    fn write_zeroes(&self, off: u64, len: u64) -> io::Result<()> {
        snapmap::Engine::write_zeroes(self, off, len)
            .map_err(|e| engine_err("write_zeroes", off, e))
    }
    fn origin_fd(&self) -> Option<RawFd> {
        snapmap::Engine::origin_fd(self)
    }
    fn sector_size(&self) -> u32 {
        snapmap::Engine::sector_size(self)
    }
    fn try_direct_write<'a>(&'a self, off: u64, buf: &[u8]) -> Option<snapmap::DirectWrite<'a>> {
        snapmap::Engine::try_direct_write(self, off, buf)
    }
    fn try_cow_write<'a>(&'a self, off: u64, buf: &[u8]) -> Option<snapmap::CowWrite<'a>> {
        snapmap::Engine::try_cow_write(self, off, buf)
    }
    fn commit_preserves(&self, batch: Vec<snapmap::Preserve>) -> Vec<i32> {
        snapmap::Engine::commit_preserves(self, batch)
            .into_iter()
            .map(|r| match r {
                Ok(()) => 0,
                Err(e) => -engine_err("preserve", 0, e)
                    .raw_os_error()
                    .unwrap_or(libc::EIO),
            })
            .collect()
    }
}
