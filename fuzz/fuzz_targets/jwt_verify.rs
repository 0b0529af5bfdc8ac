//! Fuzzes `jwt::verify` with raw tokens, edited genuine tokens, and arbitrary headers and payloads
//! signed with a known secret. The body is `fuzz/harness/jwt_verify.rs`, which the replay test in
//! `src/fuzz_replay.rs` also runs over the committed corpus.

#![no_main]

#[path = "../../src/jwt.rs"]
mod jwt;

#[path = "../harness/jwt_verify.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
