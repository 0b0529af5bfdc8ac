//! The operator's commands besides `serve`: `check-config`, `users list|show|export|revoke`,
//! `backup` and `migrate`. main.rs parses the command line into the typed arguments here; each
//! command writes what it has to say to the `out` main hands it (a buffered stdout) and returns a
//! one-line reason on failure. Nothing here prints, exits or holds SQL (that is `store`).
//!
//! No command creates a database: a mistyped `database` path fails with a clear reason instead
//! of answering from a new, empty file (`wxauth serve` is what creates one). The commands that
//! write (`migrate`, `users revoke`) refuse a file that is not safely theirs, as the server does
//! (`store::Opener::Operator`: root may write to the service user's file). Reads use a
//! read-only connection, so they never hold the write lock; `users revoke` writes one row with a
//! busy timeout, so it works while the server runs. Nothing here shows a secret: the
//! configuration is printed redacted, and accounts exactly as the API shows them, which leaves
//! out session keys (another table, never joined) and token versions.

use std::io::Write;

use crate::config::{self, Config};
use crate::error::{Error, Fatal};
use crate::store::{self, Account, Connection};
use crate::time;

/// What `wxauth users …` asks for.
pub(crate) enum UsersAction {
    /// A readable table of `limit` accounts from `offset`, by id.
    List { limit: u64, offset: u64 },
    /// One account as JSON, by id or openid.
    Show { who: String },
    /// Every account, streamed.
    Export { format: ExportFormat },
    /// Revoke every token issued to the account so far and end the sign-in that produced them,
    /// as the API's logout does.
    Revoke { id: i64 },
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
        UsersAction::Revoke { id } => revoke(config, id, out),
    }
}

fn list(
    connection: &Connection,
    limit: u64,
    offset: u64,
    out: &mut dyn Write,
) -> Result<(), Fatal> {
    let total = store::account_counts(connection)?.accounts;
    writeln!(
        out,
        "{:>8}  {:<32}  {:<20}  {:<10}  {:<19}  last_login",
        "id", "openid", "phone", "registered", "date_joined"
    )
    .map_err(write_failed)?;
    let mut shown = 0u64;
    store::each_account(connection, Some(limit), offset, |account| {
        shown += 1;
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
        .map_err(write_error)
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
    let text = serde_json::to_string_pretty(&account)
        .map_err(|error| Fatal::Other(format!("cannot show account {}: {error}", account.id)))?;
    writeln!(out, "{text}").map_err(write_failed)
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
                "openid `{who}` has an account in each of several mini-programs (ids {}): name one by id",
                ids.join(", ")
            )))
        }
    }
}

fn export(connection: &Connection, format: ExportFormat, out: &mut dyn Write) -> Result<(), Fatal> {
    match format {
        ExportFormat::Csv => {
            out.write_all(Account::FIELDS.join(",").as_bytes()).map_err(write_failed)?;
            out.write_all(b"\r\n").map_err(write_failed)?;
            store::each_account(connection, None, 0, |account| {
                let object = serde_json::to_value(&account)
                    .map_err(|error| Error::Internal(format!("account {}: {error}", account.id)))?;
                let mut line = String::new();
                for (index, field) in Account::FIELDS.iter().enumerate() {
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
            store::each_account(connection, None, 0, |account| {
                out.write_all(if first { b"\n" } else { b",\n" }).map_err(write_error)?;
                first = false;
                serde_json::to_writer(&mut *out, &account)
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
/// a formula. The one exception is a `phone` as the API stores it (digits with an optional leading
/// `+`): it cannot be a formula, and machine consumers need it as it is. Numbers and booleans are
/// written as they are: a number is a value, never a formula.
fn push_csv_field(line: &mut String, field: &str, value: &serde_json::Value) {
    let text = match value {
        serde_json::Value::Null => return,
        serde_json::Value::String(text) => text,
        other => return line.push_str(&other.to_string()),
    };
    let guarded = text.starts_with(FORMULA_STARTS) && !(field == "phone" && is_plain_phone(text));
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

fn revoke(config: &Config, id: i64, out: &mut dyn Write) -> Result<(), Fatal> {
    require_database(&config.database)?;
    let connection = store::open_existing(&config.database)?;
    require_current_schema(&connection, &config.database)?;
    if !store::revoke_tokens(&connection, id)? {
        return Err(Fatal::Other(format!("no account with id {id}")));
    }
    writeln!(
        out,
        "revoked every token issued to account {id} so far; it gets a working token by logging in again"
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

fn open_for_reading(config: &Config) -> Result<Connection, Fatal> {
    require_database(&config.database)?;
    let connection = store::open_reader(&config.database)?;
    require_current_schema(&connection, &config.database)?;
    Ok(connection)
}

/// Fails unless `path` is an existing file: opening it would otherwise create an empty database.
fn require_database(path: &str) -> Result<(), Fatal> {
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
