//! The body of the `http_request` fuzz target, shared with the corpus replay in
//! `src/fuzz_replay.rs`: routing, percent-decoding, query splitting, body parsing and the client
//! address, each fed from one input and checked against the rules `router.rs` states. It calls
//! only the router's `pub(crate)` functions; the private `query_value` is covered by splitting
//! the query the same way and decoding each piece.
//!
//! Input: `method NUL url NUL content-type NUL x-forwarded-for NUL peer NUL body`. Missing pieces
//! are empty (a missing `x-forwarded-for` is an absent header), and the body may hold NULs.

use std::net::IpAddr;

use serde_json::Value;

use crate::error::Error;
use crate::router;

const PREFIXES: [&str; 2] = ["/miniprog/wx_auth/", "/"];

/// The peers an input picks from with the first byte of its `peer` piece, unless the piece is an
/// address itself; the first `TRUSTED` are the trusted proxies.
const PEERS: [&str; 5] = ["127.0.0.1", "::1", "10.0.0.2", "203.0.113.9", "2001:db8::7"];
const TRUSTED: usize = 3;

pub(crate) fn run(data: &[u8]) {
    let mut pieces = data.splitn(6, |&byte| byte == 0);
    let method = String::from_utf8_lossy(pieces.next().unwrap_or_default());
    let url = String::from_utf8_lossy(pieces.next().unwrap_or_default());
    let content_type = String::from_utf8_lossy(pieces.next().unwrap_or_default());
    let forwarded_for = pieces.next().map(String::from_utf8_lossy);
    let peer = pieces.next().unwrap_or_default();
    let body = pieces.next().unwrap_or_default();

    let url: &str = &url;
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    for prefix in PREFIXES {
        check_route(prefix, &method, path);
    }
    check_percent_decode(path);
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        check_percent_decode(key);
        check_percent_decode(value);
    }
    // The server lowercases the header before parsing; the two fixed types reach both parsers
    // whatever the input's content type says.
    let content_type = content_type.to_ascii_lowercase();
    for content_type in
        [content_type.as_str(), "application/json", "application/x-www-form-urlencoded"]
    {
        check_body(content_type, body);
    }
    check_client_address(peer, forwarded_for.as_deref());
}

fn check_route(prefix: &str, method: &str, path: &str) {
    let found = router::route(prefix, method, path);
    match &found {
        Ok(_) => {
            assert!(path.starts_with(prefix), "{path:?} routed outside {prefix:?}");
            // The same path with a method no route takes names the method this one was let in by.
            match router::route(prefix, "FUZZ", path) {
                Err(Error::MethodNotAllowed(allowed)) => assert!(
                    method == allowed || (allowed == "GET" && method == "HEAD"),
                    "{method} {path:?} routed, but the path allows {allowed}"
                ),
                other => panic!("{path:?} answers an unknown method with {other:?}"),
            }
        }
        Err(Error::MethodNotAllowed(allowed)) => {
            assert!(router::route(prefix, allowed, path).is_ok(), "{allowed} {path:?} refused");
            check_envelope(&Error::MethodNotAllowed(allowed))
        }
        Err(error) => check_envelope(error),
    }
    // A trailing slash never changes the answer.
    if !path.ends_with('/') {
        let slashed = router::route(prefix, method, &format!("{path}/"));
        assert_eq!(found.ok(), slashed.ok(), "{path:?} and {path:?}/ route differently");
    }
}

fn check_percent_decode(text: &str) {
    let Some(decoded) = router::percent_decode(text) else {
        // Text is already UTF-8, so only an escape can make decoding fail.
        assert!(text.contains('%'), "{text:?} refused without an escape");
        return;
    };
    assert!(decoded.len() <= text.len());
    // Every accepted escape is `%` and two hex digits (`%+1` once slipped through).
    for (index, _) in text.match_indices('%') {
        let digits = text.as_bytes().get(index + 1..index + 3);
        assert!(digits.is_some_and(|digits| digits.iter().all(u8::is_ascii_hexdigit)), "{text:?}");
    }
    if !text.contains(['%', '+']) {
        assert_eq!(decoded, text);
    }
    let encoded: String = decoded
        .bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect();
    assert_eq!(router::percent_decode(&encoded).as_deref(), Some(decoded.as_str()));
}

fn check_body(content_type: &str, body: &[u8]) {
    match router::parse_body(content_type, body) {
        Ok(fields) => {
            if body.iter().all(u8::is_ascii_whitespace) {
                assert!(fields.is_empty());
            }
            let media_type = content_type.split(';').next().unwrap_or("").trim();
            if media_type == "application/x-www-form-urlencoded" {
                assert!(fields.values().all(Value::is_string), "a form field that is not text");
            }
        }
        Err(error) => check_envelope(&error),
    }
}

fn check_client_address(peer: &[u8], forwarded_for: Option<&str>) {
    let trusted: Vec<IpAddr> =
        PEERS[..TRUSTED].iter().map(|address| address.parse().unwrap()).collect();
    let peer =
        std::str::from_utf8(peer).ok().and_then(|text| text.parse().ok()).unwrap_or_else(|| {
            PEERS[usize::from(peer.first().copied().unwrap_or(0)) % PEERS.len()].parse().unwrap()
        });
    let client = router::client_address(peer, forwarded_for, &trusted);
    match forwarded_for {
        Some(chain) if trusted.contains(&peer) => assert!(
            client == peer || chain.split(',').any(|hop| hop.trim().parse() == Ok(client)),
            "{client} is neither the peer nor in {chain:?}"
        ),
        // An untrusted peer's header is ignored.
        _ => assert_eq!(client, peer),
    }
}

/// A refusal becomes a 4xx JSON envelope that names the error.
fn check_envelope(error: &Error) {
    let reply = router::failure(error);
    assert!((400..500).contains(&reply.status), "{error:?} answers {}", reply.status);
    let envelope: Value = serde_json::from_str(&reply.body).expect("the envelope is JSON");
    assert_eq!(envelope["error"], error.name());
}
