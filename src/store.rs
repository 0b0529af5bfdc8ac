//! SQLite: opening connections, schema migrations from `schema.sql`, one function per query, and
//! the single writer thread. This is the only file with SQL.
//!
//! Reads run on the calling worker's own connection (or, for a row a write changes, in that write).
//! Every write goes through the one `Writer` connection, which commits in groups: it takes every
//! job waiting, runs each in its own savepoint (a failing job rolls back alone), commits once, and
//! only then answers each job. A write made with `Writer::run` is answered on disk
//! (`synchronous = FULL`), many of them sharing one fsync; `run_visible` writes (a WeChat
//! session) are answered once committed, and login bookkeeping (`note_login`, written at the start
//! of the next group) is not waited for; both reach the disk with the next fsync or checkpoint.
//! One account per WeChat identity is a unique index, never a check-then-insert.
//!
//! A connection that writes opens only a file that is safely wxauth's (`open_read_write`): a
//! regular file of its user, writable by nobody else, reached through no link, with the same
//! true of SQLite's files beside it; wxauth creates a missing database itself, owner-only.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, ToSql, params};
use serde::Serialize;

use crate::error::Error;
use crate::time;

const SCHEMA: &str = include_str!("../schema.sql");

/// How long a connection waits for a lock before `database is locked`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The most jobs one group commit takes.
const MAX_GROUP: usize = 512;

/// Pending writes the queue holds before workers wait to hand theirs over.
const QUEUE_DEPTH: usize = 4096;

/// A group commit with nothing in it but login bookkeeping waits until this long after the last
/// commit. Every commit costs the writer a transaction and costs every worker's read connection
/// its page cache (the next read finds the database changed); a bookkeeping commit per token
/// login, thousands a second, cost both for writes nobody waits for.
const BOOKKEEPING_EVERY: Duration = Duration::from_millis(20);

/// Makes the account from one list of its fields: the struct, its columns (`account_columns!`,
/// each column named as its field), its row mapping (`account_from_row`) and the names the API
/// shows (`Account::FIELDS`), so that none can fall out of step with another. The `shown` fields
/// are the account object, in the API's order; the `hidden` ones are kept from the API.
macro_rules! account {
    (
        $(#[$meta:meta])*
        pub(crate) struct Account {
            shown {
                $(#[$first_meta:meta])* $first:ident: $first_type:ty,
                $( $(#[$shown_meta:meta])* $shown:ident: $shown_type:ty, )*
            }
            hidden {
                $( $(#[$hidden_meta:meta])* $hidden:ident: $hidden_type:ty, )+
            }
        }
    ) => {
        $(#[$meta])*
        pub(crate) struct Account {
            $(#[$first_meta])* pub(crate) $first: $first_type,
            $( $(#[$shown_meta])* pub(crate) $shown: $shown_type, )*
            $( $(#[$hidden_meta])* #[serde(skip)] pub(crate) $hidden: $hidden_type, )+
        }

        impl Account {
            /// The account object's fields in the API's order (the CSV header of `users export`).
            pub(crate) const FIELDS: &[&str] =
                &[stringify!($first) $(, stringify!($shown))*];
        }

        /// The account's columns in `account_from_row`'s order, as a macro so that each query is
        /// one `&'static str` (`concat!`) rather than a string formatted again at every call.
        macro_rules! account_columns {
            () => {
                concat!(
                    stringify!($first)
                    $(, ", ", stringify!($shown))*
                    $(, ", ", stringify!($hidden))+
                )
            };
        }

        fn account_from_row(row: &Row<'_>) -> rusqlite::Result<Account> {
            // Columns in the fields' order: the index counts up, folded to constants.
            let mut column = 0;
            let mut next = || {
                column += 1;
                column - 1
            };
            Ok(Account {
                $first: row.get(next())?,
                $( $shown: row.get(next())?, )*
                $( $hidden: row.get(next())?, )+
            })
        }
    };
}

account! {
    /// An account, as the API shows it. Field names and formats are the original backend's.
    #[derive(Debug, Clone, Serialize)]
    pub(crate) struct Account {
        shown {
            id: i64,
            username: String,
            phone: Option<String>,
            is_register: bool,
            is_staff: bool,
            is_superuser: bool,
            flag: i64,
            avatar: Option<String>,
            avatar_thumb: Option<String>,
            birthday: Option<String>,
            address: Option<String>,
            member_score: i64,
            credit_score: i64,
            wx_openid: String,
            wx_unionid: Option<String>,
            wx_nickname: Option<String>,
            wx_gender: i64,
            wx_avatar: Option<String>,
            wx_country: Option<String>,
            wx_province: Option<String>,
            wx_city: Option<String>,
            last_ip: Option<String>,
            join_ip: Option<String>,
            love_help_num: i64,
            bring_love_concern_num: i64,
            #[serde(serialize_with = "optional_datetime")]
            last_login: Option<i64>,
            #[serde(serialize_with = "datetime")]
            date_joined: i64,
        }
        hidden {
            /// Tokens whose `ver` claim differs are revoked (logout). Not part of the account
            /// object.
            token_version: i64,
        }
    }
}

fn datetime<S: serde::Serializer>(seconds: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time::format_datetime(*seconds))
}

fn optional_datetime<S: serde::Serializer>(
    seconds: &Option<i64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match seconds {
        Some(seconds) => datetime(seconds, serializer),
        None => serializer.serialize_none(),
    }
}

/// The server-side record of a user's latest `jscode2session`.
#[derive(Clone)]
pub(crate) struct WechatSession {
    pub(crate) unionid: Option<String>,
    pub(crate) session_key: String,
    pub(crate) created_at: i64,
}

/// A recorded session as `wechat_session` reads it back: with the token version its account had
/// when it was recorded and has now (each 0 when there is no account), which differ once the
/// account has logged out since.
pub(crate) struct RecordedSession {
    pub(crate) session: WechatSession,
    pub(crate) token_version: i64,
    pub(crate) account_token_version: i64,
}

impl RecordedSession {
    /// The account logged out after the session was recorded, which ended the sign-in it began.
    pub(crate) fn ended(&self) -> bool {
        self.token_version != self.account_token_version
    }
}

/// Fields a login by openid may update; `None` leaves a column as it is.
#[derive(Debug, Default, Clone)]
pub(crate) struct Profile {
    pub(crate) wx_nickname: Option<String>,
    pub(crate) wx_avatar: Option<String>,
    pub(crate) wx_gender: Option<i64>,
    pub(crate) wx_country: Option<String>,
    pub(crate) wx_province: Option<String>,
    pub(crate) wx_city: Option<String>,
    pub(crate) phone: Option<String>,
}

impl Profile {
    /// Nothing to update.
    pub(crate) fn is_empty(&self) -> bool {
        let Profile { wx_nickname, wx_avatar, wx_gender, wx_country, wx_province, wx_city, phone } =
            self;
        [wx_nickname, wx_avatar, wx_country, wx_province, wx_city, phone]
            .iter()
            .all(|field| field.is_none())
            && wx_gender.is_none()
    }
}

/// What a successful registration writes.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub(crate) phone: String,
    pub(crate) username: String,
    pub(crate) wx_nickname: Option<String>,
    pub(crate) birthday: Option<String>,
    pub(crate) wx_gender: Option<i64>,
}

/// Process-wide SQLite settings, applied once before the first connection opens.
fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Memory statistics make every SQLite allocation take one global mutex, which the
        // workers' connections then contend for on every query; wxauth never reads them.
        // SAFETY: sqlite3_config is called before any connection exists (every `open_*` here
        // calls this first), which is its only requirement; it returns SQLITE_MISUSE otherwise,
        // which leaves the default in place and is harmless.
        unsafe {
            rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0);
            // No lookaside arena (about 120 KiB allocated up front per connection, one
            // connection per worker); small allocations go to malloc instead. The writer gets one
            // back (`enable_lookaside`).
            rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_LOOKASIDE, 0, 0);
            // No up-front block of 20 cache pages (84 KiB) per connection, each touched when it
            // is carved: a reader's query needs a handful of pages, which come one by one.
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_PAGECACHE,
                std::ptr::null_mut::<std::ffi::c_void>(),
                0 as std::ffi::c_int,
                0 as std::ffi::c_int,
            );
        }
    });
}

/// Opens the writer connection for `opener`: creates the file (owner-only) if needed, checks it
/// (`open_read_write`), sets durable pragmas and applies pending schema versions. Returns the
/// connection and the versions it applied.
pub(crate) fn open_writer(path: &str, opener: Opener) -> Result<(Connection, Vec<u32>), Error> {
    configure_sqlite();
    create_private_file(path)
        .map_err(|error| Error::Internal(format!("cannot create database file {path}: {error}")))?;
    let connection = open_read_write(path, opener)?;
    enable_lookaside(&connection);
    connection.busy_timeout(BUSY_TIMEOUT)?;
    // WAL lets readers proceed while the writer commits; FULL makes every commit durable before
    // it is acknowledged (an fsync of the WAL per group commit).
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Internal(format!(
            "database: cannot enable WAL (journal_mode is {mode})"
        )));
    }
    // A 1 MiB page cache: inserts land on random index pages, which the OS caches as well.
    connection.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -1024;",
    )?;
    // Every statement the writer runs stays prepared: rusqlite keeps 16 by default, the writer
    // runs more than that, and past the limit the least recent is parsed again at each use.
    connection.set_prepared_statement_cache_capacity(64);
    let applied = migrate(&connection)?;
    if applied.first().is_some_and(|&first| first > 1) {
        // An upgrade may rewrite a whole table (version 3 does) into the WAL: fold it into the
        // database now, so readers do not start behind a WAL of that size and the file shrinks
        // back. A new database's WAL is a few pages, and its first start stays quick.
        connection.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    }
    Ok((connection, applied))
}

/// Gives the writer connection SQLite's default lookaside arena (about 120 KiB: 100 slots of 1200
/// bytes), which `configure_sqlite` turns off for every connection. The writer makes most of
/// SQLite's small allocations (about 40 per registration: cursors, records, savepoints); from the
/// arena they cost no malloc and free. Readers stay without it: there is one per worker.
fn enable_lookaside(connection: &Connection) {
    // SAFETY: the handle is a valid open connection, used on this thread only. The option is
    // refused (SQLITE_BUSY) only while lookaside memory is in use, and none is: the connection
    // was opened without an arena. A refusal leaves it without one, as before.
    unsafe {
        rusqlite::ffi::sqlite3_db_config(
            connection.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            1200 as std::ffi::c_int,
            100 as std::ffi::c_int,
        );
    }
}

/// Opens a read connection for one worker. It cannot write, by construction.
pub(crate) fn open_reader(path: &str) -> Result<Connection, Error> {
    let connection = open_existing_with(path, None)?;
    // A small page cache per reader: there is one per worker, the OS caches the file anyway, and
    // in WAL mode any commit empties it at the reader's next transaction. 64 KiB holds the pages
    // of any one query wxauth makes; 128 KiB cost 16 × 64 KiB more peak memory (bench/run).
    connection.execute_batch("PRAGMA cache_size = -64;")?;
    Ok(connection)
}

/// Opens a database file that must exist, read-only (`None`) or read-write for `Some(opener)`
/// (`open_read_write`), with the busy timeout and foreign keys on.
fn open_existing_with(path: &str, writer: Option<Opener>) -> Result<Connection, Error> {
    configure_sqlite();
    let connection = match writer {
        None => {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI;
            Connection::open_with_flags(path, flags)?
        }
        Some(opener) => open_read_write(path, opener)?,
    };
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.execute_batch("PRAGMA foreign_keys = ON;")?;
    Ok(connection)
}

/// Who opens the database for writing, which decides whose file it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opener {
    /// `wxauth serve`, which keeps session keys, and the generated JWT secret, in the file: it
    /// must be the file of the user wxauth runs as, or its owner could read them.
    Server,
    /// An operator's command that writes (`migrate`, `users revoke`): as the server, except that
    /// root may also write to another user's file, as the deployment has root do to the service
    /// user's. These commands write no secret, and the files SQLite creates as root it gives to
    /// the database's owner.
    Operator,
}

/// The files SQLite keeps beside a database: the WAL, its shared-memory index, and the rollback
/// journal (used while a new database switches to WAL). An existing WAL or journal is read into
/// the database when it opens, and the WAL holds everything written.
const BESIDE: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Opens the existing database `path` read-write once it and the files `BESIDE` it that exist
/// pass `check_database_file` for `opener`; each is then made readable by its owner only, as
/// wxauth creates it (an older wxauth, or a copy, may have left it readable by all), because it
/// holds the secrets. SQLite does not create the database here, and follows no link to it.
fn open_read_write(path: &str, opener: Opener) -> Result<Connection, Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let user = effective_uid();
        let owner = match opener {
            Opener::Operator if user == 0 => None,
            _ => Some(user),
        };
        for suffix in std::iter::once("").chain(BESIDE) {
            let (file, database) = (format!("{path}{suffix}"), suffix.is_empty());
            let metadata = match std::fs::symlink_metadata(&file) {
                Ok(metadata) => metadata,
                Err(error) if !database && error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(Error::Internal(format!("database {file}: {error}"))),
            };
            check_database_file(&file, database, &metadata, owner).map_err(Error::Internal)?;
            if metadata.mode() & 0o077 != 0 {
                let private = std::fs::Permissions::from_mode(metadata.mode() & 0o700);
                std::fs::set_permissions(&file, private).map_err(|error| {
                    Error::Internal(format!("cannot make database file {file} owner-only: {error}"))
                })?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = opener;
    Ok(Connection::open_with_flags(linkless_path(path)?, private_flags())?)
}

/// Why wxauth must not write to `file` (the database when `database`, else a file `BESIDE` it),
/// which `symlink_metadata` found as `metadata`, with the fix, in one line: it must be a regular
/// file, not a symbolic link, owned by `owner` (anyone's: `None`) and not writable by group or
/// others. Otherwise another user could read what wxauth writes (the JWT secret it generates,
/// session keys) or write the database.
#[cfg(unix)]
fn check_database_file(
    file: &str,
    database: bool,
    metadata: &std::fs::Metadata,
    owner: Option<u32>,
) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let kind = metadata.file_type();
    if kind.is_symlink() {
        return Err(if database {
            format!(
                "database file {file} is a symbolic link: point `database` at the real file, not a symlink"
            )
        } else {
            format!("database file {file} is a symbolic link: move it away (SQLite makes its own)")
        });
    }
    if !kind.is_file() {
        return Err(if database {
            format!("database file {file} is not a regular file: point `database` at a file")
        } else {
            format!("database file {file} is not a regular file: move it away")
        });
    }
    if let Some(owner) = owner
        && metadata.uid() != owner
    {
        return Err(format!(
            "database file {file} belongs to uid {}, not to uid {owner} that wxauth runs as: `chown {owner} {file}` if it is this wxauth's, else move it away",
            metadata.uid()
        ));
    }
    if metadata.mode() & 0o022 != 0 {
        return Err(format!(
            "database file {file} is writable by other users (mode {:04o}): `chmod 600 {file}`",
            metadata.mode() & 0o7777
        ));
    }
    Ok(())
}

/// The user wxauth runs as: its effective uid.
#[cfg(unix)]
fn effective_uid() -> u32 {
    unsafe extern "C" {
        // Always succeeds and touches no memory (POSIX).
        safe fn geteuid() -> u32;
    }
    geteuid()
}

/// How wxauth opens a file of its own read-write: it exists (wxauth created it, or it passed
/// `check_database_file`), so SQLite must not create one, and SQLite refuses a symbolic link.
fn private_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW
}

/// `path` with the links in its directory resolved and its last component as it is, to open with
/// `SQLITE_OPEN_NOFOLLOW`: SQLite then refuses a link anywhere in the path it is given, and a
/// deployment may keep the database in a linked directory (systemd's `DynamicUser` links
/// /var/lib/wxauth to /var/lib/private/wxauth).
fn linkless_path(path: &str) -> Result<PathBuf, Error> {
    let given = Path::new(path);
    let (Some(directory), Some(name)) = (given.parent(), given.file_name()) else {
        return Err(Error::Internal(format!("{path} is not a file name")));
    };
    let directory = if directory.as_os_str().is_empty() { Path::new(".") } else { directory };
    let directory = std::fs::canonicalize(directory)
        .map_err(|error| Error::Internal(format!("{path}: {error}")))?;
    Ok(directory.join(name))
}

/// Creates `path` empty and readable by its owner only; false when something is there already.
/// O_CREAT|O_EXCL never follows a symbolic link (POSIX): a link there, dangling or not, is
/// "something", so no link can make this create a file elsewhere.
fn create_private_file(path: &str) -> std::io::Result<bool> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(error) => Err(error),
    }
}

/// The schema's sections, as (version, SQL), in order: each starts at a line `-- version: N`.
fn schema_versions() -> Vec<(u32, String)> {
    let mut versions: Vec<(u32, String)> = Vec::new();
    for line in SCHEMA.lines() {
        if let Some(number) = line.strip_prefix("-- version: ") {
            let version = number.trim().parse().expect("schema.sql: bad version line");
            versions.push((version, String::new()));
        } else if let Some((_, sql)) = versions.last_mut() {
            sql.push_str(line);
            sql.push('\n');
        }
    }
    versions
}

/// The schema version this binary brings.
pub(crate) fn current_version() -> u32 {
    schema_versions().last().map(|(version, _)| *version).unwrap_or(0)
}

/// Applies every schema section above the database's `user_version`, all in one transaction: the
/// database moves to the current version or, on any failure, stays as it was. (One commit, so one
/// fsync, also keeps a first start quick: bench/run times it.)
fn migrate(connection: &Connection) -> Result<Vec<u32>, Error> {
    let found: u32 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > current_version() {
        return Err(Error::Internal(format!(
            "database schema version {found} is newer than this binary's ({})",
            current_version()
        )));
    }
    let mut applied = Vec::new();
    let mut batch = String::from("BEGIN IMMEDIATE;\n");
    for (version, sql) in schema_versions() {
        if version > found {
            batch.push_str(&format!("{sql}\n;\nPRAGMA user_version = {version};\n"));
            applied.push(version);
        }
    }
    if applied.is_empty() {
        return Ok(applied);
    }
    batch.push_str("COMMIT;");
    connection.execute_batch(&batch).inspect_err(|_| {
        let _ = connection.execute_batch("ROLLBACK");
    })?;
    Ok(applied)
}

/// The database's schema version.
pub(crate) fn schema_version(connection: &Connection) -> Result<u32, Error> {
    Ok(connection.query_row("PRAGMA user_version", [], |row| row.get(0))?)
}

/// The JWT secret kept in the database, storing `generated` first if there is none yet.
pub(crate) fn jwt_secret_or_insert(
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

pub(crate) fn account_by_id(connection: &Connection, id: i64) -> Result<Option<Account>, Error> {
    let mut statement = connection.prepare_cached(concat!(
        "SELECT ",
        account_columns!(),
        " FROM accounts WHERE id = ?1"
    ))?;
    Ok(statement.query_row(params![id], account_from_row).optional()?)
}

pub(crate) fn account_by_openid(
    connection: &Connection,
    appid: &str,
    openid: &str,
) -> Result<Option<Account>, Error> {
    let mut statement = connection.prepare_cached(concat!(
        "SELECT ",
        account_columns!(),
        " FROM accounts WHERE wx_appid = ?1 AND wx_openid = ?2"
    ))?;
    Ok(statement.query_row(params![appid, openid], account_from_row).optional()?)
}

/// `Some(is_register)` for an existing account, `None` when there is none.
pub(crate) fn is_registered(
    connection: &Connection,
    appid: &str,
    openid: &str,
) -> Result<Option<bool>, Error> {
    let mut statement = connection.prepare_cached(
        "SELECT is_register FROM accounts WHERE wx_appid = ?1 AND wx_openid = ?2",
    )?;
    Ok(statement.query_row(params![appid, openid], |row| row.get(0)).optional()?)
}

pub(crate) fn wechat_session(
    connection: &Connection,
    appid: &str,
    openid: &str,
) -> Result<Option<RecordedSession>, Error> {
    let mut statement = connection.prepare_cached(
        "SELECT unionid, session_key, created_at, token_version,
                coalesce((SELECT token_version FROM accounts WHERE wx_appid = ?1 AND wx_openid = ?2), 0)
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

/// Records a `jscode2session` answer with the token version of the openid's account as of this
/// write (0 when there is none), and the unionid on an existing account that lacked one.
pub(crate) fn save_wechat_session(
    connection: &Connection,
    appid: &str,
    openid: &str,
    session: &WechatSession,
) -> Result<(), Error> {
    connection
        .prepare_cached(
            "INSERT INTO wechat_sessions (appid, openid, unionid, session_key, created_at, token_version)
             VALUES (?1, ?2, ?3, ?4, ?5,
                     coalesce((SELECT token_version FROM accounts WHERE wx_appid = ?1 AND wx_openid = ?2), 0))
             ON CONFLICT (appid, openid) DO UPDATE SET
                 unionid = coalesce(excluded.unionid, unionid),
                 session_key = excluded.session_key,
                 created_at = excluded.created_at,
                 token_version = excluded.token_version",
        )?
        .execute(params![
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
                 WHERE wx_appid = ?1 AND wx_openid = ?2 AND wx_unionid IS NULL",
            )?
            .execute(params![appid, openid, session.unionid])?;
    }
    Ok(())
}

/// The account id for a WeChat identity, with this login's bookkeeping (`last_login`,
/// `last_ip`) set; creates the account (not registered, username = openid, joined now from `ip`)
/// if there is none. Safe under any concurrency: the unique index decides. A new account costs one
/// statement (no `RETURNING`, which makes SQLite build a temporary table on every call).
pub(crate) fn login_account(
    connection: &Connection,
    appid: &str,
    openid: &str,
    ip: &str,
    now: i64,
) -> Result<i64, Error> {
    let inserted = connection
        .prepare_cached(
            "INSERT INTO accounts
                 (username, wx_appid, wx_openid, wx_unionid, join_ip, date_joined, last_ip, last_login)
             VALUES (?2, ?1, ?2,
                     (SELECT unionid FROM wechat_sessions WHERE appid = ?1 AND openid = ?2),
                     ?3, ?4, ?3, ?4)
             ON CONFLICT (wx_appid, wx_openid) DO NOTHING",
        )?
        .execute(params![appid, openid, ip, now])?;
    if inserted == 1 {
        return Ok(connection.last_insert_rowid());
    }
    let id = connection
        .prepare_cached("SELECT id FROM accounts WHERE wx_appid = ?1 AND wx_openid = ?2")?
        .query_row(params![appid, openid], |row| row.get(0))?;
    touch_login(connection, id, ip, now)?;
    Ok(id)
}

/// Applies the fields of `profile` that are present.
pub(crate) fn update_profile(
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
/// account of `openid`, created registered when there is none. `None` when account `known_id`
/// does not exist.
///
/// One write either way (an upsert, or an update), then the read back: this runs on the writer
/// thread, which every durable write waits for, and a login, then an update, then the read cost
/// 6.5k more instructions per registration (bench/profile). Not `RETURNING`, which SQLite
/// buffers through an ephemeral table: 8.6k more than this.
pub(crate) fn register(
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
    match known_id {
        None => {
            connection
                .prepare_cached(concat!(
                    "INSERT INTO accounts (username, wx_appid, wx_openid, wx_unionid, join_ip, \
                     date_joined, last_ip, last_login, phone, is_register, wx_nickname, \
                     birthday, wx_gender) \
                     VALUES (?3, ?1, ?2, \
                             (SELECT unionid FROM wechat_sessions WHERE appid = ?1 AND openid = ?2), \
                             ?4, ?5, ?4, ?5, ?6, 1, ?7, ?8, coalesce(?9, 0)) \
                     ON CONFLICT (wx_appid, wx_openid) DO UPDATE SET ",
                    registration_set!()
                ))?
                .execute(&values[..])?;
            account_by_openid(connection, appid, openid)
        }
        Some(id) => {
            // ?1 and ?2 are not used here; they are bound so that both statements share
            // `registration_set!`'s numbering.
            connection
                .prepare_cached(concat!(
                    "UPDATE accounts SET ",
                    registration_set!(),
                    " WHERE id = ?10"
                ))?
                .execute(rusqlite::params_from_iter(
                    values.into_iter().chain([&id as &dyn ToSql]),
                ))?;
            account_by_id(connection, id)
        }
    }
}

/// Revokes every token issued to the account so far, and so ends the sign-ins that produced them:
/// its recorded WeChat session, and any remembered code answer, now carry an older token version
/// (`RecordedSession::ended`). False when there is no such account.
pub(crate) fn revoke_tokens(connection: &Connection, id: i64) -> Result<bool, Error> {
    let changed = connection
        .prepare_cached("UPDATE accounts SET token_version = token_version + 1 WHERE id = ?1")?
        .execute(params![id])?;
    Ok(changed == 1)
}

/// Login bookkeeping: when and from where.
pub(crate) fn touch_login(
    connection: &Connection,
    id: i64,
    ip: &str,
    now: i64,
) -> Result<(), Error> {
    connection
        .prepare_cached("UPDATE accounts SET last_login = ?2, last_ip = ?3 WHERE id = ?1")?
        .execute(params![id, now, ip])?;
    Ok(())
}

/// A write waiting for the writer: runs inside the group's transaction (or, given `None`, learns
/// that no transaction could be started) and returns what to do once the group's commit has
/// succeeded or failed.
type Run = Box<dyn FnOnce(Option<&Connection>) -> Finish + Send>;
type Finish = Box<dyn FnOnce(Result<(), &Error>) + Send>;

/// A write and how durable its acknowledgement must be.
struct Job {
    durability: Durability,
    /// `None`: nothing but the login bookkeeping waiting (`Writer::note_login`) to write.
    run: Option<Run>,
}

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// Once its commit is fsynced (`synchronous = FULL`).
    Synced,
    /// Once it is committed; fsynced with a later synced commit or checkpoint
    /// (`synchronous = NORMAL`, which in WAL mode still keeps the database consistent).
    Visible,
}

/// The handle workers use to hand writes to the writer thread. Cloning it is cheap; the writer
/// stops once every handle is dropped.
#[derive(Clone)]
pub(crate) struct Writer {
    jobs: mpsc::SyncSender<Job>,
    logins: Logins,
}

/// Login bookkeeping not yet written: the newest login per account, its time and address. Every
/// group commit writes all of it first, in a savepoint of its own. Whoever finds it empty also
/// queues an empty job, so that a group follows; everyone else finds that group on its way.
/// Before, each token login queued a job of its own and woke the writer for it.
#[derive(Clone, Default)]
struct Logins(Arc<Mutex<HashMap<i64, (String, i64)>>>);

impl Logins {
    fn lock(&self) -> MutexGuard<'_, HashMap<i64, (String, i64)>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes what is waiting, in one write, and logs its failure. Runs in the group's transaction
    /// (`None`: there is none, and what was waiting is lost, as a failed group's writes are).
    fn write(&self, connection: Option<&Connection>) {
        let waiting = std::mem::take(&mut *self.lock());
        if waiting.is_empty() {
            return;
        }
        let result = run_in_savepoint(connection, |connection| {
            for (id, (ip, now)) in &waiting {
                touch_login(connection, *id, ip, *now)?;
            }
            Ok(())
        });
        if let Err(error) = result {
            crate::log::error(&format!(
                "login bookkeeping of {} accounts failed: {error}",
                waiting.len()
            ));
        }
    }
}

impl Writer {
    /// Starts the writer thread on `connection` (from `open_writer`).
    pub(crate) fn start(connection: Connection) -> (Writer, thread::JoinHandle<()>) {
        let (jobs, queue) = mpsc::sync_channel(QUEUE_DEPTH);
        let logins = Logins::default();
        let waiting = logins.clone();
        let handle = thread::Builder::new()
            .name("writer".into())
            .spawn(move || write_loop(connection, queue, waiting))
            .expect("cannot start the writer thread");
        (Writer { jobs, logins }, handle)
    }

    /// Runs `write` in the writer's transaction and returns its result once it is committed and
    /// on disk (the commit is fsynced). A job that fails is rolled back alone; the others in its
    /// group still commit.
    pub(crate) fn run<T, F>(&self, write: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        self.wait_for(Durability::Synced, write)
    }

    /// Like `run`, but returns once the write is committed (every reader sees it) without waiting
    /// for the fsync: a power loss before the next synced commit or checkpoint may undo it, a
    /// crash of wxauth alone cannot. For records that the client can recreate (a WeChat session
    /// comes back with the next `wx.login` code), never for accounts.
    pub(crate) fn run_visible<T, F>(&self, write: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        self.wait_for(Durability::Visible, write)
    }

    /// Like `run`, but returns at once: `then` gets the result on the writer thread, once the
    /// group is on disk (or has failed), so the caller need not wait for the writer to wake it.
    /// `then` runs between the writer's groups, so it must never wait for anything (a client
    /// socket above all); a panic in it is contained and logged.
    pub(crate) fn run_then<T, F, G>(&self, write: F, then: G)
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
        G: FnOnce(Result<T, Error>) + Send + 'static,
    {
        self.queue(Durability::Synced, write, then);
    }

    fn wait_for<T, F>(&self, durability: Durability, write: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel::<Result<T, Error>>(1);
        self.queue(durability, write, move |result| {
            let _ = reply.send(result);
        });
        answer.recv().map_err(|_| Error::Internal("the writer dropped a write".into()))?
    }

    /// Records a login's bookkeeping (`touch_login`) without waiting for it: it is written first
    /// in the next group commit, so every write queued after it sees it, and fsynced with the
    /// next synced commit or checkpoint, like `run_visible`. Of several logins of one account
    /// waiting for that commit, the last one recorded is written; failures are logged.
    pub(crate) fn note_login(&self, id: i64, ip: String, now: i64) {
        let mut waiting = self.logins.lock();
        let first = waiting.is_empty();
        waiting.insert(id, (ip, now));
        drop(waiting);
        if first {
            // Taken by the group this job is in, or by an earlier one; either way it is written.
            // The writer has stopped only once every handle is gone, and this is one.
            let _ = self.jobs.send(Job { durability: Durability::Visible, run: None });
        }
    }

    /// Hands `write` to the writer thread; `then` gets its result once its group has committed
    /// (or failed). If the writer has stopped, `then` learns that at once, on this thread.
    fn queue<T, F, G>(&self, durability: Durability, write: F, then: G)
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
        G: FnOnce(Result<T, Error>) + Send + 'static,
    {
        let run: Run = Box::new(move |connection| {
            let result = run_in_savepoint(connection, write);
            Box::new(move |committed| {
                then(match (result, committed) {
                    (Ok(value), Ok(())) => Ok(value),
                    (Ok(_), Err(error)) => Err(Error::Internal(format!("commit failed: {error}"))),
                    (Err(error), _) => Err(error),
                })
            })
        });
        if let Err(mpsc::SendError(Job { run: Some(run), .. })) =
            self.jobs.send(Job { durability, run: Some(run) })
        {
            run(None)(Err(&Error::Internal("the writer has stopped".into())));
        }
    }
}

/// Runs one job inside a savepoint, so that its failure (or panic) undoes only its own changes.
fn run_in_savepoint<T>(
    connection: Option<&Connection>,
    write: impl FnOnce(&Connection) -> Result<T, Error>,
) -> Result<T, Error> {
    let connection = connection.ok_or_else(|| {
        Error::Internal("no write transaction (the writer has stopped, or BEGIN failed)".into())
    })?;
    execute(connection, "SAVEPOINT job")?;
    let result = catch_unwind(AssertUnwindSafe(|| write(connection)))
        .unwrap_or_else(|_| Err(Error::Internal("a write panicked".into())));
    if result.is_err() {
        execute(connection, "ROLLBACK TO job")?;
    }
    execute(connection, "RELEASE job")?;
    result
}

/// Runs one statement without parameters from the statement cache: the writer's transaction
/// plumbing runs several times per request, and parsing it anew each time costs more than the
/// statements themselves.
fn execute(connection: &Connection, sql: &str) -> Result<(), Error> {
    connection.prepare_cached(sql)?.execute([])?;
    Ok(())
}

fn write_loop(connection: Connection, queue: mpsc::Receiver<Job>, logins: Logins) {
    let mut group: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    let mut finishers = Vec::with_capacity(MAX_GROUP);
    // What `open_writer` set; changed only when a group needs the other level.
    let mut synced = true;
    // When the last group committed. A group of nothing but login bookkeeping waits until
    // BOOKKEEPING_EVERY after it, and goes at once when a write that is waited for arrives.
    let mut committed_at: Option<Instant> = None;
    while let Ok(first) = queue.recv() {
        group.push(first);
        take_waiting(&queue, &mut group);
        if let Some(at) = committed_at {
            let until = at + BOOKKEEPING_EVERY;
            while group.iter().all(|job| job.run.is_none()) {
                let left = until.saturating_duration_since(Instant::now());
                match queue.recv_timeout(left) {
                    Ok(job) => group.push(job),
                    // A stop (every handle gone) writes what is waiting at once.
                    Err(_) => break,
                }
            }
            take_waiting(&queue, &mut group);
        }
        // One fsync per group when any job in it waits for one; none when none does. Set outside
        // the transaction, and only on a change.
        let needs_sync = group.iter().any(|job| job.durability == Durability::Synced);
        let mut outcome = Ok(());
        if needs_sync && !synced {
            // Failing this fails the group: its writes must not be answered unsynced.
            outcome = execute(&connection, "PRAGMA synchronous = FULL");
            synced = outcome.is_ok();
        } else if !needs_sync && synced {
            // Failing this only costs an fsync: the group commits synced.
            synced = execute(&connection, "PRAGMA synchronous = NORMAL").is_err();
        }
        let outcome = outcome.and_then(|()| execute(&connection, "BEGIN IMMEDIATE"));
        match outcome {
            Ok(()) => {
                // Before the jobs: a job queued after a login was recorded sees that login.
                logins.write(Some(&connection));
                finishers.extend(
                    group.drain(..).filter_map(|job| job.run).map(|run| run(Some(&connection))),
                );
                let committed = execute(&connection, "COMMIT");
                committed_at = Some(Instant::now());
                if let Err(error) = &committed {
                    crate::log::error(&format!(
                        "group commit of {} writes failed: {error}",
                        finishers.len()
                    ));
                    let _ = connection.execute_batch("ROLLBACK");
                }
                for finish in finishers.drain(..) {
                    answer(finish, committed.as_ref().map(|_| ()));
                }
            }
            Err(error) => {
                crate::log::error(&format!("cannot begin a write transaction: {error}"));
                logins.write(None);
                // The jobs do not run; each still gets its answer (the error).
                for run in group.drain(..).filter_map(|job| job.run) {
                    answer(run(None), Err(&error));
                }
            }
        }
    }
    // Every handle is gone: fold the WAL back into the database so the file stands alone (the
    // checkpoint fsyncs whatever was committed without a sync).
    if let Err(error) = connection.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        crate::log::error(&format!("final WAL checkpoint failed: {error}"));
    }
}

/// Adds to `group` the jobs waiting in `queue`, up to `MAX_GROUP`.
fn take_waiting(queue: &mpsc::Receiver<Job>, group: &mut Vec<Job>) {
    while group.len() < MAX_GROUP {
        match queue.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
}

/// Gives one job its outcome. What a job does then (`Writer::run_then`) is not the writer's
/// business: a panic there costs that answer, never the writer thread.
fn answer(finish: Finish, committed: Result<(), &Error>) {
    if catch_unwind(AssertUnwindSafe(|| finish(committed))).is_err() {
        crate::log::error("a write's answer panicked on the writer thread");
    }
}

// ---- Observability: read-only queries for /readyz and /metrics --------------------------------

/// How many accounts exist, and how many of them completed registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccountCounts {
    pub(crate) accounts: i64,
    pub(crate) registered: i64,
}

/// Counts accounts, for the metrics gauges and `wxauth users list`: one scan of the table, so
/// `metrics` reuses a count for a while rather than scanning at every scrape.
pub(crate) fn account_counts(connection: &Connection) -> Result<AccountCounts, Error> {
    Ok(connection
        .prepare_cached("SELECT count(*), coalesce(sum(is_register), 0) FROM accounts")?
        .query_row([], |row| Ok(AccountCounts { accounts: row.get(0)?, registered: row.get(1)? }))?)
}

// ---- End of observability queries ------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// The operator's commands (admin.rs): listing, exporting and finding accounts across appids,
// revoking from outside the server, and backups. None of these opens a database that does not
// exist yet; admin.rs checks that first and says so.

/// Opens an existing database for one write from outside the server (`wxauth users revoke`):
/// never creates the file, checks it as an operator's (`Opener::Operator`), and waits up to `BUSY_TIMEOUT` for the server's writer between its
/// group commits rather than failing with `database is locked`.
pub(crate) fn open_existing(path: &str) -> Result<Connection, Error> {
    open_existing_with(path, Some(Opener::Operator))
}

/// Every account with this openid, whatever its appid (one deployment may serve several
/// mini-programs), by id.
pub(crate) fn accounts_with_openid(
    connection: &Connection,
    openid: &str,
) -> Result<Vec<Account>, Error> {
    let mut statement = connection.prepare(concat!(
        "SELECT ",
        account_columns!(),
        " FROM accounts WHERE wx_openid = ?1 ORDER BY id"
    ))?;
    let accounts = statement.query_map(params![openid], account_from_row)?;
    Ok(accounts.collect::<Result<_, _>>()?)
}

/// Hands the accounts to `visit` one at a time, by id, skipping `offset` and stopping after
/// `limit` (all when `None`). Rows are read as they are visited, never collected, so a million
/// accounts cost the memory of one; the read sees one snapshot of the database throughout.
pub(crate) fn each_account(
    connection: &Connection,
    limit: Option<u64>,
    offset: u64,
    mut visit: impl FnMut(Account) -> Result<(), Error>,
) -> Result<(), Error> {
    // SQLite reads a negative LIMIT as "no limit"; numbers past i64 mean the same.
    let limit = limit.map_or(-1, |limit| i64::try_from(limit).unwrap_or(-1));
    let offset = i64::try_from(offset).unwrap_or(i64::MAX);
    let mut statement = connection.prepare(concat!(
        "SELECT ",
        account_columns!(),
        " FROM accounts ORDER BY id LIMIT ?1 OFFSET ?2"
    ))?;
    let mut rows = statement.query(params![limit, offset])?;
    while let Some(row) = rows.next()? {
        visit(account_from_row(row)?)?;
    }
    Ok(())
}

/// What `backup` wrote, read back from the copy.
pub(crate) struct BackupReport {
    /// Size of the copy, in bytes.
    pub(crate) bytes: u64,
    pub(crate) schema_version: u32,
    /// Every table of the copy and its row count, by name.
    pub(crate) tables: Vec<(String, i64)>,
}

/// Copies the database behind `source` to a new file at `destination` with SQLite's online
/// backup, then opens the copy and checks it with `PRAGMA integrity_check`. The copy is one
/// consistent snapshot even while the server writes (the source is in WAL mode, so the copy only
/// holds a read snapshot and never blocks the writer). An existing `destination` is never
/// overwritten; on any failure the partial copy is removed. The copy is created readable by its
/// owner only: it holds session keys and perhaps the generated JWT secret.
pub(crate) fn backup(source: &Connection, destination: &str) -> Result<BackupReport, Error> {
    // A WAL or journal there (an earlier copy's, or another user's) would be read into the copy.
    for suffix in BESIDE {
        let beside = format!("{destination}{suffix}");
        if std::fs::symlink_metadata(&beside).is_ok() {
            return Err(Error::Internal(format!(
                "{beside} already exists: move it away, or back up to another path"
            )));
        }
    }
    let created = create_private_file(destination)
        .map_err(|error| Error::Internal(format!("cannot create {destination}: {error}")))?;
    if !created {
        return Err(Error::Internal(format!("{destination} already exists; not overwriting it")));
    }
    let result = copy_and_verify(source, destination);
    if result.is_err() {
        for suffix in std::iter::once("").chain(BESIDE) {
            let _ = std::fs::remove_file(format!("{destination}{suffix}"));
        }
    }
    result
}

fn copy_and_verify(source: &Connection, destination: &str) -> Result<BackupReport, Error> {
    let destination_path = linkless_path(destination)?;
    {
        let mut copy = Connection::open_with_flags(&destination_path, private_flags())?;
        let backup = rusqlite::backup::Backup::new(source, &mut copy)?;
        // All pages in one step: one read snapshot of the source, so a write in between cannot
        // restart the copy. Busy or locked only while another connection changes the journal
        // mode or checkpoints; retried for about as long as a busy timeout.
        let mut attempts = 0;
        loop {
            match backup.step(-1)? {
                rusqlite::backup::StepResult::Done => break,
                _ if attempts < 100 => {
                    attempts += 1;
                    thread::sleep(BUSY_TIMEOUT / 100);
                }
                _ => {
                    return Err(Error::Internal(format!(
                        "backup: the database stayed busy for {}s",
                        BUSY_TIMEOUT.as_secs()
                    )));
                }
            }
        }
    }
    // Read back from the file itself, on a fresh connection, not from what was just written.
    let copy = Connection::open_with_flags(&destination_path, private_flags())?;
    let problems = copy
        .prepare("PRAGMA integrity_check")?
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    if problems != ["ok"] {
        return Err(Error::Internal(format!(
            "backup: integrity_check of {destination} failed: {}",
            problems.join("; ")
        )));
    }
    let names = copy
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut tables = Vec::new();
    for name in names {
        // A table name cannot be a parameter; this one comes from the schema, quoted as SQL says.
        let quoted = name.replace('"', "\"\"");
        let rows =
            copy.query_row(&format!("SELECT count(*) FROM \"{quoted}\""), [], |row| row.get(0))?;
        tables.push((name, rows));
    }
    let schema_version = schema_version(&copy)?;
    drop(copy);
    let bytes = std::fs::metadata(destination)
        .map_err(|error| Error::Internal(format!("backup: cannot read {destination}: {error}")))?
        .len();
    Ok(BackupReport { bytes, schema_version, tables })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_database(name: &str) -> String {
        let dir = std::env::temp_dir().join(format!("wxauth-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("test.db").to_string_lossy().into_owned()
    }

    #[cfg(unix)]
    #[test]
    fn database_files_must_be_ours_regular_and_not_writable_by_others() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let path = temp_database("file-check");
        std::fs::write(&path, b"").unwrap();
        let check = |file: &str, database: bool, owner: Option<u32>| {
            let metadata = std::fs::symlink_metadata(file).unwrap();
            check_database_file(file, database, &metadata, owner)
        };
        let user = effective_uid();
        for (mode, accepted) in [
            (0o600, true),
            (0o400, true),
            (0o640, true),
            (0o644, true),
            (0o620, false),
            (0o602, false),
            (0o666, false),
            (0o1777, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let expected = if accepted {
                Ok(())
            } else {
                Err(format!(
                    "database file {path} is writable by other users (mode {mode:04o}): `chmod 600 {path}`"
                ))
            };
            assert_eq!(check(&path, true, Some(user)), expected, "{mode:o}");
        }

        // Another user's file is refused whatever its mode, unless anyone's will do.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let other = user.wrapping_add(1);
        assert_eq!(
            check(&path, true, Some(other)),
            Err(format!(
                "database file {path} belongs to uid {user}, not to uid {other} that wxauth runs as: `chown {other} {path}` if it is this wxauth's, else move it away"
            ))
        );
        assert_eq!(check(&path, true, None), Ok(()));
        // A file of root's, as any other user (only looked at: never opened).
        let passwd = std::fs::symlink_metadata("/etc/passwd").unwrap();
        let verdict = check_database_file("/etc/passwd", true, &passwd, Some(user));
        if passwd.uid() == user {
            assert_eq!(verdict, Ok(()));
        } else {
            assert!(verdict.unwrap_err().contains("belongs to uid 0"));
        }

        // A link, to a good file of ours, and anything but a regular file.
        let link = format!("{path}-link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let refusal = check(&link, true, Some(user)).unwrap_err();
        assert!(refusal.ends_with("point `database` at the real file, not a symlink"), "{refusal}");
        let refusal = check(&link, false, None).unwrap_err();
        assert!(refusal.ends_with("is a symbolic link: move it away (SQLite makes its own)"));
        let directory = Path::new(&path).parent().unwrap().to_str().unwrap().to_string();
        let refusal = check(&directory, true, Some(user)).unwrap_err();
        assert!(
            refusal.ends_with("is not a regular file: point `database` at a file"),
            "{refusal}"
        );
    }

    #[test]
    fn schema_sections_are_numbered_from_one() {
        let versions: Vec<u32> = schema_versions().iter().map(|(version, _)| *version).collect();
        assert_eq!(versions, (1..=versions.len() as u32).collect::<Vec<_>>());
    }

    #[test]
    fn migrations_apply_once() {
        let path = temp_database("migrate");
        let (connection, applied) = open_writer(&path, Opener::Server).unwrap();
        assert_eq!(applied, (1..=current_version()).collect::<Vec<_>>());
        assert_eq!(schema_version(&connection).unwrap(), current_version());
        drop(connection);
        let (_, applied) = open_writer(&path, Opener::Server).unwrap();
        assert!(applied.is_empty());
    }

    /// A new database made by the schema's sections up to `version`, as an older wxauth left it.
    fn database_at_version(name: &str, version: u32) -> (String, Connection) {
        let path = temp_database(name);
        let connection = Connection::open(&path).unwrap();
        for (section, sql) in schema_versions() {
            if section <= version {
                let sql = format!("{sql}\n; PRAGMA user_version = {section};");
                connection.execute_batch(&sql).unwrap();
            }
        }
        (path, connection)
    }

    /// Every column of every account, in id order, as text.
    fn all_accounts(connection: &Connection) -> Vec<Vec<String>> {
        let mut statement = connection.prepare("SELECT * FROM accounts ORDER BY id").unwrap();
        let width = statement.column_count();
        statement
            .query_map([], |row| {
                (0..width)
                    .map(|index| Ok(format!("{:?}", row.get_ref(index)?)))
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn version_3_rebuilds_accounts_keeping_rows_ids_and_the_id_mark() {
        let (path, connection) = database_at_version("v3", 2);
        for (openid, gender) in [("openid-1", 0), ("openid-2", 2), ("openid-3", 1)] {
            login_account(&connection, "wxa", openid, "203.0.113.5", 100).unwrap();
            connection
                .execute(
                    "UPDATE accounts SET wx_gender = ?2, token_version = 7, phone = '13800138000'
                     WHERE wx_openid = ?1",
                    params![openid, gender],
                )
                .unwrap();
        }
        // The newest account is gone: its id must not be given out again.
        connection.execute("DELETE FROM accounts WHERE wx_openid = 'openid-3'", []).unwrap();
        let before = all_accounts(&connection);
        assert_eq!(before.len(), 2);
        drop(connection);

        let (connection, applied) = open_writer(&path, Opener::Server).unwrap();
        assert_eq!(applied, (3..=current_version()).collect::<Vec<_>>());
        assert_eq!(all_accounts(&connection), before, "every row and column kept");
        let id = login_account(&connection, "wxa", "openid-4", "::1", 200).unwrap();
        assert_eq!(id, 4, "AUTOINCREMENT's mark survives the rebuild");
        assert_eq!(
            login_account(&connection, "wxa", "openid-2", "::1", 200).unwrap(),
            2,
            "the unique index on (appid, openid) is back"
        );
        let gender = |value: i64| {
            connection.execute("UPDATE accounts SET wx_gender = ?1 WHERE id = 4", params![value])
        };
        assert!(gender(2).is_ok());
        assert!(gender(3).is_err() && gender(-1).is_err(), "the rule on wx_gender holds");
        let leftovers: i64 = connection
            .query_row(
                "SELECT (SELECT count(*) FROM sqlite_schema WHERE name LIKE '%v3%')
                      + (SELECT count(*) FROM sqlite_sequence WHERE name <> 'accounts')",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(leftovers, 0);
        let integrity: String =
            connection.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
        assert_eq!(integrity, "ok");
    }

    #[test]
    fn version_4_ends_the_sessions_of_accounts_that_have_logged_out() {
        let (path, connection) = database_at_version("v4", 3);
        for (openid, version) in [("openid-in", 0), ("openid-out", 2)] {
            login_account(&connection, "wxa", openid, "::1", 100).unwrap();
            connection
                .execute(
                    "UPDATE accounts SET token_version = ?2 WHERE wx_openid = ?1",
                    params![openid, version],
                )
                .unwrap();
            connection
                .execute(
                    "INSERT INTO wechat_sessions (appid, openid, session_key, created_at)
                     VALUES ('wxa', ?1, 'key', 100)",
                    params![openid],
                )
                .unwrap();
        }
        drop(connection);

        let (connection, applied) = open_writer(&path, Opener::Server).unwrap();
        assert_eq!(applied, (4..=current_version()).collect::<Vec<_>>());
        let ended = |openid| wechat_session(&connection, "wxa", openid).unwrap().unwrap().ended();
        assert!(!ended("openid-in"), "an account that never logged out keeps its session");
        assert!(ended("openid-out"), "the session may predate the logout: it ends");
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
        columns.push("token_version");
        assert_eq!(account_columns!().split(", ").collect::<Vec<_>>(), columns);
        assert_eq!(
            (account.id, account.wx_openid.as_str(), account.token_version),
            (id, "openid-f", 0)
        );
    }

    #[test]
    fn a_failed_upgrade_leaves_the_database_as_it_was() {
        let (path, connection) = database_at_version("failed-upgrade", 1);
        login_account(&connection, "wxa", "openid-1", "::1", 100).unwrap();
        // Version 3 creates this table: its section fails after version 2's has run.
        connection.execute_batch("CREATE TABLE accounts_v3 (x INTEGER)").unwrap();
        let before = all_accounts(&connection);
        drop(connection);

        assert!(open_writer(&path, Opener::Server).is_err());
        let connection = Connection::open(&path).unwrap();
        assert_eq!(schema_version(&connection).unwrap(), 1, "no version applied in part");
        assert_eq!(all_accounts(&connection), before);
        let columns: i64 = connection
            .query_row(
                "SELECT count(*) FROM pragma_table_info('accounts') WHERE name = 'token_version'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(columns, 0, "version 2's column was rolled back with the rest");
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

    #[test]
    fn visible_writes_are_seen_by_readers_when_answered() {
        let path = temp_database("visible");
        let (connection, _) = open_writer(&path, Opener::Server).unwrap();
        let (writer, handle) = Writer::start(connection);
        let reader = open_reader(&path).unwrap();
        let session = WechatSession { unionid: None, session_key: "key-1".into(), created_at: 100 };
        for round in 0..3 {
            let record = WechatSession { created_at: 100 + round, ..session.clone() };
            writer
                .run_visible(move |c| save_wechat_session(c, "wxa", "openid-v", &record))
                .unwrap();
            let seen = wechat_session(&reader, "wxa", "openid-v").unwrap().unwrap();
            assert_eq!(seen.session.created_at, 100 + round);
            // A synced write after an unsynced group switches the level back and commits too.
            let (id, level) = writer
                .run(move |c| {
                    let id = login_account(c, "wxa", "openid-v", "::1", 200 + round)?;
                    Ok((id, c.query_row("PRAGMA synchronous", [], |row| row.get::<_, i64>(0))?))
                })
                .unwrap();
            assert_eq!(level, 2, "FULL: answered after its fsync");
            let account = account_by_id(&reader, id).unwrap().unwrap();
            assert_eq!(account.last_login, Some(200 + round));
        }
        drop(writer);
        handle.join().unwrap();
    }

    #[test]
    fn noted_logins_are_written_newest_per_account_before_later_writes() {
        let path = temp_database("logins");
        let (connection, _) = open_writer(&path, Opener::Server).unwrap();
        let (writer, handle) = Writer::start(connection);
        let first = writer.run(|c| login_account(c, "wxa", "openid-1", "127.0.0.1", 100)).unwrap();
        let second = writer.run(|c| login_account(c, "wxa", "openid-2", "127.0.0.1", 100)).unwrap();
        // Many logins, from many threads: the last one recorded for each account is written.
        thread::scope(|scope| {
            for thread in 0..4 {
                let writer = writer.clone();
                scope.spawn(move || {
                    for round in 0..50 {
                        writer.note_login(second, format!("10.0.{thread}.{round}"), 200 + round);
                    }
                });
            }
        });
        writer.note_login(first, "192.0.2.1".into(), 300);
        writer.note_login(first, "192.0.2.2".into(), 301);
        // A write queued after them sees them, and so does every reader once it is answered.
        let seen = writer
            .run(move |c| Ok(account_by_id(c, first)?.and_then(|account| account.last_login)))
            .unwrap();
        assert_eq!(seen, Some(301));
        let reader = open_reader(&path).unwrap();
        let account = account_by_id(&reader, first).unwrap().unwrap();
        assert_eq!(
            (account.last_login, account.last_ip.as_deref()),
            (Some(301), Some("192.0.2.2"))
        );
        let account = account_by_id(&reader, second).unwrap().unwrap();
        assert_eq!(account.last_login, Some(249));
        assert!(account.last_ip.as_deref().is_some_and(|ip| ip.ends_with(".49")), "{account:?}");
        assert!(writer.logins.lock().is_empty(), "nothing left waiting");
        // Noted with nothing queued after it, a login is still written by itself.
        writer.note_login(first, "192.0.2.3".into(), 400);
        let deadline = Instant::now() + Duration::from_secs(10);
        while account_by_id(&reader, first).unwrap().unwrap().last_login != Some(400) {
            assert!(Instant::now() < deadline, "the login was never written");
            thread::sleep(Duration::from_millis(5));
        }
        drop(writer);
        handle.join().unwrap();
    }

    #[test]
    fn logins_alone_commit_at_most_once_per_bookkeeping_interval() {
        let path = temp_database("logins-interval");
        let (connection, _) = open_writer(&path, Opener::Server).unwrap();
        let (writer, handle) = Writer::start(connection);
        let id = writer.run(|c| login_account(c, "wxa", "openid-1", "127.0.0.1", 100)).unwrap();
        // Commits counted by the WAL's frames (no checkpoint runs below 1000), each of these
        // commits writing the same page(s): one bookkeeping commit's worth first.
        let frames =
            || (std::fs::metadata(format!("{path}-wal")).unwrap().len() - 32) / (24 + 4096);
        let before = frames();
        writer.note_login(id, "192.0.2.1".into(), 101);
        writer.run(|_| Ok(())).unwrap();
        let per_commit = frames() - before;
        assert!(per_commit > 0);
        // 100 logins a millisecond or more apart: one commit each without the interval.
        let (before, started) = (frames(), Instant::now());
        for round in 0..100 {
            writer.note_login(id, "192.0.2.2".into(), 200 + round);
            thread::sleep(Duration::from_millis(1));
        }
        let most = started.elapsed().as_millis() / BOOKKEEPING_EVERY.as_millis() + 2;
        writer.run(|_| Ok(())).unwrap();
        let commits = (frames() - before) / per_commit;
        assert!(commits as u128 <= most, "{commits} commits, at most {most} expected");
        let reader = open_reader(&path).unwrap();
        assert_eq!(account_by_id(&reader, id).unwrap().unwrap().last_login, Some(299));
        drop(writer);
        handle.join().unwrap();
    }

    #[test]
    fn one_account_per_identity_and_failed_jobs_roll_back_alone() {
        let path = temp_database("writer");
        let (connection, _) = open_writer(&path, Opener::Server).unwrap();
        let (writer, handle) = Writer::start(connection);
        let first = writer.run(|c| login_account(c, "wxa", "openid-1", "127.0.0.1", 100)).unwrap();
        let again = writer.run(|c| login_account(c, "wxa", "openid-1", "127.0.0.2", 200)).unwrap();
        assert_eq!(first, again);
        let failed = writer.run(|c| {
            login_account(c, "wxa", "openid-2", "127.0.0.1", 100)?;
            Err::<(), _>(Error::InvalidParameter("boom".into()))
        });
        assert!(failed.is_err());
        let reader = open_reader(&path).unwrap();
        assert!(account_by_openid(&reader, "wxa", "openid-2").unwrap().is_none());
        let account = account_by_openid(&reader, "wxa", "openid-1").unwrap().unwrap();
        assert_eq!(account.join_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(account.last_ip.as_deref(), Some("127.0.0.2"));
        assert_eq!(account.last_login, Some(200));
        assert_eq!(account.date_joined, 100);
        assert_eq!(account.username, "openid-1");
        drop(writer);
        handle.join().unwrap();
    }

    #[test]
    fn run_then_answers_on_the_writer_after_the_commit_and_survives_a_panicking_answer() {
        let path = temp_database("run-then");
        let (connection, _) = open_writer(&path, Opener::Server).unwrap();
        let (writer, handle) = Writer::start(connection);
        let (sender, answers) = mpsc::channel();
        let reader_path = path.clone();
        writer.run_then(
            |c| login_account(c, "wxa", "openid-1", "127.0.0.1", 100),
            move |result| {
                // Committed when `then` runs: another connection sees the account.
                let reader = open_reader(&reader_path).unwrap();
                let seen = account_by_openid(&reader, "wxa", "openid-1").unwrap().map(|a| a.id);
                let thread = thread::current().name().map(str::to_string);
                sender.send((result.unwrap(), seen, thread)).unwrap();
            },
        );
        let (id, seen, thread) = answers.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(seen, Some(id));
        assert_eq!(thread.as_deref(), Some("writer"));

        // A failing write reaches `then` as its error, rolled back alone.
        let (sender, answers) = mpsc::channel();
        writer.run_then(
            |c| {
                login_account(c, "wxa", "openid-2", "127.0.0.1", 100)?;
                Err::<(), _>(Error::InvalidParameter("boom".into()))
            },
            move |result| sender.send(result.is_err()).unwrap(),
        );
        assert!(answers.recv_timeout(Duration::from_secs(10)).unwrap());

        // A panic in an answer costs that answer, not the writer: the next write still runs.
        writer.run_then(|_| Ok(()), |_| panic!("an answer panics"));
        let after = writer.run(|c| login_account(c, "wxa", "openid-3", "127.0.0.1", 100));
        assert!(after.is_ok());
        let reader = open_reader(&path).unwrap();
        assert!(account_by_openid(&reader, "wxa", "openid-2").unwrap().is_none());
        drop(writer);
        handle.join().unwrap();
    }
}
