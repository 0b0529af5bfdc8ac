//! The SQLite engine: the queries, one function per query, on a rusqlite connection, each
//! statement prepared once per connection (`prepare_cached`); the writer's plumbing (`step`); and
//! beside it in `sqlite/`, opening connections with their pragmas (`open.rs`), `schema.sql` by
//! version (`migrate.rs`) and backups and restores (`backup.rs`). A WeChat identity (appid, openid)
//! is a row of `identities`, the primary key, naming its one account; accounts and identities are
//! created by a lookup, then an insert when there is none, in the writer's transaction (never
//! `INSERT … ON CONFLICT`: it spends ids), where a new identity whose unionid an account has joins
//! that account.

mod backup;
mod migrate;
mod open;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql, params};

pub(super) use backup::{backup, restore};
pub(super) use migrate::{current_version, schema_version};
pub(super) use open::{open_existing, open_reader, open_writer};

use super::writer::Step;
use super::{
    Account, AccountCounts, AccountQuery, ColumnValue, DatabaseError, Edit, EditValue, EngineError,
    Profile, RecordedSession, Registration, WechatSession, account_from_row, split_identities,
};
use crate::error::Error;

/// SQLite's errors are the store's database errors, kept whole.
impl From<rusqlite::Error> for Error {
    fn from(error: rusqlite::Error) -> Self {
        Error::Database(DatabaseError(EngineError::Sqlite(error)))
    }
}

/// Runs one step of the writer's plumbing. All but the last two run from the statement cache:
/// the plumbing runs several times per request, and parsing it anew each time costs more than
/// the statements themselves.
pub(super) fn step(connection: &Connection, step: Step) -> Result<(), Error> {
    let sql = match step {
        Step::Synced => "PRAGMA synchronous = FULL",
        Step::Unsynced => "PRAGMA synchronous = NORMAL",
        Step::Begin => "BEGIN IMMEDIATE",
        Step::Savepoint => "SAVEPOINT job",
        Step::RollbackToSavepoint => "ROLLBACK TO job",
        Step::ReleaseSavepoint => "RELEASE job",
        Step::Commit => "COMMIT",
        // Once, after a failure or at the end: the checkpoint returns a row, which only a batch
        // may ignore.
        Step::Rollback => return Ok(connection.execute_batch("ROLLBACK")?),
        Step::Checkpoint => {
            return Ok(connection.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?);
        }
    };
    connection.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// The JWT secret kept in the database, storing `generated` first if there is none yet.
pub(super) fn jwt_secret_or_insert(
    connection: &Connection,
    generated: &str,
) -> Result<String, Error> {
    connection.execute(
        "INSERT INTO meta (key, value) VALUES ('jwt_secret', ?1) ON CONFLICT (key) DO NOTHING",
        params![generated],
    )?;
    Ok(connection
        .query_row("SELECT value FROM meta WHERE key = 'jwt_secret'", [], |row| row.get(0))?)
}

pub(super) fn account_by_id(connection: &Connection, id: i64) -> Result<Option<Account>, Error> {
    let mut statement = connection.prepare_cached(concat!(
        "SELECT ",
        account_columns!(),
        " FROM accounts WHERE id = ?1"
    ))?;
    Ok(statement.query_row(params![id], account_from_row).optional()?)
}

pub(super) fn account_by_openid(
    connection: &Connection,
    appid: &str,
    openid: &str,
) -> Result<Option<Account>, Error> {
    let mut statement = connection.prepare_cached(concat!(
        "SELECT ",
        account_columns!(),
        " FROM accounts WHERE id = (SELECT account_id FROM identities WHERE appid = ?1 AND openid = ?2)"
    ))?;
    Ok(statement.query_row(params![appid, openid], account_from_row).optional()?)
}

/// `Some(is_register)` for an existing account, `None` when there is none.
pub(super) fn is_registered(
    connection: &Connection,
    appid: &str,
    openid: &str,
) -> Result<Option<bool>, Error> {
    let mut statement = connection.prepare_cached(
        "SELECT is_register FROM accounts
         WHERE id = (SELECT account_id FROM identities WHERE appid = ?1 AND openid = ?2)",
    )?;
    Ok(statement.query_row(params![appid, openid], |row| row.get(0)).optional()?)
}

/// The recorded session of a WeChat identity, with the token version of the account it has, or
/// else of the account its unionid would join (`login_account`), 0 when neither exists.
pub(super) fn wechat_session(
    connection: &Connection,
    appid: &str,
    openid: &str,
) -> Result<Option<RecordedSession>, Error> {
    let mut statement = connection.prepare_cached(
        "SELECT unionid, session_key, created_at, token_version,
                coalesce(
                    (SELECT token_version FROM accounts WHERE id =
                        (SELECT account_id FROM identities WHERE appid = ?1 AND openid = ?2)),
                    (SELECT token_version FROM accounts WHERE wx_unionid = wechat_sessions.unionid
                     ORDER BY id LIMIT 1),
                    0)
         FROM wechat_sessions WHERE appid = ?1 AND openid = ?2",
    )?;
    Ok(statement
        .query_row(params![appid, openid], |row| {
            Ok(RecordedSession {
                session: WechatSession {
                    unionid: row.get(0)?,
                    session_key: row.get(1)?,
                    created_at: row.get(2)?,
                },
                token_version: row.get(3)?,
                account_token_version: row.get(4)?,
            })
        })
        .optional()?)
}

/// `save_wechat_session`'s statement. A bound value is compared with an indexed column that is
/// not unique (`wx_unionid`) as `CAST(? AS TEXT)`: compared bare, it makes SQLite prepare the
/// statement again for every new value (`sqlite3Reprepare`, more instructions than the rest of a
/// code exchange together).
const SAVE_WECHAT_SESSION: &str =
    "INSERT INTO wechat_sessions (appid, openid, unionid, session_key, created_at, token_version)
             VALUES (?1, ?2, ?3, ?4, ?5,
                     coalesce(
                         (SELECT token_version FROM accounts WHERE id =
                             (SELECT account_id FROM identities WHERE appid = ?1 AND openid = ?2)),
                         (SELECT token_version FROM accounts
                          WHERE wx_unionid = CAST(?3 AS TEXT) ORDER BY id LIMIT 1),
                         0))
             ON CONFLICT (appid, openid) DO UPDATE SET
                 unionid = coalesce(excluded.unionid, unionid),
                 session_key = excluded.session_key,
                 created_at = excluded.created_at,
                 token_version = excluded.token_version";

/// Records a `jscode2session` answer with the token version of the identity's account as of this
/// write, or else of the account its unionid would join (0 when there is neither), and the
/// unionid on an existing account that lacked one.
pub(super) fn save_wechat_session(
    connection: &Connection,
    appid: &str,
    openid: &str,
    session: &WechatSession,
) -> Result<(), Error> {
    connection.prepare_cached(SAVE_WECHAT_SESSION)?.execute(params![
        appid,
        openid,
        session.unionid,
        session.session_key,
        session.created_at
    ])?;
    if session.unionid.is_some() {
        connection
            .prepare_cached(
                "UPDATE accounts SET wx_unionid = ?3
                 WHERE id = (SELECT account_id FROM identities WHERE appid = ?1 AND openid = ?2)
                   AND wx_unionid IS NULL",
            )?
            .execute(params![appid, openid, session.unionid])?;
    }
    Ok(())
}

/// The account id for a WeChat identity, with this login's bookkeeping (`last_login`,
/// `last_ip`) set. An identity without an account joins the account of the unionid its WeChat
/// session gave (`new_identity`), or else gets a new account (not registered, username = openid,
/// joined now from `ip`).
///
/// Looks the account up first and inserts only when there is none: an `INSERT … ON CONFLICT` on
/// the AUTOINCREMENT table spends an id at every login of an existing account, and ids are seen by
/// clients (`sub`). This runs in the writer's transaction, and the writer is the only connection
/// that creates accounts, so nothing can come between the lookup and the insert; the identities'
/// primary key still guarantees one account per identity (a second insert would fail, not
/// duplicate). A new account costs one statement, which gives it its identity (the schema's
/// `accounts_identity` trigger), and no `RETURNING` (which makes SQLite build a temporary table
/// on every call). Two apps' first logins of one person (one unionid) are two jobs of the one
/// writer: the second finds the account the first made.
pub(super) fn login_account(
    connection: &Connection,
    appid: &str,
    openid: &str,
    ip: &str,
    now: i64,
) -> Result<i64, Error> {
    if let Some(id) = account_id_of(connection, appid, openid)? {
        touch_login(connection, id, ip, now)?;
        return Ok(id);
    }
    let NewIdentity { unionid, joins } = new_identity(connection, appid, openid)?;
    if let Some(id) = joins {
        add_identity(connection, appid, openid, id)?;
        touch_login(connection, id, ip, now)?;
        return Ok(id);
    }
    connection
        .prepare_cached(
            "INSERT INTO accounts
                 (username, wx_appid, wx_openid, wx_unionid, join_ip, date_joined, last_ip, last_login)
             VALUES (?2, ?1, ?2, ?5, ?3, ?4, ?3, ?4)",
        )?
        .execute(params![appid, openid, ip, now, unionid])?;
    Ok(connection.last_insert_rowid())
}

/// The id of the account of a WeChat identity, if it has one.
fn account_id_of(connection: &Connection, appid: &str, openid: &str) -> Result<Option<i64>, Error> {
    Ok(connection
        .prepare_cached("SELECT account_id FROM identities WHERE appid = ?1 AND openid = ?2")?
        .query_row(params![appid, openid], |row| row.get(0))
        .optional()?)
}

/// What an identity without an account is given: the unionid its recorded WeChat session gave,
/// and the (oldest) account with that unionid, which it joins. One person has one unionid across
/// the mini-programs of one WeChat Open Platform account.
struct NewIdentity {
    unionid: Option<String>,
    joins: Option<i64>,
}

/// Reads the identity's `NewIdentity` in one statement (the session and the account it joins);
/// an identity without a recorded session has neither.
fn new_identity(connection: &Connection, appid: &str, openid: &str) -> Result<NewIdentity, Error> {
    Ok(connection
        .prepare_cached(
            "SELECT unionid,
                    (SELECT id FROM accounts WHERE wx_unionid = wechat_sessions.unionid
                     ORDER BY id LIMIT 1)
             FROM wechat_sessions WHERE appid = ?1 AND openid = ?2",
        )?
        .query_row(params![appid, openid], |row| {
            Ok(NewIdentity { unionid: row.get(0)?, joins: row.get(1)? })
        })
        .optional()?
        .unwrap_or(NewIdentity { unionid: None, joins: None }))
}

/// Gives account `id` the identity (appid, openid) it joins (an account's own identity is the
/// trigger's, with the account).
fn add_identity(connection: &Connection, appid: &str, openid: &str, id: i64) -> Result<(), Error> {
    connection
        .prepare_cached("INSERT INTO identities (appid, openid, account_id) VALUES (?1, ?2, ?3)")?
        .execute(params![appid, openid, id])?;
    Ok(())
}

/// The openid account `id` has in mini-program `appid`, if it has an identity there.
pub(super) fn openid_in_app(
    connection: &Connection,
    id: i64,
    appid: &str,
) -> Result<Option<String>, Error> {
    Ok(connection
        .prepare_cached(
            "SELECT openid FROM identities WHERE account_id = ?1 AND appid = ?2
             ORDER BY openid LIMIT 1",
        )?
        .query_row(params![id, appid], |row| row.get(0))
        .optional()?)
}

/// Every identity of account `id`, as (appid, openid), by appid.
pub(super) fn identities_of(
    connection: &Connection,
    id: i64,
) -> Result<Vec<(String, String)>, Error> {
    let mut statement = connection.prepare(
        "SELECT appid, openid FROM identities WHERE account_id = ?1 ORDER BY appid, openid",
    )?;
    let identities = statement.query_map(params![id], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(identities.collect::<Result<_, _>>()?)
}

/// Applies the fields of `profile` that are present.
pub(super) fn update_profile(
    connection: &Connection,
    id: i64,
    profile: &Profile,
) -> Result<(), Error> {
    connection
        .prepare_cached(
            "UPDATE accounts SET
                 wx_nickname = coalesce(?2, wx_nickname),
                 wx_avatar = coalesce(?3, wx_avatar),
                 wx_gender = coalesce(?4, wx_gender),
                 wx_country = coalesce(?5, wx_country),
                 wx_province = coalesce(?6, wx_province),
                 wx_city = coalesce(?7, wx_city),
                 phone = coalesce(?8, phone)
             WHERE id = ?1",
        )?
        .execute(params![
            id,
            profile.wx_nickname,
            profile.wx_avatar,
            profile.wx_gender,
            profile.wx_country,
            profile.wx_province,
            profile.wx_city,
            profile.phone
        ])?;
    Ok(())
}

/// What a registration sets on an account that exists, with this login's bookkeeping. The
/// parameters are those of `register`'s statements: ?3 username, ?4 ip, ?5 now, ?6 phone,
/// ?7 nickname, ?8 birthday, ?9 gender.
macro_rules! registration_set {
    () => {
        "last_login = ?5, last_ip = ?4, phone = ?6, is_register = 1, username = ?3, \
         wx_nickname = coalesce(?7, wx_nickname), birthday = coalesce(?8, birthday), \
         wx_gender = coalesce(?9, wx_gender)"
    };
}

/// Registers an account with its phone and the optional fields given, records this login, and
/// returns the account as written: the account `known_id` (a token's) when given, else the
/// account of the identity (appid, openid), which joins the account of its unionid
/// (`new_identity`) or is created registered when it has none.
/// `None` when account `known_id` does not exist.
///
/// By openid, an update of the account, and an insert only when the update found none: not an
/// `INSERT … ON CONFLICT DO UPDATE`, which spends an AUTOINCREMENT id at every registration of an
/// existing account (see `login_account`, which also says why nothing can come in between). Then
/// the read back, in the same write, with a plain `SELECT`: this runs on the writer thread, which
/// every durable write waits for, so the account is written once (not created by a login, then
/// updated); and not `RETURNING`, which SQLite buffers through an ephemeral table.
pub(super) fn register(
    connection: &Connection,
    known_id: Option<i64>,
    appid: &str,
    openid: &str,
    ip: &str,
    now: i64,
    registration: &Registration,
) -> Result<Option<Account>, Error> {
    let Registration { phone, username, wx_nickname, birthday, wx_gender } = registration;
    let values: [&dyn ToSql; 9] =
        [&appid, &openid, username, &ip, &now, phone, wx_nickname, birthday, wx_gender];
    // ?1 and ?2 are not used by the update by id; they are bound so that every statement shares
    // `registration_set!`'s numbering.
    let update_by_id = |id: i64| -> Result<(), Error> {
        connection
            .prepare_cached(concat!(
                "UPDATE accounts SET ",
                registration_set!(),
                " WHERE id = ?10"
            ))?
            .execute(rusqlite::params_from_iter(values.into_iter().chain([&id as &dyn ToSql])))?;
        Ok(())
    };
    match known_id {
        None => {
            let updated = connection
                .prepare_cached(concat!(
                    "UPDATE accounts SET ",
                    registration_set!(),
                    " WHERE id = (SELECT account_id FROM identities WHERE appid = ?1 AND openid = ?2)"
                ))?
                .execute(&values[..])?;
            if updated > 0 {
                return account_by_openid(connection, appid, openid);
            }
            let NewIdentity { unionid, joins } = new_identity(connection, appid, openid)?;
            let id = match joins {
                Some(id) => {
                    add_identity(connection, appid, openid, id)?;
                    update_by_id(id)?;
                    id
                }
                None => {
                    connection
                        .prepare_cached(
                            "INSERT INTO accounts (username, wx_appid, wx_openid, wx_unionid, \
                             join_ip, date_joined, last_ip, last_login, phone, is_register, \
                             wx_nickname, birthday, wx_gender) \
                             VALUES (?3, ?1, ?2, ?10, ?4, ?5, ?4, ?5, ?6, 1, ?7, ?8, coalesce(?9, 0))",
                        )?
                        .execute(rusqlite::params_from_iter(
                            values.into_iter().chain([&unionid as &dyn ToSql]),
                        ))?;
                    connection.last_insert_rowid()
                }
            };
            account_by_id(connection, id)
        }
        Some(id) => {
            update_by_id(id)?;
            account_by_id(connection, id)
        }
    }
}

/// Revokes every token issued to the account so far, and so ends the sign-ins that produced them:
/// its recorded WeChat session, and any remembered code answer, now carry an older token version
/// (`RecordedSession::ended`). False when there is no such account.
pub(super) fn revoke_tokens(connection: &Connection, id: i64) -> Result<bool, Error> {
    let changed = connection
        .prepare_cached("UPDATE accounts SET token_version = token_version + 1 WHERE id = ?1")?
        .execute(params![id])?;
    Ok(changed == 1)
}

/// Login bookkeeping: when and from where, unless a later login is recorded already (the
/// interface's rule, which MySQL's bookkeeping needs: here only a clock set back meets it).
pub(super) fn touch_login(
    connection: &Connection,
    id: i64,
    ip: &str,
    now: i64,
) -> Result<(), Error> {
    connection
        .prepare_cached(
            "UPDATE accounts SET last_login = ?2, last_ip = ?3
             WHERE id = ?1 AND (last_login IS NULL OR last_login <= ?2)",
        )?
        .execute(params![id, now, ip])?;
    Ok(())
}

/// Of accounts `ids`, those no other transaction holds, and those another holds: all of them and
/// none, as the writer's transaction is the only one that writes.
pub(super) fn accounts_free_to_write(
    _: &Connection,
    ids: &[i64],
) -> Result<(Vec<i64>, Vec<i64>), Error> {
    Ok((ids.to_vec(), Vec::new()))
}

// ---- Observability: read-only queries for /readyz and /metrics --------------------------------

/// Counts accounts, for the metrics gauges and `wxauth users list`: one scan of the table, so
/// `metrics` reuses a count for a while rather than scanning at every scrape.
pub(super) fn account_counts(connection: &Connection) -> Result<AccountCounts, Error> {
    Ok(connection
        .prepare_cached("SELECT count(*), coalesce(sum(is_register), 0) FROM accounts")?
        .query_row([], |row| Ok(AccountCounts { accounts: row.get(0)?, registered: row.get(1)? }))?)
}

// ---- End of observability queries ------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// The operator's commands (admin.rs): listing, exporting and finding accounts across appids, and
// changing, disabling and deleting them from outside the server (each in one transaction,
// `store::in_transaction`); backups and restores are in `sqlite/backup.rs`. None of these opens a
// database that does not exist yet; admin.rs checks that first and says so.

/// Every account with an identity of this openid, whatever its appid (one deployment may serve
/// several mini-programs), by id.
pub(super) fn accounts_with_openid(
    connection: &Connection,
    openid: &str,
) -> Result<Vec<Account>, Error> {
    let mut statement = connection.prepare(concat!(
        "SELECT ",
        account_columns!(),
        " FROM accounts WHERE id IN (SELECT account_id FROM identities WHERE openid = ?1) \
          ORDER BY id"
    ))?;
    let accounts = statement.query_map(params![openid], account_from_row)?;
    Ok(accounts.collect::<Result<_, _>>()?)
}

/// Hands the accounts to `visit` one at a time, by id, each with its identities other than its
/// own, by appid then openid, skipping `offset` and stopping after `limit` (all when `None`).
/// Rows are read as they are visited, never collected, so a million accounts cost the memory of
/// one; the read sees one snapshot of the database throughout. The other identities come in the
/// same row (`group_concat` over the `identities_account` index), not a query per account.
pub(super) fn each_account(
    connection: &Connection,
    limit: Option<u64>,
    offset: u64,
    mut visit: impl FnMut(Account, Vec<(String, String)>) -> Result<(), Error>,
) -> Result<(), Error> {
    // SQLite reads a negative LIMIT as "no limit"; numbers past i64 mean the same.
    let limit = limit.map_or(-1, |limit| i64::try_from(limit).unwrap_or(-1));
    let offset = i64::try_from(offset).unwrap_or(i64::MAX);
    let mut statement = connection.prepare(concat!(
        "SELECT ",
        account_columns!(),
        ", (SELECT group_concat(appid || ':' || openid, ' ' ORDER BY appid, openid)
            FROM identities WHERE account_id = accounts.id
              AND NOT (appid = accounts.wx_appid AND openid = accounts.wx_openid))
         FROM accounts ORDER BY id LIMIT ?1 OFFSET ?2"
    ))?;
    let identities = statement.column_count() - 1;
    let mut rows = statement.query(params![limit, offset])?;
    while let Some(row) = rows.next()? {
        visit(account_from_row(row)?, split_identities(row.get(identities)?))?;
    }
    Ok(())
}

/// The accounts that match any field of `query` given: `phone`, `openid` (of any of the
/// account's identities) and `unionid` exactly,
/// `nickname` as a part of `wx_nickname` (`instr`, which has no wildcards to escape), by id. An
/// absent field is bound as NULL, which matches nothing.
pub(super) fn find_accounts(
    connection: &Connection,
    query: &AccountQuery,
) -> Result<Vec<Account>, Error> {
    let AccountQuery { phone, openid, unionid, nickname } = query;
    let mut statement = connection.prepare(concat!(
        "SELECT ",
        account_columns!(),
        " FROM accounts WHERE phone = ?1 \
          OR id IN (SELECT account_id FROM identities WHERE openid = ?2) OR wx_unionid = ?3 \
          OR instr(wx_nickname, ?4) > 0 ORDER BY id"
    ))?;
    let accounts =
        statement.query_map(params![phone, openid, unionid, nickname], account_from_row)?;
    Ok(accounts.collect::<Result<_, _>>()?)
}

/// Applies `edits`, at least one, to account `id` in one statement, their field names checked
/// (`store::update_account`).
pub(super) fn update_account(
    connection: &Connection,
    id: i64,
    edits: &[Edit],
) -> Result<(), Error> {
    let mut sets = Vec::with_capacity(edits.len());
    let mut values: Vec<&dyn ToSql> = vec![&id];
    for (index, Edit { field, value }) in edits.iter().enumerate() {
        sets.push(format!("{field} = ?{}", index + 2));
        values.push(match value {
            EditValue::Text(text) => text,
            EditValue::Integer(number) => number,
        });
    }
    let sql = format!("UPDATE accounts SET {} WHERE id = ?1", sets.join(", "));
    connection.execute(&sql, &values[..])?;
    Ok(())
}

/// Disables account `id` as of `now` and revokes every token issued to it so far, as logout does
/// (`revoke_tokens`), which also ends its recorded WeChat session; false when it is already
/// disabled (nothing changes) or does not exist.
pub(super) fn disable_account(connection: &Connection, id: i64, now: i64) -> Result<bool, Error> {
    let changed = connection.execute(
        "UPDATE accounts SET disabled_at = ?2, token_version = token_version + 1
         WHERE id = ?1 AND disabled_at IS NULL",
        params![id, now],
    )?;
    Ok(changed == 1)
}

/// Enables account `id` again; its tokens from before stay revoked. False when it is not
/// disabled or does not exist.
pub(super) fn enable_account(connection: &Connection, id: i64) -> Result<bool, Error> {
    let changed = connection.execute(
        "UPDATE accounts SET disabled_at = NULL WHERE id = ?1 AND disabled_at IS NOT NULL",
        params![id],
    )?;
    Ok(changed == 1)
}

/// Deletes account `id`, its identities and their recorded WeChat sessions (their session keys),
/// so that each identity's next login makes a new account; false when there is no such account.
/// Three statements: the caller runs them in one transaction (`store::in_transaction`).
/// AUTOINCREMENT never gives the id out again.
pub(super) fn delete_account(connection: &Connection, id: i64) -> Result<bool, Error> {
    connection.execute(
        "DELETE FROM wechat_sessions
         WHERE (appid, openid) IN (SELECT appid, openid FROM identities WHERE account_id = ?1)",
        params![id],
    )?;
    connection.execute("DELETE FROM identities WHERE account_id = ?1", params![id])?;
    Ok(connection.execute("DELETE FROM accounts WHERE id = ?1", params![id])? == 1)
}

/// Inserts `account` as it is, every column with its id, and so its identity (the trigger), then
/// `identities`, its others, for `wxauth users import` (in the operator's transaction, after it
/// checked that neither the id nor any identity is taken). An id above AUTOINCREMENT's
/// high-water mark raises the mark, so new accounts get ids after it.
pub(super) fn insert_account(
    connection: &Connection,
    account: &Account,
    identities: &[(String, String)],
) -> Result<(), Error> {
    let mut statement = connection.prepare_cached(concat!(
        "INSERT INTO accounts (",
        account_columns!(),
        ") VALUES (",
        account_parameters!(),
        ")"
    ))?;
    let values = account.column_values().map(|value| match value {
        ColumnValue::Null => ToSqlOutput::Owned(rusqlite::types::Value::Null),
        ColumnValue::Integer(number) => ToSqlOutput::Owned(rusqlite::types::Value::Integer(number)),
        ColumnValue::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
    });
    statement.execute(rusqlite::params_from_iter(values))?;
    for (appid, openid) in identities {
        add_identity(connection, appid, openid, account.id)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Opener, temp_database};

    #[test]
    fn recording_sessions_never_prepares_its_statement_again() {
        let path = temp_database("no-reprepare");
        let (connection, _) = open_writer(&path, Opener::Server).unwrap();
        for round in 0..4 {
            let session = WechatSession {
                unionid: Some(format!("union-{round}")),
                session_key: "key".into(),
                created_at: round,
            };
            save_wechat_session(&connection, "wxa", &format!("openid-{round}"), &session).unwrap();
        }
        let statement = connection.prepare_cached(SAVE_WECHAT_SESSION).unwrap();
        assert_eq!(statement.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    #[test]
    fn a_session_ends_when_its_account_logs_out_and_the_next_one_is_current() {
        let path = temp_database("session-ends");
        let (connection, _) = open_writer(&path, Opener::Server).unwrap();
        let session = WechatSession { unionid: None, session_key: "key".into(), created_at: 100 };
        let read = |openid| wechat_session(&connection, "wxa", openid).unwrap().unwrap();
        let versions = |recorded: RecordedSession| {
            (recorded.token_version, recorded.account_token_version, recorded.ended())
        };
        // Recorded before its account exists: at version 0, which a new account has.
        save_wechat_session(&connection, "wxa", "openid-s", &session).unwrap();
        save_wechat_session(&connection, "wxa", "openid-other", &session).unwrap();
        assert_eq!(versions(read("openid-s")), (0, 0, false));
        let id = login_account(&connection, "wxa", "openid-s", "::1", 100).unwrap();
        login_account(&connection, "wxa", "openid-other", "::1", 100).unwrap();
        assert_eq!(versions(read("openid-s")), (0, 0, false));

        assert!(revoke_tokens(&connection, id).unwrap());
        assert_eq!(versions(read("openid-s")), (0, 1, true));
        assert_eq!(versions(read("openid-other")), (0, 0, false), "other accounts keep theirs");
        save_wechat_session(&connection, "wxa", "openid-s", &session).unwrap();
        assert_eq!(versions(read("openid-s")), (1, 1, false), "a new code signs in again");
    }

    /// An operator's command (`wxauth users delete`) runs in one transaction: a failure after its
    /// first statement leaves everything as it was; done, the account and its session are gone
    /// and its id is not given out again.
    #[test]
    fn an_operators_transaction_commits_whole_or_not_at_all() {
        use crate::store;
        let path = temp_database("in-transaction");
        let (writer, _) = open_writer(&path, Opener::Server).unwrap();
        let session = WechatSession { unionid: None, session_key: "key".into(), created_at: 1 };
        save_wechat_session(&writer, "wxa", "openid-t", &session).unwrap();
        let id = login_account(&writer, "wxa", "openid-t", "::1", 100).unwrap();
        drop(writer);

        let connection = store::open_existing(&path).unwrap();
        let failed: Result<bool, Error> = store::in_transaction(&connection, |connection| {
            store::delete_account(connection, id)?;
            Err(Error::Internal("stopped half way".into()))
        });
        assert!(failed.is_err());
        assert!(store::account_by_id(&connection, id).unwrap().is_some(), "rolled back");
        assert!(store::wechat_session(&connection, "wxa", "openid-t").unwrap().is_some());

        let deleted =
            store::in_transaction(&connection, |connection| store::delete_account(connection, id));
        assert!(deleted.unwrap());
        assert!(store::account_by_id(&connection, id).unwrap().is_none());
        assert!(store::wechat_session(&connection, "wxa", "openid-t").unwrap().is_none());
        let again = store::in_transaction(&connection, |connection| {
            store::login_account(connection, "wxa", "openid-t", "::1", 200)
        });
        assert_eq!(again.unwrap(), id + 1, "a new account, with a new id");
    }

    /// One person, one account: an identity in a second app joins the account of the unionid its
    /// session gave, by login or by registration; without a unionid each identity is its own
    /// account; deleting the account deletes its identities and their sessions.
    #[test]
    fn an_identity_joins_the_account_of_its_unionid_and_only_then() {
        let path = temp_database("identities");
        let (connection, _) = open_writer(&path, Opener::Server).unwrap();
        let session = |unionid: Option<&str>| WechatSession {
            unionid: unionid.map(Into::into),
            session_key: "key".into(),
            created_at: 1,
        };
        save_wechat_session(&connection, "wxa", "a-1", &session(Some("u-1"))).unwrap();
        let id = login_account(&connection, "wxa", "a-1", "::1", 100).unwrap();
        save_wechat_session(&connection, "wxb", "b-1", &session(Some("u-1"))).unwrap();
        assert_eq!(login_account(&connection, "wxb", "b-1", "::1", 101).unwrap(), id);
        assert_eq!(login_account(&connection, "wxb", "b-1", "::1", 102).unwrap(), id);
        save_wechat_session(&connection, "wxc", "c-1", &session(Some("u-1"))).unwrap();
        let registration = Registration {
            phone: "13800138000".into(),
            username: "c-1".into(),
            wx_nickname: None,
            birthday: None,
            wx_gender: None,
        };
        let registered =
            register(&connection, None, "wxc", "c-1", "::1", 103, &registration).unwrap().unwrap();
        assert_eq!((registered.id, registered.is_register), (id, true));
        assert_eq!(registered.wx_openid, "a-1", "the identity that made the account");
        assert_eq!(openid_in_app(&connection, id, "wxb").unwrap().as_deref(), Some("b-1"));
        assert_eq!(openid_in_app(&connection, id, "wxd").unwrap(), None);
        assert_eq!(identities_of(&connection, id).unwrap().len(), 3);

        // No unionid: the same person or not, each identity is its own account.
        save_wechat_session(&connection, "wxa", "a-2", &session(None)).unwrap();
        save_wechat_session(&connection, "wxb", "b-2", &session(None)).unwrap();
        let first = login_account(&connection, "wxa", "a-2", "::1", 100).unwrap();
        let second = login_account(&connection, "wxb", "b-2", "::1", 100).unwrap();
        assert!(first != second && first != id && second != id);

        // An account inserted by other means than the server's (an operator's SQL) has its
        // identity too, so its first login is that account's, not a second one; and a second
        // account with an identity that has one is refused at its insert.
        connection
            .execute(
                "INSERT INTO accounts (username, wx_appid, wx_openid, date_joined)
                 VALUES ('loaded', 'wxa', 'a-3', 1)",
                [],
            )
            .unwrap();
        let loaded = connection.last_insert_rowid();
        assert_eq!(login_account(&connection, "wxa", "a-3", "::1", 100).unwrap(), loaded);
        assert_eq!(openid_in_app(&connection, loaded, "wxa").unwrap().as_deref(), Some("a-3"));
        let twice = connection.execute(
            "INSERT INTO accounts (username, wx_appid, wx_openid, date_joined)
             VALUES ('again', 'wxa', 'a-3', 1)",
            [],
        );
        assert!(twice.unwrap_err().to_string().contains("UNIQUE constraint failed: identities"));

        assert!(delete_account(&connection, id).unwrap());
        assert!(identities_of(&connection, id).unwrap().is_empty());
        assert!(wechat_session(&connection, "wxb", "b-1").unwrap().is_none());
        assert_ne!(login_account(&connection, "wxb", "b-1", "::1", 104).unwrap(), id);
    }

    /// The account's fields are one list (`account!`): the object the API shows has exactly
    /// `Account::FIELDS`, in that order, and the query reads those columns and the hidden ones.
    #[test]
    fn the_account_object_shows_its_fields_in_order() {
        let path = temp_database("account-fields");
        let (connection, _) = open_writer(&path, Opener::Server).unwrap();
        let id = login_account(&connection, "wxa", "openid-f", "::1", 100).unwrap();
        let account = account_by_id(&connection, id).unwrap().unwrap();
        let text = serde_json::to_string(&account).unwrap();
        let mut keys = Vec::new();
        let mut rest = text.as_str();
        // Every value of a new account is a number, a boolean, null, or text without a quote.
        while let Some((_, after)) = rest.split_once(['{', ',']) {
            let (key, after) = after.trim_start_matches('"').split_once("\":").unwrap();
            keys.push(key);
            rest = after;
        }
        assert_eq!(keys, Account::FIELDS);
        let mut columns = Account::FIELDS.to_vec();
        columns.extend(["token_version", "disabled_at", "wx_appid"]);
        assert_eq!(account_columns!().split(", ").collect::<Vec<_>>(), columns);
        assert_eq!(
            (account.id, account.wx_openid.as_str(), account.token_version),
            (id, "openid-f", 0)
        );
    }

    #[test]
    fn writes_to_accounts_build_no_temporary_tables() {
        // A CHECK with `IN (three or more values)` made SQLite build a b-tree in every statement
        // that wrote the column (schema version 3 says why). The schema's rules are what matter,
        // so a write of every column stands for every write wxauth makes.
        let path = temp_database("ephemeral");
        let (connection, _) = open_writer(&path, Opener::Server).unwrap();
        let columns: Vec<String> = connection
            .prepare("SELECT name FROM pragma_table_info('accounts') WHERE name <> 'id'")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let values = vec!["NULL"; columns.len()].join(", ");
        let sets: Vec<String> = columns.iter().map(|column| format!("{column} = NULL")).collect();
        for sql in [
            format!("INSERT INTO accounts ({}) VALUES ({values})", columns.join(", ")),
            format!("UPDATE accounts SET {} WHERE id = 1", sets.join(", ")),
        ] {
            let mut explain = connection.prepare(&format!("EXPLAIN {sql}")).unwrap();
            let opcodes: Vec<String> = explain
                .query_map([], |row| row.get(1))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert!(opcodes.iter().any(|opcode| opcode == "Insert"), "{sql}: {opcodes:?}");
            assert!(!opcodes.iter().any(|opcode| opcode == "OpenEphemeral"), "{sql}: {opcodes:?}");
        }
    }

    #[test]
    fn register_creates_a_registered_account_or_registers_the_existing_one() {
        let path = temp_database("register");
        let (connection, _) = open_writer(&path, Opener::Server).unwrap();
        let session = WechatSession {
            unionid: Some("union-1".into()),
            session_key: "key".into(),
            created_at: 50,
        };
        save_wechat_session(&connection, "wxa", "openid-new", &session).unwrap();
        let registration =
            |phone: &str, nickname: Option<&str>, gender: Option<i64>| Registration {
                phone: phone.into(),
                username: "openid-new".into(),
                wx_nickname: nickname.map(Into::into),
                birthday: None,
                wx_gender: gender,
            };

        // No account yet: created registered, with this login's bookkeeping and the session's
        // unionid, and the schema's defaults where nothing was given.
        let created = register(
            &connection,
            None,
            "wxa",
            "openid-new",
            "203.0.113.5",
            100,
            &registration("13800138000", None, None),
        )
        .unwrap()
        .unwrap();
        assert!(created.is_register);
        assert_eq!(created.phone.as_deref(), Some("13800138000"));
        assert_eq!(created.username, "openid-new");
        assert_eq!(created.wx_unionid.as_deref(), Some("union-1"));
        assert_eq!((created.wx_gender, created.wx_nickname.as_deref()), (0, None));
        assert_eq!((created.date_joined, created.last_login), (100, Some(100)));
        assert_eq!(created.join_ip.as_deref(), Some("203.0.113.5"));
        assert_eq!(created.last_ip.as_deref(), Some("203.0.113.5"));
        assert_eq!(created.member_score, 0);

        // An account from a login: registered in place, given fields set, others kept, joining
        // kept and this login recorded.
        let logged_in =
            login_account(&connection, "wxa", "openid-old", "198.51.100.1", 10).unwrap();
        let with_nickname = Profile { wx_nickname: Some("Old".into()), ..Profile::default() };
        update_profile(&connection, logged_in, &with_nickname).unwrap();
        let mut again = registration("13900001111", None, Some(2));
        again.username = "openid-old".into();
        let registered =
            register(&connection, None, "wxa", "openid-old", "::1", 200, &again).unwrap().unwrap();
        assert_eq!(registered.id, logged_in);
        assert!(registered.is_register);
        assert_eq!(registered.phone.as_deref(), Some("13900001111"));
        assert_eq!((registered.wx_nickname.as_deref(), registered.wx_gender), (Some("Old"), 2));
        assert_eq!((registered.date_joined, registered.last_login), (10, Some(200)));
        assert_eq!(registered.join_ip.as_deref(), Some("198.51.100.1"));
        assert_eq!(registered.last_ip.as_deref(), Some("::1"));

        // By id (a token's account): the same, and nothing for an id that does not exist.
        let by_id = register(
            &connection,
            Some(created.id),
            "wxa",
            "ignored",
            "::2",
            300,
            &registration("13700000000", Some("New"), None),
        )
        .unwrap()
        .unwrap();
        assert_eq!((by_id.id, by_id.phone.as_deref()), (created.id, Some("13700000000")));
        assert_eq!((by_id.wx_nickname.as_deref(), by_id.last_login), (Some("New"), Some(300)));
        let missing = register(
            &connection,
            Some(9999),
            "wxa",
            "openid-none",
            "::3",
            400,
            &registration("13600000000", None, None),
        )
        .unwrap();
        assert!(missing.is_none());
        let count: i64 =
            connection.query_row("SELECT count(*) FROM accounts", [], |row| row.get(0)).unwrap();
        assert_eq!(count, 2);
    }
}
