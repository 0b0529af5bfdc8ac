use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Read, Write};

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::common::{HTTPVersion, Header, Method};
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
    /// the request head, or its body, was not complete by its deadline
    HeadTimeout,
    /// the request is refused with this status before the application sees it: a broken size
    /// limit (413, 414, 431), malformed head or framing (400), an unknown expectation (417), an
    /// HTTP version other than 1.0 and 1.1 (505)
    Refused(u16),
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

    /// [wxauth patch] Sets the socket's read timeout. Without limits it blocks until the
    /// previous request's body reader is done, so it never changes the timeout under the
    /// application's feet; under limits the connection thread always holds the reader.
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

    /// [wxauth patch] Answers a request refused under limits, before the application sees it;
    /// the caller then closes the connection. The write budget (`Limits::write_timeout`) bounds
    /// the writes.
    fn refuse(&mut self, status: u16) {
        let response = match self.limits {
            Some(ref limits) => crate::refusal(status, limits),
            None => return,
        };
        let mut writer = self.sink.next().unwrap();
        let written = writer.write_all(&response).and_then(|()| writer.flush());
        drop(writer);
        if written.is_ok() {
            self.linger();
        }
    }

    /// [wxauth patch] After a refusal: tells the client the answer is complete (a FIN), then
    /// reads and throws away what it still sends (a refused body) for a moment before the
    /// connection is closed. Closing with unread bytes makes the kernel send a reset, and some
    /// clients then lose the answer they had not read yet. Bounded in time and bytes, on the
    /// connection thread, never a worker.
    fn linger(&mut self) {
        const LINGER: Duration = Duration::from_secs(1);
        const LINGER_BYTES: usize = 256 * 1024;
        self.next_header_source.get_mut().get_mut().shutdown_write();
        self.head_deadline = Some(Instant::now() + LINGER);
        let mut thrown_away = 0;
        while thrown_away < LINGER_BYTES && self.fill().is_ok() {
            let reader = self.next_header_source.get_mut();
            let buffered = reader.buffer().len();
            reader.consume(buffered);
            thrown_away += buffered;
        }
    }

    /// [wxauth patch] Makes sure the read buffer holds at least one byte of the request, reading
    /// the socket if it is empty; under a deadline (`self.head_deadline`), no read waits past it.
    fn fill(&mut self) -> Result<(), ReadError> {
        loop {
            // A read that will reach the socket may not wait past the deadline, so a client
            // trickling its bytes gets no more time than one that stalls.
            if let Some(deadline) = self.head_deadline {
                if self.next_header_source.get_mut().buffer().is_empty() {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Err(ReadError::HeadTimeout);
                    }
                    self.set_read_timeout(Some(remaining))
                        .map_err(ReadError::ReadIoError)?;
                }
            }
            return match self.next_header_source.get_mut().fill_buf() {
                Ok([]) => Err(ReadError::ReadIoError(IoError::new(
                    ErrorKind::ConnectionAborted,
                    "Unexpected EOF",
                ))),
                Ok(_) => Ok(()),
                Err(ref err) if err.kind() == ErrorKind::Interrupted => continue,
                // under limits, the only read timeout here is the deadline's
                Err(ref err) if self.head_deadline.is_some() && is_timeout(err) => {
                    Err(ReadError::HeadTimeout)
                }
                Err(err) => Err(ReadError::ReadIoError(err)),
            };
        }
    }

    /// [wxauth patch] true if bytes of a next request are already buffered (a pipelining
    /// client): the connection thread must not wait for the socket before reading them.
    pub(crate) fn has_buffered_bytes(&mut self) -> bool {
        !self.next_header_source.get_mut().buffer().is_empty()
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
            // [wxauth patch] Scan what is buffered for the line's end instead of taking one byte
            // at a time through three `Read` layers (about a hundred instructions a byte). Only
            // the line itself is consumed: what follows stays buffered for the next line or the
            // body. `fill` keeps every read within the head's deadline.
            self.fill()?;
            let reader = self.next_header_source.get_mut();
            let available = reader.buffer();
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
                return Err(ReadError::Refused(too_long));
            }
            if complete {
                let limited = self.limits.is_some();
                return AsciiString::from_ascii(buf).map_err(|_| {
                    // [wxauth patch] under limits a head that is not ASCII is answered, not
                    // dropped without a word
                    if limited {
                        return ReadError::Refused(400);
                    }
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
                let mut line = self.read_next_line(max_len, 414)?;
                // [wxauth patch] RFC 9112 §2.2: one empty line before a request line is
                // ignored (some clients send a CRLF after a POST body)
                if limits.is_some() && line.is_empty() {
                    head_length += 2;
                    line = self.read_next_line(max_len, 414)?;
                }
                head_length += line.len() + 2;

                // [wxauth patch] under limits, only the form RFC 9112 allows
                if limits.is_some() {
                    parse_request_line_strictly(line.as_str())?
                } else {
                    parse_request_line(
                        line.as_str().trim(), // TODO: remove this conversion
                    )?
                }
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
                        return Err(ReadError::Refused(431));
                    }
                    // [wxauth patch] under limits, only the form RFC 9112 allows
                    if limits.is_some() {
                        headers.push(parse_header_strictly(line.as_str())?);
                        continue;
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

        // [wxauth patch] Under limits the body is read here, whole, before the application sees
        // the request.
        if let Some(ref limits) = limits {
            let body = self.read_body(&version, &headers, limits)?;
            let writer = self.sink.next().unwrap();
            return Ok(crate::request::buffered_request(
                self.secure,
                method,
                path,
                version,
                headers,
                remote_addr,
                body,
                writer,
            ));
        }

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
            true, // [wxauth patch] upstream's small-body buffering; limits read bodies above
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

/// [wxauth patch] How a request's body is delimited (RFC 9112 §6.3).
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
}

impl ClientConnection {
    /// [wxauth patch] Reads the request's body whole, within `max_body_bytes` and within
    /// `head_timeout` from the end of the head (every read waits only for what is left of it),
    /// so that no worker ever waits for a client's body and nothing of a body is ever read as a
    /// next request. Framing that two HTTP parsers could read differently is refused.
    fn read_body(
        &mut self,
        version: &HTTPVersion,
        headers: &[Header],
        limits: &Limits,
    ) -> Result<Vec<u8>, ReadError> {
        let framing = framing(version, headers, limits.max_body_bytes)?;
        let continue_expected = expects_continue(version, headers)?;
        if framing == Framing::None {
            return Ok(Vec::new());
        }
        self.head_deadline = limits.head_timeout.map(|timeout| Instant::now() + timeout);
        if continue_expected && !self.has_buffered_bytes() {
            let mut writer = self.sink.next().unwrap();
            writer
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .and_then(|()| writer.flush())
                .map_err(ReadError::ReadIoError)?;
        }
        let body = match framing {
            Framing::Length(length) => self.read_exactly(length),
            _ => self.read_chunks(limits.max_body_bytes),
        };
        self.head_deadline = None;
        body
    }

    fn read_exactly(&mut self, length: usize) -> Result<Vec<u8>, ReadError> {
        // Grown as bytes arrive, not sized from the client's word alone.
        let mut body = Vec::with_capacity(length.min(16 * 1024));
        while body.len() < length {
            self.fill()?;
            let reader = self.next_header_source.get_mut();
            let available = reader.buffer();
            let taken = available.len().min(length - body.len());
            body.extend_from_slice(&available[..taken]);
            reader.consume(taken);
        }
        Ok(body)
    }

    fn read_chunks(&mut self, max_body_bytes: usize) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        // What the chunk-size lines and extensions may add to the body's bytes on the wire, so
        // that a body of tiny chunks with long extensions cannot keep the thread decoding.
        let framing_bytes = max_body_bytes + 64 * 1024;
        let source = BodyBytes {
            connection: self,
            left: max_body_bytes.saturating_add(framing_bytes),
        };
        let mut chunks = crate::util::ChunkedDecoder::new(source);
        let read = chunks
            .by_ref()
            .take(max_body_bytes as u64 + 1)
            .read_to_end(&mut body);
        match read {
            Ok(_) if body.len() > max_body_bytes => Err(ReadError::Refused(413)),
            Ok(_) => Ok(body),
            Err(err) if err.kind() == ErrorKind::TimedOut => Err(ReadError::HeadTimeout),
            Err(err) if err.kind() == ErrorKind::OutOfMemory => Err(ReadError::Refused(413)),
            Err(err) if err.kind() == ErrorKind::InvalidInput => Err(ReadError::Refused(400)),
            Err(err) => Err(ReadError::ReadIoError(err)),
        }
    }
}

/// [wxauth patch] The connection's bytes as a `Read`, each read within the body's deadline, for
/// the chunked decoder: a missed deadline is `TimedOut`, and more than `left` bytes in all is
/// `OutOfMemory` (a body too large).
struct BodyBytes<'a> {
    connection: &'a mut ClientConnection,
    left: usize,
}

impl Read for BodyBytes<'_> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if self.left == 0 {
            return Err(ErrorKind::OutOfMemory.into());
        }
        let buf_len = buf.len().min(self.left);
        let read = match self.connection.fill() {
            Ok(()) => self
                .connection
                .next_header_source
                .get_mut()
                .read(&mut buf[..buf_len]),
            Err(ReadError::HeadTimeout) => Err(ErrorKind::TimedOut.into()),
            Err(ReadError::ReadIoError(err)) => Err(err),
            Err(_) => Err(ErrorKind::InvalidInput.into()),
        }?;
        self.left -= read;
        Ok(read)
    }
}

/// [wxauth patch] The body's framing, refusing what RFC 9112 §6.1–6.3 says a server must not
/// guess at: both Content-Length and Transfer-Encoding, a transfer coding other than `chunked`
/// alone, Transfer-Encoding in HTTP/1.0, more than one of either header, or a Content-Length
/// that is not digits (400); a length over `max_body_bytes` is 413.
fn framing(
    version: &HTTPVersion,
    headers: &[Header],
    max_body_bytes: usize,
) -> Result<Framing, ReadError> {
    let mut lengths = headers.iter().filter(|h| h.field.equiv("Content-Length"));
    let mut codings = headers
        .iter()
        .filter(|h| h.field.equiv("Transfer-Encoding"));
    let (length, coding) = (lengths.next(), codings.next());
    if lengths.next().is_some() || codings.next().is_some() {
        return Err(ReadError::Refused(400));
    }
    match (length, coding) {
        (None, None) => Ok(Framing::None),
        (Some(_), Some(_)) => Err(ReadError::Refused(400)),
        (None, Some(coding)) => {
            let chunked = coding.value.as_str().eq_ignore_ascii_case("chunked");
            if chunked && *version == HTTPVersion(1, 1) {
                Ok(Framing::Chunked)
            } else {
                Err(ReadError::Refused(400))
            }
        }
        (Some(length), None) => {
            let digits = length.value.as_str();
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ReadError::Refused(400));
            }
            // Digits too many for a usize are a length over any limit.
            match digits.parse::<usize>() {
                Ok(0) => Ok(Framing::None),
                Ok(length) if length <= max_body_bytes => Ok(Framing::Length(length)),
                _ => Err(ReadError::Refused(413)),
            }
        }
    }
}

/// [wxauth patch] Whether the client waits for `100 Continue` before sending its body. Any
/// other expectation is 417; HTTP/1.0 expectations are ignored (RFC 9110 §10.1.1).
fn expects_continue(version: &HTTPVersion, headers: &[Header]) -> Result<bool, ReadError> {
    let mut expectations = headers.iter().filter(|h| h.field.equiv("Expect"));
    match (expectations.next(), expectations.next()) {
        (None, _) => Ok(false),
        _ if *version == HTTPVersion(1, 0) => Ok(false),
        (Some(expect), None) if expect.value.as_str().eq_ignore_ascii_case("100-continue") => {
            Ok(true)
        }
        _ => Err(ReadError::Refused(417)),
    }
}

/// [wxauth patch] A token character (RFC 9110 §5.6.2): what method and field names are made of.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// [wxauth patch] `method SP request-target SP HTTP-version`, nothing more (RFC 9112 §3): one
/// space each, no leading or trailing whitespace, no control characters in the target. A
/// malformed line is 400; a well-formed version other than HTTP/1.0 and HTTP/1.1 is 505.
fn parse_request_line_strictly(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Refused(400));
    };
    let method_ok = !method.is_empty() && method.bytes().all(is_tchar);
    let target_ok = !target.is_empty() && !target.bytes().any(|b| b <= b' ' || b == 0x7f);
    let version = match version.as_bytes() {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            HTTPVersion(major - b'0', minor - b'0')
        }
        _ => return Err(ReadError::Refused(400)),
    };
    let method: Method = match method.parse() {
        Ok(method) if method_ok && target_ok => method,
        _ => return Err(ReadError::Refused(400)),
    };
    if version != HTTPVersion(1, 0) && version != HTTPVersion(1, 1) {
        return Err(ReadError::Refused(505));
    }
    Ok((method, target.to_owned(), version))
}

/// [wxauth patch] `field-name ":" OWS field-value OWS` (RFC 9112 §5): a name of token
/// characters right before the colon, and a value without control characters other than tab.
/// An obs-fold line (one that starts with a space or tab), a bare CR or LF, and a space before
/// the colon are all 400, as §5.1 and §5.2 allow, rather than guessed at.
fn parse_header_strictly(line: &str) -> Result<Header, ReadError> {
    let (name, value) = line.split_once(':').ok_or(ReadError::Refused(400))?;
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let name_ok = !name.is_empty() && name.bytes().all(is_tchar);
    let value_ok = !value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f);
    if !name_ok || !value_ok {
        return Err(ReadError::Refused(400));
    }
    Header::from_bytes(name.as_bytes(), value.as_bytes()).map_err(|_| ReadError::Refused(400))
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
                        ReadError::Refused(status) => self.refuse(status),
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
