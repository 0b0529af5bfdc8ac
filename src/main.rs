//! wxauth: a WeChat mini-program login server in one binary with one SQLite file.
//!
//! This file owns the command line, start-up and exit codes, and is the only place that prints to
//! stdout or exits: the operator's commands (admin.rs) write to the stdout handed to them here and
//! return their failure for main to report. The first line `serve` prints is
//! `listening on http://HOST:PORT`; in demo mode the next names the fake WeChat; then, whenever the
//! demo page is served, a line names its URL. A start-up or
//! command failure is one line on stderr and exit status 1; a usage error, status 2; a clean stop
//! after SIGTERM or SIGINT, status 0. A command other than `serve` and `fake-wechat` whose output
//! is no longer read (`wxauth --help | head -1`) ends silently, by SIGPIPE.
//!
//! The main thread of `serve` starts everything, then waits for signals: SIGTERM and SIGINT stop
//! the server gracefully, SIGHUP reloads the configuration (`reload`); it reports each step to
//! systemd (systemd.rs). Start-up takes the listening socket before it touches the database, so
//! a start that cannot listen leaves nothing behind.

mod admin;
mod api;
mod codes;
mod config;
mod demo;
mod error;
mod fake_wechat;
mod health;
mod import;
mod jwt;
mod log;
mod metrics;
mod ratelimit;
mod router;
mod server;
mod store;
mod systemd;
mod time;
mod wechat;
mod wxcrypt;

#[cfg(test)]
mod fuzz_replay;

use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::Fatal;

/// The `--config` paragraph every command that reads the configuration shares.
macro_rules! config_option {
    () => {
        "\
--config PATH picks the config file: PATH, else $WXAUTH_CONFIG, else ./wxauth.toml when present,
else the built-in defaults; WXAUTH_* environment variables override it (docs/configuration.md)."
    };
}

const USAGE: &str = concat!(
    "\
wxauth — WeChat mini-program login server

Usage:
  wxauth [serve] [--config PATH]              run the server (the default command)
  wxauth check-config [--config PATH]         validate the configuration, print it with secrets redacted
  wxauth users list [--limit N] [--offset N]  list accounts as a table
  wxauth users show ID|OPENID                 print one account as JSON
  wxauth users find QUERY [--by KIND]         find accounts by phone, openid, unionid or nickname
  wxauth users export --format csv|json       write every account to stdout
  wxauth users set ID|OPENID FIELD=VALUE...   change fields of an account (phone, is_staff, flag…)
  wxauth users revoke ID|OPENID               revoke every token of an account, as logout does
  wxauth users disable ID|OPENID              stop an account logging in or using its tokens
  wxauth users enable ID|OPENID               let a disabled account log in again
  wxauth users delete ID|OPENID               delete an account; its id is never reused
  wxauth users import FILE --format F         load accounts (django dumpdata, csv, json), all or none
  wxauth backup PATH                          copy the live database to a new file, verified
  wxauth restore BACKUP                       put a backup in place of the stopped server's database
  wxauth migrate                              apply pending schema upgrades to the database
  wxauth fake-wechat [--listen ADDR]          run only the fake WeChat (default 127.0.0.1:9100)
  wxauth help [COMMAND]                       this text, or one command's (also COMMAND --help)
  wxauth --version

",
    config_option!(),
    "

With no WeChat appid and secret configured, wxauth runs in demo mode against a built-in fake
WeChat on loopback. Exit status: 0 done, 1 failed (the reason on stderr), 2 usage error."
);

const SERVE_USAGE: &str = concat!(
    "\
Usage: wxauth [serve] [--config PATH]

Runs the server. The first line it prints is `listening on http://HOST:PORT`; the next names the
demo page to open in a browser (`demo page: http://HOST:PORT/`), when it is served: in demo mode,
that line starts by naming the built-in fake WeChat. The database file is created (owner-only) when missing and
upgraded in place when older; an existing one (and its -wal, -shm, -journal) must be a regular
file of the user wxauth runs as, not writable by others and not a link, or wxauth exits 1 saying
how to fix it. SIGTERM or SIGINT stops it gracefully, with exit status 0. SIGHUP reads the
configuration again and applies the keys that can change while it runs (log, rate limits, openid
login policy, …; docs/operations.md); the log says what changed and what needs a restart.
Under systemd it reports readiness (Type=notify) and serves a socket passed by socket
activation (LISTEN_FDS) instead of binding `listen`.

",
    config_option!()
);

const CHECK_CONFIG_USAGE: &str = concat!(
    "\
Usage: wxauth check-config [--config PATH]

Loads and validates the configuration exactly as `serve` would, and prints the effective values
as TOML with every secret shown as \"<redacted>\". An invalid configuration exits 1 with the
reason, naming the key, on stderr. Touches no database.

",
    config_option!()
);

const USERS_USAGE: &str = concat!(
    "\
Usage:
  wxauth users list [--limit N] [--offset N] [--config PATH]
  wxauth users show ID|OPENID [--config PATH]
  wxauth users find QUERY [--by phone|openid|unionid|nickname] [--config PATH]
  wxauth users export --format csv|json [--config PATH]
  wxauth users set ID|OPENID FIELD=VALUE... [--config PATH]
  wxauth users revoke ID|OPENID [--config PATH]
  wxauth users disable ID|OPENID [--config PATH]
  wxauth users enable ID|OPENID [--config PATH]
  wxauth users delete ID|OPENID [--config PATH]
  wxauth users import FILE --format django|csv|json [--dry-run] [--config PATH]

An account is named by its id, or by its openid (a number is tried as an id first).

list    accounts by id as a table (id, openid, phone, registered, date_joined, last_login),
        --limit of them (default 50) after skipping --offset (default 0), then a summary line.
show    one account as JSON with the API's account field names, `disabled_at` when it is
        disabled, and `identities`: every WeChat identity of the account, one per app.
find    the accounts whose phone (normalised as the API stores it), openid or unionid is QUERY,
        or whose wx_nickname contains it, in list's table, then `N accounts found`; --by looks
        at that one only. No match exits 1.
export  every account to stdout, read row by row (any number of accounts): `csv` is a header
        row of the account object's field names, then one row per account (RFC 4180: CRLF,
        fields quoted when they hold a comma, quote or line break; null is empty), where text
        starting with = + - @ tab or CR gets a leading ' so that spreadsheets do not run it as a
        formula (except `phone`: digits with an optional leading +, written as it is); `json` is
        one JSON array with one account object per line, values as the API shows them. Both
        end with wx_appid, token_version, disabled_at and identities: the account's identities
        in other apps (json: [{\"appid\", \"openid\"}]; csv: appid:openid separated by spaces).
set     changes the fields given, each FIELD=VALUE checked as the API checks it, then prints
        the account as show does. Fields: username, phone, is_register, is_staff, is_superuser,
        flag, avatar, avatar_thumb, birthday, address, member_score, credit_score, wx_nickname,
        wx_gender, wx_avatar, wx_country, wx_province, wx_city, love_help_num,
        bring_love_concern_num. Flags take 1/0 (true/false, yes/no); wx_gender 0, 1 or 2;
        birthday yyyy-mm-dd; avatars an http(s) URL; an empty VALUE sets a text field to null.
        An unknown field or a bad value is a usage error, and nothing is written.
revoke  revokes every token issued to the account so far, as `POST logout` does: they are then
        refused with `token_revoked`.
disable revokes the account's tokens and refuses it from then on: its tokens, logins,
        registrations and get_openid_by_code answer `account_disabled` (403).
enable  lets a disabled account log in again; the tokens it had stay revoked.
delete  deletes the account and its recorded WeChat session: its tokens no longer verify, its
        WeChat user gets a new account (a new id) at the next login, and the id is never given
        out again.
import  loads the accounts in FILE, all or none, in one transaction, keeping their ids (new
        accounts then get ids after the largest). --format django reads the original Django
        backend's `python manage.py dumpdata wx_auth.User` (naive times as UTC; password hashes
        and the fields wxauth has no use for are dropped; is_active false imports the account
        disabled); csv and json read what `users export` writes. Every field is checked as the
        API checks it, and export's identities each put back. A row with no openid, a refused
        field or identity, or an id, openid or identity taken (in the database or earlier in the
        file) is refused: every refused row is listed on stdout with
        its line (csv) or element and pk/id (json), the command exits 1, and nothing is written.
        --dry-run checks everything the same way and writes nothing. The file is read row by
        row, so its size does not matter; the write lock is held until the end, so stop the
        server first (docs/operations.md, \"Moving in\").

Session keys are never shown; token versions only by export (with wx_appid, disabled_at and
identities, after the account object's fields), so that an import keeps tokens issued before valid. The database (`database` in the config) must
exist and have the current schema (`wxauth migrate`); list, show, find and export read it without
taking the write lock. The others write, in one transaction each, and work while the server runs
(waiting up to 5 s for its writer); they refuse a database file that is not safely their user's,
as serve does (root may write to the service user's). An unknown account exits 1.

",
    config_option!()
);

const BACKUP_USAGE: &str = concat!(
    "\
Usage: wxauth backup PATH [--config PATH]

Copies the database to PATH with SQLite's online backup: one consistent snapshot, safe while the
server is serving, which it never blocks. PATH must not exist yet (nothing is overwritten), nor
PATH-wal, PATH-shm or PATH-journal (SQLite would read them into the copy), and PATH is created
readable by its owner only, as the copy holds session keys. The copy is opened again and
checked with PRAGMA integrity_check; the command prints the size, each table's row count and
`integrity_check ok`. On any failure it exits 1 and removes the partial copy.

",
    config_option!()
);

const RESTORE_USAGE: &str = concat!(
    "\
Usage: wxauth restore BACKUP [--config PATH]

Puts a copy of BACKUP (a file `wxauth backup` wrote) in the place of the database, with the
server stopped: it refuses while anything has the database open (a running `wxauth serve`). It
checks BACKUP first (a wxauth database of a schema version this wxauth knows, not newer), copies
it beside the database and checks the copy (PRAGMA integrity_check), gives the copy the owner of
the database it replaces (owner-only, mode 0600), keeps that database as
DATABASE.before-restore-YYYYMMDDTHHMMSSZ, and renames the copy into place, so that the database
path always holds one whole database. It prints the copy's size, schema version and row counts,
and where the old database is kept. On any failure it exits 1 and the database is as it was.
An older schema is upgraded by `wxauth migrate` or the next start.

",
    config_option!()
);

const MIGRATE_USAGE: &str = concat!(
    "\
Usage: wxauth migrate [--config PATH]

Applies the schema versions the database lacks (as `serve` does at start) and says which:
`DATABASE: applied schema versions N, M` (`version N` for one), or
`DATABASE: schema is current (version N)`. The database must exist:
migrate never creates one (`serve` does), so a mistyped path fails instead of looking done. It
refuses a database file that is not safely its user's, as serve does (root may migrate the
service user's).

",
    config_option!()
);

const HELP_USAGE: &str = "\
Usage: wxauth help [COMMAND [ACTION]]

Prints the usage of wxauth, or of COMMAND: the text `wxauth COMMAND --help` prints (with an
ACTION, as in `wxauth help users list`, that of its command). An unknown COMMAND is a usage error.";

const FAKE_WECHAT_USAGE: &str = "\
Usage: wxauth fake-wechat [--listen ADDR]

Runs only the offline fake WeChat (default 127.0.0.1:9100), for pointing a configured wxauth or
a client at it; docs/fake-wechat.md lists its demo users and misbehaviour codes. Stops on SIGTERM
or SIGINT.";

/// The usage text of each command, by name.
fn command_usage(command: &str) -> Option<&'static str> {
    Some(match command {
        "serve" => SERVE_USAGE,
        "check-config" => CHECK_CONFIG_USAGE,
        "users" => USERS_USAGE,
        "backup" => BACKUP_USAGE,
        "restore" => RESTORE_USAGE,
        "migrate" => MIGRATE_USAGE,
        "fake-wechat" => FAKE_WECHAT_USAGE,
        "help" => HELP_USAGE,
        _ => return None,
    })
}

/// What the command line asks for.
enum Command {
    Serve {
        config: Option<String>,
    },
    FakeWechat {
        listen: String,
    },
    CheckConfig {
        config: Option<String>,
    },
    Users {
        config: Option<String>,
        action: admin::UsersAction,
    },
    Backup {
        config: Option<String>,
        destination: String,
    },
    Restore {
        config: Option<String>,
        backup: String,
    },
    Migrate {
        config: Option<String>,
    },
    /// Print this usage text.
    Help(&'static str),
    Version,
}

/// A command line that makes no sense: what is wrong, and the usage text to show with it.
struct UsageError {
    message: String,
    usage: &'static str,
}

fn main() -> ExitCode {
    let parsed = parse_arguments(std::env::args().skip(1).collect());
    if !matches!(parsed, Ok(Command::Serve { .. } | Command::FakeWechat { .. })) {
        end_quietly_on_a_closed_pipe();
    }
    let command = match parsed {
        Ok(command) => command,
        Err(UsageError { message, usage }) => {
            eprintln!("wxauth: {message}\n\n{usage}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help(usage) => {
            println!("{usage}");
            Ok(())
        }
        Command::Version => {
            // build.rs names the commit when the binary is built from a git checkout.
            match env!("WXAUTH_COMMIT") {
                "unknown" => println!("wxauth {}", env!("CARGO_PKG_VERSION")),
                commit => println!("wxauth {} (commit {commit})", env!("CARGO_PKG_VERSION")),
            }
            Ok(())
        }
        Command::Serve { config } => serve(config),
        Command::FakeWechat { listen } => fake_wechat(&listen),
        Command::CheckConfig { config } => {
            to_stdout(|out| admin::check_config(config.as_deref(), out))
        }
        Command::Users { config, action } => load_config(config.as_deref())
            .and_then(|config| to_stdout(|out| admin::users(&config, action, out))),
        Command::Backup { config, destination } => load_config(config.as_deref())
            .and_then(|config| to_stdout(|out| admin::backup(&config, &destination, out))),
        Command::Restore { config, backup } => load_config(config.as_deref())
            .and_then(|config| to_stdout(|out| admin::restore(&config, &backup, out))),
        Command::Migrate { config } => load_config(config.as_deref())
            .and_then(|config| to_stdout(|out| admin::migrate(&config, out))),
    };
    // Access lines still waiting to be written (log.rs) go out before the process ends.
    log::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("wxauth: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an operator command with a buffered stdout (an export writes millions of small pieces).
fn to_stdout(command: impl FnOnce(&mut dyn Write) -> Result<(), Fatal>) -> Result<(), Fatal> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    command(&mut out)?;
    out.flush().map_err(admin::write_failed)
}

/// Options that take a value, and what the value is.
const VALUE_OPTIONS: [(&str, &str); 6] = [
    ("--config", "a path"),
    ("--listen", "an address"),
    ("--limit", "a number"),
    ("--offset", "a number"),
    ("--format", "csv or json"),
    ("--by", "phone, openid, unionid or nickname"),
];

/// Options that take no value.
const FLAG_OPTIONS: [&str; 1] = ["--dry-run"];

fn parse_arguments(arguments: Vec<String>) -> Result<Command, UsageError> {
    let mut words = Vec::new();
    let mut options: Vec<(&'static str, String)> = Vec::new();
    let mut help = false;
    let mut arguments = arguments.into_iter();
    while let Some(argument) = arguments.next() {
        // Usage errors found here show the usage of the command named so far, if any.
        let usage =
            words.first().and_then(|command: &String| command_usage(command)).unwrap_or(USAGE);
        match argument.as_str() {
            "-h" | "--help" => help = true,
            "-V" | "--version" => return Ok(Command::Version),
            _ if argument.starts_with('-') && argument.len() > 1 => {
                let (name, inline) = match argument.split_once('=') {
                    Some((name, value)) => (name, Some(value.to_string())),
                    None => (argument.as_str(), None),
                };
                if let Some(&flag) = FLAG_OPTIONS.iter().find(|known| **known == name) {
                    if inline.is_some() {
                        return Err(UsageError {
                            message: format!("{flag} takes no value"),
                            usage,
                        });
                    }
                    if options.iter().any(|(given, _)| *given == flag) {
                        return Err(UsageError { message: format!("{flag} given twice"), usage });
                    }
                    options.push((flag, String::new()));
                    continue;
                }
                let Some(&(name, what)) = VALUE_OPTIONS.iter().find(|(known, _)| *known == name)
                else {
                    return Err(UsageError {
                        message: format!("unexpected argument `{argument}`"),
                        usage,
                    });
                };
                let value = match inline.or_else(|| arguments.next()) {
                    Some(value) => value,
                    None => {
                        return Err(UsageError { message: format!("{name} needs {what}"), usage });
                    }
                };
                if options.iter().any(|(given, _)| *given == name) {
                    return Err(UsageError { message: format!("{name} given twice"), usage });
                }
                options.push((name, value));
            }
            _ => words.push(argument),
        }
    }

    let command = words.first().cloned().unwrap_or_else(|| "serve".into());
    if command == "help" {
        let usage = match words.get(1) {
            None if help => HELP_USAGE,
            None => USAGE,
            Some(topic) => command_usage(topic).ok_or_else(|| UsageError {
                message: format!("no command `{topic}`"),
                usage: USAGE,
            })?,
        };
        // `help users list` is `users list --help`: the usage of the command the action is of.
        if words.len() > 3 || !options.is_empty() {
            return Err(UsageError {
                message: "help takes a command and at most one action".into(),
                usage,
            });
        }
        return Ok(Command::Help(usage));
    }
    let Some(usage) = command_usage(&command) else {
        return Err(UsageError { message: format!("unknown command `{command}`"), usage: USAGE });
    };
    if help {
        // `wxauth --help` is about wxauth as a whole, not its default command.
        return Ok(Command::Help(if words.is_empty() { USAGE } else { usage }));
    }
    let mut rest = Rest { command, words: words.into_iter().skip(1).collect(), options, usage };
    let parsed = match rest.command.as_str() {
        "serve" => {
            if rest.options.iter().any(|(name, _)| *name == "--listen") {
                return Err(rest.error(
                    "--listen belongs to fake-wechat; set `listen` or WXAUTH_LISTEN for the server",
                ));
            }
            Command::Serve { config: rest.config() }
        }
        "fake-wechat" => {
            if rest.options.iter().any(|(name, _)| *name == "--config") {
                return Err(rest.error("fake-wechat takes no --config"));
            }
            Command::FakeWechat {
                listen: rest.option("--listen").unwrap_or_else(|| "127.0.0.1:9100".into()),
            }
        }
        "check-config" => Command::CheckConfig { config: rest.config() },
        "backup" => {
            let destination = rest.word("a PATH to write the backup to")?;
            Command::Backup { config: rest.config(), destination }
        }
        "restore" => {
            let backup = rest.word("a BACKUP file to restore")?;
            Command::Restore { config: rest.config(), backup }
        }
        "migrate" => Command::Migrate { config: rest.config() },
        _ => {
            let actions =
                "list, show, find, export, set, revoke, disable, enable, delete or import";
            let action = match rest.word(&format!("an action: {actions}"))?.as_str() {
                "list" => admin::UsersAction::List {
                    limit: rest.number("--limit")?.unwrap_or(50),
                    offset: rest.number("--offset")?.unwrap_or(0),
                },
                "show" => admin::UsersAction::Show { who: rest.word("an ID or OPENID")? },
                "export" => {
                    let format = match rest.option("--format").as_deref() {
                        Some("csv") => admin::ExportFormat::Csv,
                        Some("json") => admin::ExportFormat::Json,
                        Some(other) => {
                            return Err(
                                rest.error(&format!("--format must be csv or json, not `{other}`"))
                            );
                        }
                        None => return Err(rest.error("users export needs --format csv or json")),
                    };
                    admin::UsersAction::Export { format }
                }
                "find" => {
                    let query = rest.word("a QUERY")?;
                    if query.is_empty() {
                        return Err(rest.error("users find needs a QUERY that is not empty"));
                    }
                    let by = match rest.option("--by") {
                        None => None,
                        Some(name) => Some(
                            admin::FindBy::NAMES
                                .iter()
                                .find(|(known, _)| *known == name)
                                .map(|(_, by)| *by)
                                .ok_or_else(|| {
                                    rest.error(&format!(
                                        "--by must be phone, openid, unionid or nickname, not `{name}`"
                                    ))
                                })?,
                        ),
                    };
                    admin::UsersAction::Find { query, by }
                }
                "set" => {
                    let who = rest.word("an ID or OPENID")?;
                    let mut edits: Vec<store::Edit> = Vec::new();
                    while let Some(argument) = rest.words.pop_front() {
                        let edit = admin::parse_edit(&argument).map_err(|why| rest.error(&why))?;
                        if edits.iter().any(|earlier| earlier.field == edit.field) {
                            return Err(rest.error(&format!("{} given twice", edit.field)));
                        }
                        edits.push(edit);
                    }
                    if edits.is_empty() {
                        return Err(rest.error("users set needs at least one FIELD=VALUE"));
                    }
                    admin::UsersAction::Set { who, edits }
                }
                "revoke" => admin::UsersAction::Revoke { who: rest.word("an ID or OPENID")? },
                "disable" => admin::UsersAction::Disable { who: rest.word("an ID or OPENID")? },
                "enable" => admin::UsersAction::Enable { who: rest.word("an ID or OPENID")? },
                "delete" => admin::UsersAction::Delete { who: rest.word("an ID or OPENID")? },
                "import" => {
                    let file = rest.word("a FILE to import")?;
                    let format = match rest.option("--format").as_deref() {
                        Some("django") => import::ImportFormat::Django,
                        Some("csv") => import::ImportFormat::Csv,
                        Some("json") => import::ImportFormat::Json,
                        Some(other) => {
                            return Err(rest.error(&format!(
                                "--format must be django, csv or json, not `{other}`"
                            )));
                        }
                        None => {
                            return Err(
                                rest.error("users import needs --format django, csv or json")
                            );
                        }
                    };
                    let dry_run = rest.option("--dry-run").is_some();
                    admin::UsersAction::Import { file, format, dry_run }
                }
                other => {
                    return Err(rest.error(&format!("unknown users action `{other}`: {actions}")));
                }
            };
            Command::Users { config: rest.config(), action }
        }
    };
    rest.finish()?;
    Ok(parsed)
}

/// The command line after the command's name, taken piece by piece; anything left untaken is
/// an error naming it.
struct Rest {
    command: String,
    words: std::collections::VecDeque<String>,
    options: Vec<(&'static str, String)>,
    usage: &'static str,
}

impl Rest {
    fn error(&self, message: &str) -> UsageError {
        UsageError { message: message.to_string(), usage: self.usage }
    }

    fn option(&mut self, name: &str) -> Option<String> {
        let index = self.options.iter().position(|(given, _)| *given == name)?;
        Some(self.options.remove(index).1)
    }

    /// `--config`, else `$WXAUTH_CONFIG`.
    fn config(&mut self) -> Option<String> {
        self.option("--config").or_else(|| std::env::var("WXAUTH_CONFIG").ok())
    }

    fn number(&mut self, name: &str) -> Result<Option<u64>, UsageError> {
        match self.option(name) {
            None => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| self.error(&format!("{name} takes a whole number, not `{text}`"))),
        }
    }

    fn word(&mut self, what: &str) -> Result<String, UsageError> {
        let command = self.command.clone();
        self.words.pop_front().ok_or_else(|| self.error(&format!("{command} needs {what}")))
    }

    fn finish(self) -> Result<(), UsageError> {
        if let Some(word) = self.words.front() {
            return Err(self.error(&format!("unexpected argument `{word}`")));
        }
        if let Some((name, _)) = self.options.first() {
            return Err(self.error(&format!("{name} does not apply to {}", self.command)));
        }
        Ok(())
    }
}

/// The configuration at `path`, with the database password handed to the store, which opens
/// MySQL databases with it.
fn load_config(path: Option<&str>) -> Result<config::Config, Fatal> {
    let config = config::load(path)?;
    store::set_database_password(&config.database_password);
    Ok(config)
}

fn serve(config_path: Option<String>) -> Result<(), Fatal> {
    // SAFETY: first thing in `serve`, called from main before any thread starts.
    let passed = unsafe { systemd::take_listener() }?;
    // Installed before anything is announced, so a stop or reload signal is never the default
    // (fatal) one.
    let mut signals = signals()?;
    let config = load_config(config_path.as_deref())?;
    log::configure(&config.log);
    let notifier = systemd::Notifier::from_environment();
    let open_files = raise_open_files_limit();
    let max_connections = config.connections_for(open_files);
    let activated = passed.is_some();
    let listener = match passed {
        Some(listener) => listener,
        None => server::listen(config.listen)?,
    };

    // Demo mode serves its own fake WeChat and talks to it with a throwaway secret.
    let demo = if config.demo_mode() {
        Some(fake_wechat::FakeWeChat::start(config.demo.fake_listen)?)
    } else {
        None
    };
    let apps = apps(&config, demo.as_ref())?;

    let (connection, applied) = store::open_writer(&config.database, store::Opener::Server)?;
    let jwt_secret = if config.jwt.secret.is_empty() {
        store::jwt_secret_or_insert(&connection, &random_hex(32)?)?
    } else {
        config.jwt.secret.clone()
    };
    let readers = (0..config.workers)
        .map(|_| store::open_reader(&config.database))
        .collect::<Result<Vec<_>, _>>()?;
    let (server, address) = server::with_limits(listener, &config, max_connections)?;
    let shared_database = store::SharedDatabase::of(&connection);
    let (writer, writer_thread) = store::Writer::start(connection);

    let shared = Arc::new(server::Shared::new(
        config.clone(),
        apps,
        codes::RecentCodes::new(config.expose_session_key).shared_through(shared_database),
        api::Keys::new(&jwt_secret, &config.jwt.previous_secrets),
    ));
    let running = server::start(server, shared.clone(), &writer, readers)?;

    // Both lines go to the log before the address is announced, so whoever waits for that
    // announcement finds them written.
    log::info(&format!(
        "wxauth {} serving {} on http://{address}{} with {} workers and up to {max_connections} \
         connections (open-file limit {open_files}), database {}{}",
        env!("CARGO_PKG_VERSION"),
        config.prefix,
        if activated { " (a socket passed by systemd)" } else { "" },
        config.workers,
        config.database,
        if applied.is_empty() {
            String::new()
        } else {
            format!(" (applied schema versions {applied:?})")
        },
    ));
    for app in &shared.apps[1..] {
        log::info(&format!(
            "app {} (appid {}) serving {} with tokens for audience {}",
            app.name,
            app.wechat.appid(),
            app.prefix,
            app.audience
        ));
    }
    // Key ids are public (every token names its key) and let an operator check a rotation.
    let kids = shared.keys.kids();
    log::info(&format!(
        "tokens are signed with key {} ({}){}",
        kids[0],
        if config.jwt.secret.is_empty() { "generated, kept in the database" } else { "jwt.secret" },
        match &kids[1..] {
            [] => String::new(),
            previous => format!("; tokens of previous keys {} still verify", previous.join(", ")),
        },
    ));

    println!("listening on http://{address}");
    // The next line names the demo page, when there is one; in demo mode it is also the line that
    // names the fake WeChat (API.md).
    let page = shared.config().demo_page().then(|| demo::page_url(address));
    match (&demo, page) {
        (Some(fake), page) => println!(
            "demo mode: no WeChat appid/secret configured, using the built-in fake WeChat at http://{} (appid {}){}",
            fake.address,
            config::DEMO_APPID,
            page.map(|url| format!("; demo page: {url}")).unwrap_or_default()
        ),
        (None, Some(url)) => println!("demo page: {url}"),
        (None, None) => {}
    }
    notifier.ready();

    for signal in signals.forever() {
        if signal != SIGHUP {
            break;
        }
        notifier.reloading();
        reload(config_path.as_deref(), &shared);
        notifier.ready();
    }
    notifier.stopping();
    log::info("stopping: finishing requests in flight");
    let grace = Duration::from_millis(shared.config().shutdown_timeout_ms);
    if !running.stop(grace) {
        // Whatever is still running is cut off; the database stays consistent (every write is
        // a transaction), only those requests go unanswered.
        return Err(Fatal::Other(format!(
            "stopped with requests still running after shutdown_timeout_ms ({}ms); they were cut off",
            grace.as_millis()
        )));
    }
    drop(writer);
    drop(shared);
    let _ = writer_thread.join();
    if let Some(fake) = demo {
        fake.stop();
    }
    log::info("stopped");
    Ok(())
}

/// The apps to serve, the default first: each with its own WeChat client (in demo mode against
/// the fake, with a demo appid of its own and a throwaway secret) and rate-limit buckets.
fn apps(
    config: &config::Config,
    demo: Option<&fake_wechat::FakeWeChat>,
) -> Result<Vec<api::App>, Fatal> {
    let default = (
        config::DEFAULT_APP.to_string(),
        &config.wechat.appid,
        &config.wechat.secret,
        &config.prefix,
        &config.jwt.audience,
    );
    let named = config
        .apps
        .iter()
        .map(|(name, app)| (name.clone(), &app.appid, &app.secret, &app.prefix, &app.audience));
    let mut apps = Vec::new();
    for (slot, (name, appid, secret, prefix, audience)) in
        std::iter::once(default).chain(named).enumerate()
    {
        let client = match demo {
            Some(fake) => wechat::WeChat::new(
                slot,
                &config.wechat,
                &config::Config::demo_appid(&name),
                &random_hex(16)?,
                &format!("http://{}", fake.address),
            ),
            None => {
                wechat::WeChat::new(slot, &config.wechat, appid, secret, &config.wechat.base_url)
            }
        };
        apps.push(api::App {
            name,
            prefix: prefix.clone(),
            audience: audience.clone(),
            wechat: client,
            limiter: ratelimit::RateLimiter::new(),
        });
    }
    Ok(apps)
}

/// Reads the configuration again as at start (the same file, the same environment), puts the
/// keys that can change while serving in force (`config::RELOADABLE`), and logs one line naming
/// those it applied and those that changed but need a restart. An invalid configuration is logged
/// and changes nothing.
fn reload(config_path: Option<&str>, shared: &server::Shared) {
    let reloaded = config::load(config_path).and_then(|loaded| shared.config().reloaded(&loaded));
    let config::Reloaded { config, applied, need_restart } = match reloaded {
        Ok(reloaded) => reloaded,
        Err(error) => {
            log::error(&format!("configuration not reloaded, the running one is kept: {error}"));
            return;
        }
    };
    log::configure(&config.log);
    shared.replace_config(config);
    let mut message = String::from("reloaded the configuration: ");
    message.push_str(&match applied.as_slice() {
        [] if need_restart.is_empty() => "nothing changed".to_string(),
        [] => "nothing applied".to_string(),
        keys => format!("applied {}", keys.join(", ")),
    });
    if need_restart.is_empty() {
        log::info(&message);
    } else {
        // The running configuration is no longer what the file says until a restart.
        message.push_str(&format!("; changed but need a restart: {}", need_restart.join(", ")));
        log::warn(&message);
    }
}

fn fake_wechat(listen: &str) -> Result<(), Fatal> {
    let mut signals = signals()?;
    let fake = fake_wechat::FakeWeChat::start(listen)?;
    println!("fake WeChat listening on http://{}", fake.address);
    // The fake has no configuration to reload: SIGHUP does nothing.
    signals.forever().find(|signal| *signal != SIGHUP);
    fake.stop();
    Ok(())
}

/// SIGTERM and SIGINT (stop) and SIGHUP (reload), which would otherwise end the process at once.
fn signals() -> Result<Signals, Fatal> {
    Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(Fatal::io("cannot install signal handlers"))
}

/// A command that prints and ends (help, the operator's commands) ends the way Unix filters do
/// when whoever reads its output goes away (`wxauth --help | head -1`): SIGPIPE's default action
/// ends it at once and without a word, which the shell shows as status 141. Rust ignores SIGPIPE,
/// which turns the next print into a panic. `serve` and `fake-wechat` keep it ignored: a client
/// that goes away is an error on its own connection, never the end of the server.
#[cfg(unix)]
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: sets one signal's disposition to its default, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn end_quietly_on_a_closed_pipe() {}

/// `bytes` random bytes from the OS, as lowercase hex.
fn random_hex(bytes: usize) -> Result<String, Fatal> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer)
        .map_err(|error| Fatal::Other(format!("no randomness from the OS: {error}")))?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Raises this process's soft limit on open files to its hard limit, and returns the soft limit
/// in force. Each client connection takes two descriptors, and the usual soft limit (1024, also
/// systemd's default) would otherwise cap wxauth near 450 connections whatever the hard limit or
/// the unit's `LimitNOFILE` allows.
#[cfg(unix)]
fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    // Linux refuses an unlimited soft limit for open files (it may not pass fs.nr_open).
    let wanted = if limit.rlim_max == libc::RLIM_INFINITY { 1 << 20 } else { limit.rlim_max };
    if limit.rlim_cur < wanted {
        let raised = libc::rlimit { rlim_cur: wanted, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads one `rlimit` through a pointer to a live local. A refusal
        // (a system whose own cap is lower) leaves the soft limit as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = wanted;
        }
    }
    limit.rlim_cur
}

#[cfg(not(unix))]
fn raise_open_files_limit() -> u64 {
    1024
}
