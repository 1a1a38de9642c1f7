//! The physical limit: plain io_uring I/O on an O_DIRECT file, one thread keeping `qd`
//! requests in flight. Everything the engine is compared with is measured through here.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use io_uring::{opcode, squeue, types, IoUring};
use snapmap::AlignedBuf;

/// Direction of a run of raw I/Os.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// `pread`-like reads into the buffers.
    Read,
    /// `pwrite`-like writes from the buffers.
    Write,
}

/// Low 16 bits of `user_data`: the buffer slot; the rest: the phase (copy) or op index.
const SLOT_BITS: u64 = 16;

fn ring(qd: usize) -> Result<IoUring> {
    let entries = (qd.max(1) as u32).next_power_of_two();
    IoUring::new(entries).context(
        "create an io_uring: the kernel refused (io_uring disabled by sysctl or seccomp?); \
         run on a Linux >= 5.6 host that allows io_uring",
    )
}

/// A ring with `qd` aligned buffers of `len` bytes: each buffer is a slot, owned by one
/// request in flight from its submission until its completion is reaped.
struct Slots {
    ring: IoUring,
    bufs: Vec<AlignedBuf>,
    /// The operation (index into the caller's list) each busy slot serves.
    op_of: Vec<usize>,
    free: Vec<usize>,
}

impl Slots {
    fn new(qd: usize, len: usize) -> Result<Self> {
        let qd = qd.clamp(1, 1 << SLOT_BITS);
        Ok(Slots {
            ring: ring(qd)?,
            bufs: (0..qd).map(|_| AlignedBuf::zeroed(len)).collect(),
            op_of: vec![0; qd],
            free: (0..qd).rev().collect(),
        })
    }

    /// Submits what is queued, waits for one completion at least, and returns every
    /// completion there is as (user data, result).
    fn submit_and_reap(&mut self, what: impl FnOnce() -> String) -> Result<Vec<(u64, i32)>> {
        self.ring.submit_and_wait(1).with_context(what)?;
        Ok(self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect())
    }
}

fn push(ring: &mut IoUring, e: &squeue::Entry) -> Result<()> {
    // SAFETY: every buffer an entry points at lives in `bufs` of the caller, which is not
    // touched until the entry's completion has been reaped.
    let r = unsafe { ring.submission().push(e) };
    if r.is_err() {
        bail!("io_uring submission queue full: this is a bug in the bench's in-flight accounting");
    }
    Ok(())
}

fn check_len(res: i32, want: usize, what: &str, name: &str, off: u64) -> Result<()> {
    if res < 0 {
        return Err(std::io::Error::from_raw_os_error(-res))
            .with_context(|| format!("{what} at byte {off} of {name}"));
    }
    if res as usize != want {
        bail!(
            "short {what} at byte {off} of {name}: {res} of {want} bytes (is the file \
             preallocated to its full size?)"
        );
    }
    Ok(())
}

/// Runs one I/O of `len` bytes at each of `offsets` of `(file, its name)` with `qd` in flight;
/// `fill(i, buf)` prepares the buffer of write `i`, `check(i, buf)` inspects the result of
/// read `i`. Returns the wall time from first submission to last completion.
pub fn run(
    (file, name): (&File, &str),
    dir: Dir,
    offsets: &[u64],
    len: usize,
    qd: usize,
    mut fill: impl FnMut(usize, &mut [u8]),
    mut check: impl FnMut(usize, &[u8]) -> Result<()>,
) -> Result<Duration> {
    let mut q = Slots::new(qd, len)?;
    let fd = types::Fd(file.as_raw_fd());
    let n = offsets.len();
    let (mut next, mut done) = (0usize, 0usize);
    let start = Instant::now();
    while done < n {
        while next < n {
            let Some(slot) = q.free.pop() else { break };
            let off = offsets[next];
            let buf = &mut q.bufs[slot];
            let e = match dir {
                Dir::Write => {
                    fill(next, buf);
                    opcode::Write::new(fd, buf.as_ptr(), len as u32)
                        .offset(off)
                        .build()
                }
                Dir::Read => opcode::Read::new(fd, buf.as_mut_ptr(), len as u32)
                    .offset(off)
                    .build(),
            };
            q.op_of[slot] = next;
            push(&mut q.ring, &e.user_data(slot as u64))?;
            next += 1;
        }
        let reaped = q.submit_and_reap(|| format!("io_uring submit on {name}"))?;
        for (ud, res) in reaped {
            let slot = ud as usize;
            let i = q.op_of[slot];
            let what = if dir == Dir::Read { "read" } else { "write" };
            check_len(res, len, what, name, offsets[i])?;
            if dir == Dir::Read {
                check(i, &q.bufs[slot])?;
            }
            q.free.push(slot);
            done += 1;
        }
    }
    Ok(start.elapsed())
}

/// Copies `len`-byte chunks `(src_off, dst_off)` from `src` to `dst` with `qd` chunks in
/// flight (each read, then written from the same buffer), then syncs `dst`. Returns the time.
pub fn copy(
    src: &File,
    dst: &File,
    dst_name: &str,
    pairs: &[(u64, u64)],
    len: usize,
    qd: usize,
) -> Result<Duration> {
    let mut q = Slots::new(qd, len)?;
    let (sfd, dfd) = (types::Fd(src.as_raw_fd()), types::Fd(dst.as_raw_fd()));
    let n = pairs.len();
    let (mut next, mut done) = (0usize, 0usize);
    let start = Instant::now();
    while done < n {
        while next < n {
            let Some(slot) = q.free.pop() else { break };
            let e = opcode::Read::new(sfd, q.bufs[slot].as_mut_ptr(), len as u32)
                .offset(pairs[next].0)
                .build()
                .user_data(slot as u64);
            q.op_of[slot] = next;
            push(&mut q.ring, &e)?;
            next += 1;
        }
        let reaped =
            q.submit_and_reap(|| format!("io_uring submit while copying to {dst_name}"))?;
        for (ud, res) in reaped {
            let slot = (ud & ((1 << SLOT_BITS) - 1)) as usize;
            let written = ud >> SLOT_BITS == 1;
            let (s, d) = pairs[q.op_of[slot]];
            if written {
                check_len(res, len, "write", dst_name, d)?;
                q.free.push(slot);
                done += 1;
            } else {
                check_len(res, len, "read", "the copy source", s)?;
                let e = opcode::Write::new(dfd, q.bufs[slot].as_ptr(), len as u32)
                    .offset(d)
                    .build()
                    .user_data(slot as u64 | 1 << SLOT_BITS);
                push(&mut q.ring, &e)?;
            }
        }
    }
    dst.sync_data()
        .with_context(|| format!("sync {dst_name} after the raw copy"))?;
    Ok(start.elapsed())
}
