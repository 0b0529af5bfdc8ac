//! The HTTP front against hostile connections: resource exhaustion, framing that another parser
//! could read differently, and requests built to hold threads. Each test speaks raw bytes over
//! real sockets to the real binary, some under resource limits set for the server's process
//! before it runs (`ulimit`, or `setpriv` to a user the thread limit binds).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{TempDir, Wxauth, envelope, raw_exchange};

/// A connection with a read timeout, so that a test that fails does not hang.
fn connect(server: &Wxauth) -> TcpStream {
    let stream = TcpStream::connect(server.address()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// What arrives until the connection closes or the read timeout passes without a byte.
fn read_all(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => received.extend_from_slice(&buffer[..read]),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// The status line of each response in `raw`.
fn statuses(raw: &str) -> Vec<&str> {
    raw.match_indices("HTTP/1.1 ")
        .map(|(start, _)| &raw[start..start + 12])
        .filter(|line| line[9..].bytes().all(|byte| byte.is_ascii_digit()))
        .collect()
}

/// Descriptors and threads the server's process has now.
fn descriptors_and_threads(server: &Wxauth) -> (usize, usize) {
    let pid = server.pid();
    let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|count| count.trim().parse().ok())
        .unwrap();
    (descriptors, threads)
}

/// Waits (at most `within`) until an honest request on a new connection is answered, and says
/// how long that took; fails the test if it never is.
fn answered_again_within(server: &Wxauth, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let raw = raw_exchange(
            server,
            b"GET /miniprog/wx_auth/is_openid_registered?openid=oHonest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(1),
        );
        if raw.starts_with("HTTP/1.1 200") {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "no answer for {within:?}; last: {raw:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the server with its open-file limit (soft and hard) at `limit`.
fn start_with_open_files(limit: u32, env: &[(&str, &str)]) -> Wxauth {
    let script = format!("ulimit -n {limit} && exec \"$@\"");
    Wxauth::start_wrapped(TempDir::new(), env, &["sh", "-c", &script, "sh"])
}

/// Regression: the accept thread panicked on `Too many open files` (in `accept`, or where a
/// connection's socket is duplicated), leaving the process alive and every later connection
/// unanswered for good.
#[test]
fn running_out_of_file_descriptors_never_stops_the_listener() {
    // Each connection takes two descriptors (the socket, and its duplicate for the write half):
    // with one limit the last descriptor goes to `accept`, with the other to the duplicate.
    for limit in [64, 65] {
        // max_connections above what the descriptors allow, so that they run out first.
        let server = start_with_open_files(limit, &[("WXAUTH_MAX_CONNECTIONS", "1000")]);
        let mut attackers = Vec::new();
        for _ in 0..120 {
            match TcpStream::connect(server.address()) {
                Ok(stream) => attackers.push(stream),
                Err(_) => break,
            }
        }
        // The descriptors ran out while the attackers were arriving: said once, not for each.
        let log = server.log_containing("no file descriptor left");
        let times = log.matches("no file descriptor left").count();
        assert!(times <= 3, "logged {times} times: {log}");
        drop(attackers);
        let took = answered_again_within(&server, Duration::from_secs(10));
        assert!(took < Duration::from_secs(5), "answered again after {took:?}");
        assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
    }
}

/// `max_connections` bounds open client connections: past it a new connection gets 503 with
/// `Retry-After`, while open ones are served, and service resumes as connections close.
#[test]
fn past_max_connections_a_new_connection_gets_503_and_open_ones_are_served() {
    let server =
        Wxauth::start(&[("WXAUTH_MAX_CONNECTIONS", "8"), ("WXAUTH_IDLE_TIMEOUT_MS", "20000")]);
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut open: Vec<TcpStream> = (0..8).map(|_| connect(&server)).collect();
    for stream in &mut open {
        // Answered: the server has taken the connection.
        stream.write_all(request).unwrap();
        let mut buffer = [0u8; 1024];
        let read = stream.read(&mut buffer).unwrap();
        assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
    }
    let refused = raw_exchange(&server, request, Duration::from_secs(5));
    assert!(refused.starts_with("HTTP/1.1 503 "), "{refused:?}");
    assert!(refused.contains("\r\nRetry-After: 1\r\n"), "{refused:?}");
    let body = envelope(&refused);
    assert_eq!(body["error"], "too_many_connections");
    assert_eq!(body["code"], 5003);
    // The open connections are still served.
    open[0].write_all(request).unwrap();
    let mut buffer = [0u8; 1024];
    let read = open[0].read(&mut buffer).unwrap();
    assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
    let log = server.log_containing("client connections are open, the most allowed");
    assert_eq!(log.matches("the most allowed").count(), 1, "{log}");
    // Counted once, asked on an open connection: a new one could be refused too, and counted,
    // while the server still holds eight.
    open[0].write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let metrics = read_answer(&mut open[0]);
    assert!(metrics.contains("wxauth_http_refused_total{status=\"503\"} 1\n"), "{metrics}");

    drop(open);
    answered_again_within(&server, Duration::from_secs(5));
}

/// One whole answer from `stream`: its head, and as many body bytes as its Content-Length says.
fn read_answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "closed after {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("Content-Length: "))
                .and_then(|value| value.trim().parse::<usize>().ok())
                .expect("a Content-Length");
            if body.len() >= length {
                return text.into_owned();
            }
        }
    }
}

/// Without `max_connections`, the bound comes from the open-file limit, which wxauth first
/// raises from its soft value to the hard one.
#[test]
fn the_open_file_limit_is_raised_and_sizes_max_connections() {
    let script = "ulimit -Sn 100 && ulimit -Hn 600 && exec \"$@\"";
    let server = Wxauth::start_wrapped(TempDir::new(), &[], &["sh", "-c", script, "sh"]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let open_files = limits.lines().find(|line| line.starts_with("Max open files")).unwrap();
    assert_eq!(open_files.split_whitespace().collect::<Vec<_>>()[3..5], ["600", "600"]);
    // 600 descriptors, 64 + 4 × 4 workers kept for files, two per connection.
    server.log_containing("with 4 workers and up to 260 connections (open-file limit 600)");
}

/// Regression: a failed thread start panicked in the accept thread (and poisoned the connection
/// thread pool's lock), so that a thread limit reached once stopped the listener for good.
#[test]
fn a_thread_that_cannot_start_costs_one_connection_not_the_listener() {
    // RLIMIT_NPROC counts the tasks of the server's user, and does not bind root: as root the
    // server runs as nobody. The limit leaves room for two threads more than it starts with;
    // the pool's idle threads serve the first connections, then no thread can be started.
    let as_root = effective_uid() == 0;
    let (uid, user): (u32, &[&str]) = if as_root {
        (65534, &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"])
    } else {
        (effective_uid(), &[])
    };
    let start = |limit: Option<usize>| {
        let dir = TempDir::new();
        if as_root {
            let status = std::process::Command::new("chmod").arg("0777").arg(&dir.0).status();
            assert!(status.unwrap().success());
        }
        let mut wrapper = user.to_vec();
        let script = limit.map(|limit| format!("ulimit -u {limit} && exec \"$@\""));
        if let Some(script) = &script {
            wrapper.extend(["bash", "-c", script.as_str(), "bash"]);
        }
        Wxauth::start_wrapped(dir, &[], &wrapper)
    };
    // The threads it runs once it has answered a request, counted when the count holds still.
    let unlimited = start(None);
    answered_again_within(&unlimited, Duration::from_secs(5));
    let mut threads = descriptors_and_threads(&unlimited).1;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = descriptors_and_threads(&unlimited).1;
        if now == threads {
            break;
        }
        threads = now;
    }
    drop(unlimited);
    // Other tasks of the same user count against the same limit.
    let server = start(Some(tasks_of_user(uid) + threads + 2));

    let mut attackers = Vec::new();
    for _ in 0..30 {
        attackers.push(TcpStream::connect(server.address()).unwrap());
    }
    server.log_containing("a new connection could not be set up");
    drop(attackers);
    answered_again_within(&server, Duration::from_secs(10));
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
}

/// The effective user id, from /proc.
fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uids = status.lines().find_map(|line| line.strip_prefix("Uid:")).unwrap();
    uids.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Processes and threads of the user `uid`, for a thread limit that must leave room for two more.
fn tasks_of_user(uid: u32) -> usize {
    let uid = uid.to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("status")).ok())
        .filter(|status| {
            status.lines().any(|line| {
                line.strip_prefix("Uid:").and_then(|ids| ids.split_whitespace().next())
                    == Some(uid.as_str())
            })
        })
        .filter_map(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Threads:")?.trim().parse::<usize>().ok())
        })
        .sum::<usize>()
}

/// Regression: `GET /healthz HTTP/2.0` got no answer, and its thread and two descriptors were
/// never freed (the 505 waited for a writer the request still held).
#[test]
fn other_http_versions_get_505_and_free_their_connection() {
    let server = Wxauth::start(&[]);
    let (descriptors, _) = descriptors_and_threads(&server);
    for version in ["HTTP/2.0", "HTTP/3.0", "HTTP/0.9", "HTTP/1.2"] {
        for _ in 0..20 {
            let request = format!("GET /healthz {version}\r\nHost: x\r\n\r\n");
            let raw = raw_exchange(&server, request.as_bytes(), Duration::from_secs(5));
            assert!(raw.starts_with("HTTP/1.1 505 "), "{version}: {raw:?}");
            assert_eq!(envelope(&raw)["error"], "http_version_not_supported");
        }
    }
    // Every connection was closed (within the refusals' linger), so its descriptors were freed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while descriptors_and_threads(&server).0 > descriptors + 4 {
        assert!(
            Instant::now() < deadline,
            "descriptors {descriptors} → {:?}",
            descriptors_and_threads(&server)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Regression: 16 requests that each cost a client one line stalled every worker for 10–20 s, so
/// that `/healthz` and `verify` went unanswered: a GET announcing a body it never sends, a POST
/// whose body stalls, `Expect: 100-continue` and no body, and `Connection: Upgrade` on a complete
/// POST (read until the socket timed out).
#[test]
fn cheap_requests_do_not_hold_the_workers() {
    let server = Wxauth::start(&[("WXAUTH_OPENID_LOGIN", "open")]);
    let hostile: [&[u8]; 4] = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n",
        b"POST /miniprog/wx_auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"openid\":",
        b"POST /miniprog/wx_auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\nExpect: 100-continue\r\n\r\n",
        b"POST /miniprog/wx_auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\n{}",
    ];
    let started = Instant::now();
    let mut attackers = Vec::new();
    for _ in 0..4 {
        for request in hostile {
            let mut stream = connect(&server);
            stream.write_all(request).unwrap();
            attackers.push(stream);
        }
    }
    // The harness runs 4 workers: all 16 requests at once would have held them all.
    server.assert_reads_answer_within(Duration::from_secs(1));
    let health = server.raw("GET", "/healthz", &[], None);
    assert_eq!(health.status, 200);
    let verify = server.get("verify");
    verify.assert_error(401, "not_authenticated");
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
    // The complete request that asked for an upgrade is answered at once (a login with nothing
    // to log in with: 403), and its connection then ends.
    let upgrade = &mut attackers[3];
    upgrade.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let raw = read_all(upgrade);
    assert!(raw.starts_with("HTTP/1.1 403 "), "{raw:?}");
    assert_eq!(envelope(&raw)["error"], "not_authenticated");
}

/// Regression: framing that a front end could read differently from wxauth (request smuggling)
/// was accepted, and in each case a second request hidden in the first was served. Now each is
/// one 400 and the connection is closed (RFC 9112 §6.1–6.3, §5.2).
#[test]
fn framing_a_front_end_could_read_differently_is_refused() {
    let server = Wxauth::start(&[]);
    let hidden =
        "GET /miniprog/wx_auth/is_openid_registered?openid=oSmuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let chunked_hidden = format!("{:x}\r\n{hidden}\r\n0\r\n\r\n", hidden.len());
    let cases = [
        (
            "Content-Length and Transfer-Encoding",
            format!("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_hidden}"),
        ),
        ("Transfer-Encoding: identity", format!("Transfer-Encoding: identity\r\n\r\n{hidden}")),
        (
            "Transfer-Encoding: xchunked",
            format!("Transfer-Encoding: xchunked\r\n\r\n{chunked_hidden}"),
        ),
        ("obs-fold", format!("X-Folded: a\r\n Transfer-Encoding: chunked\r\n\r\n{chunked_hidden}")),
        (
            "two Content-Lengths",
            format!("Content-Length: 0\r\nContent-Length: {}\r\n\r\n{hidden}", hidden.len()),
        ),
        ("Content-Length: +N", format!("Content-Length: +{}\r\n\r\n{hidden}", hidden.len())),
        ("Content-Length not a number", format!("Content-Length: many\r\n\r\n{hidden}")),
        ("a bare LF in a header", format!("X-Bare: a\nContent-Length: 0\r\n\r\n{hidden}")),
    ];
    for (name, rest) in cases {
        let request = format!("POST /miniprog/wx_auth/logout HTTP/1.1\r\nHost: x\r\n{rest}");
        let raw = raw_exchange(&server, request.as_bytes(), Duration::from_secs(3));
        assert_eq!(statuses(&raw), ["HTTP/1.1 400"], "{name}: {raw:?}");
        assert_eq!(envelope(&raw)["error"], "invalid_parameter", "{name}");
    }

    // A chunked body on a request that does not read one is read all the same, never taken for
    // the next request.
    let mut stream = connect(&server);
    stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let request = format!(
        "GET /miniprog/wx_auth/verify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_hidden}"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let raw = read_all(&mut stream);
    assert_eq!(statuses(&raw), ["HTTP/1.1 401"], "{raw:?}");
    let log = server.log_containing("/verify");
    assert!(!log.contains("is_openid_registered"), "the hidden request was served: {log}");
}

/// Regression: of two requests sent in one segment, the second was answered only after the idle
/// timeout (the connection thread waited for the socket while the request sat in its buffer).
#[test]
fn pipelined_requests_are_answered_at_once() {
    let server = Wxauth::start(&[("WXAUTH_IDLE_TIMEOUT_MS", "8000")]);
    let mut stream = connect(&server);
    let started = Instant::now();
    let request =
        "GET /miniprog/wx_auth/is_openid_registered?openid=o1 HTTP/1.1\r\nHost: x\r\n\r\n";
    let last = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    stream.write_all(format!("{request}{request}{last}").as_bytes()).unwrap();
    let raw = read_all(&mut stream);
    assert_eq!(statuses(&raw), ["HTTP/1.1 200", "HTTP/1.1 200", "HTTP/1.1 200"], "{raw:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
}

/// Regression: a header with bytes outside ASCII closed the connection without a word.
#[test]
fn a_header_that_is_not_ascii_gets_400() {
    let server = Wxauth::start(&[]);
    let raw = raw_exchange(
        &server,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Name: caf\xc3\xa9\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(raw.starts_with("HTTP/1.1 400 "), "{raw:?}");
    assert_eq!(envelope(&raw)["error"], "invalid_parameter");
}

/// Regression: clients that pipeline requests and never read the answers filled their sockets,
/// and each worker that answered one of them then waited `request_timeout_ms` for room, so a
/// handful of such connections held every worker. A worker now never waits for a client: what
/// the socket does not take at once is finished by another thread.
#[test]
fn clients_that_do_not_read_their_answers_do_not_hold_the_workers() {
    let server = Wxauth::start(&[]);
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let pipelined: Vec<u8> = request.iter().copied().cycle().take(request.len() * 20_000).collect();
    let mut attackers = Vec::new();
    for _ in 0..6 {
        let stream = connect(&server);
        shrink_receive_buffer(&stream);
        let mut writer = stream.try_clone().unwrap();
        let pipelined = pipelined.clone();
        // The server stops reading once it cannot answer: the rest of the write may block.
        std::thread::spawn(move || writer.write_all(&pipelined));
        attackers.push(stream);
    }
    // Long enough for their sockets to fill and their answers to wait.
    // Their sockets fill within a few seconds (loopback buffers grow to megabytes); meanwhile
    // and after, honest requests keep being answered.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let started = Instant::now();
        let answer = server.get("is_openid_registered?openid=oHonestBesideNonReaders");
        assert_eq!(answer.result(), &serde_json::json!({"is_registered": false}));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "answered after {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A receive buffer of a few KiB, so that a client that does not read fills its socket soon.
fn shrink_receive_buffer(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4096;
    // SAFETY: setsockopt reads one c_int through a pointer to a live local, of the size given.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(result, 0, "setsockopt SO_RCVBUF");
}
