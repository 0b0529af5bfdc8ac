//! Per-client rate limiting for the requests that cost something: calls to WeChat and account
//! creation. A token bucket per client: `burst` requests at once, then `per_second`. A client is
//! an IPv4 address or an IPv6 /64, what one subscriber gets (a phone may use any address in its
//! /64); an IPv4-mapped IPv6 address is its IPv4 address.
//!
//! Mobile carriers put many users behind one address, so the defaults are generous. The address is
//! the one the server decided on (the peer, or `X-Forwarded-For` from a trusted proxy); this module
//! never reads headers. Memory is bounded: when the table grows large, full buckets (clients that
//! have been quiet) are dropped, since a dropped bucket and a full one behave the same. Refusals
//! are counted in `metrics`. The settings come with each request (`rate_limit` of the configuration
//! in force, which a reload may change): a bucket keeps its tokens across a change, within the new
//! `burst`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
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
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub(crate) fn new() -> RateLimiter {
        RateLimiter { buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one request from the bucket of the client `address` belongs to, under `settings`:
    /// `Ok` if allowed, else `Err(seconds to wait)`.
    pub(crate) fn check(
        &self,
        settings: &RateLimitConfig,
        address: IpAddr,
        now: Instant,
    ) -> Result<(), u64> {
        if !settings.enabled {
            return Ok(());
        }
        let (burst, per_second) = (f64::from(settings.burst), f64::from(settings.per_second));
        let client = client_of(address);
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() > SWEEP_ABOVE {
            buckets.retain(|_, bucket| {
                bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * per_second
                    < burst
            });
        }
        let bucket = buckets.entry(client).or_insert(Bucket { tokens: burst, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            crate::metrics::METRICS.rate_limit_refused();
            Err(((1.0 - bucket.tokens) / per_second).ceil().max(1.0) as u64)
        }
    }
}

/// The client an address belongs to, as a bucket's key: an IPv4 address as it is, an IPv6 address
/// as its /64, an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as a dual-stack listener sees an
/// IPv4 peer) as its IPv4 address. A few integer operations, as it runs on every limited request.
fn client_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & (u128::MAX << 64))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(burst: u32, per_second: u32) -> RateLimitConfig {
        RateLimitConfig { enabled: true, burst, per_second }
    }

    #[test]
    fn burst_then_refill() {
        let (limiter, settings) = (RateLimiter::new(), settings(3, 1));
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check(&settings, client, start), Ok(()));
        }
        assert_eq!(limiter.check(&settings, client, start), Err(1));
        assert_eq!(limiter.check(&settings, client, start + Duration::from_millis(1100)), Ok(()));
    }

    #[test]
    fn clients_are_separate_and_disabled_allows_all() {
        let (limiter, settings) = (RateLimiter::new(), settings(1, 1));
        let now = Instant::now();
        assert!(limiter.check(&settings, "10.0.0.1".parse().unwrap(), now).is_ok());
        assert!(limiter.check(&settings, "10.0.0.2".parse().unwrap(), now).is_ok());
        assert!(limiter.check(&settings, "10.0.0.1".parse().unwrap(), now).is_err());
        let off = RateLimitConfig { enabled: false, ..settings };
        for _ in 0..100 {
            assert!(limiter.check(&off, "10.0.0.1".parse().unwrap(), now).is_ok());
        }
    }

    /// Regression: each IPv6 address had its own bucket, so one phone, which may use any address
    /// of its /64, had as many buckets as it liked.
    #[test]
    fn an_ipv6_slash_64_is_one_client_and_a_mapped_ipv4_address_is_its_ipv4_address() {
        let (limiter, settings) = (RateLimiter::new(), settings(2, 1));
        let now = Instant::now();
        let allowed = |client: &str| limiter.check(&settings, client.parse().unwrap(), now).is_ok();
        assert!(allowed("2001:db8:1:2::1"));
        assert!(allowed("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert!(!allowed("2001:db8:1:2:abcd::9"), "a third address of the same /64");
        assert!(allowed("2001:db8:1:3::1"), "the next /64 is another subscriber");
        assert!(allowed("10.0.0.1"));
        assert!(allowed("::ffff:10.0.0.1"));
        assert!(!allowed("10.0.0.1"), "::ffff:10.0.0.1 is 10.0.0.1");
        // Mapped addresses are IPv4 clients each, though they share a /64.
        for client in ["::ffff:10.0.0.2", "::ffff:10.0.0.3", "::ffff:10.0.0.4"] {
            assert!(allowed(client), "{client}");
        }
    }

    #[test]
    fn new_settings_apply_to_the_next_request_and_buckets_keep_their_tokens() {
        let limiter = RateLimiter::new();
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        assert!(limiter.check(&settings(5, 1), client, now).is_ok());
        // A lower burst caps the tokens left (4) at once.
        assert!(limiter.check(&settings(2, 1), client, now).is_ok());
        assert!(limiter.check(&settings(2, 1), client, now).is_ok());
        assert_eq!(limiter.check(&settings(2, 1), client, now), Err(1));
        // A higher rate refills faster: 0.3 s at 10 a second fills the bucket again (2), where 1 a
        // second would not have given one.
        let later = now + Duration::from_millis(300);
        for _ in 0..2 {
            assert!(limiter.check(&settings(2, 10), client, later).is_ok());
        }
        assert!(limiter.check(&settings(2, 10), client, later).is_err());
    }
}
