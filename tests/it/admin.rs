//! Account administration and restores: `users find|set|disable|enable|delete`, `users revoke`
//! by openid, and `restore`, each run as the real binary, the `users` commands while a server is
//! serving the database, and checked against what clients then see and what the database holds.

use serde_json::{Value, json};

use crate::cli::{Run, account_count, login_by_token, registered_user, run_in, run_on};
use crate::harness::{Answer, TempDir, Wxauth, agent, fresh_code, schema_version, send};

/// Asserts a usage error: status 2, nothing on stdout, the reason and the usage on stderr.
fn usage_error(run: &Run, reason: &str) {
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert_eq!(run.stdout, "", "{run:#?}");
    let first = run.stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("wxauth: ") && first.contains(reason), "{reason:?}: {run:#?}");
    assert!(run.stderr.contains("wxauth users set ID|OPENID"), "{run:#?}");
}

/// Every column of account `id` as text, or `None` when there is no such account.
fn stored_row(server: &Wxauth, id: i64) -> Option<Vec<String>> {
    use rusqlite::OptionalExtension;
    let database = server.database();
    let mut statement = database.prepare("SELECT * FROM accounts WHERE id = ?1").unwrap();
    let width = statement.column_count();
    statement
        .query_row([id], |row| {
            (0..width).map(|index| Ok(format!("{:?}", row.get_ref(index)?))).collect()
        })
        .optional()
        .unwrap()
}

fn bearer(token: &str) -> String {
    format!("jwt {token}")
}

/// `GET endpoint` with `Authorization: jwt TOKEN`.
fn get_with_token(server: &Wxauth, endpoint: &str, token: &str) -> Answer {
    let authorization = bearer(token);
    send(&agent(), "GET", &server.url(endpoint), &[("Authorization", &authorization)], None)
}

// ----- users find -----

#[test]
fn users_find_matches_a_phone_an_openid_a_unionid_or_a_part_of_a_nickname() {
    let server = Wxauth::start(&[]);
    let (alice, _, alice_account) = registered_user(&server, "find-alice", "13800138000");
    let (bob, _, bob_account) = registered_user(&server, "find-bob", "13900139000");
    server.login_as("find-carol");
    let (alice_id, bob_id) =
        (alice_account["id"].as_i64().unwrap(), bob_account["id"].as_i64().unwrap());
    let unionid = alice_account["wx_unionid"].as_str().unwrap().to_string();
    assert!(!unionid.is_empty());

    // The rows are `users list`'s, then a count.
    let ids = |run: &Run| -> Vec<i64> {
        let text = run.success();
        let lines: Vec<&str> = text.lines().collect();
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(header, ["id", "openid", "phone", "registered", "date_joined", "last_login"]);
        let rows = &lines[1..lines.len() - 1];
        let count = rows.len();
        let summary = format!("{count} account{} found", if count == 1 { "" } else { "s" });
        assert_eq!(lines[lines.len() - 1], summary);
        rows.iter().map(|row| row.split_whitespace().next().unwrap().parse().unwrap()).collect()
    };
    let find = |arguments: &[&str]| {
        let mut all = vec!["users", "find"];
        all.extend_from_slice(arguments);
        run_on(&server, &all)
    };
    // Any kind when none is named: a phone as typed (normalised), an openid, a unionid, a part
    // of the nickname (register's `nickname` is the account's wx_nickname).
    assert_eq!(ids(&find(&["138 0013-8000"])), [alice_id]);
    let alice_line = find(&["13800138000"]).stdout.lines().nth(1).unwrap().to_string();
    assert!(alice_line.contains(&alice) && alice_line.contains("yes"), "{alice_line}");
    assert_eq!(ids(&find(&[&bob])), [bob_id]);
    assert_eq!(ids(&find(&[&unionid])), [alice_id]);
    assert_eq!(ids(&find(&["find-"])), [alice_id, bob_id], "both nicknames hold it");
    assert_eq!(ids(&find(&["bob"])), [bob_id]);

    // --by looks at one kind only.
    assert_eq!(ids(&find(&["--by", "nickname", "alice"])), [alice_id]);
    assert_eq!(ids(&find(&["13900139000", "--by", "phone"])), [bob_id]);
    assert_eq!(ids(&find(&["--by=unionid", &unionid])), [alice_id]);
    find(&[&alice, "--by", "nickname"])
        .failure(&format!("no account whose nickname matches `{alice}`"));
    find(&["find-alice", "--by", "openid"]).failure("no account whose openid matches `find-alice`");
    find(&["nobody"])
        .failure("no account whose phone, openid, unionid or nickname matches `nobody`");
    find(&["abc", "--by", "phone"]).failure("`abc` is not a phone number");
}

// ----- users set -----

#[test]
fn users_set_changes_checked_fields_and_refuses_a_bad_one_writing_nothing() {
    let server = Wxauth::start(&[]);
    let (openid, token, account) = registered_user(&server, "set-user", "13800138000");
    let id = account["id"].as_i64().unwrap();
    let id_text = id.to_string();

    let run = run_on(
        &server,
        &[
            "users",
            "set",
            &openid,
            "phone=+86 139-0000-1111",
            "is_staff=true",
            "flag=-3",
            "wx_nickname=新名字",
            "birthday=2000-02-29",
            "wx_gender=2",
            "avatar=https://example.com/a.png",
            "address=",
            "member_score=42",
        ],
    );
    let mut shown: Value = serde_json::from_str(run.success()).unwrap();
    let identities = shown.as_object_mut().unwrap().remove("identities");
    assert_eq!(identities, Some(json!([{"appid": "wxdemo", "openid": openid}])));
    assert_eq!(shown["id"], id);
    assert_eq!(shown["phone"], "+8613900001111", "normalised as the API does");
    assert_eq!((&shown["is_staff"], &shown["flag"]), (&json!(true), &json!(-3)));
    assert_eq!(
        (&shown["wx_nickname"], &shown["birthday"]),
        (&json!("新名字"), &json!("2000-02-29"))
    );
    assert_eq!((&shown["wx_gender"], &shown["member_score"]), (&json!(2), &json!(42)));
    assert_eq!(
        (&shown["avatar"], &shown["address"]),
        (&json!("https://example.com/a.png"), &Value::Null)
    );
    // The API sees the same account; its tokens keep working.
    let me = get_with_token(&server, "me", &token);
    assert_eq!(me.result(), &shown);
    let mut shown_again: Value =
        serde_json::from_str(run_on(&server, &["users", "show", &id_text]).success()).unwrap();
    shown_again.as_object_mut().unwrap().remove("identities");
    assert_eq!(shown_again, shown);

    // A text field set empty is null; a flag back to 0.
    let run = run_on(&server, &["users", "set", &id_text, "phone=", "is_staff=0"]);
    let shown: Value = serde_json::from_str(run.success()).unwrap();
    assert_eq!((&shown["phone"], &shown["is_staff"]), (&Value::Null, &json!(false)));

    // Refused before anything is opened: an unknown field, a field that is not the operator's,
    // a bad value; the good fields beside them are not written either.
    let before = stored_row(&server, id).unwrap();
    for (edit, reason) in [
        ("colour=red", "users set cannot change `colour`; it changes username, phone"),
        ("wx_openid=oOther", "users set cannot change `wx_openid`"),
        ("id=5", "users set cannot change `id`"),
        ("date_joined=2020-01-01 00:00:00", "users set cannot change `date_joined`"),
        ("phone=12ab", "phone takes a phone number"),
        ("phone=1234", "phone takes a phone number"),
        ("is_staff=2", "is_staff takes 1, true or yes, or 0, false or no, not `2`"),
        ("flag=1.5", "flag takes a whole number, not `1.5`"),
        ("wx_gender=3", "wx_gender takes 0 (unknown), 1 (male) or 2 (female), not `3`"),
        ("birthday=2001-02-29", "birthday takes a date that exists"),
        ("avatar=javascript:alert(1)", "avatar takes an http:// or https:// URL"),
        ("username=", "username takes a non-empty text"),
        ("wx_nickname=line\nbreak", "wx_nickname takes text without control characters"),
    ] {
        let run = run_on(&server, &["users", "set", &id_text, "flag=7", edit]);
        usage_error(&run, reason);
    }
    let long = format!("wx_nickname={}", "名".repeat(65));
    usage_error(
        &run_on(&server, &["users", "set", &id_text, &long]),
        "wx_nickname takes at most 64 characters",
    );
    usage_error(
        &run_on(&server, &["users", "set", &id_text, "flag=1", "flag=2"]),
        "flag given twice",
    );
    assert_eq!(stored_row(&server, id).unwrap(), before, "nothing written");

    run_on(&server, &["users", "set", "99999", "flag=1"])
        .failure("no account with id or openid `99999`");
    assert_eq!(stored_row(&server, id).unwrap(), before);
}

// ----- users disable and enable -----

#[test]
fn a_disabled_account_cannot_log_in_register_or_use_its_tokens_until_enabled() {
    let server = Wxauth::start(&[]);
    let (openid, token, account) = registered_user(&server, "disabled-user", "13800138000");
    let (_, other) = server.login_as("disabled-other");
    let other_token = other["token"].as_str().unwrap().to_string();
    let id = account["id"].as_i64().unwrap();
    let auth = bearer(&token);

    let run = run_on(&server, &["users", "disable", &openid]);
    assert_eq!(
        run.success(),
        format!(
            "disabled account {id} (openid {openid}): its tokens are revoked, and it can neither log in nor register (`account_disabled`) until `wxauth users enable {id}`\n"
        )
    );
    let disabled_at: Option<i64> = server
        .database()
        .query_row("SELECT disabled_at FROM accounts WHERE id = ?1", [id], |row| row.get(0))
        .unwrap();
    assert!(disabled_at.is_some());
    let disabled_row = stored_row(&server, id).unwrap();
    // Again: nothing changes, and it says so.
    let again = run_on(&server, &["users", "disable", &id.to_string()]);
    assert!(again.success().starts_with(&format!("account {id} is already disabled (since ")));
    let shown: Value =
        serde_json::from_str(run_on(&server, &["users", "show", &openid]).success()).unwrap();
    assert!(shown["disabled_at"].is_string(), "show says since when: {shown}");

    // Its token, everywhere a token is used: 403 account_disabled (verify too: it is not a
    // failure of authentication but a refusal).
    login_by_token(&server, &token).assert_error(403, "account_disabled");
    get_with_token(&server, "me", &token).assert_error(403, "account_disabled");
    get_with_token(&server, "verify", &token).assert_error(403, "account_disabled");
    server
        .post_with("logout", &json!({}), &[("Authorization", auth.as_str())])
        .assert_error(403, "account_disabled");
    let register = json!({"phone": "13900139000"});
    server
        .post_with("register", &register, &[("Authorization", auth.as_str())])
        .assert_error(403, "account_disabled");
    // A new wx.login code gives no token, and its session lets no login or registration in.
    let code = server.get(&format!("get_openid_by_code?code={}", fresh_code("disabled-user")));
    code.assert_error(403, "account_disabled");
    server.post("login", &json!({"openid": openid})).assert_error(403, "account_disabled");
    server
        .post("register", &json!({"openid": openid, "phone": "13900139000"}))
        .assert_error(403, "account_disabled");
    // Nothing of the refused requests was written, and the other account is untouched.
    assert_eq!(stored_row(&server, id).unwrap(), disabled_row);
    login_by_token(&server, &other_token).result();

    // Enabled: the old token stays revoked; a new code and login work.
    let run = run_on(&server, &["users", "enable", &openid]);
    assert_eq!(
        run.success(),
        format!(
            "enabled account {id}: it can log in again; the tokens it had when it was disabled stay revoked\n"
        )
    );
    login_by_token(&server, &token).assert_error(403, "token_revoked");
    let answer = server.openid_for(&fresh_code("disabled-user"));
    assert_eq!(answer["account"]["id"], id);
    let fresh = server.post("login", &json!({"openid": openid})).result()["token"].clone();
    login_by_token(&server, fresh.as_str().unwrap()).result();
    let shown: Value =
        serde_json::from_str(run_on(&server, &["users", "show", &openid]).success()).unwrap();
    assert!(shown.get("disabled_at").is_none(), "{shown}");
    assert_eq!(
        run_on(&server, &["users", "enable", &openid]).success(),
        format!("account {id} is not disabled; nothing changed\n")
    );
    run_on(&server, &["users", "disable", "oNobody"])
        .failure("no account with id or openid `oNobody`");
}

// ----- users delete and revoke -----

#[test]
fn a_deleted_account_loses_its_tokens_and_session_and_its_id_is_never_reused() {
    let server = Wxauth::start(&[]);
    let (first, _) = server.login_as("delete-first");
    let (openid, token, account) = registered_user(&server, "delete-me", "13800138000");
    let id = account["id"].as_i64().unwrap();

    let run = run_on(&server, &["users", "delete", &id.to_string()]);
    assert_eq!(
        run.success(),
        format!(
            "deleted account {id} (openid {openid}) and its WeChat sessions: its tokens no longer verify, its WeChat user gets a new account at the next login, and id {id} is never given out again\n"
        )
    );
    assert!(stored_row(&server, id).is_none());
    let sessions: i64 = server
        .database()
        .query_row("SELECT count(*) FROM wechat_sessions WHERE openid = ?1", [&openid], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(sessions, 0, "its session key is gone with it");
    assert_eq!(account_count(&server.database()), 1);
    login_by_token(&server, &token).assert_error(403, "token_invalid");
    get_with_token(&server, "verify", &token).assert_error(401, "token_invalid");
    // The recorded session went with it: a login by openid needs a new code.
    server.post("login", &json!({"openid": openid})).assert_error(403, "openid_login_refused");
    assert_eq!(
        server.get(&format!("is_openid_registered?openid={openid}")).result()["is_registered"],
        false
    );

    // The same WeChat user logs in again: a new account, with a new id above every id given.
    let (again, login) = server.login_as("delete-me");
    assert_eq!(again, openid);
    let new_id = login["account"]["id"].as_i64().unwrap();
    assert_eq!(new_id, id + 1, "the deleted id is not given out again");
    assert_eq!(login["account"]["is_register"], false, "a new account");
    login_by_token(&server, &token).assert_error(403, "token_invalid");
    run_on(&server, &["users", "delete", &id.to_string()])
        .failure(&format!("no account with id or openid `{id}`"));

    // revoke takes an openid too.
    let first_login = server.post("login", &json!({"openid": first}));
    let first_token = first_login.result()["token"].as_str().unwrap().to_string();
    let first_id = first_login.result()["account"]["id"].as_i64().unwrap();
    let run = run_on(&server, &["users", "revoke", &first]);
    assert_eq!(
        run.success(),
        format!(
            "revoked every token issued to account {first_id} so far; it gets a working token by logging in again\n"
        )
    );
    login_by_token(&server, &first_token).assert_error(403, "token_revoked");
}

// ----- restore -----

/// Stops `server` gracefully and returns its directory, database included.
fn stop(mut server: Wxauth) -> TempDir {
    assert!(server.terminate().success());
    let dir = std::mem::replace(&mut server.dir, TempDir::new());
    drop(server);
    dir
}

fn restore(dir: &TempDir, backup: &str) -> Run {
    run_in(&dir.0, &["restore", backup], &[("WXAUTH_DATABASE", "wxauth.db")])
}

/// The accounts of the database at `path`: every column of every row, by id.
fn accounts_in(path: &std::path::Path) -> Vec<Vec<String>> {
    let database = rusqlite::Connection::open(path).unwrap();
    let mut statement = database.prepare("SELECT * FROM accounts ORDER BY id").unwrap();
    let width = statement.column_count();
    statement
        .query_map([], |row| {
            (0..width).map(|index| Ok(format!("{:?}", row.get_ref(index)?))).collect()
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[test]
fn restore_puts_a_backup_in_place_of_the_stopped_servers_database() {
    if crate::harness::sqlite_only("restore replaces a SQLite file") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let server = Wxauth::start(&[]);
    let (alice, token, _) = registered_user(&server, "restore-alice", "13800138000");
    server.login_as("restore-bob");
    let backup = server.dir.0.join("backup.db");
    run_on(&server, &["backup", backup.to_str().unwrap()]).success();
    let backed_up = accounts_in(&backup);
    // After the backup: a new account, and alice's phone changed; the restore undoes both.
    server.login_as("restore-carol");
    run_on(&server, &["users", "set", &alice, "phone=13900139000"]).success();

    // Refused while the server runs, with nothing changed.
    let database = server.dir.0.join("wxauth.db");
    let run = restore(&server.dir, backup.to_str().unwrap());
    run.failure("is in use, by a running `wxauth serve` or another program: stop it first");
    assert_eq!(accounts_in(&database).len(), 3);
    let dir = stop(server);
    let before = accounts_in(&database);

    let run = restore(&dir, "backup.db");
    let text = run.success();
    assert!(text.starts_with("restored wxauth.db from backup.db ("), "{text}");
    assert!(
        text.contains(&format!(
            "schema version {}, readable by its owner only)\n  accounts: 2 rows\n  identities: 2 rows\n",
            schema_version()
        )),
        "{text}"
    );
    assert!(text.contains("integrity_check ok\n"), "{text}");
    let kept = text
        .lines()
        .find_map(|line| line.strip_prefix("the database that was there is kept as "))
        .unwrap_or_else(|| panic!("where the old database is kept: {text}"))
        .to_string();
    assert!(kept.starts_with("wxauth.db.before-restore-") && kept.ends_with('Z'), "{kept}");
    assert_eq!(accounts_in(&database), backed_up, "the backup's accounts, whole");
    assert_eq!(accounts_in(&dir.0.join(&kept)), before, "the old database is kept whole");
    let mode = std::fs::metadata(&database).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "owner-only");
    assert!(!dir.0.join("wxauth.db.restoring").exists(), "no copy left behind");

    // The server serves the restored accounts; tokens of the same secret still verify.
    let server = Wxauth::start_in(dir, &[]);
    login_by_token(&server, &token).result();
    let shown: Value =
        serde_json::from_str(run_on(&server, &["users", "show", &alice]).success()).unwrap();
    assert_eq!(shown["phone"], "13800138000");
    assert_eq!(account_count(&server.database()), 2);
}

#[test]
fn restore_refuses_what_is_not_a_backup_it_can_serve_and_changes_nothing() {
    if crate::harness::sqlite_only("restore replaces a SQLite file") {
        return;
    }
    let server = Wxauth::start(&[]);
    server.login_as("restore-refused");
    let backup = server.dir.0.join("backup.db");
    run_on(&server, &["backup", backup.to_str().unwrap()]).success();
    let dir = stop(server);
    let database = dir.0.join("wxauth.db");
    let before = std::fs::read(&database).unwrap();
    let names = dir.names();

    std::fs::write(dir.0.join("garbage.db"), vec![b'x'; 8192]).unwrap();
    restore(&dir, "garbage.db")
        .failure("backup garbage.db cannot be restored: file is not a database");
    std::fs::write(dir.0.join("empty.db"), b"").unwrap();
    restore(&dir, "empty.db").failure("backup empty.db cannot be restored: not a wxauth database");
    restore(&dir, "absent.db").failure("backup absent.db cannot be restored");
    // A backup damaged inside: a page of the accounts table overwritten.
    let mut damaged = std::fs::read(&backup).unwrap();
    let page = 4096;
    assert!(damaged.len() >= 3 * page);
    for byte in &mut damaged[2 * page + 100..3 * page] {
        *byte = 0x55;
    }
    std::fs::write(dir.0.join("damaged.db"), damaged).unwrap();
    let run = restore(&dir, "damaged.db");
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stderr.starts_with("wxauth: "), "{run:#?}");
    // A backup from a newer wxauth.
    let newer = rusqlite::Connection::open(&backup).unwrap();
    newer.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(newer);
    restore(&dir, "backup.db").failure(&format!(
        "its schema version 99 is newer than this wxauth's ({}): use a newer wxauth",
        schema_version()
    ));

    assert_eq!(std::fs::read(&database).unwrap(), before, "the database is as it was");
    let mut left = dir.names();
    left.retain(|name| !["garbage.db", "empty.db", "damaged.db"].contains(&name.as_str()));
    assert_eq!(left, names, "nothing made or left beside it");

    // As root, on the service user's database, as the deployment runs it: the restored file is
    // that user's, as is the one kept aside.
    use std::os::unix::fs::MetadataExt;
    if crate::harness::not_root(&database, "restore leaves the service user's files its own") {
        return;
    }
    let fixed = rusqlite::Connection::open(&backup).unwrap();
    fixed.execute_batch(&format!("PRAGMA user_version = {}", schema_version())).unwrap();
    drop(fixed);
    let service = 65534;
    std::os::unix::fs::chown(&database, Some(service), Some(service)).unwrap();
    let text = restore(&dir, "backup.db").success().to_string();
    let kept = text.lines().last().unwrap().rsplit(' ').next().unwrap().to_string();
    for name in ["wxauth.db", kept.as_str()] {
        let metadata = std::fs::metadata(dir.0.join(name)).unwrap();
        assert_eq!((metadata.uid(), metadata.gid()), (service, service), "{name}");
    }
}
