//! The VM fio bench's results: reads what `tests/vm/bench/fio-compare.sh` left in `$VM_OUT`
//! (`meta.json`, `fio/rREP-TARGET-JOB.json`, `cpu/rREP-TARGET-JOB.json`, `status/*`), and turns it into one JSON report,
//! a Markdown section and an SVG plot of the ratios (drawn by [`crate::report::ratio_svg`]).
//!
//! Every ratio pairs two targets measured in the same repetition of the same VM boot; only
//! such ratios mean anything under software emulation.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::report::{median, ratio_svg, Case, Target};

/// The fio jobs, in run order (file `bench/fio/JOB.fio`).
pub const JOBS: &[&str] = &["randwrite-4k", "randread-4k", "seqwrite-1m"];

/// The targets, in table order, with what each one is.
pub const TARGETS: &[(&str, &str)] = &[
    ("loop-dio", "kernel loop device, --direct-io=on (reference)"),
    (
        "libublk-loop",
        "libublk 0.4.8 `loop` example (ublk baseline; its default synchronous handler)",
    ),
    (
        "libublk-loop-async",
        "the same example with `-a`: one async task per tag on an executor (reference)",
    ),
    (
        "dm-snap",
        "dm snapshot-origin + persistent snapshot, 4 KiB chunks: first writes",
    ),
    ("snapblk", "snapblk, no snapshot"),
    (
        "snapblk-cow",
        "snapblk right after a snapshot: first writes (copy-on-write)",
    ),
    (
        "snapblk-rewrite",
        "snapblk, the same jobs again: blocks already preserved, new data",
    ),
];

/// The comparisons reported as ratios: (engine target, baseline target, job, target).
fn comparisons() -> Vec<(&'static str, &'static str, &'static str, Target)> {
    let min = |ratio| Target::MinRatio { ratio };
    vec![
        ("snapblk", "libublk-loop", "randwrite-4k", min(0.9)),
        ("snapblk", "libublk-loop", "randread-4k", min(0.9)),
        ("snapblk", "libublk-loop", "seqwrite-1m", Target::Info),
        (
            "snapblk",
            "libublk-loop-async",
            "randwrite-4k",
            Target::Info,
        ),
        ("snapblk", "libublk-loop-async", "randread-4k", Target::Info),
        (
            "libublk-loop-async",
            "libublk-loop",
            "randwrite-4k",
            Target::Info,
        ),
        (
            "libublk-loop-async",
            "libublk-loop",
            "randread-4k",
            Target::Info,
        ),
        ("snapblk-cow", "dm-snap", "randwrite-4k", min(1.0)),
        ("snapblk-cow", "dm-snap", "seqwrite-1m", min(1.0)),
        ("snapblk-cow", "libublk-loop", "randwrite-4k", min(0.6)),
        ("snapblk-cow", "libublk-loop", "seqwrite-1m", min(0.6)),
        (
            "snapblk-rewrite",
            "libublk-loop",
            "randwrite-4k",
            Target::Info,
        ),
        (
            "snapblk-rewrite",
            "libublk-loop",
            "seqwrite-1m",
            Target::Info,
        ),
        ("libublk-loop", "loop-dio", "randwrite-4k", Target::Info),
        ("libublk-loop", "loop-dio", "randread-4k", Target::Info),
        ("libublk-loop", "loop-dio", "seqwrite-1m", Target::Info),
        ("dm-snap", "loop-dio", "randwrite-4k", Target::Info),
        ("snapblk", "loop-dio", "randwrite-4k", Target::Info),
    ]
}

/// One fio run, from its JSON output.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FioRun {
    /// Repetition (1-based).
    pub rep: u32,
    /// I/Os per second.
    pub iops: f64,
    /// Bandwidth, MiB/s.
    pub mib_s: f64,
    /// Mean completion latency (submission to completion), microseconds.
    pub lat_mean_us: f64,
    /// 99th percentile completion latency, microseconds.
    pub lat_p99_us: f64,
    /// I/Os done.
    pub ios: u64,
    /// Run time, seconds.
    pub seconds: f64,
    /// Where the guest's CPU time went during the run, when the guest sampled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuPerIo>,
}

/// Guest CPU time per I/O over one fio run, in microseconds (`cpu/rREP-TARGET-JOB.json`:
/// `/proc/stat` and the ublk server's `/proc/PID/stat`, sampled before and after the run).
/// Under emulation this is what separates "the server does more work per request" from
/// "the server waits more": a target that is slower at the same busy time per I/O is
/// latency-bound, not CPU-bound.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuPerIo {
    /// The ublk server process, user mode (0 for in-kernel targets).
    pub server_user_us: f64,
    /// The ublk server process, kernel mode (its io_uring submissions and their I/O).
    pub server_sys_us: f64,
    /// Every CPU of the guest, busy (fio, the kernel's block layer, the server, …).
    pub busy_us: f64,
    /// Every CPU of the guest, idle (including iowait).
    pub idle_us: f64,
}

/// Reads a `cpu/*.json` sample and spreads it over `ios` I/Os.
pub fn parse_cpu(text: &str, ios: u64) -> Result<CpuPerIo> {
    let v: serde_json::Value = serde_json::from_str(text).context("CPU sample is not JSON")?;
    let hz = v["ticks_per_sec"]
        .as_f64()
        .filter(|h| *h > 0.0)
        .unwrap_or(100.0);
    let tick = |k: &str| -> Result<f64> {
        v[k].as_f64()
            .with_context(|| format!("CPU sample lacks \"{k}\""))
    };
    let per_io = |ticks: f64| ticks / hz * 1e6 / ios.max(1) as f64;
    let busy = tick("user")? + tick("nice")? + tick("system")? + tick("irq")? + tick("softirq")?;
    Ok(CpuPerIo {
        server_user_us: per_io(tick("server_user")?),
        server_sys_us: per_io(tick("server_system")?),
        busy_us: per_io(busy),
        idle_us: per_io(tick("idle")? + tick("iowait")?),
    })
}

/// Median and spread of one figure over the repetitions.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    fn of(v: &[f64]) -> Spread {
        Spread {
            median: median(v),
            min: v
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min)
                .min(f64::MAX),
            max: v.iter().copied().fold(0.0, f64::max),
        }
    }
}

/// One target × job: every repetition and the summary.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobResult {
    /// Job name (`bench/fio/JOB.fio`).
    pub job: String,
    /// The runs, by repetition.
    pub runs: Vec<FioRun>,
    /// IOPS over the repetitions.
    pub iops: Spread,
    /// MiB/s over the repetitions.
    pub mib_s: Spread,
    /// Mean latency (µs) over the repetitions.
    pub lat_mean_us: Spread,
    /// p99 latency (µs) over the repetitions.
    pub lat_p99_us: Spread,
}

/// One target and its jobs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetResult {
    /// Short name (`loop-dio`, `snapblk-cow`, …).
    pub name: String,
    /// What it is.
    pub what: String,
    /// Its jobs, in run order.
    pub jobs: Vec<JobResult>,
}

impl TargetResult {
    fn job(&self, name: &str) -> Option<&JobResult> {
        self.jobs.iter().find(|j| j.job == name)
    }
}

/// A whole VM bench run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmReport {
    /// When the report was made, UTC, RFC 3339.
    pub date_utc: String,
    /// "full" or "quick" (quick figures mean nothing).
    pub mode: String,
    /// The command that made the report.
    pub command: String,
    /// Which snapblk was measured (git revision, local modifications).
    pub source: String,
    /// The guest's `meta.json`: sizes, repetitions, run orders, guest kernel and CPUs.
    pub meta: serde_json::Value,
    /// Per target and job, absolute figures.
    pub targets: Vec<TargetResult>,
    /// The ratios (engine target ÷ baseline target, per repetition), with their targets.
    pub ratios: Vec<Case>,
    /// snapblk's `status --json` after its runs, by file name (`rREP-TARGET`).
    pub snapblk_status: BTreeMap<String, serde_json::Value>,
    /// dm-snapshot's `dmsetup status` after its runs, by file name.
    pub dm_status: BTreeMap<String, String>,
    /// Runs whose fio output was missing or unreadable.
    pub problems: Vec<String>,
}

/// Reads one fio JSON output: the first job's read side for read jobs, else its write side.
pub fn parse_fio(text: &str, rep: u32) -> Result<FioRun> {
    // fio may print warnings before the JSON document.
    let start = text.find('{').context("no JSON object in the fio output")?;
    let v: serde_json::Value =
        serde_json::from_str(&text[start..]).context("fio output is not valid JSON")?;
    let job = v["jobs"].get(0).context("fio JSON has no \"jobs\" entry")?;
    let err = job["error"].as_i64().unwrap_or(0);
    if err != 0 {
        bail!("fio reported error {err} for job {}", job["jobname"]);
    }
    let read_ios = job["read"]["total_ios"].as_u64().unwrap_or(0);
    let write_ios = job["write"]["total_ios"].as_u64().unwrap_or(0);
    let side = if read_ios > write_ios {
        &job["read"]
    } else {
        &job["write"]
    };
    let ios = side["total_ios"].as_u64().unwrap_or(0);
    if ios == 0 {
        bail!("fio job {} did no I/O", job["jobname"]);
    }
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    Ok(FioRun {
        rep,
        iops: f(&side["iops"]),
        mib_s: f(&side["bw_bytes"]) / (1u64 << 20) as f64,
        lat_mean_us: f(&side["clat_ns"]["mean"]) / 1000.0,
        lat_p99_us: f(&side["clat_ns"]["percentile"]["99.000000"]) / 1000.0,
        ios,
        seconds: f(&side["runtime"]) / 1000.0,
        cpu: None,
    })
}

fn target_what(name: &str) -> String {
    TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(name, |(_, w)| w)
        .to_string()
}

/// Builds the report from a `$VM_OUT` directory of `tests/vm/bench/fio-compare.sh`.
pub fn collect(dir: &Path, command: &str, source: &str) -> Result<VmReport> {
    let meta_path = dir.join("meta.json");
    let meta_text = std::fs::read_to_string(&meta_path).with_context(|| {
        format!(
            "read {}: not the output of tests/vm/bench/fio-compare.sh (run scripts/bench-vm.sh)",
            meta_path.display()
        )
    })?;
    let meta: serde_json::Value = serde_json::from_str(&meta_text)
        .with_context(|| format!("{} is not valid JSON", meta_path.display()))?;
    let mode = meta["mode"].as_str().unwrap_or("unknown").to_string();

    let fio_dir = dir.join("fio");
    let mut runs: BTreeMap<(String, String), Vec<FioRun>> = BTreeMap::new();
    let mut problems = Vec::new();
    let entries = std::fs::read_dir(&fio_dir)
        .with_context(|| format!("list {} (the fio outputs)", fio_dir.display()))?;
    for e in entries {
        let path = e
            .with_context(|| format!("list {}", fio_dir.display()))?
            .path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((rep, target, job)) = split_name(name) else {
            continue;
        };
        let parsed = std::fs::read_to_string(&path)
            .with_context(|| format!("read {}", path.display()))
            .and_then(|t| parse_fio(&t, rep))
            .map(|mut r| {
                // Runs from before the guest sampled CPU time have no sample: no column.
                let cpu_path = dir.join("cpu").join(name);
                if let Ok(t) = std::fs::read_to_string(&cpu_path) {
                    match parse_cpu(&t, r.ios) {
                        Ok(c) => r.cpu = Some(c),
                        Err(e) => problems.push(format!("{}: {e:#}", cpu_path.display())),
                    }
                }
                r
            });
        match parsed {
            Ok(r) => runs.entry((target, job)).or_default().push(r),
            Err(e) => problems.push(format!("{name}: {e:#}")),
        }
    }
    if runs.is_empty() {
        bail!(
            "no usable fio results in {} ({} problem(s): {})",
            fio_dir.display(),
            problems.len(),
            problems.join("; ")
        );
    }

    let mut targets: Vec<TargetResult> = Vec::new();
    let mut names: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    for (t, _) in runs.keys() {
        if !names.contains(t) {
            names.push(t.clone());
        }
    }
    for t in names {
        let mut jobs = Vec::new();
        for job in JOBS {
            let Some(rs) = runs.get_mut(&(t.clone(), job.to_string())) else {
                continue;
            };
            rs.sort_by_key(|r| r.rep);
            let col = |f: fn(&FioRun) -> f64| Spread::of(&rs.iter().map(f).collect::<Vec<_>>());
            jobs.push(JobResult {
                job: job.to_string(),
                iops: col(|r| r.iops),
                mib_s: col(|r| r.mib_s),
                lat_mean_us: col(|r| r.lat_mean_us),
                lat_p99_us: col(|r| r.lat_p99_us),
                runs: rs.clone(),
            });
        }
        if !jobs.is_empty() {
            targets.push(TargetResult {
                what: target_what(&t),
                name: t,
                jobs,
            });
        }
    }

    let ratios = comparisons()
        .into_iter()
        .filter_map(|(eng, base, job, target)| ratio_case(&targets, eng, base, job, target))
        .collect();

    let mut snapblk_status = BTreeMap::new();
    let mut dm_status = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("status")) {
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            let Some(stem) = path.file_stem().and_then(|n| n.to_str()) else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            if path.extension().is_some_and(|x| x == "json") {
                let v = serde_json::from_str(&text)
                    .unwrap_or_else(|_| serde_json::Value::String(text.trim().to_string()));
                snapblk_status.insert(stem.to_string(), v);
            } else {
                dm_status.insert(stem.to_string(), text.trim().to_string());
            }
        }
    }

    Ok(VmReport {
        date_utc: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        mode,
        command: command.to_string(),
        source: source.to_string(),
        meta,
        targets,
        ratios,
        snapblk_status,
        dm_status,
        problems,
    })
}

/// `r2-snapblk-cow-randwrite-4k.json` → (2, "snapblk-cow", "randwrite-4k").
fn split_name(name: &str) -> Option<(u32, String, String)> {
    let stem = name.strip_suffix(".json")?.strip_prefix('r')?;
    let (rep, rest) = stem.split_once('-')?;
    let rep: u32 = rep.parse().ok()?;
    let job = JOBS.iter().find(|j| rest.ends_with(&format!("-{j}")))?;
    let target = rest.strip_suffix(&format!("-{job}"))?;
    Some((rep, target.to_string(), job.to_string()))
}

/// engine ÷ baseline IOPS for `job`, per repetition both targets ran.
fn ratio_case(
    targets: &[TargetResult],
    eng: &str,
    base: &str,
    job: &str,
    target: Target,
) -> Option<Case> {
    let find = |n: &str| targets.iter().find(|t| t.name == n)?.job(job);
    let (e, b) = (find(eng)?, find(base)?);
    let mut c = Case::new(
        &format!("{eng} ÷ {base}, {job}"),
        &target_what(eng),
        &target_what(base),
        "IOPS",
        target,
    );
    for er in &e.runs {
        let Some(br) = b.runs.iter().find(|r| r.rep == er.rep) else {
            continue;
        };
        if br.iops > 0.0 {
            c.engine.push(er.iops);
            c.raw.push(br.iops);
            c.ratios.push(er.iops / br.iops);
        }
    }
    if c.ratios.is_empty() {
        return None;
    }
    c.finish();
    Some(c)
}

fn fmt_spread(s: &Spread, decimals: usize) -> String {
    if (s.max - s.min).abs() < f64::EPSILON {
        format!("{:.*}", decimals, s.median)
    } else {
        format!(
            "{:.*} [{:.*}–{:.*}]",
            decimals, s.median, decimals, s.min, decimals, s.max
        )
    }
}

impl VmReport {
    /// Repetitions found (the most runs of any target × job).
    pub fn reps(&self) -> usize {
        self.targets
            .iter()
            .flat_map(|t| t.jobs.iter().map(|j| j.runs.len()))
            .max()
            .unwrap_or(0)
    }

    /// The results as a Markdown section: absolute figures, ratios, snapblk counters.
    pub fn markdown(&self, svg_name: Option<&str>) -> String {
        let m = &self.meta;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Run {} ({} mode), snapblk {}; guest kernel {}, {} vCPUs (qemu TCG), {} MiB RAM; \
             {} repetition(s), figures = median [min–max] over repetitions.\n",
            self.date_utc,
            self.mode,
            self.source,
            m["kernel"].as_str().unwrap_or("?"),
            m["cpus"],
            m["mem_kib"].as_u64().unwrap_or(0) / 1024,
            self.reps(),
        );
        let _ = writeln!(
            s,
            "Device {} MiB on tmpfs; randwrite-4k writes each block of [0, {} MiB) once; \
             randread-4k reads the whole device for {} s; seqwrite-1m writes [{}, {}) MiB once. \
             Run orders: {}.\n",
            m["dev_mib"],
            m["randwrite_mib"],
            m["randread_secs"],
            m["seqwrite_offset_mib"],
            m["dev_mib"],
            m["orders"]
                .as_array()
                .map(|o| o
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(" / "))
                .unwrap_or_default()
        );
        let _ = writeln!(s, "Command: `{}`\n", self.command);
        let _ = writeln!(
            s,
            "| target | randwrite 4k IOPS | randread 4k IOPS | seqwrite 1M MiB/s | randwrite mean / p99 lat (µs) |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for t in &self.targets {
            let cell = |job: &str, f: fn(&JobResult) -> String| {
                t.job(job).map_or_else(|| "—".to_string(), f)
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                t.name,
                cell("randwrite-4k", |j| fmt_spread(&j.iops, 0)),
                cell("randread-4k", |j| fmt_spread(&j.iops, 0)),
                cell("seqwrite-1m", |j| fmt_spread(&j.mib_s, 0)),
                cell("randwrite-4k", |j| format!(
                    "{:.0} / {:.0}",
                    j.lat_mean_us.median, j.lat_p99_us.median
                )),
            );
        }
        let _ = writeln!(s, "\nTargets:\n");
        for t in &self.targets {
            let _ = writeln!(s, "- `{}`: {}", t.name, t.what);
        }
        let _ = writeln!(
            s,
            "\nRatios (IOPS of the first ÷ the second, per repetition; median [min–max]):\n"
        );
        let _ = writeln!(
            s,
            "| comparison | baseline (median) | engine (median) | ratio [min–max] | target | met |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---|---|");
        for c in &self.ratios {
            let sm = &c.summary;
            let met = match sm.met {
                Some(true) => "yes",
                Some(false) => "**NO**",
                None => "—",
            };
            let target = match &c.target {
                Target::MinRatio { ratio } => format!("≥ {ratio}×"),
                _ => "—".to_string(),
            };
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.0} | {:.2} [{:.2}–{:.2}] | {} | {} |",
                c.name,
                sm.raw_median.unwrap_or(0.0),
                sm.engine_median,
                sm.ratio_median,
                sm.ratio_min,
                sm.ratio_max,
                target,
                met
            );
        }
        let cpu = self.cpu_table();
        if !cpu.is_empty() {
            let _ = writeln!(
                s,
                "\nGuest CPU per I/O, µs (median over repetitions): the ublk server's user + \
                 system time, and the whole guest's busy and idle time (2 vCPUs; fio and the \
                 kernel's block layer are in \"busy\"):\n\n{cpu}"
            );
        }
        let counters = self.counters_table();
        if !counters.is_empty() {
            let _ = writeln!(
                s,
                "\nsnapblk counters after each device's runs (`snapblk status --json`, cumulative since create):\n\n{counters}"
            );
        }
        if !self.problems.is_empty() {
            let _ = writeln!(s, "\nProblems:\n");
            for p in &self.problems {
                let _ = writeln!(s, "- {p}");
            }
        }
        if let Some(svg) = svg_name {
            let _ = writeln!(s, "\n![ratio vs target per comparison]({svg})");
        }
        s
    }

    /// Per target and job, the median CPU time per I/O (see [`CpuPerIo`]). Empty when no
    /// run has a sample.
    fn cpu_table(&self) -> String {
        let mut rows = Vec::new();
        for t in &self.targets {
            let cells: Vec<String> = JOBS
                .iter()
                .map(|job| {
                    let cpus: Vec<&CpuPerIo> = t
                        .job(job)
                        .map(|j| j.runs.iter().filter_map(|r| r.cpu.as_ref()).collect())
                        .unwrap_or_default();
                    if cpus.is_empty() {
                        return "—".to_string();
                    }
                    let med = |f: fn(&CpuPerIo) -> f64| {
                        median(&cpus.iter().map(|c| f(c)).collect::<Vec<_>>())
                    };
                    format!(
                        "{:.0} + {:.0} / {:.0} / {:.0}",
                        med(|c| c.server_user_us),
                        med(|c| c.server_sys_us),
                        med(|c| c.busy_us),
                        med(|c| c.idle_us)
                    )
                })
                .collect();
            if cells.iter().any(|c| c != "—") {
                rows.push(format!("| {} | {} |", t.name, cells.join(" | ")));
            }
        }
        if rows.is_empty() {
            return String::new();
        }
        format!(
            "| target | {} |\n|---|{}\n{}\n\nEach cell: server user + server system / guest busy / guest idle.\n",
            JOBS.iter()
                .map(|j| format!("{j}: server usr + sys / busy / idle"))
                .collect::<Vec<_>>()
                .join(" | "),
            "---:|".repeat(JOBS.len()),
            rows.join("\n")
        )
    }

    /// A table of the numeric counters snapblk's status reports (whatever keys it has), one
    /// row per status file. Empty when there are none.
    fn counters_table(&self) -> String {
        const KEYS: &[&str] = &[
            "writes",
            "blocks_written",
            "blocks_skipped_identical",
            "compare_reads",
            "preserves",
            "commit_groups",
            "commit_requests",
            "max_group_requests",
            "direct_writes",
            "direct_cow_writes",
            "commit_batches_inline",
            "commit_batches_thread",
        ];
        let mut rows = Vec::new();
        for (name, v) in &self.snapblk_status {
            let mut found = BTreeMap::new();
            // The engine's counters sit in a "stats" object; the device's own I/O counters
            // (another "writes") in "io": the engine's win, the device adds which requests
            // its queues served on their own rings.
            collect_numbers(find_key(v, "stats").unwrap_or(v), &mut found);
            if let Some(io) = find_key(v, "io") {
                collect_numbers(io, &mut found);
            }
            if KEYS.iter().any(|k| found.contains_key(*k)) {
                let cells: Vec<String> = KEYS
                    .iter()
                    .map(|k| found.get(*k).map_or("—".into(), |n| format!("{n}")))
                    .collect();
                rows.push(format!("| {name} | {} |", cells.join(" | ")));
            }
        }
        if rows.is_empty() {
            return String::new();
        }
        format!(
            "| run | {} |\n|---|{}\n{}\n",
            KEYS.join(" | "),
            "---:|".repeat(KEYS.len()),
            rows.join("\n")
        )
    }

    /// The ratio plot.
    pub fn svg(&self) -> String {
        let cases: Vec<&Case> = self.ratios.iter().collect();
        ratio_svg(
            &format!(
                "snapblk VM fio bench, {} ({} mode, qemu TCG)",
                self.date_utc, self.mode
            ),
            "IOPS ratio: bar = median, black line = min–max, red tick = target",
            &cases,
        )
    }
}

/// The first value under `key` anywhere in a JSON tree.
fn find_key<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m
            .get(key)
            .or_else(|| m.values().find_map(|x| find_key(x, key))),
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

/// Every number in a JSON tree, by key (the first occurrence of a key wins).
fn collect_numbers(v: &serde_json::Value, out: &mut BTreeMap<String, u64>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if let Some(n) = x.as_u64() {
                    out.entry(k.clone()).or_insert(n);
                } else {
                    collect_numbers(x, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_numbers(x, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part of fio 3.x's JSON the report reads.
    fn fio_json(read: bool, iops: f64, ios: u64) -> String {
        let side = serde_json::json!({
            "total_ios": ios, "iops": iops, "bw_bytes": (iops * 4096.0) as u64, "runtime": 2000,
            "clat_ns": { "mean": 1_500_000.0, "percentile": { "99.000000": 4_000_000 } },
        });
        let idle = serde_json::json!({ "total_ios": 0, "iops": 0.0 });
        let (r, w) = if read { (side, idle) } else { (idle, side) };
        serde_json::json!({ "fio version": "fio-3.33", "jobs": [
            { "jobname": "x", "error": 0, "read": r, "write": w }
        ]})
        .to_string()
    }

    #[test]
    fn parses_the_side_that_did_io() {
        let r = parse_fio(&fio_json(true, 3000.0, 6000), 2).unwrap();
        assert_eq!(r.rep, 2);
        assert_eq!(r.iops, 3000.0);
        assert_eq!(r.ios, 6000);
        assert_eq!(r.lat_mean_us, 1500.0);
        assert_eq!(r.lat_p99_us, 4000.0);
        assert_eq!(r.seconds, 2.0);
        // Warnings before the document are skipped.
        let w = format!("fio: note: something\n{}", fio_json(false, 100.0, 200));
        assert_eq!(parse_fio(&w, 1).unwrap().iops, 100.0);
    }

    #[test]
    fn rejects_errors_and_idle_runs() {
        let e = parse_fio(&fio_json(false, 0.0, 0), 1).unwrap_err();
        assert!(format!("{e:#}").contains("did no I/O"), "{e:#}");
        let bad = fio_json(false, 10.0, 10).replace("\"error\":0", "\"error\":5");
        let e = parse_fio(&bad, 1).unwrap_err();
        assert!(format!("{e:#}").contains("error 5"), "{e:#}");
        assert!(parse_fio("not json", 1).is_err());
    }

    #[test]
    fn splits_file_names() {
        assert_eq!(
            split_name("r2-snapblk-cow-randwrite-4k.json"),
            Some((2, "snapblk-cow".into(), "randwrite-4k".into()))
        );
        assert_eq!(
            split_name("r10-loop-dio-seqwrite-1m.json"),
            Some((10, "loop-dio".into(), "seqwrite-1m".into()))
        );
        assert_eq!(split_name("meta.json"), None);
        assert_eq!(split_name("r1-x-unknownjob.json"), None);
    }

    #[test]
    fn collects_ratios_per_repetition() {
        let dir = std::env::temp_dir().join(format!("snapblk-vm-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("fio")).unwrap();
        std::fs::create_dir_all(dir.join("status")).unwrap();
        std::fs::write(
            dir.join("meta.json"),
            r#"{"mode":"quick","reps":2,"dev_mib":256,"randwrite_mib":16,"seqwrite_mib":64,
                "seqwrite_offset_mib":192,"randread_secs":2,"kernel":"6.12","cpus":2,
                "mem_kib":3000000,"orders":["a b","b a"]}"#,
        )
        .unwrap();
        // libublk-loop 1000 / 2000 IOPS, snapblk 900 / 2000, snapblk-cow 300 / 500,
        // dm-snap 400 / 400: ratios per repetition, never across repetitions.
        for (t, rep, iops) in [
            ("libublk-loop", 1, 1000.0),
            ("libublk-loop", 2, 2000.0),
            ("snapblk", 1, 900.0),
            ("snapblk", 2, 2000.0),
            ("snapblk-cow", 1, 300.0),
            ("snapblk-cow", 2, 500.0),
            ("dm-snap", 1, 400.0),
            ("dm-snap", 2, 400.0),
        ] {
            std::fs::write(
                dir.join(format!("fio/r{rep}-{t}-randwrite-4k.json")),
                fio_json(false, iops, 100),
            )
            .unwrap();
        }
        std::fs::write(dir.join("fio/r1-loop-dio-randread-4k.json"), "garbage").unwrap();
        // 100 I/Os; at 100 ticks/s a tick is 10 ms = 100 µs per I/O.
        std::fs::create_dir_all(dir.join("cpu")).unwrap();
        std::fs::write(
            dir.join("cpu/r1-snapblk-randwrite-4k.json"),
            r#"{"ticks_per_sec": 100, "cpus": 2, "server_processes": 1, "user": 3, "nice": 0,
                "system": 5, "idle": 12, "iowait": 0, "irq": 1, "softirq": 1,
                "server_user": 2, "server_system": 4}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("status/r1-snapblk-cow.json"),
            r#"{"engine":{"stats":{"writes":5000,"preserves":4096,"commit_groups":300}},"io":{"writes":1}}"#,
        )
        .unwrap();
        let rep = collect(&dir, "test", "abc").unwrap();
        let get = |n: &str| rep.ratios.iter().find(|c| c.name == n).unwrap();
        let plain = get("snapblk ÷ libublk-loop, randwrite-4k");
        assert_eq!(plain.ratios, vec![0.9, 1.0]);
        assert_eq!(plain.summary.ratio_median, 0.95);
        assert_eq!(plain.summary.met, Some(true));
        let cow_dm = get("snapblk-cow ÷ dm-snap, randwrite-4k");
        assert_eq!(cow_dm.ratios, vec![0.75, 1.25]);
        assert_eq!(cow_dm.summary.met, Some(true));
        let cow_ublk = get("snapblk-cow ÷ libublk-loop, randwrite-4k");
        assert_eq!(cow_ublk.ratios, vec![0.3, 0.25]);
        assert_eq!(cow_ublk.summary.met, Some(false));
        // No randread for snapblk: no such ratio.
        assert!(rep.ratios.iter().all(|c| !c.name.contains("randread")));
        assert_eq!(rep.problems.len(), 1, "{:?}", rep.problems);
        assert!(rep.problems[0].starts_with("r1-loop-dio-randread-4k.json"));
        let md = rep.markdown(Some("vm-latest.svg"));
        assert!(md.contains("| snapblk-cow | 400 [300–500] |"), "{md}");
        assert!(md.contains("| snapblk-cow ÷ libublk-loop, randwrite-4k | 1500 | 400 | 0.28 [0.25–0.30] | ≥ 0.6× | **NO** |"), "{md}");
        assert!(
            md.contains("| r1-snapblk-cow | 5000 | — | — | — | 4096 | 300 |"),
            "{md}"
        );
        let run1 = &rep
            .targets
            .iter()
            .find(|t| t.name == "snapblk")
            .unwrap()
            .jobs[0]
            .runs[0];
        assert_eq!(
            run1.cpu,
            Some(CpuPerIo {
                server_user_us: 200.0,
                server_sys_us: 400.0,
                busy_us: 1000.0,
                idle_us: 1200.0
            })
        );
        assert!(
            md.contains("| snapblk | 200 + 400 / 1000 / 1200 | — | — |"),
            "{md}"
        );
        let svg = rep.svg();
        assert!(svg.starts_with("<svg") && svg.contains("snapblk-cow ÷ dm-snap"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
