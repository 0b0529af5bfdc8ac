//! Starting and stopping the real binary, and speaking HTTP to it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The schema version this wxauth brings its databases to: the last `-- version: N` of
/// schema.sql, so that a new version does not change every test that names the current one.
pub fn schema_version() -> u32 {
    include_str!("../../schema.sql")
        .lines()
        .filter_map(|line| line.strip_prefix("-- version: "))
        .map(|number| number.trim().parse().unwrap())
        .max()
        .unwrap()
}

/// The schema versions from `first` to the current one, as `migrate` lists them: "2, 3, 4".
pub fn versions_from(first: u32) -> String {
    (first..=schema_version()).map(|version| version.to_string()).collect::<Vec<_>>().join(", ")
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let name =
            format!("wxauth-it-{}-{}", std::process::id(), NEXT_DIR.fetch_add(1, Ordering::SeqCst));
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    /// The names of the files in it, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        if let Some(mysql) = Mysql::from_env() {
            mysql.drop_database(&self.database_name());
        }
    }
}

impl TempDir {
    /// The MySQL database of the servers started in this directory (under `WXAUTH_TEST_MYSQL`):
    /// the directory's name, so a restarted server finds its database again.
    pub fn database_name(&self) -> String {
        self.0.file_name().unwrap().to_string_lossy().replace('-', "_")
    }

    /// What `WXAUTH_DATABASE` names for servers started here: `wxauth.db` in it, or its own
    /// MySQL database under `WXAUTH_TEST_MYSQL` (created now if missing).
    pub fn database_setting(&self) -> String {
        match Mysql::from_env() {
            Some(mysql) => mysql.create_database(&self.database_name()),
            None => self.0.join("wxauth.db").to_string_lossy().into_owned(),
        }
    }
}

/// The MySQL (or MariaDB) server the suite runs against when `WXAUTH_TEST_MYSQL` names one
/// (`mysql://USER@HOST:PORT/ANY`, the password in `WXAUTH_TEST_MYSQL_PASSWORD`): every test gets
/// a database of its own, created when its first server starts and dropped with its directory.
/// `.ci/mariadb` (MariaDB) and `.ci/mysql` (MySQL) start such a server.
pub struct Mysql {
    /// `mysql://USER@HOST:PORT`, without a database.
    pub server: String,
    pub password: String,
}

impl Mysql {
    pub fn from_env() -> Option<Mysql> {
        let url = std::env::var("WXAUTH_TEST_MYSQL").ok().filter(|url| !url.is_empty())?;
        let rest = url.strip_prefix("mysql://").expect("WXAUTH_TEST_MYSQL: a mysql:// URL");
        let authority = rest.split('/').next().unwrap();
        Some(Mysql {
            server: format!("mysql://{authority}"),
            password: std::env::var("WXAUTH_TEST_MYSQL_PASSWORD").unwrap_or_default(),
        })
    }

    /// The URL of database `name`, for `WXAUTH_DATABASE`.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.server)
    }

    /// A connection to the server (no database chosen).
    pub fn connect(&self, database: Option<&str>) -> mysql::Conn {
        let opts = mysql::Opts::from_url(&self.server).unwrap();
        let opts = mysql::OptsBuilder::from_opts(opts)
            .pass(Some(self.password.clone()))
            .db_name(database)
            .prefer_socket(false);
        mysql::Conn::new(opts).expect("connect to WXAUTH_TEST_MYSQL")
    }

    pub fn create_database(&self, name: &str) -> String {
        use mysql::prelude::Queryable;
        let mut conn = self.connect(None);
        conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS `{name}`")).unwrap();
        self.url(name)
    }

    pub fn drop_database(&self, name: &str) {
        use mysql::prelude::Queryable;
        if let Ok(mut conn) = std::panic::catch_unwind(|| self.connect(None)) {
            let _ = conn.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"));
        }
    }

    /// A SQLite copy, in memory, of what MySQL database `name` holds (`meta`, `accounts`,
    /// `wechat_sessions`, `identities`), at schema.sql's latest version, so that a test reads it
    /// back with the same queries under either engine. Writes to the copy change nothing in
    /// MySQL: a test writes behind the server's back with `Wxauth::execute`.
    pub fn snapshot(&self, name: &str) -> rusqlite::Connection {
        use mysql::prelude::Queryable;
        let copy = rusqlite::Connection::open_in_memory().unwrap();
        copy.execute_batch(include_str!("../../schema.sql")).unwrap();
        // The identities are copied as MySQL has them, not made again from the accounts.
        copy.execute_batch("DROP TRIGGER accounts_identity").unwrap();
        copy.execute_batch(&format!("PRAGMA user_version = {}", schema_version())).unwrap();
        // A directory whose server never started (one swapped in by a restart) has an empty one.
        self.create_database(name);
        let mut conn = self.connect(Some(name));
        for table in ["meta", "accounts", "wechat_sessions", "identities"] {
            // A server that has not started yet has made no tables.
            let Ok(rows) = conn.query::<mysql::Row, _>(format!("SELECT * FROM {table}")) else {
                continue;
            };
            for row in rows {
                let columns: Vec<String> =
                    row.columns_ref().iter().map(|column| column.name_str().into_owned()).collect();
                let values: Vec<rusqlite::types::Value> = row
                    .unwrap()
                    .into_iter()
                    .map(|value| match value {
                        mysql::Value::NULL => rusqlite::types::Value::Null,
                        mysql::Value::Int(number) => rusqlite::types::Value::Integer(number),
                        mysql::Value::UInt(number) => {
                            rusqlite::types::Value::Integer(number as i64)
                        }
                        mysql::Value::Bytes(bytes) => {
                            rusqlite::types::Value::Text(String::from_utf8(bytes).unwrap())
                        }
                        other => panic!("unexpected value {other:?}"),
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO {table} ({}) VALUES ({})",
                    columns.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", "),
                    vec!["?"; columns.len()].join(", ")
                );
                copy.execute(&sql, rusqlite::params_from_iter(values)).unwrap();
            }
        }
        copy
    }
}

/// Whether this test is SQLite's alone (it looks at the database file, its permissions, backups
/// or the WAL, or puts in behind the server's back what neither the API nor an import lets in):
/// under `WXAUTH_TEST_MYSQL` it says so on stderr and the test returns early. The tests that call
/// it are listed in docs/operations.md's MySQL section.
pub fn sqlite_only(why: &str) -> bool {
    let mysql = Mysql::from_env().is_some();
    if mysql {
        eprintln!("SQLite only, skipped under WXAUTH_TEST_MYSQL: {why}");
    }
    mysql
}

/// Whether a check that needs root (to hand files to another user) must be skipped, saying so.
pub fn not_root(file: &std::path::Path, why: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let skipped = std::fs::metadata(file).unwrap().uid() != 0;
    if skipped {
        eprintln!("root only, skipped: {why}");
    }
    skipped
}

/// A running `wxauth serve`, killed on drop.
pub struct Wxauth {
    pub child: Child,
    pub base: String,
    pub fake: Option<String>,
    pub dir: TempDir,
    pub prefix: String,
    agent: ureq::Agent,
    /// Every line the server printed on stdout.
    stdout: Arc<Mutex<Vec<String>>>,
    /// Secrets given to the server, which must never appear in its output.
    secrets: Vec<String>,
}

/// An HTTP answer: status, headers we care about, and the body as JSON.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The one result object of a success envelope.
    pub fn result(&self) -> &Value {
        assert_eq!(self.status, 200, "expected success, got {self:?}");
        assert_eq!(self.body["code"], 0, "{self:?}");
        assert_eq!(self.body["detail"], "成功");
        let results = self.body["results"].as_array().expect("results is an array");
        assert_eq!(results.len(), 1, "{self:?}");
        &results[0]
    }

    /// Asserts a failure envelope with this status and error name.
    pub fn assert_error(&self, status: u16, error: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.body["error"], error, "{self:?}");
        assert_ne!(self.body["code"], 0, "{self:?}");
        assert!(self.body["code"].is_u64(), "{self:?}");
        assert!(self.body["detail"].as_str().is_some_and(|detail| !detail.is_empty()), "{self:?}");
        assert_eq!(self.body["results"], Value::Array(vec![]), "{self:?}");
        assert_eq!(self.header("Content-Type"), Some("application/json; charset=utf-8"));
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_wxauth")
}

/// The command that runs the binary through `wrapper` (nothing: the binary itself).
pub fn wrapped(wrapper: &[&str]) -> Command {
    match wrapper.split_first() {
        None => Command::new(binary()),
        Some((program, arguments)) => {
            let mut command = Command::new(program);
            command.args(arguments).arg(binary());
            command
        }
    }
}

/// A wrapper that runs the binary in a mount namespace of its own where `dir` is a read-only
/// file system, which binds root as well: what a read-only mount or a hardened systemd unit
/// gives. Works unprivileged where user namespaces are allowed. The program starts in `dir`,
/// entered again once it is mounted (a working directory entered before stays on the writable
/// mount below).
pub fn on_read_only(dir: &std::path::Path) -> Vec<String> {
    let script = r#"mount --bind -o ro "$0" "$0" && cd "$0" && exec "$@""#;
    let dir = dir.to_str().unwrap();
    ["unshare", "--map-root-user", "--mount", "sh", "-c", script, dir].map(String::from).to_vec()
}

/// The commit `wxauth --version` names: this checkout's HEAD when the tests run from a git
/// checkout (as build.rs finds it), else none.
pub fn built_from() -> Option<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    if !std::path::Path::new(root).join(".git").exists() {
        return None;
    }
    let output =
        Command::new("git").current_dir(root).args(["rev-parse", "--short=12", "HEAD"]).output();
    let output = output.ok().filter(|output| output.status.success())?;
    Some(String::from_utf8(output.stdout).unwrap().trim().to_string())
}

impl Wxauth {
    /// Starts wxauth in demo mode with the rate limit off, plus `env` overrides.
    pub fn start(env: &[(&str, &str)]) -> Wxauth {
        Wxauth::start_in(TempDir::new(), env)
    }

    /// Starts wxauth with its working directory and database in `dir`.
    pub fn start_in(dir: TempDir, env: &[(&str, &str)]) -> Wxauth {
        Wxauth::start_wrapped(dir, env, &[])
    }

    /// Starts wxauth through `wrapper` (a command that ends by running the program and
    /// arguments appended to it, e.g. `unshare -m sh -c '…; exec "$@"' sh`).
    pub fn start_wrapped(dir: TempDir, env: &[(&str, &str)], wrapper: &[&str]) -> Wxauth {
        Wxauth::start_command(dir, env, wrapper, |_| {})
    }

    /// As `start_wrapped`, with `adjust` given the command last (to hand it a socket, say).
    pub fn start_command(
        dir: TempDir,
        env: &[(&str, &str)],
        wrapper: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Wxauth {
        let mut command = wrapped(wrapper);
        command
            .current_dir(&dir.0)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WXAUTH_LISTEN", "127.0.0.1:0")
            .env("WXAUTH_DATABASE", dir.database_setting())
            .env(
                "WXAUTH_DATABASE_PASSWORD",
                Mysql::from_env().map(|mysql| mysql.password).unwrap_or_default(),
            )
            .env("WXAUTH_WORKERS", "4")
            .env("WXAUTH_WECHAT_MAX_IN_FLIGHT", "2")
            .env("WXAUTH_RATE_LIMIT_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(
                // Appended to, so a restarted server's log follows the first one's.
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.0.join("stderr.log"))
                    .unwrap(),
            );
        for (name, value) in env {
            command.env(name, value);
        }
        adjust(&mut command);
        let mut child = command.spawn().expect("start wxauth");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_else(|| {
            let stderr = std::fs::read_to_string(dir.0.join("stderr.log")).unwrap_or_default();
            panic!("wxauth printed nothing; stderr: {stderr}")
        });
        let base = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line: {first}"))
            .to_string();
        let demo =
            !env.iter().any(|(name, value)| *name == "WXAUTH_WECHAT_APPID" && !value.is_empty());
        let mut printed = vec![first.clone()];
        let fake = if demo {
            let second = lines.next().and_then(Result::ok).expect("demo line");
            let start = second.find("http://").expect("demo line names the fake");
            let fake = second[start..].split_whitespace().next().unwrap().to_string();
            printed.push(second);
            Some(fake)
        } else {
            None
        };
        // Keep reading stdout so the server never blocks on a full pipe.
        let stdout_rest = Arc::new(Mutex::new(printed));
        let sink = stdout_rest.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let secrets = env
            .iter()
            .flat_map(|(name, value)| match *name {
                "WXAUTH_WECHAT_SECRET" | "WXAUTH_JWT_SECRET" => vec![value.to_string()],
                // An app's secret, `WXAUTH_APPS_NAME_SECRET`.
                name if name.starts_with("WXAUTH_APPS_") && name.ends_with("_SECRET") => {
                    vec![value.to_string()]
                }
                // A comma-separated list, as the server reads it.
                "WXAUTH_JWT_PREVIOUS_SECRETS" => {
                    value.split(',').map(|secret| secret.trim().to_string()).collect()
                }
                _ => Vec::new(),
            })
            .collect();
        let prefix = env
            .iter()
            .find(|(name, _)| *name == "WXAUTH_PREFIX")
            .map(|(_, value)| value.to_string())
            .unwrap_or_else(|| "/miniprog/wx_auth/".into());
        Wxauth { child, base, fake, dir, prefix, agent: agent(), stdout: stdout_rest, secrets }
    }

    /// The server's database, to read back: the SQLite file, or (under `WXAUTH_TEST_MYSQL`) a
    /// SQLite copy of the MySQL database as it is now (`Mysql::snapshot`).
    pub fn database(&self) -> rusqlite::Connection {
        if let Some(mysql) = Mysql::from_env() {
            return mysql.snapshot(&self.dir.database_name());
        }
        let connection = rusqlite::Connection::open(self.dir.0.join("wxauth.db")).unwrap();
        connection.busy_timeout(Duration::from_secs(5)).unwrap();
        connection
    }

    /// Runs one statement on the server's database behind its back (its SQLite file, or its
    /// MySQL database under `WXAUTH_TEST_MYSQL`): the rows it changed.
    pub fn execute(&self, sql: &str) -> u64 {
        if let Some(mysql) = Mysql::from_env() {
            use mysql::prelude::Queryable;
            let mut conn = mysql.connect(Some(&self.dir.database_name()));
            conn.query_drop(sql).unwrap();
            return conn.affected_rows();
        }
        self.database().execute(sql, []).unwrap() as u64
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("stderr.log")).unwrap_or_default()
    }

    /// The log once `ready` holds for it, waiting at most 5 s. An answered request's access line
    /// reaches the log within moments of the answer, not before it (docs/operations.md), unless
    /// it is a failure on wxauth's side; a check that a line is absent waits for a later line
    /// first.
    pub fn log_when(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.stderr();
            if ready(&log) {
                return log;
            }
            assert!(Instant::now() < deadline, "the log never showed {what}:\n{log}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The log once it contains `needle` (see `log_when`).
    pub fn log_containing(&self, needle: &str) -> String {
        self.log_when(&format!("{needle:?}"), |log| log.contains(needle))
    }

    /// The `index`th line the server printed on stdout (0: `listening on …`), waiting at most
    /// 5 s for it.
    pub fn stdout_line(&self, index: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) = self.stdout.lock().unwrap().get(index) {
                return line.clone();
            }
            let printed = self.stdout.lock().unwrap().clone();
            assert!(Instant::now() < deadline, "no line {index} on stdout: {printed:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `HOST:PORT` the server listens on, for raw sockets.
    pub fn address(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    pub fn url(&self, endpoint: &str) -> String {
        format!("{}{}{}", self.base, self.prefix, endpoint)
    }

    pub fn get(&self, endpoint: &str) -> Answer {
        send(&self.agent, "GET", &self.url(endpoint), &[], None)
    }

    pub fn post(&self, endpoint: &str, body: &Value) -> Answer {
        self.post_with(endpoint, body, &[])
    }

    pub fn post_with(&self, endpoint: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
        send(&self.agent, "POST", &self.url(endpoint), headers, Some(body.to_string().as_bytes()))
    }

    pub fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Answer {
        send(&self.agent, method, &format!("{}{}", self.base, path), headers, body)
    }

    /// A call to the fake WeChat's helpers.
    pub fn fake(&self, path_and_query: &str) -> Value {
        let fake = self.fake.as_ref().expect("demo mode");
        let answer = send(&self.agent, "GET", &format!("{fake}{path_and_query}"), &[], None);
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body
    }

    /// Checks that reads still answer while something else is stuck (WeChat, hostile clients):
    /// five `is_openid_registered` requests, each answered correctly within `within`.
    pub fn assert_reads_answer_within(&self, within: Duration) {
        for _ in 0..5 {
            let started = Instant::now();
            let answer = self.get("is_openid_registered?openid=oNobodyWhileSomethingIsStuck");
            assert_eq!(answer.result(), &serde_json::json!({"is_registered": false}));
            let elapsed = started.elapsed();
            assert!(elapsed < within, "answered after {elapsed:?}");
        }
    }

    /// code → openid, through the API; returns the results object.
    pub fn openid_for(&self, code: &str) -> Value {
        self.get(&format!("get_openid_by_code?code={code}")).result().clone()
    }

    /// Logs in demo user `name` by a fresh code and returns (openid, login results).
    pub fn login_as(&self, name: &str) -> (String, Value) {
        let openid = self.openid_for(&fresh_code(name))["openid"].as_str().unwrap().to_string();
        let login = self.post("login", &serde_json::json!({ "openid": openid })).result().clone();
        (openid, login)
    }

    /// Kills the server with SIGKILL, as a crash would, and starts it again with `env` on the
    /// same directory and database.
    pub fn crash_and_restart(mut self, env: &[(&str, &str)]) -> Wxauth {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.assert_no_secrets_in_output();
        let dir = std::mem::replace(&mut self.dir, TempDir::new());
        drop(self);
        Wxauth::start_in(dir, env)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("wxauth did not stop within 10 s of SIGTERM");
    }
}

impl Wxauth {
    /// Checks that nothing secret ever reached the server's output: no JWT (every JWT starts
    /// with `eyJ`, base64 of `{"`), no session_key it recorded, no access token, no configured
    /// or generated secret. Every integration test runs this when its server is dropped.
    fn assert_no_secrets_in_output(&self) {
        let output = format!("{}\n{}", self.stdout.lock().unwrap().join("\n"), self.stderr());
        assert!(!output.contains("eyJ"), "a JWT reached the server's output:\n{output}");
        assert!(
            !output.contains("fake-access-token-"),
            "an access token reached the output:\n{output}"
        );
        let mut secrets = self.secrets.clone();
        secrets.extend(Mysql::from_env().map(|mysql| mysql.password));
        let database = match Mysql::from_env() {
            Some(_) => Ok(self.database()),
            None => rusqlite::Connection::open(self.dir.0.join("wxauth.db")),
        };
        if let Ok(database) = database {
            for query in [
                "SELECT session_key FROM wechat_sessions",
                "SELECT value FROM meta WHERE key = 'jwt_secret'",
            ] {
                if let Ok(mut statement) = database.prepare(query) {
                    let rows = statement.query_map([], |row| row.get::<_, String>(0));
                    secrets.extend(rows.into_iter().flatten().flatten());
                }
            }
        }
        for secret in secrets.iter().filter(|secret| secret.len() >= 8) {
            assert!(
                !output.contains(secret.as_str()),
                "a secret reached the server's output:\n{output}"
            );
        }
    }
}

impl Drop for Wxauth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            self.assert_no_secrets_in_output();
        }
    }
}

/// Runs the server binary on `dir` (its working directory, with the database `dir/wxauth.db`
/// unless `env` names another) and expects it to refuse to start: returns (status, stdout,
/// stderr). Its output goes to a directory of its own, so `dir` holds only what the server made.
/// Panics if it is still running after five seconds.
pub fn refused_start(dir: &TempDir, env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    refused_start_wrapped(dir, env, &[])
}

/// `refused_start` through `wrapper`, as in `Wxauth::start_wrapped`.
pub fn refused_start_wrapped(
    dir: &TempDir,
    env: &[(&str, &str)],
    wrapper: &[&str],
) -> (ExitStatus, String, String) {
    let output = TempDir::new();
    let mut command = wrapped(wrapper);
    command
        .current_dir(&dir.0)
        .env_clear()
        .env("WXAUTH_LISTEN", "127.0.0.1:0")
        .env("WXAUTH_DATABASE", dir.0.join("wxauth.db"))
        .env("WXAUTH_RATE_LIMIT_ENABLED", "false")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(output.0.join("stdout.log")).unwrap())
        .stderr(std::fs::File::create(output.0.join("stderr.log")).unwrap());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wxauth started with {env:?} instead of refusing to");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(output.0.join("stdout.log")).unwrap();
    let stderr = std::fs::read_to_string(output.0.join("stderr.log")).unwrap();
    (status, stdout, stderr)
}

/// `wxauth fake-wechat` run as its own process, killed on drop.
pub struct FakeProcess {
    child: Child,
    pub url: String,
}

impl FakeProcess {
    pub fn start() -> FakeProcess {
        let mut child = Command::new(binary())
            .args(["fake-wechat", "--listen", "127.0.0.1:0"])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the fake WeChat");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).expect("the fake printed nothing");
        let url = first
            .strip_prefix("fake WeChat listening on ")
            .unwrap_or_else(|| panic!("first line: {first}"))
            .to_string();
        std::thread::spawn(move || for _ in lines {});
        FakeProcess { child, url }
    }

    pub fn get(&self, path_and_query: &str) -> Value {
        let answer = send(&agent(), "GET", &format!("{}{path_and_query}", self.url), &[], None);
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body
    }
}

impl Drop for FakeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static NEXT_CODE: AtomicUsize = AtomicUsize::new(0);

/// A `wx.login` code for demo user `name` that has never been used.
pub fn fresh_code(name: &str) -> String {
    format!("{name}.{}-{}", std::process::id(), NEXT_CODE.fetch_add(1, Ordering::SeqCst))
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .proxy(None)
        .build()
        .new_agent()
}

pub fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Answer {
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    let has_content_type =
        headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if body.is_some() && !has_content_type {
        request = request.header("Content-Type", "application/json");
    }
    let result = match body {
        Some(body) => agent.run(request.body(body.to_vec()).unwrap()),
        None => agent.run(request.body(()).unwrap()),
    };
    let mut response = result.unwrap_or_else(|error| panic!("{method} {url}: {error}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("").to_string()))
        .collect();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Answer { status, body, headers }
}

/// Sends raw bytes on a fresh connection and returns what came back, until the server closes the
/// connection or `wait` passes without a byte.
pub fn raw_exchange(server: &Wxauth, bytes: &[u8], wait: Duration) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(server.address()).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    // What was read before a timeout or a reset stays in `answer`.
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The envelope in a raw HTTP answer, after its head.
pub fn envelope(raw: &str) -> Value {
    let body = raw.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|_| panic!("no JSON envelope in {raw:?}"))
}
