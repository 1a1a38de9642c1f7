//! Shared helpers for snapblk's cross-crate tests.
