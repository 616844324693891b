//! The book of one channel set-up: per queue, the delivery tags admitted
//! and not settled yet, and which ack answers can go together. Pure: it
//! decides, and the settler ([`super::settler`]) sends.
//!
//! Acks are what make a consumer fast or slow: each frame is a wake-up of
//! lapin's I/O thread. So an ack answer is marked, not sent; once enough
//! are marked (half the prefetch, as a hand-tuned consumer does), one ack
//! with `multiple` covers the lowest run of answered tags, never a tag
//! still handed out; a marked tag behind one still handed out is acked on
//! its own, so a slow message never holds the acks of quicker ones back.

use std::collections::VecDeque;

/// The unsettled tags, and the answers (`A`) of those marked for an ack.
pub struct Book<A> {
    /// Per queue, the deliveries admitted and not settled, in delivery
    /// order (the broker's tags rise on a channel).
    unsettled: Vec<VecDeque<Admitted<A>>>,
    /// Ack answers marked and not taken, over all queues.
    marked: usize,
    /// How many marked answers are sent together.
    ack_every: usize,
}

/// A delivery admitted and not settled yet.
struct Admitted<A> {
    tag: u64,
    state: State<A>,
}

enum State<A> {
    /// With a consumer thread, or with the engine.
    Handed,
    /// Answered with an ack not sent yet.
    Acked(A),
    /// Settled on its own: an ack with `multiple` sent later may pass
    /// over it.
    Settled,
}

/// One ack to send: on `source`'s channel, for `tag` (and every tag below
/// it, with `multiple`), settling `answers`.
#[derive(Debug, PartialEq, Eq)]
pub struct Ack<A> {
    pub source: usize,
    pub tag: u64,
    pub multiple: bool,
    pub answers: Vec<A>,
}

impl<A> Book<A> {
    /// A book for `queues` queues, acking `ack_every` answers together.
    pub fn new(queues: usize, ack_every: usize) -> Book<A> {
        Book {
            unsettled: (0..queues).map(|_| VecDeque::new()).collect(),
            marked: 0,
            ack_every: ack_every.max(1),
        }
    }

    /// A delivery was taken from `source`'s stream: handed out, unsettled.
    pub fn admit(&mut self, source: usize, tag: u64) {
        let unsettled = &mut self.unsettled[source];
        debug_assert!(unsettled.back().is_none_or(|last| last.tag < tag));
        unsettled.push_back(Admitted {
            tag,
            state: State::Handed,
        });
    }

    fn find(&mut self, source: usize, tag: u64) -> Option<&mut Admitted<A>> {
        let unsettled = self.unsettled.get_mut(source)?;
        let index = unsettled
            .binary_search_by_key(&tag, |admitted| admitted.tag)
            .ok()?;
        unsettled.get_mut(index)
    }

    /// Marks an ack answer; `Err` gives it back if the book does not hold
    /// that tag as handed out.
    pub fn mark(&mut self, source: usize, tag: u64, answer: A) -> Result<(), A> {
        match self.find(source, tag) {
            Some(admitted) if matches!(admitted.state, State::Handed) => {
                admitted.state = State::Acked(answer);
                self.marked += 1;
                Ok(())
            }
            _ => Err(answer),
        }
    }

    /// A tag was settled on its own (a nack, a reject, a forward).
    pub fn settled(&mut self, source: usize, tag: u64) {
        let was_marked = match self.find(source, tag) {
            Some(admitted) => matches!(
                std::mem::replace(&mut admitted.state, State::Settled),
                State::Acked(_)
            ),
            None => false,
        };
        if was_marked {
            self.marked -= 1;
        }
    }

    /// `source`'s channel is gone: its tags mean nothing any more (the
    /// broker delivers those messages again), and its marked answers are
    /// not sent.
    pub fn forget(&mut self, source: usize) {
        if let Some(unsettled) = self.unsettled.get_mut(source) {
            let marked = unsettled
                .drain(..)
                .filter(|admitted| matches!(admitted.state, State::Acked(_)))
                .count();
            self.marked -= marked;
        }
    }

    /// Ack answers marked and not taken.
    pub fn marked(&self) -> usize {
        self.marked
    }

    /// Whether enough are marked to send them together now.
    pub fn ack_due(&self) -> bool {
        self.marked >= self.ack_every
    }

    /// Every marked answer as acks to send, in tag order per queue: one
    /// with `multiple` for the lowest run of answered or settled tags
    /// (ending on its last answered tag: one settled already is unknown
    /// to the broker), one of its own for each marked tag behind a tag
    /// still handed out.
    pub fn take_acks(&mut self) -> Vec<Ack<A>> {
        let mut acks = Vec::new();
        if self.marked == 0 {
            return acks;
        }
        self.marked = 0;
        for (source, unsettled) in self.unsettled.iter_mut().enumerate() {
            let mut answers = Vec::new();
            let mut last = None;
            while let Some(front) = unsettled.front() {
                if matches!(front.state, State::Handed) {
                    break;
                }
                if let Some(Admitted {
                    tag,
                    state: State::Acked(answer),
                }) = unsettled.pop_front()
                {
                    answers.push(answer);
                    last = Some(tag);
                }
            }
            if let Some(tag) = last {
                acks.push(Ack {
                    source,
                    tag,
                    multiple: true,
                    answers,
                });
            }
            for admitted in unsettled.iter_mut() {
                if matches!(admitted.state, State::Acked(_))
                    && let State::Acked(answer) =
                        std::mem::replace(&mut admitted.state, State::Settled)
                {
                    acks.push(Ack {
                        source,
                        tag: admitted.tag,
                        multiple: false,
                        answers: vec![answer],
                    });
                }
            }
        }
        acks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(source: usize, tag: u64, multiple: bool, answers: &[&'static str]) -> Ack<&'static str> {
        Ack {
            source,
            tag,
            multiple,
            answers: answers.to_vec(),
        }
    }

    #[test]
    fn a_run_of_answers_goes_as_one_ack_with_multiple() {
        let mut book = Book::new(1, 3);
        for tag in 1..=3 {
            book.admit(0, tag);
        }
        book.mark(0, 1, "a").unwrap();
        book.mark(0, 2, "b").unwrap();
        assert!(!book.ack_due());
        book.mark(0, 3, "c").unwrap();
        assert!(book.ack_due());
        assert_eq!(book.take_acks(), [ack(0, 3, true, &["a", "b", "c"])]);
        assert_eq!(book.marked(), 0);
        assert!(book.take_acks().is_empty());
    }

    #[test]
    fn a_slow_message_holds_no_quicker_ack_back_and_is_never_passed_over() {
        let mut book = Book::new(1, 1);
        for tag in 1..=4 {
            book.admit(0, tag);
        }
        book.mark(0, 1, "a").unwrap();
        book.mark(0, 3, "c").unwrap();
        book.mark(0, 4, "d").unwrap();
        // Tag 2 is still with a consumer: 1 goes with multiple, 3 and 4
        // each alone.
        assert_eq!(
            book.take_acks(),
            [
                ack(0, 1, true, &["a"]),
                ack(0, 3, false, &["c"]),
                ack(0, 4, false, &["d"])
            ]
        );
        book.mark(0, 2, "b").unwrap();
        // 3 and 4 are settled: the next ack ends on 2, and the book
        // forgets them with it (a tag already settled is unknown to the
        // broker, which would close the channel for it).
        assert_eq!(book.take_acks(), [ack(0, 2, true, &["b"])]);
        assert!(book.unsettled[0].is_empty());
    }

    #[test]
    fn a_tag_settled_on_its_own_is_passed_over_and_unmarked() {
        let mut book = Book::new(2, 10);
        book.admit(0, 1);
        book.admit(0, 2);
        book.admit(1, 1);
        book.mark(0, 1, "a").unwrap();
        book.settled(0, 2);
        book.mark(1, 1, "x").unwrap();
        book.settled(1, 1);
        assert_eq!(book.marked(), 1);
        assert_eq!(book.take_acks(), [ack(0, 1, true, &["a"])]);
        assert!(book.unsettled.iter().all(VecDeque::is_empty));
    }

    #[test]
    fn a_channel_forgotten_sends_nothing_and_the_others_go_on() {
        let mut book = Book::new(2, 10);
        book.admit(0, 1);
        book.admit(0, 2);
        book.admit(1, 1);
        book.mark(0, 1, "a").unwrap();
        book.mark(1, 1, "x").unwrap();
        book.forget(0);
        assert_eq!(book.marked(), 1);
        assert_eq!(book.mark(0, 2, "b"), Err("b"));
        // The new channel's tags start again at 1.
        book.admit(0, 1);
        book.mark(0, 1, "c").unwrap();
        assert_eq!(
            book.take_acks(),
            [ack(0, 1, true, &["c"]), ack(1, 1, true, &["x"])]
        );
    }

    #[test]
    fn an_unknown_or_twice_marked_tag_is_given_back() {
        let mut book = Book::new(1, 1);
        book.admit(0, 5);
        assert_eq!(book.mark(0, 4, "a"), Err("a"));
        assert_eq!(book.mark(1, 5, "a"), Err("a"));
        book.mark(0, 5, "a").unwrap();
        assert_eq!(book.mark(0, 5, "b"), Err("b"));
        assert_eq!(book.marked(), 1);
    }
}
