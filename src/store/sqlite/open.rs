//! Opening SQLite connections: the writer's (creating the database, owner-only), the workers'
//! read-only ones, the operator's, and `restore`'s, which must be the only one (`open_alone`). A
//! connection that writes opens only a file that is safely wxauth's (`open_read_write`): a
//! regular file of its user, writable by nobody else, reached through no link, with the same true
//! of SQLite's files beside it. A database that cannot be opened is an error naming its path and
//! the cause in words (`explained`). A read connection works where its user may not write
//! (`open_read_only`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::migrate::migrate;
use crate::error::Error;
use crate::store::{DatabaseError, EngineError, Opener};

/// How long a connection waits for a lock before `database is locked`.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the writer connection for `opener`: creates the file (owner-only) if needed, checks it
/// (`open_read_write`), sets durable pragmas and applies pending schema versions. Returns the
/// connection and the versions it applied.
pub(crate) fn open_writer(path: &str, opener: Opener) -> Result<(Connection, Vec<u32>), Error> {
    create_private_file(path).map_err(|error| {
        Error::Internal(format!("cannot create database {path}: {}", in_directory(path, &error)))
    })?;
    set_up_writer(path, opener).map_err(|error| explained(path, error, true))
}

/// `open_writer` once the file exists.
fn set_up_writer(path: &str, opener: Opener) -> Result<(Connection, Vec<u32>), Error> {
    let connection = open_read_write(path, opener)?;
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
    let applied = migrate(&connection, path)?;
    if applied.first().is_some_and(|&first| first > 1) {
        // An upgrade may rewrite a whole table (version 3 does) into the WAL: fold it into the
        // database now, so readers do not start behind a WAL of that size and the file shrinks
        // back. A new database's WAL is a few pages, and its first start stays quick.
        connection.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    }
    Ok((connection, applied))
}

/// Opens a read connection for one worker, or for an operator's command that only reads. It
/// cannot write, by construction.
pub(crate) fn open_reader(path: &str) -> Result<Connection, Error> {
    let connection = open_read_only(path).map_err(|error| explained(path, error, false))?;
    // A small page cache per reader: there is one per worker, the OS caches the file anyway, and
    // in WAL mode any commit empties it at the reader's next transaction. 64 KiB holds the pages
    // of any one query wxauth makes, and every KiB more is one more per worker.
    connection.execute_batch("PRAGMA cache_size = -64;")?;
    Ok(connection)
}

/// Opens `path` read-only and reads its header, which is when SQLite opens the WAL and its index
/// (-shm) beside the database, creating them if they are missing. Where they are missing and
/// cannot be created (a read-only file system or a directory the user may not write: a copy on a
/// read-only mount, the service's directory read by an operator), the database is opened
/// `immutable`, and SQLite reads the file alone, as it is: nothing can be writing it, since a
/// connection writing in WAL mode always has its -wal.
fn open_read_only(path: &str) -> Result<Connection, Error> {
    let connection = open_existing_with(path, None)?;
    let Err(error) = read_header(&connection) else {
        return Ok(connection);
    };
    let none_beside = ["-wal", "-shm"].iter().all(|suffix| {
        std::fs::symlink_metadata(format!("{path}{suffix}"))
            .is_err_and(|error| error.kind() == std::io::ErrorKind::NotFound)
    });
    let cannot_open =
        matches!(error.sqlite_error_code(), Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly));
    if !cannot_open || !none_beside {
        return Err(error.into());
    }
    drop(connection);
    let connection = open_existing_with(&immutable_uri(path), None)?;
    read_header(&connection)?;
    Ok(connection)
}

/// A first read: the schema cookie in the database's header.
fn read_header(connection: &Connection) -> rusqlite::Result<()> {
    connection.query_row("PRAGMA schema_version", [], |_| Ok(()))
}

/// The URI that opens `path` read-only as a file nobody changes: `file:` with the characters a
/// URI gives a meaning to escaped (SQLite decodes `%HH`).
fn immutable_uri(path: &str) -> String {
    let mut uri = String::from(if path.starts_with('/') { "file://" } else { "file:" });
    for character in path.chars() {
        match character {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            other => uri.push(other),
        }
    }
    uri.push_str("?immutable=1");
    uri
}

/// `error`, met opening `path` or first reading it (for writing when `writes`), as one line an
/// operator can act on: the path and the cause in words. SQLite says only "unable to open database
/// file" when it cannot create the WAL or its index beside the database, and "attempt to write a
/// readonly database" when the file cannot be written, so the cause is found by looking.
/// Errors that already say what to do (`check_database_file`, a newer schema) pass unchanged.
fn explained(path: &str, error: Error, writes: bool) -> Error {
    let Error::Database(DatabaseError(EngineError::Sqlite(sqlite))) = &error else {
        return error;
    };
    let cause = match sqlite.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => {
            "it is not an SQLite database, or it is damaged (SQLite: file is not a database)"
                .to_string()
        }
        Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => {
            why_not_usable(path, writes).unwrap_or_else(|| sqlite.to_string())
        }
        _ => sqlite.to_string(),
    };
    Error::Internal(format!("cannot open database {path}: {cause}"))
}

/// What keeps SQLite from opening `path` (and writing it when `writes`), if the file system says:
/// the file cannot be opened so, a file SQLite keeps beside it (`-wal`, `-shm`) cannot be
/// written, or one that is missing cannot be created because the directory may not be written.
/// It only looks: nothing is created, so a server starting meanwhile finds the files as they were.
fn why_not_usable(path: &str, writes: bool) -> Option<String> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(writes);
    if let Err(error) = options.open(path) {
        let doing = if writes { "write" } else { "read" };
        return Some(match error.kind() {
            std::io::ErrorKind::ReadOnlyFilesystem => "it is on a read-only file system".into(),
            std::io::ErrorKind::PermissionDenied => {
                format!("this user may not {doing} it (permission denied)")
            }
            _ => format!("it cannot be opened to {doing} ({error})"),
        });
    }
    for suffix in ["-wal", "-shm"] {
        let file = format!("{path}{suffix}");
        let found = std::fs::OpenOptions::new().read(true).write(true).open(&file);
        match found {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if let Err(error) = may_write_directory_of(path) {
                    return Some(format!(
                        "{}, and SQLite keeps {file} there",
                        in_directory(path, &error)
                    ));
                }
            }
            Err(error) => return Some(format!("{file} cannot be written ({})", plainly(&error))),
        }
    }
    None
}

/// Whether this process may create files in the directory of `path`, as the kernel decides
/// (`access(2)` with W_OK): refused on a read-only file system (EROFS) or without the permission
/// (EACCES), which binds every user but root.
#[cfg(unix)]
fn may_write_directory_of(path: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    unsafe extern "C" {
        fn access(path: *const std::ffi::c_char, mode: std::ffi::c_int) -> std::ffi::c_int;
    }
    const W_OK: std::ffi::c_int = 2;
    let directory = std::ffi::CString::new(directory_of(path).as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: access reads one NUL-terminated path, which outlives the call.
    if unsafe { access(directory.as_ptr(), W_OK) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn may_write_directory_of(_: &str) -> std::io::Result<()> {
    Ok(())
}

/// A failure to create a file beside `path`, in words: which directory cannot be written, and why.
fn in_directory(path: &str, error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
            let directory = directory_of(path).display();
            format!("its directory {directory} is not writable ({})", plainly(error))
        }
        _ => error.to_string(),
    }
}

/// The directory `path` is in (`.` for a bare file name).
fn directory_of(path: &str) -> &Path {
    match Path::new(path).parent() {
        Some(directory) if !directory.as_os_str().is_empty() => directory,
        _ => Path::new("."),
    }
}

/// The cause of an I/O error in words, without the error number.
fn plainly(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::ReadOnlyFilesystem => "read-only file system".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => error.to_string(),
    }
}

/// Opens a database file that must exist, read-only (`None`) or read-write for `Some(opener)`
/// (`open_read_write`), with the busy timeout and foreign keys on.
fn open_existing_with(path: &str, writer: Option<Opener>) -> Result<Connection, Error> {
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

/// The files SQLite keeps beside a database: the WAL, its shared-memory index, and the rollback
/// journal (used while a new database switches to WAL). An existing WAL or journal is read into
/// the database when it opens, and the WAL holds everything written.
pub(super) const BESIDE: [&str; 3] = ["-wal", "-shm", "-journal"];

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
    let connection = Connection::open_with_flags(linkless_path(path)?, private_flags())?;
    // SQLite opens a file it cannot write read-only, without a word: only the first write
    // would fail.
    if connection.is_readonly(rusqlite::MAIN_DB)? {
        let cause = why_not_usable(path, true);
        return Err(Error::Internal(format!(
            "cannot open database {path}: {}",
            cause.as_deref().unwrap_or("SQLite opened it read-only")
        )));
    }
    Ok(connection)
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
pub(super) fn effective_uid() -> u32 {
    unsafe extern "C" {
        // Always succeeds and touches no memory (POSIX).
        safe fn geteuid() -> u32;
    }
    geteuid()
}

/// How wxauth opens a file of its own read-write: it exists (wxauth created it, or it passed
/// `check_database_file`), so SQLite must not create one, and SQLite refuses a symbolic link.
pub(super) fn private_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW
}

/// `path` with the links in its directory resolved and its last component as it is, to open with
/// `SQLITE_OPEN_NOFOLLOW`: SQLite then refuses a link anywhere in the path it is given, and a
/// deployment may keep the database in a linked directory (systemd's `DynamicUser` links
/// /var/lib/wxauth to /var/lib/private/wxauth).
pub(super) fn linkless_path(path: &str) -> Result<PathBuf, Error> {
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
pub(super) fn create_private_file(path: &str) -> std::io::Result<bool> {
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

/// Opens an existing database for writes from outside the server (the `wxauth users` commands):
/// never creates the file, checks it as an operator's (`Opener::Operator`), and waits up to
/// `BUSY_TIMEOUT` for the server's writer between its group commits rather than failing with
/// `database is locked`.
pub(crate) fn open_existing(path: &str) -> Result<Connection, Error> {
    open_existing_with(path, Some(Opener::Operator)).map_err(|error| explained(path, error, true))
}

/// Opens the existing database `path` for one operator alone (`wxauth restore`), or fails at once,
/// saying it is in use, while any other connection (a running server's) has it open: checked as
/// `open_read_write` checks it for an operator, then in SQLite's exclusive locking mode with no
/// busy timeout. A connection in WAL mode holds a shared lock on the database file for as long as
/// it is open, so the exclusive lock is refused while one is; once taken, it is kept until this
/// connection closes. With the lock, it folds the WAL into the file, so the file stands alone.
pub(super) fn open_alone(path: &str) -> Result<Connection, Error> {
    let connection = open_read_write(path, Opener::Operator)?;
    connection.busy_timeout(Duration::ZERO)?;
    let locked = connection
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; COMMIT;")
        .and_then(|()| connection.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)"));
    match locked {
        Ok(()) => Ok(connection),
        Err(rusqlite::Error::SqliteFailure(failure, _))
            if matches!(
                failure.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            Err(Error::Internal(format!(
                "database {path} is in use, by a running `wxauth serve` or another program: stop it first"
            )))
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_database;

    #[test]
    fn an_immutable_uri_names_the_same_file_whatever_its_name_holds() {
        let database = temp_database("immutable-uri");
        let directory = Path::new(database.as_str()).parent().unwrap();
        let path = directory.join("a ?b#c%41.db").to_str().unwrap().to_string();
        let written = Connection::open(&path).unwrap();
        written.execute_batch("PRAGMA user_version = 7").unwrap();
        drop(written);
        let uri = immutable_uri(&path);
        assert!(uri.starts_with("file:///"), "{uri}");
        assert!(uri.ends_with("/a %3fb%23c%2541.db?immutable=1"), "{uri}");
        let read = open_existing_with(&uri, None).unwrap();
        let version: u32 = read.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
        assert_eq!(version, 7);
        assert!(immutable_uri("relative.db").starts_with("file:relative.db?"));
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
        let directory = Path::new(path.as_str()).parent().unwrap().to_str().unwrap().to_string();
        let refusal = check(&directory, true, Some(user)).unwrap_err();
        assert!(
            refusal.ends_with("is not a regular file: point `database` at a file"),
            "{refusal}"
        );
    }
}
