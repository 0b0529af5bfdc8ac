//! Replays the committed fuzz corpus, `fuzz/corpus/<target>/`, through the fuzz targets' own
//! bodies in `fuzz/harness/`, so every input the fuzzers kept is checked again by `cargo test`,
//! without cargo-fuzz or its compiler flags. Test-only; it touches nothing outside the corpus.

#[path = "../fuzz/harness/http_request.rs"]
mod http_request;
#[path = "../fuzz/harness/jwt_verify.rs"]
mod jwt_verify;
#[path = "../fuzz/harness/wxcrypt_decrypt.rs"]
mod wxcrypt_decrypt;

use std::path::{Path, PathBuf};

/// Runs `body` on every file of the target's corpus, and fails naming each file it panicked on.
fn replay(target: &str, body: fn(&[u8])) {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&directory)
        .unwrap_or_else(|error| panic!("{}: {error}", directory.display()))
        .map(|entry| entry.expect("a readable corpus directory").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no inputs", directory.display());
    let panicked: Vec<&PathBuf> = files
        .iter()
        .filter(|file| {
            let data = std::fs::read(file).expect("a readable corpus file");
            std::panic::catch_unwind(|| body(&data)).is_err()
        })
        .collect();
    assert!(
        panicked.is_empty(),
        "{target} panicked on {} of {} inputs: {panicked:#?}",
        panicked.len(),
        files.len()
    );
}

#[test]
fn http_request_corpus() {
    replay("http_request", http_request::run);
}

#[test]
fn jwt_verify_corpus() {
    replay("jwt_verify", jwt_verify::run);
}

#[test]
fn wxcrypt_decrypt_corpus() {
    replay("wxcrypt_decrypt", wxcrypt_decrypt::run);
}
