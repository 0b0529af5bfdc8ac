//! What an operator's machines see: `/healthz`, `/readyz`, `/metrics` (read with Prometheus's own
//! parser from the Python `prometheus_client` package), and the access log in both formats.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Answer, Wxauth, fresh_code};
use crate::python::run_python;

/// One sample of a scrape: its name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape, parsed by `prometheus_client.parser`.
struct Scrape {
    text: String,
    families: Vec<Value>,
    samples: Vec<Sample>,
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = []
for family in text_string_to_metric_families(sys.stdin.read()):
    families.append({
        "name": family.name,
        "type": family.type,
        "help": family.documentation,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    })
print(json.dumps(families))
"#;

impl Scrape {
    fn of(server: &Wxauth) -> Scrape {
        let answer = server.raw("GET", "/metrics", &[], None);
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.header("Content-Type"), Some("text/plain; version=0.0.4; charset=utf-8"));
        let text = answer.body.as_str().expect("a text body").to_string();
        let families: Vec<Value> = serde_json::from_str(&run_python(PARSE, &text)).unwrap();
        let mut samples = Vec::new();
        for family in &families {
            for sample in family["samples"].as_array().unwrap() {
                samples.push(Sample {
                    name: sample[0].as_str().unwrap().to_string(),
                    labels: serde_json::from_value(sample[1].clone()).unwrap(),
                    value: sample[2].as_f64().unwrap(),
                });
            }
        }
        Scrape { text, families, samples }
    }

    /// The value of the sample with exactly these labels; 0 when the series is absent (wxauth
    /// leaves out series that are still zero).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> =
            labels.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|sample| sample.name == name && sample.labels == wanted)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} appears twice:\n{}", self.text);
        found.first().map_or(0.0, |sample| sample.value)
    }

    /// Every sample of `name`.
    fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|sample| sample.name == name).collect()
    }
}

fn get(server: &Wxauth, path: &str) -> Answer {
    server.raw("GET", path, &[], None)
}

#[test]
fn healthz_and_readyz_answer_outside_the_api_prefix() {
    let server = Wxauth::start(&[("WXAUTH_PREFIX", "/api/auth/")]);
    let health = get(&server, "/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.body["status"], "ok");
    assert_eq!(health.header("Content-Type"), Some("application/json; charset=utf-8"));

    let version: i64 =
        server.database().query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
    let ready = get(&server, "/readyz");
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_eq!(ready.body["status"], "ready");
    assert_eq!(ready.body["database"], json!({"ok": true, "schema_version": version}));
    assert_eq!(ready.body["wechat"]["mode"], "demo");
    assert_eq!(ready.body["wechat"]["last_call"], Value::Null, "no call to WeChat yet");
    assert_eq!(ready.body["wechat"]["access_token"], "none");

    // The last WeChat call shows up, and no probe makes one.
    server.get(&format!("get_openid_by_code?code={}", fresh_code("probed"))).result();
    let calls = server.fake("/fake/stats");
    let ready = get(&server, "/readyz");
    let last = &ready.body["wechat"]["last_call"];
    assert_eq!(last["api"], "jscode2session", "{ready:?}");
    assert_eq!(last["outcome"], "ok");
    assert_eq!(last["reachable"], true);
    assert!(last["seconds_ago"].as_i64().is_some_and(|seconds| (0..60).contains(&seconds)));
    for _ in 0..3 {
        assert_eq!(get(&server, "/readyz").status, 200);
    }
    assert_eq!(server.fake("/fake/stats"), calls, "a probe called WeChat");

    // Not under the prefix, and GET only.
    server.get("healthz").assert_error(404, "not_found");
    let post = server.raw("POST", "/readyz", &[], Some(b""));
    post.assert_error(405, "method_not_allowed");
    assert_eq!(post.header("Allow"), Some("GET"));
    assert_eq!(server.raw("HEAD", "/healthz", &[], None).status, 200);
}

#[test]
fn readyz_is_unavailable_while_the_schema_is_not_this_binarys() {
    let server = Wxauth::start(&[]);
    let version = i64::from(crate::harness::schema_version());
    assert_eq!(get(&server, "/readyz").status, 200);

    // As a newer instance's upgrade of the database would leave it.
    set_schema_version(&server, version + 1);
    let ready = get(&server, "/readyz");
    assert_eq!(ready.status, 503, "{ready:?}");
    assert_eq!(ready.body["status"], "not_ready");
    assert_eq!(ready.body["database"]["ok"], false);
    assert_eq!(ready.body["database"]["schema_version"], version + 1);
    assert_eq!(ready.body["database"]["expected_schema_version"], version);
    let reason = ready.body["reason"].as_str().expect("a reason");
    assert!(reason.contains("schema version"), "{reason}");
    // Liveness is another question: the process still answers.
    assert_eq!(get(&server, "/healthz").status, 200);
    let log = server.stderr();
    assert!(
        log.contains("WARN 127.0.0.1 GET /readyz 503 "),
        "an unready probe is a warning:\n{log}"
    );
    assert!(log.contains("not_ready (database schema version"), "{log}");

    set_schema_version(&server, version);
    assert_eq!(get(&server, "/readyz").status, 200);
    // 503 is a status of its own in the metrics, not `other`.
    let scrape = Scrape::of(&server);
    let readyz = |status| {
        scrape.value(
            "wxauth_http_requests_total",
            &[("route", "readyz"), ("status", status), ("app", "default")],
        )
    };
    assert_eq!((readyz("200"), readyz("503"), readyz("other")), (2.0, 1.0, 0.0), "{}", scrape.text);
}

/// Records schema version `version` in the server's database, where its engine keeps it.
fn set_schema_version(server: &Wxauth, version: i64) {
    if crate::harness::Mysql::from_env().is_some() {
        let sql = format!("UPDATE meta SET value = '{version}' WHERE `key` = 'schema_version'");
        assert_eq!(server.execute(&sql), 1);
    } else {
        server.execute(&format!("PRAGMA user_version = {version}"));
    }
}

#[test]
fn metrics_count_a_known_sequence_of_requests_exactly() {
    let server = Wxauth::start(&[
        ("WXAUTH_RATE_LIMIT_ENABLED", "true"),
        ("WXAUTH_RATE_LIMIT_BURST", "6"),
        ("WXAUTH_RATE_LIMIT_PER_SECOND", "1"),
    ]);
    for _ in 0..3 {
        server.get("is_openid_registered?openid=oNobody").result();
    }
    server.get("is_openid_registered").assert_error(403, "missing_parameter");
    server.get("no_such_endpoint?code=leaked-label").assert_error(404, "not_found");
    get(&server, "/no/such/path").assert_error(404, "not_found");
    server.get("login").assert_error(405, "method_not_allowed");
    server.get("verify").assert_error(401, "not_authenticated");
    // Six rate-limited requests, the burst: two code exchanges, two logins by openid, one
    // registration, one invalid code.
    let (_, alice) = server.login_as("alice");
    let token = format!("jwt {}", alice["token"].as_str().unwrap());
    server
        .post_with("register", &json!({"phone": "13800138000"}), &[("Authorization", &token)])
        .result();
    server.login_as("bob");
    server
        .get(&format!("get_openid_by_code?code={}", fresh_code("fake-40029")))
        .assert_error(403, "wechat_code_invalid");
    // The bucket refills at one a second, so how many more invalid codes pass before the first
    // 429 depends on the machine's speed; count them.
    let mut more_invalid = 0.0;
    loop {
        let answer = server.get(&format!("get_openid_by_code?code={}", fresh_code("fake-40029")));
        if answer.status == 429 {
            answer.assert_error(429, "rate_limited");
            break;
        }
        answer.assert_error(403, "wechat_code_invalid");
        more_invalid += 1.0;
        assert!(more_invalid < 20.0, "the rate limit never refused");
    }

    let scraped = Instant::now();
    let scrape = Scrape::of(&server);
    let requests = |route: &str, status: &str| {
        scrape.value(
            "wxauth_http_requests_total",
            &[("route", route), ("status", status), ("app", "default")],
        )
    };
    let expected = [
        ("is_openid_registered", "200", 3.0),
        ("is_openid_registered", "403", 1.0),
        ("other", "404", 2.0),
        ("login", "405", 1.0),
        ("verify", "401", 1.0),
        ("login", "200", 2.0),
        ("register", "200", 1.0),
        ("get_openid_by_code", "200", 2.0),
        ("get_openid_by_code", "403", 1.0 + more_invalid),
        ("get_openid_by_code", "429", 1.0),
    ];
    for (route, status, count) in expected {
        assert_eq!(requests(route, status), count, "{route} {status}:\n{}", scrape.text);
    }
    let total: f64 = expected.iter().map(|(_, _, count)| count).sum();
    let counted: f64 = scrape.all("wxauth_http_requests_total").iter().map(|s| s.value).sum();
    assert_eq!(counted, total, "requests nobody made were counted:\n{}", scrape.text);
    assert_eq!(requests("metrics", "200"), 0.0, "a scrape is counted after it is answered");

    // Each route's histogram counts every request of the route, cumulatively.
    for route in ["is_openid_registered", "other", "login", "register", "get_openid_by_code"] {
        let count: f64 = expected.iter().filter(|(r, _, _)| *r == route).map(|e| e.2).sum();
        let histogram = "wxauth_http_request_duration_seconds";
        assert_eq!(
            scrape.value(&format!("{histogram}_count"), &[("route", route), ("app", "default")]),
            count
        );
        let mut buckets: Vec<(f64, f64)> = scrape
            .all(&format!("{histogram}_bucket"))
            .into_iter()
            .filter(|sample| sample.labels["route"] == route)
            .map(|sample| (sample.labels["le"].parse::<f64>().unwrap(), sample.value))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, count)), "{route}");
        assert!(buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1), "{route}: {buckets:?}");
        assert!(
            scrape.value(&format!("{histogram}_sum"), &[("route", route), ("app", "default")])
                > 0.0
        );
    }

    let wechat = |outcome: &str| {
        scrape.value(
            "wxauth_wechat_calls_total",
            &[("api", "jscode2session"), ("outcome", outcome), ("app", "default")],
        )
    };
    assert_eq!(wechat("ok"), 2.0);
    assert_eq!(wechat("invalid_code"), 1.0 + more_invalid);
    let calls: f64 = scrape.all("wxauth_wechat_calls_total").iter().map(|s| s.value).sum();
    assert_eq!(calls, server.fake("/fake/stats")["jscode2session"].as_f64().unwrap());
    assert_eq!(scrape.value("wxauth_rate_limit_refusals_total", &[]), 1.0);
    assert_eq!(scrape.value("wxauth_wechat_access_token_refreshes_total", &[]), 0.0);

    let database = server.database();
    let count = |sql: &str| database.query_row(sql, [], |row| row.get::<_, f64>(0)).unwrap();
    assert_eq!(scrape.value("wxauth_accounts", &[]), count("SELECT count(*) FROM accounts"));
    assert_eq!(scrape.value("wxauth_accounts", &[]), 2.0);
    assert_eq!(
        scrape.value("wxauth_registered_accounts", &[]),
        count("SELECT count(*) FROM accounts WHERE is_register = 1")
    );
    assert_eq!(scrape.value("wxauth_registered_accounts", &[]), 1.0);

    // Every family is typed and documented; no label value came from a client.
    for family in &scrape.families {
        assert_ne!(family["type"], "unknown", "{family}");
        assert!(family["help"].as_str().is_some_and(|help| !help.is_empty()), "{family}");
    }
    for needle in ["leaked-label", "no_such_endpoint", "/no/such", "fake-40029", "alice"] {
        assert!(!scrape.text.contains(needle), "{needle} became a label:\n{}", scrape.text);
    }

    // An account the next scrape should not count yet.
    database
        .execute(
            "INSERT INTO accounts (username, wx_appid, wx_openid, date_joined) VALUES ('oLate', 'wxdemo', 'oLate', 0)",
            [],
        )
        .unwrap();
    // The first scrape is counted before the second is answered.
    let again = Scrape::of(&server);
    assert_eq!(
        again.value(
            "wxauth_http_requests_total",
            &[("route", "metrics"), ("status", "200"), ("app", "default")]
        ),
        1.0
    );
    // The accounts were counted by the first scrape; a scrape within 15 s reuses that count
    // instead of scanning the table again, so the account added since is not in it yet.
    if scraped.elapsed() < Duration::from_secs(15) {
        assert_eq!(again.value("wxauth_accounts", &[]), 2.0, "counted again:\n{}", again.text);
    }
}

#[test]
fn wechat_calls_are_counted_by_outcome() {
    let server = Wxauth::start(&[("WXAUTH_WECHAT_TIMEOUT_MS", "2000")]);
    for (code, status) in [
        ("fake-busy", 502),
        ("fake-garbage", 502),
        ("fake-500", 502),
        ("fake-40163", 403),
        ("fake-45011", 403),
        ("fake-40226", 403),
        ("fake-errcode-12345", 403),
    ] {
        let answer = server.get(&format!("get_openid_by_code?code={}", fresh_code(code)));
        assert_eq!(answer.status, status, "{code}: {answer:?}");
    }
    // A phone code: an access token from stable_token, then getuserphonenumber.
    let (openid, _) = server.login_as("phoned");
    let phone_code =
        server.fake("/fake/phone_code?phone=13900139000")["code"].as_str().unwrap().to_string();
    server.post("register", &json!({"openid": openid, "phone_code": phone_code})).result();
    assert_eq!(get(&server, "/readyz").body["wechat"]["access_token"], "cached");

    // Two calls that hang fill the in-flight cap (2); a third is refused without being sent.
    std::thread::scope(|scope| {
        let hanging: Vec<_> = (0..2)
            .map(|_| {
                let server = &server;
                scope.spawn(move || {
                    server.get(&format!("get_openid_by_code?code={}", fresh_code("fake-hang")))
                })
            })
            .collect();
        // The codes above (fake-busy twice) and phoned's, then the two hanging ones.
        let expected = 8 + 1 + 2;
        let deadline = Instant::now() + Duration::from_secs(2);
        while server.fake("/fake/stats")["jscode2session"].as_u64() < Some(expected) {
            assert!(Instant::now() < deadline, "the hanging calls never reached the fake");
            std::thread::sleep(Duration::from_millis(10));
        }
        server
            .get(&format!("get_openid_by_code?code={}", fresh_code("capped")))
            .assert_error(502, "wechat_unavailable");
        for call in hanging {
            call.join().unwrap().assert_error(502, "wechat_unavailable");
        }
    });

    let scrape = Scrape::of(&server);
    let calls = |api: &str, outcome: &str| {
        scrape.value(
            "wxauth_wechat_calls_total",
            &[("api", api), ("outcome", outcome), ("app", "default")],
        )
    };
    for (outcome, count) in [
        ("busy", 2.0), // retried once
        ("bad_answer", 2.0),
        ("code_used", 1.0),
        ("rate_limited", 1.0),
        ("user_blocked", 1.0),
        ("other_errcode", 1.0),
        ("ok", 1.0),
        ("timeout", 2.0),
        ("in_flight_cap", 1.0),
    ] {
        assert_eq!(calls("jscode2session", outcome), count, "{outcome}:\n{}", scrape.text);
    }
    assert_eq!(calls("stable_token", "ok"), 1.0);
    assert_eq!(calls("getuserphonenumber", "ok"), 1.0);
    assert_eq!(scrape.value("wxauth_wechat_access_token_refreshes_total", &[]), 1.0);
    let last = &get(&server, "/readyz").body["wechat"]["last_call"];
    assert_eq!(last["outcome"], "timeout", "the cap refusal was not a call: {last}");
    assert_eq!(last["reachable"], false);
}

#[test]
fn readyz_reports_an_unreachable_wechat_but_stays_ready() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base_url = format!("http://127.0.0.1:{port}");
    let server = Wxauth::start(&[
        ("WXAUTH_WECHAT_APPID", "wxobserved"),
        ("WXAUTH_WECHAT_SECRET", "observed-app-secret"),
        ("WXAUTH_WECHAT_BASE_URL", &base_url),
    ]);
    server.get("get_openid_by_code?code=anything").assert_error(502, "wechat_unavailable");
    let ready = get(&server, "/readyz");
    assert_eq!(ready.status, 200, "WeChat never makes wxauth unready: {ready:?}");
    assert_eq!(ready.body["wechat"]["mode"], "wechat");
    assert_eq!(ready.body["wechat"]["last_call"]["outcome"], "refused");
    assert_eq!(ready.body["wechat"]["last_call"]["reachable"], false);
    let scrape = Scrape::of(&server);
    assert_eq!(
        scrape.value(
            "wxauth_wechat_calls_total",
            &[("api", "jscode2session"), ("outcome", "refused"), ("app", "default")]
        ),
        1.0
    );
}

/// The access lines of a log (plain format): those naming an HTTP method.
fn access_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|line| line.contains(" GET ") || line.contains(" POST ")).collect()
}

#[test]
fn plain_access_lines_have_path_status_and_duration_but_never_the_query() {
    let server = Wxauth::start(&[]);
    server.get("get_openid_by_code?code=SECRETVALUE").result();
    server
        .get("get_openid_by_code?code=fake-40029.SECRETVALUE")
        .assert_error(403, "wechat_code_invalid");
    let log = server.log_containing("wechat_code_invalid");
    assert!(!log.contains("SECRETVALUE"), "a code reached the log:\n{log}");
    let lines = access_lines(&log);
    assert_eq!(lines.len(), 2, "{log}");
    for (line, tail) in
        lines.iter().zip(["", " wechat_code_invalid (wechat: code invalid (40029))"])
    {
        // time, level, client, method, path, status, duration, error
        let fields: Vec<&str> = line.splitn(8, ' ').collect();
        assert_eq!(fields[2], "INFO", "{line}");
        assert_eq!(fields[3], "127.0.0.1", "{line}");
        assert_eq!(fields[4], "GET", "{line}");
        assert_eq!(fields[5], "/miniprog/wx_auth/get_openid_by_code", "{line}");
        let duration = fields[7].split(' ').next().unwrap();
        let millis: f64 = duration.strip_suffix("ms").expect("a duration").parse().unwrap();
        assert!(millis >= 0.0, "{line}");
        assert!(line.ends_with(&format!("{duration}{tail}")), "{line}");
    }
    assert!(lines[0].contains(" 200 ") && lines[1].contains(" 403 "), "{lines:?}");
}

#[test]
fn json_access_lines_parse_and_never_hold_the_query() {
    let server = Wxauth::start(&[("WXAUTH_LOG_FORMAT", "json")]);
    server.get("get_openid_by_code?code=SECRETVALUE").result();
    server
        .get("get_openid_by_code?code=fake-40029.SECRETVALUE")
        .assert_error(403, "wechat_code_invalid");
    let log = server.log_containing("wechat_code_invalid");
    assert!(!log.contains("SECRETVALUE"), "a code reached the log:\n{log}");
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    for line in &lines {
        assert!(line["time"].as_str().is_some_and(|time| time.ends_with('Z')), "{line}");
        assert!(line["level"].is_string(), "{line}");
    }
    assert!(
        lines.iter().any(|line| line["message"].as_str().is_some_and(|m| m.contains("serving")))
    );
    let access: Vec<&Value> = lines.iter().filter(|line| line["type"] == "access").collect();
    assert_eq!(access.len(), 2, "{log}");
    for (line, status) in access.iter().zip([200, 403]) {
        assert_eq!(line["level"], "info");
        assert_eq!(line["client"], "127.0.0.1");
        assert_eq!(line["method"], "GET");
        assert_eq!(line["path"], "/miniprog/wx_auth/get_openid_by_code");
        assert_eq!(line["status"], status);
        assert!(line["duration_ms"].as_f64().is_some_and(|millis| millis >= 0.0), "{line}");
    }
    assert_eq!(access[0].get("error"), None);
    assert_eq!(access[1]["error"], "wechat_code_invalid");
    assert_eq!(access[1]["detail"], "wechat: code invalid (40029)");
}

/// Regression: an unknown path of up to 8 KiB went into its access line whole, so a client could
/// make the log grow by 8 KiB a request. The line keeps the path's first 128 bytes, says it was
/// cut and gives the whole length, in both formats.
#[test]
fn a_long_path_is_cut_in_the_access_line() {
    let head = "/not-an-endpoint/long-path-start-";
    let path = format!("{head}{}", "x".repeat(8000 - head.len()));
    assert_eq!(path.len(), 8000);
    for format in ["plain", "json"] {
        let server = Wxauth::start(&[("WXAUTH_LOG_FORMAT", format)]);
        server.raw("GET", &path, &[], None).assert_error(404, "not_found");
        let log = server.log_containing(head);
        let line = log.lines().find(|line| line.contains(head)).unwrap();
        assert!(line.len() < 400, "{format}: a line of {} bytes: {line:.300}", line.len());
        let shown = if format == "json" {
            let line: Value = serde_json::from_str(line).unwrap();
            assert_eq!(line["status"], 404, "{line}");
            line["path"].as_str().unwrap().to_string()
        } else {
            line.split(' ').nth(5).unwrap().to_string()
        };
        assert_eq!(shown, format!("{}...[8000B]", &path[..128]), "{format}");
    }
}

/// Access lines at info wait a moment to be written together; a failure on wxauth's side is in
/// the log when its answer arrives, after every line before it.
#[test]
fn a_failure_is_logged_before_its_answer_and_after_the_lines_before_it() {
    let server = Wxauth::start(&[]);
    for openid in ["oFirst", "oSecond"] {
        server.get(&format!("is_openid_registered?openid={openid}")).result();
    }
    server
        .get(&format!("get_openid_by_code?code={}", fresh_code("fake-500")))
        .assert_error(502, "wechat_unavailable");
    let log = server.stderr();
    let lines = access_lines(&log);
    assert_eq!(lines.len(), 3, "{log}");
    assert!(lines[0].contains(" INFO ") && lines[1].contains(" INFO "), "{log}");
    assert!(lines[2].contains(" WARN 127.0.0.1 GET /miniprog/wx_auth/get_openid_by_code 502 "));
}

#[test]
fn log_level_warn_hides_info_lines_but_not_failures() {
    let server = Wxauth::start(&[("WXAUTH_LOG_LEVEL", "warn")]);
    server.get("is_openid_registered?openid=oQuiet").result();
    server
        .get(&format!("get_openid_by_code?code={}", fresh_code("fake-500")))
        .assert_error(502, "wechat_unavailable");
    let log = server.stderr();
    assert!(!log.contains(" INFO "), "info lines at level warn:\n{log}");
    let lines = access_lines(&log);
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains(" WARN 127.0.0.1 GET /miniprog/wx_auth/get_openid_by_code 502 "));
    assert!(lines[0].contains("wechat_unavailable"), "{}", lines[0]);
}

#[test]
fn probes_log_at_debug_and_access_false_keeps_only_failures() {
    let server = Wxauth::start(&[("WXAUTH_LOG_LEVEL", "debug")]);
    assert_eq!(get(&server, "/healthz").status, 200);
    assert_eq!(get(&server, "/metrics").status, 200);
    let log = server.log_containing(" DEBUG 127.0.0.1 GET /metrics 200 ");
    assert!(log.contains(" DEBUG 127.0.0.1 GET /healthz 200 "), "{log}");
    assert!(log.contains(" DEBUG 127.0.0.1 GET /metrics 200 "), "{log}");

    let server = Wxauth::start(&[]);
    assert_eq!(get(&server, "/healthz").status, 200);
    server.get("is_openid_registered?openid=oSeen").result();
    // After the probe's line, had it been written.
    let log = server.log_containing("GET /miniprog/wx_auth/is_openid_registered 200");
    assert!(!log.contains("/healthz"), "probes are debug:\n{log}");
    assert_eq!(access_lines(&log).len(), 1, "{log}");

    let server = Wxauth::start(&[("WXAUTH_LOG_ACCESS", "false")]);
    server.get("is_openid_registered?openid=oUnseen").result();
    server
        .get(&format!("get_openid_by_code?code={}", fresh_code("fake-garbage")))
        .assert_error(502, "wechat_unavailable");
    let log = server.stderr();
    assert!(log.contains(" INFO wxauth "), "other info lines stay:\n{log}");
    let lines = access_lines(&log);
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains(" 502 "), "{log}");
}

/// The standard process metrics, the sizes of the database's files (none on MySQL) and the
/// build, with values that fit the running server.
#[test]
fn metrics_have_the_process_the_database_files_and_the_build() {
    let mysql = crate::harness::Mysql::from_env().is_some();
    let server = Wxauth::start(&[]);
    server.login_as("metrics-process");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let scrape = Scrape::of(&server);
    let one = |name: &str| {
        let samples = scrape.all(name);
        assert_eq!(samples.len(), 1, "{name}:\n{}", scrape.text);
        samples[0].value
    };
    let resident = one("process_resident_memory_bytes");
    assert!(resident > 1e6, "{resident}");
    assert!(one("process_virtual_memory_bytes") > resident);
    let open = one("process_open_fds");
    // stdin, stdout, stderr, the listener, and the database files of the writer and the
    // workers (on MySQL, at least one connection).
    assert!(open >= if mysql { 5.0 } else { 8.0 }, "{open}");
    assert!(one("process_max_fds") >= open);
    // What the kernel counts for the process, in clock ticks (1/100 s here), read after the
    // scrape: a fresh server may not have used a whole tick yet, so no lower bound above 0.
    let cpu = one("process_cpu_seconds_total");
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid())).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    assert!(cpu >= 0.0 && cpu <= ticks / 100.0 + 1e-9, "{cpu} s against {ticks} ticks after");
    let started = one("process_start_time_seconds");
    assert!((started - now.as_secs_f64()).abs() < 60.0, "{started} vs now {now:?}");
    for family in ["process_cpu_seconds", "process_open_fds"] {
        let described = scrape.families.iter().find(|found| found["name"] == family);
        let help = described.map(|found| found["help"].as_str().unwrap_or("")).unwrap_or("");
        assert!(!help.is_empty(), "{family} has HELP");
    }

    if mysql {
        assert!(scrape.all("wxauth_database_bytes").is_empty(), "{}", scrape.text);
    } else {
        database_files(&server, &scrape);
    }

    let build = scrape.all("wxauth_build_info");
    assert_eq!(build.len(), 1);
    assert_eq!(build[0].value, 1.0);
    assert_eq!(build[0].labels["version"], env!("CARGO_PKG_VERSION"));
    let commit = crate::harness::built_from().unwrap_or_else(|| "unknown".into());
    assert_eq!(build[0].labels["commit"], commit);
}

/// The sizes of a SQLite database's files in a scrape, against the files on disk. A new database
/// is in its WAL until the first checkpoint, so the file itself may be empty; it holds whole
/// pages of SQLite's default 4 KiB.
fn database_files(server: &Wxauth, scrape: &Scrape) {
    let described = scrape.families.iter().find(|found| found["name"] == "wxauth_database_bytes");
    assert!(
        described.is_some_and(|found| found["help"].as_str().is_some_and(|help| !help.is_empty()))
    );
    assert_eq!(scrape.all("wxauth_database_bytes").len(), 2, "{}", scrape.text);
    let db = scrape.value("wxauth_database_bytes", &[("file", "db")]);
    let wal = scrape.value("wxauth_database_bytes", &[("file", "wal")]);
    assert!(db % 4096.0 == 0.0, "{db}");
    assert!(wal > 0.0, "a login was written to the WAL");
    let on_disk = |name: &str| std::fs::metadata(server.dir.0.join(name)).unwrap().len() as f64;
    assert!(db <= on_disk("wxauth.db") && wal <= on_disk("wxauth.db-wal"), "files only grow");
}
