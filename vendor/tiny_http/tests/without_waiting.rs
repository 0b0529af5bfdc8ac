//! [wxauth patch] `Request::respond_without_waiting`: an answer never waits for a client that does
//! not read; the rest goes to whichever thread finishes the `Unsent`, in order, before the
//! connection's next request is read. Real sockets on loopback.

extern crate tiny_http;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use tiny_http::{Limits, Response, Server};

fn start() -> (Server, SocketAddr) {
    start_with(Duration::from_secs(10))
}

fn start_with(write_timeout: Duration) -> (Server, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let limits = Limits {
        write_timeout: Some(write_timeout),
        ..Limits::default()
    };
    (
        Server::from_listener_with_limits(listener, limits).unwrap(),
        address,
    )
}

fn connect(address: SocketAddr) -> TcpStream {
    let client = TcpStream::connect(address).unwrap();
    // A failing test must fail, not hang.
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client
}

/// Reads one answer with a Content-Length body; returns the body.
fn read_answer(reader: &mut BufReader<TcpStream>) -> Vec<u8> {
    let mut length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = Some(value.trim().parse::<usize>().unwrap());
        }
    }
    let mut body = vec![0; length.expect("a Content-Length")];
    reader.read_exact(&mut body).unwrap();
    body
}

#[test]
fn a_reading_client_gets_its_answer_at_once() {
    let (server, address) = start();
    let mut client = connect(address);
    for round in 0..3 {
        write!(client, "GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", round).unwrap();
        let request = server.recv().unwrap();
        let text = format!("answer {}", round);
        // The socket's buffer is empty: everything goes out now.
        assert!(request
            .respond_without_waiting(Response::from_string(text))
            .is_ok());
        let mut reader = BufReader::new(client.try_clone().unwrap());
        assert_eq!(
            read_answer(&mut reader),
            format!("answer {}", round).into_bytes()
        );
    }
}

#[test]
fn a_client_that_does_not_read_holds_up_no_one_but_itself() {
    let (server, address) = start();
    let mut client = connect(address);
    write!(client, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let request = server.recv().unwrap();
    let body: Vec<u8> = (0..16 << 20)
        .map(|index: u32| (index % 251) as u8)
        .collect();
    let started = Instant::now();
    let unsent = request
        .respond_without_waiting(
            Response::from_data(body.clone()).with_chunked_threshold(usize::MAX),
        )
        .expect_err("16 MiB cannot all go out to a client that is not reading");
    // It returned without waiting for the client (the write timeout is 10 s).
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The next request on the connection is not read before the rest is sent.
    write!(client, "GET /next HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(server
        .recv_timeout(Duration::from_millis(300))
        .unwrap()
        .is_none());

    // Another thread finishes it while the client reads: the whole answer arrives, in order.
    let finisher = thread::spawn(move || unsent.finish());
    let mut reader = BufReader::new(client.try_clone().unwrap());
    assert!(
        read_answer(&mut reader) == body,
        "the answer arrived changed"
    );
    finisher.join().unwrap().unwrap();

    // Then the next request is read and answered as usual.
    let next = server
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .unwrap();
    assert_eq!(next.url(), "/next");
    next.respond(Response::from_string("next")).unwrap();
    assert_eq!(read_answer(&mut reader), b"next".to_vec());
}

#[test]
fn dropping_the_rest_sends_it() {
    let (server, address) = start();
    let mut client = connect(address);
    write!(client, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let request = server.recv().unwrap();
    let body = vec![b'x'; 16 << 20];
    let unsent = request
        .respond_without_waiting(
            Response::from_data(body.clone()).with_chunked_threshold(usize::MAX),
        )
        .expect_err("16 MiB cannot all go out at once");
    let dropper = thread::spawn(move || drop(unsent));
    let mut reader = BufReader::new(client.try_clone().unwrap());
    assert!(read_answer(&mut reader) == body);
    dropper.join().unwrap();
}

#[test]
fn finishing_for_a_client_that_never_reads_ends_at_the_write_timeout() {
    let (server, address) = start_with(Duration::from_millis(300));
    let mut client = connect(address);
    write!(client, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let request = server.recv().unwrap();
    let body = vec![b'x'; 16 << 20];
    let unsent = request
        .respond_without_waiting(Response::from_data(body).with_chunked_threshold(usize::MAX))
        .expect_err("16 MiB cannot all go out at once");
    let started = Instant::now();
    let error = unsent.finish().expect_err("the client never read");
    // The write budget ran out (Limits::write_timeout, for the whole answer).
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{:?}", error);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(client);
}
