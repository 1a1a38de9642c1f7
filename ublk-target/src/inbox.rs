//! A job queue between the queue threads and the threads that serve them (engine workers, the
//! commit thread), with the wake-up economy both need: a batch of jobs goes in under one lock,
//! and only as many sleeping threads are woken as there are new jobs, because under emulation
//! (and on busy hosts) a cross-thread wake-up costs more than the I/O itself. A thread that
//! finishes a job takes the next queued one without sleeping.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

struct State<T> {
    jobs: VecDeque<T>,
    /// Threads waiting on the condvar.
    idle: usize,
    /// Notifications sent to idle threads that have not woken yet.
    signalled: usize,
    closed: bool,
}

/// The queue (see the module docs).
pub(crate) struct Inbox<T> {
    state: Mutex<State<T>>,
    cv: Condvar,
}

impl<T> Inbox<T> {
    pub(crate) fn new() -> Self {
        Inbox {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                idle: 0,
                signalled: 0,
                closed: false,
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panicking holder leaves the queue itself consistent (every update is one step).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues every job in `jobs` (leaving it empty) and wakes as many idle threads as needed.
    /// Fails, handing the jobs back, only after [`Inbox::close`].
    pub(crate) fn push(&self, jobs: &mut Vec<T>) -> Result<(), Vec<T>> {
        if jobs.is_empty() {
            return Ok(());
        }
        let n = jobs.len();
        let wake = {
            let mut s = self.lock();
            if s.closed {
                return Err(std::mem::take(jobs));
            }
            s.jobs.extend(jobs.drain(..));
            let wake = n.min(s.idle.saturating_sub(s.signalled));
            s.signalled += wake;
            wake
        };
        for _ in 0..wake {
            self.cv.notify_one();
        }
        Ok(())
    }

    /// Waits until a job is queued and moves up to `max` of them into `out` (in order). Returns
    /// false, moving nothing, once the inbox is closed and empty: the thread should end.
    pub(crate) fn take(&self, out: &mut Vec<T>, max: usize) -> bool {
        let mut s = self.lock();
        while s.jobs.is_empty() {
            if s.closed {
                return false;
            }
            s.idle += 1;
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
            s.idle -= 1;
            s.signalled = s.signalled.saturating_sub(1);
        }
        let n = s.jobs.len().min(max);
        out.extend(s.jobs.drain(..n));
        true
    }

    /// Refuses new jobs; the serving threads finish what is queued, then their
    /// [`Inbox::take`] returns false.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.cv.notify_all();
    }

    /// Closes the inbox and joins `threads`, logging any that panicked as `what`.
    pub(crate) fn close_and_join(&self, threads: &mut Vec<JoinHandle<()>>, what: &str) {
        self.close();
        for t in threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("{what} panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_job_is_taken_once_and_close_drains_before_ending() {
        let inbox = Arc::new(Inbox::new());
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..3 {
            let (inbox, tx) = (inbox.clone(), tx.clone());
            threads.push(std::thread::spawn(move || {
                let mut got = Vec::new();
                while inbox.take(&mut got, 1) {
                    for j in got.drain(..) {
                        tx.send(j).unwrap();
                    }
                }
            }));
        }
        drop(tx);
        for round in 0..50u32 {
            let mut jobs: Vec<u32> = (0..7).map(|i| round * 7 + i).collect();
            inbox.push(&mut jobs).unwrap();
            assert!(jobs.is_empty());
        }
        inbox.close_and_join(&mut threads, "a test thread");
        let mut seen: Vec<u32> = rx.iter().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..350).collect::<Vec<_>>());
        // Closed: new jobs come back.
        assert_eq!(inbox.push(&mut vec![1]), Err(vec![1]));
    }

    #[test]
    fn take_moves_at_most_max_in_order() {
        let inbox = Inbox::new();
        inbox.push(&mut vec![1, 2, 3, 4, 5]).unwrap();
        let mut out = Vec::new();
        assert!(inbox.take(&mut out, 2));
        assert_eq!(out, [1, 2]);
        assert!(inbox.take(&mut out, usize::MAX));
        assert_eq!(out, [1, 2, 3, 4, 5]);
        inbox.close();
        assert!(!inbox.take(&mut out, 1));
    }
}
