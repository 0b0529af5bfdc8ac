//! The operator's commands besides `serve`: `check-config`, `users
//! list|show|find|export|set|revoke|disable|enable|delete|import` (import's reading is
//! import.rs), `backup`, `restore` and `migrate`.
//! main.rs parses the command line into the typed arguments here (`parse_edit` checks a `users
//! set` value as the API checks it); each command writes what it has to say to the `out` main
//! hands it (a buffered stdout) and returns a one-line reason on failure. Nothing here prints,
//! exits or holds SQL (that is `store`).
//!
//! No command creates a database: a mistyped `database` path fails with a clear reason instead
//! of answering from a new, empty file (`wxauth serve` is what creates one; `restore` puts a
//! backup where there was none). The commands that write refuse a file that is not safely theirs,
//! as the server does (`store::Opener::Operator`: root may write to the service user's file).
//! Reads use a read-only connection, so they never hold the write lock. The `users` commands that
//! write do all of it in one transaction (`store::in_transaction`), waiting up to the busy
//! timeout for the server's writer, so they work while the server runs; `restore` refuses to run
//! while anything has the database open. Nothing here shows a secret: the configuration is
//! printed redacted, and accounts as the API shows them (with `disabled_at` when disabled; an
//! export adds `wx_appid`, `token_version`, `disabled_at` and `identities`, the account's WeChat
//! identities besides its own, which an import needs to put an account back whole), which leaves
//! out session keys (another table, never joined).

use std::io::Write;

use serde::Serialize;

use crate::api;
use crate::config::{self, Config};
use crate::error::{Error, Fatal};
use crate::import::{self, ImportFormat};
use crate::store::{self, Account, AccountQuery, Connection, Edit, EditValue};
use crate::time;

/// What `wxauth users …` asks for.
pub(crate) enum UsersAction {
    /// A readable table of `limit` accounts from `offset`, by id.
    List { limit: u64, offset: u64 },
    /// One account as JSON, by id or openid.
    Show { who: String },
    /// Every account, streamed.
    Export { format: ExportFormat },
    /// The accounts that match `query` (by any kind, or by `by`), as `list` shows them.
    Find { query: String, by: Option<FindBy> },
    /// Changes fields of one account, by id or openid, and shows it after.
    Set { who: String, edits: Vec<Edit> },
    /// Revoke every token issued to the account, by id or openid, so far and end the sign-in that
    /// produced them, as the API's logout does.
    Revoke { who: String },
    /// Disable the account, by id or openid: it cannot log in, register or use its tokens.
    Disable { who: String },
    /// Enable a disabled account again.
    Enable { who: String },
    /// Delete the account, by id or openid, its identities and their recorded WeChat sessions.
    Delete { who: String },
    /// Load the accounts of `file`, all or none; with `dry_run`, only say what would happen.
    Import { file: String, format: ImportFormat, dry_run: bool },
}

/// What `users find --by` looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FindBy {
    /// The phone, normalised as the API stores it.
    Phone,
    Openid,
    Unionid,
    /// A part of `wx_nickname`.
    Nickname,
}

impl FindBy {
    /// The `--by` value that names each kind.
    pub(crate) const NAMES: [(&str, FindBy); 4] = [
        ("phone", FindBy::Phone),
        ("openid", FindBy::Openid),
        ("unionid", FindBy::Unionid),
        ("nickname", FindBy::Nickname),
    ];
}

/// What an account field takes, for `users set` and `users import`. Each follows the API's check
/// of the same field (api.rs) and the schema's CHECK on its column (schema.sql).
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    /// Text of at most `max` characters without control characters; empty is null, or refused
    /// when `required`.
    Text { max: usize, required: bool },
    /// An `http://` or `https://` URL of at most `max` characters (`api::is_web_url`); empty is
    /// null.
    Url { max: usize },
    /// A phone number, normalised as the API does (`api::normalize_phone`); empty is null.
    Phone,
    /// A date that exists, `yyyy-mm-dd`; empty is null.
    Date,
    /// `1`/`true`/`yes` or `0`/`false`/`no`.
    Flag,
    /// 0 unknown, 1 male, 2 female.
    Gender,
    /// A whole number (i64).
    Integer,
    /// An account id: a whole number from 1.
    Id,
    /// A whole number from 0 (a token version).
    Count,
    /// An openid or unionid as WeChat gives them and the API takes them (`api::is_openid`);
    /// empty is null.
    Openid,
    /// An IPv4 or IPv6 address; empty is null.
    Ip,
    /// A time as `users export` writes it (`yyyy-mm-dd HH:MM:SS`, UTC) or in ISO 8601 as Django
    /// writes it (`time::parse_datetime`), kept as Unix seconds; empty is null.
    Datetime,
}

/// The account fields `users set` changes, in the account object's order. Not the identity
/// (`id`, `wx_appid`, `wx_openid`, `wx_unionid`, which WeChat gives) nor what wxauth records
/// itself (`last_login`, `last_ip`, `join_ip`, `date_joined`).
const EDITABLE: [(&str, Kind); 20] = [
    ("username", Kind::Text { max: 150, required: true }),
    ("phone", Kind::Phone),
    ("is_register", Kind::Flag),
    ("is_staff", Kind::Flag),
    ("is_superuser", Kind::Flag),
    ("flag", Kind::Integer),
    ("avatar", Kind::Url { max: api::MAX_AVATAR }),
    ("avatar_thumb", Kind::Url { max: api::MAX_AVATAR }),
    ("birthday", Kind::Date),
    ("address", Kind::Text { max: 256, required: false }),
    ("member_score", Kind::Integer),
    ("credit_score", Kind::Integer),
    ("wx_nickname", Kind::Text { max: api::MAX_NICKNAME, required: false }),
    ("wx_gender", Kind::Gender),
    ("wx_avatar", Kind::Url { max: api::MAX_AVATAR }),
    ("wx_country", Kind::Text { max: api::MAX_REGION, required: false }),
    ("wx_province", Kind::Text { max: api::MAX_REGION, required: false }),
    ("wx_city", Kind::Text { max: api::MAX_REGION, required: false }),
    ("love_help_num", Kind::Integer),
    ("bring_love_concern_num", Kind::Integer),
];

/// The columns `users set` leaves alone and `users import` writes: the identity, what wxauth
/// records itself, and the hidden ones (`users export` writes these last three after the account
/// object's fields).
const RECORDED: [(&str, Kind); 10] = [
    ("id", Kind::Id),
    ("wx_openid", Kind::Openid),
    ("wx_unionid", Kind::Openid),
    ("last_ip", Kind::Ip),
    ("join_ip", Kind::Ip),
    ("last_login", Kind::Datetime),
    ("date_joined", Kind::Datetime),
    ("wx_appid", Kind::Text { max: 64, required: true }),
    ("token_version", Kind::Count),
    ("disabled_at", Kind::Datetime),
];

/// What `users export` writes after the account object's fields, so that an import puts back
/// every column and identity: the mini-program, the token version (tokens issued before still
/// verify), when the account was disabled, and the account's identities other than its own (in
/// the other mini-programs its person has used: `Exported`).
pub(crate) const EXPORTED_AFTER: [&str; 4] =
    ["wx_appid", "token_version", "disabled_at", "identities"];

/// How `users import` checks `field`, for every column of an account; `None` for anything else.
pub(crate) fn field_kind(field: &str) -> Option<Kind> {
    EDITABLE.iter().chain(&RECORDED).find(|(name, _)| *name == field).map(|(_, kind)| *kind)
}

/// One `FIELD=VALUE` of `users set`, checked: the reason it is refused otherwise, naming the
/// field and what it takes.
pub(crate) fn parse_edit(argument: &str) -> Result<Edit, String> {
    let Some((name, value)) = argument.split_once('=') else {
        return Err(format!("users set takes FIELD=VALUE, not `{argument}`"));
    };
    let Some(&(field, kind)) = EDITABLE.iter().find(|(field, _)| *field == name) else {
        let fields: Vec<&str> = EDITABLE.iter().map(|(field, _)| *field).collect();
        return Err(format!("users set cannot change `{name}`; it changes {}", fields.join(", ")));
    };
    let value = check_field(field, kind, &serde_json::Value::String(value.to_string()))?;
    Ok(Edit { field, value })
}

/// `value` checked as `kind`: text as text (empty or null is null, when the kind allows it), and
/// numbers, booleans and times from text too (a CSV cell, a `users set` argument) or from JSON's
/// own types. Times become Unix seconds. Otherwise the reason, naming the field, what it takes and
/// the value (cut at 64 characters).
pub(crate) fn check_field(
    field: &str,
    kind: Kind,
    value: &serde_json::Value,
) -> Result<EditValue, String> {
    use serde_json::Value;
    let refuse = |takes: &str| {
        let text = match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        Err(format!("{field} takes {takes}, not `{}`", shown(&text)))
    };
    let text = match value {
        Value::String(text) => Some(text.as_str()),
        _ => None,
    };
    let empty = matches!(value, Value::Null) || text == Some("");
    // A whole number, from JSON's numbers or from text.
    let whole = match value {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.parse::<i64>().ok(),
        _ => None,
    };
    let null = Ok(EditValue::Text(None));
    match kind {
        Kind::Text { required: true, .. } if empty => refuse("a non-empty text"),
        Kind::Text { .. }
        | Kind::Url { .. }
        | Kind::Date
        | Kind::Phone
        | Kind::Openid
        | Kind::Ip
        | Kind::Datetime
            if empty =>
        {
            null
        }
        Kind::Phone => {
            let raw = match value {
                Value::Number(number) if number.is_u64() => Some(number.to_string()),
                _ => text.map(str::to_string),
            };
            match raw.as_deref().and_then(api::normalize_phone) {
                Some(phone) => Ok(EditValue::Text(Some(phone))),
                None => refuse(
                    "a phone number: digits with an optional leading +, 5 to 20 characters once spaces and dashes are removed (or nothing, for null)",
                ),
            }
        }
        _ if text.is_none() && matches!(kind, Kind::Text { .. } | Kind::Url { .. }) => {
            refuse("text")
        }
        Kind::Text { max, .. } | Kind::Url { max } if value_chars(text) > max => {
            refuse(&format!("at most {max} characters"))
        }
        Kind::Text { .. } if text.is_some_and(|text| text.chars().any(char::is_control)) => {
            refuse("text without control characters")
        }
        Kind::Text { .. } => Ok(EditValue::Text(text.map(str::to_string))),
        Kind::Url { .. } if !text.is_some_and(api::is_web_url) => {
            refuse("an http:// or https:// URL (or nothing, for null)")
        }
        Kind::Url { .. } => Ok(EditValue::Text(text.map(str::to_string))),
        Kind::Date if !text.is_some_and(time::is_valid_date) => {
            refuse("a date that exists, yyyy-mm-dd (or nothing, for null)")
        }
        Kind::Date => Ok(EditValue::Text(text.map(str::to_string))),
        Kind::Flag => match (value, text, whole) {
            (Value::Bool(flag), _, _) => Ok(EditValue::Integer(i64::from(*flag))),
            (_, Some("true" | "yes"), _) => Ok(EditValue::Integer(1)),
            (_, Some("false" | "no"), _) => Ok(EditValue::Integer(0)),
            (_, _, Some(flag @ (0 | 1))) => Ok(EditValue::Integer(flag)),
            _ => refuse("1, true or yes, or 0, false or no"),
        },
        Kind::Gender => match whole {
            Some(gender @ 0..=2) => Ok(EditValue::Integer(gender)),
            _ => refuse("0 (unknown), 1 (male) or 2 (female)"),
        },
        Kind::Integer => match whole {
            Some(number) => Ok(EditValue::Integer(number)),
            None => refuse("a whole number"),
        },
        Kind::Id => match whole {
            Some(number) if number >= 1 => Ok(EditValue::Integer(number)),
            _ => refuse("a whole number from 1"),
        },
        Kind::Count => match whole {
            Some(number) if number >= 0 => Ok(EditValue::Integer(number)),
            _ => refuse("a whole number from 0"),
        },
        Kind::Openid => match text {
            Some(openid) if api::is_openid(openid) => Ok(EditValue::Text(Some(openid.into()))),
            _ => refuse("letters, digits, - and _, at most 64"),
        },
        Kind::Ip => match text.map(str::parse::<std::net::IpAddr>) {
            Some(Ok(_)) => Ok(EditValue::Text(text.map(str::to_string))),
            _ => refuse("an IPv4 or IPv6 address"),
        },
        Kind::Datetime => match text.and_then(time::parse_datetime) {
            Some(seconds) => Ok(EditValue::Integer(seconds)),
            None => refuse("a time, yyyy-mm-dd HH:MM:SS (UTC) or ISO 8601"),
        },
    }
}

/// A value as a reason shows it: on one line however long it is and whatever it holds (control
/// characters escaped), cut at 64 characters.
pub(crate) fn shown(text: &str) -> String {
    let mut cut = String::new();
    for character in text.chars().take(64) {
        match character {
            control if control.is_control() => cut.extend(control.escape_default()),
            other => cut.push(other),
        }
    }
    if text.chars().count() > 64 {
        cut.push('…');
    }
    cut
}

fn value_chars(text: Option<&str>) -> usize {
    text.map_or(0, |text| text.chars().count())
}

#[derive(Clone, Copy)]
pub(crate) enum ExportFormat {
    /// A header row, then one row per account; RFC 4180 (CRLF line ends, quoting as needed),
    /// text that would start a spreadsheet formula prefixed with `'` (`push_csv_field`).
    Csv,
    /// One JSON array with one account object per line.
    Json,
}

/// `wxauth check-config`: loads the configuration exactly as `serve` does and prints it, as
/// TOML with every secret redacted. An invalid configuration is the error, naming the key.
pub(crate) fn check_config(path: Option<&str>, out: &mut dyn Write) -> Result<(), Fatal> {
    let config = config::load(path)?;
    let source = match path {
        Some(path) => path.to_string(),
        None if std::path::Path::new("wxauth.toml").is_file() => "./wxauth.toml".to_string(),
        None => "the built-in defaults".to_string(),
    };
    let mut text = format!(
        "# The configuration is valid. Effective values, from {source} and WXAUTH_* variables;\n\
         # secrets are shown as \"<redacted>\" (or \"\" when not set).\n"
    );
    if config.demo_mode() {
        text.push_str(
            "# Demo mode: no WeChat appid and secret, so the built-in fake WeChat answers.\n",
        );
    }
    // Config's Debug is the TOML of every key with the secrets replaced (config.rs).
    text.push_str(&format!("{config:?}"));
    out.write_all(text.as_bytes()).map_err(write_failed)
}

/// `wxauth users …` against `config.database`.
pub(crate) fn users(
    config: &Config,
    action: UsersAction,
    out: &mut dyn Write,
) -> Result<(), Fatal> {
    match action {
        UsersAction::List { limit, offset } => list(&open_for_reading(config)?, limit, offset, out),
        UsersAction::Show { who } => show(&open_for_reading(config)?, &who, out),
        UsersAction::Export { format } => export(&open_for_reading(config)?, format, out),
        UsersAction::Find { query, by } => {
            find_matching(&open_for_reading(config)?, &query, by, out)
        }
        UsersAction::Set { who, edits } => set(config, &who, &edits, out),
        UsersAction::Revoke { who } => revoke(config, &who, out),
        UsersAction::Disable { who } => disable(config, &who, out),
        UsersAction::Enable { who } => enable(config, &who, out),
        UsersAction::Delete { who } => delete(config, &who, out),
        UsersAction::Import { file, format, dry_run } => {
            import::import(config, &file, format, dry_run, out)
        }
    }
}

/// The header of `list` and `find`, whose rows `write_row` writes.
fn write_header(out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>8}  {:<32}  {:<20}  {:<10}  {:<19}  last_login",
        "id", "openid", "phone", "registered", "date_joined"
    )
}

fn write_row(out: &mut dyn Write, account: &Account) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>8}  {:<32}  {:<20}  {:<10}  {:<19}  {}",
        account.id,
        account.wx_openid,
        account.phone.as_deref().unwrap_or("-"),
        if account.is_register { "yes" } else { "no" },
        time::format_datetime(account.date_joined),
        account.last_login.map_or_else(|| "-".to_string(), time::format_datetime),
    )
}

fn list(
    connection: &Connection,
    limit: u64,
    offset: u64,
    out: &mut dyn Write,
) -> Result<(), Fatal> {
    let total = store::account_counts(connection)?.accounts;
    write_header(out).map_err(write_failed)?;
    let mut shown = 0u64;
    store::each_account(connection, Some(limit), offset, |account, _| {
        shown += 1;
        write_row(out, &account).map_err(write_error)
    })?;
    let end = offset + shown;
    let summary = match shown {
        0 => format!("no accounts from offset {offset} ({total} in all)"),
        // The count and the page are read apart, so accounts made in between can make the page
        // end past the count; a next page is offered only when the count says there is more.
        _ if end >= total.max(0) as u64 => format!("accounts {} to {end} of {total}", offset + 1),
        _ => format!(
            "accounts {} to {end} of {total} (--offset {end} for the next page)",
            offset + 1
        ),
    };
    writeln!(out, "{summary}").map_err(write_failed)
}

fn show(connection: &Connection, who: &str, out: &mut dyn Write) -> Result<(), Fatal> {
    let account = find(connection, who)?;
    write_account(&account, &store::identities_of(connection, account.id)?, out)
}

/// The account as JSON: the API's account object, and after its fields `disabled_at` (as account
/// times are written) when it is disabled, which the API never shows, and `identities`, every
/// WeChat identity of the account (`appid` and `openid`; one per mini-program it has used).
fn write_account(
    account: &Account,
    identities: &[(String, String)],
    out: &mut dyn Write,
) -> Result<(), Fatal> {
    let mut text = serde_json::to_string_pretty(account)
        .map_err(|error| Fatal::Other(format!("cannot show account {}: {error}", account.id)))?;
    if let Some(at) = account.disabled_at
        && let Some(fields) = text.strip_suffix("\n}")
    {
        text = format!("{fields},\n  \"disabled_at\": \"{}\"\n}}", time::format_datetime(at));
    }
    let identities: Vec<Identity> = identities.iter().map(Identity::of).collect();
    if let Some(fields) = text.strip_suffix("\n}") {
        let listed = serde_json::to_string_pretty(&identities).map_err(|error| {
            Fatal::Other(format!("cannot show account {}: {error}", account.id))
        })?;
        text = format!("{fields},\n  \"identities\": {}\n}}", listed.replace('\n', "\n  "));
    }
    writeln!(out, "{text}").map_err(write_failed)
}

/// `users find`: every account whose phone, openid, unionid or nickname matches `query` (or, with
/// `by`, that one), as `list` shows them; none is a failure.
fn find_matching(
    connection: &Connection,
    query: &str,
    by: Option<FindBy>,
    out: &mut dyn Write,
) -> Result<(), Fatal> {
    let text = Some(query.to_string());
    let search = match by {
        None => AccountQuery {
            phone: api::normalize_phone(query),
            openid: text.clone(),
            unionid: text.clone(),
            nickname: text,
        },
        Some(FindBy::Phone) => AccountQuery {
            phone: Some(api::normalize_phone(query).ok_or_else(|| {
                Fatal::Other(format!("`{query}` is not a phone number as the API stores them"))
            })?),
            ..AccountQuery::default()
        },
        Some(FindBy::Openid) => AccountQuery { openid: text, ..AccountQuery::default() },
        Some(FindBy::Unionid) => AccountQuery { unionid: text, ..AccountQuery::default() },
        Some(FindBy::Nickname) => AccountQuery { nickname: text, ..AccountQuery::default() },
    };
    let accounts = store::find_accounts(connection, &search)?;
    if accounts.is_empty() {
        let kind = match by {
            None => "phone, openid, unionid or nickname".to_string(),
            Some(by) => FindBy::NAMES
                .iter()
                .find(|(_, kind)| *kind == by)
                .map_or_else(String::new, |(name, _)| name.to_string()),
        };
        return Err(Fatal::Other(format!("no account whose {kind} matches `{query}`")));
    }
    write_header(out).map_err(write_failed)?;
    for account in &accounts {
        write_row(out, account).map_err(write_failed)?;
    }
    let count = accounts.len();
    writeln!(out, "{count} account{} found", if count == 1 { "" } else { "s" })
        .map_err(write_failed)
}

/// The one account `who` names: an id (digits) first, else an openid.
fn find(connection: &Connection, who: &str) -> Result<Account, Fatal> {
    if let Ok(id) = who.parse::<i64>()
        && let Some(account) = store::account_by_id(connection, id)?
    {
        return Ok(account);
    }
    let mut accounts = store::accounts_with_openid(connection, who)?;
    match accounts.len() {
        0 => Err(Fatal::Other(format!("no account with id or openid `{who}`"))),
        1 => Ok(accounts.remove(0)),
        _ => {
            let ids: Vec<String> = accounts.iter().map(|account| account.id.to_string()).collect();
            Err(Fatal::Other(format!(
                "openid `{who}` names several accounts (ids {}): name one by id",
                ids.join(", ")
            )))
        }
    }
}

/// A WeChat identity as `users show` and `users export` write it.
#[derive(Serialize)]
struct Identity<'a> {
    appid: &'a str,
    openid: &'a str,
}

impl<'a> Identity<'a> {
    fn of((appid, openid): &'a (String, String)) -> Identity<'a> {
        Identity { appid, openid }
    }
}

/// An account as `users export` writes it: the account object, then `EXPORTED_AFTER`'s columns,
/// which `users import` needs to put the account back whole. `identities` are the account's
/// identities other than its own (`wx_appid`, `wx_openid`), by appid then openid: in JSON an
/// array of `{"appid", "openid"}` objects, in CSV one field of `appid:openid` separated by single
/// spaces (an openid never holds either, as the API and `users import` refuse them, nor does a
/// WeChat appid, `wx` and hex; `users import` refuses an appid with one).
#[derive(Serialize)]
struct Exported<'a> {
    #[serde(flatten)]
    account: &'a Account,
    wx_appid: &'a str,
    token_version: i64,
    disabled_at: Option<String>,
    identities: Vec<Identity<'a>>,
}

impl<'a> Exported<'a> {
    fn of(account: &'a Account, identities: &'a [(String, String)]) -> Exported<'a> {
        Exported {
            account,
            wx_appid: &account.wx_appid,
            token_version: account.token_version,
            disabled_at: account.disabled_at.map(time::format_datetime),
            identities: identities.iter().map(Identity::of).collect(),
        }
    }
}

/// The columns `users export` writes, in order: the account object's fields, then
/// `EXPORTED_AFTER`.
pub(crate) fn exported_columns() -> impl Iterator<Item = &'static str> {
    Account::FIELDS.iter().copied().chain(EXPORTED_AFTER)
}

fn export(connection: &Connection, format: ExportFormat, out: &mut dyn Write) -> Result<(), Fatal> {
    match format {
        ExportFormat::Csv => {
            let header: Vec<&str> = exported_columns().collect();
            out.write_all(header.join(",").as_bytes()).map_err(write_failed)?;
            out.write_all(b"\r\n").map_err(write_failed)?;
            store::each_account(connection, None, 0, |account, identities| {
                let mut object = serde_json::to_value(Exported::of(&account, &identities))
                    .map_err(|error| Error::Internal(format!("account {}: {error}", account.id)))?;
                let pairs: Vec<String> =
                    identities.iter().map(|(appid, openid)| format!("{appid}:{openid}")).collect();
                object["identities"] = serde_json::Value::String(pairs.join(" "));
                let mut line = String::new();
                for (index, field) in header.iter().enumerate() {
                    if index > 0 {
                        line.push(',');
                    }
                    push_csv_field(&mut line, field, &object[*field]);
                }
                line.push_str("\r\n");
                out.write_all(line.as_bytes()).map_err(write_error)
            })
            .map_err(Fatal::from)
        }
        ExportFormat::Json => {
            out.write_all(b"[").map_err(write_failed)?;
            let mut first = true;
            store::each_account(connection, None, 0, |account, identities| {
                out.write_all(if first { b"\n" } else { b",\n" }).map_err(write_error)?;
                first = false;
                serde_json::to_writer(&mut *out, &Exported::of(&account, &identities))
                    .map_err(|error| Error::Internal(format!("cannot write: {error}")))
            })?;
            out.write_all(b"\n]\n").map_err(write_failed)
        }
    }
}

/// First characters that make a spreadsheet (Excel, LibreOffice) read a cell as a formula, or
/// that it skips before looking for one: OWASP's list for CSV injection.
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// Appends one CSV field: empty for null, `true`/`false`, numbers as they are, and text quoted
/// (with inner quotes doubled) when it holds a comma, a quote or a line break (RFC 4180).
///
/// Text comes from clients (a nickname, an address), so text starting with one of
/// `FORMULA_STARTS` gets a leading `'`, which spreadsheets show as text instead of running it as
/// a formula. So does text that starts with a `'` itself, so that `users import` can take exactly
/// one leading `'` off any text and get back what was there. The one exception is a `phone` as
/// the API stores it (digits with an optional leading `+`): it cannot be a formula, and machine
/// consumers need it as it is. Numbers and booleans are written as they are: a number is a value,
/// never a formula.
fn push_csv_field(line: &mut String, field: &str, value: &serde_json::Value) {
    let text = match value {
        serde_json::Value::Null => return,
        serde_json::Value::String(text) => text,
        other => return line.push_str(&other.to_string()),
    };
    let guarded = (text.starts_with(FORMULA_STARTS) || text.starts_with('\''))
        && !(field == "phone" && is_plain_phone(text));
    let prefix = if guarded { "'" } else { "" };
    if text.contains([',', '"', '\r', '\n']) {
        line.push('"');
        line.push_str(prefix);
        line.push_str(&text.replace('"', "\"\""));
        line.push('"');
    } else {
        line.push_str(prefix);
        line.push_str(text);
    }
}

/// Digits with an optional leading `+`: the only phone the API stores.
fn is_plain_phone(text: &str) -> bool {
    let digits = text.strip_prefix('+').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit())
}

/// Runs `change` on the account `who` names, found and changed in one transaction of a
/// read-write connection that waits for the server's writer (`store::in_transaction`); the
/// account as found, and what `change` returned.
fn change_account<T>(
    config: &Config,
    who: &str,
    change: impl FnOnce(&Connection, &Account) -> Result<T, Error>,
) -> Result<(Account, T), Fatal> {
    let connection = open_for_writing(config)?;
    store::in_transaction(&connection, |connection| {
        let account = find(connection, who)?;
        let changed = change(connection, &account)?;
        Ok((account, changed))
    })
}

fn set(config: &Config, who: &str, edits: &[Edit], out: &mut dyn Write) -> Result<(), Fatal> {
    let (_, (after, identities)) = change_account(config, who, |connection, account| {
        store::update_account(connection, account.id, edits)?;
        let after = store::account_by_id(connection, account.id)?
            .ok_or_else(|| Error::Internal(format!("account {} vanished", account.id)))?;
        Ok((after, store::identities_of(connection, account.id)?))
    })?;
    write_account(&after, &identities, out)
}

fn revoke(config: &Config, who: &str, out: &mut dyn Write) -> Result<(), Fatal> {
    let (account, _) = change_account(config, who, |connection, account| {
        store::revoke_tokens(connection, account.id)
    })?;
    writeln!(
        out,
        "revoked every token issued to account {} so far; it gets a working token by logging in again",
        account.id
    )
    .map_err(write_failed)
}

fn disable(config: &Config, who: &str, out: &mut dyn Write) -> Result<(), Fatal> {
    let now = time::now();
    let (account, disabled) = change_account(config, who, |connection, account| {
        store::disable_account(connection, account.id, now)
    })?;
    let id = account.id;
    let message = match account.disabled_at {
        Some(since) if !disabled => format!(
            "account {id} is already disabled (since {}); nothing changed",
            time::format_datetime(since)
        ),
        _ => format!(
            "disabled account {id} (openid {}): its tokens are revoked, and it can neither log in nor register (`account_disabled`) until `wxauth users enable {id}`",
            account.wx_openid
        ),
    };
    writeln!(out, "{message}").map_err(write_failed)
}

fn enable(config: &Config, who: &str, out: &mut dyn Write) -> Result<(), Fatal> {
    let (account, enabled) = change_account(config, who, |connection, account| {
        store::enable_account(connection, account.id)
    })?;
    let id = account.id;
    let message = if enabled {
        format!(
            "enabled account {id}: it can log in again; the tokens it had when it was disabled stay revoked"
        )
    } else {
        format!("account {id} is not disabled; nothing changed")
    };
    writeln!(out, "{message}").map_err(write_failed)
}

fn delete(config: &Config, who: &str, out: &mut dyn Write) -> Result<(), Fatal> {
    let (account, _) = change_account(config, who, |connection, account| {
        store::delete_account(connection, account.id)
    })?;
    writeln!(
        out,
        "deleted account {} (openid {}) and its WeChat sessions: its tokens no longer verify, its WeChat user gets a new account at the next login, and id {} is never given out again",
        account.id, account.wx_openid, account.id
    )
    .map_err(write_failed)
}

/// `wxauth backup PATH`: an online backup of `config.database` to a new file, verified.
pub(crate) fn backup(config: &Config, destination: &str, out: &mut dyn Write) -> Result<(), Fatal> {
    require_database(&config.database)?;
    // Read-only: the backup reads one snapshot and never takes the write lock.
    let source = store::open_reader(&config.database)?;
    let report = store::backup(&source, destination)?;
    let mut text = format!(
        "wrote {destination}: a copy of {} ({} bytes, schema version {}, readable by its owner only)\n",
        config.database, report.bytes, report.schema_version
    );
    for (table, rows) in &report.tables {
        text.push_str(&format!("  {table}: {rows} rows\n"));
    }
    text.push_str("integrity_check ok\n");
    out.write_all(text.as_bytes()).map_err(write_failed)
}

/// `wxauth restore BACKUP`: puts a checked copy of the backup in the place of `config.database`,
/// which must not be in use, and keeps the database that was there beside it, named by the time.
pub(crate) fn restore(config: &Config, backup: &str, out: &mut dyn Write) -> Result<(), Fatal> {
    let database = &config.database;
    // `2026-12-03 05:52:46` → `20261203T055246Z`: sorts by time, and no shell quoting needed.
    let stamp: String = time::format_datetime(time::now())
        .chars()
        .filter_map(|character| match character {
            ' ' => Some('T'),
            '-' | ':' => None,
            other => Some(other),
        })
        .collect();
    let aside = format!("{database}.before-restore-{stamp}Z");
    let report = store::restore(backup, database, &aside)?;
    let copy = &report.copy;
    let mut text = format!(
        "restored {database} from {backup} ({} bytes, schema version {}, readable by its owner only)\n",
        copy.bytes, copy.schema_version
    );
    for (table, rows) in &copy.tables {
        text.push_str(&format!("  {table}: {rows} rows\n"));
    }
    text.push_str("integrity_check ok\n");
    if report.kept {
        text.push_str(&format!("the database that was there is kept as {aside}\n"));
    }
    if copy.schema_version < store::current_version() {
        text.push_str(&format!(
            "its schema is upgraded to version {} by `wxauth migrate` or the next start\n",
            store::current_version()
        ));
    }
    out.write_all(text.as_bytes()).map_err(write_failed)
}

/// `wxauth migrate`: applies the schema versions `config.database` lacks.
pub(crate) fn migrate(config: &Config, out: &mut dyn Write) -> Result<(), Fatal> {
    require_database(&config.database)?;
    let (_connection, applied) = store::open_writer(&config.database, store::Opener::Operator)?;
    let message = match applied.as_slice() {
        [] => format!("schema is current (version {})", store::current_version()),
        [version] => format!("applied schema version {version}"),
        versions => {
            let versions: Vec<String> = versions.iter().map(u32::to_string).collect();
            format!("applied schema versions {}", versions.join(", "))
        }
    };
    writeln!(out, "{}: {message}", config.database).map_err(write_failed)
}

/// An operator's read-write connection to `config.database` (`store::open_existing`), which must
/// exist and have the current schema.
pub(crate) fn open_for_writing(config: &Config) -> Result<Connection, Fatal> {
    require_database(&config.database)?;
    let connection = store::open_existing(&config.database)?;
    require_current_schema(&connection, &config.database)?;
    Ok(connection)
}

fn open_for_reading(config: &Config) -> Result<Connection, Fatal> {
    require_database(&config.database)?;
    let connection = store::open_reader(&config.database)?;
    require_current_schema(&connection, &config.database)?;
    Ok(connection)
}

/// Fails unless `path` is an existing file (or a MySQL URL): opening it would otherwise create an
/// empty database.
fn require_database(path: &str) -> Result<(), Fatal> {
    if store::is_shared(path) {
        // A MySQL database: the commands check its schema version once connected, and opening
        // creates nothing there.
        return Ok(());
    }
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => Ok(()),
        Ok(_) => Err(Fatal::Other(format!("database {path} is not a file"))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(Fatal::Other(format!(
            "database {path} does not exist (check `database` or WXAUTH_DATABASE; `wxauth serve` creates it)"
        ))),
        Err(error) => Err(Fatal::io(format!("database {path}"))(error)),
    }
}

/// The account queries name every column of the current schema; an older file needs `migrate`.
fn require_current_schema(connection: &Connection, path: &str) -> Result<(), Fatal> {
    let found = store::schema_version(connection)?;
    let current = store::current_version();
    if found < current {
        return Err(Fatal::Other(format!(
            "database {path} has schema version {found}, this wxauth needs {current}: run `wxauth migrate` first"
        )));
    }
    if found > current {
        return Err(Fatal::Other(format!(
            "database {path} has schema version {found}, newer than this wxauth's ({current}): use a newer wxauth"
        )));
    }
    Ok(())
}

pub(crate) fn write_failed(error: std::io::Error) -> Fatal {
    Fatal::io("cannot write the output")(error)
}

/// `write_failed` inside a store callback, which fails with an `Error`.
fn write_error(error: std::io::Error) -> Error {
    Error::Internal(write_failed(error).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(name: &str, value: serde_json::Value) -> String {
        let mut line = String::new();
        push_csv_field(&mut line, name, &value);
        line
    }

    #[test]
    fn csv_text_that_would_start_a_formula_is_prefixed() {
        assert_eq!(field("wx_nickname", json!("=1+1")), "'=1+1");
        assert_eq!(field("address", json!("@SUM(A1)")), "'@SUM(A1)");
        assert_eq!(field("wx_city", json!("-2,3")), "\"'-2,3\"");
        assert_eq!(field("wx_nickname", json!("\r=1")), "\"'\r=1\"");
        assert_eq!(field("wx_nickname", json!("a=1")), "a=1");
        // A leading `'` is the guard, so text that has one of its own gets another.
        assert_eq!(field("wx_nickname", json!("'=1")), "''=1");
        assert_eq!(field("address", json!("'quoted'")), "''quoted'");
        // A phone as the API stores it stays as it is; anything else in that column (written
        // around the API) is guarded like any text.
        assert_eq!(field("phone", json!("+8613800138000")), "+8613800138000");
        assert_eq!(field("phone", json!("+1+1")), "'+1+1");
        assert_eq!(field("phone", json!("=1+1")), "'=1+1");
        assert_eq!(field("phone", json!("+")), "'+");
        // Numbers are values, not formulas.
        assert_eq!(field("member_score", json!(-5)), "-5");
        assert_eq!(field("wx_nickname", json!(null)), "");
    }
}
