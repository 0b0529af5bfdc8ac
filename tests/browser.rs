//! The demo page in a real browser: Chromium driven by chromedriver over W3C WebDriver (plain HTTP
//! with ureq). It clicks through login, the three registrations, me, verify, logout with the
//! revoked token refused, one WeChat error, a nickname that is markup and a repeated code, and
//! checks what the page shows and what the database holds after each; it saves screenshots as
//! target/demo-page.png (wide) and target/demo-page-narrow.png (a phone's width).
//!
//! A separate test target that `cargo test` leaves out (`test = false` in Cargo.toml): it needs
//! Debian's `chromium` and `chromium-driver`, which `.ci/run` installs before it runs
//! `cargo test --test browser`. Without them it fails: it cannot pass by doing nothing.

#[allow(dead_code)]
#[path = "it/harness.rs"]
mod harness;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use base64::Engine;
use serde_json::{Value, json};

use harness::{Wxauth, agent};

/// W3C WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process with one headless Chromium session; both end on drop.
struct Browser {
    driver: Child,
    session: String,
    agent: ureq::Agent,
}

impl Browser {
    fn start(width: u32, height: u32) -> Browser {
        let mut driver = Command::new("chromedriver")
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run chromedriver ({error}): apt-get install chromium chromium-driver"
                )
            });
        let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
        let port = loop {
            let line = lines.next().and_then(Result::ok).expect("chromedriver printed no port");
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                break rest.trim_end_matches('.').to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let mut browser =
            Browser { driver, session: format!("http://127.0.0.1:{port}"), agent: agent() };
        let window = format!("--window-size={width},{height}");
        let created = browser.command(
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", window, "--lang=zh-CN"],
                },
            }}}),
        );
        let id = created["sessionId"].as_str().expect("a session id").to_string();
        browser.session = format!("{}/session/{id}", browser.session);
        // Finding an element waits for it this long: the page's steps are asynchronous.
        browser.command("POST", "/timeouts", json!({"implicit": 30_000}));
        browser
    }

    /// One WebDriver command (relative to the session once there is one); its `value`.
    fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.session);
        let body = (method == "POST").then(|| body.to_string());
        let headers: &[(&str, &str)] = &[("Content-Type", "application/json")];
        let answer =
            harness::send(&self.agent, method, &url, headers, body.as_deref().map(str::as_bytes));
        assert_eq!(answer.status, 200, "{method} {path}: {answer:?}");
        answer.body["value"].clone()
    }

    fn open(&self, url: &str) {
        self.command("POST", "/url", json!({"url": url}));
    }

    /// The first element matching a CSS selector, waiting for it to appear.
    fn find(&self, selector: &str) -> String {
        let found =
            self.command("POST", "/element", json!({"using": "css selector", "value": selector}));
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {selector}: {found}"))
            .to_string()
    }

    fn click(&self, selector: &str) {
        let element = self.find(selector);
        self.command("POST", &format!("/element/{element}/click"), json!({}));
    }

    fn text(&self, selector: &str) -> String {
        let element = self.find(selector);
        self.command("GET", &format!("/element/{element}/text"), Value::Null)
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Replaces what an input holds with `text`, typed.
    fn type_into(&self, selector: &str, text: &str) {
        let element = self.find(selector);
        self.command("POST", &format!("/element/{element}/clear"), json!({}));
        self.command("POST", &format!("/element/{element}/value"), json!({"text": text}));
    }

    fn script(&self, script: &str) -> Value {
        self.command("POST", "/execute/sync", json!({"script": script, "args": []}))
    }

    /// Clicks a button of the page and waits until its step is done (the page counts them).
    fn step(&self, button: &str, done: usize) {
        self.click(button);
        self.find(&format!("body[data-completed=\"{done}\"]"));
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.command("GET", "/screenshot", Value::Null);
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        // CARGO_TARGET_TMPDIR is target/tmp.
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.session.contains("/session/") {
            let _ = harness::send(&self.agent, "DELETE", &self.session, &[], None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The account's phone, registration and token version in the database.
fn stored(server: &Wxauth, openid: &str) -> (Option<String>, bool, i64, Option<String>) {
    server
        .database()
        .query_row(
            "SELECT phone, is_register, token_version, wx_nickname FROM accounts WHERE wx_openid = ?1",
            [openid],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .unwrap()
}

#[test]
fn the_demo_page_plays_the_whole_flow_in_a_browser() {
    let server = Wxauth::start(&[]);
    let browser = Browser::start(1280, 860);
    browser.open(&format!("{}/", server.base));
    browser.find("body[data-completed=\"0\"]");
    assert!(browser.text("h1").contains("wxauth"));

    // Log in as alice.
    browser.step("#btn-login", 1);
    assert!(browser.text("#acc-state").contains("logged in"));
    assert_eq!(browser.text("#acc-nickname"), "Alice");
    let openid = browser.text("#acc-openid");
    assert!(openid.starts_with('o') && openid.len() == 28, "{openid}");
    let login = browser.text("li[data-action=\"login\"]");
    for shown in [
        "get_openid_by_code",
        "POST /miniprog/wx_auth/login",
        "jscode2session",
        "\"sub\"",
        "到期 expires",
    ] {
        assert!(login.contains(shown), "the login step shows {shown}: {login}");
    }
    // What the fake was asked, without the app secret or the session_key.
    assert!(login.contains("secret=<redacted>"), "{login}");
    assert!(login.contains("\"session_key\": \"<redacted>\""), "{login}");
    assert_eq!(stored(&server, &openid), (None, false, 0, Some("Alice".to_string())));

    // The three registrations, each seen on the page and in the database.
    for (button, phone, done) in [
        ("#btn-register-typed", "13800138000", 2),
        ("#btn-register-code", "13900139000", 3),
        ("#btn-register-encrypted", "13700137000", 4),
    ] {
        browser.type_into("#phone", phone);
        browser.step(button, done);
        assert_eq!(browser.text("#acc-phone"), phone, "{button}");
        assert!(browser.text("#acc-registered").contains("yes"), "{button}");
        assert_eq!(stored(&server, &openid).0.as_deref(), Some(phone), "{button}");
        assert!(stored(&server, &openid).1, "{button}");
    }
    let legacy = browser.text("li[data-action=\"register-encrypted\"]");
    assert!(
        legacy.contains("encrypted_phone") && legacy.contains("/fake/encrypted_phone"),
        "{legacy}"
    );
    let one_tap = browser.text("li[data-action=\"register-code\"]");
    assert!(one_tap.contains("getuserphonenumber"), "{one_tap}");
    // The account at the top of the phone, beside the last step.
    browser.script("document.querySelector('.screen').scrollTop = 0");
    browser.screenshot("demo-page.png");

    browser.step("#btn-me", 5);
    assert!(browser.text("li[data-action=\"me\"]").contains("\"phone\": \"13700137000\""));
    browser.step("#btn-verify", 6);
    assert!(browser.text("li[data-action=\"verify\"]").contains("\"user_id\""));

    // Logout, then the old token is refused.
    browser.step("#btn-logout", 7);
    let logout = browser.text("li[data-action=\"logout\"]");
    assert!(logout.contains("\"logged_out\": true"), "{logout}");
    assert!(
        logout.contains("token_revoked") && logout.contains("the revoked token is refused"),
        "{logout}"
    );
    assert!(browser.text("#acc-state").contains("logged out"));
    assert_eq!(stored(&server, &openid).2, 1, "logout raised the token version");

    // WeChat refuses the code: the error a client gets.
    browser.step("#btn-fake-40029", 8);
    let refused = "li[data-action=\"fake-40029\"]";
    assert_eq!(browser.text(&format!("{refused} .error-name")), "wechat_code_invalid");
    assert_eq!(browser.text(&format!("{refused} .status")), "403");
    assert!(browser.text(refused).contains("\"errcode\": 40029"), "the fake's answer is shown");

    // Another user, with a nickname that is markup: it shows as text, and nothing runs.
    browser.click("#user option[value=\"bob\"]");
    let hostile = "<img src=x onerror=\"document.title='pwned'\">Bob";
    browser.type_into("#nickname", hostile);
    browser.step("#btn-login", 9);
    assert_eq!(browser.text("#acc-nickname"), hostile);
    assert_eq!(browser.script("return document.querySelectorAll('img').length"), 0);
    assert_ne!(browser.script("return document.title"), "pwned");
    let bob = browser.text("#acc-openid");
    assert_ne!(bob, openid);
    assert_eq!(stored(&server, &bob), (None, false, 0, Some(hostile.to_string())));

    // One code sent twice (a retry, a double tap): the same answer both times, not 40163.
    browser.step("#btn-repeat", 10);
    let repeated = browser.text("li[data-action=\"repeat\"]");
    assert!(repeated.contains("the same answer, not 40163"), "{repeated}");
    assert!(!repeated.contains("wechat_code_used"), "{repeated}");
    assert!(browser.text("#status").contains("10 steps done"));

    // On a phone's width the log goes below the mini-program.
    browser.command("POST", "/window/rect", json!({"width": 420, "height": 900}));
    let stacked = browser.script(
        "const phone = document.querySelector('.phone').getBoundingClientRect();
         const log = document.querySelector('.log-pane').getBoundingClientRect();
         return log.top >= phone.bottom;",
    );
    assert_eq!(stacked, true);
    browser.screenshot("demo-page-narrow.png");
}

/// With two demo apps the page offers both: the same demo user, logged in through each, is one
/// account with an openid per app, and `verify` names the app of the token.
#[test]
fn the_demo_page_switches_between_two_demo_apps() {
    let server = Wxauth::start(&[("WXAUTH_APPS_SHOP_PREFIX", "/shop/wx_auth/")]);
    let browser = Browser::start(1280, 860);
    browser.open(&format!("{}/", server.base));
    browser.find("body[data-completed=\"0\"]");
    assert!(browser.text("#app-choice").contains("wxdemo_shop"));

    browser.step("#btn-login", 1);
    let (id, openid) = (browser.text("#acc-id"), browser.text("#acc-openid"));
    browser.click("#app option[value=\"/shop/wx_auth/\"]");
    assert!(browser.text("#acc-state").contains("not logged in"), "a fresh session");
    browser.step("#btn-login", 2);
    assert_eq!(browser.text("#acc-id"), id, "one person, one account");
    assert_ne!(browser.text("#acc-openid"), openid, "the shop app's openid");
    browser.step("#btn-verify", 3);
    let verify = browser.text("li[data-action=\"verify\"]");
    assert!(verify.contains("GET /shop/wx_auth/verify"), "{verify}");
    assert!(verify.contains("\"app\": \"shop\""), "{verify}");
}
