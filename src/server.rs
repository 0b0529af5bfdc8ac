//! The HTTP server: the listener, the worker threads (each with its own read connection), panic
//! containment, the access log, and a graceful stop.
//!
//! The configuration in force sits behind a lock in `Shared`: a worker reads it once per request,
//! so one request sees one configuration, and a reload (SIGHUP, main.rs) swaps in a new one
//! between requests without stopping any.
//!
//! A worker takes one request at a time from tiny_http's queue and answers it completely before
//! it looks at the stop flag, so a request in flight when the stop comes still gets its answer. A
//! panic in a handler costs that request a 500, never the worker.
//!
//! A request's path, all on the worker that takes it from tiny_http's queue: its app, by its
//! path's prefix (`router::app`), then route and parse (`router`), handle (`api`, which waits for
//! the writer thread when it writes), count and log (`record`), answer (`respond`). A worker never
//! waits for a client: it sends what the socket takes at once, and a rest (only a client that is
//! not reading its answers leaves one) goes to the `slow-answers` thread, which may wait, within
//! the connection's write budget. Only a rest still waiting for such a client when the process
//! exits is cut off.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use tiny_http::{Header, Request, Response, Server, Unsent};

use crate::api::{App, Ctx, Keys};
use crate::codes::RecentCodes;
use crate::config::Config;
use crate::error::{Error, Fatal};
use crate::metrics::{METRICS, RouteLabel};
use crate::router::{self, Reply};
use crate::store::{Connection, Writer};

/// How often an idle worker looks at the stop flag.
const POLL: Duration = Duration::from_millis(200);

/// What every worker shares.
pub(crate) struct Shared {
    /// The configuration in force: what wxauth started with, its reloadable keys as of the last
    /// reload (config.rs, `Config::reloaded`).
    config: RwLock<Arc<Config>>,
    /// Every app, the default first (its index is its metrics slot).
    pub(crate) apps: Vec<App>,
    pub(crate) codes: RecentCodes,
    pub(crate) keys: Keys,
}

impl Shared {
    pub(crate) fn new(config: Config, apps: Vec<App>, codes: RecentCodes, keys: Keys) -> Shared {
        Shared { config: RwLock::new(Arc::new(config)), apps, codes, keys }
    }

    /// The configuration in force.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Puts `config` in force for the requests that start from now on.
    pub(crate) fn replace_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(config);
    }
}

/// A running server.
pub(crate) struct Running {
    stop: Arc<AtomicBool>,
    workers: usize,
    /// Each worker sends once on this channel as it exits.
    finished: mpsc::Receiver<()>,
}

/// Binds `listen`: first thing at start, so that a start that cannot listen has touched nothing
/// (no database created).
pub(crate) fn listen(listen: SocketAddr) -> Result<TcpListener, Fatal> {
    TcpListener::bind(listen).map_err(Fatal::io(format!("cannot listen on {listen}")))
}

/// Serves `listener` (bound by `listen`, or passed by systemd) with the limits that keep hostile
/// clients from tying up threads (see vendor/tiny_http/PATCHES.md): request heads and bodies are
/// read whole, within their size limits and `request_timeout_ms`, by tiny_http's connection
/// threads before a worker sees them, and at most `max_connections` are open. Separate from
/// `start` so the address can be announced first.
pub(crate) fn with_limits(
    listener: TcpListener,
    config: &Config,
    max_connections: usize,
) -> Result<(Server, SocketAddr), Fatal> {
    let address = listener.local_addr().map_err(Fatal::io("cannot read the listening address"))?;
    let limits = tiny_http::Limits {
        max_line_bytes: 8 * 1024,
        max_head_bytes: 32 * 1024,
        max_headers: 100,
        head_timeout: Some(Duration::from_millis(config.request_timeout_ms)),
        idle_timeout: Some(Duration::from_millis(config.idle_timeout_ms)),
        write_timeout: Some(Duration::from_millis(config.request_timeout_ms)),
        max_body_bytes: config.max_body_bytes,
        max_connections: Some(max_connections),
        error_body: Some(refusal_body),
    };
    let server = Server::from_listener_with_limits(listener, limits)
        .map_err(|error| Fatal::Other(format!("cannot listen on {address}: {error}")))?;
    Ok((server, address))
}

/// The envelope for a request, or a connection, tiny_http refuses before it reaches a worker.
/// tiny_http calls this once per refusal, so it is also where refusals are counted.
fn refusal_body(status: u16, limits: &tiny_http::Limits) -> String {
    METRICS.refused(status);
    let error = match status {
        408 => Error::RequestTimeout,
        413 => Error::BodyTooLarge { limit: limits.max_body_bytes },
        414 => Error::UriTooLong,
        431 => Error::HeadersTooLarge,
        400 => Error::InvalidParameter("HTTP 请求格式不正确".into()),
        417 => Error::InvalidParameter("不支持的 Expect 请求头".into()),
        503 => Error::TooManyConnections,
        505 => Error::HttpVersionNotSupported,
        other => Error::Internal(format!("connection refused with {other}")),
    };
    router::failure(&error).body
}

/// Starts one worker per read connection in `readers`.
pub(crate) fn start(
    server: Server,
    shared: Arc<Shared>,
    writer: &Writer,
    readers: Vec<Connection>,
) -> Result<Running, Fatal> {
    METRICS.started(crate::time::now());
    let server = Arc::new(server);
    let stop = Arc::new(AtomicBool::new(false));
    let (done, finished) = mpsc::channel();
    let slow = start_slow_answers()?;
    let workers = readers.len();
    for (index, db) in readers.into_iter().enumerate() {
        let (server, shared, stop, done) =
            (server.clone(), shared.clone(), stop.clone(), done.clone());
        let worker = Worker { shared, db, writer: writer.clone(), slow: slow.clone() };
        thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match server.recv_timeout(POLL) {
                        Ok(Some(request)) => worker.serve(request),
                        Ok(None) => {}
                        // A shortage of connections, descriptors or threads, once per burst;
                        // tiny_http's text, which holds nothing of a client's.
                        Err(error) => crate::log::warn(&format!("connections: {error}")),
                    }
                }
                // Requests already read when the stop came still get their answers.
                while let Ok(Some(request)) = server.try_recv() {
                    worker.serve(request);
                }
                let _ = done.send(());
            })
            .map_err(Fatal::io("cannot start worker threads"))?;
    }
    Ok(Running { stop, workers, finished })
}

impl Running {
    /// Stops taking requests and lets every worker finish what it was answering, waiting at most
    /// `grace`. Returns false if some worker was still busy when the grace ran out.
    pub(crate) fn stop(self, grace: Duration) -> bool {
        self.stop.store(true, Ordering::Release);
        let deadline = Instant::now() + grace;
        for _ in 0..self.workers {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.finished.recv_timeout(left).is_err() {
                return false;
            }
        }
        true
    }
}

/// What one worker thread holds.
struct Worker {
    shared: Arc<Shared>,
    /// The worker's own read connection.
    db: Connection,
    writer: Writer,
    /// Where the rest of an answer the socket did not take at once goes.
    slow: mpsc::Sender<Unsent>,
}

impl Worker {
    fn serve(&self, mut request: Request) {
        let started = Instant::now();
        let config = self.shared.config();
        let peer =
            request.remote_addr().map(SocketAddr::ip).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let forwarded_for = router::header(&request, "X-Forwarded-For");
        let client =
            router::client_address(peer, forwarded_for.as_deref(), &config.trusted_proxies);
        let apps = &self.shared.apps;
        let app = router::app(apps, request.url());
        let ctx = Ctx {
            config: &config,
            db: &self.db,
            writer: &self.writer,
            app,
            apps,
            codes: &self.shared.codes,
            keys: &self.shared.keys,
            client,
            now: crate::time::now(),
        };
        let reply = catch_unwind(AssertUnwindSafe(|| router::handle(&ctx, &mut request)))
            .unwrap_or_else(|_| router::failure(&Error::Internal("a handler panicked".into())));
        record(app, apps, &request, &reply, started, client);
        respond(request, reply, &self.slow);
    }
}

/// Counts and logs a request's reply before the answer is written, so a client that has its
/// answer can rely on the metrics holding it, and on the log when it is a failure on our side (the
/// other access lines wait a moment to be written together, log.rs). The duration is ours: it
/// leaves out the time a slow client takes to read the answer.
fn record(
    app: &App,
    apps: &[App],
    request: &Request,
    reply: &Reply,
    started: Instant,
    client: IpAddr,
) {
    let duration = started.elapsed();
    // The query may hold a wx.login code: metrics and the log get the path only.
    let path = request.url().split('?').next().unwrap_or("");
    let route = RouteLabel::of(&app.prefix, path, reply.status);
    let slot = apps.iter().position(|known| std::ptr::eq(known, app)).unwrap_or(0);
    METRICS.request(slot, route, reply.status, duration);
    crate::log::access(&crate::log::Access {
        app: &app.name,
        client,
        method: request.method().as_str(),
        path,
        status: reply.status,
        duration,
        error: reply.error.zip(reply.log.as_deref()),
        probe: route.is_probe(),
    });
}

/// Sends the answer without waiting for the client: no worker may be held by a client that does
/// not read its answers (one that pipelines requests and never reads fills its socket within a
/// few thousand answers). What the socket does not take at once goes to the
/// slow-answers thread; a client that reads its answers never leaves a rest, as one request at a
/// time leaves its socket's send buffer empty when the answer is written.
fn respond(request: Request, reply: Reply, slow: &mpsc::Sender<Unsent>) {
    if let Err(unsent) = request.respond_without_waiting(response(reply)) {
        // The slow-answers thread lives as long as any sender, and the caller holds one.
        let _ = slow.send(unsent);
    }
}

fn response(reply: Reply) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut response = Response::from_string(reply.body)
        .with_status_code(reply.status)
        .with_header(header("Content-Type", "application/json; charset=utf-8"))
        .with_header(header("Cache-Control", "no-store"));
    for (name, value) in &reply.headers {
        response.add_header(header(name, value));
    }
    response
}

/// Starts the thread that finishes answers a worker could not send at once: it waits for each
/// such client in turn, within the connection's write budget (`request_timeout_ms`), so only
/// clients that do not read their answers wait behind one another. It ends when the last worker
/// is gone.
fn start_slow_answers() -> Result<mpsc::Sender<Unsent>, Fatal> {
    let (slow, answers) = mpsc::channel::<Unsent>();
    thread::Builder::new()
        .name("slow-answers".into())
        .spawn(move || {
            for unsent in answers {
                // The client may have gone, or not read within the write timeout.
                let _ = unsent.finish();
            }
        })
        .map_err(Fatal::io("cannot start the slow-answers thread"))?;
    Ok(slow)
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("header names and values are ASCII")
}
