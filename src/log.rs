//! Log lines on stderr: one line each, UTC time first. Callers pass text that is already free of
//! secrets; this module adds nothing but the time and the level.

use std::io::Write;

fn line(level: &str, message: &str) {
    let now = crate::time::now();
    let text = format!("{} {level} {message}\n", crate::time::format_datetime(now));
    // One write per line, so lines from different threads do not interleave.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

pub(crate) fn info(message: &str) {
    line("INFO", message);
}

pub(crate) fn warn(message: &str) {
    line("WARN", message);
}

pub(crate) fn error(message: &str) {
    line("ERROR", message);
}
