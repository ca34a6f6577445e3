//! Retry delays: exponential with jitter, capped, never giving up (a daemon
//! retries transient failures forever). Built on `backon`'s backoff iterator;
//! the callers own their loops because each classifies failures differently.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rand::Rng;

use crate::config::RetryConfig;

/// Delays for successive attempts; `reset` after a success.
pub struct Backoff {
    config: RetryConfig,
    inner: ExponentialBackoff,
}

impl Backoff {
    pub fn new(config: RetryConfig) -> Self {
        Backoff {
            config,
            inner: Self::build(config),
        }
    }

    fn build(config: RetryConfig) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(config.initial)
            .with_max_delay(config.max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// The next delay, within `[initial, max]`.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.inner.next().unwrap_or(self.config.max);
        d.clamp(self.config.initial, self.config.max)
    }

    pub fn reset(&mut self) {
        self.inner = Self::build(self.config);
    }
}

/// `base` plus a random extra of up to `spread`: keeps many instances from
/// retrying in lockstep. Never shortens the wait a server asked for.
pub fn with_jitter(base: Duration, spread: Duration) -> Duration {
    if spread.is_zero() {
        return base;
    }
    let extra = rand::rng().random_range(0..=spread.as_millis() as u64);
    base + Duration::from_millis(extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_within_bounds() {
        let cfg = RetryConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let mut b = Backoff::new(cfg);
        let delays: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d >= cfg.initial && *d <= cfg.max));
        assert_eq!(*delays.last().unwrap(), cfg.max.min(delays[19]));
        assert!(delays[10] > delays[0]);
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(201));
    }

    #[test]
    fn jitter_only_adds() {
        for _ in 0..100 {
            let d = with_jitter(Duration::from_secs(1), Duration::from_millis(500));
            assert!(d >= Duration::from_secs(1) && d <= Duration::from_millis(1500));
        }
    }
}
