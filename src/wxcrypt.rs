//! WeChat's legacy encrypted user data: the AES-128-CBC `encryptedData` that
//! `getPhoneNumber` hands the mini-program, keyed by the user's `session_key`,
//! and the watermark inside it that ties the data to our appid. This module
//! owns the base64 handling, the cipher, strict PKCS#7 unpadding and the phone
//! payload's shape. It does no I/O: the session key, iv, ciphertext and appid
//! are passed in, and the only outside resource is the OS random number
//! generator behind `random_key`.

use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit, block_padding::NoPadding};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use serde::Deserialize;

type Aes128CbcEncryptor = cbc::Encryptor<aes::Aes128>;
type Aes128CbcDecryptor = cbc::Decryptor<aes::Aes128>;

/// AES works on 16-byte blocks, and AES-128 keys and CBC ivs are one block.
const BLOCK_LENGTH: usize = 16;

/// The phone number WeChat vouches for, with the watermark that proves which
/// app it was issued to and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PhoneInfo {
    /// As WeChat shows it; numbers outside mainland China carry their
    /// country code.
    pub(crate) phone_number: String,
    /// Without the country code.
    pub(crate) pure_phone_number: String,
    pub(crate) country_code: String,
    pub(crate) watermark_appid: String,
    /// Unix seconds at which WeChat produced the data.
    pub(crate) watermark_timestamp: i64,
}

/// Why encrypted data could not be used. The variants carry nothing, so no
/// key, iv or plaintext can leak through an error message or a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecryptError {
    /// The session key is not base64 of exactly 16 bytes. The session key
    /// comes from our own store, so this points at the server, not the client.
    BadKey,
    /// The iv is not base64 of exactly 16 bytes.
    BadIv,
    /// The encrypted data is not base64.
    BadBase64,
    /// The ciphertext is empty, not whole blocks, or decrypts to malformed
    /// PKCS#7 padding; in practice usually a stale or wrong session key.
    BadPadding,
    /// The plaintext is not a UTF-8 JSON object with a watermark naming an appid.
    BadJson,
    /// The data is genuine and for this app, but not the phone payload (user info, say).
    NotPhoneData,
    /// The data is genuine but was issued to a different appid.
    WatermarkMismatch,
}

impl std::fmt::Display for DecryptError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let message = match self {
            DecryptError::BadKey => "session key is not base64 of 16 bytes",
            DecryptError::BadIv => "iv is not base64 of 16 bytes",
            DecryptError::BadBase64 => "encrypted data is not valid base64",
            DecryptError::BadPadding => {
                "encrypted data does not decrypt with this session key (bad padding)"
            }
            DecryptError::BadJson => "decrypted data is not a json object with a watermark",
            DecryptError::NotPhoneData => "decrypted data for this app is not phone data",
            DecryptError::WatermarkMismatch => "watermark appid does not match this app",
        };
        formatter.write_str(message)
    }
}

impl std::error::Error for DecryptError {}

/// The phone payload as WeChat writes it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PhonePayload {
    phone_number: String,
    pure_phone_number: String,
    country_code: CountryCode,
    watermark: Watermark,
}

#[derive(Deserialize)]
struct Watermark {
    appid: String,
    timestamp: i64,
}

/// What is read first of any decrypted data, whatever else it holds: the app it was issued to.
#[derive(Deserialize)]
struct Marked {
    watermark: MarkedFor,
}

#[derive(Deserialize)]
struct MarkedFor {
    appid: String,
}

/// WeChat documents `countryCode` as a string, but a number has been seen in
/// the wild; both are accepted and kept as text.
#[derive(Deserialize)]
#[serde(untagged)]
enum CountryCode {
    Text(String),
    Number(u64),
}

impl CountryCode {
    fn into_text(self) -> String {
        match self {
            CountryCode::Text(text) => text,
            CountryCode::Number(number) => number.to_string(),
        }
    }
}

/// Decrypts WeChat's `encryptedData` from `getPhoneNumber` and checks that its
/// watermark names `appid`.
///
/// The session key and iv must each be base64 of 16 bytes; the data is
/// AES-128-CBC with strict PKCS#7 padding and must hold a UTF-8 JSON object
/// with `phoneNumber`, `purePhoneNumber`, `countryCode` (string or number) and
/// `watermark {appid, timestamp}`. The watermark's appid is the first thing
/// read once the data decrypts to a JSON object: data issued to another app is
/// `WatermarkMismatch` whatever its shape (the user info of WeChat's own
/// sample, say), and data for this app that is not the phone payload is
/// `NotPhoneData`. `WatermarkMismatch` always means genuine data for another
/// app: the data decrypted with the session key.
pub(crate) fn decrypt_phone(
    session_key: &str,
    iv: &str,
    encrypted_data: &str,
    appid: &str,
) -> Result<PhoneInfo, DecryptError> {
    let plaintext = decrypt(session_key, iv, encrypted_data)?;
    let text = std::str::from_utf8(&plaintext).map_err(|_| DecryptError::BadJson)?;
    // Serde would also fill a struct from a JSON array, so the object form is
    // checked explicitly.
    if !text.trim_start().starts_with('{') {
        return Err(DecryptError::BadJson);
    }
    let marked: Marked = serde_json::from_str(text).map_err(|_| DecryptError::BadJson)?;
    if marked.watermark.appid != appid {
        return Err(DecryptError::WatermarkMismatch);
    }
    let payload: PhonePayload =
        serde_json::from_str(text).map_err(|_| DecryptError::NotPhoneData)?;
    Ok(PhoneInfo {
        phone_number: payload.phone_number,
        pure_phone_number: payload.pure_phone_number,
        country_code: payload.country_code.into_text(),
        watermark_appid: payload.watermark.appid,
        watermark_timestamp: payload.watermark.timestamp,
    })
}

/// Decrypts WeChat's encrypted data to the raw plaintext bytes, with the same
/// key, iv and padding rules as `decrypt_phone` but no JSON.
pub(crate) fn decrypt(
    session_key: &str,
    iv: &str,
    encrypted_data: &str,
) -> Result<Vec<u8>, DecryptError> {
    let key = decode_block(session_key).ok_or(DecryptError::BadKey)?;
    let iv = decode_block(iv).ok_or(DecryptError::BadIv)?;
    let mut data = decode_base64(encrypted_data).map_err(|_| DecryptError::BadBase64)?;
    if data.is_empty() || !data.len().is_multiple_of(BLOCK_LENGTH) {
        return Err(DecryptError::BadPadding);
    }
    // Padding is removed by hand below, because the check must be strict and
    // must not depend on how lenient a library's PKCS#7 happens to be.
    Aes128CbcDecryptor::new(&key.into(), &iv.into())
        .decrypt_padded::<NoPadding>(&mut data)
        .map_err(|_| DecryptError::BadPadding)?;
    let length = unpadded_length(&data)?;
    data.truncate(length);
    Ok(data)
}

/// Encrypts `plaintext` the way WeChat does (AES-128-CBC, PKCS#7) and returns
/// standard padded base64. Used by the fake WeChat and by tests. Fails with
/// `BadKey` when `session_key` is not base64 of 16 bytes.
pub(crate) fn encrypt(
    session_key: &str,
    iv: &[u8; 16],
    plaintext: &[u8],
) -> Result<String, DecryptError> {
    let key = decode_block(session_key).ok_or(DecryptError::BadKey)?;
    // PKCS#7 always pads, with a whole block when the length is already a
    // multiple of the block size, so the last byte is never ambiguous.
    let pad_length = BLOCK_LENGTH - plaintext.len() % BLOCK_LENGTH;
    let pad_byte = u8::try_from(pad_length).expect("a pad length is at most 16");
    let mut buffer = plaintext.to_vec();
    buffer.resize(plaintext.len() + pad_length, pad_byte);
    let message_length = buffer.len();
    let ciphertext = Aes128CbcEncryptor::new(&key.into(), &(*iv).into())
        .encrypt_padded::<NoPadding>(&mut buffer, message_length)
        .expect("a padded buffer is whole blocks");
    Ok(STANDARD.encode(ciphertext))
}

/// Standard base64 of 16 random bytes from the OS: a fresh session key or iv,
/// shaped like the ones WeChat issues.
pub(crate) fn random_key() -> String {
    let mut bytes = [0u8; BLOCK_LENGTH];
    // Without OS randomness no key this server hands out could be trusted, so
    // failing loudly is the only safe outcome.
    getrandom::fill(&mut bytes).expect("the operating system random number generator failed");
    STANDARD.encode(bytes)
}

/// Decodes standard base64, padded or not. Form and query decoding turn `+`
/// into a space, and `+` is a legitimate base64 character, so spaces are
/// restored to `+` first.
fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    STANDARD_PAD_INDIFFERENT.decode(text.replace(' ', "+"))
}

/// Decodes base64 that must hold exactly one 16-byte block (a key or an iv).
fn decode_block(text: &str) -> Option<[u8; BLOCK_LENGTH]> {
    decode_base64(text).ok()?.try_into().ok()
}

/// The length of `plaintext` without its PKCS#7 padding. The pad value must be
/// 1..=16 and every pad byte must equal it; anything else is refused rather
/// than guessed at.
fn unpadded_length(plaintext: &[u8]) -> Result<usize, DecryptError> {
    let pad_byte = *plaintext.last().ok_or(DecryptError::BadPadding)?;
    let pad_length = usize::from(pad_byte);
    if !(1..=BLOCK_LENGTH).contains(&pad_length) || pad_length > plaintext.len() {
        return Err(DecryptError::BadPadding);
    }
    let content_length = plaintext.len() - pad_length;
    if plaintext[content_length..].iter().any(|&byte| byte != pad_byte) {
        return Err(DecryptError::BadPadding);
    }
    Ok(content_length)
}

#[cfg(test)]
mod tests {
    use super::*;

    const APPID: &str = "wx1234567890abcdef";
    const PAYLOAD: &str = r#"{"phoneNumber":"13800138000","purePhoneNumber":"13800138000","countryCode":"86","watermark":{"timestamp":1700000000,"appid":"wx1234567890abcdef"}}"#;
    const KEY_BYTES: [u8; 16] = *b"0123456789abcdef";
    const OTHER_KEY_BYTES: [u8; 16] = *b"fedcba9876543210";
    const IV: [u8; 16] = *b"initialvector-16";

    fn key() -> String {
        STANDARD.encode(KEY_BYTES)
    }

    fn iv_text() -> String {
        STANDARD.encode(IV)
    }

    fn expected_phone() -> PhoneInfo {
        PhoneInfo {
            phone_number: "13800138000".to_owned(),
            pure_phone_number: "13800138000".to_owned(),
            country_code: "86".to_owned(),
            watermark_appid: APPID.to_owned(),
            watermark_timestamp: 1_700_000_000,
        }
    }

    /// Encrypts whole blocks with no padding at all, so tests control every
    /// plaintext byte, including the ones that should be padding.
    fn encrypt_raw(key: [u8; 16], iv: [u8; 16], plaintext: &[u8]) -> String {
        assert!(plaintext.len().is_multiple_of(BLOCK_LENGTH));
        let mut buffer = plaintext.to_vec();
        let length = buffer.len();
        let ciphertext = Aes128CbcEncryptor::new(&key.into(), &iv.into())
            .encrypt_padded::<NoPadding>(&mut buffer, length)
            .unwrap();
        STANDARD.encode(ciphertext)
    }

    /// A 32-byte plaintext ending in the given bytes.
    fn blocks_ending_with(tail: &[u8]) -> Vec<u8> {
        let mut plaintext = vec![b'x'; 32 - tail.len()];
        plaintext.extend_from_slice(tail);
        plaintext
    }

    fn decrypt_raw_tail(tail: &[u8]) -> Result<Vec<u8>, DecryptError> {
        let ciphertext = encrypt_raw(KEY_BYTES, IV, &blocks_ending_with(tail));
        decrypt(&key(), &iv_text(), &ciphertext)
    }

    #[test]
    fn round_trip_phone() {
        let ciphertext = encrypt(&key(), &IV, PAYLOAD.as_bytes()).unwrap();
        let phone = decrypt_phone(&key(), &iv_text(), &ciphertext, APPID);
        assert_eq!(phone, Ok(expected_phone()));
    }

    #[test]
    fn round_trip_raw_bytes_of_every_length() {
        for length in 0..=48 {
            let plaintext: Vec<u8> = (0..length).map(|index| index as u8).collect();
            let ciphertext = encrypt(&key(), &IV, &plaintext).unwrap();
            let expected_blocks = length / BLOCK_LENGTH + 1;
            assert_eq!(STANDARD.decode(&ciphertext).unwrap().len(), expected_blocks * BLOCK_LENGTH);
            assert_eq!(decrypt(&key(), &iv_text(), &ciphertext), Ok(plaintext));
        }
    }

    #[test]
    fn encrypt_matches_independent_aes_cbc_vector() {
        // NIST SP 800-38A F.2.1 (CBC-AES128.Encrypt), first block, followed by
        // the PKCS#7 block that plaintext of exactly 16 bytes receives.
        let key = STANDARD.encode([
            0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf,
            0x4f, 0x3c,
        ]);
        let iv: [u8; 16] = std::array::from_fn(|index| index as u8);
        let plaintext = [
            0x6b, 0xc1, 0xbe, 0xe2, 0x2e, 0x40, 0x9f, 0x96, 0xe9, 0x3d, 0x7e, 0x11, 0x73, 0x93,
            0x17, 0x2a,
        ];
        let ciphertext = STANDARD.decode(encrypt(&key, &iv, &plaintext).unwrap()).unwrap();
        assert_eq!(
            ciphertext[..16],
            [
                0x76, 0x49, 0xab, 0xac, 0x81, 0x19, 0xb2, 0x46, 0xce, 0xe9, 0x8e, 0x9b, 0x12, 0xe9,
                0x19, 0x7d,
            ]
        );
        assert_eq!(ciphertext.len(), 32);
    }

    #[test]
    fn country_code_as_number() {
        let payload = PAYLOAD.replace(r#""countryCode":"86""#, r#""countryCode":86"#);
        assert_ne!(payload, PAYLOAD);
        let ciphertext = encrypt(&key(), &IV, payload.as_bytes()).unwrap();
        let phone = decrypt_phone(&key(), &iv_text(), &ciphertext, APPID);
        assert_eq!(phone, Ok(expected_phone()));
    }

    #[test]
    fn wrong_key_is_never_ok() {
        let ciphertext = encrypt(&key(), &IV, PAYLOAD.as_bytes()).unwrap();
        let other_key = STANDARD.encode(OTHER_KEY_BYTES);
        let result = decrypt_phone(&other_key, &iv_text(), &ciphertext, APPID);
        assert!(
            matches!(result, Err(DecryptError::BadPadding) | Err(DecryptError::BadJson)),
            "{result:?}"
        );
    }

    #[test]
    fn corrupted_last_pad_byte_is_bad_padding() {
        let ciphertext =
            STANDARD.decode(encrypt(&key(), &IV, PAYLOAD.as_bytes()).unwrap()).unwrap();
        let pad = BLOCK_LENGTH - PAYLOAD.len() % BLOCK_LENGTH;
        // In CBC, flipping a bit in one ciphertext block flips the same bit of
        // the next plaintext block; this turns the last pad byte into 0x20.
        let mut corrupted = ciphertext.clone();
        let position = corrupted.len() - BLOCK_LENGTH - 1;
        corrupted[position] ^= (pad as u8) ^ 0x20;
        let result = decrypt(&key(), &iv_text(), &STANDARD.encode(&corrupted));
        assert_eq!(result, Err(DecryptError::BadPadding));
    }

    #[test]
    fn wrong_earlier_pad_byte_is_bad_padding() {
        // The last byte says 4, but one of the other three pad bytes is 3.
        for tail in [[3, 4, 4, 4], [4, 3, 4, 4], [4, 4, 3, 4]] {
            assert_eq!(decrypt_raw_tail(&tail), Err(DecryptError::BadPadding), "{tail:?}");
        }
        // The same bytes with a correct pad decrypt fine.
        let plaintext = decrypt_raw_tail(&[4, 4, 4, 4]).unwrap();
        assert_eq!(plaintext, vec![b'x'; 28]);
    }

    #[test]
    fn wrong_first_byte_of_full_pad_block_is_bad_padding() {
        let mut tail = [16u8; 16];
        tail[0] = 15;
        assert_eq!(decrypt_raw_tail(&tail), Err(DecryptError::BadPadding));
        assert_eq!(decrypt_raw_tail(&[16; 16]), Ok(vec![b'x'; 16]));
    }

    #[test]
    fn pad_zero_is_bad_padding() {
        assert_eq!(decrypt_raw_tail(&[0]), Err(DecryptError::BadPadding));
    }

    #[test]
    fn pad_seventeen_is_bad_padding() {
        assert_eq!(decrypt_raw_tail(&[17; 17]), Err(DecryptError::BadPadding));
    }

    #[test]
    fn key_of_24_bytes_is_bad_key() {
        let long_key = STANDARD.encode([7u8; 24]);
        let ciphertext = encrypt(&key(), &IV, PAYLOAD.as_bytes()).unwrap();
        assert_eq!(decrypt(&long_key, &iv_text(), &ciphertext), Err(DecryptError::BadKey));
        assert_eq!(encrypt(&long_key, &IV, PAYLOAD.as_bytes()), Err(DecryptError::BadKey));
    }

    #[test]
    fn key_that_is_not_base64_is_bad_key() {
        let ciphertext = encrypt(&key(), &IV, PAYLOAD.as_bytes()).unwrap();
        assert_eq!(decrypt("not*base64", &iv_text(), &ciphertext), Err(DecryptError::BadKey));
        assert_eq!(encrypt("not*base64", &IV, b"data"), Err(DecryptError::BadKey));
    }

    #[test]
    fn iv_of_8_bytes_is_bad_iv() {
        let short_iv = STANDARD.encode([1u8; 8]);
        let ciphertext = encrypt(&key(), &IV, PAYLOAD.as_bytes()).unwrap();
        assert_eq!(decrypt(&key(), &short_iv, &ciphertext), Err(DecryptError::BadIv));
    }

    #[test]
    fn bad_base64_is_bad_base64() {
        for data in ["not base64 at all!", "AAAA*AAA", "A"] {
            assert_eq!(decrypt(&key(), &iv_text(), data), Err(DecryptError::BadBase64), "{data}");
        }
    }

    #[test]
    fn plus_arriving_as_space_still_decrypts() {
        // A key whose base64 contains '+', and a payload variant whose
        // ciphertext does too.
        let plus_key_bytes = [0xfb; 16];
        let plus_key = STANDARD.encode(plus_key_bytes);
        assert!(plus_key.contains('+'));
        let plus_iv = [0xf8; 16];
        let plus_iv_text = STANDARD.encode(plus_iv);
        assert!(plus_iv_text.contains('+'));
        let (payload, ciphertext) = (0..)
            .map(|index| {
                let payload = PAYLOAD.replace("1700000000", &(1_700_000_000 + index).to_string());
                let ciphertext = encrypt(&plus_key, &plus_iv, payload.as_bytes()).unwrap();
                (payload, ciphertext)
            })
            .find(|(_, ciphertext)| ciphertext.contains('+'))
            .unwrap();

        let spaced = |text: &str| text.replace('+', " ");
        let plaintext = decrypt(&spaced(&plus_key), &spaced(&plus_iv_text), &spaced(&ciphertext));
        assert_eq!(plaintext, Ok(payload.into_bytes()));
    }

    #[test]
    fn missing_base64_padding_is_tolerated() {
        let ciphertext = encrypt(&key(), &IV, PAYLOAD.as_bytes()).unwrap();
        let unpadded = |text: &str| text.trim_end_matches('=').to_owned();
        assert_ne!(unpadded(&key()), key());
        let phone =
            decrypt_phone(&unpadded(&key()), &unpadded(&iv_text()), &unpadded(&ciphertext), APPID);
        assert_eq!(phone, Ok(expected_phone()));
    }

    #[test]
    fn wrong_watermark_appid_is_watermark_mismatch() {
        let ciphertext = encrypt(&key(), &IV, PAYLOAD.as_bytes()).unwrap();
        let result = decrypt_phone(&key(), &iv_text(), &ciphertext, "wx0000000000000000");
        assert_eq!(result, Err(DecryptError::WatermarkMismatch));
    }

    #[test]
    fn non_utf8_plaintext_is_bad_json() {
        let ciphertext = encrypt(&key(), &IV, &[0xff, 0xfe, b'{', b'}']).unwrap();
        let result = decrypt_phone(&key(), &iv_text(), &ciphertext, APPID);
        assert_eq!(result, Err(DecryptError::BadJson));
    }

    #[test]
    fn non_json_plaintext_is_bad_json() {
        let ciphertext = encrypt(&key(), &IV, b"phone: 13800138000").unwrap();
        let result = decrypt_phone(&key(), &iv_text(), &ciphertext, APPID);
        assert_eq!(result, Err(DecryptError::BadJson));
    }

    #[test]
    fn json_array_plaintext_is_bad_json() {
        let array =
            r#"["13800138000","13800138000","86",{"appid":"wx1234567890abcdef","timestamp":1}]"#;
        let ciphertext = encrypt(&key(), &IV, array.as_bytes()).unwrap();
        let result = decrypt_phone(&key(), &iv_text(), &ciphertext, APPID);
        assert_eq!(result, Err(DecryptError::BadJson));
    }

    #[test]
    fn missing_phone_number_is_not_phone_data_or_another_apps() {
        let payload = PAYLOAD.replace(r#""phoneNumber":"13800138000","#, "");
        assert_ne!(payload, PAYLOAD);
        let ciphertext = encrypt(&key(), &IV, payload.as_bytes()).unwrap();
        let result = decrypt_phone(&key(), &iv_text(), &ciphertext, APPID);
        assert_eq!(result, Err(DecryptError::NotPhoneData));
        let result = decrypt_phone(&key(), &iv_text(), &ciphertext, "wx0000000000000000");
        assert_eq!(result, Err(DecryptError::WatermarkMismatch));
    }

    #[test]
    fn missing_watermark_is_bad_json() {
        let payload =
            r#"{"phoneNumber":"13800138000","purePhoneNumber":"13800138000","countryCode":"86"}"#;
        let ciphertext = encrypt(&key(), &IV, payload.as_bytes()).unwrap();
        let result = decrypt_phone(&key(), &iv_text(), &ciphertext, APPID);
        assert_eq!(result, Err(DecryptError::BadJson));
    }

    #[test]
    fn empty_ciphertext_is_bad_padding() {
        assert_eq!(decrypt(&key(), &iv_text(), ""), Err(DecryptError::BadPadding));
    }

    #[test]
    fn ciphertext_not_whole_blocks_is_bad_padding() {
        let ciphertext =
            STANDARD.decode(encrypt(&key(), &IV, PAYLOAD.as_bytes()).unwrap()).unwrap();
        for length in [1, 15, 17, ciphertext.len() - 1] {
            let truncated = STANDARD.encode(&ciphertext[..length]);
            assert_eq!(
                decrypt(&key(), &iv_text(), &truncated),
                Err(DecryptError::BadPadding),
                "{length}"
            );
        }
    }

    #[test]
    fn random_keys_are_16_bytes_and_differ() {
        let first = random_key();
        let second = random_key();
        assert_eq!(STANDARD.decode(&first).unwrap().len(), 16);
        assert_eq!(first.len(), 24);
        assert_ne!(first, second);
        // A random key works as a session key.
        let ciphertext = encrypt(&first, &IV, b"hello").unwrap();
        assert_eq!(decrypt(&first, &iv_text(), &ciphertext), Ok(b"hello".to_vec()));
    }

    #[test]
    fn display_is_lowercase_without_period() {
        let all = [
            DecryptError::BadKey,
            DecryptError::BadIv,
            DecryptError::BadBase64,
            DecryptError::BadPadding,
            DecryptError::BadJson,
            DecryptError::NotPhoneData,
            DecryptError::WatermarkMismatch,
        ];
        for error in all {
            let message = error.to_string();
            assert!(!message.is_empty());
            assert_eq!(message, message.to_lowercase());
            assert!(!message.ends_with('.'), "{message}");
        }
    }

    /// WeChat's published decryptData sample (the demo shipped with the
    /// "open data decryption" documentation), as reproduced verbatim in many
    /// SDKs' own test suites.
    #[test]
    fn official_wechat_sample_decrypts() {
        let session_key = "tiihtNczf5v6AKRyjwEUhQ==";
        let iv = "r7BXXKkLb8qrSNn05n0qiA==";
        let encrypted_data = concat!(
            "CiyLU1Aw2KjvrjMdj8YKliAjtP4gsMZMQmRzooG2xrDcvSnxIMXFufNstNGTyaGS",
            "9uT5geRa0W4oTOb1WT7fJlAC+oNPdbB+3hVbJSRgv+4lGOETKUQz6OYStslQ142d",
            "NCuabNPGBzlooOmB231qMM85d2/fV6ChevvXvQP8Hkue1poOFtnEtpyxVLW1zAo6",
            "/1Xx1COxFvrc2d7UL/lmHInNlxuacJXwu0fjpXfz/YqYzBIBzD6WUfTIF9GRHpOn",
            "/Hz7saL8xz+W//FRAUid1OksQaQx4CMs8LOddcQhULW4ucetDf96JcR3g0gfRK4P",
            "C7E/r7Z6xNrXd2UIeorGj5Ef7b1pJAYB6Y5anaHqZ9J6nKEBvB4DnNLIVWSgARns",
            "/8wR2SiRS7MNACwTyrGvt9ts8p12PKFdlqYTopNHR1Vf7XjfhQlVsAJdNiKdYmYV",
            "oKlaRv85IfVunYzO0IKXsyl7JCUjCpoG20f0a04COwfneQAGGwd5oa+T8yO5hzuy",
            "Db/XcxxmK01EpqOyuxINew==",
        );
        let plaintext = decrypt(session_key, iv, encrypted_data).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&plaintext).unwrap();
        assert_eq!(json["watermark"]["appid"], "wx4f4bc4dec97d474b");
        assert_eq!(json["watermark"]["timestamp"], 1_477_314_187);
        assert_eq!(json["nickName"], "Band");

        // Regression: it decrypts, so its watermark is read first, whatever its shape: another
        // app's data is a watermark mismatch (it was `BadJson`), and this app's user info is
        // not phone data.
        assert_eq!(
            decrypt_phone(session_key, iv, encrypted_data, "wx0123456789abcdef"),
            Err(DecryptError::WatermarkMismatch)
        );
        assert_eq!(
            decrypt_phone(session_key, iv, encrypted_data, "wx4f4bc4dec97d474b"),
            Err(DecryptError::NotPhoneData)
        );
    }
}
