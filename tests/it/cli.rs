//! The operator's command line: `--help` of every command, usage errors, `check-config`,
//! `users list|show|export|revoke`, `backup` and `migrate`, each run as the real binary against a
//! real database, most of them while a server is serving it.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::harness::{
    TempDir, Wxauth, binary, fresh_code, on_read_only, schema_version, versions_from, wrapped,
};

/// What one run of the binary showed.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// Asserts exit status 0 with nothing on stderr; returns stdout.
    pub(crate) fn success(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self:#?}");
        assert_eq!(self.stderr, "", "{self:#?}");
        &self.stdout
    }

    /// Asserts a runtime failure: status 1, nothing on stdout, one `wxauth: ` line on stderr
    /// that contains `reason`.
    pub(crate) fn failure(&self, reason: &str) {
        assert_eq!(self.code, Some(1), "{self:#?}");
        assert_eq!(self.stdout, "", "{self:#?}");
        assert_eq!(self.stderr.lines().count(), 1, "one line: {self:#?}");
        assert!(self.stderr.starts_with("wxauth: "), "{self:#?}");
        assert!(self.stderr.contains(reason), "expected {reason:?}: {self:#?}");
    }
}

/// Runs `wxauth ARGS` in `dir` with only `environment` (and PATH) set.
pub(crate) fn run_in(dir: &Path, arguments: &[&str], environment: &[(&str, &str)]) -> Run {
    run_wrapped(&[], dir, arguments, environment)
}

/// `run_in` through `wrapper`, as in `Wxauth::start_wrapped`.
fn run_wrapped(
    wrapper: &[&str],
    dir: &Path,
    arguments: &[&str],
    environment: &[(&str, &str)],
) -> Run {
    let output = wrapped(wrapper)
        .args(arguments)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(environment.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// Runs `wxauth ARGS` on the database `server` is serving, and checks that its output holds no
/// secret of the server's.
pub(crate) fn run_on(server: &Wxauth, arguments: &[&str]) -> Run {
    let run = run_on_database(server, arguments);
    assert_no_secrets(server, &run.stdout);
    assert_no_secrets(server, &run.stderr);
    run
}

/// Runs `wxauth ARGS` on the database `server` is serving (its SQLite file, or its MySQL
/// database under `WXAUTH_TEST_MYSQL`).
pub(crate) fn run_on_database(server: &Wxauth, arguments: &[&str]) -> Run {
    let database = server.dir.database_setting();
    let password = crate::harness::Mysql::from_env().map(|mysql| mysql.password);
    run_in(
        &server.dir.0,
        arguments,
        &[
            ("WXAUTH_DATABASE", database.as_str()),
            ("WXAUTH_DATABASE_PASSWORD", password.as_deref().unwrap_or_default()),
        ],
    )
}

/// No session key the server recorded, no JWT secret and no token appears in `text`.
fn assert_no_secrets(server: &Wxauth, text: &str) {
    assert!(!text.contains("eyJ"), "a token in the output:\n{text}");
    let database = server.database();
    let mut statement = database
        .prepare(
            "SELECT session_key FROM wechat_sessions
             UNION ALL SELECT value FROM meta WHERE key = 'jwt_secret'",
        )
        .unwrap();
    let secrets: Vec<String> =
        statement.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect();
    assert!(!secrets.is_empty(), "the check needs secrets to look for");
    for secret in secrets {
        assert!(!text.contains(&secret), "a secret in the output:\n{text}");
    }
}

/// Logs in demo user `name` and registers a typed phone; returns (openid, token, account).
pub(crate) fn registered_user(server: &Wxauth, name: &str, phone: &str) -> (String, String, Value) {
    let (openid, _) = server.login_as(name);
    let body = json!({"openid": openid, "phone": phone, "nickname": name});
    let result = server.post("register", &body).result().clone();
    let token = result["token"].as_str().unwrap().to_string();
    (openid, token, result["account"].clone())
}

pub(crate) fn login_by_token(server: &Wxauth, token: &str) -> crate::harness::Answer {
    server.post_with("login", &json!({}), &[("Authorization", &format!("jwt {token}"))])
}

pub(crate) fn account_count(connection: &rusqlite::Connection) -> i64 {
    connection.query_row("SELECT count(*) FROM accounts", [], |row| row.get(0)).unwrap()
}

// ----- help and usage -----

#[test]
fn every_command_has_its_own_help_on_stdout() {
    let dir = TempDir::new();
    let overview = run_in(&dir.0, &["--help"], &[]);
    for command in ["serve", "check-config", "users", "backup", "restore", "migrate", "fake-wechat"]
    {
        // `serve` is the default command, so its usage shows it optional.
        let named = match command {
            "serve" => "wxauth [serve]".to_string(),
            _ => format!("wxauth {command}"),
        };
        assert!(overview.success().contains(&named), "{command}");
        let help = run_in(&dir.0, &[command, "--help"], &[]);
        let text = help.success();
        assert!(text.starts_with("Usage:"), "{command}: {text}");
        assert!(text.contains(&named), "{command}: {text}");
        assert_ne!(text, overview.stdout, "{command} has a usage of its own");
        assert_eq!(run_in(&dir.0, &["help", command], &[]).success(), text, "help {command}");
        assert_eq!(run_in(&dir.0, &[command, "-h"], &[]).success(), text, "{command} -h");
    }
    let users = run_in(&dir.0, &["users", "--help"], &[]);
    for action in ["list", "show", "find", "export", "set", "revoke", "disable", "enable", "delete"]
    {
        assert!(users.stdout.contains(&format!("wxauth users {action}")), "{action}");
        let help = run_in(&dir.0, &["users", action, "--help"], &[]);
        assert_eq!(help.success(), users.stdout, "users {action} --help");
    }
    assert_eq!(run_in(&dir.0, &["help"], &[]).success(), overview.stdout);
    // The commit when built from a git checkout (build.rs).
    let version = run_in(&dir.0, &["--version"], &[]);
    let expected = match crate::harness::built_from() {
        Some(commit) => format!("wxauth {} (commit {commit})\n", env!("CARGO_PKG_VERSION")),
        None => format!("wxauth {}\n", env!("CARGO_PKG_VERSION")),
    };
    assert_eq!(version.success(), expected);
    assert!(std::fs::read_dir(&dir.0).unwrap().next().is_none(), "help created a file");
}

/// Regression: `help users list` printed the usage and exited 2, and `help help` said there was
/// no such command.
#[test]
fn help_takes_a_command_and_an_action_and_has_its_own_help() {
    let dir = TempDir::new();
    let users = run_in(&dir.0, &["users", "--help"], &[]);
    for action in ["list", "show", "export", "revoke"] {
        let help = run_in(&dir.0, &["help", "users", action], &[]);
        assert_eq!(help.success(), users.stdout, "help users {action}");
    }
    let help = run_in(&dir.0, &["help", "help"], &[]);
    assert!(help.success().starts_with("Usage: wxauth help [COMMAND [ACTION]]"), "{help:#?}");
    assert_eq!(run_in(&dir.0, &["help", "--help"], &[]).success(), help.stdout);
    let run = run_in(&dir.0, &["help", "users", "list", "now"], &[]);
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.starts_with("wxauth: help takes a command and at most one action"));
}

/// Regression: `wxauth --help | head -1` panicked with a backtrace once `head` had closed the
/// pipe. A command whose output is no longer read ends at once and silently, as Unix filters do
/// (by SIGPIPE, status 141 in the shell).
#[test]
fn a_command_whose_output_is_not_read_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = TempDir::new();
    for arguments in [
        &["--help"][..],
        &["--version"],
        &["help", "users"],
        &["migrate", "--help"],
        &["check-config"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = Command::new(binary())
            .args(arguments)
            .current_dir(&dir.0)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let quiet = output.status.success() || output.status.signal() == Some(13);
        assert!(quiet, "{arguments:?}: {:?}", output.status);
        assert_eq!(String::from_utf8_lossy(&output.stderr), "", "{arguments:?}");
    }
}

#[test]
fn usage_errors_exit_2_with_the_reason_and_the_commands_usage() {
    let dir = TempDir::new();
    for (arguments, reason, usage) in [
        (&["bogus"][..], "unknown command `bogus`", "wxauth users list"),
        (&["--bogus"], "unexpected argument `--bogus`", "wxauth users list"),
        (&["help", "bogus"], "no command `bogus`", "wxauth users list"),
        (&["users"], "users needs an action", "wxauth users export"),
        (&["users", "frobnicate"], "unknown users action `frobnicate`", "wxauth users export"),
        (&["users", "export"], "users export needs --format csv or json", "wxauth users export"),
        (&["users", "export", "--format", "xml"], "--format must be csv or json", "--format csv"),
        (&["users", "export", "--format"], "--format needs csv or json", "--format csv"),
        (&["users", "list", "--limit", "many"], "--limit takes a whole number", "--limit N"),
        (&["users", "list", "--offset=-1"], "--offset takes a whole number", "--limit N"),
        (&["users", "show"], "users needs an ID or OPENID", "wxauth users show"),
        (&["users", "show", "1", "--limit", "2"], "--limit does not apply to users", "users show"),
        (&["users", "revoke", "1", "2"], "unexpected argument `2`", "users revoke"),
        (&["users", "find"], "users needs a QUERY", "wxauth users find"),
        (&["users", "find", ""], "needs a QUERY that is not empty", "wxauth users find"),
        (&["users", "find", "x", "--by", "email"], "--by must be phone, openid", "users find"),
        (&["users", "set", "1"], "needs at least one FIELD=VALUE", "wxauth users set"),
        (&["users", "set", "1", "phone"], "takes FIELD=VALUE, not `phone`", "users set"),
        (&["users", "disable"], "users needs an ID or OPENID", "wxauth users disable"),
        (&["users", "delete", "1", "2"], "unexpected argument `2`", "wxauth users delete"),
        (&["backup"], "backup needs a PATH", "wxauth backup PATH"),
        (&["restore"], "restore needs a BACKUP", "wxauth restore BACKUP"),
        (&["migrate", "now"], "unexpected argument `now`", "wxauth migrate"),
        (&["check-config", "--listen", "x"], "--listen does not apply", "wxauth check-config"),
        (
            &["check-config", "--config", "a", "--config", "b"],
            "--config given twice",
            "check-config",
        ),
        (
            &["serve", "--listen", "127.0.0.1:0"],
            "--listen belongs to fake-wechat",
            "wxauth [serve]",
        ),
        (&["fake-wechat", "--config", "x"], "fake-wechat takes no --config", "fake-wechat"),
    ] {
        let run = run_in(&dir.0, arguments, &[]);
        assert_eq!(run.code, Some(2), "{arguments:?}: {run:#?}");
        assert_eq!(run.stdout, "", "{arguments:?}");
        let first = run.stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("wxauth: ") && first.contains(reason), "{arguments:?}: {run:#?}");
        assert!(run.stderr.contains(usage), "{arguments:?} shows its usage: {run:#?}");
    }
    assert!(std::fs::read_dir(&dir.0).unwrap().next().is_none(), "a usage error created a file");
}

// ----- check-config -----

#[test]
fn check_config_prints_the_effective_configuration_with_secrets_redacted() {
    let dir = TempDir::new();
    let path = dir.0.join("custom.toml");
    std::fs::write(&path, "prefix = \"/api/auth/\"\n[jwt]\nissuer = \"file-issuer\"\n").unwrap();
    let app_secret = "app-secret-value-4711";
    let jwt_secret = "jwt-secret-value-that-is-long-enough-0815";
    let run = run_in(
        &dir.0,
        &["check-config", "--config", path.to_str().unwrap()],
        &[
            ("WXAUTH_WECHAT_APPID", "wxcheck"),
            ("WXAUTH_WECHAT_SECRET", app_secret),
            ("WXAUTH_JWT_SECRET", jwt_secret),
            ("WXAUTH_WORKERS", "12"),
            ("WXAUTH_DATABASE", "elsewhere.db"),
        ],
    );
    let text = run.success();
    for line in [
        "prefix = \"/api/auth/\"",
        "issuer = \"file-issuer\"",
        "appid = \"wxcheck\"",
        "workers = 12",
        "database = \"elsewhere.db\"",
        "audience = \"miniprog\"",
        "[rate_limit]",
    ] {
        assert!(text.lines().any(|shown| shown == line), "{line} in:\n{text}");
    }
    assert_eq!(text.matches("secret = \"<redacted>\"").count(), 2, "{text}");
    assert!(!text.contains("app-secret-value") && !text.contains("jwt-secret-value"), "{text}");
    assert!(text.contains(path.to_str().unwrap()), "names the file it read: {text}");
    assert!(!dir.0.join("elsewhere.db").exists(), "check-config touches no database");

    // Built-in defaults: demo mode, unset secrets shown as empty.
    let run = run_in(&dir.0, &["check-config"], &[]);
    let text = run.success();
    assert!(text.contains("Demo mode"), "{text}");
    assert!(text.contains("listen = \"127.0.0.1:8000\""), "{text}");
    assert_eq!(text.matches("secret = \"\"").count(), 2, "{text}");
}

#[test]
fn check_config_refuses_an_invalid_configuration_with_the_reason() {
    let dir = TempDir::new();
    run_in(&dir.0, &["check-config"], &[("WXAUTH_JWT_SECRET", "short-secret")])
        .failure("jwt.secret: must be at least 32 bytes");
    let run = run_in(&dir.0, &["check-config"], &[("WXAUTH_JWT_SECRET", "short-secret")]);
    assert!(!run.stderr.contains("short-secret"), "the secret is not echoed: {run:#?}");
    run_in(&dir.0, &["check-config"], &[("WXAUTH_WECHAT_APPID", "wx1")])
        .failure("wechat: set both appid and secret");
    run_in(&dir.0, &["check-config"], &[("WXAUTH_NO_SUCH_KEY", "1")])
        .failure("unknown variable WXAUTH_NO_SUCH_KEY");
    std::fs::write(dir.0.join("wxauth.toml"), "[wechat]\nappsecret = \"x\"\n").unwrap();
    run_in(&dir.0, &["check-config"], &[]).failure("unknown key `wechat.appsecret`");
    run_in(&dir.0, &["check-config", "--config", "missing.toml"], &[])
        .failure("cannot read config file missing.toml");
    run_in(&dir.0, &["check-config"], &[("WXAUTH_CONFIG", "also-missing.toml")])
        .failure("cannot read config file also-missing.toml");
}

// ----- missing and old databases -----

/// A file `users import` reads, outside the test's directory.
const DJANGO_USERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/django-users.json");

#[test]
fn commands_on_a_missing_database_fail_without_creating_it() {
    let dir = TempDir::new();
    let environment = [("WXAUTH_DATABASE", "absent.db")];
    for arguments in [
        &["users", "list"][..],
        &["users", "show", "1"],
        &["users", "export", "--format", "csv"],
        &["users", "export", "--format", "json"],
        &["users", "find", "x"],
        &["users", "set", "1", "flag=2"],
        &["users", "revoke", "1"],
        &["users", "disable", "1"],
        &["users", "enable", "1"],
        &["users", "delete", "1"],
        &["users", "import", DJANGO_USERS, "--format", "django"],
        &["backup", "copy.db"],
        &["migrate"],
    ] {
        run_in(&dir.0, arguments, &environment).failure("database absent.db does not exist");
        let left: Vec<_> =
            std::fs::read_dir(&dir.0).unwrap().map(|entry| entry.unwrap().path()).collect();
        assert!(left.is_empty(), "{arguments:?} left {left:?}");
    }
}

#[test]
fn migrate_upgrades_an_old_database_and_then_says_it_is_current() {
    let dir = TempDir::new();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schema-v1.db");
    std::fs::copy(fixture, dir.0.join("wxauth.db")).unwrap();
    let environment = [("WXAUTH_DATABASE", "wxauth.db")];

    run_in(&dir.0, &["users", "list"], &environment).failure(&format!(
        "has schema version 1, this wxauth needs {}: run `wxauth migrate` first",
        schema_version()
    ));
    let applied = run_in(&dir.0, &["migrate"], &environment);
    assert_eq!(
        applied.success(),
        format!("wxauth.db: applied schema versions {}\n", versions_from(2))
    );
    let current = run_in(&dir.0, &["migrate"], &environment);
    assert_eq!(
        current.success(),
        format!("wxauth.db: schema is current (version {})\n", schema_version())
    );
    // Regression: the docs promised `DATABASE: applied schema version N` for several versions.
    let help = run_in(&dir.0, &["migrate", "--help"], &[]);
    let operations = include_str!("../../docs/operations.md");
    for promised in
        ["`DATABASE: applied schema versions N, M`", "`DATABASE: schema is current (version N)`"]
    {
        assert!(help.success().contains(promised), "migrate --help: {promised}");
        assert!(operations.contains(promised), "docs/operations.md: {promised}");
    }
    let database = rusqlite::Connection::open(dir.0.join("wxauth.db")).unwrap();
    let version: u32 = database.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
    assert_eq!(version, schema_version());
    let list = run_in(&dir.0, &["users", "list"], &environment);
    assert!(list.success().contains("oFixtureRegistered0000000001"), "{list:#?}");

    // A database from a newer wxauth is refused, by migrate and by the readers alike.
    database.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(database);
    run_in(&dir.0, &["migrate"], &environment).failure(&format!(
        "database wxauth.db has schema version 99, newer than this wxauth's ({})",
        schema_version()
    ));
    run_in(&dir.0, &["users", "show", "1"], &environment).failure("newer than this wxauth's");
}

#[test]
fn commands_that_write_refuse_a_database_file_that_is_not_safely_theirs() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TempDir::new();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schema-v1.db");
    let database = dir.0.join("wxauth.db");
    std::fs::copy(fixture, &database).unwrap();
    let environment = [("WXAUTH_DATABASE", "wxauth.db")];
    let writers: [&[&str]; 7] = [
        &["migrate"],
        &["users", "revoke", "1"],
        &["users", "set", "1", "flag=2"],
        &["users", "disable", "1"],
        &["users", "enable", "1"],
        &["users", "delete", "1"],
        &["users", "import", DJANGO_USERS, "--format", "django"],
    ];

    std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o666)).unwrap();
    for arguments in writers {
        let run = run_in(&dir.0, arguments, &environment);
        run.failure("writable by other users (mode 0666)");
        assert!(run.stderr.contains("`chmod 600 wxauth.db`"), "{run:#?}");
        assert_eq!(dir.names(), ["wxauth.db"], "{arguments:?} made nothing beside it");
    }

    std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&database, dir.0.join("real.db")).unwrap();
    std::os::unix::fs::symlink("real.db", &database).unwrap();
    for arguments in writers {
        run_in(&dir.0, arguments, &environment)
            .failure("point `database` at the real file, not a symlink");
        assert_eq!(dir.names(), ["real.db", "wxauth.db"], "{arguments:?} made nothing beside it");
    }
    let before = std::fs::read(dir.0.join("real.db")).unwrap();
    assert_eq!(std::fs::read(fixture).unwrap(), before, "nothing written through the link");

    // As root, the operator's commands work on the service user's database, as the deployment
    // runs them, and leave it (and anything SQLite left beside it) that user's.
    std::fs::remove_file(&database).unwrap();
    std::fs::rename(dir.0.join("real.db"), &database).unwrap();
    if crate::harness::not_root(&database, "migrate leaves the service user's files its own") {
        return;
    }
    let service = 65534;
    std::os::unix::fs::chown(&database, Some(service), Some(service)).unwrap();
    assert_eq!(
        run_in(&dir.0, &["migrate"], &environment).success(),
        format!("wxauth.db: applied schema versions {}\n", versions_from(2))
    );
    for name in dir.names() {
        assert_eq!(std::fs::metadata(dir.0.join(&name)).unwrap().uid(), service, "{name}");
    }
}

// ----- users -----

#[test]
fn users_list_and_show_read_the_served_database() {
    let server = Wxauth::start(&[]);
    let (alice, _, alice_account) = registered_user(&server, "cli-alice", "13800138000");
    let (bob, _) = server.login_as("cli-bob");
    let (carol, _) = server.login_as("cli-carol");

    let list = run_on(&server, &["users", "list"]);
    let lines: Vec<&str> = list.success().lines().collect();
    assert_eq!(lines.len(), 5, "header, three accounts, summary: {lines:#?}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["id", "openid", "phone", "registered", "date_joined", "last_login"]);
    let alice_row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        alice_row[..4],
        [alice_account["id"].to_string().as_str(), &alice, "13800138000", "yes"]
    );
    assert_eq!(alice_row[4..6].join(" "), alice_account["date_joined"].as_str().unwrap());
    let bob_row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(bob_row[1..4], [bob.as_str(), "-", "no"]);
    assert!(lines[3].contains(&carol));
    // The last page offers no next one (regression: every page did).
    assert_eq!(lines[4], "accounts 1 to 3 of 3");

    let page = run_on(&server, &["users", "list", "--limit", "1", "--offset", "1"]);
    let lines: Vec<&str> = page.success().lines().collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines[1].contains(&bob), "{lines:#?}");
    assert_eq!(lines[2], "accounts 2 to 2 of 3 (--offset 2 for the next page)");
    let last = run_on(&server, &["users", "list", "--limit", "1", "--offset", "2"]);
    assert_eq!(last.success().lines().last(), Some("accounts 3 to 3 of 3"));
    let past = run_on(&server, &["users", "list", "--offset", "10"]);
    assert_eq!(past.success().lines().last(), Some("no accounts from offset 10 (3 in all)"));

    // show: the API's account object, by id or by openid, and nothing secret.
    let id = alice_account["id"].to_string();
    let mut by_id: Value =
        serde_json::from_str(run_on(&server, &["users", "show", &id]).success()).unwrap();
    let by_openid: Value =
        serde_json::from_str(run_on(&server, &["users", "show", &alice]).success()).unwrap();
    assert_eq!(by_id, by_openid);
    // After the fields, every identity of the account: here the one app's.
    let identities = by_id.as_object_mut().unwrap().remove("identities");
    assert_eq!(identities, Some(json!([{"appid": "wxdemo", "openid": alice}])));
    assert_eq!(by_id, alice_account, "the same object the API answered");
    assert!(by_id.get("token_version").is_none() && by_id.get("session_key").is_none());

    run_on(&server, &["users", "show", "99999"]).failure("no account with id or openid `99999`");
    run_on(&server, &["users", "show", "oNobody"])
        .failure("no account with id or openid `oNobody`");
}

#[test]
fn users_revoke_refuses_every_earlier_token_of_the_running_server() {
    let server = Wxauth::start(&[]);
    let (_, token, account) = registered_user(&server, "cli-revoked", "13900139000");
    let (_, other) = server.login_as("cli-untouched");
    let other_token = other["token"].as_str().unwrap().to_string();
    login_by_token(&server, &token).result();
    let id = account["id"].to_string();

    let run = run_on(&server, &["users", "revoke", &id]);
    assert_eq!(
        run.success(),
        format!(
            "revoked every token issued to account {id} so far; it gets a working token by logging in again\n"
        )
    );
    login_by_token(&server, &token).assert_error(403, "token_revoked");
    login_by_token(&server, &other_token).result();
    let version: i64 = server
        .database()
        .query_row(
            "SELECT token_version FROM accounts WHERE id = ?1",
            [account["id"].as_i64()],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(version, 1, "the same change as logout");

    // Logging in again gives a working token; the server keeps serving.
    let code = fresh_code("cli-revoked");
    let openid = server.openid_for(&code)["openid"].as_str().unwrap().to_string();
    let fresh = server.post("login", &json!({ "openid": openid })).result()["token"].clone();
    login_by_token(&server, fresh.as_str().unwrap()).result();

    run_on(&server, &["users", "revoke", "99999"]).failure("no account with id or openid `99999`");
}

/// Splits RFC 4180 CSV text into records of fields, strictly: CRLF record ends, quoted fields
/// with doubled quotes; anything else is a test failure.
pub(crate) fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut characters = text.chars().peekable();
    let mut quoted = false;
    while let Some(character) = characters.next() {
        match (quoted, character) {
            (true, '"') if characters.peek() == Some(&'"') => {
                characters.next();
                field.push('"');
            }
            (true, '"') => {
                quoted = false;
                let next = characters.peek();
                assert!(matches!(next, Some(',') | Some('\r')), "stray character after a quote");
            }
            (true, other) => field.push(other),
            (false, '"') => {
                assert!(field.is_empty(), "a quote inside an unquoted field");
                quoted = true;
            }
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => {
                assert_eq!(characters.next(), Some('\n'), "CR without LF");
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, '\n') => panic!("a bare LF ends a record"),
            (false, other) => field.push(other),
        }
    }
    assert!(!quoted && field.is_empty() && record.is_empty(), "the text ends mid-record");
    records
}

/// Puts `count` accounts straight into the database, with awkward nicknames among them;
/// returns the nicknames by openid.
fn insert_accounts(server: &Wxauth, count: usize) -> Vec<(String, Option<String>)> {
    let mut database = server.database();
    let transaction = database.transaction().unwrap();
    let mut inserted = Vec::new();
    for index in 0..count {
        let openid = format!("oBulk{index:023}");
        let nickname = match index % 11 {
            0 => Some(format!("Ann, \"the\" {index}\nsecond line")),
            1 => Some(format!("张三\r\n{index}")),
            2 => None,
            3 => Some(format!("=\"plain\"{index}")),
            4 => Some("=1+1".to_string()),
            5 => Some("+cmd".to_string()),
            6 => Some("-2".to_string()),
            7 => Some("@SUM(A1)".to_string()),
            8 => Some(format!("\t=HYPERLINK(\"http://example.com/{index}\")")),
            9 => Some(format!("\r-{index}")),
            _ => Some(format!("plain {index}")),
        };
        transaction
            .execute(
                "INSERT INTO accounts (username, wx_appid, wx_openid, wx_nickname, phone, date_joined, is_register)
                 VALUES (?1, 'wxdemo', ?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    openid,
                    nickname,
                    (index % 2 == 0).then(|| format!("+86138{index:08}")),
                    1_700_000_000 + index as i64,
                    index % 2 == 0,
                ],
            )
            .unwrap();
        inserted.push((openid, nickname));
    }
    transaction.commit().unwrap();
    inserted
}

#[test]
fn users_export_csv_quotes_and_matches_the_database() {
    if crate::harness::sqlite_only(
        "writes to the database behind the server's back, through SQLite",
    ) {
        return;
    }
    let server = Wxauth::start(&[]);
    let (_, _, registered) = registered_user(&server, "cli-export", "13700137000");
    let inserted = insert_accounts(&server, 300);

    let run = run_on(&server, &["users", "export", "--format", "csv"]);
    let records = parse_csv(run.success());
    let fields: Vec<&str> = records[0].iter().map(String::as_str).collect();
    // The header is the account object's fields in the API's order (as `users show` prints
    // them), so nothing is lost or renamed on the way to a spreadsheet, then the four columns
    // `users import` needs to put an account back whole.
    let shown = run_on(&server, &["users", "show", &registered["id"].to_string()]);
    let mut shown_keys: Vec<String> = shown
        .success()
        .lines()
        .filter_map(|line| line.strip_prefix("  \"").and_then(|rest| rest.split('"').next()))
        .map(str::to_string)
        // After the fields, `users show` lists the account's identities, which are no field.
        .filter(|key| key != "identities")
        .collect();
    shown_keys
        .extend(["wx_appid", "token_version", "disabled_at", "identities"].map(str::to_string));
    assert_eq!(fields, shown_keys);
    let mut api_fields: BTreeSet<&str> =
        registered.as_object().unwrap().keys().map(String::as_str).collect();
    api_fields.extend(["wx_appid", "token_version", "disabled_at", "identities"]);
    assert_eq!(fields.iter().copied().collect::<BTreeSet<&str>>(), api_fields);
    assert!(!fields.contains(&"session_key"));

    let rows = &records[1..];
    assert_eq!(rows.len() as i64, account_count(&server.database()));
    assert_eq!(rows.len(), 301);
    let column = |name: &str| fields.iter().position(|field| *field == name).unwrap();
    let by_field = |row: &Vec<String>, name: &str| row[column(name)].clone();

    // The registered account: every field as the API shows it, null as empty.
    let first = &rows[0];
    for (name, value) in registered.as_object().unwrap() {
        let expected = match value {
            Value::Null => String::new(),
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        assert_eq!(by_field(first, name), expected, "{name}");
    }
    // The inserted ones, in id order, with their awkward nicknames intact, except that one a
    // spreadsheet would run as a formula starts with a `'`.
    for (row, (openid, nickname)) in rows[1..].iter().zip(&inserted) {
        assert_eq!(row.len(), fields.len());
        assert_eq!(&by_field(row, "wx_openid"), openid);
        let nickname = nickname.clone().unwrap_or_default();
        let expected = if nickname.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            format!("'{nickname}")
        } else {
            nickname
        };
        assert_eq!(by_field(row, "wx_nickname"), expected);
    }
    assert_eq!(by_field(&rows[1], "wx_nickname"), "Ann, \"the\" 0\nsecond line");
    assert_eq!(by_field(&rows[4], "wx_nickname"), "'=\"plain\"3");
    assert_eq!(by_field(&rows[5], "wx_nickname"), "'=1+1");
    assert_eq!(by_field(&rows[6], "wx_nickname"), "'+cmd");
    assert_eq!(by_field(&rows[7], "wx_nickname"), "'-2");
    assert_eq!(by_field(&rows[8], "wx_nickname"), "'@SUM(A1)");
    assert_eq!(by_field(&rows[9], "wx_nickname"), "'\t=HYPERLINK(\"http://example.com/8\")");
    assert_eq!(by_field(&rows[10], "wx_nickname"), "'\r-9");
    // As written, byte for byte: the quote goes inside the CSV quoting.
    assert!(run.success().contains(",'=1+1,"));
    assert!(run.success().contains(",\"'\r-9\","));
    // A phone is digits with an optional `+` (the API refuses anything else): never a formula,
    // so it stays as it is for the machines that read it.
    assert_eq!(by_field(&rows[1], "phone"), "+8613800000000");
    assert_eq!(by_field(&rows[1], "is_register"), "true");
    assert_eq!(by_field(&rows[2], "is_register"), "false");
    assert_eq!(by_field(&rows[2], "phone"), "");
    assert_eq!(by_field(first, "identities"), "", "no identity but its own");
    assert_eq!(by_field(&rows[1], "date_joined"), "2023-11-14 22:13:20");
}

#[test]
fn users_export_json_is_one_array_of_account_objects_matching_the_database() {
    if crate::harness::sqlite_only(
        "writes to the database behind the server's back, through SQLite",
    ) {
        return;
    }
    let server = Wxauth::start(&[]);
    let (_, _, registered) = registered_user(&server, "cli-json", "13600136000");
    let inserted = insert_accounts(&server, 300);

    let run = run_on(&server, &["users", "export", "--format", "json"]);
    let text = run.success();
    let accounts: Vec<Value> = serde_json::from_str(text).unwrap();
    assert_eq!(accounts.len() as i64, account_count(&server.database()));
    assert_eq!(accounts.len(), 301);
    // One account per line between the brackets, so line tools work too.
    assert_eq!(text.lines().count(), 303);
    // The account object, then the four columns `users import` needs (no identity but its own).
    let mut expected = registered.clone();
    expected["wx_appid"] = json!("wxdemo");
    expected["token_version"] = json!(0);
    expected["disabled_at"] = Value::Null;
    expected["identities"] = json!([]);
    assert_eq!(accounts[0], expected);
    for (account, (openid, nickname)) in accounts[1..].iter().zip(&inserted) {
        assert_eq!(account["wx_openid"], *openid);
        assert_eq!(account["wx_nickname"], json!(nickname));
        assert_eq!(account.as_object().unwrap().len(), registered.as_object().unwrap().len() + 4);
    }
    // JSON is not read by spreadsheets: text that would start a formula there is left as it is.
    assert_eq!(accounts[5]["wx_nickname"], "=1+1");
    assert_eq!(accounts[6]["wx_nickname"], "+cmd");
    assert_eq!(accounts[7]["wx_nickname"], "-2");
    assert_eq!(accounts[8]["wx_nickname"], "@SUM(A1)");
    assert_eq!(accounts[1]["phone"], "+8613800000000");
    let mut shown: Value =
        serde_json::from_str(run_on(&server, &["users", "show", &inserted[7].0]).success())
            .unwrap();
    shown.as_object_mut().unwrap().remove("identities");
    let mut exported = accounts[8].clone();
    for column in ["wx_appid", "token_version", "disabled_at", "identities"] {
        exported.as_object_mut().unwrap().remove(column);
    }
    assert_eq!(exported, shown);

    // An empty database exports an empty array and a bare header.
    server.database().execute("DELETE FROM accounts", []).unwrap();
    assert_eq!(run_on(&server, &["users", "export", "--format", "json"]).success(), "[\n]\n");
    let csv = run_on(&server, &["users", "export", "--format", "csv"]);
    assert_eq!(parse_csv(csv.success()).len(), 1);
}

// ----- backup -----

#[test]
fn backup_of_a_serving_database_is_complete_and_verified() {
    if crate::harness::sqlite_only("backup copies a SQLite file") {
        return;
    }
    let server = Wxauth::start(&[]);
    let (alice, _, _) = registered_user(&server, "cli-backup", "13500135000");
    let mut openids = vec![alice];
    for index in 0..5 {
        openids.push(server.login_as(&format!("cli-backup-{index}")).0);
    }
    // Keep the server writing (each code exchange records a WeChat session) while the backup runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let busy = {
        let (stop, done) = (stop.clone(), done.clone());
        let base = server.url("get_openid_by_code");
        std::thread::spawn(move || {
            let agent = crate::harness::agent();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let url = format!("{base}?code={}", fresh_code("cli-backup-busy"));
                assert_eq!(crate::harness::send(&agent, "GET", &url, &[], None).status, 200);
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    // The writes are under way before the backup starts, and go on while it runs.
    while done.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        std::thread::yield_now();
    }
    let before = done.load(std::sync::atomic::Ordering::SeqCst);
    let copy = server.dir.0.join("copy.db");
    let run = run_on(&server, &["backup", copy.to_str().unwrap()]);
    let after = done.load(std::sync::atomic::Ordering::SeqCst);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    busy.join().unwrap();
    assert!(after > before, "no write completed while the backup ran ({before} → {after})");
    let text = run.success();
    assert!(text.starts_with(&format!("wrote {}: a copy of ", copy.display())), "{text}");
    assert!(text.contains(&format!("schema version {}", schema_version())), "{text}");
    assert!(text.ends_with("integrity_check ok\n"), "{text}");

    let backup = rusqlite::Connection::open(&copy).unwrap();
    let check: String = backup.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(check, "ok");
    assert_eq!(account_count(&backup), 6);
    assert!(text.contains("  accounts: 6 rows\n"), "{text}");
    let sessions: i64 =
        backup.query_row("SELECT count(*) FROM wechat_sessions", [], |row| row.get(0)).unwrap();
    assert!(text.contains(&format!("  wechat_sessions: {sessions} rows\n")), "{text}");
    assert!(text.contains("  meta: "), "{text}");
    for openid in &openids {
        let found: i64 = backup
            .query_row("SELECT count(*) FROM accounts WHERE wx_openid = ?1", [openid], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(found, 1, "{openid}");
    }
    let phone: String = backup
        .query_row("SELECT phone FROM accounts WHERE wx_openid = ?1", [&openids[0]], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(phone, "13500135000");
    drop(backup);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the copy holds secrets: owner-only");
    }

    // Never over an existing file: the copy stays as it was.
    let before = std::fs::read(&copy).unwrap();
    run_on(&server, &["backup", copy.to_str().unwrap()])
        .failure("already exists; not overwriting it");
    assert_eq!(std::fs::read(&copy).unwrap(), before);
    let elsewhere = server.dir.0.join("no-such-dir").join("copy.db");
    run_on(&server, &["backup", elsewhere.to_str().unwrap()]).failure("cannot create");
}

/// A WAL or journal already beside the backup's path (left by an earlier copy, or put there by
/// another user of the directory) would be read into the copy when it is opened.
/// Regression: `users list` and `backup` failed on a read-only file system ("unable to open
/// database file") although they only read: SQLite could not create the WAL's index beside the
/// database. The commands that write say why they cannot.
#[test]
fn the_commands_that_read_work_on_a_read_only_file_system() {
    if crate::harness::sqlite_only("a database file on a read-only file system") {
        return;
    }
    let mut server = Wxauth::start(&[]);
    let (openid, _, account) = registered_user(&server, "cli-read-only", "13800138000");
    assert!(server.terminate().success());
    let dir = TempDir::new();
    std::fs::copy(server.dir.0.join("wxauth.db"), dir.0.join("wxauth.db")).unwrap();
    let copies = TempDir::new();
    let wrapper = on_read_only(&dir.0);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let run = |arguments: &[&str]| {
        run_wrapped(&wrapper, &dir.0, arguments, &[("WXAUTH_DATABASE", "wxauth.db")])
    };

    let list = run(&["users", "list"]);
    let lines: Vec<&str> = list.success().lines().collect();
    assert!(lines[1].contains(&openid), "{list:#?}");
    assert_eq!(lines[2], "accounts 1 to 1 of 1");
    let mut shown: Value =
        serde_json::from_str(run(&["users", "show", &openid]).success()).unwrap();
    shown.as_object_mut().unwrap().remove("identities");
    assert_eq!(shown, account);
    let exported = run(&["users", "export", "--format", "csv"]);
    assert_eq!(parse_csv(exported.success()).len(), 2, "{exported:#?}");
    let copy = copies.0.join("copy.db");
    let backup = run(&["backup", copy.to_str().unwrap()]);
    assert!(backup.success().ends_with("integrity_check ok\n"), "{backup:#?}");
    let copied = rusqlite::Connection::open(&copy).unwrap();
    assert_eq!(account_count(&copied), 1);

    for arguments in [&["migrate"][..], &["users", "revoke", "1"]] {
        run(arguments).failure("cannot open database wxauth.db: it is on a read-only file system");
    }
    assert_eq!(dir.names(), ["wxauth.db"], "nothing made beside it");
}

#[test]
fn backup_refuses_a_path_with_a_wal_or_journal_beside_it() {
    if crate::harness::sqlite_only("backup copies a SQLite file") {
        return;
    }
    let server = Wxauth::start(&[]);
    server.login_as("cli-backup-beside");
    let copy = server.dir.0.join("copy.db");
    for suffix in ["-wal", "-shm", "-journal"] {
        let beside = server.dir.0.join(format!("copy.db{suffix}"));
        std::fs::write(&beside, b"left here").unwrap();
        run_on(&server, &["backup", copy.to_str().unwrap()])
            .failure(&format!("{} already exists: move it away", beside.display()));
        assert!(!copy.exists(), "no copy made");
        assert_eq!(std::fs::read(&beside).unwrap(), b"left here", "left as it was");
        std::fs::remove_file(&beside).unwrap();
    }
    run_on(&server, &["backup", copy.to_str().unwrap()]).success();
}

#[test]
fn a_failed_backup_leaves_no_partial_file() {
    let dir = TempDir::new();
    std::fs::write(dir.0.join("garbage.db"), vec![b'x'; 8192]).unwrap();
    let run = run_in(&dir.0, &["backup", "copy.db"], &[("WXAUTH_DATABASE", "garbage.db")]);
    run.failure("not a database");
    assert!(!dir.0.join("copy.db").exists(), "the partial copy was removed");
}
