//! What a hostile or broken client gets: a clear refusal, and nothing written, leaked or granted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::{Sha256, Sha512};

use crate::harness::{Answer, TempDir, Wxauth, envelope, raw_exchange, refused_start};

const SECRET: &str = "hostile-tests-jwt-secret-0123456789abcdef";

fn encode(json: &Value) -> String {
    URL_SAFE_NO_PAD.encode(json.to_string())
}

fn hs256(secret: &str, input: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// A token with this header and these claims, signed HS256 with `secret`.
fn forge(header: &Value, claims: &Value, secret: &str) -> String {
    let input = format!("{}.{}", encode(header), encode(claims));
    let signature = hs256(secret, &input);
    format!("{input}.{signature}")
}

fn login_with(server: &Wxauth, token: &str) -> Answer {
    server.post_with("login", &json!({}), &[("Authorization", &format!("jwt {token}"))])
}

/// POSTs `body` as it is to `endpoint`, labelled with `content_type`.
fn post_raw(server: &Wxauth, endpoint: &str, content_type: &str, body: &[u8]) -> Answer {
    let path = format!("/miniprog/wx_auth/{endpoint}");
    server.raw("POST", &path, &[("Content-Type", content_type)], Some(body))
}

fn account_count(server: &Wxauth) -> i64 {
    server.database().query_row("SELECT count(*) FROM accounts", [], |row| row.get(0)).unwrap()
}

/// A server with a known JWT secret, and an account on it: (server, account id, valid claims).
fn server_with_account() -> (Wxauth, i64, Value) {
    let server = Wxauth::start(&[("WXAUTH_JWT_SECRET", SECRET)]);
    let (_, login) = server.login_as("hostile");
    let id = login["account"]["id"].as_i64().unwrap();
    let now = SystemClock::now();
    let claims = json!({
        "iss": "wxauth", "aud": "miniprog", "sub": id.to_string(), "iat": now, "exp": now + 3600,
        "nickname": null, "scopes": ["open"],
    });
    (server, id, claims)
}

struct SystemClock;

impl SystemClock {
    fn now() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
    }
}

fn with(claims: &Value, key: &str, value: Value) -> Value {
    let mut claims = claims.clone();
    if value.is_null() {
        claims.as_object_mut().unwrap().remove(key);
    } else {
        claims[key] = value;
    }
    claims
}

#[test]
fn tokens_altered_or_malformed_in_any_way_are_refused() {
    let (server, _, claims) = server_with_account();
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let valid = forge(&header, &claims, SECRET);
    login_with(&server, &valid).result();

    let (head, rest) = valid.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let mut refused: Vec<(String, String)> = Vec::new();
    // Any single altered character, in each segment.
    for (segment, name) in [(0, "header"), (1, "payload"), (2, "signature")] {
        let mut parts: Vec<String> = vec![head.into(), payload.into(), signature.into()];
        let middle = parts[segment].len() / 2;
        let replacement = if &parts[segment][middle..=middle] == "A" { "B" } else { "A" };
        parts[segment].replace_range(middle..=middle, replacement);
        refused.push((format!("altered {name}"), parts.join(".")));
    }
    let alg = |alg: Value| forge(&json!({"alg": alg, "typ": "JWT"}), &claims, SECRET);
    refused.push((
        "alg none".into(),
        format!("{}.{}.", encode(&json!({"alg": "none", "typ": "JWT"})), encode(&claims)),
    ));
    refused.push(("alg none, signed".into(), alg(json!("none"))));
    refused.push(("alg HS512".into(), {
        let input =
            format!("{}.{}", encode(&json!({"alg": "HS512", "typ": "JWT"})), encode(&claims));
        let mut mac = Hmac::<Sha512>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }));
    refused.push(("alg RS256".into(), alg(json!("RS256"))));
    refused.push(("alg hs256".into(), alg(json!("hs256"))));
    refused.push(("alg missing".into(), forge(&json!({"typ": "JWT"}), &claims, SECRET)));
    refused.push(("two segments".into(), format!("{head}.{payload}")));
    refused.push(("four segments".into(), format!("{valid}.{signature}")));
    refused.push(("padded".into(), {
        let mut text = claims.to_string();
        while text.len() % 3 == 0 {
            text.push(' ');
        }
        let padded_payload = URL_SAFE.encode(text);
        assert!(padded_payload.ends_with('='));
        let input = format!("{head}.{padded_payload}");
        format!("{input}.{}", hs256(SECRET, &input))
    }));
    refused.push(("standard base64".into(), valid.replace('-', "+").replace('_', "/") + "+/"));
    refused.push(("not base64".into(), format!("{head}.{payload}!.{signature}")));
    refused.push(("header not JSON".into(), {
        let input = format!("{}.{payload}", URL_SAFE_NO_PAD.encode("not json"));
        format!("{input}.{}", hs256(SECRET, &input))
    }));
    refused.push(("payload not JSON".into(), {
        let input = format!("{head}.{}", URL_SAFE_NO_PAD.encode("{\"sub\":"));
        format!("{input}.{}", hs256(SECRET, &input))
    }));
    let now = SystemClock::now();
    refused
        .push(("exp missing".into(), forge(&header, &with(&claims, "exp", Value::Null), SECRET)));
    refused.push((
        "nbf in the future".into(),
        forge(&header, &with(&claims, "nbf", json!(now + 3600)), SECRET),
    ));
    refused.push((
        "iat in the future".into(),
        forge(&header, &with(&claims, "iat", json!(now + 3600)), SECRET),
    ));
    refused.push((
        "wrong iss".into(),
        forge(&header, &with(&claims, "iss", json!("someone")), SECRET),
    ));
    refused
        .push(("iss missing".into(), forge(&header, &with(&claims, "iss", Value::Null), SECRET)));
    refused
        .push(("wrong aud".into(), forge(&header, &with(&claims, "aud", json!("other")), SECRET)));
    refused
        .push(("aud missing".into(), forge(&header, &with(&claims, "aud", Value::Null), SECRET)));
    refused.push((
        "sub names no account".into(),
        forge(&header, &with(&claims, "sub", json!("987654")), SECRET),
    ));
    refused.push((
        "sub not a number".into(),
        forge(&header, &with(&claims, "sub", json!("admin")), SECRET),
    ));
    refused.push((
        "other secret".into(),
        forge(&header, &claims, "another-secret-of-enough-length-0123456789"),
    ));
    refused.push(("empty".into(), String::new()));
    for (what, token) in &refused {
        let answer = login_with(&server, token);
        assert_eq!(answer.status, 403, "{what}: {answer:?}");
        assert_eq!(answer.body["error"], "token_invalid", "{what}: {answer:?}");
    }

    let expired = forge(
        &header,
        &with(&with(&claims, "exp", json!(now - 120)), "iat", json!(now - 4000)),
        SECRET,
    );
    login_with(&server, &expired).assert_error(403, "token_expired");
    // Within the leeway (60 s by default) a token still counts.
    let barely = forge(&header, &with(&claims, "exp", json!(now - 10)), SECRET);
    login_with(&server, &barely).result();
}

/// Regression: `sub` was read with Rust's integer parser, so "01" and "+1" named account 1 too:
/// one account had many subjects, which any service comparing `sub` as a string tells apart.
#[test]
fn only_the_canonical_decimal_of_an_account_id_names_it() {
    let (server, id, claims) = server_with_account();
    assert_eq!(id, 1);
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let verify = |token: &str| {
        let authorization = format!("Bearer {token}");
        server.raw("GET", "/miniprog/wx_auth/verify", &[("Authorization", &authorization)], None)
    };
    for sub in [
        "01",
        "+1",
        " 1",
        "1 ",
        "1.0",
        "001",
        "0",
        "-1",
        "",
        "1e0",
        "0x1",
        "１",
        "9223372036854775808",
        "-9223372036854775808",
    ] {
        let token = forge(&header, &with(&claims, "sub", json!(sub)), SECRET);
        let answer = login_with(&server, &token);
        assert_eq!(
            (answer.status, &answer.body["error"]),
            (403, &json!("token_invalid")),
            "{sub:?}"
        );
        let answer = verify(&token);
        assert_eq!(
            (answer.status, &answer.body["error"]),
            (401, &json!("token_invalid")),
            "{sub:?}"
        );
    }
    let token = forge(&header, &with(&claims, "sub", json!("1")), SECRET);
    assert_eq!(login_with(&server, &token).result()["account"]["id"], 1);
    assert_eq!(verify(&token).result()["user_id"], 1);
}

#[test]
fn logout_revokes_every_token_issued_until_then() {
    let server = Wxauth::start(&[]);
    let (openid, first) = server.login_as("leaving");
    let first_token = first["token"].as_str().unwrap().to_string();
    let second = login_with(&server, &first_token).result().clone();
    let second_token = second["token"].as_str().unwrap().to_string();
    let other = server.login_as("staying").1["token"].as_str().unwrap().to_string();

    let answer = server.post_with(
        "logout",
        &json!({}),
        &[("Authorization", &format!("Bearer {second_token}"))],
    );
    assert_eq!(answer.result(), &json!({"logged_out": true}));
    for token in [&first_token, &second_token] {
        login_with(&server, token).assert_error(403, "token_revoked");
        let again =
            server.post_with("logout", &json!({}), &[("Authorization", &format!("jwt {token}"))]);
        again.assert_error(403, "token_revoked");
    }
    // Other accounts keep their tokens.
    login_with(&server, &other).result();
    // Logging in again gives a token that works, and a new logout revokes that one too.
    let code = crate::harness::fresh_code("leaving");
    assert_eq!(server.openid_for(&code)["openid"], openid.as_str());
    let fresh = server.post("login", &json!({"openid": openid})).result()["token"]
        .as_str()
        .unwrap()
        .to_string();
    login_with(&server, &fresh).result();
    let version: i64 = server
        .database()
        .query_row("SELECT token_version FROM accounts WHERE wx_openid = ?1", [&openid], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(version, 1);
    server.post_with("logout", &json!({}), &[("Authorization", &format!("jwt {fresh}"))]).result();
    login_with(&server, &fresh).assert_error(403, "token_revoked");

    server.post("logout", &json!({})).assert_error(403, "not_authenticated");
    server
        .post_with("logout", &json!({}), &[("Authorization", "jwt nonsense")])
        .assert_error(403, "token_invalid");
    let wrong_method = server.get("logout");
    wrong_method.assert_error(405, "method_not_allowed");
}

#[test]
fn json_bodies_must_be_plain_objects() {
    let server = Wxauth::start(&[("WXAUTH_OPENID_LOGIN", "open")]);
    for (what, body) in [
        (
            "duplicate keys",
            r#"{"openid": "oHostileDuplicate000000000001", "openid": "oHostileDuplicate000000000002"}"#,
        ),
        (
            "deep nesting",
            r#"{"openid": "oHostileDeep0000000000000001", "x": [[[[[[[[[[1]]]]]]]]]]}"#,
        ),
        ("two values", r#"{"openid": "oHostileTwo00000000000000001"} {}"#),
        ("an array", r#"[{"openid": "oHostileArray000000000000001"}]"#),
        ("a string", r#""oHostileString0000000000001""#),
        ("truncated", r#"{"openid": "oHostileTruncated00000000001""#),
    ] {
        let answer = post_raw(&server, "login", "application/json", body.as_bytes());
        answer.assert_error(403, "invalid_parameter");
        assert!(!answer.body["detail"].as_str().unwrap().is_empty(), "{what}");
    }
    assert_eq!(account_count(&server), 0, "no refused body created an account");
    let answer = post_raw(
        &server,
        "login",
        "application/json; charset=utf-8",
        br#"{"openid": "oHostileFine0000000000000001", "wx_city": "[{\"not nesting\"}]"}"#,
    );
    answer.result();
}

/// Regression: a form body's repeated key was taken first-wins (`openid=a&openid=b` logged `a`
/// in) while a JSON body's is refused, so the two parsers in front of one field disagreed.
#[test]
fn form_bodies_with_a_repeated_key_are_refused_as_json_ones_are() {
    let server = Wxauth::start(&[("WXAUTH_OPENID_LOGIN", "open")]);
    let (first, second) = ("oHostileFormDuplicate0000001", "oHostileFormDuplicate0000002");
    let json = post_raw(
        &server,
        "login",
        "application/json",
        format!(r#"{{"openid": "{first}", "openid": "{second}"}}"#).as_bytes(),
    );
    json.assert_error(403, "invalid_parameter");
    for (endpoint, body) in [
        ("login", format!("openid={first}&openid={second}")),
        ("login", format!("openid={first}&wx_city=x&openid={first}")),
        ("register", format!("openid={first}&phone=13800138000&openid={second}")),
        ("register", format!("phone=13800138000&openid={first}&phone=13900139000")),
    ] {
        let answer =
            post_raw(&server, endpoint, "application/x-www-form-urlencoded", body.as_bytes());
        answer.assert_error(403, "invalid_parameter");
        assert_eq!(answer.body["detail"], json.body["detail"], "{endpoint} {body}");
    }
    assert_eq!(account_count(&server), 0, "no refused body created an account");
    // The same form without the repeat logs in.
    let answer = post_raw(
        &server,
        "login",
        "application/x-www-form-urlencoded",
        format!("openid={first}&wx_city=x").as_bytes(),
    );
    assert_eq!(answer.result()["account"]["wx_openid"], first);
}

#[test]
fn the_database_and_its_journal_are_readable_by_the_owner_only() {
    if crate::harness::sqlite_only("the database file's mode") {
        return;
    }
    let server = Wxauth::start(&[]);
    server.login_as("permissions");
    for name in ["wxauth.db", "wxauth.db-wal", "wxauth.db-shm"] {
        let path = server.dir.0.join(name);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|_| panic!("{name} exists"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{name} has mode {mode:o}");
    }
}

// ----- The database file: wxauth's own, or it does not start -----

/// `path`'s permission bits, read without following a link.
fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// An empty file at `path` with exactly `mode`, whatever the umask.
fn file_with_mode(path: &Path, mode: u32) {
    std::fs::write(path, b"").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Starts wxauth on `dir` (database `dir/wxauth.db`) and expects it to refuse: a failure status,
/// nothing on stdout, one line on stderr naming `file` and saying `fix`.
fn assert_refused(dir: &TempDir, file: &Path, fix: &str) {
    let (status, stdout, stderr) = refused_start(dir, &[]);
    assert!(!status.success(), "{status:?}: {stderr}");
    assert_eq!(stdout, "", "nothing announced");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("wxauth: "), "{stderr}");
    assert!(stderr.contains(&file.display().to_string()), "names {}: {stderr}", file.display());
    assert!(stderr.contains(fix), "says {fix:?}: {stderr}");
}

/// Regression: a `wxauth.db` that another user could write (say, made 0666 in a shared
/// directory) was used as it was, and the `-wal` and `-shm` files SQLite then made were 0666 too:
/// that user could read the generated JWT secret from them.
#[test]
fn a_database_file_others_can_write_is_refused_and_left_as_it_was() {
    for mode in [0o666, 0o660, 0o602] {
        let dir = TempDir::new();
        let database = dir.0.join("wxauth.db");
        file_with_mode(&database, mode);
        assert_refused(&dir, &database, &format!("chmod 600 {}", database.display()));
        assert_eq!(dir.names(), ["wxauth.db"], "nothing made beside it ({mode:o})");
        assert_eq!(mode_of(&database), mode, "left as it was");
        assert_eq!(std::fs::metadata(&database).unwrap().len(), 0, "nothing written to it");
    }
    // The same for SQLite's files beside a database of ours: a WAL or journal is read into the
    // database when it opens, and the WAL holds what is written.
    for suffix in ["-wal", "-shm", "-journal"] {
        let dir = TempDir::new();
        file_with_mode(&dir.0.join("wxauth.db"), 0o600);
        let beside = dir.0.join(format!("wxauth.db{suffix}"));
        file_with_mode(&beside, 0o666);
        assert_refused(&dir, &beside, &format!("chmod 600 {}", beside.display()));
        assert_eq!(dir.names(), ["wxauth.db".to_string(), format!("wxauth.db{suffix}")]);
        assert_eq!(mode_of(&beside), 0o666, "left as it was");
    }
}

/// Regression: a dangling symbolic link at the database path made SQLite create its target.
#[test]
fn a_symbolic_link_at_the_database_path_is_refused_and_not_followed() {
    let dir = TempDir::new();
    let database = dir.0.join("wxauth.db");
    let target = dir.0.join("target.db");
    std::os::unix::fs::symlink(&target, &database).unwrap();
    let fix = "point `database` at the real file, not a symlink";
    assert_refused(&dir, &database, fix);
    assert_eq!(dir.names(), ["wxauth.db"], "the link's target was not created");

    // A link to a good database of ours is refused the same way, and the file is left alone.
    file_with_mode(&target, 0o600);
    assert_refused(&dir, &database, fix);
    assert_eq!(dir.names(), ["target.db", "wxauth.db"]);
    assert_eq!(std::fs::metadata(&target).unwrap().len(), 0, "nothing written through the link");

    // A link beside a database: SQLite makes its own files there.
    std::fs::remove_file(&database).unwrap();
    std::fs::rename(&target, &database).unwrap();
    let wal = dir.0.join("wxauth.db-wal");
    std::os::unix::fs::symlink(&target, &wal).unwrap();
    assert_refused(&dir, &wal, "move it away");
    assert_eq!(dir.names(), ["wxauth.db", "wxauth.db-wal"]);
}

/// A database file of another user is refused, even one only its owner can read: that user can
/// read the secrets wxauth would keep in it. Giving a file away takes root (the suite runs as
/// root in CI); otherwise `store::sqlite::open::tests::database_files_must_be_ours_regular_and_not_writable_by_others`
/// checks the refusal against a file of root's.
#[test]
fn a_database_file_of_another_user_is_refused() {
    let dir = TempDir::new();
    let database = dir.0.join("wxauth.db");
    file_with_mode(&database, 0o600);
    let user = std::fs::metadata(&database).unwrap().uid();
    if user != 0 {
        return;
    }
    let nobody = 65534;
    std::os::unix::fs::chown(&database, Some(nobody), Some(nobody)).unwrap();
    let fix = format!("chown {user} {}", database.display());
    assert_refused(&dir, &database, &fix);
    assert_eq!(dir.names(), ["wxauth.db"], "nothing made beside it");
    assert_eq!(std::fs::metadata(&database).unwrap().uid(), nobody, "left as it was");

    // Another user's WAL beside a database of ours.
    std::os::unix::fs::chown(&database, Some(user), Some(user)).unwrap();
    let wal = dir.0.join("wxauth.db-wal");
    file_with_mode(&wal, 0o600);
    std::os::unix::fs::chown(&wal, Some(nobody), Some(nobody)).unwrap();
    assert_refused(&dir, &wal, "move it away");
}

/// What keeps working: a database of ours that others may read (as an older wxauth, or a copy,
/// left it) is served and made owner-only, since it holds the secrets; a database in a directory
/// reached through a link (systemd's `DynamicUser` links /var/lib/wxauth to
/// /var/lib/private/wxauth) is created and served.
#[test]
fn an_existing_database_of_ours_is_served_and_made_owner_only() {
    if crate::harness::sqlite_only("the database file's mode") {
        return;
    }
    let server = Wxauth::start(&[]);
    let (openid, login) = server.login_as("kept");
    let database = server.dir.0.join("wxauth.db");
    std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = crate::login::restart(server, &[]);
    assert_eq!(mode_of(&database), 0o600);
    let code = crate::harness::fresh_code("kept");
    assert_eq!(server.openid_for(&code)["openid"], openid.as_str());
    let again = server.post("login", &json!({ "openid": openid })).result().clone();
    assert_eq!(again["account"]["id"], login["account"]["id"], "the same account");
    for name in ["wxauth.db", "wxauth.db-wal", "wxauth.db-shm"] {
        assert_eq!(mode_of(&server.dir.0.join(name)) & 0o077, 0, "{name}");
    }

    let dir = TempDir::new();
    std::fs::create_dir(dir.0.join("private")).unwrap();
    std::os::unix::fs::symlink("private", dir.0.join("linked")).unwrap();
    let database = dir.0.join("linked").join("wxauth.db");
    let server = Wxauth::start_in(dir, &[("WXAUTH_DATABASE", database.to_str().unwrap())]);
    server.login_as("linked");
    let created = server.dir.0.join("private").join("wxauth.db");
    assert_eq!(mode_of(&created), 0o600);
}

#[test]
fn non_utf8_and_odd_encodings_are_refused_cleanly() {
    let server = Wxauth::start(&[("WXAUTH_OPENID_LOGIN", "open")]);
    let latin1 = b"{\"openid\": \"oHostile\xe9\xe9\"}";
    let answer = post_raw(&server, "login", "application/json", latin1);
    answer.assert_error(403, "invalid_parameter");
    let answer =
        server.raw("GET", "/miniprog/wx_auth/is_openid_registered?openid=%C3%28", &[], None);
    answer.assert_error(403, "invalid_parameter");
    let answer = server.raw("GET", "/miniprog/wx_auth/is_openid_registered?openid=%zz", &[], None);
    answer.assert_error(403, "invalid_parameter");
    let raw = raw_exchange(&server, b"GET /miniprog/wx_auth/is_openid_registered?openid=o1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", Duration::from_secs(5));
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
}

/// Reads one HTTP response (head and a Content-Length body) without waiting for the connection
/// to close.
fn read_response(stream: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => bytes.push(byte[0]),
            _ => return String::from_utf8_lossy(&bytes).into_owned(),
        }
    }
    let head = String::from_utf8_lossy(&bytes).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

#[test]
fn oversized_request_lines_and_heads_get_their_own_errors() {
    let server = Wxauth::start(&[]);
    let long_path = format!("/miniprog/wx_auth/is_openid_registered?openid={}", "o".repeat(9000));
    let raw = raw_exchange(
        &server,
        format!("GET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    );
    assert!(raw.starts_with("HTTP/1.1 414"), "{raw:.200}");
    assert_eq!(envelope(&raw)["error"], "uri_too_long");

    let long_header = format!(
        "GET /miniprog/wx_auth/is_openid_registered?openid=o1 HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "b".repeat(9000)
    );
    let raw = raw_exchange(&server, long_header.as_bytes(), Duration::from_secs(5));
    assert!(raw.starts_with("HTTP/1.1 431"), "{raw:.200}");
    assert_eq!(envelope(&raw)["error"], "headers_too_large");

    let many: String = (0..101).map(|index| format!("X-Header-{index}: {index}\r\n")).collect();
    let raw = raw_exchange(
        &server,
        format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes(),
        Duration::from_secs(5),
    );
    assert!(raw.starts_with("HTTP/1.1 431"), "{raw:.200}");
    assert_eq!(envelope(&raw)["error"], "headers_too_large");

    // Just under the limits is fine.
    let fine: String =
        (0..90).map(|index| format!("X-Header-{index}: {}\r\n", "v".repeat(300))).collect();
    let request = format!(
        "GET /miniprog/wx_auth/is_openid_registered?openid=o1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{fine}\r\n"
    );
    let raw = raw_exchange(&server, request.as_bytes(), Duration::from_secs(5));
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw:.200}");
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let server = Wxauth::start(&[("WXAUTH_IDLE_TIMEOUT_MS", "400")]);
    let started = Instant::now();
    let raw = raw_exchange(&server, b"", Duration::from_secs(10));
    assert_eq!(raw, "", "nothing is sent to a client that asked nothing");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
}

#[test]
fn a_trickled_request_head_is_cut_off_with_408() {
    let server = Wxauth::start(&[("WXAUTH_REQUEST_TIMEOUT_MS", "600")]);
    let address = server.address().to_string();
    let mut stream = TcpStream::connect(&address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let head = b"GET /miniprog/wx_auth/is_openid_registered?openid=o1 HTTP/1.1\r\nHost: x\r\n";
    for byte in head.iter().cycle().take(200) {
        // Each byte comes well within any per-read timeout; only the head deadline can stop it.
        if stream.write_all(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let raw = String::from_utf8_lossy(&answer);
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw:.200}");
    assert_eq!(envelope(&raw)["error"], "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(5), "cut off after {:?}", started.elapsed());
}

#[test]
fn a_stalled_body_is_cut_off_with_408() {
    let server =
        Wxauth::start(&[("WXAUTH_REQUEST_TIMEOUT_MS", "500"), ("WXAUTH_OPENID_LOGIN", "open")]);
    let address = server.address().to_string();
    let mut stream = TcpStream::connect(&address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    stream
        .write_all(b"POST /miniprog/wx_auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"openid\": ")
        .unwrap();
    let raw = read_response(&mut stream);
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw:.200}");
    assert_eq!(envelope(&raw)["error"], "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(4), "cut off after {:?}", started.elapsed());
    assert_eq!(account_count(&server), 0);
}

#[test]
fn five_hundred_slow_connections_do_not_stop_an_honest_client() {
    let server =
        Wxauth::start(&[("WXAUTH_IDLE_TIMEOUT_MS", "3000"), ("WXAUTH_REQUEST_TIMEOUT_MS", "3000")]);
    let address = server.address().to_string();
    let mut attackers = Vec::with_capacity(500);
    for index in 0..500 {
        let mut stream = TcpStream::connect(&address).unwrap();
        // Half send nothing, half start a request head and stall.
        if index % 2 == 1 {
            stream.write_all(b"POST /miniprog/wx_auth/login HTTP/1.1\r\nHost: x\r\n").unwrap();
        }
        attackers.push(stream);
    }
    server.assert_reads_answer_within(Duration::from_secs(2));
    // And the attackers are let go once their time is up.
    let started = Instant::now();
    for stream in attackers.iter_mut().step_by(50) {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "slow connections held for {:?}",
        started.elapsed()
    );
}

#[test]
fn a_huge_announced_body_is_refused_and_does_not_hold_the_workers() {
    let server = Wxauth::start(&[("WXAUTH_WORKERS", "2"), ("WXAUTH_WECHAT_MAX_IN_FLIGHT", "1")]);
    let address = server.address().to_string();
    let started = Instant::now();
    let mut attackers = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream
            .write_all(b"POST /miniprog/wx_auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{")
            .unwrap();
        let raw = read_response(&mut stream);
        assert!(raw.starts_with("HTTP/1.1 413"), "{raw:.200}");
        assert_eq!(envelope(&raw)["error"], "body_too_large");
        attackers.push(stream);
    }
    // The attackers keep trickling their bodies for 8 s; each worker stops draining after about
    // 2 s, so the honest client is answered well before the trickle ends.
    let trickle = std::thread::spawn(move || {
        for _ in 0..80 {
            for stream in &mut attackers {
                let _ = stream.write_all(b"x");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let answer = server.get("is_openid_registered?openid=oHonest");
    assert_eq!(answer.result(), &json!({"is_registered": false}));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "honest client waited {:?}",
        started.elapsed()
    );
    trickle.join().unwrap();
}

/// Regression: a bare LF inside a header line (kept, as HTTP/1.1 parsers may) reached the log
/// through an error's detail and started a forged line of its own. Such a line is now refused
/// before any handler sees it (RFC 9112 §2.2: a front end may read a bare LF as a line's end).
#[test]
fn a_header_cannot_forge_a_log_line() {
    let server = Wxauth::start(&[("WXAUTH_OPENID_LOGIN", "open")]);
    let request = b"POST /miniprog/wx_auth/login HTTP/1.1\r\nHost: wxauth\r\n\
        Content-Type: x/y\n2026-01-01 00:00:00 ERROR forged line\r\n\
        Content-Length: 2\r\nConnection: close\r\n\r\n{}";
    let answer = raw_exchange(&server, request, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(envelope(&answer)["error"], "invalid_parameter");
    server.get("is_openid_registered?openid=oAfterTheForgery").result();
    let log = server.log_containing("is_openid_registered");
    assert!(!log.contains("forged line"), "a forged log line: {log}");
}

/// The head reader scans buffered bytes for a line's end (vendor/tiny_http PATCHES.md): a CRLF
/// split across two TCP segments still ends the line, and a line of exactly the 8 KiB limit whose
/// CR and LF arrive apart is accepted, one byte more is 431.
#[test]
fn head_lines_end_at_a_crlf_split_across_reads() {
    let server = Wxauth::start(&[]);
    let address = server.address().to_string();
    let send_in_parts = |filler: usize| {
        let mut stream = TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // "X-Filler: " + filler bytes is the whole line, without its CRLF.
        let line = format!("X-Filler: {}", "a".repeat(filler));
        let first = format!("GET /healthz HTTP/1.1\r\nHost: wxauth\r\n{line}\r");
        stream.write_all(first.as_bytes()).unwrap();
        stream.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        stream.write_all(b"\nConnection: close\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    let limit = 8 * 1024;
    let at_limit = send_in_parts(limit - "X-Filler: ".len());
    assert!(at_limit.starts_with("HTTP/1.1 200"), "{}", &at_limit[..at_limit.len().min(200)]);
    let over = send_in_parts(limit - "X-Filler: ".len() + 1);
    assert!(over.starts_with("HTTP/1.1 431"), "{}", &over[..over.len().min(200)]);
}
