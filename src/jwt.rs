//! Issuing and checking the server's own access tokens: a deliberately small
//! HS256-only JWT. This module owns the token format, the signature and the
//! claim checks (issuer, audience, time windows, key rotation by `kid`). It
//! does no I/O: secrets and the current time are passed in by the caller, so
//! every rule here can be tested with fixed values.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Tokens are small; refusing anything bigger before decoding keeps a hostile
/// client from making the server base64-decode and parse megabytes.
const MAX_TOKEN_LENGTH: usize = 8 * 1024;

/// The only algorithm accepted, compared case-sensitively, so `none`, `HS512`,
/// `RS256` or `hs256` can never select a different verification path.
const ALGORITHM: &str = "HS256";
const TOKEN_TYPE: &str = "JWT";

/// The claims carried in the server's tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub(crate) iss: String,
    pub(crate) aud: String,
    /// The account id, as a string because JWT subjects are strings.
    pub(crate) sub: String,
    pub(crate) iat: i64,
    pub(crate) exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) nbf: Option<i64>,
    /// Serialized as `null` when absent, so clients always see the key.
    pub(crate) nickname: Option<String>,
    pub(crate) scopes: Vec<String>,
    /// The account's token version when issued; a logout raises the account's version and so
    /// revokes older tokens. Omitted while 0, so tokens of accounts that never logged out carry
    /// exactly the original backend's claims.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) ver: i64,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// What a token must match to be accepted, and the clock to check it against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect<'a> {
    pub(crate) issuer: &'a str,
    /// The audiences accepted (one per mini-program served): a token must carry one of them, and
    /// its claims name the first of these it carries.
    pub(crate) audiences: &'a [&'a str],
    /// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
    pub(crate) leeway: i64,
    /// Unix seconds.
    pub(crate) now: i64,
}

/// Why a token was refused. The variants carry nothing, so no part of a token
/// or secret can leak through an error message or a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwtError {
    /// Malformed, wrongly signed, wrong algorithm, issuer or audience, or not
    /// yet valid.
    Invalid,
    /// Genuine and otherwise valid, but past `exp` beyond the leeway; the
    /// client should refresh rather than start over.
    Expired,
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtError::Invalid => formatter.write_str("invalid token"),
            JwtError::Expired => formatter.write_str("token expired"),
        }
    }
}

impl std::error::Error for JwtError {}

/// The header as written by `sign`; field order here is the order on the wire.
#[derive(Serialize)]
struct SignedHeader<'a> {
    alg: &'a str,
    typ: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

/// The header as read by `verify`. Each field is `Some` whenever the key is
/// present, even with a `null` value, so that `"typ":null` or `"kid":null` is
/// refused instead of being mistaken for an absent key.
#[derive(Deserialize)]
struct ReceivedHeader {
    #[serde(default, deserialize_with = "present")]
    alg: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    typ: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    kid: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    crit: Option<serde_json::Value>,
}

fn present<'de, D>(deserializer: D) -> Result<Option<serde_json::Value>, D::Error>
where
    D: Deserializer<'de>,
{
    serde_json::Value::deserialize(deserializer).map(Some)
}

/// RFC 7519 allows `aud` to be a single string or an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The payload as read by `verify`: like `Claims`, but with either form of
/// `aud`.
#[derive(Deserialize)]
struct ReceivedClaims {
    iss: String,
    aud: Audience,
    sub: String,
    iat: i64,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    nickname: Option<String>,
    scopes: Vec<String>,
    #[serde(default)]
    ver: i64,
}

/// A secret ready for use: its HMAC key schedule is computed once, here, rather than for every
/// token, and it carries the `kid` that names it in token headers.
#[derive(Clone)]
pub(crate) struct Key {
    kid: String,
    mac: HmacSha256,
}

impl Key {
    /// The key for `secret`, named by `key_id(secret)`.
    pub(crate) fn new(secret: &[u8]) -> Key {
        Key::named(&key_id(secret), secret)
    }

    fn named(kid: &str, secret: &[u8]) -> Key {
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = <HmacSha256 as KeyInit>::new_from_slice(secret)
            .expect("HMAC accepts keys of any length");
        Key { kid: kid.to_string(), mac }
    }

    /// The public name of this key, as tokens signed with it carry in their `kid` header.
    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    fn mac(&self, signing_input: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(signing_input.as_bytes());
        mac
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key schedule is the secret in all but name.
        formatter.debug_struct("Key").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// Signs `claims` with `key`, naming it: the header is exactly
/// `{"alg":"HS256","typ":"JWT","kid":"…"}`.
pub(crate) fn sign_with(claims: &Claims, key: &Key) -> String {
    sign_mac(claims, key, Some(key.kid()))
}

/// Signs `claims` with `secret`. The header is exactly
/// `{"alg":"HS256","typ":"JWT"}`, or `{"alg":"HS256","typ":"JWT","kid":"…"}`
/// when `kid` is given.
#[cfg(any(test, fuzzing))]
pub(crate) fn sign(claims: &Claims, secret: &[u8], kid: Option<&str>) -> String {
    sign_mac(claims, &Key::new(secret), kid)
}

fn sign_mac(claims: &Claims, key: &Key, kid: Option<&str>) -> String {
    let header = SignedHeader { alg: ALGORITHM, typ: TOKEN_TYPE, kid };
    // Serializing plain structs of strings and integers into JSON cannot fail.
    let header_json = serde_json::to_vec(&header).expect("a JWT header always serializes");
    let payload_json = serde_json::to_vec(claims).expect("JWT claims always serialize");

    let mut token = URL_SAFE_NO_PAD.encode(header_json);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(payload_json));
    let signature = key.mac(&token).finalize().into_bytes();
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    token
}

/// Verifies `token` against one of `secrets`, a list of `(kid, secret)` whose
/// first entry is the current secret; see `verify_with`.
#[cfg(any(test, fuzzing))]
pub(crate) fn verify(
    token: &str,
    secrets: &[(&str, &[u8])],
    expect: &Expect,
) -> Result<Claims, JwtError> {
    let keys: Vec<Key> = secrets.iter().map(|(kid, secret)| Key::named(kid, secret)).collect();
    verify_with(token, &keys, expect)
}

/// Verifies `token` against one of `keys`, current first. A token with a `kid`
/// header is checked only with the key of that kid, so a retired secret stops
/// working as soon as it is removed from the list; a token without `kid` (from
/// the original backend, which did not name keys) is checked with the current
/// key only, as API.md says.
pub(crate) fn verify_with(token: &str, keys: &[Key], expect: &Expect) -> Result<Claims, JwtError> {
    let (encoded_header, encoded_payload, encoded_signature) = split(token)?;
    let header = decode_header(encoded_header)?;

    // The MAC covers the segments exactly as received, so any re-encoding of
    // the header or payload, however equivalent, breaks the signature.
    let signature = decode_segment(encoded_signature)?;
    let signing_input = &token[..encoded_header.len() + 1 + encoded_payload.len()];
    let genuine = |key: &Key| key.mac(signing_input).verify_slice(&signature).is_ok();
    let signed = match header.kid.as_deref() {
        Some(kid) => keys.iter().find(|key| key.kid == kid).is_some_and(genuine),
        None => keys.first().is_some_and(genuine),
    };
    if !signed {
        return Err(JwtError::Invalid);
    }

    // Only now is the payload known to come from us, so only now is it parsed.
    let payload = decode_segment(encoded_payload)?;
    let claims: ReceivedClaims = parse_object(&payload)?;
    check_claims(claims, expect)
}

/// A short, stable, public id for a secret: the first 8 bytes of its SHA-256
/// as 16 lowercase hex characters. It names the secret in the `kid` header
/// without revealing anything useful about it.
pub(crate) fn key_id(secret: &[u8]) -> String {
    const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(secret);
    let mut id = String::with_capacity(16);
    for byte in &digest[..8] {
        id.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
        id.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
    }
    id
}

/// The header fields `verify` relies on, after validation.
struct Header {
    kid: Option<String>,
}

/// Splits a token into exactly three segments, refusing oversized input first.
fn split(token: &str) -> Result<(&str, &str, &str), JwtError> {
    if token.len() > MAX_TOKEN_LENGTH {
        return Err(JwtError::Invalid);
    }
    let mut segments = token.split('.');
    match (segments.next(), segments.next(), segments.next(), segments.next()) {
        (Some(header), Some(payload), Some(signature), None) => Ok((header, payload, signature)),
        _ => Err(JwtError::Invalid),
    }
}

/// Decodes one segment as unpadded base64url. The engine refuses `=` padding,
/// characters outside the url-safe alphabet and non-zero trailing bits, so each
/// token has exactly one accepted spelling.
fn decode_segment(segment: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD.decode(segment).map_err(|_| JwtError::Invalid)
}

/// Parses a JSON object into `T`. Serde would also fill a struct from a JSON
/// array, so the object form is checked explicitly.
fn parse_object<T: for<'de> Deserialize<'de>>(json: &[u8]) -> Result<T, JwtError> {
    let first = json.iter().find(|byte| !byte.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(JwtError::Invalid);
    }
    // serde_json skips an ignored field's string without checking its UTF-8 (found by fuzzing),
    // so the whole segment is checked first: a token is strict JSON or nothing.
    let text = std::str::from_utf8(json).map_err(|_| JwtError::Invalid)?;
    serde_json::from_str(text).map_err(|_| JwtError::Invalid)
}

fn decode_header(encoded_header: &str) -> Result<Header, JwtError> {
    let header: ReceivedHeader = parse_object(&decode_segment(encoded_header)?)?;
    if !header.alg.is_some_and(|alg| alg == ALGORITHM) {
        return Err(JwtError::Invalid);
    }
    if header.typ.is_some_and(|typ| typ != TOKEN_TYPE) {
        return Err(JwtError::Invalid);
    }
    // `crit` names extensions the verifier must understand; this one
    // understands none, so RFC 7515 requires refusing the token.
    if header.crit.is_some() {
        return Err(JwtError::Invalid);
    }
    let kid = match header.kid {
        None => None,
        Some(serde_json::Value::String(kid)) => Some(kid),
        Some(_) => return Err(JwtError::Invalid),
    };
    Ok(Header { kid })
}

fn check_claims(claims: ReceivedClaims, expect: &Expect) -> Result<Claims, JwtError> {
    if claims.iss != expect.issuer {
        return Err(JwtError::Invalid);
    }
    let carried = |accepted: &&&str| match &claims.aud {
        Audience::One(audience) => audience == **accepted,
        Audience::Many(audiences) => audiences.iter().any(|audience| audience == **accepted),
    };
    let Some(audience) = expect.audiences.iter().find(carried) else {
        return Err(JwtError::Invalid);
    };
    // Saturating arithmetic keeps extreme claim values from wrapping around
    // into the valid window.
    if claims.nbf.is_some_and(|nbf| nbf.saturating_sub(expect.leeway) > expect.now) {
        return Err(JwtError::Invalid);
    }
    if claims.iat.saturating_sub(expect.leeway) > expect.now {
        return Err(JwtError::Invalid);
    }
    // Expiry is checked last so that `Expired` is only ever reported for a
    // token that is otherwise entirely valid.
    if expect.now > claims.exp.saturating_add(expect.leeway) {
        return Err(JwtError::Expired);
    }
    Ok(Claims {
        iss: claims.iss,
        aud: (*audience).to_owned(),
        sub: claims.sub,
        iat: claims.iat,
        exp: claims.exp,
        nbf: claims.nbf,
        nickname: claims.nickname,
        scopes: claims.scopes,
        ver: claims.ver,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"current-secret-for-tests-0123456789";
    const PREVIOUS_SECRET: &[u8] = b"previous-secret-for-tests-9876543210";
    const ISSUER: &str = "wxauth";
    const AUDIENCE: &str = "miniapp";
    const NOW: i64 = 1_700_000_000;
    const LEEWAY: i64 = 60;

    fn claims() -> Claims {
        Claims {
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            sub: "42".to_owned(),
            iat: NOW,
            exp: NOW + 3600,
            nbf: None,
            nickname: Some("alice".to_owned()),
            scopes: vec!["profile".to_owned(), "phone".to_owned()],
            ver: 0,
        }
    }

    fn expect_at(now: i64) -> Expect<'static> {
        Expect { issuer: ISSUER, audiences: &[AUDIENCE], leeway: LEEWAY, now }
    }

    fn current_only() -> Vec<(&'static str, &'static [u8])> {
        vec![("current", SECRET)]
    }

    fn check(token: &str) -> Result<Claims, JwtError> {
        verify(token, &current_only(), &expect_at(NOW))
    }

    fn encode(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Builds a correctly signed token from arbitrary header and payload text,
    /// so each test isolates exactly one defect.
    fn forge(header: &str, payload: &str, secret: &[u8]) -> String {
        let signing_input = format!("{}.{}", encode(header.as_bytes()), encode(payload.as_bytes()));
        let signature = Key::new(secret).mac(&signing_input).finalize().into_bytes();
        format!("{signing_input}.{}", encode(&signature))
    }

    fn payload_json(claims: &Claims) -> String {
        serde_json::to_string(claims).unwrap()
    }

    fn forge_with_header(header: &str) -> String {
        forge(header, &payload_json(&claims()), SECRET)
    }

    fn forge_with_payload(payload: &str) -> String {
        forge(r#"{"alg":"HS256","typ":"JWT"}"#, payload, SECRET)
    }

    #[test]
    fn signed_segments_that_are_not_utf8_are_invalid() {
        // Found by fuzzing: serde_json does not check the UTF-8 of strings it skips.
        let payload = payload_json(&claims());
        let header = b"{\"alg\":\"HS256\",\"x\":\"\xff\"}";
        let signing_input = format!("{}.{}", encode(header), encode(payload.as_bytes()));
        let signature = Key::new(SECRET).mac(&signing_input).finalize().into_bytes();
        let token = format!("{signing_input}.{}", encode(&signature));
        assert_eq!(verify(&token, &[("k", SECRET)], &expect_at(NOW)), Err(JwtError::Invalid));
        let mut payload = payload.into_bytes();
        payload.truncate(payload.len() - 1);
        payload.extend_from_slice(b",\"x\":\"\xff\"}");
        let signing_input = format!("{}.{}", encode(br#"{"alg":"HS256"}"#), encode(&payload));
        let signature = Key::new(SECRET).mac(&signing_input).finalize().into_bytes();
        let token = format!("{signing_input}.{}", encode(&signature));
        assert_eq!(verify(&token, &[("k", SECRET)], &expect_at(NOW)), Err(JwtError::Invalid));
    }

    fn segments(token: &str) -> Vec<String> {
        token.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn round_trip() {
        let token = sign(&claims(), SECRET, None);
        assert_eq!(check(&token), Ok(claims()));
    }

    #[test]
    fn round_trip_with_nbf_and_no_nickname() {
        let mut original = claims();
        original.nbf = Some(NOW);
        original.nickname = None;
        let token = sign(&original, SECRET, None);
        assert_eq!(check(&token), Ok(original));
    }

    #[test]
    fn header_is_exact() {
        let token = sign(&claims(), SECRET, None);
        let header = URL_SAFE_NO_PAD.decode(&segments(&token)[0]).unwrap();
        assert_eq!(header, br#"{"alg":"HS256","typ":"JWT"}"#);
    }

    #[test]
    fn header_with_kid_is_exact() {
        let token = sign(&claims(), SECRET, Some("abc"));
        let header = URL_SAFE_NO_PAD.decode(&segments(&token)[0]).unwrap();
        assert_eq!(header, br#"{"alg":"HS256","typ":"JWT","kid":"abc"}"#);
    }

    #[test]
    fn nickname_none_is_serialized_as_null_and_nbf_none_is_omitted() {
        let mut original = claims();
        original.nickname = None;
        let token = sign(&original, SECRET, None);
        let payload = URL_SAFE_NO_PAD.decode(&segments(&token)[1]).unwrap();
        let payload = String::from_utf8(payload).unwrap();
        assert!(payload.contains(r#""nickname":null"#), "{payload}");
        assert!(!payload.contains("nbf"), "{payload}");
    }

    #[test]
    fn tampered_payload_byte_is_invalid() {
        let token = sign(&claims(), SECRET, None);
        let parts = segments(&token);
        let mut payload = URL_SAFE_NO_PAD.decode(&parts[1]).unwrap();
        // Turn "sub":"42" into "sub":"43".
        let position = payload.windows(4).position(|window| window == b"\"42\"").unwrap();
        payload[position + 2] = b'3';
        let tampered = format!("{}.{}.{}", parts[0], encode(&payload), parts[2]);
        assert_eq!(check(&tampered), Err(JwtError::Invalid));
    }

    #[test]
    fn re_encoded_modified_payload_keeping_signature_is_invalid() {
        let token = sign(&claims(), SECRET, None);
        let parts = segments(&token);
        let mut elevated = claims();
        elevated.scopes.push("admin".to_owned());
        let tampered =
            format!("{}.{}.{}", parts[0], encode(payload_json(&elevated).as_bytes()), parts[2]);
        assert_eq!(check(&tampered), Err(JwtError::Invalid));
    }

    #[test]
    fn tampered_signature_is_invalid() {
        let token = sign(&claims(), SECRET, None);
        let parts = segments(&token);
        let mut signature = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
        signature[0] ^= 0x01;
        let tampered = format!("{}.{}.{}", parts[0], parts[1], encode(&signature));
        assert_eq!(check(&tampered), Err(JwtError::Invalid));
    }

    #[test]
    fn truncated_signature_is_invalid() {
        let token = sign(&claims(), SECRET, None);
        let parts = segments(&token);
        let signature = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
        let tampered = format!("{}.{}.{}", parts[0], parts[1], encode(&signature[..16]));
        assert_eq!(check(&tampered), Err(JwtError::Invalid));
    }

    #[test]
    fn tampered_header_is_invalid() {
        let token = sign(&claims(), SECRET, None);
        let parts = segments(&token);
        // Semantically the same header, spelled differently: the signature
        // covers the bytes, so this must still be refused.
        let header = encode(br#"{"typ":"JWT","alg":"HS256"}"#);
        let tampered = format!("{header}.{}.{}", parts[1], parts[2]);
        assert_eq!(check(&tampered), Err(JwtError::Invalid));
    }

    #[test]
    fn alg_none_with_empty_signature_is_invalid() {
        let header = encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = encode(payload_json(&claims()).as_bytes());
        assert_eq!(check(&format!("{header}.{payload}.")), Err(JwtError::Invalid));
    }

    #[test]
    fn alg_none_with_signature_is_invalid() {
        let token = forge_with_header(r#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn alg_hs512_is_invalid() {
        let token = forge_with_header(r#"{"alg":"HS512","typ":"JWT"}"#);
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn alg_rs256_is_invalid() {
        let token = forge_with_header(r#"{"alg":"RS256","typ":"JWT"}"#);
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn alg_lowercase_hs256_is_invalid() {
        let token = forge_with_header(r#"{"alg":"hs256","typ":"JWT"}"#);
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn alg_missing_is_invalid() {
        let token = forge_with_header(r#"{"typ":"JWT"}"#);
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn alg_null_or_not_a_string_is_invalid() {
        for header in [r#"{"alg":null}"#, r#"{"alg":["HS256"]}"#] {
            assert_eq!(check(&forge_with_header(header)), Err(JwtError::Invalid), "{header}");
        }
    }

    #[test]
    fn header_without_typ_is_accepted() {
        let token = forge_with_header(r#"{"alg":"HS256"}"#);
        assert_eq!(check(&token), Ok(claims()));
    }

    #[test]
    fn wrong_or_null_typ_is_invalid() {
        for header in [r#"{"alg":"HS256","typ":"JWS"}"#, r#"{"alg":"HS256","typ":null}"#] {
            assert_eq!(check(&forge_with_header(header)), Err(JwtError::Invalid), "{header}");
        }
    }

    #[test]
    fn crit_header_is_invalid() {
        let token = forge_with_header(r#"{"alg":"HS256","typ":"JWT","crit":["exp"]}"#);
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn header_as_json_array_is_invalid() {
        let token = forge_with_header(r#"["HS256","JWT",null,null]"#);
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn two_segments_are_invalid() {
        let token = sign(&claims(), SECRET, None);
        let parts = segments(&token);
        assert_eq!(check(&format!("{}.{}", parts[0], parts[1])), Err(JwtError::Invalid));
    }

    #[test]
    fn four_segments_are_invalid() {
        let token = sign(&claims(), SECRET, None);
        assert_eq!(check(&format!("{token}.")), Err(JwtError::Invalid));
        let parts = segments(&token);
        assert_eq!(check(&format!("{token}.{}", parts[2])), Err(JwtError::Invalid));
    }

    #[test]
    fn padding_is_invalid() {
        let token = sign(&claims(), SECRET, None);
        let parts = segments(&token);
        // A 32-byte signature encodes to 43 characters, one short of a quad.
        assert_eq!(parts[2].len(), 43);
        let padded = format!("{}.{}.{}=", parts[0], parts[1], parts[2]);
        assert_eq!(check(&padded), Err(JwtError::Invalid));

        // The same with a header whose encoding needs padding.
        let header = br#"{"alg":"HS256","typ":"JWT"} "#;
        assert_ne!(header.len() % 3, 0);
        let padded_header = base64::engine::general_purpose::URL_SAFE.encode(header);
        assert!(padded_header.ends_with('='));
        let signing_input = format!("{padded_header}.{}", parts[1]);
        let signature = Key::new(SECRET).mac(&signing_input).finalize().into_bytes();
        let token = format!("{signing_input}.{}", encode(&signature));
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn non_url_safe_alphabet_is_invalid() {
        // Vary the subject until the signature contains a character that
        // differs between the two alphabets.
        let token = (0..)
            .map(|attempt| {
                let mut changed = claims();
                changed.sub = attempt.to_string();
                sign(&changed, SECRET, None)
            })
            .find(|token| segments(token)[2].contains(['-', '_']))
            .unwrap();
        let parts = segments(&token);
        let signature = base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(URL_SAFE_NO_PAD.decode(&parts[2]).unwrap());
        let rewritten = format!("{}.{}.{signature}", parts[0], parts[1]);
        assert_eq!(check(&rewritten), Err(JwtError::Invalid));
    }

    #[test]
    fn non_base64_characters_are_invalid() {
        let token = sign(&claims(), SECRET, None);
        let parts = segments(&token);
        for bad in ["!", "*", " ", "\n", "\u{e9}"] {
            let signature = format!("{}{bad}", &parts[2][..42]);
            let tampered = format!("{}.{}.{signature}", parts[0], parts[1]);
            assert_eq!(check(&tampered), Err(JwtError::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn non_zero_trailing_bits_are_invalid() {
        let token = sign(&claims(), SECRET, None);
        let parts = segments(&token);
        // 43 characters carry 258 bits for a 256-bit signature, so the last
        // character has 2 unused low bits; setting one changes the text
        // without changing the bytes a lenient decoder would produce.
        let last = parts[2].as_bytes()[42];
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let index = alphabet.iter().position(|&symbol| symbol == last).unwrap();
        assert_eq!(index & 0x03, 0);
        let sloppy = char::from(alphabet[index | 0x01]);
        let tampered = format!("{}.{}.{}{sloppy}", parts[0], parts[1], &parts[2][..42]);
        assert_eq!(check(&tampered), Err(JwtError::Invalid));
    }

    #[test]
    fn non_json_header_is_invalid() {
        let token = forge_with_header("not json");
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn non_json_payload_is_invalid() {
        let token = forge_with_payload("not json");
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn payload_as_json_array_is_invalid() {
        let token = forge_with_payload(
            r#"["wxauth","miniapp","42",1700000000,1700003600,null,null,["profile"]]"#,
        );
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn missing_exp_is_invalid() {
        let token = forge_with_payload(
            r#"{"iss":"wxauth","aud":"miniapp","sub":"42","iat":1700000000,"nickname":null,"scopes":[]}"#,
        );
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn expired_beyond_leeway_is_expired() {
        let token = sign(&claims(), SECRET, None);
        let exp = claims().exp;
        let result = verify(&token, &current_only(), &expect_at(exp + LEEWAY + 1));
        assert_eq!(result, Err(JwtError::Expired));
    }

    #[test]
    fn expired_within_leeway_is_accepted() {
        let token = sign(&claims(), SECRET, None);
        let exp = claims().exp;
        let result = verify(&token, &current_only(), &expect_at(exp + LEEWAY));
        assert_eq!(result, Ok(claims()));
    }

    #[test]
    fn expired_with_bad_signature_is_invalid_not_expired() {
        let token = forge(r#"{"alg":"HS256","typ":"JWT"}"#, &payload_json(&claims()), b"wrong");
        let exp = claims().exp;
        let result = verify(&token, &current_only(), &expect_at(exp + LEEWAY + 1));
        assert_eq!(result, Err(JwtError::Invalid));
    }

    #[test]
    fn expired_with_wrong_audience_is_invalid_not_expired() {
        let mut other = claims();
        other.aud = "someone-else".to_owned();
        let token = sign(&other, SECRET, None);
        let result = verify(&token, &current_only(), &expect_at(other.exp + LEEWAY + 1));
        assert_eq!(result, Err(JwtError::Invalid));
    }

    #[test]
    fn extreme_exp_does_not_overflow() {
        let mut far = claims();
        far.exp = i64::MAX;
        let token = sign(&far, SECRET, None);
        assert_eq!(check(&token), Ok(far));
    }

    #[test]
    fn nbf_in_future_beyond_leeway_is_invalid() {
        let mut early = claims();
        early.nbf = Some(NOW + LEEWAY + 1);
        let token = sign(&early, SECRET, None);
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn nbf_in_future_within_leeway_is_accepted() {
        let mut early = claims();
        early.nbf = Some(NOW + LEEWAY);
        let token = sign(&early, SECRET, None);
        assert_eq!(check(&token), Ok(early));
    }

    #[test]
    fn iat_in_future_is_invalid() {
        let mut early = claims();
        early.iat = NOW + LEEWAY + 1;
        let token = sign(&early, SECRET, None);
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn wrong_audience_is_invalid() {
        let mut other = claims();
        other.aud = "another-app".to_owned();
        let token = sign(&other, SECRET, None);
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn audience_array_containing_audience_is_accepted() {
        let token = forge_with_payload(
            r#"{"iss":"wxauth","aud":["other","miniapp"],"sub":"42","iat":1700000000,"exp":1700003600,"nickname":"alice","scopes":["profile","phone"]}"#,
        );
        assert_eq!(check(&token), Ok(claims()));
    }

    /// One check of the signature serves every mini-program: the token's audience picks the
    /// app, the first accepted one it carries.
    #[test]
    fn the_first_accepted_audience_the_token_carries_is_its_own() {
        let mut shop = claims();
        shop.aud = "shop".to_owned();
        let token = sign(&shop, SECRET, None);
        let expect = Expect { audiences: &[AUDIENCE, "shop", "staff"], ..expect_at(NOW) };
        assert_eq!(verify(&token, &current_only(), &expect), Ok(shop));
        let both = forge_with_payload(
            r#"{"iss":"wxauth","aud":["staff","shop"],"sub":"42","iat":1700000000,"exp":1700003600,"scopes":[]}"#,
        );
        let claims = verify(&both, &current_only(), &expect).unwrap();
        assert_eq!(claims.aud, "shop");
        let none = Expect { audiences: &[], ..expect_at(NOW) };
        assert_eq!(verify(&token, &current_only(), &none), Err(JwtError::Invalid));
    }

    #[test]
    fn audience_array_without_audience_is_invalid() {
        let token = forge_with_payload(
            r#"{"iss":"wxauth","aud":["other"],"sub":"42","iat":1700000000,"exp":1700003600,"nickname":"alice","scopes":[]}"#,
        );
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn wrong_issuer_is_invalid() {
        let mut other = claims();
        other.iss = "someone-else".to_owned();
        let token = sign(&other, SECRET, None);
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn missing_issuer_is_invalid() {
        let token = forge_with_payload(
            r#"{"aud":"miniapp","sub":"42","iat":1700000000,"exp":1700003600,"nickname":"alice","scopes":[]}"#,
        );
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn previous_secret_by_kid_verifies_until_removed() {
        let previous_kid = key_id(PREVIOUS_SECRET);
        let current_kid = key_id(SECRET);
        let token = sign(&claims(), PREVIOUS_SECRET, Some(&previous_kid));

        let both = [(current_kid.as_str(), SECRET), (previous_kid.as_str(), PREVIOUS_SECRET)];
        assert_eq!(verify(&token, &both, &expect_at(NOW)), Ok(claims()));

        let current = [(current_kid.as_str(), SECRET)];
        assert_eq!(verify(&token, &current, &expect_at(NOW)), Err(JwtError::Invalid));
    }

    #[test]
    fn kid_selects_only_its_own_secret() {
        // Signed with the current secret but claiming the previous kid: the
        // kid decides the secret, so this must fail.
        let current_kid = key_id(SECRET);
        let previous_kid = key_id(PREVIOUS_SECRET);
        let token = sign(&claims(), SECRET, Some(&previous_kid));
        let both = [(current_kid.as_str(), SECRET), (previous_kid.as_str(), PREVIOUS_SECRET)];
        assert_eq!(verify(&token, &both, &expect_at(NOW)), Err(JwtError::Invalid));
    }

    #[test]
    fn unknown_kid_is_invalid_even_when_signed_with_current_secret() {
        // An unknown kid is refused rather than tried against the current
        // secret, so a kid always names exactly one secret.
        let token = sign(&claims(), SECRET, Some("retired"));
        assert_eq!(check(&token), Err(JwtError::Invalid));
        let same_token_without_kid = sign(&claims(), SECRET, None);
        assert_eq!(check(&same_token_without_kid), Ok(claims()));
    }

    #[test]
    fn non_string_kid_is_invalid() {
        let token = forge_with_header(r#"{"alg":"HS256","typ":"JWT","kid":null}"#);
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn token_without_kid_uses_current_secret() {
        let current_kid = key_id(SECRET);
        let previous_kid = key_id(PREVIOUS_SECRET);
        let both = [(current_kid.as_str(), SECRET), (previous_kid.as_str(), PREVIOUS_SECRET)];

        let current_token = sign(&claims(), SECRET, None);
        assert_eq!(verify(&current_token, &both, &expect_at(NOW)), Ok(claims()));

        let previous_token = sign(&claims(), PREVIOUS_SECRET, None);
        assert_eq!(verify(&previous_token, &both, &expect_at(NOW)), Err(JwtError::Invalid));
    }

    #[test]
    fn empty_secret_list_is_invalid() {
        let token = sign(&claims(), SECRET, None);
        assert_eq!(verify(&token, &[], &expect_at(NOW)), Err(JwtError::Invalid));
    }

    #[test]
    fn wrong_secret_is_invalid() {
        let token = sign(&claims(), b"some-other-secret", None);
        assert_eq!(check(&token), Err(JwtError::Invalid));
    }

    #[test]
    fn oversized_token_is_invalid() {
        let mut large = claims();
        large.nickname = Some("x".repeat(MAX_TOKEN_LENGTH));
        let token = sign(&large, SECRET, None);
        assert!(token.len() > MAX_TOKEN_LENGTH);
        assert_eq!(check(&token), Err(JwtError::Invalid));

        // Just under the limit is still fine.
        let mut fitting = claims();
        fitting.nickname = Some("x".repeat(5000));
        let token = sign(&fitting, SECRET, None);
        assert!(token.len() <= MAX_TOKEN_LENGTH);
        assert_eq!(check(&token), Ok(fitting));
    }

    #[test]
    fn key_id_is_truncated_sha256_hex() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223...
        assert_eq!(key_id(b"abc"), "ba7816bf8f01cfea");
        assert_eq!(key_id(b"abc"), key_id(b"abc"));
        assert_ne!(key_id(SECRET), key_id(PREVIOUS_SECRET));
    }

    /// The expected token was computed independently of this code, with
    /// Python's standard library mirroring PyJWT (compact JSON, header
    /// `{"alg":"HS256","typ":"JWT"}`, the key's UTF-8 bytes as the HMAC key):
    ///
    /// ```text
    /// python3 -c 'import hmac,hashlib,base64,json
    /// b=lambda d: base64.urlsafe_b64encode(d).rstrip(b"=")
    /// h=b(json.dumps({"alg":"HS256","typ":"JWT"},separators=(",",":")).encode())
    /// p=b(json.dumps({"iss":"wxauth","aud":"miniapp","sub":"42","iat":1700000000,
    ///   "exp":1700003600,"nickname":"alice","scopes":["profile","phone"]},
    ///   separators=(",",":")).encode())
    /// s=b(hmac.new(b"pyjwt-compatible-key",h+b"."+p,hashlib.sha256).digest())
    /// print((h+b"."+p+b"."+s).decode())'
    /// ```
    #[test]
    fn matches_independently_computed_pyjwt_token() {
        let expected = concat!(
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.",
            "eyJpc3MiOiJ3eGF1dGgiLCJhdWQiOiJtaW5pYXBwIiwic3ViIjoiNDIiLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6",
            "MTcwMDAwMzYwMCwibmlja25hbWUiOiJhbGljZSIsInNjb3BlcyI6WyJwcm9maWxlIiwicGhvbmUiXX0.",
            "0q84G5UrHyO8l1u5dTGE_H2HuAd6PYbWjm3c3j6Z7hQ",
        );
        let token = sign(&claims(), b"pyjwt-compatible-key", None);
        assert_eq!(token, expected);
        let secrets: [(&str, &[u8]); 1] = [("any", b"pyjwt-compatible-key")];
        assert_eq!(verify(expected, &secrets, &expect_at(NOW)), Ok(claims()));
    }
}
