//! `get_openid_by_code` against each way WeChat behaves: its documented errcodes, busy answers,
//! garbage, timeouts, a double tap, the in-flight bound, and a real (non-demo) configuration
//! pointed at a separately started fake.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Answer, FakeProcess, Wxauth, fresh_code};

/// How many rows `table` holds.
fn rows(server: &Wxauth, table: &str) -> i64 {
    server
        .database()
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| row.get(0))
        .unwrap()
}

/// How many times wxauth called WeChat's `api` (demo mode).
fn calls(server: &Wxauth, api: &str) -> u64 {
    server.fake("/fake/stats")[api].as_u64().unwrap_or(0)
}

fn exchange(server: &Wxauth, code: &str) -> Answer {
    server.get(&format!("get_openid_by_code?code={code}"))
}

#[test]
fn documented_errcodes_map_to_their_errors() {
    let server = Wxauth::start(&[]);
    for (code, error) in [
        ("fake-40029", "wechat_code_invalid"),
        ("fake-40163", "wechat_code_used"),
        ("fake-45011", "wechat_rate_limited"),
        ("fake-40226", "wechat_user_blocked"),
    ] {
        let answer = exchange(&server, code);
        assert_eq!(answer.body["error"], error, "{code}: {answer:?}");
        answer.assert_error(403, error);
    }
    assert_eq!(calls(&server, "jscode2session"), 4, "user errors are never retried");
    assert_eq!(rows(&server, "wechat_sessions"), 0);
    assert_eq!(rows(&server, "accounts"), 0);
}

#[test]
fn another_errcode_is_wechat_error_and_only_the_log_names_it() {
    let server = Wxauth::start(&[]);
    let answer = exchange(&server, "fake-errcode-40013");
    answer.assert_error(403, "wechat_error");
    let body = answer.body.to_string();
    assert!(!body.contains("40013"), "the errcode reached the client: {body}");
    assert!(!body.contains("fake errcode"), "the errmsg reached the client: {body}");
    server.log_containing("40013");
    assert_eq!(calls(&server, "jscode2session"), 1);
    assert_eq!(rows(&server, "wechat_sessions"), 0);
}

#[test]
fn a_busy_wechat_is_retried_once_then_unavailable() {
    let server = Wxauth::start(&[]);
    exchange(&server, "fake-busy").assert_error(502, "wechat_unavailable");
    assert_eq!(calls(&server, "jscode2session"), 2, "one call and one retry");
    assert_eq!(rows(&server, "wechat_sessions"), 0);
}

#[test]
fn busy_once_succeeds_on_the_retry() {
    let server = Wxauth::start(&[]);
    let result = exchange(&server, "fake-busy-once").result().clone();
    assert_eq!(calls(&server, "jscode2session"), 2, "the busy answer and the retry");
    let openid = result["openid"].as_str().unwrap().to_string();
    assert_eq!(openid.len(), 28);
    // The retry's answer is the demo user named by the code.
    let again = server.openid_for(&fresh_code("fake-busy-once"));
    assert_eq!(again["openid"], openid.as_str());
    let recorded: i64 = server
        .database()
        .query_row("SELECT count(*) FROM wechat_sessions WHERE openid = ?1", [&openid], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(recorded, 1);
}

#[test]
fn garbage_and_server_errors_are_unavailable() {
    let server = Wxauth::start(&[]);
    for code in ["fake-garbage", "fake-500"] {
        let answer = exchange(&server, code);
        assert_eq!(answer.body["error"], "wechat_unavailable", "{code}: {answer:?}");
        answer.assert_error(502, "wechat_unavailable");
        let body = answer.body.to_string();
        assert!(!body.contains("html") && !body.contains("internal error"), "{code}: {body}");
    }
    assert_eq!(rows(&server, "wechat_sessions"), 0);
    // wxauth itself is fine: the next code works.
    server.openid_for(&fresh_code("wechat-after-garbage"));
}

/// Regression test for the fake's `/fake/stats`: it must count every call that reached it,
/// including the ones it answers with garbage, HTTP 500 or not at all; and wxauth must ask once
/// for each of those (only errcode -1 is retried).
#[test]
fn misbehaving_answers_are_asked_once_and_counted() {
    let server = Wxauth::start(&[("WXAUTH_WECHAT_TIMEOUT_MS", "500")]);
    for code in ["fake-garbage", "fake-500", "fake-hang"] {
        let answer = exchange(&server, code);
        assert_eq!(answer.body["error"], "wechat_unavailable", "{code}: {answer:?}");
        answer.assert_error(502, "wechat_unavailable");
    }
    assert_eq!(calls(&server, "jscode2session"), 3, "one call each, none retried or uncounted");
}

#[test]
fn a_hanging_wechat_times_out_as_unavailable() {
    let server = Wxauth::start(&[("WXAUTH_WECHAT_TIMEOUT_MS", "500")]);
    let started = Instant::now();
    let answer = exchange(&server, "fake-hang");
    let elapsed = started.elapsed();
    answer.assert_error(502, "wechat_unavailable");
    assert!(elapsed >= Duration::from_millis(450), "answered before the timeout: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    server.log_containing("timeout");
    assert_eq!(rows(&server, "wechat_sessions"), 0);
}

#[test]
fn the_code_is_checked_before_wechat_is_asked() {
    let server = Wxauth::start(&[]);
    exchange(&server, "").assert_error(403, "missing_parameter");
    server.get("get_openid_by_code").assert_error(403, "missing_parameter");
    server.get("get_openid_by_code?other=1").assert_error(403, "missing_parameter");
    let long = format!("wechat-long.{}", "x".repeat(257 - "wechat-long.".len()));
    assert_eq!(long.len(), 257);
    for code in ["a%20b", "a+b", "a%01b", "%E4%B8%AD", long.as_str()] {
        let answer = exchange(&server, code);
        assert_eq!(answer.body["error"], "invalid_parameter", "{code}: {answer:?}");
        answer.assert_error(403, "invalid_parameter");
    }
    assert_eq!(calls(&server, "jscode2session"), 0, "WeChat was not asked");
    assert_eq!(rows(&server, "wechat_sessions"), 0);

    // 256 characters is still a code.
    let longest = &long[..256];
    assert_eq!(exchange(&server, longest).result()["is_registered"], false);
    assert_eq!(calls(&server, "jscode2session"), 1);
}

#[test]
fn the_session_key_stays_server_side_unless_exposed() {
    let hidden = Wxauth::start(&[]);
    let result = hidden.openid_for(&fresh_code("wechat-hidden"));
    assert!(result.get("session_key").is_none(), "{result}");
    let openid = result["openid"].as_str().unwrap();
    let (session_key, unionid): (String, Option<String>) = hidden
        .database()
        .query_row(
            "SELECT session_key, unionid FROM wechat_sessions WHERE appid = 'wxdemo' AND openid = ?1",
            [openid],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(session_key.len(), 24, "base64 of 16 bytes: {session_key}");
    assert_eq!(unionid.as_deref(), result["unionid"].as_str());

    let exposed = Wxauth::start(&[("WXAUTH_EXPOSE_SESSION_KEY", "true")]);
    let result = exposed.openid_for(&fresh_code("wechat-exposed"));
    let openid = result["openid"].as_str().unwrap();
    let recorded: String = exposed
        .database()
        .query_row("SELECT session_key FROM wechat_sessions WHERE openid = ?1", [openid], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(result["session_key"], recorded.as_str());
}

#[test]
fn a_double_tap_asks_wechat_once() {
    let server = Wxauth::start(&[]);
    let code = fresh_code("wechat-double-tap");
    let barrier = Barrier::new(8);
    let answers: Vec<Answer> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    exchange(&server, &code)
                })
            })
            .collect();
        threads.into_iter().map(|thread| thread.join().unwrap()).collect()
    });
    let openid = answers[0].result()["openid"].clone();
    assert!(openid.is_string());
    for answer in &answers {
        assert_eq!(answer.result()["openid"], openid);
    }
    assert_eq!(calls(&server, "jscode2session"), 1, "WeChat was asked once");
    assert_eq!(rows(&server, "wechat_sessions"), 1);
}

#[test]
fn a_configured_appid_talks_to_the_configured_base_url() {
    let fake = FakeProcess::start();
    let server = Wxauth::start(&[
        ("WXAUTH_WECHAT_APPID", "wxreal0001"),
        ("WXAUTH_WECHAT_SECRET", "s"),
        ("WXAUTH_WECHAT_BASE_URL", &fake.url),
    ]);
    assert!(server.fake.is_none(), "no demo mode with an appid and secret");
    let result = server.openid_for(&fresh_code("wechat-real"));
    let openid = result["openid"].as_str().unwrap().to_string();
    assert_eq!(fake.get("/fake/stats")["jscode2session"], 1, "the configured WeChat was asked");
    let appids: Vec<String> = {
        let database = server.database();
        let mut statement =
            database.prepare("SELECT appid FROM wechat_sessions WHERE openid = ?1").unwrap();
        statement.query_map([&openid], |row| row.get(0)).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(appids, vec!["wxreal0001".to_string()]);

    // The account and a phone-code registration live under the configured appid too.
    let code = fake.get("/fake/phone_code?phone=13500000006")["code"].as_str().unwrap().to_string();
    let answer = server.post("register", &json!({"openid": openid, "phone_code": code}));
    assert_eq!(answer.result()["account"]["phone"], "13500000006");
    let (appid, phone): (String, String) = server
        .database()
        .query_row("SELECT wx_appid, phone FROM accounts WHERE wx_openid = ?1", [&openid], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .unwrap();
    assert_eq!((appid.as_str(), phone.as_str()), ("wxreal0001", "13500000006"));

    // The same person in the demo mini-program has another openid, as with WeChat.
    let demo = Wxauth::start(&[]);
    let demo_openid = demo.openid_for(&fresh_code("wechat-real"))["openid"].clone();
    assert!(demo_openid.is_string());
    assert_ne!(demo_openid, openid.as_str());
}

#[test]
fn calls_past_max_in_flight_wait_while_wechat_answers() {
    // One call at a time, and eight clients at once: before, seven of eight failed with 502.
    let server = Wxauth::start(&[("WXAUTH_WECHAT_MAX_IN_FLIGHT", "1")]);
    let (clients, each) = (8, 25);
    let barrier = Barrier::new(clients);
    let openids: Vec<Vec<String>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..clients)
            .map(|client| {
                let (server, barrier) = (&server, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    (0..each)
                        .map(|_| {
                            let code = fresh_code(&format!("wechat-burst-{client}"));
                            let answer = exchange(server, &code);
                            assert_eq!(answer.status, 200, "{}", answer.body);
                            answer.result()["openid"].as_str().unwrap().to_string()
                        })
                        .collect()
                })
            })
            .collect();
        threads.into_iter().map(|thread| thread.join().unwrap()).collect()
    });
    assert!(openids.iter().flatten().all(|openid| openid.len() == 28));
    assert_eq!(server.fake("/fake/stats")["jscode2session"], clients * each);
    assert_eq!(rows(&server, "wechat_sessions"), clients as i64);
}

#[test]
fn calls_past_max_in_flight_fail_at_once_when_wechat_stops_answering() {
    let server = Wxauth::start(&[
        ("WXAUTH_WECHAT_MAX_IN_FLIGHT", "1"),
        ("WXAUTH_WECHAT_TIMEOUT_MS", "3000"),
    ]);
    // WeChat has just answered, yet a call past the cap does not wait for the hanging one's 3 s:
    // it gives up once the call in flight has gone 1 s without an answer.
    server.openid_for(&fresh_code("wechat-in-flight-before"));
    std::thread::scope(|scope| {
        let hanging = scope.spawn(|| {
            let started = Instant::now();
            (exchange(&server, "fake-hang"), started.elapsed())
        });
        // Wait until the hanging call has reached WeChat, and so holds the one slot.
        let deadline = Instant::now() + Duration::from_secs(2);
        while server.fake("/fake/stats")["jscode2session"] != 2 {
            assert!(Instant::now() < deadline, "the hanging call never reached the fake");
            std::thread::sleep(Duration::from_millis(10));
        }
        let started = Instant::now();
        let refused = exchange(&server, &fresh_code("wechat-in-flight-probe"));
        refused.assert_error(502, "wechat_unavailable");
        assert!(
            started.elapsed() < Duration::from_millis(2000),
            "refused after {:?}",
            started.elapsed()
        );

        // Requests that need no WeChat call are unaffected.
        let started = Instant::now();
        let answer = server.get("is_openid_registered?openid=oWxauthTestSomebody000000001");
        assert_eq!(answer.result(), &json!({"is_registered": false}));
        assert!(started.elapsed() < Duration::from_secs(1));

        let (answer, elapsed) = hanging.join().unwrap();
        answer.assert_error(502, "wechat_unavailable");
        assert!(elapsed >= Duration::from_millis(2500), "the hang ended early: {elapsed:?}");
        assert_eq!(server.fake("/fake/stats")["jscode2session"], 2, "the refused call never left");
    });
    // The slot is free again.
    server.openid_for(&fresh_code("wechat-in-flight-after"));
}
