//! # Simple usage
//!
//! ## Creating the server
//!
//! The easiest way to create a server is to call `Server::http()`.
//!
//! The `http()` function returns an `IoResult<Server>` which will return an error
//! in the case where the server creation fails (for example if the listening port is already
//! occupied).
//!
//! ```no_run
//! let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! ```
//!
//! A newly-created `Server` will immediately start listening for incoming connections and HTTP
//! requests.
//!
//! ## Receiving requests
//!
//! Calling `server.recv()` will block until the next request is available.
//! This function returns an `IoResult<Request>`, so you need to handle the possible errors.
//!
//! ```no_run
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//!
//! loop {
//!     // blocks until the next request is received
//!     let request = match server.recv() {
//!         Ok(rq) => rq,
//!         Err(e) => { println!("error: {}", e); break }
//!     };
//!
//!     // do something with the request
//!     // ...
//! }
//! ```
//!
//! In a real-case scenario, you will probably want to spawn multiple worker tasks and call
//! `server.recv()` on all of them. Like this:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::thread;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! let server = Arc::new(server);
//! let mut guards = Vec::with_capacity(4);
//!
//! for _ in (0 .. 4) {
//!     let server = server.clone();
//!
//!     let guard = thread::spawn(move || {
//!         loop {
//!             let rq = server.recv().unwrap();
//!
//!             // ...
//!         }
//!     });
//!
//!     guards.push(guard);
//! }
//! ```
//!
//! If you don't want to block, you can call `server.try_recv()` instead.
//!
//! ## Handling requests
//!
//! The `Request` object returned by `server.recv()` contains informations about the client's request.
//! The most useful methods are probably `request.method()` and `request.url()` which return
//! the requested method (`GET`, `POST`, etc.) and url.
//!
//! To handle a request, you need to create a `Response` object. See the docs of this object for
//! more infos. Here is an example of creating a `Response` from a file:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! ```
//!
//! All that remains to do is call `request.respond()`:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! # let request = server.recv().unwrap();
//! # let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! let _ = request.respond(response);
//! ```
// [wxauth patch] deny, not forbid: util/readiness.rs allows itself one call to poll(2)
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::match_like_matches_macro)]

#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use zeroize::Zeroizing;

use std::error::Error;
use std::io::Error as IoError;
use std::io::ErrorKind as IoErrorKind;
use std::io::Result as IoResult;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use client::ClientConnection;
use connection::Connection;
use util::MessagesQueue;

pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use connection::{ConfigListenAddr, ListenAddr, Listener};
pub use request::{ReadWrite, Request, Unsent}; // [wxauth patch] Unsent
pub use response::{Response, ResponseBox};
pub use test::TestRequest;

mod client;
mod common;
mod connection;
mod request;
mod response;
mod ssl;
mod test;
mod util;

/// The main class of this library.
///
/// Destroying this object will immediately close the listening socket and the reading
///  part of all the client's connections. Requests that have already been returned by
///  the `recv()` function will not close and the responses will be transferred to the client.
pub struct Server {
    // should be false as long as the server exists
    // when set to true, all the subtasks will close within a few hundreds ms
    close: Arc<AtomicBool>,

    // queue for messages received by child threads
    messages: Arc<MessagesQueue<Message>>,

    // result of TcpListener::local_addr()
    listening_addr: ListenAddr,
}

enum Message {
    Error(IoError),
    NewRequest(Request),
}

impl From<IoError> for Message {
    fn from(e: IoError) -> Message {
        Message::Error(e)
    }
}

impl From<Request> for Message {
    fn from(rq: Request) -> Message {
        Message::NewRequest(rq)
    }
}

// this trait is to make sure that Server implements Share and Send
#[doc(hidden)]
trait MustBeShareDummy: Sync + Send {}
#[doc(hidden)]
impl MustBeShareDummy for Server {}

pub struct IncomingRequests<'a> {
    server: &'a Server,
}

/// Represents the parameters required to create a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The addresses to try to listen to.
    pub addr: ConfigListenAddr,

    /// If `Some`, then the server will use SSL to encode the communications.
    pub ssl: Option<SslConfig>,
}

/// Configuration of the server for SSL.
#[derive(Debug, Clone)]
pub struct SslConfig {
    /// Contains the public certificate to send to clients.
    pub certificate: Vec<u8>,
    /// Contains the ultra-secret private key used to decode communications.
    pub private_key: Vec<u8>,
}

/// [wxauth patch] Bounds on what a client may make a connection thread do, for servers built
/// with [`Server::from_listener_with_limits`]. The other constructors apply no limits.
///
/// A request head that breaks a limit is answered by the connection thread itself, with
/// `Connection: close`, and the connection is closed; the application never sees it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request line or header line, without its CRLF. A longer request line is
    /// answered with 414, a longer header line with 431.
    pub max_line_bytes: usize,
    /// Largest request head: the request line and the header lines, each with its CRLF.
    /// A larger head is answered with 431.
    pub max_head_bytes: usize,
    /// Most header lines in one request head. More are answered with 431.
    pub max_headers: usize,
    /// How long the whole request head may take to arrive, from its first byte, and then the
    /// whole body, from the end of the head. A slower head or body is answered with 408.
    pub head_timeout: Option<Duration>,
    /// How long a connection may wait for the first byte of a request, the first one or the
    /// next one on a kept-alive connection. An idle connection is closed without a response.
    pub idle_timeout: Option<Duration>,
    /// How long the writes of one response may wait for the client, in all. Past it the
    /// connection is closed.
    pub write_timeout: Option<Duration>,
    /// Largest request body. The connection thread reads every body whole, within
    /// `head_timeout` from the end of the head, before the application sees the request; a
    /// larger one is answered with 413.
    pub max_body_bytes: usize,
    /// Most client connections open at once (`None`: no bound). Past it a new connection is
    /// answered with 503 and `Retry-After: 1`, and closed; open connections are served as usual.
    pub max_connections: Option<usize>,
    /// Makes the body of the responses written for a broken limit (and for the other requests
    /// refused before the application sees them: 400, 417, 505, and 503 past
    /// `max_connections`), sent as `application/json; charset=utf-8`, from the status and these
    /// limits. `None` sends an empty body.
    pub error_body: Option<fn(u16, &Limits) -> String>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_line_bytes: 8 * 1024,
            max_head_bytes: 32 * 1024,
            max_headers: 100,
            head_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(30)),
            write_timeout: Some(Duration::from_secs(30)),
            max_body_bytes: 1024 * 1024,
            max_connections: None,
            error_body: None,
        }
    }
}

impl Server {
    /// Shortcut for a simple server on a specific address.
    #[inline]
    pub fn http<A>(addr: A) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: None,
        })
    }

    /// Shortcut for an HTTPS server on a specific address.
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    #[inline]
    pub fn https<A>(
        addr: A,
        config: SslConfig,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: Some(config),
        })
    }

    #[cfg(unix)]
    #[inline]
    /// Shortcut for a UNIX socket server at a specific path
    pub fn http_unix(
        path: &std::path::Path,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::unix_from_path(path),
            ssl: None,
        })
    }

    /// Builds a new server that listens on the specified address.
    pub fn new(config: ServerConfig) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = config.addr.bind()?;
        Self::from_listener(listener, config.ssl)
    }

    /// Builds a new server using the specified TCP listener.
    ///
    /// This is useful if you've constructed TcpListener using some less usual method
    /// such as from systemd. For other cases, you probably want the `new()` function.
    pub fn from_listener<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Self::from_listener_impl(listener.into(), ssl_config, None)
    }

    /// [wxauth patch] Builds a new plain HTTP server using the specified listener, which
    /// defends its connection threads against hostile clients as `limits` says.
    ///
    /// Under limits a connection also answers one request at a time: the next request head is
    /// read only once the previous request has been answered, and each request's body is read
    /// whole by the connection's thread before the application sees the request. Trouble
    /// accepting a connection is reported through `recv()`, and accepting goes on.
    pub fn from_listener_with_limits(
        listener: impl Into<Listener>,
        limits: Limits,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        // The socket API refuses a zero timeout; `None` is how to say "no timeout".
        let timeouts = [
            limits.head_timeout,
            limits.idle_timeout,
            limits.write_timeout,
        ];
        if timeouts.iter().any(|t| *t == Some(Duration::from_secs(0))) {
            return Err("a Limits timeout must not be zero (use None for no timeout)".into());
        }
        Self::from_listener_impl(listener.into(), None, Some(limits))
    }

    fn from_listener_impl(
        listener: Listener,
        ssl_config: Option<SslConfig>,
        limits: Option<Limits>,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        // building the "close" variable
        let close_trigger = Arc::new(AtomicBool::new(false));

        // building the TcpListener
        let (server, local_addr) = {
            let local_addr = listener.local_addr()?;
            log::debug!("Server listening on {}", local_addr);
            (listener, local_addr)
        };

        // building the SSL capabilities
        #[cfg(all(feature = "ssl-openssl", feature = "ssl-rustls"))]
        compile_error!(
            "Features 'ssl-openssl' and 'ssl-rustls' must not be enabled at the same time"
        );
        #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
        type SslContext = ();
        #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
        type SslContext = crate::ssl::SslContextImpl;
        let ssl: Option<SslContext> = {
            match ssl_config {
                #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
                Some(config) => Some(SslContext::from_pem(
                    config.certificate,
                    Zeroizing::new(config.private_key),
                )?),
                #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
                Some(_) => return Err(
                    "Building a server with SSL requires enabling the `ssl` feature in tiny-http"
                        .into(),
                ),
                None => None,
            }
        };

        // creating a task where server.accept() is continuously called
        // and ClientConnection objects are pushed in the messages queue
        let messages = MessagesQueue::with_capacity(8);

        let inside_close_trigger = close_trigger.clone();
        let inside_messages = messages.clone();
        // [wxauth patch] `Builder` reports a failure to start the thread instead of panicking
        let accept_thread = thread::Builder::new().spawn(move || {
            // a tasks pool is used to dispatch the connections into threads
            let tasks_pool = util::TaskPool::new();
            // [wxauth patch] what keeps a limited server accepting through a shortage
            let mut accepting = limits.map(Accepting::new);

            log::debug!("Running accept thread");
            while !inside_close_trigger.load(Relaxed) {
                if let Some(accepting) = accepting.as_mut() {
                    accepting.keep_spare();
                }
                let sock = match server.accept() {
                    Ok((sock, _)) => sock,
                    // [wxauth patch] A limited server keeps accepting, whatever the error.
                    Err(e) => match accepting.as_mut() {
                        Some(accepting) => {
                            accepting.accept_failed(&server, e, &inside_messages);
                            continue;
                        }
                        None => {
                            log::error!("Error accepting new client: {}", e);
                            inside_messages.push(e.into());
                            break;
                        }
                    },
                };

                // [wxauth patch] counted while open; refused with 503 past `max_connections`
                let open = match accepting.as_mut() {
                    Some(accepting) => match accepting.admit(&sock, &inside_messages) {
                        Some(open) => Some(open),
                        None => continue,
                    },
                    None => None,
                };

                // [wxauth patch]
                if let Err(e) = set_timeouts(&sock, limits.as_ref()) {
                    log::debug!("Cannot set socket timeouts: {}", e);
                    continue;
                }

                // [wxauth patch] The socket the connection thread waits on between requests
                // (plain HTTP under limits). It is the descriptor of the connection's write half,
                // which `ClientConnection` owns for as long as its thread runs.
                let ready_fd = match (&limits, &ssl) {
                    (Some(_), None) => sock.raw_fd(),
                    _ => None,
                };
                let write_budget = limits.and_then(|limits| limits.write_timeout);

                use util::RefinedTcpStream;
                let halves = match ssl {
                    None => RefinedTcpStream::new(sock, write_budget, open),
                    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
                    Some(ref ssl) => {
                        // trying to apply SSL over the connection
                        // if an error occurs, we just close the socket and resume listening
                        let sock = match ssl.accept(sock) {
                            Ok(s) => s,
                            Err(_) => continue,
                        };

                        RefinedTcpStream::new(sock, None, open)
                    }
                    #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
                    Some(ref _ssl) => unreachable!(),
                };
                // [wxauth patch] The socket could not be duplicated (no descriptor left): the
                // connection is closed, and accepting goes on.
                let (read_closable, write_closable) = match halves {
                    Ok(halves) => halves,
                    Err(e) => {
                        if let Some(accepting) = accepting.as_mut() {
                            accepting.shortage(e, &inside_messages);
                        }
                        continue;
                    }
                };

                let client = ClientConnection::new(write_closable, read_closable);
                let mut client = Some(client.with_limits(limits)); // [wxauth patch]
                let messages = inside_messages.clone();
                let idle_timeout = limits.and_then(|limits| limits.idle_timeout);
                let spawned = tasks_pool.spawn(Box::new(move || {
                    if let Some(mut client) = client.take() {
                        // Synchronization is needed for HTTPS requests to avoid a deadlock
                        // [wxauth patch] and under limits, so that a client cannot queue
                        // requests (and memory) faster than they are answered
                        if client.secure() || client.limited() {
                            let (sender, receiver) = mpsc::channel();
                            while let Some(rq) = client.next() {
                                messages.push(rq.with_notify_sender(sender.clone()).into());
                                // [wxauth patch] Sleep until the client sends again, which it
                                // does once it has the answer, so the answer's notice is then
                                // waiting: one sleep per request, not one for the notice and
                                // one for the next bytes. Not after a last request (nothing
                                // will come, the connection ends once it is answered), and not
                                // when bytes of the next request are already buffered (they
                                // never make the socket readable).
                                if let Some(fd) = ready_fd.filter(|_| {
                                    client.expects_more() && !client.has_buffered_bytes()
                                }) {
                                    util::wait_readable(fd, idle_timeout);
                                }
                                // We hold a sender, so this ends with the answer's notice.
                                match receiver.recv() {
                                    Ok(answered) => client.answered_at(answered),
                                    Err(_) => break,
                                }
                            }
                        } else {
                            for rq in client {
                                messages.push(rq.into());
                            }
                        }
                    }
                }));
                // [wxauth patch] No thread for the connection: it was dropped, so closed.
                if let Err(e) = spawned {
                    match accepting.as_mut() {
                        Some(accepting) => accepting.shortage(e, &inside_messages),
                        None => log::error!("Cannot start a connection thread: {}", e),
                    }
                }
            }
            log::debug!("Terminating accept thread");
        });
        accept_thread?;

        // result
        Ok(Server {
            messages,
            close: close_trigger,
            listening_addr: local_addr,
        })
    }

    /// Returns an iterator for all the incoming requests.
    ///
    /// The iterator will return `None` if the server socket is shutdown.
    #[inline]
    pub fn incoming_requests(&self) -> IncomingRequests<'_> {
        IncomingRequests { server: self }
    }

    /// Returns the address the server is listening to.
    #[inline]
    pub fn server_addr(&self) -> ListenAddr {
        self.listening_addr.clone()
    }

    /// Returns the number of clients currently connected to the server.
    pub fn num_connections(&self) -> usize {
        unimplemented!()
        //self.requests_receiver.lock().len()
    }

    /// Blocks until an HTTP request has been submitted and returns it.
    pub fn recv(&self) -> IoResult<Request> {
        match self.messages.pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(rq),
            None => Err(IoError::new(IoErrorKind::Other, "thread unblocked")),
        }
    }

    /// Same as `recv()` but doesn't block longer than timeout
    pub fn recv_timeout(&self, timeout: Duration) -> IoResult<Option<Request>> {
        match self.messages.pop_timeout(timeout) {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Same as `recv()` but doesn't block.
    pub fn try_recv(&self) -> IoResult<Option<Request>> {
        match self.messages.try_pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Unblock thread stuck in recv() or incoming_requests().
    /// If there are several such threads, only one is unblocked.
    /// This method allows graceful shutdown of server.
    pub fn unblock(&self) {
        self.messages.unblock();
    }
}

/// [wxauth patch] Bounds every read and write of a new limited connection from the start; the
/// connection thread then adjusts the read timeout as the connection goes.
fn set_timeouts(sock: &Connection, limits: Option<&Limits>) -> IoResult<()> {
    match limits {
        Some(limits) => {
            sock.set_read_timeout(limits.idle_timeout)?;
            sock.set_write_timeout(limits.write_timeout)?;
            // A response is written as one or two writes (head, then a body too big for the
            // buffer); with Nagle on, the second waits for the client's delayed ACK of the
            // first, 40 ms on Linux.
            sock.set_nodelay()
        }
        None => Ok(()),
    }
}

/// [wxauth patch] How long the accept loop pauses after a failure to accept or to start a
/// connection, so that a shortage that lasts does not become a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// [wxauth patch] Keeps a limited server's accept loop going through a shortage: no descriptor,
/// no thread, or `max_connections` open. The connection at hand is refused or closed, the loop
/// backs off where waiting helps, and each kind of trouble is reported through `recv()` once
/// per burst (a burst ends after a second without that trouble). Service resumes by itself
/// once connections close.
struct Accepting {
    limits: Limits,
    /// Client connections open now.
    open: Arc<std::sync::atomic::AtomicUsize>,
    /// A descriptor held back: when the process has none left, it is let go for a moment to
    /// accept a waiting connection and close it, instead of leaving that client hanging.
    spare: Option<std::fs::File>,
    /// When each kind of trouble (`Trouble as usize`) last happened.
    last_trouble: [Option<std::time::Instant>; 3],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trouble {
    Full = 0,
    Descriptors = 1,
    Other = 2,
}

impl Accepting {
    fn new(limits: Limits) -> Accepting {
        Accepting {
            limits,
            open: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            spare: spare_descriptor(),
            last_trouble: [None; 3],
        }
    }

    /// Takes the spare descriptor again if it was let go and could not be had back then.
    fn keep_spare(&mut self) {
        if self.spare.is_none() {
            self.spare = spare_descriptor();
        }
    }

    /// The connection's place in the count, or `None` when `max_connections` are open: it
    /// is then answered 503 (without waiting: what its socket does not take at once is lost)
    /// and closed.
    fn admit(
        &mut self,
        sock: &Connection,
        messages: &MessagesQueue<Message>,
    ) -> Option<util::OpenConnection> {
        let open = self.open.load(std::sync::atomic::Ordering::Acquire);
        match self.limits.max_connections {
            Some(max) if open >= max => {
                // Sent without waiting, then a FIN and what the client already sent read away,
                // so that closing does not make the kernel send a reset that would lose the 503
                // (most clients send their request at once). The accept thread never waits.
                #[cfg(unix)]
                if let Some(fd) = sock.raw_fd() {
                    let _ = util::send_without_waiting(fd, &refusal(503, &self.limits));
                    let _ = sock.shutdown(std::net::Shutdown::Write);
                    util::discard_without_waiting(fd, 16 * 1024);
                }
                let text = format!(
                    "{} client connections are open, the most allowed: new ones get 503 until some close",
                    open
                );
                self.report(Trouble::Full, text, messages);
                None
            }
            _ => Some(util::OpenConnection::new(&self.open)),
        }
    }

    /// `accept` failed. Out of descriptors, the spare one is let go to accept and close one
    /// waiting connection; either way the loop backs off before it accepts again.
    fn accept_failed(
        &mut self,
        listener: &Listener,
        error: IoError,
        messages: &MessagesQueue<Message>,
    ) {
        if is_out_of_descriptors(&error) && self.spare.take().is_some() {
            if let Ok((sock, _)) = listener.accept() {
                drop(sock);
            }
            self.spare = spare_descriptor();
        }
        self.shortage(error, messages);
    }

    /// A connection could not be set up (`error`), and was closed: report, back off.
    fn shortage(&mut self, error: IoError, messages: &MessagesQueue<Message>) {
        let (trouble, text) = if is_out_of_descriptors(&error) {
            let text = format!(
                "no file descriptor left ({}): new connections are closed until some are freed",
                error
            );
            (Trouble::Descriptors, text)
        } else {
            let text = format!(
                "a new connection could not be set up ({}): it was closed",
                error
            );
            (Trouble::Other, text)
        };
        self.report(trouble, text, messages);
        thread::sleep(ACCEPT_BACKOFF);
    }

    fn report(&mut self, trouble: Trouble, text: String, messages: &MessagesQueue<Message>) {
        let now = std::time::Instant::now();
        let last = self.last_trouble[trouble as usize].replace(now);
        let new_burst = last.map_or(true, |at| now.duration_since(at) > Duration::from_secs(1));
        if new_burst {
            messages.push(IoError::new(IoErrorKind::Other, text).into());
        }
    }
}

/// [wxauth patch] EMFILE (this process) or ENFILE (the whole system).
fn is_out_of_descriptors(error: &IoError) -> bool {
    #[cfg(unix)]
    {
        matches!(
            error.raw_os_error(),
            Some(libc::EMFILE) | Some(libc::ENFILE)
        )
    }
    #[cfg(not(unix))]
    {
        let _ = error;
        false
    }
}

/// [wxauth patch] The descriptor `Accepting` holds back.
fn spare_descriptor() -> Option<std::fs::File> {
    #[cfg(unix)]
    {
        std::fs::File::open("/dev/null").ok()
    }
    #[cfg(not(unix))]
    None
}

/// [wxauth patch] The whole response refusing a request, or a connection, before the
/// application sees it; the connection is closed after it. 503 says when to come back.
pub(crate) fn refusal(status: u16, limits: &Limits) -> Vec<u8> {
    let body = match limits.error_body {
        Some(error_body) => error_body(status, limits),
        None => String::new(),
    };
    let retry = if status == 503 {
        "Retry-After: 1\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: {}\r\n{}Connection: close\r\n\r\n",
        status,
        StatusCode(status).default_reason_phrase(),
        body.len(),
        retry
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

impl Iterator for IncomingRequests<'_> {
    type Item = Request;
    fn next(&mut self) -> Option<Request> {
        self.server.recv().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close.store(true, Relaxed);
        // Connect briefly to ourselves to unblock the accept thread
        let maybe_stream = match &self.listening_addr {
            ListenAddr::IP(addr) => TcpStream::connect(addr).map(Connection::from),
            #[cfg(unix)]
            ListenAddr::Unix(addr) => {
                // TODO: use connect_addr when its stabilized.
                let path = addr.as_pathname().unwrap();
                std::os::unix::net::UnixStream::connect(path).map(Connection::from)
            }
        };
        if let Ok(stream) = maybe_stream {
            let _ = stream.shutdown(Shutdown::Both);
        }

        #[cfg(unix)]
        if let ListenAddr::Unix(addr) = &self.listening_addr {
            if let Some(path) = addr.as_pathname() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
