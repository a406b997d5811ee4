//! Capped exponential backoff with jitter, so two hundred VMs that lost the
//! same server do not all knock on it in the same second.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        // Seed from the pid and the address of a stack value: different on every VM and run.
        let marker = 0u8;
        let seed = (std::process::id() as u64) << 32 ^ (&marker as *const u8 as u64) ^ 0x9E37_79B9_7F4A_7C15;
        Self { first, cap, next: first, rng: seed | 1 }
    }

    /// The delay before the next attempt: the current step ±20 %, then the step doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.cap);
        // xorshift64: plenty for jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let spread = (self.rng % 401) as f64 / 1000.0 - 0.2; // -0.2 ..= +0.2
        step.mul_f64(1.0 + spread)
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_bounded_jitter_and_resets() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let steps: Vec<f64> = (0..10).map(|_| backoff.next_delay().as_secs_f64()).collect();
        let nominal = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0];
        for (got, want) in steps.iter().zip(nominal) {
            assert!(*got >= want * 0.8 - 1e-9 && *got <= want * 1.2 + 1e-9, "{got} vs {want}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(1200));
    }

    #[test]
    fn jitter_varies() {
        let mut backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        let delays: std::collections::HashSet<_> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(delays.len() > 5, "{delays:?}");
    }
}
