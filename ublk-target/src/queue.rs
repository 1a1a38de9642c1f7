//! One ublk hardware queue: an io_uring with one async task per tag.
//!
//! Each tag task fetches a request and serves it in one of two ways:
//! - **on the queue's own ring**, when the engine would do nothing but one
//!   origin read or write: reads of the live image, and plain writes the
//!   engine admits ([`IoBackend::try_direct_write`]: nothing to preserve, no
//!   possible identical rewrite, locks free). The backing file is registered
//!   with the ring, as in libublk's loop example, and the engine still gets
//!   its bookkeeping (write locks held until completion, new checksums);
//! - **as a copy-on-write driven from the queue**, for a whole-block first
//!   write after a snapshot ([`IoBackend::try_cow_write`]): the originals are
//!   read on the ring, the preserves of one event-loop turn are committed in
//!   one call — on the queue thread while commits are quicker than a thread
//!   hand-off, else by the commit thread (which also takes everything queued
//!   meanwhile) — and only once they are durable
//!   are the origin writes issued on the ring — the ordering rule, with two
//!   cross-thread hand-offs per batch instead of several per request;
//! - **on the worker pool** for everything else (compare reads, partial
//!   blocks, FUA, flush, discard), and as the fallback whenever a direct I/O
//!   does not complete in full: the engine then runs the request with its
//!   own error reporting.
//!
//! Worker results come back through the queue's [`Completions`]: one eventfd
//! read in flight, drained by a reaper task that wakes the tag tasks. Jobs are
//! handed to the pool once per event-loop turn, as a batch. The queue thread
//! never blocks on the engine.

use crate::io_op::{IoBackend, IoRequest, IoStats};
use crate::worker::{CommitHandle, Completions, Job, PoolHandle, PreserveJob, TagSlot};
use io_uring::{opcode, types};
use libublk::io::{UblkDev, UblkQueue};
use libublk::uring_async::ublk_submit_sqe_async;
use libublk::{BufDesc, UblkError, UblkUringData};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Index of the origin among the ring's registered files (0 is the ublk
/// char device, registered by libublk).
pub const ORIGIN_FIXED_FD: u32 = 1;

/// What a queue thread serves requests with.
#[derive(Clone)]
pub struct QueueCtx {
    /// Engine workers.
    pub pool: PoolHandle,
    /// The commit thread for copy-on-write preserves.
    pub commits: CommitHandle,
    /// The engine.
    pub backend: Arc<dyn IoBackend>,
    /// Device counters.
    pub stats: Arc<IoStats>,
    /// Device size in bytes.
    pub dev_size: u64,
    /// Whether the origin is registered with the ring at [`ORIGIN_FIXED_FD`].
    pub direct: bool,
}

/// A tag's result slot, filled by the reaper.
#[derive(Default)]
struct Waiter {
    res: Cell<Option<i32>>,
    waker: RefCell<Option<Waker>>,
}

struct WaitResult<'a>(&'a Waiter);

impl Future for WaitResult<'_> {
    type Output = i32;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        match self.0.res.take() {
            Some(r) => Poll::Ready(r),
            None => {
                *self.0.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Queue-thread state shared by its tasks.
struct Local {
    ctx: QueueCtx,
    done: Arc<Completions>,
    waiters: Vec<Waiter>,
    /// Jobs to hand to the pool at the end of this event-loop turn.
    pending: RefCell<Vec<Job>>,
    /// Preserves to hand to the commit thread at the end of this turn.
    preserves: RefCell<Vec<PreserveJob>>,
}

impl Local {
    fn has_jobs(&self) -> bool {
        !self.pending.borrow().is_empty() || !self.preserves.borrow().is_empty()
    }

    fn flush_jobs(&self) {
        let mut p = self.pending.borrow_mut();
        if let Err(jobs) = self.ctx.pool.submit_batch(&mut p) {
            // The pool is gone (shutdown): fail the requests.
            for j in jobs {
                self.deliver(j.tag, -libc::EIO);
            }
        }
        drop(p);
        let mut c = self.preserves.borrow_mut();
        if c.is_empty() {
            return;
        }
        let st = &self.ctx.stats;
        if self.ctx.commits.inline_worthwhile() {
            // Cheap commits: run this batch here (see worker::INLINE_COMMIT_MAX).
            let jobs = std::mem::take(&mut *c);
            drop(c);
            let tags: Vec<u16> = jobs.iter().map(|j| j.tag).collect();
            let start = std::time::Instant::now();
            let res = self
                .ctx
                .backend
                .commit_preserves(jobs.into_iter().map(|j| j.preserve).collect());
            self.ctx.commits.record(start.elapsed());
            st.commit_batches_inline.fetch_add(1, Ordering::Relaxed);
            for (i, t) in tags.into_iter().enumerate() {
                self.deliver(t, res.get(i).copied().unwrap_or(-libc::EIO));
            }
            return;
        }
        st.commit_batches_thread.fetch_add(1, Ordering::Relaxed);
        if let Err(jobs) = self.ctx.commits.submit_batch(&mut c) {
            for j in jobs {
                self.deliver(j.tag, -libc::EIO);
            }
        }
    }

    fn deliver(&self, tag: u16, res: i32) {
        if let Some(w) = self.waiters.get(tag as usize) {
            w.res.set(Some(res));
            if let Some(k) = w.waker.borrow_mut().take() {
                k.wake();
            }
        }
    }
}

/// Serves queue `qid` of `dev` until the device stops. Runs on the queue thread.
pub fn serve_queue(qid: u16, dev: &UblkDev, ctx: QueueCtx) {
    // Declared before the queue so it outlives the ring, which may still
    // hold a read into its landing buffer when the queue goes down.
    let done = match Completions::new() {
        Ok(d) => Arc::new(d),
        Err(e) => {
            tracing::error!(qid, error = %e, "cannot create the queue's completion eventfd");
            return;
        }
    };
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            tracing::error!(qid, error = %e, "cannot set up ublk queue");
            return;
        }
    };
    let depth = q.dev.dev_info.queue_depth as usize;
    let local = Rc::new(Local {
        ctx,
        done: done.clone(),
        waiters: (0..depth).map(|_| Waiter::default()).collect(),
        pending: RefCell::new(Vec::with_capacity(depth)),
        preserves: RefCell::new(Vec::with_capacity(depth)),
    });
    let exe = Rc::new(smol::LocalExecutor::new());
    let mut tasks = Vec::new();
    for tag in q.tags() {
        let q = q.clone();
        let local = local.clone();
        tasks.push(exe.spawn(async move {
            match tag_task(&q, tag, &local).await {
                Ok(()) | Err(UblkError::QueueIsDown) => {}
                Err(e) => tracing::error!(qid, tag, error = %e, "tag task failed"),
            }
        }));
    }
    let reaper = {
        let local = local.clone();
        exe.spawn(async move { reap(&local).await })
    };
    let exe2 = exe.clone();
    let local2 = local.clone();
    smol::block_on(exe.run(async move {
        let run_ops = || loop {
            while exe2.try_tick() {}
            if !local2.has_jobs() {
                break;
            }
            local2.flush_jobs();
        };
        let finished = || tasks.iter().all(|t| t.is_finished());
        if let Err(e) = libublk::wait_and_handle_io_events(&q, Some(20), run_ops, finished).await {
            tracing::error!(qid, error = %e, "queue event loop failed");
        }
    }));
    drop(reaper);
    tracing::info!(qid, "queue stopped");
}

/// Delivers worker results to their tag tasks, one eventfd read at a time.
async fn reap(local: &Local) {
    let mut got = Vec::with_capacity(local.waiters.len());
    let mut failures = 0u32;
    loop {
        let sqe = opcode::Read::new(
            types::Fd(local.done.eventfd()),
            local.done.eventfd_landing(),
            8,
        )
        .build();
        match ublk_submit_sqe_async(sqe, UblkUringData::Target as u64).await {
            Ok(8) => failures = 0,
            Ok(r) if r == -libc::EINTR || r == -libc::EAGAIN => {}
            Ok(r) => {
                tracing::error!(res = r, "completion eventfd read failed");
                failures += 1;
            }
            Err(e) => {
                tracing::error!(error = %e, "completion eventfd read submit failed");
                failures += 1;
            }
        }
        // Deliver whatever is there even after a failed read: a worker may
        // have pushed without needing to signal.
        local.done.take(&mut got);
        for &(tag, res) in &got {
            local.deliver(tag, res);
        }
        if failures >= 1000 {
            tracing::error!(
                "giving up on the completion eventfd; the queue cannot complete engine requests"
            );
            return;
        }
    }
}

async fn tag_task(q: &UblkQueue<'_>, tag: u16, local: &Local) -> Result<(), UblkError> {
    let buf_bytes = q.dev.dev_info.max_io_buf_bytes as usize;
    let slot = Arc::new(TagSlot::new(buf_bytes));
    q.submit_io_prep_cmd(
        tag,
        BufDesc::Slice(slot.buf().as_slice()),
        0,
        Some(slot.buf()),
    )
    .await?;
    loop {
        let iod = q.get_iod(tag);
        let res = match IoRequest::decode(
            iod.op_flags,
            iod.start_sector,
            iod.nr_sectors,
            local.ctx.dev_size,
            buf_bytes,
        ) {
            Err(errno) => {
                tracing::warn!(
                    op_flags = iod.op_flags,
                    start_sector = iod.start_sector,
                    nr_sectors = iod.nr_sectors,
                    errno,
                    "rejected a request from the driver"
                );
                errno
            }
            Ok(req) => serve(local, tag, &slot, req).await,
        };
        q.submit_io_commit_cmd(tag, BufDesc::Slice(slot.buf().as_slice()), res)
            .await?;
    }
}

/// Serves one request: directly on the ring when possible, else on the pool.
async fn serve(local: &Local, tag: u16, slot: &Arc<TagSlot>, req: IoRequest) -> i32 {
    if local.ctx.direct {
        let served = match req {
            IoRequest::Read { off, len } => direct_read(local, slot, off, len).await,
            IoRequest::Write {
                off,
                len,
                fua: false,
            } => match direct_write(local, slot, off, len).await {
                Some(r) => Some(r),
                None => cow_write(local, tag, slot, off, len).await,
            },
            _ => None,
        };
        if let Some(res) = served {
            return res;
        }
    }
    run_on_pool(local, tag, slot, req).await
}

/// One origin read or write of the tag's buffer on the queue's ring; the
/// number of bytes moved, or a negative errno.
async fn origin_io(write: bool, slot: &TagSlot, off: u64, len: u32) -> i32 {
    origin_io_at(write, slot.buf().as_mut_ptr(), off, len).await
}

/// One origin read into, or write from, `len` bytes at `ptr`, which must stay
/// valid (and, for a read, unaliased) until the returned future completes.
async fn origin_io_at(write: bool, ptr: *mut u8, off: u64, len: u32) -> i32 {
    let fd = types::Fixed(ORIGIN_FIXED_FD);
    let sqe = if write {
        opcode::Write::new(fd, ptr, len).offset(off).build()
    } else {
        opcode::Read::new(fd, ptr, len).offset(off).build()
    };
    match ublk_submit_sqe_async(sqe, UblkUringData::Target as u64).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "direct origin I/O submit failed");
            -libc::EIO
        }
    }
}

/// A read of the live image; `None` when it did not complete in full (the
/// engine then retries it, zero-filling past the end or reporting the error).
async fn direct_read(local: &Local, slot: &TagSlot, off: u64, len: u32) -> Option<i32> {
    let r = origin_io(false, slot, off, len).await;
    if r != len as i32 {
        return None;
    }
    let s = &local.ctx.stats;
    s.reads.fetch_add(1, Ordering::Relaxed);
    s.direct_reads.fetch_add(1, Ordering::Relaxed);
    s.bytes_read.fetch_add(u64::from(len), Ordering::Relaxed);
    Some(r)
}

/// A plain write the engine admits; `None` when it does not (or the write did
/// not complete in full: the engine then writes it again itself).
async fn direct_write(local: &Local, slot: &TagSlot, off: u64, len: u32) -> Option<i32> {
    // SAFETY: the tag's buffer is ours until the commit; `len` fits in it (decode).
    let data = unsafe { std::slice::from_raw_parts(slot.buf().as_mut_ptr(), len as usize) };
    let finish = local.ctx.backend.try_direct_write(off, data)?;
    let r = origin_io(true, slot, off, len).await;
    let ok = r == len as i32;
    finish(ok);
    if !ok {
        tracing::debug!(
            off,
            len,
            res = r,
            "direct write incomplete; retrying through the engine"
        );
        return None;
    }
    let s = &local.ctx.stats;
    s.writes.fetch_add(1, Ordering::Relaxed);
    s.direct_writes.fetch_add(1, Ordering::Relaxed);
    s.bytes_written.fetch_add(u64::from(len), Ordering::Relaxed);
    Some(r)
}

/// A first write after a snapshot, driven from the queue (see the module
/// docs); `None` when the engine does not admit it or an origin I/O did not
/// complete in full (the engine then runs the whole write itself: blocks
/// already preserved are simply written).
async fn cow_write(local: &Local, tag: u16, slot: &TagSlot, off: u64, len: u32) -> Option<i32> {
    // SAFETY: the tag's buffer is ours until the commit; `len` fits in it (decode).
    let data = unsafe { std::slice::from_raw_parts(slot.buf().as_mut_ptr(), len as usize) };
    let mut cow = local.ctx.backend.try_cow_write(off, data)?;
    for s in cow.reads() {
        // The buffer belongs to `cow`, which outlives this read.
        let dst = cow.old_mut()[s.at..s.at + s.len].as_mut_ptr();
        if origin_io_at(false, dst, s.off, s.len as u32).await != s.len as i32 {
            return None;
        }
    }
    if let Some(p) = cow.prepare(data) {
        let w = &local.waiters[tag as usize];
        w.res.set(None);
        local.preserves.borrow_mut().push(PreserveJob {
            preserve: p,
            tag,
            done: local.done.clone(),
        });
        let res = WaitResult(w).await;
        cow.committed(res == 0);
        if res != 0 {
            // Nothing was written; the engine's error (ENOSPC for a full
            // store) is the request's.
            local.ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
            return Some(res);
        }
    }
    // The preserves are durable: the origin may change now.
    for s in cow.writes() {
        let src = data[s.at..].as_ptr() as *mut u8;
        if origin_io_at(true, src, s.off, s.len as u32).await != s.len as i32 {
            cow.finish(false);
            tracing::debug!(
                off,
                len,
                "copy-on-write origin write incomplete; retrying through the engine"
            );
            return None;
        }
    }
    cow.finish(true);
    let st = &local.ctx.stats;
    st.writes.fetch_add(1, Ordering::Relaxed);
    st.direct_cow_writes.fetch_add(1, Ordering::Relaxed);
    st.bytes_written
        .fetch_add(u64::from(len), Ordering::Relaxed);
    Some(len as i32)
}

/// Hands `req` to a worker (at the end of this event-loop turn) and waits
/// for the reaper to deliver its result.
async fn run_on_pool(local: &Local, tag: u16, slot: &Arc<TagSlot>, req: IoRequest) -> i32 {
    let w = &local.waiters[tag as usize];
    w.res.set(None);
    local.pending.borrow_mut().push(Job {
        req,
        slot: slot.clone(),
        tag,
        done: local.done.clone(),
    });
    WaitResult(w).await
}
