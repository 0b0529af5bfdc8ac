//! `wxauth backup`: SQLite's online backup to a new owner-only file, checked once written; and
//! `wxauth restore`, which puts such a copy of a backup in the database's place.

use std::thread;

use rusqlite::Connection;

use super::migrate::{current_version, schema_version};
#[cfg(unix)]
use super::open::effective_uid;
use super::open::{
    BESIDE, BUSY_TIMEOUT, create_private_file, linkless_path, open_alone, private_flags,
};
use crate::error::Error;
use crate::store::{BackupReport, RestoreReport};

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
    check_copy(destination)
}

/// Opens the copy at `destination` again, read back from the file itself on a fresh connection
/// (not from what was just written), checks it with `PRAGMA integrity_check` and reports it.
fn check_copy(destination: &str) -> Result<BackupReport, Error> {
    let copy = Connection::open_with_flags(linkless_path(destination)?, private_flags())?;
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

/// Replaces the database at `path` with a checked copy of the backup at `from`, keeping the
/// database that was there at `aside`. In order, stopping at the first failure with the database
/// as it was:
///
/// 1. the database at `path`, if there is one, must be safely the operator's (`open_read_write`)
///    and open in no other connection (`open_alone`: a running server is refused); its WAL is
///    folded into it, so that it stands alone and no WAL of it is left to be read into the copy;
/// 2. the backup is copied byte for byte to a new owner-only file beside `path` (never opened by
///    SQLite where it is, which would leave a `-wal` and `-shm` beside it), and the copy must be a
///    wxauth database whose schema this binary knows (not newer) and pass `integrity_check`;
/// 3. the copy gets the owner of the database it replaces (`owner`) and is fsynced; the database
///    is linked at `aside`, and the copy renamed over `path`, so that `path` is at every moment
///    one whole database or the other; then the directory is fsynced.
pub(crate) fn restore(from: &str, path: &str, aside: &str) -> Result<RestoreReport, Error> {
    let why = |error: &dyn std::fmt::Display| {
        Error::Internal(format!("backup {from} cannot be restored: {error}"))
    };
    let mut source = std::fs::File::open(from).map_err(|error| why(&error))?;
    if !source.metadata().map_err(|error| why(&error))?.is_file() {
        return Err(why(&"not a file"));
    }
    // A backup's writes in a WAL beside it would be lost by a copy of the file alone.
    let wal = format!("{from}-wal");
    if std::fs::metadata(&wal).is_ok_and(|metadata| metadata.len() > 0) {
        return Err(why(&format!(
            "{wal} holds part of it: open the backup once with sqlite3 to fold it in"
        )));
    }
    let current = match std::fs::symlink_metadata(path) {
        Ok(metadata) => Some(metadata),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(Error::Internal(format!("database {path}: {error}"))),
    };
    if current.is_some() {
        drop(open_alone(path)?);
        let wal = format!("{path}-wal");
        if std::fs::metadata(&wal).is_ok_and(|metadata| metadata.len() > 0) {
            return Err(Error::Internal(format!(
                "{wal} still holds writes: the database was opened again; stop whatever uses it"
            )));
        }
        if std::fs::symlink_metadata(aside).is_ok() {
            return Err(Error::Internal(format!("{aside} already exists: move it away")));
        }
    }
    let copy = format!("{path}.restoring");
    for suffix in BESIDE {
        let beside = format!("{copy}{suffix}");
        if std::fs::symlink_metadata(&beside).is_ok() {
            return Err(Error::Internal(format!("{beside} already exists: move it away")));
        }
    }
    if !create_private_file(&copy)
        .map_err(|error| Error::Internal(format!("cannot create {copy}: {error}")))?
    {
        return Err(Error::Internal(format!(
            "{copy} already exists (left by an interrupted restore?): move it away"
        )));
    }
    let result = copy_file(&mut source, &copy)
        .and_then(|()| check_backup(&copy).map_err(|error| why(&error)))
        .and_then(|report| {
            place(&copy, path, aside, current.as_ref(), owner(path, current.as_ref())?)?;
            Ok(RestoreReport { kept: current.is_some(), copy: report })
        });
    if result.is_err() {
        for suffix in std::iter::once("").chain(BESIDE) {
            let _ = std::fs::remove_file(format!("{copy}{suffix}"));
        }
    }
    result
}

/// Copies `source` into the empty file `copy`, which keeps its owner-only mode.
fn copy_file(source: &mut std::fs::File, copy: &str) -> Result<(), Error> {
    let mut destination = std::fs::OpenOptions::new()
        .write(true)
        .open(linkless_path(copy)?)
        .map_err(|error| Error::Internal(format!("cannot open {copy}: {error}")))?;
    std::io::copy(source, &mut destination)
        .map_err(|error| Error::Internal(format!("cannot copy the backup to {copy}: {error}")))?;
    Ok(())
}

/// Checks that the copy of a backup is a whole wxauth database this binary can serve, and
/// reports it. The reason it is not, otherwise, as SQLite gives it.
fn check_backup(copy: &str) -> Result<BackupReport, String> {
    let report = check_copy(copy).map_err(|error| match error {
        Error::Database(error) => error.to_string(),
        other => other.to_string(),
    })?;
    let tables: Vec<&str> = report.tables.iter().map(|(name, _)| name.as_str()).collect();
    if report.schema_version == 0 || !tables.contains(&"accounts") || !tables.contains(&"meta") {
        return Err("not a wxauth database (no schema version, or no accounts)".into());
    }
    if report.schema_version > current_version() {
        return Err(format!(
            "its schema version {} is newer than this wxauth's ({}): use a newer wxauth",
            report.schema_version,
            current_version()
        ));
    }
    Ok(report)
}

/// The user and group the restored database must belong to: those of the database it replaces,
/// `current`; with none, as root, those of its directory (the service's state directory, which
/// systemd gives the service's user); else `None`, the user running the restore.
fn owner(path: &str, current: Option<&std::fs::Metadata>) -> Result<Option<(u32, u32)>, Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Some(current) = current {
            return Ok(Some((current.uid(), current.gid())));
        }
        if effective_uid() == 0 {
            let directory = linkless_path(path)?;
            let directory = directory.parent().unwrap_or(std::path::Path::new("."));
            let metadata = std::fs::metadata(directory).map_err(|error| {
                Error::Internal(format!("directory {}: {error}", directory.display()))
            })?;
            return Ok(Some((metadata.uid(), metadata.gid())));
        }
    }
    let _ = (path, current);
    Ok(None)
}

/// Gives `copy` the `owner` of the database it replaces, makes it durable, keeps `current` (the
/// database at `path`, if any) at `aside` and renames `copy` over `path`.
fn place(
    copy: &str,
    path: &str,
    aside: &str,
    current: Option<&std::fs::Metadata>,
    owner: Option<(u32, u32)>,
) -> Result<(), Error> {
    let fail = |doing: &str, error: std::io::Error| Error::Internal(format!("{doing}: {error}"));
    #[cfg(unix)]
    if let Some((user, group)) = owner {
        use std::os::unix::fs::MetadataExt;
        let copied = std::fs::metadata(copy).map_err(|error| fail(copy, error))?;
        if (copied.uid(), copied.gid()) != (user, group) {
            std::os::unix::fs::chown(copy, Some(user), Some(group)).map_err(|error| {
                fail(&format!("cannot give {copy} the database's owner"), error)
            })?;
        }
    }
    #[cfg(not(unix))]
    let _ = owner;
    std::fs::File::open(copy)
        .and_then(|file| file.sync_all())
        .map_err(|error| fail(&format!("cannot sync {copy}"), error))?;
    if current.is_some() {
        std::fs::hard_link(path, aside)
            .map_err(|error| fail(&format!("cannot keep {path} as {aside}"), error))?;
    }
    if let Err(error) = std::fs::rename(copy, path) {
        if current.is_some() {
            let _ = std::fs::remove_file(aside);
        }
        return Err(fail(&format!("cannot rename {copy} to {path}"), error));
    }
    // The renames and the link are durable once the directory is.
    let directory = linkless_path(path)?;
    if let Some(directory) = directory.parent() {
        std::fs::File::open(directory)
            .and_then(|file| file.sync_all())
            .map_err(|error| fail(&format!("cannot sync {}", directory.display()), error))?;
    }
    Ok(())
}
