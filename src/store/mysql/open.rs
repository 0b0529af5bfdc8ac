//! Opening the MySQL engine: the `mysql://` URL read into the client's options (the password from
//! the configuration, never from the URL), one pool per database per process, shared by every
//! connection wxauth opens on it, and `schema.sql`'s MySQL twin applied by version under a lock.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{OptsBuilder, Pool, PoolConstraints, PoolOpts, SslOpts};

use super::Connection;
use crate::error::Error;

const SCHEMA: &str = include_str!("schema.sql");

/// How long a query waits for a free connection, and a connection for the server to answer:
/// past these a request fails with `database_unavailable` rather than hang its worker.
const WAIT_FOR_CONNECTION: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an instance waits for another that is applying schema versions.
const SCHEMA_LOCK_SECONDS: u32 = 60;

/// How long the connection that applies schema versions waits for the server to answer: a
/// version that builds an index or copies every account takes minutes on millions of them, and
/// waiting for another instance's takes up to `SCHEMA_LOCK_SECONDS`, both past `READ_TIMEOUT`.
const MIGRATION_READ_TIMEOUT: Duration = Duration::from_secs(3600);

/// Statements every connection runs first: READ COMMITTED, so that a statement sees what other
/// instances committed before it (an account a racing instance created is found at once), and
/// the strict mode both servers default to, stated so a server's setting cannot relax it. The
/// mode names NO_ZERO_IN_DATE, NO_ZERO_DATE and ERROR_FOR_DIVISION_BY_ZERO together: MySQL, which
/// is merging the three into strict mode, warns at every `SET` that leaves one out.
const SESSION_SETUP: [&str; 2] = [
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,\
     ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'",
];

/// What a pooled connection's session also sets: a statement waits at most 10 s for a row lock
/// another session holds (an operator's open transaction, another instance's, an import), then
/// fails with ER_LOCK_WAIT_TIMEOUT and its request with `database_unavailable`. That answer comes
/// on a connection still in step with the server, before `READ_TIMEOUT` would cut the statement
/// off and before a proxy's own timeout answers for wxauth (nginx's `proxy_read_timeout` of 15 s
/// in `contrib/nginx.conf`), where InnoDB's default is 50 s. The connection that applies schema
/// versions keeps the server's default.
const LOCK_WAIT: &str = "SET SESSION innodb_lock_wait_timeout = 10";

/// The password for the databases this process opens (`database_password`), set once by main
/// from the configuration before any is opened.
static PASSWORD: OnceLock<String> = OnceLock::new();

/// One pool per URL: the writer, every worker and the operator's commands share it.
static POOLS: OnceLock<Mutex<HashMap<String, Pool>>> = OnceLock::new();

pub(in crate::store) fn set_password(password: &str) {
    let _ = PASSWORD.set(password.to_string());
}

/// Whether `database` names a MySQL database rather than a SQLite file.
pub(in crate::store) fn is_url(database: &str) -> bool {
    database.starts_with("mysql://")
}

/// The client's options for `url`: `mysql://USER@HOST[:PORT]/DATABASE`, optionally
/// `?ssl-mode=DISABLED|REQUIRED|VERIFY_CA|VERIFY_IDENTITY` (MySQL's own names; VERIFY_CA and
/// VERIFY_IDENTITY check the server's certificate against the system's roots, REQUIRED only
/// encrypts) and `&ssl-ca=PATH` (a CA to verify with instead). Errors never repeat the URL's
/// password, and a URL that carries one is refused: it would be logged with the configuration.
pub(in crate::store) fn options(url: &str) -> Result<OptsBuilder, Error> {
    let refuse = |why: &str| Error::Internal(format!("database: {why}"));
    let rest = url.strip_prefix("mysql://").ok_or_else(|| refuse("not a mysql:// URL"))?;
    let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, name) = base
        .split_once('/')
        .ok_or_else(|| refuse("the URL names no database (mysql://USER@HOST:PORT/DATABASE)"))?;
    if name.is_empty() || name.contains('/') {
        return Err(refuse("the URL names no database (mysql://USER@HOST:PORT/DATABASE)"));
    }
    let (user, host) = authority
        .rsplit_once('@')
        .ok_or_else(|| refuse("the URL names no user (mysql://USER@HOST:PORT/DATABASE)"))?;
    if user.contains(':') {
        return Err(refuse(
            "put the password in WXAUTH_DATABASE_PASSWORD (database_password), not in the URL",
        ));
    }
    let (host, port) = match host.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            (host, port.parse::<u16>().map_err(|_| refuse("the port is not a number"))?)
        }
        _ => (host, 3306),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut ssl: Option<SslOpts> = None;
    let mut ca: Option<String> = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (key, value.to_ascii_uppercase().as_str()) {
            ("ssl-mode", "DISABLED") => ssl = None,
            ("ssl-mode", "REQUIRED") => {
                ssl = Some(
                    SslOpts::default()
                        .with_danger_accept_invalid_certs(true)
                        .with_danger_skip_domain_validation(true),
                )
            }
            ("ssl-mode", "VERIFY_CA") => {
                ssl = Some(SslOpts::default().with_danger_skip_domain_validation(true))
            }
            ("ssl-mode", "VERIFY_IDENTITY") => ssl = Some(SslOpts::default()),
            ("ssl-ca", _) => ca = Some(value.to_string()),
            _ => {
                return Err(refuse(&format!(
                    "unknown URL parameter `{key}` (ssl-mode=DISABLED|REQUIRED|VERIFY_CA|VERIFY_IDENTITY, ssl-ca=PATH)"
                )));
            }
        }
    }
    if let Some(path) = ca {
        ssl = ssl.map(|opts| opts.with_root_cert_path(Some(std::path::PathBuf::from(path))));
    }
    let password = PASSWORD.get().filter(|password| !password.is_empty());
    Ok(OptsBuilder::new()
        .ip_or_hostname(Some(host))
        .tcp_port(port)
        .user(Some(user))
        .pass(password.cloned())
        .db_name(Some(name))
        .prefer_socket(false)
        .tcp_nodelay(true)
        .tcp_connect_timeout(Some(CONNECT_TIMEOUT))
        .read_timeout(Some(READ_TIMEOUT))
        .write_timeout(Some(READ_TIMEOUT))
        .ssl_opts(ssl)
        .init(SESSION_SETUP.to_vec())
        .stmt_cache_size(64)
        // UPDATE counts the rows it matched, not only those it changed: `register` inserts when
        // its update matched none.
        .additional_capabilities(mysql::consts::CapabilityFlags::CLIENT_FOUND_ROWS)
        .pool_opts(
            PoolOpts::default()
                // Connections are made as needed, so a server that is down at one moment costs
                // only the requests of that moment.
                .with_constraints(PoolConstraints::new(0, 512).expect("0 <= 512"))
                // No ping before every query (a round trip each): a connection the server closed
                // fails its query, is dropped, and reads are tried again on a new one.
                .with_check_health(false)
                // Statements stay prepared on each connection between uses.
                .with_reset_connection(false),
        ))
}

/// The pool of the database at `url`, made at its first use in this process.
pub(in crate::store) fn pool(url: &str) -> Result<Pool, Error> {
    let pools = POOLS.get_or_init(Default::default);
    let mut pools = pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(pool) = pools.get(url) {
        return Ok(pool.clone());
    }
    let setup: Vec<&str> = SESSION_SETUP.iter().copied().chain([LOCK_WAIT]).collect();
    let pool = Pool::new(options(url)?.init(setup))?;
    pools.insert(url.to_string(), pool.clone());
    Ok(pool)
}

/// How long a query waits for a connection from the pool.
pub(in crate::store) fn wait_for_connection() -> Duration {
    WAIT_FOR_CONNECTION
}

/// Opens the database at `url` and applies the schema versions it lacks, under the server-wide
/// lock `wxauth_schema` (one instance applies them; the others wait and then find them applied).
pub(in crate::store) fn open_writer(url: &str) -> Result<(Connection, Vec<u32>), Error> {
    let connection = Connection::new(pool(url)?);
    let applied = migrate_on_a_connection_of_its_own(url)?;
    Ok((connection, applied))
}

/// `migrate` on a connection outside the pool that waits `MIGRATION_READ_TIMEOUT` for each reply,
/// closed when done (and with it the schema lock, should releasing it have failed).
fn migrate_on_a_connection_of_its_own(url: &str) -> Result<Vec<u32>, Error> {
    let options = options(url)?
        .read_timeout(Some(MIGRATION_READ_TIMEOUT))
        .write_timeout(Some(MIGRATION_READ_TIMEOUT));
    let mut conn = mysql::Conn::new(options)?;
    let result = migrate(&mut conn);
    super::sever_if_lost(&conn, result)
}

pub(in crate::store) fn open_reader(url: &str) -> Result<Connection, Error> {
    Ok(Connection::new(pool(url)?))
}

/// The schema's sections, as (version, SQL statements), in order. MySQL runs one statement at a
/// time, so each section is split at `;`, comment lines (which may hold one) left out first.
pub(in crate::store) fn schema_versions() -> Vec<(u32, Vec<String>)> {
    crate::store::schema_sections(SCHEMA, "mysql/schema.sql")
        .into_iter()
        .map(|(version, sql)| {
            let sql: String = sql
                .lines()
                .filter(|line| !line.trim_start().starts_with("--"))
                .map(|line| format!("{line}\n"))
                .collect();
            let statements = sql
                .split(';')
                .map(str::trim)
                .filter(|statement| !statement.is_empty())
                .map(String::from)
                .collect();
            (version, statements)
        })
        .collect()
}

/// The version recorded in `meta`, 0 for a database without wxauth's tables.
pub(in crate::store) fn recorded_version(conn: &mut impl Queryable) -> mysql::Result<u32> {
    let tables: Option<i64> = super::query_first(
        conn,
        "SELECT count(*) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name = 'meta'",
    )?;
    if tables.unwrap_or(0) == 0 {
        return Ok(0);
    }
    let version: Option<String> =
        super::query_first(conn, "SELECT value FROM meta WHERE `key` = 'schema_version'")?;
    Ok(version.and_then(|version| version.parse().ok()).unwrap_or(0))
}

fn migrate(conn: &mut mysql::Conn) -> Result<Vec<u32>, Error> {
    let current = super::super::current_version();
    let locked: Option<Option<i64>> =
        super::exec_first(conn, "SELECT GET_LOCK('wxauth_schema', ?)", (SCHEMA_LOCK_SECONDS,))?;
    if locked.flatten() != Some(1) {
        return Err(Error::Internal(format!(
            "database: another instance held the schema lock for {SCHEMA_LOCK_SECONDS} s"
        )));
    }
    let result = (|| {
        let found = recorded_version(conn)?;
        if found > current {
            return Err(Error::Internal(format!(
                "database has schema version {found}, newer than this wxauth's ({current}): use a newer wxauth"
            )));
        }
        let mut applied = Vec::new();
        for (version, statements) in schema_versions() {
            if version <= found {
                continue;
            }
            for statement in &statements {
                match conn.query_drop(statement) {
                    // ER_DUP_KEYNAME: an index a broken-off application of this section made
                    // (MySQL has no `CREATE INDEX IF NOT EXISTS`).
                    Err(mysql::Error::MySqlError(error)) if error.code == 1061 => {}
                    result => result?,
                }
            }
            conn.exec_drop(
                "INSERT INTO meta (`key`, value) VALUES ('schema_version', ?) \
                 ON DUPLICATE KEY UPDATE value = ?",
                (version.to_string(), version.to_string()),
            )?;
            applied.push(version);
        }
        Ok(applied)
    })();
    let _ = conn.query_drop("DO RELEASE_LOCK('wxauth_schema')");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(url: &str) -> String {
        match options(url) {
            Ok(_) => panic!("{url} accepted"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn urls_name_a_user_a_host_and_a_database_and_never_a_password() {
        let opts = mysql::Opts::from(options("mysql://wxauth@db.internal:3307/accounts").unwrap());
        assert_eq!(opts.get_user(), Some("wxauth"));
        assert_eq!(opts.get_ip_or_hostname(), "db.internal");
        assert_eq!(opts.get_tcp_port(), 3307);
        assert_eq!(opts.get_db_name(), Some("accounts"));
        assert!(opts.get_ssl_opts().is_none(), "no TLS unless asked");
        let opts = mysql::Opts::from(options("mysql://wxauth@127.0.0.1/accounts").unwrap());
        assert_eq!(opts.get_tcp_port(), 3306);

        let refused = refusal("mysql://wxauth:hunter22@db/accounts");
        assert!(refused.contains("WXAUTH_DATABASE_PASSWORD"), "{refused}");
        assert!(!refused.contains("hunter22"), "the password is not repeated: {refused}");
        assert!(refusal("mysql://db:3306/accounts").contains("no user"));
        assert!(refusal("mysql://wxauth@db:3306").contains("no database"));
        assert!(refusal("mysql://wxauth@db:port/accounts").contains("port"));
        assert!(refusal("mysql://wxauth@db/accounts?sslmode=on").contains("`sslmode`"));
    }

    #[test]
    fn tls_is_used_when_the_url_asks_for_it() {
        let tls = |url: &str| mysql::Opts::from(options(url).unwrap()).get_ssl_opts().cloned();
        let required = tls("mysql://u@db/a?ssl-mode=REQUIRED").expect("TLS");
        assert!(required.accept_invalid_certs() && required.skip_domain_validation());
        let verify_ca = tls("mysql://u@db/a?ssl-mode=verify_ca").expect("TLS");
        assert!(!verify_ca.accept_invalid_certs() && verify_ca.skip_domain_validation());
        let identity = tls("mysql://u@db/a?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/ca.pem").unwrap();
        assert!(!identity.accept_invalid_certs() && !identity.skip_domain_validation());
        assert_eq!(identity.root_cert_path(), Some(std::path::Path::new("/etc/ca.pem")));
        assert!(tls("mysql://u@db/a?ssl-mode=DISABLED").is_none());
    }

    /// A MySQL database reaches the version the SQLite schema is at: each new schema.sql version
    /// gets its mysql/schema.sql section in the same change, with statements unless it is one
    /// that says MySQL needs none (version 7).
    #[test]
    fn the_mysql_schema_reaches_the_current_version() {
        let versions: Vec<u32> = schema_versions().iter().map(|(version, _)| *version).collect();
        assert_eq!(versions.last(), Some(&crate::store::current_version()));
        assert!(versions.windows(2).all(|pair| pair[0] < pair[1]), "{versions:?}");
        let empty: Vec<u32> = schema_versions()
            .into_iter()
            .filter(|(_, statements)| statements.is_empty())
            .map(|(version, _)| version)
            .collect();
        assert_eq!(empty, [7]);
    }
}
