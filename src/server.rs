//! The HTTP server: the listener, the worker threads (each with its own read connection), panic
//! containment, the access log, and a graceful stop.
//!
//! A worker takes one request at a time from tiny_http's queue and answers it completely before
//! it looks at the stop flag, so a request in flight when the stop comes still gets its answer. A
//! panic in a handler costs that request a 500, never the worker.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tiny_http::{Header, Request, Response, Server};

use crate::api::{Ctx, Keys};
use crate::codes::RecentCodes;
use crate::config::Config;
use crate::error::Error;
use crate::ratelimit::RateLimiter;
use crate::router::{self, Reply};
use crate::store::Writer;
use crate::wechat::WeChat;

/// How often an idle worker looks at the stop flag.
const POLL: Duration = Duration::from_millis(200);

/// What every worker shares.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) wechat: WeChat,
    pub(crate) codes: RecentCodes,
    pub(crate) limiter: RateLimiter,
    pub(crate) keys: Keys,
    pub(crate) trusted_proxies: Vec<IpAddr>,
}

/// A running server.
pub(crate) struct Running {
    stop: Arc<AtomicBool>,
    workers: Vec<thread::JoinHandle<()>>,
}

/// Binds the listen address. Separate from `start` so the address can be announced first.
pub(crate) fn bind(listen: &str) -> Result<(Server, SocketAddr), String> {
    let server =
        Server::http(listen).map_err(|error| format!("cannot listen on {listen}: {error}"))?;
    let address = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| format!("cannot listen on {listen}: not an IP address"))?;
    Ok((server, address))
}

/// Starts one worker per read connection in `readers`.
pub(crate) fn start(
    server: Server,
    shared: Arc<Shared>,
    writer: &Writer,
    readers: Vec<Connection>,
) -> Result<Running, String> {
    let server = Arc::new(server);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::with_capacity(readers.len());
    for (index, db) in readers.into_iter().enumerate() {
        let (server, shared, writer, stop) =
            (server.clone(), shared.clone(), writer.clone(), stop.clone());
        let worker = thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match server.recv_timeout(POLL) {
                        Ok(Some(request)) => serve(&shared, &db, &writer, request),
                        Ok(None) => {}
                        Err(error) => crate::log::warn(&format!(
                            "accepting a request failed: {}",
                            error.kind()
                        )),
                    }
                }
            })
            .map_err(|error| format!("cannot start worker threads: {error}"))?;
        workers.push(worker);
    }
    Ok(Running { stop, workers })
}

impl Running {
    /// Stops taking requests, lets every worker finish the one it is answering, and waits for them.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for worker in self.workers {
            let _ = worker.join();
        }
    }
}

fn serve(shared: &Shared, db: &Connection, writer: &Writer, mut request: Request) {
    let started = Instant::now();
    let peer = request.remote_addr().map(SocketAddr::ip).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let forwarded_for = router::header(&request, "X-Forwarded-For");
    let client = router::client_address(peer, forwarded_for.as_deref(), &shared.trusted_proxies);
    let ctx = Ctx {
        config: &shared.config,
        db,
        writer,
        wechat: &shared.wechat,
        codes: &shared.codes,
        limiter: &shared.limiter,
        keys: &shared.keys,
        client,
        now: crate::time::now(),
    };
    let reply = catch_unwind(AssertUnwindSafe(|| router::handle(&ctx, &mut request)))
        .unwrap_or_else(|_| router::failure(&Error::Internal("a handler panicked".into())));
    let method = request.method().as_str().to_string();
    // The query may hold a wx.login code: the log gets the path only.
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let status = reply.status;
    let error = reply.error;
    let log_detail = reply.log.clone();
    respond(request, reply);
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    let mut line = format!("{client} {method} {path} {status} {millis:.1}ms");
    if let (Some(error), Some(detail)) = (error, log_detail) {
        line.push_str(&format!(" {error} ({detail})"));
    }
    crate::log::info(&line);
}

fn respond(request: Request, reply: Reply) {
    let mut response = Response::from_string(reply.body)
        .with_status_code(reply.status)
        .with_header(header("Content-Type", "application/json; charset=utf-8"))
        .with_header(header("Cache-Control", "no-store"));
    for (name, value) in &reply.headers {
        response.add_header(header(name, value));
    }
    // The client may have gone; nothing to do about that.
    let _ = request.respond(response);
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("header names and values are ASCII")
}
