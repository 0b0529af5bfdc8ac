//! Per-client rate limiting for the requests that cost something: calls to WeChat and account
//! creation. A token bucket per client address: `burst` requests at once, then `per_second`.
//!
//! Mobile carriers put many users behind one address, so the defaults are generous. The address is
//! the one the server decided on (the peer, or `X-Forwarded-For` from a trusted proxy); this module
//! never reads headers. Memory is bounded: when the table grows large, full buckets (clients that
//! have been quiet) are dropped, since a dropped bucket and a full one behave the same. Refusals
//! are counted in `metrics`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::RateLimitConfig;

/// Client entries above which quiet clients are swept.
const SWEEP_ABOVE: usize = 50_000;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub(crate) struct RateLimiter {
    enabled: bool,
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub(crate) fn new(config: &RateLimitConfig) -> RateLimiter {
        RateLimiter {
            enabled: config.enabled,
            burst: f64::from(config.burst),
            per_second: f64::from(config.per_second),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `client`'s bucket: `Ok` if allowed, else `Err(seconds to wait)`.
    pub(crate) fn check(&self, client: IpAddr, now: Instant) -> Result<(), u64> {
        if !self.enabled {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() > SWEEP_ABOVE {
            let (burst, per_second) = (self.burst, self.per_second);
            buckets.retain(|_, bucket| {
                bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * per_second
                    < burst
            });
        }
        let bucket = buckets.entry(client).or_insert(Bucket { tokens: self.burst, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            crate::metrics::METRICS.rate_limit_refused();
            Err(((1.0 - bucket.tokens) / self.per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limiter(burst: u32, per_second: u32) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig { enabled: true, burst, per_second })
    }

    #[test]
    fn burst_then_refill() {
        let limiter = limiter(3, 1);
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check(client, start), Ok(()));
        }
        assert_eq!(limiter.check(client, start), Err(1));
        assert_eq!(limiter.check(client, start + Duration::from_millis(1100)), Ok(()));
    }

    #[test]
    fn clients_are_separate_and_disabled_allows_all() {
        let limiter = limiter(1, 1);
        let now = Instant::now();
        assert!(limiter.check("10.0.0.1".parse().unwrap(), now).is_ok());
        assert!(limiter.check("10.0.0.2".parse().unwrap(), now).is_ok());
        assert!(limiter.check("10.0.0.1".parse().unwrap(), now).is_err());
        let off = RateLimiter::new(&RateLimitConfig { enabled: false, burst: 1, per_second: 1 });
        for _ in 0..100 {
            assert!(off.check("10.0.0.1".parse().unwrap(), now).is_ok());
        }
    }
}
