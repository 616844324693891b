//! What is in flight, counted once: one [`InFlight`] token per message,
//! taken when a consumer thread takes the delivery from its stream and
//! dropped only once the message's answer has been acted on (its ack
//! marked in the book, its settlement sent, or the message put down
//! unsettled for the broker to deliver again).
//!
//! The token travels with the message, through the results channel to the
//! engine if need be, so the count cannot fall to zero while an answer
//! waits unread: draining ends when [`Tracker::idle`] says the last token
//! is gone, never by reading a flag. This is the pattern of tokio-util's
//! `TaskTracker`, and of tower's permits that travel with the request.
//!
//! A token dropped while its thread unwinds from a panic says so
//! ([`Tracker::panicked`]) before the count falls, so the engine that sees
//! the count fall also sees why: that message's answer was lost, which is a
//! consumer failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use event_listener::Event;

/// Counts the tokens alive; cloned by whoever hands them out.
#[derive(Clone, Default)]
pub struct Tracker {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    count: AtomicUsize,
    panicked: AtomicBool,
    /// Notified each time the count falls to zero. Only the engine that
    /// drains listens: while it runs, the count falls to zero after most
    /// messages, and a listener would be woken for each.
    idle: Event,
    /// Notified when a token is dropped by a panic.
    panic: Event,
}

/// One message in flight; the count falls when it is dropped.
#[must_use = "the message is in flight only while its token lives"]
pub struct InFlight {
    inner: Arc<Inner>,
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// A token for a message that is now in flight.
    pub fn token(&self) -> InFlight {
        self.inner.count.fetch_add(1, Ordering::SeqCst);
        InFlight {
            inner: self.inner.clone(),
        }
    }

    /// The tokens alive now.
    pub fn count(&self) -> usize {
        self.inner.count.load(Ordering::SeqCst)
    }

    /// Whether a token was dropped by a thread unwinding from a panic.
    pub fn panicked(&self) -> bool {
        self.inner.panicked.load(Ordering::SeqCst)
    }

    /// Resolves once no token is alive (at once if none is).
    pub async fn idle(&self) {
        self.until(&self.inner.idle, |tracker| tracker.count() == 0)
            .await;
    }

    /// Resolves once a token was dropped by a panic (at once if one was).
    pub async fn panic(&self) {
        self.until(&self.inner.panic, Tracker::panicked).await;
    }

    async fn until(&self, event: &Event, done: impl Fn(&Tracker) -> bool) {
        loop {
            if done(self) {
                return;
            }
            let listener = event.listen();
            // Looked at again once listening: a change in between would
            // otherwise be missed.
            if done(self) {
                return;
            }
            listener.await;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.inner.panicked.store(true, Ordering::SeqCst);
            self.inner.panic.notify(usize::MAX);
        }
        if self.inner.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.idle.notify(usize::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_token_once_for_as_long_as_it_lives() {
        let tracker = Tracker::new();
        let first = tracker.token();
        let second = tracker.token();
        assert_eq!(tracker.count(), 2);
        drop(first);
        assert_eq!(tracker.count(), 1);
        drop(second);
        assert_eq!(tracker.count(), 0);
        assert!(!tracker.panicked());
    }

    #[test]
    fn idle_waits_for_the_last_token_on_another_thread() {
        let tracker = Tracker::new();
        futures_lite::future::block_on(tracker.idle());
        let token = tracker.token();
        let (sender, receiver) = std::sync::mpsc::channel();
        let dropper = std::thread::spawn(move || {
            receiver.recv().unwrap();
            drop(token);
        });
        let waiting = async {
            sender.send(()).unwrap();
            tracker.idle().await;
        };
        futures_lite::future::block_on(waiting);
        assert_eq!(tracker.count(), 0);
        dropper.join().unwrap();
    }

    #[test]
    fn a_token_dropped_by_a_panic_says_so_before_the_count_falls() {
        let tracker = Tracker::new();
        let token = tracker.token();
        let panicking = std::thread::spawn(move || {
            let _held = token;
            panic!("a bug on a consumer thread");
        });
        assert!(panicking.join().is_err());
        assert_eq!(tracker.count(), 0);
        assert!(tracker.panicked());
        futures_lite::future::block_on(tracker.panic());
    }
}
