//! [wxauth patch] Waiting for a connection's next bytes without reading them (PATCHES.md,
//! "One sleep per request").

#[cfg(unix)]
pub(crate) use std::os::unix::io::RawFd;

/// A stand-in where there is no `poll`: nothing is ever waited for.
#[cfg(not(unix))]
pub(crate) type RawFd = i32;

use std::time::Duration;

/// Waits until the socket `fd` has bytes to read, is closed or fails, or `timeout` (`None`: no
/// limit) has passed, whichever comes first; a signal may end the wait early too. Nothing is read
/// and nothing is reported: the caller goes on exactly as it would have without waiting, so the
/// wait only changes where its thread sleeps, never what it does.
#[cfg(unix)]
pub(crate) fn wait_readable(fd: RawFd, timeout: Option<Duration>) {
    poll_one(fd, libc::POLLIN, timeout);
}

/// Waits until the socket `fd` has room to write, is closed or fails, or `timeout` has passed;
/// like `wait_readable`, the caller learns nothing and simply tries again.
#[cfg(unix)]
pub(crate) fn wait_writable(fd: RawFd, timeout: Duration) {
    poll_one(fd, libc::POLLOUT, Some(timeout));
}

#[cfg(unix)]
#[allow(unsafe_code)]
fn poll_one(fd: RawFd, events: libc::c_short, timeout: Option<Duration>) {
    // Rounded up: a wait of less than a millisecond must still wait, not spin.
    let milliseconds = match timeout {
        Some(timeout) => {
            let rounded = timeout.as_nanos().div_ceil(1_000_000);
            rounded.min(i32::MAX as u128) as i32
        }
        None => -1,
    };
    let mut pollfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: `pollfd` is one initialised `pollfd` that outlives the call, and the count says one.
    // poll(2) only reads and writes that struct; any `fd` value is memory-safe (a closed one
    // reports POLLNVAL, which the caller does not look at).
    unsafe {
        libc::poll(&mut pollfd, 1, milliseconds);
    }
}

#[cfg(not(unix))]
pub(crate) fn wait_readable(_fd: RawFd, _timeout: Option<Duration>) {}

/// Sends what of `buf` the socket `fd` takes without waiting for room (`MSG_DONTWAIT`), whatever
/// the socket's own mode and timeouts: `WouldBlock` when it takes nothing now. No `SIGPIPE` for a
/// closed connection (`MSG_NOSIGNAL`, as std's own writes), an `EPIPE` error instead.
#[cfg(unix)]
#[allow(unsafe_code)]
pub(crate) fn send_without_waiting(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let flags = libc::MSG_DONTWAIT;
    loop {
        // SAFETY: `buf` is a live slice for the whole call and the length passed is its own;
        // send(2) only reads it. Any `fd` value is memory-safe (a bad one fails with EBADF).
        let sent = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), flags) };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Reads and throws away what the socket `fd` already holds, up to `most` bytes, without waiting
/// for more (`MSG_DONTWAIT`): before a close, so that the kernel does not answer bytes left
/// unread with a reset.
#[cfg(unix)]
#[allow(unsafe_code)]
pub(crate) fn discard_without_waiting(fd: RawFd, most: usize) {
    let mut buffer = [0u8; 4096];
    let mut left = most;
    while left > 0 {
        let length = buffer.len().min(left);
        // SAFETY: `buffer` is a live array for the whole call and `length` is at most its size;
        // recv(2) only writes into it. Any `fd` value is memory-safe (a bad one fails).
        let read =
            unsafe { libc::recv(fd, buffer.as_mut_ptr().cast(), length, libc::MSG_DONTWAIT) };
        if read <= 0 {
            return;
        }
        left = left.saturating_sub(read as usize);
    }
}
