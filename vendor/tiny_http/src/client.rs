use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Read, Write};

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::common::{HTTPVersion, Method};
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::{Limits, Request};

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // [wxauth patch] bounds on this connection's request heads; None (upstream) for no bounds
    limits: Option<Limits>,

    // [wxauth patch] when the request head being read must be complete, under limits
    head_deadline: Option<Instant>,

    // [wxauth patch] when the previous request was answered: the idle timeout runs from then
    answered: Option<Instant>,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
    // [wxauth patch] the next three happen only under limits
    /// no request started within the idle timeout
    Idle,
    /// the request head was not complete by its deadline
    HeadTimeout,
    /// the request head broke a size limit; the status to answer (414 or 431)
    HeadTooLarge(u16),
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            // [wxauth patch] 4 KiB (was 1 KiB): head and a typical JSON answer leave in one write.
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(4096, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            limits: None,
            head_deadline: None,
            answered: None,
        }
    }

    /// [wxauth patch] Applies `limits` to this connection's request heads (None: no limits).
    pub fn with_limits(mut self, limits: Option<Limits>) -> ClientConnection {
        self.limits = limits;
        self
    }

    /// [wxauth patch] Tells the connection when its previous request was answered: the wait for
    /// the next one is bounded by the idle timeout from then, however late the connection
    /// thread learns of it.
    pub(crate) fn answered_at(&mut self, at: Instant) {
        self.answered = Some(at);
    }

    /// [wxauth patch] false once a request has said it is the last (`Connection: close`,
    /// HTTP/1.0 without keep-alive, an upgrade): the connection then ends after its answer.
    pub(crate) fn expects_more(&self) -> bool {
        !self.no_more_requests
    }

    /// [wxauth patch] true if the connection has limits
    pub fn limited(&self) -> bool {
        self.limits.is_some()
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// [wxauth patch] Sets the socket's read timeout. It blocks until the previous request's
    /// body reader is done, so it never changes the timeout under the application's feet.
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> IoResult<()> {
        self.next_header_source
            .get_mut()
            .get_ref()
            .set_read_timeout(timeout)
    }

    /// [wxauth patch] Waits, no longer than the idle timeout, for the first byte of the next
    /// request head.
    fn wait_for_request(&mut self, limits: &Limits) -> Result<(), ReadError> {
        // What is left of the idle timeout since the previous answer; at least a millisecond (a
        // socket timeout cannot be zero), in which bytes already there are still taken.
        let timeout = match (limits.idle_timeout, self.answered.take()) {
            (Some(idle), Some(answered)) => Some(
                idle.saturating_sub(answered.elapsed())
                    .max(Duration::from_millis(1)),
            ),
            (idle, _) => idle,
        };
        self.set_read_timeout(timeout)
            .map_err(ReadError::ReadIoError)?;

        loop {
            return match self.next_header_source.get_mut().fill_buf() {
                Ok([]) => Err(ReadError::ReadIoError(IoError::new(
                    ErrorKind::ConnectionAborted,
                    "Unexpected EOF",
                ))),
                Ok(_) => Ok(()),
                Err(ref err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(ref err) if is_timeout(err) => Err(ReadError::Idle),
                Err(err) => Err(ReadError::ReadIoError(err)),
            };
        }
    }

    /// [wxauth patch] Answers a request head refused under limits, before the application sees
    /// it; the caller then closes the connection. The socket's write timeout bounds the writes.
    fn refuse(&mut self, status: u16) {
        use crate::StatusCode;

        let body = match self.limits.and_then(|limits| limits.error_body) {
            Some(error_body) => error_body(status),
            None => String::new(),
        };
        let head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            status,
            StatusCode(status).default_reason_phrase(),
            body.len()
        );

        let mut writer = self.sink.next().unwrap();
        writer
            .write_all(head.as_bytes())
            .and_then(|()| writer.write_all(body.as_bytes()))
            .and_then(|()| writer.flush())
            .ok();
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    ///
    /// [wxauth patch] A line longer than `max_len` (without its CRLF) is refused with
    /// `too_long` as soon as it gets longer, and no read waits past `self.head_deadline`.
    fn read_next_line(&mut self, max_len: usize, too_long: u16) -> Result<AsciiString, ReadError> {
        let mut buf = Vec::new();

        loop {
            // [wxauth patch] A read that will reach the socket may not wait past the deadline,
            // so a client trickling its head gets no more time than one that stalls.
            if let Some(deadline) = self.head_deadline {
                if self.next_header_source.get_mut().buffer().is_empty() {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining == Duration::from_secs(0) {
                        return Err(ReadError::HeadTimeout);
                    }
                    self.set_read_timeout(Some(remaining))
                        .map_err(ReadError::ReadIoError)?;
                }
            }

            // [wxauth patch] Scan what is buffered for the line's end instead of taking one byte
            // at a time through three `Read` layers (about a hundred instructions a byte). Only
            // the line itself is consumed: what follows stays buffered for the next line or the
            // body.
            let reader = self.next_header_source.get_mut();
            let available = match reader.fill_buf() {
                Ok(available) => available,
                Err(ref err) if err.kind() == ErrorKind::Interrupted => continue,
                // [wxauth patch] under limits, the only read timeout here is the deadline's
                Err(ref err) if self.head_deadline.is_some() && is_timeout(err) => {
                    return Err(ReadError::HeadTimeout)
                }
                Err(err) => return Err(ReadError::ReadIoError(err)),
            };
            if available.is_empty() {
                return Err(ReadError::ReadIoError(IoError::new(
                    ErrorKind::ConnectionAborted,
                    "Unexpected EOF",
                )));
            }
            let newline = available.iter().position(|&byte| byte == b'\n');
            let taken = newline.map_or(available.len(), |index| index + 1);
            buf.extend_from_slice(&available[..taken]);
            reader.consume(taken);

            // Only CRLF ends a line; a bare LF is part of it, as upstream reads it.
            let complete = newline.is_some() && buf.ends_with(b"\r\n");
            if complete {
                buf.truncate(buf.len() - 2);
            }
            // [wxauth patch] the line so far, not counting a '\r' that may begin its CRLF
            let length = buf.len() - usize::from(!complete && buf.ends_with(b"\r"));
            if length > max_len {
                return Err(ReadError::HeadTooLarge(too_long));
            }
            if complete {
                return AsciiString::from_ascii(buf).map_err(|_| {
                    ReadError::ReadIoError(IoError::new(
                        ErrorKind::InvalidInput,
                        "Header is not in ASCII",
                    ))
                });
            }
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        // [wxauth patch] Under limits, wait for the head's first byte no longer than the idle
        // timeout, then give the whole head until its deadline.
        let limits = self.limits;
        self.head_deadline = None;
        if let Some(ref limits) = limits {
            self.wait_for_request(limits)?;
            self.head_deadline = limits.head_timeout.map(|timeout| Instant::now() + timeout);
        }
        let (max_line, max_head, max_headers) = match limits {
            Some(l) => (l.max_line_bytes, l.max_head_bytes, l.max_headers),
            None => (usize::MAX, usize::MAX, usize::MAX),
        };
        // bytes of the head read so far, each line with its CRLF
        let mut head_length = 0;

        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                let max_len = max_line.min(max_head.saturating_sub(2));
                let line = self.read_next_line(max_len, 414)?;
                head_length += line.len() + 2;

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                loop {
                    let max_len = max_line.min(max_head.saturating_sub(head_length + 2));
                    let line = self.read_next_line(max_len, 431)?;
                    head_length += line.len() + 2;

                    if line.is_empty() {
                        break;
                    };
                    // [wxauth patch]
                    if headers.len() == max_headers {
                        return Err(ReadError::HeadTooLarge(431));
                    }
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // [wxauth patch] The head is complete. Reads of the body, which the application does
        // later, each get the head timeout, so a stalled body cannot block it forever.
        if let Some(ref limits) = limits {
            self.head_deadline = None;
            self.set_read_timeout(limits.head_timeout)
                .map_err(ReadError::ReadIoError)?;
        }

        // [wxauth patch] a client that reset the connection before we asked for its address
        // made upstream panic here
        let remote_addr = match self.remote_addr {
            Ok(addr) => addr,
            Err(ref err) => {
                return Err(ReadError::ReadIoError(IoError::new(
                    err.kind(),
                    "no peer address",
                )))
            }
        };

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            remote_addr,
            data_source,
            writer,
            // [wxauth patch] under limits the connection thread never waits for body bytes
            limits.is_none(),
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;

        // return the request
        Ok(request)
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        loop {
            let rq = match self.read() {
                // [wxauth patch] Under limits, refusals use `refuse` and always close.
                Err(err) if self.limits.is_some() => {
                    match err {
                        ReadError::Idle | ReadError::ReadIoError(_) => (), // closing silently
                        ReadError::HeadTimeout => self.refuse(408),
                        ReadError::HeadTooLarge(status) => self.refuse(status),
                        ReadError::WrongRequestLine | ReadError::WrongHeader(_) => self.refuse(400),
                        ReadError::ExpectationFailed(_) => self.refuse(417),
                    }
                    return None;
                }

                Err(ReadError::WrongRequestLine) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::WrongHeader(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response.raw_print(writer, ver, &[], false, None).ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::ReadIoError(ref err)) if err.kind() == ErrorKind::TimedOut => {
                    // request timeout
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(408));
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // closing the connection
                }

                Err(ReadError::ExpectationFailed(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(417));
                    response.raw_print(writer, ver, &[], true, None).ok();
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                // [wxauth patch] `_`: ReadIoError, and the errors that only limits cause
                Err(_) => return None,

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                let writer = self.sink.next().unwrap();
                let response = Response::from_string(
                    "This server only supports HTTP versions 1.0 and 1.1".to_owned(),
                )
                .with_status_code(StatusCode(505));
                response
                    .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                    .ok();
                continue;
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // returning the request
            return Some(rq);
        }
    }
}

/// [wxauth patch] A socket read timeout is `WouldBlock` on Unix, `TimedOut` on Windows.
fn is_timeout(err: &IoError) -> bool {
    match err.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => true,
        _ => false,
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
