//! Fuzzes the router's request parsing: `route`, `percent_decode`, query splitting, `parse_body`
//! and `client_address`. The body is `fuzz/harness/http_request.rs`, which the replay test in
//! `src/fuzz_replay.rs` also runs over the committed corpus.
//!
//! wxauth has no library crate, so this target declares, by path and under their own names,
//! every module `router.rs` reaches through `crate::`; a new `use crate::` there may need a line
//! here.

#![no_main]

#[path = "../../src/api.rs"]
mod api;
#[path = "../../src/codes.rs"]
mod codes;
#[path = "../../src/config.rs"]
mod config;
#[path = "../../src/demo.rs"]
mod demo;
#[path = "../../src/error.rs"]
mod error;
#[path = "../../src/health.rs"]
mod health;
#[path = "../../src/jwt.rs"]
mod jwt;
#[path = "../../src/log.rs"]
mod log;
#[path = "../../src/metrics.rs"]
mod metrics;
#[path = "../../src/ratelimit.rs"]
mod ratelimit;
#[path = "../../src/router.rs"]
mod router;
#[path = "../../src/store/mod.rs"]
mod store;
#[path = "../../src/time.rs"]
mod time;
#[path = "../../src/wechat.rs"]
mod wechat;
#[path = "../../src/wxcrypt.rs"]
mod wxcrypt;

#[path = "../harness/http_request.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
