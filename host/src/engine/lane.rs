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
use super::limit::{self, Fields, Found, Policy, Seen, Verdict};
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
    /// `[delivery_limit]`, if set.
    limit: Option<Arc<Policy>>,
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

/// A delivery lapin held that no consumer started ([`Lane::unstarted`]).
pub struct Unstarted {
    pub queue: Arc<str>,
    pub delivery: Delivery,
    /// Its admission to the ledger, while its channel is the ledger's.
    pub ticket: Option<Ticket>,
}

/// One queue's delivery stream, and the channel it comes on.
pub type Stream = (ChannelRef, lapin::Consumer);

impl Lane {
    pub fn new(
        shared: Arc<Shared>,
        streams: Vec<Stream>,
        limit: Option<Arc<Policy>>,
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
        mut delivery: Delivery,
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
        let source = ticket.source();
        let queue = &self.shared.names()[source];
        if let Some(policy) = &self.limit {
            let Judged { verdict, topic, .. } = judge(policy, queue, &delivery, Doubts::Logged);
            if let Some(topic) = topic {
                // A copy travels by its queue's name; the consumer sees the
                // topic it was published with.
                delivery.routing_key = topic.into();
            }
            if verdict != Verdict::Consume {
                let why = Why::Limited { checked, verdict };
                return Err(divert(delivery, ticket, in_flight, why));
            }
        }
        self.stats.received();
        if seams::get().breaks_channel_on(wire::message_id(&delivery.properties)) {
            self.shared.break_channel(source);
        }
        Ok(Job {
            delivery,
            queue: queue.clone(),
            checked,
            ticket,
            in_flight,
        })
    }

    /// What lapin still holds of `source`'s stream (of every queue's with
    /// `None`), read without waiting: deliveries no consumer started. Each
    /// is admitted to the ledger while its channel is the ledger's, so
    /// that it can be settled (with its ticket); once the channel is gone
    /// it is read as it is, and the broker delivers it again.
    pub fn unstarted(&self, source: Option<usize>) -> Vec<Unstarted> {
        let streams: Vec<Stream> = self
            .streams()
            .iter()
            .filter(|(channel, _)| source.is_none_or(|source| channel.source() == source))
            .cloned()
            .collect();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut unstarted = Vec::new();
        for (channel, mut stream) in streams {
            let mut poll =
                || futures_lite::Stream::poll_next(std::pin::Pin::new(&mut stream), &mut cx);
            loop {
                let (delivery, ticket) = if self.shared.owns_channel(&channel) {
                    match self.shared.take(&channel, &mut poll) {
                        Poll::Ready(Some(Ok((delivery, ticket)))) => (delivery, Some(ticket)),
                        _ => break,
                    }
                } else {
                    match poll() {
                        Poll::Ready(Some(Ok(delivery))) => (delivery, None),
                        _ => break,
                    }
                };
                unstarted.push(Unstarted {
                    queue: self.shared.names()[channel.source()].clone(),
                    delivery,
                    ticket,
                });
            }
        }
        unstarted
    }

    /// Marks a job's ack answer; `Err` when it cannot be settled here (its
    /// channel is gone).
    pub fn ack(&self, job: &Job, answer: Answer) -> Result<(), Answer> {
        self.shared.mark_ack(job, answer)
    }
}

/// The limit's word on one delivery.
pub struct Judged {
    pub verdict: Verdict,
    /// The attempts made on it, this delivery's predecessors counted.
    pub made: u32,
    /// The topic its sealed count restores.
    pub topic: Option<String>,
}

/// Whether [`judge`] says what it does not believe (the lane does, once
/// per message; reading what is given back does not).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Doubts {
    Logged,
    Quiet,
}

/// The limit's verdict on a delivery from `queue`.
pub fn judge(policy: &Policy, queue: &str, delivery: &Delivery, doubts: Doubts) -> Judged {
    let fields = Fields::of(queue, delivery);
    if limit::came_back(&policy.seal, &fields) {
        return Judged {
            verdict: Verdict::CameBack,
            made: 0,
            topic: None,
        };
    }
    // Only a redelivery can be one this process gave back.
    let remembered = delivery
        .redelivered
        .then(|| policy.remembered.take(limit::fingerprint(&fields)))
        .flatten();
    let seen = Seen {
        redelivered: delivery.redelivered,
        headers: fields.headers,
        quorum: policy.is_quorum(queue),
        remembered,
    };
    let (found, doubt) = limit::read_count(&policy.seal, &fields, &seen);
    if let (Some(doubt), Doubts::Logged) = (doubt, doubts) {
        log::warn!("Message {} {doubt}", wire::message_id(&delivery.properties));
    }
    let (attempts, topic) = match found {
        Found::Sealed { attempts, topic } => (attempts, Some(topic)),
        Found::Nothing => (0, None),
    };
    let verdict = limit::judge(policy.max, &seen, attempts);
    let made = verdict.made_from(attempts);
    Judged {
        verdict,
        made,
        topic,
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
