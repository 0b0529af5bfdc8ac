//! The schema, `schema.sql`, applied by version (`PRAGMA user_version`): each section once, all
//! missing ones in one transaction.

use rusqlite::Connection;

use crate::error::Error;

const SCHEMA: &str = include_str!("../../../schema.sql");

/// The schema's sections, as (version, SQL), in order.
pub(super) fn schema_versions() -> Vec<(u32, String)> {
    crate::store::schema_sections(SCHEMA, "schema.sql")
}

/// The schema version this binary brings (read once: `/readyz` asks at every probe).
pub(crate) fn current_version() -> u32 {
    static CURRENT: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *CURRENT.get_or_init(|| schema_versions().last().map(|(version, _)| *version).unwrap_or(0))
}

/// Applies every schema section above the database's `user_version`, all in one transaction: the
/// database moves to the current version or, on any failure, stays as it was. (One commit, so one
/// fsync, also keeps a first start quick: bench/run times it.) A database from a newer wxauth
/// (`user_version` above this binary's) is refused, naming `path`: this binary cannot know what
/// that version changed.
pub(super) fn migrate(connection: &Connection, path: &str) -> Result<Vec<u32>, Error> {
    let found: u32 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > current_version() {
        return Err(Error::Internal(format!(
            "database {path} has schema version {found}, newer than this wxauth's ({}): use a newer wxauth",
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

#[cfg(test)]
mod tests {
    use rusqlite::params;

    use super::*;
    use crate::store::sqlite::{identities_of, login_account, open_writer, wechat_session};
    use crate::store::{Opener, temp_database};

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
    fn database_at_version(name: &str, version: u32) -> (crate::store::TempDatabase, Connection) {
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

    /// An account as a wxauth before version 6 made one: a row of `accounts` alone.
    fn old_account(connection: &Connection, openid: &str) {
        connection
            .execute(
                "INSERT INTO accounts
                     (username, wx_appid, wx_openid, join_ip, date_joined, last_ip, last_login)
                 VALUES (?1, 'wxa', ?1, '203.0.113.5', 100, '203.0.113.5', 100)",
                params![openid],
            )
            .unwrap();
    }

    #[test]
    fn version_6_gives_every_account_its_identity() {
        let (path, connection) = database_at_version("v6", 5);
        for openid in ["openid-1", "openid-2", "openid-3"] {
            old_account(&connection, openid);
        }
        connection.execute("DELETE FROM accounts WHERE wx_openid = 'openid-2'", []).unwrap();
        drop(connection);

        let (connection, applied) = open_writer(&path, Opener::Server).unwrap();
        assert_eq!(applied, (6..=current_version()).collect::<Vec<_>>());
        let identities = |id| identities_of(&connection, id).unwrap();
        assert_eq!(identities(1), [("wxa".to_string(), "openid-1".to_string())]);
        assert_eq!(identities(3), [("wxa".to_string(), "openid-3".to_string())]);
        let count: i64 =
            connection.query_row("SELECT count(*) FROM identities", [], |row| row.get(0)).unwrap();
        assert_eq!(count, 2, "one identity per account, none for the deleted one");
        assert_eq!(login_account(&connection, "wxa", "openid-3", "::1", 200).unwrap(), 3);
        assert_eq!(login_account(&connection, "wxa", "openid-4", "::1", 200).unwrap(), 4);
    }

    #[test]
    fn version_7_gives_an_account_loaded_without_its_identity_that_identity() {
        let (path, connection) = database_at_version("v7", 6);
        // As wxauth wrote an account at version 6: the account, then its identity.
        old_account(&connection, "openid-1");
        connection.execute("INSERT INTO identities VALUES ('wxa', 'openid-1', 1)", []).unwrap();
        // Put in by an operator's SQL at version 6: the account alone, no identity row.
        old_account(&connection, "openid-2");
        drop(connection);

        let (connection, applied) = open_writer(&path, Opener::Server).unwrap();
        assert_eq!(applied, (7..=current_version()).collect::<Vec<_>>());
        assert_eq!(identities_of(&connection, 2).unwrap(), [("wxa".into(), "openid-2".into())]);
        assert_eq!(login_account(&connection, "wxa", "openid-2", "::1", 200).unwrap(), 2);
        assert_eq!(login_account(&connection, "wxa", "openid-1", "::1", 200).unwrap(), 1);
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
            old_account(&connection, openid);
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
        // Later versions add columns after these, with their defaults.
        let kept: Vec<Vec<String>> = all_accounts(&connection)
            .into_iter()
            .map(|mut row| {
                row.truncate(before[0].len());
                row
            })
            .collect();
        assert_eq!(kept, before, "every row and column kept");
        let id = login_account(&connection, "wxa", "openid-4", "::1", 200).unwrap();
        assert_eq!(id, 4, "AUTOINCREMENT's mark survives the rebuild");
        assert_eq!(
            login_account(&connection, "wxa", "openid-2", "::1", 200).unwrap(),
            2,
            "the identity keeps its one account"
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
            old_account(&connection, openid);
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
    fn a_failed_upgrade_leaves_the_database_as_it_was() {
        let (path, connection) = database_at_version("failed-upgrade", 1);
        old_account(&connection, "openid-1");
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
}
