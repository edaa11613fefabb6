//! Per-key rate limiting with GCRA, the generic cell rate algorithm (ITU-T I.371): a token bucket
//! kept as one number per key, its theoretical arrival time (TAT) in milliseconds.
//!
//! This module owns the decision "may this key act now?" and the bounded table of TATs behind it.
//! It must never read the clock, do I/O, draw random numbers, take a lock, use floating point or
//! panic on any time it is given: the caller passes `now_ms` in, every refusal is a [`RetryAfter`],
//! and all arithmetic is checked or saturating, so any `u64` (including a clock that steps back)
//! is safe. It knows nothing of what a key means (a username, an address) or of HTTP; mapping a
//! refusal to `429 Too Many Requests` with `Retry-After` (RFC 9110 §10.2.3) is the caller's job.
//!
//! The algorithm, with emission interval `T` (ms per event) and tolerance `τ = T × (burst − 1)`:
//! an event at `now` for a key with TAT `tat` (a new key's is `now`) is allowed iff
//! `now ≥ tat − τ`, and then `tat ← max(tat, now) + T`; a refused event changes nothing and may
//! retry after `tat − τ − now` ms. This allows `burst` events at once and then one every `T` ms, so
//! any window of `period_ms` holds at most `burst + limit` allowed events for a key.
//!
//! Memory is bounded by `entries_max` keys. A key whose TAT is not after `now` behaves exactly as a
//! new key, so it is dropped first when room is needed; after that, the keys closest to a full
//! bucket (smallest TAT) go. Evicting a key is forgetting it: its next event is judged as a new
//! key's, and a new key is the most lenient state there is, so eviction can only ever make the
//! limiter more lenient for the evicted key, never stricter.

use std::collections::HashMap;
use std::hash::Hash;

/// A sweep at capacity frees at least `entries_max / EVICTION_BATCH_DIVISOR` entries (and at least
/// one), so a full table under a stream of new keys sweeps once per that many insertions rather
/// than scanning on every one.
pub const EVICTION_BATCH_DIVISOR: usize = 16;

/// Entries a limiter allocates room for at first; it grows up to its maximum as keys arrive.
const INITIAL_ENTRIES: usize = 1024;

/// Milliseconds in a second, for [`RetryAfter::seconds`].
const MILLISECONDS_PER_SECOND: u64 = 1000;

/// Why a [`Quota`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// `limit` is zero: a quota must allow at least one event per period.
    #[error("a quota's limit must be at least 1 event")]
    LimitZero,
    /// `period_ms` is zero.
    #[error("a quota's period must be at least 1 ms")]
    PeriodZero,
    /// `burst` is zero: a quota must allow at least one event at once.
    #[error("a quota's burst must be at least 1 event")]
    BurstZero,
    /// More than one event per millisecond: the emission interval would be below the 1 ms this
    /// limiter counts in.
    #[error("{limit} events per {period_ms} ms is more than one per millisecond")]
    EmissionIntervalBelowOneMillisecond {
        /// The refused limit.
        limit: u32,
        /// The refused period.
        period_ms: u64,
    },
    /// `emission interval × (burst − 1)` does not fit in `u64` milliseconds.
    #[error("a burst of {burst} events every {emission_interval_ms} ms overflows u64 milliseconds")]
    ToleranceOverflow {
        /// The refused burst.
        burst: u32,
        /// The emission interval the limit and period give.
        emission_interval_ms: u64,
    },
}

/// "At most `burst` events at once, refilling `limit` events per `period_ms`."
///
/// The emission interval is `period_ms / limit` rounded up, so the limiter never allows more than
/// the quota says: the rate is exactly `limit` per `period_ms` when `limit` divides `period_ms`,
/// and slightly less otherwise (by under 1 ms per event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    limit: u32,
    period_ms: u64,
    burst: u32,
    /// `T`: milliseconds one event costs, `⌈period_ms / limit⌉`, at least 1.
    emission_interval_ms: u64,
    /// `τ`: how far ahead of `now` a key's TAT may run and still allow, `T × (burst − 1)`.
    tolerance_ms: u64,
}

impl Quota {
    /// A quota of `burst` events at once, refilling `limit` events per `period_ms`.
    ///
    /// Each of the three must be at least 1, there may be at most one event per millisecond
    /// (`period_ms >= limit`), and `⌈period_ms / limit⌉ × (burst − 1)` must fit in a `u64`.
    pub fn new(limit: u32, period_ms: u64, burst: u32) -> Result<Quota, QuotaError> {
        if limit == 0 {
            return Err(QuotaError::LimitZero);
        }
        if period_ms == 0 {
            return Err(QuotaError::PeriodZero);
        }
        if burst == 0 {
            return Err(QuotaError::BurstZero);
        }
        if period_ms < u64::from(limit) {
            return Err(QuotaError::EmissionIntervalBelowOneMillisecond { limit, period_ms });
        }
        // Rounding up keeps `⌊period_ms / T⌋ <= limit`, which is what bounds any window of
        // `period_ms` to `burst + limit` events; rounding down would let a few more through.
        let emission_interval_ms = period_ms.div_ceil(u64::from(limit));
        let tolerance_ms =
            emission_interval_ms
                .checked_mul(u64::from(burst - 1))
                .ok_or(QuotaError::ToleranceOverflow {
                    burst,
                    emission_interval_ms,
                })?;
        assert!(emission_interval_ms >= 1);
        Ok(Quota {
            limit,
            period_ms,
            burst,
            emission_interval_ms,
            tolerance_ms,
        })
    }

    /// Events refilled per [`period_ms`](Quota::period_ms).
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The period [`limit`](Quota::limit) events refill over, in milliseconds.
    pub fn period_ms(&self) -> u64 {
        self.period_ms
    }

    /// Events allowed at once from a full bucket.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Milliseconds one event costs (GCRA's `T`): `period_ms / limit`, rounded up.
    pub fn emission_interval_ms(&self) -> u64 {
        self.emission_interval_ms
    }

    /// How far a key's TAT may run ahead of now and still allow an event (GCRA's `τ`),
    /// `emission_interval_ms × (burst − 1)`.
    pub fn tolerance_ms(&self) -> u64 {
        self.tolerance_ms
    }

    /// The GCRA step: the key's next TAT if an event at `now_ms` is allowed for a key whose TAT is
    /// `tat_ms`, or how long until one would be.
    fn decide(&self, tat_ms: u64, now_ms: u64) -> Result<u64, RetryAfter> {
        let allowed_from_ms = tat_ms.saturating_sub(self.tolerance_ms);
        if now_ms < allowed_from_ms {
            return Err(RetryAfter {
                ms: allowed_from_ms - now_ms,
            });
        }
        // The next TAT must be representable; saturating it instead would let every later event
        // through (the TAT would stop advancing), so at the end of `u64` time we refuse.
        match tat_ms.max(now_ms).checked_add(self.emission_interval_ms) {
            Some(next_tat_ms) => Ok(next_tat_ms),
            None => Err(RetryAfter::NEVER),
        }
    }
}

/// A refused event: how long until one more event for the key would be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited: retry after {ms} ms")]
pub struct RetryAfter {
    /// Milliseconds from the refused `now_ms` until an event would be allowed; at least 1.
    /// `u64::MAX` means never: the key's next TAT would not fit in a `u64`.
    pub ms: u64,
}

impl RetryAfter {
    /// The refusal at the end of `u64` time, when no later event can be represented.
    const NEVER: RetryAfter = RetryAfter { ms: u64::MAX };

    /// [`ms`](RetryAfter::ms) in whole seconds, rounded up and at least 1, for a `Retry-After`
    /// header: a client that waits this long is allowed.
    pub fn seconds(&self) -> u64 {
        let seconds = self.ms / MILLISECONDS_PER_SECOND + u64::from(self.ms % MILLISECONDS_PER_SECOND != 0);
        seconds.max(1)
    }
}

/// One [`Quota`] applied to each key separately, remembering at most `entries_max` keys.
///
/// Single-threaded and deterministic per key: the same calls with the same `now_ms` give the same
/// answers. Which of several keys with equal TATs an eviction drops follows the map's order.
#[derive(Debug)]
pub struct Limiter<K: Eq + Hash + Clone> {
    quota: Quota,
    /// Each remembered key's theoretical arrival time, in milliseconds. A key not here is new.
    entries: HashMap<K, u64>,
    /// Most keys `entries` holds.
    entries_max: usize,
}

impl<K: Eq + Hash + Clone> Limiter<K> {
    /// A limiter applying `quota` to each key, remembering at most `entries_max` keys. The map is
    /// allocated for `entries_max` keys up front, so checks do not allocate as it fills.
    ///
    /// # Panics
    ///
    /// If `entries_max` is 0: a limiter that remembers nothing would allow everything.
    pub fn new(quota: Quota, entries_max: usize) -> Self {
        assert!(entries_max >= 1, "a rate limiter must remember at least one key");
        Limiter {
            quota,
            entries: HashMap::with_capacity(entries_max.min(INITIAL_ENTRIES)),
            entries_max,
        }
    }

    /// The quota applied to each key.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Most keys remembered at once.
    pub fn entries_max(&self) -> usize {
        self.entries_max
    }

    /// Counts one event for `key` if allowed; `Err(RetryAfter)` with the milliseconds until one more
    /// is allowed. A refused event is not counted.
    ///
    /// Remembering a new key when [`entries_max`](Limiter::entries_max) keys are held first evicts
    /// (see the module documentation); a known key never causes an eviction.
    pub fn check(&mut self, key: &K, now_ms: u64) -> Result<(), RetryAfter> {
        if let Some(tat_ms) = self.entries.get_mut(key) {
            *tat_ms = self.quota.decide(*tat_ms, now_ms)?;
            return Ok(());
        }
        let tat_ms = self.quota.decide(now_ms, now_ms)?;
        if self.entries.len() >= self.entries_max {
            self.make_room(now_ms);
        }
        assert!(self.entries.len() < self.entries_max);
        self.entries.insert(key.clone(), tat_ms);
        Ok(())
    }

    /// Whether an event for `key` would be allowed at `now_ms`, without counting it. Agrees with
    /// what [`check`](Limiter::check) would answer.
    pub fn would_allow(&self, key: &K, now_ms: u64) -> Result<(), RetryAfter> {
        let tat_ms = self.entries.get(key).copied().unwrap_or(now_ms);
        self.quota.decide(tat_ms, now_ms).map(|_| ())
    }

    /// Forgets `key` (e.g. after a successful login): its next event is judged as a new key's.
    pub fn reset(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Number of keys remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Frees room for new keys when the map is full: drops every entry whose TAT is not after
    /// `now_ms` (it behaves as a new key), then, if fewer than a batch of slots are free, the
    /// entries with the smallest TATs until a batch is. Runs only when inserting at capacity, and
    /// each run frees a batch, so its cost is amortized over the insertions that refill it.
    fn make_room(&mut self, now_ms: u64) {
        self.entries.retain(|_, tat_ms| *tat_ms > now_ms);
        let batch = (self.entries_max / EVICTION_BATCH_DIVISOR).max(1);
        let keep_max = self.entries_max - batch;
        if self.entries.len() <= keep_max {
            return;
        }
        let excess = self.entries.len() - keep_max;
        // The `excess`-th smallest TAT is the threshold: everything below it goes, and ties at it
        // go until `excess` entries have. One allocation per sweep, not per check.
        let mut tats_ms: Vec<u64> = self.entries.values().copied().collect();
        let (below, &mut threshold_ms, _) = tats_ms.select_nth_unstable(excess - 1);
        let below_count = below.iter().filter(|&&tat_ms| tat_ms < threshold_ms).count();
        let mut ties_to_drop = excess - below_count;
        self.entries.retain(|_, tat_ms| {
            if *tat_ms < threshold_ms {
                false
            } else if *tat_ms == threshold_ms && ties_to_drop > 0 {
                ties_to_drop -= 1;
                false
            } else {
                true
            }
        });
        assert_eq!(self.entries.len(), keep_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 10 events per second, 3 at once: one event every 100 ms, τ = 200 ms.
    fn ten_per_second_burst_three() -> Quota {
        Quota::new(10, 1000, 3).unwrap()
    }

    fn limiter(quota: Quota) -> Limiter<u32> {
        Limiter::new(quota, 1024)
    }

    #[test]
    fn quota_rejects_zero_and_sub_millisecond_values() {
        assert_eq!(Quota::new(0, 1000, 1), Err(QuotaError::LimitZero));
        assert_eq!(Quota::new(1, 0, 1), Err(QuotaError::PeriodZero));
        assert_eq!(Quota::new(1, 1000, 0), Err(QuotaError::BurstZero));
        assert_eq!(
            Quota::new(1001, 1000, 1),
            Err(QuotaError::EmissionIntervalBelowOneMillisecond {
                limit: 1001,
                period_ms: 1000
            })
        );
        assert_eq!(
            Quota::new(u32::MAX, 1, 1),
            Err(QuotaError::EmissionIntervalBelowOneMillisecond {
                limit: u32::MAX,
                period_ms: 1
            })
        );
        assert_eq!(
            Quota::new(1, u64::MAX, u32::MAX),
            Err(QuotaError::ToleranceOverflow {
                burst: u32::MAX,
                emission_interval_ms: u64::MAX
            })
        );
    }

    #[test]
    fn quota_derives_interval_and_tolerance() {
        let quota = ten_per_second_burst_three();
        assert_eq!(quota.emission_interval_ms(), 100);
        assert_eq!(quota.tolerance_ms(), 200);
        assert_eq!((quota.limit(), quota.period_ms(), quota.burst()), (10, 1000, 3));
        // One event per millisecond is the finest quota.
        assert_eq!(Quota::new(1000, 1000, 1).unwrap().emission_interval_ms(), 1);
        // Not a divisor: rounded up, so never more than the quota.
        assert_eq!(Quota::new(3, 1000, 1).unwrap().emission_interval_ms(), 334);
        assert_eq!(Quota::new(600, 1000, 1).unwrap().emission_interval_ms(), 2);
    }

    #[test]
    fn a_burst_is_allowed_then_refused_with_the_time_to_the_next_event() {
        let mut limiter = limiter(ten_per_second_burst_three());
        for _ in 0..3 {
            assert_eq!(limiter.check(&1, 5_000), Ok(()));
        }
        // TAT is 5_300; allowed again from 5_300 − 200 = 5_100.
        assert_eq!(limiter.check(&1, 5_000), Err(RetryAfter { ms: 100 }));
        assert_eq!(limiter.check(&1, 5_040), Err(RetryAfter { ms: 60 }));
        assert_eq!(limiter.check(&1, 5_099), Err(RetryAfter { ms: 1 }));
    }

    #[test]
    fn one_event_refills_after_the_emission_interval() {
        let mut limiter = limiter(ten_per_second_burst_three());
        for _ in 0..3 {
            limiter.check(&1, 0).unwrap();
        }
        assert!(limiter.check(&1, 99).is_err());
        assert_eq!(limiter.check(&1, 100), Ok(()));
        assert_eq!(limiter.check(&1, 100), Err(RetryAfter { ms: 100 }));
        // A long pause refills the whole burst, and no more.
        for _ in 0..3 {
            assert_eq!(limiter.check(&1, 60_000), Ok(()));
        }
        assert!(limiter.check(&1, 60_000).is_err());
    }

    #[test]
    fn limit_per_period_is_sustained() {
        let mut limiter = limiter(ten_per_second_burst_three());
        // Spend the burst, then one event every 100 ms is always allowed: 10 per second.
        for _ in 0..3 {
            limiter.check(&1, 0).unwrap();
        }
        for step in 1..=100u64 {
            assert_eq!(limiter.check(&1, step * 100), Ok(()), "step {step}");
            assert!(limiter.check(&1, step * 100).is_err(), "step {step}");
        }
        // Over the ten seconds after the burst: exactly 10 per second.
        let mut limiter = Limiter::new(Quota::new(10, 1000, 1).unwrap(), 8);
        let allowed = (0..10_000u64).filter(|&now_ms| limiter.check(&1, now_ms).is_ok());
        assert_eq!(allowed.count(), 100);
    }

    #[test]
    fn would_allow_does_not_count() {
        let mut limiter = limiter(ten_per_second_burst_three());
        for _ in 0..10 {
            assert_eq!(limiter.would_allow(&1, 0), Ok(()));
        }
        assert!(limiter.is_empty());
        for _ in 0..3 {
            limiter.check(&1, 0).unwrap();
        }
        assert_eq!(limiter.would_allow(&1, 0), Err(RetryAfter { ms: 100 }));
        assert_eq!(limiter.would_allow(&1, 100), Ok(()));
        assert_eq!(limiter.would_allow(&1, 100), Ok(()));
        assert_eq!(limiter.check(&1, 100), Ok(()));
        assert!(limiter.would_allow(&1, 100).is_err());
    }

    #[test]
    fn reset_forgets_a_key() {
        let mut limiter = limiter(ten_per_second_burst_three());
        for _ in 0..3 {
            limiter.check(&1, 0).unwrap();
        }
        limiter.check(&2, 0).unwrap();
        assert!(limiter.check(&1, 0).is_err());
        limiter.reset(&1);
        assert_eq!(limiter.len(), 1);
        for _ in 0..3 {
            assert_eq!(limiter.check(&1, 0), Ok(()));
        }
        // Resetting an unknown key is harmless.
        limiter.reset(&3);
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn distinct_keys_are_independent() {
        let mut limiter = limiter(ten_per_second_burst_three());
        for _ in 0..3 {
            limiter.check(&1, 0).unwrap();
        }
        assert!(limiter.check(&1, 0).is_err());
        for _ in 0..3 {
            assert_eq!(limiter.check(&2, 0), Ok(()));
        }
        assert!(limiter.check(&2, 0).is_err());
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn retry_after_seconds_round_up_and_are_at_least_one() {
        let seconds = |ms| RetryAfter { ms }.seconds();
        assert_eq!(seconds(0), 1);
        assert_eq!(seconds(1), 1);
        assert_eq!(seconds(999), 1);
        assert_eq!(seconds(1000), 1);
        assert_eq!(seconds(1001), 2);
        assert_eq!(seconds(60_000), 60);
        assert_eq!(seconds(u64::MAX), u64::MAX / 1000 + 1);
    }

    #[test]
    fn capacity_holds_and_eviction_drops_expired_entries_first() {
        // T = 100 ms, burst 1: each allowed event sets TAT = now + 100.
        let mut limiter = Limiter::new(Quota::new(10, 1000, 1).unwrap(), 3);
        limiter.check(&1, 0).unwrap(); // TAT 100
        limiter.check(&2, 150).unwrap(); // TAT 250
        limiter.check(&3, 50).unwrap(); // TAT 150
        assert_eq!(limiter.len(), 3);
        // At 160 keys 1 (100) and 3 (150) carry no information: both go, 2 stays.
        limiter.check(&4, 160).unwrap();
        assert_eq!(limiter.len(), 2);
        assert!(limiter.check(&2, 160).is_err(), "the live key 2 was kept");
        assert_eq!(limiter.would_allow(&4, 160), Err(RetryAfter { ms: 100 }));
    }

    #[test]
    fn eviction_without_expired_entries_drops_the_smallest_tat() {
        let mut limiter = Limiter::new(Quota::new(10, 1000, 1).unwrap(), 3);
        limiter.check(&1, 30).unwrap(); // TAT 130
        limiter.check(&2, 10).unwrap(); // TAT 110: smallest
        limiter.check(&3, 20).unwrap(); // TAT 120
        limiter.check(&4, 40).unwrap(); // at capacity, nothing expired: key 2 goes
        assert_eq!(limiter.len(), 3);
        assert_eq!(limiter.would_allow(&2, 40), Ok(()), "key 2 was forgotten");
        assert!(limiter.would_allow(&1, 40).is_err());
        assert!(limiter.would_allow(&3, 40).is_err());
        assert!(limiter.would_allow(&4, 40).is_err());
        // A known key never evicts.
        assert!(limiter.check(&1, 40).is_err());
        assert_eq!(limiter.len(), 3);
    }

    #[test]
    fn a_sweep_frees_a_batch_so_it_does_not_run_on_every_insertion() {
        let entries_max = 64;
        let batch = entries_max / EVICTION_BATCH_DIVISOR;
        let mut limiter = Limiter::new(Quota::new(1, 1_000_000, 1).unwrap(), entries_max);
        for key in 0..entries_max as u32 {
            limiter.check(&key, u64::from(key)).unwrap();
        }
        assert_eq!(limiter.len(), entries_max);
        // Nothing has expired; the sweep drops the `batch` oldest, so the next `batch − 1`
        // insertions find room without one.
        limiter.check(&1000, 1000).unwrap();
        assert_eq!(limiter.len(), entries_max - batch + 1);
        for key in 0..batch as u32 {
            assert_eq!(limiter.would_allow(&key, 1000), Ok(()), "key {key} was evicted");
        }
        for key in batch as u32..entries_max as u32 {
            assert!(limiter.would_allow(&key, 1000).is_err(), "key {key} was kept");
        }
    }

    #[test]
    fn eviction_makes_an_evicted_key_more_lenient_never_stricter() {
        let mut limiter = Limiter::new(Quota::new(1, 1000, 1).unwrap(), 1);
        limiter.check(&1, 0).unwrap();
        assert!(limiter.check(&1, 10).is_err());
        limiter.check(&2, 10).unwrap(); // evicts key 1
        assert_eq!(
            limiter.check(&1, 20),
            Ok(()),
            "forgotten, so allowed as a new key"
        );
    }

    #[test]
    #[should_panic(expected = "at least one key")]
    fn a_limiter_must_remember_a_key() {
        let _ = Limiter::<u32>::new(ten_per_second_burst_three(), 0);
    }

    #[test]
    fn extreme_times_and_quotas_never_panic() {
        // The slowest quota: one event per u64::MAX ms.
        let slowest = Quota::new(1, u64::MAX, 1).unwrap();
        let mut limiter = Limiter::new(slowest, 4);
        assert_eq!(limiter.check(&1, 0), Ok(()));
        assert_eq!(limiter.check(&1, 1), Err(RetryAfter { ms: u64::MAX - 1 }));
        // At the end of time the next TAT does not fit: refused, never allowed forever.
        assert_eq!(limiter.check(&2, u64::MAX), Err(RetryAfter::NEVER));
        assert_eq!(limiter.would_allow(&2, u64::MAX), Err(RetryAfter::NEVER));
        assert_eq!(limiter.check(&1, u64::MAX), Err(RetryAfter::NEVER));

        // The fastest quota with the largest burst, at the end of time.
        let fastest = Quota::new(u32::MAX, u64::from(u32::MAX), u32::MAX).unwrap();
        assert_eq!(fastest.emission_interval_ms(), 1);
        let mut limiter = Limiter::new(fastest, 4);
        let mut allowed = 0;
        for _ in 0..10 {
            allowed += u32::from(limiter.check(&1, u64::MAX - 3).is_ok());
        }
        // TATs up to u64::MAX are representable: the events at u64::MAX − 3 reach TATs
        // u64::MAX − 2 ..= u64::MAX, then the next would not fit.
        assert_eq!(allowed, 3);
        assert_eq!(limiter.check(&1, u64::MAX - 3), Err(RetryAfter::NEVER));

        // A clock that steps back never grants more than the burst.
        let mut limiter = limiter_with_burst_three_at(u64::MAX / 2);
        assert!(limiter.check(&1, 0).is_err());
        assert!(limiter.check(&1, u64::MAX / 2 - 1).is_err());
        assert_eq!(limiter.check(&1, u64::MAX / 2 + 100), Ok(()));
    }

    fn limiter_with_burst_three_at(now_ms: u64) -> Limiter<u32> {
        let mut limiter = limiter(ten_per_second_burst_three());
        for _ in 0..3 {
            limiter.check(&1, now_ms).unwrap();
        }
        limiter
    }

    fn quota() -> impl Strategy<Value = Quota> {
        (1u32..=10, 1u64..=200, 1u32..=10).prop_filter_map("sub-millisecond", |(limit, period_ms, burst)| {
            Quota::new(limit, period_ms, burst).ok()
        })
    }

    /// Mostly key 0, so one key runs into its limit; the others share the table with it.
    fn key() -> impl Strategy<Value = u32> {
        prop_oneof![3 => Just(0u32), 1 => 0u32..5]
    }

    /// Mostly short steps, so keys run into their limits; sometimes long ones, so they refill.
    fn step_ms() -> impl Strategy<Value = u64> {
        prop_oneof![3 => 0u64..4, 1 => 0u64..300]
    }

    fn start_ms() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..1_000, (u64::MAX - 2_000)..=u64::MAX]
    }

    proptest! {
        /// The GCRA bound: in any closed window of `period_ms`, a key gets at most
        /// `burst + limit` events; and `would_allow` always agrees with `check`.
        #[test]
        fn no_window_of_a_period_allows_more_than_burst_plus_limit(
            quota in quota(),
            start_ms in start_ms(),
            events in prop::collection::vec((key(), step_ms()), 1..300),
        ) {
            let mut limiter = Limiter::new(quota, 5);
            let mut allowed_ms: Vec<Vec<u64>> = vec![Vec::new(); 5];
            let mut now_ms = start_ms;
            for &(key, step_ms) in &events {
                now_ms = now_ms.saturating_add(step_ms);
                let predicted = limiter.would_allow(&key, now_ms);
                let result = limiter.check(&key, now_ms);
                prop_assert_eq!(predicted, result);
                match result {
                    Ok(()) => allowed_ms[key as usize].push(now_ms),
                    Err(retry) => prop_assert!(retry.ms >= 1),
                }
            }
            let bound = quota.burst() as usize + quota.limit() as usize;
            for times_ms in &allowed_ms {
                for (first, &from_ms) in times_ms.iter().enumerate() {
                    let until_ms = from_ms.saturating_add(quota.period_ms());
                    let in_window = times_ms[first..].iter().take_while(|&&t| t <= until_ms).count();
                    prop_assert!(in_window <= bound, "{} events in [{}, {}]", in_window, from_ms, until_ms);
                }
            }
        }

        /// Bounded memory only ever makes the limiter more lenient: per key, a small limiter has
        /// allowed at least as many events as one that never evicts, after every step.
        #[test]
        fn eviction_never_allows_fewer_events_than_remembering_everything(
            quota in quota(),
            entries_max in 1usize..5,
            events in prop::collection::vec((key(), step_ms()), 1..300),
        ) {
            let mut bounded = Limiter::new(quota, entries_max);
            let mut unbounded = Limiter::new(quota, 5);
            let mut bounded_allowed = [0u32; 5];
            let mut unbounded_allowed = [0u32; 5];
            let mut now_ms = 0u64;
            for &(key, step_ms) in &events {
                now_ms += step_ms;
                bounded_allowed[key as usize] += u32::from(bounded.check(&key, now_ms).is_ok());
                unbounded_allowed[key as usize] += u32::from(unbounded.check(&key, now_ms).is_ok());
                prop_assert!(bounded.len() <= entries_max);
                prop_assert!(bounded_allowed[key as usize] >= unbounded_allowed[key as usize]);
            }
        }

        /// Any times at all, in any order, with any valid quota and capacity: no panic, the
        /// capacity holds, refusals name a wait of at least 1 ms, and `would_allow` agrees.
        #[test]
        fn arbitrary_times_and_quotas_never_panic(
            limit in any::<u32>(),
            period_ms in any::<u64>(),
            burst in any::<u32>(),
            entries_max in 1usize..8,
            events in prop::collection::vec((0u32..10, any::<u64>()), 1..200),
        ) {
            let Ok(quota) = Quota::new(limit, period_ms, burst) else {
                return Ok(());
            };
            let mut limiter = Limiter::new(quota, entries_max);
            for &(key, now_ms) in &events {
                let predicted = limiter.would_allow(&key, now_ms);
                let result = limiter.check(&key, now_ms);
                prop_assert_eq!(predicted, result);
                if let Err(retry) = result {
                    prop_assert!(retry.ms >= 1);
                    prop_assert!(retry.seconds() >= 1);
                }
                prop_assert!(limiter.len() <= entries_max);
                if key % 3 == 0 {
                    limiter.reset(&key);
                }
            }
        }
    }
}
