//! systemd's two protocols for services, written on std: readiness notification (`sd_notify`,
//! one datagram per state change to the socket `NOTIFY_SOCKET` names) and socket activation (a
//! listening socket handed over as descriptor 3, announced by `LISTEN_FDS` and `LISTEN_PID`).
//! Outside systemd both do nothing: without `NOTIFY_SOCKET` nothing is sent, and without
//! `LISTEN_PID` naming this process no descriptor is taken.
//!
//! `take_listener` runs while the process has a single thread: it removes the variables of socket
//! activation from the environment (so that nothing started later takes the socket for its own),
//! which is sound only then.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{SocketAddr, UnixDatagram};

use crate::error::Fatal;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const FIRST_PASSED: RawFd = 3;

/// The variables of socket activation.
const ACTIVATION_VARIABLES: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// The listening socket systemd passed to this process (socket activation), if it passed one.
/// Removes the variables that announce it from the environment either way.
///
/// # Safety
///
/// No other thread may exist (or read the environment) while this runs.
pub(crate) unsafe fn take_listener() -> Result<Option<TcpListener>, Fatal> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    for name in ACTIVATION_VARIABLES {
        // SAFETY: the caller guarantees that no other thread exists.
        unsafe { std::env::remove_var(name) };
    }
    match passed_sockets(pid.as_deref(), count.as_deref(), std::process::id())
        .map_err(Fatal::Config)?
    {
        0 => Ok(None),
        1 => listener_at(FIRST_PASSED).map(Some),
        more => Err(Fatal::Config(format!(
            "socket activation: {more} sockets passed (LISTEN_FDS), but wxauth serves one: give \
             wxauth.socket a single ListenStream="
        ))),
    }
}

/// How many sockets systemd passed to the process `own_pid`, from `LISTEN_PID` and `LISTEN_FDS`:
/// none when `LISTEN_PID` is absent or names another process (the variables were meant for it).
fn passed_sockets(pid: Option<&str>, count: Option<&str>, own_pid: u32) -> Result<usize, String> {
    if pid.and_then(|pid| pid.trim().parse::<u32>().ok()) != Some(own_pid) {
        return Ok(0);
    }
    count.and_then(|count| count.trim().parse().ok()).ok_or_else(|| {
        format!("socket activation: LISTEN_FDS is `{}`, not a number", count.unwrap_or(""))
    })
}

/// The passed descriptor `fd` as a listener, after checking that it is a listening TCP socket.
fn listener_at(fd: RawFd) -> Result<TcpListener, Fatal> {
    let not_tcp = || {
        Fatal::Config(format!(
            "socket activation: descriptor {fd} is not a listening TCP socket (wxauth.socket needs \
             ListenStream=ADDRESS:PORT)"
        ))
    };
    let mut listening: libc::c_int = 0;
    let mut size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `size` bytes into a live local; it fails (EBADF,
    // ENOTSOCK) on a descriptor that is not an open socket, which is then left alone.
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&raw mut listening).cast(),
            &mut size,
        )
    };
    if result != 0 || listening == 0 {
        return Err(not_tcp());
    }
    // SAFETY: the descriptor is an open socket that systemd handed to this process to own, and
    // nothing else in it refers to the descriptor.
    let listener = TcpListener::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // systemd passes it inheritable: nothing wxauth runs may hold the socket open.
    // SAFETY: fcntl on an open descriptor this process owns.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(Fatal::io("socket activation: cannot set FD_CLOEXEC")(
            std::io::Error::last_os_error(),
        ));
    }
    // A Unix socket (ListenStream=/path) has no IP address to announce or serve HTTP URLs on.
    listener.local_addr().map_err(|_| not_tcp())?;
    // tiny_http's accept loop waits in accept(); `NonBlocking=yes` in the socket unit would make
    // it spin.
    listener.set_nonblocking(false).map_err(Fatal::io("socket activation"))?;
    Ok(listener)
}

/// Where readiness goes: the socket `NOTIFY_SOCKET` names, if any. A notification that cannot be
/// sent is logged and otherwise ignored: serving matters more than systemd's view of it.
pub(crate) struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`: a path, or `@name` for a socket in Linux's abstract namespace.
    pub(crate) fn from_environment() -> Notifier {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { target: None };
        };
        let target = notify_address(&name.to_string_lossy()).and_then(|address| {
            let socket = UnixDatagram::unbound()?;
            Ok((socket, address))
        });
        match target {
            Ok(target) => Notifier { target: Some(target) },
            Err(error) => {
                crate::log::warn(&format!("NOTIFY_SOCKET: not used: {error}"));
                Notifier { target: None }
            }
        }
    }

    /// Serving: `READY=1`, after the address is announced, and again after a reload.
    pub(crate) fn ready(&self) {
        self.send("READY=1");
    }

    /// A reload begins (`Type=notify-reload` requires the time with it).
    pub(crate) fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_microseconds()));
    }

    /// A graceful stop begins.
    pub(crate) fn stopping(&self) {
        self.send("STOPPING=1");
    }

    fn send(&self, state: &str) {
        if let Some((socket, address)) = &self.target
            && let Err(error) = socket.send_to_addr(state.as_bytes(), address)
        {
            crate::log::warn(&format!("NOTIFY_SOCKET: cannot notify systemd: {error}"));
        }
    }
}

/// The address `NOTIFY_SOCKET` names.
fn notify_address(name: &str) -> std::io::Result<SocketAddr> {
    match name.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())
        }
        #[cfg(not(target_os = "linux"))]
        Some(_) => Err(std::io::Error::other("abstract socket names need Linux")),
        None if name.starts_with('/') => SocketAddr::from_pathname(name),
        None => Err(std::io::Error::other(format!("`{name}` is neither a path nor @name"))),
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares `MONOTONIC_USEC` with.
fn monotonic_microseconds() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a pointer to a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_taken_only_when_listen_pid_names_this_process() {
        assert_eq!(passed_sockets(None, None, 42), Ok(0));
        assert_eq!(passed_sockets(None, Some("1"), 42), Ok(0));
        assert_eq!(passed_sockets(Some("41"), Some("1"), 42), Ok(0), "another process's");
        assert_eq!(passed_sockets(Some("42"), Some("1"), 42), Ok(1));
        assert_eq!(passed_sockets(Some("42"), Some("2"), 42), Ok(2));
        assert_eq!(passed_sockets(Some("42"), Some("0"), 42), Ok(0));
        assert!(passed_sockets(Some("42"), Some("x"), 42).unwrap_err().contains("LISTEN_FDS"));
        assert!(passed_sockets(Some("42"), None, 42).is_err());
    }

    #[test]
    fn notify_socket_names_are_paths_or_abstract() {
        let path = notify_address("/run/systemd/notify").unwrap();
        assert_eq!(path.as_pathname(), Some(std::path::Path::new("/run/systemd/notify")));
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let named = notify_address("@wxauth/notify").unwrap();
            assert_eq!(named.as_abstract_name(), Some(&b"wxauth/notify"[..]));
        }
        assert!(notify_address("vsock:2:1234").is_err());
        assert!(notify_address("relative/path").is_err());
    }

    #[test]
    fn a_notification_is_one_datagram() {
        let directory = std::env::temp_dir().join(format!("wxauth-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                SocketAddr::from_pathname(&path).unwrap(),
            )),
        };
        notifier.stopping();
        let mut buffer = [0u8; 64];
        let length = receiver.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..length], b"STOPPING=1");
        let _ = std::fs::remove_dir_all(&directory);
    }
}
