//! Log lines on stderr, whole lines in each write: plain (`time LEVEL message`) or one JSON object
//! per line, filtered by level, and the access log (one line per request; those at info and debug
//! are written a few at a time, see `WAITING`). Callers pass text that is already
//! free of secrets; this module adds the time and the level, and escapes what a client sent (the
//! method and path) so that no request can forge or break a line, and copies at most
//! `MAX_CLIENT_TEXT` bytes of each so that no request can make its line long.
//!
//! The settings are process-wide atomics set by `configure`, at start-up and again at a reload,
//! because log lines come from everywhere (the writer thread, WeChat calls) and none of those
//! places should need a handle to write one. Until `configure`, lines are plain and at info or
//! above.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{LogConfig, LogFormat, LogLevel};

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);
static JSON: AtomicBool = AtomicBool::new(false);
static ACCESS: AtomicBool = AtomicBool::new(true);

/// Applies the `[log]` settings.
pub(crate) fn configure(config: &LogConfig) {
    LEVEL.store(config.level as u8, Ordering::Relaxed);
    JSON.store(config.format == LogFormat::Json, Ordering::Relaxed);
    ACCESS.store(config.access, Ordering::Relaxed);
}

fn enabled(level: LogLevel) -> bool {
    level as u8 >= LEVEL.load(Ordering::Relaxed)
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Debug => "DEBUG",
        LogLevel::Info => "INFO",
        LogLevel::Warn => "WARN",
        LogLevel::Error => "ERROR",
    }
}

/// Writes `text` now, after the access lines waiting (so lines stay in order).
fn write(text: String) {
    let mut waiting = lock_waiting();
    waiting.push_str(&text);
    write_out(&mut waiting);
}

/// Access lines at info and debug wait here, and are written together: by the `log-flush` thread
/// `FLUSH_AFTER` after the first of them arrived, by whoever makes them more than `MAX_WAITING`
/// bytes, or before any other line. A write of its own per access line would be a system call in
/// every request, a large share of what a cheap request like `is_openid_registered` costs; the
/// other lines, failures' access lines among them, are still written before the request is
/// answered.
static WAITING: Mutex<String> = Mutex::new(String::new());
static ARRIVED: Condvar = Condvar::new();
/// Whether the `log-flush` thread runs; started with the first access line.
static FLUSHER: OnceLock<bool> = OnceLock::new();
const FLUSH_AFTER: Duration = Duration::from_millis(20);
const MAX_WAITING: usize = 32 * 1024;

fn lock_waiting() -> MutexGuard<'static, String> {
    WAITING.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One write of everything waiting (held locked, so that no line overtakes another).
fn write_out(waiting: &mut String) {
    if !waiting.is_empty() {
        let _ = std::io::stderr().lock().write_all(waiting.as_bytes());
        waiting.clear();
    }
}

/// Adds an access line to those waiting.
fn write_later(text: &str) {
    let flushing = *FLUSHER.get_or_init(|| {
        let flusher = std::thread::Builder::new().name("log-flush".into()).spawn(|| {
            loop {
                let mut waiting = lock_waiting();
                while waiting.is_empty() {
                    waiting =
                        ARRIVED.wait(waiting).unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                drop(waiting);
                std::thread::sleep(FLUSH_AFTER);
                write_out(&mut lock_waiting());
            }
        });
        flusher.is_ok()
    });
    let mut waiting = lock_waiting();
    let first = waiting.is_empty();
    waiting.push_str(text);
    // Without the thread (it could not start), no line waits.
    if waiting.len() > MAX_WAITING || !flushing {
        write_out(&mut waiting);
    } else if first {
        ARRIVED.notify_one();
    }
}

/// Writes the access lines waiting: at exit, so that none is lost.
pub(crate) fn flush() {
    write_out(&mut lock_waiting());
}

/// `yyyy-mm-ddTHH:MM:SSZ`, which log collectors read without being told the format.
fn rfc3339(seconds: i64) -> String {
    format!("{}Z", crate::time::format_datetime(seconds).replacen(' ', "T", 1))
}

/// A JSON line: `time`, `level`, then `fields`.
fn json_line(level: LogLevel, fields: Value) -> String {
    let mut object = json!({
        "time": rfc3339(crate::time::now()),
        "level": level_name(level).to_ascii_lowercase(),
    });
    if let (Some(object), Value::Object(fields)) = (object.as_object_mut(), fields) {
        object.extend(fields);
    }
    format!("{object}\n")
}

fn line(level: LogLevel, message: &str) {
    if !enabled(level) {
        return;
    }
    if JSON.load(Ordering::Relaxed) {
        write(json_line(level, json!({ "message": message })));
    } else {
        let time = crate::time::format_datetime(crate::time::now());
        write(format!("{time} {} {}\n", level_name(level), escape_controls(message)));
    }
}

pub(crate) fn info(message: &str) {
    line(LogLevel::Info, message);
}

pub(crate) fn warn(message: &str) {
    line(LogLevel::Warn, message);
}

pub(crate) fn error(message: &str) {
    line(LogLevel::Error, message);
}

/// One answered request, for the access log.
pub(crate) struct Access<'a> {
    /// The app the request came through (`default` or an `[apps.NAME]`'s NAME, from the
    /// configuration, never from the request).
    pub(crate) app: &'a str,
    pub(crate) client: IpAddr,
    pub(crate) method: &'a str,
    /// The path without its query (which may hold a `wx.login` code).
    pub(crate) path: &'a str,
    pub(crate) status: u16,
    pub(crate) duration: Duration,
    /// The error's name and its log text, for a failure.
    pub(crate) error: Option<(&'a str, &'a str)>,
    /// A `/healthz`, `/readyz` or `/metrics` request, asked every few seconds by machines.
    pub(crate) probe: bool,
}

impl Access<'_> {
    /// Failures on our side are warnings or errors, whatever `access` says: their line is the
    /// only record of the cause. Probes are debug, so they do not drown the requests of people.
    fn level(&self) -> LogLevel {
        match self.status {
            500 => LogLevel::Error,
            status if status > 500 => LogLevel::Warn,
            _ if self.probe => LogLevel::Debug,
            _ => LogLevel::Info,
        }
    }
}

/// Writes the access line for a request, if its level and the `access` setting allow.
pub(crate) fn access(entry: &Access) {
    let level = entry.level();
    if !enabled(level) || (level <= LogLevel::Info && !ACCESS.load(Ordering::Relaxed)) {
        return;
    }
    if JSON.load(Ordering::Relaxed) {
        let millis = entry.duration.as_secs_f64() * 1000.0;
        let mut fields = json!({
            "type": "access",
            "app": entry.app,
            "client": entry.client.to_string(),
            "method": bounded(entry.method),
            "path": bounded(entry.path),
            "status": entry.status,
            "duration_ms": (millis * 1000.0).round() / 1000.0,
        });
        if let (Some((name, detail)), Some(fields)) = (entry.error, fields.as_object_mut()) {
            fields.insert("error".into(), name.into());
            fields.insert("detail".into(), detail.into());
        }
        let text = json_line(level, fields);
        if level <= LogLevel::Info { write_later(&text) } else { write(text) }
    } else {
        let text = plain_access_line(entry, level);
        if level <= LogLevel::Info { write_later(&text) } else { write(text) }
    }
}

/// `time LEVEL client METHOD path status 1.2ms[ app=NAME][ error (detail)]`: the app is named
/// when it is not the default, so a one-app deployment's lines keep their shape.
fn plain_access_line(entry: &Access, level: LogLevel) -> String {
    let time = crate::time::format_datetime(crate::time::now());
    let (method, path) = (bounded(entry.method), bounded(entry.path));
    // Milliseconds with one decimal, rounded half up, from whole tenths: a float's `{:.1}` rounds
    // the binary value, which puts some halves below.
    let tenths = (entry.duration.as_nanos() + 50_000) / 100_000;
    let mut text = format!(
        "{time} {} {} {} {} {} {}.{}ms",
        level_name(level),
        entry.client,
        escape(&method),
        escape(&path),
        entry.status,
        tenths / 10,
        tenths % 10
    );
    if entry.app != crate::config::DEFAULT_APP {
        let _ = write!(text, " app={}", entry.app);
    }
    if let Some((name, detail)) = entry.error {
        // The detail may quote what a client sent (a header, a field's value).
        let _ = write!(text, " {} ({})", escape_controls(name), escape_controls(detail));
    }
    text.push('\n');
    text
}

/// The most bytes of a client's method or path an access line copies: a request line may be
/// 8 KiB, and anyone may send one to make its access line that long.
const MAX_CLIENT_TEXT: usize = 128;

/// Text a client sent as an access line shows it: whole up to `MAX_CLIENT_TEXT` bytes (borrowed,
/// as nearly every path is), else its first `MAX_CLIENT_TEXT` bytes at most, cut on a character
/// boundary, and `...[NB]` with its whole length N in bytes. The marker has no space, so the
/// plain line keeps one field for it.
fn bounded(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_CLIENT_TEXT {
        return Cow::Borrowed(text);
    }
    let kept = &text[..text.floor_char_boundary(MAX_CLIENT_TEXT)];
    Cow::Owned(format!("{kept}...[{}B]", text.len()))
}

/// Text a client sent, with control characters and spaces escaped, so it stays one field of one
/// line.
fn escape(text: &str) -> Cow<'_, str> {
    escaped(text, true)
}

/// Free text (a message, an error's detail) with its control characters escaped, so that whatever
/// it quotes cannot start a line of its own.
fn escape_controls(text: &str) -> Cow<'_, str> {
    escaped(text, false)
}

/// `text` with control characters (and spaces, if `spaces`) escaped; borrowed when there are
/// none, as in nearly every line.
fn escaped(text: &str, spaces: bool) -> Cow<'_, str> {
    let special = |character: char| character.is_control() || (spaces && character == ' ');
    // Bytes first: nearly every text is printable ASCII, and decoding chars costs more.
    let plain_byte = |byte: u8| (0x21..0x7f).contains(&byte) || (byte == b' ' && !spaces);
    if text.bytes().all(plain_byte) || !text.chars().any(special) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for character in text.chars() {
        match character {
            ' ' if spaces => escaped.push_str("\\x20"),
            control if control.is_control() => escaped.extend(control.escape_default()),
            plain => escaped.push(plain),
        }
    }
    Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_text_stays_on_one_line() {
        assert_eq!(escape_controls("wechat: code invalid (40029)"), "wechat: code invalid (40029)");
        assert_eq!(
            escape_controls("x/y\n2026-01-01 00:00:00 ERROR forged"),
            "x/y\\n2026-01-01 00:00:00 ERROR forged"
        );
        assert_eq!(escape_controls("a\r\tb"), "a\\r\\tb");
    }

    #[test]
    fn client_text_stays_on_one_line() {
        assert_eq!(escape("/miniprog/wx_auth/login"), "/miniprog/wx_auth/login");
        assert_eq!(escape("/a\nINFO forged"), "/a\\nINFO\\x20forged");
        assert_eq!(escape("/\u{1b}[31m"), "/\\u{1b}[31m");
        assert_eq!(escape("/登录"), "/登录");
    }

    #[test]
    fn access_levels() {
        let entry = |status, probe| Access {
            app: "default",
            client: "127.0.0.1".parse().unwrap(),
            method: "GET",
            path: "/",
            status,
            duration: Duration::ZERO,
            error: None,
            probe,
        };
        assert_eq!(entry(200, false).level(), LogLevel::Info);
        assert_eq!(entry(403, false).level(), LogLevel::Info);
        assert_eq!(entry(200, true).level(), LogLevel::Debug);
        assert_eq!(entry(503, true).level(), LogLevel::Warn);
        assert_eq!(entry(502, false).level(), LogLevel::Warn);
        assert_eq!(entry(500, false).level(), LogLevel::Error);
    }

    #[test]
    fn plain_access_lines_field_by_field() {
        let entry = |client: &str, path, status, micros, error| Access {
            app: "default",
            client: client.parse().unwrap(),
            method: "GET",
            path,
            status,
            duration: Duration::from_micros(micros),
            error,
            probe: false,
        };
        // The fields after the time (`yyyy-mm-dd HH:MM:SS`, two fields).
        let fields = |entry: &Access| {
            let line = plain_access_line(entry, entry.level());
            assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "{line:?}");
            line.trim_end().splitn(3, ' ').nth(2).unwrap().to_string()
        };
        assert_eq!(
            fields(&entry("203.0.113.7", "/miniprog/wx_auth/login", 200, 0, None)),
            "INFO 203.0.113.7 GET /miniprog/wx_auth/login 200 0.0ms"
        );
        assert_eq!(
            fields(&entry("::1", "/a b\n", 404, 12_349, None)),
            "INFO ::1 GET /a\\x20b\\n 404 12.3ms"
        );
        assert_eq!(
            fields(&entry("10.0.0.255", "/x", 502, 1_999_950, Some(("wechat_unavailable", "e\r")))),
            "WARN 10.0.0.255 GET /x 502 2000.0ms wechat_unavailable (e\\r)"
        );
        assert_eq!(
            fields(&entry("0.0.0.0", "/登录", 200, 50, None)),
            "INFO 0.0.0.0 GET /登录 200 0.1ms"
        );
        // An exact half rounds up, as every other: 0.25 ms is 0.3, where `{:.1}` of the float
        // would give 0.2.
        assert_eq!(
            fields(&entry("192.168.1.10", "/", 200, 250, None)),
            "INFO 192.168.1.10 GET / 200 0.3ms"
        );
    }

    #[test]
    fn client_text_is_cut_to_its_first_128_bytes_on_a_character_boundary() {
        let short = "/".repeat(MAX_CLIENT_TEXT);
        assert!(matches!(bounded(&short), Cow::Borrowed(text) if text == short));
        let long = format!("/{}", "a".repeat(8999));
        assert_eq!(bounded(&long), format!("{}...[9000B]", &long[..128]));
        // "登" is 3 bytes: bytes 126 to 128 of this path, so only 126 bytes are kept.
        let wide = format!("{}登{}", "b".repeat(126), "c".repeat(100));
        assert_eq!(bounded(&wide), format!("{}...[229B]", "b".repeat(126)));
        // The method too: tiny_http takes any token as one.
        let method = "M".repeat(7000);
        let entry = Access {
            app: "default",
            client: "127.0.0.1".parse().unwrap(),
            method: &method,
            path: &long,
            status: 404,
            duration: Duration::ZERO,
            error: None,
            probe: false,
        };
        let line = plain_access_line(&entry, entry.level());
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[4], format!("{}...[7000B]", &method[..128]));
        assert_eq!(fields[5], format!("{}...[9000B]", &long[..128]));
        assert!(line.len() < 400, "{line}");
    }

    #[test]
    fn json_lines_carry_time_and_level() {
        let line = json_line(LogLevel::Warn, json!({"message": "a \"quoted\"\nline"}));
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["level"], "warn");
        assert_eq!(value["message"], "a \"quoted\"\nline");
        assert!(value["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
