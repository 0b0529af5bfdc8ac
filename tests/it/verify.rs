//! `GET verify` and `GET me` as another service and nginx's `auth_request` see them, for every
//! state a token can be in; rotating the JWT secret with `jwt.previous_secrets`; and wxauth's
//! tokens checked offline by another service's JWT library (PyJWT).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::cli::{run_in, run_on};
use crate::harness::{Answer, TempDir, Wxauth, fresh_code};
use crate::login::{
    OTHER_SECRET, SECRET, default_claims, inspect_token, jwt, key_id, login_by_token, restart,
    sign_token, token_of, unix_now,
};
use crate::python::run_python;

/// The secret a rotation moves to.
const NEW_SECRET: &str = "the-new-secret-for-wxauth-rotation-tests-0123456789";

/// `METHOD {prefix}ENDPOINT` with this `Authorization` header, or none.
fn ask(server: &Wxauth, method: &str, endpoint: &str, authorization: Option<&str>) -> Answer {
    let headers: Vec<(&str, &str)> =
        authorization.map(|value| vec![("Authorization", value)]).unwrap_or_default();
    server.raw(method, &format!("{}{endpoint}", server.prefix), &headers, None)
}

fn verify(server: &Wxauth, authorization: Option<&str>) -> Answer {
    ask(server, "GET", "verify", authorization)
}

fn me(server: &Wxauth, authorization: Option<&str>) -> Answer {
    ask(server, "GET", "me", authorization)
}

/// Unix seconds as the API writes account times, computed by SQLite rather than wxauth.
fn utc(seconds: i64) -> String {
    let database = rusqlite::Connection::open_in_memory().unwrap();
    database
        .query_row("SELECT strftime('%Y-%m-%d %H:%M:%S', ?1, 'unixepoch')", [seconds], |row| {
            row.get(0)
        })
        .unwrap()
}

/// A token with any header text, HS256-signed with `secret` (which a bad header may not name).
fn sign_with_header(secret: &str, header: &str, claims: &Value) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

/// Asserts that `verify` accepts `token` for account `id` with its own `exp`, as nginx's
/// `auth_request` and another service read it.
pub(crate) fn assert_verified(server: &Wxauth, token: &str, id: i64) {
    let claims = &inspect_token(token, "")["claims"];
    let exp = claims["exp"].as_i64().expect("exp");
    let answer = verify(server, Some(&jwt(token)));
    assert_eq!(answer.header("X-Wxauth-User-Id"), Some(id.to_string().as_str()), "{answer:?}");
    assert_eq!(
        answer.result(),
        &json!({"user_id": id, "expires_at": utc(exp), "exp": exp, "app": "default"})
    );
}

/// Asserts that `verify` (GET and HEAD) answers 401 with `error` and no user, and that `me`
/// answers the API's usual 403 with the same `error`.
pub(crate) fn assert_refused(server: &Wxauth, authorization: Option<&str>, error: &str) {
    let answer = verify(server, authorization);
    answer.assert_error(401, error);
    assert_eq!(answer.header("X-Wxauth-User-Id"), None, "{answer:?}");
    let challenge = if authorization.is_none() {
        r#"Bearer realm="wxauth""#
    } else {
        r#"Bearer realm="wxauth", error="invalid_token""#
    };
    assert_eq!(answer.header("WWW-Authenticate"), Some(challenge), "{authorization:?}");
    let head = ask(server, "HEAD", "verify", authorization);
    assert_eq!(head.status, 401, "HEAD {authorization:?}: {head:?}");
    assert_eq!(head.body, Value::Null, "HEAD has no body: {head:?}");
    assert_eq!(head.header("X-Wxauth-User-Id"), None);
    me(server, authorization).assert_error(403, error);
}

// ----- verify and me, token by token -----

/// Logs demo user `name` in by openid: the token it got, and its account's id.
fn token_and_id(server: &Wxauth, name: &str) -> (String, i64) {
    let (_, login) = server.login_as(name);
    (token_of(&login), login["account"]["id"].as_i64().unwrap())
}

#[test]
fn verify_and_me_accept_a_valid_token_in_every_scheme() {
    let server = Wxauth::start(&[("WXAUTH_JWT_SECRET", SECRET)]);
    let (_, login) = server.login_as("verify-valid");
    let token = token_of(&login);
    let id = login["account"]["id"].as_i64().unwrap();
    let exp = inspect_token(&token, SECRET)["claims"]["exp"].as_i64().unwrap();
    assert!(exp > unix_now() + 600_000, "a fresh seven-day token: {exp}");
    assert_verified(&server, &token, id);
    for scheme in ["jwt", "JWT", "Bearer", "bearer"] {
        let authorization = format!("{scheme} {token}");
        let answer = verify(&server, Some(&authorization));
        assert_eq!(answer.result()["user_id"], id, "{scheme}");
        assert_eq!(answer.header("X-Wxauth-User-Id"), Some(id.to_string().as_str()));
        assert_eq!(answer.header("Content-Type"), Some("application/json; charset=utf-8"));
        // The account object, exactly as login showed it (an openid login's write is durable).
        assert_eq!(me(&server, Some(&authorization)).result(), &login["account"], "{scheme}");
    }
    // A trailing slash means the same; HEAD, as a proxy may ask, has the header and no body.
    let answer = ask(&server, "GET", "verify/", Some(&jwt(&token)));
    assert_eq!(answer.result()["user_id"], id);
    let head = ask(&server, "HEAD", "verify", Some(&jwt(&token)));
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("X-Wxauth-User-Id"), Some(id.to_string().as_str()));
    assert_eq!(head.body, Value::Null, "{head:?}");
    // Other methods are refused, naming the one allowed.
    let post = server.post_with("verify", &json!({}), &[("Authorization", &jwt(&token))]);
    post.assert_error(405, "method_not_allowed");
    assert_eq!(post.header("Allow"), Some("GET"));
}

#[test]
fn verify_and_me_refuse_missing_malformed_and_forged_tokens() {
    let server = Wxauth::start(&[("WXAUTH_JWT_SECRET", SECRET)]);
    let (_, login) = server.login_as("verify-refused");
    let id = login["account"]["id"].as_i64().unwrap().to_string();
    let now = unix_now();

    assert_refused(&server, None, "not_authenticated");
    for malformed in ["", "Basic dXNlcjpwYXNz", "jwt", "jwt ", "Bearer  two-spaces", "tokenonly"] {
        assert_refused(&server, Some(malformed), "token_invalid");
    }
    let garbage = ["not-a-token", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.", "...."];
    for token in garbage {
        assert_refused(&server, Some(&jwt(token)), "token_invalid");
    }
    let claims = default_claims(&id);
    let none_header = r#"{"alg":"none","typ":"JWT"}"#;
    let forged = [
        // Another secret's signature.
        sign_token(OTHER_SECRET, &claims),
        // alg none, unsigned, and alg none with a signature by the right secret.
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(none_header),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        ),
        sign_with_header(SECRET, none_header, &claims),
        // Signed with the right secret, but naming a key wxauth does not have.
        sign_with_header(
            SECRET,
            r#"{"alg":"HS256","typ":"JWT","kid":"0123456789abcdef"}"#,
            &claims,
        ),
        // Another issuer, another audience, no exp, not yet valid.
        sign_token(
            SECRET,
            &json!({"iss": "other", "aud": "miniprog", "sub": id, "iat": now, "exp": now + 3600, "scopes": ["open"]}),
        ),
        sign_token(
            SECRET,
            &json!({"iss": "wxauth", "aud": "other", "sub": id, "iat": now, "exp": now + 3600, "scopes": ["open"]}),
        ),
        sign_token(
            SECRET,
            &json!({"iss": "wxauth", "aud": "miniprog", "sub": id, "iat": now, "scopes": ["open"]}),
        ),
        sign_token(
            SECRET,
            &json!({"iss": "wxauth", "aud": "miniprog", "sub": id, "iat": now, "nbf": now + 3600, "exp": now + 7200, "scopes": ["open"]}),
        ),
        // No such account.
        sign_token(SECRET, &default_claims("999999")),
    ];
    for token in &forged {
        assert_refused(&server, Some(&jwt(token)), "token_invalid");
    }
    // The control: the same signer with the right claims is accepted.
    assert_verified(&server, &sign_token(SECRET, &claims), id.parse().unwrap());
}

#[test]
fn verify_and_me_say_token_expired_for_an_expired_token() {
    let server = Wxauth::start(&[("WXAUTH_JWT_SECRET", SECRET)]);
    let (_, login) = server.login_as("verify-expired");
    let id = login["account"]["id"].as_i64().unwrap().to_string();
    let now = unix_now();
    // The tokens below were issued two hours ago: the account must be older than that.
    let joined = server
        .execute(&format!("UPDATE accounts SET date_joined = {} WHERE id = {id}", now - 86_400));
    assert_eq!(joined, 1);
    let claims = |exp: i64| {
        json!({"iss": "wxauth", "aud": "miniprog", "sub": id, "iat": now - 7200, "exp": exp,
               "nickname": null, "scopes": ["open"]})
    };
    // Past exp by more than the leeway (60 s): expired; within it: still good.
    assert_refused(&server, Some(&jwt(&sign_token(SECRET, &claims(now - 120)))), "token_expired");
    assert_verified(&server, &sign_token(SECRET, &claims(now - 5)), id.parse().unwrap());
}

#[test]
fn verify_and_me_say_token_revoked_after_logout_or_users_revoke() {
    let server = Wxauth::start(&[("WXAUTH_JWT_SECRET", SECRET)]);
    let (token, id) = token_and_id(&server, "verify-logout");
    assert_verified(&server, &token, id);
    let logout = server.post_with("logout", &json!({}), &[("Authorization", &jwt(&token))]);
    assert_eq!(logout.result(), &json!({"logged_out": true}));
    assert_refused(&server, Some(&jwt(&token)), "token_revoked");

    // Revoked from the command line while the server runs.
    let (other_token, other_id) = token_and_id(&server, "verify-revoke");
    assert_verified(&server, &other_token, other_id);
    run_on(&server, &["users", "revoke", &other_id.to_string()]).success();
    assert_refused(&server, Some(&jwt(&other_token)), "token_revoked");

    // A new login gives a token that verifies again.
    let (again, same_id) = token_and_id(&server, "verify-logout");
    assert_eq!(same_id, id);
    assert_verified(&server, &again, id);
}

#[test]
fn verify_and_me_refuse_the_token_of_a_deleted_account() {
    let server = Wxauth::start(&[("WXAUTH_JWT_SECRET", SECRET)]);
    let (_, login) = server.login_as("verify-deleted");
    let (_, kept) = server.login_as("verify-kept");
    let token = token_of(&login);
    let id = login["account"]["id"].as_i64().unwrap();
    assert_verified(&server, &token, id);
    let deleted = server.execute(&format!("DELETE FROM accounts WHERE id = {id}"));
    assert_eq!(deleted, 1);
    assert_refused(&server, Some(&jwt(&token)), "token_invalid");
    assert_verified(&server, &token_of(&kept), kept["account"]["id"].as_i64().unwrap());
}

/// Regression: a restored backup gives ids out again, so a token issued to the old account N must
/// not be accepted for the new account N, which joined after the token was issued.
#[test]
fn verify_and_me_refuse_a_token_older_than_its_account() {
    let server = Wxauth::start(&[("WXAUTH_JWT_SECRET", SECRET)]);
    let (token, id) = token_and_id(&server, "verify-restored");
    assert_verified(&server, &token, id);
    // The same id, now someone who joined an hour after the token was issued.
    let changed = server.execute(&format!(
        "UPDATE accounts SET wx_openid = 'o-joined-later', username = 'o-joined-later',
             date_joined = date_joined + 3600 WHERE id = {id}"
    ));
    assert_eq!(changed, 1);
    assert_refused(&server, Some(&jwt(&token)), "token_invalid");
    let login =
        server.post_with("login", &serde_json::json!({}), &[("Authorization", &jwt(&token))]);
    login.assert_error(403, "token_invalid");
}

#[test]
fn verify_and_me_write_nothing_and_are_not_rate_limited() {
    let server = Wxauth::start(&[
        ("WXAUTH_RATE_LIMIT_ENABLED", "true"),
        ("WXAUTH_RATE_LIMIT_BURST", "4"),
        ("WXAUTH_RATE_LIMIT_PER_SECOND", "1"),
    ]);
    // Two logins by openid: a code exchange and a login each, the whole burst.
    let (openid, login) = server.login_as("verify-silent");
    let (_, other) = server.login_as("verify-witness");
    let token = token_of(&login);
    let id = login["account"]["id"].as_i64().unwrap();
    // Bookkeeping values no request from here could write.
    let set =
        format!("UPDATE accounts SET last_login = 1000, last_ip = '192.0.2.1' WHERE id = {id}");
    assert_eq!(server.execute(&set), 1);
    let before: (i64, String, i64) = server
        .database()
        .query_row(
            "SELECT last_login, last_ip, token_version FROM accounts WHERE id = ?1",
            [id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap();
    // The limit is on: WeChat-bound requests from this address are soon refused.
    let limited = (0..10).any(|_| {
        let answer = server.get(&format!("get_openid_by_code?code={}", fresh_code("verify-limit")));
        answer.status == 429
    });
    assert!(limited, "the rate limit is on");
    // Far beyond what is left of the rate limit, and all answered.
    for round in 0..20 {
        assert_eq!(verify(&server, Some(&jwt(&token))).result()["user_id"], id, "round {round}");
        let account = me(&server, Some(&jwt(&token))).result().clone();
        assert_eq!(account["wx_openid"], openid);
        assert_eq!(account["last_ip"], "192.0.2.1", "me shows what is stored");
        assert_eq!(account["last_login"], utc(1000));
    }
    // A durable write queued after anything the requests above might have queued: once it is
    // answered, those are committed too (the writer takes writes in order).
    let logout =
        server.post_with("logout", &json!({}), &[("Authorization", &jwt(&token_of(&other)))]);
    logout.result();
    let after: (i64, String, i64) = server
        .database()
        .query_row(
            "SELECT last_login, last_ip, token_version FROM accounts WHERE id = ?1",
            [id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap();
    assert_eq!(after, before, "verify and me write nothing");
}

// ----- rotating the JWT secret -----

#[test]
fn a_rotated_secret_keeps_verifying_until_it_is_removed() {
    let old = ("WXAUTH_JWT_SECRET", SECRET);
    let server = Wxauth::start(&[old]);
    let (old_token, id) = token_and_id(&server, "rotate");
    let old_header = inspect_token(&old_token, SECRET)["header"].as_str().unwrap().to_string();
    assert!(old_header.contains(&key_id(SECRET)), "{old_header}");
    // Signed with the old secret by someone else, without a kid: checked with the current key.
    let old_without_kid = sign_token(SECRET, &default_claims(&id.to_string()));
    assert_verified(&server, &old_without_kid, id);

    // Step 1: the new secret is current, the old one previous.
    let server = restart(
        server,
        &[("WXAUTH_JWT_SECRET", NEW_SECRET), ("WXAUTH_JWT_PREVIOUS_SECRETS", SECRET)],
    );
    assert!(
        server.stderr().contains(&format!(
            "tokens are signed with key {} (jwt.secret); tokens of previous keys {} still verify",
            key_id(NEW_SECRET),
            key_id(SECRET)
        )),
        "{}",
        server.stderr()
    );
    assert_verified(&server, &old_token, id);
    assert_eq!(me(&server, Some(&jwt(&old_token))).result()["id"], id);
    // A token without kid is checked with the current key only (API.md), so the old secret's
    // kid-less tokens end here.
    assert_refused(&server, Some(&jwt(&old_without_kid)), "token_invalid");
    // Logging in with the old token gives a token signed with, and naming, the new secret.
    let answer = login_by_token(&server, &old_token);
    assert_eq!(answer.result()["account"]["id"], id);
    let new_token = token_of(answer.result());
    let decoded = inspect_token(&new_token, NEW_SECRET);
    assert_eq!(decoded["valid"], true, "signed with the new secret");
    assert_eq!(
        decoded["header"],
        format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{}"}}"#, key_id(NEW_SECRET))
    );
    assert_eq!(inspect_token(&new_token, SECRET)["valid"], false);
    assert_verified(&server, &new_token, id);

    // Step 2, a token lifetime later: the old secret is removed, and its tokens with it.
    let server = restart(server, &[("WXAUTH_JWT_SECRET", NEW_SECRET)]);
    assert_refused(&server, Some(&jwt(&old_token)), "token_invalid");
    login_by_token(&server, &old_token).assert_error(403, "token_invalid");
    assert_verified(&server, &new_token, id);
}

#[test]
fn the_generated_secret_can_be_rotated_away_by_naming_it_a_previous_secret() {
    let server = Wxauth::start(&[]);
    let (token, id) = token_and_id(&server, "rotate-generated");
    let generated: String = server
        .database()
        .query_row("SELECT value FROM meta WHERE key = 'jwt_secret'", [], |row| row.get(0))
        .unwrap();
    assert!(server.stderr().contains(&format!(
        "tokens are signed with key {} (generated, kept in the database)\n",
        key_id(&generated)
    )));

    // A configured secret replaces the generated one; listed as previous, its tokens still work.
    let server = restart(
        server,
        &[("WXAUTH_JWT_SECRET", NEW_SECRET), ("WXAUTH_JWT_PREVIOUS_SECRETS", &generated)],
    );
    assert_verified(&server, &token, id);
    let new_token = token_of(login_by_token(&server, &token).result());
    assert_eq!(inspect_token(&new_token, NEW_SECRET)["valid"], true);

    // The generated secret is not trusted on its own once a secret is configured: unlisted, its
    // tokens are refused (it stays in the database, unused).
    let server = restart(server, &[("WXAUTH_JWT_SECRET", NEW_SECRET)]);
    assert_refused(&server, Some(&jwt(&token)), "token_invalid");
    assert_verified(&server, &new_token, id);
    let kept: String = server
        .database()
        .query_row("SELECT value FROM meta WHERE key = 'jwt_secret'", [], |row| row.get(0))
        .unwrap();
    assert_eq!(kept, generated);
}

#[test]
fn check_config_redacts_every_previous_secret_and_refuses_a_short_one() {
    let dir = TempDir::new();
    let (first, second) = (SECRET, "second-previous-secret-for-check-config-0123");
    let listed = format!("{first},{second}");
    let run = run_in(&dir.0, &["check-config"], &[("WXAUTH_JWT_PREVIOUS_SECRETS", &listed)]);
    let text = run.success();
    assert!(
        text.lines().any(|line| line == r#"previous_secrets = ["<redacted>", "<redacted>"]"#),
        "{text}"
    );
    assert!(!text.contains(first) && !text.contains(second), "{text}");
    let text = run_in(&dir.0, &["check-config"], &[]).success().to_string();
    assert!(text.lines().any(|line| line == "previous_secrets = []"), "{text}");

    let short = format!("{second},short-previous-value");
    let run = run_in(&dir.0, &["check-config"], &[("WXAUTH_JWT_PREVIOUS_SECRETS", &short)]);
    run.failure("jwt.previous_secrets[1]: must be at least 32 bytes");
    assert!(!run.stderr.contains("short-previous-value"), "{run:#?}");
}

// ----- another service's JWT library -----

/// Verifies `token` with PyJWT as docs/api.md shows, then with a wrong secret and a wrong
/// audience; prints the subject, the `kid`, whether docs/api.md's formula for a secret's kid gives
/// it, and how the two wrong checks ended.
const PYJWT_DECODE: &str = r#"
import hashlib, json, sys
import jwt

given = json.load(sys.stdin)
token, secret = given["token"], given["secret"]
claims = jwt.decode(token, secret, algorithms=["HS256"],
                    audience=given["audience"], issuer=given["issuer"])
print(claims["sub"])
kid = jwt.get_unverified_header(token)["kid"]
print(kid)
print(kid == hashlib.sha256(secret.encode()).hexdigest()[:16])
for key, audience in [(given["wrong_secret"], given["audience"]), (secret, "someone-else")]:
    try:
        jwt.decode(token, key, algorithms=["HS256"], audience=audience, issuer=given["issuer"])
        print("accepted")
    except jwt.InvalidSignatureError:
        print("refused: signature")
    except jwt.InvalidAudienceError:
        print("refused: audience")
"#;

#[test]
fn pyjwt_verifies_a_token_with_the_shared_secret_and_refuses_another() {
    let server = Wxauth::start(&[
        ("WXAUTH_JWT_SECRET", SECRET),
        ("WXAUTH_JWT_ISSUER", "auth.example.com"),
        ("WXAUTH_JWT_AUDIENCE", "shop"),
    ]);
    let (_, login) = server.login_as("pyjwt");
    let id = login["account"]["id"].as_i64().unwrap();
    let input = json!({
        "token": token_of(&login),
        "secret": SECRET,
        "wrong_secret": OTHER_SECRET,
        "issuer": "auth.example.com",
        "audience": "shop",
    });
    let output = run_python(PYJWT_DECODE, &input.to_string());
    let lines: Vec<&str> = output.lines().collect();
    let expected = [
        id.to_string(),
        key_id(SECRET),
        "True".into(),
        "refused: signature".into(),
        "refused: audience".into(),
    ];
    assert_eq!(lines, expected, "{output}");
}
