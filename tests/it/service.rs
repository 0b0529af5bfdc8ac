//! wxauth as a service manager sees it: a start that fails leaves nothing behind.

use std::net::TcpListener;

use crate::harness::{TempDir, refused_start};

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
