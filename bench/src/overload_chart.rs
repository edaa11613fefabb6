//! The chart of a `scripts/bench-overload.sh` summary (`bench/results/<date>-overload[-<name>].json`):
//! one PNG with two panels against the offered rate, one line per target (admission control on
//! and off): the correct answers served per second, with the ideal (served = offered, up to the
//! capacity C), and the 99th percentile latency of the admitted (correct) answers on a log scale.
//!
//! Like [`crate::chart`], it reads the few fields it draws and computes nothing; the font and the
//! colours are the same.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Deserialize;

use crate::chart::{
    draw_lines, font, format_count, legend_corner, register_font, ChartError, Series, AXIS_FONT_SIZE,
    PANEL_TITLE_FONT_SIZE, SERIES_MAX, SUMMARY_BYTES_MAX, TITLE_FONT_SIZE,
};

/// Width of the chart, in pixels (two panels side by side).
pub const WIDTH_PIXELS: u32 = 1600;
/// Height of the chart, in pixels.
pub const HEIGHT_PIXELS: u32 = 700;

/// The summary written by `scripts/bench_overload_report.py`; only the fields the chart uses.
#[derive(Debug, Clone, Deserialize)]
pub struct OverloadSummary {
    /// The results name.
    #[serde(default)]
    pub name: String,
    /// The day of the run, `YYYY-MM-DD`.
    #[serde(default)]
    pub date: String,
    /// The scenario of every run.
    #[serde(default)]
    pub scenario: String,
    /// Capacity C: correct answers per second of the closed-loop run without admission control.
    #[serde(default)]
    pub capacity_ok_per_second: Option<f64>,
    /// One row per (target, factor).
    pub rows: Vec<OverloadRow>,
}

/// One open-loop run.
#[derive(Debug, Clone, Deserialize)]
pub struct OverloadRow {
    /// `shardpay` (admission control on) or `shardpay-noshed`.
    pub target: String,
    /// The rate asked of the load generator, requests per second.
    #[serde(default)]
    pub offered_per_second: Option<f64>,
    /// Correct answers per second (goodput); `None` when the run produced no report.
    #[serde(default)]
    pub ok_per_second: Option<f64>,
    /// 99th percentile latency of the correct answers, µs.
    #[serde(default)]
    pub ok_p99_us: Option<f64>,
}

/// Reads a summary file.
pub fn read_summary(path: &Path) -> Result<OverloadSummary, ChartError> {
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

/// The PNG [`render`] writes for a summary at `summary_path`: the same path ending `.png`.
pub fn output_path(summary_path: &Path) -> PathBuf {
    summary_path.with_extension("png")
}

/// The lines of one panel: per target in the summary's order, `y` of each row with both figures.
fn lines(summary: &OverloadSummary, y: impl Fn(&OverloadRow) -> Option<f64>) -> Vec<Series> {
    let positive = |value: &f64| value.is_finite() && *value > 0.0;
    let mut targets: Vec<String> = Vec::new();
    let mut lines: Vec<Series> = Vec::new();
    for row in &summary.rows {
        let color_index = match targets.iter().position(|known| *known == row.target) {
            Some(index) => index,
            None => {
                targets.push(row.target.clone());
                targets.len() - 1
            }
        };
        let (Some(x), Some(y)) = (row.offered_per_second.filter(positive), y(row).filter(positive)) else {
            continue;
        };
        match lines.iter_mut().find(|line| line.label == row.target) {
            Some(line) => line.points.push((x, y)),
            None => lines.push(Series {
                label: row.target.clone(),
                color_index,
                points: vec![(x, y)],
            }),
        }
    }
    for line in &mut lines {
        line.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    lines
}

/// Draws the chart of `summary` to `path`.
pub fn render(summary: &OverloadSummary, path: &Path) -> Result<PathBuf, ChartError> {
    register_font()?;
    let served = lines(summary, |row| row.ok_per_second);
    let latency = lines(summary, |row| row.ok_p99_us);
    if let Some(series) = [served.len(), latency.len()]
        .into_iter()
        .find(|n| *n > SERIES_MAX)
    {
        return Err(ChartError::TooManySeries {
            chart: "overload",
            series,
        });
    }
    let draw_error = |error: DrawingAreaErrorKind<_>| ChartError::Draw {
        path: path.to_path_buf(),
        message: error.to_string(),
    };
    let root = BitMapBackend::new(path, (WIDTH_PIXELS, HEIGHT_PIXELS)).into_drawing_area();
    let mut title = format!("{} {}", summary.date, summary.name).trim().to_string();
    if !title.is_empty() {
        title.push_str(": ");
    }
    title.push_str(&format!("overload, {} (one shard, open loop)", summary.scenario));
    draw(&root, &title, summary, &served, &latency).map_err(draw_error)?;
    root.present().map_err(draw_error)?;
    Ok(path.to_path_buf())
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    summary: &OverloadSummary,
    served: &[Series],
    latency: &[Series],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let body = root.margin(12, 0, 0, 0).titled(title, font(TITLE_FONT_SIZE))?;
    let (left, right) = body.split_horizontally(WIDTH_PIXELS / 2);
    let capacity = summary
        .capacity_ok_per_second
        .filter(|c| c.is_finite() && *c > 0.0);
    draw_served(&left, served, capacity)?;
    draw_latency(&right, latency)
}

fn draw_served<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    lines: &[Series],
    capacity: Option<f64>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let points = || lines.iter().flat_map(|line| line.points.iter());
    let x_max = points().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_max = points().map(|p| p.1).chain(capacity).fold(1.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "served (correct answers/s) vs offered",
            font(PANEL_TITLE_FONT_SIZE),
        )
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("offered, requests/s")
        .y_desc("served, correct answers/s")
        .axis_desc_style(font(AXIS_FONT_SIZE))
        .label_style(font(AXIS_FONT_SIZE))
        .x_labels(8)
        .x_label_formatter(&|x| format_count(*x))
        .y_label_formatter(&|y| format_count(*y))
        .draw()?;
    if let Some(capacity) = capacity {
        // The ideal: everything offered is served, up to the capacity.
        let ideal = [
            (0.0, 0.0),
            (capacity.min(x_max), capacity.min(x_max)),
            (x_max, capacity),
        ];
        let gray = BLACK.mix(0.45);
        chart
            .draw_series(DashedLineSeries::new(ideal, 8, 6, gray.stroke_width(2)))?
            .label(format!("ideal: min(offered, C = {})", format_count(capacity)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], gray.stroke_width(2)));
    }
    let corner = legend_corner(points().map(|p| (p.0 / x_max, p.1 / y_max)));
    draw_lines(&mut chart, lines, corner)
}

fn draw_latency<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    lines: &[Series],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let points = || lines.iter().flat_map(|line| line.points.iter());
    let x_max = points().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_min = (points().map(|p| p.1).fold(f64::INFINITY, f64::min) / 2.0).clamp(1.0, 1e9);
    let y_max = points().map(|p| p.1).fold(10.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "admitted (correct) answers: p99 latency",
            font(PANEL_TITLE_FONT_SIZE),
        )
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered, requests/s")
        .y_desc("p99 latency of correct answers, µs (log scale)")
        .axis_desc_style(font(AXIS_FONT_SIZE))
        .label_style(font(AXIS_FONT_SIZE))
        .light_line_style(TRANSPARENT)
        .y_labels(12)
        .x_labels(8)
        .x_label_formatter(&|x| format_count(*x))
        .y_label_formatter(&|y| format_count(*y))
        .draw()?;
    let corner = legend_corner(points().map(|p| (p.0 / x_max, (p.1 / y_min).ln() / (y_max / y_min).ln())));
    draw_lines(&mut chart, lines, corner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = r#"{
        "name": "overload", "date": "2026-11-28", "scenario": "payments",
        "capacity_ok_per_second": 40000.0, "anything_else": {"kept": true},
        "rows": [
          {"target": "shardpay", "factor": 1.0, "offered_per_second": 40000.0, "ok_per_second": 38000.0, "ok_p99_us": 2500.0},
          {"target": "shardpay", "factor": 0.5, "offered_per_second": 20000.0, "ok_per_second": 20000.0, "ok_p99_us": 300.0},
          {"target": "shardpay-noshed", "factor": 0.5, "offered_per_second": 20000.0, "ok_per_second": 20000.0, "ok_p99_us": 310.0},
          {"target": "shardpay-noshed", "factor": 2.0, "offered_per_second": 80000.0, "ok_per_second": 39000.0, "ok_p99_us": 9000000.0},
          {"target": "shardpay-noshed", "factor": 3.0, "offered_per_second": 120000.0, "ok_per_second": null, "ok_p99_us": null}
        ]}"#;

    #[test]
    fn lines_follow_targets_sorted_by_offered_rate() {
        let summary: OverloadSummary = serde_json::from_str(SUMMARY).unwrap();
        let served = lines(&summary, |row| row.ok_per_second);
        assert_eq!(served.len(), 2);
        assert_eq!(served[0].label, "shardpay");
        assert_eq!(served[0].points, vec![(20000.0, 20000.0), (40000.0, 38000.0)]);
        assert_eq!((served[1].color_index, served[1].points.len()), (1, 2));
    }

    #[test]
    fn a_summary_renders_a_png() {
        let summary: OverloadSummary = serde_json::from_str(SUMMARY).unwrap();
        let dir = std::env::temp_dir().join(format!("shardpay-overload-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("2026-11-28-overload.json");
        let path = render(&summary, &output_path(&json)).expect("renders");
        assert!(path.ends_with("2026-11-28-overload.png"));
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        // No rows at all still gives a chart (empty panels).
        let empty: OverloadSummary = serde_json::from_str(r#"{"rows": []}"#).unwrap();
        render(&empty, &dir.join("empty.png")).expect("renders");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
