//! Dropping what the daemon does not need once it is running as root.
//!
//! The daemon starts as root because creating a ublk device and flushing a
//! block device's cache need `CAP_SYS_ADMIN`. Everything else root could do —
//! load modules, trace processes, raw I/O ports, change uids, bind privileged
//! ports, reconfigure the network — it never needs, so those capabilities are
//! removed from the effective, permitted, inheritable, ambient and bounding
//! sets before the first thread starts (capabilities are per thread; threads
//! inherit their creator's). `no_new_privs` keeps anything the process might
//! execute from regaining them. SECURITY.md lists what remains and why.

use crate::Error;
use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities the daemon keeps, with the reason for each.
pub const KEPT: &[(Capability, &str)] = &[
    (
        Capability::CAP_SYS_ADMIN,
        "ublk control commands (add, start, stop, delete, recover the device) and BLKFLSBUF after a restore",
    ),
    (
        Capability::CAP_DAC_OVERRIDE,
        "open the backing file, store, export files and file:// ship targets the administrator names, whoever owns them",
    ),
    (
        Capability::CAP_DAC_READ_SEARCH,
        "reach those paths through directories root does not own",
    ),
    (
        Capability::CAP_IPC_LOCK,
        "lock I/O buffers in memory beyond RLIMIT_MEMLOCK",
    ),
];

/// Reduces this thread's (and so every later thread's) capabilities to
/// [`KEPT`] and sets `no_new_privs`. Call before any thread is spawned.
pub fn drop_privileges() -> Result<(), Error> {
    let keep: CapsHashSet = KEPT.iter().map(|(c, _)| *c).collect();
    let fail = |what: &'static str| {
        move |e: caps::errors::CapsError| Error::io(what)(std::io::Error::other(e.to_string()))
    };
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the
    // permitted set still holds at this point.
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(fail("drop a capability from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(fail("clear the ambient capabilities"))?;
    caps::clear(None, CapSet::Inheritable).map_err(fail("clear the inheritable capabilities"))?;
    let have =
        caps::read(None, CapSet::Permitted).map_err(fail("read the permitted capabilities"))?;
    let kept: CapsHashSet = have.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Effective, &kept).map_err(fail("set the effective capabilities"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(fail("set the permitted capabilities"))?;
    // SAFETY: prctl with constant integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Error::io("set no_new_privs")(
            std::io::Error::last_os_error(),
        ));
    }
    tracing::info!(
        kept = ?KEPT.iter().map(|(c, _)| c.to_string()).collect::<Vec<_>>(),
        "dropped every other capability"
    );
    Ok(())
}

/// Limits this process's permitted and effective capabilities to [`KEPT`]
/// (what the daemon holds). A client calls this before asking the daemon to
/// act in its view of the filesystem: the daemon reaches that view through
/// `/proc/<client pid>/root`, which the kernel only allows when the client
/// holds no capability the daemon lacks (the daemon has no `CAP_SYS_PTRACE`).
/// It also means the daemon never acts for a client with more power than the
/// client itself has. Does nothing for a process without capabilities.
pub fn limit_to_daemon() -> Result<(), Error> {
    let keep: CapsHashSet = KEPT.iter().map(|(c, _)| *c).collect();
    let fail = |what: &'static str| {
        move |e: caps::errors::CapsError| Error::io(what)(std::io::Error::other(e.to_string()))
    };
    let have =
        caps::read(None, CapSet::Permitted).map_err(fail("read the permitted capabilities"))?;
    let kept: CapsHashSet = have.intersection(&keep).copied().collect();
    if kept == have {
        return Ok(());
    }
    caps::set(None, CapSet::Effective, &kept).map_err(fail("set the effective capabilities"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(fail("set the permitted capabilities"))?;
    Ok(())
}
