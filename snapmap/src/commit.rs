//! Group commit: many concurrent preserves (and snapshot events) share one store write and one
//! sync. A caller queues its request and either waits or, if no commit is running, becomes the
//! leader and commits everything queued so far. The leader role also serializes commit groups,
//! which the recovery argument needs: group N+1 is only written after group N's sync returned.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex};

use crate::error::Result;
use crate::format::Entry;
use crate::io::AlignedBuf;

/// One caller's share of a commit group.
pub(crate) struct Request {
    /// Events to journal after the preserves (snapshot created, deleted, …).
    pub meta: Vec<Entry>,
    /// Snapshot whose delta receives the preserved blocks.
    pub snap: u64,
    /// Origin blocks being preserved.
    pub blocks: Vec<u32>,
    /// Their original contents, `blocks.len()` blocks back to back.
    pub data: AlignedBuf,
}

impl Request {
    /// A request that only journals events.
    pub fn meta(meta: Vec<Entry>) -> Request {
        Request {
            meta,
            snap: 0,
            blocks: Vec::new(),
            data: AlignedBuf::zeroed(0),
        }
    }
}

struct Queue {
    pending: VecDeque<(u64, Request)>,
    done: HashMap<u64, Result<()>>,
    next_ticket: u64,
    leader: bool,
}

/// The queue all commits go through.
pub(crate) struct Committer {
    queue: Mutex<Queue>,
    cv: Condvar,
    max_blocks: usize,
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
            }),
            cv: Condvar::new(),
            max_blocks,
        }
    }

    /// Queues `req` and returns once it is durable (or failed). `run` commits one group and
    /// returns one result per request, in order.
    pub fn commit(
        &self,
        req: Request,
        run: impl Fn(Vec<(u64, Request)>) -> Vec<(u64, Result<()>)>,
    ) -> Result<()> {
        // The queue holds plain data; a panic elsewhere cannot leave it half-updated.
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.pending.push_back((ticket, req));
        loop {
            if let Some(r) = q.done.remove(&ticket) {
                return r;
            }
            if !q.leader {
                q.leader = true;
                let mut batch = Vec::new();
                let mut blocks = 0;
                while let Some((_, r)) = q.pending.front() {
                    if !batch.is_empty() && blocks + r.blocks.len() > self.max_blocks {
                        break;
                    }
                    blocks += r.blocks.len();
                    if let Some(item) = q.pending.pop_front() {
                        batch.push(item);
                    }
                }
                drop(q);
                let results = run(batch);
                q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                for (t, r) in results {
                    q.done.insert(t, r);
                }
                q.leader = false;
                self.cv.notify_all();
                continue;
            }
            q = self.cv.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }
}
