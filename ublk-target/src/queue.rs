//! One ublk hardware queue: an io_uring with one async task per tag.
//!
//! Each tag task fetches a request, hands it to the worker pool and awaits
//! the tag's eventfd on the same ring, then commits the result and fetches
//! the next request. The queue thread never blocks on the engine, so the
//! whole queue depth is in flight at once.

use crate::io_op::IoRequest;
use crate::worker::{Job, PoolHandle, TagSlot};
use io_uring::{opcode, types};
use libublk::io::{UblkDev, UblkQueue};
use libublk::uring_async::ublk_submit_sqe_async;
use libublk::{BufDesc, UblkError, UblkUringData};
use std::rc::Rc;
use std::sync::Arc;

/// Serves queue `qid` of `dev` until the device stops. Runs on the queue thread.
pub fn serve_queue(qid: u16, dev: &UblkDev, pool: PoolHandle, dev_size: u64) {
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            tracing::error!(qid, error = %e, "cannot set up ublk queue");
            return;
        }
    };
    let exe = Rc::new(smol::LocalExecutor::new());
    let mut tasks = Vec::new();
    for tag in q.tags() {
        let q = q.clone();
        let pool = pool.clone();
        tasks.push(exe.spawn(async move {
            match tag_task(&q, tag, &pool, dev_size).await {
                Ok(()) | Err(UblkError::QueueIsDown) => {}
                Err(e) => tracing::error!(qid, tag, error = %e, "tag task failed"),
            }
        }));
    }
    let exe2 = exe.clone();
    smol::block_on(exe.run(async move {
        let run_ops = || while exe2.try_tick() {};
        let done = || tasks.iter().all(|t| t.is_finished());
        if let Err(e) = libublk::wait_and_handle_io_events(&q, Some(20), run_ops, done).await {
            tracing::error!(qid, error = %e, "queue event loop failed");
        }
    }));
    tracing::info!(qid, "queue stopped");
}

async fn tag_task(
    q: &UblkQueue<'_>,
    tag: u16,
    pool: &PoolHandle,
    dev_size: u64,
) -> Result<(), UblkError> {
    let buf_bytes = q.dev.dev_info.max_io_buf_bytes as usize;
    let slot = Arc::new(TagSlot::new(buf_bytes).map_err(UblkError::IOError)?);
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
            dev_size,
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
            Ok(req) => run_on_pool(pool, &slot, req).await,
        };
        q.submit_io_commit_cmd(tag, BufDesc::Slice(slot.buf().as_slice()), res)
            .await?;
    }
}

/// Hands `req` to a worker and waits, inside the queue's ring, for its eventfd.
async fn run_on_pool(pool: &PoolHandle, slot: &Arc<TagSlot>, req: IoRequest) -> i32 {
    slot.arm();
    if pool
        .submit(Job {
            req,
            slot: slot.clone(),
        })
        .is_err()
    {
        return -libc::EIO;
    }
    // The eventfd read cannot fail short of fd misuse; bound the retries
    // anyway so a broken ring cannot spin forever.
    for _ in 0..1000 {
        let sqe = opcode::Read::new(types::Fd(slot.eventfd()), slot.eventfd_landing(), 8).build();
        match ublk_submit_sqe_async(sqe, UblkUringData::Target as u64).await {
            Ok(8) => {}
            Ok(r) if r == -libc::EINTR || r == -libc::EAGAIN => continue,
            Ok(r) => {
                tracing::error!(res = r, "eventfd read failed");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "eventfd read submit failed");
                continue;
            }
        }
        if let Some(res) = slot.take_result() {
            return res;
        }
    }
    tracing::error!("gave up waiting for an engine worker");
    -libc::EIO
}
