//! Sessions end at logout (issue 17): after `POST logout` or `wxauth users revoke`, neither a
//! `wx.login` code answered before it (which the server remembers for five minutes, so that a
//! retry gets its first answer) nor the openid login window that code opened gives a new token;
//! a new `wx.login` code does. Each check runs also after a restart where the state that decides
//! it lives in the database.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::{Value, json};

use crate::cli::run_on;
use crate::harness::{Wxauth, agent, fresh_code, send};
use crate::login::{SECRET, jwt, restart, token_of};
use crate::verify::{assert_refused, assert_verified};

fn logout(server: &Wxauth, token: &str) {
    let answer = server.post_with("logout", &json!({}), &[("Authorization", &jwt(token))]);
    assert_eq!(answer.result(), &json!({"logged_out": true}));
}

/// Asserts that `code`, exchanged before, is now answered as WeChat answers a spent code: 403
/// `wechat_code_used` (2002), no openid, account or token.
fn assert_code_spent(server: &Wxauth, code: &str) {
    let answer = server.get(&format!("get_openid_by_code?code={code}"));
    answer.assert_error(403, "wechat_code_used");
    assert_eq!(answer.body["code"], 2002, "{answer:?}");
}

/// How many `jscode2session` calls the fake WeChat has answered.
fn code_exchanges(server: &Wxauth) -> u64 {
    server.fake("/fake/stats")["jscode2session"].as_u64().unwrap_or(0)
}

/// The account id in a login or code answer.
fn id_of(results: &Value) -> i64 {
    results["account"]["id"].as_i64().unwrap_or_else(|| panic!("no account in {results}"))
}

#[test]
fn a_code_answered_before_logout_gives_no_token_after_it() {
    let server = Wxauth::start(&[("WXAUTH_JWT_SECRET", SECRET)]);
    // The client flow: code → openid → login. The code came before the account existed.
    let code = fresh_code("logout-replay");
    let first = server.openid_for(&code);
    assert_eq!(first["token"], Value::Null);
    let openid = first["openid"].as_str().unwrap().to_string();
    let login = server.post("login", &json!({ "openid": openid })).result().clone();
    let (token, id) = (token_of(&login), id_of(&login));
    // A code exchanged while the account exists answers with a token.
    let later_code = fresh_code("logout-replay");
    let later = server.openid_for(&later_code);
    assert_eq!(id_of(&later), id);
    // Until the logout, a repeated code gets its first answer again (a retry), from memory.
    let exchanges = code_exchanges(&server);
    let retried = server.openid_for(&code);
    assert_eq!((retried["openid"].as_str(), id_of(&retried)), (Some(openid.as_str()), id));
    assert_verified(&server, &token_of(&retried), id);
    assert_eq!(code_exchanges(&server), exchanges, "answered from memory");

    logout(&server, &token);
    // Both codes were spent with WeChat before the logout: no openid, account or token now, and
    // WeChat is not asked again.
    assert_code_spent(&server, &code);
    assert_code_spent(&server, &later_code);
    assert_eq!(code_exchanges(&server), exchanges);
    for old in [token, token_of(&later), token_of(&retried)] {
        assert_refused(&server, Some(&jwt(&old)), "token_revoked");
    }
}

#[test]
fn an_openid_login_window_opened_before_logout_is_closed_by_it() {
    let server = Wxauth::start(&[("WXAUTH_JWT_SECRET", SECRET)]);
    let openid =
        server.openid_for(&fresh_code("logout-window"))["openid"].as_str().unwrap().to_string();
    let login = server.post("login", &json!({ "openid": openid })).result().clone();
    // Inside the window (600 s), logging in by openid again works until the logout.
    let again = server.post("login", &json!({ "openid": openid })).result().clone();
    assert_eq!(id_of(&again), id_of(&login));

    logout(&server, &token_of(&again));
    server.post("login", &json!({ "openid": openid })).assert_error(403, "openid_login_refused");
    // Register by openid follows the same policy: no phone lands on the account.
    server
        .post("register", &json!({"openid": openid, "phone": "13800138000"}))
        .assert_error(403, "openid_login_refused");
    let phone: Option<String> = server
        .database()
        .query_row("SELECT phone FROM accounts WHERE wx_openid = ?1", [&openid], |row| row.get(0))
        .unwrap();
    assert_eq!(phone, None);

    // The window lives in the database: a restart does not open it again.
    let server = restart(server, &[("WXAUTH_JWT_SECRET", SECRET)]);
    server.post("login", &json!({ "openid": openid })).assert_error(403, "openid_login_refused");
    assert_refused(&server, Some(&jwt(&token_of(&login))), "token_revoked");
}

/// Four clients log in as `login`'s account with `body` and `headers`, one request after another
/// each, from before `login`'s logout until well after it; every token they were given must then
/// be revoked. A login the worker let in before the logout committed, whose write (and token)
/// comes after it, must be refused in that write, with `refused`.
fn logins_racing_a_logout_leave_no_working_token(
    server: &Wxauth,
    login: &Value,
    body: &Value,
    headers: &[(&str, &str)],
    refused: &str,
) {
    let (url, body) = (server.url("login"), body.to_string().into_bytes());
    let (logins, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
    let tokens: Vec<String> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let (agent, mut tokens) = (agent(), Vec::new());
                    while !stop.load(Ordering::SeqCst) {
                        let answer = send(&agent, "POST", &url, headers, Some(&body));
                        if answer.status == 200 {
                            tokens.push(token_of(answer.result()));
                        } else {
                            answer.assert_error(403, refused);
                        }
                        logins.fetch_add(1, Ordering::SeqCst);
                    }
                    tokens
                })
            })
            .collect();
        while logins.load(Ordering::SeqCst) < 40 {
            std::thread::yield_now();
        }
        logout(server, &token_of(login));
        let after = logins.load(Ordering::SeqCst);
        while logins.load(Ordering::SeqCst) < after + 40 {
            std::thread::yield_now();
        }
        stop.store(true, Ordering::SeqCst);
        clients.into_iter().flat_map(|client| client.join().unwrap()).collect()
    });
    assert!(tokens.len() >= 40, "{} logins succeeded before the logout", tokens.len());
    for token in tokens {
        assert_refused(server, Some(&jwt(&token)), "token_revoked");
    }
}

#[test]
fn logins_by_openid_racing_a_logout_leave_no_working_token() {
    let server = Wxauth::start(&[("WXAUTH_JWT_SECRET", SECRET)]);
    let (openid, login) = server.login_as("logout-race");
    let body = json!({ "openid": openid });
    logins_racing_a_logout_leave_no_working_token(
        &server,
        &login,
        &body,
        &[],
        "openid_login_refused",
    );
}

/// The token path: a login by token with profile fields (as a registration by token) is checked
/// on the worker and answered with a new token by the write.
#[test]
fn logins_by_token_racing_a_logout_leave_no_working_token() {
    let server = Wxauth::start(&[("WXAUTH_JWT_SECRET", SECRET)]);
    let (_, login) = server.login_as("logout-token-race");
    let authorization = jwt(&token_of(&login));
    let (body, headers) =
        (json!({ "wx_nickname": "Racer" }), [("Authorization", authorization.as_str())]);
    logins_racing_a_logout_leave_no_working_token(
        &server,
        &login,
        &body,
        &headers,
        "token_revoked",
    );
}

#[test]
fn after_logout_a_fresh_code_signs_in_again() {
    let server = Wxauth::start(&[("WXAUTH_JWT_SECRET", SECRET)]);
    let (openid, login) = server.login_as("logout-fresh");
    let (old, id) = (token_of(&login), id_of(&login));
    logout(&server, &old);

    // A new wx.login code: its answer carries a working token, and its window lets the openid in.
    let exchanged = server.openid_for(&fresh_code("logout-fresh"));
    assert_eq!((exchanged["openid"].as_str(), id_of(&exchanged)), (Some(openid.as_str()), id));
    assert_verified(&server, &token_of(&exchanged), id);
    let again = server.post("login", &json!({ "openid": openid })).result().clone();
    assert_eq!(id_of(&again), id);
    assert_verified(&server, &token_of(&again), id);
    assert_refused(&server, Some(&jwt(&old)), "token_revoked");
}

#[test]
fn users_revoke_ends_the_sign_in_as_logout_does() {
    let server = Wxauth::start(&[("WXAUTH_JWT_SECRET", SECRET)]);
    let code = fresh_code("logout-revoke");
    let openid = server.openid_for(&code)["openid"].as_str().unwrap().to_string();
    let login = server.post("login", &json!({ "openid": openid })).result().clone();
    let id = id_of(&login);
    run_on(&server, &["users", "revoke", &id.to_string()]).success();

    assert_code_spent(&server, &code);
    server.post("login", &json!({ "openid": openid })).assert_error(403, "openid_login_refused");
    assert_refused(&server, Some(&jwt(&token_of(&login))), "token_revoked");
    // A new code signs in again.
    let exchanged = server.openid_for(&fresh_code("logout-revoke"));
    assert_verified(&server, &token_of(&exchanged), id);
    let again = server.post("login", &json!({ "openid": openid })).result().clone();
    assert_verified(&server, &token_of(&again), id);
}

#[test]
fn under_the_session_key_policy_the_key_from_before_logout_logs_in_no_more() {
    let server = Wxauth::start(&[
        ("WXAUTH_JWT_SECRET", SECRET),
        ("WXAUTH_OPENID_LOGIN", "session_key"),
        ("WXAUTH_EXPOSE_SESSION_KEY", "true"),
    ]);
    let exchanged = server.openid_for(&fresh_code("logout-key"));
    let openid = exchanged["openid"].as_str().unwrap().to_string();
    let key = exchanged["session_key"].as_str().expect("session_key exposed").to_string();
    let body = json!({"openid": openid, "session_key": key});
    let login = server.post("login", &body).result().clone();
    logout(&server, &token_of(&login));
    server.post("login", &body).assert_error(403, "openid_login_refused");

    let fresh = server.openid_for(&fresh_code("logout-key"));
    let key = fresh["session_key"].as_str().expect("session_key exposed");
    let again = server.post("login", &json!({"openid": openid, "session_key": key}));
    assert_verified(&server, &token_of(again.result()), id_of(&login));
}

#[test]
fn the_open_policy_stays_open_after_logout_but_a_spent_code_gives_no_token() {
    let server = Wxauth::start(&[("WXAUTH_JWT_SECRET", SECRET), ("WXAUTH_OPENID_LOGIN", "open")]);
    let code = fresh_code("logout-open");
    let openid = server.openid_for(&code)["openid"].as_str().unwrap().to_string();
    let login = server.post("login", &json!({ "openid": openid })).result().clone();
    logout(&server, &token_of(&login));

    assert_code_spent(&server, &code);
    // The original's behaviour, insecure by design: a bare openid always logs in.
    let again = server.post("login", &json!({ "openid": openid }));
    assert_verified(&server, &token_of(again.result()), id_of(&login));
}
