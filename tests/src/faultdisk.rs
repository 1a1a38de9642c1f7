//! A disk with a volatile write cache, for crash tests. Writes land in a cache until `sync`;
//! a power cut keeps the synced image and, of what was cached, whatever a seeded random choice
//! says: nothing, everything, a random subset torn at sector granularity, or for every sector
//! any of the values it held since the last sync (a sector can even keep an older cached
//! value while a newer one is lost). Several disks share one [`PowerDomain`], so origin and
//! store lose power at the same instant. I/O errors can be injected at chosen operations.
//!
//! The sector, 512 bytes unless [`CrashDisk::with_sector`] says otherwise, is the unit a
//! sector persists in: a 4Kn disk (`with_sector(4096)`) never keeps part of a 4 KiB sector.
//! A write covering part of a sector persists as the whole sector as reads saw it right
//! after that write, which is what the device was sent (the page cache, or an O_DIRECT
//! bounce, read the rest of the sector and wrote it back with the new bytes).

use std::io;
use std::sync::{Arc, Mutex};

use fixtures::Rng;
use snapmap::BlockDev;

/// The default sector size: the unit a torn write tears at.
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
    sector: usize,
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
            sector: SECTOR,
        }
    }

    /// The same disk with `sector`-byte sectors (a power of two, at least 512): a power cut
    /// keeps or loses whole sectors of that size, and [`BlockDev::sector_size`] reports it.
    pub fn with_sector(mut self, sector: usize) -> Self {
        assert!(
            sector.is_power_of_two() && sector >= 512,
            "sector size {sector}"
        );
        self.sector = sector;
        self
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
        let sector = self.sector;
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
                // What each write sent the device: its sectors as reads saw them right after.
                let mut cur = img.clone();
                for (off, data) in &st.cache {
                    apply(&mut cur, *off, data);
                    let sectors = self.sectors(*off, data.len());
                    match rng.below(3) {
                        0 => {}
                        1 => {
                            for s in sectors {
                                copy_sector(&mut img, &cur, s, sector);
                            }
                        }
                        _ => {
                            // Torn: a random subset of its sectors arrived.
                            for s in sectors {
                                if rng.below(2) == 0 {
                                    copy_sector(&mut img, &cur, s, sector);
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
                    for s in self.sectors(*off, data.len()) {
                        let end = ((s + 1) * sector).min(cur.len());
                        versions
                            .entry(s)
                            .or_default()
                            .push(cur[s * sector..end].to_vec());
                    }
                }
                for (s, vs) in versions {
                    let k = rng.below(vs.len() as u64 + 1) as usize;
                    if k > 0 {
                        let v = &vs[k - 1];
                        img[s * sector..s * sector + v.len()].copy_from_slice(v);
                    }
                }
            }
        }
        img
    }

    /// The sectors a write of `len` bytes at `off` touches.
    fn sectors(&self, off: u64, len: usize) -> std::ops::Range<usize> {
        if len == 0 {
            return 0..0;
        }
        let off = off as usize;
        off / self.sector..(off + len).div_ceil(self.sector)
    }
}

/// Copies sector `s` (`sector` bytes; less at the end of `src`) from `src` into `img`.
fn copy_sector(img: &mut Vec<u8>, src: &[u8], s: usize, sector: usize) {
    let start = s * sector;
    let end = ((s + 1) * sector).min(src.len());
    apply(img, start as u64, &src[start..end]);
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

    fn sector_size(&self) -> u32 {
        self.sector as u32
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

    /// A 4Kn disk loses or keeps whole 4 KiB sectors (never 512 bytes of one), still tears
    /// a multi-sector write between sectors, and persists a write covering part of a sector
    /// as the whole sector it sent.
    #[test]
    fn a_4k_sector_disk_tears_only_at_4k_boundaries() {
        let p = PowerDomain::new(None);
        let d = CrashDisk::new("d", &p, vec![0; 4 * 4096], false).with_sector(4096);
        assert_eq!(d.sector_size(), 4096);
        d.write_at(&[1; 4096], 0).unwrap();
        d.sync().unwrap();
        d.write_at(&[2; 3 * 4096], 4096).unwrap();
        // Part of sector 0 (whose other bytes are synced) and part of sector 3 (whose other
        // bytes were written, unsynced, just before).
        d.write_at(&[3; 100], 1000).unwrap();
        d.write_at(&[4; 100], 3 * 4096 + 1000).unwrap();
        let (mut torn, mut partial) = (false, false);
        for seed in 0..256 {
            let img = d.after_power_cut(&mut Rng::new(seed));
            let sec = |s: usize| &img[s * 4096..(s + 1) * 4096];
            let mut s0 = vec![1u8; 4096];
            s0[1000..1100].fill(3);
            assert!(
                sec(0).iter().all(|&x| x == 1) || sec(0) == s0,
                "seed {seed}: sector 0 torn or lost its synced bytes"
            );
            for s in 1..3 {
                assert!(
                    sec(s).iter().all(|&x| x == 0) || sec(s).iter().all(|&x| x == 2),
                    "seed {seed}: sector {s} torn inside"
                );
            }
            let mut s3 = vec![2u8; 4096];
            s3[1000..1100].fill(4);
            assert!(
                sec(3).iter().all(|&x| x == 0) || sec(3).iter().all(|&x| x == 2) || sec(3) == s3,
                "seed {seed}: sector 3 holds bytes no write sent it"
            );
            partial |= sec(3) == s3 && sec(2)[0] == 0;
            torn |= sec(1)[0] != sec(2)[0];
        }
        assert!(
            torn,
            "no power cut tore the three-sector write between sectors"
        );
        assert!(partial, "no power cut kept the partial-sector write alone");
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
