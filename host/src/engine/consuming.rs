//! Consuming on one connection's channels: the loop that takes the
//! workers' answers, the settler's news, lapin's connection events, the
//! stop request and the pulse; that settles answers after the lifecycle
//! has learnt them; and that reopens a failed channel alone.

use std::sync::Arc;
use std::time::Instant;

use futures_lite::{FutureExt, StreamExt};
use lapin::Connection;

use super::deadline::{SETUP_STEP, UNSETTLED, bounded, bounded_for};
use super::lane::Lane;
use super::message::{Answer, Diverted, Finished};
use super::put_back;
use super::settler::{Ledger, Taken};
use super::waiting::{Core, WaitOver};
use super::{ChannelsEnd, MAX_BATCH, SETUP_HUNG, seams, session};
use crate::broker::Backoff;
use crate::exit::Exit;
use crate::outcome::Next;

/// One connection's channels while the engine consumes on them.
pub(super) struct Channels<'c> {
    pub connection: &'c Connection,
    /// Where the host publishes: a connection of its own, or the same.
    pub publishing: &'c Connection,
    /// Settles on the channels.
    pub ledger: Ledger,
    /// What the consumer threads read.
    pub lane: Arc<Lane>,
    /// Per queue: when it gets a new channel after its channel failed.
    pub reopening: Vec<Reopening>,
}

/// When one queue gets a new channel after its channel failed.
#[derive(Default)]
pub(super) struct Reopening {
    /// When the new channel is due; `None` while the channel lives.
    due: Option<Instant>,
    /// The waits between the channel's failures and its reopening.
    backoff: Backoff,
}

/// What the consume loop reacts to. Built and matched at once, never
/// stored.
#[allow(clippy::large_enum_variant)]
enum Event {
    Finished(Finished),
    Taken(Taken),
    /// lapin's word on the connection; `None` once it says no more.
    Connection(Option<lapin::Event>),
    /// lapin's word on the publishing connection, when it is another.
    Publishing(Option<lapin::Event>),
    StopRequested,
    Tick,
    /// News from the in-flight tokens ([`Core::in_flight_news`]).
    InFlight,
    /// A failed channel is due to be opened again.
    ReopenDue,
    /// A held delivery is due ([`super::held`]).
    HeldDue,
    /// A draining stops waiting for the messages in progress.
    WaitOver(WaitOver),
}

/// `STATUS=` while consuming from `queues`.
pub(super) fn consuming_status(queues: &[impl AsRef<str>]) -> String {
    let queues: Vec<String> = queues
        .iter()
        .map(|queue| format!("{:?}", queue.as_ref()))
        .collect();
    format!("Consuming from {}", queues.join(", "))
}

impl Core {
    /// The broker blocked a connection (a memory or disk alarm: it stops
    /// reading from a connection that publishes), or lifted the block;
    /// `consuming` when it is the one the host consumes on too. Said once
    /// each way: in the log, `STATUS=`, `/ready` and `/metrics`.
    fn blocked(&mut self, queues: &[Arc<str>], reason: Option<String>, consuming: bool) {
        let status = consuming_status(queues);
        match &reason {
            Some(reason) if consuming => {
                log::warn!(
                    "The broker blocked the connection: {reason}; until it lifts the block, what the host publishes and its acknowledgements wait"
                );
                self.pulse.status(&format!(
                    "{status}; the broker blocks the connection: {reason}"
                ));
            }
            Some(reason) => {
                log::warn!(
                    "The broker blocked the publishing connection: {reason}; consuming and acknowledging go on, and what the host publishes (the delivery limit's copies and dead letters, consumers' messages) waits until it lifts the block"
                );
                self.pulse
                    .status(&format!("{status}; the broker blocks publishing: {reason}"));
            }
            None => {
                log::info!("The broker lifted its block of the connection");
                self.pulse.status(&status);
                // Dead letters kept while it lasted go out now, not after
                // their doubling wait.
                self.held.dead_letters_due(Instant::now());
            }
        }
        self.stats.set_blocked(reason);
    }

    /// Dispatches deliveries and settles outcomes until the lifecycle
    /// stops or the channels end. The ledger is retired when this returns.
    pub(super) async fn consume(&mut self, channels: &mut Channels<'_>) -> ChannelsEnd {
        let end = self.consume_until_end(channels).await;
        let held = self.held.take_all();
        if let Some(policy) = &self.limit {
            put_back::remember_held(&channels.ledger, policy, held);
        }
        self.stats.set_dead_letters_kept(0);
        let ledger = &mut channels.ledger;
        // Retired first, so that no consumer thread marks an ack after the
        // last ones are sent: its answer goes to the engine instead, which
        // says that the message comes again.
        ledger.retire();
        match end {
            ChannelsEnd::ConnectionLost(_) => {
                if let Some(policy) = &self.limit {
                    put_back::remember_unstarted(&channels.lane, policy, None);
                }
                end
            }
            // Acks answered and not yet taken go out before the channels
            // close, or the broker would deliver those messages again.
            _ => match self.pulse.beating(ledger.settle_sent()).await {
                Some(answers) => {
                    self.count(answers);
                    end
                }
                None => end,
            },
        }
    }

    /// Counts settled answers as fedora-messaging counts them.
    pub(super) fn count(&self, answers: Vec<Answer>) {
        if answers.is_empty() {
            return;
        }
        self.stats.settled();
        for (outcome, took) in answers {
            self.stats.answered(&outcome, took);
        }
    }

    async fn consume_until_end(&mut self, channels: &mut Channels<'_>) -> ChannelsEnd {
        let connection = channels.connection;
        // lapin's connection events are one channel, not a broadcast:
        // nothing else in the host may listen to them, or the two would
        // take each other's events.
        let mut events = Some(connection.events_listener().boxed());
        let mut publishing_events = (!std::ptr::eq(channels.publishing, connection))
            .then(|| channels.publishing.events_listener().boxed());
        loop {
            self.turn();
            while self.lifecycle.is_running() && self.workers.has_room() {
                let Some(job) = self.pending.pop_front() else {
                    break;
                };
                self.workers.submit(job);
            }
            if self.lifecycle.exit().is_some() {
                if let Some(policy) = self.limit.clone() {
                    let held = self.held.take_all();
                    let putting_back = put_back::put_back(
                        &channels.ledger,
                        &channels.lane,
                        held,
                        &policy,
                        &self.stats,
                    );
                    if let Err(end) = self.pulse.beating(putting_back).await {
                        return end;
                    }
                }
                let ledger = &mut channels.ledger;
                if self.lifecycle.requeue_all() && !self.pulse.beating(ledger.requeue_all()).await {
                    return ChannelsEnd::ConnectionLost(UNSETTLED.to_owned());
                }
                return ChannelsEnd::Draining;
            }
            let (running, panic_seen) = (self.lifecycle.is_running(), self.panic_seen);
            let reopen_due = running
                .then(|| {
                    channels
                        .reopening
                        .iter()
                        .filter_map(|queue| queue.due)
                        .min()
                })
                .flatten();
            let held_due = self.held.next_due();
            let stop_deadline = self.stop_deadline();
            let (workers, stop, pulse) = (&self.workers, &self.stop, &mut self.pulse);
            let ledger = &mut channels.ledger;
            // The broker's events first: one that came before an answer
            // is taken before it. lapin hands an event over as it reads
            // the frame, so a block lifted before the publish confirm a
            // consumer waited for is seen before that consumer's next
            // answer; were a halt taken first, the loop would end with
            // the block's lifting never said.
            let event = async {
                match events.as_mut() {
                    Some(events) => Event::Connection(events.next().await),
                    None => futures_lite::future::pending().await,
                }
            }
            .or(async {
                match publishing_events.as_mut() {
                    Some(events) => Event::Publishing(events.next().await),
                    None => futures_lite::future::pending().await,
                }
            })
            .or(async {
                match workers.next_result().await {
                    Some(finished) => Event::Finished(finished),
                    None => futures_lite::future::pending().await,
                }
            })
            .or(async { Event::Taken(ledger.taken().await) })
            .or(async {
                if !running {
                    futures_lite::future::pending::<()>().await;
                }
                stop.requested().await;
                Event::StopRequested
            })
            .or(async {
                pulse.tick().await;
                Event::Tick
            })
            .or(async {
                Core::in_flight_news(workers, !running, panic_seen).await;
                Event::InFlight
            })
            .or(async {
                match reopen_due {
                    Some(due) => async_io::Timer::at(due).await,
                    None => futures_lite::future::pending().await,
                };
                Event::ReopenDue
            })
            .or(async {
                match held_due {
                    Some(due) => async_io::Timer::at(due).await,
                    None => futures_lite::future::pending().await,
                };
                Event::HeldDue
            })
            .or(async { Event::WaitOver(Core::wait_is_over(stop, stop_deadline).await) })
            .await;
            match event {
                Event::Tick | Event::InFlight => {}
                Event::WaitOver(over) => self.stop_waiting(over),
                Event::Taken(Taken::Acks(answers)) => self.count(answers),
                Event::Taken(Taken::FlushDue) => channels.ledger.send_marked(),
                Event::ReopenDue => {
                    if let Err(end) = self.reopen_due_channels(channels).await {
                        return end;
                    }
                }
                Event::HeldDue => {
                    for held in self.held.take_due(Instant::now()) {
                        let diverted = Diverted {
                            delivery: held.delivery,
                            ticket: held.ticket,
                            in_flight: self.workers.tracker().token(),
                            why: held.why,
                        };
                        let released = Some(held.hold);
                        if let Err(end) = self.settle_diverted(channels, diverted, released).await {
                            return end;
                        }
                    }
                    self.stats.set_dead_letters_kept(self.held.dead_letters());
                }
                Event::Taken(Taken::Hung) => {
                    return ChannelsEnd::ConnectionLost(UNSETTLED.to_owned());
                }
                Event::Connection(Some(lapin::Event::Error(error))) => {
                    // Learnt here even while every consumer thread is busy
                    // and reads no stream.
                    if !connection.status().connected() {
                        return ChannelsEnd::ConnectionLost(format!(
                            "the connection failed: {error}"
                        ));
                    }
                    // A channel's error: ours, or one this set-up does not
                    // use (a publisher's, or one it closed already).
                    match channels.ledger.closed_channel() {
                        Some(source) => {
                            let reason = format!(
                                "consuming from {:?} failed: {error}",
                                channels.ledger.names()[source]
                            );
                            self.channel_failed(channels, source, reason).await;
                        }
                        None => {
                            log::debug!("a channel this set-up does not consume on failed: {error}")
                        }
                    }
                }
                Event::Connection(Some(lapin::Event::ConnectionBlocked(reason))) => {
                    self.blocked(channels.ledger.names(), Some(reason), true);
                }
                Event::Publishing(Some(lapin::Event::ConnectionBlocked(reason))) => {
                    self.blocked(channels.ledger.names(), Some(reason), false);
                }
                Event::Connection(Some(lapin::Event::ConnectionUnblocked))
                | Event::Publishing(Some(lapin::Event::ConnectionUnblocked)) => {
                    self.blocked(channels.ledger.names(), None, false);
                }
                Event::Publishing(Some(lapin::Event::Error(error))) => {
                    if !channels.publishing.status().connected() {
                        return ChannelsEnd::ConnectionLost(format!(
                            "the publishing connection failed: {error}"
                        ));
                    }
                    // The delivery limit's channel: its next copy fails
                    // and opens another. (Consumers' channels mend alone.)
                    log::debug!("a publishing channel failed: {error}");
                }
                Event::Publishing(None) => publishing_events = None,
                Event::Connection(Some(_)) | Event::Publishing(Some(_)) => {}
                Event::Connection(None) => events = None,
                Event::StopRequested => {
                    if self.lifecycle.stop_requested() {
                        self.start_draining(Some(&channels.ledger)).await;
                    }
                }
                Event::Finished(first) => {
                    // Whatever else has finished is settled with it, so
                    // one ack with `multiple` can cover a run of messages.
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match self.workers.try_next_result() {
                            Some(finished) => batch.push(finished),
                            None => break,
                        }
                    }
                    let (hung, rest) = self.answer(Some(&mut channels.ledger), batch).await;
                    if hung {
                        return ChannelsEnd::ConnectionLost(UNSETTLED.to_owned());
                    }
                    for finished in rest {
                        if let Err(end) = self.lane_report(channels, finished).await {
                            return end;
                        }
                    }
                }
            }
        }
    }

    /// Takes what workers handed back: the lifecycle learns every answer
    /// first, before any I/O, so a halt or a failure is never lost; then
    /// the jobs `ledger` owns are settled, and the others (their channel is
    /// gone) are left to the broker, which delivers them again. Only
    /// settled answers are counted, so a message delivered again counts
    /// once. Each job's in-flight token goes once its answer was acted on.
    /// True when a settlement hung (the ledger is then retired).
    pub(super) async fn answer(
        &mut self,
        ledger: Option<&mut Ledger>,
        batch: Vec<Finished>,
    ) -> (bool, Vec<Finished>) {
        let mut started_draining = false;
        let mut to_settle = Vec::with_capacity(batch.len());
        let mut rest = Vec::new();
        for finished in batch {
            let (job, outcome, took) = match finished {
                Finished::BuildFailed(fatal) => {
                    self.build_failed(fatal);
                    continue;
                }
                Finished::Done(job, outcome, took) => (job, outcome, took),
                Finished::Diverted(_) | Finished::Ended(..) => {
                    rest.push(finished);
                    continue;
                }
            };
            seams::get().maybe_stall_engine(job.message_id());
            let (action, next) = outcome.disposition();
            match next {
                Next::Continue => {}
                Next::Stop(Exit::Halt(code)) if code != 0 => {
                    log::info!("Consumer halted with non-zero exit code ({code})");
                }
                Next::Stop(_) => {}
                Next::Abort(_) => log::error!(
                    "Unexpected error occurred in consumer {} on message {}: {outcome}",
                    self.consumer,
                    job.message_id()
                ),
            }
            started_draining |= self.lifecycle.answered(next);
            match ledger.as_deref() {
                Some(ledger) if ledger.owns(&job.ticket) => {
                    to_settle.push((job, action, (outcome, took)));
                }
                _ => log::info!(
                    "Message {} was answered ({outcome}) after the channel it came on closed; the broker delivers it again",
                    job.message_id()
                ),
            }
        }
        if started_draining {
            self.start_draining(None).await;
        }
        let mut hung = false;
        if let Some(ledger) = ledger {
            let settlement = self.pulse.beating(ledger.settle(to_settle)).await;
            self.count(settlement.settled);
            hung = settlement.hung;
            if started_draining && !hung {
                self.pulse.beating(ledger.cancel_all()).await;
            }
        }
        (hung, rest)
    }

    /// `source`'s channel failed while the connection lives: it is retired
    /// alone (the broker delivers again what it held), closed, and a new
    /// one is opened after its backoff, while the other queues go on.
    pub(super) async fn channel_failed(
        &mut self,
        channels: &mut Channels<'_>,
        source: usize,
        reason: String,
    ) {
        let channel = channels.ledger.retire_channel(source);
        let queue = &channels.ledger.names()[source];
        if self.lifecycle.is_running() {
            let reopening = &mut channels.reopening[source];
            let delay = reopening.backoff.next_delay();
            log::warn!(
                "{reason}; opening a new channel for queue {queue:?} and consuming from it again in {:.1} s",
                delay.as_secs_f64()
            );
            reopening.due = Some(Instant::now() + delay);
        } else {
            log::warn!("{reason}; stopping, so queue {queue:?} is not consumed again");
        }
        if channel.status().connected() {
            let closing = bounded("closing a channel", channel.close(200, "reopening".into()));
            self.pulse.beating(closing).await;
        }
        // Closed: what lapin holds of it is all the broker gives again.
        if let Some(policy) = &self.limit {
            put_back::remember_unstarted(&channels.lane, policy, Some(source));
        }
    }

    /// Opens a new channel for each queue whose reopening is due; one that
    /// cannot be opened yet is tried again after its backoff.
    async fn reopen_due_channels(
        &mut self,
        channels: &mut Channels<'_>,
    ) -> Result<(), ChannelsEnd> {
        let now = Instant::now();
        for source in 0..channels.reopening.len() {
            if channels.reopening[source].due.is_none_or(|due| due > now) {
                continue;
            }
            channels.reopening[source].due = None;
            let queue = channels.ledger.names()[source].clone();
            let opening = bounded_for(
                "opening a channel",
                SETUP_STEP,
                session::start_consumer(channels.connection, &queue, self.prefetch_count),
            );
            match self.pulse.beating(opening).await {
                None => return Err(ChannelsEnd::ConnectionLost(SETUP_HUNG.to_owned())),
                Some(Ok((queue_channel, stream))) => {
                    let channel = channels.ledger.replace_channel(source, queue_channel);
                    channels.lane.replace((channel, stream));
                    // Each thread reads the new stream through a new reader.
                    self.workers.open_lane(&channels.lane);
                    channels.reopening[source].backoff.consuming();
                }
                Some(Err(fatal)) if !channels.connection.status().connected() => {
                    return Err(ChannelsEnd::ConnectionLost(fatal.message));
                }
                Some(Err(fatal)) if fatal.exit == Exit::Permission => {
                    return Err(ChannelsEnd::Fatal(fatal));
                }
                Some(Err(fatal)) => {
                    let reopening = &mut channels.reopening[source];
                    let delay = reopening.backoff.next_delay();
                    log::warn!(
                        "{}; trying queue {queue:?} again in {:.1} s",
                        fatal.message,
                        delay.as_secs_f64()
                    );
                    reopening.due = Some(Instant::now() + delay);
                }
            }
        }
        Ok(())
    }
}
