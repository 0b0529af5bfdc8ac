//! The body of the `jwt_verify` fuzz target, shared with the corpus replay in
//! `src/fuzz_replay.rs`. `jwt::verify` must never panic, must never accept a token that differs
//! from the one `jwt::sign` made, and must accept only claims that meet `Expect`.
//!
//! The first input byte picks a mode (its value modulo 3), and the rest is:
//! - 0: a token, as text;
//! - 1: edits to a genuine token, four bytes each (operation, position high and low byte,
//!   value); an accepted edited token is a forgery. The first byte's next bit says whether the
//!   genuine token names its key (`kid`);
//! - 2: `header NUL payload`, JSON signed here with a known secret, so the header and claim checks
//!   behind the signature are reached. The first byte's next bit picks the secret.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::jwt::{self, Claims, Expect};

const CURRENT: (&str, &[u8]) = ("current", b"current-secret-for-fuzzing-0123456789");
const PREVIOUS: (&str, &[u8]) = ("previous", b"previous-secret-for-fuzzing-9876543210");
const NOW: i64 = 1_700_000_000;
const EXPECT: Expect<'static> =
    Expect { issuer: "wxauth", audiences: &["miniapp"], leeway: 60, now: NOW };

pub(crate) fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let flag = (mode / 3) % 2 == 1;
    match mode % 3 {
        0 => {
            let token = String::from_utf8_lossy(rest);
            if let Ok(claims) = jwt::verify(&token, &[CURRENT, PREVIOUS], &EXPECT) {
                check_accepted(&claims);
            }
        }
        1 => check_edited(rest, flag),
        _ => check_signed(rest, if flag { PREVIOUS } else { CURRENT }),
    }
}

/// The claims of the genuine token, read from JSON so that claims the server adds later (with a
/// default) do not break this harness.
fn genuine_claims() -> Claims {
    serde_json::from_str(
        r#"{"iss":"wxauth","aud":"miniapp","sub":"42","iat":1700000000,"exp":1700003600,
            "nbf":1700000000,"nickname":"小明","scopes":["profile","phone"],"ver":3}"#,
    )
    .expect("the genuine claims parse")
}

fn check_edited(edits: &[u8], with_kid: bool) {
    let genuine = jwt::sign(&genuine_claims(), CURRENT.1, with_kid.then_some(CURRENT.0));
    let mut token = genuine.clone().into_bytes();
    for edit in edits.chunks_exact(4) {
        let position = usize::from(u16::from_be_bytes([edit[1], edit[2]]));
        let value = edit[3];
        match edit[0] % 5 {
            0 if !token.is_empty() => {
                let index = position % token.len();
                token[index] = value;
            }
            1 => token.insert(position % (token.len() + 1), value),
            2 if !token.is_empty() => {
                token.remove(position % token.len());
            }
            // Stay inside the base64url alphabet, so edits get past decoding.
            3 if !token.is_empty() => {
                let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                let index = position % token.len();
                token[index] = alphabet[usize::from(value) % alphabet.len()];
            }
            // Flip bits inside a decoded segment and encode it again canonically.
            4 => token = edit_segment(&token, usize::from(value % 3), position, value | 1),
            _ => {}
        }
    }
    let token = String::from_utf8_lossy(&token);
    if let Ok(claims) = jwt::verify(&token, &[CURRENT, PREVIOUS], &EXPECT) {
        assert_eq!(token, genuine, "an edited token was accepted");
        assert_eq!(claims, genuine_claims());
    }
}

fn edit_segment(token: &[u8], segment: usize, position: usize, mask: u8) -> Vec<u8> {
    let mut segments: Vec<Vec<u8>> =
        token.split(|&byte| byte == b'.').map(<[u8]>::to_vec).collect();
    let Some(encoded) = segments.get_mut(segment) else {
        return token.to_vec();
    };
    let Ok(mut decoded) = URL_SAFE_NO_PAD.decode(&encoded[..]) else {
        return token.to_vec();
    };
    if decoded.is_empty() {
        return token.to_vec();
    }
    let index = position % decoded.len();
    decoded[index] ^= mask;
    *encoded = URL_SAFE_NO_PAD.encode(decoded).into_bytes();
    segments.join(&b'.')
}

fn check_signed(rest: &[u8], (kid, secret): (&str, &[u8])) {
    let (header, payload) = match rest.iter().position(|&byte| byte == 0) {
        Some(index) => (&rest[..index], &rest[index + 1..]),
        None => (rest, &[][..]),
    };
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap();
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    let token = format!("{signing_input}.{signature}");
    let Ok(claims) = jwt::verify(&token, &[CURRENT, PREVIOUS], &EXPECT) else {
        return;
    };
    check_accepted(&claims);
    let header = std::str::from_utf8(header).expect("an accepted header is UTF-8");
    let header: Value = serde_json::from_str(header).expect("an accepted header is JSON");
    assert_eq!(header["alg"], "HS256", "accepted {header}");
    assert!(header.get("crit").is_none(), "accepted {header}");
    assert!(header.get("typ").is_none_or(|typ| typ == "JWT"), "accepted {header}");
    // The key that checked the signature is the one the header names, or the current one.
    match header.get("kid") {
        Some(named) => assert_eq!(named, kid, "accepted {header}"),
        None => assert_eq!(kid, CURRENT.0, "accepted {header} without kid"),
    }
    let payload = std::str::from_utf8(payload).expect("an accepted payload is UTF-8");
    let payload: Value = serde_json::from_str(payload).expect("an accepted payload is JSON");
    assert_eq!(payload["iss"], EXPECT.issuer);
    assert_eq!(payload["sub"], claims.sub.as_str());
}

/// What `verify` returns meets every check in `Expect`.
fn check_accepted(claims: &Claims) {
    assert_eq!(claims.iss, EXPECT.issuer);
    assert_eq!(claims.aud, EXPECT.audiences[0]);
    assert!(claims.iat.saturating_sub(EXPECT.leeway) <= NOW, "issued in the future");
    assert!(claims.nbf.is_none_or(|nbf| nbf.saturating_sub(EXPECT.leeway) <= NOW), "not yet");
    assert!(NOW <= claims.exp.saturating_add(EXPECT.leeway), "expired");
}
