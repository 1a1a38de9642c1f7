//! What scripts and people see: progress bars under a real pseudo-terminal
//! (util-linux `script`) and none in pipes, `--json` on every verb that reports
//! something, and `RUST_LOG` step logs on stderr.

mod common;

use common::{
    command, json, ok, pattern, sh_under_pty, shell_quote, snapblk, under_pty, volume, Vol, BS,
};
use serde_json::Value;

const BLOCKS: usize = 2048;

/// 8 MiB, all written, snapshot `s1`, then every block overwritten: a restore of `s1`
/// rewrites every block, long enough for a bar to be drawn several times.
fn changed_volume() -> Vol {
    let v = volume(BLOCKS, BLOCKS);
    v.with_engine(|e| {
        e.create_snapshot("s1").unwrap();
        e.write(0, &pattern(5, BS * BLOCKS)).unwrap();
    });
    v
}

/// Runs under a pty; panics when `script` is missing (the check needs a real terminal).
fn pty(v: &Vol, args: &[String]) -> String {
    let (code, out) = under_pty(&v.run_dir(), args, &[]).expect(
        "util-linux `script` is needed to test terminal output: apt-get install util-linux",
    );
    assert_eq!(code, 0, "{args:?} under a pty failed: {out}");
    out
}

/// Asserts the terminal showed a bar labelled `label`, redrawn in place and cleared,
/// before the result line.
fn assert_bar(out: &str, label: &str, unit: &str, result: &str) {
    let bar = format!("{label} [");
    let at = out
        .find(&bar)
        .unwrap_or_else(|| panic!("no progress bar {bar:?} on the terminal: {out:?}"));
    assert!(
        out.contains('%') && out.contains(unit),
        "bar lacks % or {unit}: {out:?}"
    );
    assert!(
        out.contains("\r\u{1b}[2K"),
        "the bar is not redrawn/cleared in place: {out:?}"
    );
    let res = out
        .find(result)
        .unwrap_or_else(|| panic!("no result line {result:?}: {out:?}"));
    assert!(at < res, "the result came before the bar: {out:?}");
    // Cleared, not left behind: nothing of the bar after the result line.
    assert!(
        !out[res..].contains(&bar),
        "bar drawn after the result: {out:?}"
    );
}

/// Asserts a piped run drew nothing: no carriage returns, no escapes, empty stderr.
fn assert_no_bar(o: &std::process::Output, result: &str) {
    let out = ok(o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.is_empty(),
        "stderr of a piped run is not empty: {err:?}"
    );
    assert!(
        !out.contains('\r') && !out.contains('\u{1b}') && !out.contains('['),
        "bar garbage in piped output: {out:?}"
    );
    assert!(out.contains(result), "{out:?} lacks {result:?}");
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn progress_bars_are_drawn_on_a_terminal_and_never_into_pipes() {
    let v = changed_volume();
    let url = format!("file://{}", v.s("remote"));

    // restore
    let out = pty(&v, &v.offline_args(&["restore", "s1"]));
    assert_bar(&out, "restore s1", "blocks", "restored s1:");
    assert!(
        std::fs::read(&v.backing).unwrap() == pattern(1, BS * BLOCKS),
        "the restore under a pty did not bring s1 back"
    );
    v.with_engine(|e| e.write(0, &pattern(6, BS * 64)).unwrap());
    assert_no_bar(&v.run_offline(&["restore", "s1"]), "restored s1:");

    // export
    let out = pty(
        &v,
        &v.offline_args(&["export", "s1", "--to", &v.s("t.img")]),
    );
    assert_bar(&out, "export s1", "MiB", "exported snapshot s1");
    assert_no_bar(
        &v.run_offline(&["export", "s1", "--to", &v.s("p.img")]),
        "exported snapshot s1",
    );
    assert!(std::fs::read(v.p("t.img")).unwrap() == std::fs::read(v.p("p.img")).unwrap());

    // ship --once (offline)
    let out = pty(&v, &v.offline_args(&["ship", "--to", &url, "--once"]));
    assert_bar(&out, "ship", "blocks", "committed point");
    v.with_engine(|e| e.write(0, &pattern(8, BS * 64)).unwrap());
    assert_no_bar(
        &v.run_offline(&["ship", "--to", &url, "--once"]),
        "committed point",
    );

    // remote restore
    let out = pty(
        &v,
        &strings(&[
            "remote",
            "restore",
            "--from",
            &url,
            "--point",
            "1",
            "--to",
            &v.s("r1.img"),
        ]),
    );
    assert_bar(&out, "restore point 1", "segments", "restored point 1");
    assert_no_bar(
        &v.run(&["remote", "restore", "--from", &url, "--to", &v.s("r2.img")]),
        "restored point 2",
    );
    assert!(
        std::fs::read(v.p("r1.img")).unwrap() == pattern(1, BS * BLOCKS),
        "point 1 restored under a pty differs from what was shipped"
    );
}

#[test]
fn a_terminal_on_stdout_alone_gets_no_bar_on_stderr() {
    // `snapblk restore ... 2>log` on a terminal: the bar belongs to stderr, which is a
    // file here, so the log must stay free of redraws.
    let v = changed_volume();
    let log = v.s("stderr.log");
    let line = format!(
        "{} {} 2>{}",
        shell_quote(env!("CARGO_BIN_EXE_snapblk")),
        v.offline_args(&["restore", "s1"])
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
        shell_quote(&log)
    );
    let (code, out) = sh_under_pty(&v.run_dir(), &line, &[])
        .expect("util-linux `script` is needed: apt-get install util-linux");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("restored s1:"), "{out:?}");
    assert!(!out.contains("restore s1 ["), "bar on stdout: {out:?}");
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(err.is_empty(), "stderr file got {err:?}");
}

/// Parses `--json` output and checks it is the `kind` of JSON a script expects.
fn js(o: &std::process::Output, what: &str) -> Value {
    let v = json(o);
    assert!(v.is_object() || v.is_array(), "{what}: {v}");
    v
}

#[test]
fn every_reporting_verb_prints_valid_json() {
    let v = changed_volume();
    let url = format!("file://{}", v.s("remote"));
    let empty_run = v.run_dir();

    // Devices: none exist in this run directory.
    assert_eq!(
        js(&snapblk(&empty_run, &["list", "--json"]), "list"),
        Value::Array(vec![])
    );
    assert_eq!(
        js(&snapblk(&empty_run, &["status", "--json"]), "status"),
        Value::Array(vec![])
    );

    let st = js(&v.run_offline(&["status", "--json"]), "status --backing");
    assert_eq!(st["engine"]["block_size"], BS as u64, "{st}");

    let c = js(
        &v.run_offline(&["snapshot", "create", "s2", "--json"]),
        "snapshot create",
    );
    assert_eq!(c["name"], "s2", "{c}");
    let l = js(
        &v.run_offline(&["snapshot", "list", "--json"]),
        "snapshot list",
    );
    let names: Vec<&str> = l
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["s1", "s2"], "{l}");

    let d = js(&v.run_offline(&["diff", "s1", "s2", "--json"]), "diff");
    assert_eq!(d["changed_blocks"], BLOCKS as u64, "{d}");
    assert_eq!(d["to"], "s2", "{d}");
    let d = js(&v.run_offline(&["diff", "s2", "--json"]), "diff to live");
    assert_eq!(
        (d["changed_blocks"].clone(), d["to"].clone()),
        (0.into(), Value::Null),
        "{d}"
    );

    let x = js(
        &v.run_offline(&["export", "s1", "--to", &v.s("e.img"), "--json"]),
        "export",
    );
    assert_eq!(x["exported"], "s1", "{x}");
    assert_eq!(x["to"], v.s("e.img"), "{x}");

    let r = js(&v.run_offline(&["restore", "s1", "--json"]), "restore");
    assert_eq!(r["report"]["written"], BLOCKS as u64, "{r}");
    // Durations are float seconds, never serde's {secs, nanos}.
    assert!(r["elapsed_secs"].as_f64().is_some_and(|s| s >= 0.0), "{r}");
    let pre = r["report"]["pre_restore"].as_str().unwrap().to_string();

    let del = js(
        &v.run_offline(&["snapshot", "delete", &pre, "--json"]),
        "snapshot delete",
    );
    assert_eq!(del["deleted"], pre.as_str(), "{del}");

    let ch = js(&v.run_offline(&["check", "--json"]), "check");
    assert_eq!(ch["ok"], true, "{ch}");

    let p = js(
        &v.run_offline(&["ship", "--to", &url, "--once", "--json"]),
        "ship",
    );
    assert_eq!(p["committed"], true, "{p}");
    assert!(p["elapsed_secs"].as_f64().is_some_and(|s| s > 0.0), "{p}");
    assert!(p.get("elapsed").is_none(), "{p}");
    let rl = js(
        &v.run(&["remote", "list", "--from", &url, "--json"]),
        "remote list",
    );
    assert_eq!(rl.as_array().map(Vec::len), Some(1), "{rl}");
    let rv = js(
        &v.run(&["remote", "verify", "--from", &url, "--json"]),
        "remote verify",
    );
    assert_eq!(rv["ok"], true, "{rv}");
    let rr = js(
        &v.run(&[
            "remote",
            "restore",
            "--from",
            &url,
            "--to",
            &v.s("rr.img"),
            "--json",
        ]),
        "remote restore",
    );
    assert_eq!(rr["seq"], p["seq"], "{rr}");
    let pr = js(
        &v.run(&["remote", "prune", "--from", &url, "--keep", "1", "--json"]),
        "remote prune",
    );
    assert_eq!(pr["removed"], Value::Array(vec![]), "{pr}");

    // An empty remote is an empty array, not a sentence.
    std::fs::create_dir(v.p("empty")).unwrap();
    let empty = format!("file://{}", v.s("empty"));
    assert_eq!(
        js(
            &v.run(&["remote", "list", "--from", &empty, "--json"]),
            "empty remote"
        ),
        Value::Array(vec![])
    );
}

/// `s` without terminal escape sequences (CSI: ESC [ parameters final-letter).
fn strip_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' && it.peek() == Some(&'[') {
            it.next();
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[test]
fn log_lines_print_above_a_progress_bar_never_into_it() {
    let v = changed_volume();
    let (code, out) = under_pty(
        &v.run_dir(),
        &v.offline_args(&["restore", "s1"]),
        &[("RUST_LOG", "snapblk=debug")],
    )
    .expect("util-linux `script` is needed to test terminal output: apt-get install util-linux");
    assert_eq!(code, 0, "{out}");
    assert_bar(&out, "restore s1", "blocks", "restored s1:");
    let mut progress_lines = 0;
    for (i, _) in out.match_indices(" DEBUG ") {
        // What precedes the level on its terminal line must be the log line's own timestamp:
        // the bar was cleared for it, not continued by it.
        let start = out[..i].rfind(['\n', '\r']).map_or(0, |p| p + 1);
        let before = strip_escapes(&out[start..i]);
        assert!(
            !before.is_empty()
                && before
                    .chars()
                    .all(|c| c.is_ascii_digit() || "-:.TZ".contains(c)),
            "a log line was drawn into the progress bar: {:?}",
            &out[start..(i + 60).min(out.len())]
        );
        if out[i..].starts_with(" DEBUG progress") {
            progress_lines += 1;
        }
    }
    // The restore logs its progress at most every tenth of the work, from 0 % to 100 %.
    assert!(
        (5..=11).contains(&progress_lines) && out.contains("DEBUG progress 100%"),
        "{progress_lines} progress lines: {out:?}"
    );
}

#[test]
fn rust_log_shows_the_steps_of_a_restore_and_is_silent_by_default() {
    let v = changed_volume();
    let args = v.offline_args(&["restore", "s1"]);
    let quiet = command(&v.run_dir(), &args).output().unwrap();
    ok(&quiet);
    assert!(
        quiet.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );

    let o = command(&v.run_dir(), &args)
        .env("RUST_LOG", "snapblk=debug")
        .output()
        .unwrap();
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    let steps = [
        "DEBUG opening the store offline",
        "DEBUG store open",
        "INFO restore: writing the snapshot's blocks back",
        "DEBUG closing the store (checkpoint)",
        "INFO restore: done",
    ];
    let mut at = 0;
    for step in steps {
        let i = err[at..]
            .find(step)
            .unwrap_or_else(|| panic!("{step:?} missing (or out of order) in {err}"));
        at += i + step.len();
    }
    assert!(err.contains("snapshot=s1"), "{err}");
    // stdout stays the result alone.
    assert!(!String::from_utf8_lossy(&o.stdout).contains("INFO"));

    // info leaves the debug steps out.
    let o = command(&v.run_dir(), &args)
        .env("RUST_LOG", "snapblk=info")
        .output()
        .unwrap();
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("INFO restore: done") && !err.contains("DEBUG"),
        "{err}"
    );
}
