use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

enum Control<T> {
    Elem(T),
    Unblock,
}

pub struct MessagesQueue<T>
where
    T: Send,
{
    queue: Mutex<VecDeque<Control<T>>>,
    condvar: Condvar,
}

impl<T> MessagesQueue<T>
where
    T: Send,
{
    pub fn with_capacity(capacity: usize) -> Arc<MessagesQueue<T>> {
        Arc::new(MessagesQueue {
            queue: Mutex::new(VecDeque::with_capacity(capacity)),
            condvar: Condvar::new(),
        })
    }

    /// Adds `control` and wakes a waiting thread, if any.
    fn add(&self, control: Control<T>) {
        let mut queue = self.queue.lock().unwrap();
        queue.push_back(control);
        self.condvar.notify_one();
    }

    /// Pushes an element to the queue.
    pub fn push(&self, value: T) {
        self.add(Control::Elem(value));
    }

    /// Unblock one thread stuck in pop loop.
    pub fn unblock(&self) {
        self.add(Control::Unblock);
    }

    /// Pops an element. Blocks until one is available.
    /// Returns None in case unblock() was issued.
    pub fn pop(&self) -> Option<T> {
        let mut queue = self.queue.lock().unwrap();

        loop {
            match queue.pop_front() {
                Some(Control::Elem(value)) => return Some(value),
                Some(Control::Unblock) => return None,
                None => (),
            }

            queue = self.condvar.wait(queue).unwrap();
        }
    }

    /// Tries to pop an element without blocking.
    pub fn try_pop(&self) -> Option<T> {
        let mut queue = self.queue.lock().unwrap();
        match queue.pop_front() {
            Some(Control::Elem(value)) => Some(value),
            Some(Control::Unblock) | None => None,
        }
    }

    /// Tries to pop an element without blocking
    /// more than the specified timeout duration
    /// or unblock() was issued
    pub fn pop_timeout(&self, timeout: Duration) -> Option<T> {
        let mut queue = self.queue.lock().unwrap();
        let mut duration = timeout;
        loop {
            match queue.pop_front() {
                Some(Control::Elem(value)) => return Some(value),
                Some(Control::Unblock) => return None,
                None => (),
            }
            let now = Instant::now();
            let (_queue, result) = self.condvar.wait_timeout(queue, timeout).unwrap();
            queue = _queue;
            let sleep_time = now.elapsed();
            duration = if duration > sleep_time {
                duration - sleep_time
            } else {
                Duration::from_millis(0)
            };
            if result.timed_out()
                || (duration.as_secs() == 0 && duration.subsec_nanos() < 1_000_000)
            {
                // [wxauth patch] A push as the wait ran out may have sent its notice to this
                // thread alone: take its element rather than leave it to the next waiter's
                // timeout (a worker's poll interval, 200 ms in wxauth).
                return match queue.pop_front() {
                    Some(Control::Elem(value)) => Some(value),
                    Some(Control::Unblock) | None => None,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    // [wxauth patch] No push is missed by a waiting thread, with or without a timeout.
    use super::MessagesQueue;
    use std::thread;
    use std::time::{Duration, Instant};

    #[test]
    fn every_element_reaches_exactly_one_waiting_consumer() {
        let queue = MessagesQueue::with_capacity(8);
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let queue = queue.clone();
                thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Some(value) = queue.pop() {
                        got.push(value);
                    }
                    got
                })
            })
            .collect();
        let producers: Vec<_> = (0..4)
            .map(|producer| {
                let queue = queue.clone();
                thread::spawn(move || {
                    for index in 0..10_000 {
                        queue.push(producer * 10_000 + index);
                        if index % 1000 == 0 {
                            thread::sleep(Duration::from_millis(1)); // let consumers sleep
                        }
                    }
                })
            })
            .collect();
        for producer in producers {
            producer.join().unwrap();
        }
        for _ in 0..4 {
            queue.unblock();
        }
        let mut all: Vec<u32> = consumers.into_iter().flat_map(|c| c.join().unwrap()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..40_000).collect::<Vec<u32>>());
    }

    #[test]
    fn a_push_wakes_a_consumer_waiting_with_a_timeout() {
        let queue = MessagesQueue::with_capacity(1);
        let waiting = {
            let queue = queue.clone();
            thread::spawn(move || {
                let started = Instant::now();
                (queue.pop_timeout(Duration::from_secs(10)), started.elapsed())
            })
        };
        thread::sleep(Duration::from_millis(50));
        queue.push(7);
        let (value, waited) = waiting.join().unwrap();
        assert_eq!(value, Some(7));
        assert!(waited < Duration::from_secs(5), "woken late: {waited:?}");
    }

    #[test]
    fn an_empty_queue_times_out_and_stays_usable() {
        let queue = MessagesQueue::<u8>::with_capacity(1);
        assert_eq!(queue.pop_timeout(Duration::from_millis(20)), None);
        queue.push(1);
        assert_eq!(queue.try_pop(), Some(1));
        assert_eq!(queue.try_pop(), None);
    }
}
