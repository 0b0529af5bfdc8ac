//! `wxauth users import`: the original Django backend's `dumpdata` and `users export`'s csv and
//! json, each run as the real binary against a real database, and checked against what
//! `users export`, the database and the API then show: ids kept, every refused row named, nothing
//! written unless everything is, and memory that does not grow with the file.

use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::apps::{SHOP, call, login_through};
use crate::cli::{
    Run, account_count, login_by_token, parse_csv, registered_user, run_in, run_on_database,
};
use crate::harness::{Mysql, TempDir, Wxauth, binary, fresh_code};

/// The original backend's `manage.py dumpdata wx_auth.User --indent 2`: three accounts (pk 3, 7,
/// 12), naive, `Z` and offset times, password hashes, empty strings, one `is_active` false.
const DJANGO_DUMP: &str = include_str!("../fixtures/django-users.json");

/// What the fixture's password fields hold, which must appear nowhere after an import.
const PASSWORDS: [&str; 3] = [
    "pbkdf2_sha256$260000$Qm9vZ0l5",
    "Fr8xVnQy2kLq9ZbWm3sT0aHc6JdEeRuPo1iNgYt",
    "Zk9z8y7x6w5v4u3t2s1r0q9p8o7n6m5l4k3j2i1h0g=",
];

/// A JWT secret set explicitly, as a moving deployment sets it on both sides.
const SECRET: &str = "moving-deployment-secret-0123456789abcdef";

/// Writes `text` to a file named `name` in the server's directory; returns its path.
fn write_file(server: &Wxauth, name: &str, text: &str) -> String {
    let path = server.dir.0.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn import(server: &Wxauth, file: &str, format: &str, dry_run: bool) -> Run {
    let mut arguments = vec!["users", "import", file, "--format", format];
    if dry_run {
        arguments.push("--dry-run");
    }
    run_on_database(server, &arguments)
}

fn export(server: &Wxauth, format: &str) -> String {
    run_on_database(server, &["users", "export", "--format", format]).success().to_string()
}

/// Every byte of the database's files (the database, its WAL), as text; under
/// `WXAUTH_TEST_MYSQL`, every row of every table of the MySQL database, which keeps rolled-back
/// rows in no file a test can read.
fn database_bytes(server: &Wxauth) -> String {
    if let Some(mysql) = Mysql::from_env() {
        use mysql::prelude::Queryable;
        let mut conn = mysql.connect(Some(&server.dir.database_name()));
        let tables: Vec<String> = conn.query("SHOW TABLES").unwrap();
        let mut text = String::new();
        for table in tables {
            let rows: Vec<mysql::Row> = conn.query(format!("SELECT * FROM `{table}`")).unwrap();
            for row in rows {
                text.push_str(&format!("{:?}\n", row.unwrap()));
            }
        }
        return text;
    }
    let mut bytes = Vec::new();
    for name in ["wxauth.db", "wxauth.db-wal"] {
        if let Ok(content) = std::fs::read(server.dir.0.join(name)) {
            bytes.extend(content);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn exported_accounts(server: &Wxauth) -> Vec<Value> {
    serde_json::from_str(&export(server, "json")).unwrap()
}

/// One CSV record under `header` (export's columns): the `given` columns' values, and in the
/// others what a new account holds (empty for null).
fn csv_record(header: &[String], given: &[(&str, &str)]) -> String {
    let cells: Vec<&str> = header
        .iter()
        .map(|column| match given.iter().find(|(name, _)| name == column) {
            Some((_, value)) => value,
            None => match column.as_str() {
                "is_register" | "is_staff" | "is_superuser" => "false",
                "flag" => "1",
                "member_score"
                | "credit_score"
                | "wx_gender"
                | "love_help_num"
                | "bring_love_concern_num"
                | "token_version" => "0",
                "date_joined" => "2024-01-01 00:00:00",
                "wx_appid" => "wxdemo",
                _ => "",
            },
        })
        .collect();
    cells.join(",")
}

/// Asserts a refused import: status 1, the refused rows on stdout (exactly `rows`, in order),
/// one line on stderr counting them out of `total`.
fn refused(run: &Run, rows: &[&str], total: usize) {
    assert_eq!(run.code, Some(1), "{run:#?}");
    let listed: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(listed, rows, "{run:#?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
    let summary = format!("wxauth: {} of {total} rows of ", rows.len());
    assert!(run.stderr.starts_with(&summary), "{run:#?}");
    assert!(run.stderr.contains("refused (listed on stdout); nothing was written"), "{run:#?}");
}

// ----- django -----

#[test]
fn a_django_dump_imports_with_ids_kept_fields_mapped_and_no_password() {
    let server = Wxauth::start(&[]);
    // A user of the mini-program whose account the dump holds, as pk 40: their WeChat identity
    // is the one the fake WeChat gives demo user `moving-alice`.
    let alice =
        server.openid_for(&fresh_code("moving-alice"))["openid"].as_str().unwrap().to_string();
    let mut dump: Vec<Value> = serde_json::from_str(DJANGO_DUMP).unwrap();
    let mut alice_row = dump[1].clone();
    alice_row["pk"] = json!(40);
    alice_row["fields"]["wx_openid"] = json!(alice);
    alice_row["fields"]["username"] = json!(alice);
    dump.push(alice_row);
    // dumpdata without --indent: one line.
    let compact = write_file(&server, "users.json", &serde_json::to_string(&dump).unwrap());

    let dry = import(&server, &compact, "django", true);
    assert!(dry.success().starts_with("dry run: 4 accounts (ids 3 to 40) from "), "{dry:#?}");
    assert!(dry.stdout.contains("would be imported; nothing was written"), "{dry:#?}");
    assert_eq!(account_count(&server.database()), 0, "a dry run writes nothing");

    let run = import(&server, &compact, "django", false);
    let text = run.success();
    assert!(text.starts_with("imported 4 accounts (ids 3 to 40) from "), "{text}");
    assert!(text.contains("password hashes, first_name, last_name, email, groups and user_permissions are not kept"), "{text}");
    assert!(text.contains("1 account disabled, as is_active is false"), "{text}");
    assert!(
        text.contains(
            "their WeChat identities are mini-program wxdemo's (demo mode: no wechat.appid is configured)"
        ),
        "{text}"
    );

    let accounts = exported_accounts(&server);
    let ids: Vec<i64> = accounts.iter().map(|account| account["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [3, 7, 12, 40], "ids kept");
    let (first, empty, staff) = (&accounts[0], &accounts[1], &accounts[2]);
    // Every field as the original had it, times as UTC.
    for (field, value) in [
        ("username", json!("oDjangoUser0000000000000003")),
        ("phone", json!("13800138003")),
        ("is_register", json!(true)),
        ("is_staff", json!(false)),
        ("flag", json!(1)),
        ("avatar", json!("https://thirdwx.qlogo.cn/mmopen/vi_32/avatar3/132")),
        ("avatar_thumb", json!("https://thirdwx.qlogo.cn/mmopen/vi_32/avatar3/64")),
        ("birthday", json!("1990-05-17")),
        ("address", json!("广东省深圳市南山区科技园")),
        ("member_score", json!(120)),
        ("credit_score", json!(95)),
        ("wx_openid", json!("oDjangoUser0000000000000003")),
        ("wx_unionid", Value::Null),
        ("wx_nickname", json!("小明")),
        ("wx_gender", json!(1)),
        ("wx_avatar", json!("https://thirdwx.qlogo.cn/mmopen/vi_32/wx3/132")),
        ("wx_country", json!("China")),
        ("wx_province", json!("Guangdong")),
        ("wx_city", json!("Shenzhen")),
        ("last_ip", json!("183.14.133.7")),
        ("join_ip", json!("183.14.133.7")),
        ("love_help_num", json!(4)),
        ("bring_love_concern_num", json!(2)),
        ("last_login", json!("2023-05-01 12:34:56")),
        ("date_joined", json!("2022-11-03 08:00:00")),
        ("wx_appid", json!("wxdemo")),
        ("token_version", json!(0)),
        ("disabled_at", Value::Null),
    ] {
        assert_eq!(first[field], value, "{field}");
    }
    // Django's empty strings are null, as the API shows absent text.
    for field in ["phone", "avatar", "address", "wx_nickname", "wx_city", "last_ip", "last_login"] {
        assert_eq!(empty[field], Value::Null, "{field}");
    }
    assert_eq!(empty["join_ip"], "2408:8456:3a10:1f2e::1");
    assert_eq!(empty["date_joined"], "2023-01-15 23:59:59", "fractions dropped");
    // A phone normalised as the API stores it, `Z` and `+08:00` times, is_active false.
    assert_eq!(staff["phone"], "+8613900139012");
    assert_eq!(staff["last_login"], "2023-06-30 16:05:00");
    assert_eq!(staff["date_joined"], "2023-02-01 02:00:00");
    assert_eq!((&staff["is_staff"], &staff["member_score"]), (&json!(true), &json!(-5)));
    assert!(staff["disabled_at"].is_string(), "{staff}");

    // No password hash anywhere: not in the database, not in what the command printed.
    let stored = database_bytes(&server);
    for password in PASSWORDS {
        assert!(!stored.contains(password), "a password hash in the database");
        assert!(!run.stdout.contains(password) && !dry.stdout.contains(password));
    }
    assert!(!stored.contains("pbkdf2"));

    // The moved user's mini-program calls wx.login and get_openid_by_code as it always did, and
    // gets a token for its own account, with its id.
    let answer = server.openid_for(&fresh_code("moving-alice"));
    assert_eq!(answer["account"]["id"], 40);
    let token = answer["token"].as_str().unwrap().to_string();
    assert_eq!(login_by_token(&server, &token).result()["account"]["id"], 40);
    // A disabled account stays out.
    let login = server.post("login", &json!({"openid": "oDjangoUser0000000000000012"}));
    assert_eq!(login.status, 403, "{login:?}");
    // The next new account gets the id after the largest imported one.
    let (_, login) = server.login_as("moving-newcomer");
    assert_eq!(login["account"]["id"], 41);
}

#[test]
fn bad_rows_are_all_reported_with_their_position_and_nothing_is_written() {
    let server = Wxauth::start(&[]);
    let (existing_openid, login) = server.login_as("import-existing");
    assert_eq!(login["account"]["id"], 1);
    let good: Vec<Value> = serde_json::from_str(DJANGO_DUMP).unwrap();
    let with = |pk: i64, changes: Value| {
        let mut row = good[0].clone();
        row["pk"] = json!(pk);
        let openid = format!("oBadRow{pk:020}");
        row["fields"]["wx_openid"] = json!(openid);
        row["fields"]["username"] = json!(openid);
        for (key, value) in changes.as_object().unwrap() {
            row["fields"][key] = value.clone();
        }
        row
    };
    let mut admin = with(100, json!({"wx_openid": "", "username": "admin", "is_superuser": true}));
    admin["fields"]["password"] = json!("pbkdf2_sha256$260000$secretadminhash");
    let mut no_pk = with(113, json!({}));
    no_pk.as_object_mut().unwrap().remove("pk");
    let dump = vec![
        good[0].clone(),                                                      // 1: fine
        admin,                                                                // 2: no openid
        with(101, json!({"phone": "12-34"})),                                 // 3
        with(102, json!({"wx_nickname": "长".repeat(65)})),                   // 4
        with(103, json!({"avatar": "avatar/2023/05/a.png"})),                 // 5
        with(1, json!({})), // 6: id of the existing account
        with(104, json!({"wx_openid": existing_openid})), // 7: openid in the database
        with(105, json!({"wx_openid": "oDjangoUser0000000000000003"})), // 8: twice in the file
        with(3, json!({})), // 9: pk twice in the file
        with(106, json!({"birthday": "1990-02-30", "wx_gender": 5})), // 10: two reasons
        with(107, json!({"last_login": "2023-05-01 12:34"})), // 11
        with(108, json!({"nickname": "x"})), // 12: not a field of the model
        json!({"model": "auth.group", "pk": 1, "fields": {"name": "staff"}}), // 13
        no_pk,              // 14
        with(109, json!({"last_ip": "unknown"})), // 15
        with(110, json!({"is_active": "yes"})), // 16
        json!([1, 2]),      // 17
        with(111, json!({})), // 18: fine
    ];
    let file = write_file(&server, "bad.json", &serde_json::to_string_pretty(&dump).unwrap());
    let rows = [
        "element 2 (pk 100): no openid (wx_openid)",
        "element 3 (pk 101): phone takes a phone number: digits with an optional leading +, 5 to 20 characters once spaces and dashes are removed (or nothing, for null), not `12-34`",
        &format!(
            "element 4 (pk 102): wx_nickname takes at most 64 characters, not `{}…`",
            "长".repeat(64)
        ),
        "element 5 (pk 103): avatar takes an http:// or https:// URL (or nothing, for null), not `avatar/2023/05/a.png`",
        "element 6 (pk 1): id 1 is taken by an account in the database",
        &format!("element 7 (pk 104): openid `{existing_openid}` has account 1 in the database"),
        "element 8 (pk 105): openid `oDjangoUser0000000000000003` comes twice in the file (also id 3)",
        "element 9 (pk 3): id 3 comes twice in the file",
        "element 10 (pk 106): birthday takes a date that exists, yyyy-mm-dd (or nothing, for null), not `1990-02-30`; wx_gender takes 0 (unknown), 1 (male) or 2 (female), not `5`",
        "element 11 (pk 107): last_login takes a time, yyyy-mm-dd HH:MM:SS (UTC) or ISO 8601, not `2023-05-01 12:34`",
        "element 12 (pk 108): unknown field `nickname`",
        "element 13: model `auth.group`, not wx_auth.user (dump only the accounts: `manage.py dumpdata wx_auth.User`)",
        "element 14: no pk (dumped with --natural-primary? dump without it: ids are kept)",
        "element 15 (pk 109): last_ip takes an IPv4 or IPv6 address, not `unknown`",
        "element 16 (pk 110): is_active takes true or false",
        "element 17: not an object like dumpdata writes ({\"model\", \"pk\", \"fields\"})",
    ];
    let before = export(&server, "json");
    for dry_run in [true, false] {
        let run = import(&server, &file, "django", dry_run);
        refused(&run, &rows, dump.len());
        assert!(!run.stdout.contains("secretadminhash"));
        assert_eq!(export(&server, "json"), before, "nothing written");
    }
    assert!(!database_bytes(&server).contains("oBadRow"), "not even rolled-back rows");

    // A CSV export with bad rows: each named by the line its record starts on.
    let mut csv = export(&server, "csv");
    let header: Vec<String> = csv.lines().next().unwrap().split(',').map(str::to_string).collect();
    let row = |id: i64, openid: &str, phone: &str, nickname: &str| {
        let id = id.to_string();
        let given = [
            ("id", id.as_str()),
            ("username", openid),
            ("wx_openid", openid),
            ("phone", phone),
            ("wx_nickname", nickname),
        ];
        csv_record(&header, &given)
    };
    // Line 1 is the header, line 2 the existing account; a quoted line break makes a record of
    // two lines.
    csv.push_str(&format!("{}\r\n", row(50, "oCsv50", "13800000050", "\"two\r\nlines\"")));
    csv.push_str(&format!("{}\r\n", row(51, "oCsv51", "not a phone", "fine")));
    csv.push_str("51,short\r\n");
    csv.push_str(&format!("{}\r\n", row(53, "oCsv53", "", "'=1+1")));
    csv.push_str(&format!("{}\r\n", row(54, "oCsv53", "", "")));
    let file = write_file(&server, "bad.csv", &csv);
    let run = import(&server, &file, "csv", false);
    refused(
        &run,
        &[
            &format!(
                "line 2 (id 1): id 1 is taken by an account in the database; openid `{existing_openid}` has account 1 in the database"
            ),
            "line 3 (id 50): wx_nickname takes text without control characters, not `two\\r\\nlines`",
            "line 5 (id 51): phone takes a phone number: digits with an optional leading +, 5 to 20 characters once spaces and dashes are removed (or nothing, for null), not `not a phone`",
            "line 6: 2 fields, the header has 31",
            "line 8 (id 54): openid `oCsv53` comes twice in the file (also id 53)",
        ],
        6,
    );
    assert_eq!(export(&server, "json"), before, "nothing written");
}

// ----- csv and json: moving a deployment -----

#[test]
fn export_then_import_moves_every_account_with_its_id_and_tokens() {
    // The JWT secret is the deployment's, set on both sides: a generated one stays in the old
    // database.
    let env = [("WXAUTH_JWT_SECRET", SECRET)];
    let old = Wxauth::start(&env);
    let (_, alice_token, alice) = registered_user(&old, "move-alice", "13800138000");
    let (_, bob_first_token, bob) = registered_user(&old, "move-bob", "+86 139 0013 9000");
    let logout = old.post_with(
        "logout",
        &json!({}),
        &[("Authorization", &format!("jwt {bob_first_token}"))],
    );
    assert_eq!(logout.status, 200, "{logout:?}");
    let bob_token = old.login_as("move-bob").1["token"].as_str().unwrap().to_string();
    let (carol, _) = old.login_as("move-carol");
    run_on_database(&old, &["users", "disable", &carol]).success();
    let (dave, _) = old.login_as("move-dave");
    run_on_database(&old, &["users", "delete", &dave]).success();
    let (_, erin) = old.login_as("move-erin");
    let alice_id = alice["id"].to_string();
    // Text a spreadsheet would run, and text that starts with the CSV guard itself.
    run_on_database(&old, &["users", "set", &alice_id, "wx_nickname='=quoted", "address==SUM(A1)"])
        .success();
    let csv = export(&old, "csv");
    let json = export(&old, "json");
    assert!(csv.contains(",''=quoted,") && csv.contains(",'=SUM(A1),"), "{csv}");
    let largest = erin["account"]["id"].as_i64().unwrap();

    for (format, text) in [("csv", &csv), ("json", &json)] {
        let new = Wxauth::start(&env);
        let file = write_file(&new, &format!("moved.{format}"), text);
        let run = import(&new, &file, format, false);
        assert!(
            run.success().starts_with(&format!("imported 4 accounts (ids 1 to {largest}) from "))
        );
        assert_eq!(export(&new, "csv"), csv, "{format}: the same accounts, column for column");
        assert_eq!(export(&new, "json"), json, "{format}");

        // Tokens issued before the move verify after it; revoked ones stay revoked, disabled
        // accounts disabled.
        assert_eq!(login_by_token(&new, &alice_token).result()["account"]["id"], alice["id"]);
        assert_eq!(login_by_token(&new, &bob_token).result()["account"]["id"], bob["id"]);
        login_by_token(&new, &bob_first_token).assert_error(403, "token_revoked");
        new.get(&format!("get_openid_by_code?code={}", fresh_code("move-carol")))
            .assert_error(403, "account_disabled");
        // New accounts continue after the largest id imported.
        assert_eq!(new.login_as("move-frank").1["account"]["id"], largest + 1);
    }
}

#[test]
fn import_usage_errors_exit_2_and_unreadable_files_exit_1() {
    let dir = TempDir::new();
    for (arguments, reason) in [
        (&["users", "import"][..], "users needs a FILE to import"),
        (&["users", "import", "f.json"], "users import needs --format django, csv or json"),
        (
            &["users", "import", "f.json", "--format", "xml"],
            "--format must be django, csv or json, not `xml`",
        ),
        (
            &["users", "import", "f.json", "--format", "json", "--dry-run=yes"],
            "--dry-run takes no value",
        ),
        (
            &["users", "import", "f", "--format", "json", "--dry-run", "--dry-run"],
            "--dry-run given twice",
        ),
        (&["users", "import", "a", "b", "--format", "json"], "unexpected argument `b`"),
        (&["users", "export", "--format", "csv", "--dry-run"], "--dry-run does not apply to users"),
    ] {
        let run = run_in(&dir.0, arguments, &[]);
        assert_eq!(run.code, Some(2), "{arguments:?}: {run:#?}");
        assert_eq!(run.stdout, "", "{run:#?}");
        let first = run.stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("wxauth: ") && first.contains(reason), "{reason:?}: {run:#?}");
        assert!(run.stderr.contains("wxauth users import FILE --format django|csv|json"));
    }
    let help = run_in(&dir.0, &["help", "users", "import"], &[]);
    assert!(help.success().contains("manage.py dumpdata wx_auth.User"), "{help:#?}");

    let server = Wxauth::start(&[]);
    let file = |name: &str, text: &str| write_file(&server, name, text);
    for (path, format, reason) in [
        ("missing.json".to_string(), "json", "cannot read missing.json".to_string()),
        (file("cut.json", "[{\"id\": 1,\n"), "json", "EOF while parsing a value at line 2".into()),
        (
            file("object.json", "{}"),
            "django",
            "invalid type: map, expected a JSON array of accounts".into(),
        ),
        (file("after.json", "[] []"), "json", "trailing characters at line 1 column 4".into()),
        (file("foo.csv", "id,foo\r\n"), "csv", "line 1: unknown column `foo`".into()),
        (file("few.csv", "id,username\r\n"), "csv", "line 1: no column phone, is_register".into()),
        (file("empty.csv", ""), "csv", "empty: no header line".into()),
    ] {
        let run = import(&server, &path, format, false);
        run.failure(&reason);
    }
    let header = export(&server, "csv");
    let quote = file("quote.csv", &format!("{header}1,a\"b\r\n"));
    import(&server, &quote, "csv", false)
        .failure("line 2: a quote inside a field that does not start with one");
    let open = file("open.csv", &format!("{header}1,\"a\r\n\r\n"));
    import(&server, &open, "csv", false).failure("line 2: a quoted field is not closed by the end");
    assert_eq!(account_count(&server.database()), 0);
}

// ----- identities in other mini-programs -----

/// The default app's prefix, beside `SHOP`'s.
const MAIN: &str = "/miniprog/wx_auth/";

/// A person who used two mini-programs has one account with an identity in each: an export
/// lists the one that did not make the account (`identities`), and an import into a new
/// database gives it back, so that the person's next login through the second app, by openid
/// alone (no WeChat session there to join by unionid), finds the same account.
#[test]
fn export_then_import_keeps_the_identities_an_account_has_in_other_apps() {
    let env = [SHOP, ("WXAUTH_OPENID_LOGIN", "open"), ("WXAUTH_JWT_SECRET", SECRET)];
    let old = Wxauth::start(&env);
    let (main_openid, main) = login_through(&old, MAIN, "ivy");
    let (shop_openid, shop) = login_through(&old, SHOP.1, "ivy");
    let id = main["account"]["id"].clone();
    assert_eq!(shop["account"]["id"], id, "one person, one account");
    login_through(&old, MAIN, "jack");
    let json = export(&old, "json");
    let csv = export(&old, "csv");

    let accounts: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(
        accounts[0]["identities"],
        json!([{"appid": "wxdemo_shop", "openid": shop_openid}]),
        "{json}"
    );
    assert_eq!(accounts[1]["identities"], json!([]), "{json}");
    let records = parse_csv(&csv);
    assert_eq!(records[0].last().map(String::as_str), Some("identities"), "{csv}");
    assert_eq!(records[1].last(), Some(&format!("wxdemo_shop:{shop_openid}")), "{csv}");
    assert_eq!(records[2].last().map(String::as_str), Some(""), "{csv}");

    for (format, text) in [("csv", &csv), ("json", &json)] {
        let new = Wxauth::start(&env);
        let file = write_file(&new, &format!("moved.{format}"), text);
        let run = import(&new, &file, format, false);
        assert!(run.success().starts_with("imported 2 accounts (ids 1 to 2) from "), "{run:#?}");
        let shown = run_on_database(&new, &["users", "show", &id.to_string()]);
        let shown: Value = serde_json::from_str(shown.success()).unwrap();
        assert_eq!(
            shown["identities"],
            json!([
                {"appid": "wxdemo", "openid": main_openid},
                {"appid": "wxdemo_shop", "openid": shop_openid},
            ]),
            "{format}"
        );
        assert_eq!(export(&new, "json"), json, "{format}");
        assert_eq!(export(&new, "csv"), csv, "{format}");
        let login =
            call(&new, "POST", SHOP.1, "login", Some(&json!({"openid": shop_openid})), None);
        assert_eq!(login.result()["account"]["id"], id, "{format}: the same account");
        assert_eq!(login.result()["account"]["wx_openid"], json!(shop_openid), "{format}");
        assert_eq!(account_count(&new.database()), 2, "{format}: no new account");
    }
}

/// An extra identity that is malformed, the account's own, twice in its row, taken in the
/// database or taken by an earlier row refuses its row, named with the reason; nothing is
/// written, and a dry run says the same.
#[test]
fn an_identity_malformed_or_taken_refuses_its_row_and_nothing_is_written() {
    let server = Wxauth::start(&[SHOP, ("WXAUTH_OPENID_LOGIN", "open")]);
    let (kim, _) = login_through(&server, SHOP.1, "kim");
    let identity = |appid: &str, openid: &str| json!({"appid": appid, "openid": openid});
    let row = |id: i64, identities: Value| json!({"id": id, "wx_openid": format!("oIdent{id}"), "identities": identities});
    let long = "o".repeat(65);
    let rows = vec![
        row(10, json!([identity("wxdemo_shop", "oIdentShop10")])), // 1: fine
        row(11, json!([identity("wxdemo_shop", &kim)])),           // 2: in the database
        row(12, json!([identity("wxdemo_shop", "oIdentShop10")])), // 3: row 1's extra one
        row(13, json!([identity("wxdemo", "oIdent10")])),          // 4: row 1's own one
        row(14, json!([identity("wxdemo", "oIdent14")])),          // 5: its own
        row(15, json!([identity("wxdemo_shop", "o15"), identity("wxdemo_shop", "o15")])), // 6
        row(16, json!([identity("wx shop", "o16")])),              // 7
        row(17, json!([{"appid": "wxdemo_shop"}])),                // 8
        row(18, json!(5)),                                         // 9
        row(19, json!([identity("wxdemo_shop", &long)])),          // 10
        row(20, json!([identity("", "o20")])),                     // 11
        // 12: an own identity that row 1 has as an extra one.
        json!({"id": 21, "wx_openid": "oIdentShop10", "wx_appid": "wxdemo_shop"}),
        row(22, json!([])),                                // 13: fine
        row(23, json!([identity("wxdemo_shop", "o:23")])), // 14
    ];
    let file = write_file(&server, "identities.json", &serde_json::to_string(&rows).unwrap());
    let before = export(&server, "json");
    let refusals = [
        format!("element 2 (id 11): identity `wxdemo_shop:{kim}` has account 1 in the database"),
        "element 3 (id 12): identity `wxdemo_shop:oIdentShop10` comes twice in the file (also id 10)".into(),
        "element 4 (id 13): identity `wxdemo:oIdent10` comes twice in the file (also id 10)".into(),
        "element 5 (id 14): identity `wxdemo:oIdent14` is the account's own (wx_appid and wx_openid)".into(),
        "element 6 (id 15): identity `wxdemo_shop:o15` comes twice in identities".into(),
        "element 7 (id 16): an identity's appid takes 1 to 64 characters without spaces, colons or control characters, not `wx shop`".into(),
        "element 8 (id 17): identities takes an array of {\"appid\", \"openid\"} objects, not `{\"appid\":\"wxdemo_shop\"}`".into(),
        "element 9 (id 18): identities takes an array of {\"appid\", \"openid\"} objects, not `5`".into(),
        format!("element 10 (id 19): an identity's openid takes 1 to 64 characters without spaces, colons or control characters, not `{}…`", "o".repeat(64)),
        "element 11 (id 20): an identity's appid takes 1 to 64 characters without spaces, colons or control characters, not ``".into(),
        "element 12 (id 21): openid `oIdentShop10` comes twice in the file (also id 10)".into(),
        "element 14 (id 23): an identity's openid takes 1 to 64 characters without spaces, colons or control characters, not `o:23`".into(),
    ];
    let refusals: Vec<&str> = refusals.iter().map(String::as_str).collect();
    for dry_run in [true, false] {
        let run = import(&server, &file, "json", dry_run);
        refused(&run, &refusals, rows.len());
        assert_eq!(export(&server, "json"), before, "nothing written");
    }
    assert!(!database_bytes(&server).contains("oIdentShop10"), "not even rolled-back rows");

    // The same in CSV, each row named by its line.
    let export_csv = export(&server, "csv");
    let header: Vec<String> =
        export_csv.lines().next().unwrap().split(',').map(str::to_string).collect();
    let line = |id: i64, identities: &str| {
        let (openid, id) = (format!("oCsv{id}"), id.to_string());
        let given = [
            ("id", id.as_str()),
            ("username", &openid),
            ("wx_openid", &openid),
            ("identities", identities),
        ];
        csv_record(&header, &given)
    };
    let mut csv = export_csv.clone();
    for (id, identities) in [
        (30, "wxdemo_shop:oCsvShop30 wxother:oCsvOther30"), // line 3: fine
        (31, &format!("wxdemo_shop:{kim}") as &str),        // line 4
        (32, "wxother:oCsvOther30"),                        // line 5
        (33, "wxdemo_shop"),                                // line 6
        (34, "wxdemo_shop:o34  wxother:o34"),               // line 7
        (35, "wxdemo:oCsv35"),                              // line 8
        (36, "wxdemo_shop:o\u{7}36"),                       // line 9
        (37, ""),                                           // line 10: fine
    ] {
        csv.push_str(&format!("{}\r\n", line(id, identities)));
    }
    let file = write_file(&server, "identities.csv", &csv);
    for dry_run in [true, false] {
        let run = import(&server, &file, "csv", dry_run);
        refused(
            &run,
            &[
                &format!(
                    "line 2 (id 1): id 1 is taken by an account in the database; openid `{kim}` has account 1 in the database"
                ),
                &format!(
                    "line 4 (id 31): identity `wxdemo_shop:{kim}` has account 1 in the database"
                ),
                "line 5 (id 32): identity `wxother:oCsvOther30` comes twice in the file (also id 30)",
                "line 6 (id 33): identities takes appid:openid pairs separated by single spaces, not `wxdemo_shop`",
                "line 7 (id 34): identities takes appid:openid pairs separated by single spaces, not ``",
                "line 8 (id 35): identity `wxdemo:oCsv35` is the account's own (wx_appid and wx_openid)",
                "line 9 (id 36): an identity's openid takes 1 to 64 characters without spaces, colons or control characters, not `o\\u{7}36`",
            ],
            9,
        );
        assert_eq!(export(&server, "json"), before, "nothing written");
    }
}

/// A file exported before `identities` was a column (or by hand without it) still imports: its
/// accounts get their own identity each, and export with no other.
#[test]
fn an_export_without_identities_still_imports() {
    let old = Wxauth::start(&[]);
    old.login_as("old-lena");
    old.login_as("old-milo");
    let json: Vec<Value> = serde_json::from_str(&export(&old, "json")).unwrap();
    let csv = export(&old, "csv");
    let without_json: Vec<Value> = json
        .iter()
        .map(|account| {
            let mut account = account.clone();
            account.as_object_mut().unwrap().remove("identities");
            account
        })
        .collect();
    let without_json = serde_json::to_string(&without_json).unwrap();
    // Without the last column: its name, and each row's (empty) field.
    assert!(csv.lines().next().unwrap().ends_with(",identities"), "{csv}");
    let without_csv: String =
        csv.lines().map(|line| format!("{}\r\n", &line[..line.rfind(',').unwrap()])).collect();
    assert!(!without_json.contains("identities") && !without_csv.contains("identities"));

    for (format, text) in [("csv", &without_csv), ("json", &without_json)] {
        let new = Wxauth::start(&[]);
        let file = write_file(&new, &format!("old.{format}"), text);
        let run = import(&new, &file, format, false);
        assert!(run.success().starts_with("imported 2 accounts (ids 1 to 2) from "), "{run:#?}");
        let exported: Vec<Value> = serde_json::from_str(&export(&new, "json")).unwrap();
        for (account, old_account) in exported.iter().zip(&json) {
            assert_eq!(account["identities"], json!([]), "{format}: {account}");
            let mut account = account.clone();
            account.as_object_mut().unwrap().remove("identities");
            let mut old_account = old_account.clone();
            old_account.as_object_mut().unwrap().remove("identities");
            assert_eq!(account, old_account, "{format}");
        }
        let shown = run_on_database(&new, &["users", "show", "1"]);
        let shown: Value = serde_json::from_str(shown.success()).unwrap();
        assert_eq!(
            shown["identities"],
            json!([{"appid": "wxdemo", "openid": json[0]["wx_openid"]}])
        );
    }
}

// ----- memory -----

/// The address space `an_import_holds_one_row_at_a_time_whatever_the_file_size` gives the
/// command: about twice what a streaming import of any size takes (a debug build maps about 24
/// MiB), and well under what holding 20,000 parsed rows takes (over 100 MiB).
const ADDRESS_SPACE: u64 = 48 << 20;

/// A file of any size imports in the memory of one row: 20,000 accounts (14 MB of JSON, over
/// 100 MB as parsed values) go in with the command's address space capped at 48 MiB
/// (`RLIMIT_AS`, which, unlike the peak RSS a parent reads after `wait4`, counts the command
/// alone from its exec). A million rows take the same memory; `bench/import` times them.
#[test]
fn an_import_holds_one_row_at_a_time_whatever_the_file_size() {
    use std::os::unix::process::CommandExt;
    let rows = 20_000;
    let server = Wxauth::start(&[]);
    let mut text = String::from("[\n");
    for id in 1..=rows {
        let openid = format!("oMany{id:023}");
        let account = json!({
            "id": id, "username": openid, "phone": format!("+86138{id:08}"), "is_register": true,
            "is_staff": false, "is_superuser": false, "flag": 1,
            "avatar": format!("https://example.com/avatars/{id}.png"), "avatar_thumb": null,
            "birthday": "1990-01-01", "address": format!("{id} Example Road, Shenzhen"),
            "member_score": id % 100, "credit_score": 0, "wx_openid": openid,
            "wx_unionid": format!("uMany{id:023}"), "wx_nickname": format!("user {id}"),
            "wx_gender": 1, "wx_avatar": null, "wx_country": "China", "wx_province": "Guangdong",
            "wx_city": "Shenzhen", "last_ip": "203.0.113.9", "join_ip": "203.0.113.9",
            "love_help_num": 0, "bring_love_concern_num": 0, "last_login": "2024-01-02 03:04:05",
            "date_joined": "2023-01-02 03:04:05", "wx_appid": "wxdemo", "token_version": 0,
            "disabled_at": null,
        });
        if id > 1 {
            text.push_str(",\n");
        }
        text.push_str(&account.to_string());
    }
    text.push_str("\n]\n");
    let file = write_file(&server, "many.json", &text);
    let password = Mysql::from_env().map(|mysql| mysql.password).unwrap_or_default();
    let mut command = Command::new(binary());
    command
        .args(["users", "import", &file, "--format", "json"])
        .current_dir(&server.dir.0)
        .env_clear()
        .env("WXAUTH_DATABASE", server.dir.database_setting())
        .env("WXAUTH_DATABASE_PASSWORD", password)
        .stdin(Stdio::null());
    // SAFETY: between fork and exec the closure only calls setrlimit, which is
    // async-signal-safe, on a value it owns.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: ADDRESS_SPACE, rlim_max: ADDRESS_SPACE };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let output = command.output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{:?}\n{stdout}{stderr}", output.status);
    assert_eq!(stdout, format!("imported {rows} accounts (ids 1 to {rows}) from {file}\n"));
    assert_eq!(account_count(&server.database()), rows);
    assert_eq!(server.login_as("many-new").1["account"]["id"], rows + 1);
}
