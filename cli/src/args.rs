//! The command line (the contract in DESIGN.md, "Command-line contract").
//! Shipping verbs (`ship`, `receive`, `remote`) live in `commands/ship.rs`.

use crate::help;
use crate::size::{parse_block_size, parse_duration, parse_size};
use clap::{ArgGroup, Args, Parser, Subcommand};
use std::path::PathBuf;

/// `--adopt` of every verb that opens a store offline (`-h` line).
const ADOPT_HELP: &str = "Bind a moved or copied store to this backing file";

/// `--adopt` (`--help` text).
const ADOPT_LONG_HELP: &str = "\
Bind a moved or copied store to this backing file

A store records the path and inode of its backing file and refuses any other, so
that a store is never used with the wrong disk. After moving or copying the pair
(e.g. `cp a.img a.img.snapstore /new/`) both differ and the store is refused:
--adopt accepts it and records the backing's new path in the store (a superblock
write, also for verbs that otherwise only read), so later commands need no flag.
Safe only when the store was moved or copied together with this very backing file
and the backing was not written since without a snapblk daemon; otherwise the
snapshots describe another disk and their content is silently wrong.";

/// `ship --to` and `remote ... --from`.
const TARGET_URL_HELP: &str = "Target URL: file:///DIR, s3://BUCKET/PREFIX or peer://HOST:PORT";

/// Snapshots, rollback and off-site shipping for a Linux block device
///
/// snapblk puts a userspace block device (/dev/ublkbN, on the kernel's ublk driver)
/// in front of a backing disk or file. Snapshots take O(1); a write that changes
/// nothing is skipped; the first change of a block after a snapshot preserves the
/// original in a separate store before the new data reaches the disk. `restore`
/// rolls back (and is itself undoable), `ship` sends only the changed blocks to a
/// directory, S3 or a peer, and `remote restore` rebuilds any shipped point.
///
/// Verbs that work on a device take `-n ID` (the N of /dev/ublkbN). With no daemon
/// running, the same verbs work offline on the files: `--backing PATH [--store
/// PATH]`.
#[derive(Debug, Parser)]
#[command(
    verbatim_doc_comment,
    name = "snapblk",
    version,
    propagate_version = true,
    after_long_help = help::SNAPBLK
)]
pub struct Cli {
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// Every verb.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create /dev/ublkbN over a backing file and start its daemon
    ///
    /// Opens (or formats) the store, adds a ublk device and starts one daemon process
    /// per device that serves it; returns once /dev/ublkbN exists. The backing file is
    /// created or extended to --size. The store defaults to <backing>.snapstore and is
    /// bound to its backing file: opening it with another one is refused (--adopt
    /// accepts a pair that was moved or copied together). Needs root and the ublk_drv
    /// module (modprobe ublk_drv). Never write the backing file directly while no
    /// daemon serves it: that bypasses copy-on-write and corrupts every snapshot.
    #[command(verbatim_doc_comment, after_long_help = help::CREATE)]
    Create(CreateArgs),
    /// List devices and their daemons
    ///
    /// Every device with daemon state under the run directory, whether its daemon
    /// runs, died (then `snapblk recover`) or left only stale state.
    #[command(verbatim_doc_comment, after_long_help = help::LIST)]
    List(JsonFlag),
    /// Show a device's status (all devices without -n)
    ///
    /// Sizes, store use, snapshots, write-path counters (blocks written, identical
    /// writes skipped, originals preserved, commit groups), device I/O counters and
    /// shipping jobs. Offline (--backing) it reads the files without changing them.
    #[command(verbatim_doc_comment, after_long_help = help::STATUS)]
    Status(StatusArgs),
    /// Stop and remove a device; data stays on disk
    ///
    /// Asks the daemon to drain in-flight I/O, checkpoint the store and remove the
    /// device. Nothing is deleted from the backing file or the store. Needs root.
    #[command(verbatim_doc_comment, after_long_help = help::DELETE)]
    Delete(IdArgs),
    /// Reattach a device whose daemon died
    ///
    /// The kernel keeps /dev/ublkbN (and its queued I/O) when the daemon dies; this
    /// starts a new daemon that replays the store's log and takes the device over.
    /// Continuous shipping schedules of the old daemon run on (paused ones stay paused).
    /// Needs root.
    #[command(verbatim_doc_comment, after_long_help = help::RECOVER)]
    Recover(RecoverArgs),
    /// Create, list or delete snapshots
    ///
    /// A snapshot is a point in time of the whole device. Taking one only starts a
    /// new, empty delta (O(1)); blocks are preserved as they are first changed.
    #[command(verbatim_doc_comment, subcommand, after_long_help = help::SNAPSHOT)]
    Snapshot(SnapshotCommand),
    /// Roll a device back to a snapshot (device must not be mounted; reversible)
    ///
    /// Writes the snapshot's content of every block changed since it back through the
    /// normal write path: newer snapshots survive, blocks that already match cost
    /// nothing, and an automatic pre-restore-<time> snapshot is taken first so the
    /// restore itself can be undone. A restore interrupted by a crash is finished by
    /// running it again. Refused while the device is mounted or open.
    #[command(verbatim_doc_comment, after_long_help = help::RESTORE)]
    Restore(RestoreArgs),
    /// Write a snapshot as a plain image file
    ///
    /// The image has the device's size and the snapshot's content; the device keeps
    /// running meanwhile.
    #[command(verbatim_doc_comment, after_long_help = help::EXPORT)]
    Export(ExportArgs),
    /// Changed block ranges between two snapshots (or a snapshot and now)
    ///
    /// Answered from the snapshots' block maps; the disk is not read.
    #[command(verbatim_doc_comment, after_long_help = help::DIFF)]
    Diff(DiffArgs),
    /// Verify a store's metadata and preserved blocks
    ///
    /// Reads every preserved block and checks it against its checksum, that no store
    /// slot is used twice and that the allocator agrees with the snapshot index, and
    /// reports damaged metadata copies that opening the store worked around.
    /// Read-only unless --repair.
    #[command(verbatim_doc_comment, after_long_help = help::CHECK)]
    Check(CheckArgs),
    /// Ship changed blocks to a file://, s3:// or peer:// target (once or continuously)
    ///
    /// Each point freezes the device as an internal snapshot, sends only the blocks
    /// changed since the previous point (the first is a sparse full base) as immutable
    /// segment objects, then publishes a manifest as the commit marker. With -n the
    /// device's daemon ships; with --backing this process ships one point (--once).
    /// s3:// settings and credentials come from AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or --credentials, never from the
    /// command line.
    #[command(verbatim_doc_comment, after_long_help = help::SHIP)]
    Ship(ShipArgs),
    /// Serve as a peer:// target: store what senders ship into a directory
    ///
    /// Senders authenticate with the pre-shared key (the key never crosses the wire);
    /// a point is acknowledged only after it is synced here. Runs until SIGINT or
    /// SIGTERM.
    #[command(verbatim_doc_comment, after_long_help = help::RECEIVE)]
    Receive(ReceiveArgs),
    /// List, verify, restore or prune the points on a target (no daemon needed)
    ///
    /// Works on any file://, s3:// or peer:// target that `snapblk ship` wrote to.
    #[command(verbatim_doc_comment, subcommand, after_long_help = help::REMOTE)]
    Remote(RemoteCommand),
    /// Print a shell completion script
    ///
    /// Writes the script for SHELL to stdout; install it where your shell looks.
    #[command(verbatim_doc_comment, after_long_help = help::COMPLETIONS)]
    Completions(CompletionsArgs),
    /// Internal: the per-device daemon process started by create/recover.
    #[command(hide = true)]
    Daemon(DaemonArgs),
}

/// Arguments of `completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

impl Command {
    /// Whether this invocation talks to ship targets over sockets.
    pub fn uses_network(&self) -> bool {
        matches!(
            self,
            Command::Ship(_) | Command::Receive(_) | Command::Remote(_)
        )
    }

    /// Whether this invocation is the long-running daemon.
    pub fn is_daemon(&self) -> bool {
        matches!(self, Command::Daemon(_))
            || matches!(self, Command::Create(c) if c.foreground)
            || matches!(self, Command::Recover(r) if r.foreground)
    }
}

/// `--json`.
#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `-n ID`, required.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// Device id (N in /dev/ublkbN).
    #[arg(short = 'n', long = "id")]
    pub id: u32,
}

/// Which device or files a verb works on: a running device (`-n ID`) or,
/// offline, the files themselves.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["id", "backing"])))]
pub struct Target {
    /// Device id of a running device.
    #[arg(short = 'n', long = "id")]
    pub id: Option<u32>,
    /// Offline: the backing file (no daemon may be serving it)
    ///
    /// Offline commands work on the files while no daemon serves them. Never write the
    /// backing file itself while no daemon runs (mounting it, dd, a VM using the image):
    /// such writes bypass copy-on-write, so every snapshot silently shows the new data.
    #[arg(long, value_name = "PATH", verbatim_doc_comment)]
    pub backing: Option<PathBuf>,
    /// Offline: the store (default: <backing>.snapstore).
    #[arg(long, value_name = "PATH", requires = "backing")]
    pub store: Option<PathBuf>,
    #[arg(long, requires = "backing", help = ADOPT_HELP, long_help = ADOPT_LONG_HELP)]
    pub adopt: bool,
}

/// `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Backing file or disk holding the live data.
    #[arg(long, value_name = "PATH")]
    pub backing: PathBuf,
    /// Snapshot store (default: <backing>.snapstore).
    #[arg(long, value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// Device size; the backing file is created or extended to it.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub size: Option<u64>,
    /// Tracking block size of a new store (4K..64K).
    #[arg(long, value_parser = parse_block_size, default_value = "4K", value_name = "SIZE")]
    pub block_size: u32,
    /// Device id to ask for (default: the kernel picks).
    #[arg(short = 'n', long = "id")]
    pub id: Option<u32>,
    /// Serve in this process instead of starting a daemon.
    #[arg(long)]
    pub foreground: bool,
    /// Number of ublk queues.
    #[arg(long, default_value_t = ublk_target::spec::DEFAULT_QUEUES)]
    pub queues: u16,
    /// Requests in flight per queue.
    #[arg(long, default_value_t = ublk_target::spec::DEFAULT_DEPTH)]
    pub depth: u16,
    /// Engine worker threads (0: one per tag, at most 64).
    #[arg(long, default_value_t = 0)]
    pub workers: u16,
    /// Open backing and store with O_DIRECT.
    #[arg(long)]
    pub direct_io: bool,
    /// Cap on the store's size; writes needing room beyond it fail with ENOSPC. The cap is
    /// recorded in the store, so later opens (offline commands too) keep to it; giving it
    /// again replaces it.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub max_store: Option<u64>,
    #[arg(long, help = ADOPT_HELP, long_help = ADOPT_LONG_HELP)]
    pub adopt: bool,
}

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Device id (default: every device).
    #[arg(short = 'n', long = "id", conflicts_with = "backing")]
    pub id: Option<u32>,
    /// Offline: the backing file.
    #[arg(long, value_name = "PATH")]
    pub backing: Option<PathBuf>,
    /// Offline: the store (default: <backing>.snapstore).
    #[arg(long, value_name = "PATH", requires = "backing")]
    pub store: Option<PathBuf>,
    #[arg(long, requires = "backing", help = ADOPT_HELP, long_help = ADOPT_LONG_HELP)]
    pub adopt: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `recover`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Device id.
    #[arg(short = 'n', long = "id")]
    pub id: u32,
    /// Serve in this process instead of starting a daemon.
    #[arg(long)]
    pub foreground: bool,
}

/// `snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot (O(1))
    ///
    /// Names are 1 to 200 characters of letters, digits, '.', '_', ':' and '-', not
    /// starting with '-', and unique on the device.
    #[command(verbatim_doc_comment, after_long_help = help::SNAPSHOT_CREATE)]
    Create {
        /// Snapshot name.
        name: String,
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List snapshots, oldest first
    ///
    /// Internal ship-point snapshots are not in the table; a note after it says how
    /// much store space they hold.
    #[command(verbatim_doc_comment, after_long_help = help::SNAPSHOT_LIST)]
    List {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot (its blocks merge into the previous one)
    ///
    /// Preserved blocks the previous snapshot still needs move to it (no data is
    /// copied); the rest are freed for reuse.
    #[command(verbatim_doc_comment, after_long_help = help::SNAPSHOT_DELETE)]
    Delete {
        /// Snapshot name.
        name: String,
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Serve a snapshot as its own read-only block device; prints /dev/ublkbM
    ///
    /// The running device's daemon serves the snapshot, block for block, beside the
    /// volume, which keeps running: writes to it, restores and other snapshots never
    /// change what the attached device returns. The kernel sees a read-only disk.
    /// The snapshot cannot be deleted while it is attached.
    #[command(verbatim_doc_comment, after_long_help = help::SNAPSHOT_ATTACH)]
    Attach {
        /// Snapshot name.
        name: String,
        /// Device id of the running volume.
        #[arg(short = 'n', long = "id")]
        id: u32,
        /// Device id for the attached device (default: the next free one).
        #[arg(long = "as", value_name = "M")]
        as_id: Option<u32>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove an attached snapshot's device (the snapshot stays)
    ///
    /// Refused while the device is mounted or open. `snapblk delete -n M` does the same.
    #[command(verbatim_doc_comment, after_long_help = help::SNAPSHOT_DETACH)]
    Detach {
        /// Device id of the attachment.
        #[arg(short = 'n', long = "id")]
        id: u32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot to roll back to.
    pub name: String,
    #[command(flatten)]
    pub target: Target,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Snapshot to export.
    pub name: String,
    #[command(flatten)]
    pub target: Target,
    /// Image file to write (must not exist).
    #[arg(long, value_name = "IMAGE")]
    pub to: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Older snapshot.
    pub from: String,
    /// Newer snapshot (default: the live device).
    pub to: Option<String>,
    #[command(flatten)]
    pub target: Target,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub target: Target,
    /// Offline: open the store read-write, so a damaged superblock copy or checkpoint
    /// that opening worked around is rewritten (exit status 3 without it)
    #[arg(long, requires = "backing")]
    pub repair: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Where target settings and secrets come from besides the environment
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `SNAPBLK_PEER_KEY_FILE`), which wins over the file.
#[derive(Debug, Clone, Args)]
pub struct CredArgs {
    /// File of NAME=value lines (the variables above; mode 0600).
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// Pre-shared key file of a peer:// target (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

/// `ship`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("control").args(["once", "pause", "resume", "stop"])))]
pub struct ShipArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long, value_name = "URL", help = TARGET_URL_HELP)]
    pub to: String,
    /// Time between points of continuous shipping (e.g. 30s, 5m).
    #[arg(long, value_parser = parse_duration, value_name = "DUR", conflicts_with_all = ["once", "pause", "stop"])]
    pub interval: Option<std::time::Duration>,
    /// Ship one point and exit 0 only once it is committed. Offline (`--backing`), when nothing
    /// changed since the last committed point (which already holds the image), it commits
    /// none and exits 0.
    #[arg(long)]
    pub once: bool,
    /// Pause continuous shipping to URL.
    #[arg(long)]
    pub pause: bool,
    /// Resume continuous shipping to URL.
    #[arg(long)]
    pub resume: bool,
    /// Stop continuous shipping to URL.
    #[arg(long)]
    pub stop: bool,
    #[command(flatten)]
    pub creds: CredArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `receive`.
#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// Address to listen on, e.g. 0.0.0.0:7070.
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// Directory to store points in (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Pre-shared key file (mode 0600), the same as the sender's.
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,
}

/// `--from URL` and credentials of a remote verb.
#[derive(Debug, Args)]
pub struct RemoteFrom {
    #[arg(long, value_name = "URL", help = TARGET_URL_HELP)]
    pub from: String,
    #[command(flatten)]
    pub creds: CredArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `remote ...`.
#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Committed points, oldest first.
    #[command(after_long_help = help::REMOTE_LIST)]
    List(RemoteFrom),
    /// Prove every point restorable (exit status non-zero on any problem)
    ///
    /// Decodes every manifest, checks each link of the chain, and reads every segment
    /// against its recorded SHA-256 and every record against its crc32.
    #[command(verbatim_doc_comment, after_long_help = help::REMOTE_VERIFY)]
    Verify(RemoteFrom),
    /// Rebuild the image of a point into a new file (or a block device)
    ///
    /// Every block is checked against its checksum before it is written.
    #[command(verbatim_doc_comment, after_long_help = help::REMOTE_RESTORE)]
    Restore {
        #[command(flatten)]
        from: RemoteFrom,
        /// Point number or `latest`.
        #[arg(long, default_value = "latest", value_name = "SEQ|latest")]
        point: String,
        /// Image to write (must not exist, unless it is a block device).
        #[arg(long, value_name = "IMAGE")]
        to: PathBuf,
    },
    /// Keep the newest N points, merging older ones into a new base
    ///
    /// When the oldest kept point is an increment it is first rewritten as a full
    /// base holding everything it depended on, so every kept point stays restorable;
    /// only then are the older points' objects deleted.
    #[command(verbatim_doc_comment, after_long_help = help::REMOTE_PRUNE)]
    Prune {
        #[command(flatten)]
        from: RemoteFrom,
        /// Points to keep (at least 1).
        #[arg(long, value_name = "N")]
        keep: usize,
    },
}

/// `daemon` (internal).
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The device spec as JSON.
    #[arg(long)]
    pub spec: String,
    /// Take over a device whose daemon died instead of adding one.
    #[arg(long)]
    pub recover: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("snapblk").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The invocations the `Examples:` section of a help text shows: every
    /// `snapblk ...` on an indented line (also after `&&`), cut where shell takes
    /// over (` #`, ` |`, ` >`). The section ends at the next unindented heading.
    fn examples(help: &str) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let section = help
            .lines()
            .skip_while(|l| l.trim_end() != "Examples:")
            .skip(1)
            .take_while(|l| l.is_empty() || l.starts_with(' '));
        for line in section {
            for part in line.split("&&") {
                let Some(rest) = part.trim_start().strip_prefix("snapblk ") else {
                    continue;
                };
                let args = rest.split(['#', '|', '>']).next().unwrap_or("");
                out.push(
                    std::iter::once("snapblk")
                        .chain(args.split_whitespace())
                        .map(str::to_string)
                        .collect(),
                );
            }
        }
        out
    }

    /// The visible commands under `cmd` with their paths (`["snapshot", "create"]`).
    fn visible_commands(
        cmd: &clap::Command,
        path: Vec<String>,
        out: &mut Vec<(Vec<String>, clap::Command)>,
    ) {
        out.push((path.clone(), cmd.clone()));
        for sub in cmd.get_subcommands() {
            if sub.is_hide_set() || sub.get_name() == "help" {
                continue;
            }
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            visible_commands(sub, p, out);
        }
    }

    /// The subcommand path an argument list selects.
    fn selected_path(m: &clap::ArgMatches) -> Vec<String> {
        let mut path = Vec::new();
        let mut m = m;
        while let Some((name, sub)) = m.subcommand() {
            path.push(name.to_string());
            m = sub;
        }
        path
    }

    #[test]
    fn every_example_in_the_long_help_parses_and_runs_its_own_verb() {
        let mut root = Cli::command();
        root.build();
        let mut all = Vec::new();
        visible_commands(&root, Vec::new(), &mut all);
        assert!(all.len() >= 20, "only {} commands found", all.len());
        let mut checked = 0;
        for (path, mut cmd) in all {
            let shown = std::iter::once("snapblk")
                .chain(path.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" ");
            let long = cmd.render_long_help().to_string();
            let short = cmd.render_help().to_string();
            assert!(
                long.contains("Examples:"),
                "{shown} --help has no examples:\n{long}"
            );
            assert!(
                !short.contains("Examples:"),
                "{shown} -h should stay short:\n{short}"
            );
            let ex = examples(&long);
            assert!(!ex.is_empty(), "{shown} --help shows no `snapblk ...` line");
            for argv in ex {
                let line = argv.join(" ");
                let asks_help = argv.iter().any(|a| a == "help" || a == "--help");
                match Cli::command().try_get_matches_from(&argv) {
                    Ok(m) => {
                        let sel = selected_path(&m);
                        assert!(
                            sel.starts_with(&path),
                            "example `{line}` in `{shown} --help` runs `{}` instead",
                            sel.join(" ")
                        );
                        // The derive layer accepts it too (value parsers, groups).
                        Cli::try_parse_from(&argv).unwrap_or_else(|e| {
                            panic!("example `{line}` in `{shown} --help`: {e}")
                        });
                    }
                    Err(e) if asks_help && e.kind() == clap::error::ErrorKind::DisplayHelp => {}
                    Err(e) => panic!("example `{line}` in `{shown} --help` does not parse:\n{e}"),
                }
                checked += 1;
            }
        }
        assert!(checked >= 50, "only {checked} examples checked");
    }

    #[test]
    fn the_example_extractor_cuts_shell_syntax() {
        let ex = examples(
            "snapblk restore is here\nExamples:\n  umount /mnt && snapblk restore a -n 0\n    snapblk list --json | jq .\n  snapblk completions bash > f # x\n  not snapblk here\n\nOutput:\n  snapblk list is not an example",
        );
        let ex: Vec<String> = ex.iter().map(|a| a.join(" ")).collect();
        assert_eq!(
            ex,
            [
                "snapblk restore a -n 0",
                "snapblk list --json",
                "snapblk completions bash"
            ]
        );
        // A broken example is caught.
        let bad = &examples("Examples:\n    snapblk restore -n 0 --to x")[0];
        assert!(Cli::try_parse_from(bad).is_err());
    }

    #[test]
    fn create_takes_the_contract_flags() {
        let c = parse(&[
            "create",
            "--backing",
            "d.img",
            "--size",
            "20G",
            "--block-size",
            "16K",
            "-n",
            "3",
            "--foreground",
        ])
        .unwrap();
        let Command::Create(a) = c.command else {
            panic!("not create")
        };
        assert_eq!(a.backing, PathBuf::from("d.img"));
        assert_eq!(a.size, Some(20 << 30));
        assert_eq!(a.block_size, 16384);
        assert_eq!(a.id, Some(3));
        assert!(a.foreground);
        assert_eq!(a.store, None);
        assert_eq!((a.queues, a.depth), (1, 64));
        assert!(parse(&["create", "--backing", "d.img", "--block-size", "3K"]).is_err());
        assert!(parse(&["create"]).is_err(), "--backing is required");
    }

    #[test]
    fn snapshot_verbs_take_online_or_offline_targets() {
        let c = parse(&["snapshot", "create", "s1", "-n", "0"]).unwrap();
        assert!(
            matches!(c.command, Command::Snapshot(SnapshotCommand::Create { ref name, ref target, .. })
            if name == "s1" && target.id == Some(0))
        );
        let c = parse(&[
            "snapshot",
            "list",
            "--backing",
            "a",
            "--store",
            "b",
            "--json",
        ])
        .unwrap();
        assert!(
            matches!(c.command, Command::Snapshot(SnapshotCommand::List { ref target, json: true })
            if target.backing.is_some() && target.store.is_some())
        );
        // Neither or both kinds of target are refused.
        assert!(parse(&["snapshot", "list"]).is_err());
        assert!(parse(&["snapshot", "list", "-n", "0", "--backing", "a"]).is_err());
        // --store alone is not a target.
        assert!(parse(&["restore", "s", "--store", "b"]).is_err());
    }

    #[test]
    fn restore_export_diff_status_parse() {
        let c = parse(&["restore", "before", "-n", "2"]).unwrap();
        assert!(
            matches!(c.command, Command::Restore(ref r) if r.name == "before" && r.target.id == Some(2))
        );
        let c = parse(&["export", "s", "-n", "0", "--to", "/tmp/x.img"]).unwrap();
        assert!(
            matches!(c.command, Command::Export(ref e) if e.to == std::path::Path::new("/tmp/x.img"))
        );
        assert!(
            parse(&["export", "s", "-n", "0"]).is_err(),
            "--to is required"
        );
        let c = parse(&["diff", "a", "b", "-n", "0", "--json"]).unwrap();
        assert!(
            matches!(c.command, Command::Diff(ref d) if d.from == "a" && d.to.as_deref() == Some("b") && d.json)
        );
        let c = parse(&["diff", "a", "--backing", "x"]).unwrap();
        assert!(matches!(c.command, Command::Diff(ref d) if d.to.is_none()));
        let c = parse(&["status", "--json"]).unwrap();
        assert!(matches!(c.command, Command::Status(ref s) if s.id.is_none() && s.json));
        let c = parse(&["delete", "-n", "4"]).unwrap();
        assert!(matches!(c.command, Command::Delete(IdArgs { id: 4 })));
        assert!(parse(&["delete"]).is_err());
        let c = parse(&["recover", "-n", "1"]).unwrap();
        assert!(matches!(c.command, Command::Recover(ref r) if r.id == 1 && !r.foreground));
        let c = parse(&["check", "--backing", "x", "--store", "y"]).unwrap();
        assert!(matches!(c.command, Command::Check(_)));
    }

    #[test]
    fn ship_and_remote_take_the_contract_flags() {
        let c = parse(&["ship", "-n", "0", "--to", "file:///r", "--once"]).unwrap();
        assert!(matches!(c.command, Command::Ship(ref s) if s.once && s.target.id == Some(0)));
        let c = parse(&["ship", "-n", "0", "--to", "s3://b/p", "--interval", "2s"]).unwrap();
        assert!(
            matches!(c.command, Command::Ship(ref s) if s.interval == Some(std::time::Duration::from_secs(2)))
        );
        let c = parse(&["ship", "--backing", "a", "--to", "file:///r", "--once"]).unwrap();
        assert!(matches!(c.command, Command::Ship(ref s) if s.target.backing.is_some()));
        assert!(parse(&["ship", "-n", "0", "--to", "file:///r", "--once", "--pause"]).is_err());
        assert!(parse(&["ship", "-n", "0", "--to", "file:///r", "--interval", "x"]).is_err());
        assert!(parse(&["ship", "-n", "0"]).is_err(), "--to is required");
        let c = parse(&[
            "remote",
            "restore",
            "--from",
            "file:///r",
            "--point",
            "3",
            "--to",
            "o.img",
        ])
        .unwrap();
        assert!(
            matches!(c.command, Command::Remote(RemoteCommand::Restore { ref point, .. }) if point == "3")
        );
        let c = parse(&["remote", "verify", "--from", "file:///r", "--json"]).unwrap();
        assert!(matches!(c.command, Command::Remote(RemoteCommand::Verify(ref f)) if f.json));
        let c = parse(&[
            "receive",
            "--listen",
            "127.0.0.1:7070",
            "--dir",
            "d",
            "--key-file",
            "k",
        ])
        .unwrap();
        assert!(matches!(c.command, Command::Receive(_)));
    }
}
