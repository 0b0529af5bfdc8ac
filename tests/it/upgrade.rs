//! Database files written by older versions open with this binary and keep their data.

use serde_json::json;

use crate::harness::{FakeProcess, TempDir, Wxauth, fresh_code, schema_version, versions_from};
use crate::login::{default_claims, jwt, sign_token};

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
    assert_eq!(version, schema_version());
    let secret: String = database
        .query_row("SELECT value FROM meta WHERE key = 'jwt_secret'", [], |row| row.get(0))
        .unwrap();
    assert_eq!(secret, "f".repeat(64), "the generated secret is kept across the upgrade");
    let integrity: String =
        database.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(integrity, "ok");
    assert!(
        server.stderr().contains(&format!("applied schema versions [{}]", versions_from(2))),
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
    assert!(
        server.stderr().contains(&format!("applied schema versions [{}]", versions_from(5))),
        "{}",
        server.stderr()
    );
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
    assert_eq!((version, disabled_at), (schema_version(), None), "every account starts enabled");
    // The next account takes the next id.
    let (_, next) = server.login_as("upgrade-next");
    assert_eq!(next["account"]["id"], 8);
}

/// A database of schema version 5 (the schema before several mini-programs), as wxauth left it:
/// its accounts become the default app's, with their ids, and their tokens keep verifying; an
/// account's unionid is then joined by the person's first login through another app.
#[test]
fn a_database_from_schema_version_5_upgrades_in_place_as_the_default_apps() {
    if crate::harness::sqlite_only("SQLite files of older schema versions") {
        return;
    }
    // The unionid the fake WeChat gives demo user `fiver` in every app.
    let fake = FakeProcess::start();
    let session = fake.get(
        "/sns/jscode2session?appid=wxany&secret=any&grant_type=authorization_code&js_code=fiver.0",
    );
    let unionid = session["unionid"].as_str().unwrap().to_string();

    let dir = TempDir::new();
    let schema = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.sql"));
    let (up_to_5, _) = schema.split_once("-- version: 6").unwrap();
    let database = rusqlite::Connection::open(dir.0.join("wxauth.db")).unwrap();
    database.execute_batch(up_to_5).unwrap();
    let secret = "a-jwt-secret-kept-in-a-version-5-database";
    database
        .execute_batch(&format!(
            "PRAGMA user_version = 5;
             INSERT INTO meta (key, value) VALUES ('jwt_secret', '{secret}');
             INSERT INTO accounts (id, username, wx_appid, wx_openid, wx_unionid, phone,
                                   is_register, date_joined, token_version)
             VALUES (3, 'oFiveA', 'wxdemo', 'oFiveA', '{unionid}', '13800138005', 1,
                     1690000000, 1),
                    (9, 'oFiveB', 'wxdemo', 'oFiveB', NULL, NULL, 0, 1690000000, 0);
             DELETE FROM sqlite_sequence WHERE name = 'accounts';
             INSERT INTO sqlite_sequence (name, seq) VALUES ('accounts', 12);"
        ))
        .unwrap();
    drop(database);

    let server = Wxauth::start_in(
        dir,
        &[("WXAUTH_OPENID_LOGIN", "open"), ("WXAUTH_APPS_SHOP_PREFIX", "/shop/wx_auth/")],
    );
    assert!(
        server.stderr().contains(&format!("applied schema versions [{}]", versions_from(6))),
        "{}",
        server.stderr()
    );

    // A token issued before the upgrade still verifies, as the default app's.
    let mut claims = default_claims("3");
    claims["ver"] = json!(1);
    claims["iat"] = json!(1_690_000_100);
    let token = sign_token(secret, &claims);
    let verified =
        server.raw("GET", "/miniprog/wx_auth/verify", &[("Authorization", &jwt(&token))], None);
    assert_eq!(verified.status, 200, "{verified:?}");
    assert_eq!(
        (&verified.result()["user_id"], &verified.result()["app"]),
        (&json!(3), &json!("default"))
    );
    let login = server.post("login", &json!({"openid": "oFiveB"}));
    assert_eq!(login.result()["account"]["id"], 9);
    assert_eq!(login.result()["account"]["wx_openid"], "oFiveB");

    let database = server.database();
    let identities: Vec<(String, String, i64)> = database
        .prepare("SELECT appid, openid, account_id FROM identities ORDER BY account_id")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(
        identities,
        [("wxdemo".into(), "oFiveA".into(), 3), ("wxdemo".into(), "oFiveB".into(), 9)]
    );

    // The person of account 3 comes through the shop app for the first time: WeChat's unionid
    // joins them to account 3, registered as before, not to a new account.
    let shop = |endpoint: &str| format!("/shop/wx_auth/{endpoint}");
    let code = fresh_code("fiver");
    let exchanged = server.raw("GET", &shop(&format!("get_openid_by_code?code={code}")), &[], None);
    let shop_openid = exchanged.result()["openid"].as_str().unwrap().to_string();
    assert_eq!(exchanged.result()["unionid"], json!(unionid));
    let body = json!({"openid": shop_openid}).to_string();
    let joined = server.raw("POST", &shop("login"), &[], Some(body.as_bytes()));
    let account = &joined.result()["account"];
    assert_eq!((&account["id"], &account["is_register"]), (&json!(3), &json!(true)));
    assert_eq!(
        (&account["wx_openid"], &account["phone"]),
        (&json!(shop_openid), &json!("13800138005"))
    );
    // The next new account takes the next id after the mark the old database kept.
    let (_, next) = server.login_as("upgrade-after-five");
    assert_eq!(next["account"]["id"], 13);
}
