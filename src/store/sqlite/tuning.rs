//! SQLite's process-wide settings and the writer's lookaside arena, through SQLite's C API
//! (rusqlite's `ffi`), which rusqlite does not wrap.

use rusqlite::Connection;

/// Process-wide SQLite settings, applied once before the first connection opens.
pub(super) fn configure_sqlite() {
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

/// Gives the writer connection SQLite's default lookaside arena (about 120 KiB: 100 slots of 1200
/// bytes), which `configure_sqlite` turns off for every connection. The writer makes most of
/// SQLite's small allocations (about 40 per registration: cursors, records, savepoints); from the
/// arena they cost no malloc and free. Readers stay without it: there is one per worker.
pub(super) fn enable_lookaside(connection: &Connection) {
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
