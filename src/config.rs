//! `Config`: the effective configuration, from `wxauth.toml` (or built-in defaults) overridden by
//! `WXAUTH_*` environment variables, validated before anything starts.
//!
//! Every key of the file has exactly one environment variable, `WXAUTH_` + section + key in upper
//! case (`[wechat] appid` is `WXAUTH_WECHAT_APPID`, top-level `listen` is `WXAUTH_LISTEN`), derived
//! from the keys themselves so the two can never drift apart. Unknown keys, in the file or the
//! environment, are errors naming the key. `Debug` never shows a secret. This module does no I/O
//! beyond reading the file it is given and the environment.
//!
//! Several mini-programs: `[wechat]`, `prefix` and `jwt.audience` are the default app; each
//! `[apps.NAME]` section adds one (`AppConfig`), whose keys are `WXAUTH_APPS_NAME_KEY` in the
//! environment (NAME upper case; the key is the part after the last known key name, so a NAME
//! may hold `_`). `validate` keeps their prefixes from overlapping and their appids and audiences
//! apart, so that a path names one app and a token's `aud` names one app.
//!
//! A reload (SIGHUP) loads the configuration again; `Config::reloaded` takes from it the keys in
//! `RELOADABLE`, those read afresh by each request, and keeps the running value of every other.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::Fatal;

/// Who may log in with a bare openid (see docs/api.md, "The openid login policy").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OpenidLogin {
    /// Only if `get_openid_by_code` returned this openid within `openid_login_window`.
    RecentCode,
    /// Only with the matching `session_key` in the body.
    SessionKey,
    /// Always (the original backend's behaviour).
    Open,
    /// Never: tokens only.
    Off,
}

/// How severe a log line is; `log.level` is the least severe line written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LogFormat {
    /// `time LEVEL message`, for people.
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// Address to listen on; port 0 picks a free one.
    #[serde(deserialize_with = "listen_address")]
    pub(crate) listen: SocketAddr,
    /// Path of the SQLite database file, or a `mysql://USER@HOST:PORT/DB` URL.
    pub(crate) database: String,
    /// The MySQL user's password (with a `mysql://` database); better given in the environment.
    pub(crate) database_password: String,
    /// Worker threads answering requests.
    pub(crate) workers: usize,
    /// URL prefix of the API, with leading and trailing slash.
    pub(crate) prefix: String,
    /// The openid login policy.
    pub(crate) openid_login: OpenidLogin,
    /// Seconds after `get_openid_by_code` during which `recent_code` allows an openid login.
    pub(crate) openid_login_window: u64,
    /// Return the session_key to the client (the original did; WeChat's rules say never).
    pub(crate) expose_session_key: bool,
    /// Peers whose `X-Forwarded-For` is believed (the reverse proxy in front of wxauth).
    #[serde(deserialize_with = "proxy_addresses")]
    pub(crate) trusted_proxies: Vec<IpAddr>,
    /// Largest accepted request body, in bytes.
    pub(crate) max_body_bytes: usize,
    /// Time a client has to send a request head, and again its body, in milliseconds.
    pub(crate) request_timeout_ms: u64,
    /// Time an open connection may sit without starting a request, in milliseconds.
    pub(crate) idle_timeout_ms: u64,
    /// Most client connections open at once; 0 sizes it from the open-file limit
    /// (`Config::connections_for`).
    pub(crate) max_connections: usize,
    /// On SIGTERM/SIGINT, time requests in flight get to finish, in milliseconds.
    pub(crate) shutdown_timeout_ms: u64,
    pub(crate) wechat: WechatConfig,
    pub(crate) jwt: JwtConfig,
    pub(crate) rate_limit: RateLimitConfig,
    pub(crate) demo: DemoConfig,
    pub(crate) log: LogConfig,
    /// The mini-programs served besides the default one, by NAME (`[apps.NAME]`).
    pub(crate) apps: BTreeMap<String, AppConfig>,
}

/// One more mini-program (`[apps.NAME]`), served under its own prefix with its own WeChat client,
/// access token, in-flight cap and rate limits; `[wechat]`'s other keys (base_url, timeouts,
/// max_in_flight) apply to it too. After parsing, `prefix` and `audience` hold their defaults
/// when left empty.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AppConfig {
    /// The mini-program's appid; empty, with `secret`, in demo mode only.
    pub(crate) appid: String,
    /// The mini-program's app secret.
    pub(crate) secret: String,
    /// URL prefix of this app's API; default `/NAME/wx_auth/`.
    pub(crate) prefix: String,
    /// The `aud` of this app's tokens; default NAME.
    pub(crate) audience: String,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct WechatConfig {
    /// The mini-program's appid; empty together with `secret` means demo mode.
    pub(crate) appid: String,
    /// The mini-program's app secret.
    pub(crate) secret: String,
    /// Where WeChat's API lives.
    pub(crate) base_url: String,
    /// Connect timeout for calls to WeChat, milliseconds.
    pub(crate) connect_timeout_ms: u64,
    /// Whole-call timeout for calls to WeChat, milliseconds.
    pub(crate) timeout_ms: u64,
    /// Calls to WeChat allowed in flight at once; more wait while WeChat is answering, and fail
    /// fast with `wechat_unavailable` when it is not.
    pub(crate) max_in_flight: usize,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct JwtConfig {
    /// HMAC key (its UTF-8 bytes), at least 32 bytes; empty: generated once and kept in the database.
    pub(crate) secret: String,
    /// Secrets that signed tokens before `secret` (rotation): tokens whose `kid` names one of
    /// them still verify; new tokens are signed with `secret` only. Each at least 32 bytes.
    pub(crate) previous_secrets: Vec<String>,
    /// `iss` claim written and required.
    pub(crate) issuer: String,
    /// `aud` claim written and required.
    pub(crate) audience: String,
    /// Token lifetime, seconds.
    pub(crate) lifetime: u64,
    /// Clock leeway for `exp`/`nbf`/`iat`, seconds.
    pub(crate) leeway: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RateLimitConfig {
    /// Limit WeChat-bound and account-creating requests per client (IPv4 address, IPv6 /64).
    pub(crate) enabled: bool,
    /// Requests a client may make at once.
    pub(crate) burst: u32,
    /// Requests a second a client may make after the burst.
    pub(crate) per_second: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DemoConfig {
    /// Where demo mode serves the built-in fake WeChat.
    #[serde(deserialize_with = "fake_listen_address")]
    pub(crate) fake_listen: SocketAddr,
    /// Serve the demo page outside demo mode too, against the fake WeChat at `wechat.base_url`
    /// (which must then be on loopback). Demo mode always serves it.
    pub(crate) page: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LogConfig {
    /// The least severe lines written.
    pub(crate) level: LogLevel,
    /// Plain text or JSON lines.
    pub(crate) format: LogFormat,
    /// One line per request (at info; probes at debug; failures on our side always).
    pub(crate) access: bool,
}

/// The smallest JWT secret accepted, in bytes (RFC 7518 §3.2: a key as long as the hash).
pub(crate) const MIN_JWT_SECRET_BYTES: usize = 32;

/// The appid the fake WeChat and demo mode use.
pub(crate) const DEMO_APPID: &str = "wxdemo";

/// The name of the app `[wechat]` configures, in metrics, access lines and `verify`'s answer.
pub(crate) const DEFAULT_APP: &str = "default";

/// The most `[apps.NAME]` sections: each app has its own series in the metrics' fixed arrays.
pub(crate) const MOST_APPS: usize = 15;

/// An app's keys, as `[apps.NAME]` and `WXAUTH_APPS_NAME_…` name them.
const APP_KEYS: [&str; 4] = ["appid", "secret", "prefix", "audience"];

impl Config {
    /// The largest `max_body_bytes`: a body is read whole into memory before it is handled.
    pub(crate) const MOST_BODY_BYTES: usize = 16 * 1024 * 1024;
    /// The largest `max_connections`: each open connection has a thread of its own.
    pub(crate) const MOST_CONNECTIONS: usize = 65_536;
    /// `max_connections` when it is left at 0: what the open-file limit allows, at most this.
    pub(crate) const DEFAULT_MOST_CONNECTIONS: usize = 4096;

    /// How many client connections may be open at once under an open-file limit of
    /// `open_files`: `max_connections` when set, else what the limit leaves after the
    /// database, WeChat and log files (each connection takes two descriptors), at least 16.
    pub(crate) fn connections_for(&self, open_files: u64) -> usize {
        if self.max_connections > 0 {
            return self.max_connections;
        }
        let reserved = 64 + 4 * self.workers as u64;
        let usable = open_files.saturating_sub(reserved) / 2;
        usable.clamp(16, Config::DEFAULT_MOST_CONNECTIONS as u64) as usize
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            database: "wxauth.db".into(),
            database_password: String::new(),
            workers: Config::DEFAULT_WORKERS,
            prefix: "/miniprog/wx_auth/".into(),
            openid_login: OpenidLogin::RecentCode,
            openid_login_window: 600,
            expose_session_key: false,
            trusted_proxies: Vec::new(),
            max_body_bytes: 64 * 1024,
            request_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            max_connections: 0,
            shutdown_timeout_ms: 15_000,
            wechat: WechatConfig::default(),
            jwt: JwtConfig::default(),
            rate_limit: RateLimitConfig::default(),
            demo: DemoConfig::default(),
            log: LogConfig::default(),
            apps: BTreeMap::new(),
        }
    }
}

impl Default for WechatConfig {
    fn default() -> Self {
        WechatConfig {
            appid: String::new(),
            secret: String::new(),
            base_url: "https://api.weixin.qq.com".into(),
            connect_timeout_ms: 2_000,
            timeout_ms: 5_000,
            max_in_flight: default_max_in_flight(Config::DEFAULT_WORKERS),
        }
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            secret: String::new(),
            previous_secrets: Vec::new(),
            issuer: "wxauth".into(),
            audience: "miniprog".into(),
            lifetime: 7 * 24 * 3600,
            leeway: 60,
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig { enabled: true, burst: 60, per_second: 10 }
    }
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig { fake_listen: SocketAddr::from(([127, 0, 0, 1], 0)), page: false }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: LogLevel::Info, format: LogFormat::Plain, access: true }
    }
}

impl Config {
    /// Worker threads unless configured.
    const DEFAULT_WORKERS: usize = 16;

    /// Demo mode: no WeChat credentials configured, so wxauth serves its own fake WeChat.
    pub(crate) fn demo_mode(&self) -> bool {
        self.wechat.appid.is_empty() && self.wechat.secret.is_empty()
    }

    /// The appid demo mode gives app `name` on the fake WeChat (the default app's is `DEMO_APPID`),
    /// so that one demo user has a different openid in each app and the same unionid.
    pub(crate) fn demo_appid(name: &str) -> String {
        if name == DEFAULT_APP { DEMO_APPID.to_string() } else { format!("{DEMO_APPID}_{name}") }
    }

    /// Whether the demo page and its helpers are served: in demo mode, or when `demo.page` turns
    /// them on against a fake WeChat on loopback (`validate` refuses it otherwise).
    pub(crate) fn demo_page(&self) -> bool {
        self.demo_mode() || self.demo.page
    }

    /// The configuration shown by `Debug` (and `wxauth check-config`), with the values of
    /// `SECRET_KEYS` replaced. Done on the TOML form, so a key needs no code of its own and a list
    /// of secrets is covered; then back into a `Config`, so it prints in the file's key order.
    fn redacted(&self) -> Result<Config, String> {
        let mut table = toml::Table::try_from(self).map_err(|error| error.to_string())?;
        redact_keys(&mut table, SECRET_KEYS);
        if let Some(toml::Value::Table(apps)) = table.get_mut("apps") {
            for (_, app) in apps.iter_mut() {
                if let toml::Value::Table(app) = app {
                    redact_keys(app, APP_SECRET_KEYS);
                }
            }
        }
        toml::Value::Table(table).try_into().map_err(|error: toml::de::Error| error.to_string())
    }
}

/// The keys whose values are secret, as `section.key`: shown as "<redacted>" (each element of a
/// list), or as "" when unset. A new secret key belongs here; the test
/// `every_secret_like_key_is_listed_as_secret` fails until it is.
const SECRET_KEYS: &[&str] =
    &["database_password", "wechat.secret", "jwt.secret", "jwt.previous_secrets"];

/// The keys of an `[apps.NAME]` section whose values are secret, redacted as `SECRET_KEYS`.
const APP_SECRET_KEYS: &[&str] = &["secret"];

/// Replaces the values at `keys` (`key` or `section.key`) in `table`.
fn redact_keys(table: &mut toml::Table, keys: &[&str]) {
    for path in keys {
        if let Some(value) = leaf_mut(table, path) {
            redact_value(value);
        }
    }
}

fn redact_value(value: &mut toml::Value) {
    match value {
        // An empty secret stays empty: whether one is set is worth seeing, and is no secret.
        toml::Value::String(text) if !text.is_empty() => *text = "<redacted>".into(),
        toml::Value::Array(items) => items.iter_mut().for_each(redact_value),
        _ => {}
    }
}

/// The keys a reload applies, as `key` or `section.key`: each is read from the configuration in
/// force by every request, or at the stop, and nothing built at start depends on it. The others
/// shape what start-up built (the listener and its limits, the database and workers, the WeChat
/// client, the JWT keys) or, for `jwt.issuer` and `jwt.audience`, are shared with the services
/// that verify tokens, so they change with a restart only.
pub(crate) const RELOADABLE: &[&str] = &[
    "openid_login",
    "openid_login_window",
    "expose_session_key",
    "trusted_proxies",
    "shutdown_timeout_ms",
    "jwt.lifetime",
    "jwt.leeway",
    "rate_limit.enabled",
    "rate_limit.burst",
    "rate_limit.per_second",
    "log.level",
    "log.format",
    "log.access",
];

/// What a reload makes of a newly loaded configuration.
pub(crate) struct Reloaded {
    /// The configuration to put in force: the running one with the new values of `applied`.
    pub(crate) config: Config,
    /// The reloadable keys whose value changed, as `section.key`, in key order.
    pub(crate) applied: Vec<String>,
    /// The keys whose value changed but take a restart to apply.
    pub(crate) need_restart: Vec<String>,
}

impl Config {
    /// Compares `loaded` (the configuration read again) with this running one, key by key, and
    /// takes its values for the keys in `RELOADABLE`. Keys are only named, never their values
    /// (some are secrets).
    pub(crate) fn reloaded(&self, loaded: &Config) -> Result<Reloaded, Fatal> {
        let table = |config: &Config| {
            toml::Table::try_from(config)
                .map_err(|error| Fatal::Config(format!("config: cannot compare: {error}")))
        };
        let (running, loaded) = (table(self)?, table(loaded)?);
        let old: BTreeMap<String, &toml::Value> = leaves(&running).collect();
        let new: BTreeMap<String, &toml::Value> = leaves(&loaded).collect();
        let mut merged = running.clone();
        let (mut applied, mut need_restart) = (Vec::new(), Vec::new());
        for (path, new_value) in new.iter().map(|(path, value)| (path.clone(), *value)) {
            if old.get(&path) == Some(&new_value) {
                continue;
            }
            if RELOADABLE.contains(&path.as_str()) {
                if let Some(value) = leaf_mut(&mut merged, &path) {
                    *value = new_value.clone();
                }
                applied.push(path);
            } else {
                need_restart.push(path);
            }
        }
        // What the file no longer has (an `[apps.NAME]` taken out: every other key has a
        // default) keeps running too, until a restart.
        need_restart.extend(old.keys().filter(|path| !new.contains_key(*path)).cloned());
        need_restart.sort();
        let config: Config = toml::Value::Table(merged)
            .try_into()
            .map_err(|error: toml::de::Error| Fatal::Config(format!("config: {error}")))?;
        validate(&config).map_err(Fatal::Config)?;
        Ok(Reloaded { config, applied, need_restart })
    }
}

/// Every value of a configuration table with its path (`key` or `section.key`), in key order.
fn leaves(table: &toml::Table) -> impl Iterator<Item = (String, &toml::Value)> {
    table.iter().flat_map(|(key, value)| match value {
        toml::Value::Table(section) => section
            .iter()
            .map(|(inner, value)| (format!("{key}.{inner}"), value))
            .collect::<Vec<_>>(),
        _ => vec![(key.clone(), value)],
    })
}

/// The value at `path` (`key` or `section.key`) in `table`, if there is one.
fn leaf_mut<'a>(table: &'a mut toml::Table, path: &str) -> Option<&'a mut toml::Value> {
    match path.split_once('.') {
        None => table.get_mut(path),
        Some((section, key)) => match table.get_mut(section) {
            Some(toml::Value::Table(section)) => section.get_mut(key),
            _ => None,
        },
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.redacted().and_then(|shown| toml::to_string(&shown).map_err(|e| e.to_string())) {
            Ok(text) => f.write_str(&text),
            Err(_) => f.write_str("<config>"),
        }
    }
}

impl fmt::Debug for WechatConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WechatConfig")
            .field("appid", &self.appid)
            .field("secret", &redact(&self.secret))
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &redact(&self.secret))
            .field(
                "previous_secrets",
                &self.previous_secrets.iter().map(|secret| redact(secret)).collect::<Vec<_>>(),
            )
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

fn redact(secret: &str) -> &'static str {
    if secret.is_empty() { "<unset>" } else { "<redacted>" }
}

/// Reads the configuration: the file at `path` if given (it must exist), else `./wxauth.toml` if
/// present, else the defaults; then the environment; then validation.
pub(crate) fn load(path: Option<&str>) -> Result<Config, Fatal> {
    let source = path.unwrap_or("wxauth.toml");
    let text = match path {
        Some(path) => std::fs::read_to_string(path)
            .map_err(Fatal::io(format!("cannot read config file {path}")))?,
        None => match std::fs::read_to_string("wxauth.toml") {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(Fatal::io("cannot read config file wxauth.toml")(error)),
        },
    };
    let environment: BTreeMap<String, String> =
        std::env::vars().filter(|(name, _)| name.starts_with("WXAUTH_")).collect();
    parse_and_check(source, &text, &environment).map_err(Fatal::Config)
}

/// Parses TOML text, applies `WXAUTH_*` overrides from `environment`, and validates.
#[cfg(test)]
pub(crate) fn parse(text: &str, environment: &BTreeMap<String, String>) -> Result<Config, Fatal> {
    parse_and_check("config file", text, environment).map_err(Fatal::Config)
}

/// `parse`, for the text of the file named `source` (in a syntax error's message).
fn parse_and_check(
    source: &str,
    text: &str,
    environment: &BTreeMap<String, String>,
) -> Result<Config, String> {
    let mut table: toml::Table =
        toml::from_str(text).map_err(|error| syntax_error(source, text, &error))?;
    let defaults = toml::Table::try_from(Config::default())
        .map_err(|error| format!("config defaults: {error}"))?;
    check_keys(&table, &defaults, "")?;
    apply_environment(&mut table, &defaults, environment)?;
    let mut config: Config = toml::Value::Table(table.clone()).try_into().map_err(
        |error: toml::de::Error| match blame(&table) {
            // An address's own message names its key already (`parsed`).
            Some(key) if error.message().starts_with(&format!("{key}: ")) => {
                error.message().to_string()
            }
            Some(key) => format!("config: `{key}`: {}", error.message()),
            None => format!("config: {}", error.message()),
        },
    )?;
    // Unset, the WeChat bound follows the worker count, so that setting `workers` alone never
    // makes the configuration invalid.
    let bound_given = table.get("wechat").and_then(|wechat| wechat.get("max_in_flight")).is_some();
    if !bound_given {
        config.wechat.max_in_flight = default_max_in_flight(config.workers);
    }
    for (name, app) in &mut config.apps {
        if app.prefix.is_empty() {
            app.prefix = format!("/{name}/wx_auth/");
        }
        if app.audience.is_empty() {
            app.audience = name.clone();
        }
    }
    validate(&config)?;
    Ok(config)
}

/// A TOML syntax error as the operator fixes it: the file, the line and column (counted from 1,
/// in characters), and what is wrong there. The parser's own words fit most mistakes ("missing
/// value for key", "unclosed table"); the commonest, an unquoted word as a value (`level =
/// info`), it describes as a failed number or boolean (`invalid float, expected inf`), so that one
/// is said plainly instead.
fn syntax_error(source: &str, text: &str, error: &toml::de::Error) -> String {
    let Some(span) = error.span() else {
        return format!("{source}: {}", error.message());
    };
    let start = span.start.min(text.len());
    let (before, after) = text.split_at(start);
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    let word: String =
        after.chars().take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.')).collect();
    let key = before[line_start..].trim_end().strip_suffix('=').map(str::trim);
    let rest_of_line = after.split('\n').next().unwrap_or("").trim_start();
    let plainly = match key {
        Some(key)
            if !key.is_empty() && (rest_of_line.is_empty() || rest_of_line.starts_with('#')) =>
        {
            format!("`{key} =` has no value")
        }
        Some(key)
            if !key.is_empty()
                && word.starts_with(|c: char| c.is_alphabetic())
                && !["true", "false", "inf", "nan"].contains(&word.as_str()) =>
        {
            format!(
                "`{word}` is not a value: text goes in double quotes, as in {key} = \"{word}\" \
                 (a value is quoted text, a number, true or false, a date, [an array] or {{a table}})"
            )
        }
        _ => error.message().to_string(),
    };
    format!("{source}: line {line}, column {column}: {plainly}")
}

/// `listen`: an IP address and port, parsed once here (a host name is refused: which address
/// it names could change between starts).
fn listen_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    parsed(&text, || format!("listen: `{text}` is not an address like 127.0.0.1:8000"))
}

fn fake_listen_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    parsed(&text, || format!("demo.fake_listen: `{text}` is not an address"))
}

fn proxy_addresses<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpAddr>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| parsed(text, || format!("trusted_proxies: `{text}` is not an IP address")))
        .collect()
}

/// `text` as a `T`, or the error users see for the key, which names the key itself.
fn parsed<T: std::str::FromStr, E: serde::de::Error>(
    text: &str,
    message: impl FnOnce() -> String,
) -> Result<T, E> {
    text.parse().map_err(|_| E::custom(message()))
}

/// Three quarters of the workers may wait on WeChat at once (12 of the default 16); the rest always
/// serve the requests that need no WeChat call.
const fn default_max_in_flight(workers: usize) -> usize {
    if workers * 3 / 4 >= 1 { workers * 3 / 4 } else { 1 }
}

/// Rejects keys the defaults do not have, naming them (serde would too, but without the section).
fn check_keys(table: &toml::Table, defaults: &toml::Table, section: &str) -> Result<(), String> {
    for (key, value) in table {
        let name = if section.is_empty() { key.clone() } else { format!("{section}.{key}") };
        match (defaults.get(key), value) {
            (Some(_), toml::Value::Table(apps)) if name == "apps" => {
                let app_defaults = toml::Table::try_from(AppConfig::default())
                    .map_err(|error| format!("config defaults: {error}"))?;
                for (app, section) in apps {
                    let name = format!("apps.{app}");
                    match section {
                        toml::Value::Table(section) => check_keys(section, &app_defaults, &name)?,
                        _ => return Err(format!("config: `{name}` must be a table ([{name}])")),
                    }
                }
            }
            (None, _) => return Err(format!("config: unknown key `{name}`")),
            (Some(toml::Value::Table(inner_defaults)), toml::Value::Table(inner)) => {
                check_keys(inner, inner_defaults, &name)?
            }
            (Some(toml::Value::Table(_)), _) => {
                return Err(format!("config: `{name}` must be a table ([{name}])"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The key whose value does not fit its type: each key is tried alone on top of the defaults.
/// (A `toml::Value` carries no positions, so serde's own error cannot name it.)
fn blame(table: &toml::Table) -> Option<String> {
    let fits = |alone: toml::Table| toml::Value::Table(alone).try_into::<Config>().is_ok();
    for (key, value) in table {
        match value {
            toml::Value::Table(section) => {
                for (inner_key, inner_value) in section {
                    let inner = toml::Table::from_iter([(inner_key.clone(), inner_value.clone())]);
                    let alone = toml::Table::from_iter([(key.clone(), toml::Value::Table(inner))]);
                    if !fits(alone) {
                        return Some(format!("{key}.{inner_key}"));
                    }
                }
            }
            _ => {
                if !fits(toml::Table::from_iter([(key.clone(), value.clone())])) {
                    return Some(key.clone());
                }
            }
        }
    }
    None
}

/// The environment variable for a key path: `WXAUTH_` + parts joined by `_`, upper case.
pub(crate) fn env_name(path: &[&str]) -> String {
    format!("WXAUTH_{}", path.join("_").to_uppercase())
}

/// Variables that name something other than a config key.
const OTHER_VARIABLES: &[&str] = &["WXAUTH_CONFIG"];

fn apply_environment(
    table: &mut toml::Table,
    defaults: &toml::Table,
    environment: &BTreeMap<String, String>,
) -> Result<(), String> {
    let mut known = Vec::new();
    for (key, default) in defaults {
        match default {
            toml::Value::Table(section_defaults) => {
                for (inner_key, inner_default) in section_defaults {
                    let name = env_name(&[key, inner_key]);
                    if let Some(text) = environment.get(&name) {
                        let value = env_value(&name, text, inner_default)?;
                        let section = table
                            .entry(key.clone())
                            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                        if let toml::Value::Table(section) = section {
                            section.insert(inner_key.clone(), value);
                        }
                    }
                    known.push(name);
                }
            }
            _ => {
                let name = env_name(&[key]);
                if let Some(text) = environment.get(&name) {
                    table.insert(key.clone(), env_value(&name, text, default)?);
                }
                known.push(name);
            }
        }
    }
    for (name, text) in environment {
        let Some((app, key)) = app_variable(name) else {
            continue;
        };
        let apps = table.entry("apps").or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(apps) = apps {
            let section = apps.entry(app).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(section) = section {
                section.insert(key.to_string(), toml::Value::String(text.clone()));
            }
        }
        known.push(name.clone());
    }
    for name in environment.keys() {
        if !known.contains(name) && !OTHER_VARIABLES.contains(&name.as_str()) {
            return Err(format!("environment: unknown variable {name}"));
        }
    }
    Ok(())
}

/// The app and key a `WXAUTH_APPS_NAME_KEY` variable names: KEY is one of `APP_KEYS` (matched at
/// the end, as NAME may hold `_`), NAME is read in lower case and checked by `validate`.
fn app_variable(name: &str) -> Option<(String, &'static str)> {
    let rest = name.strip_prefix("WXAUTH_APPS_")?;
    APP_KEYS.into_iter().find_map(|key| {
        let app = rest.strip_suffix(key.to_uppercase().as_str())?.strip_suffix('_')?;
        (!app.is_empty()).then(|| (app.to_lowercase(), key))
    })
}

/// Reads an environment variable as the type of the key's default.
fn env_value(name: &str, value: &str, default: &toml::Value) -> Result<toml::Value, String> {
    // Strings are taken as they are (a secret is its exact bytes); numbers, switches and lists
    // forgive the stray space or newline of a hand-written environment file.
    let text = value.trim();
    Ok(match default {
        toml::Value::Boolean(_) => match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
            _ => return Err(format!("environment: {name} must be true or false")),
        },
        toml::Value::Integer(_) => toml::Value::Integer(
            text.parse().map_err(|_| format!("environment: {name} must be a whole number"))?,
        ),
        toml::Value::Array(_) => toml::Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| toml::Value::String(item.into()))
                .collect(),
        ),
        _ => toml::Value::String(value.into()),
    })
}

/// A prefix the router can match: a path that starts and ends with `/`, without a query,
/// fragment or space.
fn check_prefix(key: &str, prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.contains(['?', '#', ' ']) {
        return Err(format!(
            "{key}: `{prefix}` must start and end with `/` and hold no `?`, `#` or space"
        ));
    }
    Ok(())
}

fn validate(config: &Config) -> Result<(), String> {
    if config.database.trim().is_empty() {
        return Err("database: must name a file".into());
    }
    if !(2..=256).contains(&config.workers) {
        return Err("workers: must be between 2 and 256".into());
    }
    check_prefix("prefix", &config.prefix)?;
    if config.openid_login == OpenidLogin::SessionKey && !config.expose_session_key {
        return Err(
            "openid_login: \"session_key\" needs expose_session_key = true (clients cannot send a key they never get)"
                .into(),
        );
    }
    if config.openid_login_window == 0 {
        return Err("openid_login_window: must be at least 1 second".into());
    }
    // Each open connection may hold a body this large in memory while it is read.
    if !(1024..=Config::MOST_BODY_BYTES).contains(&config.max_body_bytes) {
        return Err(format!(
            "max_body_bytes: must be between 1024 and {}",
            Config::MOST_BODY_BYTES
        ));
    }
    if config.request_timeout_ms < 100 || config.idle_timeout_ms < 100 {
        return Err("request_timeout_ms and idle_timeout_ms: must be at least 100".into());
    }
    if config.max_connections > Config::MOST_CONNECTIONS {
        return Err(format!(
            "max_connections: must be at most {} (0: sized from the open-file limit)",
            Config::MOST_CONNECTIONS
        ));
    }
    let wechat = &config.wechat;
    if wechat.appid.is_empty() != wechat.secret.is_empty() {
        return Err(
            "wechat: set both appid and secret (or neither, for demo mode with the fake WeChat)"
                .into(),
        );
    }
    if !wechat.base_url.starts_with("http://") && !wechat.base_url.starts_with("https://") {
        return Err("wechat.base_url: must start with http:// or https://".into());
    }
    if wechat.connect_timeout_ms == 0 || wechat.timeout_ms == 0 {
        return Err("wechat: timeouts must be at least 1 ms".into());
    }
    if wechat.max_in_flight == 0 || wechat.max_in_flight >= config.workers {
        // WeChat calls run on worker threads: a bound below the worker count keeps workers free
        // for the requests that need no WeChat call, however stuck WeChat is.
        return Err(format!(
            "wechat.max_in_flight: must be at least 1 and less than workers ({})",
            config.workers
        ));
    }
    if config.demo.page && !config.demo_mode() && !on_loopback(&wechat.base_url) {
        // The page's helpers ask `base_url` for codes and phone data as only the fake gives them.
        return Err(format!(
            "demo.page: the demo page plays against a fake WeChat, so with an appid and secret it \
             needs wechat.base_url on loopback (like `wxauth fake-wechat`'s http://127.0.0.1:9100), \
             not `{}`; or leave appid and secret empty for demo mode",
            wechat.base_url
        ));
    }
    let jwt = &config.jwt;
    if !jwt.secret.is_empty() && jwt.secret.len() < MIN_JWT_SECRET_BYTES {
        return Err(format!(
            "jwt.secret: must be at least {MIN_JWT_SECRET_BYTES} bytes (it is {}); generate one with \
             `openssl rand -hex 32`, or leave it empty to have wxauth generate and keep one",
            jwt.secret.len()
        ));
    }
    for (index, previous) in jwt.previous_secrets.iter().enumerate() {
        // Named by position: the value itself must not reach an error message.
        if previous.len() < MIN_JWT_SECRET_BYTES {
            return Err(format!(
                "jwt.previous_secrets[{index}]: must be at least {MIN_JWT_SECRET_BYTES} bytes (it is {}), \
                 like jwt.secret: list the secrets tokens were signed with before",
                previous.len()
            ));
        }
    }
    if jwt.issuer.is_empty() || jwt.audience.is_empty() {
        return Err("jwt: issuer and audience must not be empty".into());
    }
    if jwt.lifetime == 0 {
        return Err("jwt.lifetime: must be at least 1 second".into());
    }
    if config.rate_limit.enabled
        && (config.rate_limit.burst == 0 || config.rate_limit.per_second == 0)
    {
        return Err("rate_limit: burst and per_second must be at least 1 when enabled".into());
    }
    validate_apps(config)
}

/// The `[apps.NAME]` sections: names, credentials as demo mode has them, and prefixes, appids and
/// audiences that tell the apps apart (a path, an identity and a token each name one app).
fn validate_apps(config: &Config) -> Result<(), String> {
    if config.apps.len() > MOST_APPS {
        return Err(format!("apps: at most {MOST_APPS} [apps.NAME] sections"));
    }
    let mut prefixes = vec![(String::from("prefix"), config.prefix.as_str())];
    let mut audiences = vec![(String::from("jwt.audience"), config.jwt.audience.as_str())];
    let mut appids = vec![(String::from("wechat.appid"), config.wechat.appid.as_str())];
    for (name, app) in &config.apps {
        let good_name = !name.is_empty()
            && name
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_');
        if !good_name || name == DEFAULT_APP {
            return Err(format!(
                "apps.{name}: NAME must be lower-case letters, digits and `_`, and not `{DEFAULT_APP}`"
            ));
        }
        check_prefix(&format!("apps.{name}.prefix"), &app.prefix)?;
        if config.demo_mode() && !(app.appid.is_empty() && app.secret.is_empty()) {
            return Err(format!(
                "apps.{name}: in demo mode (no [wechat] appid and secret) every app plays against \
                 the fake WeChat: leave its appid and secret empty, or configure [wechat] too"
            ));
        }
        if !config.demo_mode() && (app.appid.is_empty() || app.secret.is_empty()) {
            return Err(format!("apps.{name}: set both appid and secret"));
        }
        prefixes.push((format!("apps.{name}.prefix"), &app.prefix));
        audiences.push((format!("apps.{name}.audience"), &app.audience));
        if !app.appid.is_empty() {
            appids.push((format!("apps.{name}.appid"), &app.appid));
        }
    }
    for (index, (key, prefix)) in prefixes.iter().enumerate() {
        for (other_key, other) in &prefixes[index + 1..] {
            if prefix.starts_with(other) || other.starts_with(prefix) {
                return Err(format!(
                    "{other_key}: `{other}` overlaps {key} `{prefix}`: a path must name one app"
                ));
            }
        }
    }
    for (what, list) in [("audience", &audiences), ("appid", &appids)] {
        for (index, (key, value)) in list.iter().enumerate() {
            if let Some((other_key, _)) = list[index + 1..].iter().find(|(_, other)| other == value)
            {
                return Err(format!(
                    "{other_key}: the same {what} as {key}: each app needs its own"
                ));
            }
        }
    }
    Ok(())
}

/// Whether a URL's host is a loopback address (or `localhost`).
pub(crate) fn on_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
    }

    #[test]
    fn empty_file_gives_defaults_in_demo_mode() {
        let config = parse("", &env(&[])).unwrap();
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 8000)));
        assert_eq!(config.prefix, "/miniprog/wx_auth/");
        assert_eq!(config.openid_login, OpenidLogin::RecentCode);
        assert!(config.rate_limit.enabled);
        assert!(config.demo_mode());
    }

    #[test]
    fn connections_are_sized_from_the_open_file_limit_unless_set() {
        let config = parse("workers = 4", &env(&[])).unwrap();
        // 1024 descriptors, 80 kept for files: 472 connections of two each.
        assert_eq!(config.connections_for(1024), 472);
        assert_eq!(config.connections_for(1 << 20), Config::DEFAULT_MOST_CONNECTIONS);
        assert_eq!(config.connections_for(50), 16);
        let set = parse("", &env(&[("WXAUTH_MAX_CONNECTIONS", "300")])).unwrap();
        assert_eq!(set.connections_for(1024), 300);
        assert!(parse("max_connections = 1000000", &env(&[])).is_err());
        assert!(parse("max_body_bytes = 1000000000", &env(&[])).is_err());
        assert!(parse("max_body_bytes = 16777216", &env(&[])).is_ok());
    }

    #[test]
    fn the_reference_config_in_the_repo_parses() {
        let text = include_str!("../wxauth.toml");
        let config = parse(text, &env(&[])).unwrap();
        assert!(config.demo_mode());
    }

    #[test]
    fn the_wechat_bound_follows_the_workers_unless_set() {
        assert_eq!(parse("", &env(&[])).unwrap().wechat.max_in_flight, 12);
        assert_eq!(parse("workers = 8", &env(&[])).unwrap().wechat.max_in_flight, 6);
        assert_eq!(parse("workers = 2", &env(&[])).unwrap().wechat.max_in_flight, 1);
        let given = parse("workers = 8\n[wechat]\nmax_in_flight = 3", &env(&[])).unwrap();
        assert_eq!(given.wechat.max_in_flight, 3);
        let from_env = parse("", &env(&[("WXAUTH_WECHAT_MAX_IN_FLIGHT", "5")])).unwrap();
        assert_eq!(from_env.wechat.max_in_flight, 5);
        assert!(parse("workers = 8\n[wechat]\nmax_in_flight = 8", &env(&[])).is_err());
    }

    #[test]
    fn file_values_are_read() {
        let text = r#"
            listen = "0.0.0.0:9000"
            openid_login = "session_key"
            expose_session_key = true
            [wechat]
            appid = "wx123"
            secret = "s3cr3t"
            [jwt]
            lifetime = 3600
        "#;
        let config = parse(text, &env(&[])).unwrap();
        assert_eq!(config.listen, SocketAddr::from(([0, 0, 0, 0], 9000)));
        assert_eq!(config.openid_login, OpenidLogin::SessionKey);
        assert_eq!(config.jwt.lifetime, 3600);
        assert!(!config.demo_mode());
    }

    #[test]
    fn environment_overrides_the_file() {
        let text =
            "workers = 2\n[wechat]\nappid = \"wxfile\"\nsecret = \"file\"\nmax_in_flight = 1\n";
        let config = parse(
            text,
            &env(&[
                ("WXAUTH_WORKERS", "3"),
                ("WXAUTH_WECHAT_APPID", "wxenv"),
                ("WXAUTH_RATE_LIMIT_ENABLED", "false"),
                ("WXAUTH_TRUSTED_PROXIES", "127.0.0.1, ::1"),
                ("WXAUTH_OPENID_LOGIN", "off"),
                ("WXAUTH_EXPOSE_SESSION_KEY", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(config.workers, 3);
        assert_eq!(config.wechat.appid, "wxenv");
        assert_eq!(config.wechat.secret, "file");
        assert!(!config.rate_limit.enabled);
        let proxies: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(config.trusted_proxies, proxies);
        assert_eq!(config.openid_login, OpenidLogin::Off);
        assert!(config.expose_session_key);
    }

    #[test]
    fn log_settings_come_from_the_file_or_the_environment() {
        let config = parse("[log]\nlevel = \"warn\"\naccess = false\n", &env(&[])).unwrap();
        assert_eq!(config.log.level, LogLevel::Warn);
        assert_eq!(config.log.format, LogFormat::Plain);
        assert!(!config.log.access);
        let config = parse(
            "[log]\nlevel = \"warn\"\n",
            &env(&[("WXAUTH_LOG_LEVEL", "debug"), ("WXAUTH_LOG_FORMAT", "json")]),
        )
        .unwrap();
        assert_eq!(config.log.level, LogLevel::Debug);
        assert_eq!(config.log.format, LogFormat::Json);
        let error = parse("", &env(&[("WXAUTH_LOG_LEVEL", "verbose")])).unwrap_err().to_string();
        assert!(error.contains("log.level"), "{error}");
        assert!(LogLevel::Debug < LogLevel::Info && LogLevel::Warn < LogLevel::Error);
    }

    /// Regression: a syntax error named no line or column, and an unquoted word was "invalid
    /// float, expected `inf`".
    #[test]
    fn syntax_errors_name_the_file_line_and_column_in_plain_words() {
        let check = |text: &str| parse_and_check("/etc/wxauth.toml", text, &env(&[])).unwrap_err();
        assert_eq!(
            check("workers = 4\n[log]\nlevel = info\n"),
            "/etc/wxauth.toml: line 3, column 9: `info` is not a value: text goes in double quotes, \
             as in level = \"info\" (a value is quoted text, a number, true or false, a date, \
             [an array] or {a table})"
        );
        let unquoted = check("# 配置\nprefix = /api/\n");
        assert!(unquoted.starts_with("/etc/wxauth.toml: line 2, column 10: "), "{unquoted}");
        let unquoted = check("[wechat]\nappid = wx0123\n");
        assert!(
            unquoted.starts_with("/etc/wxauth.toml: line 2, column 9: `wx0123` is not a value"),
            "{unquoted}"
        );
        assert_eq!(
            check("workers = 4\n[log\n"),
            "/etc/wxauth.toml: line 2, column 5: unclosed table, expected `]`"
        );
        assert_eq!(
            check("listen =\n"),
            "/etc/wxauth.toml: line 1, column 9: `listen =` has no value"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let error = parse("lsten = \"x\"", &env(&[])).unwrap_err().to_string();
        assert!(error.contains("`lsten`"), "{error}");
        let error = parse("[wechat]\nappid_ = \"x\"", &env(&[])).unwrap_err().to_string();
        assert!(error.contains("`wechat.appid_`"), "{error}");
        let error = parse("", &env(&[("WXAUTH_WECHAT_APID", "x")])).unwrap_err().to_string();
        assert!(error.contains("WXAUTH_WECHAT_APID"), "{error}");
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        for (text, key) in [
            ("listen = \"nowhere\"", "listen"),
            ("workers = 0", "workers"),
            ("prefix = \"api\"", "prefix"),
            ("openid_login = \"sometimes\"", "openid_login"),
            ("trusted_proxies = [\"proxy\"]", "trusted_proxies"),
            ("[wechat]\nappid = \"wx1\"", "wechat"),
            ("[wechat]\nbase_url = \"ftp://x\"", "wechat.base_url"),
            ("[jwt]\nsecret = \"short\"", "jwt.secret"),
        ] {
            let error = parse(text, &env(&[])).unwrap_err().to_string();
            assert!(error.contains(key), "{text}: {error}");
        }
        let error = parse("workers = \"many\"", &env(&[])).unwrap_err().to_string();
        assert!(error.contains("`workers`"), "{error}");
        let error = parse("[jwt]\nleeway = -1", &env(&[])).unwrap_err().to_string();
        assert!(error.contains("`jwt.leeway`"), "{error}");
        let error = parse("", &env(&[("WXAUTH_WORKERS", "many")])).unwrap_err().to_string();
        assert!(error.contains("WXAUTH_WORKERS"), "{error}");
    }

    #[test]
    fn addresses_are_typed_at_load_and_a_bad_one_is_named_as_before() {
        let text = "listen = \"[::1]:0\"\ntrusted_proxies = [\"10.0.0.1\", \"::1\"]\n";
        let config = parse(text, &env(&[("WXAUTH_DEMO_FAKE_LISTEN", "127.0.0.1:9999")])).unwrap();
        assert!(config.listen.ip().is_loopback() && config.listen.port() == 0);
        assert_eq!(
            config.trusted_proxies,
            [IpAddr::from([10, 0, 0, 1]), IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1])]
        );
        assert_eq!(config.demo.fake_listen, SocketAddr::from(([127, 0, 0, 1], 9999)));
        // The file's form, for `check-config`, is what was written.
        let shown = format!("{config:?}");
        assert!(shown.contains(r#"listen = "[::1]:0""#), "{shown}");
        assert!(shown.contains(r#"trusted_proxies = ["10.0.0.1", "::1"]"#), "{shown}");
        for (text, variables, expected) in [
            (
                "listen = \"nowhere\"",
                &[][..],
                "listen: `nowhere` is not an address like 127.0.0.1:8000",
            ),
            (
                "",
                &[("WXAUTH_LISTEN", "localhost:8000")][..],
                "listen: `localhost:8000` is not an address like 127.0.0.1:8000",
            ),
            (
                "trusted_proxies = [\"::1\", \"proxy\"]",
                &[],
                "trusted_proxies: `proxy` is not an IP address",
            ),
            (
                "",
                &[("WXAUTH_TRUSTED_PROXIES", "10.0.0.0/8")],
                "trusted_proxies: `10.0.0.0/8` is not an IP address",
            ),
            ("[demo]\nfake_listen = \"x\"", &[], "demo.fake_listen: `x` is not an address"),
            (
                "listen = 8000",
                &[],
                "config: `listen`: invalid type: integer `8000`, expected a string",
            ),
        ] {
            assert_eq!(
                parse(text, &env(variables)).unwrap_err().to_string(),
                expected,
                "{text} {variables:?}"
            );
        }
    }

    #[test]
    fn previous_jwt_secrets_come_from_the_file_or_the_environment_and_are_checked() {
        let old = "old-secret-0123456789abcdef0123456789";
        let older = "older-secret-0123456789abcdef012345678";
        let text = format!("[jwt]\nprevious_secrets = [\"{old}\", \"{older}\"]\n");
        let config = parse(&text, &env(&[])).unwrap();
        assert_eq!(config.jwt.previous_secrets, vec![old, older]);
        assert!(parse("", &env(&[])).unwrap().jwt.previous_secrets.is_empty());
        // The environment is a comma-separated list, items trimmed; it replaces the file's.
        let listed = format!(" {older} ,{old}\n");
        let config = parse(&text, &env(&[("WXAUTH_JWT_PREVIOUS_SECRETS", &listed)])).unwrap();
        assert_eq!(config.jwt.previous_secrets, vec![older, old]);
        let config = parse(&text, &env(&[("WXAUTH_JWT_PREVIOUS_SECRETS", "")])).unwrap();
        assert!(config.jwt.previous_secrets.is_empty());
        // Each must be as long as a secret; the error names the position, never the value.
        let error =
            parse("", &env(&[("WXAUTH_JWT_PREVIOUS_SECRETS", &format!("{old},short-old-value"))]))
                .unwrap_err()
                .to_string();
        assert!(error.contains("jwt.previous_secrets[1]"), "{error}");
        assert!(!error.contains("short-old-value") && !error.contains(old), "{error}");
        let error =
            parse("[jwt]\nprevious_secrets = \"one\"\n", &env(&[])).unwrap_err().to_string();
        assert!(error.contains("jwt.previous_secrets"), "{error}");
    }

    #[test]
    fn the_demo_page_outside_demo_mode_needs_a_fake_on_loopback() {
        let configured = [("WXAUTH_WECHAT_APPID", "wx1"), ("WXAUTH_WECHAT_SECRET", "s")];
        assert!(parse("", &env(&[])).unwrap().demo_page(), "demo mode serves it");
        assert!(!parse("", &env(&configured)).unwrap().demo_page(), "off unless asked");
        let text = "[demo]\npage = true\n";
        let error = parse(text, &env(&configured)).unwrap_err().to_string();
        assert!(error.starts_with("demo.page: "), "{error}");
        assert!(error.contains("https://api.weixin.qq.com"), "{error}");
        for base_url in [
            "http://127.0.0.1:9100",
            "http://localhost:9100/",
            "http://[::1]:9100",
            "http://127.5.0.1",
        ] {
            let variables = [configured[0], configured[1], ("WXAUTH_WECHAT_BASE_URL", base_url)];
            let config = parse(text, &env(&variables)).unwrap();
            assert!(config.demo_page(), "{base_url}");
        }
        for base_url in ["http://10.0.0.1:9100", "http://127.0.0.1.example.com", "http://[::2]:1"] {
            let variables = [
                configured[0],
                configured[1],
                ("WXAUTH_WECHAT_BASE_URL", base_url),
                ("WXAUTH_DEMO_PAGE", "true"),
            ];
            assert!(parse("", &env(&variables)).is_err(), "{base_url}");
        }
    }

    #[test]
    fn short_jwt_secret_says_how_to_make_one() {
        let error = parse("", &env(&[("WXAUTH_JWT_SECRET", "tooshort")])).unwrap_err().to_string();
        assert!(error.contains("openssl rand"), "{error}");
        assert!(!error.contains("tooshort"), "the secret itself must not be echoed: {error}");
    }

    #[test]
    fn debug_redacts_secrets() {
        let config = parse(
            "",
            &env(&[
                ("WXAUTH_WECHAT_APPID", "wxvisible"),
                ("WXAUTH_WECHAT_SECRET", "appsecret-value"),
                ("WXAUTH_JWT_SECRET", "jwt-secret-value-that-is-long-enough-0123"),
                (
                    "WXAUTH_JWT_PREVIOUS_SECRETS",
                    "old-jwt-secret-one-long-enough-0123456,old-jwt-secret-two-long-enough-0123456",
                ),
            ]),
        )
        .unwrap();
        let shown = format!("{config:?} {:?} {:?}", config.wechat, config.jwt);
        assert!(shown.contains("wxvisible"));
        assert!(!shown.contains("appsecret-value"), "{shown}");
        assert!(!shown.contains("jwt-secret-value"), "{shown}");
        assert!(!shown.contains("old-jwt-secret"), "{shown}");
        assert!(
            shown.contains(r#"previous_secrets = ["<redacted>", "<redacted>"]"#),
            "each previous secret is redacted: {shown}"
        );
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn every_secret_like_key_is_listed_as_secret() {
        let secret_like = |name: &str| {
            ["secret", "password", "token", "private"].iter().any(|word| name.contains(word))
        };
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (path, _) in leaves(&defaults) {
            if secret_like(path.rsplit('.').next().unwrap_or_default()) {
                assert!(SECRET_KEYS.contains(&path.as_str()), "add `{path}` to SECRET_KEYS");
            }
        }
        // An `[apps.NAME]` section's keys, which the defaults (no apps) do not have.
        for key in toml::Table::try_from(AppConfig::default()).unwrap().keys() {
            if secret_like(key) {
                assert!(APP_SECRET_KEYS.contains(&key.as_str()), "add `{key}` to APP_SECRET_KEYS");
            }
        }
    }

    /// `WXAUTH_APPS_NAME_KEY` knows every key of an app section (`APP_KEYS`, a list of its own
    /// because the variable's KEY is matched at its end).
    #[test]
    fn app_keys_are_exactly_an_app_sections_keys() {
        let keys: Vec<String> =
            toml::Table::try_from(AppConfig::default()).unwrap().keys().cloned().collect();
        let mut listed: Vec<&str> = APP_KEYS.to_vec();
        listed.sort();
        assert_eq!(keys, listed);
    }

    #[test]
    fn a_list_of_secrets_is_redacted_element_by_element() {
        let mut table: toml::Table =
            toml::from_str("[jwt]\nsecret = [\"old-one\", \"\", \"old-two\"]\nissuer = \"me\"\n")
                .unwrap();
        redact_keys(&mut table, &["jwt.secret", "no_such.key", "absent"]);
        let text = toml::to_string(&table).unwrap();
        assert!(text.contains(r#"secret = ["<redacted>", "", "<redacted>"]"#), "{text}");
        assert!(text.contains(r#"issuer = "me""#), "{text}");
    }

    #[test]
    fn apps_come_from_the_file_and_the_environment_with_their_defaults() {
        let text = "[wechat]\nappid = \"wxmain\"\nsecret = \"s\"\n\
                    [apps.shop]\nappid = \"wxshop\"\nsecret = \"shop-secret\"\n";
        let config = parse(
            text,
            &env(&[
                ("WXAUTH_APPS_SHOP_AUDIENCE", "shop-tokens"),
                ("WXAUTH_APPS_STAFF_APP_APPID", "wxstaff"),
                ("WXAUTH_APPS_STAFF_APP_SECRET", "staff-secret"),
                ("WXAUTH_APPS_STAFF_APP_PREFIX", "/staff/"),
            ]),
        )
        .unwrap();
        let names: Vec<&str> = config.apps.keys().map(String::as_str).collect();
        assert_eq!(names, ["shop", "staff_app"]);
        let shop = &config.apps["shop"];
        assert_eq!((shop.appid.as_str(), shop.secret.as_str()), ("wxshop", "shop-secret"));
        assert_eq!(
            (shop.prefix.as_str(), shop.audience.as_str()),
            ("/shop/wx_auth/", "shop-tokens")
        );
        let staff = &config.apps["staff_app"];
        assert_eq!((staff.prefix.as_str(), staff.audience.as_str()), ("/staff/", "staff_app"));
        assert!(parse("", &env(&[])).unwrap().apps.is_empty(), "one app unless configured");

        // Demo mode: apps without credentials, each with a demo appid of its own.
        let demo = parse("[apps.shop]\n", &env(&[])).unwrap();
        assert!(demo.demo_mode());
        assert_eq!(Config::demo_appid("shop"), "wxdemo_shop");
        assert_eq!(Config::demo_appid(DEFAULT_APP), DEMO_APPID);
        assert_eq!(demo.apps["shop"].prefix, "/shop/wx_auth/");

        let error = parse("[apps.shop]\nappid = \"wx1\"\nsecret = \"s\"\n", &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("apps.shop: in demo mode"), "{error}");
        let error = parse("[wechat]\nappid = \"wx1\"\nsecret = \"s\"\n[apps.shop]\n", &env(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(error, "apps.shop: set both appid and secret");
        let error = parse("[apps.shop]\nappsecret = \"x\"\n", &env(&[])).unwrap_err().to_string();
        assert!(error.contains("`apps.shop.appsecret`"), "{error}");
        let error =
            parse("", &env(&[("WXAUTH_APPS_SHOP_APPSECRET", "x")])).unwrap_err().to_string();
        assert!(error.contains("WXAUTH_APPS_SHOP_APPSECRET"), "{error}");
    }

    #[test]
    fn apps_need_names_prefixes_audiences_and_appids_of_their_own() {
        for (text, expected) in [
            ("[apps.Shop]\n", "apps.Shop: NAME must be"),
            ("[apps.default]\n", "apps.default: NAME must be"),
            ("[apps.shop]\nprefix = \"shop\"\n", "apps.shop.prefix: `shop` must start"),
            (
                "[apps.shop]\nprefix = \"/miniprog/\"\n",
                "apps.shop.prefix: `/miniprog/` overlaps prefix",
            ),
            (
                "[apps.shop]\nprefix = \"/miniprog/wx_auth/shop/\"\n",
                "apps.shop.prefix: `/miniprog/wx_auth/shop/` overlaps prefix",
            ),
            (
                "[apps.a]\nprefix = \"/x/\"\n[apps.b]\nprefix = \"/x/\"\n",
                "apps.b.prefix: `/x/` overlaps apps.a.prefix",
            ),
            (
                "[apps.shop]\naudience = \"miniprog\"\n",
                "apps.shop.audience: the same audience as jwt.audience",
            ),
            (
                "[apps.a]\naudience = \"b\"\n[apps.b]\n",
                "apps.b.audience: the same audience as apps.a.audience",
            ),
        ] {
            let error = parse(text, &env(&[])).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{text}: {error}");
        }
        let configured = "[wechat]\nappid = \"wx1\"\nsecret = \"s\"\n\
                          [apps.shop]\nappid = \"wx1\"\nsecret = \"t\"\n";
        let error = parse(configured, &env(&[])).unwrap_err().to_string();
        assert_eq!(
            error,
            "apps.shop.appid: the same appid as wechat.appid: each app needs its own"
        );
        let many: String = (0..=MOST_APPS).map(|index| format!("[apps.a{index}]\n")).collect();
        assert!(parse(&many, &env(&[])).unwrap_err().to_string().starts_with("apps: at most"));
    }

    #[test]
    fn app_secrets_are_redacted_and_apps_take_a_restart() {
        let text = "[wechat]\nappid = \"wxmain\"\nsecret = \"main-secret-value\"\n\
                    [apps.shop]\nappid = \"wxshop\"\nsecret = \"shop-secret-value\"\n";
        let config = parse(text, &env(&[])).unwrap();
        let shown = format!("{config:?}");
        assert!(
            shown.contains("[apps.shop]\nappid = \"wxshop\"\nsecret = \"<redacted>\""),
            "{shown}"
        );
        assert!(
            !shown.contains("shop-secret-value") && !shown.contains("main-secret-value"),
            "{shown}"
        );
        let loaded = parse(&text.replace("wxshop", "wxshop2"), &env(&[])).unwrap();
        let reloaded = config.reloaded(&loaded).unwrap();
        assert_eq!(reloaded.need_restart, ["apps.shop"]);
        assert_eq!(reloaded.config.apps["shop"].appid, "wxshop");
        // An app taken out of the file is served until a restart, and the reload says so.
        let (without, _) = text.split_once("[apps.shop]").unwrap();
        let loaded = parse(without, &env(&[])).unwrap();
        let reloaded = config.reloaded(&loaded).unwrap();
        assert_eq!(reloaded.need_restart, ["apps.shop"]);
        assert_eq!(reloaded.config.apps["shop"].appid, "wxshop");
    }

    #[test]
    fn a_reload_applies_the_reloadable_keys_and_names_the_others() {
        let running = parse("openid_login = \"open\"\n", &env(&[])).unwrap();
        let text = "openid_login = \"off\"\nlisten = \"127.0.0.1:9\"\n[rate_limit]\nburst = 5\n\
                    [log]\nformat = \"json\"\n[wechat]\ntimeout_ms = 9000\n";
        let secret = "a-new-jwt-secret-0123456789abcdef0123";
        let loaded = parse(text, &env(&[("WXAUTH_JWT_SECRET", secret)])).unwrap();
        let reloaded = running.reloaded(&loaded).unwrap();
        assert_eq!(reloaded.applied, ["log.format", "openid_login", "rate_limit.burst"]);
        assert_eq!(reloaded.need_restart, ["jwt.secret", "listen", "wechat.timeout_ms"]);
        let config = reloaded.config;
        assert_eq!(config.openid_login, OpenidLogin::Off);
        assert_eq!(config.rate_limit.burst, 5);
        assert_eq!(config.log.format, LogFormat::Json);
        // What needs a restart keeps its running value.
        assert_eq!(config.listen, running.listen);
        assert_eq!(config.wechat.timeout_ms, 5000);
        assert!(config.jwt.secret.is_empty());

        let same = running.reloaded(&running.clone()).unwrap();
        assert!(same.applied.is_empty() && same.need_restart.is_empty());
    }

    #[test]
    fn the_configuration_docs_mark_exactly_the_reloadable_keys() {
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        let docs = include_str!("../docs/configuration.md");
        let rows: Vec<&str> = docs.lines().filter(|line| line.starts_with("| `")).collect();
        for (key, _) in leaves(&defaults) {
            let row = rows.iter().find(|row| row.starts_with(&format!("| `{key}` |")));
            let row = row.unwrap_or_else(|| panic!("docs/configuration.md lacks `{key}`"));
            let reloadable = RELOADABLE.contains(&key.as_str());
            assert_eq!(row.contains("*reloadable*"), reloadable, "{row}");
        }
        assert!(RELOADABLE.iter().all(|key| leaves(&defaults).any(|(path, _)| path == *key)));
    }
}
