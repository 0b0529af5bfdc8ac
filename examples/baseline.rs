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
//! With `--mysql mysql://USER@HOST:PORT/DB` (the password in `BASELINE_MYSQL_PASSWORD`) the table
//! is in that MySQL database instead, read through the same `mysql` crate and pool settings
//! wxauth's MySQL engine uses (each worker's query takes a pooled connection), and a third path
//! answers: `GET /insert?openid=…`, one autocommitted INSERT of a new row per request, the bare
//! cost of a durable write that a registration is measured against.
//!
//! `cargo run --release --example baseline -- --listen 127.0.0.1:8001 --database /tmp/base.db`

use std::net::TcpListener;
use std::sync::Arc;
use std::thread;

use mysql::prelude::Queryable;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde_json::json;
use tiny_http::{Header, Limits, Response, Server};

/// Rows in the table `/select` reads.
const ROWS: i64 = 10_000;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut listen = "127.0.0.1:8001".to_string();
    let mut workers = 16usize;
    let mut database = "baseline.db".to_string();
    let mut mysql_url = None;
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        let mut value = || arguments.next().ok_or(format!("{argument} needs a value"));
        match argument.as_str() {
            "--listen" => listen = value()?,
            "--workers" => workers = value()?.parse()?,
            "--database" => database = value()?,
            "--mysql" => mysql_url = Some(value()?),
            other => return Err(format!("unexpected argument `{other}`").into()),
        }
    }

    let pool = match &mysql_url {
        Some(url) => Some(prepare_mysql(url)?),
        None => {
            prepare(&database)?;
            None
        }
    };
    let listener = TcpListener::bind(&listen)?;
    let address = listener.local_addr()?;
    let server = Arc::new(Server::from_listener_with_limits(listener, Limits::default())?);
    let threads = (0..workers)
        .map(|index| {
            // Each worker reads through its own connection, opened as wxauth opens its readers.
            let connection = match &pool {
                Some(_) => None,
                None => Some(Connection::open_with_flags(
                    &database,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?),
            };
            let server = server.clone();
            let pool = pool.clone();
            // Named as wxauth's workers, so that profiles of the two line up.
            let worker = thread::Builder::new().name(format!("worker-{index}"));
            Ok(worker.spawn(move || {
                while let Ok(request) = server.recv() {
                    let (status, body) = match (&pool, &connection) {
                        (Some(pool), _) => answer_mysql(pool, request.url()),
                        (None, Some(connection)) => answer(connection, request.url()),
                        (None, None) => unreachable!("a worker has a pool or a connection"),
                    };
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

/// The pool wxauth's MySQL engine would make for `url` (no ping before each query, statements kept
/// prepared), with the table and its rows made unless they are there.
fn prepare_mysql(url: &str) -> Result<mysql::Pool, Box<dyn std::error::Error + Send + Sync>> {
    let password = std::env::var("BASELINE_MYSQL_PASSWORD").ok();
    let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(url)?)
        .pass(password)
        .prefer_socket(false)
        .tcp_nodelay(true)
        .stmt_cache_size(64)
        .pool_opts(
            mysql::PoolOpts::default()
                .with_constraints(mysql::PoolConstraints::new(0, 512).unwrap())
                .with_check_health(false)
                .with_reset_connection(false),
        );
    let pool = mysql::Pool::new(opts)?;
    let mut conn = pool.get_conn()?;
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS baseline_accounts (
             id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
             openid VARCHAR(64) NOT NULL,
             is_register TINYINT NOT NULL,
             UNIQUE KEY baseline_accounts_openid (openid)
         ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
    )?;
    let rows: Option<i64> = conn.query_first("SELECT count(*) FROM baseline_accounts")?;
    if rows.unwrap_or(0) < ROWS {
        conn.query_drop("START TRANSACTION")?;
        conn.exec_batch(
            "INSERT IGNORE INTO baseline_accounts (openid, is_register) VALUES (?, ?)",
            (0..ROWS).map(|index| (format!("oBase{index}"), index % 2 == 0)),
        )?;
        conn.query_drop("COMMIT")?;
    }
    Ok(pool)
}

/// The status and body for a request URL, on MySQL: `/select` as on SQLite, and `/insert`.
fn answer_mysql(pool: &mysql::Pool, url: &str) -> (u16, String) {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    if path == "/fixed" {
        return (200, envelope(false));
    }
    let openid = query.strip_prefix("openid=").unwrap_or("");
    let result = pool.get_conn().and_then(|mut conn| match path {
        "/select" => conn
            .exec_first::<bool, _, _>(
                "SELECT is_register FROM baseline_accounts WHERE openid = ?",
                (openid,),
            )
            .map(|found| Some(found.unwrap_or(false))),
        "/insert" => conn
            .exec_drop(
                "INSERT INTO baseline_accounts (openid, is_register) VALUES (?, 1)",
                (openid,),
            )
            .map(|()| Some(true)),
        _ => Ok(None),
    });
    match result {
        Ok(Some(is_registered)) => (200, envelope(is_registered)),
        Ok(None) => {
            (404, json!({ "code": 4004, "detail": "not found", "results": [] }).to_string())
        }
        Err(error) => (500, json!({ "code": 5000, "detail": error.to_string() }).to_string()),
    }
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
