//! wxauth as a service manager sees it: SIGHUP reloads the configuration, and a start that fails
//! leaves nothing behind.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{TempDir, Wxauth, refused_start};

/// Sends SIGHUP and returns the log once it has a line starting with `outcome`, failing at once
/// if the server exits instead.
fn hang_up(server: &mut Wxauth, outcome: &str) -> String {
    let lines_before = server.stderr().matches(outcome).count();
    let sent = Command::new("kill").arg("-HUP").arg(server.pid().to_string()).status().unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("SIGHUP ended wxauth ({status}); log:\n{}", server.stderr());
        }
        let log = server.stderr();
        if log.matches(outcome).count() > lines_before {
            return log;
        }
        assert!(Instant::now() < deadline, "no `{outcome}` line after SIGHUP:\n{log}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The log line holding `needle`.
fn line_with<'a>(log: &'a str, needle: &str) -> &'a str {
    log.lines().rev().find(|line| line.contains(needle)).unwrap_or_else(|| panic!("{needle}"))
}

fn login_by_openid(server: &Wxauth) -> crate::harness::Answer {
    server.post("login", &json!({ "openid": "oReloadedByHangup" }))
}

/// Regression: SIGHUP (`systemctl reload`, a closed terminal, a log-rotation script) ended
/// wxauth at once with status 129: no graceful stop, the WAL not folded, access lines lost.
#[test]
fn sighup_applies_the_reloadable_keys_and_names_those_that_need_a_restart() {
    let dir = TempDir::new();
    let config = dir.0.join("wxauth.toml");
    std::fs::write(&config, "openid_login = \"open\"\n").unwrap();
    let mut server = Wxauth::start_in(dir, &[]);
    login_by_openid(&server).result();

    // An unchanged file changes nothing.
    let log = hang_up(&mut server, "reloaded the configuration");
    assert!(log.contains("INFO reloaded the configuration: nothing changed"), "{log}");
    login_by_openid(&server).result();

    std::fs::write(
        &config,
        "openid_login = \"off\"\nmax_body_bytes = 2048\n[log]\nformat = \"json\"\n",
    )
    .unwrap();
    let log = hang_up(&mut server, "reloaded the configuration");
    let line = line_with(&log, "reloaded the configuration");
    let line: serde_json::Value = serde_json::from_str(line).expect("log.format json applied");
    assert_eq!(line["level"], "warn", "{line}");
    assert_eq!(
        line["message"],
        "reloaded the configuration: applied log.format, openid_login; \
         changed but need a restart: max_body_bytes"
    );

    // The openid policy is the new one, at once.
    login_by_openid(&server).assert_error(403, "openid_login_refused");
    // The body limit is still the one wxauth started with.
    let big = json!({ "openid": "oReloadedByHangup", "wx_city": "x".repeat(4000) });
    let answer = server.post("login", &big);
    assert_ne!(answer.status, 413, "max_body_bytes needs a restart: {answer:?}");
    // Access lines are JSON now.
    server.log_containing(r#""type":"access""#);

    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(server.stderr().contains(r#""message":"stopped""#));
}

#[test]
fn an_invalid_configuration_on_sighup_is_logged_and_the_running_one_kept() {
    let dir = TempDir::new();
    let config = dir.0.join("wxauth.toml");
    std::fs::write(&config, "openid_login = \"open\"\n").unwrap();
    let mut server = Wxauth::start_in(dir, &[]);

    std::fs::write(&config, "openid_login = \"sometimes\"\n[log]\nlevel = \"error\"\n").unwrap();
    let log = hang_up(&mut server, "configuration not reloaded");
    let line = line_with(&log, "configuration not reloaded");
    assert!(
        line.contains(" ERROR configuration not reloaded, the running one is kept: "),
        "{line}"
    );
    assert!(line.contains("openid_login"), "the reason names the key: {line}");
    // Nothing of the new file applies: neither the policy nor the log level.
    login_by_openid(&server).result();
    server.log_containing("POST /miniprog/wx_auth/login 200");

    std::fs::write(&config, "openid_login = \"off\"\n[jwt]\nsecret = \"tooshort\"\n").unwrap();
    let log = hang_up(&mut server, "configuration not reloaded");
    let line = line_with(&log, "configuration not reloaded");
    assert!(line.contains("jwt.secret"), "{line}");
    assert!(!line.contains("tooshort"), "a secret never reaches the log: {line}");
    login_by_openid(&server).result();

    // A file fixed later is applied by the next SIGHUP.
    std::fs::write(&config, "openid_login = \"off\"\n").unwrap();
    let log = hang_up(&mut server, "reloaded the configuration");
    assert!(log.contains("reloaded the configuration: applied openid_login\n"), "{log}");
    login_by_openid(&server).assert_error(403, "openid_login_refused");
}

/// Regression: a start that could not listen had already created and initialised the database,
/// its generated JWT secret included.
#[test]
fn a_start_that_cannot_listen_creates_no_database() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let dir = TempDir::new();
    let (status, stdout, stderr) = refused_start(&dir, &[("WXAUTH_LISTEN", &address)]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(&format!("wxauth: cannot listen on {address}: ")), "{stderr}");
    assert_eq!(dir.names(), Vec::<String>::new(), "nothing is created");
}
