//! The WX_AUTH endpoints as a mini-program sees them.

use serde_json::{Value, json};

use crate::harness::{Wxauth, fresh_code};

/// Every field of the account object, as the original backend serialised it, plus the additive ones.
const ACCOUNT_FIELDS: &[&str] = &[
    "id",
    "username",
    "phone",
    "is_register",
    "is_staff",
    "is_superuser",
    "flag",
    "avatar",
    "avatar_thumb",
    "birthday",
    "address",
    "member_score",
    "credit_score",
    "wx_openid",
    "wx_nickname",
    "wx_gender",
    "wx_avatar",
    "wx_country",
    "wx_province",
    "wx_city",
    "last_ip",
    "join_ip",
    "love_help_num",
    "bring_love_concern_num",
    "last_login",
    "wx_unionid",
    "date_joined",
];

fn assert_datetime(value: &Value) {
    let text = value.as_str().unwrap_or_else(|| panic!("not a string: {value}"));
    let bytes = text.as_bytes();
    assert_eq!(bytes.len(), 19, "{text}");
    for (index, byte) in bytes.iter().enumerate() {
        match index {
            4 | 7 => assert_eq!(*byte, b'-', "{text}"),
            10 => assert_eq!(*byte, b' ', "{text}"),
            13 | 16 => assert_eq!(*byte, b':', "{text}"),
            _ => assert!(byte.is_ascii_digit(), "{text}"),
        }
    }
}

fn assert_account_shape(account: &Value) {
    let object = account.as_object().expect("account is an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = ACCOUNT_FIELDS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected, "account fields");
    for key in [
        "id",
        "flag",
        "member_score",
        "credit_score",
        "wx_gender",
        "love_help_num",
        "bring_love_concern_num",
    ] {
        assert!(account[key].is_i64(), "{key} is an integer: {account}");
    }
    for key in ["is_register", "is_staff", "is_superuser"] {
        assert!(account[key].is_boolean(), "{key} is a boolean: {account}");
    }
    assert!(!object.contains_key("password"), "the password hash is never shown");
    assert_datetime(&account["date_joined"]);
    // Strings absent in the data are null, never "".
    for (key, value) in object {
        assert_ne!(value, &json!(""), "{key} is empty string instead of null");
    }
}

#[test]
fn demo_flow_code_openid_login_register() {
    let server = Wxauth::start(&[]);
    let first = server.openid_for(&fresh_code("alice"));
    let openid = first["openid"].as_str().unwrap().to_string();
    assert_eq!(openid.len(), 28);
    assert_eq!(first["is_registered"], false);
    assert_eq!(first["account"], Value::Null);
    assert_eq!(first["token"], Value::Null);
    assert!(first["unionid"].as_str().is_some_and(|unionid| !unionid.is_empty()));
    assert!(
        first.get("session_key").is_none(),
        "session_key stays server-side by default: {first}"
    );

    let login = server
        .post("login", &json!({"openid": openid, "wx_nickname": "爱丽丝", "wx_gender": 2, "wx_city": "Shenzhen"}))
        .result()
        .clone();
    let account = &login["account"];
    assert_account_shape(account);
    assert_eq!(account["wx_openid"], openid);
    assert_eq!(account["username"], openid);
    assert_eq!(account["is_register"], false);
    assert_eq!(account["wx_nickname"], "爱丽丝");
    assert_eq!(account["wx_gender"], 2);
    assert_eq!(account["wx_city"], "Shenzhen");
    assert_eq!(account["flag"], 1);
    assert_eq!(account["phone"], Value::Null);
    assert_eq!(account["join_ip"], "127.0.0.1");
    assert_eq!(account["last_ip"], "127.0.0.1");
    assert_datetime(&account["last_login"]);
    assert_eq!(account["wx_unionid"], first["unionid"]);
    assert!(login["token"].as_str().is_some_and(|token| token.split('.').count() == 3));

    let register = server
        .post("register", &json!({"openid": openid, "phone": "138-0013 8000", "nickname": "Alice", "birthday": "1990-02-28", "gender": 2}))
        .result()
        .clone();
    let registered = &register["account"];
    assert_account_shape(registered);
    assert_eq!(registered["id"], account["id"], "register completes the same account");
    assert_eq!(registered["is_register"], true);
    assert_eq!(registered["phone"], "13800138000");
    assert_eq!(registered["wx_nickname"], "Alice");
    assert_eq!(registered["birthday"], "1990-02-28");
    assert_eq!(registered["wx_gender"], 2);

    let again = server.openid_for(&fresh_code("alice"));
    assert_eq!(again["openid"], openid, "the same demo user gets the same openid from every code");
    assert_eq!(again["is_registered"], true);
    assert_eq!(again["account"]["id"], account["id"]);
    assert!(again["token"].is_string());
    assert_account_shape(&again["account"]);

    let registered = server.get(&format!("is_openid_registered?openid={openid}"));
    assert_eq!(registered.result(), &json!({"is_registered": true}));

    let database = server.database();
    let (count, phone, is_register, nickname, birthday): (i64, String, i64, String, String) = database
        .query_row(
            "SELECT count(*), phone, is_register, wx_nickname, birthday FROM accounts WHERE wx_openid = ?1",
            [&openid],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)),
        )
        .unwrap();
    assert_eq!(
        (count, phone.as_str(), is_register, nickname.as_str(), birthday.as_str()),
        (1, "13800138000", 1, "Alice", "1990-02-28")
    );
}

#[test]
fn is_openid_registered_for_unknown_and_unregistered_openids() {
    let server = Wxauth::start(&[]);
    let unknown = server.get("is_openid_registered?openid=oUnknownOpenid000000000000000");
    assert_eq!(unknown.result(), &json!({"is_registered": false}));
    let (openid, _) = server.login_as("bob");
    let answer = server.get(&format!("is_openid_registered/?openid={openid}"));
    assert_eq!(answer.result(), &json!({"is_registered": false}));
    server.get("is_openid_registered").assert_error(403, "missing_parameter");
    server.get("is_openid_registered?openid=").assert_error(403, "missing_parameter");
    server
        .get("is_openid_registered?openid=%27%20OR%201%3D1")
        .assert_error(403, "invalid_parameter");
}

#[test]
fn a_repeated_code_gets_the_first_answer() {
    for expose in ["false", "true"] {
        let server = Wxauth::start(&[("WXAUTH_EXPOSE_SESSION_KEY", expose)]);
        let code = fresh_code("carol");
        let first = server.openid_for(&code);
        let second = server.openid_for(&code);
        for field in ["openid", "unionid", "session_key", "is_registered", "account"] {
            assert_eq!(first[field], second[field], "{field}, expose_session_key = {expose}");
        }
        assert!(first["unionid"].is_string(), "{first}");
        assert_eq!(first["session_key"].is_string(), expose == "true", "{first}");
        let stats = server.fake("/fake/stats");
        assert_eq!(stats["jscode2session"], 1, "WeChat was asked once: {stats}");
    }
}

#[test]
fn get_openid_by_code_shows_the_account_as_it_is_now() {
    // A fresh code's account is read in the write that records its session; a remembered code's
    // on the worker. Both must show registration done since.
    let server = Wxauth::start(&[("WXAUTH_OPENID_LOGIN", "open")]);
    let code = fresh_code("erin");
    let first = server.openid_for(&code);
    assert_eq!(first["is_registered"], false, "{first}");
    assert!(first["account"].is_null() && first["token"].is_null(), "{first}");
    let openid = first["openid"].as_str().unwrap();
    let registered = server.post("register", &json!({"openid": openid, "phone": "13800138000"}));
    let id = registered.result()["account"]["id"].clone();

    let remembered = server.openid_for(&code);
    let fresh = server.openid_for(&fresh_code("erin"));
    for answer in [&remembered, &fresh] {
        assert_eq!(answer["openid"], openid, "{answer}");
        assert_eq!(answer["is_registered"], true, "{answer}");
        assert_eq!(answer["account"]["id"], id, "{answer}");
        assert_eq!(answer["account"]["phone"], "13800138000", "{answer}");
        assert!(answer["token"].is_string(), "{answer}");
    }
    assert_eq!(server.fake("/fake/stats")["jscode2session"], 2, "the repeat was remembered");
}

#[test]
fn token_login_with_each_header_scheme() {
    let server = Wxauth::start(&[]);
    let (_, login) = server.login_as("dave");
    let token = login["token"].as_str().unwrap();
    for scheme in ["jwt", "JWT", "Bearer", "bearer"] {
        let header = format!("{scheme} {token}");
        let answer = server.post_with("login", &json!({}), &[("Authorization", &header)]);
        let result = answer.result();
        assert_eq!(result["account"]["id"], login["account"]["id"], "{scheme}");
        assert!(result["token"].is_string());
    }
    let answer = server.post_with("login", &json!({}), &[("Authorization", "Basic abc")]);
    answer.assert_error(403, "token_invalid");
}

#[test]
fn routing_errors_use_the_envelope() {
    let server = Wxauth::start(&[]);
    server.raw("GET", "/nowhere", &[], None).assert_error(404, "not_found");
    server.raw("GET", "/miniprog/wx_auth/nothing", &[], None).assert_error(404, "not_found");
    let wrong = server.raw("GET", "/miniprog/wx_auth/login", &[], None);
    wrong.assert_error(405, "method_not_allowed");
    assert_eq!(wrong.header("Allow"), Some("POST"));
    let wrong = server.raw("POST", "/miniprog/wx_auth/get_openid_by_code", &[], Some(b"{}"));
    wrong.assert_error(405, "method_not_allowed");
    assert_eq!(wrong.header("Allow"), Some("GET"));
}

#[test]
fn login_without_token_or_openid_is_not_authenticated() {
    let server = Wxauth::start(&[]);
    server.post("login", &json!({})).assert_error(403, "not_authenticated");
    server
        .post("register", &json!({"phone": "13800138000"}))
        .assert_error(403, "not_authenticated");
}

/// The shell commands of the README demo's step `step` (the lines after its `# STEP.` comment
/// that are not comments, up to the next blank line), as one script.
fn readme_step(step: &str) -> String {
    let readme = include_str!("../../README.md");
    let start = readme.find(&format!("# {step}. ")).unwrap_or_else(|| panic!("no step {step}"));
    readme[start..]
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `script` with `sh`, the demo's variables set; returns its stdout.
fn run_demo(server: &Wxauth, script: &str, variables: &[(&str, &str)]) -> String {
    let api = format!("{}{}", server.base, server.prefix.trim_end_matches('/'));
    let output = std::process::Command::new("sh")
        .args(["-c", script])
        .env("API", api)
        .env("FAKE", server.fake.as_deref().unwrap())
        .envs(variables.iter().copied())
        .output()
        .unwrap();
    assert!(output.status.success(), "{script}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// Regression: the README's step 3c needed the encrypted data copied by hand, and step 5 did not
/// show the `X-Wxauth-User-Id` header it promised (`curl -s` prints no headers).
#[test]
fn the_readme_demo_steps_3c_and_5_run_as_written() {
    let server = Wxauth::start(&[]);
    let (openid, login) = server.login_as("readme-demo");
    let token = login["token"].as_str().unwrap();
    let id = login["account"]["id"].to_string();

    let registered = run_demo(&server, &readme_step("3c"), &[("OPENID", &openid)]);
    let registered: Value = serde_json::from_str(&registered).expect("register's JSON answer");
    assert_eq!(registered["code"], 0, "{registered}");
    assert_eq!(registered["results"][0]["account"]["phone"], "13700137000");

    let verify = readme_step("5");
    let verify = verify.lines().find(|line| line.contains("/verify")).unwrap();
    let answer = run_demo(&server, verify, &[("TOKEN", token)]);
    assert!(answer.contains(&format!("X-Wxauth-User-Id: {id}\r\n")), "{answer}");
    assert!(answer.contains(r#""app":"default""#), "{answer}");
}
