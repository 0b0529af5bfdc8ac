//! The demo page: served in demo mode (or by `demo.page` against a fake on loopback) with its
//! security headers, its URL on stdout, its helpers reaching the fake with secrets redacted, and
//! nothing of it outside demo mode. The page itself is driven in a browser by tests/browser.rs.

use serde_json::{Value, json};

use crate::harness::{Answer, FakeProcess, TempDir, Wxauth, refused_start};

/// Checks a file of the page: 200, its content type, the security headers; returns its text.
fn page_file(server: &Wxauth, path: &str, content_type: &str) -> String {
    let answer = server.raw("GET", path, &[], None);
    assert_eq!(answer.status, 200, "{path}: {answer:?}");
    assert_eq!(answer.header("Content-Type"), Some(content_type), "{path}");
    assert_eq!(answer.header("X-Content-Type-Options"), Some("nosniff"), "{path}");
    let policy = answer.header("Content-Security-Policy").expect("a CSP").to_string();
    for directive in ["default-src 'none'", "script-src 'self'", "connect-src 'self'"] {
        assert!(policy.contains(directive), "{path}: {policy}");
    }
    assert!(!policy.contains("unsafe"), "{path}: {policy}");
    let text = answer.body.as_str().expect("text").to_string();
    // Nothing is loaded from anywhere but this server.
    assert!(!text.contains("http://") && !text.contains("https://"), "{path} names another host");
    text
}

/// A demo helper's JSON answer, which must be 200.
fn helper(server: &Wxauth, path_and_query: &str) -> Value {
    let answer = server.raw("GET", &format!("/demo/api/{path_and_query}"), &[], None);
    assert_eq!(answer.status, 200, "{path_and_query}: {answer:?}");
    assert_eq!(answer.header("X-Content-Type-Options"), Some("nosniff"));
    answer.body
}

#[test]
fn demo_mode_serves_the_page_at_the_root_and_names_it_beside_the_fake() {
    let server = Wxauth::start(&[]);
    let second = server.stdout_line(1);
    assert!(second.starts_with("demo mode: "), "{second}");
    assert!(second.contains("built-in fake WeChat at http://127.0.0.1:"), "{second}");
    assert!(second.ends_with(&format!("; demo page: {}/", server.base)), "{second}");

    let page = page_file(&server, "/", "text/html; charset=utf-8");
    assert_eq!(page_file(&server, "/demo/", "text/html; charset=utf-8"), page);
    assert!(page.contains(r#"<script src="/demo/app.js" defer></script>"#), "{page}");
    assert!(!page.contains("<script>") && !page.contains("style="), "no inline script or style");
    let script = page_file(&server, "/demo/app.js", "text/javascript; charset=utf-8");
    assert!(!script.contains("innerHTML"), "server values are rendered as text");
    page_file(&server, "/demo/style.css", "text/css; charset=utf-8");

    server.raw("POST", "/", &[], Some(b"{}")).assert_error(405, "method_not_allowed");
    server.raw("GET", "/demo/nothing", &[], None).assert_error(404, "not_found");
    server.raw("GET", "/demo/api/nothing", &[], None).assert_error(404, "not_found");
    // The API is where it was.
    assert_eq!(server.get("is_openid_registered?openid=x").result()["is_registered"], false);
}

#[test]
fn the_demo_helpers_play_the_wechat_client_and_show_what_the_fake_was_asked_without_secrets() {
    let server = Wxauth::start(&[]);
    let info = helper(&server, "info");
    assert_eq!(info["results"][0]["prefix"], "/miniprog/wx_auth/");
    assert_eq!(info["results"][0]["appid"], "wxdemo");
    let before = helper(&server, "wechat_log")["last"].as_u64().unwrap();

    // wx.login, played by the fake: a fresh code for the user, good once with WeChat.
    let code = helper(&server, "wx_login?user=alice")["code"].as_str().unwrap().to_string();
    assert!(code.starts_with("alice."), "{code}");
    assert_ne!(helper(&server, "wx_login?user=alice")["code"], code.as_str());
    let openid = server.openid_for(&code)["openid"].as_str().unwrap().to_string();
    let bad = server.raw("GET", "/demo/api/wx_login?user=%3Cimg%3E", &[], None);
    assert_eq!(bad.status, 400, "{bad:?}");

    // The legacy one-tap phone: encrypted under the session_key wxauth recorded.
    let encrypted = helper(&server, &format!("encrypt_phone?openid={openid}&phone=13700137000"));
    let answer = server.post(
        "register",
        &json!({"openid": openid, "encrypted_phone": encrypted["encryptedData"], "iv": encrypted["iv"]}),
    );
    assert_eq!(answer.result()["account"]["phone"], "13700137000");
    // The current one-tap phone: a phone code.
    let phone_code = helper(&server, "phone_code?phone=13900139000")["code"].clone();
    let answer = server.post("register", &json!({"openid": openid, "phone_code": phone_code}));
    assert_eq!(answer.result()["account"]["phone"], "13900139000");
    let phone: String = server
        .database()
        .query_row("SELECT phone FROM accounts WHERE wx_openid = ?1", [&openid], |row| row.get(0))
        .unwrap();
    assert_eq!(phone, "13900139000");

    // What the fake was asked since, in order, with the secrets redacted.
    let log = helper(&server, &format!("wechat_log?after={before}"));
    let entries = log["entries"].as_array().unwrap();
    let paths: Vec<&str> = entries.iter().map(|entry| entry["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "/fake/wx_login",
            "/fake/wx_login",
            "/sns/jscode2session",
            "/fake/wx_login",
            "/fake/encrypted_phone",
            "/fake/phone_code",
            "/cgi-bin/stable_token",
            "/wxa/business/getuserphonenumber",
        ]
    );
    let exchange = &entries[2];
    assert_eq!(exchange["query"]["js_code"], code.as_str());
    assert_eq!(exchange["query"]["secret"], "<redacted>");
    assert_eq!(exchange["answer"]["openid"], openid.as_str());
    assert_eq!(exchange["answer"]["session_key"], "<redacted>");
    assert_eq!(entries[6]["body"]["secret"], "<redacted>");
    assert_eq!(entries[6]["answer"]["access_token"], "<redacted>");
    assert_eq!(entries[7]["query"]["access_token"], "<redacted>");
    let text = log.to_string();
    let session_key: String = server
        .database()
        .query_row("SELECT session_key FROM wechat_sessions LIMIT 1", [], |row| row.get(0))
        .unwrap();
    assert!(!text.contains(&session_key), "a session_key in the log: {text}");
    assert!(!text.contains("fake-access-token-"), "an access token in the log: {text}");
    assert_eq!(log["last"].as_u64().unwrap(), before + 8);
    assert_eq!(helper(&server, &format!("wechat_log?after={}", before + 8))["entries"], json!([]));
}

/// Every path of the page and its helpers, and the answer each gets outside demo mode.
fn assert_no_page(server: &Wxauth) {
    for path in [
        "/",
        "/demo",
        "/demo/",
        "/demo/app.js",
        "/demo/style.css",
        "/demo/api/info",
        "/demo/api/wx_login?user=alice",
        "/demo/api/encrypt_phone?openid=o&phone=13700137000",
        "/demo/api/phone_code?phone=13700137000",
        "/demo/api/wechat_log",
    ] {
        let answer: Answer = server.raw("GET", path, &[], None);
        answer.assert_error(404, "not_found");
        assert_eq!(answer.header("Content-Security-Policy"), None, "{path}");
    }
}

#[test]
fn outside_demo_mode_the_page_and_its_helpers_are_not_found() {
    let fake = FakeProcess::start();
    let server = Wxauth::start(&[
        ("WXAUTH_WECHAT_APPID", "wxreal0002"),
        ("WXAUTH_WECHAT_SECRET", "configured-app-secret"),
        ("WXAUTH_WECHAT_BASE_URL", &fake.url),
    ]);
    assert_no_page(&server);
    // Not even against a fake on loopback, unless demo.page says so.
    assert_eq!(fake.get("/fake/log")["entries"], json!([]), "the fake was never asked");
}

#[test]
fn demo_page_serves_the_page_against_a_configured_fake_on_loopback() {
    let fake = FakeProcess::start();
    let secret = "configured-app-secret-for-the-fake";
    let server = Wxauth::start(&[
        ("WXAUTH_WECHAT_APPID", "wxreal0003"),
        ("WXAUTH_WECHAT_SECRET", secret),
        ("WXAUTH_WECHAT_BASE_URL", &fake.url),
        ("WXAUTH_DEMO_PAGE", "true"),
    ]);
    assert_eq!(server.stdout_line(1), format!("demo page: {}/", server.base));
    page_file(&server, "/", "text/html; charset=utf-8");
    assert_eq!(helper(&server, "info")["results"][0]["appid"], "wxreal0003");
    let code = helper(&server, "wx_login?user=bob")["code"].as_str().unwrap().to_string();
    let openid = server.openid_for(&code)["openid"].clone();
    let log = helper(&server, "wechat_log").to_string();
    assert!(log.contains(openid.as_str().unwrap()), "{log}");
    assert!(!log.contains(secret), "the app secret reached the page: {log}");
}

#[test]
fn demo_page_against_anything_but_loopback_is_refused_at_start() {
    let dir = TempDir::new();
    let (status, stdout, stderr) = refused_start(
        &dir,
        &[
            ("WXAUTH_WECHAT_APPID", "wxreal0004"),
            ("WXAUTH_WECHAT_SECRET", "s"),
            ("WXAUTH_DEMO_PAGE", "true"),
        ],
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.starts_with("wxauth: ") && stderr.contains("demo.page"), "{stderr}");
    assert!(stderr.contains("https://api.weixin.qq.com"), "{stderr}");
    assert!(!dir.0.join("wxauth.db").exists(), "refused before the database");
}
