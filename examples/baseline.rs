//! The benchmark's baseline (issue 5): the least a server on wxauth's stack can do per request,
//! so that `bench/run` can print wxauth's figures as ratios to it.
//!
//! The same tiny_http (the vendored one, built with `from_listener_with_limits` and its default
//! limits, as wxauth builds its server), the same worker count (`--workers`, default 16 as
//! wxauth's), the same envelope built with serde_json and the same response headers. Two paths:
//!
//! - `GET /fixed`: a fixed envelope, no database: HTTP and JSON only.
//! - `GET /select?openid=…`: one indexed SELECT on the worker's own read-only SQLite connection,
//!   as wxauth's `is_openid_registered` does, answered in the same envelope.
//!
//! At start the database (`--database`, WAL mode) gets a table of 10,000 accounts, `oBase0` to
//! `oBase9999`, with a unique index on the openid, unless it already has one. The first line on
//! stdout is `listening on http://ADDR`, as wxauth's. Stop it with Ctrl-C.
//!
//! `cargo run --release --example baseline -- --listen 127.0.0.1:8001 --database /tmp/base.db`

use std::net::TcpListener;
use std::sync::Arc;
use std::thread;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde_json::json;
use tiny_http::{Header, Limits, Response, Server};

/// Rows in the table `/select` reads.
const ROWS: i64 = 10_000;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut listen = "127.0.0.1:8001".to_string();
    let mut workers = 16usize;
    let mut database = "baseline.db".to_string();
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        let mut value = || arguments.next().ok_or(format!("{argument} needs a value"));
        match argument.as_str() {
            "--listen" => listen = value()?,
            "--workers" => workers = value()?.parse()?,
            "--database" => database = value()?,
            other => return Err(format!("unexpected argument `{other}`").into()),
        }
    }

    prepare(&database)?;
    let listener = TcpListener::bind(&listen)?;
    let address = listener.local_addr()?;
    let server = Arc::new(Server::from_listener_with_limits(listener, Limits::default())?);
    let threads = (0..workers)
        .map(|index| {
            // Each worker reads through its own connection, opened as wxauth opens its readers.
            let connection = Connection::open_with_flags(
                &database,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            let server = server.clone();
            // Named as wxauth's workers, so that profiles of the two line up.
            let worker = thread::Builder::new().name(format!("worker-{index}"));
            Ok(worker.spawn(move || {
                while let Ok(request) = server.recv() {
                    let (status, body) = answer(&connection, request.url());
                    let response = Response::from_string(body)
                        .with_status_code(status)
                        .with_header(header("Content-Type", "application/json; charset=utf-8"))
                        .with_header(header("Cache-Control", "no-store"));
                    let _ = request.respond(response);
                }
            })?)
        })
        .collect::<Result<Vec<_>, Box<dyn std::error::Error + Send + Sync>>>()?;
    println!("listening on http://{address}");
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

/// Creates the table and its rows unless they are there, in WAL mode.
fn prepare(database: &str) -> rusqlite::Result<()> {
    let mut connection = Connection::open(database)?;
    connection.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS accounts (
             id INTEGER PRIMARY KEY,
             openid TEXT NOT NULL,
             is_register INTEGER NOT NULL
         );
         CREATE UNIQUE INDEX IF NOT EXISTS accounts_openid ON accounts (openid);",
    )?;
    let rows: i64 = connection.query_row("SELECT count(*) FROM accounts", [], |row| row.get(0))?;
    if rows < ROWS {
        let transaction = connection.transaction()?;
        {
            let mut insert = transaction.prepare(
                "INSERT INTO accounts (openid, is_register) VALUES (?1, ?2) \
                 ON CONFLICT (openid) DO NOTHING",
            )?;
            for index in 0..ROWS {
                insert.execute((format!("oBase{index}"), index % 2 == 0))?;
            }
        }
        transaction.commit()?;
    }
    Ok(())
}

/// The status and body for a request URL.
fn answer(connection: &Connection, url: &str) -> (u16, String) {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    match path {
        "/fixed" => (200, envelope(false)),
        "/select" => {
            // Benchmark openids need no percent-decoding.
            let openid = query.strip_prefix("openid=").unwrap_or("");
            let found = connection
                .prepare_cached("SELECT is_register FROM accounts WHERE openid = ?1")
                .and_then(|mut statement| {
                    statement.query_row([openid], |row| row.get::<_, bool>(0)).optional()
                });
            match found {
                Ok(is_registered) => (200, envelope(is_registered.unwrap_or(false))),
                Err(error) => {
                    (500, json!({ "code": 5000, "detail": error.to_string() }).to_string())
                }
            }
        }
        _ => (404, json!({ "code": 4004, "detail": "not found", "results": [] }).to_string()),
    }
}

/// wxauth's success envelope around `is_openid_registered`'s result.
fn envelope(is_registered: bool) -> String {
    json!({ "code": 0, "detail": "成功", "results": [{ "is_registered": is_registered }] })
        .to_string()
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}
