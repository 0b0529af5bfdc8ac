//! WeChat's server API as wxauth uses it: `jscode2session`, `stable_token` and
//! `getuserphonenumber`. The only file that talks HTTP to WeChat (the only user of ureq).
//!
//! Every call has a connect and a total timeout; connections are kept alive and reused, and the
//! host's address is resolved once a minute, not per call (`CachingResolver`). WeChat
//! answers errors with HTTP 200 and an `errcode` (absent on some successes), sometimes as
//! `text/plain`, so the body is parsed as JSON whatever its content type. errcode -1 (busy) is
//! retried once; the documented user errors never are. Calls in flight are bounded separately from
//! the worker pool, and a call past the bound fails at once. URLs carry the app secret or an access
//! token, so nothing here ever logs a URL or lets ureq's error text (which may quote one) out.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::WechatConfig;
use crate::error::Error;
use crate::metrics::WechatOutcome;

/// Largest answer read from WeChat.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// Wait before the one retry of an errcode -1 (system busy).
const BUSY_RETRY_DELAY: Duration = Duration::from_millis(200);

/// An access token is refreshed this long before WeChat says it expires.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// A successful `jscode2session`.
#[derive(Clone)]
pub(crate) struct CodeSession {
    pub(crate) openid: String,
    pub(crate) unionid: Option<String>,
    pub(crate) session_key: String,
}

/// A phone number from `getuserphonenumber`.
pub(crate) struct PhoneNumber {
    pub(crate) phone_number: String,
    pub(crate) watermark_appid: String,
}

struct AccessToken {
    value: String,
    refresh_at: Instant,
}

pub(crate) struct WeChat {
    agent: ureq::Agent,
    base_url: String,
    appid: String,
    secret: String,
    max_in_flight: usize,
    in_flight: AtomicUsize,
    /// The cached access token, shared by all workers. Held across a refresh, so that concurrent
    /// callers wait for one refresh instead of each asking WeChat.
    access_token: Mutex<Option<AccessToken>>,
    /// The agent's resolver, to forget an address that refused a connection.
    resolver: CachingResolver,
}

/// Counts a call as in flight until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl WeChat {
    pub(crate) fn new(config: &WechatConfig, appid: &str, secret: &str, base_url: &str) -> WeChat {
        let loopback = ["http://127.", "http://localhost", "http://[::1]"]
            .iter()
            .any(|start| base_url.starts_with(start));
        let mut builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_millis(config.connect_timeout_ms)))
            .timeout_global(Some(Duration::from_millis(config.timeout_ms)))
            .max_redirects(0)
            // WeChat's answers are small (the body is read up to MAX_ANSWER_BYTES into its own
            // buffer); ureq's default buffers are 128 KiB each way for every pooled connection.
            .max_response_header_size(16 * 1024)
            .input_buffer_size(16 * 1024)
            .output_buffer_size(16 * 1024)
            .max_idle_connections(config.max_in_flight)
            .max_idle_connections_per_host(config.max_in_flight)
            .user_agent(concat!("wxauth/", env!("CARGO_PKG_VERSION")));
        if loopback {
            // A local endpoint (the fake, a test) is never reached through an HTTP proxy.
            builder = builder.proxy(None);
        }
        let resolver = CachingResolver::default();
        WeChat {
            agent: ureq::Agent::with_parts(
                builder.build(),
                ureq::unversioned::transport::DefaultConnector::new(),
                resolver.clone(),
            ),
            resolver,
            base_url: base_url.trim_end_matches('/').to_string(),
            appid: appid.to_string(),
            secret: secret.to_string(),
            max_in_flight: config.max_in_flight,
            in_flight: AtomicUsize::new(0),
            access_token: Mutex::new(None),
        }
    }

    /// The appid this client speaks for.
    pub(crate) fn appid(&self) -> &str {
        &self.appid
    }

    /// Exchanges a `wx.login` code for the user's openid and session_key.
    pub(crate) fn code_to_session(&self, code: &str) -> Result<CodeSession, Error> {
        const API: &str = "jscode2session";
        let answer = self.call(API, |agent, base| {
            agent
                .get(format!("{base}/sns/jscode2session"))
                .query("appid", &self.appid)
                .query("secret", &self.secret)
                .query("js_code", code)
                .query("grant_type", "authorization_code")
                .call()
        })?;
        let openid = text_field(&answer, "openid", 64);
        let session_key = text_field(&answer, "session_key", 64);
        match (openid, session_key) {
            (Some(openid), Some(session_key)) => {
                Ok(CodeSession { openid, unionid: text_field(&answer, "unionid", 64), session_key })
            }
            _ => Err(Error::WechatUnavailable {
                api: API,
                reason: "answer without openid or session_key".into(),
            }),
        }
    }

    /// Exchanges a phone `code` (from `getPhoneNumber`, base library 2.21.2 and later) for the
    /// user's phone number. Refreshes the access token once if WeChat says it is invalid (40001)
    /// or expired (42001).
    pub(crate) fn phone_number(&self, phone_code: &str) -> Result<PhoneNumber, Error> {
        const API: &str = "getuserphonenumber";
        let mut refreshed = false;
        loop {
            let token = self.access_token(false)?;
            let result = self.call(API, |agent, base| {
                agent
                    .post(format!("{base}/wxa/business/getuserphonenumber"))
                    .query("access_token", &token)
                    .content_type("application/json")
                    .send(json!({ "code": phone_code }).to_string())
            });
            match result {
                Err(Error::Wechat { errcode: errcode @ (40001 | 42001), .. }) if !refreshed => {
                    refreshed = true;
                    self.forget_access_token(&token);
                    if errcode == 40001 {
                        // Invalid rather than expired: the normal mode would hand back the same
                        // token, so ask for a new one.
                        self.access_token(true)?;
                    }
                }
                Err(error) => return Err(error),
                Ok(answer) => {
                    let info = &answer["phone_info"];
                    let phone_number = text_field(info, "phoneNumber", 32);
                    let watermark_appid = text_field(&info["watermark"], "appid", 64);
                    return match (phone_number, watermark_appid) {
                        (Some(phone_number), Some(watermark_appid)) => {
                            Ok(PhoneNumber { phone_number, watermark_appid })
                        }
                        _ => Err(Error::WechatUnavailable {
                            api: API,
                            reason: "answer without phone_info".into(),
                        }),
                    };
                }
            }
        }
    }

    /// The current access token from `stable_token`, cached until shortly before it expires.
    fn access_token(&self, force_refresh: bool) -> Result<String, Error> {
        const API: &str = "stable_token";
        let mut cached = self.access_token.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(token) = cached.as_ref().filter(|token| Instant::now() < token.refresh_at)
            && !force_refresh
        {
            return Ok(token.value.clone());
        }
        let answer = self.call(API, |agent, base| {
            agent
                .post(format!("{base}/cgi-bin/stable_token"))
                .content_type("application/json")
                .send(
                    json!({
                        "grant_type": "client_credential",
                        "appid": self.appid,
                        "secret": self.secret,
                        "force_refresh": force_refresh,
                    })
                    .to_string(),
                )
        })?;
        let value = text_field(&answer, "access_token", 1024).ok_or_else(|| {
            Error::WechatUnavailable { api: API, reason: "answer without access_token".into() }
        })?;
        let lifetime = Duration::from_secs(answer["expires_in"].as_u64().unwrap_or(7200));
        let refresh_at = Instant::now() + lifetime.saturating_sub(TOKEN_REFRESH_MARGIN);
        crate::metrics::METRICS.access_token_refreshed();
        crate::log::info(&format!(
            "wechat: access token refreshed, valid for {}s",
            lifetime.as_secs()
        ));
        *cached = Some(AccessToken { value: value.clone(), refresh_at });
        Ok(value)
    }

    /// Drops the cached token if it is still the one WeChat refused.
    fn forget_access_token(&self, refused: &str) {
        let mut cached = self.access_token.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cached.as_ref().is_some_and(|token| token.value == refused) {
            *cached = None;
        }
    }

    /// Makes one call (and, on errcode -1, one retry), bounded by `max_in_flight`, and returns the
    /// answer's JSON once its errcode is 0 or absent.
    fn call(
        &self,
        api: &'static str,
        send: impl Fn(&ureq::Agent, &str) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, Error> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            crate::metrics::METRICS.wechat_call(
                api,
                WechatOutcome::InFlightCap,
                crate::time::now(),
            );
            return Err(Error::WechatUnavailable {
                api,
                reason: format!("{} calls already in flight", self.max_in_flight),
            });
        }
        let _in_flight = InFlight(&self.in_flight);
        let result = match self.call_once(api, &send) {
            Err((_, WechatOutcome::Busy)) => {
                std::thread::sleep(BUSY_RETRY_DELAY);
                self.call_once(api, &send)
            }
            other => other,
        };
        result.map_err(|(error, _)| error)
    }

    /// One exchange with WeChat, counted in the metrics.
    fn call_once(
        &self,
        api: &'static str,
        send: &impl Fn(&ureq::Agent, &str) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, Failure> {
        let result = self.exchange(api, send);
        let outcome = result.as_ref().map_or_else(|(_, outcome)| *outcome, |_| WechatOutcome::Ok);
        crate::metrics::METRICS.wechat_call(api, outcome, crate::time::now());
        result
    }

    fn exchange(
        &self,
        api: &'static str,
        send: &impl Fn(&ureq::Agent, &str) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, Failure> {
        let unavailable =
            |reason: String, outcome| (Error::WechatUnavailable { api, reason }, outcome);
        let transport =
            |error: ureq::Error| unavailable(describe(&error), transport_outcome(&error));
        let mut response = send(&self.agent, &self.base_url).map_err(|error| {
            let outcome = transport_outcome(&error);
            let no_connection = outcome == WechatOutcome::Refused
                || matches!(error, ureq::Error::Timeout(ureq::Timeout::Connect));
            if no_connection {
                // The host may have moved: look it up again on the next call.
                self.resolver.forget();
            }
            unavailable(describe(&error), outcome)
        })?;
        let bad_answer = |reason: String| unavailable(reason, WechatOutcome::BadAnswer);
        let status = response.status().as_u16();
        if status != 200 {
            return Err(bad_answer(format!("HTTP status {status}")));
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec()
            .map_err(transport)?;
        let answer: Value =
            serde_json::from_slice(&body).map_err(|_| bad_answer("answer is not JSON".into()))?;
        if !answer.is_object() {
            return Err(bad_answer("answer is not a JSON object".into()));
        }
        let errcode = match &answer["errcode"] {
            Value::Null => 0,
            value => value.as_i64().ok_or_else(|| bad_answer("errcode is not a number".into()))?,
        };
        match errcode {
            0 => Ok(answer),
            -1 => Err(unavailable(BUSY.into(), WechatOutcome::Busy)),
            40029 => Err((Error::WechatCodeInvalid, WechatOutcome::InvalidCode)),
            40163 => Err((Error::WechatCodeUsed, WechatOutcome::CodeUsed)),
            45011 => Err((Error::WechatRateLimited, WechatOutcome::RateLimited)),
            40226 => Err((Error::WechatUserBlocked, WechatOutcome::UserBlocked)),
            errcode => {
                let mut errmsg: String =
                    answer["errmsg"].as_str().unwrap_or("").chars().take(200).collect();
                // WeChat's errmsg may end with "rid: …"; it never echoes secrets, but strip
                // anything that is not plain text before it reaches the log.
                errmsg.retain(|character| !character.is_control());
                Err((Error::Wechat { api, errcode, errmsg }, WechatOutcome::OtherErrcode))
            }
        }
    }
}

/// How long a resolved WeChat address is used before it is looked up again.
const RESOLVE_TTL: Duration = Duration::from_secs(60);

/// ureq asks its resolver on every call, before it looks for a pooled connection, and its default
/// resolver, given a timeout, starts a thread for every lookup: a DNS query and a thread per WeChat
/// call. This one keeps the answer for `RESOLVE_TTL` (WeChat's API has one host) and otherwise
/// defers to ureq's (with its timeout). The lock is not held while resolving. A failed lookup
/// falls back on the expired answer, and a failed connection drops the answer (`forget`), so a
/// moved host is looked up again at once.
#[derive(Debug, Default, Clone)]
struct CachingResolver {
    cached: std::sync::Arc<Mutex<Option<ResolvedAddress>>>,
}

impl CachingResolver {
    fn forget(&self) {
        *self.cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }
}

#[derive(Debug, Clone)]
struct ResolvedAddress {
    /// Scheme and authority, e.g. `https://api.weixin.qq.com`.
    key: String,
    at: Instant,
    addresses: ureq::unversioned::resolver::ResolvedSocketAddrs,
}

impl ureq::unversioned::resolver::Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let key = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map_or("", |authority| authority.as_str())
        );
        let stale = {
            let cached = self.cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match cached.as_ref() {
                Some(found) if found.key == key && found.at.elapsed() < RESOLVE_TTL => {
                    return Ok(found.addresses.clone());
                }
                Some(found) if found.key == key => Some(found.addresses.clone()),
                _ => None,
            }
        };
        let addresses = match ureq::unversioned::resolver::DefaultResolver::default()
            .resolve(uri, config, timeout)
        {
            Ok(addresses) => addresses,
            // DNS trouble: the last answer is the best guess (and is not renewed).
            Err(error) => return stale.ok_or(error),
        };
        let fresh = ResolvedAddress { key, at: Instant::now(), addresses: addresses.clone() };
        *self.cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(fresh);
        Ok(addresses)
    }
}

/// The reason recorded for errcode -1, which is retried once.
const BUSY: &str = "errcode -1 (system busy)";

/// A short, secret-free description of a transport failure. ureq's own text can quote the URL,
/// which holds the app secret or an access token, so it is never used.
fn describe(error: &ureq::Error) -> String {
    match error {
        ureq::Error::Timeout(which) => format!("timeout ({which})"),
        ureq::Error::Io(io) => format!("i/o error: {}", io.kind()),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::BodyExceedsLimit(limit) => format!("answer larger than {limit} bytes"),
        ureq::Error::StatusCode(status) => format!("HTTP status {status}"),
        ureq::Error::TooManyRedirects | ureq::Error::RedirectFailed => "redirected".into(),
        ureq::Error::Protocol(_) => "HTTP protocol error".into(),
        ureq::Error::Tls(_) => "TLS error".into(),
        _ => "HTTP client error".into(),
    }
}

/// A non-empty string field of at most `max` characters, without control characters.
fn text_field(object: &Value, key: &str, max: usize) -> Option<String> {
    let text = object.get(key)?.as_str()?;
    let plain =
        !text.is_empty() && text.chars().count() <= max && !text.chars().any(char::is_control);
    plain.then(|| text.to_string())
}

/// Whether an access token is cached, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccessTokenState {
    /// A token is cached and not yet due for refresh.
    Cached,
    /// None yet, or the cached one is due: the next phone-number call fetches one.
    Missing,
    /// A refresh holds the cache right now.
    Refreshing,
}

impl WeChat {
    /// The state of the access token cache, without waiting for a refresh under way and without
    /// calling WeChat.
    pub(crate) fn access_token_state(&self) -> AccessTokenState {
        match self.access_token.try_lock() {
            Ok(cached)
                if cached.as_ref().is_some_and(|token| Instant::now() < token.refresh_at) =>
            {
                AccessTokenState::Cached
            }
            Ok(_) => AccessTokenState::Missing,
            Err(std::sync::TryLockError::Poisoned(_)) => AccessTokenState::Missing,
            Err(std::sync::TryLockError::WouldBlock) => AccessTokenState::Refreshing,
        }
    }
}

/// A failed exchange: the error for the client, and what it counts as in the metrics.
type Failure = (Error, WechatOutcome);

/// What a transport failure counts as: no answer in time, no connection at all, a connection
/// that failed under way, or an answer that is not one (too large, redirected).
fn transport_outcome(error: &ureq::Error) -> WechatOutcome {
    use std::io::ErrorKind;
    match error {
        ureq::Error::Timeout(_) => WechatOutcome::Timeout,
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => WechatOutcome::Refused,
        ureq::Error::Io(io) => match io.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => WechatOutcome::Timeout,
            ErrorKind::ConnectionRefused
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable
            | ErrorKind::AddrNotAvailable => WechatOutcome::Refused,
            _ => WechatOutcome::ConnectionError,
        },
        ureq::Error::BodyExceedsLimit(_)
        | ureq::Error::StatusCode(_)
        | ureq::Error::TooManyRedirects
        | ureq::Error::RedirectFailed => WechatOutcome::BadAnswer,
        _ => WechatOutcome::ConnectionError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: ureq resolved WeChat's host on every call, in a thread of its own.
    #[test]
    fn the_resolver_keeps_an_answer_for_its_host() {
        use ureq::unversioned::resolver::Resolver;
        let resolver = CachingResolver::default();
        let config = ureq::config::Config::default();
        let timeout = || ureq::unversioned::transport::NextTimeout {
            after: ureq::unversioned::transport::time::Duration::Exact(Duration::from_secs(1)),
            reason: ureq::Timeout::Resolve,
            ..Default::default()
        };
        let first: ureq::http::Uri = "http://127.0.0.1:9/sns/jscode2session".parse().unwrap();
        let addresses = resolver.resolve(&first, &config, timeout()).unwrap();
        assert_eq!(addresses.as_ref(), ["127.0.0.1:9".parse().unwrap()]);
        let resolved_at = resolver.cached.lock().unwrap().as_ref().unwrap().at;
        let again: ureq::http::Uri = "http://127.0.0.1:9/cgi-bin/stable_token".parse().unwrap();
        resolver.resolve(&again, &config, timeout()).unwrap();
        assert_eq!(resolver.cached.lock().unwrap().as_ref().unwrap().at, resolved_at, "cached");
        let other: ureq::http::Uri = "http://127.0.0.1:10/".parse().unwrap();
        let addresses = resolver.resolve(&other, &config, timeout()).unwrap();
        assert_eq!(addresses.as_ref(), ["127.0.0.1:10".parse().unwrap()]);
        resolver.forget();
        assert!(resolver.cached.lock().unwrap().is_none(), "forgotten after a refused connection");
    }

    #[test]
    fn transport_failures_count_by_what_went_wrong() {
        use std::io::ErrorKind;
        let io = |kind| ureq::Error::Io(std::io::Error::from(kind));
        for (error, expected) in [
            (ureq::Error::Timeout(ureq::Timeout::Global), WechatOutcome::Timeout),
            (io(ErrorKind::TimedOut), WechatOutcome::Timeout),
            (ureq::Error::ConnectionFailed, WechatOutcome::Refused),
            (ureq::Error::HostNotFound, WechatOutcome::Refused),
            (io(ErrorKind::ConnectionRefused), WechatOutcome::Refused),
            (io(ErrorKind::HostUnreachable), WechatOutcome::Refused),
            (io(ErrorKind::ConnectionReset), WechatOutcome::ConnectionError),
            (ureq::Error::StatusCode(503), WechatOutcome::BadAnswer),
            (ureq::Error::BodyExceedsLimit(10), WechatOutcome::BadAnswer),
        ] {
            assert_eq!(transport_outcome(&error), expected, "{error:?}");
        }
    }
}
