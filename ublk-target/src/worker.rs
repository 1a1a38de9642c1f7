//! The engine worker pool, and how its results get back to a queue thread.
//!
//! The engine blocks (pread/pwrite, group commit waiting for fdatasync), so
//! requests that need it never run on a queue thread: the queue hands
//! [`Job`]s to this pool, a worker runs the engine call on the tag's buffer
//! and pushes `(tag, result)` onto the queue's [`Completions`]. Wake-ups are
//! batched both ways, because under emulation (and on busy hosts) every
//! cross-thread wake-up costs more than the I/O itself:
//! - the queue submits all jobs of one batch of completions under one lock and
//!   wakes only as many idle workers as there are new jobs; a worker that
//!   finishes a job takes the next queued one without sleeping;
//! - a worker signals the queue's single eventfd only when the completion
//!   list was empty, so completions that pile up while the queue thread is
//!   busy cost one wake-up, not one each.

use crate::inbox::Inbox;
use crate::io_op::{execute, IoBackend, IoRequest, IoStats};
use libublk::helpers::IoBuf;
use std::cell::UnsafeCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A tag's data buffer, shared between a queue thread and the workers.
///
/// Ownership alternates and never overlaps: the kernel fills or drains it
/// while the tag's ublk command is outstanding, the queue thread hands it to
/// exactly one worker per request and touches it again only after that
/// worker's completion was delivered. The buffers of a queue are allocated
/// together (the driver is given all of them when the queue starts); `Arc`
/// keeps them alive for a worker even if the queue were torn down first.
pub struct TagSlot {
    bufs: Arc<Vec<IoBuf<u8>>>,
    tag: usize,
}

// SAFETY: see the ownership protocol above; a tag's buffer is only accessed
// by one party at a time, handed over through the job queue and the
// completion list (both mutex-protected, which orders memory).
unsafe impl Send for TagSlot {}
unsafe impl Sync for TagSlot {}

impl TagSlot {
    /// One slot per buffer of `bufs` (tag `i` gets `bufs[i]`).
    pub fn for_queue(bufs: Vec<IoBuf<u8>>) -> Vec<Arc<TagSlot>> {
        let bufs = Arc::new(bufs);
        (0..bufs.len())
            .map(|tag| {
                Arc::new(TagSlot {
                    bufs: bufs.clone(),
                    tag,
                })
            })
            .collect()
    }

    /// A slot with a page-aligned buffer of its own, of `bytes`.
    pub fn new(bytes: usize) -> TagSlot {
        TagSlot {
            bufs: Arc::new(vec![IoBuf::<u8>::new(bytes)]),
            tag: 0,
        }
    }

    /// The tag's data buffer, as registered with the driver.
    pub fn buf(&self) -> &IoBuf<u8> {
        &self.bufs[self.tag]
    }

    /// Every buffer of this slot's queue, indexed by tag.
    pub fn queue_bufs(&self) -> &Vec<IoBuf<u8>> {
        &self.bufs
    }
}

/// Finished jobs of one queue, waiting for its thread: a list plus one
/// eventfd that the queue's io_uring reads.
pub struct Completions {
    done: Mutex<Vec<(u16, i32)>>,
    efd: OwnedFd,
    /// Landing place for the io_uring read of `efd`; only the queue thread
    /// (through its ring) writes it.
    efd_val: UnsafeCell<u64>,
}

// SAFETY: `efd_val` is only written by the queue thread's ring and never read
// by anyone; everything else is a mutex or an fd.
unsafe impl Send for Completions {}
unsafe impl Sync for Completions {}

impl Completions {
    /// A new, empty list with a blocking eventfd.
    pub fn new() -> std::io::Result<Completions> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Completions {
            done: Mutex::new(Vec::new()),
            // SAFETY: fd was just created and is owned by nobody else.
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
            efd_val: UnsafeCell::new(0),
        })
    }

    /// Raw eventfd that is signalled when the list becomes non-empty.
    pub fn eventfd(&self) -> i32 {
        self.efd.as_raw_fd()
    }

    /// Pointer the queue's io_uring reads the eventfd counter into.
    pub fn eventfd_landing(&self) -> *mut u8 {
        self.efd_val.get() as *mut u8
    }

    /// Adds a finished request; signals the eventfd if the queue thread may
    /// be asleep (the list was empty: every earlier entry has been taken).
    pub fn push(&self, tag: u16, res: i32) {
        let was_empty = {
            let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
            let e = d.is_empty();
            d.push((tag, res));
            e
        };
        if was_empty {
            self.signal();
        }
    }

    /// Wakes the queue thread's eventfd read.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
        let n =
            unsafe { libc::write(self.eventfd(), &one as *const u64 as *const libc::c_void, 8) };
        if n != 8 {
            tracing::error!(error = %std::io::Error::last_os_error(), "eventfd signal failed");
        }
    }

    /// Takes every finished request (into `out`, which is cleared first).
    pub fn take(&self, out: &mut Vec<(u16, i32)>) {
        out.clear();
        let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *d, out);
    }
}

/// One request for a worker.
pub struct Job {
    /// What to do.
    pub req: IoRequest,
    /// Where the data is.
    pub slot: Arc<TagSlot>,
    /// The tag to complete.
    pub tag: u16,
    /// Where to report the result.
    pub done: Arc<Completions>,
}

/// Cheap handle the queue threads use to submit jobs.
#[derive(Clone)]
pub struct PoolHandle {
    inbox: Arc<Inbox<Job>>,
}

impl PoolHandle {
    /// Queues every job in `jobs` (leaving it empty) and wakes as many idle
    /// workers as needed. Fails, handing the jobs back, only when the pool
    /// has shut down.
    pub fn submit_batch(&self, jobs: &mut Vec<Job>) -> Result<(), Vec<Job>> {
        self.inbox.push(jobs)
    }
}

/// The running pool; dropping it (after every queue has stopped) lets the
/// workers finish what is queued and joins them.
pub struct WorkerPool {
    inbox: Arc<Inbox<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `n` workers executing against `backend`.
    pub fn start(
        n: usize,
        backend: Arc<dyn IoBackend>,
        stats: Arc<IoStats>,
    ) -> std::io::Result<WorkerPool> {
        let mut pool = WorkerPool {
            inbox: Arc::new(Inbox::new()),
            threads: Vec::with_capacity(n.max(1)),
        };
        for i in 0..n.max(1) {
            let inbox = pool.inbox.clone();
            let backend = backend.clone();
            let stats = stats.clone();
            // On error `pool` drops here, which stops the workers already started.
            pool.threads.push(
                std::thread::Builder::new()
                    .name(format!("snapblk-io-{i}"))
                    .spawn(move || worker_loop(&inbox, &*backend, &stats))?,
            );
        }
        Ok(pool)
    }

    /// A submit handle for a queue thread.
    pub fn handle(&self) -> PoolHandle {
        PoolHandle {
            inbox: self.inbox.clone(),
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.inbox
            .close_and_join(&mut self.threads, "an engine worker");
    }
}

fn worker_loop(inbox: &Inbox<Job>, backend: &dyn IoBackend, stats: &IoStats) {
    let mut next = Vec::with_capacity(1);
    while inbox.take(&mut next, 1) {
        for job in next.drain(..) {
            let buf_len = job.slot.buf().len();
            // SAFETY: the slot's buffer belongs to this worker until its
            // completion is pushed (see TagSlot); the IoBuf allocation is
            // `buf_len` bytes.
            let buf =
                unsafe { std::slice::from_raw_parts_mut(job.slot.buf().as_mut_ptr(), buf_len) };
            let res = execute(backend, job.req, buf, stats);
            job.done.push(job.tag, res);
        }
    }
}

/// One copy-on-write's preserve, for the commit thread.
pub struct PreserveJob {
    /// The originals to make durable.
    pub preserve: snapmap::Preserve,
    /// The tag to complete (with 0 or a negative errno).
    pub tag: u16,
    /// Where to report the result.
    pub done: Arc<Completions>,
}

struct CommitShared {
    inbox: Inbox<PreserveJob>,
    /// Recent commit duration in ns (moving average over about 8 commits, wherever they ran).
    recent_ns: AtomicU64,
}

/// A queue commits its preserves itself, without the hand-off to the commit thread, while
/// recent commits took less than this. The hand-off costs two cross-thread wake-ups per batch,
/// which on a busy or emulated machine cost more than a quick commit (in the VM bench, first
/// writes went from 0.86× to about 1.0–1.2× of dm-snapshot). A store with a slow sync
/// (ordinary disks: several milliseconds) goes to the thread after two such commits, so a
/// queue is held up by a commit for about this long at most, and not stalled by slow syncs.
pub const INLINE_COMMIT_MAX: std::time::Duration = std::time::Duration::from_millis(1);

/// The thread that commits the queue threads' copy-on-write preserves: whatever has queued up
/// while it was busy goes to the engine as one batch (group commits, one sync per group), and
/// the results go back with one completion wake-up per queue. It is a thread of its own, not a
/// pool worker, because the queues hold those writes' block locks and the snapshot gate until
/// the commit returns: a pool worker can be blocked on exactly those (a write to the same
/// blocks, or a snapshot waiting for the gate), and a commit queued behind it would never run.
/// The commit path itself never waits for a block lock or the gate.
pub struct CommitThread {
    shared: Arc<CommitShared>,
    thread: Vec<JoinHandle<()>>,
}

/// Cheap handle the queue threads use to hand preserves to the [`CommitThread`].
#[derive(Clone)]
pub struct CommitHandle {
    shared: Arc<CommitShared>,
}

impl CommitHandle {
    /// Whether recent commits were quick enough to run on the queue thread (see
    /// [`INLINE_COMMIT_MAX`]).
    pub fn inline_worthwhile(&self) -> bool {
        self.shared.recent_ns.load(Ordering::Relaxed) < INLINE_COMMIT_MAX.as_nanos() as u64
    }

    /// Records how long a commit took.
    pub fn record(&self, took: std::time::Duration) {
        self.shared.record(took);
    }

    /// Queues every job in `jobs` (leaving it empty) and wakes the commit thread. Fails,
    /// handing the jobs back, only after shutdown.
    pub fn submit_batch(&self, jobs: &mut Vec<PreserveJob>) -> Result<(), Vec<PreserveJob>> {
        self.shared.inbox.push(jobs)
    }
}

impl CommitShared {
    fn record(&self, took: std::time::Duration) {
        let ns = took.as_nanos().min(u64::MAX as u128) as u64;
        // Concurrent updates may lose one sample; the average only steers a choice.
        let old = self.recent_ns.load(Ordering::Relaxed);
        self.recent_ns
            .store(old - old / 8 + ns / 8, Ordering::Relaxed);
    }
}

impl CommitThread {
    /// Starts the commit thread for `backend`.
    pub fn start(backend: Arc<dyn IoBackend>) -> std::io::Result<CommitThread> {
        let shared = Arc::new(CommitShared {
            inbox: Inbox::new(),
            recent_ns: AtomicU64::new(0),
        });
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("snapblk-commit".into())
            .spawn(move || commit_loop(&s2, &*backend))?;
        Ok(CommitThread {
            shared,
            thread: vec![thread],
        })
    }

    /// A submit handle for a queue thread.
    pub fn handle(&self) -> CommitHandle {
        CommitHandle {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for CommitThread {
    fn drop(&mut self) {
        self.shared
            .inbox
            .close_and_join(&mut self.thread, "the commit thread");
    }
}

fn commit_loop(shared: &CommitShared, backend: &dyn IoBackend) {
    let mut batch = Vec::new();
    // Everything queued while the last commit ran goes into the next one.
    while shared.inbox.take(&mut batch, usize::MAX) {
        let mut targets = Vec::with_capacity(batch.len());
        let preserves = batch
            .drain(..)
            .map(|j| {
                targets.push((j.tag, j.done));
                j.preserve
            })
            .collect();
        let start = std::time::Instant::now();
        let results = backend.commit_preserves(preserves);
        shared.record(start.elapsed());
        for (i, (tag, done)) in targets.into_iter().enumerate() {
            done.push(tag, results.get(i).copied().unwrap_or(-libc::EIO));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io_op::tests::MemDisk;

    fn wait_eventfd(fd: i32) {
        let mut v = 0u64;
        // SAFETY: blocking read of 8 bytes into a live u64.
        let n = unsafe { libc::read(fd, &mut v as *mut u64 as *mut libc::c_void, 8) };
        assert_eq!(n, 8);
    }

    /// Waits for `n` completions on `done` (bounded); returns them sorted by tag.
    fn completed(done: &Completions, n: usize) -> Vec<(u16, i32)> {
        let mut got = Vec::new();
        let mut all = Vec::new();
        for _ in 0..100 {
            if all.len() == n {
                break;
            }
            wait_eventfd(done.eventfd());
            done.take(&mut got);
            all.extend_from_slice(&got);
        }
        all.sort_unstable();
        all
    }

    #[test]
    fn jobs_run_concurrently_and_complete_their_tags() {
        let disk = Arc::new(MemDisk::new(1 << 20));
        let stats = Arc::new(IoStats::default());
        let pool = WorkerPool::start(4, disk.clone(), stats.clone()).unwrap();
        let h = pool.handle();
        let done = Arc::new(Completions::new().unwrap());
        let slots: Vec<_> = (0..8).map(|_| Arc::new(TagSlot::new(4096))).collect();
        let mut jobs = Vec::new();
        for (i, s) in slots.iter().enumerate() {
            // SAFETY: test owns the slot until it submits.
            unsafe { std::slice::from_raw_parts_mut(s.buf().as_mut_ptr(), 4096) }.fill(i as u8 + 1);
            jobs.push(Job {
                req: IoRequest::Write {
                    off: i as u64 * 4096,
                    len: 4096,
                    fua: false,
                },
                slot: s.clone(),
                tag: i as u16,
                done: done.clone(),
            });
        }
        assert!(h.submit_batch(&mut jobs).is_ok());
        assert!(jobs.is_empty());
        assert_eq!(
            completed(&done, 8),
            (0..8).map(|t| (t, 4096)).collect::<Vec<_>>()
        );
        let d = disk.data.lock().unwrap();
        for i in 0..8 {
            assert!(d[i * 4096..(i + 1) * 4096]
                .iter()
                .all(|&b| b == i as u8 + 1));
        }
        drop(d);
        drop(h);
        drop(pool);
        assert_eq!(stats.snapshot().writes, 8);
    }

    #[test]
    fn submit_after_shutdown_hands_jobs_back() {
        let disk = Arc::new(MemDisk::new(1 << 16));
        let stats = Arc::new(IoStats::default());
        let pool = WorkerPool::start(1, disk, stats).unwrap();
        let h = pool.handle();
        drop(pool);
        let done = Arc::new(Completions::new().unwrap());
        let mut jobs = vec![Job {
            req: IoRequest::Flush,
            slot: Arc::new(TagSlot::new(4096)),
            tag: 3,
            done,
        }];
        let back = h.submit_batch(&mut jobs).err().map(|j| j.len());
        assert_eq!(back, Some(1));
    }

    #[test]
    fn the_commit_thread_commits_a_batch_and_completes_each_tag() {
        use snapmap::{BlockDev, Engine, MemDev, OpenOptions};
        const BS: usize = 4096;
        let origin = Arc::new(MemDev::new("origin", 16 * BS as u64, false));
        let store: Arc<dyn BlockDev> = Arc::new(MemDev::new("store", 0, true));
        let engine =
            Arc::new(Engine::format(origin.clone(), store, &OpenOptions::default()).unwrap());
        engine.write(0, &vec![1u8; 16 * BS]).unwrap();
        engine.create_snapshot("s").unwrap();
        let ct = CommitThread::start(engine.clone()).unwrap();
        let h = ct.handle();
        let done = Arc::new(Completions::new().unwrap());
        let new: Vec<Vec<u8>> = (0..4).map(|i| vec![i as u8 + 2; BS]).collect();
        let mut cows: Vec<_> = (0..4)
            .map(|i| engine.try_cow_write((i * BS) as u64, &new[i]).unwrap())
            .collect();
        let mut jobs = Vec::new();
        for (i, c) in cows.iter_mut().enumerate() {
            for s in c.reads() {
                origin
                    .read_at(&mut c.old_mut()[s.at..s.at + s.len], s.off)
                    .unwrap();
            }
            jobs.push(PreserveJob {
                preserve: c.prepare(&new[i]).unwrap(),
                tag: i as u16,
                done: done.clone(),
            });
        }
        assert!(h.submit_batch(&mut jobs).is_ok());
        assert_eq!(
            completed(&done, 4),
            (0..4).map(|t| (t, 0)).collect::<Vec<_>>()
        );
        for (i, mut c) in cows.into_iter().enumerate() {
            c.committed(true);
            for s in c.writes() {
                origin.write_at(&new[i][s.at..s.at + s.len], s.off).unwrap();
            }
            c.finish(true);
        }
        let st = engine.stats();
        assert_eq!(st.preserves, 4);
        assert!(st.commit_groups >= 1);
        let mut b = vec![0u8; BS];
        engine.read_snapshot("s", 3 * BS as u64, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 1));
        drop(h);
        drop(ct);
    }

    #[test]
    fn queues_commit_themselves_only_while_commits_are_quick() {
        use std::time::Duration;
        let disk = Arc::new(MemDisk::new(1 << 16));
        let ct = CommitThread::start(disk).unwrap();
        let h = ct.handle();
        assert!(h.inline_worthwhile(), "no commit seen yet: try it");
        // A disk's fdatasync: the average crosses the limit on the second one.
        h.record(Duration::from_millis(5));
        h.record(Duration::from_millis(5));
        assert!(
            !h.inline_worthwhile(),
            "slow commits send batches to the thread"
        );
        for _ in 0..40 {
            h.record(Duration::from_micros(20));
        }
        assert!(h.inline_worthwhile(), "quick commits bring it back");
    }
}
