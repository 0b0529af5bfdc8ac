//! Storage: the accounts and the records the API keeps, behind an interface that names no engine,
//! and the engines behind it. Only this folder has SQL and names rusqlite (or any database crate):
//! no connection, statement or error of an engine's is seen outside it.
//!
//! The interface is concrete: a `Connection`, one function per query taking it (`queries!`), and
//! the `Writer` (`writer.rs`), whose jobs get the writer's `Connection`. A connection holds its
//! engine in an enum, `Engine`, and each function matches on it and calls that engine's function
//! of the same name: `sqlite.rs`, with its files in `sqlite/` (opening, SQLite's settings,
//! `schema.sql` by version, backups and restores), and `mysql.rs` with `mysql/` (MySQL or
//! MariaDB through the blocking `mysql` crate, for several instances on one database; `database`
//! picks it with a `mysql://` URL). Another engine is one more variant and one more file set: the
//! compiler then points at each `match` that needs its arm (the openers, `open_writer` and the
//! rest, choose by the URL's scheme, `mysql::is_url`, and need a branch too), and no caller
//! changes. Not a trait: `Ctx` and the writer's jobs (boxed closures sent to the writer thread)
//! would have to be generic over the engine up into api.rs and server.rs, or hold a `dyn` engine
//! and pay an indirect call per query. The enum keeps every query a direct call on the engine's own
//! connection, where its prepared statements stay cached, with no allocation. An engine's error
//! reaches the crate's `Error` as a `DatabaseError`, which keeps it whole as its source.
//!
//! Reads run on the calling worker's own connection (or, for a row a write changes, in that write).
//! Every write goes through the one `Writer` connection, which commits in groups: it takes every
//! job waiting, runs each in its own savepoint (a failing job rolls back alone), commits once, and
//! only then answers each job. A write made with `Writer::run` is answered on disk
//! (`synchronous = FULL`), many of them sharing one fsync; `run_visible` writes (a WeChat
//! session) are answered once committed, and login bookkeeping (`note_login`, written at the start
//! of the next group) is not waited for; both reach the disk with the next fsync or checkpoint.
//! One account per WeChat identity: an identity (appid, openid) is the primary key of
//! `identities`, which names its account; one account may have an identity in each app. The
//! writer, the only connection of the server that creates accounts and identities, looks an
//! identity up and inserts only when it has none, in its transaction (an `INSERT … ON CONFLICT` on
//! the AUTOINCREMENT table would spend an id at every login); a new identity whose WeChat session
//! gave a unionid an account has joins that account, so two apps' first logins of one person, two
//! jobs of the one writer, make one account. `wxauth users import` writes accounts with the ids of
//! its file, and their identities, in its one transaction (`insert_account`), which on SQLite
//! holds the write lock throughout, so the writer cannot come between (see `in_transaction` for
//! MySQL).
//!
//! On a database several instances share (MySQL, `SharedDatabase`), each write runs in a
//! transaction of its own on the worker that asks, committed before it is answered, but for the
//! accounts of new identities (first logins, registrations), which are made in batches of many to
//! one transaction (`Writer::write_account`, `SharedDatabase::create_accounts`); accounts and
//! identities are created race-free across instances, the unique keys deciding and two new
//! identities of one unionid taking turns (see `mysql.rs`); the answers of repeated codes are kept
//! there too (`SharedDatabase::claim_code`), for `codes.rs`.
//!
//! With SQLite, a connection that writes opens only a file that is safely wxauth's
//! (`open_read_write`): a regular file of its user, writable by nobody else, reached through no
//! link, with the same true of SQLite's files beside it; wxauth creates a missing database
//! itself, owner-only.

use std::fmt;

use rusqlite::Row;
use serde::Serialize;

use crate::error::Error;
use crate::time;

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

        /// The account from a MySQL row of `account_columns!()`.
        fn account_from_mysql_row(mut row: ::mysql::Row) -> Result<Account, Error> {
            let mut column = 0;
            let mut next = || {
                column += 1;
                column - 1
            };
            Ok(Account {
                $first: mysql::column(&mut row, next())?,
                $( $shown: mysql::column(&mut row, next())?, )*
                $( $hidden: mysql::column(&mut row, next())?, )+
            })
        }

        /// A named parameter per column (`:id, :username, …`), in `account_columns!`'s order,
        /// for an insert of every column; bound by position from `Account::column_values`.
        macro_rules! account_parameters {
            () => {
                concat!(
                    ":", stringify!($first)
                    $(, ", :", stringify!($shown))*
                    $(, ", :", stringify!($hidden))+
                )
            };
        }

        impl Account {
            /// Every column's value, in `account_columns!`'s order, as any engine binds them.
            pub(crate) fn column_values(&self) -> impl Iterator<Item = ColumnValue<'_>> {
                [
                    self.$first.column_value()
                    $(, self.$shown.column_value())*
                    $(, self.$hidden.column_value())+
                ]
                .into_iter()
            }
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
            /// When an operator disabled the account (`wxauth users disable`), `None` while it is
            /// enabled. Not part of the account object: the API answers `account_disabled`.
            disabled_at: Option<i64>,
            /// The appid of the identity that made the account (with `wx_openid`, the original
            /// backend's fields). Not part of the account object: an answer through an app shows
            /// that app's openid in `wx_openid` (`openid_in_app`).
            wx_appid: String,
        }
    }
}

/// An account's other identities as `each_account`'s query gives them (`group_concat`:
/// `appid:openid`, separated by spaces; null for none), as (appid, openid). An openid never holds
/// a colon (the API's `is_openid`, `users import`'s check), so an identity splits at its last one.
fn split_identities(concatenated: Option<String>) -> Vec<(String, String)> {
    concatenated
        .as_deref()
        .unwrap_or_default()
        .split(' ')
        .filter_map(|identity| identity.rsplit_once(':'))
        .map(|(appid, openid)| (appid.to_string(), openid.to_string()))
        .collect()
}

/// A column's value as every engine can bind it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ColumnValue<'a> {
    Null,
    Integer(i64),
    Text(&'a str),
}

/// A field of `Account` as a `ColumnValue` (booleans are 0 and 1, as the schema keeps them).
trait ToColumn {
    fn column_value(&self) -> ColumnValue<'_>;
}

impl ToColumn for i64 {
    fn column_value(&self) -> ColumnValue<'_> {
        ColumnValue::Integer(*self)
    }
}

impl ToColumn for bool {
    fn column_value(&self) -> ColumnValue<'_> {
        ColumnValue::Integer(i64::from(*self))
    }
}

impl ToColumn for String {
    fn column_value(&self) -> ColumnValue<'_> {
        ColumnValue::Text(self)
    }
}

impl<T: ToColumn> ToColumn for Option<T> {
    fn column_value(&self) -> ColumnValue<'_> {
        self.as_ref().map_or(ColumnValue::Null, ToColumn::column_value)
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

// The engines' files come after `account!`, whose `account_columns!` they use.
mod mysql;
mod sqlite;
mod writer;

pub(crate) use writer::Writer;

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

/// A write that gives an account its login, with this login's bookkeeping: the account of a
/// token (`Writer::write_account`'s `known_id`), or else of the WeChat identity (appid, openid),
/// which gets one if it has none. What a batch on a shared database takes
/// (`SharedDatabase::create_accounts`).
#[derive(Debug, Clone)]
pub(crate) struct IdentityWrite {
    pub(crate) appid: String,
    pub(crate) openid: String,
    pub(crate) ip: String,
    pub(crate) now: i64,
    pub(crate) change: AccountChange,
}

/// What an `IdentityWrite` writes onto the account.
#[derive(Debug, Clone)]
pub(crate) enum AccountChange {
    /// `register`: the phone and the optional fields (`store::register`).
    Register(Registration),
    /// `login`: the profile fields sent, if any (`store::login_account`, `update_profile`).
    Login(Profile),
}

/// How many accounts exist, and how many of them completed registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccountCounts {
    pub(crate) accounts: i64,
    pub(crate) registered: i64,
}

/// What `backup` wrote, read back from the copy.
pub(crate) struct BackupReport {
    /// Size of the copy, in bytes.
    pub(crate) bytes: u64,
    pub(crate) schema_version: u32,
    /// Every table of the copy and its row count, by name.
    pub(crate) tables: Vec<(String, i64)>,
}

/// What `wxauth users find` looks for: an account matches when any given field does (a nickname
/// as a part of `wx_nickname`, the others exactly).
#[derive(Debug, Default, Clone)]
pub(crate) struct AccountQuery {
    pub(crate) phone: Option<String>,
    pub(crate) openid: Option<String>,
    pub(crate) unionid: Option<String>,
    pub(crate) nickname: Option<String>,
}

/// One field `wxauth users set` changes: its name, one of `Account::FIELDS` (each also its
/// column's), and its new value, already checked as the API checks it.
#[derive(Debug, Clone)]
pub(crate) struct Edit {
    pub(crate) field: &'static str,
    pub(crate) value: EditValue,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EditValue {
    /// Text, or `None` for null.
    Text(Option<String>),
    Integer(i64),
}

/// What `restore` put in place, read back from the restored file.
pub(crate) struct RestoreReport {
    /// Whether there was a database to keep aside.
    pub(crate) kept: bool,
    /// The restored copy, as `backup` reports a copy.
    pub(crate) copy: BackupReport,
}

/// Who opens the database for writing, which decides whose file it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opener {
    /// `wxauth serve`, which keeps session keys, and the generated JWT secret, in the file: it
    /// must be the file of the user wxauth runs as, or its owner could read them.
    Server,
    /// An operator's command that writes (`migrate`, the `users` commands that change accounts,
    /// `restore`): as the server, except that
    /// root may also write to another user's file, as the deployment has root do to the service
    /// user's. These commands write no secret, and the files SQLite creates as root it gives to
    /// the database's owner.
    Operator,
}

/// A connection to the database: a worker's read-only one, the writer's, or an operator's.
pub(crate) struct Connection(Engine);

/// The engine behind a connection, one variant per engine.
enum Engine {
    Sqlite(rusqlite::Connection),
    Mysql(mysql::Connection),
}

// `path` picks the engine: a `mysql://` URL is MySQL's (or MariaDB's), anything else a SQLite
// file's path.

/// Sets the password for the MySQL databases this process opens (`database_password`); main
/// calls it once, before opening any.
pub(crate) fn set_database_password(password: &str) {
    mysql::set_password(password);
}

/// Whether `path` names a database on a server that several instances may share (MySQL), rather
/// than a SQLite file.
pub(crate) fn is_shared(path: &str) -> bool {
    mysql::is_url(path)
}

/// Opens the writer connection for `opener`, creating the database if needed, and applies the
/// schema versions it lacks. Returns the connection and the versions it applied.
pub(crate) fn open_writer(path: &str, opener: Opener) -> Result<(Connection, Vec<u32>), Error> {
    if mysql::is_url(path) {
        let (connection, applied) = mysql::open_writer(path)?;
        return Ok((Connection(Engine::Mysql(connection)), applied));
    }
    let (connection, applied) = sqlite::open_writer(path, opener)?;
    Ok((Connection(Engine::Sqlite(connection)), applied))
}

/// Opens a read connection for one worker. With SQLite it cannot write, by construction; a MySQL
/// connection is its pool's, and the server writes only through the `Writer`.
pub(crate) fn open_reader(path: &str) -> Result<Connection, Error> {
    if mysql::is_url(path) {
        return Ok(Connection(Engine::Mysql(mysql::open_reader(path)?)));
    }
    Ok(Connection(Engine::Sqlite(sqlite::open_reader(path)?)))
}

/// Opens an existing database for writes from outside the server (the `wxauth users` commands
/// that change accounts, each in one `in_transaction`), never creating it.
pub(crate) fn open_existing(path: &str) -> Result<Connection, Error> {
    if mysql::is_url(path) {
        return Ok(Connection(Engine::Mysql(mysql::open_reader(path)?)));
    }
    Ok(Connection(Engine::Sqlite(sqlite::open_existing(path)?)))
}

/// The schema version this binary brings.
pub(crate) fn current_version() -> u32 {
    sqlite::current_version()
}

/// The interface's queries, one list: each function takes a `Connection` and calls its engine's
/// function of the same name with the rest of its arguments. What each does is said on the
/// engine's function (`sqlite.rs`).
macro_rules! queries {
    ($( $(#[$doc:meta])* fn $name:ident($($argument:ident: $type:ty),*) -> $output:ty; )*) => {
        $(
            $(#[$doc])*
            #[inline]
            pub(crate) fn $name(
                connection: &Connection,
                $($argument: $type),*
            ) -> Result<$output, Error> {
                match &connection.0 {
                    Engine::Sqlite(connection) => sqlite::$name(connection, $($argument),*),
                    Engine::Mysql(connection) => mysql::$name(connection, $($argument),*),
                }
            }
        )*
    };
}

queries! {
    /// The database's schema version.
    fn schema_version() -> u32;
    /// The JWT secret kept in the database, storing `generated` first if there is none yet.
    fn jwt_secret_or_insert(generated: &str) -> String;
    fn account_by_id(id: i64) -> Option<Account>;
    fn account_by_openid(appid: &str, openid: &str) -> Option<Account>;
    /// `Some(is_register)` for an existing account, `None` when there is none.
    fn is_registered(appid: &str, openid: &str) -> Option<bool>;
    fn wechat_session(appid: &str, openid: &str) -> Option<RecordedSession>;
    /// Records a `jscode2session` answer.
    fn save_wechat_session(appid: &str, openid: &str, session: &WechatSession) -> ();
    /// The account id for a WeChat identity, with this login's bookkeeping; an identity without
    /// an account joins the account of its session's unionid, or else gets a new account.
    fn login_account(appid: &str, openid: &str, ip: &str, now: i64) -> i64;
    /// Applies the fields of `profile` that are present.
    fn update_profile(id: i64, profile: &Profile) -> ();
    /// Registers an account and returns it as written; `None` when account `known_id` does not
    /// exist.
    fn register(
        known_id: Option<i64>,
        appid: &str,
        openid: &str,
        ip: &str,
        now: i64,
        registration: &Registration
    ) -> Option<Account>;
    /// The openid account `id` has in mini-program `appid`, if it has an identity there.
    fn openid_in_app(id: i64, appid: &str) -> Option<String>;
    /// Every identity of account `id`, as (appid, openid), by appid.
    fn identities_of(id: i64) -> Vec<(String, String)>;
    /// Revokes every token issued to the account so far; false when there is no such account.
    fn revoke_tokens(id: i64) -> bool;
    /// Login bookkeeping: when and from where, unless a later login is recorded already.
    fn touch_login(id: i64, ip: &str, now: i64) -> ();
    /// Of accounts `ids` (in id order), those no other transaction holds, locked for the rest of
    /// this one, and those another holds, each in id order (an account that does not exist is in
    /// neither): what login bookkeeping writes now, without waiting, and what it leaves for later.
    fn accounts_free_to_write(ids: &[i64]) -> (Vec<i64>, Vec<i64>);
    /// Counts accounts, for the metrics gauges and `wxauth users list`.
    fn account_counts() -> AccountCounts;
    /// Every account with this openid, whatever its appid, by id.
    fn accounts_with_openid(openid: &str) -> Vec<Account>;
    /// Hands the accounts to `visit` one at a time, by id, each with its identities other than
    /// its own (`wx_appid`, `wx_openid`), by appid then openid, skipping `offset` and stopping
    /// after `limit` (all when `None`), from one snapshot of the database.
    fn each_account(
        limit: Option<u64>,
        offset: u64,
        visit: impl FnMut(Account, Vec<(String, String)>) -> Result<(), Error>
    ) -> ();
    /// Copies the database to a new file at `destination` and checks the copy.
    fn backup(destination: &str) -> BackupReport;
    /// The accounts that match any field of `query`, by id.
    fn find_accounts(query: &AccountQuery) -> Vec<Account>;
    /// Disables account `id` as of `now` and revokes its tokens; false when it is already
    /// disabled or does not exist.
    fn disable_account(id: i64, now: i64) -> bool;
    /// Enables account `id` again; false when it is not disabled or does not exist.
    fn enable_account(id: i64) -> bool;
    /// Deletes account `id` and what is kept of its WeChat identity; false when there is no such
    /// account.
    fn delete_account(id: i64) -> bool;
    /// Inserts `account` as it is, every column with its id, its identity and `identities`, its
    /// others as (appid, openid) (`wxauth users import`).
    fn insert_account(account: &Account, identities: &[(String, String)]) -> ();
}

/// A schema file's sections, as (version, SQL), in order: each starts at a line `-- version: N`
/// (`schema.sql`, `mysql/schema.sql`, named `name` when a version line is bad).
fn schema_sections(text: &str, name: &str) -> Vec<(u32, String)> {
    let mut sections: Vec<(u32, String)> = Vec::new();
    for line in text.lines() {
        if let Some(number) = line.strip_prefix("-- version: ") {
            let version =
                number.trim().parse().unwrap_or_else(|_| panic!("{name}: bad version line"));
            sections.push((version, String::new()));
        } else if let Some((_, sql)) = sections.last_mut() {
            sql.push_str(line);
            sql.push('\n');
        }
    }
    sections
}

/// Applies `edits` to account `id` in one statement (none: nothing to do). Each engine writes the
/// field names into its SQL (a column name cannot be a parameter), so only a name from
/// `Account::FIELDS` other than `id` may reach it: checked here, once for both.
pub(crate) fn update_account(
    connection: &Connection,
    id: i64,
    edits: &[Edit],
) -> Result<(), Error> {
    if let Some(Edit { field, .. }) =
        edits.iter().find(|edit| edit.field == "id" || !Account::FIELDS.contains(&edit.field))
    {
        return Err(Error::Internal(format!("`{field}` is not an account field to set")));
    }
    if edits.is_empty() {
        return Ok(());
    }
    match &connection.0 {
        Engine::Sqlite(connection) => sqlite::update_account(connection, id, edits),
        Engine::Mysql(connection) => mysql::update_account(connection, id, edits),
    }
}

/// A database several instances share (MySQL): a handle any thread may keep, from which each use
/// takes a connection of its own (`connection`).
pub(crate) struct SharedDatabase(::mysql::Pool);

impl SharedDatabase {
    /// The database `connection` is on, if several instances may share it; `None` for SQLite.
    pub(crate) fn of(connection: &Connection) -> Option<SharedDatabase> {
        match &connection.0 {
            Engine::Sqlite(_) => None,
            Engine::Mysql(connection) => Some(SharedDatabase(connection.pool())),
        }
    }

    /// A connection outside any transaction.
    pub(crate) fn connection(&self) -> Connection {
        Connection(Engine::Mysql(self.mysql()))
    }

    /// A connection outside any transaction whose transactions all run on one connection of the
    /// pool, kept between them: one thread's own (`mysql::Connection::pinned`).
    pub(crate) fn pinned_connection(&self) -> Connection {
        Connection(Engine::Mysql(mysql::Connection::pinned(self.0.clone())))
    }

    /// Closes the pooled connections `connection` holds, after a panic left its transaction in a
    /// state nobody knows (`mysql::Connection::abandon`).
    pub(crate) fn abandon(connection: &Connection) {
        if let Connection(Engine::Mysql(mysql)) = connection {
            mysql.abandon();
        }
    }

    fn mysql(&self) -> mysql::Connection {
        mysql::Connection::new(self.0.clone())
    }

    /// Creates the accounts of the new identities of `batch` in one transaction of their own on
    /// `connection` (this database's `pinned_connection`; `mysql::create_accounts`), each
    /// account as written passed through `admit` (the API's last checks) before the commit;
    /// `statements_done` is called once the statements have run (or failed), before that commit.
    /// The admitted account for each, by position, once committed; `None` for each write the
    /// batch left, and for all of them when any statement, check or the commit failed (the
    /// transaction is then rolled back): those are for `Writer::write_account` to run one
    /// transaction each, which also says what went wrong.
    pub(crate) fn create_accounts(
        connection: &Connection,
        batch: &[IdentityWrite],
        admit: impl Fn(usize, Account) -> Result<Account, Error>,
        statements_done: impl FnOnce(),
    ) -> Vec<Option<Account>> {
        let Connection(Engine::Mysql(mysql)) = connection else {
            panic!("a batch of new accounts on a database that is not shared")
        };
        let mut statements_done = Some(statements_done);
        let mut attempt = || {
            let written = connection.step(writer::Step::Begin).and_then(|()| {
                let written = mysql::create_accounts(mysql, batch);
                if let Some(done) = statements_done.take() {
                    done();
                }
                let admitted = written?
                    .into_iter()
                    .enumerate()
                    .map(|(index, account)| {
                        account.map(|account| admit(index, account)).transpose()
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                connection.step(writer::Step::Commit)?;
                Ok(admitted)
            });
            if written.is_err() {
                let _ = connection.step(writer::Step::Rollback);
            }
            written
        };
        // A unique key taken meanwhile is an account another transaction was making (the other
        // batch thread's, another instance's): once more, the lookup finds it committed and leaves
        // its write out of the batch.
        let written = match attempt() {
            Err(Error::Database(error)) if mysql::is_duplicate(&error) => attempt(),
            written => written,
        };
        if let Some(done) = statements_done.take() {
            done();
        }
        written.unwrap_or_else(|error| {
            // An unavailable server, a lock waited for too long or a refused login is what each
            // write then hears alone; the rest is worth the operator's eye.
            if matches!(&error, Error::Internal(_) | Error::Database(_)) {
                crate::log::warn(&format!(
                    "a batch of {} new accounts failed, each is written alone: {error}",
                    batch.len()
                ));
            }
            vec![None; batch.len()]
        })
    }

    /// Claims `wx.login` code `key` (a hash, never the code) for an exchange whose answer lives
    /// until `expires`, or finds the answer another instance recorded.
    pub(crate) fn claim_code(
        &self,
        key: &[u8],
        now: i64,
        expires: i64,
    ) -> Result<CodeClaim, Error> {
        mysql::claim_code(&self.mysql(), key, now, expires)
    }

    /// Records the answer of a code this request claimed (`claim_code`).
    pub(crate) fn answer_code(&self, key: &[u8], answer: &CodeAnswer) -> Result<(), Error> {
        mysql::answer_code(&self.mysql(), key, answer)
    }

    /// Gives up a claim whose exchange failed, so that the code's next request tries again.
    pub(crate) fn release_code(&self, key: &[u8]) -> Result<(), Error> {
        mysql::release_code(&self.mysql(), key)
    }
}

/// A `wx.login` code's answer as remembered and given again (`codes`), in memory or, with a
/// shared database, in its `code_answers`. The session_key is kept only for a server that gives
/// it to clients (`expose_session_key`): nothing else needs it again, and a secret not kept
/// cannot leak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CodeAnswer {
    pub(crate) openid: String,
    pub(crate) unionid: Option<String>,
    pub(crate) session_key: Option<String>,
    /// The token version of the openid's account when the code was exchanged (0 when it had
    /// none): a logout since then raised the account's, and ended the sign-in this code began.
    pub(crate) token_version: i64,
}

/// What `SharedDatabase::claim_code` found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CodeClaim {
    /// The code is this request's to exchange with WeChat.
    Claimed,
    /// Another request, on any instance, exchanged it first: its answer.
    Answered(CodeAnswer),
    /// Another request is exchanging it now.
    Pending,
}

/// Runs `write` in one transaction on an operator's connection (`open_existing`): everything it
/// does is committed together, or nothing when it fails. On SQLite the write lock is taken at the
/// start (waiting up to the busy timeout for the server's writer between its group commits), so
/// what `write` reads stays true until the commit. On MySQL reads take no lock (READ COMMITTED):
/// a server instance may write between a read and the write that follows it, and then the unique
/// keys refuse the write and the whole transaction fails (an import, say, rather than one of its
/// rows).
pub(crate) fn in_transaction<T, E: From<Error>>(
    connection: &Connection,
    write: impl FnOnce(&Connection) -> Result<T, E>,
) -> Result<T, E> {
    connection.step(writer::Step::Begin)?;
    let result = write(connection).and_then(|value| {
        connection.step(writer::Step::Commit)?;
        Ok(value)
    });
    if result.is_err() {
        // A failed write or commit leaves the transaction open: undo all of it.
        let _ = connection.step(writer::Step::Rollback);
    }
    result
}

/// Replaces the database at `path` with a checked copy of the backup at `backup`, keeping the
/// database that was there at `aside`; refuses while a server (or any other connection) has it
/// open, and a backup that is not a whole wxauth database of a schema this binary knows.
pub(crate) fn restore(backup: &str, path: &str, aside: &str) -> Result<RestoreReport, Error> {
    if mysql::is_url(path) {
        return Err(Error::Internal(
            "restore replaces a SQLite file; restore a MySQL database with the server's tools"
                .into(),
        ));
    }
    sqlite::restore(backup, path, aside)
}

impl Connection {
    /// Runs one step of the writer's transaction plumbing.
    fn step(&self, step: writer::Step) -> Result<(), Error> {
        match &self.0 {
            Engine::Sqlite(connection) => sqlite::step(connection, step),
            Engine::Mysql(connection) => mysql::step(connection, step),
        }
    }

    /// The SQLite connection, for tests that look at what SQLite itself reports.
    #[cfg(test)]
    fn sqlite(&self) -> &rusqlite::Connection {
        match &self.0 {
            Engine::Sqlite(connection) => connection,
            Engine::Mysql(_) => panic!("not a SQLite connection"),
        }
    }
}

/// An engine's error, kept whole as the source of `Error::Database`. Its text, which only the log
/// sees, is the engine's: SQLite's names tables, columns and constraints, never a value bound.
#[derive(Debug)]
pub(crate) struct DatabaseError(EngineError);

#[derive(Debug)]
enum EngineError {
    Sqlite(rusqlite::Error),
    Mysql(::mysql::Error),
}

impl fmt::Display for DatabaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            EngineError::Sqlite(error) => error.fmt(f),
            EngineError::Mysql(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for DatabaseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            EngineError::Sqlite(error) => Some(error),
            EngineError::Mysql(error) => Some(error),
        }
    }
}

/// A database path in a directory of its own, removed with everything in it when dropped, so the
/// unit tests leave nothing behind. Reads as the path (`&str`, `Path`, `Display`).
#[cfg(test)]
struct TempDatabase {
    dir: std::path::PathBuf,
    path: String,
}

#[cfg(test)]
fn temp_database(name: &str) -> TempDatabase {
    let dir = std::env::temp_dir().join(format!("wxauth-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("test.db").to_string_lossy().into_owned();
    TempDatabase { dir, path }
}

#[cfg(test)]
impl std::ops::Deref for TempDatabase {
    type Target = String;

    fn deref(&self) -> &String {
        &self.path
    }
}

#[cfg(test)]
impl AsRef<std::path::Path> for TempDatabase {
    fn as_ref(&self) -> &std::path::Path {
        self.path.as_ref()
    }
}

#[cfg(test)]
impl fmt::Display for TempDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

#[cfg(test)]
impl Drop for TempDatabase {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field name reaches the SQL only when it is an account field other than `id`; a refused
    /// edit changes nothing, an accepted one is written.
    #[test]
    fn only_account_fields_other_than_the_id_are_set() {
        let path = temp_database("update-fields");
        let (connection, _) = open_writer(&path, Opener::Server).unwrap();
        let id = login_account(&connection, "wxa", "openid-u", "::1", 100).unwrap();
        let edit = |field, value| Edit { field, value: EditValue::Integer(value) };
        for field in ["id", "token_version", "flag = 9, is_staff"] {
            let refused = update_account(&connection, id, &[edit("flag", 5), edit(field, 7)]);
            assert!(refused.unwrap_err().to_string().contains("not an account field"), "{field}");
        }
        assert_eq!(account_by_id(&connection, id).unwrap().unwrap().flag, 1);
        update_account(&connection, id, &[edit("flag", 5), edit("member_score", 7)]).unwrap();
        let account = account_by_id(&connection, id).unwrap().unwrap();
        assert_eq!((account.flag, account.member_score), (5, 7));
        update_account(&connection, id, &[]).unwrap();
    }
}
