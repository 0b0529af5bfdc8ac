//! `register`: the three phone sources (typed, legacy encrypted data, phone code), the openid
//! policy that guards them, and every refusal, each checked against what the database holds
//! afterwards: a refused registration writes nothing.

use std::time::{Duration, Instant};

use rusqlite::OptionalExtension;
use serde_json::{Value, json};

use crate::harness::{Wxauth, fresh_code};

/// The columns of an account that `register` may change.
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    phone: Option<String>,
    is_register: bool,
    username: String,
    wx_nickname: Option<String>,
    birthday: Option<String>,
    wx_gender: i64,
}

/// The stored account of `openid`, if there is one.
fn stored(server: &Wxauth, openid: &str) -> Option<Stored> {
    server
        .database()
        .query_row(
            "SELECT phone, is_register, username, wx_nickname, birthday, wx_gender
             FROM accounts WHERE wx_openid = ?1",
            [openid],
            |row| {
                Ok(Stored {
                    phone: row.get(0)?,
                    is_register: row.get::<_, i64>(1)? == 1,
                    username: row.get(2)?,
                    wx_nickname: row.get(3)?,
                    birthday: row.get(4)?,
                    wx_gender: row.get(5)?,
                })
            },
        )
        .optional()
        .unwrap()
}

fn account_count(server: &Wxauth) -> i64 {
    server.database().query_row("SELECT count(*) FROM accounts", [], |row| row.get(0)).unwrap()
}

/// The session_key the server recorded for `openid`.
fn recorded_session_key(server: &Wxauth, openid: &str) -> Option<String> {
    server
        .database()
        .query_row("SELECT session_key FROM wechat_sessions WHERE openid = ?1", [openid], |row| {
            row.get(0)
        })
        .optional()
        .unwrap()
}

/// Demo user `name` exchanges a fresh `wx.login` code; returns the openid. No account is created.
fn openid_of(server: &Wxauth, name: &str) -> String {
    server.openid_for(&fresh_code(name))["openid"].as_str().unwrap().to_string()
}

/// Creates demo user `name`'s account through the normal client flow (code, then openid login)
/// with known values that any registration would change: phone 13700000000 but not registered,
/// nickname "Before", gender 1, no birthday. Returns the openid and what is stored.
fn known_account(server: &Wxauth, name: &str) -> (String, Stored) {
    let openid = openid_of(server, name);
    let login =
        json!({"openid": openid, "phone": "13700000000", "wx_nickname": "Before", "wx_gender": 1});
    server.post("login", &login).result();
    let before = stored(server, &openid).expect("login created the account");
    assert_eq!(
        before,
        Stored {
            phone: Some("13700000000".into()),
            is_register: false,
            username: openid.clone(),
            wx_nickname: Some("Before".into()),
            birthday: None,
            wx_gender: 1,
        }
    );
    (openid, before)
}

/// Percent-encodes a query value (base64's `+`, `/` and `=` included).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// What the WeChat client hands the mini-program on a legacy one-tap: (encryptedData, iv), under
/// the latest session_key the fake issued for `openid`; `appid` forges the watermark.
fn encrypted_phone(
    server: &Wxauth,
    openid: &str,
    phone: &str,
    appid: Option<&str>,
) -> (String, String) {
    let mut path =
        format!("/fake/encrypted_phone?openid={}&phone={}", encode(openid), encode(phone));
    if let Some(appid) = appid {
        path.push_str(&format!("&appid={}", encode(appid)));
    }
    let answer = server.fake(&path);
    let data = answer["encryptedData"].as_str().expect("encryptedData").to_string();
    let iv = answer["iv"].as_str().expect("iv").to_string();
    (data, iv)
}

/// A one-time phone code for `phone`, as `getPhoneNumber` hands it out; `appid` forges the
/// watermark WeChat will report.
fn phone_code(server: &Wxauth, phone: &str, appid: Option<&str>) -> String {
    let mut path = format!("/fake/phone_code?phone={}", encode(phone));
    if let Some(appid) = appid {
        path.push_str(&format!("&appid={}", encode(appid)));
    }
    server.fake(&path)["code"].as_str().expect("code").to_string()
}

/// How many times wxauth called WeChat's `api`.
fn calls(server: &Wxauth, api: &str) -> u64 {
    server.fake("/fake/stats")[api].as_u64().unwrap_or(0)
}

/// `body` with `openid` added (unless the body sets one itself).
fn with_openid(openid: &str, body: &Value) -> Value {
    let mut body = body.clone();
    let object = body.as_object_mut().unwrap();
    object.entry("openid").or_insert_with(|| json!(openid));
    body
}

// ----- typed phone -----

#[test]
fn typed_phone_is_normalised_and_the_optional_fields_are_stored() {
    let server = Wxauth::start(&[]);
    let openid = openid_of(&server, "reg-typed");
    assert_eq!(stored(&server, &openid), None, "exchanging a code creates no account");

    let body = json!({
        "openid": openid,
        "phone": "+86 138-0013 8000",
        "nickname": "小明",
        "birthday": "2000-02-29",
        "gender": 1,
    });
    let answer = server.post("register", &body);
    let result = answer.result();
    let account = &result["account"];
    assert_eq!(account["phone"], "+8613800138000");
    assert_eq!(account["is_register"], true);
    assert_eq!(account["wx_openid"], openid);
    assert_eq!(account["username"], openid);
    assert_eq!(account["wx_nickname"], "小明");
    assert_eq!(account["birthday"], "2000-02-29");
    assert_eq!(account["wx_gender"], 1);
    assert!(account["wx_unionid"].as_str().is_some_and(|unionid| !unionid.is_empty()));
    let token = result["token"].as_str().expect("a token");
    assert_eq!(token.split('.').count(), 3);

    assert_eq!(
        stored(&server, &openid),
        Some(Stored {
            phone: Some("+8613800138000".into()),
            is_register: true,
            username: openid.clone(),
            wx_nickname: Some("小明".into()),
            birthday: Some("2000-02-29".into()),
            wx_gender: 1,
        })
    );
    assert_eq!(account_count(&server), 1);

    // The token names the registered account.
    let header = format!("jwt {token}");
    let login = server.post_with("login", &json!({}), &[("Authorization", &header)]);
    assert_eq!(login.result()["account"]["id"], account["id"]);
    let registered = server.get(&format!("is_openid_registered?openid={openid}"));
    assert_eq!(registered.result(), &json!({"is_registered": true}));
}

#[test]
fn a_numeric_phone_and_a_string_gender_are_accepted_as_form_clients_send_them() {
    let server = Wxauth::start(&[]);
    let openid = openid_of(&server, "reg-numeric");
    let nickname = "字".repeat(64);
    let body =
        json!({"openid": openid, "phone": 13800138000u64, "gender": "2", "nickname": nickname});
    let result = server.post("register", &body).result().clone();
    assert_eq!(result["account"]["phone"], "13800138000");
    assert_eq!(result["account"]["wx_gender"], 2);
    assert_eq!(result["account"]["wx_nickname"], nickname.as_str(), "64 characters is the limit");
    let row = stored(&server, &openid).unwrap();
    assert_eq!(
        (row.phone.as_deref(), row.is_register, row.wx_gender, row.wx_nickname.as_deref()),
        (Some("13800138000"), true, 2, Some(nickname.as_str()))
    );
}

/// Bodies that must be refused as `invalid_parameter` (openid added unless set).
fn invalid_bodies() -> Vec<(&'static str, Value)> {
    let phone = "13800138000";
    vec![
        ("phone abc", json!({"phone": "abc"})),
        ("phone 123", json!({"phone": "123"})),
        ("phone of 21 digits", json!({"phone": "123456789012345678901"})),
        ("phone +86+1", json!({"phone": "+86+1"})),
        ("phone with a letter O", json!({"phone": "1380013800O"})),
        ("phone as an object", json!({"phone": {"number": phone}})),
        ("phone as an array", json!({"phone": [phone]})),
        ("phone as a boolean", json!({"phone": true})),
        ("phone as a negative number", json!({"phone": -13800138000i64})),
        ("birthday 2023-02-30", json!({"phone": phone, "birthday": "2023-02-30"})),
        ("birthday 2023-2-3", json!({"phone": phone, "birthday": "2023-2-3"})),
        ("birthday 2023-13-01", json!({"phone": phone, "birthday": "2023-13-01"})),
        ("birthday 1990/01/01", json!({"phone": phone, "birthday": "1990/01/01"})),
        ("birthday as a number", json!({"phone": phone, "birthday": 19900101})),
        ("gender 3", json!({"phone": phone, "gender": 3})),
        ("gender \"x\"", json!({"phone": phone, "gender": "x"})),
        ("gender -1", json!({"phone": phone, "gender": -1})),
        ("gender 1.5", json!({"phone": phone, "gender": 1.5})),
        ("gender true", json!({"phone": phone, "gender": true})),
        ("nickname of 65 characters", json!({"phone": phone, "nickname": "n".repeat(65)})),
        ("nickname of 65 CJK characters", json!({"phone": phone, "nickname": "字".repeat(65)})),
        ("nickname with a control character", json!({"phone": phone, "nickname": "a\u{7}b"})),
        ("nickname as an object", json!({"phone": phone, "nickname": {"a": 1}})),
        ("openid as a number", json!({"phone": phone, "openid": 12345})),
        ("openid with a quote", json!({"phone": phone, "openid": "o' OR 1=1"})),
        (
            "encrypted_phone as a number",
            json!({"encrypted_phone": 5, "iv": "AAAAAAAAAAAAAAAAAAAAAA=="}),
        ),
        ("phone_code as an object", json!({"phone_code": {"code": "x"}})),
        ("phone_code with a space", json!({"phone_code": "a b"})),
    ]
}

#[test]
fn invalid_fields_are_refused_before_anything_is_written() {
    let server = Wxauth::start(&[]);
    // No account yet: a refusal must not create one.
    let fresh = openid_of(&server, "reg-invalid-new");
    for (what, body) in invalid_bodies() {
        let answer = server.post("register", &with_openid(&fresh, &body));
        assert_eq!(answer.body["error"], "invalid_parameter", "{what}: {answer:?}");
        answer.assert_error(403, "invalid_parameter");
        assert_eq!(account_count(&server), 0, "{what}: an account was created");
    }

    // An existing account: a refusal must not touch it.
    let (openid, before) = known_account(&server, "reg-invalid-known");
    for (what, body) in invalid_bodies() {
        let answer = server.post("register", &with_openid(&openid, &body));
        assert_eq!(answer.body["error"], "invalid_parameter", "{what}: {answer:?}");
        answer.assert_error(403, "invalid_parameter");
        assert_eq!(stored(&server, &openid).as_ref(), Some(&before), "{what}: account changed");
    }
    assert_eq!(account_count(&server), 1);

    // Malformed JSON is refused the same way.
    let path = format!("{}register", server.prefix);
    let broken = format!(r#"{{"openid": "{openid}", "phone": "13800138000""#);
    let answer = server.raw("POST", &path, &[], Some(broken.as_bytes()));
    answer.assert_error(403, "invalid_parameter");
    assert_eq!(stored(&server, &openid), Some(before));
}

#[test]
fn no_phone_source_is_missing_parameter_and_writes_nothing() {
    let server = Wxauth::start(&[]);
    let (openid, before) = known_account(&server, "reg-missing");
    let (data, iv) = encrypted_phone(&server, &openid, "13912345678", None);
    for (what, body, field) in [
        ("no phone at all", json!({"nickname": "Changed", "gender": 2}), "phone"),
        ("empty phone", json!({"phone": "", "nickname": "Changed"}), "phone"),
        ("null phone", json!({"phone": null}), "phone"),
        ("iv alone", json!({"iv": iv}), "phone"),
        ("encrypted_phone without iv", json!({"encrypted_phone": data}), "iv"),
        ("encrypted_phone with an empty iv", json!({"encrypted_phone": data, "iv": ""}), "iv"),
        ("empty phone_code", json!({"phone_code": ""}), "phone"),
    ] {
        let answer = server.post("register", &with_openid(&openid, &body));
        assert_eq!(answer.body["error"], "missing_parameter", "{what}: {answer:?}");
        answer.assert_error(403, "missing_parameter");
        let detail = answer.body["detail"].as_str().unwrap();
        assert!(detail.contains(field), "{what}: the detail names {field}: {detail}");
        assert_eq!(stored(&server, &openid).as_ref(), Some(&before), "{what}: account changed");
    }
    assert_eq!(account_count(&server), 1);
}

#[test]
fn registering_twice_updates_the_phone_of_the_one_account() {
    let server = Wxauth::start(&[]);
    let openid = openid_of(&server, "reg-twice");
    let body = json!({"openid": openid, "phone": "13800138000", "nickname": "First", "birthday": "1990-01-31", "gender": 2});
    let first = server.post("register", &body).result().clone();
    let second = server.post("register", &json!({"openid": openid, "phone": "139 0000 1111"}));
    let second = second.result();
    assert_eq!(second["account"]["id"], first["account"]["id"]);
    assert_eq!(second["account"]["phone"], "13900001111");
    assert_eq!(second["account"]["is_register"], true);
    assert_eq!(second["account"]["wx_nickname"], "First", "fields not given are kept");
    assert_eq!(account_count(&server), 1);
    assert_eq!(
        stored(&server, &openid),
        Some(Stored {
            phone: Some("13900001111".into()),
            is_register: true,
            username: openid.clone(),
            wx_nickname: Some("First".into()),
            birthday: Some("1990-01-31".into()),
            wx_gender: 2,
        })
    );
}

/// Issue 19: every login or registration of an existing account by openid spent an account id
/// (an `INSERT … ON CONFLICT` on the AUTOINCREMENT table), so ids, which clients and services
/// see (`sub`, `X-User-Id`), skipped: one user registering 3 times and logging in 3 times made
/// the next user's id 7.
#[test]
fn logins_and_registrations_of_an_existing_account_spend_no_account_id() {
    let server = Wxauth::start(&[]);
    let openid = openid_of(&server, "reg-ids-first");
    let mut ids = Vec::new();
    for phone in ["13800138000", "13800138001", "13800138002"] {
        let body = json!({"openid": openid, "phone": phone});
        ids.push(server.post("register", &body).result()["account"]["id"].as_i64().unwrap());
        let login = server.post("login", &json!({"openid": openid}));
        ids.push(login.result()["account"]["id"].as_i64().unwrap());
    }
    let first = ids[0];
    assert!(ids.iter().all(|id| *id == first), "one account: {ids:?}");
    let (_, second) = server.login_as("reg-ids-second");
    assert_eq!(second["account"]["id"], first + 1, "the next account takes the next id");
    assert_eq!(account_count(&server), 2);
}

// ----- the openid policy -----

#[test]
fn an_openid_that_never_came_from_a_code_is_refused() {
    // The openid leaks from another deployment of the same mini-program (same appid, same
    // openids), so it is genuine but was never returned by this server's get_openid_by_code.
    let elsewhere = Wxauth::start(&[]);
    let openid = openid_of(&elsewhere, "reg-leaked");
    drop(elsewhere);

    let server = Wxauth::start(&[]);
    let body = json!({"openid": openid, "phone": "13800138000"});
    server.post("register", &body).assert_error(403, "openid_login_refused");
    assert_eq!(account_count(&server), 0, "a refused registration created an account");
    let registered = server.get(&format!("is_openid_registered?openid={openid}"));
    assert_eq!(registered.result(), &json!({"is_registered": false}));

    // Nor does a phone code get spent on a refused request.
    let code = phone_code(&server, "13500000005", None);
    let by_code = json!({"openid": openid, "phone_code": code});
    server.post("register", &by_code).assert_error(403, "openid_login_refused");
    assert_eq!(calls(&server, "getuserphonenumber"), 0, "WeChat was asked for a refused request");
    assert_eq!(account_count(&server), 0);

    // Once the owner exchanges a code here, the same requests are allowed.
    assert_eq!(openid_of(&server, "reg-leaked"), openid);
    let result = server.post("register", &body).result().clone();
    assert_eq!(result["account"]["is_register"], true);
    assert_eq!(stored(&server, &openid).unwrap().phone.as_deref(), Some("13800138000"));
    let result = server.post("register", &by_code).result().clone();
    assert_eq!(result["account"]["phone"], "13500000005");
}

#[test]
fn invalid_fields_are_refused_before_wechat_is_asked() {
    let server = Wxauth::start(&[]);
    let (openid, before) = known_account(&server, "reg-validate-first");
    let exchanges = calls(&server, "jscode2session");
    let code = phone_code(&server, "13500000004", None);
    let (data, iv) = encrypted_phone(&server, &openid, "13912345678", None);
    let login_code = fresh_code("reg-validate-first");
    for (what, body) in [
        ("phone code, bad birthday", json!({"phone_code": code, "birthday": "2023-02-30"})),
        ("phone code, bad gender", json!({"phone_code": code, "gender": 3})),
        (
            "encrypted with code, long nickname",
            json!({"encrypted_phone": data, "iv": iv, "code": login_code, "nickname": "n".repeat(65)}),
        ),
    ] {
        let answer = server.post("register", &with_openid(&openid, &body));
        assert_eq!(answer.body["error"], "invalid_parameter", "{what}: {answer:?}");
        answer.assert_error(403, "invalid_parameter");
        assert_eq!(stored(&server, &openid).as_ref(), Some(&before), "{what}: account changed");
    }
    assert_eq!(calls(&server, "getuserphonenumber"), 0, "the phone code was not spent");
    assert_eq!(calls(&server, "stable_token"), 0);
    assert_eq!(calls(&server, "jscode2session"), exchanges, "the wx.login code was not spent");

    // Both codes are still good.
    let answer = server.post("register", &json!({"openid": openid, "phone_code": code}));
    assert_eq!(answer.result()["account"]["phone"], "13500000004");
    let body = json!({"openid": openid, "encrypted_phone": data, "iv": iv});
    assert_eq!(server.post("register", &body).result()["account"]["phone"], "13912345678");
    assert_eq!(server.openid_for(&login_code)["openid"], openid.as_str());
}

#[test]
fn the_open_policy_registers_any_openid_and_off_refuses_every_one() {
    let open = Wxauth::start(&[("WXAUTH_OPENID_LOGIN", "open")]);
    let openid = "oWxauthTestNeverSawACode0001";
    let body = json!({"openid": openid, "phone": "13800138000"});
    assert_eq!(open.post("register", &body).result()["account"]["is_register"], true);
    assert_eq!(stored(&open, openid).unwrap().phone.as_deref(), Some("13800138000"));

    let off = Wxauth::start(&[("WXAUTH_OPENID_LOGIN", "off")]);
    let openid = openid_of(&off, "reg-off");
    let body = json!({"openid": openid, "phone": "13800138000"});
    off.post("register", &body).assert_error(403, "openid_login_refused");
    assert_eq!(account_count(&off), 0);
}

#[test]
fn a_token_without_openid_registers_the_tokens_account() {
    let server = Wxauth::start(&[]);
    let (openid, login) = server.login_as("reg-token");
    let token = login["token"].as_str().unwrap();
    let header = format!("jwt {token}");
    let body = json!({"phone": "13600000000", "nickname": "ByToken"});
    let answer = server.post_with("register", &body, &[("Authorization", &header)]);
    let result = answer.result();
    assert_eq!(result["account"]["id"], login["account"]["id"]);
    assert_eq!(result["account"]["wx_openid"], openid);
    assert_eq!(result["account"]["phone"], "13600000000");
    assert_eq!(result["account"]["is_register"], true);
    let row = stored(&server, &openid).unwrap();
    assert_eq!(
        (row.phone.as_deref(), row.is_register, row.wx_nickname.as_deref()),
        (Some("13600000000"), true, Some("ByToken"))
    );
    assert_eq!(account_count(&server), 1);
}

#[test]
fn a_token_with_another_accounts_openid_is_invalid_parameter() {
    let server = Wxauth::start(&[]);
    let (alice, alice_before) = known_account(&server, "reg-mismatch-alice");
    let (bob, bob_before) = known_account(&server, "reg-mismatch-bob");
    let alice_login = server.post("login", &json!({"openid": alice})).result().clone();
    let header = format!("jwt {}", alice_login["token"].as_str().unwrap());
    let body = json!({"openid": bob, "phone": "13600000000"});
    let answer = server.post_with("register", &body, &[("Authorization", &header)]);
    answer.assert_error(403, "invalid_parameter");
    assert_eq!(stored(&server, &alice), Some(alice_before));
    assert_eq!(stored(&server, &bob), Some(bob_before));
    assert_eq!(account_count(&server), 2);
}

#[test]
fn an_invalid_token_falls_back_to_the_openid_and_alone_is_refused() {
    let server = Wxauth::start(&[]);
    let (openid, before) = known_account(&server, "reg-bad-token");
    let header = [("Authorization", "jwt not.a.token")];
    let answer = server.post_with("register", &json!({"phone": "13600000000"}), &header);
    answer.assert_error(403, "token_invalid");
    assert_eq!(stored(&server, &openid), Some(before));

    let body = json!({"openid": openid, "phone": "13600000000"});
    let answer = server.post_with("register", &body, &header);
    assert_eq!(answer.result()["account"]["phone"], "13600000000");
    assert!(stored(&server, &openid).unwrap().is_register);
}

// ----- legacy encrypted phone -----

#[test]
fn legacy_encrypted_phone_registers() {
    let server = Wxauth::start(&[]);
    let (openid, _) = known_account(&server, "reg-legacy");
    let (data, iv) = encrypted_phone(&server, &openid, "+86 139 1234 5678", None);
    let body = json!({"openid": openid, "encrypted_phone": data, "iv": iv, "nickname": "Legacy"});
    let result = server.post("register", &body).result().clone();
    assert_eq!(result["account"]["phone"], "+8613912345678");
    assert_eq!(result["account"]["is_register"], true);
    let row = stored(&server, &openid).unwrap();
    assert_eq!(
        (row.phone.as_deref(), row.is_register, row.wx_nickname.as_deref()),
        (Some("+8613912345678"), true, Some("Legacy"))
    );
}

#[test]
fn encrypted_data_from_another_users_session_does_not_decrypt() {
    let server = Wxauth::start(&[]);
    let (alice, before) = known_account(&server, "reg-foreign-alice");
    let bob = openid_of(&server, "reg-foreign-bob");
    let (data, iv) = encrypted_phone(&server, &bob, "13912345678", None);
    let body = json!({"openid": alice, "encrypted_phone": data, "iv": iv});
    server.post("register", &body).assert_error(403, "decrypt_failed");
    assert_eq!(stored(&server, &alice), Some(before));
    assert_eq!(stored(&server, &bob), None);

    // The same data is good for its owner.
    let body = json!({"openid": bob, "encrypted_phone": data, "iv": iv});
    assert_eq!(server.post("register", &body).result()["account"]["phone"], "13912345678");
}

#[test]
fn a_newer_code_exchange_makes_older_encrypted_data_useless() {
    let server = Wxauth::start(&[]);
    let (openid, before) = known_account(&server, "reg-stale");
    let (old_data, old_iv) = encrypted_phone(&server, &openid, "13912345678", None);
    let old_key = recorded_session_key(&server, &openid).unwrap();
    assert_eq!(openid_of(&server, "reg-stale"), openid);
    assert_ne!(recorded_session_key(&server, &openid).unwrap(), old_key, "a new session_key");

    let body = json!({"openid": openid, "encrypted_phone": old_data, "iv": old_iv});
    server.post("register", &body).assert_error(403, "decrypt_failed");
    assert_eq!(stored(&server, &openid), Some(before));

    let (data, iv) = encrypted_phone(&server, &openid, "13912345678", None);
    let body = json!({"openid": openid, "encrypted_phone": data, "iv": iv});
    assert_eq!(server.post("register", &body).result()["account"]["phone"], "13912345678");
}

#[test]
fn encrypted_data_for_another_appid_is_a_watermark_mismatch() {
    let server = Wxauth::start(&[]);
    let (openid, before) = known_account(&server, "reg-watermark");
    let (data, iv) = encrypted_phone(&server, &openid, "13912345678", Some("wxother"));
    let body = json!({"openid": openid, "encrypted_phone": data, "iv": iv});
    server.post("register", &body).assert_error(403, "watermark_mismatch");
    assert_eq!(stored(&server, &openid), Some(before));
}

/// Regression: data that decrypted but was not a phone payload (WeChat's own sample, user info)
/// was `decrypt_failed` even when it was another app's. Its watermark is read first.
#[test]
fn encrypted_data_that_is_not_a_phone_is_judged_by_its_watermark_first() {
    let server = Wxauth::start(&[]);
    let (openid, before) = known_account(&server, "reg-user-info");
    let user_info = |appid: Option<&str>| {
        let mut path = format!("/fake/encrypted_user_info?openid={}", encode(&openid));
        if let Some(appid) = appid {
            path.push_str(&format!("&appid={}", encode(appid)));
        }
        let answer = server.fake(&path);
        let body = json!({"openid": openid, "encrypted_phone": answer["encryptedData"], "iv": answer["iv"]});
        server.post("register", &body)
    };
    user_info(Some("wxother")).assert_error(403, "watermark_mismatch");
    let answer = user_info(None);
    answer.assert_error(403, "decrypt_failed");
    assert_eq!(answer.body["detail"], "加密数据不是手机号数据", "{answer:?}");
    assert_eq!(stored(&server, &openid), Some(before));
}

#[test]
fn a_client_session_key_must_equal_the_recorded_one() {
    let server = Wxauth::start(&[]);
    let (openid, before) = known_account(&server, "reg-client-key");
    let (data, iv) = encrypted_phone(&server, &openid, "13912345678", None);
    let recorded = recorded_session_key(&server, &openid).unwrap();
    let wrong = if recorded == "AAAAAAAAAAAAAAAAAAAAAA==" {
        "AQAAAAAAAAAAAAAAAAAAAA=="
    } else {
        "AAAAAAAAAAAAAAAAAAAAAA=="
    };
    let body = json!({"openid": openid, "encrypted_phone": data, "iv": iv, "session_key": wrong});
    server.post("register", &body).assert_error(403, "session_expired");
    assert_eq!(stored(&server, &openid), Some(before));

    // Without a client key the recorded one is used.
    let body = json!({"openid": openid, "encrypted_phone": data, "iv": iv});
    assert_eq!(server.post("register", &body).result()["account"]["phone"], "13912345678");
}

#[test]
fn with_exposed_session_keys_the_correct_client_key_is_accepted() {
    let server = Wxauth::start(&[("WXAUTH_EXPOSE_SESSION_KEY", "true")]);
    let results = server.openid_for(&fresh_code("reg-exposed"));
    let openid = results["openid"].as_str().unwrap().to_string();
    let session_key = results["session_key"].as_str().expect("session_key exposed").to_string();
    server.post("login", &json!({"openid": openid, "phone": "13700000000"})).result();
    let (data, iv) = encrypted_phone(&server, &openid, "13912345678", None);

    let mut wrong = session_key.clone().into_bytes();
    wrong[0] = if wrong[0] == b'A' { b'B' } else { b'A' };
    let wrong = String::from_utf8(wrong).unwrap();
    let body = json!({"openid": openid, "encrypted_phone": data, "iv": iv, "session_key": wrong});
    server.post("register", &body).assert_error(403, "session_expired");
    let row = stored(&server, &openid).unwrap();
    assert_eq!((row.phone.as_deref(), row.is_register), (Some("13700000000"), false));

    let body =
        json!({"openid": openid, "encrypted_phone": data, "iv": iv, "session_key": session_key});
    assert_eq!(server.post("register", &body).result()["account"]["phone"], "13912345678");
    let row = stored(&server, &openid).unwrap();
    assert_eq!((row.phone.as_deref(), row.is_register), (Some("13912345678"), true));
}

#[test]
fn an_openid_without_a_recorded_session_is_session_expired() {
    let server = Wxauth::start(&[("WXAUTH_OPENID_LOGIN", "open")]);
    // Well-formed data: 32 bytes of ciphertext and a 16-byte iv, so only the session is missing.
    let data = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let iv = "AAAAAAAAAAAAAAAAAAAAAA==";
    let never = "oWxauthTestNoSessionAtAll001";
    let body = json!({"openid": never, "encrypted_phone": data, "iv": iv});
    server.post("register", &body).assert_error(403, "session_expired");
    assert_eq!(account_count(&server), 0, "a refused registration created an account");

    // An account created by a bare-openid login (allowed by `open`) has no session either.
    let openid = "oWxauthTestNoSessionAtAll002";
    server.post("login", &json!({"openid": openid, "phone": "13700000000"})).result();
    let before = stored(&server, openid).unwrap();
    let body = json!({"openid": openid, "encrypted_phone": data, "iv": iv});
    server.post("register", &body).assert_error(403, "session_expired");
    assert_eq!(stored(&server, openid), Some(before));
    assert!(!stored(&server, openid).unwrap().is_register);
}

#[test]
fn malformed_encrypted_data_is_decrypt_failed() {
    let server = Wxauth::start(&[]);
    let (openid, before) = known_account(&server, "reg-garbage");
    let (data, iv) = encrypted_phone(&server, &openid, "13912345678", None);
    let truncated = &data[..data.len() - 4];
    let mut flipped = data.clone().into_bytes();
    let last = flipped.len() - 3;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    for (what, data, iv) in [
        ("data not base64", "!!!not base64!!!", iv.as_str()),
        ("data not whole blocks", truncated, iv.as_str()),
        ("data with its last block altered", flipped.as_str(), iv.as_str()),
        ("iv not base64", data.as_str(), "%%%%"),
        ("iv of 8 bytes", data.as_str(), "AAAAAAAAAAA="),
    ] {
        let body = json!({"openid": openid, "encrypted_phone": data, "iv": iv});
        let answer = server.post("register", &body);
        assert_eq!(answer.body["error"], "decrypt_failed", "{what}: {answer:?}");
        answer.assert_error(403, "decrypt_failed");
        assert_eq!(stored(&server, &openid).as_ref(), Some(&before), "{what}: account changed");
    }
    let body = json!({"openid": openid, "encrypted_phone": data, "iv": iv});
    assert_eq!(server.post("register", &body).result()["account"]["phone"], "13912345678");
}

#[test]
fn base64_whose_plus_signs_arrived_as_spaces_still_decrypts() {
    let server = Wxauth::start(&[]);
    let (openid, _) = known_account(&server, "reg-plus");
    // Fresh data until it holds a `+` (almost always at once: a new iv changes every block).
    let (data, iv) = (0..200)
        .map(|_| encrypted_phone(&server, &openid, "13912345678", None))
        .find(|(data, _)| data.contains('+'))
        .expect("encrypted data with a +");
    // A mini-program posting a form without escaping: `+` becomes a space on the way.
    let form = format!("openid={openid}&encrypted_phone={data}&iv={iv}");
    let path = format!("{}register", server.prefix);
    let headers = [("Content-Type", "application/x-www-form-urlencoded")];
    let answer = server.raw("POST", &path, &headers, Some(form.as_bytes()));
    assert_eq!(answer.result()["account"]["phone"], "13912345678");
    assert!(stored(&server, &openid).unwrap().is_register);
}

#[test]
fn a_code_already_exchanged_in_the_body_keeps_the_session_key() {
    let server = Wxauth::start(&[]);
    let (openid, _) = known_account(&server, "reg-same-code");
    // The client flow: wx.login → get_openid_by_code → getPhoneNumber → register with that code.
    let code = fresh_code("reg-same-code");
    assert_eq!(server.openid_for(&code)["openid"], openid);
    let asked = calls(&server, "jscode2session");
    let (data, iv) = encrypted_phone(&server, &openid, "13912345678", None);
    let body = json!({"openid": openid, "encrypted_phone": data, "iv": iv, "code": code});
    assert_eq!(server.post("register", &body).result()["account"]["phone"], "13912345678");
    assert_eq!(
        calls(&server, "jscode2session"),
        asked,
        "the repeated code is answered from memory"
    );
}

#[test]
fn a_fresh_code_in_the_body_is_exchanged_before_decrypting() {
    let server = Wxauth::start(&[]);
    let (openid, before) = known_account(&server, "reg-fresh-code");
    let (data, iv) = encrypted_phone(&server, &openid, "13912345678", None);
    let old_key = recorded_session_key(&server, &openid).unwrap();
    let asked = calls(&server, "jscode2session");
    let code = fresh_code("reg-fresh-code");
    let body = json!({"openid": openid, "encrypted_phone": data, "iv": iv, "code": code});
    // The exchange issues a new session_key, and the data was encrypted under the old one.
    server.post("register", &body).assert_error(403, "decrypt_failed");
    assert_eq!(calls(&server, "jscode2session"), asked + 1);
    assert_ne!(recorded_session_key(&server, &openid).unwrap(), old_key);
    assert_eq!(stored(&server, &openid), Some(before));

    // Data encrypted under the refreshed key, sent with the same (now remembered) code, works.
    let (data, iv) = encrypted_phone(&server, &openid, "13912345678", None);
    let body = json!({"openid": openid, "encrypted_phone": data, "iv": iv, "code": code});
    assert_eq!(server.post("register", &body).result()["account"]["phone"], "13912345678");
}

#[test]
fn a_code_of_another_user_or_an_invalid_code_is_refused() {
    let server = Wxauth::start(&[]);
    let (openid, before) = known_account(&server, "reg-code-owner");
    let (data, iv) = encrypted_phone(&server, &openid, "13912345678", None);
    let other = fresh_code("reg-code-stranger");
    for (what, code, status, error) in [
        ("another user's code", other.as_str(), 403, "invalid_parameter"),
        ("an invalid code", "fake-40029", 403, "wechat_code_invalid"),
        ("a used code", "fake-40163", 403, "wechat_code_used"),
        ("a code with a space", "a b", 403, "invalid_parameter"),
        ("WeChat unavailable", "fake-500", 502, "wechat_unavailable"),
    ] {
        let body = json!({"openid": openid, "encrypted_phone": data, "iv": iv, "code": code});
        let answer = server.post("register", &body);
        assert_eq!(answer.body["error"], error, "{what}: {answer:?}");
        answer.assert_error(status, error);
        assert_eq!(stored(&server, &openid).as_ref(), Some(&before), "{what}: account changed");
    }
    // None of that disturbed the owner's session: the data still decrypts.
    let body = json!({"openid": openid, "encrypted_phone": data, "iv": iv});
    assert_eq!(server.post("register", &body).result()["account"]["phone"], "13912345678");
}

// ----- phone code -----

#[test]
fn phone_codes_register_and_share_one_access_token() {
    let server = Wxauth::start(&[]);
    for index in 0..3 {
        let (openid, _) = known_account(&server, &format!("reg-phone-code-{index}"));
        let phone = format!("1350000000{index}");
        let code = phone_code(&server, &phone, None);
        let body = json!({"openid": openid, "phone_code": code});
        let result = server.post("register", &body).result().clone();
        assert_eq!(result["account"]["phone"], phone.as_str());
        assert_eq!(result["account"]["is_register"], true);
        let row = stored(&server, &openid).unwrap();
        assert_eq!((row.phone, row.is_register), (Some(phone), true));
    }
    assert_eq!(calls(&server, "stable_token"), 1, "the access token is fetched once");
    assert_eq!(calls(&server, "getuserphonenumber"), 3);
}

#[test]
fn an_expired_or_revoked_access_token_is_refreshed_once() {
    let server = Wxauth::start(&[]);
    let (openid, _) = known_account(&server, "reg-token-refresh");
    let register = |phone: &str| {
        let code = phone_code(&server, phone, None);
        let answer = server.post("register", &json!({"openid": openid, "phone_code": code}));
        assert_eq!(answer.result()["account"]["phone"], phone);
        assert_eq!(stored(&server, &openid).unwrap().phone.as_deref(), Some(phone));
    };
    register("13500000001");
    assert_eq!(calls(&server, "stable_token"), 1);
    assert_eq!(calls(&server, "getuserphonenumber"), 1);

    server.fake("/fake/invalidate_access_token?errcode=42001");
    register("13500000002");
    assert_eq!(calls(&server, "stable_token"), 2, "expired (42001): one refresh");
    assert_eq!(calls(&server, "getuserphonenumber"), 3, "the refused call and its retry");

    server.fake("/fake/invalidate_access_token?errcode=40001");
    register("13500000003");
    assert_eq!(calls(&server, "stable_token"), 3, "revoked (40001): one refresh");
    assert_eq!(calls(&server, "getuserphonenumber"), 5, "the refused call and its retry");

    // The refreshed token is cached again.
    register("13500000004");
    assert_eq!(calls(&server, "stable_token"), 3);
    assert_eq!(calls(&server, "getuserphonenumber"), 6);
}

#[test]
fn refused_phone_codes_leave_the_account_alone() {
    let server = Wxauth::start(&[]);
    let (alice, alice_before) = known_account(&server, "reg-phone-refused-alice");
    let forged = phone_code(&server, "13500000009", Some("wxother"));
    for (what, code, error) in [
        ("a code for another appid", forged.as_str(), "watermark_mismatch"),
        ("an invalid code", "fake-40029", "wechat_code_invalid"),
        ("a used code", "fake-40163", "wechat_code_used"),
        ("a rate-limited user", "fake-45011", "wechat_rate_limited"),
        ("a blocked user", "fake-40226", "wechat_user_blocked"),
        ("another WeChat error", "fake-errcode-40013", "wechat_error"),
        ("a code WeChat never issued", "phone-never-issued", "wechat_code_invalid"),
    ] {
        let answer = server.post("register", &json!({"openid": alice, "phone_code": code}));
        assert_eq!(answer.body["error"], error, "{what}: {answer:?}");
        answer.assert_error(403, error);
        assert_eq!(stored(&server, &alice).as_ref(), Some(&alice_before), "{what}: changed");
    }

    // A phone code is single-use: the second use is refused and changes nothing.
    let code = phone_code(&server, "13500000008", None);
    let first = server.post("register", &json!({"openid": alice, "phone_code": code}));
    assert_eq!(first.result()["account"]["phone"], "13500000008");
    let (bob, bob_before) = known_account(&server, "reg-phone-refused-bob");
    let second = server.post("register", &json!({"openid": bob, "phone_code": code}));
    second.assert_error(403, "wechat_code_invalid");
    assert_eq!(stored(&server, &bob), Some(bob_before));
}

#[test]
fn a_hanging_phone_number_call_is_wechat_unavailable_in_time() {
    let server = Wxauth::start(&[("WXAUTH_WECHAT_TIMEOUT_MS", "500")]);
    let (openid, before) = known_account(&server, "reg-phone-hang");
    let started = Instant::now();
    let answer = server.post("register", &json!({"openid": openid, "phone_code": "fake-hang"}));
    let elapsed = started.elapsed();
    answer.assert_error(502, "wechat_unavailable");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert_eq!(stored(&server, &openid), Some(before));

    // WeChat recovers: the next phone code works.
    let code = phone_code(&server, "13500000007", None);
    let answer = server.post("register", &json!({"openid": openid, "phone_code": code}));
    assert_eq!(answer.result()["account"]["phone"], "13500000007");
}

#[test]
fn concurrent_registrations_of_a_new_openid_make_one_account() {
    let server = Wxauth::start(&[]);
    let openid = openid_of(&server, "reg-concurrent");
    let barrier = std::sync::Barrier::new(8);
    let ids: Vec<Value> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..8)
            .map(|index| {
                let (server, openid, barrier) = (&server, &openid, &barrier);
                scope.spawn(move || {
                    let body = json!({"openid": openid, "phone": format!("1380000000{index}")});
                    barrier.wait();
                    server.post("register", &body).result()["account"]["id"].clone()
                })
            })
            .collect();
        threads.into_iter().map(|thread| thread.join().unwrap()).collect()
    });
    assert!(ids.iter().all(|id| id == &ids[0]), "one account for one openid: {ids:?}");
    assert_eq!(account_count(&server), 1);
    let row = stored(&server, &openid).unwrap();
    assert!(row.is_register);
    assert!(row.phone.is_some_and(|phone| phone.starts_with("138000000")));
}
