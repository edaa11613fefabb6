//! Admission control: when a shard falls behind, it refuses part of the new API requests with a
//! cheap 503 instead of letting every request wait longer.
//!
//! A thread-per-core shard has no queue of its own to bound: work waits in the executor's run
//! queue and the sockets' buffers, where it cannot be counted. What can be measured is how long
//! it waits. A pulse task asks the executor to wake it after a fixed interval and measures how
//! late it ran: that lateness is the queueing delay a request arriving at the same moment would
//! have seen (it waits for the same reactor poll and the same run queue), the event-loop delay
//! that Node's `monitorEventLoopDelay` and Fastify's `under-pressure` shed on.
//!
//! The smallest of the last [`SAMPLES_FILTERED`] samples is taken, as CoDel takes the smallest
//! sojourn time of an interval: a standing queue shows in every sample, one late wake-up of the
//! thread in one only. A [`Controller`] turns those into the share of new requests to refuse, like PIE
//! (RFC 8033): every sample moves the share by how far the delay is above or below
//! `overload.queue_delay_target_us` and by how fast it is changing. Refusals are spread evenly
//! (every `1 / share`-th request) rather than drawn at random. So the admitted work waits about
//! the target, whatever the offered load; the refused requests cost a parse and a short answer.
//!
//! Shard-local; the pulse runs on the shard's executor in the connections' task queue.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::OverloadConfig;

/// Pulse interval while the shard serves requests.
pub const BUSY_INTERVAL: Duration = Duration::from_millis(1);
/// Pulse interval while the shard is idle (no API request since the last pulse).
pub const IDLE_INTERVAL: Duration = Duration::from_millis(10);
/// The controller sees the smallest of this many consecutive samples.
pub const SAMPLES_FILTERED: usize = 3;
/// Weight of the delay's distance from the target, per sample (normalised by the target).
const GAIN: f64 = 0.05;
/// Weight of the delay's change since the last sample, per sample (normalised by the target).
const TREND_GAIN: f64 = 0.5;
/// Largest change of the refused share from one sample.
const STEP_MAX: f64 = 0.5;

/// Turns queueing-delay samples into the share of requests refused. Pure: no clock, no runtime.
#[derive(Debug, Clone)]
pub struct Controller {
    target_us: f64,
    /// Share of new requests refused, 0 to 1.
    share: f64,
    last_delay_us: f64,
    /// Refusals owed: grows by `share` per request, a refusal spends 1.
    credit: f64,
}

impl Controller {
    /// A controller keeping the queueing delay near `target`.
    pub fn new(target: Duration) -> Controller {
        Controller {
            target_us: (target.as_secs_f64() * 1e6).max(1.0),
            share: 0.0,
            last_delay_us: 0.0,
            credit: 0.0,
        }
    }

    /// Takes one sample of the queueing delay.
    pub fn sample(&mut self, delay: Duration) {
        let delay_us = delay.as_secs_f64() * 1e6;
        let above = (delay_us - self.target_us) / self.target_us;
        let trend = (delay_us - self.last_delay_us) / self.target_us;
        let mut step = (GAIN * above + TREND_GAIN * trend).clamp(-STEP_MAX, STEP_MAX);
        if delay_us <= self.target_us {
            // At or below the target the share only falls: a rising delay that has not reached
            // the target refuses nothing.
            step = step.min(0.0);
        }
        self.share = (self.share + step).clamp(0.0, 1.0);
        if delay_us < self.target_us / 2.0 && self.share < 0.01 {
            // Well below the target: stop refusing at once rather than trickle.
            self.share = 0.0;
        }
        if self.share == 0.0 {
            self.credit = 0.0;
        }
        self.last_delay_us = delay_us;
    }

    /// Whether the next request is admitted.
    pub fn admit(&mut self) -> bool {
        if self.share == 0.0 {
            return true;
        }
        self.credit += self.share;
        if self.credit >= 1.0 {
            self.credit -= 1.0;
            return false;
        }
        true
    }

    /// The share of new requests refused now.
    pub fn share(&self) -> f64 {
        self.share
    }
}

/// One shard's admission state.
pub struct Admission {
    enabled: bool,
    retry_after_seconds: u64,
    controller: RefCell<Controller>,
    /// The last queueing-delay sample.
    delay: Cell<Duration>,
    /// The last [`SAMPLES_FILTERED`] samples, newest first.
    recent: Cell<[Duration; SAMPLES_FILTERED]>,
    /// API requests seen since the last pulse.
    seen: Cell<u64>,
    /// Requests refused.
    refused: Cell<u64>,
}

impl Admission {
    /// Admission as `config` says; disabled, it admits everything (the delay is still measured).
    pub fn new(config: &OverloadConfig) -> Rc<Admission> {
        Rc::new(Admission {
            enabled: config.enabled,
            retry_after_seconds: config.retry_after_seconds,
            controller: RefCell::new(Controller::new(Duration::from_micros(
                config.queue_delay_target_us,
            ))),
            delay: Cell::new(Duration::ZERO),
            recent: Cell::new([Duration::ZERO; SAMPLES_FILTERED]),
            seen: Cell::new(0),
            refused: Cell::new(0),
        })
    }

    /// Whether to serve the next API request; `false`: answer 503 with
    /// [`Admission::retry_after_seconds`].
    pub fn admit(&self) -> bool {
        self.seen.set(self.seen.get() + 1);
        if !self.enabled || self.controller.borrow_mut().admit() {
            return true;
        }
        self.refused.set(self.refused.get() + 1);
        false
    }

    /// `Retry-After` of a refusal, in seconds.
    pub fn retry_after_seconds(&self) -> u64 {
        self.retry_after_seconds
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.get()
    }

    /// The last queueing-delay sample.
    pub fn delay(&self) -> Duration {
        self.delay.get()
    }

    /// The share of new API requests refused now.
    pub fn share(&self) -> f64 {
        if self.enabled {
            self.controller.borrow().share()
        } else {
            0.0
        }
    }

    fn sample(&self, delay: Duration) {
        self.delay.set(delay);
        // The smallest of the last few samples: a standing queue shows in all of them, a single
        // late wake-up (the host's scheduler, a page fault) in one only.
        let mut recent = self.recent.get();
        recent.rotate_right(1);
        recent[0] = delay;
        self.recent.set(recent);
        let standing = recent.iter().copied().min().unwrap_or(delay);
        self.controller.borrow_mut().sample(standing);
    }

    /// Measures the shard's queueing delay for as long as the shard runs: sleeps, and takes how
    /// late it woke as a sample. Every [`BUSY_INTERVAL`] while requests arrive, every
    /// [`IDLE_INTERVAL`] otherwise (an idle shard wakes 100 times a second, not 1000).
    pub async fn pulse(self: Rc<Self>) {
        loop {
            let busy = self.seen.replace(0) > 0;
            let interval = if busy { BUSY_INTERVAL } else { IDLE_INTERVAL };
            let due = Instant::now() + interval;
            super::sleep(interval).await;
            self.sample(Instant::now().saturating_duration_since(due));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Duration = Duration::from_millis(1);

    fn refused_of(controller: &mut Controller, requests: usize) -> usize {
        (0..requests).filter(|_| !controller.admit()).count()
    }

    #[test]
    fn below_the_target_everything_is_admitted() {
        let mut controller = Controller::new(TARGET);
        for delay_us in [0, 50, 300, 900, 999, 10, 0] {
            controller.sample(Duration::from_micros(delay_us));
            assert_eq!(refused_of(&mut controller, 1000), 0, "delay {delay_us} µs");
        }
    }

    #[test]
    fn a_standing_delay_above_the_target_raises_the_refused_share_until_it_falls() {
        let mut controller = Controller::new(TARGET);
        let mut shares = Vec::new();
        for _ in 0..20 {
            controller.sample(Duration::from_micros(3000));
            shares.push(controller.share());
        }
        assert!(shares.windows(2).all(|pair| pair[1] >= pair[0]), "{shares:?}");
        assert!(controller.share() > 0.5, "{shares:?}");
        let refused = refused_of(&mut controller, 1000);
        let expected = (controller.share() * 1000.0) as usize;
        assert!(refused.abs_diff(expected) <= 1, "{refused} vs {expected}");
        // The delay falls back below the target: the share falls to zero within a few samples.
        for _ in 0..40 {
            controller.sample(Duration::from_micros(100));
        }
        assert_eq!(controller.share(), 0.0);
        assert_eq!(refused_of(&mut controller, 1000), 0);
    }

    #[test]
    fn refusals_are_spread_evenly() {
        let mut controller = Controller::new(TARGET);
        while controller.share() < 0.25 {
            controller.sample(Duration::from_micros(1500));
        }
        let share = controller.share();
        let decisions: Vec<bool> = (0..400).map(|_| controller.admit()).collect();
        // Never more admitted in a row than 1 / share rounds up to.
        let longest_run = decisions
            .split(|admitted| !admitted)
            .map(<[bool]>::len)
            .max()
            .unwrap();
        assert!(
            longest_run <= (1.0 / share).ceil() as usize,
            "{longest_run} at {share}"
        );
    }

    #[test]
    fn a_huge_delay_refuses_everything_and_recovery_is_quick() {
        let mut controller = Controller::new(TARGET);
        for _ in 0..4 {
            controller.sample(Duration::from_millis(50));
        }
        assert_eq!(controller.share(), 1.0);
        assert_eq!(refused_of(&mut controller, 100), 100);
        let mut samples = 0;
        while controller.share() > 0.0 {
            controller.sample(Duration::from_micros(200));
            samples += 1;
            assert!(samples < 100, "the share never returned to zero");
        }
        // Samples come every millisecond while busy: back to admitting everything in < 0.1 s.
        assert!(samples <= 30, "{samples} samples");
    }

    #[test]
    fn disabled_admits_everything() {
        let admission = Admission::new(&OverloadConfig {
            enabled: false,
            ..OverloadConfig::default()
        });
        for _ in 0..5 {
            admission.sample(Duration::from_secs(1));
        }
        assert!((0..1000).all(|_| admission.admit()));
        assert_eq!(admission.refused(), 0);
        assert_eq!(admission.share(), 0.0);
        assert_eq!(admission.delay(), Duration::from_secs(1));
    }

    #[test]
    fn enabled_refuses_and_counts() {
        let admission = Admission::new(&OverloadConfig::default());
        for _ in 0..10 {
            admission.sample(Duration::from_secs(1));
        }
        assert!(!admission.admit());
        assert_eq!(admission.refused(), 1);
        assert_eq!(admission.share(), 1.0);
    }
}
