//! Snapshot lifecycle (create, delete, list) and what changed between snapshots.

use std::sync::atomic::Ordering;

use roaring::RoaringBitmap;
use serde::Serialize;

use crate::commit::Request;
use crate::error::{Error, Result};
use crate::format::Entry;

use super::{now_unix, read_lock, write_lock, Engine};

/// A snapshot as users see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SnapshotInfo {
    /// Id, unique for the store's lifetime.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Blocks preserved in its delta.
    pub preserved_blocks: u64,
    /// Bytes preserved in its delta.
    pub preserved_bytes: u64,
    /// Hidden from users (ship points).
    pub internal: bool,
}

/// A run of blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BlockRange {
    /// First block.
    pub start: u64,
    /// Number of blocks.
    pub len: u64,
}

/// Names users may give snapshots.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

impl Engine {
    /// Takes a snapshot named `name` of everything written so far. O(1): it starts a new, empty
    /// delta (after flushing the origin, so the snapshot holds every acknowledged write).
    pub fn create_snapshot(&self, name: &str) -> Result<SnapshotInfo> {
        validate_name(name)?;
        let _gate = write_lock(&self.gate);
        self.create_locked(name, false)
    }

    /// Takes a snapshot hidden from [`Engine::snapshots`] (ship points).
    pub fn create_internal_snapshot(&self, name: &str) -> Result<SnapshotInfo> {
        validate_name(name)?;
        let _gate = write_lock(&self.gate);
        self.create_locked(name, true)
    }

    pub(super) fn create_locked(&self, name: &str, internal: bool) -> Result<SnapshotInfo> {
        self.check_writable()?;
        self.flush()?;
        let id = {
            let ix = read_lock(&self.index);
            if ix.pos_by_name(name).is_some() {
                return Err(Error::SnapshotExists(name.to_string()));
            }
            if ix.next_id == u64::MAX {
                // Only a damaged or crafted checkpoint gets here; journaling this id would
                // make the store fail its own replay.
                return Err(Error::Corrupt {
                    store: self.store_dev.name(),
                    detail: "the next snapshot id is out of range".to_string(),
                });
            }
            ix.next_id
        };
        let created_unix = now_unix();
        self.commit(Request::meta(vec![Entry::SnapshotCreated {
            id,
            name: name.to_string(),
            created_unix,
            internal,
        }]))?;
        Ok(SnapshotInfo {
            id,
            name: name.to_string(),
            created_unix,
            preserved_blocks: 0,
            preserved_bytes: 0,
            internal,
        })
    }

    /// Deletes snapshot `name`. Its delta merges into the previous snapshot's (no data moves);
    /// blocks no other snapshot needs are freed for reuse.
    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        let _gate = write_lock(&self.gate);
        self.check_writable()?;
        let id = {
            let ix = read_lock(&self.index);
            ix.snaps[self.snap_pos(&ix, name)?].id
        };
        // Checked under the gate: pin_snapshot takes it shared, so a pin cannot slip in
        // between this check and the delete.
        if self.pins().get(&id).is_some_and(|&n| n > 0) {
            return Err(Error::SnapshotPinned(name.to_string()));
        }
        self.commit(Request::meta(vec![Entry::SnapshotDeleted { id }]))?;
        // Freed space may end a store-full condition.
        self.store_full.store(false, Ordering::Release);
        Ok(())
    }

    fn pins(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, u32>> {
        self.pins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps snapshot `name` from being deleted until [`Engine::unpin_snapshot`] is called
    /// with the id this returns, as often as it was pinned (an attached device pins its
    /// snapshot for as long as it is attached). Its content never changes anyway; the pin
    /// keeps it existing.
    pub fn pin_snapshot(&self, name: &str) -> Result<u64> {
        let _gate = read_lock(&self.gate);
        let id = {
            let ix = read_lock(&self.index);
            ix.snaps[self.snap_pos(&ix, name)?].id
        };
        *self.pins().entry(id).or_insert(0) += 1;
        Ok(id)
    }

    /// Drops one pin of the snapshot with id `id` (see [`Engine::pin_snapshot`]).
    pub fn unpin_snapshot(&self, id: u64) {
        let mut pins = self.pins();
        if let Some(n) = pins.get_mut(&id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                pins.remove(&id);
            }
        }
    }

    /// Whether snapshot `name` is pinned.
    pub fn is_pinned(&self, name: &str) -> bool {
        let ix = read_lock(&self.index);
        self.snap_pos(&ix, name)
            .is_ok_and(|p| self.pins().contains_key(&ix.snaps[p].id))
    }

    pub(super) fn infos(&self, internal: Option<bool>) -> Vec<SnapshotInfo> {
        let ix = read_lock(&self.index);
        ix.snaps
            .iter()
            .filter(|s| internal.is_none_or(|i| s.internal == i))
            .map(|s| SnapshotInfo {
                id: s.id,
                name: s.name.clone(),
                created_unix: s.created_unix,
                preserved_blocks: s.delta.len(),
                preserved_bytes: s.delta.len() * self.bs as u64,
                internal: s.internal,
            })
            .collect()
    }

    /// User snapshots, oldest first.
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.infos(Some(false))
    }

    /// Every snapshot including internal ones, oldest first.
    pub fn all_snapshots(&self) -> Vec<SnapshotInfo> {
        self.infos(None)
    }

    /// Blocks that may differ between snapshot `from` and snapshot `to` (None: the live image).
    /// Answered from the deltas alone; the disk is not scanned.
    pub fn changed_blocks(&self, from: &str, to: Option<&str>) -> Result<RoaringBitmap> {
        let ix = read_lock(&self.index);
        let a = self.snap_pos(&ix, from)?;
        let b = match to {
            Some(t) => self.snap_pos(&ix, t)?,
            None => ix.snaps.len(),
        };
        Ok(ix.union(a.min(b), a.max(b)))
    }

    /// Diagnostics: (block, store slot) of every block preserved in snapshot `name`'s delta.
    pub fn preserved_slots(&self, name: &str) -> Result<Vec<(u64, u64)>> {
        let ix = read_lock(&self.index);
        let pos = self.snap_pos(&ix, name)?;
        Ok(ix.snaps[pos]
            .delta
            .entries()
            .map(|(b, r)| (b as u64, r.slot))
            .collect())
    }

    /// [`Engine::changed_blocks`] as runs of consecutive blocks.
    pub fn diff(&self, from: &str, to: Option<&str>) -> Result<Vec<BlockRange>> {
        let set = self.changed_blocks(from, to)?;
        let mut out: Vec<BlockRange> = Vec::new();
        for b in set.iter() {
            let b = b as u64;
            match out.last_mut() {
                Some(r) if r.start + r.len == b => r.len += 1,
                _ => out.push(BlockRange { start: b, len: 1 }),
            }
        }
        Ok(out)
    }
}
