//! The settler of one channel set-up: the queues' channels, and the
//! broker I/O that carries out what the book ([`super::book`]) decides:
//! acks (coalesced), nacks and rejects, the delivery limit's forwards, a
//! requeue of all, cancels and closes.
//!
//! The book is shared by the engine and the consumer threads: a consumer
//! thread admits each delivery it takes from a queue's stream and marks
//! the ack of each it answers, and the engine settles everything else. It
//! is only ever held for a few non-blocking steps, never across a wait.
//!
//! Each queue's channel has a kill switch that its tickets share
//! ([`ChannelRef`]): once it is thrown (the channel or connection ended,
//! the set-up was given up, or the ledger was dropped) no consumer starts
//! a job of that channel and nothing tries to settle one. The broker
//! delivers those messages again.
//!
//! Marked acks are sent once the book says enough are marked, or
//! [`FLUSH_AFTER`] after the first one, and before anything that could
//! settle them otherwise or be lost with them: a nack or reject, a requeue
//! of all, the channels' end. They are sent while the book is held, so
//! they leave in the order of their tags whichever thread sends them. Sent
//! acks are not awaited where they are sent: the engine takes them with
//! its other events ([`Ledger::taken`]), and one not taken within
//! [`bounded`]'s limit means the connection is dead. Nacks and rejects
//! are rare and settled one by one, awaited; lapin's `Ok(false)` (an acker
//! poisoned by a closed channel) is a settlement that did not happen, and
//! is said so.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{FieldTable, ShortString};

use super::book::{Ack, Book};
use super::deadline::{BROKER_STEP, all, bounded};
use super::message::{Answer, ChannelRef, Job, Ticket};
use super::seams;
use crate::outcome::Settle;
use crate::topology::{broker_code, broker_reply};
use crate::wire;

/// One queue being consumed, on a channel of its own.
#[derive(Clone)]
pub struct QueueChannel {
    /// The queue (the broker's name for a server-named queue).
    pub queue: Arc<str>,
    pub channel: Channel,
    pub consumer_tag: ShortString,
}

/// The longest an ack answer waits to be sent with others. It only acts
/// when messages come slower than half the prefetch per this time: faster,
/// the count sends them first. Shorter is dearer than it looks: each early
/// ack lets the broker send the next deliveries in smaller bursts, and at
/// 5 ms the host spent about a quarter more CPU per message at prefetch
/// 1000 (more reads and wake-ups of lapin's I/O thread).
pub const FLUSH_AFTER: Duration = Duration::from_millis(50);

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
    /// The broker confirmed the copy, but the original's channel closed
    /// before it was acked: the broker delivers the original again too.
    Doubled,
    /// The broker had nowhere to route the copy; the original is not
    /// settled.
    Unroutable(Box<Delivery>),
    /// The broker would not store the copy (a `basic.nack`: a queue at its
    /// length limit with `x-overflow = reject-publish`); the original is
    /// not settled, and the channel lives.
    Refused(Box<Delivery>),
    /// The publishing channel failed (it is closed now): open another.
    /// The original is given back unsettled.
    Failed(String, Box<Delivery>),
    /// The broker does not let this user publish there (403); trying
    /// again cannot help.
    Forbidden(String),
    /// The broker blocks the publishing connection (a memory or disk
    /// alarm): the copy did not go out, or was not confirmed in time. The
    /// original is not settled, and nothing is wrong with the connection.
    Blocked(Box<Delivery>),
    /// A request was not taken in time: the connection is presumed dead.
    Hung,
}

/// What the engine and the consumer threads share of a ledger.
pub struct Shared {
    /// Each queue's name, in the set-up's order: a queue keeps its place
    /// when its channel is replaced.
    names: Vec<Arc<str>>,
    desk: Mutex<Desk>,
}

/// One queue's channel now, and its kill switch.
struct Slot {
    queue: QueueChannel,
    life: Arc<AtomicBool>,
}

impl Slot {
    fn new(queue: QueueChannel) -> Slot {
        Slot {
            queue,
            life: Arc::new(AtomicBool::new(true)),
        }
    }

    fn is_live(&self) -> bool {
        self.life.load(Ordering::SeqCst)
    }
}

/// The book, the channels it settles on, and the acks on their way.
struct Desk {
    book: Book<Answer>,
    slots: Vec<Slot>,
    /// When the marked answers are sent whatever their number; it wakes
    /// the engine, whichever thread armed it.
    flush: async_io::Timer,
    flush_armed: bool,
    /// The engine's task, as of its last look at the book.
    engine: Option<Waker>,
    /// Acks sent, oldest first.
    sent: VecDeque<SentAck>,
}

impl Shared {
    /// Each queue's name, in the set-up's order.
    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }

    /// Whether this ledger issued `ticket` and can still settle its job.
    pub fn owns(&self, ticket: &Ticket) -> bool {
        self.owns_channel(&ticket.channel)
    }

    /// Whether `channel` is one of this ledger's, still alive.
    pub fn owns_channel(&self, channel: &ChannelRef) -> bool {
        self.desk().owns(channel)
    }

    /// `source`'s channel now, as its deliveries know it.
    pub fn channel(&self, source: usize) -> ChannelRef {
        ChannelRef::new(self.desk().slots[source].life.clone(), source)
    }

    fn retire(&self) {
        for slot in &self.desk().slots {
            slot.life.store(false, Ordering::SeqCst);
        }
    }

    fn desk(&self) -> MutexGuard<'_, Desk> {
        // A thread that panicked holding the desk left it whole: every
        // step under it is a few field updates.
        self.desk
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the next delivery of `channel`'s stream from `poll_stream`
    /// and admits it, in one step under the book, so that tags are
    /// admitted in the order the broker gave them even when several
    /// threads read the stream: an ack with `multiple` never passes over a
    /// delivery taken and not yet admitted. Pending, without polling, once
    /// the channel is gone (the broker delivers what lapin still holds
    /// again).
    pub fn take(
        &self,
        channel: &ChannelRef,
        poll_stream: impl FnOnce() -> Poll<Option<lapin::Result<Delivery>>>,
    ) -> Poll<Option<lapin::Result<(Delivery, Ticket)>>> {
        let mut desk = self.desk();
        if !desk.owns(channel) {
            return Poll::Pending;
        }
        match poll_stream() {
            Poll::Ready(Some(Ok(delivery))) => {
                desk.book.admit(channel.source(), delivery.delivery_tag);
                let ticket = Ticket {
                    channel: channel.clone(),
                    tag: delivery.delivery_tag,
                };
                Poll::Ready(Some(Ok((delivery, ticket))))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Marks an ack answer of a job this ledger admitted, and sends the
    /// marked acks once there are enough. `Err` when its channel is gone
    /// or the book does not know the job: it is not settled.
    pub fn mark_ack(&self, job: &Job, answer: Answer) -> Result<(), Answer> {
        let mut desk = self.desk();
        if !desk.owns(&job.ticket.channel) {
            return Err(answer);
        }
        desk.mark(job, answer)?;
        desk.after_marking();
        Ok(())
    }

    /// The `FM_TEST_BREAK_CHANNEL_ON` seam: acknowledges a tag the broker
    /// never gave on `source`'s channel, which the broker answers by
    /// closing the channel.
    pub fn break_channel(&self, source: usize) {
        let channel = self.desk().slots[source].queue.channel.clone();
        let mut bogus = Box::pin(async move {
            channel
                .basic_ack(u64::MAX / 2, BasicAckOptions::default())
                .await
        });
        // The first poll hands the frame to lapin; its answer does not
        // matter.
        let _ = bogus.as_mut().poll(&mut Context::from_waker(Waker::noop()));
    }
}

impl Desk {
    /// Whether `channel` is the live channel of its queue.
    fn owns(&self, channel: &ChannelRef) -> bool {
        self.slots
            .get(channel.source())
            .is_some_and(|slot| channel.is(&slot.life))
            && channel.is_live()
    }

    /// `source`'s channel is gone: its tickets die, and the book forgets
    /// its tags.
    fn retire_slot(&mut self, source: usize) {
        self.slots[source].life.store(false, Ordering::SeqCst);
        self.book.forget(source);
    }

    /// Marks `job`'s ack; `Err` (said so) if the book does not know it.
    fn mark(&mut self, job: &Job, answer: Answer) -> Result<(), Answer> {
        self.book
            .mark(job.ticket.source(), job.ticket.tag, answer)
            .inspect_err(|_| {
                log::error!(
                    "Message {} was answered but is not in the ledger (please report this bug); the broker will deliver it again",
                    job.message_id()
                );
            })
    }

    /// Sends the marked acks if there are enough, or makes sure they are
    /// sent within [`FLUSH_AFTER`].
    fn after_marking(&mut self) {
        if self.book.ack_due() {
            self.send_marked();
        } else if self.book.marked() > 0 && !self.flush_armed {
            self.flush.set_after(FLUSH_AFTER);
            self.flush_armed = true;
            // Registered with the engine's task whichever thread armed it;
            // until the engine has looked at the book once, it registers
            // the timer itself ([`Ledger::taken`] polls an armed timer).
            if let Some(engine) = &self.engine {
                let _ = Pin::new(&mut self.flush).poll(&mut Context::from_waker(engine));
            }
        }
    }

    /// Sends every marked ack as the book groups them. The requests are
    /// out, in order, before this returns; [`Ledger::taken`] says when
    /// lapin took them.
    fn send_marked(&mut self) {
        for Ack {
            source,
            tag,
            multiple,
            answers,
        } in self.book.take_acks()
        {
            let channel = self.slots[source].queue.channel.clone();
            let mut taken: Pin<Box<dyn Future<Output = lapin::Result<()>> + Send>> =
                Box::pin(async move { channel.basic_ack(tag, BasicAckOptions { multiple }).await });
            // The first poll hands the frame to lapin, in order; the
            // engine polls it again with its own task.
            if let Poll::Ready(result) =
                taken.as_mut().poll(&mut Context::from_waker(Waker::noop()))
            {
                taken = Box::pin(std::future::ready(result));
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

/// Where the delivery limit's copies go out: a channel in confirm mode on
/// the publishing connection, and that connection's state.
pub struct Publisher {
    pub channel: Channel,
    pub connection: lapin::ConnectionStatus,
}

/// The engine's side of a ledger.
pub struct Ledger {
    shared: Arc<Shared>,
    publisher: Option<Publisher>,
    /// When the oldest sent ack is overdue.
    overdue: async_io::Timer,
    overdue_armed: bool,
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
        publisher: Option<Publisher>,
        prefetch_count: u16,
    ) -> Ledger {
        let names = queues.iter().map(|queue| queue.queue.clone()).collect();
        let desk = Desk {
            book: Book::new(queues.len(), usize::from(prefetch_count / 2)),
            slots: queues.into_iter().map(Slot::new).collect(),
            flush: async_io::Timer::never(),
            flush_armed: false,
            engine: None,
            sent: VecDeque::new(),
        };
        Ledger {
            shared: Arc::new(Shared {
                names,
                desk: Mutex::new(desk),
            }),
            publisher,
            overdue: async_io::Timer::never(),
            overdue_armed: false,
        }
    }

    /// What the consumer threads share.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Each queue's name, in the set-up's order.
    pub fn names(&self) -> &[Arc<str>] {
        &self.shared.names
    }

    /// `source`'s queue and its channel now.
    pub fn queue(&self, source: usize) -> QueueChannel {
        self.shared.desk().slots[source].queue.clone()
    }

    /// `source`'s channel now, as its deliveries know it.
    pub fn channel(&self, source: usize) -> ChannelRef {
        self.shared.channel(source)
    }

    /// A queue whose channel lapin knows is closed, and this ledger does
    /// not know yet.
    pub fn closed_channel(&self) -> Option<usize> {
        self.shared
            .desk()
            .slots
            .iter()
            .position(|slot| slot.is_live() && !slot.queue.channel.status().connected())
    }

    /// `source`'s channel is gone: its tickets die now, its tags are
    /// forgotten (the broker delivers those messages again), and the
    /// others go on. Its channel, to close.
    pub fn retire_channel(&self, source: usize) -> Channel {
        let mut desk = self.shared.desk();
        desk.retire_slot(source);
        desk.slots[source].queue.channel.clone()
    }

    /// `source` consumes on `queue`'s new channel from now on.
    pub fn replace_channel(&self, source: usize, queue: QueueChannel) -> ChannelRef {
        let mut desk = self.shared.desk();
        desk.retire_slot(source);
        desk.slots[source] = Slot::new(queue);
        ChannelRef::new(desk.slots[source].life.clone(), source)
    }

    /// The delivery limit's copies go out on `publisher` from now on.
    pub fn replace_publisher(&mut self, publisher: Publisher) {
        self.publisher = Some(publisher);
    }

    /// The live queues and their channels.
    fn live_queues(&self) -> Vec<QueueChannel> {
        self.shared
            .desk()
            .slots
            .iter()
            .filter(|slot| slot.is_live())
            .map(|slot| slot.queue.clone())
            .collect()
    }

    /// The channels are gone or given up: every ticket dies now.
    pub fn retire(&self) {
        self.shared.retire();
    }

    /// Whether this ledger issued `ticket` and can still settle its job.
    pub fn owns(&self, ticket: &Ticket) -> bool {
        self.shared.owns(ticket)
    }

    /// Whether `channel` is one of this ledger's, still alive.
    pub fn owns_channel(&self, channel: &ChannelRef) -> bool {
        self.shared.owns_channel(channel)
    }

    /// Settles answered jobs this ledger owns, each as its action says:
    /// acks are marked (and sent once enough are), the others settled now.
    pub async fn settle(&mut self, batch: Vec<(Job, Settle, Answer)>) -> Settlement {
        let mut others = Vec::new();
        {
            let mut desk = self.shared.desk();
            for (job, action, answer) in batch {
                debug_assert!(desk.owns(&job.ticket.channel));
                // (The settlement seams need the message settled on its own.)
                if action == Settle::Ack && !seams::get().needs_engine(job.message_id()) {
                    let _ = desk.mark(&job, answer);
                } else {
                    others.push((job, action, answer));
                }
            }
            if !others.is_empty() {
                // Acks answered before go out first: settling one of these
                // may hang, and what was answered must not be lost with it.
                desk.send_marked();
            }
        }
        let mut settled = Vec::with_capacity(others.len());
        for (job, action, answer) in others {
            let ticket = job.ticket.clone();
            let outcome = settle_one(job.delivery, action).await;
            self.settled_elsewhere(&ticket);
            match outcome {
                Some(true) => settled.push(answer),
                Some(false) => {}
                None => return self.hung(settled),
            }
        }
        self.shared.desk().after_marking();
        Settlement {
            settled,
            hung: false,
        }
    }

    /// Sends every marked ack now.
    pub fn send_marked(&self) {
        self.shared.desk().send_marked();
    }

    /// A delivery admitted to this ledger was settled without the book
    /// (rejected or forwarded by the engine): acks with `multiple` may
    /// pass over it.
    pub fn settled_elsewhere(&self, ticket: &Ticket) {
        let mut desk = self.shared.desk();
        if desk.owns(&ticket.channel) {
            desk.book.settled(ticket.source(), ticket.tag);
        }
    }

    /// Resolves when marked acks are due to be sent, or when sent acks
    /// were taken or one is overdue; pending forever while there is none
    /// of these.
    pub async fn taken(&mut self) -> Taken {
        futures_lite::future::poll_fn(|cx| {
            let mut desk = self.shared.desk();
            if !desk
                .engine
                .as_ref()
                .is_some_and(|engine| engine.will_wake(cx.waker()))
            {
                desk.engine = Some(cx.waker().clone());
            }
            if desk.flush_armed && Pin::new(&mut desk.flush).poll(cx).is_ready() {
                desk.flush_armed = false;
                return Poll::Ready(Taken::FlushDue);
            }
            let mut answers = Vec::new();
            while let Some(front) = desk.sent.front_mut() {
                match front.taken.as_mut().poll(cx) {
                    Poll::Ready(result) => {
                        let Some(sent) = desk.sent.pop_front() else {
                            break;
                        };
                        answers.extend(taken_answers(
                            &self.shared.names,
                            sent.source,
                            sent.answers,
                            result,
                        ));
                    }
                    Poll::Pending => break,
                }
            }
            // The timer is set for the oldest ack when the engine first
            // sees it, and moved on to the one then oldest only when it
            // fires.
            match desk.sent.front() {
                Some(front) if !self.overdue_armed => {
                    self.overdue.set_at(front.since + BROKER_STEP);
                    self.overdue_armed = true;
                    let _ = Pin::new(&mut self.overdue).poll(cx);
                }
                Some(front) if Pin::new(&mut self.overdue).poll(cx).is_ready() => {
                    if front.since.elapsed() >= BROKER_STEP {
                        drop(desk);
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
                Some(_) => {}
                None if self.overdue_armed => {
                    // Dropping the timer takes it out of the reactor, which
                    // would otherwise wake the engine for nothing.
                    self.overdue = async_io::Timer::never();
                    self.overdue_armed = false;
                }
                None => {}
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
        let sent: Vec<SentAck> = {
            let mut desk = self.shared.desk();
            desk.send_marked();
            desk.sent.drain(..).collect()
        };
        let mut answers = Vec::new();
        let all = async {
            for sent in sent {
                let result = sent.taken.await;
                answers.extend(taken_answers(
                    &self.shared.names,
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

    /// Publishes a copy of a delivery that never reached a consumer to
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
            return Forwarded::Failed(
                "no publishing channel (please report this bug)".to_owned(),
                Box::new(delivery),
            );
        };
        // Sent now, it would wait for the block to lift, and the engine
        // with it.
        if publisher.connection.blocked() {
            return Forwarded::Blocked(Box::new(delivery));
        }
        let properties = delivery.properties.clone().with_headers(headers);
        let confirmed = async {
            let confirm = publisher
                .channel
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
            None if publisher.connection.blocked() => Forwarded::Blocked(Box::new(delivery)),
            None => Forwarded::Hung,
            Some(Err(error)) if broker_code(&error) == Some(403) => Forwarded::Forbidden(format!(
                "the broker does not let this user publish to exchange {exchange:?}: {}",
                broker_reply(&error)
            )),
            Some(Err(error)) => Forwarded::Failed(
                format!(
                    "publishing a copy of message {} to exchange {exchange:?} failed: {error}",
                    wire::message_id(&delivery.properties)
                ),
                Box::new(delivery),
            ),
            Some(Ok(lapin::Confirmation::Ack(None))) => {
                match settle_one(delivery, Settle::Ack).await {
                    Some(true) => Forwarded::Done,
                    Some(false) => Forwarded::Doubled,
                    None => Forwarded::Hung,
                }
            }
            Some(Ok(lapin::Confirmation::Ack(Some(_)))) => {
                Forwarded::Unroutable(Box::new(delivery))
            }
            Some(Ok(lapin::Confirmation::Nack(_))) => Forwarded::Refused(Box::new(delivery)),
            Some(Ok(confirmation)) => Forwarded::Failed(
                format!(
                    "the broker did not take a copy of message {} for exchange {exchange:?} ({confirmation:?})",
                    wire::message_id(&delivery.properties)
                ),
                Box::new(delivery),
            ),
        }
    }

    /// Rejects a delivery that never reached a consumer (it failed the
    /// checks; the caller tells the book, [`Ledger::settled_elsewhere`]):
    /// whether the broker took it, `None` when the request was not taken
    /// in time.
    #[must_use]
    pub async fn reject(&self, delivery: Delivery) -> Option<bool> {
        settle_one(delivery, Settle::Reject).await
    }

    /// Puts a delivery that never reached a consumer back in its queue
    /// (the caller tells the book); `false` when the request was not
    /// taken in time.
    #[must_use]
    pub async fn requeue(&self, delivery: Delivery) -> bool {
        settle_one(delivery, Settle::Requeue).await.is_some()
    }

    /// After a failure, once no worker holds a message: every delivery
    /// still unsettled on the channels (prefetched, never handed out) goes
    /// back to its queue, as fedora-messaging does with one `basic.nack`
    /// of tag 0 with `multiple`, on every channel at once. `false` when a
    /// channel did not take it in time.
    #[must_use]
    pub async fn requeue_all(&mut self) -> bool {
        // What was answered with an ack must not go back with the rest.
        self.send_marked();
        let queues = self.live_queues();
        let requeues = queues.iter().map(|queue| {
            queue.channel.basic_nack(
                0,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
        });
        let Some(results) = bounded("returning unsettled messages", all(requeues.collect())).await
        else {
            return false;
        };
        for (queue, result) in queues.iter().zip(results) {
            if let Err(error) = result {
                log::warn!(
                    "Could not return the unsettled messages of queue {:?}: {error}; closing the channel returns them",
                    queue.queue
                );
            }
        }
        true
    }

    /// Asks the broker to stop delivering to our consumers, on every
    /// channel at once; what it already delivered and we did not settle
    /// goes back when the channels close.
    pub async fn cancel_all(&self) {
        let queues = self.live_queues();
        let cancels = queues.iter().map(|queue| {
            queue
                .channel
                .basic_cancel(queue.consumer_tag.clone(), BasicCancelOptions::default())
        });
        if let Some(results) = bounded("cancelling the consumers", all(cancels.collect())).await {
            for (queue, result) in queues.iter().zip(results) {
                if let Err(error) = result {
                    log::debug!("cancelling the consumer of {:?}: {error}", queue.queue);
                }
            }
        }
    }
}

/// The answers an ack of `source`'s channel settled once lapin took it;
/// none when it could not (said so: the broker delivers them again).
fn taken_answers(
    names: &[Arc<str>],
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
                names[source]
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
    let id = wire::message_id(&delivery.properties);
    let (hang, delay) = (
        seams::get().hangs_settle_of(id),
        seams::get().settle_delay_of(id),
    );
    let settling = async {
        if hang {
            futures_lite::future::pending::<()>().await;
        }
        if let Some(delay) = delay {
            async_io::Timer::after(delay).await;
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
