//! The one clock of the load generator: CLOCK_MONOTONIC in nanoseconds.
//!
//! Plain integers (not `Instant`) so that the open-loop schedule can be computed and tested as
//! arithmetic, and handed to `timerfd` as an absolute deadline on the same clock.

/// Nanoseconds on CLOCK_MONOTONIC (the vDSO: no system call).
pub fn now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill; CLOCK_MONOTONIC always exists.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(result, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Nanoseconds in a second.
pub const NS_PER_SECOND: u64 = 1_000_000_000;
