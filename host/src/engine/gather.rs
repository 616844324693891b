//! When to hand waiting jobs to idle consumer threads: at once, or after a
//! few more have gathered.
//!
//! Waking a parked thread is the dearest step of a message's path (a futex
//! wake and a context switch on each side, several times the cost of a
//! no-op consumer), and while messages stream in the consumer threads park
//! between any two of them. So when the workers are idle and messages are
//! coming fast (an answer came back within [`HOT`]), the engine lets up to
//! [`BATCH`] jobs gather, for at most [`WAIT`], and one wake-up covers them
//! all; while a worker is busy, jobs go to it at once (it takes them
//! without being woken). A message that comes alone, after a quiet spell,
//! is handed over at once: the wait only ever applies when more messages
//! are known to be close behind. Nor does it apply when the prefetch leaves
//! the broker too little room to send the rest of a batch: the broker would
//! wait for acks, and the acks for the batch.

use std::task::Poll;
use std::time::{Duration, Instant};

/// Jobs that, once waiting, are handed over without waiting for more.
pub const BATCH: usize = 8;

/// The longest a job waits for others to gather.
pub const WAIT: Duration = Duration::from_micros(500);

/// How recent the last answer must be for messages to count as streaming.
pub const HOT: Duration = Duration::from_millis(1);

pub struct Gather {
    timer: async_io::Timer,
    armed: bool,
    /// The wait ran out: hand over what has gathered.
    due: bool,
    last_answer: Option<Instant>,
}

impl Default for Gather {
    fn default() -> Gather {
        Gather {
            timer: async_io::Timer::never(),
            armed: false,
            due: false,
            last_answer: None,
        }
    }
}

impl Gather {
    /// Answers came back from the workers.
    pub fn answered(&mut self) {
        self.last_answer = Some(Instant::now());
    }

    /// Whether `waiting` jobs should wait for more before being handed to
    /// workers that hold `in_flight` jobs, when the broker may send `room`
    /// more deliveries before it waits for acks; arms the wait's timer if
    /// so.
    pub fn should_wait(&mut self, waiting: usize, in_flight: usize, room: usize) -> bool {
        let wait = waiting > 0
            && waiting < BATCH
            && room >= BATCH - waiting
            && in_flight == 0
            && !self.due
            && self
                .last_answer
                .is_some_and(|answered| answered.elapsed() < HOT);
        if wait && !self.armed {
            self.timer.set_after(WAIT);
            self.armed = true;
        } else if !wait {
            self.disarm();
        }
        wait
    }

    fn disarm(&mut self) {
        self.due = false;
        if self.armed {
            // Dropping the timer takes it out of the reactor, which would
            // otherwise wake the engine for nothing.
            self.timer = async_io::Timer::never();
            self.armed = false;
        }
    }

    /// Resolves when the wait has run out; pending while nothing waits.
    pub async fn ran_out(&mut self) {
        futures_lite::future::poll_fn(|cx| {
            if self.armed && std::pin::Pin::new(&mut self.timer).poll(cx).is_ready() {
                self.armed = false;
                self.due = true;
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_wait_only_for_idle_workers_while_messages_stream() {
        const ROOM: usize = 1000;
        let mut gather = Gather::default();
        // Nothing answered yet, or long ago: a lone message goes at once.
        assert!(!gather.should_wait(1, 0, ROOM));
        gather.last_answer = Some(Instant::now() - HOT * 2);
        assert!(!gather.should_wait(1, 0, ROOM));
        // Streaming: a few wait for more while the workers are idle…
        gather.answered();
        assert!(gather.should_wait(1, 0, ROOM));
        assert!(gather.armed);
        assert!(gather.should_wait(BATCH - 1, 0, ROOM));
        // …but not once a batch has gathered, nor while a worker is busy.
        assert!(!gather.should_wait(BATCH, 0, ROOM));
        assert!(!gather.armed);
        assert!(!gather.should_wait(1, 1, ROOM));
        // Once the wait runs out, what has gathered goes.
        gather.answered();
        assert!(gather.should_wait(2, 0, ROOM));
        gather.armed = false;
        gather.due = true;
        assert!(!gather.should_wait(2, 0, ROOM));
        assert!(!gather.due);
        // Nor while the prefetch keeps the rest of a batch from coming.
        gather.answered();
        assert!(gather.should_wait(2, 0, BATCH - 2));
        assert!(!gather.should_wait(2, 0, BATCH - 3));
    }
}
