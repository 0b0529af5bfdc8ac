use std::cell::Cell;
use std::io::Result as IoResult;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connection::Connection;
#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use crate::ssl::SslStream;

pub(crate) enum Stream {
    Http(Connection),
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    Https(SslStream),
}

impl Stream {
    /// [wxauth patch] A second handle on the same connection. Fallible (upstream's `Clone`
    /// unwrapped it): duplicating a socket fails when the process has no descriptor left, and
    /// that must cost the connection, not the accept thread.
    fn try_clone(&self) -> IoResult<Stream> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.try_clone().map(Stream::Http),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => Ok(Stream::Https(ssl_stream.clone())),
        }
    }
}

impl From<Connection> for Stream {
    fn from(tcp_stream: Connection) -> Self {
        Stream::Http(tcp_stream)
    }
}

impl Stream {
    fn secure(&self) -> bool {
        match self {
            Stream::Http(_) => false,
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => true,
        }
    }

    fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.peer_addr(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.peer_addr(),
        }
    }

    fn shutdown(&mut self, how: Shutdown) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.shutdown(how),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.read(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.read(buf),
        }
    }
}

thread_local! {
    /// [wxauth patch] While set, plain HTTP writes on this thread never wait for room in the
    /// socket: what does not fit now fails with `WouldBlock` (see `without_waiting`).
    static DONT_WAIT: Cell<bool> = const { Cell::new(false) };
}

/// [wxauth patch] Runs `write` with every plain HTTP socket write it makes on this thread sent
/// with `MSG_DONTWAIT` (`Request::respond_without_waiting`). Secure streams, and systems without
/// `send(2)`, still wait.
pub(crate) fn without_waiting<T>(write: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            DONT_WAIT.with(|flag| flag.set(false));
        }
    }
    DONT_WAIT.with(|flag| flag.set(true));
    let _reset = Reset;
    write()
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        match self {
            #[cfg(unix)]
            Stream::Http(tcp_stream) if DONT_WAIT.with(Cell::get) => match tcp_stream.raw_fd() {
                Some(fd) => crate::util::send_without_waiting(fd, buf),
                None => tcp_stream.write(buf),
            },
            Stream::Http(tcp_stream) => tcp_stream.write(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.write(buf),
        }
    }

    fn flush(&mut self) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.flush(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.flush(),
        }
    }
}

pub struct RefinedTcpStream {
    stream: Stream,
    close_read: bool,
    close_write: bool,
    /// [wxauth patch] How long the writes of one response may wait for the client in all
    /// (`Limits::write_timeout`); `None`: each write waits as the socket's own timeout allows.
    write_budget: Option<Duration>,
    /// [wxauth patch] When a write of the current response first had to wait; cleared by a
    /// complete flush, which ends every response.
    waiting_since: Option<Instant>,
    /// [wxauth patch] Counts the connection as open while either half lives.
    _open: Option<Arc<OpenConnection>>,
}

/// [wxauth patch] One open connection in a server's count (`Limits::max_connections`): the
/// count goes down when both halves of the connection, and so its descriptors, are gone.
pub(crate) struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    pub(crate) fn new(count: &Arc<AtomicUsize>) -> OpenConnection {
        count.fetch_add(1, Ordering::AcqRel);
        OpenConnection(count.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RefinedTcpStream {
    /// The two halves of a connection: (read, write). [wxauth patch] Fails when the socket
    /// cannot be duplicated (no descriptor left); `write_budget` bounds the writes of each
    /// response in all, and `open` counts the connection while either half lives.
    pub(crate) fn new<S>(
        stream: S,
        write_budget: Option<Duration>,
        open: Option<OpenConnection>,
    ) -> IoResult<(RefinedTcpStream, RefinedTcpStream)>
    where
        S: Into<Stream>,
    {
        let stream: Stream = stream.into();

        let (read, write) = (stream.try_clone()?, stream);
        let open = open.map(Arc::new);

        let read = RefinedTcpStream {
            stream: read,
            close_read: true,
            close_write: false,
            write_budget: None,
            waiting_since: None,
            _open: open.clone(),
        };

        let write = RefinedTcpStream {
            stream: write,
            close_read: false,
            close_write: true,
            write_budget,
            waiting_since: None,
            _open: open,
        };

        Ok((read, write))
    }

    /// Returns true if this struct wraps around a secure connection.
    #[inline]
    pub(crate) fn secure(&self) -> bool {
        self.stream.secure()
    }

    pub(crate) fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        self.stream.peer_addr()
    }

    /// [wxauth patch] Sets the socket's read timeout, for both halves of the connection.
    /// Limits apply to plain HTTP only, so a secure stream refuses.
    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> IoResult<()> {
        match &self.stream {
            Stream::Http(tcp_stream) => tcp_stream.set_read_timeout(timeout),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => Err(std::io::Error::new(
                std::io::ErrorKind::Other,
                "read timeouts are not supported on secure connections",
            )),
        }
    }

    /// [wxauth patch] Tells the client nothing more will be written (a FIN), while its bytes can
    /// still be read: a lingering close, after a refusal.
    pub(crate) fn shutdown_write(&mut self) {
        self.stream.shutdown(Shutdown::Write).ok();
    }

    /// [wxauth patch] A write that waits for room in the socket only while the response's
    /// budget lasts: it sends without waiting, and when the socket is full it waits in poll(2)
    /// for what is left of `write_budget` since the response's first wait. Past it the write
    /// fails with `TimedOut` and the connection is shut down, so a client that stops reading
    /// holds the writing thread for at most the budget, however it paces its reads, and the
    /// connection thread sees the end at once.
    #[cfg(unix)]
    fn write_within_budget(
        &mut self,
        fd: crate::util::RawFd,
        budget: Duration,
        buf: &[u8],
    ) -> IoResult<usize> {
        loop {
            match crate::util::send_without_waiting(fd, buf) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    let since = *self.waiting_since.get_or_insert_with(Instant::now);
                    let left = budget.saturating_sub(since.elapsed());
                    if left.is_zero() {
                        self.stream.shutdown(Shutdown::Both).ok();
                        return Err(std::io::ErrorKind::TimedOut.into());
                    }
                    crate::util::wait_writable(fd, left);
                }
                result => return result,
            }
        }
    }
}

impl Drop for RefinedTcpStream {
    fn drop(&mut self) {
        if self.close_read {
            self.stream.shutdown(Shutdown::Read).ok();
        }

        if self.close_write {
            self.stream.shutdown(Shutdown::Write).ok();
        }
    }
}

impl Read for RefinedTcpStream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        self.stream.read(buf)
    }
}

impl Write for RefinedTcpStream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        // [wxauth patch] under limits, plain HTTP writes wait within the response's budget
        #[cfg(unix)]
        if let (Some(budget), Stream::Http(connection)) = (self.write_budget, &self.stream) {
            if let Some(fd) = connection.raw_fd().filter(|_| !DONT_WAIT.with(Cell::get)) {
                return self.write_within_budget(fd, budget, buf);
            }
        }
        self.stream.write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        let flushed = self.stream.flush();
        if flushed.is_ok() {
            self.waiting_since = None; // [wxauth patch] the response is out
        }
        flushed
    }
}
