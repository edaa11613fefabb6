//! Charts of a `scripts/bench.sh` summary (`bench/results/<date>-<name>.json`): requests/s against
//! shards at peak load, and p99 latency against the offered rate of the open-loop runs, as PNGs.
//!
//! This module owns reading the few summary fields the charts need and drawing them with plotters.
//! It never runs a benchmark and never computes statistics: the medians over rounds come from the
//! summary as `scripts/bench_report.py` wrote it. Text is drawn with an embedded DejaVu Sans
//! (`bench/assets/`), so no system font library is needed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Deserialize;

/// Width of a chart with one panel (or none), in pixels.
pub const WIDTH_PIXELS: u32 = 1280;
/// Height of a chart with one panel (or none), in pixels.
pub const HEIGHT_PIXELS: u32 = 800;
/// Width of each panel of a chart with several (one per scenario), in pixels.
pub const PANEL_WIDTH_PIXELS: u32 = 800;
/// Height of each panel of a chart with several, in pixels.
pub const PANEL_HEIGHT_PIXELS: u32 = 560;
/// Height of the title above the panels, in pixels.
const TITLE_HEIGHT_PIXELS: u32 = 60;
/// Largest summary file read, in bytes (a summary of thousands of entries is a few MB).
pub const SUMMARY_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Most panels (scenarios) in one chart; bench.sh has 7 scenarios.
pub const PANELS_MAX: usize = 12;
/// Most lines in one panel: beyond it the legend covers the plot and the colours repeat.
pub const SERIES_MAX: usize = 32;
/// The font family name the embedded font is registered under; plotters' axis labels ask for it.
const FONT_FAMILY: &str = "sans-serif";
/// DejaVu Sans 2.37 (license: `bench/assets/DejaVuSans-LICENSE.txt`).
static FONT_TTF: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
pub(crate) const TITLE_FONT_SIZE: u32 = 26;
pub(crate) const PANEL_TITLE_FONT_SIZE: u32 = 22;
pub(crate) const AXIS_FONT_SIZE: u32 = 16;
pub(crate) const LEGEND_FONT_SIZE: u32 = 15;
const NOTE_FONT_SIZE: u32 = 22;

/// The summary written by `scripts/bench_report.py`; only the fields the charts use.
#[derive(Debug, Clone, Deserialize)]
pub struct Summary {
    /// The results name (`--name`).
    #[serde(default)]
    pub name: String,
    /// The day of the run, `YYYY-MM-DD`.
    #[serde(default)]
    pub date: String,
    /// One entry per (target, scenario, shards, rate).
    pub results: Vec<Entry>,
}

/// Medians over rounds of one (target, scenario, shards, rate).
#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    /// shardpay, axum, bare-glommio or actix.
    pub target: String,
    /// The bench.sh scenario (plaintext, json, pipelined, balance, payments, mixed, signup).
    pub scenario: String,
    /// shardpay's shards, axum's worker threads, 1 for the single-core peers.
    pub shards: u32,
    /// How the shard count reads in a legend ("2 shards", "2 threads", "1 core").
    #[serde(default)]
    pub shards_label: Option<String>,
    /// The rate label: "peak", "50%" or an absolute rate such as "20000".
    pub rate: String,
    /// "closed" (peak) or "open".
    pub mode: String,
    /// Open loop: the rate asked of the load generator, requests per second (median).
    #[serde(default)]
    pub offered_rate_per_second: Option<f64>,
    /// Correct answers per second (median); `None` when no round produced a report.
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// Latency percentiles in µs (medians).
    #[serde(default)]
    pub latency_us: Option<LatencyPercentiles>,
}

/// Latency percentiles in µs.
#[derive(Debug, Clone, Deserialize)]
pub struct LatencyPercentiles {
    /// 99th percentile, µs.
    #[serde(default)]
    pub p99: Option<f64>,
}

/// Why the charts could not be made.
#[derive(Debug)]
pub enum ChartError {
    /// The summary could not be read.
    Read {
        /// The summary file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// The summary is larger than [`SUMMARY_BYTES_MAX`].
    TooLarge {
        /// The summary file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// The summary is not the JSON bench_report.py writes.
    Parse {
        /// The summary file.
        path: PathBuf,
        /// The error.
        error: serde_json::Error,
    },
    /// The embedded font did not load.
    Font,
    /// A chart would have more than [`PANELS_MAX`] panels.
    TooManyPanels {
        /// The chart.
        chart: &'static str,
        /// Panels it would have.
        panels: usize,
    },
    /// A panel would have more than [`SERIES_MAX`] lines.
    TooManySeries {
        /// The chart.
        chart: &'static str,
        /// Lines it would have.
        series: usize,
    },
    /// plotters failed to draw or write a PNG.
    Draw {
        /// The PNG.
        path: PathBuf,
        /// plotters' message.
        message: String,
    },
}

impl fmt::Display for ChartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChartError::Read { path, error } => write!(f, "reading {}: {error}", path.display()),
            ChartError::TooLarge { path, bytes } => write!(
                f,
                "{} is {bytes} bytes, more than the {SUMMARY_BYTES_MAX} a summary may have",
                path.display()
            ),
            ChartError::Parse { path, error } => {
                write!(f, "{} is not a bench.sh summary: {error}", path.display())
            }
            ChartError::Font => f.write_str("the embedded font (bench/assets/DejaVuSans.ttf) did not load"),
            ChartError::TooManyPanels { chart, panels } => write!(
                f,
                "the {chart} chart would have {panels} panels (scenarios), more than {PANELS_MAX}"
            ),
            ChartError::TooManySeries { chart, series } => write!(
                f,
                "a panel of the {chart} chart would have {series} lines, more than {SERIES_MAX}: \
                 chart fewer targets or shard counts at a time"
            ),
            ChartError::Draw { path, message } => write!(f, "drawing {}: {message}", path.display()),
        }
    }
}

impl std::error::Error for ChartError {}

/// Reads a summary file.
pub fn read_summary(path: &Path) -> Result<Summary, ChartError> {
    let read_error = |error| ChartError::Read {
        path: path.to_path_buf(),
        error,
    };
    let bytes = std::fs::metadata(path).map_err(read_error)?.len();
    if bytes > SUMMARY_BYTES_MAX {
        return Err(ChartError::TooLarge {
            path: path.to_path_buf(),
            bytes,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    serde_json::from_str(&text).map_err(|error| ChartError::Parse {
        path: path.to_path_buf(),
        error,
    })
}

/// The PNGs [`render`] writes for `base`: `<base>-throughput.png` and `<base>-latency.png`.
pub fn output_paths(base: &Path) -> (PathBuf, PathBuf) {
    let with_suffix = |suffix: &str| {
        let mut name = base.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    (with_suffix("-throughput.png"), with_suffix("-latency.png"))
}

/// Draws both charts of `summary` next to `base` and returns the paths written: one panel per
/// scenario (scenarios differ by orders of magnitude, so they never share axes), the same colour
/// for the same line in every panel. A chart with nothing to plot says so, so both files always
/// exist afterwards.
pub fn render(summary: &Summary, base: &Path) -> Result<Vec<PathBuf>, ChartError> {
    register_font()?;
    let (throughput_path, latency_path) = output_paths(base);
    let heading = format!("{} {}", summary.date, summary.name).trim().to_string();
    let heading = if heading.is_empty() {
        String::new()
    } else {
        format!("{heading}: ")
    };
    let charts = [
        (
            "throughput",
            &throughput_path,
            Kind::Throughput,
            format!("{heading}requests/s at peak (closed loop) vs shards"),
            "no peak (closed-loop) runs with answers in this summary",
        ),
        (
            "latency",
            &latency_path,
            Kind::Latency,
            format!("{heading}p99 latency vs offered rate (open loop)"),
            "no open-loop runs in this summary (bench.sh --rates 50%,80% or a rate in req/s)",
        ),
    ];
    for (chart, path, kind, title, empty_note) in charts {
        let panels = panels(summary, kind);
        if panels.len() > PANELS_MAX {
            return Err(ChartError::TooManyPanels {
                chart,
                panels: panels.len(),
            });
        }
        if let Some(crowded) = panels.iter().find(|panel| panel.series.len() > SERIES_MAX) {
            return Err(ChartError::TooManySeries {
                chart,
                series: crowded.series.len(),
            });
        }
        let draw_error = |error: DrawingAreaErrorKind<_>| ChartError::Draw {
            path: path.to_path_buf(),
            message: error.to_string(),
        };
        let (columns, rows) = grid(panels.len());
        let size = if panels.len() <= 1 {
            (WIDTH_PIXELS, HEIGHT_PIXELS)
        } else {
            (
                PANEL_WIDTH_PIXELS * columns,
                TITLE_HEIGHT_PIXELS + PANEL_HEIGHT_PIXELS * rows,
            )
        };
        let root = BitMapBackend::new(path, size).into_drawing_area();
        if panels.is_empty() {
            draw_note(&root, &title, empty_note).map_err(draw_error)?;
        } else {
            draw_chart(&root, &title, kind, &panels).map_err(draw_error)?;
        }
        root.present().map_err(draw_error)?;
    }
    Ok(vec![throughput_path, latency_path])
}

/// Registers the embedded font once per process.
pub(crate) fn register_font() -> Result<(), ChartError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_TTF).is_ok());
    if registered {
        Ok(())
    } else {
        Err(ChartError::Font)
    }
}

/// Which chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Peak requests/s by shard count: a line per target.
    Throughput,
    /// Open-loop p99 latency by offered rate: a line per target and shard count.
    Latency,
}

/// One scenario's plot.
#[derive(Debug, Clone, PartialEq)]
struct Panel {
    scenario: String,
    series: Vec<Series>,
}

/// One line of a panel: its legend, its colour (the same for the same legend in every panel) and
/// its points, sorted by x.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series {
    pub(crate) label: String,
    pub(crate) color_index: usize,
    pub(crate) points: Vec<(f64, f64)>,
}

/// The panels of a chart, scenarios and lines in the summary's order.
fn panels(summary: &Summary, kind: Kind) -> Vec<Panel> {
    let mut panels: Vec<Panel> = Vec::new();
    let mut labels: Vec<String> = Vec::new();
    for entry in &summary.results {
        let Some((label, point)) = point_of(entry, kind) else {
            continue;
        };
        let color_index = match labels.iter().position(|known| *known == label) {
            Some(index) => index,
            None => {
                labels.push(label.clone());
                labels.len() - 1
            }
        };
        let panel = match panels.iter().position(|panel| panel.scenario == entry.scenario) {
            Some(index) => &mut panels[index],
            None => {
                panels.push(Panel {
                    scenario: entry.scenario.clone(),
                    series: Vec::new(),
                });
                panels.last_mut().expect("just pushed")
            }
        };
        match panel.series.iter_mut().find(|series| series.label == label) {
            Some(series) => series.points.push(point),
            None => panel.series.push(Series {
                label,
                color_index,
                points: vec![point],
            }),
        }
    }
    for series in panels.iter_mut().flat_map(|panel| panel.series.iter_mut()) {
        series.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    panels
}

/// An entry's line label and point in a chart of `kind`, if it belongs there and has the figures.
fn point_of(entry: &Entry, kind: Kind) -> Option<(String, (f64, f64))> {
    let positive = |value: &f64| value.is_finite() && *value > 0.0;
    match kind {
        Kind::Throughput => {
            let rps = entry.requests_per_second.filter(|v| v.is_finite())?;
            (entry.rate == "peak").then(|| (entry.target.clone(), (f64::from(entry.shards), rps)))
        }
        Kind::Latency => {
            if entry.mode != "open" {
                return None;
            }
            let offered = entry.offered_rate_per_second.filter(positive)?;
            let p99 = entry
                .latency_us
                .as_ref()
                .and_then(|latency| latency.p99)
                .filter(positive)?;
            let shards = entry.shards_label.clone().unwrap_or_else(|| {
                format!(
                    "{} shard{}",
                    entry.shards,
                    if entry.shards == 1 { "" } else { "s" }
                )
            });
            Some((format!("{}, {shards}", entry.target), (offered, p99)))
        }
    }
}

/// Columns and rows for `panels` panels.
fn grid(panels: usize) -> (u32, u32) {
    let columns = match panels {
        0..=1 => 1,
        2..=4 => 2,
        _ => 3,
    };
    (columns as u32, panels.div_ceil(columns).max(1) as u32)
}

/// "12 345" → "12k" style tick labels for large counts.
pub(crate) fn format_count(value: f64) -> String {
    if value.abs() >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if value.abs() >= 1e4 {
        format!("{:.0}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

/// Colours that read well on white (Tableau 10); more lines take plotters' 99-colour palette.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub(crate) fn series_color(index: usize) -> RGBColor {
    COLORS.get(index).copied().unwrap_or_else(|| {
        let (r, g, b) = Palette99::pick(index - COLORS.len()).rgb();
        RGBColor(r, g, b)
    })
}

pub(crate) fn font(size: u32) -> TextStyle<'static> {
    (FONT_FAMILY, size).into_font().into()
}

/// The title over a grid of panels.
fn draw_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    kind: Kind,
    panels: &[Panel],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let body = root.margin(12, 0, 0, 0).titled(title, font(TITLE_FONT_SIZE))?;
    let (columns, rows) = grid(panels.len());
    let areas = body.split_evenly((rows as usize, columns as usize));
    for (area, panel) in areas.iter().zip(panels) {
        match kind {
            Kind::Throughput => draw_throughput(area, panel)?,
            Kind::Latency => draw_latency(area, panel)?,
        }
    }
    Ok(())
}

/// Lines with their points, and a legend at `legend` (where the lines usually are not).
pub(crate) fn draw_lines<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    series: &[Series],
    legend: SeriesLabelPosition,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for line in series {
        let color = series_color(line.color_index);
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(line.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3)));
        chart.draw_series(PointSeries::of_element(
            line.points.iter().copied(),
            4,
            color.filled(),
            &|coordinate, size, style| EmptyElement::at(coordinate) + Circle::new((0, 0), size, style),
        ))?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .label_font(font(LEGEND_FONT_SIZE))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
}

fn draw_throughput<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let points = || panel.series.iter().flat_map(|s| s.points.iter());
    let shards_max = points().map(|p| p.0).fold(1.0, f64::max);
    let rps_max = points().map(|p| p.1).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.scenario, font(PANEL_TITLE_FONT_SIZE))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..shards_max + 1.0, 0.0..rps_max * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("shards (axum: worker threads; single-core peers: 1)")
        .y_desc("requests/s (median over rounds)")
        .axis_desc_style(font(AXIS_FONT_SIZE))
        .label_style(font(AXIS_FONT_SIZE))
        // Shard counts are whole numbers: one tick per shard count, up to 16 ticks.
        .x_labels((shards_max as usize + 2).min(16))
        .x_label_formatter(&|x| {
            if x.fract() == 0.0 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format_count(*y))
        .draw()?;
    let x_max = shards_max + 1.0;
    let y_max = rps_max * 1.15;
    let corner = legend_corner(points().map(|p| (p.0 / x_max, p.1 / y_max)));
    draw_lines(&mut chart, &panel.series, corner)
}

fn draw_latency<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let points = || panel.series.iter().flat_map(|s| s.points.iter());
    let rate_max = points().map(|p| p.0).fold(1.0, f64::max);
    let p99_min = points().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let p99_max = points().map(|p| p.1).fold(1.0, f64::max);
    // Latency near saturation grows by orders of magnitude: a log axis keeps both ends readable.
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.scenario, font(PANEL_TITLE_FONT_SIZE))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(
            0.0..rate_max * 1.1,
            ((p99_min / 2.0).max(1.0)..p99_max * 2.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("offered rate, requests/s (median over rounds)")
        .y_desc("p99 latency, µs (log scale)")
        .axis_desc_style(font(AXIS_FONT_SIZE))
        .label_style(font(AXIS_FONT_SIZE))
        // plotters' light lines on a log axis crowd into bands; the bold ones suffice.
        .light_line_style(TRANSPARENT)
        .y_labels(12)
        .x_labels(6)
        .x_label_formatter(&|x| format_count(*x))
        .y_label_formatter(&|y| format_count(*y))
        .draw()?;
    let (x_max, y_min, y_max) = (rate_max * 1.1, (p99_min / 2.0).max(1.0), p99_max * 2.0);
    let corner = legend_corner(points().map(|p| (p.0 / x_max, (p.1 / y_min).ln() / (y_max / y_min).ln())));
    draw_lines(&mut chart, &panel.series, corner)
}

/// The corner of a panel for its legend: the one with the fewest points under it, given the
/// points as fractions of the axes (0 to 1, y upwards); lower right first on a tie.
pub(crate) fn legend_corner(points: impl Iterator<Item = (f64, f64)>) -> SeriesLabelPosition {
    // The share of each axis a legend of a few lines covers.
    const LEGEND_SHARE: f64 = 0.45;
    let corners = [
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerLeft, false, false),
        (SeriesLabelPosition::UpperRight, true, true),
    ];
    let mut counts = [0usize; 4];
    for (x, y) in points {
        for (count, (_, right, upper)) in counts.iter_mut().zip(&corners) {
            let in_x = if *right {
                x > 1.0 - LEGEND_SHARE
            } else {
                x < LEGEND_SHARE
            };
            let in_y = if *upper {
                y > 1.0 - LEGEND_SHARE
            } else {
                y < LEGEND_SHARE
            };
            *count += usize::from(in_x && in_y);
        }
    }
    let emptiest = (0..corners.len()).min_by_key(|&index| counts[index]).unwrap_or(0);
    corners[emptiest].0.clone()
}

/// A chart with nothing to plot: its title and a sentence saying why.
fn draw_note<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    note: &str,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (width, height) = root.dim_in_pixel();
    let centered = |size| {
        font(size).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Center,
        ))
    };
    root.draw(&Text::new(
        title,
        (width as i32 / 2, 40),
        centered(TITLE_FONT_SIZE),
    ))?;
    root.draw(&Text::new(
        note,
        (width as i32 / 2, height as i32 / 2),
        centered(NOTE_FONT_SIZE),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

    fn summary(json: &str) -> Summary {
        serde_json::from_str(json).expect("test summary parses")
    }

    /// A fresh directory under the system's temporary directory.
    fn temp_dir(test: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "shardpay-bench-chart-{test}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    const SMALL: &str = r#"{
        "name": "test", "date": "2026-11-28", "results": [
        {"target": "shardpay", "scenario": "payments", "shards": 1, "rate": "peak", "mode": "closed",
         "offered_rate_per_second": null, "requests_per_second": 50000.0, "latency_us": {"p99": 900.0}},
        {"target": "shardpay", "scenario": "payments", "shards": 2, "rate": "peak", "mode": "closed",
         "requests_per_second": 80000.0, "latency_us": {"p99": 1200.0}},
        {"target": "shardpay", "scenario": "payments", "shards": 1, "rate": "50%", "mode": "open",
         "offered_rate_per_second": 25000.0, "requests_per_second": 24990.0, "latency_us": {"p99": 150.0}},
        {"target": "axum", "scenario": "payments", "shards": 1, "shards_label": "1 thread", "rate": "peak",
         "mode": "closed", "requests_per_second": 30000.0, "latency_us": {"p99": 3000.0}},
        {"target": "axum", "scenario": "payments", "shards": 1, "shards_label": "1 thread", "rate": "50%",
         "mode": "open", "offered_rate_per_second": 15000.0, "requests_per_second": 14990.0,
         "latency_us": {"p99": 400.0}, "an_unknown_field": [1, 2]},
        {"target": "axum", "scenario": "payments", "shards": 2, "rate": "peak", "mode": "closed",
         "requests_per_second": null, "latency_us": null},
        {"target": "axum", "scenario": "json", "shards": 1, "rate": "peak", "mode": "closed",
         "requests_per_second": 90000.0, "latency_us": {"p99": 500.0}}
    ]}"#;

    #[test]
    fn a_small_summary_renders_two_pngs() {
        let dir = temp_dir("small");
        let written = render(&summary(SMALL), &dir.join("2026-11-28-test")).expect("renders");
        assert_eq!(written.len(), 2);
        assert!(written[0].ends_with("2026-11-28-test-throughput.png"));
        assert!(written[1].ends_with("2026-11-28-test-latency.png"));
        for path in &written {
            let bytes = std::fs::read(path).expect("PNG written");
            assert!(
                bytes.starts_with(PNG_SIGNATURE),
                "{} is not a PNG",
                path.display()
            );
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn panels_group_entries_by_scenario_and_skip_what_has_no_figure() {
        let s = summary(SMALL);
        let series = |label: &str, color_index, points: &[(f64, f64)]| Series {
            label: label.into(),
            color_index,
            points: points.to_vec(),
        };
        assert_eq!(
            panels(&s, Kind::Throughput),
            vec![
                Panel {
                    scenario: "payments".into(),
                    series: vec![
                        series("shardpay", 0, &[(1.0, 50000.0), (2.0, 80000.0)]),
                        series("axum", 1, &[(1.0, 30000.0)]),
                    ],
                },
                Panel {
                    scenario: "json".into(),
                    series: vec![series("axum", 1, &[(1.0, 90000.0)])]
                },
            ]
        );
        assert_eq!(
            panels(&s, Kind::Latency),
            vec![Panel {
                scenario: "payments".into(),
                series: vec![
                    series("shardpay, 1 shard", 0, &[(25000.0, 150.0)]),
                    series("axum, 1 thread", 1, &[(15000.0, 400.0)]),
                ],
            }]
        );
    }

    #[test]
    fn panels_fill_a_grid() {
        assert_eq!(grid(0), (1, 1));
        assert_eq!(grid(1), (1, 1));
        assert_eq!(grid(2), (2, 1));
        assert_eq!(grid(4), (2, 2));
        assert_eq!(grid(7), (3, 3));
    }

    #[test]
    fn without_open_loop_runs_the_latency_chart_says_so() {
        let dir = temp_dir("closed-only");
        let closed_only = r#"{"results": [{"target": "shardpay", "scenario": "json", "shards": 1,
            "rate": "peak", "mode": "closed", "requests_per_second": 1000.0}]}"#;
        let written = render(&summary(closed_only), &dir.join("closed")).expect("renders");
        let latency = std::fs::read(&written[1]).expect("latency PNG written");
        assert!(latency.starts_with(PNG_SIGNATURE));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_bad_summary_is_a_clear_error() {
        let dir = temp_dir("bad");
        let path = dir.join("bad.json");
        std::fs::write(&path, "[1, 2]").expect("write");
        let error = read_summary(&path).unwrap_err().to_string();
        assert!(error.contains("is not a bench.sh summary"), "{error}");
        let missing = read_summary(&dir.join("missing.json")).unwrap_err().to_string();
        assert!(missing.starts_with("reading "), "{missing}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn the_legend_goes_to_the_emptiest_corner() {
        let corner = |points: &[(f64, f64)]| format!("{:?}", legend_corner(points.iter().copied()));
        assert_eq!(corner(&[]), "LowerRight");
        assert_eq!(corner(&[(0.1, 0.1), (0.9, 0.1)]), "UpperLeft");
        assert_eq!(corner(&[(0.1, 0.9), (0.9, 0.1), (0.95, 0.2)]), "LowerLeft");
    }

    #[test]
    fn large_counts_get_short_labels() {
        assert_eq!(format_count(950.0), "950");
        assert_eq!(format_count(120_000.0), "120k");
        assert_eq!(format_count(2_500_000.0), "2.5M");
    }
}
