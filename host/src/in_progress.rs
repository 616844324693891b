//! What each consumer thread has in hand, and since when: the count of
//! messages in progress and the oldest of them, for `/ready`, `/metrics`
//! and `STATUS=`, and the messages over `soft_timeout`, which are warned
//! about once each. A callback stuck on one message shows here while the
//! counters merely stop moving.
//!
//! A thread's slot is filled when it hands a message to its consumer and
//! cleared when the consumer answers; its strings are reused, so keeping
//! the account costs no allocation per message.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The messages the consumer threads have in hand, one slot a thread.
#[derive(Default)]
pub struct InProgress {
    slots: Mutex<Vec<Slot>>,
}

#[derive(Default)]
struct Slot {
    /// When the message was handed over; `None` while the thread has none.
    since: Option<Instant>,
    id: String,
    topic: String,
    /// Whether its `soft_timeout` warning was given.
    warned: bool,
}

/// One message in progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub id: String,
    pub topic: String,
    /// How long it has been in the consumer's hands.
    pub age: Duration,
}

/// The messages in progress at one moment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub count: usize,
    pub oldest: Option<Held>,
}

impl InProgress {
    /// Each slot is only ever written whole under the lock: a panic
    /// elsewhere cannot leave one torn, so a poisoned lock is used as it is.
    fn slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Thread `worker` handed message `id` on `topic` to its consumer.
    pub fn began(&self, worker: usize, id: &str, topic: &str, now: Instant) {
        let mut slots = self.slots();
        if slots.len() <= worker {
            slots.resize_with(worker + 1, Slot::default);
        }
        let slot = &mut slots[worker];
        slot.since = Some(now);
        slot.id.clear();
        slot.id.push_str(id);
        slot.topic.clear();
        slot.topic.push_str(topic);
        slot.warned = false;
    }

    /// Thread `worker`'s consumer answered (or left the message unstarted).
    pub fn ended(&self, worker: usize) {
        if let Some(slot) = self.slots().get_mut(worker) {
            slot.since = None;
        }
    }

    /// How many messages are in progress, and the oldest of them.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let slots = self.slots();
        let busy = slots.iter().filter_map(|slot| Some((slot.since?, slot)));
        let count = busy.clone().count();
        let oldest = busy
            .min_by_key(|(since, _)| *since)
            .map(|(since, slot)| Held {
                id: slot.id.clone(),
                topic: slot.topic.clone(),
                age: now.saturating_duration_since(since),
            });
        Snapshot { count, oldest }
    }

    /// The messages in progress for longer than `limit` that were not
    /// returned before: each is returned once, while it stays in hand.
    pub fn overdue(&self, limit: Duration, now: Instant) -> Vec<Held> {
        let mut slots = self.slots();
        let mut overdue = Vec::new();
        for slot in slots.iter_mut() {
            let Some(since) = slot.since else { continue };
            let age = now.saturating_duration_since(since);
            if !slot.warned && age > limit {
                slot.warned = true;
                overdue.push(Held {
                    id: slot.id.clone(),
                    topic: slot.topic.clone(),
                    age,
                });
            }
        }
        overdue
    }
}

/// An age as `STATUS=` shows it: `42 s`, `4 min`, `2 h 5 min`.
pub fn roughly(age: Duration) -> String {
    let seconds = age.as_secs();
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        _ => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_message_in_hand_is_the_one_handed_over_first() {
        let progress = InProgress::default();
        let start = Instant::now();
        assert_eq!(progress.snapshot(start), Snapshot::default());
        progress.began(1, "m-2", "t.two", start + Duration::from_secs(5));
        progress.began(0, "m-1", "t.one", start);
        let later = start + Duration::from_secs(60);
        let snapshot = progress.snapshot(later);
        assert_eq!(snapshot.count, 2);
        assert_eq!(
            snapshot.oldest,
            Some(Held {
                id: "m-1".into(),
                topic: "t.one".into(),
                age: Duration::from_secs(60)
            })
        );
        progress.ended(0);
        let snapshot = progress.snapshot(later);
        assert_eq!(snapshot.count, 1);
        assert_eq!(snapshot.oldest.map(|held| held.id), Some("m-2".into()));
        progress.ended(1);
        assert_eq!(progress.snapshot(later), Snapshot::default());
    }

    #[test]
    fn a_message_over_the_limit_is_reported_once_and_the_next_one_again() {
        let progress = InProgress::default();
        let start = Instant::now();
        let limit = Duration::from_secs(10);
        progress.began(0, "slow", "t", start);
        assert!(progress.overdue(limit, start + limit).is_empty());
        let overdue = progress.overdue(limit, start + Duration::from_secs(11));
        assert_eq!(overdue.len(), 1);
        assert_eq!(overdue[0].id, "slow");
        assert!(
            progress
                .overdue(limit, start + Duration::from_secs(99))
                .is_empty()
        );
        progress.ended(0);
        progress.began(0, "slow-too", "t", start + Duration::from_secs(100));
        let overdue = progress.overdue(limit, start + Duration::from_secs(111));
        assert_eq!(overdue.len(), 1);
        assert_eq!(overdue[0].id, "slow-too");
    }

    #[test]
    fn ages_read_as_an_operator_would_say_them() {
        assert_eq!(roughly(Duration::from_secs(42)), "42 s");
        assert_eq!(roughly(Duration::from_secs(4 * 60 + 59)), "4 min");
        assert_eq!(roughly(Duration::from_secs(2 * 3600 + 5 * 60)), "2 h 5 min");
    }
}
