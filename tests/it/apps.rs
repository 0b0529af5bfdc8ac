//! Several mini-programs in one deployment (issue 21): each `[apps.NAME]` has the whole API under
//! its own prefix with its own WeChat client, tokens of its own audience and its own metrics
//! label; one person (one WeChat unionid) is one account across them.

use std::sync::{Arc, Barrier};

use serde_json::{Value, json};

use crate::cli::{run_in, run_on};
use crate::harness::{Answer, FakeProcess, Wxauth, agent, fresh_code, send};
use crate::login::{jwt, token_of};

/// The shop app beside the default one, in demo mode: both against the built-in fake WeChat.
pub(crate) const SHOP: (&str, &str) = ("WXAUTH_APPS_SHOP_PREFIX", "/shop/wx_auth/");

/// A request under `prefix`, with a token when given.
pub(crate) fn call(
    server: &Wxauth,
    method: &str,
    prefix: &str,
    endpoint: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> Answer {
    let authorization = token.map(jwt);
    let headers: Vec<(&str, &str)> =
        authorization.iter().map(|value| ("Authorization", value.as_str())).collect();
    let body = body.map(Value::to_string);
    send(
        &agent(),
        method,
        &format!("{}{prefix}{endpoint}", server.base),
        &headers,
        body.as_deref().map(str::as_bytes),
    )
}

/// Logs demo user `name` in through the app at `prefix` by a fresh code: (openid, login results).
pub(crate) fn login_through(server: &Wxauth, prefix: &str, name: &str) -> (String, Value) {
    let code = fresh_code(name);
    let exchanged =
        call(server, "GET", prefix, &format!("get_openid_by_code?code={code}"), None, None);
    let openid = exchanged.result()["openid"].as_str().unwrap().to_string();
    let login = call(server, "POST", prefix, "login", Some(&json!({"openid": openid})), None);
    (openid, login.result().clone())
}

fn count(server: &Wxauth, sql: &str) -> i64 {
    server.database().query_row(sql, [], |row| row.get(0)).unwrap()
}

/// Two configured apps against a fake WeChat: each exchanges codes with its own appid and secret,
/// serves the whole API under its prefix, and the operator sees both, secrets redacted.
#[test]
fn two_configured_apps_serve_the_api_under_their_prefixes_with_their_own_appids() {
    let fake = FakeProcess::start();
    let server = Wxauth::start(&[
        ("WXAUTH_WECHAT_APPID", "wxmainapp"),
        ("WXAUTH_WECHAT_SECRET", "main-app-secret-value"),
        ("WXAUTH_WECHAT_BASE_URL", &fake.url),
        ("WXAUTH_APPS_SHOP_APPID", "wxshopapp"),
        ("WXAUTH_APPS_SHOP_SECRET", "shop-app-secret-value"),
        ("WXAUTH_OPENID_LOGIN", "open"),
    ]);
    let (main_openid, main) = login_through(&server, "/miniprog/wx_auth/", "dana");
    let (shop_openid, shop) = login_through(&server, "/shop/wx_auth/", "dana");
    assert_ne!(main_openid, shop_openid, "WeChat gives one person an openid per appid");
    assert_eq!(main["account"]["wx_openid"], json!(main_openid));
    assert_eq!(shop["account"]["wx_openid"], json!(shop_openid));
    let appids: Vec<String> = fake.get("/fake/log")["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|request| request["path"] == "/sns/jscode2session")
        .map(|request| request["query"]["appid"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(appids, ["wxmainapp", "wxshopapp"]);

    // Every endpoint is under each prefix; the other paths are not.
    let registered = call(
        &server,
        "GET",
        "/shop/wx_auth/",
        &format!("is_openid_registered?openid={shop_openid}"),
        None,
        None,
    );
    assert_eq!(registered.result(), &json!({"is_registered": false}));
    call(&server, "GET", "/shop/wx_auth/", "nope", None, None).assert_error(404, "not_found");
    call(&server, "GET", "/shop/", "me", None, None).assert_error(404, "not_found");

    let environment = [
        ("WXAUTH_WECHAT_APPID", "wxmainapp"),
        ("WXAUTH_WECHAT_SECRET", "main-app-secret-value"),
        ("WXAUTH_APPS_SHOP_APPID", "wxshopapp"),
        ("WXAUTH_APPS_SHOP_SECRET", "shop-app-secret-value"),
    ];
    let shown = run_in(&server.dir.0, &["check-config"], &environment).success().to_string();
    assert!(shown.contains("[apps.shop]"), "{shown}");
    assert!(shown.contains(r#"appid = "wxshopapp""#), "{shown}");
    assert!(shown.contains(r#"prefix = "/shop/wx_auth/""#), "{shown}");
    assert!(shown.contains(r#"audience = "shop""#), "{shown}");
    assert!(!shown.contains("shop-app-secret-value"), "{shown}");
}

/// The fake gives a demo user the same unionid in every app: the first login through the second
/// app joins the account the first made, which keeps its registration; each app shows its own
/// openid, and `users show` lists both identities.
#[test]
fn a_first_login_through_another_app_joins_the_account_of_the_unionid() {
    let server = Wxauth::start(&[SHOP, ("WXAUTH_OPENID_LOGIN", "open")]);
    let (main_openid, main) = login_through(&server, "/miniprog/wx_auth/", "erin");
    let id = main["account"]["id"].clone();
    let registered =
        server.post("register", &json!({"openid": main_openid, "phone": "13800138021"}));
    assert_eq!(registered.result()["account"]["is_register"], true);

    let code = fresh_code("erin");
    let exchanged = call(
        &server,
        "GET",
        "/shop/wx_auth/",
        &format!("get_openid_by_code?code={code}"),
        None,
        None,
    );
    let shop_openid = exchanged.result()["openid"].as_str().unwrap().to_string();
    assert_eq!(exchanged.result()["unionid"], main["account"]["wx_unionid"]);
    let shop = call(
        &server,
        "POST",
        "/shop/wx_auth/",
        "login",
        Some(&json!({"openid": shop_openid})),
        None,
    );
    let account = &shop.result()["account"];
    assert_eq!(account["id"], id, "one person, one account");
    assert_eq!((&account["is_register"], &account["phone"]), (&json!(true), &json!("13800138021")));
    assert_eq!(account["wx_openid"], json!(shop_openid), "the shop app's openid");
    // Each app shows its own openid for the account, by token too.
    let shop_token = token_of(shop.result());
    let me = call(&server, "GET", "/shop/wx_auth/", "me", None, Some(&shop_token));
    assert_eq!(me.result()["wx_openid"], json!(shop_openid));
    let main_token = token_of(&main);
    let me = call(&server, "GET", "/miniprog/wx_auth/", "me", None, Some(&main_token));
    assert_eq!(me.result()["wx_openid"], json!(main_openid));
    // Registration through the shop app of a joined person writes the one account too.
    let again = call(
        &server,
        "POST",
        "/shop/wx_auth/",
        "register",
        Some(&json!({"openid": shop_openid, "phone": "13800138022"})),
        None,
    );
    assert_eq!(
        (&again.result()["account"]["id"], &again.result()["account"]["phone"]),
        (&id, &json!("13800138022"))
    );

    assert_eq!(count(&server, "SELECT count(*) FROM accounts"), 1);
    assert_eq!(count(&server, "SELECT count(*) FROM identities"), 2);
    let mut shown: Value =
        serde_json::from_str(run_on(&server, &["users", "show", &shop_openid]).success()).unwrap();
    assert_eq!(
        shown.as_object_mut().unwrap().remove("identities"),
        Some(json!([
            {"appid": "wxdemo", "openid": main_openid},
            {"appid": "wxdemo_shop", "openid": shop_openid},
        ]))
    );
    assert_eq!(shown["id"], id);
}

/// Two apps' first logins of one person race, for many people at once: each person still ends
/// with exactly one account, whichever login wrote first.
#[test]
fn racing_first_logins_through_two_apps_make_one_account_per_person() {
    let server = Arc::new(Wxauth::start(&[SHOP, ("WXAUTH_OPENID_LOGIN", "open")]));
    const PEOPLE: usize = 12;
    let barrier = Arc::new(Barrier::new(PEOPLE * 2));
    let mut threads = Vec::new();
    for person in 0..PEOPLE {
        for prefix in ["/miniprog/wx_auth/", "/shop/wx_auth/"] {
            let (server, barrier) = (server.clone(), barrier.clone());
            threads.push(std::thread::spawn(move || {
                let name = format!("racer{person}");
                let code = fresh_code(&name);
                let exchanged = call(
                    &server,
                    "GET",
                    prefix,
                    &format!("get_openid_by_code?code={code}"),
                    None,
                    None,
                );
                let openid = exchanged.result()["openid"].as_str().unwrap().to_string();
                barrier.wait();
                let login =
                    call(&server, "POST", prefix, "login", Some(&json!({"openid": openid})), None);
                (person, login.result()["account"]["id"].as_i64().unwrap())
            }));
        }
    }
    let mut ids = vec![Vec::new(); PEOPLE];
    for thread in threads {
        let (person, id) = thread.join().unwrap();
        ids[person].push(id);
    }
    for (person, ids) in ids.iter().enumerate() {
        assert_eq!(ids[0], ids[1], "person {person} got two accounts: {ids:?}");
    }
    assert_eq!(count(&server, "SELECT count(*) FROM accounts"), PEOPLE as i64);
    assert_eq!(count(&server, "SELECT count(*) FROM identities"), 2 * PEOPLE as i64);
    assert_eq!(count(&server, "SELECT count(DISTINCT wx_unionid) FROM accounts"), PEOPLE as i64);
}

/// Registrations and first logins of every kind racing at once (on MySQL, the accounts of new
/// identities are made in batches with multi-row statements: `Writer::write_account`) end as
/// each would alone: a new person gets one account, registered or logged in with the profile
/// sent, also when through both apps at once or twice in one app; an existing account, or one
/// loaded behind the server's back without its identity row, is registered in place; a known
/// person's first registration through the other app joins that person's account; a disabled
/// person is refused and nothing of theirs is written.
#[test]
fn racing_registrations_and_first_logins_end_as_each_would_alone() {
    const MAIN: &str = "/miniprog/wx_auth/";
    const SHOP_APP: &str = "/shop/wx_auth/";
    let server = Arc::new(Wxauth::start(&[SHOP, ("WXAUTH_OPENID_LOGIN", "open")]));
    let exchange = |prefix: &str, name: &str| {
        let code = fresh_code(name);
        let path = format!("get_openid_by_code?code={code}");
        let exchanged = call(&server, "GET", prefix, &path, None, None);
        exchanged.result()["openid"].as_str().unwrap().to_string()
    };
    // (person, prefix, openid, the account id it must get when known beforehand)
    let mut registrations: Vec<(String, &str, String, Option<i64>)> = Vec::new();
    for index in 0..8 {
        let person = format!("new{index}");
        registrations.push((person.clone(), MAIN, exchange(MAIN, &person), None));
    }
    for (kind, prefix) in [("known", MAIN), ("joiner", SHOP_APP)] {
        for index in 0..4 {
            let person = format!("{kind}{index}");
            let (_, login) = login_through(&server, MAIN, &person);
            let id = login["account"]["id"].as_i64();
            let openid = exchange(prefix, &person);
            registrations.push((person, prefix, openid, id));
        }
    }
    for index in 0..4 {
        let person = format!("both{index}");
        for prefix in [MAIN, SHOP_APP] {
            registrations.push((person.clone(), prefix, exchange(prefix, &person), None));
        }
    }
    for index in 0..2 {
        let person = format!("twice{index}");
        let openid = exchange(MAIN, &person);
        for _ in 0..2 {
            registrations.push((person.clone(), MAIN, openid.clone(), None));
        }
    }
    let loaded = "oWxauthLoadedWithoutIdentity01";
    server.execute(&format!(
        "INSERT INTO accounts (username, wx_appid, wx_openid, date_joined)
         VALUES ('{loaded}', 'wxdemo', '{loaded}', 0)"
    ));
    let loaded_id =
        count(&server, &format!("SELECT id FROM accounts WHERE wx_openid = '{loaded}'"));
    registrations.push(("loaded".into(), MAIN, loaded.into(), Some(loaded_id)));
    let (_, login) = login_through(&server, MAIN, "disabled");
    let disabled_id = login["account"]["id"].as_i64().unwrap();
    run_on(&server, &["users", "disable", &disabled_id.to_string()]).success();
    let disabled_openid = exchange(SHOP_APP, "disabled");
    // First logins, with profile fields, racing beside them: new people, and one through both
    // apps at once.
    let mut logins: Vec<(String, &str, String)> = Vec::new();
    for index in 0..4 {
        let person = format!("firstlogin{index}");
        logins.push((person.clone(), MAIN, exchange(MAIN, &person)));
    }
    for prefix in [MAIN, SHOP_APP] {
        logins.push(("loginboth".into(), prefix, exchange(prefix, "loginboth")));
    }

    let barrier = Arc::new(Barrier::new(registrations.len() + logins.len() + 1));
    let racers: Vec<_> = registrations
        .iter()
        .enumerate()
        .map(|(index, (_, prefix, openid, _))| {
            let (server, barrier) = (server.clone(), barrier.clone());
            let (prefix, openid) = (prefix.to_string(), openid.clone());
            std::thread::spawn(move || {
                let phone = format!("138{index:08}");
                barrier.wait();
                let body = json!({"openid": openid, "phone": phone});
                (phone, call(&server, "POST", &prefix, "register", Some(&body), None))
            })
        })
        .collect();
    let login_racers: Vec<_> = logins
        .iter()
        .map(|(person, prefix, openid)| {
            let (server, barrier) = (server.clone(), barrier.clone());
            let (prefix, openid, person) = (prefix.to_string(), openid.clone(), person.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let body = json!({"openid": openid, "wx_nickname": person, "wx_city": "杭州"});
                call(&server, "POST", &prefix, "login", Some(&body), None)
            })
        })
        .collect();
    let refused = {
        let (server, barrier) = (server.clone(), barrier.clone());
        std::thread::spawn(move || {
            barrier.wait();
            let body = json!({"openid": disabled_openid, "phone": "13900000000"});
            call(&server, "POST", SHOP_APP, "register", Some(&body), None)
        })
    };
    let mut ids: std::collections::HashMap<String, i64> = Default::default();
    for (racer, (person, _, openid, known)) in racers.into_iter().zip(&registrations) {
        let (phone, answer) = racer.join().unwrap();
        let account = &answer.result()["account"];
        let id = account["id"].as_i64().unwrap();
        assert_eq!(account["is_register"], true, "{person}: {account}");
        assert_eq!(account["phone"], json!(phone), "{person}: the account as it wrote it");
        assert_eq!(account["wx_openid"], json!(openid), "{person}: its app's openid");
        if let Some(known) = known {
            assert_eq!(id, *known, "{person}: registered in place");
        }
        assert_eq!(*ids.entry(person.clone()).or_insert(id), id, "{person}: one account");
    }
    for (racer, (person, _, openid)) in login_racers.into_iter().zip(&logins) {
        let answer = racer.join().unwrap();
        let account = &answer.result()["account"];
        let id = account["id"].as_i64().unwrap();
        assert_eq!(account["is_register"], false, "{person}: {account}");
        assert_eq!(account["phone"], Value::Null, "{person}: {account}");
        assert_eq!(
            (&account["wx_nickname"], &account["wx_city"]),
            (&json!(person), &json!("杭州")),
            "{person}: the profile sent"
        );
        assert_eq!(account["wx_openid"], json!(openid), "{person}: its app's openid");
        assert_eq!(*ids.entry(person.clone()).or_insert(id), id, "{person}: one account");
    }
    refused.join().unwrap().assert_error(403, "account_disabled");

    let people = ids.len() as i64 + 1;
    assert_eq!(people, 29);
    let distinct: std::collections::HashSet<_> = ids.values().collect();
    assert_eq!(distinct.len(), ids.len(), "one account per person");
    assert_eq!(count(&server, "SELECT count(*) FROM accounts"), people);
    assert_eq!(count(&server, "SELECT count(*) FROM accounts WHERE is_register = 1"), 23);
    // new 8, known 4, joiner 4 × 2 apps, both 4 × 2, twice 2, loaded 1, disabled 1 (main only);
    // first logins 4, and one through both apps 2.
    assert_eq!(count(&server, "SELECT count(*) FROM identities"), 38);
    let disabled_identities =
        format!("SELECT count(*) FROM identities WHERE account_id = {disabled_id}");
    assert_eq!(count(&server, &disabled_identities), 1, "no identity for the refused app");
    // A new account holds what one write at a time gives it (on MySQL, a batch made these unless
    // it gave way; the columns are the same either way).
    let made = |openid: &str| {
        server
            .database()
            .query_row(
                "SELECT username, join_ip, last_ip, date_joined = last_login, wx_gender, birthday,
                        wx_unionid IS NOT NULL, is_register, wx_city
                 FROM accounts WHERE wx_openid = ?1",
                [openid],
                |row| {
                    Ok((
                        row.get::<_, String>(0)? == openid,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, bool>(3)?,
                        row.get::<_, i64>(4)?,
                        row.get::<_, Option<String>>(5)?,
                        row.get::<_, bool>(6)?,
                        row.get::<_, bool>(7)?,
                        row.get::<_, Option<String>>(8)?,
                    ))
                },
            )
            .unwrap()
    };
    let local = "127.0.0.1".to_string();
    assert_eq!(
        made(&registrations[0].2),
        (true, local.clone(), local.clone(), true, 0, None, true, true, None),
        "a new person's registration"
    );
    assert_eq!(
        made(&logins[0].2),
        (true, local.clone(), local, true, 0, None, true, false, Some("杭州".into())),
        "a new person's first login"
    );
    // A batch that fails on a database error (not an unavailable server, a lock wait or a refused
    // check, which each write then hears alone) is logged: none may here, not even the one with
    // the account loaded without its identity row, which the batch's lookup leaves alone.
    let log = server.stderr();
    assert!(!log.contains("new accounts failed"), "{log}");
}

/// A token carries its app's audience: the other app refuses it as any bad token, `verify`
/// under either prefix accepts it and names its app, and logout through one app revokes the
/// person's tokens of every app.
#[test]
fn a_token_is_its_apps_verify_takes_any_apps_and_logout_ends_them_all() {
    let server = Wxauth::start(&[SHOP, ("WXAUTH_OPENID_LOGIN", "open")]);
    let (_, main) = login_through(&server, "/miniprog/wx_auth/", "fred");
    let (_, shop) = login_through(&server, "/shop/wx_auth/", "fred");
    let (main_token, shop_token) = (token_of(&main), token_of(&shop));
    let claims = crate::login::inspect_token(&shop_token, "")["claims"].clone();
    assert_eq!(claims["aud"], "shop");
    let claims = crate::login::inspect_token(&main_token, "")["claims"].clone();
    assert_eq!(claims["aud"], "miniprog", "the default app's tokens are as before");

    call(&server, "GET", "/miniprog/wx_auth/", "me", None, Some(&shop_token))
        .assert_error(403, "token_invalid");
    call(&server, "GET", "/shop/wx_auth/", "me", None, Some(&main_token))
        .assert_error(403, "token_invalid");
    assert_eq!(call(&server, "GET", "/shop/wx_auth/", "me", None, Some(&shop_token)).status, 200);
    for prefix in ["/miniprog/wx_auth/", "/shop/wx_auth/"] {
        for (token, app) in [(&shop_token, "shop"), (&main_token, "default")] {
            let verified = call(&server, "GET", prefix, "verify", None, Some(token));
            assert_eq!(verified.status, 200, "{verified:?}");
            assert_eq!(verified.result()["app"], app);
            assert_eq!(verified.result()["user_id"], main["account"]["id"]);
        }
    }

    let logout =
        call(&server, "POST", "/miniprog/wx_auth/", "logout", Some(&json!({})), Some(&main_token));
    assert_eq!(logout.result(), &json!({"logged_out": true}));
    let verified = call(&server, "GET", "/shop/wx_auth/", "verify", None, Some(&shop_token));
    verified.assert_error(401, "token_revoked");
    call(&server, "GET", "/shop/wx_auth/", "me", None, Some(&shop_token))
        .assert_error(403, "token_revoked");
}

/// The metrics and the access lines name the app a request came through; the demo page's
/// `info` lists the apps for the page to switch between.
#[test]
fn metrics_access_lines_and_the_demo_page_name_the_apps() {
    let server = Wxauth::start(&[SHOP]);
    call(&server, "GET", "/shop/wx_auth/", "is_openid_registered?openid=oAppsMetrics", None, None);
    call(&server, "GET", "/shop/wx_auth/", "is_openid_registered?openid=oAppsMetrics", None, None);
    server.get("is_openid_registered?openid=oAppsMetrics");
    let code = fresh_code("gina");
    call(&server, "GET", "/shop/wx_auth/", &format!("get_openid_by_code?code={code}"), None, None);

    let metrics = server.raw("GET", "/metrics", &[], None);
    let text = metrics.body.as_str().expect("a text body").to_string();
    let line =
        |wanted: &str| text.lines().find(|line| line.starts_with(wanted)).map(str::to_string);
    assert_eq!(
        line(r#"wxauth_http_requests_total{route="is_openid_registered",status="200",app="shop"}"#),
        Some(
            r#"wxauth_http_requests_total{route="is_openid_registered",status="200",app="shop"} 2"#
                .into()
        ),
        "{text}"
    );
    assert_eq!(
        line(r#"wxauth_http_requests_total{route="is_openid_registered",status="200",app="default"}"#),
        Some(r#"wxauth_http_requests_total{route="is_openid_registered",status="200",app="default"} 1"#.into()),
        "{text}"
    );
    assert!(
        line(r#"wxauth_wechat_calls_total{api="jscode2session",outcome="ok",app="shop"}"#)
            .is_some(),
        "{text}"
    );
    let access = server.log_containing("/shop/wx_auth/is_openid_registered");
    assert!(
        access.lines().any(|line| line.contains("/shop/wx_auth/is_openid_registered 200")
            && line.contains(" app=shop")),
        "{access}"
    );

    let info = server.raw("GET", "/demo/api/info", &[], None);
    assert_eq!(
        info.result()["apps"],
        json!([
            {"name": "default", "prefix": "/miniprog/wx_auth/", "appid": "wxdemo"},
            {"name": "shop", "prefix": "/shop/wx_auth/", "appid": "wxdemo_shop"},
        ])
    );
}
