//! `POST login` as a mini-program and its operator see it: the openid login policies, profile
//! fields, tokens (their checks, their structure, the kept secret), login bookkeeping, the client
//! address behind a trusted proxy, rate limiting, request bodies and concurrent first logins.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use rusqlite::OptionalExtension;
use rusqlite::types::ValueRef;
use serde_json::{Map, Value, json};
use sha2::Sha256;

use crate::harness::{Answer, TempDir, Wxauth, agent, fresh_code, refused_start, send};

/// A JWT secret of more than 32 bytes with non-ASCII characters, so that a check with it also
/// shows the key is the string's UTF-8 bytes.
pub(crate) const SECRET: &str = "密钥-wxauth-login-tests-0123456789abcdef";
pub(crate) const OTHER_SECRET: &str = "another-secret-for-wxauth-login-tests-0123";

type HmacSha256 = Hmac<Sha256>;

/// The token's header text, claims, and whether its HS256 signature verifies with `secret` (as
/// UTF-8 bytes), checked with the hmac crate directly rather than wxauth's own code:
/// `{"valid": bool, "header": "<header JSON text>", "claims": {…}}`.
pub(crate) fn inspect_token(token: &str, secret: &str) -> Value {
    let segments: Vec<&str> = token.split('.').collect();
    assert_eq!(segments.len(), 3, "{token}");
    let decode = |segment: &str| URL_SAFE_NO_PAD.decode(segment).expect("base64url segment");
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{}.{}", segments[0], segments[1]).as_bytes());
    let valid = mac.verify_slice(&decode(segments[2])).is_ok();
    json!({
        "valid": valid,
        "header": String::from_utf8(decode(segments[0])).unwrap(),
        "claims": serde_json::from_slice::<Value>(&decode(segments[1])).unwrap(),
    })
}

/// The `kid` wxauth gives a secret: the first 8 bytes of its SHA-256, as hex.
pub(crate) fn key_id(secret: &str) -> String {
    use sha2::Digest;
    Sha256::digest(secret.as_bytes())[..8].iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Signs the claims with `secret`, as any HS256 JWT library would.
pub(crate) fn sign_token(secret: &str, claims: &Value) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Claims as wxauth writes them with the default issuer and audience, for account `sub`.
pub(crate) fn default_claims(sub: &str) -> Value {
    let now = unix_now();
    json!({
        "iss": "wxauth", "aud": "miniprog", "sub": sub, "iat": now, "exp": now + 3600,
        "nickname": null, "scopes": ["open"],
    })
}

pub(crate) fn jwt(token: &str) -> String {
    format!("jwt {token}")
}

pub(crate) fn token_of(results: &Value) -> String {
    results["token"].as_str().unwrap_or_else(|| panic!("no token in {results}")).to_string()
}

pub(crate) fn login_by_token(server: &Wxauth, token: &str) -> Answer {
    server.post_with("login", &json!({}), &[("Authorization", &jwt(token))])
}

/// The openid of demo user `name`, freshly returned by `get_openid_by_code`.
fn fresh_openid(server: &Wxauth, name: &str) -> String {
    server.openid_for(&fresh_code(name))["openid"].as_str().unwrap().to_string()
}

/// The account row for `openid`, every column, as JSON; `None` when there is none.
fn row(server: &Wxauth, openid: &str) -> Option<Value> {
    let database = server.database();
    let mut statement = database.prepare("SELECT * FROM accounts WHERE wx_openid = ?1").unwrap();
    let names: Vec<String> = statement.column_names().map(|name| name.to_string()).collect();
    statement
        .query_row([openid], |row| {
            let mut object = Map::new();
            for (index, name) in names.iter().enumerate() {
                let value = match row.get_ref(index)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(integer) => json!(integer),
                    ValueRef::Real(real) => json!(real),
                    ValueRef::Text(text) => json!(String::from_utf8_lossy(text)),
                    ValueRef::Blob(blob) => json!(blob),
                };
                object.insert(name.clone(), value);
            }
            Ok(Value::Object(object))
        })
        .optional()
        .unwrap()
}

fn account_count(server: &Wxauth) -> i64 {
    server.database().query_row("SELECT count(*) FROM accounts", [], |row| row.get(0)).unwrap()
}

/// Polls `check` for up to about two seconds (writes that complete after the answer).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !check() {
        assert!(Instant::now() < deadline, "not within 2 s: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops `server` with SIGTERM (it must exit 0) and starts a new one on the same directory and
/// database with `env`.
pub(crate) fn restart(mut server: Wxauth, env: &[(&str, &str)]) -> Wxauth {
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}: {}", server.stderr());
    let dir = std::mem::replace(&mut server.dir, TempDir::new());
    drop(server);
    Wxauth::start_in(dir, env)
}

// 1. The openid login policies.

#[test]
fn recent_code_allows_an_openid_just_returned_by_get_openid_by_code() {
    let server = Wxauth::start(&[]);
    let openid = fresh_openid(&server, "policy-recent");
    let login = server.post("login", &json!({ "openid": openid }));
    let account = &login.result()["account"];
    assert_eq!(account["wx_openid"], openid);
    assert_eq!(row(&server, &openid).unwrap()["id"], account["id"]);
}

#[test]
fn recent_code_refuses_an_openid_never_exchanged() {
    let server = Wxauth::start(&[]);
    // A real demo user's openid, learned some other way: never returned to this client.
    let openid = {
        let other = Wxauth::start(&[]);
        fresh_openid(&other, "policy-never")
    };
    server.post("login", &json!({ "openid": openid })).assert_error(403, "openid_login_refused");
    server
        .post("login", &json!({"openid": "oNeverExchangedOpenid0000000", "wx_nickname": "x"}))
        .assert_error(403, "openid_login_refused");
    assert_eq!(account_count(&server), 0, "a refused login creates no account");
}

#[test]
fn recent_code_refuses_an_openid_after_the_window() {
    let server = Wxauth::start(&[("WXAUTH_OPENID_LOGIN_WINDOW", "1")]);
    let allowed = fresh_openid(&server, "policy-window-allowed");
    server.post("login", &json!({ "openid": allowed })).result();
    let late = fresh_openid(&server, "policy-window-late");
    std::thread::sleep(Duration::from_secs(2));
    server.post("login", &json!({ "openid": late })).assert_error(403, "openid_login_refused");
    assert!(row(&server, &late).is_none(), "no account for the refused openid");
    // A new code opens the window again.
    assert_eq!(fresh_openid(&server, "policy-window-late"), late);
    server.post("login", &json!({ "openid": late })).result();
}

#[test]
fn session_key_policy_needs_expose_session_key_to_start() {
    let (status, stdout, stderr) =
        refused_start(&TempDir::new(), &[("WXAUTH_OPENID_LOGIN", "session_key")]);
    assert!(!status.success(), "{status:?}");
    assert!(stdout.is_empty(), "nothing announced: {stdout}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("expose_session_key"), "{stderr}");
}

#[test]
fn session_key_policy_wants_the_matching_session_key() {
    let server = Wxauth::start(&[
        ("WXAUTH_OPENID_LOGIN", "session_key"),
        ("WXAUTH_EXPOSE_SESSION_KEY", "true"),
    ]);
    let first = server.openid_for(&fresh_code("policy-key"));
    let openid = first["openid"].as_str().unwrap().to_string();
    let old_key = first["session_key"].as_str().expect("session_key exposed").to_string();
    let second = server.openid_for(&fresh_code("policy-key"));
    assert_eq!(second["openid"], openid);
    let key = second["session_key"].as_str().expect("session_key exposed").to_string();
    assert_ne!(key, old_key, "every exchange gives a fresh session_key");

    server.post("login", &json!({ "openid": openid })).assert_error(403, "openid_login_refused");
    server
        .post("login", &json!({"openid": openid, "session_key": "d3Jvbmcga2V5IDEyMzQ1Ng=="}))
        .assert_error(403, "openid_login_refused");
    server
        .post("login", &json!({"openid": openid, "session_key": old_key}))
        .assert_error(403, "openid_login_refused");
    assert!(row(&server, &openid).is_none(), "refused logins create no account");

    let login = server.post("login", &json!({"openid": openid, "session_key": key}));
    let account = login.result()["account"].clone();
    assert_eq!(account["wx_openid"], openid);
    assert_eq!(row(&server, &openid).unwrap()["id"], account["id"]);
}

#[test]
fn open_policy_logs_in_any_well_formed_openid() {
    let server = Wxauth::start(&[("WXAUTH_OPENID_LOGIN", "open")]);
    let openid = "oAnyWellFormed-openid_0123456";
    let login = server.post("login", &json!({ "openid": openid }));
    let results = login.result();
    assert_eq!(results["account"]["wx_openid"], openid);
    assert_eq!(results["account"]["username"], openid);
    assert_eq!(results["account"]["is_register"], false);
    let stored = row(&server, openid).expect("the account was created");
    assert_eq!(stored["id"], results["account"]["id"]);
    assert_eq!(stored["username"], openid);
    assert_eq!(stored["is_register"], 0);
    assert_eq!(stored["wx_appid"], "wxdemo");
    // Not well formed: refused even when open, and nothing written.
    for bad in ["o' OR 1=1", &"o".repeat(65), "o/../x"] {
        server.post("login", &json!({ "openid": bad })).assert_error(403, "invalid_parameter");
    }
    assert_eq!(account_count(&server), 1);
}

#[test]
fn off_policy_refuses_openids_but_tokens_still_work() {
    let server = Wxauth::start(&[("WXAUTH_OPENID_LOGIN", "open")]);
    let (openid, login) = server.login_as("policy-off");
    let token = token_of(&login);
    let id = login["account"]["id"].clone();

    let server = restart(server, &[("WXAUTH_OPENID_LOGIN", "off")]);
    // Even fresh from get_openid_by_code, a bare openid is refused.
    let exchanged = server.openid_for(&fresh_code("policy-off"));
    assert_eq!(exchanged["openid"], openid);
    server.post("login", &json!({ "openid": openid })).assert_error(403, "openid_login_refused");
    server
        .post_with("login", &json!({ "openid": openid }), &[("Authorization", "jwt not.a.token")])
        .assert_error(403, "openid_login_refused");
    let stranger = fresh_openid(&server, "policy-off-stranger");
    server.post("login", &json!({ "openid": stranger })).assert_error(403, "openid_login_refused");
    assert!(row(&server, &stranger).is_none());
    assert_eq!(account_count(&server), 1);

    // Tokens: the one from before the restart, and the one get_openid_by_code gives.
    assert_eq!(login_by_token(&server, &token).result()["account"]["id"], id);
    let from_code = token_of(&exchanged);
    assert_eq!(login_by_token(&server, &from_code).result()["account"]["id"], id);
}

// 2. Profile fields.

#[test]
fn login_creates_the_account_once_and_updates_the_given_fields() {
    let server = Wxauth::start(&[]);
    let openid = fresh_openid(&server, "profile");
    let first = server
        .post(
            "login",
            &json!({
                "openid": openid, "wx_nickname": "小明", "wx_avatar": "https://example.com/a.png",
                "wx_gender": 1, "wx_country": "China", "wx_province": "Guangdong",
                "wx_city": "Shenzhen", "phone": "13900139000",
            }),
        )
        .result()
        .clone();
    let account = &first["account"];
    for (key, value) in [
        ("wx_nickname", json!("小明")),
        ("wx_avatar", json!("https://example.com/a.png")),
        ("wx_gender", json!(1)),
        ("wx_country", json!("China")),
        ("wx_province", json!("Guangdong")),
        ("wx_city", json!("Shenzhen")),
        ("phone", json!("13900139000")),
    ] {
        assert_eq!(account[key], value, "answer {key}");
        assert_eq!(row(&server, &openid).unwrap()[key], value, "database {key}");
    }

    // Only some fields: the others stay.
    let second = server
        .post("login", &json!({"openid": openid, "wx_city": "Guangzhou", "wx_nickname": ""}))
        .result()
        .clone();
    assert_eq!(second["account"]["id"], account["id"], "the same account");
    let stored = row(&server, &openid).unwrap();
    assert_eq!(stored["wx_city"], "Guangzhou");
    for key in ["wx_nickname", "wx_avatar", "wx_gender", "wx_country", "wx_province", "phone"] {
        assert_eq!(second["account"][key], account[key], "answer keeps {key}");
        assert_eq!(stored[key], account[key], "database keeps {key}");
    }

    for gender in [0, 2, 1] {
        let answer = server.post("login", &json!({"openid": openid, "wx_gender": gender}));
        assert_eq!(answer.result()["account"]["wx_gender"], gender);
        assert_eq!(row(&server, &openid).unwrap()["wx_gender"], gender);
    }
    // 64 characters (not bytes) is the limit.
    let city = "深".repeat(64);
    server.post("login", &json!({"openid": openid, "wx_city": city})).result();
    assert_eq!(row(&server, &openid).unwrap()["wx_city"], city);
    assert_eq!(account_count(&server), 1, "one account however often it logs in");
}

#[test]
fn bad_profile_fields_are_refused_and_change_nothing() {
    let server = Wxauth::start(&[]);
    let openid = fresh_openid(&server, "profile-bad");
    server
        .post("login", &json!({"openid": openid, "wx_nickname": "Before", "wx_gender": 2}))
        .result();
    let before = row(&server, &openid).unwrap();
    let stranger = fresh_openid(&server, "profile-bad-stranger");
    for extra in [
        json!({"wx_gender": 3}),
        json!({"wx_gender": "x"}),
        json!({"wx_gender": -1}),
        json!({"wx_gender": 1.5}),
        json!({"wx_gender": true}),
        json!({"wx_city": "c".repeat(65)}),
        json!({"wx_nickname": 5}),
        json!({"wx_nickname": ["After"]}),
        json!({"wx_avatar": "a".repeat(513)}),
        json!({"phone": "call me"}),
    ] {
        for who in [&openid, &stranger] {
            let mut body = extra.clone();
            body["openid"] = json!(who);
            // A valid field beside the bad one must not be written either.
            body["wx_country"] = json!("Changed");
            server.post("login", &body).assert_error(403, "invalid_parameter");
        }
        assert_eq!(row(&server, &openid).unwrap(), before, "unchanged after {extra}");
        assert!(row(&server, &stranger).is_none(), "no account created by {extra}");
    }
}

/// Regression: `wx_avatar` took any text, so `javascript:` and `data:` URLs were stored and
/// answered to whatever page shows the avatar as a link or an image.
#[test]
fn wx_avatar_must_be_an_http_or_https_url() {
    let server = Wxauth::start(&[]);
    let openid = fresh_openid(&server, "avatar");
    let avatar = "https://thirdwx.qlogo.cn/mmopen/x/132";
    let first = server.post("login", &json!({"openid": openid, "wx_avatar": avatar}));
    assert_eq!(first.result()["account"]["wx_avatar"], avatar);
    assert_eq!(row(&server, &openid).unwrap()["wx_avatar"], avatar);
    let token = jwt(&token_of(first.result()));
    let stranger = fresh_openid(&server, "avatar-stranger");
    for bad in [
        "javascript:alert(1)",
        "JaVaScRiPt:alert(document.cookie)",
        "data:text/html,<script>alert(1)</script>",
        "//evil.example/x",
        "vbscript:msgbox(1)",
        "ftp://example.com/a.png",
        "https:",
        "https://",
        "https:///evil.example/x",
        "https:/evil.example/x",
        "https:\\\\evil.example/x",
        " https://example.com/a.png",
        "https://example.com/a b.png",
        "https://example.com/a\u{3000}b.png",
        "https://example.com/\tx",
    ] {
        for who in [&openid, &stranger] {
            let answer = server.post("login", &json!({"openid": who, "wx_avatar": bad}));
            answer.assert_error(403, "invalid_parameter");
        }
        server
            .post_with("login", &json!({ "wx_avatar": bad }), &[("Authorization", &token)])
            .assert_error(403, "invalid_parameter");
        assert_eq!(row(&server, &openid).unwrap()["wx_avatar"], avatar, "after {bad:?}");
        assert!(row(&server, &stranger).is_none(), "an account created by {bad:?}");
    }
    // Absent or empty leaves the avatar as it is.
    for body in [json!({"openid": openid}), json!({"openid": openid, "wx_avatar": ""})] {
        assert_eq!(server.post("login", &body).result()["account"]["wx_avatar"], avatar);
    }
    // The scheme in any case; the rest as it is.
    for good in ["HTTP://thirdwx.qlogo.cn/mmopen/y/0", "Https://example.com/a.png?x=1#y", avatar] {
        let answer = server.post("login", &json!({"openid": openid, "wx_avatar": good}));
        assert_eq!(answer.result()["account"]["wx_avatar"], good);
        assert_eq!(row(&server, &openid).unwrap()["wx_avatar"], good);
    }
}

// 3. Tokens.

#[test]
fn every_login_gives_a_token_that_logs_in_the_same_account() {
    let server = Wxauth::start(&[]);
    let (openid, first) = server.login_as("token-fresh");
    let second = server.post("login", &json!({ "openid": openid })).result().clone();
    let id = first["account"]["id"].clone();
    assert_eq!(second["account"]["id"], id);
    for token in [token_of(&first), token_of(&second)] {
        let answer = login_by_token(&server, &token);
        let results = answer.result();
        assert_eq!(results["account"]["id"], id);
        assert_eq!(results["account"]["wx_openid"], openid);
        // The token login's own token works too.
        assert_eq!(login_by_token(&server, &token_of(results)).result()["account"]["id"], id);
    }
    assert_eq!(account_count(&server), 1);
}

#[test]
fn an_invalid_token_falls_back_to_the_openid_but_alone_is_refused() {
    let server = Wxauth::start(&[]);
    let openid = fresh_openid(&server, "token-fallback");
    for header in ["jwt not.a.token", "Bearer eyJhbGciOiJub25lIn0.e30.", "jwt garbage"] {
        let answer =
            server.post_with("login", &json!({"openid": openid}), &[("Authorization", header)]);
        assert_eq!(answer.result()["account"]["wx_openid"], openid, "{header}");
        server
            .post_with("login", &json!({}), &[("Authorization", header)])
            .assert_error(403, "token_invalid");
    }
    assert_eq!(account_count(&server), 1);
}

#[test]
fn an_expired_token_is_token_expired() {
    let server = Wxauth::start(&[("WXAUTH_JWT_LIFETIME", "1"), ("WXAUTH_JWT_LEEWAY", "0")]);
    // The same lifetime with the default leeway (60 s): still accepted after the same wait.
    let lenient = Wxauth::start(&[("WXAUTH_JWT_LIFETIME", "1")]);
    let (openid, login) = server.login_as("token-expired");
    let token = token_of(&login);
    let (_, lenient_login) = lenient.login_as("token-expired");
    std::thread::sleep(Duration::from_millis(2100));
    login_by_token(&server, &token).assert_error(403, "token_expired");
    let answer = login_by_token(&lenient, &token_of(&lenient_login));
    assert_eq!(answer.result()["account"]["id"], lenient_login["account"]["id"]);
    // With an openid beside it, the openid login still happens.
    let answer =
        server.post_with("login", &json!({"openid": openid}), &[("Authorization", &jwt(&token))]);
    assert_eq!(answer.result()["account"]["id"], login["account"]["id"]);
}

#[test]
fn a_token_signed_with_another_secret_is_invalid() {
    let signer = Wxauth::start(&[("WXAUTH_JWT_SECRET", SECRET)]);
    let other = Wxauth::start(&[("WXAUTH_JWT_SECRET", OTHER_SECRET)]);
    let control = Wxauth::start(&[("WXAUTH_JWT_SECRET", SECRET)]);
    let (_, login) = signer.login_as("token-secret");
    let token = token_of(&login);
    // The same account (same demo user, same id) exists on the other servers.
    for server in [&other, &control] {
        let (_, there) = server.login_as("token-secret");
        assert_eq!(there["account"]["id"], login["account"]["id"]);
    }
    login_by_token(&other, &token).assert_error(403, "token_invalid");
    assert_eq!(login_by_token(&control, &token).result()["account"]["id"], login["account"]["id"]);
}

#[test]
fn a_token_for_an_account_that_does_not_exist_is_invalid() {
    let server = Wxauth::start(&[("WXAUTH_JWT_SECRET", SECRET)]);
    let (_, login) = server.login_as("token-forged");
    let id = login["account"]["id"].as_i64().unwrap();
    // Signed by someone holding the secret, as another service with a JWT library would.
    let genuine = sign_token(SECRET, &default_claims(&id.to_string()));
    assert_eq!(login_by_token(&server, &genuine).result()["account"]["id"], id);
    for sub in ["999999", "0", "-1", "abc", ""] {
        let forged = sign_token(SECRET, &default_claims(sub));
        login_by_token(&server, &forged).assert_error(403, "token_invalid");
    }
    assert_eq!(account_count(&server), 1);
}

#[test]
fn a_token_for_another_issuer_or_audience_is_invalid() {
    let secret = ("WXAUTH_JWT_SECRET", SECRET);
    let signer = Wxauth::start(&[secret, ("WXAUTH_JWT_ISSUER", "issuer-x")]);
    let other_issuer = Wxauth::start(&[secret, ("WXAUTH_JWT_ISSUER", "issuer-y")]);
    let other_audience = Wxauth::start(&[
        secret,
        ("WXAUTH_JWT_ISSUER", "issuer-x"),
        ("WXAUTH_JWT_AUDIENCE", "aud-n"),
    ]);
    let control = Wxauth::start(&[secret, ("WXAUTH_JWT_ISSUER", "issuer-x")]);
    let (_, login) = signer.login_as("token-iss");
    let token = token_of(&login);
    let claims = &inspect_token(&token, SECRET)["claims"];
    assert_eq!(claims["iss"], "issuer-x");
    assert_eq!(claims["aud"], "miniprog");
    for server in [&other_issuer, &other_audience, &control] {
        let (_, there) = server.login_as("token-iss");
        assert_eq!(there["account"]["id"], login["account"]["id"]);
    }
    login_by_token(&other_issuer, &token).assert_error(403, "token_invalid");
    login_by_token(&other_audience, &token).assert_error(403, "token_invalid");
    assert_eq!(login_by_token(&control, &token).result()["account"]["id"], login["account"]["id"]);
}

#[test]
fn the_token_is_hs256_with_the_original_claims() {
    let server = Wxauth::start(&[("WXAUTH_JWT_SECRET", SECRET)]);
    let openid = fresh_openid(&server, "token-shape");
    let before = unix_now();
    let anonymous = server.post("login", &json!({ "openid": openid })).result().clone();
    let named =
        server.post("login", &json!({"openid": openid, "wx_nickname": "小明"})).result().clone();
    let after = unix_now();
    let id = anonymous["account"]["id"].as_i64().unwrap();
    for (results, nickname) in [(&anonymous, Value::Null), (&named, json!("小明"))] {
        let token = token_of(results);
        assert_eq!(token.split('.').count(), 3, "{token}");
        assert!(!token.contains('='), "unpadded base64url: {token}");
        let decoded = inspect_token(&token, SECRET);
        assert_eq!(decoded["valid"], true, "HS256 over the segments with the secret's UTF-8 bytes");
        // The original's header, plus the `kid` that names the secret (for rotation).
        let kid = key_id(SECRET);
        assert_eq!(decoded["header"], format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#));
        let claims = &decoded["claims"];
        assert_eq!(claims["iss"], "wxauth");
        assert_eq!(claims["aud"], "miniprog");
        assert_eq!(claims["sub"], id.to_string());
        assert_eq!(claims["scopes"], json!(["open"]));
        assert_eq!(claims["nickname"], nickname, "{claims}");
        let iat = claims["iat"].as_i64().expect("iat is an integer");
        let exp = claims["exp"].as_i64().expect("exp is an integer");
        assert!((before..=after).contains(&iat), "iat {iat} not in {before}..={after}");
        assert_eq!(exp - iat, 604_800, "seven days");
        // The same checks fail with another key.
        assert_eq!(inspect_token(&token, OTHER_SECRET)["valid"], false);
    }
    // Issuer, audience and lifetime come from the configuration.
    let server = Wxauth::start(&[
        ("WXAUTH_JWT_SECRET", SECRET),
        ("WXAUTH_JWT_ISSUER", "my-issuer"),
        ("WXAUTH_JWT_AUDIENCE", "my-audience"),
        ("WXAUTH_JWT_LIFETIME", "3600"),
    ]);
    let (_, login) = server.login_as("token-shape");
    let decoded = inspect_token(&token_of(&login), SECRET);
    assert_eq!(decoded["valid"], true);
    let claims = &decoded["claims"];
    assert_eq!(claims["iss"], "my-issuer");
    assert_eq!(claims["aud"], "my-audience");
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 3600);
}

// 4. The generated secret is kept.

#[test]
fn the_generated_jwt_secret_survives_a_restart() {
    let server = Wxauth::start(&[]);
    let (openid, login) = server.login_as("secret-kept");
    let token = token_of(&login);
    let secret: String = server
        .database()
        .query_row("SELECT value FROM meta WHERE key = 'jwt_secret'", [], |row| row.get(0))
        .expect("a jwt_secret row in meta");
    assert!(secret.len() >= 64, "{} characters", secret.len());
    assert!(secret.bytes().all(|byte| byte.is_ascii_hexdigit()), "hex");
    assert_eq!(inspect_token(&token, &secret)["valid"], true, "the kept secret signs tokens");

    use std::os::unix::fs::PermissionsExt;
    let file = !crate::harness::sqlite_only("the database file's mode");
    if file {
        let database = server.dir.0.join("wxauth.db");
        let mode = std::fs::metadata(&database).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "database file mode {mode:o}");
    }

    let server = restart(server, &[]);
    let answer = login_by_token(&server, &token);
    assert_eq!(answer.result()["account"]["id"], login["account"]["id"]);
    assert_eq!(answer.result()["account"]["wx_openid"], openid);
    let kept: String = server
        .database()
        .query_row("SELECT value FROM meta WHERE key = 'jwt_secret'", [], |row| row.get(0))
        .unwrap();
    assert_eq!(kept, secret, "the secret is not regenerated");
    if file {
        let mode = std::fs::metadata(server.dir.0.join("wxauth.db")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "still owner-only after a restart");
    }
}

// 5. Login bookkeeping.

/// `last_login` in the database, formatted as the API shows it (UTC).
fn stored_last_login(server: &Wxauth, openid: &str) -> Option<String> {
    server
        .database()
        .query_row(
            "SELECT strftime('%Y-%m-%d %H:%M:%S', last_login, 'unixepoch') FROM accounts
             WHERE wx_openid = ?1",
            [openid],
            |row| row.get(0),
        )
        .unwrap()
}

#[test]
fn login_sets_last_login_last_ip_and_join_ip() {
    let server = Wxauth::start(&[]);
    let openid = fresh_openid(&server, "bookkeeping");
    let before = unix_now();
    let login = server.post("login", &json!({ "openid": openid })).result().clone();
    let account = &login["account"];
    assert_eq!(account["last_ip"], "127.0.0.1");
    assert_eq!(account["join_ip"], "127.0.0.1");
    let last_login = account["last_login"].as_str().expect("last_login set").to_string();
    eventually("the first login's bookkeeping is stored", || {
        let stored = row(&server, &openid).unwrap();
        stored["last_ip"] == "127.0.0.1"
            && stored["last_login"].as_i64().is_some_and(|time| time >= before)
    });
    assert_eq!(stored_last_login(&server, &openid).as_deref(), Some(last_login.as_str()));
    assert_eq!(row(&server, &openid).unwrap()["join_ip"], "127.0.0.1");
    let joined = row(&server, &openid).unwrap()["date_joined"].as_i64().unwrap();
    assert!(joined >= before, "date_joined {joined} before the login at {before}");

    // Forget the bookkeeping, then log in by token: the answer and (a little later) the row have it.
    server
        .database()
        .execute(
            "UPDATE accounts SET last_ip = NULL, last_login = NULL WHERE wx_openid = ?1",
            [&openid],
        )
        .unwrap();
    let by_token = login_by_token(&server, &token_of(&login)).result().clone();
    assert_eq!(by_token["account"]["last_ip"], "127.0.0.1");
    let last_login =
        by_token["account"]["last_login"].as_str().expect("last_login set").to_string();
    eventually("the token login's bookkeeping is stored", || {
        row(&server, &openid).unwrap()["last_ip"] == "127.0.0.1"
    });
    assert_eq!(stored_last_login(&server, &openid).as_deref(), Some(last_login.as_str()));
    assert_eq!(row(&server, &openid).unwrap()["join_ip"], "127.0.0.1", "join_ip stays");
}

// 6. X-Forwarded-For.

#[test]
fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let server = Wxauth::start(&[]);
    let openid = fresh_openid(&server, "forwarded-untrusted");
    let forwarded = [("X-Forwarded-For", "203.0.113.7")];
    let login = server.post_with("login", &json!({ "openid": openid }), &forwarded);
    let account = login.result()["account"].clone();
    assert_eq!(account["last_ip"], "127.0.0.1");
    assert_eq!(account["join_ip"], "127.0.0.1");
    let by_token = server.post_with(
        "login",
        &json!({}),
        &[("X-Forwarded-For", "203.0.113.8"), ("Authorization", &jwt(&token_of(login.result())))],
    );
    assert_eq!(by_token.result()["account"]["last_ip"], "127.0.0.1");
    let stored = row(&server, &openid).unwrap();
    assert_eq!(stored["last_ip"], "127.0.0.1");
    assert_eq!(stored["join_ip"], "127.0.0.1");

    // The token login's background write: forget last_ip, log in, wait for it to come back.
    let database = server.database();
    database.execute("UPDATE accounts SET last_ip = NULL WHERE wx_openid = ?1", [&openid]).unwrap();
    let authorization = jwt(&token_of(login.result()));
    let headers = [("X-Forwarded-For", "203.0.113.8"), ("Authorization", authorization.as_str())];
    let by_token = server.post_with("login", &json!({}), &headers);
    assert_eq!(by_token.result()["account"]["last_ip"], "127.0.0.1");
    eventually("the token login's last_ip is stored", || {
        !row(&server, &openid).unwrap()["last_ip"].is_null()
    });
    assert_eq!(row(&server, &openid).unwrap()["last_ip"], "127.0.0.1");
}

#[test]
fn forwarded_for_from_a_trusted_proxy_is_the_client() {
    let server = Wxauth::start(&[("WXAUTH_TRUSTED_PROXIES", "127.0.0.1")]);
    let openid = fresh_openid(&server, "forwarded-trusted");
    let login = server.post_with(
        "login",
        &json!({ "openid": openid }),
        &[("X-Forwarded-For", "203.0.113.7")],
    );
    let account = login.result()["account"].clone();
    assert_eq!(account["last_ip"], "203.0.113.7");
    assert_eq!(account["join_ip"], "203.0.113.7");
    let stored = row(&server, &openid).unwrap();
    assert_eq!(stored["last_ip"], "203.0.113.7");
    assert_eq!(stored["join_ip"], "203.0.113.7");

    // A later login from elsewhere moves last_ip, never join_ip.
    let by_token = server.post_with(
        "login",
        &json!({}),
        &[("X-Forwarded-For", "198.51.100.20"), ("Authorization", &jwt(&token_of(login.result())))],
    );
    assert_eq!(by_token.result()["account"]["last_ip"], "198.51.100.20");
    assert_eq!(by_token.result()["account"]["join_ip"], "203.0.113.7");
    eventually("last_ip from the token login is stored", || {
        row(&server, &openid).unwrap()["last_ip"] == "198.51.100.20"
    });
    assert_eq!(row(&server, &openid).unwrap()["join_ip"], "203.0.113.7");

    // Through a chain of proxies, the client is the last address the trusted proxy did not add;
    // what the client itself wrote in front is not believed.
    let chained = fresh_openid(&server, "forwarded-chain");
    let login = server.post_with(
        "login",
        &json!({ "openid": chained }),
        &[("X-Forwarded-For", "10.9.8.7, 203.0.113.9, 127.0.0.1")],
    );
    assert_eq!(login.result()["account"]["join_ip"], "203.0.113.9");
    assert_eq!(row(&server, &chained).unwrap()["last_ip"], "203.0.113.9");
}

/// A server behind a trusted proxy (127.0.0.1) whose rate limit has this burst, then 1 a second.
fn behind_a_proxy_with_burst(burst: &str) -> Wxauth {
    Wxauth::start(&[
        ("WXAUTH_TRUSTED_PROXIES", "127.0.0.1"),
        ("WXAUTH_RATE_LIMIT_ENABLED", "true"),
        ("WXAUTH_RATE_LIMIT_BURST", burst),
        ("WXAUTH_RATE_LIMIT_PER_SECOND", "1"),
    ])
}

/// `get_openid_by_code` with a fresh code, forwarded for `client` by the trusted proxy.
fn exchange_for(server: &Wxauth, client: &str) -> Answer {
    let url = server.url(&format!("get_openid_by_code?code={}", fresh_code("limited")));
    send(&agent(), "GET", &url, &[("X-Forwarded-For", client)], None)
}

#[test]
fn the_rate_limit_is_per_forwarded_client_behind_a_trusted_proxy() {
    let server = behind_a_proxy_with_burst("2");
    let exchange = |client: &str| exchange_for(&server, client);
    for client in ["203.0.113.7", "203.0.113.8"] {
        for _ in 0..2 {
            exchange(client).result();
        }
        exchange(client).assert_error(429, "rate_limited");
    }
    // The proxy itself (no header) has its own bucket too.
    server.openid_for(&fresh_code("limited"));
}

/// Regression: every IPv6 address had a bucket of its own, while a phone gets a whole /64 and may
/// use any address in it.
#[test]
fn the_rate_limit_counts_an_ipv6_slash_64_as_one_client() {
    let server = behind_a_proxy_with_burst("3");
    let exchange = |client: &str| exchange_for(&server, client);
    for client in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2::3"] {
        exchange(client).result();
    }
    exchange("2001:db8:1:2::4").assert_error(429, "rate_limited");
    exchange("2001:db8:1:2:ffff:ffff:ffff:ffff").assert_error(429, "rate_limited");
    // The next /64 is another subscriber.
    exchange("2001:db8:1:3::1").result();
    // An IPv4-mapped address is its IPv4 address.
    for client in ["203.0.113.7", "::ffff:203.0.113.7", "203.0.113.7"] {
        exchange(client).result();
    }
    exchange("::ffff:203.0.113.7").assert_error(429, "rate_limited");
}

#[test]
fn forwarded_for_from_an_untrusted_peer_does_not_escape_the_rate_limit() {
    let server = Wxauth::start(&[
        ("WXAUTH_RATE_LIMIT_ENABLED", "true"),
        ("WXAUTH_RATE_LIMIT_BURST", "2"),
        ("WXAUTH_RATE_LIMIT_PER_SECOND", "1"),
    ]);
    let exchange = |client: &str| {
        let url = server.url(&format!("get_openid_by_code?code={}", fresh_code("spoofer")));
        send(&agent(), "GET", &url, &[("X-Forwarded-For", client)], None)
    };
    exchange("203.0.113.1").result();
    exchange("203.0.113.2").result();
    exchange("203.0.113.3").assert_error(429, "rate_limited");
}

// 7. Rate limiting.

#[test]
fn get_openid_by_code_is_rate_limited_but_lookups_and_token_logins_are_not() {
    let server = Wxauth::start(&[]);
    let (openid, login) = server.login_as("limit");
    let token = token_of(&login);
    let server = restart(
        server,
        &[
            ("WXAUTH_RATE_LIMIT_ENABLED", "true"),
            ("WXAUTH_RATE_LIMIT_BURST", "3"),
            ("WXAUTH_RATE_LIMIT_PER_SECOND", "1"),
        ],
    );
    for _ in 0..3 {
        server.openid_for(&fresh_code("limit"));
    }
    let limited = server.get(&format!("get_openid_by_code?code={}", fresh_code("limit")));
    limited.assert_error(429, "rate_limited");
    let retry_after: u64 = limited
        .header("Retry-After")
        .expect("a Retry-After header")
        .parse()
        .expect("Retry-After is whole seconds");
    // One request a second: the next is at most a second away, and never "0".
    assert_eq!(retry_after, 1, "Retry-After {retry_after}");

    // The bucket is empty now, and refills one request a second: were lookups and token logins
    // limited, most of these would be refused.
    for _ in 0..10 {
        let answer = server.get(&format!("is_openid_registered?openid={openid}"));
        assert_eq!(answer.result(), &json!({"is_registered": false}));
    }
    for _ in 0..10 {
        assert_eq!(
            login_by_token(&server, &token).result()["account"]["id"],
            login["account"]["id"]
        );
    }
}

// 8. Bodies.

/// A JSON login body for `openid` padded with an unknown field to exactly `size` bytes.
fn padded_body(openid: &str, size: usize) -> Vec<u8> {
    let head = format!(r#"{{"openid":"{openid}","padding":""#);
    let mut body = head.into_bytes();
    body.resize(size - 2, b'x');
    body.extend_from_slice(b"\"}");
    assert_eq!(body.len(), size);
    serde_json::from_slice::<Value>(&body).expect("valid JSON");
    body
}

/// Sends a raw HTTP/1.1 request and returns the status and the body parsed as JSON.
fn raw_http(server: &Wxauth, request: &[u8]) -> (u16, Value) {
    let address = server.base.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split(' ').nth(1).and_then(|status| status.parse().ok());
    let status = status.unwrap_or_else(|| panic!("no status line: {text}"));
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {text}")))
}

#[test]
fn a_body_over_the_limit_is_413() {
    let server =
        Wxauth::start(&[("WXAUTH_MAX_BODY_BYTES", "2048"), ("WXAUTH_OPENID_LOGIN", "open")]);
    let path = format!("{}login", server.prefix);
    let big = server.raw("POST", &path, &[], Some(&padded_body("oTooLargeBody", 4096)));
    big.assert_error(413, "body_too_large");
    assert_eq!(account_count(&server), 0);

    // Chunked, so no Content-Length warns the server in advance.
    let body = padded_body("oTooLargeChunked", 4096);
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(1000) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let (status, answer) = raw_http(&server, &request);
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"], "body_too_large");
    assert_eq!(account_count(&server), 0);

    // At the limit it is read.
    let fits = server.raw("POST", &path, &[], Some(&padded_body("oJustFits", 2048)));
    assert_eq!(fits.result()["account"]["wx_openid"], "oJustFits");
}

#[test]
fn bodies_that_are_not_a_json_object_are_invalid_parameter() {
    let server = Wxauth::start(&[("WXAUTH_OPENID_LOGIN", "open")]);
    let path = format!("{}login", server.prefix);
    let json = "application/json";
    let form = "application/x-www-form-urlencoded";
    let xml = "text/xml";
    let cases: [(&str, &[u8]); 8] = [
        (json, br#"{"openid": "oMalformed""#),
        (json, br#"{"openid": "oMalformed",}"#),
        (json, br#"[{"openid": "oArray"}]"#),
        (json, br#""oString""#),
        (json, b"{\"openid\": \"oNotUtf8\", \"wx_city\": \"\xff\xfe\"}"),
        (form, br#"{"openid": "oJsonAsForm"}"#),
        (xml, br#"{"openid": "oXml"}"#),
        (xml, b"<login><openid>oXml</openid></login>"),
    ];
    for (content_type, body) in cases {
        let answer = server.raw("POST", &path, &[("Content-Type", content_type)], Some(body));
        let shown = String::from_utf8_lossy(body);
        assert_eq!(answer.body["error"], "invalid_parameter", "{content_type} {shown}: {answer:?}");
        answer.assert_error(403, "invalid_parameter");
    }
    assert_eq!(account_count(&server), 0, "nothing was logged in");
}

#[test]
fn a_form_body_logs_in() {
    let server = Wxauth::start(&[]);
    let openid = fresh_openid(&server, "form");
    let body = format!("openid={openid}&wx_gender=1&wx_city=San+Jos%C3%A9");
    let answer = server.raw(
        "POST",
        &format!("{}login", server.prefix),
        &[("Content-Type", "application/x-www-form-urlencoded; charset=UTF-8")],
        Some(body.as_bytes()),
    );
    let account = answer.result()["account"].clone();
    assert_eq!(account["wx_openid"], openid);
    assert_eq!(account["wx_gender"], 1);
    assert_eq!(account["wx_city"], "San José");
    let stored = row(&server, &openid).unwrap();
    assert_eq!(stored["wx_gender"], 1);
    assert_eq!(stored["wx_city"], "San José");
}

#[test]
fn an_empty_body_with_a_valid_token_logs_in() {
    let server = Wxauth::start(&[]);
    let (_, login) = server.login_as("empty-body");
    let path = format!("{}login", server.prefix);
    let authorization = jwt(&token_of(&login));
    for headers in [
        vec![("Authorization", authorization.as_str())],
        vec![("Authorization", authorization.as_str()), ("Content-Type", "text/plain")],
    ] {
        let answer = server.raw("POST", &path, &headers, Some(b""));
        assert_eq!(answer.result()["account"]["id"], login["account"]["id"], "{headers:?}");
    }
    server.raw("POST", &path, &[], Some(b"")).assert_error(403, "not_authenticated");
}

// 9. Races.

/// Sends `body` to `endpoint` from 64 threads at once; returns every answer.
fn all_at_once(server: &Wxauth, endpoint: &str, body: &Value) -> Vec<Answer> {
    let url = server.url(endpoint);
    let barrier = Barrier::new(64);
    let bytes = body.to_string().into_bytes();
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..64)
            .map(|_| {
                scope.spawn(|| {
                    let agent = agent();
                    barrier.wait();
                    send(&agent, "POST", &url, &[], Some(&bytes))
                })
            })
            .collect();
        threads.into_iter().map(|thread| thread.join().unwrap()).collect()
    })
}

#[test]
fn simultaneous_first_logins_make_one_account() {
    let server = Wxauth::start(&[("WXAUTH_OPENID_LOGIN", "open")]);
    let openid = "oRaceLogin000000000000000000";
    let answers = all_at_once(&server, "login", &json!({ "openid": openid }));
    let id = answers[0].result()["account"]["id"].clone();
    for answer in &answers {
        assert_eq!(answer.result()["account"]["id"], id);
    }
    assert_eq!(account_count(&server), 1);
    assert_eq!(row(&server, openid).unwrap()["id"], id);
}

#[test]
fn simultaneous_first_registrations_make_one_registered_account() {
    let server = Wxauth::start(&[("WXAUTH_OPENID_LOGIN", "open")]);
    let openid = "oRaceRegister000000000000000";
    let answers =
        all_at_once(&server, "register", &json!({"openid": openid, "phone": "13800138000"}));
    let id = answers[0].result()["account"]["id"].clone();
    for answer in &answers {
        let account = &answer.result()["account"];
        assert_eq!(account["id"], id);
        assert_eq!(account["is_register"], true);
    }
    assert_eq!(account_count(&server), 1);
    let stored = row(&server, openid).unwrap();
    assert_eq!(stored["id"], id);
    assert_eq!(stored["is_register"], 1);
    assert_eq!(stored["phone"], "13800138000");
}

// 10. get_openid_by_code for an existing account.

#[test]
fn get_openid_by_code_for_an_account_gives_it_and_a_token() {
    let server = Wxauth::start(&[]);
    let (openid, login) = server.login_as("known");
    let known = server.openid_for(&fresh_code("known"));
    assert_eq!(known["openid"], openid);
    assert_eq!(known["is_registered"], false, "logged in, not registered");
    assert_eq!(known["account"]["id"], login["account"]["id"]);
    assert_eq!(known["account"]["wx_openid"], openid);
    let token = token_of(&known);
    let answer = login_by_token(&server, &token);
    assert_eq!(answer.result()["account"]["id"], login["account"]["id"]);

    server.post("register", &json!({"openid": openid, "phone": "13800138000"})).result();
    let registered = server.openid_for(&fresh_code("known"));
    assert_eq!(registered["is_registered"], true);
    assert_eq!(registered["account"]["is_register"], true);
    let answer = login_by_token(&server, &token_of(&registered));
    assert_eq!(answer.result()["account"]["phone"], "13800138000");
}

#[test]
fn profile_fields_sent_with_a_token_update_the_tokens_account() {
    let server = Wxauth::start(&[]);
    let (openid, login) = server.login_as("token-profile");
    let token = login["token"].as_str().unwrap();
    let header = format!("jwt {token}");
    let answer = server.post_with(
        "login",
        &json!({"wx_nickname": "Changed", "wx_gender": 1}),
        &[("Authorization", header.as_str())],
    );
    let account = &answer.result()["account"];
    assert_eq!(account["id"], login["account"]["id"]);
    assert_eq!(account["wx_nickname"], "Changed");
    assert_eq!(account["wx_gender"], 1);
    let (nickname, gender): (String, i64) = server
        .database()
        .query_row(
            "SELECT wx_nickname, wx_gender FROM accounts WHERE wx_openid = ?1",
            [&openid],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!((nickname.as_str(), gender), ("Changed", 1));
}
