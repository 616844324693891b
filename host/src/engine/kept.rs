//! Dead letters kept in their queue: a message over `[delivery_limit]`
//! whose dead-letter exchange routed it nowhere (no binding yet, or one
//! briefly missing) is neither rejected (that would drop it) nor requeued
//! (it would come straight back): the engine holds it unsettled, so it
//! stays in its queue, and sends it to the dead-letter exchange again
//! after a wait that doubles up to [`LONGEST_WAIT`]. A stop or a lost
//! channel lets it go back to the broker, which delivers it again.

use std::time::{Duration, Instant};

use super::message::Diverted;

/// The first wait before a kept dead letter is sent again.
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// The longest wait between two tries.
pub const LONGEST_WAIT: Duration = Duration::from_secs(60);

/// One dead letter kept, and when it is tried again.
struct Kept {
    due: Instant,
    tries: u32,
    letter: Diverted,
}

/// The dead letters the engine keeps.
#[derive(Default)]
pub struct KeptDeadLetters {
    letters: Vec<Kept>,
}

/// How long to wait after the `tries`-th unroutable try.
pub fn wait_after(tries: u32) -> Duration {
    FIRST_WAIT
        .saturating_mul(1 << tries.saturating_sub(1).min(16))
        .min(LONGEST_WAIT)
}

impl KeptDeadLetters {
    /// Keeps `letter`, routed nowhere for the `tries`-th time; how long
    /// until it is tried again.
    pub fn keep(&mut self, letter: Diverted, tries: u32, now: Instant) -> Duration {
        let wait = wait_after(tries);
        self.letters.push(Kept {
            due: now + wait,
            tries,
            letter,
        });
        wait
    }

    /// When the next one is due, if any is kept.
    pub fn next_due(&self) -> Option<Instant> {
        self.letters.iter().map(|kept| kept.due).min()
    }

    /// The letters due by `now`, with how often each was tried.
    pub fn take_due(&mut self, now: Instant) -> Vec<(Diverted, u32)> {
        let (due, waiting) = std::mem::take(&mut self.letters)
            .into_iter()
            .partition(|kept| kept.due <= now);
        self.letters = waiting;
        due.into_iter()
            .map(|kept: Kept| (kept.letter, kept.tries))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.letters.len()
    }

    /// Lets every kept letter go unsettled (its token with it): the
    /// broker delivers it again once its channel closes.
    pub fn release(&mut self) {
        self.letters.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|tries| wait_after(tries).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(wait_after(u32::MAX), LONGEST_WAIT);
    }
}
