//! Group commit: many concurrent preserves (and snapshot events) share one store write and one
//! sync. A caller queues its request and either waits or, if no commit is running, becomes the
//! leader and commits everything queued so far. The leader role also serializes commit groups,
//! which the recovery argument needs: group N+1 is only written after group N's sync returned.
//!
//! Wakeups are targeted: when a group is durable, only the callers whose requests it carried are
//! woken (each parks on its own thread), and leadership is handed to the oldest caller still
//! queued by waking that one thread. A condition variable shared by all waiters would wake every
//! one of them after every group, only for all but a few to find their ticket not done and go
//! back to sleep — with dozens of writers that was a large share of the copy-on-write path's time.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::thread::Thread;

use crate::error::{Error, Result};
use crate::format::Entry;
use crate::scratch::Scratch;

/// One caller's share of a commit group. The committer hands it back to its caller afterwards,
/// so the buffer returns to the pool of the thread that filled it.
pub(crate) struct Request {
    /// Events to journal after the preserves (snapshot created, deleted, …).
    pub meta: Vec<Entry>,
    /// Snapshot whose delta receives the preserved blocks.
    pub snap: u64,
    /// The blocks being preserved (one list, not three: a first write builds one per request).
    pub blocks: Vec<Kept>,
    /// The original contents, at each [`Kept::at`].
    pub data: Scratch,
}

/// One block a [`Request`] preserves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Kept {
    /// The origin block.
    pub block: u32,
    /// crc32 of its original content, computed by the caller (in parallel with other callers,
    /// rather than by the leader while everyone waits).
    pub crc: u32,
    /// Its index (in blocks) within [`Request::data`].
    pub at: u32,
}

impl Request {
    /// A request that only journals events.
    pub fn meta(meta: Vec<Entry>) -> Request {
        Request {
            meta,
            snap: 0,
            blocks: Vec::new(),
            data: Scratch::take(0),
        }
    }
}

/// A queued request and the thread to wake when it is done (or must lead).
struct Waiting {
    ticket: u64,
    req: Request,
    thread: Thread,
}

struct Queue {
    pending: VecDeque<Waiting>,
    done: HashMap<u64, (Result<()>, Request)>,
    next_ticket: u64,
    /// A leader is committing a group, or has been chosen to commit the next one.
    leader: bool,
    /// The ticket chosen to lead next (its thread was woken for that).
    handoff: Option<u64>,
}

/// The queue all commits go through.
pub(crate) struct Committer {
    queue: Mutex<Queue>,
    max_blocks: usize,
}

/// If `run` panics, the callers whose requests the group carried must not wait forever: they get
/// an error, and leadership passes on.
struct LeaderGuard<'a> {
    committer: &'a Committer,
    tickets: Vec<(u64, Thread)>,
    /// The leader's own tickets: its thread is the one unwinding, nobody waits for them.
    me: std::ops::Range<u64>,
    armed: bool,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut q = self.committer.lock();
        let mut wake = Vec::new();
        for (t, th) in self.tickets.drain(..) {
            if self.me.contains(&t) {
                continue;
            }
            q.done.insert(
                t,
                (
                    Err(Error::Invalid(
                        "commit group aborted by a panic in the committing thread: reopen the store"
                            .into(),
                    )),
                    Request::meta(Vec::new()),
                ),
            );
            wake.push(th);
        }
        // The unwinding thread's requests still queued will never be waited for: drop them, so
        // leadership cannot be handed to a ticket nobody is there to run.
        q.pending.retain(|w| !self.me.contains(&w.ticket));
        Committer::pass_on(&mut q, &mut wake, &(0..0));
        drop(q);
        for th in wake {
            th.unpark();
        }
    }
}

impl Committer {
    /// A committer whose groups carry at most `max_blocks` preserved blocks (a single larger
    /// request still goes alone).
    pub fn new(max_blocks: usize) -> Self {
        Committer {
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                done: HashMap::new(),
                next_ticket: 0,
                leader: false,
                handoff: None,
            }),
            max_blocks,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue holds plain data; a panic elsewhere cannot leave it half-updated.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a group: hand leadership to the oldest queued request (adding its thread to `wake`
    /// unless it is one of `me`, whose thread is running already), or leave no leader.
    fn pass_on(q: &mut Queue, wake: &mut Vec<Thread>, me: &std::ops::Range<u64>) {
        match q.pending.front() {
            Some(w) => {
                q.leader = true;
                q.handoff = Some(w.ticket);
                if !me.contains(&w.ticket) {
                    wake.push(w.thread.clone());
                }
            }
            None => {
                q.leader = false;
                q.handoff = None;
            }
        }
    }

    /// Queues `req` and returns once it is durable (or failed), with the request handed back.
    /// `run` commits one group and returns one result per request, in order.
    pub fn commit(
        &self,
        req: Request,
        run: impl Fn(&[Request]) -> Vec<Result<()>>,
    ) -> (Result<()>, Request) {
        let mut out = self.commit_many(vec![req], run);
        out.pop().unwrap_or_else(|| {
            (
                Err(Error::Invalid(
                    "a commit returned no result (a bug): reopen the store".into(),
                )),
                Request::meta(Vec::new()),
            )
        })
    }

    /// Queues every request of `reqs` (they may land in different groups, together with other
    /// callers' requests) and returns once all are durable or failed: one result per request,
    /// in order, each with its request handed back. One thread can thus commit for many
    /// requesters (the ublk queues' copy-on-write preserves) with one wake-up for all of them.
    pub fn commit_many(
        &self,
        reqs: Vec<Request>,
        run: impl Fn(&[Request]) -> Vec<Result<()>>,
    ) -> Vec<(Result<()>, Request)> {
        let count = reqs.len() as u64;
        if count == 0 {
            return Vec::new();
        }
        let mut q = self.lock();
        // Tickets of one call are consecutive: they are all queued under this one lock.
        let first = q.next_ticket;
        let mine = first..first + count;
        q.next_ticket += count;
        let me = std::thread::current();
        for (i, req) in reqs.into_iter().enumerate() {
            q.pending.push_back(Waiting {
                ticket: first + i as u64,
                req,
                thread: me.clone(),
            });
        }
        let mut results: Vec<Option<(Result<()>, Request)>> = (0..count).map(|_| None).collect();
        let mut left = count;
        loop {
            // Only another leader files results here; a caller that led all its own groups
            // (the usual case for a lone committer) finds it empty and hashes nothing.
            for t in mine.clone() {
                if q.done.is_empty() {
                    break;
                }
                let slot = &mut results[(t - first) as usize];
                if slot.is_none() {
                    if let Some(d) = q.done.remove(&t) {
                        *slot = Some(d);
                        left -= 1;
                    }
                }
            }
            if left == 0 {
                return results.into_iter().flatten().collect();
            }
            let may_lead = if q.leader {
                q.handoff.is_some_and(|h| mine.contains(&h))
            } else {
                true
            };
            if !may_lead {
                drop(q);
                // Woken when one of our groups is done or we are to lead; a spurious return
                // just loops.
                std::thread::park();
                q = self.lock();
                continue;
            }
            q.leader = true;
            q.handoff = None;
            let mut batch: Vec<Waiting> = Vec::new();
            let mut blocks = 0;
            while let Some(w) = q.pending.front() {
                if !batch.is_empty() && blocks + w.req.blocks.len() > self.max_blocks {
                    break;
                }
                blocks += w.req.blocks.len();
                if let Some(w) = q.pending.pop_front() {
                    batch.push(w);
                }
            }
            drop(q);
            let (tickets, reqs): (Vec<(u64, Thread)>, Vec<Request>) = batch
                .into_iter()
                .map(|w| ((w.ticket, w.thread), w.req))
                .unzip();
            let mut guard = LeaderGuard {
                committer: self,
                tickets,
                me: mine.clone(),
                armed: true,
            };
            let group = run(&reqs);
            guard.armed = false;
            let tickets = std::mem::take(&mut guard.tickets);
            drop(guard);
            let mut wake = Vec::with_capacity(tickets.len() + 1);
            q = self.lock();
            let mut group = group.into_iter();
            for ((t, th), req) in tickets.into_iter().zip(reqs) {
                let r = group.next().unwrap_or_else(|| {
                    Err(Error::Invalid(
                        "commit group returned fewer results than requests (a bug): reopen the store"
                            .into(),
                    ))
                });
                if mine.contains(&t) {
                    results[(t - first) as usize] = Some((r, req));
                    left -= 1;
                } else {
                    q.done.insert(t, (r, req));
                    wake.push(th);
                }
            }
            Self::pass_on(&mut q, &mut wake, &mine);
            drop(q);
            for th in wake {
                th.unpark();
            }
            if left == 0 {
                return results.into_iter().flatten().collect();
            }
            // Some of ours did not fit in that group; we lead the next one (pass_on chose the
            // oldest queued request, which is ours) or wait for it.
            q = self.lock();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn req(n: usize) -> Request {
        Request {
            meta: Vec::new(),
            snap: 1,
            blocks: (0..n as u32)
                .map(|b| Kept {
                    block: b,
                    crc: 0,
                    at: b,
                })
                .collect(),
            data: Scratch::take(0),
        }
    }

    #[test]
    fn every_request_is_committed_once_groups_are_serialized_and_capped() {
        let c = Arc::new(Committer::new(8));
        let running = Arc::new(AtomicUsize::new(0));
        let committed = Arc::new(AtomicUsize::new(0));
        let groups = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..16)
            .map(|t| {
                let (c, running, committed, groups) = (
                    c.clone(),
                    running.clone(),
                    committed.clone(),
                    groups.clone(),
                );
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let n = 1 + (t + i) % 5;
                        let (r, back) = c.commit(req(n), |batch| {
                            assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0, "overlap");
                            let total: usize = batch.iter().map(|r| r.blocks.len()).sum();
                            assert!(batch.len() == 1 || total <= 8, "group of {total} blocks");
                            committed.fetch_add(batch.len(), Ordering::SeqCst);
                            groups.fetch_add(1, Ordering::SeqCst);
                            std::thread::yield_now();
                            running.fetch_sub(1, Ordering::SeqCst);
                            batch.iter().map(|_| Ok(())).collect()
                        });
                        r.unwrap();
                        // The caller gets its own request back.
                        assert_eq!(back.blocks.len(), n);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(committed.load(Ordering::SeqCst), 16 * 200);
        assert!(groups.load(Ordering::SeqCst) <= 16 * 200);
    }

    #[test]
    fn one_caller_commits_many_requests_alongside_others() {
        let c = Arc::new(Committer::new(6));
        let committed = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..6)
            .map(|t| {
                let (c, committed) = (c.clone(), committed.clone());
                std::thread::spawn(move || {
                    for i in 0..100 {
                        // Up to 5 requests of 1..=4 blocks: often more than one group's worth.
                        let sizes: Vec<usize> =
                            (0..1 + (t + i) % 5).map(|k| 1 + (k + i) % 4).collect();
                        let out = c.commit_many(sizes.iter().map(|&n| req(n)).collect(), |batch| {
                            let total: usize = batch.iter().map(|r| r.blocks.len()).sum();
                            assert!(batch.len() == 1 || total <= 6, "group of {total} blocks");
                            committed.fetch_add(batch.len(), Ordering::SeqCst);
                            batch.iter().map(|_| Ok(())).collect()
                        });
                        // One result per request, in order, each with its own request back.
                        let got: Vec<usize> = out
                            .iter()
                            .map(|(r, back)| {
                                assert!(r.is_ok());
                                back.blocks.len()
                            })
                            .collect();
                        assert_eq!(got, sizes);
                    }
                })
            })
            .collect();
        let mut expect = 0;
        for t in 0..6 {
            for i in 0..100 {
                expect += 1 + (t + i) % 5;
            }
        }
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(committed.load(Ordering::SeqCst), expect);
        assert!(c.commit_many(Vec::new(), |_| unreachable!()).is_empty());
    }

    #[test]
    fn a_failed_group_fails_only_its_own_requests() {
        let c = Committer::new(4);
        let (r, _) = c.commit(req(1), |batch| {
            batch
                .iter()
                .map(|_| Err(Error::Invalid("boom".into())))
                .collect()
        });
        assert!(r.unwrap_err().to_string().contains("boom"));
        let (r, _) = c.commit(req(1), |batch| batch.iter().map(|_| Ok(())).collect());
        assert!(r.is_ok());
    }

    #[test]
    fn a_panicking_leader_releases_the_others() {
        let c = Arc::new(Committer::new(4));
        let c2 = c.clone();
        let h = std::thread::spawn(move || {
            let _ = c2.commit(req(1), |_| panic!("leader dies"));
        });
        assert!(h.join().is_err());
        // Leadership was given up: a later commit runs.
        let (r, _) = c.commit(req(1), |batch| batch.iter().map(|_| Ok(())).collect());
        assert!(r.is_ok());
    }
}
