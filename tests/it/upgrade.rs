//! Database files written by older versions open with this binary and keep their data.

use serde_json::json;

use crate::harness::{TempDir, Wxauth};

#[test]
fn a_database_from_the_first_schema_upgrades_in_place() {
    if crate::harness::sqlite_only("SQLite files of older schema versions") {
        return;
    }
    let dir = TempDir::new();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schema-v1.db");
    std::fs::copy(fixture, dir.0.join("wxauth.db")).unwrap();
    let server = Wxauth::start_in(dir, &[("WXAUTH_OPENID_LOGIN", "open")]);

    let registered = server.get("is_openid_registered?openid=oFixtureRegistered0000000001");
    assert_eq!(registered.result(), &json!({"is_registered": true}));
    let visitor = server.get("is_openid_registered?openid=oFixtureVisitor000000000001");
    assert_eq!(visitor.result(), &json!({"is_registered": false}));

    let login = server.post("login", &json!({"openid": "oFixtureRegistered0000000001"}));
    let account = &login.result()["account"];
    assert_eq!(account["id"], 1);
    assert_eq!(account["phone"], "13800138000");
    assert_eq!(account["wx_nickname"], "老用户");
    assert_eq!(account["wx_unionid"], "uFixture0000000000000000001");
    assert_eq!(account["birthday"], "1990-02-28");
    assert_eq!(account["join_ip"], "203.0.113.5");
    assert_eq!(account["date_joined"], "2023-07-22 04:26:40");

    // Tokens keep verifying with the secret generated back then, and logout works on old rows.
    let token = login.result()["token"].as_str().unwrap().to_string();
    let header = format!("jwt {token}");
    server.post_with("logout", &json!({}), &[("Authorization", header.as_str())]).result();
    server
        .post_with("login", &json!({}), &[("Authorization", header.as_str())])
        .assert_error(403, "token_revoked");

    let database = server.database();
    let version: u32 = database.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
    assert_eq!(version, 5);
    let secret: String = database
        .query_row("SELECT value FROM meta WHERE key = 'jwt_secret'", [], |row| row.get(0))
        .unwrap();
    assert_eq!(secret, "f".repeat(64), "the generated secret is kept across the upgrade");
    let integrity: String =
        database.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(integrity, "ok");
    assert!(
        server.stderr().contains("applied schema versions [2, 3, 4, 5]"),
        "{}",
        server.stderr()
    );
}

/// A database of schema version 4 (the schema before accounts could be disabled), as wxauth left
/// it: made by that version's sections of schema.sql, with accounts and a session in it.
#[test]
fn a_database_from_schema_version_4_upgrades_in_place() {
    if crate::harness::sqlite_only("SQLite files of older schema versions") {
        return;
    }
    let dir = TempDir::new();
    let schema = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.sql"));
    let (up_to_4, _) = schema.split_once("-- version: 5").unwrap();
    let database = rusqlite::Connection::open(dir.0.join("wxauth.db")).unwrap();
    database.execute_batch(up_to_4).unwrap();
    database
        .execute_batch(
            "PRAGMA user_version = 4;
             INSERT INTO accounts (id, username, wx_appid, wx_openid, phone, is_register,
                                   date_joined, token_version)
             VALUES (7, 'oOldSchema', 'wxdemo', 'oOldSchema', '13800138000', 1,
                     1690000000, 2);
             INSERT INTO wechat_sessions (appid, openid, session_key, created_at, token_version)
             VALUES ('wxdemo', 'oOldSchema', 'a2V5a2V5a2V5a2V5a2V5aw==', 1690000000, 2);",
        )
        .unwrap();
    drop(database);

    let server = Wxauth::start_in(dir, &[("WXAUTH_OPENID_LOGIN", "open")]);
    assert!(server.stderr().contains("applied schema versions [5]"), "{}", server.stderr());
    let login = server.post("login", &json!({"openid": "oOldSchema"}));
    let account = &login.result()["account"];
    assert_eq!((account["id"].as_i64(), account["phone"].as_str()), (Some(7), Some("13800138000")));
    let (version, disabled_at): (u32, Option<i64>) = server
        .database()
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version), disabled_at
             FROM accounts WHERE id = 7",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!((version, disabled_at), (5, None), "every account starts enabled");
    // The next account takes the next id.
    let (_, next) = server.login_as("upgrade-next");
    assert_eq!(next["account"]["id"], 8);
}
