//! `--timeline`: what happened in each whole second since the load started (warm-up included):
//! correct answers, shed answers (503 `overloaded`), errors, and the median and 99th percentile
//! latency of the correct answers that arrived in that second.
//!
//! Each worker keeps its own [`Timeline`] (no sharing on the hot path); the run merges them at the
//! end. A second's histogram is made when its first answer arrives, at 2 significant digits (1%)
//! with 32-bit counts: about 11 KB a second, so the longest timeline ([`SECONDS_MAX`]) stays
//! within about 40 MB per worker. Answers after the last whole second of the run are not counted.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::latency::{LATENCY_MAX_NS, LATENCY_MIN_NS};

/// Most seconds a timeline covers; later answers are not counted in it.
pub const SECONDS_MAX: usize = 3600;
/// Significant digits of a second's latency histogram (1% relative error).
const SIGNIFICANT_DIGITS: u8 = 2;
const NS_PER_SECOND: u64 = 1_000_000_000;

/// One second of a worker's timeline.
#[derive(Debug, Clone)]
struct Second {
    ok: u64,
    shed: u64,
    errors: u64,
    /// Latencies of the correct answers, made at the first one.
    ok_latencies: Option<Histogram<u32>>,
}

impl Second {
    const EMPTY: Second = Second {
        ok: 0,
        shed: 0,
        errors: 0,
        ok_latencies: None,
    };
}

/// Per-second counts and latencies from `start_ns` on.
#[derive(Debug, Clone)]
pub struct Timeline {
    start_ns: u64,
    seconds: Vec<Second>,
}

/// One second of a merged timeline, as the report writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEntry {
    /// Whole seconds since the load started (0: the first second).
    pub second: u64,
    /// Correct answers that arrived in this second.
    pub ok: u64,
    /// Answers 503 `overloaded` that arrived in this second.
    pub shed: u64,
    /// Failed requests and connection failures in this second.
    pub errors: u64,
    /// Median latency of this second's correct answers, µs (`null`: none).
    pub ok_p50_us: Option<f64>,
    /// 99th percentile latency of this second's correct answers, µs (`null`: none).
    pub ok_p99_us: Option<f64>,
}

fn new_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(LATENCY_MIN_NS, LATENCY_MAX_NS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

impl Timeline {
    /// A timeline of the whole seconds from `start_ns` to `end_ns` (at most [`SECONDS_MAX`]).
    pub fn new(start_ns: u64, end_ns: u64) -> Self {
        let seconds = (end_ns.saturating_sub(start_ns) / NS_PER_SECOND).min(SECONDS_MAX as u64) as usize;
        Self {
            start_ns,
            seconds: vec![Second::EMPTY; seconds],
        }
    }

    fn second(&mut self, now_ns: u64) -> Option<&mut Second> {
        let index = now_ns.checked_sub(self.start_ns)? / NS_PER_SECOND;
        self.seconds.get_mut(usize::try_from(index).ok()?)
    }

    /// A correct answer at `now_ns` to a request started (or due) at `start_ns`.
    pub fn ok(&mut self, start_ns: u64, now_ns: u64) {
        if let Some(second) = self.second(now_ns) {
            second.ok += 1;
            let latency = now_ns
                .saturating_sub(start_ns)
                .clamp(LATENCY_MIN_NS, LATENCY_MAX_NS);
            // A count beyond u32::MAX in one second and one worker saturates (never happens).
            second
                .ok_latencies
                .get_or_insert_with(new_histogram)
                .saturating_record(latency);
        }
    }

    /// A shed answer at `now_ns`.
    pub fn shed(&mut self, now_ns: u64) {
        if let Some(second) = self.second(now_ns) {
            second.shed += 1;
        }
    }

    /// `count` errors at `now_ns`.
    pub fn errors(&mut self, now_ns: u64, count: u64) {
        if let Some(second) = self.second(now_ns) {
            second.errors += count;
        }
    }

    /// Adds another worker's timeline (same start and length).
    pub fn merge(&mut self, other: &Timeline) {
        if self.seconds.len() < other.seconds.len() {
            self.seconds.resize(other.seconds.len(), Second::EMPTY);
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(&other.seconds) {
            mine.ok += theirs.ok;
            mine.shed += theirs.shed;
            mine.errors += theirs.errors;
            if let Some(theirs) = &theirs.ok_latencies {
                mine.ok_latencies
                    .get_or_insert_with(new_histogram)
                    .add(theirs)
                    .expect("histograms with the same bounds always merge");
            }
        }
    }

    /// The entries, one per whole second.
    pub fn entries(&self) -> Vec<TimelineEntry> {
        let us = |ns: u64| ns as f64 / 1_000.0;
        self.seconds
            .iter()
            .enumerate()
            .map(|(index, second)| {
                let quantile = |q: f64| {
                    second
                        .ok_latencies
                        .as_ref()
                        .filter(|histogram| !histogram.is_empty())
                        .map(|histogram| us(histogram.value_at_quantile(q)))
                };
                TimelineEntry {
                    second: index as u64,
                    ok: second.ok,
                    shed: second.shed,
                    errors: second.errors,
                    ok_p50_us: quantile(0.50),
                    ok_p99_us: quantile(0.99),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn answers_land_in_their_second_and_workers_merge() {
        let start = 5 * NS_PER_SECOND;
        // 3.5 s of run: three whole seconds.
        let mut a = Timeline::new(start, start + 3_500 * MS);
        let mut b = Timeline::new(start, start + 3_500 * MS);
        for i in 0..100u64 {
            // Second 0: 100 answers of 1..100 ms.
            let now = start + 500 * MS;
            a.ok(now - (i + 1) * MS, now);
        }
        b.ok(start + 1_000 * MS, start + 1_200 * MS); // second 1, 200 ms
        b.shed(start + 1_999 * MS);
        a.shed(start + 2_000 * MS);
        a.errors(start + 2_100 * MS, 3);
        // Before the start and after the last whole second: not counted.
        a.ok(start - 2 * MS, start - MS);
        a.shed(start + 3_200 * MS);
        a.merge(&b);
        let entries = a.entries();
        assert_eq!(entries.len(), 3);
        let close = |x: Option<f64>, y: f64| x.is_some_and(|x| (x - y).abs() <= y * 0.01 + 1.0);
        assert_eq!((entries[0].second, entries[0].ok, entries[0].shed), (0, 100, 0));
        assert!(close(entries[0].ok_p50_us, 50_000.0), "{:?}", entries[0]);
        assert!(close(entries[0].ok_p99_us, 99_000.0), "{:?}", entries[0]);
        assert_eq!((entries[1].ok, entries[1].shed, entries[1].errors), (1, 1, 0));
        assert!(close(entries[1].ok_p99_us, 200_000.0), "{:?}", entries[1]);
        assert_eq!(
            entries[2],
            TimelineEntry {
                second: 2,
                ok: 0,
                shed: 1,
                errors: 3,
                ok_p50_us: None,
                ok_p99_us: None,
            }
        );
    }

    #[test]
    fn the_timeline_is_bounded() {
        let timeline = Timeline::new(0, 10 * SECONDS_MAX as u64 * NS_PER_SECOND);
        assert_eq!(timeline.entries().len(), SECONDS_MAX);
        let mut timeline = Timeline::new(0, SECONDS_MAX as u64 * NS_PER_SECOND * 2);
        timeline.ok(0, (SECONDS_MAX as u64 + 5) * NS_PER_SECOND);
        assert!(timeline.entries().iter().all(|entry| entry.ok == 0));
    }
}
