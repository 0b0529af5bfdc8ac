//! Fuzzes `wxcrypt::decrypt` and `wxcrypt::decrypt_phone` with text arguments, raw ciphertext,
//! and plaintext encrypted under a fixed key. The body is `fuzz/harness/wxcrypt_decrypt.rs`,
//! which the replay test in `src/fuzz_replay.rs` also runs over the committed corpus.

#![no_main]

#[path = "../../src/wxcrypt.rs"]
mod wxcrypt;

#[path = "../harness/wxcrypt_decrypt.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
