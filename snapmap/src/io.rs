//! The I/O layer under the engine: one small trait for "a thing with bytes at offsets that can
//! be made durable". Files and block devices implement it here; tests wrap it to count I/O or to
//! inject faults and power cuts, which is why the engine never touches a `File` directly.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use crate::buf::{AlignedBuf, IO_ALIGN};

/// What identifies an origin across restarts: its path and, for files, its inode.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// Canonical path when opened.
    pub path: String,
    /// st_dev of the file (0 when unknown).
    pub dev: u64,
    /// st_ino of the file (0 when unknown).
    pub ino: u64,
}

impl Identity {
    /// Whether `other` is plausibly the same origin: the same path or the same inode. A file
    /// that was moved keeps its inode; one that was copied keeps its path if copied back.
    pub fn matches(&self, other: &Identity) -> bool {
        (!self.path.is_empty() && self.path == other.path)
            || (self.ino != 0 && self.dev == other.dev && self.ino == other.ino)
    }
}

/// A byte-addressed device: the origin or the store.
///
/// Writes may sit in a volatile cache until [`BlockDev::sync`] returns; the engine's ordering
/// rules are written against exactly that model.
// A device is never "empty" in a useful sense; `len` is its size.
#[allow(clippy::len_without_is_empty)]
pub trait BlockDev: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `off`. Bytes past the end read as zero.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    /// Writes all of `buf` at `off`, growing the device if it can grow.
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()>;
    /// Writes `bufs` back to back from `off`, as one write of their concatenation. The default
    /// joins them in one buffer; a device that can take the pieces as they are (a file,
    /// through `pwritev`) overrides it and saves the copy.
    fn write_vectored_at(&self, bufs: &[&[u8]], off: u64) -> io::Result<()> {
        match bufs {
            [one] => self.write_at(one, off),
            _ => self.write_at(&joined(bufs), off),
        }
    }
    /// Makes every completed write durable.
    fn sync(&self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether writes past the current end are possible (files) or not (block devices).
    fn can_grow(&self) -> bool;
    /// Makes `len` bytes at `off` read as zero; may deallocate them.
    fn zero_range(&self, off: u64, len: u64) -> io::Result<()> {
        let chunk = vec![0u8; (len.min(1 << 20)) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len() as u64) as usize;
            self.write_at(&chunk[..n], off + done)?;
            done += n as u64;
        }
        Ok(())
    }
    /// Who this is, for matching a store to its origin.
    fn identity(&self) -> Option<Identity> {
        None
    }
    /// A name for error messages.
    fn name(&self) -> String;
    /// The file descriptor behind this device, for callers that issue their own I/O on it
    /// (e.g. io_uring); `None` when there is none.
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// The unit, in bytes, in which this device takes I/O at its own alignment and persists
    /// it (a torn write loses whole sectors): the logical sector of a block device, or the
    /// direct-I/O alignment of a file opened with O_DIRECT; 512 when the page cache takes any
    /// alignment. A frontend advertises it as its logical block size so that it is never sent
    /// a request this device would refuse.
    fn sector_size(&self) -> u32 {
        512
    }
    /// Makes the device at least `len` bytes long, reserving the space where it can, so that
    /// running out of room shows up here rather than in a later write.
    fn grow_to(&self, len: u64) -> io::Result<()> {
        if self.len()? >= len {
            return Ok(());
        }
        self.write_at(&[0], len - 1)
    }
}

/// The size in bytes of the block device open as `f` (a file's length is not its size).
pub fn block_device_size(f: &File) -> io::Result<u64> {
    // _IOR(0x12, 114, u64)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer we pass, which outlives the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64 as _, &mut size) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Whether O_DIRECT can take `buf` at `off` on a device with `sector`-byte sectors.
fn is_aligned(buf: &[u8], off: u64, sector: u32) -> bool {
    (buf.as_ptr() as usize).is_multiple_of(IO_ALIGN)
        && buf.len().is_multiple_of(sector as usize)
        && off.is_multiple_of(sector as u64)
}

/// `BLKSSZGET`: a block device's logical sector size.
const BLKSSZGET: libc::c_ulong = 0x1268;

/// The alignment O_DIRECT needs on `file`, in bytes (a power of two from 512 to
/// [`IO_ALIGN`]): a block device's logical sector size, or for a regular file what `statx`
/// reports as its direct-I/O offset alignment (the sector of the disk under the
/// filesystem). 512 when neither can be told, as for every disk before 4Kn drives.
fn direct_alignment(file: &File, block_device: bool) -> u32 {
    let got = if block_device {
        let mut n: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer we own.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET as _, &mut n) };
        if r == 0 {
            n as u32
        } else {
            0
        }
    } else {
        // SAFETY: statx fills the zeroed struct we own; the empty path with AT_EMPTY_PATH
        // names the descriptor itself.
        let mut st: libc::statx = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::statx(
                file.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                libc::STATX_DIOALIGN,
                &mut st,
            )
        };
        if r == 0 && st.stx_mask & libc::STATX_DIOALIGN != 0 {
            st.stx_dio_offset_align
        } else {
            0
        }
    };
    if got.is_power_of_two() && (512..=IO_ALIGN as u32).contains(&got) {
        got
    } else {
        512
    }
}

/// Who keeps block device `path` from being claimed, as well as this process can tell: its
/// mount points (in this mount namespace), the devices stacked on it (device-mapper, md,
/// LVM: `/sys/class/block/NAME/holders`) and the processes holding a `flock` on it (another
/// snapblk). Empty when nothing shows, e.g. a mount in another namespace or a program that
/// opened it with `O_EXCL` and took no lock.
pub fn claimants(path: &Path) -> Vec<String> {
    let Ok(md) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let rdev = md.rdev();
    let mm = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    let mut out = Vec::new();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for l in mountinfo.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 4 && f[2] == mm {
            out.push(format!("a mount at {}", f[4]));
        }
    }
    if let Ok(rd) = std::fs::read_dir(format!("/sys/dev/block/{mm}/holders")) {
        for e in rd.flatten() {
            out.push(format!("device {}", e.file_name().to_string_lossy()));
        }
    }
    // flock keys in /proc/locks name the device node's own inode.
    out.extend(flock_holders(md.dev(), md.ino()));
    out
}

/// Processes other than this one holding a `flock` on the inode (`dev`, `ino`), as
/// "pid N (command)", from `/proc/locks` (empty when that cannot be read).
fn flock_holders(dev: u64, ino: u64) -> Vec<String> {
    let key = format!("{:02x}:{:02x}:{}", libc::major(dev), libc::minor(dev), ino);
    let me = std::process::id().to_string();
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    let mut out: Vec<String> = locks
        .lines()
        .filter_map(|l| {
            // "1: FLOCK  ADVISORY  WRITE 28889 fe:00:10068248 0 EOF"
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 5 && f[1] == "FLOCK" && f[5] == key && f[4] != me).then(|| {
                let comm = std::fs::read_to_string(format!("/proc/{}/comm", f[4]))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_default();
                format!("pid {} ({comm})", f[4])
            })
        })
        .collect();
    out.dedup();
    out
}

/// A regular file or a block device.
pub struct FileDev {
    file: File,
    path: PathBuf,
    direct: bool,
    block_device: bool,
    /// What O_DIRECT needs here (512 when not direct): I/O not aligned to it is bounced.
    sector: u32,
}

impl FileDev {
    /// Opens an existing file or block device for reading and writing.
    ///
    /// A block device opened for writing is claimed exclusively (`O_EXCL`): while this
    /// `FileDev` lives the kernel refuses to mount it, to let LVM, md or device-mapper claim
    /// it, and any other exclusive open (another restore onto it, another engine), all with
    /// EBUSY; and a device already claimed so fails here with EBUSY. The advisory `flock`
    /// ([`FileDev::try_lock`]) only keeps out programs that ask for it. Regular files have no
    /// such claim (Linux ignores O_EXCL without O_CREAT on them), so they rely on the lock.
    pub fn open(path: &Path, direct: bool, read_only: bool) -> io::Result<FileDev> {
        let mut o = OpenOptions::new();
        o.read(true).write(!read_only);
        let mut flags = if direct { libc::O_DIRECT } else { 0 };
        if !read_only && std::fs::metadata(path)?.file_type().is_block_device() {
            flags |= libc::O_EXCL;
        }
        o.custom_flags(flags);
        let file = o.open(path)?;
        let block_device = file.metadata()?.file_type().is_block_device();
        let sector = if direct {
            direct_alignment(&file, block_device)
        } else {
            512
        };
        Ok(FileDev {
            file,
            path: path.to_path_buf(),
            direct,
            block_device,
            sector,
        })
    }

    /// Creates a new regular file (failing if it exists).
    pub fn create(path: &Path, direct: bool) -> io::Result<FileDev> {
        let mut o = OpenOptions::new();
        o.read(true).write(true).create_new(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let file = o.open(path)?;
        let sector = if direct {
            direct_alignment(&file, false)
        } else {
            512
        };
        Ok(FileDev {
            file,
            path: path.to_path_buf(),
            direct,
            block_device: false,
            sector,
        })
    }

    /// Whether this is a block device (fixed size, claimed exclusively when writable).
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Sets a regular file's length (sparse when growing).
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        if self.block_device {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{} is a block device and cannot be resized",
                    self.path.display()
                ),
            ));
        }
        self.file.set_len(len)
    }

    /// Takes an advisory `flock` on the file (shared when `exclusive` is false) without
    /// waiting. Returns false when another open file description holds a conflicting lock —
    /// another process, or another open in this one. The lock lives as long as this `FileDev`.
    pub fn try_lock(&self, exclusive: bool) -> io::Result<bool> {
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        loop {
            // SAFETY: flock on a descriptor we own; no pointers involved.
            let r = unsafe { libc::flock(self.file.as_raw_fd(), op | libc::LOCK_NB) };
            if r == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => return Ok(false),
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
    }

    /// Processes holding a `flock` on this file, as "pid N (command)", from `/proc/locks`
    /// (empty when that cannot be read). For error messages: who is in the way.
    pub fn lock_holders(&self) -> Vec<String> {
        match self.file.metadata() {
            Ok(md) => flock_holders(md.dev(), md.ino()),
            Err(_) => Vec::new(),
        }
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn read_raw(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        // Short reads only happen at end of file; bytes past the end read as zero.
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], off + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    return Ok(());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// `bufs` copied back to back into one pooled (O_DIRECT-aligned) buffer.
fn joined(bufs: &[&[u8]]) -> crate::scratch::Scratch {
    let mut out = crate::scratch::Scratch::take(bufs.iter().map(|b| b.len()).sum());
    let mut at = 0;
    for b in bufs {
        out[at..at + b.len()].copy_from_slice(b);
        at += b.len();
    }
    out
}

/// Writes every byte of `bufs` back to back from `off`, retrying short writes and EINTR.
fn pwritev_all(file: &File, bufs: &[&[u8]], mut off: u64) -> io::Result<()> {
    // Pieces that follow each other in memory (the blocks of one preserve) go as one iovec:
    // the kernel reads plain memory ranges, so joining them forms no Rust slice across
    // allocations. Empty pieces are left out, so a short write always means progress.
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(bufs.len());
    for b in bufs.iter().filter(|b| !b.is_empty()) {
        let base = b.as_ptr() as *mut libc::c_void;
        match iov.last_mut() {
            Some(last) if (last.iov_base as usize).wrapping_add(last.iov_len) == base as usize => {
                last.iov_len += b.len();
            }
            _ => iov.push(libc::iovec {
                iov_base: base,
                iov_len: b.len(),
            }),
        }
    }
    let mut first = 0;
    while first < iov.len() {
        // The kernel takes at most IOV_MAX (1024) pieces per call.
        let n = (iov.len() - first).min(1024);
        // SAFETY: every iovec describes (part of) a slice of `bufs`, valid for reads for the
        // duration of the call.
        let r = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov[first..].as_ptr(),
                n as libc::c_int,
                off as libc::off_t,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        off += r as u64;
        let mut done = r as usize;
        while done > 0 && first < iov.len() {
            let v = &mut iov[first];
            if done >= v.iov_len {
                done -= v.iov_len;
                first += 1;
            } else {
                v.iov_base = (v.iov_base as usize + done) as *mut libc::c_void;
                v.iov_len -= done;
                done = 0;
            }
        }
    }
    Ok(())
}

impl BlockDev for FileDev {
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(&self.file))
    }

    fn sector_size(&self) -> u32 {
        // Only O_DIRECT refuses smaller units. Through the page cache a 4Kn device takes any
        // request, and advertising 4096 there would stop a filesystem made with 512-byte
        // sectors (XFS's default on such a volume until now) from mounting.
        self.sector
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let sector = self.sector as u64;
        if self.direct && !is_aligned(buf, off, self.sector) {
            // O_DIRECT wants sector-aligned offsets, lengths and memory: read the covering
            // sectors into an aligned buffer.
            let start = off / sector * sector;
            let end = (off + buf.len() as u64).next_multiple_of(sector);
            let mut bounce = AlignedBuf::zeroed((end - start) as usize);
            self.read_raw(&mut bounce, start)?;
            let at = (off - start) as usize;
            buf.copy_from_slice(&bounce[at..at + buf.len()]);
            return Ok(());
        }
        self.read_raw(buf, off)
    }

    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let sector = self.sector as u64;
        if self.direct && !is_aligned(buf, off, self.sector) {
            let start = off / sector * sector;
            let end = (off + buf.len() as u64).next_multiple_of(sector);
            let mut bounce = AlignedBuf::zeroed((end - start) as usize);
            if start != off || end != off + buf.len() as u64 {
                // Partial sectors: keep the bytes around the write (callers that need this to
                // be atomic hold a lock on the range; the engine only writes whole blocks).
                self.read_raw(&mut bounce, start)?;
            }
            let at = (off - start) as usize;
            bounce[at..at + buf.len()].copy_from_slice(buf);
            return self.file.write_all_at(&bounce, start);
        }
        self.file.write_all_at(buf, off)
    }

    fn write_vectored_at(&self, bufs: &[&[u8]], off: u64) -> io::Result<()> {
        match bufs {
            [one] => self.write_at(one, off),
            // Pieces O_DIRECT cannot take as they are: write_at's bounce handling covers the
            // joined buffer.
            _ if self.direct && !bufs.iter().all(|b| is_aligned(b, off, self.sector)) => {
                self.write_at(&joined(bufs), off)
            }
            _ => pwritev_all(&self.file, bufs, off),
        }
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        if self.block_device {
            return block_device_size(&self.file);
        }
        Ok(self.file.metadata()?.len())
    }

    fn can_grow(&self) -> bool {
        !self.block_device
    }

    fn zero_range(&self, off: u64, len: u64) -> io::Result<()> {
        if !self.block_device {
            use std::os::fd::AsRawFd;
            // SAFETY: plain syscall on an fd we own.
            let r = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off as libc::off_t,
                    len as libc::off_t,
                )
            };
            if r == 0 {
                return Ok(());
            }
        }
        // No hole punching here (block device or unsupported filesystem): write the zeroes.
        let chunk = AlignedBuf::zeroed((len.min(1 << 20)) as usize);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len() as u64) as usize;
            self.write_at(&chunk[..n], off + done)?;
            done += n as u64;
        }
        Ok(())
    }

    fn grow_to(&self, len: u64) -> io::Result<()> {
        let cur = self.len()?;
        if cur >= len {
            return Ok(());
        }
        if self.block_device {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on an fd we own.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                0,
                cur as libc::off_t,
                (len - cur) as libc::off_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            // No preallocation on this filesystem: a sparse extension still records the size.
            return self.file.set_len(len);
        }
        Err(e)
    }

    fn identity(&self) -> Option<Identity> {
        let meta = self.file.metadata().ok()?;
        let path = std::fs::canonicalize(&self.path)
            .unwrap_or_else(|_| self.path.clone())
            .display()
            .to_string();
        Some(Identity {
            path,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemDev;

    #[test]
    fn aligned_buf_is_aligned_and_zeroed() {
        let b = AlignedBuf::zeroed(8192);
        assert_eq!(b.as_ptr() as usize % IO_ALIGN, 0);
        assert!(b.iter().all(|&x| x == 0));
    }

    #[test]
    fn file_dev_reads_past_end_as_zero_and_direct_io_handles_unaligned_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = FileDev::create(&p, false).unwrap();
        f.write_at(&[7u8; 100], 10).unwrap();
        let mut buf = [1u8; 200];
        f.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..10], &[0; 10]);
        assert_eq!(&buf[10..110], &[7; 100]);
        assert!(buf[110..].iter().all(|&x| x == 0));
        drop(f);
        // O_DIRECT may be unsupported on tmpfs; only exercise it where it opens.
        if let Ok(d) = FileDev::open(&p, true, false) {
            let mut v = vec![0u8; 4097];
            d.write_at(&vec![9u8; 4096], 4096).unwrap();
            d.read_at(&mut v[1..], 4096).unwrap();
            assert!(v[1..].iter().all(|&x| x == 9));
        }
    }

    /// Pieces of a vectored write land back to back, past IOV_MAX pieces and empty ones,
    /// through pwritev (aligned pieces under O_DIRECT), the joining fallback (unaligned
    /// pieces under O_DIRECT) and the trait's default (a memory device).
    #[test]
    fn vectored_writes_land_back_to_back() {
        // Every other 4 KiB of one buffer: 1,500 pieces no two of which are adjacent, so the
        // write needs more than IOV_MAX iovecs whatever the allocator does.
        let mut spread = AlignedBuf::zeroed(2 * 1500 * 4096);
        for (i, c) in spread.chunks_mut(4096).enumerate() {
            c.fill((i % 251) as u8);
        }
        let mut pieces: Vec<&[u8]> = spread.chunks(4096).step_by(2).collect();
        pieces.insert(3, &[]);
        // Pieces adjacent in memory (joined into one iovec).
        let one = AlignedBuf::from_slice(&[0xab; 3 * 4096]);
        pieces.extend(one.chunks(4096));
        let expect: Vec<u8> = pieces.concat();
        let check = |d: &dyn BlockDev, off: u64, want: &[u8]| {
            let mut back = vec![0u8; want.len()];
            d.read_at(&mut back, off).unwrap();
            assert!(
                back == want,
                "{}: vectored write read back differently",
                d.name()
            );
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v");
        let f = FileDev::create(&p, false).unwrap();
        f.write_vectored_at(&pieces, 8192).unwrap();
        check(&f, 8192, &expect);
        drop(f);
        if let Ok(d) = FileDev::open(&p, true, false) {
            d.write_vectored_at(&pieces[..50], 0).unwrap();
            check(&d, 0, &pieces[..50].concat());
            let odd: [&[u8]; 3] = [&[1u8; 100], &[2u8; 412], &[3u8; 4096]];
            d.write_vectored_at(&odd, 512).unwrap();
            check(&d, 512, &odd.concat());
        }
        let m = MemDev::new("mem", 0, true);
        m.write_vectored_at(&pieces[..10], 4096).unwrap();
        check(&m, 4096, &pieces[..10].concat());
    }

    #[test]
    fn zero_range_reads_back_zero() {
        let dir = tempfile::tempdir().unwrap();
        let f = FileDev::create(&dir.path().join("z"), false).unwrap();
        f.write_at(&[5u8; 16384], 0).unwrap();
        f.zero_range(4096, 8192).unwrap();
        let mut buf = [1u8; 16384];
        f.read_at(&mut buf, 0).unwrap();
        assert!(buf[..4096].iter().all(|&x| x == 5));
        assert!(buf[4096..12288].iter().all(|&x| x == 0));
        assert!(buf[12288..].iter().all(|&x| x == 5));
    }
}
