//! What the person running wxauth sees: start-up lines, exit codes, stop signals, the log.

use std::process::{Command, Stdio};

use serde_json::json;

use crate::harness::{
    TempDir, Wxauth, binary, on_read_only, refused_start, refused_start_wrapped, schema_version,
};

#[test]
fn sigterm_stops_cleanly_with_status_zero() {
    let mut server = Wxauth::start(&[]);
    server.login_as("erin");
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    let log = server.stderr();
    assert!(log.contains("stopped"), "{log}");
    // The WAL was folded back into the database on the way out.
    let wal = server.dir.0.join("wxauth.db-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0, "WAL left behind");
}

#[test]
fn a_bad_configuration_is_one_line_on_stderr_and_a_failure_status() {
    let dir = TempDir::new();
    for (variable, value, expected) in [
        ("WXAUTH_JWT_SECRET", "short", "jwt.secret"),
        ("WXAUTH_WECHAT_APPID", "wx123", "wechat"),
        ("WXAUTH_LISTEN", "nowhere", "listen"),
        ("WXAUTH_NO_SUCH_KEY", "1", "WXAUTH_NO_SUCH_KEY"),
    ] {
        let output = Command::new(binary())
            .current_dir(&dir.0)
            .env_clear()
            .env(variable, value)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{variable}");
        assert!(output.stdout.is_empty(), "{variable}: nothing on stdout");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{variable}: one line: {stderr}");
        assert!(stderr.contains(expected), "{variable}: {stderr}");
    }
}

#[test]
fn unknown_keys_in_the_file_are_named() {
    let dir = TempDir::new();
    std::fs::write(
        dir.0.join("wxauth.toml"),
        "listen = \"127.0.0.1:0\"\n[wechat]\nappsecret = \"x\"\n",
    )
    .unwrap();
    let output = Command::new(binary()).current_dir(&dir.0).env_clear().output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("wechat.appsecret"));
}

/// Regression: a TOML syntax error named no line or column, and an unquoted word was "invalid
/// float, expected `inf`".
#[test]
fn a_syntax_error_in_the_file_names_the_line_and_column() {
    let dir = TempDir::new();
    std::fs::write(dir.0.join("wxauth.toml"), "workers = 4\n\n[log]\nlevel = info\n").unwrap();
    let output = Command::new(binary()).current_dir(&dir.0).env_clear().output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "wxauth: wxauth.toml: line 4, column 9: `info` is not a value: text goes in double quotes, \
         as in level = \"info\" (a value is quoted text, a number, true or false, a date, \
         [an array] or {a table})\n"
    );
}

#[test]
fn version_and_help() {
    let output = Command::new(binary()).arg("--version").output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("wxauth "));
    let output = Command::new(binary()).arg("--help").output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("fake-wechat"));
    let output = Command::new(binary()).arg("--bogus").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn the_config_file_is_read_from_the_working_directory() {
    let dir = TempDir::new();
    std::fs::write(dir.0.join("wxauth.toml"), "prefix = \"/api/auth/\"\n").unwrap();
    let server = Wxauth::start_in(dir, &[("WXAUTH_PREFIX", "/api/auth/")]);
    let answer = server.raw("GET", "/api/auth/is_openid_registered?openid=oX", &[], None);
    assert_eq!(answer.result(), &json!({"is_registered": false}));
    server
        .raw("GET", "/miniprog/wx_auth/is_openid_registered?openid=oX", &[], None)
        .assert_error(404, "not_found");
}

#[test]
fn the_access_log_has_no_codes_or_tokens() {
    let server = Wxauth::start(&[]);
    let code = crate::harness::fresh_code("frank");
    let openid = server.openid_for(&code)["openid"].as_str().unwrap().to_string();
    let login = server.post("login", &json!({ "openid": openid })).result().clone();
    let token = login["token"].as_str().unwrap();
    server.post_with("login", &json!({}), &[("Authorization", &format!("jwt {token}"))]).result();
    let log = server.log_when("both logins", |log| {
        log.matches("POST /miniprog/wx_auth/login 200").count() == 2
    });
    assert!(log.contains("GET /miniprog/wx_auth/get_openid_by_code 200"), "{log}");
    assert!(!log.contains(&code), "the wx.login code leaked into the log");
    assert!(!log.contains(token), "the token leaked into the log");
}

#[test]
fn sigint_stops_cleanly_too() {
    let mut server = Wxauth::start(&[]);
    server.login_as("interrupted");
    let _ = Command::new("kill").arg("-INT").arg(server.pid().to_string()).status();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "wxauth did not stop on SIGINT");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(server.stderr().contains("stopped"));
}

#[test]
fn the_benchmark_scripts_parse() {
    // `cargo test` builds examples/baseline.rs; this checks the scripts around it.
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new("bash").arg("-n").arg(format!("{root}/bench/run")).status().unwrap();
    assert!(status.success(), "bench/run does not parse");
}

/// Asserts a start refused with status 1 and, on stderr, the one line `expected` (a prefix of it
/// when `expected` ends in `…`).
fn assert_refused_with(refused: (std::process::ExitStatus, String, String), expected: &str) {
    let (status, stdout, stderr) = refused;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stdout, "", "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    let line = stderr.trim_end();
    match expected.strip_suffix('…') {
        Some(start) => assert!(line.starts_with(start), "expected {start:?}…, got {line:?}"),
        None => assert_eq!(line, expected),
    }
}

/// Regression: a database file that is not one stopped the start with "database: file is not a
/// database", and one from a newer wxauth without naming the file.
#[test]
fn a_start_on_a_database_it_cannot_use_names_the_file_and_the_cause() {
    let dir = TempDir::new();
    let path = dir.0.join("wxauth.db");
    std::fs::write(&path, "not a database, but long enough to look like one's header".repeat(99))
        .unwrap();
    let path = path.to_str().unwrap();
    assert_refused_with(
        refused_start(&dir, &[]),
        &format!(
            "wxauth: cannot open database {path}: it is not an SQLite database, or it is damaged (SQLite: file is not a database)"
        ),
    );

    std::fs::remove_file(path).unwrap();
    let newer = rusqlite::Connection::open(path).unwrap();
    newer.execute_batch("CREATE TABLE accounts (id INTEGER); PRAGMA user_version = 99").unwrap();
    drop(newer);
    assert_refused_with(
        refused_start(&dir, &[]),
        &format!(
            "wxauth: database {path} has schema version 99, newer than this wxauth's ({}): use a newer wxauth",
            schema_version()
        ),
    );
}

/// Regression: on a read-only file system the start failed with "unable to open database file"
/// (or at the first write), naming neither the file nor the cause.
#[test]
fn a_start_on_a_read_only_file_system_names_the_file_and_the_cause() {
    if crate::harness::sqlite_only("a database file on a read-only file system") {
        return;
    }
    let mut server = Wxauth::start(&[]);
    server.login_as("read-only-start");
    assert!(server.terminate().success());
    let dir = TempDir::new();
    std::fs::copy(server.dir.0.join("wxauth.db"), dir.0.join("wxauth.db")).unwrap();
    let wrapper = on_read_only(&dir.0);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let directory = dir.0.to_str().unwrap();

    assert_refused_with(
        refused_start_wrapped(&dir, &[], &wrapper),
        &format!(
            "wxauth: cannot open database {directory}/wxauth.db: it is on a read-only file system"
        ),
    );
    let absent = format!("{directory}/new.db");
    assert_refused_with(
        refused_start_wrapped(&dir, &[("WXAUTH_DATABASE", &absent)], &wrapper),
        &format!(
            "wxauth: cannot create database {absent}: its directory {directory} is not writable (read-only file system)"
        ),
    );
    assert_eq!(dir.names(), ["wxauth.db"]);
}

/// A directory the user may not write (not a read-only file system): SQLite cannot create the
/// WAL beside the database. Root may write anywhere, so as root the server runs as nobody.
#[test]
fn a_start_in_a_directory_it_may_not_write_names_the_directory() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TempDir::new();
    let path = dir.0.join("wxauth.db");
    let database = rusqlite::Connection::open(&path).unwrap();
    database.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x)").unwrap();
    drop(database);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let as_root = std::fs::metadata(&path).unwrap().uid() == 0;
    let wrapper: &[&str] = if as_root {
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        std::os::unix::fs::chown(&dir.0, Some(65534), Some(65534)).unwrap();
        &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    } else {
        &[]
    };
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o555)).unwrap();
    let refused = refused_start_wrapped(&dir, &[], wrapper);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = path.to_str().unwrap();
    let directory = dir.0.to_str().unwrap();
    assert_refused_with(
        refused,
        &format!(
            "wxauth: cannot open database {path}: its directory {directory} is not writable (permission denied), and SQLite keeps {path}-wal there"
        ),
    );
    assert_eq!(dir.names(), ["wxauth.db"]);
}
