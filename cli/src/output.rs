//! Text and JSON rendering of replies.

use serde_json::Value;

/// Prints `v` as pretty JSON on stdout.
pub fn json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
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

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
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

/// The internal ship-point snapshots of an engine status, with the target each one
/// belongs to when a ship state file next to the store names it.
fn ship_points(e: &Value) -> Vec<(String, u64, u64, Option<String>)> {
    let empty = vec![];
    let pts = e
        .get("internal_snapshots")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    if pts.is_empty() {
        return Vec::new();
    }
    let targets = ublk_target::ship::ship_targets(std::path::Path::new(s(e, "store")));
    pts.iter()
        .map(|p| {
            let name = s(p, "name").to_string();
            let target = targets
                .iter()
                .find(|(prefix, _)| name.starts_with(prefix.as_str()))
                .map(|(_, t)| t.clone());
            (name, u(p, "preserved_bytes"), u(p, "created_unix"), target)
        })
        .collect()
}

/// The advice on releasing ship points, for `status` and `snapshot list`.
const RELEASE_SHIP_POINT: &str = "each is kept as the base of its target's next incremental ship; `snapblk snapshot delete NAME` releases one (freeing what no older snapshot needs), and the next ship to that target then sends a full base";

/// The line `snapshot list` ends with when internal ship points hold store space
/// that the table (user snapshots only) does not show. `e` is the engine status.
pub fn ship_points_footer(e: &Value) {
    let pts = ship_points(e);
    if pts.is_empty() {
        return;
    }
    let held: u64 = pts.iter().map(|p| p.1).sum();
    let names: Vec<&str> = pts.iter().map(|p| p.0.as_str()).collect();
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
pub fn snapshots(list: &Value) {
    let empty = vec![];
    let rows = list.as_array().unwrap_or(&empty);
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
            u(r, "id"),
            s(r, "name"),
            utc(u(r, "created_unix")),
            bytes(u(r, "preserved_bytes"))
        );
    }
}

/// A diff reply.
pub fn diff(v: &Value) {
    let bs = u(v, "block_size").max(1);
    let changed = u(v, "changed_blocks");
    let empty = vec![];
    let ranges = v.get("ranges").and_then(Value::as_array).unwrap_or(&empty);
    println!(
        "{} -> {}: {changed} changed blocks ({}) in {} ranges, block size {bs}",
        s(v, "from"),
        v.get("to").and_then(Value::as_str).unwrap_or("(live)"),
        bytes(changed * bs),
        ranges.len()
    );
    for r in ranges {
        let (start, len) = (u(r, "start"), u(r, "len"));
        println!(
            "{start}+{len}\tbytes {}..{}",
            start * bs,
            (start + len) * bs
        );
    }
}

/// A status reply: `{device, io, engine}` (device and io absent offline).
pub fn status(v: &Value) {
    if let Some(d) = v.get("device").filter(|d| !d.is_null()) {
        println!(
            "device      {} (id {}, {})",
            s(d, "path"),
            u(d, "id"),
            s(d, "state")
        );
        if d.get("pid").is_some() {
            println!("daemon pid  {}", u(d, "pid"));
        }
        println!("backing     {}", s(d, "backing"));
        println!("store       {}", s(d, "store"));
        if d.get("nr_queues").is_some() {
            println!(
                "queues      {} x depth {}, {} engine workers",
                u(d, "nr_queues"),
                u(d, "depth"),
                u(d, "workers")
            );
        }
    }
    if let Some(e) = v.get("engine").filter(|e| !e.is_null()) {
        if v.get("device").is_none_or(Value::is_null) {
            println!("backing     {}", s(e, "origin"));
            println!("store       {}", s(e, "store"));
        }
        println!(
            "size        {} (block size {})",
            bytes(u(e, "size_bytes")),
            u(e, "block_size")
        );
        let cap = e
            .get("store_capacity_bytes")
            .and_then(Value::as_u64)
            .map(|c| format!(" of {}", bytes(c)))
            .unwrap_or_default();
        let full = if e.get("store_full").and_then(Value::as_bool) == Some(true) {
            "  STORE FULL: writes needing a preserve fail; delete a snapshot or a ship point, or give the store more room (a larger --max-store, or free space on its filesystem)"
        } else {
            ""
        };
        println!("store used  {}{cap}{full}", bytes(u(e, "store_used_bytes")));
        if let Some(f) = e.get("failed").and_then(Value::as_str) {
            println!("FAILED      {f}");
        }
        let device = v.get("device").filter(|d| !d.is_null());
        let how = target_args(
            device.and_then(|d| d.get("id")).and_then(Value::as_u64),
            s(e, "origin"),
            s(e, "store"),
        );
        if let Some(r) = e.get("restore_in_progress").filter(|r| !r.is_null()) {
            println!(
                "RESTORE INTERRUPTED: target {}, run `snapblk restore {} {how}` again to finish",
                s(r, "target"),
                shell_quote(s(r, "target"))
            );
        }
        let n = e
            .get("snapshots")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        println!("snapshots   {n}");
        // Ship points are internal snapshots: not in `snapshot list`, but they hold
        // store space, so the space they hold is accounted for here.
        let pts = ship_points(e);
        for (name, held, created, target) in &pts {
            println!(
                "ship point  {name}: holds {}, frozen {}, {}",
                bytes(*held),
                utc(*created),
                target.as_ref().map_or(
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
        let empty = vec![];
        let repaired = e
            .get("recovery")
            .and_then(|r| r.get("repaired"))
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        for r in repaired {
            println!("repaired    {}", r.as_str().unwrap_or(""));
        }
        if !repaired.is_empty() {
            if device.is_some() {
                println!("            (worked around when the daemon opened the store, and rewritten then)");
            } else {
                println!(
                    "            (worked around in memory, still damaged on disk: `snapblk check --repair {how}` rewrites it)"
                );
            }
        }
        if let Some(st) = e.get("stats") {
            println!(
                "writes      {} ({} blocks written, {} skipped identical, {} preserved, {} commit groups)",
                u(st, "writes"),
                u(st, "blocks_written"),
                u(st, "blocks_skipped_identical"),
                u(st, "preserves"),
                u(st, "commit_groups")
            );
        }
    }
    if let Some(io) = v.get("io").filter(|x| !x.is_null()) {
        println!(
            "device io   {} reads ({}), {} writes ({}), {} flushes, {} discards, {} errors",
            u(io, "reads"),
            bytes(u(io, "bytes_read")),
            u(io, "writes"),
            bytes(u(io, "bytes_written")),
            u(io, "flushes"),
            u(io, "discards"),
            u(io, "errors")
        );
    }
    if let Some(jobs) = v.get("ship").and_then(Value::as_array) {
        for j in jobs {
            println!("ship        {}", ship_job(j));
        }
    }
}

/// One line per continuous shipping target: state, last committed point, lag (RPO),
/// throughput and failures.
pub fn ship_job(j: &Value) -> String {
    let last = j.get("last_ship").filter(|l| !l.is_null());
    let point = match last {
        Some(l) => format!(
            "last point {} frozen {}",
            u(l, "seq"),
            utc(u(l, "created_unix"))
        ),
        None => "no point committed yet".into(),
    };
    let lag = j
        .get("lag_secs")
        .and_then(Value::as_u64)
        .map_or("lag n/a".into(), |l| format!("lag {l}s"));
    let rate = |k: &str| j.get(k).and_then(Value::as_f64).unwrap_or(0.0) as u64;
    let mut line = format!(
        "{} {}{}: {point}, {lag}, {} committed, {} unchanged, {} up ({}/s last, {}/s avg), {} failures",
        s(j, "url"),
        s(j, "state"),
        if j.get("shipping").and_then(Value::as_bool) == Some(true) {
            " (shipping now)"
        } else {
            ""
        },
        u(j, "points_committed"),
        u(j, "unchanged"),
        bytes(u(j, "bytes_uploaded")),
        bytes(rate("last_throughput_bps")),
        bytes(rate("avg_throughput_bps")),
        u(j, "failures"),
    );
    if let Some(e) = j.get("last_error").and_then(Value::as_str) {
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
