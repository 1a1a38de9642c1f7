//! The local side: what the shipper needs from a volume, decoupled from the engine.

use crate::error::SourceError;
use roaring::RoaringBitmap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A volume that can freeze ship points and answer changed-block queries.
///
/// `snapmap::Engine` implements it with internal (hidden) snapshots; [`MemSource`] is an
/// in-memory implementation for tests.
pub trait PointSource: Send + Sync {
    /// Tracking block size in bytes (a power of two).
    fn block_size(&self) -> u32;
    /// Volume size in bytes.
    fn size(&self) -> u64;
    /// Freezes the current image as point `name` (O(1) in the engine).
    fn create_point(&self, name: &str) -> Result<(), SourceError>;
    /// Drops point `name`.
    fn delete_point(&self, name: &str) -> Result<(), SourceError>;
    /// True when point `name` exists.
    fn has_point(&self, name: &str) -> Result<bool, SourceError>;
    /// Blocks that may differ between points `from` and `to` (a superset is fine).
    fn changed_blocks(&self, from: &str, to: &str) -> Result<RoaringBitmap, SourceError>;
    /// Reads the frozen image of point `name` at byte offset `off`.
    fn read_point(&self, name: &str, off: u64, buf: &mut [u8]) -> Result<(), SourceError>;
}

impl<T: PointSource + ?Sized> PointSource for Arc<T> {
    fn block_size(&self) -> u32 {
        (**self).block_size()
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn create_point(&self, name: &str) -> Result<(), SourceError> {
        (**self).create_point(name)
    }
    fn delete_point(&self, name: &str) -> Result<(), SourceError> {
        (**self).delete_point(name)
    }
    fn has_point(&self, name: &str) -> Result<bool, SourceError> {
        (**self).has_point(name)
    }
    fn changed_blocks(&self, from: &str, to: &str) -> Result<RoaringBitmap, SourceError> {
        (**self).changed_blocks(from, to)
    }
    fn read_point(&self, name: &str, off: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        (**self).read_point(name, off, buf)
    }
}

impl PointSource for snapmap::Engine {
    fn block_size(&self) -> u32 {
        snapmap::Engine::block_size(self)
    }
    fn size(&self) -> u64 {
        snapmap::Engine::size(self)
    }
    fn create_point(&self, name: &str) -> Result<(), SourceError> {
        self.create_internal_snapshot(name)
            .map(|_| ())
            .map_err(|e| Box::new(e) as SourceError)
    }
    fn delete_point(&self, name: &str) -> Result<(), SourceError> {
        self.delete_snapshot(name)
            .map_err(|e| Box::new(e) as SourceError)
    }
    fn has_point(&self, name: &str) -> Result<bool, SourceError> {
        Ok(self.all_snapshots().iter().any(|s| s.name == name))
    }
    fn changed_blocks(&self, from: &str, to: &str) -> Result<RoaringBitmap, SourceError> {
        snapmap::Engine::changed_blocks(self, from, Some(to))
            .map_err(|e| Box::new(e) as SourceError)
    }
    fn read_point(&self, name: &str, off: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        self.read_snapshot(name, off, buf)
            .map_err(|e| Box::new(e) as SourceError)
    }
}

/// Called before every `read_point` with the number of reads done so far; an `Err` fails
/// that read. Lets tests inject faults (kill a server, drop a connection) mid-ship.
pub type ReadHook = Box<dyn Fn(u64) -> Result<(), String> + Send + Sync>;

struct MemInner {
    live: Vec<u8>,
    gen: u64,
    log: Vec<(u64, u32)>,
    points: HashMap<String, (u64, Vec<u8>)>,
    reads: u64,
}

/// An in-memory volume with exact changed-block tracking, for tests and examples.
pub struct MemSource {
    block_size: u32,
    inner: Mutex<MemInner>,
    hook: Mutex<Option<ReadHook>>,
}

fn err(msg: String) -> SourceError {
    msg.into()
}

impl MemSource {
    /// A zero-filled volume of `size` bytes tracked in `block_size` blocks.
    pub fn new(block_size: u32, size: u64) -> MemSource {
        MemSource {
            block_size,
            inner: Mutex::new(MemInner {
                live: vec![0; size as usize],
                gen: 0,
                log: Vec::new(),
                points: HashMap::new(),
                reads: 0,
            }),
            hook: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `data` at `off` into the live image.
    pub fn write(&self, off: u64, data: &[u8]) {
        let bs = self.block_size as u64;
        let mut g = self.lock();
        g.gen += 1;
        let gen = g.gen;
        let end = off + data.len() as u64;
        g.live[off as usize..end as usize].copy_from_slice(data);
        for b in off / bs..end.div_ceil(bs) {
            g.log.push((gen, b as u32));
        }
    }

    /// A copy of the live image.
    pub fn image(&self) -> Vec<u8> {
        self.lock().live.clone()
    }

    /// A copy of point `name`'s frozen image.
    pub fn point_image(&self, name: &str) -> Option<Vec<u8>> {
        self.lock().points.get(name).map(|p| p.1.clone())
    }

    /// Names of the existing points, sorted.
    pub fn point_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().points.keys().cloned().collect();
        v.sort();
        v
    }

    /// Installs (or clears) the fault-injection hook.
    pub fn set_read_hook(&self, hook: Option<ReadHook>) {
        *self.hook.lock().unwrap_or_else(|p| p.into_inner()) = hook;
    }
}

impl PointSource for MemSource {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn size(&self) -> u64 {
        self.lock().live.len() as u64
    }
    fn create_point(&self, name: &str) -> Result<(), SourceError> {
        let mut g = self.lock();
        if g.points.contains_key(name) {
            return Err(err(format!("point {name} already exists")));
        }
        let p = (g.gen, g.live.clone());
        g.points.insert(name.to_string(), p);
        Ok(())
    }
    fn delete_point(&self, name: &str) -> Result<(), SourceError> {
        self.lock()
            .points
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| err(format!("no point {name}")))
    }
    fn has_point(&self, name: &str) -> Result<bool, SourceError> {
        Ok(self.lock().points.contains_key(name))
    }
    fn changed_blocks(&self, from: &str, to: &str) -> Result<RoaringBitmap, SourceError> {
        let g = self.lock();
        let f = g
            .points
            .get(from)
            .ok_or_else(|| err(format!("no point {from}")))?
            .0;
        let t = g
            .points
            .get(to)
            .ok_or_else(|| err(format!("no point {to}")))?
            .0;
        Ok(g.log
            .iter()
            .filter(|(gen, _)| *gen > f && *gen <= t)
            .map(|(_, b)| *b)
            .collect())
    }
    fn read_point(&self, name: &str, off: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        let n = {
            let mut g = self.lock();
            g.reads += 1;
            g.reads - 1
        };
        if let Some(h) = self.hook.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            h(n).map_err(err)?;
        }
        let g = self.lock();
        let img = &g
            .points
            .get(name)
            .ok_or_else(|| err(format!("no point {name}")))?
            .1;
        let end = off as usize + buf.len();
        if end > img.len() {
            return Err(err(format!("read {off}+{} beyond the volume", buf.len())));
        }
        buf.copy_from_slice(&img[off as usize..end]);
        Ok(())
    }
}
