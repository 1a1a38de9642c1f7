//! The manual sections of `--help` (examples, output, exit status), one constant per
//! verb, shown after the options by `--help` and left out of the short `-h`.
//!
//! Every line that starts with `snapblk ` is a complete invocation: a unit test in
//! `args.rs` parses each one with the real command-line definition, so the examples
//! cannot drift from the flags. Text after ` #`, ` |`, ` >` or ` &&` is shell, not
//! arguments.

/// `snapblk --help`.
pub const SNAPBLK: &str = "\
Examples:
  Put snapshots in front of a disk image, break things, roll back:
    snapblk create --backing /var/lib/vm0.img --size 20G
    snapblk snapshot create before-upgrade -n 0
    snapblk restore before-upgrade -n 0

  Ship changed blocks off-site every 30 s, and rebuild an image from there:
    snapblk ship -n 0 --to s3://backups/vm0 --interval 30s
    snapblk remote restore --from s3://backups/vm0 --point latest --to recovered.img

  Work on the files while no daemon serves them (offline form):
    snapblk snapshot list --backing /var/lib/vm0.img --store /var/lib/vm0.img.snapstore

  After moving or copying a backing file together with its store:
    snapblk status --backing /new/vm0.img --store /new/vm0.img.snapstore --adopt

  While no daemon runs, change the backing file only through snapblk (offline restore):
  writing it directly (mounting it, dd, a VM using the image) bypasses copy-on-write and
  silently corrupts every snapshot.

  More on one verb:
    snapblk help restore

Exit status:
  0  success
  1  failure; stderr holds one line naming the object and the fix
  2  command-line usage error
  3  `snapblk check`: consistent, but damaged metadata was worked around (see its help)

Environment:
  RUST_LOG               log filter for stderr (default: warn); RUST_LOG=snapblk=debug
                         shows every step of a verb, RUST_LOG=debug adds the libraries
  SNAPBLK_RUN_DIR        daemon state directory (default: /run/snapblk)
  AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
                         settings and credentials of s3:// targets
  SNAPBLK_PEER_KEY_FILE  pre-shared key file of peer:// targets

Progress bars (restore, export, ship --once, remote restore) are drawn on stderr only
when stderr is a terminal; pipes and logs get the result lines alone.";

/// `snapblk create --help`.
pub const CREATE: &str = "\
Examples:
  New 20 GiB device over a new sparse file (store next to it, disk.img.snapstore):
    snapblk create --backing disk.img --size 20G

  Existing disk, store on another disk, 64 KiB tracking blocks, device 3:
    snapblk create --backing /dev/sdb --store /srv/snap/sdb.store --block-size 64K -n 3

  Under systemd (Type=simple), serving in the foreground:
    snapblk create --backing disk.img -n 0 --foreground

  The image and its store were copied together to another directory:
    snapblk create --backing /new/disk.img --store /new/disk.img.snapstore --adopt

Warning:
  Write the backing file only through /dev/ublkbN. After `snapblk delete` (or before
  create), nothing watches the file: writing it directly (mounting it, dd, a VM using
  the image) bypasses copy-on-write and silently corrupts every snapshot. Offline
  commands (--backing) are safe; they go through the engine.

Output:
  The device path (e.g. /dev/ublkb0) on stdout once the device exists. The daemon's
  log is /run/snapblk/<ID>.log.

Exit status:
  0 once the device exists; 1 on failure (not root, ublk_drv not loaded, id in use,
  store belongs to another backing file (moved or copied: --adopt), ...).";

/// `snapblk list --help`.
pub const LIST: &str = "\
Examples:
    snapblk list
    snapblk list --json | jq -r '.[].path'

Output:
  A table: ID, DEVICE, PID, BACKING, STATE (running, daemon dead, stale).
  With --json: an array of {id, path, state, pid, backing, store}; [] when none.";

/// `snapblk status --help`.
pub const STATUS: &str = "\
Examples:
    snapblk status -n 0
    snapblk status --json
    snapblk status --backing disk.img --store disk.img.snapstore

Output:
  Device, daemon, sizes, store use (and STORE FULL), snapshots, the internal ship
  points with the space each holds and its target, \"repaired\" lines for damage that
  opening the store worked around, write and I/O counters, shipping targets with
  their lag. With --json: one object {device, engine, io} (plus ship from a daemon)
  for -n ID or the files, an array of them without -n; engine.internal_snapshots
  holds the ship points and engine.recovery.repaired the repairs.

Exit status:
  0 on success; 1 when the device or the files do not exist or cannot be read.";

/// `snapblk delete --help`.
pub const DELETE: &str = "\
Examples:
    snapblk delete -n 0

Output:
  \"deleted /dev/ublkb0; data stays in BACKING\". The backing file and the store
  are kept: `snapblk create` with the same --backing and --store brings the
  device back with its snapshots.";

/// `snapblk recover --help`.
pub const RECOVER: &str = "\
Examples:
    snapblk recover -n 0

Output:
  The device path on stdout once a new daemon serves it again; writes the old
  daemon acknowledged are not lost.

Exit status:
  0 once reattached; 1 when the daemon still runs or the device is gone from the
  kernel (then create it again).";

/// `snapblk snapshot --help`.
pub const SNAPSHOT: &str = "\
Examples:
    snapblk snapshot create before-upgrade -n 0
    snapblk snapshot list -n 0
    snapblk snapshot delete before-upgrade -n 0
    snapblk snapshot list --backing disk.img --store disk.img.snapstore --json";

/// `snapblk snapshot create --help`.
pub const SNAPSHOT_CREATE: &str = "\
Examples:
    snapblk snapshot create before-upgrade -n 0
    snapblk snapshot create nightly-2026-11-22 --backing disk.img --json

Output:
  \"created snapshot NAME (id N)\". With --json: {id, name, created_unix,
  preserved_blocks, preserved_bytes, internal}.";

/// `snapblk snapshot list --help`.
pub const SNAPSHOT_LIST: &str = "\
Examples:
    snapblk snapshot list -n 0
    snapblk snapshot list --backing disk.img --json | jq -r '.[].name'

Output:
  A table: ID, NAME, CREATED (UTC), PRESERVED (bytes this snapshot holds alone).
  Internal ship points (ship-<hash>-<seq>, kept as the base of the next ship) are not
  in the table; when there are any, a \"note:\" line after it says how much they hold
  and how to release them. With --json: an array of {id, name, created_unix,
  preserved_blocks, preserved_bytes, internal}; [] when none.";

/// `snapblk snapshot delete --help`.
pub const SNAPSHOT_DELETE: &str = "\
Examples:
    snapblk snapshot delete before-upgrade -n 0
    snapblk snapshot delete pre-restore-1795310128 --backing disk.img --json

Output:
  \"deleted snapshot NAME\". With --json: {deleted}.";

/// `snapblk snapshot attach --help`.
pub const SNAPSHOT_ATTACH: &str = "\
Examples:
    snapblk snapshot attach before-upgrade -n 0          # prints /dev/ublkb1
    snapblk snapshot attach before-upgrade -n 0 --as 7 --json
    mount -o ro,noload /dev/ublkb1 /mnt/yesterday         # ext4 (xfs: -o ro,norecovery)

Output:
  The attached device's path. With --json: {id, device, snapshot, volume, read_only}.
  `snapblk list` and `snapblk status -n ID` show attachments; `status -n M` the
  attachment itself.";

/// `snapblk snapshot detach --help`.
pub const SNAPSHOT_DETACH: &str = "\
Examples:
    umount /mnt/yesterday && snapblk snapshot detach -n 1

Output:
  \"detached /dev/ublkbM (snapshot NAME of device ID; the snapshot stays)\". With
  --json: {id, device, snapshot, volume, read_only}.";

/// `snapblk restore --help`.
pub const RESTORE: &str = "\
Examples:
    umount /mnt && snapblk restore before-upgrade -n 0
    snapblk restore before-upgrade --backing disk.img --store disk.img.snapstore

  Undo the restore (the name is printed by the restore):
    snapblk restore pre-restore-1795310128 -n 0

Output:
  A progress bar on stderr when it is a terminal; then \"restored NAME: B blocks
  considered, W written, S already equal\" and the command that undoes it. With
  --json: {restored, secs, report: {snapshot, pre_restore, resumed, blocks, written,
  skipped}}.

Exit status:
  0 once every block is back; 1 otherwise (mounted, unknown snapshot, I/O error). An
  interrupted restore is finished by running the same command again.";

/// `snapblk export --help`.
pub const EXPORT: &str = "\
Examples:
    snapblk export before-upgrade -n 0 --to /srv/images/before-upgrade.img
    snapblk export nightly --backing disk.img --to nightly.img --json

Output:
  A progress bar on stderr when it is a terminal; then \"exported snapshot NAME to
  IMAGE\". With --json: {exported, to}. The image is sparse (zero runs are holes) and
  appears only when complete.

Exit status:
  0 once the image is written and synced; 1 otherwise (IMAGE exists, unknown
  snapshot, no room).";

/// `snapblk diff --help`.
pub const DIFF: &str = "\
Examples:
    snapblk diff before-upgrade after-upgrade -n 0
    snapblk diff before-upgrade -n 0 --json
    snapblk diff nightly --backing disk.img --store disk.img.snapstore

Output:
  \"A -> B: N changed blocks (SIZE) in R ranges, block size BS\", then one line per
  range: START+LEN (in blocks) and its byte range. Without B the newer side is the
  live device. With --json: {from, to, block_size, changed_blocks, ranges: [{start,
  len}]}, to null for the live device.";

/// `snapblk check --help`.
pub const CHECK: &str = "\
Examples:
    snapblk check --backing disk.img --store disk.img.snapstore
    snapblk check -n 0 --json

Output:
  Counts of snapshots, preserved blocks and unreferenced slots, one \"problem:\" line
  per problem, then \"store is consistent\". With --json: {snapshots,
  preserved_blocks, unreferenced_slots, problems, ok}.

Exit status:
  0 when consistent; 1 when any problem was found (the JSON is printed first).";

/// `snapblk ship --help`.
pub const SHIP: &str = "\
Examples:
  One point to a directory; exit 0 only once it is committed:
    snapblk ship -n 0 --to file:///backup/vm0 --once

  Continuous shipping every 30 s from the device's daemon, then control it:
    snapblk ship -n 0 --to s3://backups/vm0 --interval 30s
    snapblk ship -n 0 --to s3://backups/vm0 --pause
    snapblk ship -n 0 --to s3://backups/vm0 --resume
    snapblk ship -n 0 --to s3://backups/vm0 --stop

  To a `snapblk receive` on another machine, or offline from the files:
    snapblk ship -n 0 --to peer://backup-host:7070 --key-file /etc/snapblk/peer.key --once
    snapblk ship --backing disk.img --store disk.img.snapstore --to file:///backup/vm0 --once

Output:
  --once: a progress bar on stderr when it is a terminal, then \"committed point SEQ
  to URL: full|incremental, ...\" (or \"nothing changed\"). With --json: {seq,
  committed, full, data_blocks, zero_blocks, segments, bytes_uploaded, ...}.
  --interval/--pause/--resume/--stop: one line with the job's state; progress and
  lag appear in `snapblk status`.

Exit status:
  0 when the point is committed or nothing changed since the last one (--once),
  or when the daemon took the request; 1 otherwise. An interrupted point is
  resumed by the next ship, never duplicated.";

/// `snapblk receive --help`.
pub const RECEIVE: &str = "\
Examples:
    snapblk receive --listen 0.0.0.0:7070 --dir /backup --key-file /etc/snapblk/peer.key

  The directory then holds the same layout as a file:// target: check it with
  `snapblk remote verify --from file:///backup`.

Output:
  \"receiving on ADDR into DIR\" once listening, \"receiver stopped\" after SIGINT or
  SIGTERM.

Exit status:
  0 after a clean stop by signal; 1 when the key file, the directory or the address
  is unusable.";

/// `snapblk remote --help`.
pub const REMOTE: &str = "\
Examples:
    snapblk remote list --from s3://backups/vm0
    snapblk remote verify --from file:///backup/vm0
    snapblk remote restore --from s3://backups/vm0 --point 12 --to vm0-at-12.img
    snapblk remote prune --from s3://backups/vm0 --keep 10";

/// `snapblk remote list --help`.
pub const REMOTE_LIST: &str = "\
Examples:
    snapblk remote list --from file:///backup/vm0
    snapblk remote list --from s3://backups/vm0 --credentials /etc/snapblk/s3.env --json

Output:
  A table: SEQ, KIND (full or incr), CREATED (UTC), VOLUME, BLOCKS, SEGMENTS,
  STORED. With --json: an array of points {seq, full, created_unix, volume_size,
  data_blocks, zero_blocks, segments, stored_bytes, ...}; [] when none.";

/// `snapblk remote verify --help`.
pub const REMOTE_VERIFY: &str = "\
Examples:
    snapblk remote verify --from file:///backup/vm0
    snapblk remote verify --from peer://backup-host:7070 --key-file /etc/snapblk/peer.key --json

Output:
  \"point SEQ: ok\" or \"point SEQ: NOT RESTORABLE: why\" per point, then the counts
  checked. With --json: {points: [{seq, problem}], problems, segments_checked,
  bytes_checked, ok}.

Exit status:
  0 when every point is restorable; 1 on any problem (the report is printed first).";

/// `snapblk remote restore --help`.
pub const REMOTE_RESTORE: &str = "\
Examples:
    snapblk remote restore --from s3://backups/vm0 --to recovered.img
    snapblk remote restore --from file:///backup/vm0 --point 7 --to /dev/sdc --json

Output:
  A progress bar on stderr when it is a terminal, then \"restored point SEQ to
  IMAGE: SIZE (...) in T s\". With --json: {seq, volume_size, blocks_written,
  segments_read, bytes_downloaded, elapsed}.

Exit status:
  0 once the image is complete and synced; 1 otherwise, and a new IMAGE file is
  removed rather than left half-written.";

/// `snapblk remote prune --help`.
pub const REMOTE_PRUNE: &str = "\
Examples:
    snapblk remote prune --from s3://backups/vm0 --keep 10
    snapblk remote prune --from file:///backup/vm0 --keep 1 --json

Output:
  The points kept and removed, and whether the oldest kept point was rewritten as a
  full base. With --json: {kept, removed, rebased, deleted_objects}.";

/// `snapblk completions --help`.
pub const COMPLETIONS: &str = "\
Examples:
    snapblk completions bash > /etc/bash_completion.d/snapblk
    snapblk completions zsh > \"${fpath[1]}/_snapblk\"
    snapblk completions fish > ~/.config/fish/completions/snapblk.fish";
