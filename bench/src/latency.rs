//! Latency recording: HdrHistograms, and the open-loop schedule that corrects for coordinated
//! omission.
//!
//! In open-loop mode (`--rate`) every request has an *intended* start time on a fixed schedule,
//! and its latency is measured from that time, not from when it was actually written. A server
//! that stalls therefore shows its stall in every request that should have been sent during it
//! (as wrk2 does), instead of the one request that happened to be waiting. In closed-loop mode a
//! request is sent when a slot frees up, so its latency is measured from when it was written: that
//! mode measures throughput, and its percentiles describe only the requests it chose to send.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Smallest latency the histograms resolve, in nanoseconds.
pub const LATENCY_MIN_NS: u64 = 1_000;
/// Largest latency recorded exactly, in nanoseconds (100 s); larger values are clamped to it.
pub const LATENCY_MAX_NS: u64 = 100_000_000_000;
/// Significant decimal digits kept by the histograms (0.1% relative error).
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// A latency histogram in nanoseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty histogram covering 1 µs to 100 s at 3 significant digits.
    pub fn new() -> Self {
        let histogram =
            Histogram::new_with_bounds(LATENCY_MIN_NS, LATENCY_MAX_NS, LATENCY_SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid");
        Self { histogram }
    }

    /// Records a request started (or due) at `start_ns` and answered at `end_ns`. Values below
    /// the 1 µs resolution count as 1 µs.
    pub fn record(&mut self, start_ns: u64, end_ns: u64) {
        let latency = end_ns
            .saturating_sub(start_ns)
            .clamp(LATENCY_MIN_NS, LATENCY_MAX_NS);
        self.histogram
            .record(latency)
            .expect("a clamped latency is within the histogram's bounds");
    }

    /// Adds every value of `other` (another thread's histogram).
    pub fn merge(&mut self, other: &Latencies) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms with the same bounds always merge");
    }

    /// Recorded values.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The percentiles users read, in microseconds.
    pub fn summary(&self) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1_000.0;
        if self.histogram.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            p50: us(self.histogram.value_at_quantile(0.50)),
            p90: us(self.histogram.value_at_quantile(0.90)),
            p99: us(self.histogram.value_at_quantile(0.99)),
            p999: us(self.histogram.value_at_quantile(0.999)),
            max: us(self.histogram.max()),
            mean: self.histogram.mean() / 1_000.0,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// The open-loop schedule of one connection: request `k` is due at `first_due_ns + k * interval`.
///
/// Dues are computed from the request count, never by adding the interval to the last send, so a
/// late connection does not drift: it catches up by sending the overdue requests at once (each
/// still measured from its own due time).
#[derive(Debug, Clone)]
pub struct Schedule {
    first_due_ns: u64,
    interval_ns: f64,
    issued: u64,
}

impl Schedule {
    /// A schedule starting at `first_due_ns`, one request every `interval_ns` nanoseconds.
    pub fn new(first_due_ns: u64, interval_ns: f64) -> Self {
        assert!(interval_ns > 0.0, "a schedule needs a positive interval");
        Self {
            first_due_ns,
            interval_ns,
            issued: 0,
        }
    }

    /// When the next request is due.
    pub fn next_due_ns(&self) -> u64 {
        self.first_due_ns + (self.issued as f64 * self.interval_ns) as u64
    }

    /// If the next request is due at `now_ns`, takes it and returns its due time (the start its
    /// latency is measured from).
    pub fn take_due(&mut self, now_ns: u64) -> Option<u64> {
        let due = self.next_due_ns();
        if due <= now_ns {
            self.issued += 1;
            Some(due)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// One connection at 1000 requests/s for 2 s against a server that answers in 50 µs, except
    /// that it stalls for 100 ms at t = 1 s. Returns the latencies measured from the due time
    /// (corrected) and from the actual send (what a closed-loop tool reports).
    fn stalled_run() -> (Latencies, Latencies) {
        let service_ns = 50_000;
        let stall = (1_000 * MS, 1_100 * MS);
        let mut schedule = Schedule::new(0, MS as f64);
        let mut corrected = Latencies::new();
        let mut naive = Latencies::new();
        let mut free_at = 0u64; // the connection is busy until its answer arrives
        while schedule.next_due_ns() < 2_000 * MS {
            let now = free_at.max(schedule.next_due_ns());
            let due = schedule.take_due(now).expect("due by construction");
            let sent = now;
            // The server answers after its service time, or after the stall if it is stalled.
            let start_service = if (stall.0..stall.1).contains(&sent) {
                stall.1
            } else {
                sent
            };
            let answered = start_service + service_ns;
            corrected.record(due, answered);
            naive.record(sent, answered);
            free_at = answered;
        }
        (corrected, naive)
    }

    #[test]
    fn a_stall_shows_in_every_request_due_during_it() {
        let (corrected, naive) = stalled_run();
        assert_eq!(corrected.count(), 2_000);
        let corrected = corrected.summary();
        let naive = naive.summary();
        // 100 of 2000 requests (5%) were due during the stall, waiting 100 ms down to ~0 ms.
        assert!(corrected.p99 >= 80_000.0, "corrected p99 {} µs", corrected.p99);
        assert!(corrected.p90 < 1_000.0, "corrected p90 {} µs", corrected.p90);
        assert!(
            (99_000.0..=101_000.0).contains(&corrected.max),
            "max {}",
            corrected.max
        );
        // Measured from the send, only the one request caught in the stall is slow.
        assert!(naive.p99 < 100.0, "naive p99 {} µs", naive.p99);
        assert!(naive.max >= 99_000.0);
    }

    #[test]
    fn schedule_catches_up_without_drifting() {
        let mut schedule = Schedule::new(1_000, 250.0);
        assert_eq!(schedule.take_due(999), None);
        assert_eq!(schedule.take_due(1_000), Some(1_000));
        // Late by three intervals: the overdue requests are due at once, at their own times.
        assert_eq!(schedule.take_due(1_800), Some(1_250));
        assert_eq!(schedule.take_due(1_800), Some(1_500));
        assert_eq!(schedule.take_due(1_800), Some(1_750));
        assert_eq!(schedule.take_due(1_800), None);
        assert_eq!(schedule.next_due_ns(), 2_000);
    }

    #[test]
    fn fractional_intervals_keep_the_rate() {
        // 3 requests per microsecond-ish: 333.33 ns apart; after 3000 the schedule is at 1 ms.
        let mut schedule = Schedule::new(0, 1_000_000.0 / 3_000.0);
        let mut taken = 0;
        while schedule.take_due(1_000_000 - 1).is_some() {
            taken += 1;
        }
        assert_eq!(taken, 3_000);
    }

    #[test]
    fn percentiles_are_in_microseconds_and_merge() {
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        for i in 1..=50u64 {
            a.record(0, i * 1_000_000); // 1..50 ms
            b.record(0, (50 + i) * 1_000_000); // 51..100 ms
        }
        a.merge(&b);
        let summary = a.summary();
        assert_eq!(a.count(), 100);
        let close = |x: f64, y: f64| (x - y).abs() <= y * 0.001 + 1.0;
        assert!(close(summary.p50, 50_000.0), "{summary:?}");
        assert!(close(summary.p90, 90_000.0), "{summary:?}");
        assert!(close(summary.p99, 99_000.0), "{summary:?}");
        assert!(close(summary.max, 100_000.0), "{summary:?}");
        assert!(close(summary.mean, 50_500.0), "{summary:?}");
    }

    #[test]
    fn out_of_range_latencies_are_clamped_not_lost() {
        let mut latencies = Latencies::new();
        latencies.record(10, 5); // a clock step backwards: 0
        latencies.record(0, u64::MAX); // beyond 100 s
        assert_eq!(latencies.count(), 2);
        assert!(latencies.summary().max >= 99_000_000.0);
        assert_eq!(Latencies::new().summary(), LatencySummary::default());
    }
}
