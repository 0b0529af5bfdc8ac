//! The MySQL engine (MySQL >= 8.0, MariaDB >= 10.6; `.ci/run` tests MySQL 9.7 and MariaDB 10.11),
//! through the blocking `mysql` crate: the queries, one function per query, in SQL both servers
//! accept; the transaction plumbing (`step`); and beside it in `mysql/`, opening (the URL, the
//! pool, `schema.sql` by version under a lock: `open.rs`) and the schema (`schema.sql`).
//!
//! A `Connection` is the process's pool for the database, and, inside a transaction, the pooled
//! connection that transaction runs on (taken at `Step::Begin`, given back at its end); outside
//! one, each query takes a connection from the pool for itself. Statements stay prepared on each
//! pooled connection (the crate's statement cache). Every session reads at READ COMMITTED, so a
//! statement sees what any instance committed before it.
//!
//! Several instances share the database, so nothing here may rely on being the only writer:
//! accounts are created by a lookup, then an `INSERT … ON DUPLICATE KEY UPDATE` that, when another
//! instance created the identity's account in between, takes the winner's row (its id, with this
//! login's bookkeeping) instead of failing; such a race spends one AUTO_INCREMENT id, an ordinary
//! login none (a rolled-back batch, below, the ids of its accounts). An identity (appid, openid) is
//! the primary key of `identities`, inserted with `ON DUPLICATE KEY UPDATE` and read back, so the
//! row that got there first names the account. A new identity whose WeChat session gave a unionid
//! first locks that unionid's row of `unionid_joins` for the rest of its transaction: two
//! instances' first logins of one person through two apps take turns, and the second joins the
//! account the first made. The accounts of identities without one (first logins, registrations) are
//! also made many at a time (`create_accounts`): multi-row inserts in one transaction, run once
//! more when another transaction made one of its accounts meanwhile, and on any other failure left
//! to `login_account` and `register`, one write each. A connection the server dropped (a restart)
//! fails its query with `database_unavailable`; a query outside a transaction is tried once more on
//! a new connection (`Connection::with`), unless it waited too long (for a row lock, or past the
//! read timeout). A connection whose statement the read timeout cut off, or whose stream broke, is
//! never read again (`sever`).

mod open;

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use mysql::prelude::{AsStatement, FromRow, FromValue, Protocol, Queryable};
use mysql::{Params, Pool, PooledConn, QueryResult, Row, Value, params};

pub(super) use open::{is_url, open_reader, open_writer, set_password};

use super::writer::Step;
use super::{
    Account, AccountChange, AccountCounts, AccountQuery, CodeAnswer, CodeClaim, ColumnValue,
    DatabaseError, Edit, EditValue, EngineError, IdentityWrite, Profile, RecordedSession,
    Registration, WechatSession, account_from_mysql_row, split_identities,
};
use crate::error::Error;

/// MySQL's errors are the store's database errors, kept whole; those that mean the server cannot
/// be reached (a connection refused, dropped, timed out or out of step, `lost_in_the_stream`; a
/// server shutting down or out of connections; a lock wait timed out, a deadlock) are
/// `DatabaseUnavailable`.
impl From<mysql::Error> for Error {
    fn from(error: mysql::Error) -> Self {
        let unavailable = match &error {
            error if lost_in_the_stream(error) => true,
            // ER_CON_COUNT_ERROR, ER_SERVER_SHUTDOWN, ER_CONNECTION_KILLED (MariaDB),
            // ER_CLIENT_INTERACTION_TIMEOUT (MySQL), ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK.
            mysql::Error::MySqlError(error) => {
                matches!(error.code, 1040 | 1053 | 1927 | 4031 | 1205 | 1213)
            }
            _ => false,
        };
        let error = DatabaseError(EngineError::Mysql(error));
        if unavailable { Error::DatabaseUnavailable(error) } else { Error::Database(error) }
    }
}

/// Whether `error` is a unique key's refusal (ER_DUP_ENTRY).
pub(super) fn is_duplicate(error: &DatabaseError) -> bool {
    matches!(&error.0, EngineError::Mysql(mysql::Error::MySqlError(error)) if error.code == 1062)
}

impl From<mysql::FromValueError> for Error {
    fn from(_: mysql::FromValueError) -> Self {
        Error::Internal("database: a column holds a value of an unexpected type".into())
    }
}

/// A connection to a MySQL database: its pool, and the pooled connection of the transaction in
/// progress, if one is.
pub(super) struct Connection {
    pool: Pool,
    held: Mutex<Option<PooledConn>>,
    /// For a connection one thread keeps (`pinned`): the pooled connection between its
    /// transactions.
    kept: Option<Mutex<Option<PooledConn>>>,
}

impl Connection {
    pub(super) fn new(pool: Pool) -> Connection {
        Connection { pool, held: Mutex::new(None), kept: None }
    }

    /// A connection whose transactions all run on one pooled connection, kept between them
    /// (another is taken when the server dropped it): one thread's own, so that its statements
    /// are prepared on that connection alone. The account batches' statements differ by batch
    /// size, and a prepared multi-row insert keeps a description of each parameter: run on
    /// whichever connection the pool gives, they fill the statement cache of every one. Its
    /// session waits at most 2 s for a row lock (`PINNED_SETUP`).
    pub(super) fn pinned(pool: Pool) -> Connection {
        Connection { pool, held: Mutex::new(None), kept: Some(Mutex::new(None)) }
    }

    /// Closes the connections this one holds (`sever`, `discard`: the server rolls back their
    /// transaction), after a panic in a transaction left them in a state nobody knows.
    pub(super) fn abandon(&self) {
        let kept = self.kept.as_ref().and_then(|kept| lock(kept).take());
        for conn in [self.held().take(), kept].into_iter().flatten() {
            sever(&conn);
            discard(conn);
        }
    }

    /// The pool, for another connection to the same database.
    pub(super) fn pool(&self) -> Pool {
        self.pool.clone()
    }

    fn held(&self) -> MutexGuard<'_, Option<PooledConn>> {
        lock(&self.held)
    }

    fn take(&self) -> Result<PooledConn, Error> {
        Ok(self.pool.try_get_conn(open::wait_for_connection())?)
    }

    /// Runs `query` on the transaction's connection, or on one from the pool. Outside a
    /// transaction, a query that failed for want of the server (its connection dead since a
    /// restart, a deadlock) runs once more on a new one; one that waited too long does not
    /// (`waited_too_long`), as another try would most likely wait as long again, and one the
    /// read timeout cut off may still be running on the server. Those run so are
    /// reads or writes that may run twice (`INSERT IGNORE`, updates to the same values), with one
    /// exception: should `claim_code`'s reply be lost after its insert was done, the second try
    /// finds the claim the first made and answers `Pending`, and the request waits for a claim of
    /// its own as for another's.
    fn with<T>(&self, query: impl Fn(&mut PooledConn) -> Result<T, Error>) -> Result<T, Error> {
        let mut held = self.held();
        if let Some(conn) = held.as_mut() {
            let result = query(conn);
            return sever_if_lost(conn, result);
        }
        drop(held);
        let mut conn = self.take()?;
        let result = query(&mut conn);
        match sever_if_lost(&conn, result) {
            Err(error) if waited_too_long(&error) => {
                discard(conn);
                Err(error)
            }
            Err(Error::DatabaseUnavailable(_)) => {
                discard(conn);
                let mut conn = self.take()?;
                let result = query(&mut conn);
                let result = sever_if_lost(&conn, result);
                if let Err(Error::DatabaseUnavailable(_)) = result {
                    discard(conn);
                }
                result
            }
            result => result,
        }
    }
}

/// What a pinned connection's session sets first: a row lock it waits for more than 2 s (another
/// instance's transaction holding an identity or a unionid) fails its batch, which the writes then
/// leave for one transaction each, rather than hold up every batch behind it for the 10 s other
/// connections wait (`open::LOCK_WAIT`).
const PINNED_SETUP: &str = "SET SESSION innodb_lock_wait_timeout = 2";

fn lock(conn: &Mutex<Option<PooledConn>>) -> MutexGuard<'_, Option<PooledConn>> {
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Gives a connection whose query failed for want of the server back to the pool so that the pool
/// keeps it only if it still works: the pool resets it first (one round trip), and a dead one
/// (or one `sever`ed) fails that and is dropped, rather than handed to the next query.
fn discard(mut conn: PooledConn) {
    conn.reset_connection(true);
}

/// `discard`s `conn`, whose last statement failed with `error`, `sever`ed first when that left it
/// out of step with the server.
fn discard_after(conn: PooledConn, error: &mysql::Error) {
    if lost_in_the_stream(error) {
        sever(&conn);
    }
    discard(conn);
}

/// Whether `error` leaves unknown where its connection's conversation with the server stands: a
/// read or write that timed out or broke off, a reply that did not parse. A server's refusal (an
/// error packet, read whole) and a value of the wrong type leave it in step.
fn lost_in_the_stream(error: &mysql::Error) -> bool {
    match error {
        mysql::Error::IoError(_)
        | mysql::Error::CodecError(_)
        | mysql::Error::DriverError(_)
        | mysql::Error::TlsError(_) => true,
        mysql::Error::MySqlError(_)
        | mysql::Error::UrlError(_)
        | mysql::Error::FromValueError(_)
        | mysql::Error::FromRowError(_) => false,
    }
}

/// Whether `error` is a wait given up: a read or write the timeout cut off (`open::READ_TIMEOUT`;
/// the socket's EAGAIN, which reaches wxauth through the crate's packet codec), or a row lock the
/// server stopped waiting for (ER_LOCK_WAIT_TIMEOUT, after `open::LOCK_WAIT`).
fn waited_too_long(error: &Error) -> bool {
    let Error::DatabaseUnavailable(DatabaseError(EngineError::Mysql(error))) = error else {
        return false;
    };
    let cut_off = |io: &std::io::Error| {
        matches!(io.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
    };
    match error {
        mysql::Error::MySqlError(error) => error.code == 1205,
        mysql::Error::IoError(io) => cut_off(io),
        mysql::Error::CodecError(codec) => std::error::Error::source(codec)
            .and_then(|source| source.downcast_ref::<std::io::Error>())
            .is_some_and(cut_off),
        _ => false,
    }
}

/// `sever`s `conn` when `result` failed in a way that leaves it out of step with the server
/// (`lost_in_the_stream`).
fn sever_if_lost<T>(conn: &mysql::Conn, result: Result<T, Error>) -> Result<T, Error> {
    if let Err(Error::DatabaseUnavailable(DatabaseError(EngineError::Mysql(error)))) = &result
        && lost_in_the_stream(error)
    {
        sever(conn);
    }
    result
}

/// Ends `conn`'s traffic for good (`sever_socket`).
fn sever(conn: &mysql::Conn) {
    use std::os::fd::AsRawFd;
    sever_socket(conn.as_raw_fd());
}

/// Puts /dev/null in the place of the socket `fd` (a connection's, plain or under TLS): the
/// socket closes (the server sees the connection end, and rolls back its transaction), and the
/// connection it belonged to then reads only an end of file, which fails its next command, so the
/// pool drops it (`discard`), and nothing is ever read from that socket again. A statement cut off
/// by the read timeout (30 s) is still running on the server, and its reply, when it comes, would
/// otherwise be read as the reply to the connection's next command, and that one's to the one
/// after: a request would get another's rows, or the answer to the reset meant to clear it. Writes
/// go nowhere without an error or a signal: rustls writes with writev(2), which a shut-down socket
/// would answer with SIGPIPE, and the operator's commands end on SIGPIPE (main.rs).
fn sever_socket(fd: std::os::fd::RawFd) {
    use std::os::fd::AsRawFd;
    let dev_null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null");
    // SAFETY: `fd` is a connection's open socket, which its owner closes later; dup3(2) only
    // swaps what that descriptor refers to, atomically, keeping it close-on-exec. Should that
    // fail (no /dev/null, no descriptor left), shutdown(2) still ends the traffic, though a write
    // under TLS then raises SIGPIPE.
    unsafe {
        let swapped = match &dev_null {
            Ok(file) => libc::dup3(file.as_raw_fd(), fd, libc::O_CLOEXEC) == fd,
            Err(_) => false,
        };
        if !swapped {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    }
}

/// Runs one step of the transaction plumbing. Durability is the server's (InnoDB with
/// `innodb_flush_log_at_trx_commit = 1` and `sync_binlog = 1` syncs every commit), so the sync
/// levels and the checkpoint have nothing to do.
pub(super) fn step(connection: &Connection, step: Step) -> Result<(), Error> {
    let sql = match step {
        Step::Synced | Step::Unsynced | Step::Checkpoint => return Ok(()),
        Step::Begin => {
            let mut conn = match &connection.kept {
                None => connection.take()?,
                Some(kept) => match lock(kept).take() {
                    Some(conn) => conn,
                    None => {
                        let mut conn = connection.take()?;
                        if let Err(error) = conn.query_drop(PINNED_SETUP) {
                            discard_after(conn, &error);
                            return Err(error.into());
                        }
                        conn
                    }
                },
            };
            if let Err(error) = conn.query_drop("START TRANSACTION") {
                discard_after(conn, &error);
                return Err(error.into());
            }
            *connection.held() = Some(conn);
            return Ok(());
        }
        Step::Savepoint => "SAVEPOINT job",
        Step::RollbackToSavepoint => "ROLLBACK TO SAVEPOINT job",
        Step::ReleaseSavepoint => "RELEASE SAVEPOINT job",
        Step::Commit | Step::Rollback => {
            let Some(mut conn) = connection.held().take() else {
                return Err(Error::Internal("no transaction to end".into()));
            };
            let sql = if step == Step::Commit { "COMMIT" } else { "ROLLBACK" };
            let result = conn.query_drop(sql);
            match (&result, &connection.kept) {
                (Err(error), _) => discard_after(conn, error),
                (Ok(()), Some(kept)) => *lock(kept) = Some(conn),
                (Ok(()), None) => {}
            }
            return Ok(result?);
        }
    };
    connection.with(|conn| Ok(conn.query_drop(sql)?))
}

/// The first row `stmt` gives, as `T`, once the rest of its reply is read. The `mysql` crate's
/// own `exec_first` reads the rest as it drops the result, and drops a failure to read it too,
/// which would leave the connection out of step unseen (`sever`).
fn exec_first<T: FromRow>(
    conn: &mut impl Queryable,
    stmt: impl AsStatement,
    params: impl Into<Params>,
) -> Result<Option<T>, mysql::Error> {
    first_row(conn.exec_iter(stmt, params)?)
}

/// `exec_first` for a statement sent as text.
fn query_first<T: FromRow>(
    conn: &mut impl Queryable,
    sql: impl AsRef<str>,
) -> Result<Option<T>, mysql::Error> {
    first_row(conn.query_iter(sql)?)
}

fn first_row<T: FromRow>(
    rows: QueryResult<'_, '_, '_, impl Protocol>,
) -> Result<Option<T>, mysql::Error> {
    let mut first = None;
    for row in rows {
        first.get_or_insert(row?);
    }
    Ok(first.map(mysql::from_row_opt).transpose()?)
}

/// Column `index` of `row`, as `T`.
pub(super) fn column<T: FromValue>(row: &mut Row, index: usize) -> Result<T, Error> {
    match row.take_opt::<T, usize>(index) {
        Some(value) => Ok(value?),
        None => Err(Error::Internal(format!("database: no column {index}"))),
    }
}

fn first_account(
    connection: &Connection,
    sql: &'static str,
    params: Params,
) -> Result<Option<Account>, Error> {
    connection.with(|conn| {
        let row: Option<Row> = exec_first(conn, sql, params.clone())?;
        row.map(account_from_mysql_row).transpose()
    })
}

fn accounts(connection: &Connection, sql: &str, params: Params) -> Result<Vec<Account>, Error> {
    connection.with(|conn| {
        let rows: Vec<Row> = conn.exec(sql, params.clone())?;
        rows.into_iter().map(account_from_mysql_row).collect()
    })
}

/// The database's schema version.
pub(super) fn schema_version(connection: &Connection) -> Result<u32, Error> {
    connection.with(|conn| Ok(open::recorded_version(conn)?))
}

/// The JWT secret kept in the database, storing `generated` first if there is none yet: the first
/// instance to start writes it, and every other reads the same.
pub(super) fn jwt_secret_or_insert(
    connection: &Connection,
    generated: &str,
) -> Result<String, Error> {
    connection.with(|conn| {
        conn.exec_drop(
            "INSERT IGNORE INTO meta (`key`, value) VALUES ('jwt_secret', ?)",
            (generated,),
        )?;
        let secret: Option<String> =
            query_first(conn, "SELECT value FROM meta WHERE `key` = 'jwt_secret'")?;
        secret.ok_or_else(|| Error::Internal("database: the JWT secret was not kept".into()))
    })
}

pub(super) fn account_by_id(connection: &Connection, id: i64) -> Result<Option<Account>, Error> {
    first_account(
        connection,
        concat!("SELECT ", account_columns!(), " FROM accounts WHERE id = ?"),
        Params::from((id,)),
    )
}

pub(super) fn account_by_openid(
    connection: &Connection,
    appid: &str,
    openid: &str,
) -> Result<Option<Account>, Error> {
    first_account(
        connection,
        concat!(
            "SELECT ",
            account_columns!(),
            " FROM accounts WHERE id = (SELECT account_id FROM identities WHERE appid = ? AND openid = ?)"
        ),
        Params::from((appid, openid)),
    )
}

pub(super) fn is_registered(
    connection: &Connection,
    appid: &str,
    openid: &str,
) -> Result<Option<bool>, Error> {
    connection.with(|conn| {
        Ok(exec_first(
            conn,
            "SELECT is_register FROM accounts
             WHERE id = (SELECT account_id FROM identities WHERE appid = ? AND openid = ?)",
            (appid, openid),
        )?)
    })
}

/// The token version of the account of the identity (:appid, :openid), or else of the account
/// unionid `$unionid` would join (`login_account`), 0 when neither exists.
macro_rules! identity_token_version {
    ($unionid:literal) => {
        concat!(
            "coalesce(
                 (SELECT token_version FROM accounts WHERE id =
                     (SELECT account_id FROM identities WHERE appid = :appid AND openid = :openid)),
                 (SELECT token_version FROM accounts WHERE wx_unionid = ",
            $unionid,
            " ORDER BY id LIMIT 1),
                 0)"
        )
    };
}

/// The recorded session of a WeChat identity, with the token version of the account it has, or
/// else of the account its unionid would join (`login_account`), 0 when neither exists.
pub(super) fn wechat_session(
    connection: &Connection,
    appid: &str,
    openid: &str,
) -> Result<Option<RecordedSession>, Error> {
    connection.with(|conn| {
        let row: Option<Row> = exec_first(
            conn,
            concat!(
                "SELECT unionid, session_key, created_at, token_version, ",
                identity_token_version!("wechat_sessions.unionid"),
                " FROM wechat_sessions WHERE appid = :appid AND openid = :openid"
            ),
            params! { "appid" => appid, "openid" => openid },
        )?;
        let Some(mut row) = row else { return Ok(None) };
        Ok(Some(RecordedSession {
            session: WechatSession {
                unionid: column(&mut row, 0)?,
                session_key: column(&mut row, 1)?,
                created_at: column(&mut row, 2)?,
            },
            token_version: column(&mut row, 3)?,
            account_token_version: column(&mut row, 4)?,
        }))
    })
}

/// Records a `jscode2session` answer with the token version of the identity's account as of this
/// write, or else of the account its unionid would join (0 when there is neither), and the
/// unionid on an existing account that lacked one.
pub(super) fn save_wechat_session(
    connection: &Connection,
    appid: &str,
    openid: &str,
    session: &WechatSession,
) -> Result<(), Error> {
    let values = params! {
        "appid" => appid,
        "openid" => openid,
        "unionid" => session.unionid.as_deref(),
        "session_key" => session.session_key.as_str(),
        "created_at" => session.created_at,
    };
    connection.with(|conn| {
        conn.exec_drop(
            concat!(
                "INSERT INTO wechat_sessions
                     (appid, openid, unionid, session_key, created_at, token_version)
                 VALUES (:appid, :openid, :unionid, :session_key, :created_at, ",
                identity_token_version!(":unionid"),
                ") ON DUPLICATE KEY UPDATE
                     unionid = coalesce(:unionid, unionid),
                     session_key = :session_key,
                     created_at = :created_at,
                     token_version = ",
                identity_token_version!(":unionid")
            ),
            values.clone(),
        )?;
        if session.unionid.is_some() {
            conn.exec_drop(
                "UPDATE accounts SET wx_unionid = :unionid
                 WHERE id = (SELECT account_id FROM identities
                             WHERE appid = :appid AND openid = :openid)
                   AND wx_unionid IS NULL",
                values.clone(),
            )?;
        }
        Ok(())
    })
}

/// The account id for a WeChat identity, with this login's bookkeeping set. An identity without
/// an account takes the account made with it, or joins the account of the unionid its WeChat
/// session gave (`account_to_adopt`), or else gets a new account (not registered, username =
/// openid, joined now from `ip`). A lookup first, so that a login of an existing account spends
/// no id; then an insert that, should another instance have created the account since, updates
/// that one (`LAST_INSERT_ID(id)` names it); the identity's row, whichever instance wrote it
/// first, names the account returned (`add_identity`).
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
    let unionid = session_unionid(connection, appid, openid)?;
    if let Some(id) = account_to_adopt(connection, appid, openid, unionid.as_deref())? {
        let id = add_identity(connection, appid, openid, id)?;
        touch_login(connection, id, ip, now)?;
        return Ok(id);
    }
    let id = connection.with(|conn| {
        conn.exec_drop(
            "INSERT INTO accounts
                 (username, wx_appid, wx_openid, wx_unionid, join_ip, date_joined, last_ip, last_login)
             VALUES (:openid, :appid, :openid, :unionid, :ip, :now, :ip, :now)
             ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id), last_ip = :ip, last_login = :now",
            params! {
                "appid" => appid,
                "openid" => openid,
                "unionid" => unionid.as_deref(),
                "ip" => ip,
                "now" => now,
            },
        )?;
        Ok(conn.last_insert_id() as i64)
    })?;
    add_identity(connection, appid, openid, id)
}

/// The id of the account of a WeChat identity, if it has one.
fn account_id_of(connection: &Connection, appid: &str, openid: &str) -> Result<Option<i64>, Error> {
    connection.with(|conn| {
        Ok(exec_first(
            conn,
            "SELECT account_id FROM identities WHERE appid = ? AND openid = ?",
            (appid, openid),
        )?)
    })
}

/// The unionid the recorded WeChat session of the identity (appid, openid) gave, if any.
fn session_unionid(
    connection: &Connection,
    appid: &str,
    openid: &str,
) -> Result<Option<String>, Error> {
    connection.with(|conn| {
        let unionid: Option<Option<String>> = exec_first(
            conn,
            "SELECT unionid FROM wechat_sessions WHERE appid = ? AND openid = ?",
            (appid, openid),
        )?;
        Ok(unionid.flatten())
    })
}

/// The account an identity without an `identities` row takes: the account made with it
/// (`accounts.wx_appid`, `wx_openid`: a row loaded from outside may lack its identity), else the
/// (oldest) account with its unionid. With a unionid, first locks the unionid's row of
/// `unionid_joins` until the transaction ends, so that another instance's new identity of the
/// same person waits here and then finds the account this one makes. The account found is locked
/// (`FOR UPDATE`) before its identity is written, the order in which an insert that finds the
/// account made meanwhile locks them: an account, then an identity, so that two registrations of
/// one identity wait for each other rather than deadlock.
fn account_to_adopt(
    connection: &Connection,
    appid: &str,
    openid: &str,
    unionid: Option<&str>,
) -> Result<Option<i64>, Error> {
    connection.with(|conn| {
        if let Some(unionid) = unionid {
            conn.exec_drop(
                "INSERT INTO unionid_joins (unionid) VALUES (?)
                 ON DUPLICATE KEY UPDATE unionid = unionid",
                (unionid,),
            )?;
        }
        let made_with: Option<i64> = exec_first(
            conn,
            "SELECT id FROM accounts WHERE wx_appid = ? AND wx_openid = ? FOR UPDATE",
            (appid, openid),
        )?;
        match (made_with, unionid) {
            (Some(id), _) => Ok(Some(id)),
            (None, Some(unionid)) => Ok(exec_first(
                conn,
                "SELECT id FROM accounts WHERE wx_unionid = ? ORDER BY id LIMIT 1 FOR UPDATE",
                (unionid,),
            )?),
            (None, None) => Ok(None),
        }
    })
}

/// Gives account `id` the identity (appid, openid), unless another instance gave it one first;
/// the id of the account the identity has.
fn add_identity(connection: &Connection, appid: &str, openid: &str, id: i64) -> Result<i64, Error> {
    connection.with(|conn| {
        conn.exec_drop(
            "INSERT INTO identities (appid, openid, account_id) VALUES (?, ?, ?)
             ON DUPLICATE KEY UPDATE account_id = account_id",
            (appid, openid, id),
        )?;
        let owner: Option<i64> = exec_first(
            conn,
            "SELECT account_id FROM identities WHERE appid = ? AND openid = ?",
            (appid, openid),
        )?;
        owner.ok_or_else(|| Error::Internal("database: an identity was not kept".into()))
    })
}

/// The openid account `id` has in mini-program `appid`, if it has an identity there.
pub(super) fn openid_in_app(
    connection: &Connection,
    id: i64,
    appid: &str,
) -> Result<Option<String>, Error> {
    connection.with(|conn| {
        Ok(exec_first(
            conn,
            "SELECT openid FROM identities WHERE account_id = ? AND appid = ?
             ORDER BY openid LIMIT 1",
            (id, appid),
        )?)
    })
}

/// Every identity of account `id`, as (appid, openid), by appid.
pub(super) fn identities_of(
    connection: &Connection,
    id: i64,
) -> Result<Vec<(String, String)>, Error> {
    connection.with(|conn| {
        Ok(conn.exec(
            "SELECT appid, openid FROM identities WHERE account_id = ? ORDER BY appid, openid",
            (id,),
        )?)
    })
}

pub(super) fn update_profile(
    connection: &Connection,
    id: i64,
    profile: &Profile,
) -> Result<(), Error> {
    connection.with(|conn| {
        conn.exec_drop(
            "UPDATE accounts SET
                 wx_nickname = coalesce(?, wx_nickname),
                 wx_avatar = coalesce(?, wx_avatar),
                 wx_gender = coalesce(?, wx_gender),
                 wx_country = coalesce(?, wx_country),
                 wx_province = coalesce(?, wx_province),
                 wx_city = coalesce(?, wx_city),
                 phone = coalesce(?, phone)
             WHERE id = ?",
            vec![
                Value::from(profile.wx_nickname.as_deref()),
                Value::from(profile.wx_avatar.as_deref()),
                Value::from(profile.wx_gender),
                Value::from(profile.wx_country.as_deref()),
                Value::from(profile.wx_province.as_deref()),
                Value::from(profile.wx_city.as_deref()),
                Value::from(profile.phone.as_deref()),
                Value::from(id),
            ],
        )?;
        Ok(())
    })
}

/// What a registration sets on an account that exists, with this login's bookkeeping.
macro_rules! registration_set {
    () => {
        "last_login = :now, last_ip = :ip, phone = :phone, is_register = 1, username = :username, \
         wx_nickname = coalesce(:nickname, wx_nickname), birthday = coalesce(:birthday, birthday), \
         wx_gender = coalesce(:gender, wx_gender)"
    };
}

/// Registers an account with its phone and the optional fields given, records this login, and
/// returns the account as written: the account `known_id` (a token's) when given, else the
/// account of the identity (appid, openid), which takes the account made with it or joins the
/// account of its unionid (`account_to_adopt`), or is created registered when it has none (or,
/// when another instance created it in between, that one registered). `None` when account
/// `known_id` does not exist.
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
    let values = |id: Option<i64>, unionid: Option<&str>| {
        params! {
            "appid" => appid,
            "openid" => openid,
            "username" => username.as_str(),
            "ip" => ip,
            "now" => now,
            "phone" => phone.as_str(),
            "nickname" => wx_nickname.as_deref(),
            "birthday" => birthday.as_deref(),
            "gender" => *wx_gender,
            "id" => id,
            "unionid" => unionid,
        }
    };
    let update_by_id = |id: i64| {
        connection.with(|conn| {
            Ok(conn.exec_drop(
                concat!("UPDATE accounts SET ", registration_set!(), " WHERE id = :id"),
                values(Some(id), None),
            )?)
        })
    };
    let id = match known_id {
        Some(id) => {
            update_by_id(id)?;
            id
        }
        None => {
            let updated = connection.with(|conn| {
                conn.exec_drop(
                    concat!(
                        "UPDATE accounts SET ",
                        registration_set!(),
                        " WHERE id = (SELECT account_id FROM identities \
                                      WHERE appid = :appid AND openid = :openid)"
                    ),
                    values(None, None),
                )?;
                Ok(conn.affected_rows() > 0)
            })?;
            if updated {
                return account_by_openid(connection, appid, openid);
            }
            let unionid = session_unionid(connection, appid, openid)?;
            match account_to_adopt(connection, appid, openid, unionid.as_deref())? {
                Some(id) => {
                    let id = add_identity(connection, appid, openid, id)?;
                    update_by_id(id)?;
                    id
                }
                None => {
                    let id = connection.with(|conn| {
                        conn.exec_drop(
                            concat!(
                                "INSERT INTO accounts (username, wx_appid, wx_openid, wx_unionid, \
                                 join_ip, date_joined, last_ip, last_login, phone, is_register, \
                                 wx_nickname, birthday, wx_gender) \
                                 VALUES (:username, :appid, :openid, :unionid, \
                                         :ip, :now, :ip, :now, :phone, 1, :nickname, :birthday, \
                                         coalesce(:gender, 0)) \
                                 ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id), ",
                                registration_set!()
                            ),
                            values(None, unionid.as_deref()),
                        )?;
                        Ok(conn.last_insert_id() as i64)
                    })?;
                    let owner = add_identity(connection, appid, openid, id)?;
                    if owner != id {
                        update_by_id(owner)?;
                    }
                    owner
                }
            }
        }
    };
    account_by_id(connection, id)
}

/// Creates, in the transaction in progress, the account of each write of `batch` whose identity
/// has no account yet and whose WeChat session gave no unionid an account has: one new account,
/// registered or logged in as its write says, and its identity each, with multi-row statements,
/// so that a batch costs its transaction about as much as one new account does. The account as
/// written for each, by position; `None` for those left to be written alone (`register`,
/// `login_account`: an identity with an account, or an account made with it that lacks its
/// identity row, a unionid to join, the same identity or unionid twice in the batch). A statement
/// that fails (a unique key another transaction took meanwhile, a lock waited for too long, a
/// deadlock) fails the batch, which the caller rolls back and then runs once more (a unique key)
/// or leaves to be written alone.
///
/// The unionids' rows of `unionid_joins` are locked first, as `account_to_adopt` does, so that a
/// first login of the same person through another app, on any instance, waits for this
/// transaction and then joins its account. Rows go in (appid, openid) order, so that two batches
/// lock what they share in the same order.
pub(super) fn create_accounts(
    connection: &Connection,
    batch: &[IdentityWrite],
) -> Result<Vec<Option<Account>>, Error> {
    let mut order: Vec<usize> = (0..batch.len()).collect();
    let identity = |index: &usize| (batch[*index].appid.as_str(), batch[*index].openid.as_str());
    order.sort_by(|a, b| identity(a).cmp(&identity(b)));
    order.dedup_by(|later, first| identity(later) == identity(first));
    let (condition, values) = identities_condition("appid", "openid", &order, batch);
    // The same terms on the accounts' columns, which take the same values as `condition`.
    let (made_with, _) = identities_condition("wx_appid", "wx_openid", &order, batch);
    let found: Vec<(u8, String, String, Option<String>)> = connection.with(|conn| {
        Ok(conn.exec(
            format!(
                "SELECT 0, appid, openid, NULL FROM identities WHERE {condition}
                 UNION ALL
                 SELECT 0, wx_appid, wx_openid, NULL FROM accounts WHERE {made_with}
                 UNION ALL
                 SELECT 1, appid, openid, unionid FROM wechat_sessions
                 WHERE ({condition}) AND unionid IS NOT NULL"
            ),
            [values.clone(), values.clone(), values.clone()].concat(),
        )?)
    })?;
    // The unionid each write's WeChat session gave, by position.
    let mut unionids: Vec<Option<String>> = vec![None; batch.len()];
    for (kind, appid, openid, unionid) in found {
        let key = (appid.as_str(), openid.as_str());
        if kind == 0 {
            order.retain(|index| identity(index) != key);
        } else if let Some(index) = order.iter().find(|index| identity(index) == key) {
            unionids[*index] = unionid;
        }
    }
    let unionid_of = |index: &usize| unionids[*index].as_deref();
    let mut joining: Vec<&str> = order.iter().filter_map(unionid_of).collect();
    joining.sort_unstable();
    joining.dedup();
    if !joining.is_empty() {
        let mut seen: Vec<String> = connection.with(|conn| {
            conn.exec_drop(
                format!(
                    "INSERT INTO unionid_joins (unionid) VALUES {}
                     ON DUPLICATE KEY UPDATE unionid = unionid",
                    placeholders(joining.len(), "(?)")
                ),
                joining.clone(),
            )?;
            Ok(conn.exec(
                format!(
                    "SELECT DISTINCT wx_unionid FROM accounts WHERE wx_unionid IN ({})",
                    placeholders(joining.len(), "?")
                ),
                joining.clone(),
            )?)
        })?;
        order.retain(|index| match unionid_of(index) {
            None => true,
            Some(unionid) if seen.iter().any(|taken| taken == unionid) => false,
            Some(unionid) => {
                seen.push(unionid.to_string());
                true
            }
        });
    }
    let mut written = vec![None; batch.len()];
    if order.is_empty() {
        return Ok(written);
    }
    let mut values = Vec::with_capacity(order.len() * 17);
    for index in &order {
        let IdentityWrite { appid, openid, ip, now, change } = &batch[*index];
        let (username, is_register, phone, nickname, gender, birthday, profile) = match change {
            AccountChange::Register(registration) => (
                registration.username.as_str(),
                1,
                Some(registration.phone.as_str()),
                registration.wx_nickname.as_deref(),
                registration.wx_gender,
                registration.birthday.as_deref(),
                None,
            ),
            AccountChange::Login(profile) => (
                openid.as_str(),
                0,
                profile.phone.as_deref(),
                profile.wx_nickname.as_deref(),
                profile.wx_gender,
                None,
                Some(profile),
            ),
        };
        let from_profile = |field: fn(&Profile) -> &Option<String>| {
            Value::from(profile.and_then(|profile| field(profile).as_deref()))
        };
        values.extend([
            Value::from(username),
            Value::from(appid.as_str()),
            Value::from(openid.as_str()),
            Value::from(unionid_of(index)),
            Value::from(ip.as_str()),
            Value::from(*now),
            Value::from(ip.as_str()),
            Value::from(*now),
            Value::from(phone),
            Value::from(is_register),
            Value::from(nickname),
            Value::from(birthday),
            Value::from(gender.unwrap_or(0)),
            from_profile(|profile| &profile.wx_avatar),
            from_profile(|profile| &profile.wx_country),
            from_profile(|profile| &profile.wx_province),
            from_profile(|profile| &profile.wx_city),
        ]);
    }
    let (condition, keys) = identities_condition("wx_appid", "wx_openid", &order, batch);
    let rows: Vec<Row> = connection.with(|conn| {
        conn.exec_drop(
            format!(
                "INSERT INTO accounts (username, wx_appid, wx_openid, wx_unionid, join_ip, \
                 date_joined, last_ip, last_login, phone, is_register, wx_nickname, birthday, \
                 wx_gender, wx_avatar, wx_country, wx_province, wx_city) VALUES {}",
                placeholders(order.len(), "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            ),
            values.clone(),
        )?;
        Ok(conn.exec(
            format!("SELECT {} FROM accounts WHERE {condition}", account_columns!()),
            keys.clone(),
        )?)
    })?;
    for row in rows {
        let account = account_from_mysql_row(row)?;
        let key = (account.wx_appid.as_str(), account.wx_openid.as_str());
        if let Some(index) = order.iter().find(|index| identity(index) == key) {
            written[*index] = Some(account);
        }
    }
    let mut identities = Vec::with_capacity(order.len() * 3);
    for index in &order {
        let account = written[*index].as_ref().ok_or_else(|| {
            Error::Internal("database: an account just inserted was not read back".into())
        })?;
        let (appid, openid) = identity(index);
        identities.extend([Value::from(appid), Value::from(openid), Value::from(account.id)]);
    }
    connection.with(|conn| {
        Ok(conn.exec_drop(
            format!(
                "INSERT INTO identities (appid, openid, account_id) VALUES {}",
                placeholders(order.len(), "(?, ?, ?)")
            ),
            identities.clone(),
        )?)
    })?;
    Ok(written)
}

/// `count` copies of `each`, separated by commas.
fn placeholders(count: usize, each: &str) -> String {
    vec![each; count].join(", ")
}

/// The condition that matches the identities of `batch` at `order` (sorted by appid) in columns
/// `appid` and `openid`: `(appid = ? AND openid IN (?, …)) OR …`, one term per appid, which each
/// server reads as ranges of the key that starts with those columns; and its values.
fn identities_condition(
    appid: &str,
    openid: &str,
    order: &[usize],
    batch: &[IdentityWrite],
) -> (String, Vec<Value>) {
    let mut terms = Vec::new();
    let mut values = Vec::with_capacity(order.len() + 1);
    for same_app in order.chunk_by(|a, b| batch[*a].appid == batch[*b].appid) {
        terms
            .push(format!("({appid} = ? AND {openid} IN ({}))", placeholders(same_app.len(), "?")));
        values.push(Value::from(batch[same_app[0]].appid.as_str()));
        values.extend(same_app.iter().map(|index| Value::from(batch[*index].openid.as_str())));
    }
    (terms.join(" OR "), values)
}

pub(super) fn revoke_tokens(connection: &Connection, id: i64) -> Result<bool, Error> {
    execute(connection, "UPDATE accounts SET token_version = token_version + 1 WHERE id = ?", (id,))
}

pub(super) fn touch_login(
    connection: &Connection,
    id: i64,
    ip: &str,
    now: i64,
) -> Result<(), Error> {
    execute(
        connection,
        "UPDATE accounts SET last_login = ?, last_ip = ?
         WHERE id = ? AND (last_login IS NULL OR last_login <= ?)",
        (now, ip, id, now),
    )?;
    Ok(())
}

/// Of accounts `ids`, those no other transaction holds (an operator's open transaction, another
/// instance's), locked for the rest of this one, and those another holds, each in id order: the
/// held ones are skipped rather than waited for, and told from accounts that are gone by a read
/// that takes no lock (needed only when some were skipped). The ids go in lists of at most
/// `IDS_AT_ONCE`, sent as text with the ids written out, so that lists of every length share no
/// prepared statement and fill no statement cache.
pub(super) fn accounts_free_to_write(
    connection: &Connection,
    ids: &[i64],
) -> Result<(Vec<i64>, Vec<i64>), Error> {
    let list = |ids: &[i64]| ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
    let (mut free, mut held) = (Vec::new(), Vec::new());
    for chunk in ids.chunks(IDS_AT_ONCE) {
        let sql = format!(
            "SELECT id FROM accounts WHERE id IN ({}) ORDER BY id FOR UPDATE SKIP LOCKED",
            list(chunk)
        );
        let locked: Vec<i64> = connection.with(|conn| Ok(conn.query(&sql)?))?;
        if locked.len() < chunk.len() {
            let skipped: Vec<i64> =
                chunk.iter().copied().filter(|id| locked.binary_search(id).is_err()).collect();
            let sql =
                format!("SELECT id FROM accounts WHERE id IN ({}) ORDER BY id", list(&skipped));
            held.extend(connection.with(|conn| Ok(conn.query::<i64, _>(&sql)?))?);
        }
        free.extend(locked);
    }
    Ok((free, held))
}

/// The most ids `accounts_free_to_write` names in one statement: MariaDB reads an IN list of
/// 1,000 values or more (`in_predicate_conversion_threshold`) as a join with a table of them,
/// which may read, and lock, more of `accounts` than the rows named.
const IDS_AT_ONCE: usize = 500;

/// Runs one statement; whether it matched exactly one row.
fn execute(connection: &Connection, sql: &str, params: impl Into<Params>) -> Result<bool, Error> {
    let params = params.into();
    connection.with(|conn| {
        conn.exec_drop(sql, params.clone())?;
        Ok(conn.affected_rows() == 1)
    })
}

pub(super) fn account_counts(connection: &Connection) -> Result<AccountCounts, Error> {
    connection.with(|conn| {
        let row: Option<(i64, i64)> = query_first(
            conn,
            "SELECT count(*), CAST(coalesce(sum(is_register), 0) AS SIGNED) FROM accounts",
        )?;
        let (accounts, registered) = row.unwrap_or((0, 0));
        Ok(AccountCounts { accounts, registered })
    })
}

pub(super) fn accounts_with_openid(
    connection: &Connection,
    openid: &str,
) -> Result<Vec<Account>, Error> {
    accounts(
        connection,
        concat!(
            "SELECT ",
            account_columns!(),
            " FROM accounts WHERE wx_openid = :openid \
              OR id IN (SELECT account_id FROM identities WHERE openid = :openid) ORDER BY id"
        ),
        params! { "openid" => openid },
    )
}

/// Hands the accounts to `visit` one at a time, by id, each with its identities other than its
/// own, by appid then openid, skipping `offset` and stopping after `limit` (all when `None`).
/// Rows are read from the server as they are visited (one consistent read), never collected. The
/// other identities come in the same row (`GROUP_CONCAT` over the `identities_account` index),
/// not a round trip per account. The session's `group_concat_max_len` (MySQL's default is 1024
/// bytes, which cuts the list short with only a warning) is raised first to 1 GiB, MariaDB's
/// largest and the largest `max_allowed_packet` of either server: a longer row could not be sent
/// anyway, and that fails loudly.
pub(super) fn each_account(
    connection: &Connection,
    limit: Option<u64>,
    offset: u64,
    mut visit: impl FnMut(Account, Vec<(String, String)>) -> Result<(), Error>,
) -> Result<(), Error> {
    // `visit` writes out what it is handed and runs no query, so the transaction's connection
    // (if any) stays locked while the rows stream.
    let mut held = connection.held();
    let mut own = None;
    let conn = match held.as_mut() {
        Some(conn) => conn,
        None => own.insert(connection.take()?),
    };
    let result = stream_accounts(conn, limit.unwrap_or(u64::MAX >> 1), offset, &mut visit);
    let result = sever_if_lost(conn, result);
    if let (Some(conn), Err(_)) = (own, &result) {
        discard(conn);
    }
    result
}

/// `each_account`'s statements, on `conn`.
fn stream_accounts(
    conn: &mut PooledConn,
    limit: u64,
    offset: u64,
    visit: &mut impl FnMut(Account, Vec<(String, String)>) -> Result<(), Error>,
) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    let fd = conn.as_raw_fd();
    conn.query_drop("SET SESSION group_concat_max_len = 1073741824")?;
    let rows = conn.exec_iter(
        concat!(
            "SELECT ",
            account_columns!(),
            ", (SELECT GROUP_CONCAT(appid, ':', openid ORDER BY appid, openid SEPARATOR ' ')
                FROM identities WHERE account_id = accounts.id
                  AND NOT (appid = accounts.wx_appid AND openid = accounts.wx_openid))
             FROM accounts ORDER BY id LIMIT ? OFFSET ?"
        ),
        (limit, offset),
    )?;
    for row in rows {
        let mut row = row?;
        let last = row.len() - 1;
        let visited = column(&mut row, last)
            .map(split_identities)
            .and_then(|identities| visit(account_from_mysql_row(row)?, identities));
        if let Err(error) = visited {
            // The rest of the rows are not read: dropping `rows` would read them all first, and
            // a failure meanwhile would go unseen. The connection is closed instead.
            sever_socket(fd);
            return Err(error);
        }
    }
    Ok(())
}

pub(super) fn find_accounts(
    connection: &Connection,
    query: &AccountQuery,
) -> Result<Vec<Account>, Error> {
    let AccountQuery { phone, openid, unionid, nickname } = query;
    accounts(
        connection,
        concat!(
            "SELECT ",
            account_columns!(),
            " FROM accounts WHERE phone = :phone OR wx_openid = :openid \
              OR id IN (SELECT account_id FROM identities WHERE openid = :openid) \
              OR wx_unionid = :unionid OR instr(wx_nickname, :nickname) > 0 ORDER BY id"
        ),
        params! {
            "phone" => phone.as_deref(),
            "openid" => openid.as_deref(),
            "unionid" => unionid.as_deref(),
            "nickname" => nickname.as_deref(),
        },
    )
}

/// Applies `edits`, at least one, to account `id` in one statement, their field names checked
/// (`store::update_account`).
pub(super) fn update_account(
    connection: &Connection,
    id: i64,
    edits: &[Edit],
) -> Result<(), Error> {
    let mut sets = Vec::with_capacity(edits.len());
    let mut values: Vec<Value> = Vec::with_capacity(edits.len() + 1);
    for Edit { field, value } in edits {
        sets.push(format!("{field} = ?"));
        values.push(match value {
            EditValue::Text(text) => Value::from(text.as_deref()),
            EditValue::Integer(number) => Value::from(*number),
        });
    }
    values.push(Value::from(id));
    let sql = format!("UPDATE accounts SET {} WHERE id = ?", sets.join(", "));
    execute(connection, &sql, values)?;
    Ok(())
}

pub(super) fn disable_account(connection: &Connection, id: i64, now: i64) -> Result<bool, Error> {
    execute(
        connection,
        "UPDATE accounts SET disabled_at = ?, token_version = token_version + 1
         WHERE id = ? AND disabled_at IS NULL",
        (now, id),
    )
}

pub(super) fn enable_account(connection: &Connection, id: i64) -> Result<bool, Error> {
    execute(
        connection,
        "UPDATE accounts SET disabled_at = NULL WHERE id = ? AND disabled_at IS NOT NULL",
        (id,),
    )
}

/// Deletes account `id`, its identities and their recorded WeChat sessions, so that each
/// identity's next login makes a new account; false when there is no such account. The caller
/// runs the three statements in one transaction.
pub(super) fn delete_account(connection: &Connection, id: i64) -> Result<bool, Error> {
    connection.with(|conn| {
        conn.exec_drop(
            "DELETE FROM wechat_sessions
             WHERE (appid, openid) IN (SELECT appid, openid FROM identities WHERE account_id = ?)",
            (id,),
        )?;
        conn.exec_drop("DELETE FROM identities WHERE account_id = ?", (id,))?;
        conn.exec_drop("DELETE FROM accounts WHERE id = ?", (id,))?;
        Ok(conn.affected_rows() == 1)
    })
}

/// Inserts `account` as it is, every column with its id, its identity and `identities`, its
/// others, for `wxauth users import` (in the operator's transaction, after it checked that
/// neither the id nor any identity is taken). InnoDB moves the AUTO_INCREMENT counter past an id
/// inserted above it, so new accounts get ids after the imported ones.
pub(super) fn insert_account(
    connection: &Connection,
    account: &Account,
    identities: &[(String, String)],
) -> Result<(), Error> {
    let values: HashMap<Vec<u8>, Value> = account_columns!()
        .split(", ")
        .zip(account.column_values())
        .map(|(name, value)| {
            let value = match value {
                ColumnValue::Null => Value::NULL,
                ColumnValue::Integer(number) => Value::from(number),
                ColumnValue::Text(text) => Value::from(text),
            };
            (name.as_bytes().to_vec(), value)
        })
        .collect();
    connection.with(|conn| {
        conn.exec_drop(
            concat!(
                "INSERT INTO accounts (",
                account_columns!(),
                ") VALUES (",
                account_parameters!(),
                ")"
            ),
            Params::Named(values.clone()),
        )?;
        Ok(())
    })?;
    let own = (account.wx_appid.as_str(), account.wx_openid.as_str());
    let others = identities.iter().map(|(appid, openid)| (appid.as_str(), openid.as_str()));
    connection.with(|conn| {
        for (appid, openid) in std::iter::once(own).chain(others.clone()) {
            conn.exec_drop(
                "INSERT INTO identities (appid, openid, account_id) VALUES (?, ?, ?)",
                (appid, openid, account.id),
            )?;
        }
        Ok(())
    })
}

/// Backups of a MySQL database are the server's (`mysqldump --single-transaction`, or the
/// provider's snapshots).
pub(super) fn backup(_: &Connection, _: &str) -> Result<super::BackupReport, Error> {
    Err(Error::Internal(
        "backup copies a SQLite file; back a MySQL database up with mysqldump --single-transaction \
         or the provider's snapshots"
            .into(),
    ))
}

// ---- Repeated codes, shared by every instance (src/codes.rs) -----------------------------------

/// How long a claimed code may stay unanswered before another request takes it over: the claimer
/// died, or its exchange outlived WeChat's timeout.
const STALE_CLAIM: i64 = 30;

/// Claims code `key` for an exchange until `expires`, or finds its answer: `Claimed` when this
/// request is to ask WeChat (no row, or an expired or stale one, now this request's), `Answered`
/// with the first answer while it lives, `Pending` while another request's exchange is in flight.
pub(super) fn claim_code(
    connection: &Connection,
    key: &[u8],
    now: i64,
    expires: i64,
) -> Result<CodeClaim, Error> {
    connection.with(|conn| {
        // Now and then, expired answers go (a code lives five minutes).
        if key[0] == 0 {
            conn.exec_drop(
                "DELETE FROM code_answers WHERE expires_at < ? LIMIT 1000",
                (now - STALE_CLAIM,),
            )?;
        }
        conn.exec_drop(
            "INSERT IGNORE INTO code_answers (code_key, expires_at, claimed_at) VALUES (?, ?, ?)",
            (key, expires, now),
        )?;
        if conn.affected_rows() == 1 {
            return Ok(CodeClaim::Claimed);
        }
        let row: Option<Row> = exec_first(
            conn,
            "SELECT expires_at, claimed_at, openid, unionid, session_key, token_version
             FROM code_answers WHERE code_key = ?",
            (key,),
        )?;
        let Some(mut row) = row else { return Ok(CodeClaim::Pending) };
        let (expires_at, claimed_at): (i64, i64) = (column(&mut row, 0)?, column(&mut row, 1)?);
        let openid: Option<String> = column(&mut row, 2)?;
        match openid {
            Some(openid) if expires_at >= now => Ok(CodeClaim::Answered(CodeAnswer {
                openid,
                unionid: column(&mut row, 3)?,
                session_key: column(&mut row, 4)?,
                token_version: column(&mut row, 5)?,
            })),
            None if expires_at >= now && claimed_at > now - STALE_CLAIM => Ok(CodeClaim::Pending),
            _ => {
                // Expired or abandoned: taken over, unless another request did so first.
                conn.exec_drop(
                    "UPDATE code_answers SET expires_at = ?, claimed_at = ?, openid = NULL,
                         unionid = NULL, session_key = NULL, token_version = 0
                     WHERE code_key = ? AND claimed_at = ?",
                    (expires, now, key, claimed_at),
                )?;
                Ok(if conn.affected_rows() == 1 { CodeClaim::Claimed } else { CodeClaim::Pending })
            }
        }
    })
}

/// Records the answer of the code `key` this request claimed.
pub(super) fn answer_code(
    connection: &Connection,
    key: &[u8],
    code: &CodeAnswer,
) -> Result<(), Error> {
    connection.with(|conn| {
        conn.exec_drop(
            "UPDATE code_answers SET openid = ?, unionid = ?, session_key = ?, token_version = ?
             WHERE code_key = ?",
            (
                code.openid.as_str(),
                code.unionid.as_deref(),
                code.session_key.as_deref(),
                code.token_version,
                key,
            ),
        )?;
        Ok(())
    })
}

/// Gives up the claim on code `key` (its exchange failed), so the next request tries itself.
pub(super) fn release_code(connection: &Connection, key: &[u8]) -> Result<(), Error> {
    connection.with(|conn| {
        conn.exec_drop("DELETE FROM code_answers WHERE code_key = ? AND openid IS NULL", (key,))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_given_up_is_told_from_other_failures() {
        let io = |kind: std::io::ErrorKind| std::io::Error::from(kind);
        // What a read past the socket's timeout gives: EAGAIN, through the packet codec.
        let cut_off =
            Error::from(mysql::Error::CodecError(io(std::io::ErrorKind::WouldBlock).into()));
        assert!(waited_too_long(&cut_off));
        assert!(waited_too_long(&Error::from(mysql::Error::IoError(io(
            std::io::ErrorKind::TimedOut
        )))));
        // A connection the server closed, a refused connection: not cut off.
        let closed =
            Error::from(mysql::Error::CodecError(io(std::io::ErrorKind::BrokenPipe).into()));
        assert!(!waited_too_long(&closed));
        assert!(matches!(closed, Error::DatabaseUnavailable(_)));
        assert!(!waited_too_long(&Error::from(mysql::Error::IoError(io(
            std::io::ErrorKind::ConnectionRefused
        )))));
        // Of the server's own errors, a lock wait it gave up is one; a deadlock is not.
        let lock_wait = mysql::Error::MySqlError(mysql::MySqlError {
            state: "HY000".into(),
            message: "Lock wait timeout exceeded".into(),
            code: 1205,
        });
        assert!(waited_too_long(&Error::from(lock_wait)));
        let deadlock = mysql::Error::MySqlError(mysql::MySqlError {
            state: "40001".into(),
            message: "Deadlock found when trying to get lock".into(),
            code: 1213,
        });
        assert!(!waited_too_long(&Error::from(deadlock)));
    }
}
