//! WeChat's server API as wxauth uses it: `jscode2session`, `stable_token` and
//! `getuserphonenumber`, and the fake WeChat's helpers for the demo page. The only file that talks
//! HTTP to WeChat (the only user of ureq). Each app (mini-program) has a `WeChat` of its own: its
//! appid and secret, its access token and its bound on calls in flight.
//!
//! Every call has a connect and a total timeout; connections are kept alive and reused, and the
//! host's address is resolved once a minute, not per call (`CachingResolver`). WeChat
//! answers errors with HTTP 200 and an `errcode` (absent on some successes), sometimes as
//! `text/plain`, so the body is parsed as JSON whatever its content type. `ERRCODES` is the one
//! list of the errcodes wxauth tells apart and what each becomes (the metrics and the fake WeChat
//! read it too); errcode -1 (busy) is retried once, the documented user errors never are. Calls
//! in flight are bounded separately from the worker pool (`Slots`): a call past the bound waits
//! only while WeChat keeps answering, and fails at once when it does not. URLs carry the app
//! secret or an access token, so nothing here ever logs a URL or lets ureq's error text (which
//! may quote one) out.

use std::sync::{Condvar, Mutex, MutexGuard};
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

/// WeChat's errcodes that wxauth tells apart, each with what it becomes: the one source for the
/// client's error (`exchange`), the metrics' outcome, the fake WeChat's misbehaviour codes and the
/// docs' tables (checked by a test). Any other errcode is `wechat_error` to the client and
/// `other_errcode` in the metrics; the user errors are never retried.
pub(crate) const ERRCODES: [Errcode; 5] =
    [INVALID_CODE, CODE_USED, RATE_LIMITED, USER_BLOCKED, BUSY];

/// One of WeChat's errcodes that wxauth tells apart from the rest.
#[derive(Clone, Copy)]
pub(crate) struct Errcode {
    pub(crate) errcode: i64,
    /// What WeChat means by it (docs/fake-wechat.md shows it after the number).
    pub(crate) meaning: &'static str,
    /// What a call answered with it counts as in the metrics.
    pub(crate) outcome: WechatOutcome,
    /// The error the client gets when a call to `api` is answered with it.
    error: fn(&Errcode, &'static str) -> Error,
    /// The `wx.login` or phone code that makes the fake WeChat answer with it.
    pub(crate) fake_code: &'static str,
}

pub(crate) const INVALID_CODE: Errcode = Errcode {
    errcode: 40029,
    meaning: "invalid code",
    outcome: WechatOutcome::InvalidCode,
    error: |_, _| Error::WechatCodeInvalid,
    fake_code: "fake-40029",
};

pub(crate) const CODE_USED: Errcode = Errcode {
    errcode: 40163,
    meaning: "code already used",
    outcome: WechatOutcome::CodeUsed,
    error: |_, _| Error::WechatCodeUsed,
    fake_code: "fake-40163",
};

const RATE_LIMITED: Errcode = Errcode {
    errcode: 45011,
    meaning: "rate limited",
    outcome: WechatOutcome::RateLimited,
    error: |_, _| Error::WechatRateLimited,
    fake_code: "fake-45011",
};

const USER_BLOCKED: Errcode = Errcode {
    errcode: 40226,
    meaning: "user blocked",
    outcome: WechatOutcome::UserBlocked,
    error: |_, _| Error::WechatUserBlocked,
    fake_code: "fake-40226",
};

/// errcode -1, WeChat's "system busy": retried once (`call_in`), then `wechat_unavailable`.
pub(crate) const BUSY: Errcode = Errcode {
    errcode: -1,
    meaning: "system busy",
    outcome: WechatOutcome::Busy,
    error: |busy, api| Error::WechatUnavailable {
        api,
        reason: format!("errcode {} ({})", busy.errcode, busy.meaning),
    },
    fake_code: "fake-busy",
};

/// `getuserphonenumber`'s answer when the access token is invalid (revoked by a newer one): the
/// token is refreshed with `force_refresh`, once.
pub(crate) const ACCESS_TOKEN_INVALID: i64 = 40001;

/// `getuserphonenumber`'s answer when the access token has expired: it is refreshed, once.
pub(crate) const ACCESS_TOKEN_EXPIRED: i64 = 42001;

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
    /// `jscode2session`'s URL up to the code, its constant parameters encoded once: ureq's query
    /// builder encodes and formats each of them, and parses the URL again, on every call, a
    /// large share of what the client costs per call. Holds the app secret, like every URL here.
    code_url: String,
    /// The app's metrics slot.
    app: usize,
    appid: String,
    secret: String,
    slots: Slots,
    /// The longest a call waits for a slot (`wechat.timeout_ms`, as long as a call may take).
    wait_for_slot: Duration,
    /// The cached access token, shared by all workers. Held across a refresh, so that concurrent
    /// callers wait for one refresh instead of each asking WeChat.
    access_token: Mutex<Option<AccessToken>>,
    /// The agent's resolver, to forget an address that refused a connection.
    resolver: CachingResolver,
}

/// A call past `max_in_flight` waits for a slot only while WeChat is answering: calls have been
/// in flight for less than this long without an answer. When they have (WeChat hangs), it fails
/// at once, so the workers beyond `max_in_flight` are taken by waiting calls for at most this
/// long after WeChat stops answering. Longer than WeChat takes to answer a burst of calls (tens to
/// hundreds of milliseconds from a VPS far from it), and than a loaded machine takes to run the
/// threads that read the answers: a window of tens of milliseconds refuses, under load, some
/// calls that WeChat answers.
const ANSWERING_WINDOW: Duration = Duration::from_secs(1);

/// The bound on calls in flight. Failing every call past it at once would keep workers free when
/// WeChat hangs, but would also fail much of a burst of logins while WeChat answers in a
/// millisecond; waiting only while calls are being answered keeps the first and avoids the
/// second.
struct Slots {
    max: usize,
    /// `ANSWERING_WINDOW`, but for tests.
    window: Duration,
    state: Mutex<SlotState>,
    freed: Condvar,
}

struct SlotState {
    in_flight: usize,
    /// Calls waiting for a slot that none has been handed to yet.
    waiting: usize,
    /// Slots given back while calls were waiting, handed to them and not yet taken: a slot
    /// freed while calls wait goes to one of them, not to whichever call asks next, so that a
    /// waiting call is not woken for nothing.
    handed: usize,
    /// When a call last had an answer from WeChat (any HTTP answer, errcodes included; not a
    /// timeout or a connection failure), or a call started with none in flight: the time since is
    /// how long calls have been in flight without an answer. (The last answer alone would be
    /// minutes old after a quiet spell, and the first burst of logins after it would fail.)
    answered_at: Instant,
}

/// A slot taken by one call; given back when dropped.
struct Slot<'a> {
    slots: &'a Slots,
    answered: bool,
}

impl Slots {
    fn new(max: usize, window: Duration) -> Slots {
        let state = SlotState { in_flight: 0, waiting: 0, handed: 0, answered_at: Instant::now() };
        Slots { max, window, state: Mutex::new(state), freed: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slot: at once if one is free; else the next one given back, as long as WeChat keeps
    /// answering (see `answered_at`) and for at most `longest` in all. `None`: no slot.
    fn take(&self, longest: Duration) -> Option<Slot<'_>> {
        let slot = || Some(Slot { slots: self, answered: false });
        let mut state = self.lock();
        if state.in_flight < self.max {
            if state.in_flight == 0 {
                state.answered_at = Instant::now();
            }
            state.in_flight += 1;
            return slot();
        }
        let give_up = Instant::now() + longest;
        state.waiting += 1;
        loop {
            if state.handed > 0 {
                state.handed -= 1;
                return slot();
            }
            let now = Instant::now();
            let until = (state.answered_at + self.window).min(give_up);
            match until.checked_duration_since(now) {
                Some(timeout) if !timeout.is_zero() => {
                    state = match self.freed.wait_timeout(state, timeout) {
                        Ok((state, _)) => state,
                        Err(poisoned) => poisoned.into_inner().0,
                    };
                }
                _ => {
                    // Not handed one (checked above), so still counted in `waiting`.
                    state.waiting -= 1;
                    return None;
                }
            }
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut state = self.slots.lock();
        if self.answered {
            state.answered_at = Instant::now();
        }
        if state.waiting > 0 {
            state.waiting -= 1;
            state.handed += 1;
            drop(state);
            self.slots.freed.notify_one();
        } else {
            state.in_flight -= 1;
        }
    }
}

impl WeChat {
    /// A client for the app in metrics slot `app` (its place in the server's list of apps).
    pub(crate) fn new(
        app: usize,
        config: &WechatConfig,
        appid: &str,
        secret: &str,
        base_url: &str,
    ) -> WeChat {
        let loopback = crate::config::on_loopback(base_url);
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
        let base_url = base_url.trim_end_matches('/').to_string();
        let mut code_url = format!("{base_url}/sns/jscode2session?appid=");
        push_query_value(&mut code_url, appid);
        code_url.push_str("&secret=");
        push_query_value(&mut code_url, secret);
        code_url.push_str("&grant_type=authorization_code&js_code=");
        WeChat {
            agent: ureq::Agent::with_parts(
                builder.build(),
                ureq::unversioned::transport::DefaultConnector::new(),
                resolver.clone(),
            ),
            resolver,
            base_url,
            code_url,
            app,
            appid: appid.to_string(),
            secret: secret.to_string(),
            slots: Slots::new(config.max_in_flight, ANSWERING_WINDOW),
            wait_for_slot: Duration::from_millis(config.timeout_ms),
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
        let mut url = String::with_capacity(self.code_url.len() + 3 * code.len());
        url.push_str(&self.code_url);
        push_query_value(&mut url, code);
        let answer = self.call(API, |agent, _| agent.get(url.as_str()).call())?;
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
    /// or expired (42001). One slot of `max_in_flight` covers the whole: a caller that waits for
    /// another's token refresh holds a slot while it waits, so callers stuck behind a hung
    /// `stable_token` are bounded like calls in flight, and do not take the workers kept free.
    pub(crate) fn phone_number(&self, phone_code: &str) -> Result<PhoneNumber, Error> {
        const API: &str = "getuserphonenumber";
        let mut slot = self.slot(API)?;
        let mut refreshed = false;
        loop {
            let token = self.access_token(&mut slot, false)?;
            let result = self.call_in(&mut slot, API, |agent, base| {
                agent
                    .post(format!("{base}/wxa/business/getuserphonenumber"))
                    .query("access_token", &token)
                    .content_type("application/json")
                    .send(json!({ "code": phone_code }).to_string())
            });
            match result {
                Err(Error::Wechat {
                    errcode: errcode @ (ACCESS_TOKEN_INVALID | ACCESS_TOKEN_EXPIRED),
                    ..
                }) if !refreshed => {
                    refreshed = true;
                    self.forget_access_token(&token);
                    if errcode == ACCESS_TOKEN_INVALID {
                        // Invalid rather than expired: the normal mode would hand back the same
                        // token, so ask for a new one.
                        self.access_token(&mut slot, true)?;
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

    /// A GET of one of the fake WeChat's helpers (`/fake/…`, docs/fake-wechat.md) with `query`,
    /// for the demo page: its status and JSON answer. Only the demo page calls it, and only when
    /// `base_url` is a fake (config.rs checks); it takes no slot and is not counted as a call to
    /// WeChat.
    pub(crate) fn fake_helper(
        &self,
        path: &'static str,
        query: &[(&str, &str)],
    ) -> Result<(u16, Value), Error> {
        let mut url = format!("{}{path}", self.base_url);
        for (index, (name, value)) in query.iter().enumerate() {
            url.push(if index == 0 { '?' } else { '&' });
            push_query_value(&mut url, name);
            url.push('=');
            push_query_value(&mut url, value);
        }
        let unavailable = |reason: String| Error::WechatUnavailable { api: path, reason };
        let mut response =
            self.agent.get(url.as_str()).call().map_err(|error| unavailable(describe(&error)))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES * 32)
            .read_to_vec()
            .map_err(|error| unavailable(describe(&error)))?;
        let answer =
            serde_json::from_slice(&body).map_err(|_| unavailable("answer is not JSON".into()))?;
        Ok((status, answer))
    }

    /// The current access token from `stable_token`, cached until shortly before it expires;
    /// a refresh is called in the caller's `slot`.
    fn access_token(&self, slot: &mut Slot<'_>, force_refresh: bool) -> Result<String, Error> {
        const API: &str = "stable_token";
        let mut cached = self.access_token.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(token) = cached.as_ref().filter(|token| Instant::now() < token.refresh_at)
            && !force_refresh
        {
            return Ok(token.value.clone());
        }
        let answer = self.call_in(slot, API, |agent, base| {
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

    /// A slot of `max_in_flight` for a call to `api`, or `wechat_unavailable`.
    fn slot(&self, api: &'static str) -> Result<Slot<'_>, Error> {
        self.slots.take(self.wait_for_slot).ok_or_else(|| {
            crate::metrics::METRICS.wechat_call(
                self.app,
                api,
                WechatOutcome::InFlightCap,
                crate::time::now(),
            );
            Error::WechatUnavailable {
                api,
                reason: format!("{} calls in flight and WeChat not answering", self.slots.max),
            }
        })
    }

    /// Makes one call (and, on errcode -1, one retry) in a slot of its own; see `call_in`.
    fn call(
        &self,
        api: &'static str,
        send: impl Fn(&ureq::Agent, &str) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, Error> {
        let mut slot = self.slot(api)?;
        self.call_in(&mut slot, api, send)
    }

    /// Makes one call (and, on errcode -1, one retry) in `slot`, and returns the answer's JSON
    /// once its errcode is 0 or absent.
    fn call_in(
        &self,
        slot: &mut Slot<'_>,
        api: &'static str,
        send: impl Fn(&ureq::Agent, &str) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, Error> {
        let mut result = self.call_once(api, &send);
        if result.as_ref().is_err_and(|(_, outcome)| *outcome == BUSY.outcome) {
            slot.answered = true;
            std::thread::sleep(BUSY_RETRY_DELAY);
            result = self.call_once(api, &send);
        }
        slot.answered |= result.as_ref().map_or_else(|(_, outcome)| outcome.answered(), |_| true);
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
        crate::metrics::METRICS.wechat_call(self.app, api, outcome, crate::time::now());
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
        if errcode == 0 {
            return Ok(answer);
        }
        match ERRCODES.iter().find(|known| known.errcode == errcode) {
            Some(known) => Err(((known.error)(known, api), known.outcome)),
            None => {
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

/// Appends `value` to a URL's query, percent-encoding every byte but the unreserved ones
/// (RFC 3986: letters, digits, `-`, `.`, `_`, `~`).
fn push_query_value(url: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            url.push(char::from(byte));
        } else {
            url.push('%');
            url.push(char::from(HEX[usize::from(byte >> 4)]));
            url.push(char::from(HEX[usize::from(byte & 15)]));
        }
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

    /// `in_flight`, `waiting` and `handed` of `slots`.
    fn counts(slots: &Slots) -> (usize, usize, usize) {
        let state = slots.lock();
        (state.in_flight, state.waiting, state.handed)
    }

    /// Waits until `waiting` calls wait on `slots`.
    fn until_waiting(slots: &Slots, waiting: usize) {
        while counts(slots).1 + counts(slots).2 < waiting {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_call_past_the_bound_is_handed_the_next_slot_given_back() {
        let slots = Slots::new(2, Duration::from_secs(60));
        let (first, second) = (slots.take(Duration::ZERO), slots.take(Duration::ZERO));
        assert!(first.is_some() && second.is_some());
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| slots.take(Duration::from_secs(60)));
            until_waiting(&slots, 1);
            assert_eq!(counts(&slots), (2, 1, 0));
            drop(first);
            let handed = waiter.join().unwrap().expect("handed the slot");
            // Handed over, not freed: two in flight all along, the waiter's and `second`.
            assert_eq!(counts(&slots), (2, 0, 0));
            drop(handed);
            assert_eq!(counts(&slots), (1, 0, 0));
        });
        drop(second);
        assert_eq!(counts(&slots), (0, 0, 0));
    }

    #[test]
    fn a_call_past_the_bound_fails_at_once_when_nothing_was_answered_lately() {
        let window = Duration::from_secs(10);
        let slots = Slots::new(1, window);
        let held = slots.take(Duration::ZERO).unwrap();
        slots.lock().answered_at = Instant::now().checked_sub(2 * window).expect("up for 20 s");
        let started = Instant::now();
        assert!(slots.take(Duration::from_secs(60)).is_none());
        // Not the window (10 s) nor the longest wait (60 s): at once.
        assert!(started.elapsed() < Duration::from_secs(5), "waited {:?}", started.elapsed());
        assert_eq!(counts(&slots), (1, 0, 0));
        // A call that got no answer (a timeout) frees its slot without counting as an answer.
        let before = slots.lock().answered_at;
        drop(held);
        assert_eq!(slots.lock().answered_at, before);
        // One that got an answer does (taking the slot with none in flight restarted the clock).
        let mut answered = slots.take(Duration::ZERO).unwrap();
        let taken_at = slots.lock().answered_at;
        answered.answered = true;
        drop(answered);
        assert!(slots.lock().answered_at > taken_at);
    }

    #[test]
    fn the_first_burst_after_a_quiet_spell_waits_for_slots() {
        let window = Duration::from_secs(10);
        let slots = Slots::new(1, window);
        // The last answer is long past, and nothing is in flight.
        slots.lock().answered_at = Instant::now().checked_sub(2 * window).expect("up for 20 s");
        let first = slots.take(Duration::ZERO).unwrap();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| slots.take(Duration::from_secs(60)).is_some());
            until_waiting(&slots, 1);
            drop(first);
            assert!(
                waiter.join().unwrap(),
                "the first call after the quiet spell started the clock"
            );
        });
        assert_eq!(counts(&slots), (0, 0, 0));
    }

    #[test]
    fn a_waiting_call_gives_up_once_wechat_has_not_answered_for_the_window() {
        let slots = Slots::new(1, Duration::from_millis(50));
        let held = slots.take(Duration::ZERO).unwrap();
        slots.lock().answered_at = Instant::now();
        let started = Instant::now();
        assert!(slots.take(Duration::from_secs(60)).is_none());
        assert!(
            started.elapsed() >= Duration::from_millis(40),
            "gave up after {:?}",
            started.elapsed()
        );
        assert_eq!(counts(&slots), (1, 0, 0));
        // And never later than `longest`.
        slots.lock().answered_at = Instant::now() + Duration::from_secs(60);
        assert!(slots.take(Duration::from_millis(10)).is_none());
        drop(held);
        assert_eq!(counts(&slots), (0, 0, 0));
    }

    #[test]
    fn slots_stay_bounded_and_balanced_under_contention() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let slots = Slots::new(2, Duration::from_secs(60));
        let (holding, most, taken) =
            (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..500 {
                        let mut slot = slots.take(Duration::from_secs(60)).expect("a slot");
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        holding.fetch_sub(1, Ordering::SeqCst);
                        slot.answered = true;
                        taken.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(taken.into_inner(), 8 * 500);
        assert_eq!(most.into_inner(), 2, "never more than the bound, and the bound reached");
        assert_eq!(counts(&slots), (0, 0, 0));
    }

    #[test]
    fn query_values_are_percent_encoded_but_unreserved_bytes() {
        let mut url = String::from("?js_code=");
        push_query_value(&mut url, "a-Z_0.9~ &=+%#/?\u{e9}");
        assert_eq!(url, "?js_code=a-Z_0.9~%20%26%3D%2B%25%23%2F%3F%C3%A9");
        let decoded = crate::router::percent_decode(&url["?js_code=".len()..]);
        assert_eq!(decoded.as_deref(), Some("a-Z_0.9~ &=+%#/?\u{e9}"));
    }

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

    /// `ERRCODES` is the one list of the errcodes wxauth tells apart: the docs' tables, the
    /// metrics' help and each error's log text (error.rs's `Display`) say what it says.
    #[test]
    fn the_errcode_table_is_what_the_docs_and_the_log_say() {
        let api_doc = include_str!("../docs/api.md");
        let fake_doc = include_str!("../docs/fake-wechat.md");
        let operations_doc = include_str!("../docs/operations.md");
        let metrics = crate::metrics::Metrics::new().render(&["default"], None);
        let help = metrics
            .lines()
            .find(|line| line.starts_with("# HELP wxauth_wechat_calls_total "))
            .expect("help for the WeChat calls");
        for known in ERRCODES {
            let (errcode, outcome) = (known.errcode, known.outcome.name());
            let error = (known.error)(&known, "jscode2session");
            let row = format!("| {} | `{}` | {} |", error.code(), error.name(), error.status());
            let line = api_doc.lines().find(|line| line.starts_with(&row));
            let line = line.unwrap_or_else(|| panic!("docs/api.md has no row {row}"));
            assert!(line.contains(&format!("errcode {errcode}")), "docs/api.md: {line}");
            let row = format!("| `{}` | errcode {errcode} ({})", known.fake_code, known.meaning);
            assert!(
                fake_doc.lines().any(|line| line.starts_with(&row)),
                "docs/fake-wechat.md has no row {row}"
            );
            let label = format!("`{outcome}` ({errcode})");
            assert!(operations_doc.contains(&label), "docs/operations.md has no {label}");
            assert!(help.split([' ', '(', ',']).any(|word| word == outcome), "{help}");
            let log = error.to_string();
            assert!(
                log.contains(&format!("({errcode})"))
                    || log.contains(&format!("errcode {errcode} ")),
                "the log text names the errcode: {log}"
            );
            let alike = |same: &dyn Fn(&Errcode) -> bool| {
                ERRCODES.iter().filter(|other| same(other)).count()
            };
            assert_eq!(alike(&|other| other.errcode == errcode), 1, "{errcode} listed once");
            assert_eq!(
                alike(&|other| other.outcome == known.outcome),
                1,
                "{outcome} has one errcode"
            );
            assert_eq!(
                alike(&|other| other.fake_code == known.fake_code),
                1,
                "{}",
                known.fake_code
            );
            assert!(known.outcome.answered(), "an errcode is an answer");
        }
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
