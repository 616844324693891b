//! The lane: how a consumer thread takes messages straight from the
//! queues' delivery streams, with no hop through the engine.
//!
//! A message's usual path is one thread: the consumer thread takes the
//! delivery from lapin (admitting it to the ledger in the same step),
//! checks it as fedora-messaging does, hands it to the consumer, and marks
//! the ack in the ledger's book, which sends it with others. lapin's I/O
//! thread still reads and writes the socket, so heartbeats flow while a
//! consumer blocks. What the lane cannot finish alone goes to the engine:
//! a delivery that fails the checks or meets the delivery limit
//! ([`Diverted`]), every answer other than a plain ack, and the end of a
//! stream.
//!
//! The engine opens a lane for each channel set-up and closes it when the
//! connection's channels end; each consumer thread reads it through a
//! [`Reader`] of its own (lapin wakes every reader of a stream, and each
//! must register its own waker). A queue whose channel fails gets a new
//! channel and stream in the same lane ([`Lane::replace`]), while the
//! other queues' streams go on.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use lapin::message::Delivery;

use super::inflight::InFlight;
use super::limit::{self, Verdict};
use super::message::{Answer, ChannelRef, Diverted, Job, Ticket, Why};
use super::seams;
use super::settler::Shared;
use crate::monitor::Stats;
use crate::wire;

/// One channel set-up's streams, open to the consumer threads.
pub struct Lane {
    shared: Arc<Shared>,
    /// Each queue's stream now, with the channel it comes on.
    streams: Mutex<Vec<Stream>>,
    /// `[delivery_limit]`'s `max`, if set.
    limit: Option<u32>,
    stats: Arc<Stats>,
}

/// What reading the lane gave. Built and matched at once, never stored:
/// boxing would cost an allocation a message.
#[allow(clippy::large_enum_variant)]
pub enum Read {
    /// A delivery, admitted.
    Arrived(Delivery, Ticket),
    /// A queue's stream ended (with the error lapin gave, if any).
    Ended(ChannelRef, Option<lapin::Error>),
}

/// One queue's delivery stream, and the channel it comes on.
pub type Stream = (ChannelRef, lapin::Consumer);

impl Lane {
    pub fn new(
        shared: Arc<Shared>,
        streams: Vec<Stream>,
        limit: Option<u32>,
        stats: Arc<Stats>,
    ) -> Lane {
        Lane {
            shared,
            streams: Mutex::new(streams),
            limit,
            stats,
        }
    }

    fn streams(&self) -> MutexGuard<'_, Vec<Stream>> {
        // Every step under it is a clone or an assignment.
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `stream` replaces its queue's stream, whose channel failed; readers
    /// made from now on read it.
    pub fn replace(&self, stream: Stream) {
        let source = stream.0.source();
        self.streams()[source] = stream;
    }

    /// Checks an arrived delivery, in flight as `in_flight`: a job for the
    /// consumer, or (rarely, so boxed) one for the engine.
    pub fn check(
        &self,
        delivery: Delivery,
        ticket: Ticket,
        in_flight: InFlight,
    ) -> Result<Job, Box<Diverted>> {
        let divert = |delivery, ticket, in_flight, why| {
            Box::new(Diverted {
                delivery,
                ticket,
                in_flight,
                why,
            })
        };
        let checked = match wire::check_delivery(&delivery.properties, &delivery.data) {
            Ok(checked) => checked,
            Err(reason) => return Err(divert(delivery, ticket, in_flight, Why::Refused(reason))),
        };
        if let Some(max) = self.limit {
            let verdict = limit::judge(
                max,
                delivery.redelivered,
                delivery.properties.headers().as_ref(),
            );
            if verdict != Verdict::Consume {
                let why = Why::Limited { checked, verdict };
                return Err(divert(delivery, ticket, in_flight, why));
            }
        }
        self.stats.received();
        let source = ticket.source();
        if seams::get().breaks_channel_on(wire::message_id(&delivery.properties)) {
            self.shared.break_channel(source);
        }
        Ok(Job {
            delivery,
            queue: self.shared.names()[source].clone(),
            checked,
            ticket,
            in_flight,
        })
    }

    /// Marks a job's ack answer; `Err` when it cannot be settled here (its
    /// channel is gone).
    pub fn ack(&self, job: &Job, answer: Answer) -> Result<(), Answer> {
        self.shared.mark_ack(job, answer)
    }
}

/// One consumer thread's view of a lane.
pub struct Reader {
    lane: Arc<Lane>,
    /// Each queue's stream, until it ends.
    streams: Vec<Option<Stream>>,
    /// Where the next poll starts, so that a busy queue does not starve
    /// the others.
    next: usize,
}

impl Reader {
    pub fn new(lane: Arc<Lane>) -> Reader {
        let streams = lane.streams().iter().cloned().map(Some).collect();
        Reader {
            lane,
            streams,
            next: 0,
        }
    }

    pub fn lane(&self) -> &Lane {
        &self.lane
    }

    /// The next delivery from any queue whose channel lives, or the end
    /// of a queue's stream; pending once every stream has ended or lost
    /// its channel (what lapin still holds of a dead channel is delivered
    /// again by the broker).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Read> {
        let shared = &self.lane.shared;
        let count = self.streams.len();
        for offset in 0..count {
            let index = (self.next + offset) % count;
            let Some((channel, stream)) = &mut self.streams[index] else {
                continue;
            };
            if !channel.is_live() {
                continue;
            }
            let polled = shared.take(channel, || {
                futures_lite::Stream::poll_next(std::pin::Pin::new(stream), cx)
            });
            match polled {
                Poll::Ready(Some(Ok((delivery, ticket)))) => {
                    self.next = (index + 1) % count;
                    return Poll::Ready(Read::Arrived(delivery, ticket));
                }
                Poll::Ready(Some(Err(error))) => {
                    let channel = channel.clone();
                    self.streams[index] = None;
                    return Poll::Ready(Read::Ended(channel, Some(error)));
                }
                Poll::Ready(None) => {
                    let channel = channel.clone();
                    self.streams[index] = None;
                    return Poll::Ready(Read::Ended(channel, None));
                }
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }
}
