//! What a bench run found, and its three renderings: JSON (machine-readable), a Markdown table,
//! and an SVG plot of each case's ratio against its target.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// What a case must reach.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// Engine / baseline, median over the repetitions, at least this.
    MinRatio {
        /// The ratio.
        ratio: f64,
    },
    /// Median time at most this (the case's ratio is `seconds / time`, so ≥ 1 meets it).
    MaxSeconds {
        /// The budget.
        seconds: f64,
    },
    /// Not one origin write during the case (the ratio is reported for information).
    ZeroOriginWrites,
    /// Reported for information only.
    Info,
}

impl Target {
    fn label(&self) -> String {
        match self {
            Target::MinRatio { ratio } => format!("≥ {ratio}×"),
            Target::MaxSeconds { seconds } => format!("≤ {seconds} s"),
            Target::ZeroOriginWrites => "0 origin writes".into(),
            Target::Info => "—".into(),
        }
    }

    /// The ratio the plot draws as the target line.
    fn plot_ratio(&self) -> Option<f64> {
        match self {
            Target::MinRatio { ratio } => Some(*ratio),
            Target::MaxSeconds { .. } => Some(1.0),
            _ => None,
        }
    }
}

/// I/O and commit counters of the engine over one measured engine run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Commit groups written (one store sync each).
    pub commit_groups: u64,
    /// Requests carried by those groups.
    pub commit_requests: u64,
    /// Largest group, in requests.
    pub max_group_requests: u64,
    /// Blocks preserved (copy-on-write).
    pub preserves: u64,
    /// Blocks written to the origin, as the engine counts them.
    pub blocks_written: u64,
    /// Blocks skipped because the origin already held the bytes.
    pub blocks_skipped: u64,
    /// Origin `read_at` calls.
    pub origin_reads: u64,
    /// Origin `write_at` calls.
    pub origin_writes: u64,
    /// Store `read_at` calls.
    pub store_reads: u64,
    /// Store `write_at` calls.
    pub store_writes: u64,
    /// Store syncs.
    pub store_syncs: u64,
    /// Origin syncs.
    pub origin_syncs: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// CPU time (user + system, all threads of the process) the run used, milliseconds.
    pub cpu_ms: u64,
}

impl Counts {
    /// Mean requests per commit group.
    pub fn requests_per_group(&self) -> f64 {
        if self.commit_groups == 0 {
            0.0
        } else {
            self.commit_requests as f64 / self.commit_groups as f64
        }
    }
}

/// One case: baseline and engine measured alternately, once per repetition.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Case {
    /// Short name (also the `--cases` filter word).
    pub name: String,
    /// What the engine does in it.
    pub what: String,
    /// What it is compared with.
    pub baseline: String,
    /// Unit of `raw` and `engine`: "IOPS", "MiB/s" or "s".
    pub unit: String,
    /// Baseline figures, one per repetition (empty when there is no baseline).
    pub raw: Vec<f64>,
    /// Engine figures, one per repetition.
    pub engine: Vec<f64>,
    /// Engine / baseline per repetition (for timed cases: budget / time).
    pub ratios: Vec<f64>,
    /// A second, informational baseline (threads doing synchronous I/O, like the engine's
    /// callers), if the case has one.
    pub alt_baseline: Option<String>,
    /// Its figures, one per repetition.
    pub alt: Vec<f64>,
    /// Engine / second baseline per repetition.
    pub alt_ratios: Vec<f64>,
    /// What the case must reach.
    pub target: Target,
    /// Engine counters per repetition.
    pub counts: Vec<Counts>,
    /// Facts worth a line (replayed journal, build time, …).
    pub notes: Vec<String>,
    /// Medians and spread, filled by [`Case::finish`].
    pub summary: Summary,
}

/// Medians and spread of a case.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Median baseline figure.
    pub raw_median: Option<f64>,
    /// Median engine figure.
    pub engine_median: f64,
    /// Median ratio.
    pub ratio_median: f64,
    /// Smallest ratio.
    pub ratio_min: f64,
    /// Largest ratio.
    pub ratio_max: f64,
    /// Whether the target is met (None: information only).
    pub met: Option<bool>,
    /// Median of the second baseline.
    pub alt_median: Option<f64>,
    /// Median engine / second baseline.
    pub alt_ratio_median: Option<f64>,
}

/// The median of `v` (mean of the middle two for even lengths); 0 for an empty slice.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

impl Case {
    /// An empty case.
    pub fn new(name: &str, what: &str, baseline: &str, unit: &str, target: Target) -> Case {
        Case {
            name: name.into(),
            what: what.into(),
            baseline: baseline.into(),
            unit: unit.into(),
            raw: Vec::new(),
            engine: Vec::new(),
            ratios: Vec::new(),
            alt_baseline: None,
            alt: Vec::new(),
            alt_ratios: Vec::new(),
            target,
            counts: Vec::new(),
            notes: Vec::new(),
            summary: Summary::default(),
        }
    }

    /// Computes the summary from the repetitions.
    pub fn finish(&mut self) {
        let s = &mut self.summary;
        s.raw_median = (!self.raw.is_empty()).then(|| median(&self.raw));
        s.alt_median = (!self.alt.is_empty()).then(|| median(&self.alt));
        s.alt_ratio_median = (!self.alt_ratios.is_empty()).then(|| median(&self.alt_ratios));
        s.engine_median = median(&self.engine);
        s.ratio_median = median(&self.ratios);
        s.ratio_min = self.ratios.iter().copied().fold(f64::INFINITY, f64::min);
        s.ratio_max = self.ratios.iter().copied().fold(0.0, f64::max);
        if self.ratios.is_empty() {
            s.ratio_min = 0.0;
        }
        s.met = match &self.target {
            Target::MinRatio { ratio } => Some(s.ratio_median >= *ratio),
            Target::MaxSeconds { seconds } => Some(s.engine_median <= *seconds),
            Target::ZeroOriginWrites => {
                Some(!self.counts.is_empty() && self.counts.iter().all(|c| c.origin_writes == 0))
            }
            Target::Info => None,
        };
    }
}

/// Where and how the run happened.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    /// `uname -r`-like kernel release.
    pub kernel: String,
    /// CPUs online.
    pub cpus: usize,
    /// 1-minute load average when the run started.
    pub load_start: f64,
    /// 1-minute load average when it ended.
    pub load_end: f64,
}

/// A whole run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// When it ran, UTC, RFC 3339.
    pub date_utc: String,
    /// "full" or "quick" (quick figures mean nothing).
    pub mode: String,
    /// The command line.
    pub command: String,
    /// Sizes and parallelism used.
    pub config: serde_json::Value,
    /// The machine.
    pub machine: Machine,
    /// The cases, in run order.
    pub cases: Vec<Case>,
}

fn fmt_num(v: f64, unit: &str) -> String {
    match unit {
        "s" => format!("{v:.3} s"),
        "IOPS" => format!("{:.0} IOPS", v),
        _ => format!("{v:.0} {unit}"),
    }
}

impl Report {
    /// Whether every correctness target (zero origin writes) held; speed never fails a run.
    pub fn correctness_ok(&self) -> bool {
        self.cases
            .iter()
            .filter(|c| matches!(c.target, Target::ZeroOriginWrites))
            .all(|c| c.summary.met == Some(true))
    }

    /// The results as a Markdown section (tables, no heading of level 1).
    pub fn markdown(&self, svg_name: Option<&str>) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Run {} ({} mode) on {} CPUs, kernel {}, load {:.2} → {:.2}; {} repetition(s), \
             ratio = median over repetitions [min–max].\n",
            self.date_utc,
            self.mode,
            self.machine.cpus,
            self.machine.kernel,
            self.machine.load_start,
            self.machine.load_end,
            self.cases.iter().map(|c| c.engine.len()).max().unwrap_or(0),
        );
        let _ = writeln!(s, "Command: `{}`\n", self.command);
        let _ = writeln!(
            s,
            "| case | baseline | baseline (median) | engine (median) | ratio [min–max] | target | met | vs {} threads sync I/O |",
            self.config.get("threads").and_then(|t| t.as_u64()).unwrap_or(0)
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---|---|---:|");
        for c in &self.cases {
            let m = &c.summary;
            let met = match m.met {
                Some(true) => "yes",
                Some(false) => "**NO**",
                None => "—",
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.2} [{:.2}–{:.2}] | {} | {} | {} |",
                c.name,
                c.baseline,
                m.raw_median.map_or("—".into(), |v| fmt_num(v, &c.unit)),
                fmt_num(m.engine_median, &c.unit),
                m.ratio_median,
                m.ratio_min,
                m.ratio_max,
                c.target.label(),
                met,
                match (m.alt_ratio_median, m.alt_median) {
                    (Some(r), Some(v)) => format!("{r:.2} ({})", fmt_num(v, &c.unit)),
                    _ => "—".into(),
                }
            );
        }
        let _ = writeln!(
            s,
            "\nEngine counters (median repetition; per measured engine run):\n"
        );
        let _ = writeln!(
            s,
            "| case | commit groups | requests/group | max group | store syncs | store reads | store writes | preserves | origin reads | origin writes | skipped identical | CPU ms |"
        );
        let _ = writeln!(
            s,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for c in &self.cases {
            if c.counts.is_empty() {
                continue;
            }
            let k = &c.counts[c.counts.len() / 2];
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.name,
                k.commit_groups,
                k.requests_per_group(),
                k.max_group_requests,
                k.store_syncs,
                k.store_reads,
                k.store_writes,
                k.preserves,
                k.origin_reads,
                k.origin_writes,
                k.blocks_skipped,
                k.cpu_ms
            );
        }
        let notes: Vec<String> = self
            .cases
            .iter()
            .flat_map(|c| c.notes.iter().map(move |n| format!("- {}: {n}", c.name)))
            .collect();
        if !notes.is_empty() {
            let _ = writeln!(s, "\nNotes:\n\n{}", notes.join("\n"));
        }
        if let Some(svg) = svg_name {
            let _ = writeln!(s, "\n![ratio vs target per case]({svg})");
        }
        s
    }

    /// A horizontal bar chart: per case the median ratio (bar), its min–max (whisker) and the
    /// target (red tick); see [`ratio_svg`].
    pub fn svg(&self) -> String {
        let cases: Vec<&Case> = self.cases.iter().collect();
        ratio_svg(
            &format!(
                "snapblk host engine bench, {} ({} mode)",
                self.date_utc, self.mode
            ),
            "engine ÷ baseline: bar = median, black line = min–max, red tick = target (open: 1 s ÷ time)",
            &cases,
        )
    }
}

/// A horizontal bar chart of cases: per case the median ratio (bar: green = target met, red =
/// missed, grey = no target), its min–max (black line) and the target (red tick). Cases without
/// ratios are left out. Hand-written SVG: a dozen bars do not need a plotting library. Shared
/// by the host and the VM bench.
pub fn ratio_svg(title: &str, subtitle: &str, cases: &[&Case]) -> String {
    let cases: Vec<&Case> = cases
        .iter()
        .copied()
        .filter(|c| !c.ratios.is_empty())
        .collect();
    // Wide enough for the longest name at ~7 px per character.
    let longest = cases
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0);
    let label_w = (7.0 * longest as f64 + 16.0).max(230.0);
    let (plot_w, row_h, top) = (440.0, 30.0, 56.0);
    // Capped so that the 0.3× and 0.5× targets stay readable next to cases far above 1×;
    // bars past the cap are clipped and carry their value as text.
    let max = (cases
        .iter()
        .map(|c| {
            c.summary
                .ratio_max
                .max(c.target.plot_ratio().unwrap_or(0.0))
        })
        .fold(1.0f64, f64::max)
        * 1.1)
        .min(3.0);
    let x = |v: f64| label_w + plot_w * (v / max).clamp(0.0, 1.0);
    let h = top + row_h * cases.len() as f64 + 40.0;
    let w = label_w + plot_w + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14">{}</text>"#,
        esc(title)
    );
    let _ = writeln!(s, r#"<text x="10" y="38">{}</text>"#, esc(subtitle));
    let mut tick = 0.0;
    let step = 0.5;
    while tick <= max {
        let tx = x(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{tx:.1}" y1="{top}" x2="{tx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle">{tick}×</text>"##,
            h - 35.0,
            h - 20.0
        );
        tick += step;
    }
    for (i, c) in cases.iter().enumerate() {
        let y = top + row_h * i as f64;
        let m = &c.summary;
        let color = match m.met {
            Some(true) => "#4a9",
            Some(false) => "#d55",
            None => "#999",
        };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            y + 19.0,
            esc(&c.name)
        );
        let _ = writeln!(
            s,
            r#"<rect x="{label_w}" y="{:.1}" width="{:.1}" height="18" fill="{color}"/>"#,
            y + 6.0,
            x(m.ratio_median) - label_w
        );
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#222" stroke-width="1.5"/>"##,
            x(m.ratio_min),
            y + 15.0,
            x(m.ratio_max),
            y + 15.0
        );
        if let Some(t) = c.target.plot_ratio() {
            let _ = writeln!(
                s,
                r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#c00" stroke-width="3"/>"##,
                x(t),
                y + 2.0,
                y + 28.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{:.2}</text>"#,
            (x(m.ratio_max) + 4.0).min(label_w + plot_w - 10.0),
            y + 19.0,
            m.ratio_median
        );
    }
    s.push_str("</svg>\n");
    s
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Replaces the text between `begin` and `end` markers in `doc` with `body`; None when the
/// markers are missing.
pub fn replace_between(doc: &str, begin: &str, end: &str, body: &str) -> Option<String> {
    let a = doc.find(begin)? + begin.len();
    let b = a + doc[a..].find(end)?;
    Some(format!("{}\n{}\n{}", &doc[..a], body.trim_end(), &doc[b..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_summary() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        let mut c = Case::new("x", "", "", "IOPS", Target::MinRatio { ratio: 0.9 });
        c.ratios = vec![0.8, 1.0, 0.95];
        c.engine = vec![8.0, 10.0, 9.5];
        c.raw = vec![10.0; 3];
        c.finish();
        assert_eq!(c.summary.ratio_median, 0.95);
        assert_eq!(c.summary.ratio_min, 0.8);
        assert_eq!(c.summary.ratio_max, 1.0);
        assert_eq!(c.summary.met, Some(true));
    }

    #[test]
    fn zero_writes_target_fails_on_any_write() {
        let mut c = Case::new("r", "", "", "IOPS", Target::ZeroOriginWrites);
        c.counts = vec![
            Counts::default(),
            Counts {
                origin_writes: 1,
                ..Counts::default()
            },
        ];
        c.finish();
        assert_eq!(c.summary.met, Some(false));
    }

    #[test]
    fn replace_between_markers() {
        let d = "a\n<!-- b -->\nold\n<!-- e -->\nz";
        let r = replace_between(d, "<!-- b -->", "<!-- e -->", "new").unwrap();
        assert_eq!(r, "a\n<!-- b -->\nnew\n<!-- e -->\nz");
        assert!(replace_between("none", "<!-- b -->", "<!-- e -->", "x").is_none());
    }
}
