//! Taking the next message while the current one is consumed: the host's
//! side of plugin interface revision 4 (`fm_plugin_api::ahead`).
//!
//! A consumer in another process (the Python bridge) would otherwise wait
//! for a round trip through the host between any two messages. While it
//! consumes one, it may ask for the next ([`take_next`]); the worker thread
//! lends it what it reads its lane with for the length of each call
//! ([`lend`]), and a message is taken only if it has already arrived, is
//! checked as the worker would check it, and holds its in-flight token
//! from then on. The worker hands a message so taken to the consumer next,
//! whatever happens meanwhile: the consumer has it already. Once the host
//! drains, nothing is taken, and a message taken before may come back
//! unstarted ([`super::gate`] says how the consumer knows).

use std::cell::RefCell;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::gate::Gate;
use super::inflight::Tracker;
use super::lane::{Read, Reader};
use lapin::message::Delivery;

use super::message::{Finished, Job, Ticket};
use crate::wire::MessageView;

/// What a worker thread reads its lane with: lent to the consumer while it
/// consumes.
#[derive(Default)]
pub struct Reading {
    /// The lane it reads, if one is open.
    pub reader: Option<Reader>,
    /// The message the consumer took while consuming the last one.
    pub taken: Option<Job>,
    /// What reading found that is the engine's to act on, in order.
    pub told: Vec<Finished>,
    /// The consumer said it did not begin the message in hand.
    unstarted: bool,
}

/// What the worker thread that lends its reading always has.
struct Lender {
    gate: Arc<Gate>,
    tracker: Tracker,
    reading: Reading,
}

thread_local! {
    /// Set on a worker thread for the length of a consume call.
    static LENT: RefCell<Option<Lender>> = const { RefCell::new(None) };
}

/// Runs `consume` with `reading` lent to this thread, for [`take_next`].
pub fn lend<R>(
    reading: &mut Reading,
    gate: &Arc<Gate>,
    tracker: &Tracker,
    consume: impl FnOnce() -> R,
) -> R {
    let lender = Lender {
        gate: gate.clone(),
        tracker: tracker.clone(),
        reading: std::mem::take(reading),
    };
    LENT.with(|slot| *slot.borrow_mut() = Some(lender));
    let answer = consume();
    if let Some(lender) = LENT.with(|slot| slot.borrow_mut().take()) {
        *reading = lender.reading;
    }
    answer
}

/// How many deliveries one call reads at most while looking for one the
/// consumer may take: the others go to the engine (diverted) once the
/// current message is answered.
const READS_PER_TAKE: usize = 8;

/// Called by a consumer during its consume call on a worker thread: lends
/// `offer` the message it gets next and returns true when one has already
/// arrived and the host is not draining; false otherwise, on any other
/// thread, and when a message taken before is still to come.
pub fn take_next(offer: impl FnOnce(&MessageView<'_>)) -> bool {
    LENT.with(|slot| {
        // Busy: the consumer asked again from inside `offer`.
        let Ok(mut slot) = slot.try_borrow_mut() else {
            return false;
        };
        match slot.as_mut() {
            Some(lender) => lender.take_next(offer),
            None => false,
        }
    })
}

/// Revision 4's `leave_unstarted`, called by a consumer during its
/// consume call: the message in hand was not begun. Nothing elsewhere.
pub extern "C" fn leave_unstarted() {
    LENT.with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut()
            && let Some(lender) = slot.as_mut()
        {
            lender.reading.unstarted = true;
        }
    });
}

/// Whether the consumer said, during the consume call now ending, that it
/// did not begin its message; asked once per call.
pub fn left_unstarted() -> bool {
    LENT.with(|slot| {
        slot.try_borrow_mut()
            .ok()
            .and_then(|mut slot| {
                slot.as_mut()
                    .map(|lender| std::mem::take(&mut lender.reading.unstarted))
            })
            .unwrap_or(false)
    })
}

impl Lender {
    fn take_next(&mut self, offer: impl FnOnce(&MessageView<'_>)) -> bool {
        let reading = &mut self.reading;
        if reading.taken.is_some() {
            return false;
        }
        let Some(reader) = reading.reader.as_mut() else {
            return false;
        };
        // Only what has arrived: the worker's own wait registers its waker.
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..READS_PER_TAKE {
            if self.gate.is_held() {
                return false;
            }
            let Poll::Ready(read) = reader.poll_next(&mut cx) else {
                return false;
            };
            let (delivery, ticket) = match read {
                Read::Arrived(delivery, ticket) => (delivery, ticket),
                Read::Ended(channel, error) => {
                    reading.told.push(Finished::Ended(channel, error));
                    return false;
                }
            };
            match admit(reader, &self.gate, &self.tracker, delivery, ticket) {
                Admitted::Job(job) => {
                    offer(&job.view());
                    reading.taken = Some(job);
                    return true;
                }
                Admitted::Diverted(diverted) => reading.told.push(diverted),
                Admitted::PutDown if self.gate.is_held() => return false,
                Admitted::PutDown => {}
            }
        }
        false
    }
}

/// What became of a delivery read from the lane before any consumer saw it.
pub enum Admitted {
    /// Checked, on a live channel, with its in-flight token: to consume.
    Job(Job),
    /// For the engine: it failed the checks or met the delivery limit.
    Diverted(Finished),
    /// Put down unsettled, its token with it (the host drains, or its
    /// channel is gone): the broker delivers it again.
    PutDown,
}

/// The one way a delivery is admitted, by a worker and by [`take_next`]
/// alike: its in-flight token is taken before the gate is looked at (see
/// `workers`' doc), then it is checked as fedora-messaging would, then
/// its channel must still be there to settle it.
pub fn admit(
    reader: &Reader,
    gate: &Gate,
    tracker: &Tracker,
    delivery: Delivery,
    ticket: Ticket,
) -> Admitted {
    let in_flight = tracker.token();
    if gate.is_held() {
        return Admitted::PutDown;
    }
    match reader.lane().check(delivery, ticket, in_flight) {
        Err(diverted) => Admitted::Diverted(Finished::Diverted(diverted)),
        Ok(job) if !job.settleable() => Admitted::PutDown,
        Ok(job) => Admitted::Job(job),
    }
}
