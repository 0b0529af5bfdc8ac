//! The offline stand-in for WeChat's server API, served on loopback for demo mode and the tests
//! (`wxauth fake-wechat --listen ADDR` runs it alone). It answers `jscode2session`, `stable_token`
//! and `getuserphonenumber` the way WeChat does: HTTP 200 with an `errcode` on errors, single-use
//! codes, the same openid for a demo user from every code, a fresh session_key per exchange.
//!
//! It also plays the WeChat client runtime (`/fake/wx_login` hands out a code as `wx.login` does;
//! `/fake/encrypted_phone` and `/fake/phone_code` make the one-tap phone data, and
//! `/fake/encrypted_user_info` encrypted data that is not a phone) and can be told to misbehave,
//! by code or by switch; docs/fake-wechat.md lists both. The codes for the errcodes wxauth tells
//! apart, and the errcodes themselves, come from wechat.rs's `ERRCODES`. It never talks to
//! anything but its own clients.
//!
//! It keeps the last `LOG_ENTRIES` requests it was asked, with its answers (`/fake/log`, which the
//! demo page shows): the app secret, access tokens and session keys in them are redacted as they
//! are recorded, so the log never holds one.
//!
//! Demo users: a `wx.login` code `NAME` or `NAME.ANYTHING` logs in demo user NAME, whose openid is
//! derived from the appid and NAME, so `alice.1` and `alice.2` are the same person.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tiny_http::{Header, Request, Response, Server};

use crate::error::Fatal;
use crate::router::percent_decode;
use crate::wechat::{
    ACCESS_TOKEN_EXPIRED, ACCESS_TOKEN_INVALID, BUSY, CODE_USED, ERRCODES, INVALID_CODE,
};
use crate::wxcrypt;

/// Threads answering requests; a hanging request moves to a thread of its own.
const THREADS: usize = 4;

/// How long `fake-hang` hangs: longer than any sane client timeout.
const HANG: Duration = Duration::from_secs(60);

/// `wx.login` codes live five minutes, as WeChat's.
const CODE_LIFE: Duration = Duration::from_secs(300);

/// Access tokens live two hours, as WeChat's.
const TOKEN_LIFE: Duration = Duration::from_secs(7200);

/// Requests kept in the log `/fake/log` shows; older ones are forgotten.
const LOG_ENTRIES: usize = 256;

/// The longest body or answer text a log entry keeps.
const LOG_TEXT: usize = 2048;

/// Fields whose values are secret, in a query, a body or an answer: recorded as `<redacted>`.
const REDACTED: [&str; 3] = ["secret", "access_token", "session_key"];

/// Codes that make the fake misbehave, for `wx.login` codes and phone codes alike, besides each
/// errcode's own in `wechat::ERRCODES` (`fake-40029`: errcode 40029, and so on).
const MISBEHAVIOUR: &[(&str, &str)] = &[
    ("fake-errcode-N", "errcode N (any other number), with a fake errmsg"),
    ("fake-busy-once", "errcode -1 the first time this code is seen, then a normal answer"),
    ("fake-hang", "no answer for 60 seconds"),
    ("fake-garbage", "HTTP 200 with a body that is not JSON"),
    ("fake-500", "HTTP 500"),
];

#[derive(Default)]
struct State {
    /// Codes exchanged, oldest first; WeChat's codes live five minutes, so older ones are
    /// forgotten (a forgotten code would be refused as expired anyway).
    used_codes: HashSet<String>,
    used_order: std::collections::VecDeque<(String, Instant)>,
    /// openid → (appid, latest session_key).
    sessions: HashMap<String, (String, String)>,
    /// phone code → (appid for the watermark if not the caller's, phone number).
    phone_codes: HashMap<String, (Option<String>, String)>,
    /// Issued access tokens: when they expire and the appid they were issued to. A revoked token
    /// is removed.
    tokens: HashMap<String, (Instant, String)>,
    current_token: Option<String>,
    calls: HashMap<&'static str, u64>,
    seen_busy_once: HashSet<String>,
    /// The last `LOG_ENTRIES` requests and their answers, redacted, oldest first.
    log: std::collections::VecDeque<Value>,
    /// The number of the last request logged.
    logged: u64,
}

/// What the fake answers a request with.
enum Outcome {
    /// JSON, labelled `text/plain` as WeChat's.
    Json(u16, Value),
    /// A body that is not JSON.
    Text(u16, &'static str),
    /// Nothing for `HANG`, then errcode -1.
    Hang,
}

type Shared = Arc<Mutex<State>>;

/// A running fake WeChat.
pub(crate) struct FakeWeChat {
    pub(crate) address: SocketAddr,
    server: Arc<Server>,
}

impl FakeWeChat {
    /// Binds `listen` and starts answering in background threads.
    pub(crate) fn start(
        listen: impl std::net::ToSocketAddrs + std::fmt::Display,
    ) -> Result<FakeWeChat, Fatal> {
        let server = Server::http(&listen).map_err(|error| {
            Fatal::Other(format!("fake WeChat cannot listen on {listen}: {error}"))
        })?;
        let address = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| Fatal::Other("fake WeChat: not an IP listener".into()))?;
        let server = Arc::new(server);
        let state: Shared = Arc::default();
        for index in 0..THREADS {
            let (server, state) = (server.clone(), state.clone());
            thread::Builder::new()
                .name(format!("fake-wechat-{index}"))
                .spawn(move || {
                    while let Ok(request) = server.recv() {
                        answer(&state, request);
                    }
                })
                .map_err(Fatal::io("fake WeChat: cannot start a thread"))?;
        }
        Ok(FakeWeChat { address, server })
    }

    /// Stops accepting; threads blocked waiting for requests return.
    pub(crate) fn stop(&self) {
        for _ in 0..THREADS {
            self.server.unblock();
        }
    }
}

/// The openid WeChat would give demo user `name` in mini-program `appid`: 28 characters, stable.
pub(crate) fn demo_openid(appid: &str, name: &str) -> String {
    derived_id("openid", appid, name)
}

fn derived_id(kind: &str, scope: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("wxauth-fake:{kind}:{scope}:{name}").as_bytes());
    let prefix = if kind == "openid" { "o" } else { "u" };
    format!("{prefix}{}", &URL_SAFE_NO_PAD.encode(digest)[..27])
}

fn answer(state: &Shared, mut request: Request) {
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let query = parse_pairs(query);
    let mut body = String::new();
    let _ = request.as_reader().take(64 * 1024).read_to_string(&mut body);
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let outcome = outcome(state, path, &query, &body);
    if path != "/fake/log" {
        record(state, request.method().as_str(), path, &query, &body, &outcome);
    }
    match outcome {
        Outcome::Json(status, answer) => reply(request, status, &answer),
        Outcome::Text(status, text) => {
            let _ = request.respond(Response::from_string(text).with_status_code(status));
        }
        Outcome::Hang => {
            thread::spawn(move || {
                thread::sleep(HANG);
                reply(request, 200, &json!({"errcode": BUSY.errcode, "errmsg": "system error"}));
            });
        }
    }
}

fn outcome(state: &Shared, path: &str, query: &HashMap<String, String>, body: &Value) -> Outcome {
    // Every call to a WeChat API counts, whatever the answer, so tests can tell retries apart.
    let api = match path {
        "/sns/jscode2session" => Some("jscode2session"),
        "/cgi-bin/stable_token" => Some("stable_token"),
        "/wxa/business/getuserphonenumber" => Some("getuserphonenumber"),
        _ => None,
    };
    if let Some(api) = api {
        *lock(state).calls.entry(api).or_default() += 1;
    }

    // Misbehaviour by code applies to the WeChat APIs that take a code.
    let code = match path {
        "/sns/jscode2session" => query.get("js_code").cloned(),
        "/wxa/business/getuserphonenumber" => body["code"].as_str().map(str::to_string),
        _ => None,
    };
    if let Some(code) = code.as_deref() {
        // `fake-hang.1`, `fake-hang.2`, … behave as `fake-hang`, so each can be a fresh code.
        let kind = code.split('.').next().unwrap_or(code);
        match kind {
            "fake-hang" => return Outcome::Hang,
            "fake-garbage" => return Outcome::Text(200, "<html>502 Bad Gateway</html>"),
            "fake-500" => return Outcome::Text(500, "internal error"),
            _ => {}
        }
        let errcode = match kind {
            "fake-busy-once" => {
                let mut state = lock(state);
                state.seen_busy_once.insert(format!("{path}:{code}")).then_some(BUSY.errcode)
            }
            _ => match ERRCODES.iter().find(|known| known.fake_code == kind) {
                Some(known) => Some(known.errcode),
                None => kind.strip_prefix("fake-errcode-").and_then(|number| number.parse().ok()),
            },
        };
        if let Some(errcode) = errcode {
            return Outcome::Json(
                200,
                json!({"errcode": errcode, "errmsg": format!("fake errcode {errcode}")}),
            );
        }
    }

    let (status, answer) = match path {
        "/sns/jscode2session" => jscode2session(state, query),
        "/cgi-bin/stable_token" => stable_token(state, body),
        "/wxa/business/getuserphonenumber" => phone_number(state, query, body),
        "/fake/wx_login" => wx_login(query),
        "/fake/encrypted_phone" => encrypted_phone(state, query),
        "/fake/encrypted_user_info" => encrypted_user_info(state, query),
        "/fake/phone_code" => new_phone_code(state, query),
        "/fake/invalidate_access_token" => invalidate_token(state, query),
        "/fake/stats" => (200, json!(lock(state).calls)),
        "/fake/log" => requests_after(state, query),
        "/fake/" | "/fake" | "/" => (200, usage()),
        _ => (404, json!({"errcode": 404, "errmsg": "no such API in the fake WeChat"})),
    };
    Outcome::Json(status, answer)
}

/// Adds a request and its answer to the log, its secrets redacted.
fn record(
    state: &Shared,
    method: &str,
    path: &str,
    query: &HashMap<String, String>,
    body: &Value,
    outcome: &Outcome,
) {
    let mut query: serde_json::Map<String, Value> =
        query.iter().map(|(key, value)| (key.clone(), Value::String(value.clone()))).collect();
    redact(&mut query);
    let (status, answer) = match outcome {
        Outcome::Json(status, answer) => (json!(status), logged(answer)),
        Outcome::Text(status, text) => (json!(status), json!(text)),
        Outcome::Hang => (Value::Null, json!(format!("(no answer for {}s)", HANG.as_secs()))),
    };
    let mut state = lock(state);
    state.logged += 1;
    let entry = json!({
        "seq": state.logged,
        "at": crate::time::now(),
        "method": method,
        "path": path,
        "query": query,
        "body": logged(body),
        "status": status,
        "answer": answer,
    });
    if state.log.len() == LOG_ENTRIES {
        state.log.pop_front();
    }
    state.log.push_back(entry);
}

/// A body or answer as the log keeps it: secrets redacted, at most `LOG_TEXT` long.
fn logged(value: &Value) -> Value {
    let mut value = value.clone();
    if let Value::Object(object) = &mut value {
        redact(object);
    }
    let text = value.to_string();
    if text.len() <= LOG_TEXT {
        return value;
    }
    let cut: String = text.chars().take(LOG_TEXT).collect();
    Value::String(format!("{cut}…"))
}

fn redact(object: &mut serde_json::Map<String, Value>) {
    for key in REDACTED {
        if let Some(value) = object.get_mut(key) {
            *value = json!("<redacted>");
        }
    }
}

/// `/fake/log?after=N`: the logged requests numbered above N, oldest first.
fn requests_after(state: &Shared, query: &HashMap<String, String>) -> (u16, Value) {
    let after: u64 = query.get("after").and_then(|after| after.parse().ok()).unwrap_or(0);
    let state = lock(state);
    let entries: Vec<&Value> =
        state.log.iter().filter(|entry| entry["seq"].as_u64().unwrap_or(0) > after).collect();
    (200, json!({"entries": entries, "last": state.logged}))
}

/// `/fake/wx_login?user=NAME`: a fresh `wx.login` code for demo user NAME (or a misbehaviour
/// code), as the WeChat client hands one to the mini-program.
fn wx_login(query: &HashMap<String, String>) -> (u16, Value) {
    let user = query.get("user").map(String::as_str).unwrap_or("");
    let valid = !user.is_empty()
        && user.len() <= 64
        && user.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_'));
    if !valid {
        return (
            400,
            json!({"errcode": 41001, "errmsg": "user must be 1 to 64 letters, digits, - or _"}),
        );
    }
    let nonce: String =
        wxcrypt::random_key().chars().filter(char::is_ascii_alphanumeric).take(12).collect();
    (200, json!({"code": format!("{user}.{nonce}")}))
}

fn usage() -> Value {
    json!({
        "fake": "wxauth's offline stand-in for WeChat",
        "wx.login codes": "NAME or NAME.ANYTHING logs in demo user NAME; each code once",
        "misbehaviour codes": misbehaviour().map(|(code, what)| json!({"code": code, "what": what})).collect::<Vec<_>>(),
        "helpers": [
            "GET /fake/wx_login?user=NAME → a fresh wx.login code for demo user NAME (or a misbehaviour code)",
            "GET /fake/encrypted_phone?openid=…&phone=…[&appid=…] → encryptedData and iv under the user's latest session_key",
            "GET /fake/encrypted_user_info?openid=…[&appid=…] → encrypted user info (not a phone) under the user's latest session_key",
            "GET /fake/phone_code?phone=…[&appid=…] → a one-time phone code for getuserphonenumber",
            format!("POST /fake/invalidate_access_token?errcode={ACCESS_TOKEN_INVALID}|{ACCESS_TOKEN_EXPIRED} → the current access token is revoked or expired"),
            "GET /fake/stats → calls per WeChat API",
            "GET /fake/log[?after=N] → the last requests the fake was asked (numbered above N), secrets redacted",
        ],
    })
}

/// Every misbehaviour code and what it does: each errcode's own, then `MISBEHAVIOUR`.
fn misbehaviour() -> impl Iterator<Item = (&'static str, String)> {
    let errcodes = ERRCODES
        .iter()
        .map(|known| (known.fake_code, format!("errcode {} ({})", known.errcode, known.meaning)));
    errcodes.chain(MISBEHAVIOUR.iter().map(|(code, what)| (*code, what.to_string())))
}

fn jscode2session(state: &Shared, query: &HashMap<String, String>) -> (u16, Value) {
    let field = |name: &str| query.get(name).map(String::as_str).unwrap_or("");
    let (appid, secret, code) = (field("appid"), field("secret"), field("js_code"));
    if appid.is_empty() {
        return (200, json!({"errcode": 40013, "errmsg": "invalid appid"}));
    }
    if secret.is_empty() {
        return (200, json!({"errcode": 40125, "errmsg": "invalid appsecret"}));
    }
    if field("grant_type") != "authorization_code" {
        return (200, json!({"errcode": 40002, "errmsg": "invalid grant_type"}));
    }
    if code.is_empty() {
        return (200, json!({"errcode": 41008, "errmsg": "missing code"}));
    }
    let mut state = lock(state);
    let now = Instant::now();
    while let Some((old, when)) = state.used_order.front() {
        if now.duration_since(*when) < CODE_LIFE {
            break;
        }
        let old = old.clone();
        state.used_codes.remove(&old);
        state.used_order.pop_front();
    }
    if !state.used_codes.insert(code.to_string()) {
        return (200, json!({"errcode": CODE_USED.errcode, "errmsg": "code been used"}));
    }
    state.used_order.push_back((code.to_string(), now));
    let name = code.split('.').next().unwrap_or(code);
    let openid = demo_openid(appid, name);
    let session_key = wxcrypt::random_key();
    state.sessions.insert(openid.clone(), (appid.to_string(), session_key.clone()));
    // As WeChat does on success: no errcode at all.
    (
        200,
        json!({"openid": openid, "session_key": session_key, "unionid": derived_id("unionid", "", name)}),
    )
}

fn stable_token(state: &Shared, body: &Value) -> (u16, Value) {
    if body["grant_type"] != "client_credential" {
        return (200, json!({"errcode": 40002, "errmsg": "invalid grant_type"}));
    }
    if body["appid"].as_str().unwrap_or("").is_empty()
        || body["secret"].as_str().unwrap_or("").is_empty()
    {
        return (200, json!({"errcode": 40125, "errmsg": "invalid appid or secret"}));
    }
    let force = body["force_refresh"].as_bool().unwrap_or(false);
    let mut state = lock(state);
    let now = Instant::now();
    let current = state
        .current_token
        .clone()
        .filter(|token| state.tokens.get(token).is_some_and(|(expires, _)| *expires > now));
    let token = match current {
        Some(token) if !force => token,
        _ => {
            if let Some(old) = state.current_token.take() {
                state.tokens.remove(&old);
            }
            let token =
                format!("fake-access-token-{}", wxcrypt::random_key().replace(['+', '/', '='], ""));
            let appid = body["appid"].as_str().unwrap_or("").to_string();
            state.tokens.insert(token.clone(), (now + TOKEN_LIFE, appid));
            state.current_token = Some(token.clone());
            token
        }
    };
    let expires_in = state.tokens[&token].0.saturating_duration_since(now).as_secs();
    (200, json!({"access_token": token, "expires_in": expires_in}))
}

fn phone_number(state: &Shared, query: &HashMap<String, String>, body: &Value) -> (u16, Value) {
    let mut state = lock(state);
    let token = query.get("access_token").map(String::as_str).unwrap_or("");
    let caller_appid = match state.tokens.get(token) {
        None => {
            return (
                200,
                json!({"errcode": ACCESS_TOKEN_INVALID, "errmsg": "invalid credential, access_token is invalid"}),
            );
        }
        Some((expires, _)) if *expires <= Instant::now() => {
            return (
                200,
                json!({"errcode": ACCESS_TOKEN_EXPIRED, "errmsg": "access_token expired"}),
            );
        }
        Some((_, appid)) => appid.clone(),
    };
    let Some(code) = body["code"].as_str() else {
        return (200, json!({"errcode": 47001, "errmsg": "data format error"}));
    };
    let Some((appid, phone)) = state.phone_codes.remove(code) else {
        return (200, json!({"errcode": INVALID_CODE.errcode, "errmsg": "invalid code"}));
    };
    let appid = appid.unwrap_or(caller_appid);
    (
        200,
        json!({
            "errcode": 0,
            "errmsg": "ok",
            "phone_info": {
                "phoneNumber": phone,
                "purePhoneNumber": phone.trim_start_matches('+'),
                "countryCode": "86",
                "watermark": {"timestamp": crate::time::now(), "appid": appid},
            }
        }),
    )
}

fn encrypted_phone(state: &Shared, query: &HashMap<String, String>) -> (u16, Value) {
    let Some(phone) = query.get("phone") else {
        return (400, json!({"errcode": 41001, "errmsg": "openid and phone are required"}));
    };
    encrypted_for_user(state, query, |watermark| {
        json!({
            "phoneNumber": phone,
            "purePhoneNumber": phone.trim_start_matches('+'),
            "countryCode": "86",
            "watermark": watermark,
        })
    })
}

/// The user info `getUserInfo` hands out encrypted, shaped as in WeChat's own sample: genuine
/// data that is not a phone number.
fn encrypted_user_info(state: &Shared, query: &HashMap<String, String>) -> (u16, Value) {
    encrypted_for_user(state, query, |watermark| {
        json!({
            "openId": query.get("openid"),
            "nickName": "Band",
            "gender": 1,
            "city": "Guangzhou",
            "watermark": watermark,
        })
    })
}

/// `plaintext(watermark)` encrypted as WeChat does for the user `openid` names (under their
/// latest session_key), with the watermark of their app, or of `appid` when given.
fn encrypted_for_user(
    state: &Shared,
    query: &HashMap<String, String>,
    plaintext: impl FnOnce(Value) -> Value,
) -> (u16, Value) {
    let Some(openid) = query.get("openid") else {
        return (400, json!({"errcode": 41001, "errmsg": "openid is required"}));
    };
    let state = lock(state);
    let Some((session_appid, session_key)) = state.sessions.get(openid) else {
        return (
            400,
            json!({"errcode": 40003, "errmsg": "no session for this openid: log in first"}),
        );
    };
    let appid = query.get("appid").unwrap_or(session_appid);
    let plaintext = plaintext(json!({"timestamp": crate::time::now(), "appid": appid}));
    let mut iv = [0u8; 16];
    if getrandom::fill(&mut iv).is_err() {
        return (500, json!({"errcode": -1, "errmsg": "no randomness"}));
    }
    match wxcrypt::encrypt(session_key, &iv, plaintext.to_string().as_bytes()) {
        Ok(encrypted) => (
            200,
            json!({"encryptedData": encrypted, "iv": base64::engine::general_purpose::STANDARD.encode(iv)}),
        ),
        Err(_) => (500, json!({"errcode": -1, "errmsg": "cannot encrypt"})),
    }
}

fn new_phone_code(state: &Shared, query: &HashMap<String, String>) -> (u16, Value) {
    let Some(phone) = query.get("phone") else {
        return (400, json!({"errcode": 41001, "errmsg": "phone is required"}));
    };
    let appid = query.get("appid").cloned();
    let code = format!("phone-{}", wxcrypt::random_key().replace(['+', '/', '='], ""));
    lock(state).phone_codes.insert(code.clone(), (appid, phone.clone()));
    (200, json!({"code": code}))
}

fn invalidate_token(state: &Shared, query: &HashMap<String, String>) -> (u16, Value) {
    let mut state = lock(state);
    let Some(token) = state.current_token.clone() else {
        return (200, json!({"errcode": 0, "errmsg": "no token issued yet"}));
    };
    if query.get("errcode").and_then(|errcode| errcode.parse().ok()) == Some(ACCESS_TOKEN_EXPIRED) {
        // Expired: WeChat still recognises the token, but refuses it.
        if let Some((expires, _)) = state.tokens.get_mut(&token) {
            *expires = Instant::now();
        }
    } else {
        state.tokens.remove(&token);
        state.current_token = None;
    }
    (200, json!({"errcode": 0, "errmsg": "ok"}))
}

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn parse_pairs(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(key)?, percent_decode(value)?))
        })
        .collect()
}

fn reply(request: Request, status: u16, body: &Value) {
    // WeChat labels some JSON answers text/plain; the fake does too, so clients must cope.
    let header = Header::from_bytes("Content-Type", "text/plain").expect("static header");
    let response =
        Response::from_string(body.to_string()).with_status_code(status).with_header(header);
    let _ = request.respond(response);
}
