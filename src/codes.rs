//! Recently exchanged `wx.login` codes, so that the same code arriving twice within its life (a
//! retried request, a double tap) gets the first answer again instead of WeChat's 40163.
//!
//! Codes are credentials: only their SHA-256 is kept, in memory, for five minutes (a code's life at
//! WeChat). A second request for a code whose exchange is still in flight waits for that exchange
//! rather than racing it to WeChat.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::wechat::CodeSession;

/// How long a code's answer is remembered: WeChat's codes live five minutes.
const CODE_LIFE: i64 = 300;

/// The most answers remembered: five minutes of 66 logins a second, in about 5 MiB (measured
/// under load: about 270 bytes an answer, map, queue and text together). Past it the oldest go first, even
/// unexpired: a repeat of such a code then goes to WeChat (and gets 40163) instead of memory
/// growing with traffic.
const MAX_REMEMBERED: usize = 20_000;

/// How long a repeated code waits for the first exchange before giving up.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(30);

/// A code's key: the first 128 bits of its SHA-256 (a collision among 20,000 live codes has odds
/// of about 1 in 10^30).
type Key = u128;

enum Entry {
    Pending,
    /// The answer is `length` bytes of `Memory::text` from the absolute position `at`.
    Done {
        at: u64,
        length: u32,
        expires: i64,
    },
}

/// An answer as `Memory::answered` lists it, oldest first.
struct Answered {
    key: Key,
    expires: i64,
    length: u32,
}

#[derive(Default)]
struct Memory {
    entries: HashMap<Key, Entry>,
    /// Answered codes, oldest first, for expiry and the size bound.
    answered: VecDeque<Answered>,
    /// The answers' text (`openid \n session_key [\n unionid]`; WeChat's fields never hold a line
    /// break, `wechat::text_field` refuses control characters), oldest first, in the order of
    /// `answered`: one buffer rather than an allocation per answer, which a busy server's
    /// allocator scatters among short-lived ones (measured: about twice the memory).
    text: VecDeque<u8>,
    /// Bytes ever dropped from the front of `text`: an absolute position less this is an index.
    dropped: u64,
}

impl Memory {
    fn remember(&mut self, key: Key, session: &CodeSession, expires: i64) {
        let mut text = format!("{}\n{}", session.openid, session.session_key);
        if let Some(unionid) = &session.unionid {
            text.push('\n');
            text.push_str(unionid);
        }
        let length = u32::try_from(text.len()).expect("WeChat's fields are short");
        let at = self.dropped + self.text.len() as u64;
        self.text.extend(text.as_bytes());
        self.entries.insert(key, Entry::Done { at, length, expires });
        self.answered.push_back(Answered { key, expires, length });
    }

    fn recall(&self, at: u64, length: u32) -> CodeSession {
        let start = (at - self.dropped) as usize;
        let bytes: Vec<u8> = self.text.range(start..start + length as usize).copied().collect();
        let text = String::from_utf8_lossy(&bytes);
        let mut fields = text.split('\n');
        CodeSession {
            openid: fields.next().unwrap_or_default().to_string(),
            session_key: fields.next().unwrap_or_default().to_string(),
            unionid: fields.next().map(str::to_string),
        }
    }
}

#[derive(Default)]
pub(crate) struct RecentCodes {
    memory: Mutex<Memory>,
    settled: Condvar,
}

impl RecentCodes {
    /// Answers `code` from memory, or by running `exchange` (the call to WeChat) exactly once.
    pub(crate) fn exchange(
        &self,
        code: &str,
        now: i64,
        exchange: impl FnOnce() -> Result<CodeSession, Error>,
    ) -> Result<CodeSession, Error> {
        let digest = Sha256::digest(code.as_bytes());
        let key = Key::from_be_bytes(digest[..16].try_into().expect("SHA-256 has 32 bytes"));
        let mut memory = self.lock();
        loop {
            match memory.entries.get(&key) {
                Some(Entry::Done { at, length, expires }) if *expires > now => {
                    return Ok(memory.recall(*at, *length));
                }
                Some(Entry::Pending) => {
                    let (guard, waited) = self
                        .settled
                        .wait_timeout(memory, WAIT_FOR_FIRST)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    memory = guard;
                    let still_pending = matches!(memory.entries.get(&key), Some(Entry::Pending));
                    if waited.timed_out() && still_pending {
                        return Err(Error::WechatUnavailable {
                            api: "jscode2session",
                            reason: "the first exchange of this code is still in flight".into(),
                        });
                    }
                }
                _ => break,
            }
        }
        memory.forget_old(now);
        memory.entries.insert(key, Entry::Pending);
        drop(memory);

        let result = exchange();
        let mut memory = self.lock();
        match &result {
            Ok(session) => {
                memory.remember(key, session, now + CODE_LIFE);
            }
            Err(_) => {
                memory.entries.remove(&key);
            }
        }
        drop(memory);
        self.settled.notify_all();
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Memory {
    /// Drops answers that have expired, and the oldest beyond `MAX_REMEMBERED`.
    fn forget_old(&mut self, now: i64) {
        while let Some(oldest) = self.answered.front() {
            if oldest.expires > now && self.answered.len() < MAX_REMEMBERED {
                break;
            }
            let Answered { key, length, .. } = self.answered.pop_front().expect("a front");
            let at = self.dropped;
            self.text.drain(..length as usize);
            self.dropped += u64::from(length);
            // The code may have been exchanged again since; only its own answer goes.
            let same = matches!(self.entries.get(&key), Some(Entry::Done { at: current, .. }) if *current == at);
            if same {
                self.entries.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(openid: &str) -> CodeSession {
        CodeSession { openid: openid.into(), unionid: None, session_key: "key".into() }
    }

    #[test]
    fn a_repeated_code_gets_the_first_answer_until_it_expires() {
        let codes = RecentCodes::default();
        let first = codes.exchange("code-1", 1000, || Ok(session("a"))).unwrap();
        assert_eq!(first.openid, "a");
        let again =
            codes.exchange("code-1", 1100, || panic!("must not call WeChat again")).unwrap();
        assert_eq!(again.openid, "a");
        let later = codes.exchange("code-1", 1000 + CODE_LIFE, || Err(Error::WechatCodeUsed));
        assert!(matches!(later, Err(Error::WechatCodeUsed)));
    }

    #[test]
    fn memory_is_bounded_and_expired_answers_are_forgotten() {
        let codes = RecentCodes::default();
        for index in 0..MAX_REMEMBERED + 10 {
            codes.exchange(&format!("bulk-{index}"), 1000, || Ok(session("d"))).unwrap();
        }
        assert!(codes.lock().entries.len() <= MAX_REMEMBERED);
        assert!(codes.lock().answered.len() <= MAX_REMEMBERED);
        // The newest are still answered from memory; the oldest went to WeChat again.
        let newest = format!("bulk-{}", MAX_REMEMBERED + 9);
        assert!(codes.exchange(&newest, 1001, || panic!("must be remembered")).is_ok());
        assert!(codes.exchange("bulk-0", 1001, || Err(Error::WechatCodeUsed)).is_err());
        // Once expired, everything goes.
        codes.exchange("late", 1000 + CODE_LIFE + 1, || Ok(session("e"))).unwrap();
        assert_eq!(codes.lock().entries.len(), 1);
        assert_eq!(
            codes.lock().text.len(),
            "e\nkey".len(),
            "the text of forgotten answers goes too"
        );
        let again = codes.exchange("late", 1000 + CODE_LIFE + 2, || panic!("remembered")).unwrap();
        assert_eq!((again.openid.as_str(), again.session_key.as_str()), ("e", "key"));
    }

    #[test]
    fn a_remembered_answer_keeps_every_field() {
        let codes = RecentCodes::default();
        let full = CodeSession {
            openid: "o-1".into(),
            unionid: Some("u-1".into()),
            session_key: "k/1+=".into(),
        };
        let first = full.clone();
        codes.exchange("code-4", 1000, move || Ok(first)).unwrap();
        let again = codes.exchange("code-4", 1001, || panic!("remembered")).unwrap();
        assert_eq!(
            (again.openid, again.unionid, again.session_key),
            ("o-1".into(), full.unionid, full.session_key)
        );
        codes.exchange("code-5", 1000, || Ok(session("o-2"))).unwrap();
        let again = codes.exchange("code-5", 1001, || panic!("remembered")).unwrap();
        assert_eq!(
            (again.openid.as_str(), again.unionid, again.session_key.as_str()),
            ("o-2", None, "key")
        );
    }

    #[test]
    fn a_failed_exchange_is_not_remembered() {
        let codes = RecentCodes::default();
        assert!(codes.exchange("code-2", 1000, || Err(Error::WechatCodeInvalid)).is_err());
        let retried = codes.exchange("code-2", 1001, || Ok(session("b"))).unwrap();
        assert_eq!(retried.openid, "b", "WeChat was asked again");
    }

    #[test]
    fn concurrent_requests_for_one_code_call_wechat_once() {
        let codes = std::sync::Arc::new(RecentCodes::default());
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (codes, calls) = (codes.clone(), calls.clone());
                std::thread::spawn(move || {
                    codes
                        .exchange("code-3", 1000, || {
                            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(50));
                            Ok(session("c"))
                        })
                        .map(|session| session.openid)
                })
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap().unwrap(), "c");
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
