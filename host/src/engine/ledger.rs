//! The ledger of one channel set-up: the queues' channels and consumer
//! tags, the delivery tags not settled yet, and whether those channels
//! still live.
//!
//! A delivery is admitted as a [`Ticket`]; the job carries it to a worker
//! and back. Only the ledger that issued a ticket can settle its job, and
//! only while it lives: once it is retired (its channel or connection
//! ended, the set-up was given up, or the ledger was dropped) every ticket
//! it issued is dead at once, so a worker never starts such a job and the
//! engine never tries to settle it. The broker delivers those messages
//! again.
//!
//! Acks are what make a consumer fast or slow: each frame is a wake-up of
//! lapin's I/O thread, and each awaited one a wake-up of the engine. So an
//! ack answer is not sent at once: it is marked, and once half the
//! prefetch of answers are marked (as a hand-tuned consumer does), or
//! [`FLUSH_AFTER`] after the first one, one `basic.ack` with `multiple`
//! covers the lowest run of marked tags, never a tag still pending, in
//! flight or unstarted; a marked tag behind one still in flight is acked
//! on its own, so a slow message never holds the acks of quicker ones
//! back. Everything marked is sent before anything that could settle it
//! otherwise or be lost with it: a nack or reject, a requeue of all, the
//! channels' end.
//! Sent acks are not awaited where they are sent: the engine takes them
//! with its other events ([`Ledger::taken`]), and one not taken within
//! [`bounded`]'s limit means the connection is dead. Nacks and rejects are
//! rare and settled one by one, awaited; lapin's `Ok(false)` (an acker
//! poisoned by a closed channel) is a settlement that did not happen, and
//! is said so.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{FieldTable, ShortString};

use super::workers::Job;
use super::{BROKER_STEP, bounded, seams};
use crate::outcome::{Outcome, Settle};
use crate::topology::{broker_code, broker_reply};
use crate::wire;

/// A delivery's place in the ledger that admitted it.
#[derive(Debug, Clone)]
pub struct Ticket {
    life: Arc<AtomicBool>,
    /// Which of the ledger's queues delivered it.
    source: usize,
}

impl Ticket {
    /// Whether the ledger that issued it still lives.
    pub fn is_live(&self) -> bool {
        self.life.load(Ordering::SeqCst)
    }
}

/// One queue being consumed, on a channel of its own.
pub struct QueueChannel {
    /// The queue (the broker's name for a server-named queue).
    pub queue: Arc<str>,
    pub channel: Channel,
    pub consumer_tag: ShortString,
}

/// A consumer's answer and how long it took to give it: what the
/// statistics count once its settlement is taken.
pub type Answer = (Outcome, Duration);

/// The longest an ack answer waits to be sent with others.
pub const FLUSH_AFTER: Duration = Duration::from_millis(5);

/// What a batch's settlement came to.
pub struct Settlement {
    /// The answers settled now (acks are settled later, when
    /// [`Ledger::taken`] says so).
    pub settled: Vec<Answer>,
    /// A request was not taken within [`bounded`]'s limit: the connection
    /// is presumed dead, and the ledger is retired.
    pub hung: bool,
}

/// What became of acks marked or sent earlier.
pub enum Taken {
    /// lapin took them (those it could not take, their channel gone, are
    /// logged: the broker delivers those messages again); the answers
    /// they settled.
    Acks(Vec<Answer>),
    /// Marked acks have waited [`FLUSH_AFTER`]: send them
    /// ([`Ledger::send_marked`]).
    FlushDue,
    /// One was not taken within [`bounded`]'s limit: the connection is
    /// presumed dead, and the ledger is retired.
    Hung,
}

/// A delivery admitted and not settled yet.
struct Admitted {
    tag: u64,
    state: State,
}

enum State {
    /// With a worker, or waiting for one.
    Handed,
    /// Answered with an ack not sent yet.
    Acked(Answer),
    /// Settled on its own, and the request is out: an ack with `multiple`
    /// sent later may pass over it.
    Settled,
}

/// An ack (with `multiple` or not) handed to lapin and not yet taken.
struct SentAck {
    taken: Pin<Box<dyn Future<Output = lapin::Result<()>> + Send>>,
    answers: Vec<Answer>,
    source: usize,
    since: Instant,
}

/// What forwarding a delivery (a copy published elsewhere, the original
/// acked) came to.
pub enum Forwarded {
    /// The broker confirmed the copy and took the ack.
    Done,
    /// The broker had nowhere to route the copy; the original is not
    /// settled.
    Unroutable(Box<Delivery>),
    /// The publishing channel failed (it is closed now): set the channels
    /// up again. The original is not settled.
    Failed(String),
    /// The broker does not let this user publish there (403); trying
    /// again cannot help.
    Forbidden(String),
    /// A request was not taken in time: the connection is presumed dead.
    Hung,
}

pub struct Ledger {
    life: Arc<AtomicBool>,
    queues: Vec<QueueChannel>,
    /// A channel in confirm mode, for the delivery limit's copies.
    publisher: Option<Channel>,
    /// Per queue, the deliveries admitted and not settled, in delivery
    /// order (the broker's tags rise on a channel).
    unsettled: Vec<VecDeque<Admitted>>,
    /// Ack answers marked and not sent, over all queues.
    marked: usize,
    /// How many marked answers are sent together.
    ack_every: usize,
    /// Each queue's QoS: deliveries the broker sends before it waits for
    /// acks.
    prefetch_count: usize,
    /// When the marked answers are sent whatever their number.
    flush: async_io::Timer,
    flush_armed: bool,
    /// Acks sent, oldest first, and when the oldest is overdue.
    sent: VecDeque<SentAck>,
    overdue: async_io::Timer,
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.retire();
    }
}

impl Ledger {
    /// `prefetch_count` sets how many acks go together: half of it, as a
    /// hand-tuned consumer does, so the broker always has room to send.
    pub fn new(
        queues: Vec<QueueChannel>,
        publisher: Option<Channel>,
        prefetch_count: u16,
    ) -> Ledger {
        let unsettled = queues.iter().map(|_| VecDeque::new()).collect();
        Ledger {
            life: Arc::new(AtomicBool::new(true)),
            queues,
            publisher,
            unsettled,
            marked: 0,
            ack_every: usize::from(prefetch_count / 2).max(1),
            prefetch_count: usize::from(prefetch_count),
            flush: async_io::Timer::never(),
            flush_armed: false,
            sent: VecDeque::new(),
            overdue: async_io::Timer::never(),
        }
    }

    pub fn queues(&self) -> &[QueueChannel] {
        &self.queues
    }

    pub fn is_live(&self) -> bool {
        self.life.load(Ordering::SeqCst)
    }

    /// The channels are gone or given up: every ticket dies now.
    pub fn retire(&self) {
        self.life.store(false, Ordering::SeqCst);
    }

    /// Whether this ledger issued `ticket` and can still settle its job.
    pub fn owns(&self, ticket: &Ticket) -> bool {
        self.is_live() && Arc::ptr_eq(&self.life, &ticket.life)
    }

    /// Admits a checked delivery of queue `source`.
    pub fn admit(&mut self, source: usize, delivery_tag: u64) -> Ticket {
        let unsettled = &mut self.unsettled[source];
        debug_assert!(unsettled.back().is_none_or(|last| last.tag < delivery_tag));
        unsettled.push_back(Admitted {
            tag: delivery_tag,
            state: State::Handed,
        });
        Ticket {
            life: self.life.clone(),
            source,
        }
    }

    /// Settles answered jobs this ledger owns, each as its action says:
    /// acks are marked (and sent once enough are), the others settled now.
    pub async fn settle(&mut self, batch: Vec<(Job, Settle, Answer)>) -> Settlement {
        let mut others = Vec::new();
        for (job, action, answer) in batch {
            debug_assert!(self.owns(&job.ticket));
            // (The hang seam needs the message settled on its own.)
            if action == Settle::Ack && !seams::get().hangs_settle_of(job.message_id()) {
                let tag = job.delivery.delivery_tag;
                match self.find(job.ticket.source, tag) {
                    Some(admitted) => {
                        admitted.state = State::Acked(answer);
                        self.marked += 1;
                    }
                    None => log::error!(
                        "Message {} was answered but is not in the ledger (please report this bug); the broker will deliver it again",
                        job.message_id()
                    ),
                }
            } else {
                others.push((job, action, answer));
            }
        }
        let mut settled = Vec::with_capacity(others.len());
        if !others.is_empty() {
            // Acks answered before go out first: settling one of these may
            // hang, and what was answered must not be lost with it.
            self.send_marked().await;
        }
        for (job, action, answer) in others {
            let (source, tag) = (job.ticket.source, job.delivery.delivery_tag);
            let outcome = settle_one(job.delivery, action).await;
            if let Some(admitted) = self.find(source, tag) {
                admitted.state = State::Settled;
            }
            match outcome {
                Some(true) => settled.push(answer),
                Some(false) => {}
                None => return self.hung(settled),
            }
        }
        if self.marked >= self.ack_every {
            self.send_marked().await;
        } else if self.marked > 0 && !self.flush_armed {
            self.flush.set_after(FLUSH_AFTER);
            self.flush_armed = true;
        }
        Settlement {
            settled,
            hung: false,
        }
    }

    fn find(&mut self, source: usize, tag: u64) -> Option<&mut Admitted> {
        let unsettled = &mut self.unsettled[source];
        let index = unsettled
            .binary_search_by_key(&tag, |admitted| admitted.tag)
            .ok()?;
        unsettled.get_mut(index)
    }

    /// How many more deliveries the broker may send before it waits for
    /// acks (over all queues; a marked ack still counts against it).
    pub fn room(&self) -> usize {
        self.unsettled
            .iter()
            .map(|unsettled| self.prefetch_count.saturating_sub(unsettled.len()))
            .sum()
    }

    /// Whether marked acks wait to be sent.
    pub fn has_marked(&self) -> bool {
        self.marked > 0
    }

    /// Sends every marked ack: per queue, one with `multiple` for the
    /// lowest run of settled tags, and one of its own for each marked tag
    /// behind a tag still handed out. The requests are out, in order,
    /// before this returns; [`Ledger::taken`] says when lapin took them.
    pub async fn send_marked(&mut self) {
        if self.flush_armed {
            // Dropping the timer takes it out of the reactor, which would
            // otherwise wake the engine for nothing.
            self.flush = async_io::Timer::never();
            self.flush_armed = false;
        }
        if self.marked == 0 {
            return;
        }
        self.marked = 0;
        for source in 0..self.queues.len() {
            let unsettled = &mut self.unsettled[source];
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
            let mut acks = Vec::new();
            if let Some(last) = last {
                acks.push((last, true, answers));
            }
            for admitted in unsettled.iter_mut() {
                if matches!(admitted.state, State::Acked(_))
                    && let State::Acked(answer) =
                        std::mem::replace(&mut admitted.state, State::Settled)
                {
                    acks.push((admitted.tag, false, vec![answer]));
                }
            }
            for (tag, multiple, answers) in acks {
                let channel = self.queues[source].channel.clone();
                let mut taken: Pin<Box<dyn Future<Output = lapin::Result<()>> + Send>> = Box::pin(
                    async move { channel.basic_ack(tag, BasicAckOptions { multiple }).await },
                );
                // The first poll hands the frame to lapin, in order.
                if let Some(result) = futures_lite::future::poll_once(&mut taken).await {
                    taken = Box::pin(std::future::ready(result));
                }
                if self.sent.is_empty() {
                    self.overdue.set_after(BROKER_STEP);
                }
                self.sent.push_back(SentAck {
                    taken,
                    answers,
                    source,
                    since: Instant::now(),
                });
            }
        }
    }

    /// Resolves when marked acks are due to be sent, or when sent acks
    /// were taken or one is overdue; pending forever while there is none
    /// of these.
    pub async fn taken(&mut self) -> Taken {
        futures_lite::future::poll_fn(|cx| {
            if self.flush_armed && Pin::new(&mut self.flush).poll(cx).is_ready() {
                return Poll::Ready(Taken::FlushDue);
            }
            let mut answers = Vec::new();
            while let Some(front) = self.sent.front_mut() {
                match front.taken.as_mut().poll(cx) {
                    Poll::Ready(result) => {
                        let Some(sent) = self.sent.pop_front() else {
                            break;
                        };
                        answers.extend(taken_answers(
                            &self.queues,
                            sent.source,
                            sent.answers,
                            result,
                        ));
                    }
                    Poll::Pending => break,
                }
            }
            // The timer is set for the oldest ack when it is sent, and
            // moved on to the one then oldest only when it fires.
            if let Some(front) = self.sent.front()
                && Pin::new(&mut self.overdue).poll(cx).is_ready()
            {
                if front.since.elapsed() >= BROKER_STEP {
                    log::warn!(
                        "settling messages: no answer from the broker within {BROKER_STEP:?}"
                    );
                    self.retire();
                    return Poll::Ready(Taken::Hung);
                }
                self.overdue.set_at(front.since + BROKER_STEP);
                // Polled again so the timer's waker is this task's.
                let _ = Pin::new(&mut self.overdue).poll(cx);
            }
            if answers.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(Taken::Acks(answers))
            }
        })
        .await
    }

    /// Sends what is marked and waits, for at most [`bounded`]'s limit,
    /// until lapin took every ack sent: before the channels close, so that
    /// nothing consumed is delivered again. The answers they settled;
    /// `None` if they were not taken in time.
    pub async fn settle_sent(&mut self) -> Option<Vec<Answer>> {
        self.send_marked().await;
        let mut answers = Vec::new();
        let all = async {
            for sent in self.sent.drain(..) {
                let result = sent.taken.await;
                answers.extend(taken_answers(
                    &self.queues,
                    sent.source,
                    sent.answers,
                    result,
                ));
            }
        };
        bounded("settling messages", all).await?;
        Some(answers)
    }

    fn hung(&self, settled: Vec<Answer>) -> Settlement {
        self.retire();
        Settlement {
            settled,
            hung: true,
        }
    }

    /// Publishes a copy of a delivery that was never admitted to
    /// `exchange` with `routing_key` and `headers` (its other properties
    /// and its body as they were), waits for the broker's confirm, then
    /// acks the original: at-least-once, never lost in between.
    pub async fn forward(
        &self,
        delivery: Delivery,
        exchange: &str,
        routing_key: &str,
        headers: FieldTable,
    ) -> Forwarded {
        let Some(publisher) = &self.publisher else {
            return Forwarded::Failed("no publishing channel (please report this bug)".to_owned());
        };
        let properties = delivery.properties.clone().with_headers(headers);
        let confirmed = async {
            let confirm = publisher
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &delivery.data,
                    properties,
                )
                .await?;
            confirm.await
        };
        match bounded("publishing a copy of a message", confirmed).await {
            None => Forwarded::Hung,
            Some(Err(error)) if broker_code(&error) == Some(403) => Forwarded::Forbidden(format!(
                "the broker does not let this user publish to exchange {exchange:?}: {}",
                broker_reply(&error)
            )),
            Some(Err(error)) => Forwarded::Failed(format!(
                "publishing a copy of message {} to exchange {exchange:?} failed: {error}",
                wire::message_id(&delivery.properties)
            )),
            Some(Ok(lapin::Confirmation::Ack(None))) => {
                match settle_one(delivery, Settle::Ack).await {
                    Some(_) => Forwarded::Done,
                    None => Forwarded::Hung,
                }
            }
            Some(Ok(lapin::Confirmation::Ack(Some(_)))) => {
                Forwarded::Unroutable(Box::new(delivery))
            }
            Some(Ok(confirmation)) => Forwarded::Failed(format!(
                "the broker did not take a copy of message {} for exchange {exchange:?} ({confirmation:?})",
                wire::message_id(&delivery.properties)
            )),
        }
    }

    /// Rejects a delivery that was never admitted (it failed the checks);
    /// `false` when the request was not taken in time.
    #[must_use]
    pub async fn reject(&self, delivery: Delivery) -> bool {
        settle_one(delivery, Settle::Reject).await.is_some()
    }

    /// After a failure, once no worker holds a message: every delivery
    /// still unsettled on the channels (prefetched, never handed out) goes
    /// back to its queue, as fedora-messaging does with one `basic.nack`
    /// of tag 0 with `multiple`. `false` when a channel did not take it in
    /// time.
    #[must_use]
    pub async fn requeue_all(&mut self) -> bool {
        // What was answered with an ack must not go back with the rest.
        self.send_marked().await;
        for queue in &self.queues {
            let requeue = queue.channel.basic_nack(
                0,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            );
            match bounded("returning unsettled messages", requeue).await {
                Some(Ok(())) => {}
                Some(Err(error)) => log::warn!(
                    "Could not return the unsettled messages of queue {:?}: {error}; closing the channel returns them",
                    queue.queue
                ),
                None => return false,
            }
        }
        true
    }

    /// Asks the broker to stop delivering to our consumers; what it
    /// already delivered and we did not settle goes back when the channels
    /// close.
    pub async fn cancel_all(&self) {
        for queue in &self.queues {
            let cancel = queue
                .channel
                .basic_cancel(queue.consumer_tag.clone(), BasicCancelOptions::default());
            if let Some(Err(error)) = bounded("cancelling a consumer", cancel).await {
                log::debug!("cancelling the consumer of {:?}: {error}", queue.queue);
            }
        }
    }

    /// Retires the ledger and closes its channels (the broker requeues
    /// what they hold unsettled).
    pub async fn close(&self, reason: &str) {
        self.retire();
        let channels = self.queues.iter().map(|queue| &queue.channel);
        for channel in channels.chain(&self.publisher) {
            bounded("closing a channel", channel.close(200, reason.into())).await;
        }
    }

    /// The `FM_TEST_BREAK_CHANNEL_ON` seam: acknowledges a tag the broker
    /// never gave on `source`'s channel, which the broker answers by
    /// closing the channel.
    pub async fn break_channel(&self, source: usize) {
        let channel = &self.queues[source].channel;
        let bogus = channel.basic_ack(u64::MAX / 2, BasicAckOptions::default());
        let _ = bounded("breaking a channel (test seam)", bogus).await;
    }
}

/// The answers an ack of `source`'s channel settled once lapin took it;
/// none when it could not (said so: the broker delivers them again).
fn taken_answers(
    queues: &[QueueChannel],
    source: usize,
    answers: Vec<Answer>,
    result: lapin::Result<()>,
) -> Vec<Answer> {
    match result {
        Ok(()) => answers,
        Err(error) => {
            log::warn!(
                "Could not acknowledge {} message(s) of queue {:?}: {error}; the broker will deliver them again",
                answers.len(),
                queues[source].queue
            );
            Vec::new()
        }
    }
}

/// Settles one delivery as the outcome table says; taking the delivery by
/// value means it cannot be settled twice (a second settle would close the
/// channel). `Some(true)` settled; `Some(false)` not settled (logged: the
/// broker delivers it again); `None` when the library did not take the
/// settlement within [`bounded`]'s limit: the connection is dead but not
/// yet known to be, and waiting on it would stop consumption silently.
async fn settle_one(delivery: Delivery, action: Settle) -> Option<bool> {
    let hang = seams::get().hangs_settle_of(wire::message_id(&delivery.properties));
    let settling = async {
        if hang {
            futures_lite::future::pending::<()>().await;
        }
        match action {
            Settle::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
            // After a failure, the other unsettled messages follow once no
            // worker holds one (requeue_all), so none is settled twice.
            Settle::Requeue | Settle::RequeueAllUnsettled => {
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await
            }
            Settle::Reject => {
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: false,
                    })
                    .await
            }
        }
    };
    let settled = bounded("settling a message", settling).await;
    let id = wire::message_id(&delivery.properties);
    match settled {
        Some(Ok(true)) => Some(true),
        Some(Ok(false)) => {
            log::warn!(
                "Could not settle message {id} ({action:?}): its channel has closed; the broker will deliver it again"
            );
            Some(false)
        }
        Some(Err(error)) => {
            log::warn!(
                "Could not settle message {id} ({action:?}): {error}; the broker will deliver it again"
            );
            Some(false)
        }
        None => None,
    }
}
