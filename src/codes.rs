//! Recently exchanged `wx.login` codes, so that the same code arriving twice within its life (a
//! retried request, a double tap) gets the first answer again instead of WeChat's 40163.
//!
//! Codes are credentials: only a hash of each is kept, with its answer, in memory, for five
//! minutes (a code's life at WeChat; an expired answer goes when the next code is remembered). The
//! answers live in one fixed-size ring of bytes with an open-addressing index into it, both
//! allocated once: however busy the server, remembering codes costs at most 1.7 MB of answers
//! (2.2 MB with session_keys) and 128 KiB of index, and no allocation per code. Answers kept as
//! strings of their own, each allocated by one worker and freed by another minutes later, leave
//! the allocator's arenas fragmented: a map and a queue of them would hold several times the
//! answers' own bytes, and nearly double a busy server's peak memory. A second request for a code
//! whose exchange is still in flight waits for that exchange rather than racing it to WeChat.
//!
//! An answer keeps the token version its account had when the code was exchanged; whether the
//! account has logged out since (and the answer is no longer to be given) is the caller's to
//! decide, as only the database knows.
//!
//! Several instances on one MySQL database share the answers there (`shared`): a code is
//! claimed in the database before WeChat is asked (`SharedDatabase::claim_code`), so a retry that
//! lands on another instance waits for the first exchange and gets its answer, as one on this
//! instance does in memory. Only then does this file touch the database, and only through those
//! `SharedDatabase` methods; with SQLite it never does.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::store::{CodeClaim, SharedDatabase};
use crate::wechat::CodeSession;

/// How long a code's answer is remembered: WeChat's codes live five minutes.
pub(crate) const CODE_LIFE: i64 = 300;

/// The most answers remembered: five minutes of 66 logins a second. Past it the oldest go first,
/// even unexpired: a repeat of such a code then goes to WeChat (and gets 40163) instead of memory
/// growing with traffic.
const MAX_REMEMBERED: usize = 20_000;

/// Bytes of one answer of WeChat's usual size: the 27-byte header, a 28-character openid and
/// unionid; and a 24-character session_key when they are kept (`expose_session_key`).
const USUAL_ANSWER: usize = 84;
const USUAL_SESSION_KEY: usize = 24;

/// How long a repeated code waits for the first exchange before giving up.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(30);

/// A code's key: the first 128 bits of SHA-256 over the appid and the code (codes are per
/// mini-program; a collision among 20,000 live codes has odds of about 1 in 10^30).
pub(crate) type Key = [u8; 16];

pub(crate) use crate::store::CodeAnswer;

/// The key of `code` for the mini-program `appid`.
pub(crate) fn key(appid: &str, code: &str) -> Key {
    let mut hash = Sha256::new();
    // The appid's length first, so that no other (appid, code) pair hashes the same bytes.
    hash.update((appid.len() as u64).to_le_bytes());
    hash.update(appid.as_bytes());
    hash.update(code.as_bytes());
    hash.finalize()[..16].try_into().expect("SHA-256 has 32 bytes")
}

pub(crate) struct RecentCodes {
    state: Mutex<State>,
    settled: Condvar,
    /// The database several instances share, which holds every instance's answers.
    shared: Option<SharedDatabase>,
}

/// How often a request polls a shared database for the answer of a code another instance is
/// exchanging.
const POLL_SHARED: Duration = Duration::from_millis(20);

struct State {
    /// Codes being exchanged with WeChat right now (at most one per worker).
    in_flight: HashSet<Key>,
    memory: Memory,
}

impl RecentCodes {
    /// Room for `MAX_REMEMBERED` answers of the usual size, session_keys included if they are
    /// kept (`expose_session_key` at start; a reload may change it, and memory then holds fewer
    /// or more answers).
    pub(crate) fn new(keep_session_keys: bool) -> RecentCodes {
        let answer = USUAL_ANSWER + if keep_session_keys { USUAL_SESSION_KEY } else { 0 };
        let state = State {
            in_flight: HashSet::new(),
            memory: Memory::new(MAX_REMEMBERED, MAX_REMEMBERED * answer),
        };
        RecentCodes { state: Mutex::new(state), settled: Condvar::new(), shared: None }
    }

    /// Shares the answers with every instance on `database` (none: this instance alone).
    pub(crate) fn shared_through(mut self, database: Option<SharedDatabase>) -> RecentCodes {
        self.shared = database;
        self
    }

    /// The answer for the code `key`: the remembered one, or what `exchange` (the call to WeChat,
    /// which also records the session, and the token version of the openid's account as that
    /// record saw it) returns, remembered until `now + CODE_LIFE`. One code is never exchanged by
    /// two requests at once: the second waits for the first and gets its answer (or, if it
    /// failed, tries itself). The first answer and a remembered one are the same, session_key (or
    /// its absence) and token version included. The session_key is kept only if
    /// `keep_session_key` (`expose_session_key`, as the request found it).
    pub(crate) fn exchange(
        &self,
        key: Key,
        now: i64,
        keep_session_key: bool,
        exchange: impl FnOnce() -> Result<(CodeSession, i64), Error>,
    ) -> Result<CodeAnswer, Error> {
        let deadline = Instant::now() + WAIT_FOR_FIRST;
        let mut state = self.lock();
        loop {
            if let Some(answer) = state.memory.recall(&key, now) {
                return Ok(answer);
            }
            if !state.in_flight.contains(&key) {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::WechatUnavailable {
                    api: "jscode2session",
                    reason: "the first exchange of this code is still in flight".into(),
                });
            }
            state = self
                .settled
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        state.in_flight.insert(key);
        drop(state);
        // Settled however this ends, a panic included, so that no later request waits for it.
        let settle = Settle { codes: self, key };
        let exchange = || {
            exchange().map(|(session, token_version)| CodeAnswer {
                openid: session.openid,
                unionid: session.unionid,
                session_key: keep_session_key.then_some(session.session_key),
                token_version,
            })
        };
        let answer = match &self.shared {
            None => exchange(),
            Some(database) => exchange_shared(database, key, now, deadline, exchange),
        };
        if let Ok(answer) = &answer {
            self.lock().memory.remember(key, answer, now + CODE_LIFE, now);
        }
        drop(settle);
        answer
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The answer for the code `key` on a shared database: another instance's, or (once this request
/// holds the code's claim) what `exchange` returns, recorded for the others. A failed exchange
/// gives the claim up, so the next request for the code tries again.
fn exchange_shared(
    database: &SharedDatabase,
    key: Key,
    now: i64,
    deadline: Instant,
    exchange: impl FnOnce() -> Result<CodeAnswer, Error>,
) -> Result<CodeAnswer, Error> {
    let started = Instant::now();
    loop {
        // The request's `now`, moved on by the time spent waiting here.
        let at = now + started.elapsed().as_secs() as i64;
        match database.claim_code(&key, at, now + CODE_LIFE)? {
            CodeClaim::Claimed => break,
            CodeClaim::Answered(answer) => return Ok(answer),
            CodeClaim::Pending if Instant::now() >= deadline => {
                return Err(Error::WechatUnavailable {
                    api: "jscode2session",
                    reason: "the first exchange of this code is still in flight".into(),
                });
            }
            CodeClaim::Pending => std::thread::sleep(POLL_SHARED),
        }
    }
    match exchange() {
        Ok(answer) => {
            database.answer_code(&key, &answer)?;
            Ok(answer)
        }
        Err(error) => {
            let _ = database.release_code(&key);
            Err(error)
        }
    }
}

/// Takes a code out of `in_flight` when dropped, and wakes the requests waiting for it.
struct Settle<'a> {
    codes: &'a RecentCodes,
    key: Key,
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.codes.lock().in_flight.remove(&self.key);
        self.codes.settled.notify_all();
    }
}

/// Marks an empty index slot.
const EMPTY: u32 = u32::MAX;

/// A record's header: key, expiry (Unix seconds, u32), token version (u32), and the byte lengths
/// of openid, and of session_key and unionid (plus one; 0 when there is none).
const HEADER: usize = 16 + 4 + 4 + 3;

/// Answers, oldest first, as records in a ring of bytes (a record may wrap around its end), and
/// an index from key to record: linear probing over at least 1.5 slots per answer, each slot a
/// record's offset in the ring. Both are allocated once, on the first answer.
struct Memory {
    max_answers: usize,
    ring: Vec<u8>,
    /// Ring offset of the oldest record, and bytes in use from there.
    head: usize,
    used: usize,
    /// Records in the ring, including answers replaced by a newer one for the same key.
    records: usize,
    slots: Vec<u32>,
    ring_bytes: usize,
}

impl Memory {
    fn new(max_answers: usize, ring_bytes: usize) -> Memory {
        assert!(ring_bytes < EMPTY as usize && max_answers > 0);
        Memory {
            max_answers,
            ring: Vec::new(),
            head: 0,
            used: 0,
            records: 0,
            slots: Vec::new(),
            ring_bytes,
        }
    }

    fn recall(&self, key: &Key, now: i64) -> Option<CodeAnswer> {
        let at = self.slots[self.find(key)?] as usize;
        let mut header = [0u8; HEADER];
        self.read(at, &mut header);
        let expires = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
        if i64::from(expires) <= now {
            return None;
        }
        let token_version = u32::from_le_bytes(header[20..24].try_into().expect("4 bytes"));
        let (openid, session_key, unionid) = (header[24], header[25], header[26]);
        let mut at = at + HEADER;
        let mut field = |length: usize| {
            let mut bytes = vec![0u8; length];
            self.read(at, &mut bytes);
            at += length;
            // Written from a String.
            String::from_utf8(bytes).unwrap_or_default()
        };
        let openid = field(openid.into());
        let session_key = (session_key > 0).then(|| field(usize::from(session_key) - 1));
        let unionid = (unionid > 0).then(|| field(usize::from(unionid) - 1));
        Some(CodeAnswer { openid, unionid, session_key, token_version: token_version.into() })
    }

    /// Remembers `answer` for `key` until `expires`, first dropping what has expired by `now`
    /// and, oldest first, whatever the new record needs room for. An answer with a field longer
    /// than 254 bytes (WeChat's are under 40), or a token version past u32 (four billion
    /// logouts), is not remembered.
    fn remember(&mut self, key: Key, answer: &CodeAnswer, expires: i64, now: i64) {
        let (session_key, unionid) =
            (answer.session_key.as_deref().unwrap_or(""), answer.unionid.as_deref().unwrap_or(""));
        let lengths = [answer.openid.len(), session_key.len(), unionid.len()];
        let size = HEADER + lengths.iter().sum::<usize>();
        let Ok(token_version) = u32::try_from(answer.token_version) else { return };
        if lengths.iter().any(|length| *length >= 255) || size > self.ring_bytes {
            return;
        }
        if self.ring.is_empty() {
            self.ring = vec![0; self.ring_bytes];
            // A power of two at least 1.5 times the answers (probes stay short), and more than
            // the answers, so that a probe always reaches an empty slot.
            let slots = (self.max_answers * 3 / 2).max(self.max_answers + 1);
            self.slots = vec![EMPTY; slots.next_power_of_two()];
        }
        if let Some(slot) = self.find(&key) {
            // Its old record stays in the ring, unindexed, until it is the oldest.
            self.unindex(slot);
        }
        while self.records > 0
            && (self.records >= self.max_answers
                || self.used + size > self.ring_bytes
                || self.oldest_expires() <= now)
        {
            self.drop_oldest();
        }
        let mut record = Vec::with_capacity(size);
        record.extend_from_slice(&key);
        record.extend_from_slice(&u32::try_from(expires.max(0)).unwrap_or(u32::MAX).to_le_bytes());
        record.extend_from_slice(&token_version.to_le_bytes());
        let present =
            |field: &Option<String>| field.as_ref().map_or(0, |text| text.len() as u8 + 1);
        record.extend_from_slice(&[
            lengths[0] as u8,
            present(&answer.session_key),
            present(&answer.unionid),
        ]);
        record.extend_from_slice(answer.openid.as_bytes());
        record.extend_from_slice(session_key.as_bytes());
        record.extend_from_slice(unionid.as_bytes());
        let at = (self.head + self.used) % self.ring_bytes;
        self.write(at, &record);
        self.used += size;
        self.records += 1;
        let mut slot = self.home(&key);
        while self.slots[slot] != EMPTY {
            slot = (slot + 1) & (self.slots.len() - 1);
        }
        self.slots[slot] = at as u32;
    }

    fn oldest_expires(&self) -> i64 {
        let mut expires = [0u8; 4];
        self.read(self.head + 16, &mut expires);
        i64::from(u32::from_le_bytes(expires))
    }

    fn drop_oldest(&mut self) {
        let mut header = [0u8; HEADER];
        self.read(self.head, &mut header);
        let key: Key = header[..16].try_into().expect("16 bytes");
        // Only if the index still points here: a newer answer for the key may have replaced it.
        if let Some(slot) = self.find(&key).filter(|slot| self.slots[*slot] as usize == self.head) {
            self.unindex(slot);
        }
        let present = |length: u8| usize::from(length).saturating_sub(1);
        let size = HEADER + usize::from(header[24]) + present(header[25]) + present(header[26]);
        self.head = (self.head + size) % self.ring_bytes;
        self.used -= size;
        self.records -= 1;
    }

    /// The index slot where probing for `key` starts (the key is a hash already).
    fn home(&self, key: &Key) -> usize {
        let bits = u64::from_le_bytes(key[..8].try_into().expect("8 bytes"));
        (bits as usize) & (self.slots.len() - 1)
    }

    fn key_at(&self, at: u32) -> Key {
        let mut key = [0u8; 16];
        self.read(at as usize, &mut key);
        key
    }

    fn find(&self, key: &Key) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mut slot = self.home(key);
        loop {
            match self.slots[slot] {
                EMPTY => return None,
                at if self.key_at(at) == *key => return Some(slot),
                _ => slot = (slot + 1) & (self.slots.len() - 1),
            }
        }
    }

    /// Empties `slot`, moving later entries of its probe run back so that every key stays
    /// reachable from its home slot without tombstones.
    fn unindex(&mut self, mut slot: usize) {
        let mask = self.slots.len() - 1;
        let mut next = slot;
        loop {
            next = (next + 1) & mask;
            let at = self.slots[next];
            if at == EMPTY {
                break;
            }
            let home = self.home(&self.key_at(at));
            // The entry at `next` may move to `slot` unless its home lies cyclically in
            // (slot, next]: then it would sit before its home.
            let stays = if slot <= next {
                slot < home && home <= next
            } else {
                slot < home || home <= next
            };
            if !stays {
                self.slots[slot] = at;
                slot = next;
            }
        }
        self.slots[slot] = EMPTY;
    }

    fn read(&self, at: usize, into: &mut [u8]) {
        let at = at % self.ring_bytes;
        let first = into.len().min(self.ring_bytes - at);
        into[..first].copy_from_slice(&self.ring[at..at + first]);
        let rest = into.len() - first;
        into[first..].copy_from_slice(&self.ring[..rest]);
    }

    fn write(&mut self, at: usize, bytes: &[u8]) {
        let first = bytes.len().min(self.ring_bytes - at);
        self.ring[at..at + first].copy_from_slice(&bytes[..first]);
        let rest = bytes.len() - first;
        self.ring[..rest].copy_from_slice(&bytes[first..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn session(openid: &str) -> CodeSession {
        CodeSession { openid: openid.into(), unionid: None, session_key: "key".into() }
    }

    /// WeChat's answer for `openid`, as recorded for an account that never logged out.
    fn recorded(openid: &str) -> Result<(CodeSession, i64), Error> {
        Ok((session(openid), 0))
    }

    fn exchange(codes: &RecentCodes, code: &str, now: i64, openid: &str) -> CodeAnswer {
        codes.exchange(key("wxa", code), now, false, || recorded(openid)).unwrap()
    }

    fn remembered(codes: &RecentCodes, code: &str, now: i64) -> Option<CodeAnswer> {
        codes.lock().memory.recall(&key("wxa", code), now)
    }

    fn answer(openid: &str, unionid: Option<&str>) -> CodeAnswer {
        let unionid = unionid.map(Into::into);
        CodeAnswer { openid: openid.into(), unionid, session_key: None, token_version: 0 }
    }

    #[test]
    fn keys_depend_on_the_appid_and_the_code() {
        assert_eq!(key("wxa", "code"), key("wxa", "code"));
        assert_ne!(key("wxa", "code"), key("wxb", "code"));
        assert_ne!(key("wxa", "code"), key("wxa", "code2"));
        assert_ne!(key("wxa", "bc"), key("wxab", "c"));
    }

    #[test]
    fn a_repeated_code_gets_the_first_answer_until_it_expires() {
        let codes = RecentCodes::new(false);
        assert_eq!(exchange(&codes, "code-1", 1000, "a").openid, "a");
        let again = codes
            .exchange(key("wxa", "code-1"), 1100, false, || panic!("must not call WeChat again"))
            .unwrap();
        assert_eq!(again.openid, "a");
        let other_appid = codes.exchange(key("wxb", "code-1"), 1100, false, || recorded("b"));
        assert_eq!(other_appid.unwrap().openid, "b", "codes belong to one mini-program");
        let later = codes
            .exchange(key("wxa", "code-1"), 1000 + CODE_LIFE, false, || Err(Error::WechatCodeUsed));
        assert!(matches!(later, Err(Error::WechatCodeUsed)));
    }

    #[test]
    fn a_remembered_answer_keeps_every_field_and_session_keys_only_if_asked() {
        for keep in [true, false] {
            let codes = RecentCodes::new(keep);
            let full = CodeSession {
                openid: "o-1".into(),
                unionid: Some("u-1".into()),
                session_key: "k/1+=".into(),
            };
            let first = full.clone();
            let fresh =
                codes.exchange(key("wxa", "code-4"), 1000, keep, move || Ok((first, 7))).unwrap();
            let again = remembered(&codes, "code-4", 1001).unwrap();
            let kept = keep.then(|| full.session_key.clone());
            for answer in [fresh, again] {
                assert_eq!(
                    (answer.openid, answer.unionid, answer.session_key, answer.token_version),
                    ("o-1".into(), full.unionid.clone(), kept.clone(), 7),
                    "keep session keys: {keep}"
                );
            }
            let empty_unionid = CodeSession { unionid: Some(String::new()), ..session("o-2") };
            codes.exchange(key("wxa", "code-5"), 1000, keep, || Ok((empty_unionid, 0))).unwrap();
            let again = remembered(&codes, "code-5", 1001).unwrap();
            assert_eq!((again.openid.as_str(), again.unionid.as_deref()), ("o-2", Some("")));
            exchange(&codes, "code-6", 1000, "o-3");
            assert_eq!(remembered(&codes, "code-6", 1001).unwrap().unionid, None);
            let state = codes.lock();
            let ring = if keep { 20_000 * 108 } else { 20_000 * 84 };
            assert_eq!(state.memory.ring.len(), ring, "allocated once, for the usual answers");
        }
    }

    #[test]
    fn memory_is_bounded_and_expired_answers_are_forgotten() {
        let codes = RecentCodes::new(false);
        for index in 0..MAX_REMEMBERED + 10 {
            exchange(&codes, &format!("bulk-{index}"), 1000, "d");
        }
        {
            let state = codes.lock();
            assert_eq!(state.memory.records, MAX_REMEMBERED);
            assert_eq!(state.memory.slots.len(), 32_768);
        }
        // The newest are still answered from memory; the oldest went.
        assert!(remembered(&codes, &format!("bulk-{}", MAX_REMEMBERED + 9), 1001).is_some());
        assert!(remembered(&codes, "bulk-10", 1001).is_some());
        assert!(remembered(&codes, "bulk-9", 1001).is_none());
        // Once expired, everything goes with the next answer.
        exchange(&codes, "late", 1000 + CODE_LIFE, "e");
        let state = codes.lock();
        let indexed = state.memory.slots.iter().filter(|slot| **slot != EMPTY).count();
        assert_eq!((state.memory.records, indexed), (1, 1));
        assert_eq!(state.memory.used, HEADER + "e".len());
    }

    #[test]
    fn a_failed_exchange_is_not_remembered() {
        let codes = RecentCodes::new(false);
        let code = key("wxa", "code-2");
        assert!(codes.exchange(code, 1000, false, || Err(Error::WechatCodeInvalid)).is_err());
        let retried = codes.exchange(code, 1001, false, || recorded("b")).unwrap();
        assert_eq!(retried.openid, "b", "WeChat was asked again");
        assert!(codes.lock().in_flight.is_empty());
    }

    #[test]
    fn a_panicking_exchange_does_not_leave_its_code_in_flight() {
        let codes = RecentCodes::new(false);
        let code = key("wxa", "code-p");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            codes.exchange(code, 1000, false, || panic!("boom"))
        }));
        assert!(panicked.is_err());
        assert!(codes.lock().in_flight.is_empty());
        assert_eq!(codes.exchange(code, 1000, false, || recorded("p")).unwrap().openid, "p");
    }

    #[test]
    fn concurrent_requests_for_one_code_call_wechat_once() {
        let codes = Arc::new(RecentCodes::new(false));
        let calls = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (codes, calls) = (codes.clone(), calls.clone());
                std::thread::spawn(move || {
                    codes
                        .exchange(key("wxa", "code-3"), 1000, false, || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(50));
                            recorded("c")
                        })
                        .map(|session| session.openid)
                })
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap().unwrap(), "c");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// A small memory, so that records wrap around the ring, keys share probe runs, and answers
    /// are replaced and dropped by count, by size and by age. After every step it must answer
    /// exactly as a plain queue of records under the same rules: newest kept, oldest dropped first
    /// (replaced answers included) while there are too many, too many bytes, or an expired one
    /// at the front; a forgotten code is never answered again.
    #[test]
    fn the_ring_and_its_index_agree_with_a_simple_model() {
        struct Record {
            key: Key,
            size: usize,
            expires: i64,
            answer: Option<(String, Option<String>, Option<String>, i64)>,
        }
        let (max_answers, ring_bytes) = (8, 8 * (HEADER + 8));
        let mut memory = Memory::new(max_answers, ring_bytes);
        let mut model: std::collections::VecDeque<Record> = Default::default();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut random = |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        let keys: Vec<Key> = (0..40)
            .map(|number| {
                let mut key = key("wxa", &format!("k{number}"));
                // Half of them share one home slot, the last: their probe runs wrap.
                if number % 2 == 0 {
                    key[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                }
                key
            })
            .collect();
        let (mut by_count, mut by_size, mut by_age) = (0, 0, 0);
        for step in 0..20_000i64 {
            let now = step / 10;
            let key = keys[random(40) as usize];
            let openid = "o".repeat(1 + random(8) as usize);
            let unionid = (random(2) == 0).then(|| "u".repeat(random(6) as usize));
            let session_key = (random(2) == 0).then(|| "s".repeat(random(4) as usize));
            let expires = now + 1 + random(5) as i64;
            let token_version = random(1 << 32) as i64;
            let given = CodeAnswer {
                openid: openid.clone(),
                unionid: unionid.clone(),
                session_key: session_key.clone(),
                token_version,
            };
            memory.remember(key, &given, expires, now);

            let size = HEADER
                + openid.len()
                + unionid.as_deref().map_or(0, str::len)
                + session_key.as_deref().map_or(0, str::len);
            for record in model.iter_mut().filter(|record| record.key == key) {
                record.answer = None;
            }
            loop {
                let used: usize = model.iter().map(|record| record.size).sum();
                let Some(oldest) = model.front() else { break };
                if model.len() >= max_answers {
                    by_count += 1;
                } else if used + size > ring_bytes {
                    by_size += 1;
                } else if oldest.expires <= now {
                    by_age += 1;
                } else {
                    break;
                }
                model.pop_front();
            }
            let answer = Some((openid, unionid, session_key, token_version));
            model.push_back(Record { key, size, expires, answer });

            for key in &keys {
                let expected = model
                    .iter()
                    .find(|record| record.key == *key && record.answer.is_some())
                    .filter(|record| record.expires > now)
                    .and_then(|record| record.answer.clone());
                let found = memory.recall(key, now).map(|found| {
                    (found.openid, found.unionid, found.session_key, found.token_version)
                });
                assert_eq!(found, expected, "step {step}");
            }
            assert_eq!(memory.records, model.len(), "step {step}");
            assert_eq!(
                memory.used,
                model.iter().map(|record| record.size).sum::<usize>(),
                "step {step}"
            );
        }
        // Every rule was exercised, many times.
        assert!(
            by_count > 1000 && by_size > 1000 && by_age > 1000,
            "{by_count} {by_size} {by_age}"
        );
    }

    #[test]
    fn answers_with_fields_or_token_versions_too_large_to_record_are_not_remembered() {
        let mut memory = Memory::new(4, 4096);
        let fits = answer(&"o".repeat(254), Some(&"u".repeat(254)));
        memory.remember([1; 16], &fits, 100, 0);
        assert_eq!(memory.recall(&[1; 16], 0).unwrap().unionid, fits.unionid);
        let too_long = CodeAnswer { session_key: Some("k".repeat(255)), ..answer("x", None) };
        memory.remember([2; 16], &too_long, 100, 0);
        assert!(memory.recall(&[2; 16], 0).is_none());
        let last = CodeAnswer { token_version: u32::MAX.into(), ..answer("x", None) };
        memory.remember([4; 16], &last, 100, 0);
        assert_eq!(memory.recall(&[4; 16], 0).unwrap().token_version, i64::from(u32::MAX));
        for beyond in [i64::from(u32::MAX) + 1, -1] {
            let beyond = CodeAnswer { token_version: beyond, ..answer("x", None) };
            memory.remember([5; 16], &beyond, 100, 0);
            assert!(memory.recall(&[5; 16], 0).is_none(), "{}", beyond.token_version);
        }
        let mut small = Memory::new(4, 64);
        small.remember([3; 16], &answer(&"o".repeat(50), None), 100, 0);
        assert!(small.recall(&[3; 16], 0).is_none(), "a record larger than the ring");
        assert_eq!(small.records, 0);
    }
}
