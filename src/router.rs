//! From an HTTP request to a handler call and back: `match (method, path)`, query and body parsing
//! (with the body limit), the `Authorization` header, the client address, and the one place where
//! an `Error` becomes the JSON envelope. Handlers in `api` never see tiny_http. `/healthz`,
//! `/readyz` and `/metrics` are answered here too, outside the API prefix and its envelope, and
//! the demo page's paths are handed to `demo` (which declines them unless the page is served).
//!
//! Each app (mini-program) has the whole API under its own prefix: `app` finds a request's app
//! by its path before anything else, for the worker to build the request's `Ctx` around; the
//! prefixes never overlap (config.rs), so a path is under at most one.

use std::net::IpAddr;

use serde::Serialize;
use serde_json::{Map, Value, json};
use tiny_http::Request;

use crate::api::{self, App, Ctx};
use crate::error::Error;
use crate::{demo, health, metrics};

/// The endpoints under the API prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    GetOpenidByCode,
    IsOpenidRegistered,
    Register,
    Login,
    Logout,
    Verify,
    Me,
}

/// A response, ready to be written by the server.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: String,
    /// Extra headers (`Allow`, `Retry-After`).
    pub(crate) headers: Vec<(&'static str, String)>,
    /// The error's name, for the access log.
    pub(crate) error: Option<&'static str>,
    /// The error's log text (never shown to the client).
    pub(crate) log: Option<String>,
}

/// The operator's endpoints, outside the API prefix: `/healthz`, `/readyz`, `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Healthz,
    Readyz,
    Metrics,
}

impl Operation {
    /// Every operator's endpoint (the metrics label each by `name`, after the API's routes).
    pub(crate) const ALL: [Operation; 3] =
        [Operation::Healthz, Operation::Readyz, Operation::Metrics];

    /// The path after its `/`.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Operation::Healthz => "healthz",
            Operation::Readyz => "readyz",
            Operation::Metrics => "metrics",
        }
    }

    /// The operator's endpoint at `path` (without its query), if it is one.
    pub(crate) fn of(path: &str) -> Option<Operation> {
        let name = path.strip_prefix('/')?;
        Operation::ALL.into_iter().find(|operation| operation.name() == name)
    }
}

impl Route {
    /// Every endpoint under the prefix (the metrics label each by `name`).
    pub(crate) const ALL: [Route; 7] = [
        Route::GetOpenidByCode,
        Route::IsOpenidRegistered,
        Route::Register,
        Route::Login,
        Route::Logout,
        Route::Verify,
        Route::Me,
    ];

    /// The path after the prefix.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Route::GetOpenidByCode => "get_openid_by_code",
            Route::IsOpenidRegistered => "is_openid_registered",
            Route::Register => "register",
            Route::Login => "login",
            Route::Logout => "logout",
            Route::Verify => "verify",
            Route::Me => "me",
        }
    }

    fn method(self) -> &'static str {
        match self {
            Route::GetOpenidByCode | Route::IsOpenidRegistered | Route::Verify | Route::Me => "GET",
            Route::Register | Route::Login | Route::Logout => "POST",
        }
    }
}

/// Finds the route for a method and path (the path without its query).
pub(crate) fn route(prefix: &str, method: &str, path: &str) -> Result<Route, Error> {
    let rest = path.strip_prefix(prefix).ok_or(Error::NotFound)?;
    let name = rest.strip_suffix('/').unwrap_or(rest);
    let route = Route::ALL.into_iter().find(|route| route.name() == name).ok_or(Error::NotFound)?;
    let allowed = route.method();
    // HEAD is answered like GET by tiny_http (without the body).
    if method == allowed || (allowed == "GET" && method == "HEAD") {
        Ok(route)
    } else {
        Err(Error::MethodNotAllowed(allowed))
    }
}

/// The app whose prefix `path` is under; the default app (the first) for any other path, such
/// as the operator's endpoints and the demo page.
pub(crate) fn app<'a>(apps: &'a [App], path: &str) -> &'a App {
    let path = path.split('?').next().unwrap_or(path);
    apps.iter().find(|app| path.starts_with(&app.prefix)).unwrap_or(&apps[0])
}

/// Handles one request: routes it, reads its input, calls the handler, and builds the reply.
pub(crate) fn handle(ctx: &Ctx, request: &mut Request) -> Reply {
    let (path, query) = request.url().split_once('?').unwrap_or((request.url(), ""));
    if let Some(reply) = operations(ctx, request.method().as_str(), path) {
        return reply;
    }
    if let Some(reply) = demo::handle(ctx, request.method().as_str(), path, query) {
        return reply;
    }
    dispatch(ctx, request).unwrap_or_else(|error| failure(&error))
}

fn dispatch(ctx: &Ctx, request: &mut Request) -> Result<Reply, Error> {
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let route = route(&ctx.app.prefix, request.method().as_str(), path)?;
    match route {
        Route::GetOpenidByCode => {
            let code = query_value(query, "code")?;
            success(&api::get_openid_by_code(ctx, code.as_deref())?)
        }
        Route::IsOpenidRegistered => {
            let openid = query_value(query, "openid")?;
            success(&api::is_openid_registered(ctx, openid.as_deref())?)
        }
        Route::Register => {
            let body = read_body(request)?.try_into()?;
            success(&api::register(ctx, header(request, "Authorization").as_deref(), body)?)
        }
        Route::Login => {
            let body = read_body(request)?.try_into()?;
            success(&api::login(ctx, header(request, "Authorization").as_deref(), body)?)
        }
        Route::Verify => {
            // No body is read: nginx's auth_request subrequests have none.
            let authorization = header(request, "Authorization");
            match api::verify(ctx, authorization.as_deref()) {
                Ok(answer) => {
                    let mut reply = success(&answer)?;
                    reply.headers.push((USER_ID_HEADER, answer.user_id.to_string()));
                    Ok(reply)
                }
                Err(error) if error.is_authentication() => Ok(unauthorized(&error)),
                Err(error) => Err(error),
            }
        }
        Route::Me => success(&api::me(ctx, header(request, "Authorization").as_deref())?),
        Route::Logout => {
            // The body, if any, must parse (JSON or a form) and is then ignored.
            read_body(request)?;
            success(&api::logout(ctx, header(request, "Authorization").as_deref())?)
        }
    }
}

/// The operator's endpoints, outside the API prefix (so they stay put when `prefix` changes):
/// `None` for any other path.
fn operations(ctx: &Ctx, method: &str, path: &str) -> Option<Reply> {
    let operation = Operation::of(path)?;
    if method != "GET" && method != "HEAD" {
        return Some(failure(&Error::MethodNotAllowed("GET")));
    }
    Some(match operation {
        Operation::Healthz => plain_reply(200, health::health().to_string(), JSON),
        Operation::Readyz => {
            // The default app's WeChat client, as with one app.
            let wechat = &ctx.apps[0].wechat;
            let readiness = health::readiness(ctx.db, wechat, ctx.config.demo_mode(), ctx.now);
            let mut reply = plain_reply(
                if readiness.ready { 200 } else { 503 },
                readiness.body.to_string(),
                JSON,
            );
            if let Some(reason) = readiness.reason {
                (reply.error, reply.log) = (Some("not_ready"), Some(reason));
            }
            reply
        }
        Operation::Metrics => {
            let apps: Vec<&str> = ctx.apps.iter().map(|app| app.name.as_str()).collect();
            let body = metrics::scrape(ctx.db, &ctx.config.database, &apps);
            plain_reply(200, body, "text/plain; version=0.0.4; charset=utf-8")
        }
    })
}

const JSON: &str = "application/json; charset=utf-8";

/// A reply that is not the envelope.
fn plain_reply(status: u16, body: String, content_type: &'static str) -> Reply {
    let headers = vec![("Content-Type", content_type.to_string())];
    Reply { status, body, headers, error: None, log: None }
}

/// The success envelope around one result object, serialized straight into the body (no
/// intermediate `Value`: the account object alone has 27 fields).
pub(crate) fn success(results: &impl Serialize) -> Result<Reply, Error> {
    const START: &str = r#"{"code":0,"detail":"成功","results":["#;
    let mut body = Vec::with_capacity(1024);
    body.extend_from_slice(START.as_bytes());
    serde_json::to_writer(&mut body, results)
        .map_err(|error| Error::Internal(format!("serialising an answer: {error}")))?;
    body.extend_from_slice(b"]}");
    // serde_json writes UTF-8 only.
    let body = String::from_utf8(body).expect("serde_json writes UTF-8");
    Ok(Reply { status: 200, body, headers: Vec::new(), error: None, log: None })
}

/// The failure envelope; the only place an `Error` becomes a response.
pub(crate) fn failure(error: &Error) -> Reply {
    let body = json!({
        "code": error.code(),
        "detail": error.detail(),
        "results": [],
        "error": error.name(),
    });
    let mut headers = Vec::new();
    match error {
        Error::MethodNotAllowed(allow) => headers.push(("Allow", allow.to_string())),
        Error::RateLimited { retry_after } => {
            headers.push(("Retry-After", retry_after.to_string()))
        }
        _ => {}
    }
    Reply {
        status: error.status(),
        body: body.to_string(),
        headers,
        error: Some(error.name()),
        log: Some(error.to_string()),
    }
}

/// The header a successful `verify` names the token's account in, for nginx's
/// `auth_request_set $user $upstream_http_x_wxauth_user_id`.
pub(crate) const USER_ID_HEADER: &str = "X-Wxauth-User-Id";

/// A failure of authentication answered with 401 rather than the API's usual 403: `verify`'s
/// answers, because nginx's `auth_request` understands only 2xx, 401 and 403 and passes a 401
/// on to the client as "authenticate first". It carries the challenge RFC 6750 asks of a 401.
pub(crate) fn unauthorized(error: &Error) -> Reply {
    let mut reply = failure(error);
    reply.status = 401;
    let challenge = match error {
        // RFC 6750 §3.1: no error code when the request carried no credentials at all.
        Error::NotAuthenticated => r#"Bearer realm="wxauth""#,
        _ => r#"Bearer realm="wxauth", error="invalid_token""#,
    };
    reply.headers.push(("WWW-Authenticate", challenge.to_string()));
    reply
}

/// A header's value, if present and valid text.
pub(crate) fn header(request: &Request, name: &str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|header| header.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|header| header.value.as_str().to_string())
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the last address in
/// `X-Forwarded-For` that is not itself a trusted proxy. Untrusted peers' headers are ignored.
pub(crate) fn client_address(
    peer: IpAddr,
    forwarded_for: Option<&str>,
    trusted: &[IpAddr],
) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let Some(chain) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in chain.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(address) => {
                client = address;
                if !trusted.contains(&address) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// The first value of a query parameter, percent-decoded; absent is `None`.
pub(crate) fn query_value(query: &str, name: &str) -> Result<Option<String>, Error> {
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(key).as_deref() == Some(name) {
            return percent_decode(value)
                .map(Some)
                .ok_or_else(|| Error::InvalidParameter(format!("{name} 不是有效的 URL 编码")));
        }
    }
    Ok(None)
}

/// Decodes `%XX` escapes and `+` (as a space), as browsers and WeChat's `wx.request` encode
/// queries and forms; `None` for a broken escape or text that is not UTF-8.
pub(crate) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let hex = bytes.get(index + 1..index + 3)?;
                // from_str_radix alone would take "+1" (found by fuzzing): two hex digits only.
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                decoded.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                index += 3;
            }
            b'+' => {
                decoded.push(b' ');
                index += 1;
            }
            byte => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}

/// Reads the body as a JSON object or an urlencoded form; an empty body is an empty object.
/// tiny_http's connection thread has already read it whole, within `max_body_bytes` (a larger one
/// was refused with 413 there) and `request_timeout_ms`, so this never waits for the client.
fn read_body(request: &mut Request) -> Result<Map<String, Value>, Error> {
    let content_type = header(request, "Content-Type").unwrap_or_default().to_ascii_lowercase();
    let mut bytes = Vec::with_capacity(request.body_length().unwrap_or(0));
    match request.as_reader().read_to_end(&mut bytes) {
        Ok(_) => parse_body(&content_type, &bytes),
        Err(error) => Err(Error::InvalidParameter(format!("请求体读取失败: {}", error.kind()))),
    }
}

pub(crate) fn parse_body(content_type: &str, bytes: &[u8]) -> Result<Map<String, Value>, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::InvalidParameter("请求体不是 UTF-8 文本".into()))?;
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    match media_type {
        "" | "application/json" | "text/json" => parse_json_object(text),
        "application/x-www-form-urlencoded" => {
            if text.trim_start().starts_with('{') {
                // `curl -d '{…}'` sends JSON labelled as a form; say so rather than guess.
                return Err(Error::InvalidParameter(
                    "请求体是 JSON, 请设置 Content-Type: application/json".into(),
                ));
            }
            let mut form = Map::new();
            for pair in text.split('&').filter(|pair| !pair.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                let key = percent_decode(key);
                let value = percent_decode(value);
                let (Some(key), Some(value)) = (key, value) else {
                    return Err(Error::InvalidParameter("表单编码不正确".into()));
                };
                // Refused as in JSON: which of two values counts is a guess parsers disagree on.
                if form.insert(key, Value::String(value)).is_some() {
                    return Err(duplicate_key());
                }
            }
            Ok(form)
        }
        other => {
            // The client's own text, shortened and kept printable, as it reaches the log too.
            let shown: String =
                other.chars().take(64).filter(|character| !character.is_control()).collect();
            Err(Error::InvalidParameter(format!(
                "不支持的 Content-Type {shown}, 请使用 application/json"
            )))
        }
    }
}

/// How deeply a JSON body may nest. The API's bodies are flat objects; the limit keeps a hostile
/// body from costing recursion.
const MAX_JSON_DEPTH: usize = 8;

/// A JSON object without duplicate keys (which parsers disagree on: first or last wins) and
/// nested at most `MAX_JSON_DEPTH` deep.
fn parse_json_object(text: &str) -> Result<Map<String, Value>, Error> {
    if json_depth(text) > MAX_JSON_DEPTH {
        return Err(Error::InvalidParameter(format!("JSON 嵌套超过 {MAX_JSON_DEPTH} 层")));
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let object = match serde::Deserialize::deserialize(&mut deserializer) {
        Ok(UniqueKeys(object)) => object,
        Err(error) if error.to_string().starts_with(DUPLICATE_KEY) => return Err(duplicate_key()),
        Err(error) if error.is_data() => {
            return Err(Error::InvalidParameter("请求体须为 JSON 对象".into()));
        }
        Err(_) => return Err(Error::InvalidParameter("请求体不是有效的 JSON".into())),
    };
    deserializer.end().map_err(|_| Error::InvalidParameter("请求体不是有效的 JSON".into()))?;
    Ok(object)
}

/// The deepest nesting of arrays and objects in `text`, outside strings.
fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

const DUPLICATE_KEY: &str = "duplicate key";

/// The refusal of a body, JSON or form, that names a key twice.
fn duplicate_key() -> Error {
    Error::InvalidParameter("请求体中有重复的键".into())
}

/// A top-level JSON object whose keys must be unique.
struct UniqueKeys(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueKeys;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueKeys, A::Error> {
                let mut object = Map::new();
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    if object.contains_key(&key) {
                        return Err(serde::de::Error::custom(DUPLICATE_KEY));
                    }
                    object.insert(key, value);
                }
                Ok(UniqueKeys(object))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "/miniprog/wx_auth/";

    #[test]
    fn routes_with_and_without_trailing_slash() {
        for (method, path, expected) in [
            ("GET", "/miniprog/wx_auth/get_openid_by_code", Route::GetOpenidByCode),
            ("GET", "/miniprog/wx_auth/get_openid_by_code/", Route::GetOpenidByCode),
            ("GET", "/miniprog/wx_auth/is_openid_registered", Route::IsOpenidRegistered),
            ("POST", "/miniprog/wx_auth/register/", Route::Register),
            ("POST", "/miniprog/wx_auth/login", Route::Login),
            ("HEAD", "/miniprog/wx_auth/is_openid_registered", Route::IsOpenidRegistered),
            ("GET", "/miniprog/wx_auth/verify", Route::Verify),
            ("HEAD", "/miniprog/wx_auth/verify/", Route::Verify),
            ("GET", "/miniprog/wx_auth/me", Route::Me),
        ] {
            assert_eq!(route(PREFIX, method, path).unwrap(), expected, "{method} {path}");
        }
    }

    #[test]
    fn unknown_paths_and_wrong_methods() {
        for path in [
            "/",
            "/miniprog/wx_auth/",
            "/miniprog/wx_auth/logins",
            "/miniprog/wx_auth/login//",
            "/login",
        ] {
            assert!(matches!(route(PREFIX, "POST", path), Err(Error::NotFound)), "{path}");
        }
        assert!(matches!(
            route(PREFIX, "GET", "/miniprog/wx_auth/login"),
            Err(Error::MethodNotAllowed("POST"))
        ));
        assert!(matches!(
            route(PREFIX, "POST", "/miniprog/wx_auth/get_openid_by_code"),
            Err(Error::MethodNotAllowed("GET"))
        ));
    }

    #[test]
    fn queries_decode() {
        assert_eq!(query_value("code=abc&x=1", "code").unwrap().as_deref(), Some("abc"));
        assert_eq!(query_value("x=1&code=a%2Bb+c", "code").unwrap().as_deref(), Some("a+b c"));
        assert_eq!(query_value("x=1", "code").unwrap(), None);
        assert_eq!(query_value("code", "code").unwrap().as_deref(), Some(""));
        assert!(query_value("code=%zz", "code").is_err());
        assert!(query_value("code=%ff", "code").is_err());
        assert!(query_value("code=%+1", "code").is_err());
        assert!(query_value("code=%-1", "code").is_err());
    }

    #[test]
    fn bodies_parse_as_json_or_form() {
        let json = parse_body("application/json; charset=utf-8", br#"{"openid": "o1"}"#).unwrap();
        assert_eq!(json["openid"], "o1");
        let form =
            parse_body("application/x-www-form-urlencoded", b"openid=o1&wx_gender=1").unwrap();
        assert_eq!(form["wx_gender"], "1");
        assert!(parse_body("", b"  ").unwrap().is_empty());
        assert!(parse_body("", b"[1]").is_err());
        assert!(parse_body("", b"{").is_err());
        assert!(parse_body("", b"\xff\xfe").is_err());
        assert!(parse_body("text/xml", b"<a/>").is_err());
        assert!(parse_body("", br#"{"openid": "a", "openid": "b"}"#).is_err());
        assert!(
            parse_body("", br#"{"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}}"#)
                .is_err()
        );
        assert!(parse_body("", br#"{"a": "[[[[[[[[[[[[{{{{{{{{"}"#).is_ok());
        assert!(parse_body("", br#"{"a": 1} {"b": 2}"#).is_err());
        assert!(parse_body("", br#"{"a": "\"}"}"#).is_ok());
    }

    /// Regression: a form's repeated key was taken first-wins, while JSON's is refused.
    #[test]
    fn a_repeated_form_key_is_refused_as_a_repeated_json_key_is() {
        const FORM: &str = "application/x-www-form-urlencoded";
        let detail = |result: Result<Map<String, Value>, Error>| match result {
            Err(Error::InvalidParameter(detail)) => detail,
            other => panic!("{other:?}"),
        };
        let json = detail(parse_body("", br#"{"openid": "a", "openid": "b"}"#));
        assert_eq!(detail(parse_body(FORM, b"openid=a&openid=b")), json);
        assert_eq!(detail(parse_body(FORM, b"openid=a&wx_city=x&openid=a")), json);
        // The same key however it is encoded.
        assert_eq!(detail(parse_body(FORM, b"openid=a&open%69d=b")), json);
        assert_eq!(detail(parse_body(FORM, b"openid&openid=")), json);
        let form = parse_body(FORM, b"openid=a&&wx_city=b&").unwrap();
        assert_eq!((form["openid"].as_str(), form["wx_city"].as_str()), (Some("a"), Some("b")));
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let trusted = [proxy];
        assert_eq!(client_address(stranger, Some("198.51.100.1"), &trusted), stranger);
        assert_eq!(
            client_address(proxy, Some("198.51.100.1, 198.51.100.2"), &trusted),
            "198.51.100.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_address(proxy, Some("198.51.100.1, 127.0.0.1"), &trusted),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_address(proxy, Some("garbage"), &trusted), proxy);
        assert_eq!(client_address(proxy, None, &trusted), proxy);
    }

    #[test]
    fn failures_carry_the_envelope_and_headers() {
        let reply = failure(&Error::MethodNotAllowed("POST"));
        assert_eq!(reply.status, 405);
        assert_eq!(reply.headers, vec![("Allow", "POST".to_string())]);
        let body: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body["error"], "method_not_allowed");
        assert_eq!(body["results"], json!([]));
        let reply = failure(&Error::Internal("database: secret table".into()));
        assert!(!reply.body.contains("secret table"));
    }

    #[test]
    fn unauthorized_is_the_failure_envelope_with_401_and_a_challenge() {
        for (error, challenge) in [
            (Error::NotAuthenticated, r#"Bearer realm="wxauth""#),
            (Error::TokenExpired, r#"Bearer realm="wxauth", error="invalid_token""#),
        ] {
            let (forbidden, reply) = (failure(&error), unauthorized(&error));
            assert_eq!((forbidden.status, reply.status), (403, 401));
            assert_eq!(reply.body, forbidden.body);
            assert_eq!(reply.error, Some(error.name()));
            assert_eq!(reply.headers, vec![("WWW-Authenticate", challenge.to_string())]);
        }
    }
}
