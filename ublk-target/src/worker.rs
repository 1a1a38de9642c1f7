//! The engine worker pool.
//!
//! The engine blocks (pread/pwrite, group commit waiting for fdatasync), so
//! requests never run on a queue thread: the queue hands a [`Job`] to this
//! pool and awaits the tag's eventfd in its io_uring; a worker runs the
//! engine call on the tag's buffer, stores the result and signals the
//! eventfd. Every tag of every queue can be in flight at once.

use crate::io_op::{execute, IoBackend, IoRequest, IoStats};
use libublk::helpers::IoBuf;
use std::cell::UnsafeCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Result value meaning "the worker has not finished yet".
const PENDING: i32 = i32::MIN;

/// Per-tag state shared between a queue thread and the workers.
///
/// Ownership of `buf` alternates and never overlaps: the kernel fills or
/// drains it while the tag's ublk command is outstanding, the queue thread
/// hands it to exactly one worker per request and touches it again only
/// after that worker's eventfd signal. `Arc` keeps it alive for the worker
/// even if the queue task were torn down first.
pub struct TagSlot {
    buf: IoBuf<u8>,
    efd: OwnedFd,
    result: AtomicI32,
    /// Landing place for the io_uring read of `efd`; lives as long as the slot.
    efd_val: UnsafeCell<u64>,
}

// SAFETY: see the ownership protocol above; `buf` and `efd_val` are only
// accessed by one party at a time, handed over through the job channel and
// the eventfd (both of which order memory).
unsafe impl Send for TagSlot {}
unsafe impl Sync for TagSlot {}

impl TagSlot {
    /// Allocates a page-aligned buffer of `bytes` and a blocking eventfd.
    pub fn new(bytes: usize) -> std::io::Result<TagSlot> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(TagSlot {
            buf: IoBuf::<u8>::new(bytes),
            // SAFETY: fd was just created and is owned by nobody else.
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
            result: AtomicI32::new(PENDING),
            efd_val: UnsafeCell::new(0),
        })
    }

    /// The tag's data buffer, as registered with the driver.
    pub fn buf(&self) -> &IoBuf<u8> {
        &self.buf
    }

    /// Raw eventfd that a worker signals on completion.
    pub fn eventfd(&self) -> i32 {
        self.efd.as_raw_fd()
    }

    /// Pointer the queue's io_uring reads the eventfd counter into.
    pub fn eventfd_landing(&self) -> *mut u8 {
        self.efd_val.get() as *mut u8
    }

    /// Marks the slot busy before handing it to a worker.
    pub fn arm(&self) {
        self.result.store(PENDING, Ordering::Release);
    }

    /// The worker's result, or `None` while it is still running.
    pub fn take_result(&self) -> Option<i32> {
        match self.result.load(Ordering::Acquire) {
            PENDING => None,
            r => Some(r),
        }
    }

    fn complete(&self, res: i32) {
        self.result.store(res, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
        let n =
            unsafe { libc::write(self.eventfd(), &one as *const u64 as *const libc::c_void, 8) };
        if n != 8 {
            tracing::error!(error = %std::io::Error::last_os_error(), "eventfd signal failed");
        }
    }
}

/// One request for a worker.
pub struct Job {
    /// What to do.
    pub req: IoRequest,
    /// Where the data is and whom to wake.
    pub slot: Arc<TagSlot>,
}

/// Cheap handle the queue threads use to submit jobs.
#[derive(Clone)]
pub struct PoolHandle {
    tx: Sender<Job>,
}

impl PoolHandle {
    /// Queues a job; fails only when the pool has shut down.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        self.tx.send(job).map_err(|e| e.0)
    }
}

/// The running pool; dropping it (after every [`PoolHandle`]) joins the workers.
pub struct WorkerPool {
    handle: Option<PoolHandle>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `n` workers executing against `backend`.
    pub fn start(
        n: usize,
        backend: Arc<dyn IoBackend>,
        stats: Arc<IoStats>,
    ) -> std::io::Result<WorkerPool> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let rx = rx.clone();
            let backend = backend.clone();
            let stats = stats.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("snapblk-io-{i}"))
                    .spawn(move || worker_loop(&rx, &*backend, &stats))?,
            );
        }
        Ok(WorkerPool {
            handle: Some(PoolHandle { tx }),
            threads,
        })
    }

    /// A submit handle for a queue thread.
    pub fn handle(&self) -> PoolHandle {
        match &self.handle {
            Some(h) => h.clone(),
            // The handle is only taken in drop.
            None => unreachable!("pool handle used after shutdown"),
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        // Workers exit once every sender is gone and the channel is drained.
        self.handle.take();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("an engine worker panicked");
            }
        }
    }
}

fn worker_loop(rx: &Mutex<Receiver<Job>>, backend: &dyn IoBackend, stats: &IoStats) {
    loop {
        let job = {
            let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
            guard.recv()
        };
        let Ok(job) = job else { return };
        let buf_len = job.slot.buf.len();
        // SAFETY: the slot's buffer belongs to this worker until complete()
        // (see TagSlot); the IoBuf allocation is `buf_len` bytes.
        let buf = unsafe { std::slice::from_raw_parts_mut(job.slot.buf.as_mut_ptr(), buf_len) };
        let res = execute(backend, job.req, buf, stats);
        job.slot.complete(res);
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

    #[test]
    fn jobs_run_concurrently_and_signal_their_tag() {
        let disk = Arc::new(MemDisk::new(1 << 20));
        let stats = Arc::new(IoStats::default());
        let pool = WorkerPool::start(4, disk.clone(), stats.clone()).unwrap();
        let h = pool.handle();
        let slots: Vec<_> = (0..8)
            .map(|_| Arc::new(TagSlot::new(4096).unwrap()))
            .collect();
        for (i, s) in slots.iter().enumerate() {
            // SAFETY: test owns the slot until it submits.
            unsafe { std::slice::from_raw_parts_mut(s.buf().as_mut_ptr(), 4096) }.fill(i as u8 + 1);
            s.arm();
            assert!(s.take_result().is_none());
            let req = IoRequest::Write {
                off: i as u64 * 4096,
                len: 4096,
                fua: false,
            };
            assert!(h
                .submit(Job {
                    req,
                    slot: s.clone()
                })
                .is_ok());
        }
        for s in &slots {
            wait_eventfd(s.eventfd());
            assert_eq!(s.take_result(), Some(4096));
        }
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
}
