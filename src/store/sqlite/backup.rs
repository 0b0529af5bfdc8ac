//! `wxauth backup`: SQLite's online backup to a new owner-only file, checked once written.

use std::thread;

use rusqlite::Connection;

use super::migrate::schema_version;
use super::open::{BESIDE, BUSY_TIMEOUT, create_private_file, linkless_path, private_flags};
use crate::error::Error;
use crate::store::BackupReport;

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
