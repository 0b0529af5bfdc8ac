//! The body of the `wxcrypt_decrypt` fuzz target, shared with the corpus replay in
//! `src/fuzz_replay.rs`. `wxcrypt::decrypt` and `decrypt_phone` must never panic, must agree with
//! each other, and must accept only ciphertext that `wxcrypt::encrypt` gives back exactly.
//!
//! The first input byte picks a mode (its value modulo 4), and the rest is:
//! - 0: `session_key NUL iv NUL encrypted_data NUL appid`, all text, as the store and a client
//!   give them;
//! - 1: ciphertext bytes, base64-encoded here and decrypted under a fixed key and iv;
//! - 2: plaintext, encrypted here with `wxcrypt::encrypt`, so the JSON and watermark checks are
//!   reached;
//! - 3: plaintext blocks encrypted here without padding, so the input writes the pad bytes itself.

use aes::cipher::{BlockModeEncrypt, KeyIvInit, block_padding::NoPadding};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};

use crate::wxcrypt::{self, DecryptError};

const KEY: [u8; 16] = *b"0123456789abcdef";
const IV: [u8; 16] = *b"initialvector-16";
const APPID: &str = "wx1234567890abcdef";

pub(crate) fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = STANDARD.encode(KEY);
    let iv = STANDARD.encode(IV);
    match mode % 4 {
        0 => {
            let mut pieces = rest.splitn(4, |&byte| byte == 0);
            let mut next = || String::from_utf8_lossy(pieces.next().unwrap_or_default());
            let (key, iv, encrypted_data, appid) = (next(), next(), next(), next());
            check(&key, &iv, &encrypted_data, &appid);
        }
        1 => check(&key, &iv, &STANDARD.encode(rest), APPID),
        2 => {
            let encrypted_data = wxcrypt::encrypt(&key, &IV, rest).unwrap();
            assert_eq!(wxcrypt::decrypt(&key, &iv, &encrypted_data), Ok(rest.to_vec()));
            check(&key, &iv, &encrypted_data, APPID);
        }
        _ => {
            let mut blocks = rest.to_vec();
            blocks.resize(rest.len().div_ceil(16).max(1) * 16, 0);
            let length = blocks.len();
            let ciphertext = cbc::Encryptor::<aes::Aes128>::new(&KEY.into(), &IV.into())
                .encrypt_padded::<NoPadding>(&mut blocks.clone(), length)
                .unwrap()
                .to_vec();
            let pad = blocks[length - 1];
            let padded = (1..=16).contains(&pad)
                && blocks[length - usize::from(pad)..].iter().all(|&byte| byte == pad);
            let plaintext = wxcrypt::decrypt(&key, &iv, &STANDARD.encode(&ciphertext));
            match plaintext {
                Ok(plaintext) => {
                    assert!(padded, "accepted bad padding {:?}", &blocks[length - 16..]);
                    assert_eq!(plaintext, blocks[..length - usize::from(pad)]);
                }
                Err(error) => {
                    assert!(!padded, "refused good padding: {error:?}");
                    assert_eq!(error, DecryptError::BadPadding);
                }
            }
            check(&key, &iv, &STANDARD.encode(&ciphertext), APPID);
        }
    }
}

fn check(key: &str, iv: &str, encrypted_data: &str, appid: &str) {
    let plaintext = wxcrypt::decrypt(key, iv, encrypted_data);
    let phone = wxcrypt::decrypt_phone(key, iv, encrypted_data, appid);
    match (&plaintext, &phone) {
        (Err(error), Err(phone_error)) => assert_eq!(error, phone_error),
        (Err(error), Ok(_)) => panic!("decrypt refused ({error:?}) what decrypt_phone accepted"),
        (Ok(_), Err(error)) => assert!(
            matches!(
                error,
                DecryptError::BadJson
                    | DecryptError::NotPhoneData
                    | DecryptError::WatermarkMismatch
            ),
            "{error:?} after decrypting"
        ),
        (Ok(_), Ok(phone)) => assert_eq!(phone.watermark_appid, appid),
    }
    // CBC with strict PKCS#7 is one-to-one: encrypting the plaintext again gives back exactly the
    // ciphertext that was accepted.
    if let Ok(plaintext) = plaintext {
        let decode = |text: &str| STANDARD_PAD_INDIFFERENT.decode(text.replace(' ', "+"));
        let iv: [u8; 16] = decode(iv).expect("an accepted iv is base64").try_into().unwrap();
        let again = wxcrypt::encrypt(key, &iv, &plaintext).expect("an accepted key encrypts");
        assert_eq!(STANDARD.decode(again).unwrap(), decode(encrypted_data).unwrap());
    }
}
