//! One ublk hardware queue: an io_uring driven by one completion handler,
//! with an explicit state per tag.
//!
//! Each request is served in one of three ways:
//! - **on the queue's own ring**, when the engine would do nothing but one
//!   origin read or write: reads of the live image, and plain writes the
//!   engine admits ([`IoBackend::try_direct_write`]: nothing to preserve, no
//!   possible identical rewrite, locks free). The backing file is registered
//!   with the ring, as in libublk's loop example, and the engine still gets
//!   its bookkeeping (write locks held until completion, new checksums);
//! - **as a copy-on-write driven from the queue**, for a whole-block first
//!   write after a snapshot ([`IoBackend::try_cow_write`]): the originals are
//!   read on the ring, the preserves of one batch of completions are committed
//!   in one call — on the queue thread while commits are quicker than a thread
//!   hand-off, else by the commit thread (which also takes everything queued
//!   meanwhile) — and only once they are durable are the origin writes issued
//!   on the ring (the ordering rule; [`snapmap::CowWrite`] refuses anything
//!   else);
//! - **on the worker pool** for everything else (compare reads, partial
//!   blocks, FUA, flush, discard), and as the fallback whenever a direct read
//!   or a copy-on-write's original read does not complete in full: the engine
//!   then runs the request with its own error reporting. A direct or
//!   copy-on-write *origin write* that falls short is redone by the engine on
//!   this thread instead, still holding the snapshot gate (see `redone`).
//!
//! Why a handler and not one async task per tag: every step of a request is
//! a completion on this ring, and a handler called per completion (the model
//! of libublk's loop example in its default mode) serves it without an
//! executor's wake-up and scheduling in between. In the emulated guest the
//! task model cost the example a fifth to a third of its 4 KiB write rate,
//! and leaving it gained snapblk about a fifth (bench/HISTORY.md).
//!
//! Worker and commit-thread results come back through the queue's
//! [`Completions`]: one eventfd read in flight on the ring. Jobs are handed to
//! the pool, and preserves committed, once per batch of completions. The
//! queue thread never blocks on the engine, except for an inline commit
//! while commits are quick (see [`crate::worker::INLINE_COMMIT_MAX`]).

use crate::io_op::{IoBackend, IoRequest, IoStats};
use crate::worker::{CommitHandle, Completions, Job, PoolHandle, PreserveJob, TagSlot};
use io_uring::{opcode, squeue, types};
use libublk::io::{UblkDev, UblkIOCtx, UblkQueue};
use libublk::{BufDesc, BufDescList, UblkIORes};
use snapmap::{CowWrite, DirectWrite, Span};
use std::sync::atomic::Ordering;
use std::sync::Arc;

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

/// What a target I/O on the ring was for (the `op` byte of its user data;
/// `tgt_data` carries the span index of a copy-on-write's I/O).
const OP_READ: u32 = 1;
const OP_WRITE: u32 = 2;
const OP_COW_READ: u32 = 3;
const OP_COW_WRITE: u32 = 4;
const OP_EVENTFD: u32 = 5;

/// Where a copy-on-write stands.
enum CowPhase {
    /// Reading the originals.
    Reading(SpanIo),
    /// Its preserve is queued or being committed.
    Committing,
    /// Writing the new data, after the preserve is durable.
    Writing(SpanIo),
}

/// A copy-on-write's origin I/Os on the ring, one per span.
struct SpanIo {
    spans: Vec<Span>,
    /// I/Os not completed yet.
    left: usize,
    /// Whether one moved fewer bytes than its span.
    failed: bool,
}

impl SpanIo {
    fn new(spans: Vec<Span>) -> Self {
        SpanIo {
            left: spans.len(),
            spans,
            failed: false,
        }
    }

    /// Records span `i`'s result; true once every span has completed.
    fn land(&mut self, i: usize, res: i32) -> bool {
        self.failed |= self.spans.get(i).is_none_or(|s| res != s.len as i32);
        self.left = self.left.saturating_sub(1);
        self.left == 0
    }
}

/// What a tag is doing.
enum TagState<'a> {
    /// No request (waiting for the driver).
    Idle,
    /// A direct origin read is on the ring.
    Read(IoRequest),
    /// An admitted origin write is on the ring.
    Write(IoRequest, DirectWrite<'a>),
    /// A copy-on-write driven from here.
    Cow(IoRequest, Box<CowWrite<'a>>, CowPhase),
    /// A worker runs the request.
    Pool,
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
    let slots = TagSlot::for_queue(dev.alloc_queue_io_bufs());
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => q,
        Err(e) => {
            tracing::error!(qid, error = %e, "cannot set up ublk queue");
            return;
        }
    };
    let Some(first) = slots.first() else {
        tracing::error!(qid, "queue has no tags");
        return;
    };
    let q = match q.submit_fetch_commands_unified(BufDescList::Slices(Some(first.queue_bufs()))) {
        Ok(q) => q,
        Err(e) => {
            tracing::error!(qid, error = %e, "cannot fetch requests on ublk queue");
            return;
        }
    };
    let backend = ctx.backend.clone();
    let mut server = Server {
        backend: &*backend,
        buf_bytes: q.dev.dev_info.max_io_buf_bytes as usize,
        states: slots.iter().map(|_| TagState::Idle).collect(),
        slots,
        ctx,
        done,
        pending: Vec::new(),
        preserves: Vec::new(),
        eventfd_failures: 0,
    };
    server.arm_eventfd(&q);
    q.wait_and_handle_io(|q, tag, io| server.on_cqe(q, tag, io));
    tracing::info!(qid, "queue stopped");
}

/// The queue thread's state.
struct Server<'a> {
    backend: &'a dyn IoBackend,
    ctx: QueueCtx,
    done: Arc<Completions>,
    slots: Vec<Arc<TagSlot>>,
    states: Vec<TagState<'a>>,
    buf_bytes: usize,
    /// Jobs to hand to the pool at the end of this batch of completions.
    pending: Vec<Job>,
    /// Preserves to commit at the end of this batch.
    preserves: Vec<PreserveJob>,
    eventfd_failures: u32,
}

impl<'a> Server<'a> {
    fn on_cqe(&mut self, q: &UblkQueue, tag: u16, io: &UblkIOCtx) {
        if !io.is_tgt_io() {
            self.start(q, tag);
        } else {
            let ud = io.user_data();
            let op = UblkIOCtx::user_data_to_op(ud);
            let span = ((ud >> 24) & 0xffff) as usize;
            if op == OP_EVENTFD {
                self.reap(q, io.result());
            } else {
                self.io_done(q, tag, op, span, io.result());
            }
        }
        if io.is_last_cqe() {
            self.flush(q);
        }
    }

    /// The tag's data, `len` bytes of it. The slice is not tied to `self`
    /// so that the engine can look at it while the tag's state changes;
    /// nothing keeps it beyond the call that asked for it.
    fn data(&self, tag: u16, len: usize) -> &'a [u8] {
        let buf = self.slots[tag as usize].buf();
        // SAFETY: the tag's buffer is ours until its command is committed
        // (the driver filled it before posting the request), and `len` fits
        // in it (IoRequest::decode checks it against the buffer size). The
        // buffers live as long as the slots, which outlive every use: the
        // engine calls given the slice (admission, compare) do not keep it.
        unsafe { std::slice::from_raw_parts(buf.as_mut_ptr(), len) }
    }

    /// A new request on `tag`.
    fn start(&mut self, q: &UblkQueue, tag: u16) {
        let iod = q.get_iod(tag);
        match IoRequest::decode(
            iod.op_flags,
            iod.start_sector,
            iod.nr_sectors,
            self.ctx.dev_size,
            self.buf_bytes,
        ) {
            Err(errno) => {
                tracing::warn!(
                    op_flags = iod.op_flags,
                    start_sector = iod.start_sector,
                    nr_sectors = iod.nr_sectors,
                    errno,
                    "rejected a request from the driver"
                );
                self.complete(q, tag, errno);
            }
            Ok(req) => self.serve(q, tag, req),
        }
    }

    /// Directly on the ring when possible, else on the pool.
    fn serve(&mut self, q: &UblkQueue, tag: u16, req: IoRequest) {
        if self.ctx.direct {
            match req {
                IoRequest::Read { off, len } => {
                    self.states[tag as usize] = TagState::Read(req);
                    let ptr = self.slots[tag as usize].buf().as_mut_ptr();
                    self.submit(q, tag, OP_READ, 0, origin_sqe(false, ptr, off, len));
                    return;
                }
                IoRequest::Write {
                    off,
                    len,
                    fua: false,
                } => {
                    let data = self.data(tag, len as usize);
                    if let Some(done) = self.backend.try_direct_write(off, data) {
                        self.states[tag as usize] = TagState::Write(req, done);
                        let ptr = data.as_ptr() as *mut u8;
                        self.submit(q, tag, OP_WRITE, 0, origin_sqe(true, ptr, off, len));
                        return;
                    }
                    if let Some(cow) = self.backend.try_cow_write(off, data) {
                        self.cow_read(q, tag, req, Box::new(cow));
                        return;
                    }
                }
                _ => {}
            }
        }
        self.run_on_pool(tag, req);
    }

    /// Issues a copy-on-write's origin reads.
    fn cow_read(&mut self, q: &UblkQueue, tag: u16, req: IoRequest, mut cow: Box<CowWrite<'a>>) {
        let spans = cow.reads();
        let n = spans.len();
        // The originals go to the write's own buffer, which lives (on the
        // heap) as long as `cow`, so past these reads.
        let base = cow.old_mut().as_mut_ptr();
        let sqes: Vec<squeue::Entry> = spans
            .iter()
            .map(|s| origin_sqe(false, base.wrapping_add(s.at), s.off, s.len as u32))
            .collect();
        self.states[tag as usize] = TagState::Cow(req, cow, CowPhase::Reading(SpanIo::new(spans)));
        if n == 0 {
            // Admission guarantees a block to preserve; be safe anyway.
            self.cow_prepare(q, tag);
            return;
        }
        for (i, sqe) in sqes.into_iter().enumerate() {
            self.submit(q, tag, OP_COW_READ, i, sqe);
        }
    }

    /// The originals are in: compare, and queue the preserve (or write at
    /// once when nothing needs preserving).
    fn cow_prepare(&mut self, q: &UblkQueue, tag: u16) {
        let TagState::Cow(req, mut cow, _) =
            std::mem::replace(&mut self.states[tag as usize], TagState::Idle)
        else {
            return;
        };
        let data = self.data(tag, req_len(req));
        match cow.prepare(data) {
            Some(p) => {
                self.preserves.push(PreserveJob {
                    preserve: p,
                    tag,
                    done: self.done.clone(),
                });
                self.states[tag as usize] = TagState::Cow(req, cow, CowPhase::Committing);
            }
            None => self.cow_write(q, tag, req, cow),
        }
    }

    /// The preserve is durable (or none was needed): issue the origin writes.
    fn cow_write(&mut self, q: &UblkQueue, tag: u16, req: IoRequest, cow: Box<CowWrite<'a>>) {
        let spans = cow.writes();
        let len = req_len(req);
        if spans.is_empty() {
            // Every block already held its new bytes.
            cow.finish(true);
            self.count_cow(len);
            self.complete(q, tag, len as i32);
            return;
        }
        let base = self.data(tag, len).as_ptr() as *mut u8;
        let sqes: Vec<squeue::Entry> = spans
            .iter()
            .map(|s| origin_sqe(true, base.wrapping_add(s.at), s.off, s.len as u32))
            .collect();
        self.states[tag as usize] = TagState::Cow(req, cow, CowPhase::Writing(SpanIo::new(spans)));
        for (i, sqe) in sqes.into_iter().enumerate() {
            self.submit(q, tag, OP_COW_WRITE, i, sqe);
        }
    }

    fn count_cow(&self, len: usize) {
        let st = &self.ctx.stats;
        st.writes.fetch_add(1, Ordering::Relaxed);
        st.direct_cow_writes.fetch_add(1, Ordering::Relaxed);
        st.bytes_written.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// A target I/O of `tag` completed with `res`.
    fn io_done(&mut self, q: &UblkQueue, tag: u16, op: u32, span: usize, res: i32) {
        let Some(state) = self.states.get_mut(tag as usize) else {
            tracing::error!(tag, op, "completion for an unknown tag");
            return;
        };
        match (op, std::mem::replace(state, TagState::Idle)) {
            (OP_READ, TagState::Read(req)) => {
                let len = req_len(req);
                if res == len as i32 {
                    let s = &self.ctx.stats;
                    s.reads.fetch_add(1, Ordering::Relaxed);
                    s.direct_reads.fetch_add(1, Ordering::Relaxed);
                    s.bytes_read.fetch_add(len as u64, Ordering::Relaxed);
                    self.complete(q, tag, res);
                } else {
                    // The engine retries it, zero-filling past the end or
                    // reporting the error.
                    self.run_on_pool(tag, req);
                }
            }
            (OP_WRITE, TagState::Write(req, done)) => {
                let len = req_len(req);
                if res == len as i32 {
                    done.finish(true);
                    let s = &self.ctx.stats;
                    s.writes.fetch_add(1, Ordering::Relaxed);
                    s.direct_writes.fetch_add(1, Ordering::Relaxed);
                    s.bytes_written.fetch_add(len as u64, Ordering::Relaxed);
                    self.complete(q, tag, res);
                } else {
                    tracing::debug!(?req, res, "direct write incomplete; the engine redoes it");
                    let r = done.redo(self.data(tag, len));
                    self.redone(q, tag, len, r);
                }
            }
            (OP_COW_READ, TagState::Cow(req, cow, CowPhase::Reading(mut io))) => {
                if !io.land(span, res) {
                    self.states[tag as usize] = TagState::Cow(req, cow, CowPhase::Reading(io));
                } else if io.failed {
                    // Nothing was preserved or written: the engine runs the
                    // whole write.
                    drop(cow);
                    self.run_on_pool(tag, req);
                } else {
                    self.states[tag as usize] = TagState::Cow(req, cow, CowPhase::Committing);
                    self.cow_prepare(q, tag);
                }
            }
            (OP_COW_WRITE, TagState::Cow(req, cow, CowPhase::Writing(mut io))) => {
                if !io.land(span, res) {
                    self.states[tag as usize] = TagState::Cow(req, cow, CowPhase::Writing(io));
                } else if io.failed {
                    tracing::debug!(
                        ?req,
                        "copy-on-write origin write incomplete; the engine redoes it"
                    );
                    // The preserves are durable; only the origin writes are redone.
                    let len = req_len(req);
                    let r = cow.redo(self.data(tag, len));
                    self.redone(q, tag, len, r);
                } else {
                    cow.finish(true);
                    let len = req_len(req);
                    self.count_cow(len);
                    self.complete(q, tag, len as i32);
                }
            }
            (op, other) => {
                tracing::error!(tag, op, res, "completion does not match the tag's state");
                self.states[tag as usize] = other;
            }
        }
    }

    /// Completes a write whose origin I/O on the ring fell short and that the
    /// engine then redid. The redo runs here, on the queue thread, because the
    /// admitted write holds the snapshot gate, which cannot move to a worker:
    /// handing the retry over would release the gate first, and a snapshot
    /// taken in between would preserve a half-written block as its original.
    /// A short write means a failing or full backing, so this stall of the
    /// queue is confined to that error path.
    fn redone(&mut self, q: &UblkQueue, tag: u16, len: usize, r: snapmap::Result<()>) {
        let s = &self.ctx.stats;
        match r {
            Ok(()) => {
                s.writes.fetch_add(1, Ordering::Relaxed);
                s.bytes_written.fetch_add(len as u64, Ordering::Relaxed);
                self.complete(q, tag, len as i32);
            }
            Err(e) => {
                tracing::warn!(tag, error = %e, "write failed");
                s.errors.fetch_add(1, Ordering::Relaxed);
                self.complete(q, tag, -e.errno());
            }
        }
    }

    /// A result from a worker or a commit for `tag`.
    fn deliver(&mut self, q: &UblkQueue, tag: u16, res: i32) {
        let Some(state) = self.states.get_mut(tag as usize) else {
            tracing::error!(tag, "result for an unknown tag");
            return;
        };
        match std::mem::replace(state, TagState::Idle) {
            TagState::Pool => self.complete(q, tag, res),
            TagState::Cow(req, mut cow, CowPhase::Committing) => {
                cow.committed(res == 0);
                if res == 0 {
                    self.cow_write(q, tag, req, cow);
                } else {
                    // Nothing was written; the engine's error (ENOSPC for a
                    // full store) is the request's.
                    drop(cow);
                    self.ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
                    self.complete(q, tag, res);
                }
            }
            other => {
                tracing::error!(tag, res, "result does not match the tag's state");
                self.states[tag as usize] = other;
            }
        }
    }

    fn run_on_pool(&mut self, tag: u16, req: IoRequest) {
        self.states[tag as usize] = TagState::Pool;
        self.pending.push(Job {
            req,
            slot: self.slots[tag as usize].clone(),
            tag,
            done: self.done.clone(),
        });
    }

    /// Hands this batch's jobs to the pool and commits its preserves.
    fn flush(&mut self, q: &UblkQueue) {
        if let Err(jobs) = self.ctx.pool.submit_batch(&mut self.pending) {
            // The pool is gone (shutdown): fail the requests.
            for j in jobs {
                self.deliver(q, j.tag, -libc::EIO);
            }
        }
        if self.preserves.is_empty() {
            return;
        }
        let st = self.ctx.stats.clone();
        if self.ctx.commits.inline_worthwhile() {
            // Cheap commits: run this batch here (see worker::INLINE_COMMIT_MAX).
            let jobs = std::mem::take(&mut self.preserves);
            let tags: Vec<u16> = jobs.iter().map(|j| j.tag).collect();
            let start = std::time::Instant::now();
            let res = self
                .backend
                .commit_preserves(jobs.into_iter().map(|j| j.preserve).collect());
            self.ctx.commits.record(start.elapsed());
            st.commit_batches_inline.fetch_add(1, Ordering::Relaxed);
            for (i, t) in tags.into_iter().enumerate() {
                self.deliver(q, t, res.get(i).copied().unwrap_or(-libc::EIO));
            }
            return;
        }
        st.commit_batches_thread.fetch_add(1, Ordering::Relaxed);
        if let Err(jobs) = self.ctx.commits.submit_batch(&mut self.preserves) {
            for j in jobs {
                self.deliver(q, j.tag, -libc::EIO);
            }
        }
    }

    /// The completion eventfd fired (or its read failed): deliver whatever
    /// the workers and the commit thread pushed, and read it again.
    fn reap(&mut self, q: &UblkQueue, res: i32) {
        match res {
            8 => self.eventfd_failures = 0,
            r if r == -libc::EINTR || r == -libc::EAGAIN => {}
            r => {
                tracing::error!(res = r, "completion eventfd read failed");
                self.eventfd_failures += 1;
            }
        }
        // Deliver even after a failed read: a worker may have pushed without
        // needing to signal.
        let mut got = Vec::new();
        self.done.take(&mut got);
        for (tag, res) in got {
            self.deliver(q, tag, res);
        }
        if self.eventfd_failures >= 1000 {
            tracing::error!(
                "giving up on the completion eventfd; the queue cannot complete engine requests"
            );
            return;
        }
        self.arm_eventfd(q);
    }

    fn arm_eventfd(&mut self, q: &UblkQueue) {
        let sqe = opcode::Read::new(
            types::Fd(self.done.eventfd()),
            self.done.eventfd_landing(),
            8,
        )
        .build()
        .user_data(UblkIOCtx::build_user_data(0, OP_EVENTFD, 0, true));
        if let Err(e) = q.ublk_submit_sqe_sync(sqe) {
            tracing::error!(error = %e, "cannot queue the completion eventfd read");
        }
    }

    /// Queues a target I/O of `tag`; a failure to queue it completes it at
    /// once with EIO (the request then falls back to the engine).
    fn submit(&mut self, q: &UblkQueue, tag: u16, op: u32, span: usize, sqe: squeue::Entry) {
        let ud = UblkIOCtx::build_user_data(tag, op, span.min(0xffff) as u32, true);
        if let Err(e) = q.ublk_submit_sqe_sync(sqe.user_data(ud)) {
            tracing::debug!(error = %e, "direct origin I/O submit failed");
            self.io_done(q, tag, op, span, -libc::EIO);
        }
    }

    /// Completes `tag`'s request with `res` and fetches its next one.
    fn complete(&mut self, q: &UblkQueue, tag: u16, res: i32) {
        self.states[tag as usize] = TagState::Idle;
        let buf = self.slots[tag as usize].buf();
        if let Err(e) = q.complete_io_cmd_unified(
            tag,
            BufDesc::Slice(buf.as_slice()),
            Ok(UblkIORes::Result(res)),
        ) {
            tracing::error!(tag, error = %e, "cannot complete a request");
        }
    }
}

fn req_len(req: IoRequest) -> usize {
    match req {
        IoRequest::Read { len, .. } | IoRequest::Write { len, .. } => len as usize,
        _ => 0,
    }
}

/// One origin read into, or write from, `len` bytes at `ptr`, which must stay
/// valid (and, for a read, unaliased) until the I/O completes.
fn origin_sqe(write: bool, ptr: *mut u8, off: u64, len: u32) -> squeue::Entry {
    let fd = types::Fixed(ORIGIN_FIXED_FD);
    if write {
        opcode::Write::new(fd, ptr, len).offset(off).build()
    } else {
        opcode::Read::new(fd, ptr, len).offset(off).build()
    }
}
