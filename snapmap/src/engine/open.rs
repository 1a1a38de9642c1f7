//! Opening an engine: the origin and store files, their locks, formatting a new store and
//! assembling an engine from what the store holds.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use crate::commit::Committer;
use crate::csum::{fingerprint, CsumCache};
use crate::error::{Error, Result};
use crate::format::{MAX_BLOCK, MIN_BLOCK};
use crate::index::Index;
use crate::io::{BlockDev, FileDev};
use crate::locks::BlockLocks;
use crate::store::{JournalPos, Recovery, Store};

use super::{Counters, Engine, OpenOptions, Writer, GROUP_BYTES, LOCK_STRIPES};

/// Locks `dev` (exclusively for a writer) or reports who is in the way.
pub(super) fn lock(
    dev: &FileDev,
    what: &'static str,
    path: &Path,
    exclusive: bool,
    wait: std::time::Duration,
) -> Result<()> {
    let deadline = std::time::Instant::now() + wait;
    let mut got = dev.try_lock(exclusive);
    while matches!(got, Ok(false)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        got = dev.try_lock(exclusive);
    }
    match got {
        Ok(true) => Ok(()),
        Ok(false) => Err(in_use(
            what,
            path,
            dev.lock_holders(),
            "another snapblk process (a running device, or an offline command on it) or another open in this one",
        )),
        Err(e) => Err(Error::io(format!("lock {what} {}", path.display()), e)),
    }
}

/// [`Error::InUse`] naming `who` holds `path`, or `unknown` when nothing could be seen.
fn in_use(what: &'static str, path: &Path, who: Vec<String>, unknown: &str) -> Error {
    Error::InUse {
        what,
        path: path.display().to_string(),
        holder: if who.is_empty() {
            unknown.to_string()
        } else {
            who.join(", ")
        },
    }
}

/// Opens `path` (the `what`: "backing" or "store") as [`FileDev::open`] does. A block device
/// claimed by someone else (EBUSY) is retried for `opts.lock_wait`, as a lock is, since the
/// claimant may be a daemon that is just exiting; then refused, naming who holds it.
fn open_claimed(path: &Path, what: &'static str, opts: &OpenOptions) -> Result<FileDev> {
    let deadline = std::time::Instant::now() + opts.lock_wait;
    loop {
        match FileDev::open(path, opts.direct_io, opts.read_only) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
                return Err(in_use(
                    what,
                    path,
                    crate::io::claimants(path),
                    "a program that claimed the device exclusively (a mount in another namespace, a running snapblk device, LVM, md or device-mapper)",
                ));
            }
            r => return r.map_err(|e| Error::io(format!("open {what} {}", path.display()), e)),
        }
    }
}

/// Whether the first 64 KiB of `dev` are all zero (a device no store was ever made on).
fn is_blank(dev: &FileDev) -> Result<bool> {
    let mut head = crate::buf::AlignedBuf::zeroed(crate::format::MAX_BLOCK as usize);
    dev.read_at(&mut head, 0)
        .map_err(|e| Error::io(format!("read the start of store {}", dev.name()), e))?;
    Ok(head.iter().all(|&b| b == 0))
}

impl Engine {
    /// Opens `store` for the origin file or device `backing`, formatting a new store when
    /// `opts.create` and it does not exist yet.
    pub fn open_files(backing: &Path, store: &Path, opts: &OpenOptions) -> Result<Engine> {
        if !backing.exists() {
            match opts.size {
                Some(_) if !opts.read_only => {
                    FileDev::create(backing, false).map_err(|e| {
                        Error::io(format!("create backing file {}", backing.display()), e)
                    })?;
                }
                _ => {
                    return Err(Error::NoBacking {
                        path: backing.display().to_string(),
                    })
                }
            }
        }
        let origin = open_claimed(backing, "backing", opts)?;
        // Two writers on one origin or store would each trust an index the other is changing:
        // silent corruption. Readers share; a writer excludes everyone.
        lock(&origin, "backing", backing, !opts.read_only, opts.lock_wait)?;
        let cur = origin
            .len()
            .map_err(|e| Error::io(format!("size of backing {}", backing.display()), e))?;
        if let Some(want) = opts.size {
            if cur < want && !opts.read_only {
                origin.set_len(want).map_err(|e| {
                    Error::io(
                        format!("extend backing {} to {want} bytes", backing.display()),
                        e,
                    )
                })?;
            } else if cur > want {
                return Err(Error::BackingLarger {
                    path: backing.display().to_string(),
                    found: cur,
                    wanted: want,
                });
            }
        }
        let store_exists = store.exists()
            && std::fs::metadata(store)
                .map(|m| m.len() > 0 || !m.is_file())
                .unwrap_or(false);
        let origin: Arc<dyn BlockDev> = Arc::new(origin);
        if store_exists {
            let dev = open_claimed(store, "store", opts)?;
            lock(&dev, "store", store, !opts.read_only, opts.lock_wait)?;
            // A block device cannot be "a path that does not exist yet": a new store on one is
            // made on a blank device (its first 64 KiB, where both superblock copies of any
            // block size live, all zero). Anything else is opened, and so refused unless it is
            // a store: a mistyped --store never formats over someone's data.
            if opts.create && !opts.read_only && dev.is_block_device() && is_blank(&dev)? {
                let dev: Arc<dyn BlockDev> = Arc::new(dev);
                return Engine::format(origin, dev, opts);
            }
            return Engine::open(origin, Arc::new(dev), opts);
        }
        if !opts.create || opts.read_only {
            return Err(Error::NoStore {
                path: store.display().to_string(),
            });
        }
        if store.exists() {
            // An empty regular file: reuse it.
            std::fs::remove_file(store)
                .map_err(|e| Error::io(format!("replace empty store {}", store.display()), e))?;
        }
        let dev = FileDev::create(store, opts.direct_io)
            .map_err(|e| Error::io(format!("create store {}", store.display()), e))?;
        lock(&dev, "store", store, true, opts.lock_wait)?;
        let dev: Arc<dyn BlockDev> = Arc::new(dev);
        match Engine::format(origin, dev, opts) {
            Ok(e) => Ok(e),
            Err(e) => {
                // Leave nothing half-made behind.
                let _ = std::fs::remove_file(store);
                Err(e)
            }
        }
    }

    /// Formats `store` for `origin` (whose current length is the device size) and opens it.
    pub fn format(
        origin: Arc<dyn BlockDev>,
        store: Arc<dyn BlockDev>,
        opts: &OpenOptions,
    ) -> Result<Engine> {
        let bs = opts.block_size;
        if !bs.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&bs) {
            return Err(Error::Invalid(format!(
                "block size {bs} is not a power of two between {MIN_BLOCK} and {MAX_BLOCK}"
            )));
        }
        let size = origin
            .len()
            .map_err(|e| Error::io(format!("size of backing {}", origin.name()), e))?;
        if size == 0 || size % bs as u64 != 0 {
            return Err(Error::Invalid(format!(
                "backing {} is {size} bytes: the size must be a non-zero multiple of the block size ({bs})",
                origin.name()
            )));
        }
        if size / bs as u64 >= u32::MAX as u64 {
            return Err(Error::TooManyBlocks {
                path: origin.name().to_string(),
                block_size: bs,
            });
        }
        let ident = origin.identity().unwrap_or_default();
        let cap = opts.max_store_bytes.map(|b| b / bs as u64);
        let (st, ix, pos) =
            Store::format(store.clone(), bs, size, ident, opts.store_grow_bytes, cap)?;
        Engine::assemble(origin, store, st, ix, pos, Recovery::default(), opts)
    }

    /// Opens an existing store for `origin`.
    pub fn open(
        origin: Arc<dyn BlockDev>,
        store: Arc<dyn BlockDev>,
        opts: &OpenOptions,
    ) -> Result<Engine> {
        let size = origin
            .len()
            .map_err(|e| Error::io(format!("size of backing {}", origin.name()), e))?;
        let ident = origin.identity();
        let origin_name = origin.name();
        let store_name = store.name();
        let adopt = opts.adopt_origin;
        let (mut st, ix, pos, rec) = Store::open(store.clone(), opts.read_only, |sb| {
            if sb.origin_size != size {
                return Err(Error::OriginSize {
                    origin: origin_name.clone(),
                    store: store_name.clone(),
                    expected: sb.origin_size,
                    found: size,
                });
            }
            if let Some(id) = &ident {
                if !sb.origin.path.is_empty() && !sb.origin.matches(id) && !adopt {
                    return Err(Error::WrongOrigin {
                        store: store_name.clone(),
                        expected: sb.origin.path.clone(),
                        found: id.path.clone(),
                    });
                }
            }
            Ok(())
        })?;
        if let Some(id) = ident {
            if !opts.read_only && st.superblock().origin != id {
                // Same origin, moved or copied: remember where it is now.
                st.set_origin(id)?;
            }
        }
        Engine::assemble(origin, store, st, ix, pos, rec, opts)
    }

    pub(super) fn assemble(
        origin: Arc<dyn BlockDev>,
        store_dev: Arc<dyn BlockDev>,
        mut store: Store,
        mut ix: Index,
        pos: JournalPos,
        recovery: Recovery,
        opts: &OpenOptions,
    ) -> Result<Engine> {
        store.set_grow_step(opts.store_grow_bytes);
        let sb = store.superblock().clone();
        let bs = sb.block_size;
        // A limit given now replaces the recorded one (that is how it is changed); none given
        // means the recorded one holds, for offline commands as for the device.
        let mut limit = match opts.max_store_bytes {
            Some(b) => {
                let l = b / bs as u64;
                if !opts.read_only {
                    store.record_limit(Some(l))?;
                }
                Some(l)
            }
            None => store.recorded_limit(),
        };
        if !store_dev.can_grow() {
            let dev_slots = store_dev
                .len()
                .map_err(|e| Error::io(format!("size of store {}", store_dev.name()), e))?
                / bs as u64;
            limit = Some(limit.map_or(dev_slots, |l| l.min(dev_slots)));
        }
        ix.alloc.set_limit(limit);
        store.set_cap(limit);
        let zero = vec![0u8; bs as usize];
        Ok(Engine {
            origin_name: origin.name(),
            store_name: store_dev.name(),
            origin,
            store_dev,
            bs,
            size: sb.origin_size,
            nblocks: sb.origin_size / bs as u64,
            read_only: opts.read_only,
            index: RwLock::new(ix),
            gate: RwLock::new(()),
            locks: BlockLocks::new(LOCK_STRIPES),
            csum: CsumCache::new(opts.csum_entries),
            committer: Committer::new((GROUP_BYTES / bs as usize).max(1)),
            writer: Mutex::new(Writer {
                store,
                pos,
                since_checkpoint: 0,
            }),
            counters: Counters::default(),
            store_full: AtomicBool::new(false),
            failed: Mutex::new(None),
            has_failed: AtomicBool::new(false),
            pins: Mutex::new(std::collections::HashMap::new()),
            recovery,
            checkpoint_every: opts.checkpoint_every.max(1),
            zero_fp: fingerprint(&zero),
        })
    }
}
