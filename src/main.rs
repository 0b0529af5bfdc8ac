//! wxauth: a WeChat mini-program login server in one binary with one SQLite file.
//!
//! This file owns the command line, start-up and exit codes, and is the only place that prints to
//! stdout or exits. The first line `serve` prints is `listening on http://HOST:PORT`; in demo mode
//! the next names the fake WeChat. A start-up failure is one line on stderr and exit status 1; a
//! usage error, status 2; a clean stop after SIGTERM or SIGINT, status 0.

mod api;
mod codes;
mod config;
mod error;
mod fake_wechat;
mod health;
mod jwt;
mod log;
mod metrics;
mod ratelimit;
mod router;
mod server;
mod store;
mod time;
mod wechat;
mod wxcrypt;

#[cfg(test)]
mod fuzz_replay;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::signal::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

const USAGE: &str = "\
wxauth — WeChat mini-program login server

Usage:
  wxauth [serve] [--config PATH]        run the server (the default command)
  wxauth fake-wechat [--listen ADDR]    run only the fake WeChat (default 127.0.0.1:9100)
  wxauth --version | --help

The config file is PATH, else $WXAUTH_CONFIG, else ./wxauth.toml when present, else the built-in
defaults; WXAUTH_* environment variables override it (see README). With no WeChat appid and
secret configured, wxauth runs in demo mode against a built-in fake WeChat on loopback.";

/// What the command line asks for.
enum Command {
    Serve { config: Option<String> },
    FakeWechat { listen: String },
    Help,
    Version,
}

fn main() -> ExitCode {
    let command = match parse_arguments(std::env::args().skip(1).collect()) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("wxauth: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help => {
            println!("{USAGE}");
            Ok(())
        }
        Command::Version => {
            println!("wxauth {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Serve { config } => serve(config),
        Command::FakeWechat { listen } => fake_wechat(&listen),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("wxauth: {message}");
            ExitCode::FAILURE
        }
    }
}

fn parse_arguments(arguments: Vec<String>) -> Result<Command, String> {
    let mut arguments = arguments.into_iter();
    let mut subcommand: Option<String> = None;
    let mut config = None;
    let mut listen = None;
    while let Some(argument) = arguments.next() {
        match argument.as_str() {
            "-h" | "--help" | "help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--config" => config = Some(arguments.next().ok_or("--config needs a path")?),
            "--listen" => listen = Some(arguments.next().ok_or("--listen needs an address")?),
            "serve" | "fake-wechat" if subcommand.is_none() => subcommand = Some(argument),
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    match subcommand.as_deref() {
        None | Some("serve") => {
            if listen.is_some() {
                return Err(
                    "--listen belongs to fake-wechat; set `listen` or WXAUTH_LISTEN for the server"
                        .into(),
                );
            }
            Ok(Command::Serve { config: config.or_else(|| std::env::var("WXAUTH_CONFIG").ok()) })
        }
        _ => {
            if config.is_some() {
                return Err("fake-wechat takes no --config".into());
            }
            Ok(Command::FakeWechat { listen: listen.unwrap_or_else(|| "127.0.0.1:9100".into()) })
        }
    }
}

fn serve(config_path: Option<String>) -> Result<(), String> {
    let config = config::load(config_path.as_deref())?;
    log::configure(&config.log);
    // Installed before anything is announced, so a stop signal is never the default (fatal) one.
    let mut signals = stop_signals()?;

    // Demo mode serves its own fake WeChat and talks to it with a throwaway secret.
    let demo = if config.demo_mode() {
        Some(fake_wechat::FakeWeChat::start(&config.demo.fake_listen)?)
    } else {
        None
    };
    let (appid, secret, base_url) = match &demo {
        Some(fake) => {
            (config::DEMO_APPID.to_string(), random_hex(16)?, format!("http://{}", fake.address))
        }
        None => (
            config.wechat.appid.clone(),
            config.wechat.secret.clone(),
            config.wechat.base_url.clone(),
        ),
    };

    let (connection, applied) =
        store::open_writer(&config.database).map_err(|error| error.to_string())?;
    let jwt_secret = if config.jwt.secret.is_empty() {
        store::jwt_secret_or_insert(&connection, &random_hex(32)?)
            .map_err(|error| error.to_string())?
    } else {
        config.jwt.secret.clone()
    };
    let readers = (0..config.workers)
        .map(|_| store::open_reader(&config.database))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| error.to_string())?;
    let (server, address) = server::bind(&config)?;
    let (writer, writer_thread) = store::Writer::start(connection);

    let shared = Arc::new(server::Shared {
        wechat: wechat::WeChat::new(&config.wechat, &appid, &secret, &base_url),
        codes: codes::RecentCodes::default(),
        limiter: ratelimit::RateLimiter::new(&config.rate_limit),
        keys: api::Keys::new(&jwt_secret),
        trusted_proxies: config.trusted_proxy_addrs(),
        config,
    });
    let running = server::start(server, shared.clone(), &writer, readers)?;

    println!("listening on http://{address}");
    if let Some(fake) = &demo {
        println!(
            "demo mode: no WeChat appid/secret configured, using the built-in fake WeChat at http://{} (appid {})",
            fake.address,
            config::DEMO_APPID
        );
    }
    log::info(&format!(
        "wxauth {} serving {} on http://{address} with {} workers, database {}{}",
        env!("CARGO_PKG_VERSION"),
        shared.config.prefix,
        shared.config.workers,
        shared.config.database,
        if applied.is_empty() {
            String::new()
        } else {
            format!(" (applied schema versions {applied:?})")
        },
    ));

    signals.forever().next();
    log::info("stopping: finishing requests in flight");
    let grace = Duration::from_millis(shared.config.shutdown_timeout_ms);
    if !running.stop(grace) {
        // Whatever is still running is cut off; the database stays consistent (every write is
        // a transaction), only those requests go unanswered.
        return Err(format!(
            "stopped with requests still running after shutdown_timeout_ms ({}ms); they were cut off",
            grace.as_millis()
        ));
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

fn fake_wechat(listen: &str) -> Result<(), String> {
    let mut signals = stop_signals()?;
    let fake = fake_wechat::FakeWeChat::start(listen)?;
    println!("fake WeChat listening on http://{}", fake.address);
    signals.forever().next();
    fake.stop();
    Ok(())
}

fn stop_signals() -> Result<Signals, String> {
    Signals::new([SIGTERM, SIGINT])
        .map_err(|error| format!("cannot install signal handlers: {error}"))
}

/// `bytes` random bytes from the OS, as lowercase hex.
fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(|error| format!("no randomness from the OS: {error}"))?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}
