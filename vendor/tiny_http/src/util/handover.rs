//! [wxauth patch] Hands one value from one thread to another: the reader and the writer of a
//! connection pass from each request to the next this way. It replaces a `std::sync::mpsc`
//! channel per request, which cost an allocation aligned to 128 bytes and, at the first send,
//! a zeroed block of 31 slots (about 2,000 instructions and two large frees per channel, in
//! every request); this is one small allocation, and a send wakes the receiver only when it is
//! asleep.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, Thread};

struct Slot<T> {
    value: Option<T>,
    /// The giver is gone: no value will come after the one in `value`, if any.
    closed: bool,
    /// The taker, while it sleeps waiting.
    waiter: Option<Thread>,
}

/// The sending side: gives at most one value, and closes the handover when dropped.
pub struct Giver<T>(Arc<Mutex<Slot<T>>>);

/// The receiving side.
pub struct Taker<T>(Arc<Mutex<Slot<T>>>);

/// A new handover, empty and open.
pub fn handover<T>() -> (Giver<T>, Taker<T>) {
    let slot = Arc::new(Mutex::new(Slot { value: None, closed: false, waiter: None }));
    (Giver(slot.clone()), Taker(slot))
}

/// Nothing panics while holding the lock, and a slot stays consistent whatever happens.
fn lock<T>(slot: &Mutex<Slot<T>>) -> MutexGuard<'_, Slot<T>> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T> Giver<T> {
    /// Hands `value` over, waking the taker if it waits. A value given after a first one
    /// replaces it if it has not been taken yet (the callers give once).
    pub fn give(&self, value: T) {
        let waiter = {
            let mut slot = lock(&self.0);
            slot.value = Some(value);
            slot.waiter.take()
        };
        if let Some(waiter) = waiter {
            waiter.unpark();
        }
    }
}

impl<T> Drop for Giver<T> {
    fn drop(&mut self) {
        let waiter = {
            let mut slot = lock(&self.0);
            slot.closed = true;
            slot.waiter.take()
        };
        if let Some(waiter) = waiter {
            waiter.unpark();
        }
    }
}

impl<T> Taker<T> {
    /// The value given, waiting for it; `None` once the giver is gone without giving one.
    pub fn take(&mut self) -> Option<T> {
        loop {
            {
                let mut slot = lock(&self.0);
                if let Some(value) = slot.value.take() {
                    return Some(value);
                }
                if slot.closed {
                    return None;
                }
                slot.waiter = Some(thread::current());
            }
            // Returns at the giver's unpark, or spuriously (another unpark of this thread, or
            // one left from an earlier wait): the slot is looked at again either way.
            thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::handover;
    use std::thread;
    use std::time::Duration;

    #[test]
    fn a_value_given_before_the_take_is_there_at_once() {
        let (giver, mut taker) = handover();
        giver.give(7);
        assert_eq!(taker.take(), Some(7));
    }

    #[test]
    fn a_taker_waits_for_the_value_from_another_thread() {
        let (giver, mut taker) = handover();
        let giving = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            giver.give(String::from("reader"));
        });
        assert_eq!(taker.take().as_deref(), Some("reader"));
        giving.join().unwrap();
    }

    #[test]
    fn a_giver_gone_without_giving_ends_the_wait() {
        let (giver, mut taker) = handover::<u8>();
        let dropping = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            drop(giver);
        });
        assert_eq!(taker.take(), None);
        dropping.join().unwrap();
    }

    #[test]
    fn a_value_outlives_its_giver() {
        let (giver, mut taker) = handover();
        giver.give(1);
        drop(giver);
        assert_eq!(taker.take(), Some(1));
        assert_eq!(taker.take(), None);
    }

    #[test]
    fn many_handovers_in_a_chain_each_pass_once() {
        // Like requests on one connection: each thread takes from the one before it and gives
        // to the one after, whatever order the threads run in.
        let (first, mut taker) = handover();
        let mut threads = Vec::new();
        for _ in 0..64 {
            let (giver, next) = handover();
            let mut previous = std::mem::replace(&mut taker, next);
            threads.push(thread::spawn(move || {
                let count: u32 = previous.take().expect("the previous thread gave");
                giver.give(count + 1);
            }));
        }
        first.give(0);
        assert_eq!(taker.take(), Some(64));
        for thread in threads {
            thread.join().unwrap();
        }
    }
}
