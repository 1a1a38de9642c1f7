//! Shared helpers for snapblk's cross-crate tests: a crash-simulating disk, and the dm-log-writes replayer of the VM power-cut scenario.

pub mod faultdisk;
pub mod logwrites;
