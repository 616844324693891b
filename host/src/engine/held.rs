//! Deliveries the engine holds unsettled until a time, so that they stay
//! in their queue without being consumed, while the messages behind them
//! flow (each holds one slot of the prefetch):
//! - a message that came back, waiting out its retry delay before its
//!   count is carried on ([`Hold::RetryWait`]): a nack loop is slowed,
//!   not only capped;
//! - a message over the limit whose dead-letter exchange did not take it
//!   (routed nowhere, or refused by a full queue): neither rejected (that
//!   would drop it) nor requeued (it would come straight back), it is sent
//!   again after a wait that doubles up to [`LONGEST_WAIT`]
//!   ([`Hold::DeadLetter`]);
//! - a dead letter back in the queue it left (its dead-letter exchange
//!   routes there): held, never consumed nor sent round again, until the
//!   channel ends ([`Hold::CameBack`]).
//!
//! A held delivery carries no in-flight token: a stop does not wait for
//! it. The stop puts it back ([`super::put_back`]); a lost channel leaves
//! it to the broker, and this process remembers its count.

use std::time::{Duration, Instant};

use lapin::message::Delivery;

use super::message::{Ticket, Why};

/// The first wait before a dead letter not taken is sent again.
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// The longest wait between two tries of a dead letter.
pub const LONGEST_WAIT: Duration = Duration::from_secs(60);

/// Why a delivery is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// It came back, and waits before its count is carried on.
    RetryWait,
    /// Its dead-letter exchange did not take it, `tries` times.
    DeadLetter { tries: u32 },
    /// A dead letter back in the queue it left: held until the channel
    /// ends, never tried again.
    CameBack,
}

/// One delivery held, and until when (`None`: until its channel ends).
pub struct Held {
    pub due: Option<Instant>,
    pub hold: Hold,
    pub delivery: Delivery,
    pub ticket: Ticket,
    pub why: Why,
}

/// The deliveries the engine holds.
#[derive(Default)]
pub struct HeldDeliveries {
    held: Vec<Held>,
}

/// How long a dead letter waits after its `tries`-th try was not taken.
pub fn dead_letter_wait(tries: u32) -> Duration {
    FIRST_WAIT
        .saturating_mul(1 << tries.saturating_sub(1).min(16))
        .min(LONGEST_WAIT)
}

impl HeldDeliveries {
    /// Holds `delivery` for `wait` (`None`: until its channel ends).
    pub fn hold(
        &mut self,
        hold: Hold,
        wait: Option<Duration>,
        delivery: Delivery,
        ticket: Ticket,
        why: Why,
    ) {
        self.held.push(Held {
            due: wait.map(|wait| Instant::now() + wait),
            hold,
            delivery,
            ticket,
            why,
        });
    }

    /// When the next one is due, if any is held for a time.
    pub fn next_due(&self) -> Option<Instant> {
        self.held.iter().filter_map(|held| held.due).min()
    }

    /// The deliveries due by `now`, no longer held.
    pub fn take_due(&mut self, now: Instant) -> Vec<Held> {
        let (due, waiting) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|held| held.due.is_some_and(|due| due <= now));
        self.held = waiting;
        due
    }

    /// Makes every dead letter waiting for another try due by `now`: what
    /// kept them (a blocked connection) has just ended.
    pub fn dead_letters_due(&mut self, now: Instant) {
        for held in &mut self.held {
            if matches!(held.hold, Hold::DeadLetter { .. }) {
                held.due = held.due.map(|due| due.min(now));
            }
        }
    }

    /// Every delivery held, no longer held.
    pub fn take_all(&mut self) -> Vec<Held> {
        std::mem::take(&mut self.held)
    }

    /// How many dead letters are held.
    pub fn dead_letters(&self) -> usize {
        self.held
            .iter()
            .filter(|held| matches!(held.hold, Hold::DeadLetter { .. } | Hold::CameBack))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letters_wait_doubles_up_to_a_minute() {
        let waits: Vec<u64> = (1..=9)
            .map(|tries| dead_letter_wait(tries).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(dead_letter_wait(u32::MAX), LONGEST_WAIT);
    }
}
