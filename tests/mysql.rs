//! Several wxauth instances on one MySQL (MariaDB) database, and that database going away: what
//! needs a real server and more than one process. A target of its own with `test = false`:
//! `cargo test` leaves it out, `cargo test --test mysql` runs it and FAILS unless
//! `WXAUTH_TEST_MYSQL` (and `WXAUTH_TEST_MYSQL_DIR` and `WXAUTH_TEST_MYSQL_CTL` for the restart)
//! name a server that `.ci/mariadb start` or `.ci/mysql start` made, so it can never pass by doing
//! nothing.

#[allow(dead_code)]
#[path = "it/harness.rs"]
mod harness;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use serde_json::json;

use harness::{FakeProcess, Mysql, TempDir, Wxauth, fresh_code, versions_from};

/// The tests share one server, which the restart test stops for a while: it holds this for
/// writing, every other test for reading.
static SERVER: RwLock<()> = RwLock::new(());

fn shared_server() -> RwLockReadGuard<'static, ()> {
    SERVER.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts the paused server again when dropped, even when the test fails half way.
struct Resume<'a>(&'a str);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let _ = server_control("resume", self.0);
    }
}

/// Runs `action` (`pause`, `resume`) of the script that started the server: the one
/// `WXAUTH_TEST_MYSQL_CTL` names (`.ci/mysql` or `.ci/mariadb`, which print it), else
/// `.ci/mariadb`.
fn server_control(action: &str, dir: &str) -> bool {
    let script = std::env::var("WXAUTH_TEST_MYSQL_CTL")
        .ok()
        .filter(|script| !script.is_empty())
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/mariadb").to_string());
    std::process::Command::new(script).args([action, dir]).status().unwrap().success()
}

/// Registers `openid` with a typed phone through `url`: the answer, or `None` when none came
/// (the server died during the request).
fn try_register(agent: &ureq::Agent, url: &str, openid: &str) -> Option<harness::Answer> {
    let body = json!({ "openid": openid, "phone": "13800138000" }).to_string();
    let request = ureq::http::Request::builder()
        .method("POST")
        .uri(url)
        .header("Content-Type", "application/json")
        .body(body.into_bytes())
        .unwrap();
    let mut response = agent.run(request).ok()?;
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("").to_string()))
        .collect();
    let text = response.body_mut().read_to_string().ok()?;
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Some(harness::Answer { status: response.status().as_u16(), body, headers })
}

fn mysql() -> Mysql {
    Mysql::from_env().expect(
        "WXAUTH_TEST_MYSQL is not set: start a server with `eval \"$(.ci/mariadb start)\"` (or \
         `.ci/mysql start`) first",
    )
}

/// One instance with the `open` openid policy on a database of its own, and the database's name.
fn one_instance(mysql: &Mysql) -> (Wxauth, String) {
    let dir = TempDir::new();
    let database = dir.database_name();
    mysql.create_database(&database);
    (Wxauth::start_in(dir, &[("WXAUTH_OPENID_LOGIN", "open")]), database)
}

/// An agent that waits up to 90 s for an answer, for requests that outwait a database's timeout.
fn patient_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(90)))
        .build()
        .new_agent()
}

/// Two instances on one database (the first one's), each with the rate limit off and the
/// `open` openid policy, against `wechat` (one fake WeChat both call, as two instances call the
/// one WeChat) when given, else each in demo mode, and the settings of `extra`.
fn two_instances(wechat: Option<&FakeProcess>, extra: &[(&str, &str)]) -> (Wxauth, Wxauth) {
    let mysql = mysql();
    let dir = TempDir::new();
    let url = mysql.create_database(&dir.database_name());
    let mut env = vec![("WXAUTH_OPENID_LOGIN", "open".to_string())];
    if let Some(fake) = wechat {
        env.push(("WXAUTH_WECHAT_APPID", "wxmysqltest000001".into()));
        env.push(("WXAUTH_WECHAT_SECRET", "mysql-test-app-secret".into()));
        env.push(("WXAUTH_WECHAT_BASE_URL", fake.url.clone()));
    }
    env.extend(extra.iter().map(|(name, value)| (*name, value.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let first = Wxauth::start_in(dir, &env);
    let mut second_env = env.clone();
    second_env.push(("WXAUTH_DATABASE", url.as_str()));
    let second = Wxauth::start(&second_env);
    (first, second)
}

#[test]
fn racing_first_logins_on_two_instances_make_one_account() {
    let _shared = shared_server();
    let (first, second) = two_instances(None, &[]);
    let openid = first.openid_for(&fresh_code("race"))["openid"].as_str().unwrap().to_string();
    let ids = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for index in 0..64 {
            let server = if index % 2 == 0 { &first } else { &second };
            let (openid, ids) = (&openid, &ids);
            scope.spawn(move || {
                let answer = server.post("login", &json!({ "openid": openid }));
                ids.lock().unwrap().push(answer.result()["account"]["id"].as_i64().unwrap());
            });
        }
    });
    let ids: HashSet<i64> = ids.into_inner().unwrap().into_iter().collect();
    assert_eq!(ids.len(), 1, "one account for 64 racing logins: {ids:?}");
    let count: i64 = first
        .database()
        .query_row("SELECT count(*) FROM accounts WHERE wx_openid = ?1", [&openid], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(count, 1);
}

/// One person's first logins through two mini-programs, on two instances at once, for many
/// people: each person ends with one account (the second login joins the unionid's account the
/// first made), whichever instance wrote first.
#[test]
fn racing_first_logins_through_two_apps_on_two_instances_make_one_account_per_person() {
    let _shared = shared_server();
    let (first, second) = two_instances(None, &[("WXAUTH_APPS_SHOP_PREFIX", "/shop/wx_auth/")]);
    const PEOPLE: usize = 16;
    let barrier = Barrier::new(PEOPLE * 2);
    let ids = Mutex::new(vec![Vec::new(); PEOPLE]);
    std::thread::scope(|scope| {
        for person in 0..PEOPLE {
            for (server, prefix) in [(&first, "/miniprog/wx_auth/"), (&second, "/shop/wx_auth/")] {
                let (barrier, ids) = (&barrier, &ids);
                scope.spawn(move || {
                    let agent = harness::agent();
                    let url = |endpoint: &str| format!("{}{prefix}{endpoint}", server.base);
                    let code = fresh_code(&format!("joiner{person}"));
                    let exchanged = harness::send(
                        &agent,
                        "GET",
                        &url(&format!("get_openid_by_code?code={code}")),
                        &[],
                        None,
                    );
                    let openid = exchanged.result()["openid"].as_str().unwrap().to_string();
                    barrier.wait();
                    let body = json!({ "openid": openid }).to_string();
                    let login =
                        harness::send(&agent, "POST", &url("login"), &[], Some(body.as_bytes()));
                    let id = login.result()["account"]["id"].as_i64().unwrap();
                    ids.lock().unwrap()[person].push(id);
                });
            }
        }
    });
    for (person, ids) in ids.into_inner().unwrap().iter().enumerate() {
        assert_eq!(ids[0], ids[1], "person {person} got two accounts: {ids:?}");
    }
    let database = first.database();
    let count = |sql: &str| -> i64 { database.query_row(sql, [], |row| row.get(0)).unwrap() };
    assert_eq!(count("SELECT count(*) FROM accounts"), PEOPLE as i64);
    assert_eq!(count("SELECT count(*) FROM identities"), 2 * PEOPLE as i64);
}

#[test]
fn a_code_retried_on_the_other_instance_gets_the_first_answer() {
    let _shared = shared_server();
    let fake = FakeProcess::start();
    let (first, second) = two_instances(Some(&fake), &[]);
    let code = fresh_code("retried");
    let answer = first.get(&format!("get_openid_by_code?code={code}"));
    let again = second.get(&format!("get_openid_by_code?code={code}"));
    assert_eq!(again.result()["openid"], answer.result()["openid"], "{again:?}");
    assert_eq!(again.result()["account"], answer.result()["account"]);
}

#[test]
fn a_session_recorded_by_one_instance_lets_the_other_apply_the_openid_policy() {
    let _shared = shared_server();
    let fake = FakeProcess::start();
    let (first, second) = two_instances(Some(&fake), &[]);
    // Under `recent_code` on the second instance: it never saw the code, the database did.
    drop(second);
    let url = mysql().url(&first.dir.database_name());
    let second = Wxauth::start(&[
        ("WXAUTH_DATABASE", url.as_str()),
        ("WXAUTH_WECHAT_APPID", "wxmysqltest000001"),
        ("WXAUTH_WECHAT_SECRET", "mysql-test-app-secret"),
        ("WXAUTH_WECHAT_BASE_URL", fake.url.as_str()),
    ]);
    let openid = first.get(&format!("get_openid_by_code?code={}", fresh_code("policy")));
    let openid = openid.result()["openid"].clone();
    let login = second.post("login", &json!({ "openid": openid }));
    assert_eq!(login.result()["account"]["wx_openid"], openid);
    // Logout on one instance revokes the token on the other.
    let token = login.result()["token"].as_str().unwrap().to_string();
    let authorization = format!("jwt {token}");
    first.post_with("logout", &json!({}), &[("Authorization", &authorization)]).result();
    second
        .post_with("login", &json!({}), &[("Authorization", &authorization)])
        .assert_error(403, "token_revoked");
}

#[test]
fn a_killed_instance_loses_no_acknowledged_registration() {
    let _shared = shared_server();
    let (first, mut second) = two_instances(None, &[]);
    let register = second.url("register");
    let acknowledged = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for worker in 0..8 {
            let (register, acknowledged, stop) = (&register, &acknowledged, &stop);
            scope.spawn(move || {
                let agent = harness::agent();
                for round in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let openid = format!("killed-{worker}-{round}");
                    // The kill cuts requests off half way: only an answered 200 counts.
                    match try_register(&agent, register, &openid) {
                        Some(answer) if answer.status == 200 => {
                            acknowledged.lock().unwrap().push(openid)
                        }
                        _ => break,
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(1500));
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &second.pid().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        stop.store(true, Ordering::SeqCst);
    });
    let _ = second.child.wait();
    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(acknowledged.len() > 20, "only {} registrations before the kill", acknowledged.len());
    for openid in &acknowledged {
        let answer = first.get(&format!("is_openid_registered?openid={openid}"));
        assert_eq!(answer.result()["is_registered"], true, "{openid} was acknowledged");
    }
}

#[test]
fn a_database_restart_under_load_recovers_without_restarting_wxauth() {
    let dir = std::env::var("WXAUTH_TEST_MYSQL_DIR").expect(
        "WXAUTH_TEST_MYSQL_DIR: the directory `.ci/mariadb start` (`.ci/mysql start`) made",
    );
    let _alone = SERVER.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (first, _second) = two_instances(None, &[]);
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|worker| {
            let (acknowledged, refused, stop) =
                (acknowledged.clone(), refused.clone(), stop.clone());
            let url = first.url("register");
            std::thread::spawn(move || {
                let agent = harness::agent();
                for round in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let openid = format!("restart-{worker}-{round}");
                    let answer = try_register(&agent, &url, &openid).expect("wxauth answers");
                    match answer.status {
                        200 => acknowledged.lock().unwrap().push(openid),
                        _ => refused.lock().unwrap().push(answer),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(server_control("pause", &dir));
    let resume = Resume(&dir);
    // Down: what needs the database is refused with 503, the rest answers.
    first.get("is_openid_registered?openid=anyone").assert_error(503, "database_unavailable");
    let ready =
        harness::send(&harness::agent(), "GET", &format!("{}/readyz", first.base), &[], None);
    assert_eq!(ready.status, 503, "{ready:?}");
    let health =
        harness::send(&harness::agent(), "GET", &format!("{}/healthz", first.base), &[], None);
    assert_eq!(health.status, 200, "{health:?}");
    drop(resume);
    // Back: service resumes by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = acknowledged.lock().unwrap().len();
    while acknowledged.lock().unwrap().len() < before + 20 {
        assert!(Instant::now() < deadline, "registrations did not resume");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    for thread in load {
        thread.join().unwrap();
    }
    for answer in refused.lock().unwrap().iter() {
        answer.assert_error(503, "database_unavailable");
    }
    let ready =
        harness::send(&harness::agent(), "GET", &format!("{}/readyz", first.base), &[], None);
    assert_eq!(ready.status, 200, "{ready:?}");
    for openid in acknowledged.lock().unwrap().iter() {
        let answer = first.get(&format!("is_openid_registered?openid={openid}"));
        assert_eq!(answer.result()["is_registered"], true, "{openid} was acknowledged");
    }
}

/// A statement that outlives the 30 s read timeout (here a logout's, and an operator's `users
/// revoke` over TLS, whose update waits for a table another session has locked for reading: a
/// wait that, unlike a row lock's, no lock wait timeout ends) fails with 503, or with the
/// command's one-line error (not a silent death by SIGPIPE), and leaves the tokens as they were;
/// and its reply, when it comes late, is never read as the answer to another request's statement:
/// every request after it gets its own account. The lock is let go soon after the timeout, so
/// that the late reply reaches the connection the timed-out request was using while wxauth still
/// reads from it. (Under a table locked for writing, the read of the account before the update
/// is what waits, and a result set read late is refused by the pool's reset rather than taken
/// for its OK: the test would then pass whether or not the connection is closed.)
#[test]
fn a_statement_cut_off_by_the_read_timeout_answers_no_later_request() {
    use mysql::prelude::Queryable;
    let _shared = shared_server();
    let mysql = mysql();
    let (server, database) = one_instance(&mysql);
    let people: Vec<(String, String)> = (0..5)
        .map(|index| {
            let openid = format!("timeout-{index}");
            let body = json!({ "openid": openid, "phone": format!("1380013800{index}") });
            let token = server.post("register", &body).result()["token"].as_str().unwrap().into();
            (openid, token)
        })
        .collect();
    let me = |token: &str| {
        let authorization = format!("jwt {token}");
        harness::send(
            &harness::agent(),
            "GET",
            &server.url("me"),
            &[("Authorization", &authorization)],
            None,
        )
    };
    let id = me(&people[0].1).result()["id"].to_string();
    let tls = mysql.server.replacen("mysql://wxauth@", "mysql://wxauth_tls@", 1);
    let tls = format!("{tls}/{database}?ssl-mode=REQUIRED");
    let elsewhere = TempDir::new();
    let mut operator = mysql.connect(Some(&database));
    operator.query_drop("LOCK TABLES accounts READ").unwrap();
    let (logout, revoke) = std::thread::scope(|scope| {
        let revoke = scope.spawn(|| {
            std::process::Command::new(harness::binary())
                .args(["users", "revoke", &id])
                .current_dir(&elsewhere.0)
                .env_clear()
                .env("WXAUTH_DATABASE", &tls)
                .env("WXAUTH_DATABASE_PASSWORD", &mysql.password)
                .output()
                .unwrap()
        });
        let logout = scope.spawn(|| {
            let authorization = format!("jwt {}", people[0].1);
            harness::send(
                &patient_agent(),
                "POST",
                &server.url("logout"),
                &[("Authorization", &authorization)],
                Some(b"{}"),
            )
        });
        // The clock starts once both statements run (and wait for the lock), whatever the
        // machine's pace.
        let mut watcher = mysql.connect(Some(&database));
        let deadline = Instant::now() + Duration::from_secs(10);
        let waiting = format!(
            "SELECT count(*) FROM information_schema.processlist
             WHERE db = '{database}' AND info LIKE 'UPDATE accounts SET token_version%'"
        );
        while watcher.query_first::<i64, _>(&waiting).unwrap() != Some(2) {
            assert!(Instant::now() < deadline, "the logout and the revoke never waited");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(34));
        operator.query_drop("UNLOCK TABLES").unwrap();
        (logout.join().unwrap(), revoke.join().unwrap())
    });
    logout.assert_error(503, "database_unavailable");
    let stderr = String::from_utf8_lossy(&revoke.stderr);
    assert_eq!(revoke.status.code(), Some(1), "{revoke:?}");
    assert!(stderr.starts_with("wxauth: ") && stderr.contains("database unavailable"), "{stderr}");
    assert!(!stderr.contains(&mysql.password), "the password is never shown");
    for round in 0..20 {
        for (openid, token) in &people {
            let answer = me(token);
            assert_eq!(answer.status, 200, "round {round}, {openid}: {answer:?}");
            assert_eq!(answer.result()["wx_openid"], openid.as_str(), "round {round}: {answer:?}");
        }
    }
}

/// A write that waits for a row lock another session holds (an operator's open transaction) past
/// wxauth's lock wait of 10 s fails with 503 `database_unavailable`, logged with the server's
/// reason rather than as a connection cut off by the 30 s read timeout, and leaves the account as
/// it was; once the lock is let go, the same write goes through.
#[test]
fn a_row_lock_held_elsewhere_fails_the_write_waiting_for_it_with_503() {
    use mysql::prelude::Queryable;
    let _shared = shared_server();
    let mysql = mysql();
    let (server, database) = one_instance(&mysql);
    let body = json!({ "openid": "locked-0", "phone": "13800138000" });
    let token = server.post("register", &body).result()["token"].as_str().unwrap().to_string();
    let authorization = format!("jwt {token}");
    let agent = patient_agent();
    let send = |method: &str, path: &str, body: Option<&[u8]>| {
        harness::send(&agent, method, &server.url(path), &[("Authorization", &authorization)], body)
    };
    let mut operator = mysql.connect(Some(&database));
    operator.query_drop("START TRANSACTION").unwrap();
    operator.query_drop("SELECT id FROM accounts WHERE wx_openid = 'locked-0' FOR UPDATE").unwrap();
    send("POST", "logout", Some(b"{}")).assert_error(503, "database_unavailable");
    let log = server.log_containing("Lock wait timeout exceeded");
    let line = log.lines().find(|line| line.contains("Lock wait timeout exceeded")).unwrap();
    assert!(line.contains("/logout") && line.contains("503"), "{line}");
    operator.query_drop("COMMIT").unwrap();
    let me = send("GET", "me", None);
    assert_eq!(me.status, 200, "the token is still valid: {me:?}");
    assert_eq!(me.result()["wx_openid"], "locked-0");
    assert_eq!(send("POST", "logout", Some(b"{}")).status, 200);
    send("GET", "me", None).assert_error(403, "token_revoked");
}

/// Login bookkeeping skips an account another session holds locked rather than wait for it: the
/// last logins of the other accounts in its group are written at once, and the locked account's
/// is kept for a round after the lock is let go, which comes by itself on an idle server; a login
/// so kept never replaces a later one written meanwhile.
#[test]
fn login_bookkeeping_skips_an_account_locked_elsewhere() {
    use mysql::prelude::Queryable;
    let _shared = shared_server();
    let mysql = mysql();
    let (server, database) = one_instance(&mysql);
    let tokens: Vec<String> = (0..3)
        .map(|index| {
            let phone = format!("1380013800{index}");
            let body = json!({ "openid": format!("noted-{index}"), "phone": phone });
            server.post("register", &body).result()["token"].as_str().unwrap().to_string()
        })
        .collect();
    let mut reader = mysql.connect(Some(&database));
    let mut noted = |index: usize| -> (i64, String) {
        let sql =
            format!("SELECT last_login, last_ip FROM accounts WHERE wx_openid = 'noted-{index}'");
        reader.query_first(sql).unwrap().unwrap()
    };
    let login = |token: &str| {
        let authorization = format!("jwt {token}");
        let answer = server.post_with("login", &json!({}), &[("Authorization", &authorization)]);
        assert_eq!(answer.status, 200, "{answer:?}");
    };
    let wait_for = |what: &str, done: &mut dyn FnMut() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: {}", server.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut operator = mysql.connect(Some(&database));
    operator.query_drop("UPDATE accounts SET last_login = 0, last_ip = 'before'").unwrap();
    let id: i64 = operator
        .query_first("SELECT id FROM accounts WHERE wx_openid = 'noted-0'")
        .unwrap()
        .unwrap();
    // By its id: a lock by a column without an index of its own would lock every row it scans.
    let hold = format!("SELECT id FROM accounts WHERE id = {id} FOR UPDATE");
    operator.query_drop("START TRANSACTION").unwrap();
    operator.query_drop(&hold).unwrap();
    for token in &tokens {
        login(token);
    }
    wait_for("the others' bookkeeping waited for the locked account", &mut || {
        noted(1).0 != 0 && noted(2).0 != 0
    });
    assert_eq!(noted(0), (0, "before".to_string()), "the locked account was skipped");
    // Let go, with nothing else to write: the kept login is written all the same.
    operator.query_drop("COMMIT").unwrap();
    wait_for("the locked account's login was lost", &mut || noted(0).0 != 0);
    // Held again while its login waits, and given a later one meanwhile (here by the holder):
    // the round that writes the kept login (the same as another account's) leaves it as it is.
    operator.query_drop("START TRANSACTION").unwrap();
    operator.query_drop(&hold).unwrap();
    login(&tokens[0]);
    // Time for its round to find it held and keep it; a round that came after the COMMIT below
    // would meet the later login all the same.
    std::thread::sleep(Duration::from_millis(200));
    let later =
        format!("UPDATE accounts SET last_login = 4102444800, last_ip = 'later' WHERE id = {id}");
    operator.query_drop(later).unwrap();
    operator.query_drop("COMMIT").unwrap();
    operator.query_drop("UPDATE accounts SET last_login = 0 WHERE wx_openid = 'noted-1'").unwrap();
    login(&tokens[1]);
    wait_for("the other account's login was never written", &mut || noted(1).0 != 0);
    assert_eq!(noted(0), (4102444800, "later".to_string()), "a later login stays");
}

/// A MySQL database of schema version 5 (before several mini-programs): its accounts become the
/// default app's identities, keeping their ids, and new accounts still get ids after them.
#[test]
fn a_database_from_schema_version_5_gives_every_account_its_identity() {
    use mysql::prelude::Queryable;
    let _shared = shared_server();
    let mysql = mysql();
    let dir = TempDir::new();
    mysql.create_database(&dir.database_name());
    let mut conn = mysql.connect(Some(&dir.database_name()));
    let schema = include_str!("../src/store/mysql/schema.sql");
    let (up_to_5, _) = schema.split_once("-- version: 6").unwrap();
    let sql: String = up_to_5
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    for statement in sql.split(';').map(str::trim).filter(|statement| !statement.is_empty()) {
        conn.query_drop(statement).unwrap();
    }
    conn.query_drop(
        "INSERT INTO meta (`key`, value) VALUES ('schema_version', '5');
         INSERT INTO accounts (id, username, wx_appid, wx_openid, date_joined)
         VALUES (3, 'oFiveA', 'wxdemo', 'oFiveA', 1690000000),
                (9, 'oFiveB', 'wxdemo', 'oFiveB', 1690000000)",
    )
    .unwrap();
    drop(conn);

    let server = Wxauth::start_in(dir, &[("WXAUTH_OPENID_LOGIN", "open")]);
    let applied = format!("applied schema versions [{}]", versions_from(6));
    assert!(server.stderr().contains(&applied), "{}", server.stderr());
    let identities: Vec<(String, String, i64)> = mysql
        .connect(Some(&server.dir.database_name()))
        .query("SELECT appid, openid, account_id FROM identities ORDER BY account_id")
        .unwrap();
    assert_eq!(
        identities,
        [("wxdemo".into(), "oFiveA".into(), 3), ("wxdemo".into(), "oFiveB".into(), 9)]
    );
    let login = server.post("login", &json!({ "openid": "oFiveB" }));
    assert_eq!(login.result()["account"]["id"], 9, "{login:?}");
    assert_eq!(server.login_as("after-five").1["account"]["id"], 10);
}

#[test]
fn instances_starting_together_apply_the_schema_once_and_share_one_jwt_secret() {
    let _shared = shared_server();
    let mysql = mysql();
    let dir = TempDir::new();
    let url = mysql.create_database(&dir.database_name());
    let servers: Vec<Wxauth> = std::thread::scope(|scope| {
        let starting: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                scope.spawn(move || {
                    Wxauth::start(&[
                        ("WXAUTH_DATABASE", url.as_str()),
                        ("WXAUTH_OPENID_LOGIN", "open"),
                    ])
                })
            })
            .collect();
        starting.into_iter().map(|thread| thread.join().unwrap()).collect()
    });
    let applied =
        servers.iter().filter(|server| server.stderr().contains("applied schema versions")).count();
    assert_eq!(applied, 1, "one instance applies the schema: {}", servers[0].stderr());
    // A token any instance issues is good on every other: one generated secret.
    let (_, login) = servers[0].login_as("shared-secret");
    let authorization = format!("jwt {}", login["token"].as_str().unwrap());
    for server in &servers[1..] {
        let answer = server.post_with("login", &json!({}), &[("Authorization", &authorization)]);
        assert_eq!(answer.result()["account"]["id"], login["account"]["id"]);
    }
    let secrets: i64 = mysql
        .snapshot(&dir.database_name())
        .query_row("SELECT count(*) FROM meta WHERE key = 'jwt_secret'", [], |row| row.get(0))
        .unwrap();
    assert_eq!(secrets, 1);
    drop(servers);
    drop(dir);
}

/// `?ssl-mode=REQUIRED` makes the connections TLS: the server's `wxauth_tls` user (`.ci/mariadb`,
/// `.ci/mysql`) may connect only so, and a server without the parameter cannot start as that user.
#[test]
fn a_url_asking_for_tls_connects_over_tls() {
    let _shared = shared_server();
    let mysql = mysql();
    let dir = TempDir::new();
    mysql.create_database(&dir.database_name());
    let tls_user = mysql.server.replacen("mysql://wxauth@", "mysql://wxauth_tls@", 1);
    let url = format!("{tls_user}/{}", dir.database_name());

    let plain = harness::refused_start(
        &dir,
        &[("WXAUTH_DATABASE", url.as_str()), ("WXAUTH_DATABASE_PASSWORD", mysql.password.as_str())],
    );
    assert_eq!(plain.0.code(), Some(1), "{plain:?}");
    // Refused for want of TLS (the server says access denied), not for another reason.
    assert!(plain.2.contains("Access denied for user 'wxauth_tls'"), "{plain:?}");
    assert!(!plain.2.contains(&mysql.password), "the password is never shown: {}", plain.2);

    let url = format!("{url}?ssl-mode=REQUIRED");
    let server = Wxauth::start(&[("WXAUTH_DATABASE", url.as_str())]);
    let (_, login) = server.login_as("over-tls");
    assert!(login["account"]["id"].as_i64().unwrap() > 0);
    let ready =
        harness::send(&harness::agent(), "GET", &format!("{}/readyz", server.base), &[], None);
    assert_eq!(ready.status, 200, "{ready:?}");
}

/// What wxauth sends draws no warning from the server but for the duplicates `INSERT IGNORE`
/// skips by design: no SQL the server has deprecated, and no session setting it warns about
/// (MySQL warns, 3135, at a `sql_mode` that names some but not all of NO_ZERO_DATE,
/// NO_ZERO_IN_DATE and ERROR_FOR_DIVISION_BY_ZERO, which it is merging into strict mode). Read
/// from the server's statement digests for this test's database (performance_schema, which
/// `.ci/mariadb` and `.ci/mysql` turn on), after the schema, code exchanges, one person's logins
/// through two apps (the second joins the first's account by the unionid), a registration and a
/// logout on two instances.
#[test]
fn what_wxauth_sends_draws_no_warning_but_for_skipped_duplicates() {
    use mysql::prelude::Queryable;
    let _shared = shared_server();
    let mut conn = mysql().connect(None);
    let enabled: Option<i64> = conn.query_first("SELECT @@performance_schema").unwrap();
    assert_eq!(enabled, Some(1), "the server needs performance_schema on (.ci/mysql, .ci/mariadb)");
    // Earlier tests' digests could fill the table, and this test's would then go uncounted.
    conn.query_drop("TRUNCATE TABLE performance_schema.events_statements_summary_by_digest")
        .unwrap();
    let fake = FakeProcess::start();
    let (first, second) = two_instances(
        Some(&fake),
        &[("WXAUTH_APPS_SHOP_APPID", "wxshopapp"), ("WXAUTH_APPS_SHOP_SECRET", "shop-app-secret")],
    );
    let (openid, login) = first.login_as("warnings");
    let registered = second.post("register", &json!({ "openid": openid, "phone": "13800138000" }));
    assert_eq!(registered.result()["account"]["id"], login["account"]["id"]);
    let shop = |endpoint: &str, body: Option<&[u8]>| {
        let method = if body.is_some() { "POST" } else { "GET" };
        let url = format!("{}/shop/wx_auth/{endpoint}", second.base);
        harness::send(&harness::agent(), method, &url, &[], body)
    };
    let exchanged = shop(&format!("get_openid_by_code?code={}", fresh_code("warnings")), None);
    let shop_openid = exchanged.result()["openid"].as_str().unwrap().to_string();
    let joined = shop("login", Some(json!({ "openid": shop_openid }).to_string().as_bytes()));
    assert_eq!(joined.result()["account"]["id"], login["account"]["id"], "{joined:?}");
    let authorization = format!("jwt {}", login["token"].as_str().unwrap());
    first.post_with("logout", &json!({}), &[("Authorization", &authorization)]).result();

    let digests: Vec<(String, i64)> = conn
        .exec(
            "SELECT DIGEST_TEXT, SUM_WARNINGS
             FROM performance_schema.events_statements_summary_by_digest
             WHERE SCHEMA_NAME = ? AND DIGEST_TEXT IS NOT NULL",
            (first.dir.database_name(),),
        )
        .unwrap();
    assert!(
        digests.iter().any(|(text, _)| text.contains("sql_mode")),
        "the session setup is among the digests: {digests:#?}"
    );
    let warned: Vec<_> = digests
        .iter()
        .filter(|(text, warnings)| *warnings > 0 && !text.contains("INSERT IGNORE"))
        .collect();
    assert!(warned.is_empty(), "statements that drew warnings: {warned:#?}");
}
