//! A small, fast pseudo-random generator for choosing users and request kinds.
//!
//! Never for anything secret: idempotency keys and usernames get their uniqueness from a per-run
//! prefix and counters, not from this generator.

/// xorshift64* (Vigna, 2016): one multiply per draw, good enough for load mixing.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator from `seed`; a zero seed is replaced, since xorshift would stay at zero.
    pub fn new(seed: u64) -> Self {
        Self {
            state: if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed },
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..bound` (`bound` > 0), by multiply-shift (bias below 2^-32 for our bounds).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "Rng::below needs a positive bound");
        ((u128::from(self.next_u64() >> 32) * u128::from(bound)) >> 32) as u64
    }

    /// True with probability `p` (clamped to 0..=1).
    pub fn chance(&mut self, p: f64) -> bool {
        // 53 random bits as a float in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }
}

/// A seed that differs between threads and runs.
pub fn seed(thread: usize) -> u64 {
    let mut bytes = [0u8; 8];
    // Entropy only spreads the choices; a failure falls back to the clock.
    if getrandom_bytes(&mut bytes) {
        u64::from_le_bytes(bytes) ^ (thread as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    } else {
        crate::clock::now_ns() ^ (thread as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

fn getrandom_bytes(buffer: &mut [u8]) -> bool {
    // SAFETY: the pointer and length describe `buffer`, which outlives the call.
    let written = unsafe { libc::getrandom(buffer.as_mut_ptr().cast(), buffer.len(), 0) };
    written == buffer.len() as isize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_bounds_and_covers_them() {
        let mut rng = Rng::new(7);
        let mut seen = [0u32; 5];
        for _ in 0..10_000 {
            let value = rng.below(5);
            assert!(value < 5);
            seen[value as usize] += 1;
        }
        for count in seen {
            assert!((1_700..2_300).contains(&count), "uneven draw: {seen:?}");
        }
    }

    #[test]
    fn chance_matches_its_probability() {
        let mut rng = Rng::new(11);
        let hits = (0..100_000).filter(|_| rng.chance(0.25)).count();
        assert!((23_500..26_500).contains(&hits), "hits {hits}");
        assert!(!(0..1000).any(|_| rng.chance(0.0)));
        assert!((0..1000).all(|_| rng.chance(1.0)));
    }

    #[test]
    fn zero_seed_does_not_stick_at_zero() {
        let mut rng = Rng::new(0);
        assert_ne!(rng.next_u64(), 0);
    }
}
