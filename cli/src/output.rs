//! Text and JSON rendering of the daemon's typed answers.

use shipper::SchedulerStats;
use snapblk_daemon::control::answer::{DiffAnswer, StatusAnswer};
use snapmap::SnapshotInfo;

/// Prints `v` as pretty JSON on stdout.
pub fn json<T: serde::Serialize + ?Sized>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(text) => println!("{text}"),
        // Plain data types always serialize; say so rather than print nothing.
        Err(e) => eprintln!("snapblk: cannot encode the answer as JSON: {e}"),
    }
}

/// `1536` -> `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `s` as one shell word: unchanged when it holds only characters no shell treats
/// specially, else in single quotes (an embedded `'` becomes `'\''`), so a printed
/// command runs as is when pasted.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,=@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// How a printed command names the files: `-n ID` when a daemon serves them, else
/// `--backing B --store S`, shell-quoted.
pub fn target_args(id: Option<u64>, backing: &str, store: &str) -> String {
    match id {
        Some(id) => format!("-n {id}"),
        None => format!(
            "--backing {} --store {}",
            shell_quote(backing),
            shell_quote(store)
        ),
    }
}

/// The internal ship-point snapshots of a status, each with the target it belongs to
/// when a ship state file next to the store names it.
fn ship_points(st: &StatusAnswer) -> Vec<(&SnapshotInfo, Option<&str>)> {
    let Some(e) = &st.engine else {
        return Vec::new();
    };
    e.internal_snapshots
        .iter()
        .map(|p| (p, st.target_of(&p.name)))
        .collect()
}

/// The advice on releasing ship points, for `status` and `snapshot list`.
const RELEASE_SHIP_POINT: &str = "each is kept as the base of its target's next incremental ship; `snapblk snapshot delete NAME` releases one (freeing what no older snapshot needs), and the next ship to that target then sends a full base";

/// The line `snapshot list` ends with when internal ship points hold store space
/// that the table (user snapshots only) does not show.
pub fn ship_points_footer(st: &StatusAnswer) {
    let pts = ship_points(st);
    if pts.is_empty() {
        return;
    }
    let held: u64 = pts.iter().map(|p| p.0.preserved_bytes).sum();
    let names: Vec<&str> = pts.iter().map(|p| p.0.name.as_str()).collect();
    let one = pts.len() == 1;
    println!(
        "note: {} internal ship point{} ({}) hold{} {} of the store, not listed above (`snapblk status` shows {}); {RELEASE_SHIP_POINT}",
        pts.len(),
        if one { "" } else { "s" },
        names.join(", "),
        if one { "s" } else { "" },
        bytes(held),
        if one { "it" } else { "them" }
    );
}

/// The snapshot table.
pub fn snapshots(rows: &[SnapshotInfo]) {
    if rows.is_empty() {
        println!("no snapshots");
        return;
    }
    println!(
        "{:<6} {:<32} {:<20} {:>12}",
        "ID", "NAME", "CREATED (UTC)", "PRESERVED"
    );
    for r in rows {
        println!(
            "{:<6} {:<32} {:<20} {:>12}",
            r.id,
            r.name,
            utc(r.created_unix),
            bytes(r.preserved_bytes)
        );
    }
}

/// A diff answer.
pub fn diff(v: &DiffAnswer) {
    let bs = u64::from(v.block_size.max(1));
    let changed = v.changed_blocks;
    println!(
        "{} -> {}: {changed} changed blocks ({}) in {} ranges, block size {bs}",
        v.from,
        v.to.as_deref().unwrap_or("(live)"),
        bytes(changed * bs),
        v.ranges.len()
    );
    for r in &v.ranges {
        let (start, len) = (r.start, r.len);
        println!(
            "{start}+{len}\tbytes {}..{}",
            start * bs,
            (start + len) * bs
        );
    }
}

fn path_or_empty(p: &Option<std::path::PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// A status answer (device and io absent offline, engine absent for a dead daemon).
pub fn status(v: &StatusAnswer) {
    if let Some(d) = &v.device {
        println!(
            "device      {} (id {}, {})",
            d.path.display(),
            d.id,
            d.state
        );
        if let Some(pid) = d.pid {
            println!("daemon pid  {pid}");
        }
        if let Some(a) = &d.attachment {
            println!(
                "attachment  snapshot {} of device {} (read-only)",
                a.snapshot, a.volume
            );
        } else {
            println!("backing     {}", path_or_empty(&d.backing));
            println!("store       {}", path_or_empty(&d.store));
        }
        if let Some(s) = &d.serving {
            println!(
                "queues      {} x depth {}, {} engine workers",
                s.nr_queues, s.depth, s.workers
            );
        }
    }
    for a in &v.attachments {
        println!(
            "attached    {} (snapshot {}, read-only)",
            a.device.display(),
            a.snapshot
        );
    }
    if let Some(e) = &v.engine {
        if v.device.is_none() {
            println!("backing     {}", e.origin);
            println!("store       {}", e.store);
        }
        println!(
            "size        {} (block size {})",
            bytes(e.size_bytes),
            e.block_size
        );
        let cap = e
            .store_capacity_bytes
            .map(|c| format!(" of {}", bytes(c)))
            .unwrap_or_default();
        let full = if e.store_full {
            "  STORE FULL: writes needing a preserve fail; delete a snapshot or a ship point, or give the store more room (a larger --max-store, or free space on its filesystem)"
        } else {
            ""
        };
        println!("store used  {}{cap}{full}", bytes(e.store_used_bytes));
        if let Some(f) = &e.failed {
            println!("FAILED      {f}");
        }
        let how = target_args(
            v.device.as_ref().map(|d| u64::from(d.id)),
            &e.origin,
            &e.store,
        );
        if let Some(r) = &e.restore_in_progress {
            println!(
                "RESTORE INTERRUPTED: target {}, run `snapblk restore {} {how}` again to finish",
                r.target,
                shell_quote(&r.target)
            );
        }
        println!("snapshots   {}", e.snapshots.len());
        // Ship points are internal snapshots: not in `snapshot list`, but they hold
        // store space, so the space they hold is accounted for here.
        let pts = ship_points(v);
        for (p, target) in &pts {
            println!(
                "ship point  {}: holds {}, frozen {}, {}",
                p.name,
                bytes(p.preserved_bytes),
                utc(p.created_unix),
                target.map_or(
                    "target unknown (no ship state file next to the store)".into(),
                    |t| format!("for {t}")
                )
            );
        }
        if !pts.is_empty() {
            println!("            ({RELEASE_SHIP_POINT})");
        }
        // Damage that opening the store worked around: the store works, but has lost
        // redundancy (a superblock copy or checkpoint) until it is rewritten.
        let repaired = &e.recovery.repaired;
        for r in repaired {
            println!("repaired    {r}");
        }
        if !repaired.is_empty() {
            if v.device.is_some() {
                println!("            (worked around when the daemon opened the store, and rewritten then)");
            } else {
                println!(
                    "            (worked around in memory, still damaged on disk: `snapblk check --repair {how}` rewrites it)"
                );
            }
        }
        let st = &e.stats;
        println!(
            "writes      {} ({} blocks written, {} skipped identical, {} preserved, {} commit groups)",
            st.writes, st.blocks_written, st.blocks_skipped_identical, st.preserves, st.commit_groups
        );
    }
    if let Some(io) = &v.io {
        println!(
            "device io   {} reads ({}), {} writes ({}), {} flushes, {} discards, {} errors",
            io.reads,
            bytes(io.bytes_read),
            io.writes,
            bytes(io.bytes_written),
            io.flushes,
            io.discards,
            io.errors
        );
    }
    for j in &v.ship {
        println!("ship        {}", ship_job(&j.url, &j.stats));
    }
}

/// One line per continuous shipping target: state, last committed point, lag (RPO),
/// throughput and failures.
pub fn ship_job(url: &str, st: &SchedulerStats) -> String {
    let point = match &st.last_ship {
        Some(l) => format!("last point {} frozen {}", l.seq, utc(l.created_unix)),
        None => "no point committed yet".into(),
    };
    let lag = st
        .lag
        .map_or("lag n/a".into(), |l| format!("lag {}s", l.as_secs()));
    let mut line = format!(
        "{} {}{}: {point}, {lag}, {} committed, {} unchanged, {} up ({}/s last, {}/s avg), {} failures",
        url,
        st.state,
        if st.shipping { " (shipping now)" } else { "" },
        st.points_committed,
        st.unchanged,
        bytes(st.bytes_uploaded),
        bytes(st.last_throughput_bps as u64),
        bytes(st.avg_throughput_bps as u64),
        st.failures,
    );
    if let Some(e) = &st.last_error {
        line.push_str(&format!("; last error: {e}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("/srv/disk.img"), "/srv/disk.img");
        assert_eq!(shell_quote("/tmp/sp ace/a.img"), "'/tmp/sp ace/a.img'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn formats_bytes_and_times() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(20 << 30), "20.0 GiB");
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20");
    }
}
