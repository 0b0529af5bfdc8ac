//! wxauth as a service manager sees it: SIGHUP reloads the configuration, readiness, reloads and
//! stops are reported on systemd's notify socket, a listening socket passed by socket activation
//! is served, and a start that fails leaves nothing behind.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{TempDir, Wxauth, refused_start};

/// Sends SIGHUP and returns the log once it has a line starting with `outcome`, failing at once
/// if the server exits instead.
fn hang_up(server: &mut Wxauth, outcome: &str) -> String {
    let lines_before = server.stderr().matches(outcome).count();
    let sent = Command::new("kill").arg("-HUP").arg(server.pid().to_string()).status().unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("SIGHUP ended wxauth ({status}); log:\n{}", server.stderr());
        }
        let log = server.stderr();
        if log.matches(outcome).count() > lines_before {
            return log;
        }
        assert!(Instant::now() < deadline, "no `{outcome}` line after SIGHUP:\n{log}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The log line holding `needle`.
fn line_with<'a>(log: &'a str, needle: &str) -> &'a str {
    log.lines().rev().find(|line| line.contains(needle)).unwrap_or_else(|| panic!("{needle}"))
}

/// wxauth started on a `wxauth.toml` with `openid_login = "open"`, and that file's path.
fn start_with_open_login() -> (Wxauth, PathBuf) {
    let dir = TempDir::new();
    let config = dir.0.join("wxauth.toml");
    std::fs::write(&config, "openid_login = \"open\"\n").unwrap();
    (Wxauth::start_in(dir, &[]), config)
}

fn login_by_openid(server: &Wxauth) -> crate::harness::Answer {
    server.post("login", &json!({ "openid": "oReloadedByHangup" }))
}

/// Regression: SIGHUP (`systemctl reload`, a closed terminal, a log-rotation script) ended
/// wxauth at once with status 129: no graceful stop, the WAL not folded, access lines lost.
#[test]
fn sighup_applies_the_reloadable_keys_and_names_those_that_need_a_restart() {
    let (mut server, config) = start_with_open_login();
    login_by_openid(&server).result();

    // An unchanged file changes nothing.
    let log = hang_up(&mut server, "reloaded the configuration");
    assert!(log.contains("INFO reloaded the configuration: nothing changed"), "{log}");
    login_by_openid(&server).result();

    std::fs::write(
        &config,
        "openid_login = \"off\"\nmax_body_bytes = 2048\n[log]\nformat = \"json\"\n",
    )
    .unwrap();
    let log = hang_up(&mut server, "reloaded the configuration");
    let line = line_with(&log, "reloaded the configuration");
    let line: serde_json::Value = serde_json::from_str(line).expect("log.format json applied");
    assert_eq!(line["level"], "warn", "{line}");
    assert_eq!(
        line["message"],
        "reloaded the configuration: applied log.format, openid_login; \
         changed but need a restart: max_body_bytes"
    );

    // The openid policy is the new one, at once.
    login_by_openid(&server).assert_error(403, "openid_login_refused");
    // The body limit is still the one wxauth started with.
    let big = json!({ "openid": "oReloadedByHangup", "wx_city": "x".repeat(4000) });
    let answer = server.post("login", &big);
    assert_ne!(answer.status, 413, "max_body_bytes needs a restart: {answer:?}");
    // Access lines are JSON now.
    server.log_containing(r#""type":"access""#);

    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(server.stderr().contains(r#""message":"stopped""#));
}

#[test]
fn an_invalid_configuration_on_sighup_is_logged_and_the_running_one_kept() {
    let (mut server, config) = start_with_open_login();

    std::fs::write(&config, "openid_login = \"sometimes\"\n[log]\nlevel = \"error\"\n").unwrap();
    let log = hang_up(&mut server, "configuration not reloaded");
    let line = line_with(&log, "configuration not reloaded");
    assert!(
        line.contains(" ERROR configuration not reloaded, the running one is kept: "),
        "{line}"
    );
    assert!(line.contains("openid_login"), "the reason names the key: {line}");
    // Nothing of the new file applies: neither the policy nor the log level.
    login_by_openid(&server).result();
    server.log_containing("POST /miniprog/wx_auth/login 200");

    std::fs::write(&config, "openid_login = \"off\"\n[jwt]\nsecret = \"tooshort\"\n").unwrap();
    let log = hang_up(&mut server, "configuration not reloaded");
    let line = line_with(&log, "configuration not reloaded");
    assert!(line.contains("jwt.secret"), "{line}");
    assert!(!line.contains("tooshort"), "a secret never reaches the log: {line}");
    login_by_openid(&server).result();

    // A file fixed later is applied by the next SIGHUP.
    std::fs::write(&config, "openid_login = \"off\"\n").unwrap();
    let log = hang_up(&mut server, "reloaded the configuration");
    assert!(log.contains("reloaded the configuration: applied openid_login\n"), "{log}");
    login_by_openid(&server).assert_error(403, "openid_login_refused");
}

/// The next datagram on `socket`, as text.
fn notification(socket: &UnixDatagram) -> String {
    let mut buffer = [0u8; 4096];
    let length = socket.recv(&mut buffer).expect("a notification within 10 s");
    String::from_utf8_lossy(&buffer[..length]).into_owned()
}

#[test]
fn readiness_reloads_and_the_stop_are_reported_to_the_notify_socket() {
    let dir = TempDir::new();
    let path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut server = Wxauth::start_in(dir, &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    server.get("is_openid_registered?openid=oReady").result();
    assert_eq!(notification(&socket), "READY=1");

    let _ = hang_up(&mut server, "reloaded the configuration");
    let reloading = notification(&socket);
    let fields: Vec<&str> = reloading.lines().collect();
    assert_eq!(fields.len(), 2, "{reloading}");
    assert_eq!(fields[0], "RELOADING=1");
    let microseconds: u64 = fields[1]
        .strip_prefix("MONOTONIC_USEC=")
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{reloading}"));
    assert!(microseconds > 0);
    assert_eq!(notification(&socket), "READY=1");

    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(notification(&socket), "STOPPING=1");
}

#[test]
fn an_abstract_notify_socket_is_reached_too() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("wxauth-it-notify-{}", std::process::id());
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&address).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let server = Wxauth::start(&[("NOTIFY_SOCKET", &format!("@{name}"))]);
    server.get("is_openid_registered?openid=oReady").result();
    assert_eq!(notification(&socket), "READY=1");
}

/// Socket activation: requests wait in the kernel's queue while wxauth (re)starts, instead of
/// being refused.
#[test]
fn a_socket_passed_by_systemd_is_served_with_the_connections_waiting_on_it() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    // A client that connects and sends its request before wxauth runs: it waits in the backlog.
    let mut early = TcpStream::connect(address).unwrap();
    early.write_all(b"GET /healthz HTTP/1.1\r\nHost: wxauth\r\nConnection: close\r\n\r\n").unwrap();
    // systemd's side: the socket as descriptor 3, LISTEN_PID naming the process that gets it.
    let script = "exec 3<&0 0</dev/null; export LISTEN_FDS=1 LISTEN_PID=$$; exec \"$@\"";
    let server =
        Wxauth::start_command(TempDir::new(), &[], &["sh", "-c", script, "sh"], |command| {
            command.stdin(Stdio::from(OwnedFd::from(listener)));
        });
    assert_eq!(server.base, format!("http://{address}"), "the passed socket is announced");

    early.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    early.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains(r#""status":"ok""#), "{answer}");
    server.get("is_openid_registered?openid=oActivated").result();
    server.log_containing(&format!("on http://{address} (a socket passed by systemd)"));
}

/// Regression: a start that could not listen had already created and initialised the database,
/// its generated JWT secret included.
#[test]
fn a_start_that_cannot_listen_creates_no_database() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let dir = TempDir::new();
    let (status, stdout, stderr) = refused_start(&dir, &[("WXAUTH_LISTEN", &address)]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(&format!("wxauth: cannot listen on {address}: ")), "{stderr}");
    assert_eq!(dir.names(), Vec::<String>::new(), "nothing is created");
}
