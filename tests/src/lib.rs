//! Shared helpers for snapblk's cross-crate tests: a crash-simulating disk and friends.

pub mod faultdisk;
