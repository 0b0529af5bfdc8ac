//! `wxauth users import`: accounts from a file into the database, all or nothing. The file is the
//! original Django backend's `manage.py dumpdata wx_auth.User` (a JSON array of `{"model", "pk",
//! "fields"}`; ids kept, password hashes dropped, naive times read as UTC), or what `users export`
//! writes (csv or json), which puts every column back: ids, token versions, disabled accounts,
//! and each account's identities in other mini-programs (`identities`, optional: exports made
//! before it have none).
//!
//! The file is read one row at a time, a JSON array element by element (serde's `SeqAccess`,
//! never the whole array) and a CSV file record by record, and each row is written as it is read,
//! in one transaction of the operator's connection (`store::in_transaction`). That transaction
//! commits at the end only when no row was refused and this is not a dry run; otherwise it rolls
//! back. So a file of any size costs the memory of one row and the reasons of the first refused
//! rows (`SHOWN_REFUSALS`, then a count). Each row is checked as the API checks its fields
//! (`admin::check_field`), then its id and WeChat identities are looked up in the transaction: a
//! taken one is taken in the database if a second connection, which sees only what is committed,
//! finds it too, and earlier in the file otherwise.
//!
//! Nothing here prints, exits or holds SQL (that is `store`), and nothing shows a password hash:
//! Django's `password` is dropped unread, and a refused row is named by its position and id,
//! never shown whole.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};

use serde::de::{Deserializer as _, Error as _, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::admin::{self, write_failed};
use crate::config::{self, Config};
use crate::error::{Error, Fatal};
use crate::store::{self, Account, Connection, EditValue};
use crate::time;

/// What `users import --format` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ImportFormat {
    /// `manage.py dumpdata wx_auth.User` of the original backend (with or without `--indent`).
    Django,
    /// `users export --format csv`.
    Csv,
    /// `users export --format json`.
    Json,
}

/// How many refused rows the report names; the rest are counted.
const SHOWN_REFUSALS: usize = 100;

/// The model the original backend's accounts are, as `dumpdata` names it.
const DJANGO_MODEL: &str = "wx_auth.user";

/// Fields of the original's user model (Django's `AbstractUser`) that wxauth does not keep:
/// dropped without being read. `is_active` is read: false disables the account.
const DJANGO_DROPPED: [&str; 6] =
    ["password", "first_name", "last_name", "email", "groups", "user_permissions"];

/// `wxauth users import FILE --format F [--dry-run]` against `config.database`.
pub(crate) fn import(
    config: &Config,
    file: &str,
    format: ImportFormat,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<(), Fatal> {
    let input = std::fs::File::open(file).map_err(Fatal::io(format!("cannot read {file}")))?;
    let connection = admin::open_for_writing(config)?;
    // A second connection sees the database as committed, without this import's rows.
    let committed = store::open_reader(&config.database)?;
    let appid = if config.demo_mode() { config::DEMO_APPID } else { &config.wechat.appid };
    let mut importer = Importer {
        committed: &committed,
        appid,
        demo: config.demo_mode(),
        now: time::now(),
        django: format == ImportFormat::Django,
        imported: 0,
        ids: None,
        disabled: 0,
        refused: 0,
        reasons: Vec::new(),
    };
    let input = BufReader::with_capacity(1 << 16, input);
    let result = store::in_transaction(&connection, |connection| {
        let mut take = |position, row| importer.take(connection, position, row);
        match format {
            ImportFormat::Csv => read_csv(file, input, take)?,
            ImportFormat::Django => read_json_array(file, input, |index, element| {
                take(format!("element {index}"), django_fields(element))
            })?,
            ImportFormat::Json => read_json_array(file, input, |index, element| {
                let row = match element {
                    Value::Object(fields) => Ok(fields),
                    _ => Err("not an account object".to_string()),
                };
                take(format!("element {index}"), row)
            })?,
        }
        // Rolled back, and reported below, unless every row is in and this is no dry run.
        if importer.refused > 0 || dry_run { Err(Stop::RolledBack) } else { Ok(()) }
    });
    match result {
        Ok(()) | Err(Stop::RolledBack) => {}
        Err(Stop::Failed(fatal)) => return Err(fatal),
    }
    importer.report(file, dry_run, out)
}

/// Why the import's transaction ends without a commit.
enum Stop {
    /// A row was refused, or this is a dry run: the report says which.
    RolledBack,
    /// The file or the database failed: nothing is written, and this is the reason.
    Failed(Fatal),
}

impl From<Error> for Stop {
    fn from(error: Error) -> Self {
        Stop::Failed(Fatal::from(error))
    }
}

/// The import under way: what it has written so far and why it refused what it refused.
struct Importer<'a> {
    /// The database as committed, which does not see this import's rows.
    committed: &'a Connection,
    /// The mini-program of rows that name none (Django's, and exports made before the column).
    appid: &'a str,
    /// Whether `appid` is demo mode's, for want of a configured one.
    demo: bool,
    now: i64,
    django: bool,
    imported: u64,
    /// The smallest and the largest id imported.
    ids: Option<(i64, i64)>,
    /// Django rows with `is_active` false, imported disabled.
    disabled: u64,
    refused: u64,
    /// The first `SHOWN_REFUSALS` refused rows, each a line naming the row and its reasons.
    reasons: Vec<String>,
}

impl Importer<'_> {
    /// Checks one row (its fields by column name, or why the file's record is not one) and
    /// writes it when nothing is wrong with it.
    fn take(
        &mut self,
        connection: &Connection,
        position: String,
        row: Result<Map<String, Value>, String>,
    ) -> Result<(), Error> {
        let fields = match row {
            Ok(fields) => fields,
            Err(reason) => {
                self.refuse(&position, &[reason]);
                return Ok(());
            }
        };
        let label = match fields.get("id") {
            Some(id @ Value::Number(_)) if self.django => format!("{position} (pk {id})"),
            Some(Value::Number(id)) => format!("{position} (id {id})"),
            Some(Value::String(id)) if !id.is_empty() && id.len() <= 20 => {
                format!("{position} (id {id})")
            }
            _ => position,
        };
        let (account, identities, is_active) = match self.account(fields) {
            Ok(account) => account,
            Err(reasons) => {
                self.refuse(&label, &reasons);
                return Ok(());
            }
        };
        let reasons = self.taken(connection, &account, &identities)?;
        if !reasons.is_empty() {
            self.refuse(&label, &reasons);
            return Ok(());
        }
        store::insert_account(connection, &account, &identities)?;
        self.imported += 1;
        self.disabled += u64::from(!is_active);
        self.ids = Some(match self.ids {
            None => (account.id, account.id),
            Some((smallest, largest)) => (smallest.min(account.id), largest.max(account.id)),
        });
        Ok(())
    }

    fn refuse(&mut self, label: &str, reasons: &[String]) {
        self.refused += 1;
        if self.reasons.len() < SHOWN_REFUSALS {
            self.reasons.push(format!("{label}: {}", reasons.join("; ")));
        }
    }

    /// The account a row describes, its other identities, and whether Django's `is_active` leaves
    /// it enabled, or every reason the row is refused.
    fn account(&self, mut fields: Map<String, Value>) -> Result<Imported, Vec<String>> {
        let mut row = Row { fields: Map::new(), reasons: Vec::new() };
        let mut is_active = true;
        // Only `users export` writes them; to Django's model they are an unknown field.
        let identities = if self.django { None } else { fields.remove("identities") };
        if self.django {
            for dropped in DJANGO_DROPPED {
                fields.remove(dropped);
            }
            match fields.remove("is_active") {
                None | Some(Value::Bool(true)) => {}
                Some(Value::Bool(false)) => is_active = false,
                Some(_) => row.reasons.push("is_active takes true or false".into()),
            }
        }
        for key in fields.keys() {
            if admin::field_kind(key).is_none() {
                row.reasons.push(format!("unknown field `{key}`"));
            }
        }
        row.fields = fields;
        let wx_openid = row.text("wx_openid");
        if wx_openid.is_none() && !row.reasons.iter().any(|reason| reason.starts_with("wx_openid"))
        {
            row.reasons.push("no openid (wx_openid)".into());
        }
        let wx_openid = wx_openid.unwrap_or_default();
        let id = row.integer("id", 0);
        if !row.fields.contains_key("id") {
            row.reasons.push(if self.django { "no pk" } else { "no id" }.into());
        }
        let username = if row.fields.contains_key("username") {
            row.text("username").unwrap_or_default()
        } else {
            wx_openid.clone()
        };
        let disabled_at = row.optional_integer("disabled_at");
        let account = Account {
            id,
            username,
            phone: row.text("phone"),
            is_register: row.flag("is_register"),
            is_staff: row.flag("is_staff"),
            is_superuser: row.flag("is_superuser"),
            flag: row.integer("flag", 1),
            avatar: row.text("avatar"),
            avatar_thumb: row.text("avatar_thumb"),
            birthday: row.text("birthday"),
            address: row.text("address"),
            member_score: row.integer("member_score", 0),
            credit_score: row.integer("credit_score", 0),
            wx_openid,
            wx_unionid: row.text("wx_unionid"),
            wx_nickname: row.text("wx_nickname"),
            wx_gender: row.integer("wx_gender", 0),
            wx_avatar: row.text("wx_avatar"),
            wx_country: row.text("wx_country"),
            wx_province: row.text("wx_province"),
            wx_city: row.text("wx_city"),
            last_ip: row.text("last_ip"),
            join_ip: row.text("join_ip"),
            love_help_num: row.integer("love_help_num", 0),
            bring_love_concern_num: row.integer("bring_love_concern_num", 0),
            last_login: row.optional_integer("last_login"),
            date_joined: row.optional_integer("date_joined").unwrap_or(self.now),
            token_version: row.integer("token_version", 0),
            disabled_at: if is_active { disabled_at } else { Some(self.now) },
            wx_appid: row.text("wx_appid").unwrap_or_else(|| self.appid.to_string()),
        };
        let own = (account.wx_appid.as_str(), account.wx_openid.as_str());
        let identities = match identities {
            Some(value) => other_identities(&value, own, &mut row.reasons),
            None => Vec::new(),
        };
        if row.reasons.is_empty() { Ok((account, identities, is_active)) } else { Err(row.reasons) }
    }

    /// Why the account's id, its WeChat identity or one of its `identities` cannot be had: taken
    /// in the database, or by an earlier row of the file (written in this transaction, which only
    /// it sees).
    fn taken(
        &self,
        connection: &Connection,
        account: &Account,
        identities: &[(String, String)],
    ) -> Result<Vec<String>, Error> {
        let mut reasons = Vec::new();
        let id = account.id;
        if store::account_by_id(connection, id)?.is_some() {
            reasons.push(if store::account_by_id(self.committed, id)?.is_some() {
                format!("id {id} is taken by an account in the database")
            } else {
                format!("id {id} comes twice in the file")
            });
        }
        let own =
            (&account.wx_appid, &account.wx_openid, format!("openid `{}`", account.wx_openid));
        let others = identities
            .iter()
            .map(|(appid, openid)| (appid, openid, format!("identity `{appid}:{openid}`")));
        for (appid, openid, named) in std::iter::once(own).chain(others) {
            if let Some(holder) = store::account_by_openid(connection, appid, openid)? {
                reasons.push(
                    if store::account_by_openid(self.committed, appid, openid)?.is_some() {
                        format!("{named} has account {} in the database", holder.id)
                    } else {
                        format!("{named} comes twice in the file (also id {})", holder.id)
                    },
                );
            }
        }
        Ok(reasons)
    }

    fn report(&self, file: &str, dry_run: bool, out: &mut dyn Write) -> Result<(), Fatal> {
        let mut text = String::new();
        for reason in &self.reasons {
            text.push_str(reason);
            text.push('\n');
        }
        let more = self.refused - self.reasons.len() as u64;
        if more > 0 {
            text.push_str(&format!("… and {more} more refused rows\n"));
        }
        let total = self.imported + self.refused;
        if self.refused > 0 {
            out.write_all(text.as_bytes()).map_err(write_failed)?;
            return Err(Fatal::Other(format!(
                "{} of {total} rows of {file} refused (listed on stdout); nothing was written",
                self.refused
            )));
        }
        let accounts = plural(self.imported, "account");
        let ids = match self.ids {
            Some((smallest, largest)) => format!(" (ids {smallest} to {largest})"),
            None => String::new(),
        };
        text.push_str(&if dry_run {
            format!("dry run: {accounts}{ids} from {file} would be imported; nothing was written\n")
        } else {
            format!("imported {accounts}{ids} from {file}\n")
        });
        if self.django {
            text.push_str(&format!(
                "their WeChat identities are mini-program {}'s ({})\n",
                self.appid,
                if self.demo { "demo mode: no wechat.appid is configured" } else { "wechat.appid" }
            ));
            text.push_str(
                "password hashes, first_name, last_name, email, groups and user_permissions are not kept\n",
            );
        }
        if self.disabled > 0 {
            text.push_str(&format!(
                "{} disabled, as is_active is false (`wxauth users enable ID` lets one log in)\n",
                plural(self.disabled, "account")
            ));
        }
        out.write_all(text.as_bytes()).map_err(write_failed)
    }
}

/// What a row puts in: the account, its identities other than its own as (appid, openid), and
/// whether Django's `is_active` leaves it enabled.
type Imported = (Account, Vec<(String, String)>, bool);

/// The identities a row of `users export` gives its account besides `own` (its `identities`: an
/// array of `{"appid", "openid"}` objects, or, as in CSV, `appid:openid` separated by single
/// spaces), each checked as the schema and the export need them: 1 to 64 characters, no space,
/// colon or control character, neither the account's own nor twice. The reason for each refused
/// one is added to `reasons`.
fn other_identities(
    value: &Value,
    own: (&str, &str),
    reasons: &mut Vec<String>,
) -> Vec<(String, String)> {
    let pair = |appid: &str, openid: &str| (appid.to_string(), openid.to_string());
    let not_objects = |value: &Value| {
        format!(
            "identities takes an array of {{\"appid\", \"openid\"}} objects, not `{}`",
            admin::shown(&value.to_string())
        )
    };
    let mut read = Vec::new();
    match value {
        Value::Null => {}
        Value::String(text) if text.is_empty() => {}
        Value::String(text) => {
            for identity in text.split(' ') {
                match identity.split_once(':') {
                    Some((appid, openid)) => read.push(pair(appid, openid)),
                    None => reasons.push(format!(
                        "identities takes appid:openid pairs separated by single spaces, not `{}`",
                        admin::shown(identity)
                    )),
                }
            }
        }
        Value::Array(elements) => {
            for element in elements {
                match element
                    .as_object()
                    .map(|object| (object.len(), object.get("appid"), object.get("openid")))
                {
                    Some((2, Some(Value::String(appid)), Some(Value::String(openid)))) => {
                        read.push(pair(appid, openid));
                    }
                    _ => reasons.push(not_objects(element)),
                }
            }
        }
        other => reasons.push(not_objects(other)),
    }
    let mut identities: Vec<(String, String)> = Vec::with_capacity(read.len());
    for (appid, openid) in read {
        let mut malformed = false;
        for (part, text) in [("appid", &appid), ("openid", &openid)] {
            if text.is_empty()
                || text.chars().count() > 64
                || text
                    .chars()
                    .any(|character| matches!(character, ' ' | ':') || character.is_control())
            {
                reasons.push(format!(
                    "an identity's {part} takes 1 to 64 characters without spaces, colons or control characters, not `{}`",
                    admin::shown(text)
                ));
                malformed = true;
            }
        }
        if malformed {
            continue;
        }
        if (appid.as_str(), openid.as_str()) == own {
            reasons.push(format!(
                "identity `{appid}:{openid}` is the account's own (wx_appid and wx_openid)"
            ));
        } else if identities.iter().any(|taken| (&taken.0, &taken.1) == (&appid, &openid)) {
            reasons.push(format!("identity `{appid}:{openid}` comes twice in identities"));
        } else {
            identities.push((appid, openid));
        }
    }
    identities
}

fn plural(count: u64, noun: &str) -> String {
    format!("{count} {noun}{}", if count == 1 { "" } else { "s" })
}

/// One row's fields by column name, read as each field's kind (`admin::field_kind`), and the
/// reasons it is refused so far. An absent field takes the schema's default; a field present
/// but refused adds its reason (and reads as the default, never written).
struct Row {
    fields: Map<String, Value>,
    reasons: Vec<String>,
}

impl Row {
    fn checked(&mut self, field: &str) -> Option<EditValue> {
        let value = self.fields.get(field)?;
        let kind = admin::field_kind(field)?;
        match admin::check_field(field, kind, value) {
            Ok(value) => Some(value),
            Err(reason) => {
                self.reasons.push(reason);
                None
            }
        }
    }

    fn text(&mut self, field: &str) -> Option<String> {
        match self.checked(field)? {
            EditValue::Text(text) => text,
            EditValue::Integer(number) => Some(number.to_string()),
        }
    }

    fn optional_integer(&mut self, field: &str) -> Option<i64> {
        match self.checked(field)? {
            EditValue::Integer(number) => Some(number),
            EditValue::Text(_) => None,
        }
    }

    fn integer(&mut self, field: &str, default: i64) -> i64 {
        self.optional_integer(field).unwrap_or(default)
    }

    fn flag(&mut self, field: &str) -> bool {
        self.integer(field, 0) == 1
    }
}

/// A `dumpdata` element's `fields`, with its `pk` as `id`; or why it is not one of the
/// original's accounts.
fn django_fields(element: Value) -> Result<Map<String, Value>, String> {
    let Value::Object(mut object) = element else {
        return Err("not an object like dumpdata writes ({\"model\", \"pk\", \"fields\"})".into());
    };
    match object.remove("model") {
        Some(Value::String(model)) if model.eq_ignore_ascii_case(DJANGO_MODEL) => {}
        Some(Value::String(model)) => {
            return Err(format!(
                "model `{model}`, not {DJANGO_MODEL} (dump only the accounts: `manage.py dumpdata wx_auth.User`)"
            ));
        }
        _ => return Err("no model".into()),
    }
    let Some(Value::Object(mut fields)) = object.remove("fields") else {
        return Err("no fields object".into());
    };
    let Some(pk) = object.remove("pk") else {
        return Err("no pk (dumped with --natural-primary? dump without it: ids are kept)".into());
    };
    if let Some(key) = object.keys().next() {
        return Err(format!("unknown key `{key}` beside model, pk and fields"));
    }
    if fields.contains_key("id") {
        return Err("an `id` in fields: the id is the pk".into());
    }
    fields.insert("id".into(), pk);
    Ok(fields)
}

/// Hands each element of the JSON array in `input` to `visit` with its position (from 1), one at
/// a time: the array is never held whole. Anything but one array, and malformed JSON, fails the
/// import, naming the line and column.
fn read_json_array(
    file: &str,
    input: impl Read,
    visit: impl FnMut(u64, Value) -> Result<(), Error>,
) -> Result<(), Stop> {
    /// Takes the array's elements one by one; a failure of `visit` stops it and is kept aside,
    /// since serde's error cannot carry it.
    struct Elements<'v, F> {
        visit: F,
        failure: &'v mut Option<Error>,
    }

    impl<'de, F: FnMut(u64, Value) -> Result<(), Error>> Visitor<'de> for Elements<'_, F> {
        type Value = ();

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a JSON array of accounts")
        }

        fn visit_seq<A: SeqAccess<'de>>(mut self, mut elements: A) -> Result<(), A::Error> {
            let mut index = 0;
            while let Some(element) = elements.next_element::<Value>()? {
                index += 1;
                if let Err(error) = (self.visit)(index, element) {
                    *self.failure = Some(error);
                    return Err(A::Error::custom("stopped"));
                }
            }
            Ok(())
        }
    }

    let mut failure = None;
    let mut deserializer = serde_json::Deserializer::from_reader(input);
    let read = deserializer
        .deserialize_seq(Elements { visit, failure: &mut failure })
        .and_then(|()| deserializer.end());
    if let Some(error) = failure {
        return Err(error.into());
    }
    read.map_err(|error| Stop::Failed(Fatal::Other(format!("{file}: {error}"))))
}

/// Hands each record of the CSV in `input` after its header to `visit`, as a row of fields by
/// the header's column names, with its position (`line N`, where the record starts). The header
/// must name every account field and nothing but the columns `users export` writes; a record of
/// another width is refused. One `'` at the start of a field is taken off: `users export` puts it
/// there (`admin::push_csv_field`).
fn read_csv(
    file: &str,
    input: impl BufRead,
    mut visit: impl FnMut(String, Result<Map<String, Value>, String>) -> Result<(), Error>,
) -> Result<(), Stop> {
    let failed = |reason: String| Stop::Failed(Fatal::Other(format!("{file}: {reason}")));
    let mut records = CsvRecords { input, line: 0 };
    let Some((_, header)) = records.next().map_err(failed)? else {
        return Err(failed("empty: no header line".into()));
    };
    let known: Vec<&str> = admin::exported_columns().collect();
    for (index, name) in header.iter().enumerate() {
        if !known.contains(&name.as_str()) {
            return Err(failed(format!(
                "line 1: unknown column `{name}`; users export writes {}",
                known.join(",")
            )));
        }
        if header[..index].contains(name) {
            return Err(failed(format!("line 1: column `{name}` twice")));
        }
    }
    let missing: Vec<&str> = Account::FIELDS
        .iter()
        .copied()
        .filter(|field| !header.iter().any(|name| name == field))
        .collect();
    if !missing.is_empty() {
        return Err(failed(format!("line 1: no column {}", missing.join(", "))));
    }
    while let Some((line, cells)) = records.next().map_err(failed)? {
        let position = format!("line {line}");
        if cells.len() != header.len() {
            let reason = format!("{} fields, the header has {}", cells.len(), header.len());
            visit(position, Err(reason))?;
            continue;
        }
        let row = header
            .iter()
            .zip(cells)
            .map(|(name, cell)| {
                let cell = match cell.strip_prefix('\'') {
                    Some(unguarded) => unguarded.to_string(),
                    None => cell,
                };
                (name.clone(), Value::String(cell))
            })
            .collect();
        visit(position, Ok(row))?;
    }
    Ok(())
}

/// The records of a CSV file (RFC 4180: fields quoted when they hold a comma, a quote or a line
/// break, a quote inside doubled; CRLF or LF line ends), read line by line.
struct CsvRecords<R> {
    input: R,
    /// The last line read, from 1.
    line: u64,
}

impl<R: BufRead> CsvRecords<R> {
    /// The next record and the line it starts on, skipping blank lines; `None` at the end. A
    /// malformed one (a quote where none may be, a quoted field never closed) or text that is not
    /// UTF-8 is the reason the file cannot be read, naming the line.
    fn next(&mut self) -> Result<Option<(u64, Vec<String>)>, String> {
        let mut text = String::new();
        let start = loop {
            text.clear();
            if !self.read_line(&mut text)? {
                return Ok(None);
            }
            if self.line == 1 && text.starts_with('\u{feff}') {
                // The byte order mark spreadsheets write first.
                text.drain(..'\u{feff}'.len_utf8());
            }
            if !text.trim_end_matches(['\r', '\n']).is_empty() {
                break self.line;
            }
        };
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        // Just after a quoted field's closing quote, where only a comma or the line end may come.
        let mut closed = false;
        loop {
            let mut characters = text.chars().peekable();
            while let Some(character) = characters.next() {
                if quoted {
                    match character {
                        '"' if characters.peek() == Some(&'"') => {
                            characters.next();
                            field.push('"');
                        }
                        '"' => {
                            quoted = false;
                            closed = true;
                        }
                        other => field.push(other),
                    }
                    continue;
                }
                match character {
                    ',' => {
                        fields.push(std::mem::take(&mut field));
                        closed = false;
                    }
                    '\r' if characters.peek() == Some(&'\n') => {}
                    '\n' => {
                        fields.push(field);
                        return Ok(Some((start, fields)));
                    }
                    _ if closed => {
                        return Err(format!("line {}: text after a closing quote", self.line));
                    }
                    '"' if field.is_empty() => quoted = true,
                    '"' => {
                        return Err(format!(
                            "line {}: a quote inside a field that does not start with one",
                            self.line
                        ));
                    }
                    other => field.push(other),
                }
            }
            if !quoted {
                // The last line, without a line end.
                fields.push(field);
                return Ok(Some((start, fields)));
            }
            // A line break inside a quoted field: the record goes on on the next line.
            text.clear();
            if !self.read_line(&mut text)? {
                return Err(format!("line {start}: a quoted field is not closed by the end"));
            }
        }
    }

    /// Reads the next line into `text`, counting it; false at the end.
    fn read_line(&mut self, text: &mut String) -> Result<bool, String> {
        let line = self.line + 1;
        match self.input.read_line(text) {
            Ok(0) => Ok(false),
            Ok(_) => {
                self.line = line;
                Ok(true)
            }
            Err(error) => Err(format!("line {line}: {error}")),
        }
    }
}
