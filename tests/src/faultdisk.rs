//! A disk with a volatile write cache, for crash tests. Writes land in a cache until `sync`;
//! a power cut keeps the synced image and, of what was cached, whatever a seeded random choice
//! says: nothing, everything, a random subset torn at sector granularity, or for every sector
//! any of the values it held since the last sync (a sector can even keep an older cached
//! value while a newer one is lost). Several disks share one [`PowerDomain`], so origin and
//! store lose power at the same instant. I/O errors can be injected at chosen operations.

use std::io;
use std::sync::{Arc, Mutex};

use fixtures::Rng;
use snapmap::BlockDev;

/// Sector size: the unit a torn write tears at.
pub const SECTOR: usize = 512;

/// What kind of error to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The call fails with EIO and does nothing.
    Eio,
    /// The call fails with ENOSPC and does nothing (writes only).
    NoSpace,
}

#[derive(Default)]
struct Domain {
    ops: u64,
    crash_at: Option<u64>,
    crashed: bool,
    /// (operation index, disk name or "" for any, fault); each fires once.
    faults: Vec<(u64, String, Fault)>,
    /// Reads so far, and (read index, disk) of reads to fail with EIO.
    reads: u64,
    read_faults: Vec<(u64, String)>,
}

/// Shared power and operation counter for a set of disks.
#[derive(Clone, Default)]
pub struct PowerDomain(Arc<Mutex<Domain>>);

impl PowerDomain {
    /// A domain whose power fails when the `crash_at`-th mutating operation (write, zero, sync;
    /// counted from 0 across all its disks) is attempted.
    pub fn new(crash_at: Option<u64>) -> Self {
        PowerDomain(Arc::new(Mutex::new(Domain {
            crash_at,
            ..Domain::default()
        })))
    }

    /// Injects `fault` at mutating operation `at` on disk `disk` ("" for whichever disk).
    pub fn inject(&self, at: u64, disk: &str, fault: Fault) {
        self.lock().faults.push((at, disk.to_string(), fault));
    }

    /// Fails the `at`-th read (counted from 0 across all disks) of disk `disk` with EIO.
    pub fn inject_read(&self, at: u64, disk: &str) {
        self.lock().read_faults.push((at, disk.to_string()));
    }

    /// Reads so far.
    pub fn reads(&self) -> u64 {
        self.lock().reads
    }

    fn read_tick(&self, disk: &str) -> io::Result<()> {
        let mut d = self.lock();
        if d.crashed {
            return Err(io::Error::other("power is off"));
        }
        let n = d.reads;
        d.reads += 1;
        if let Some(i) = d
            .read_faults
            .iter()
            .position(|(at, dk)| *at == n && (dk.is_empty() || dk == disk))
        {
            d.read_faults.remove(i);
            return Err(io::Error::from_raw_os_error(libc_eio()));
        }
        Ok(())
    }

    /// Mutating operations so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Whether the power has failed.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Domain> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one mutating operation on `disk`; errors if the power is off, fails now, or a
    /// fault fires.
    fn tick(&self, disk: &str) -> io::Result<()> {
        let mut d = self.lock();
        if d.crashed {
            return Err(io::Error::other("power is off"));
        }
        let n = d.ops;
        d.ops += 1;
        if d.crash_at == Some(n) {
            d.crashed = true;
            return Err(io::Error::other("power cut"));
        }
        if let Some(i) = d
            .faults
            .iter()
            .position(|(at, dk, _)| *at == n && (dk.is_empty() || dk == disk))
        {
            let (_, _, f) = d.faults.remove(i);
            return Err(match f {
                Fault::Eio => io::Error::from_raw_os_error(libc_eio()),
                Fault::NoSpace => io::Error::from_raw_os_error(28),
            });
        }
        Ok(())
    }
}

fn libc_eio() -> i32 {
    5
}

struct State {
    durable: Vec<u8>,
    current: Vec<u8>,
    /// Writes since the last sync, oldest first: (offset, bytes).
    cache: Vec<(u64, Vec<u8>)>,
}

/// One disk of a power domain.
pub struct CrashDisk {
    name: String,
    power: PowerDomain,
    grow: bool,
    st: Mutex<State>,
    sync_delay: std::time::Duration,
}

impl CrashDisk {
    /// A disk holding `image`, durable.
    pub fn new(name: &str, power: &PowerDomain, image: Vec<u8>, grow: bool) -> Self {
        CrashDisk {
            name: name.to_string(),
            power: power.clone(),
            grow,
            st: Mutex::new(State {
                durable: image.clone(),
                current: image,
                cache: Vec::new(),
            }),
            sync_delay: std::time::Duration::ZERO,
        }
    }

    /// The same disk with syncs that take `d` (like a real cache flush), so that concurrent
    /// callers pile up behind one.
    pub fn with_sync_delay(mut self, d: std::time::Duration) -> Self {
        self.sync_delay = d;
        self
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the disk holds now, as seen by reads (cache included).
    pub fn current(&self) -> Vec<u8> {
        self.st().current.clone()
    }

    /// The image after a power cut, chosen by `rng`.
    pub fn after_power_cut(&self, rng: &mut Rng) -> Vec<u8> {
        let st = self.st();
        let len = st.current.len().max(st.durable.len());
        let mut img = st.durable.clone();
        img.resize(len, 0);
        match rng.below(4) {
            0 => {}
            1 => {
                for (off, data) in &st.cache {
                    apply(&mut img, *off, data);
                }
            }
            2 => {
                for (off, data) in &st.cache {
                    match rng.below(3) {
                        0 => {}
                        1 => apply(&mut img, *off, data),
                        _ => {
                            // Torn: a random subset of its sectors arrived.
                            for (k, chunk) in data.chunks(SECTOR).enumerate() {
                                if rng.below(2) == 0 {
                                    apply(&mut img, *off + (k * SECTOR) as u64, chunk);
                                }
                            }
                        }
                    }
                }
            }
            _ => {
                // Every sector independently keeps its synced value or any value a cached
                // write gave it.
                let mut versions: std::collections::BTreeMap<usize, Vec<Vec<u8>>> =
                    std::collections::BTreeMap::new();
                let mut cur = img.clone();
                for (off, data) in &st.cache {
                    apply(&mut cur, *off, data);
                    let first = *off as usize / SECTOR;
                    let last = (*off as usize + data.len()).div_ceil(SECTOR);
                    for s in first..last {
                        let end = ((s + 1) * SECTOR).min(cur.len());
                        versions
                            .entry(s)
                            .or_default()
                            .push(cur[s * SECTOR..end].to_vec());
                    }
                }
                for (s, vs) in versions {
                    let k = rng.below(vs.len() as u64 + 1) as usize;
                    if k > 0 {
                        let v = &vs[k - 1];
                        img[s * SECTOR..s * SECTOR + v.len()].copy_from_slice(v);
                    }
                }
            }
        }
        img
    }
}

fn apply(img: &mut Vec<u8>, off: u64, data: &[u8]) {
    let end = off as usize + data.len();
    if end > img.len() {
        img.resize(end, 0);
    }
    img[off as usize..end].copy_from_slice(data);
}

impl BlockDev for CrashDisk {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.power.read_tick(&self.name)?;
        let st = self.st();
        buf.fill(0);
        let off = off as usize;
        if off < st.current.len() {
            let n = buf.len().min(st.current.len() - off);
            buf[..n].copy_from_slice(&st.current[off..off + n]);
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let mut st = self.st();
        if !self.grow && off as usize + buf.len() > st.current.len() {
            return Err(io::Error::from_raw_os_error(28));
        }
        self.power.tick(&self.name)?;
        apply(&mut st.current, off, buf);
        st.cache.push((off, buf.to_vec()));
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        if !self.sync_delay.is_zero() {
            std::thread::sleep(self.sync_delay);
        }
        let mut st = self.st();
        self.power.tick(&self.name)?;
        st.durable = st.current.clone();
        st.cache.clear();
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.st().current.len() as u64)
    }

    fn can_grow(&self) -> bool {
        self.grow
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_writes_survive_every_power_cut_and_unsynced_ones_may_not() {
        let p = PowerDomain::new(None);
        let d = CrashDisk::new("d", &p, vec![0; 4096], false);
        d.write_at(&[1; 512], 0).unwrap();
        d.sync().unwrap();
        d.write_at(&[2; 512], 512).unwrap();
        let mut lost = false;
        for seed in 0..64 {
            let img = d.after_power_cut(&mut Rng::new(seed));
            assert!(img[..512].iter().all(|&x| x == 1));
            lost |= img[512] == 0;
            assert!(img[512..1024].iter().all(|&x| x == img[512]));
        }
        assert!(lost, "some power cut should lose the unsynced write");
    }

    #[test]
    fn the_power_fails_at_the_chosen_operation_and_stays_off() {
        let p = PowerDomain::new(Some(1));
        let d = CrashDisk::new("d", &p, vec![0; 4096], false);
        d.write_at(&[1; 512], 0).unwrap();
        assert!(d.sync().is_err());
        assert!(d.write_at(&[1; 512], 0).is_err());
        let mut b = [0u8; 1];
        assert!(d.read_at(&mut b, 0).is_err());
    }
}
