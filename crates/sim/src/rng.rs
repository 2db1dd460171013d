//! The seeded random source every scenario is drawn from: one seed, one sequence, no globals.

use std::time::Duration;

/// A small deterministic generator (SplitMix64): the same seed gives the same draws on every
/// platform and in every run.
///
/// ```
/// use backstop_sim::rng::SimRng;
/// let mut a = SimRng::new(7);
/// let mut b = SimRng::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert!(a.below(10) < 10);
/// ```
#[derive(Clone, Debug)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng {
            state: seed ^ 0x5851_f42d_4c95_7f2d,
        }
    }

    /// An independent generator for one part of a scenario (`stream` names the part), so adding
    /// draws to one part does not shift the draws of another.
    pub fn fork(&self, stream: u64) -> SimRng {
        let mut r = SimRng::new(self.state ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        r.next_u64();
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A fair coin.
    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    /// One element of `items` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// A duration of `lo_ms..=hi_ms` milliseconds.
    pub fn millis(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_millis(self.range(lo_ms, hi_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_in_range_and_reproducible() {
        let mut r = SimRng::new(1);
        let first: Vec<u64> = (0..100).map(|_| r.range(3, 9)).collect();
        assert!(first.iter().all(|v| (3..=9).contains(v)));
        let mut r = SimRng::new(1);
        let again: Vec<u64> = (0..100).map(|_| r.range(3, 9)).collect();
        assert_eq!(first, again);
        assert!(first.contains(&3) && first.contains(&9));
    }

    #[test]
    fn forks_differ_from_each_other() {
        let r = SimRng::new(5);
        assert_ne!(r.fork(1).next_u64(), r.fork(2).next_u64());
    }
}
