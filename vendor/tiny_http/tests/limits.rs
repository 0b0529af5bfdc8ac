//! [wxauth patch] `Server::from_listener_with_limits`: every limit, against real sockets on
//! loopback. Timeouts are a few hundred milliseconds; the upper bounds on elapsed times are
//! loose so that a loaded machine does not fail them, while still far below what the absence
//! of the limit would take.

extern crate tiny_http;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tiny_http::{Limits, Response, Server};

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// What the application would send: a JSON envelope naming the status.
fn envelope(status: u16, _: &Limits) -> String {
    format!("{{\"error\":\"refused\",\"status\":{}}}", status)
}

/// Small limits, so that tests are quick and heads are short.
fn test_limits() -> Limits {
    Limits {
        max_line_bytes: 256,
        max_head_bytes: 1024,
        max_headers: 8,
        head_timeout: Some(ms(500)),
        idle_timeout: Some(ms(300)),
        write_timeout: Some(ms(1000)),
        max_body_bytes: 4096,
        max_connections: None,
        error_body: Some(envelope),
    }
}

fn start(limits: Limits) -> (Arc<Server>, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = Server::from_listener_with_limits(listener, limits).unwrap();
    (Arc::new(server), address)
}

/// Answers every request with "<method> <url> <body>", reading the whole body.
fn answer_all(server: &Arc<Server>) {
    let server = server.clone();
    thread::spawn(move || {
        while let Ok(mut request) = server.recv() {
            let mut body = String::new();
            request.as_reader().read_to_string(&mut body).unwrap();
            let text = format!("{} {} {}", request.method(), request.url(), body);
            request.respond(Response::from_string(text)).unwrap();
        }
    });
}

fn connect(address: SocketAddr) -> TcpStream {
    let client = TcpStream::connect(address).unwrap();
    // A failing test must fail, not hang.
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client
}

/// Reads one response: (status, head, body), the body by its Content-Length.
fn read_response(reader: &mut BufReader<TcpStream>) -> (u16, String, String) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(
            !line.is_empty(),
            "connection closed in a response head: {:?}",
            head
        );
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let status = head[9..12].parse().unwrap();
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            if name.eq_ignore_ascii_case("Content-Length") {
                value.trim().parse().ok()
            } else {
                None
            }
        })
        .expect("a Content-Length");
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, head, String::from_utf8(body).unwrap())
}

/// Reads what the server sends until it closes the connection.
fn read_until_closed(client: &mut TcpStream) -> String {
    let mut received = Vec::new();
    match client.read_to_end(&mut received) {
        Ok(_) => {}
        // The server closed with our bytes unread, which resets the connection; what it
        // sent before is what we have.
        Err(ref err) if err.kind() == ErrorKind::ConnectionReset => {}
        Err(err) => panic!("reading until the server closes: {}", err),
    }
    String::from_utf8(received).unwrap()
}

/// Sends `request`, ignoring errors (the server may close before it has all of it), then
/// returns everything the server sends before it closes.
fn refusal_of(address: SocketAddr, request: &[u8]) -> String {
    let mut client = connect(address);
    let _ = client.write_all(request);
    read_until_closed(&mut client)
}

/// The exact response a refusal must be.
fn refusal(status: u16, reason: &str) -> String {
    let body = envelope(status, &test_limits());
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{}",
        status,
        reason,
        body.len(),
        body
    )
}

#[test]
fn defaults_are_the_documented_ones() {
    let limits = Limits::default();
    assert_eq!(limits.max_line_bytes, 8 * 1024);
    assert_eq!(limits.max_head_bytes, 32 * 1024);
    assert_eq!(limits.max_headers, 100);
    assert_eq!(limits.head_timeout, Some(Duration::from_secs(10)));
    assert_eq!(limits.idle_timeout, Some(Duration::from_secs(30)));
    assert_eq!(limits.write_timeout, Some(Duration::from_secs(30)));
    assert_eq!(limits.max_body_bytes, 1024 * 1024);
    assert_eq!(limits.max_connections, None);
    assert!(limits.error_body.is_none());
}

#[test]
fn a_zero_timeout_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let limits = Limits {
        idle_timeout: Some(Duration::from_secs(0)),
        ..Limits::default()
    };
    assert!(Server::from_listener_with_limits(listener, limits).is_err());
}

#[test]
fn requests_are_answered_on_a_kept_alive_connection() {
    let (server, address) = start(test_limits());
    answer_all(&server);
    let client = connect(address);
    let mut reader = BufReader::new(client.try_clone().unwrap());

    for round in 0..3 {
        let body = format!("round {}", round);
        write!(
            &client,
            "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{}",
            body.len(),
            body
        )
        .unwrap();
        let (status, _, received) = read_response(&mut reader);
        assert_eq!(status, 200);
        assert_eq!(received, format!("POST /echo {}", body));
    }
}

#[test]
fn limits_allow_a_head_exactly_at_them() {
    let limits = test_limits();
    let (server, address) = start(limits);
    answer_all(&server);

    // A request line and a header line of exactly max_line_bytes, and max_headers headers.
    let path = format!(
        "/{}",
        "p".repeat(limits.max_line_bytes - "GET / HTTP/1.1".len())
    );
    let long_header = format!("X-Long: {}", "v".repeat(limits.max_line_bytes - 8));
    let mut head = format!("GET {} HTTP/1.1\r\n{}\r\n", path, long_header);
    assert_eq!(head.len(), 2 * (limits.max_line_bytes + 2));
    for i in 1..limits.max_headers {
        head.push_str(&format!("X-{}: {}\r\n", i, i));
    }
    head.push_str("\r\n");
    assert!(head.len() <= limits.max_head_bytes);

    let client = connect(address);
    let mut reader = BufReader::new(client.try_clone().unwrap());
    (&client).write_all(head.as_bytes()).unwrap();
    let (status, _, body) = read_response(&mut reader);
    assert_eq!(status, 200);
    assert_eq!(body, format!("GET {} ", path));
}

#[test]
fn an_idle_connection_is_closed_without_a_response() {
    let (_server, address) = start(test_limits());
    let mut client = connect(address);

    let started = Instant::now();
    let received = read_until_closed(&mut client);
    let elapsed = started.elapsed();

    assert_eq!(received, "");
    assert!(elapsed >= ms(250), "closed after {:?}", elapsed);
    assert!(elapsed < ms(3000), "closed after {:?}", elapsed);
}

#[test]
fn a_kept_alive_connection_is_closed_after_the_idle_timeout() {
    // A head timeout much longer than the idle one shows which one closed the connection:
    // after a request, the socket's read timeout is the head timeout, for the body.
    let limits = Limits {
        head_timeout: Some(Duration::from_secs(5)),
        ..test_limits()
    };
    let (server, address) = start(limits);
    answer_all(&server);
    let mut client = connect(address);
    let mut reader = BufReader::new(client.try_clone().unwrap());

    client
        .write_all(b"GET /first HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut reader).0, 200);

    let started = Instant::now();
    let received = read_until_closed(&mut client);
    let elapsed = started.elapsed();

    assert_eq!(received, "");
    assert!(elapsed >= ms(250), "closed after {:?}", elapsed);
    assert!(elapsed < ms(2500), "closed after {:?}", elapsed);
}

#[test]
fn a_trickled_head_is_refused_with_408_at_the_head_timeout() {
    // Each byte comes well within the idle timeout (300 ms); the head never completes.
    let (_server, address) = start(test_limits());
    let mut client = connect(address);
    let mut trickler = client.try_clone().unwrap();
    thread::spawn(move || {
        for byte in b"GET / HTTP/1.1\r\nX-Slow: "
            .iter()
            .chain([b'a'; 200].iter())
        {
            if trickler.write_all(&[*byte]).is_err() {
                break;
            }
            thread::sleep(ms(50));
        }
    });

    let started = Instant::now();
    let received = read_until_closed(&mut client);
    let elapsed = started.elapsed();

    assert_eq!(received, refusal(408, "Request Timeout"));
    assert!(elapsed >= ms(450), "refused after {:?}", elapsed);
    assert!(elapsed < ms(3000), "refused after {:?}", elapsed);
}

#[test]
fn a_stalled_head_is_refused_with_408_at_the_head_timeout_not_the_idle_timeout() {
    let limits = Limits {
        idle_timeout: Some(Duration::from_secs(20)),
        ..test_limits()
    };
    let (_server, address) = start(limits);
    let mut client = connect(address);

    client.write_all(b"GET / HT").unwrap();
    let started = Instant::now();
    let received = read_until_closed(&mut client);
    let elapsed = started.elapsed();

    assert_eq!(received, refusal(408, "Request Timeout"));
    assert!(elapsed < ms(3000), "refused after {:?}", elapsed);
}

#[test]
fn a_long_request_line_is_refused_with_414() {
    let (server, address) = start(test_limits());
    answer_all(&server);
    let request = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(300));
    assert_eq!(
        refusal_of(address, request.as_bytes()),
        refusal(414, "URI Too Long")
    );
}

#[test]
fn an_endless_request_line_is_refused_with_414() {
    // Without a limit, the server would buffer all of it.
    let (_server, address) = start(test_limits());
    let mut client = connect(address);
    let mut writer = client.try_clone().unwrap();
    thread::spawn(move || {
        let chunk = [b'a'; 1024];
        for _ in 0..64 * 1024 {
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    assert_eq!(read_until_closed(&mut client), refusal(414, "URI Too Long"));
}

#[test]
fn a_long_header_line_is_refused_with_431() {
    let (server, address) = start(test_limits());
    answer_all(&server);
    let request = format!("GET / HTTP/1.1\r\nX-Long: {}\r\n\r\n", "v".repeat(300));
    assert_eq!(
        refusal_of(address, request.as_bytes()),
        refusal(431, "Request Header Fields Too Large")
    );
}

#[test]
fn too_many_headers_are_refused_with_431() {
    let (server, address) = start(test_limits());
    answer_all(&server);
    let mut request = "GET / HTTP/1.1\r\n".to_string();
    for i in 0..9 {
        request.push_str(&format!("X-{}: {}\r\n", i, i));
    }
    request.push_str("\r\n");
    assert_eq!(
        refusal_of(address, request.as_bytes()),
        refusal(431, "Request Header Fields Too Large")
    );
}

#[test]
fn a_large_head_is_refused_with_431() {
    // Every line is within max_line_bytes and there are few of them, but together they pass
    // max_head_bytes.
    let (server, address) = start(test_limits());
    answer_all(&server);
    let mut request = "GET / HTTP/1.1\r\n".to_string();
    for i in 0..5 {
        request.push_str(&format!("X-{}: {}\r\n", i, "v".repeat(240)));
    }
    request.push_str("\r\n");
    assert_eq!(
        refusal_of(address, request.as_bytes()),
        refusal(431, "Request Header Fields Too Large")
    );
}

#[test]
fn a_malformed_request_line_is_refused_with_400_and_the_error_body() {
    let (server, address) = start(test_limits());
    answer_all(&server);
    assert_eq!(
        refusal_of(address, b"NONSENSE\r\n\r\n"),
        refusal(400, "Bad Request")
    );
}

#[test]
fn without_error_body_a_refusal_has_an_empty_body() {
    let limits = Limits {
        error_body: None,
        ..test_limits()
    };
    let (_server, address) = start(limits);
    let request = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(300));
    assert_eq!(
        refusal_of(address, request.as_bytes()),
        "HTTP/1.1 414 URI Too Long\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn a_body_is_read_whole_before_the_application_sees_the_request() {
    // The connection thread reads the body, however slowly it comes within the deadline, so
    // the application never waits for a client; it gets the body from memory.
    let (server, address) = start(test_limits());
    let mut client = connect(address);
    let mut reader = BufReader::new(client.try_clone().unwrap());
    client
        .write_all(b"POST /slow HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc")
        .unwrap();
    assert!(server.recv_timeout(ms(200)).unwrap().is_none());
    client.write_all(b"def").unwrap();
    let mut request = server
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .unwrap();
    assert_eq!(request.body_length(), Some(6));
    let mut body = String::new();
    request.as_reader().read_to_string(&mut body).unwrap();
    assert_eq!(body, "abcdef");
    request.respond(Response::from_string("ok")).unwrap();
    assert_eq!(read_response(&mut reader).2, "ok");

    // Chunked, and `Expect: 100-continue` answered by the connection thread.
    client
        .write_all(
            b"POST /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    reader.read_line(&mut line).unwrap();
    client
        .write_all(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        .unwrap();
    let mut request = server
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .unwrap();
    let mut body = String::new();
    request.as_reader().read_to_string(&mut body).unwrap();
    assert_eq!(body, "abcde");
    request.respond(Response::from_string("chunks")).unwrap();
    assert_eq!(read_response(&mut reader).2, "chunks");
}

#[test]
fn a_stalled_body_is_refused_with_408_and_never_reaches_the_application() {
    let (server, address) = start(test_limits());
    let started = Instant::now();
    let received = refusal_of(address, b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
    assert_eq!(received, refusal(408, "Request Timeout"));
    assert!(
        started.elapsed() >= ms(450),
        "after {:?}",
        started.elapsed()
    );
    assert!(server.try_recv().unwrap().is_none());
}

#[test]
fn a_body_over_the_limit_is_refused_with_413() {
    let (server, address) = start(test_limits());
    for request in [
        &b"POST / HTTP/1.1\r\nContent-Length: 1000000000000000\r\n\r\nsome"[..],
        &b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n"[..],
        &b"POST / HTTP/1.1\r\nContent-Length: 4097\r\n\r\n"[..],
    ] {
        assert_eq!(
            refusal_of(address, request),
            refusal(413, "Payload Too Large")
        );
    }
    let mut chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..5 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b'x'; 0x400]);
        chunked.extend_from_slice(b"\r\n");
    }
    assert_eq!(
        refusal_of(address, &chunked),
        refusal(413, "Payload Too Large")
    );
    assert!(server.try_recv().unwrap().is_none());
}

#[test]
fn an_endless_chunk_size_line_is_refused_with_400() {
    let (server, address) = start(test_limits());
    let mut request = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    request.extend_from_slice(&[b'1'; 64 * 1024]);
    assert_eq!(refusal_of(address, &request), refusal(400, "Bad Request"));
    assert!(server.try_recv().unwrap().is_none());
}

#[test]
fn framing_two_parsers_could_read_differently_is_refused_with_400() {
    let (server, address) = start(test_limits());
    answer_all(&server);
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases = [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: identity",
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunked, identity",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "X-Folded: a\r\n Transfer-Encoding: chunked",
        "X-Folded: a\r\n\tContent-Length: 5",
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: 5\r\nContent-Length: 5",
        "Content-Length: +5",
        "Content-Length: -5",
        "Content-Length: 5 5",
        "Content-Length: 0x5",
        "Content-Length: five",
        "Content-Length:",
        "Content-Length : 5",
        ": empty name",
        "X-Bare-LF: a\nContent-Length: 5",
        "X-Bare-CR: a\rContent-Length: 5",
        "X-Control: a\x01b",
    ];
    for headers in cases {
        let request = format!(
            "POST / HTTP/1.1\r\nHost: x\r\n{}\r\n\r\n0\r\n\r\n{}",
            headers, smuggled
        );
        let received = refusal_of(address, request.as_bytes());
        assert_eq!(received, refusal(400, "Bad Request"), "{:?}", headers);
    }
    // A bare LF in a chunk extension: a parser that ends lines at LF reads other chunk sizes.
    let extension = format!(
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;a\nxx\r\n3b\r\n0\r\n\r\n{}",
        smuggled
    );
    assert_eq!(
        refusal_of(address, extension.as_bytes()),
        refusal(400, "Bad Request")
    );
    let http10 = format!(
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{}",
        smuggled
    );
    assert_eq!(
        refusal_of(address, http10.as_bytes()),
        refusal(400, "Bad Request")
    );
    let not_ascii = b"GET / HTTP/1.1\r\nX-Name: caf\xc3\xa9\r\n\r\n";
    assert_eq!(refusal_of(address, not_ascii), refusal(400, "Bad Request"));
}

#[test]
fn request_lines_other_than_rfc_9112_allows_are_refused() {
    let (server, address) = start(test_limits());
    answer_all(&server);
    for line in [
        "GET  / HTTP/1.1",
        "GET / HTTP/1.1 ",
        " GET / HTTP/1.1",
        "GET / HTTP/1.1 extra",
        "GET /\x7f HTTP/1.1",
        "GET / HTTP/1.10",
        "GET / http/1.1",
        "G(T / HTTP/1.1",
    ] {
        let request = format!("{}\r\n\r\n", line);
        assert_eq!(
            refusal_of(address, request.as_bytes()),
            refusal(400, "Bad Request"),
            "{:?}",
            line
        );
    }
    for version in ["HTTP/2.0", "HTTP/3.0", "HTTP/0.9", "HTTP/1.2"] {
        let request = format!("GET / {}\r\nHost: x\r\n\r\n", version);
        let received = refusal_of(address, request.as_bytes());
        assert_eq!(
            received,
            refusal(505, "HTTP Version Not Supported"),
            "{:?}",
            version
        );
    }
}

#[test]
fn pipelined_requests_reach_the_application_one_at_a_time() {
    let (server, address) = start(test_limits());
    let client = connect(address);
    let mut reader = BufReader::new(client.try_clone().unwrap());
    (&client)
        .write_all(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n")
        .unwrap();

    let first = server
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .unwrap();
    assert_eq!(first.url(), "/1");
    // The second one waits until the first is answered. (Dropping a second request that came
    // early would wait for the first one's response: answer that before failing.)
    let early = server.recv_timeout(ms(200)).unwrap();
    first.respond(Response::from_string("one")).unwrap();
    assert!(
        early.is_none(),
        "a request came before the previous one was answered"
    );
    let second = server
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .unwrap();
    assert_eq!(second.url(), "/2");
    second.respond(Response::from_string("two")).unwrap();

    assert_eq!(read_response(&mut reader).2, "one");
    assert_eq!(read_response(&mut reader).2, "two");
}

#[cfg(unix)]
#[test]
fn an_idle_unix_socket_connection_is_closed() {
    use std::os::unix::net::{UnixListener, UnixStream};

    let path = std::env::temp_dir().join(format!("tiny-http-limits-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let _server = Server::from_listener_with_limits(listener, test_limits()).unwrap();

    let mut client = UnixStream::connect(&path).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    client.read_to_end(&mut received).unwrap();
    let elapsed = started.elapsed();

    assert!(received.is_empty());
    assert!(elapsed >= ms(250), "closed after {:?}", elapsed);
    assert!(elapsed < ms(3000), "closed after {:?}", elapsed);
}

#[test]
fn the_idle_timeout_runs_from_the_answer() {
    // Between requests the connection thread waits for the client's next bytes, from before the
    // answer is written; the idle timeout must still count from the answer, neither from the
    // request (cutting off a client after a slow answer) nor from whenever the thread woke up
    // (letting an idle client stay up to twice as long).
    let limits = Limits {
        head_timeout: Some(Duration::from_secs(5)),
        idle_timeout: Some(ms(1000)),
        ..test_limits()
    };
    let (server, address) = start(limits);
    let slow = server.clone();
    thread::spawn(move || {
        while let Ok(request) = slow.recv() {
            if request.url() == "/slow" {
                // Slower than the idle timeout.
                thread::sleep(ms(1500));
            }
            let text = request.url().to_string();
            request.respond(Response::from_string(text)).unwrap();
        }
    });
    let mut client = connect(address);
    let mut reader = BufReader::new(client.try_clone().unwrap());

    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut reader).2, "/slow");
    thread::sleep(ms(300));
    client
        .write_all(b"GET /again HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut reader).2,
        "/again",
        "a client that spoke within the idle timeout of the answer was cut off"
    );

    let started = Instant::now();
    let received = read_until_closed(&mut client);
    let elapsed = started.elapsed();
    assert_eq!(received, "");
    assert!(elapsed >= ms(900), "closed after {:?}", elapsed);
    assert!(elapsed < ms(1800), "closed after {:?}", elapsed);
}

#[test]
fn many_requests_on_one_connection_are_answered_in_turn() {
    let (server, address) = start(test_limits());
    answer_all(&server);
    let mut client = connect(address);
    let mut reader = BufReader::new(client.try_clone().unwrap());
    for index in 0..200 {
        let body = format!("body {}", index);
        let request = format!(
            "POST /{} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{}",
            index,
            body.len(),
            body
        );
        client.write_all(request.as_bytes()).unwrap();
        let (status, _, answer) = read_response(&mut reader);
        assert_eq!(status, 200);
        assert_eq!(answer, format!("POST /{} {}", index, body));
    }
}

#[test]
fn a_last_request_ends_the_connection_as_soon_as_it_is_answered() {
    let limits = Limits {
        idle_timeout: Some(Duration::from_secs(5)),
        ..test_limits()
    };
    let (server, address) = start(limits);
    answer_all(&server);
    for request in [
        &b"GET /close HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"[..],
        &b"GET /old HTTP/1.0\r\n\r\n"[..],
    ] {
        let mut client = connect(address);
        let started = Instant::now();
        client.write_all(request).unwrap();
        let received = read_until_closed(&mut client);
        assert!(received.starts_with("HTTP/1."), "{:?}", received);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "closed after {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_pipelined_request_is_answered_at_once() {
    // The second request is already in the connection's buffer when the first is answered: the
    // connection thread must not wait for the socket (until the idle timeout) before reading it.
    let limits = Limits {
        idle_timeout: Some(Duration::from_secs(5)),
        ..test_limits()
    };
    let (server, address) = start(limits);
    answer_all(&server);
    let client = connect(address);
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let started = Instant::now();
    (&client)
        .write_all(b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
        .unwrap();
    assert_eq!(read_response(&mut reader).2, "GET /1 ");
    assert_eq!(read_response(&mut reader).2, "POST /2 abc");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered after {:?}",
        started.elapsed()
    );
}

#[test]
fn past_max_connections_a_new_connection_gets_503_and_open_ones_are_served() {
    let limits = Limits {
        idle_timeout: Some(Duration::from_secs(5)),
        max_connections: Some(2),
        ..test_limits()
    };
    let (server, address) = start(limits);
    let troubles = Arc::new(std::sync::Mutex::new(Vec::new()));
    let answering = server.clone();
    let reported = troubles.clone();
    thread::spawn(move || loop {
        match answering.recv() {
            Ok(request) => {
                let text = request.url().to_string();
                request.respond(Response::from_string(text)).unwrap();
            }
            Err(error) => reported.lock().unwrap().push(error.to_string()),
        }
    });
    let ask = |client: &TcpStream, reader: &mut BufReader<TcpStream>, path: &str| {
        (&*client)
            .write_all(format!("GET {} HTTP/1.1\r\n\r\n", path).as_bytes())
            .unwrap();
        read_response(reader).2
    };
    let first = connect(address);
    let mut first_reader = BufReader::new(first.try_clone().unwrap());
    let second = connect(address);
    let mut second_reader = BufReader::new(second.try_clone().unwrap());
    assert_eq!(ask(&first, &mut first_reader, "/a"), "/a");
    assert_eq!(ask(&second, &mut second_reader, "/b"), "/b");

    for _ in 0..3 {
        let refused = refusal_of(address, b"GET /c HTTP/1.1\r\n\r\n");
        assert!(refused.starts_with("HTTP/1.1 503 "), "{:?}", refused);
        assert!(refused.contains("\r\nRetry-After: 1\r\n"), "{:?}", refused);
        assert!(
            refused.ends_with(&envelope(503, &test_limits())),
            "{:?}",
            refused
        );
    }
    // Open connections are still served.
    assert_eq!(ask(&first, &mut first_reader, "/d"), "/d");
    let reports = troubles.lock().unwrap().clone();
    assert_eq!(reports.len(), 1, "reported once per burst: {:?}", reports);
    assert!(reports[0].contains("2 client connections"), "{:?}", reports);

    // Once one closes, a new connection is served again.
    drop(first_reader);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let client = connect(address);
        let mut reader = BufReader::new(client.try_clone().unwrap());
        (&client).write_all(b"GET /e HTTP/1.1\r\n\r\n").unwrap();
        let mut status = String::new();
        let _ = reader.read_line(&mut status);
        if status.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {:?}", status);
        thread::sleep(ms(50));
    }
}

#[test]
fn a_client_that_does_not_read_holds_an_answer_for_the_write_timeout_in_all() {
    let limits = Limits {
        write_timeout: Some(ms(500)),
        ..test_limits()
    };
    let (server, address) = start(limits);
    let mut client = connect(address);
    client.write_all(b"GET /big HTTP/1.1\r\n\r\n").unwrap();
    let request = server
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .unwrap();
    let started = Instant::now();
    let result = request.respond(Response::from_data(vec![b'x'; 64 * 1024 * 1024]));
    let elapsed = started.elapsed();
    assert!(
        result.is_err(),
        "a 64 MiB answer to a client that reads nothing"
    );
    assert!(elapsed >= ms(450), "gave up after {:?}", elapsed);
    assert!(elapsed < ms(3000), "gave up after {:?}", elapsed);
}

#[test]
fn one_empty_line_before_a_request_line_is_ignored() {
    // RFC 9112 §2.2: some clients send a CRLF after a POST body.
    let (server, address) = start(test_limits());
    answer_all(&server);
    let client = connect(address);
    let mut reader = BufReader::new(client.try_clone().unwrap());
    (&client)
        .write_all(b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi\r\nGET /b HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut reader).2, "POST /a hi");
    assert_eq!(read_response(&mut reader).2, "GET /b ");
    // Two empty lines are not a request line.
    assert_eq!(
        refusal_of(address, b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
        refusal(400, "Bad Request")
    );
}

#[test]
fn a_chunked_body_of_tiny_chunks_with_long_extensions_is_refused_with_413() {
    // The chunk-size lines count against the body's bytes too: 4096 bytes of body in chunks of
    // one byte, each with a 100-byte extension, is far more than the limit on the wire.
    let (server, address) = start(test_limits());
    let mut request = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4096 {
        request.extend_from_slice(b"1;");
        request.extend_from_slice(&[b'x'; 100]);
        request.extend_from_slice(b"\r\nx\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(
        refusal_of(address, &request),
        refusal(413, "Payload Too Large")
    );
    assert!(server.try_recv().unwrap().is_none());
}
