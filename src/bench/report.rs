//! Writing results: a table on stdout, `bench.json`, and PNG plots drawn with
//! plotters' bitmap backend — `latency_cdf.png` (TTFT, TPOT, ITL and E2E
//! CDFs, one line per run) and, for sweeps, `sweep.png` (request and output
//! token throughput and p99 TTFT against concurrency or rate). Text is drawn
//! with DejaVu Sans embedded in the binary, so no system font is needed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Context, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::client::RequestRecord;
use super::metrics::{tpot_s, RunStats};

/// The name the embedded font is registered under.
const FONT: &str = "sans-serif";

/// Ten distinct, readable-on-white colours (matplotlib's tab10); Palette99
/// puts a pale yellow third, which vanishes on a white background.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// One run's numbers plus the raw records the plots need.
pub struct RunResult {
    pub stats: RunStats,
    pub records: Vec<RequestRecord>,
}

impl RunResult {
    /// Short name for legends and tables.
    pub fn name(&self) -> String {
        run_name(self.stats.concurrency, self.stats.request_rate)
    }
}

/// Short name of a sweep point: `c=4`, `rate=2`, `rate=2,c=8`.
pub fn run_name(concurrency: Option<usize>, rate: Option<f64>) -> String {
    match (rate, concurrency) {
        (Some(r), Some(c)) => format!("rate={r},c={c}"),
        (Some(r), None) => format!("rate={r}"),
        (None, Some(c)) => format!("c={c}"),
        (None, None) => "unbounded".to_string(),
    }
}

/// The human-readable table for all runs.
pub fn table(runs: &[RunResult]) -> String {
    let mut out = String::new();
    for run in runs {
        let s = &run.stats;
        let _ = writeln!(
            out,
            "============ Serving benchmark: {} ============",
            run.name()
        );
        let _ = writeln!(out, "{:<38}{:>12}", "Requests sent:", s.sent);
        let _ = writeln!(out, "{:<38}{:>12}", "Completed:", s.completed);
        let _ = writeln!(out, "{:<38}{:>12}", "Failed:", s.failed);
        let _ = writeln!(out, "{:<38}{:>12.2}", "Duration (s):", s.duration_s);
        let _ = writeln!(out, "{:<38}{:>12}", "Input tokens:", s.total_input_tokens);
        let _ = writeln!(out, "{:<38}{:>12}", "Output tokens:", s.total_output_tokens);
        let _ = writeln!(
            out,
            "{:<38}{:>12.2}",
            "Request throughput (req/s):", s.request_throughput
        );
        let _ = writeln!(
            out,
            "{:<38}{:>12.2}",
            "Input token throughput (tok/s):", s.input_token_throughput
        );
        let _ = writeln!(
            out,
            "{:<38}{:>12.2}",
            "Output token throughput (tok/s):", s.output_token_throughput
        );
        if let (Some(g), Some(gp)) = (s.good_requests, s.goodput) {
            let _ = writeln!(out, "{:<38}{:>12}", "Requests meeting SLOs:", g);
            let _ = writeln!(out, "{:<38}{:>12.2}", "Goodput (req/s):", gp);
        }
        let _ = writeln!(
            out,
            "{:<10}{:>10}{:>10}{:>10}{:>10}  (ms)",
            "", "mean", "median", "p90", "p99"
        );
        for (label, m) in [
            ("TTFT", &s.ttft_ms),
            ("TPOT", &s.tpot_ms),
            ("ITL", &s.itl_ms),
            ("E2E", &s.e2e_ms),
        ] {
            let _ = writeln!(
                out,
                "{:<10}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
                label, m.mean, m.median, m.p90, m.p99
            );
        }
        if !s.usage_reported && s.completed > 0 {
            let _ = writeln!(
                out,
                "note: output tokens counted as stream chunks (no usage from the server)"
            );
        }
        for e in &s.errors {
            let _ = writeln!(out, "error: {e}");
        }
    }
    if runs.len() > 1 {
        let _ = writeln!(out, "============ Sweep ============");
        let _ = writeln!(
            out,
            "{:<16}{:>8}{:>8}{:>10}{:>12}{:>12}{:>12}{:>12}",
            "run", "ok", "failed", "req/s", "out tok/s", "p99 TTFT", "p99 TPOT", "goodput"
        );
        for run in runs {
            let s = &run.stats;
            let gp = s
                .goodput
                .map(|g| format!("{g:.2}"))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "{:<16}{:>8}{:>8}{:>10.2}{:>12.1}{:>12.2}{:>12.2}{:>12}",
                run.name(),
                s.completed,
                s.failed,
                s.request_throughput,
                s.output_token_throughput,
                s.ttft_ms.p99,
                s.tpot_ms.p99,
                gp
            );
        }
    }
    out
}

/// Write the JSON document to `dir/bench.json`.
pub fn write_json(dir: &Path, doc: &serde_json::Value) -> Result<PathBuf> {
    let path = dir.join("bench.json");
    let text = serde_json::to_string_pretty(doc).context("serialising bench.json")?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a known-good TTF compiled in, so this cannot fail in practice;
        // if it did, plots would fail to draw text and report that error instead.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draw the plots into `dir`; returns the files written.
pub fn write_plots(
    dir: &Path,
    runs: &[RunResult],
    sweep_axis: Option<&str>,
) -> Result<Vec<PathBuf>> {
    register_font();
    let mut files = vec![latency_cdfs(dir, runs)?];
    if let (Some(axis), true) = (sweep_axis, runs.len() > 1) {
        files.push(sweep(dir, runs, axis)?);
    }
    Ok(files)
}

/// Sorted milliseconds -> (x, cumulative fraction) points.
fn cdf(mut ms: Vec<f64>) -> Vec<(f64, f64)> {
    ms.retain(|v| v.is_finite());
    ms.sort_by(f64::total_cmp);
    let n = ms.len() as f64;
    ms.iter()
        .enumerate()
        .map(|(i, v)| (*v, (i + 1) as f64 / n))
        .collect()
}

type Extract = fn(&[RequestRecord]) -> Vec<f64>;

fn latency_cdfs(dir: &Path, runs: &[RunResult]) -> Result<PathBuf> {
    let path = dir.join("latency_cdf.png");
    let root = BitMapBackend::new(&path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let panels: [(&str, Extract); 4] = [
        ("TTFT (ms)", |r| {
            r.iter().filter(|x| x.ok).map(|x| x.ttft_s * 1e3).collect()
        }),
        ("TPOT (ms)", |r| {
            r.iter().filter_map(tpot_s).map(|v| v * 1e3).collect()
        }),
        ("Inter-token latency (ms)", |r| {
            r.iter()
                .filter(|x| x.ok)
                .flat_map(|x| x.itl_s.iter().map(|v| v * 1e3))
                .collect()
        }),
        ("End-to-end latency (ms)", |r| {
            r.iter().filter(|x| x.ok).map(|x| x.e2e_s * 1e3).collect()
        }),
    ];
    for (area, (title, extract)) in root.split_evenly((2, 2)).iter().zip(panels) {
        let series: Vec<(String, Vec<(f64, f64)>)> = runs
            .iter()
            .map(|r| (r.name(), cdf(extract(&r.records))))
            .collect();
        let xmax = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
            .fold(0.0, f64::max);
        let xmax = if xmax > 0.0 { xmax * 1.05 } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{title} CDF"), (FONT, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..xmax, 0f64..1f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(title)
            .y_desc("fraction of requests")
            .label_style((FONT, 14))
            .draw()
            .map_err(plot_err)?;
        for (i, (name, points)) in series.into_iter().enumerate() {
            let color = color(i);
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    // The backend borrows `path`; it must be gone before the path is returned.
    drop(root);
    Ok(path)
}

fn sweep(dir: &Path, runs: &[RunResult], axis: &str) -> Result<PathBuf> {
    let path = dir.join("sweep.png");
    let root = BitMapBackend::new(&path, (1800, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let x_of = |s: &RunStats| match axis {
        "request_rate" => s.request_rate.unwrap_or(0.0),
        _ => s.concurrency.unwrap_or(0) as f64,
    };
    type Metric = fn(&RunStats) -> f64;
    let panels: [(&str, Metric); 3] = [
        ("Request throughput (req/s)", |s| s.request_throughput),
        ("Output token throughput (tok/s)", |s| {
            s.output_token_throughput
        }),
        ("p99 TTFT (ms)", |s: &RunStats| s.ttft_ms.p99),
    ];
    for (i, (area, (title, metric))) in root.split_evenly((1, 3)).iter().zip(panels).enumerate() {
        let mut pts: Vec<(f64, f64)> = runs
            .iter()
            .map(|r| (x_of(&r.stats), metric(&r.stats)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let xmax = pts.iter().map(|p| p.0).fold(0.0, f64::max).max(1.0) * 1.1;
        let ymax = pts.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(axis.replace('_', " "))
            .y_desc(title)
            .label_style((FONT, 14))
            .draw()
            .map_err(plot_err)?;
        let color = color(i);
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(plot_err)?;
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    // The backend borrows `path`; it must be gone before the path is returned.
    drop(root);
    Ok(path)
}

/// Plotters' errors borrow the backend's error type; flatten them to text.
fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {e:?}")
}
