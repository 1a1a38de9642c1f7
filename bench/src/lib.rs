//! snapblk benchmarks. `host`: the engine (`snapmap`) on O_DIRECT files against raw io_uring
//! on the same kind of file, in one run, as ratios. See `bench/README.md` for what each case
//! measures and how to read it. `vm`: the results of the VM fio bench (`scripts/bench-vm.sh`).

pub mod host;
pub mod pattern;
pub mod report;
pub mod uring;
pub mod vm;
