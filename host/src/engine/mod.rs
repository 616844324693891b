//! The consume engine: everything between an open broker and the exit
//! code, for `consume` and `record`.
//!
//! - [`lifecycle`]: the state machine (running, draining, stopped) that
//!   decides, without I/O, whether messages may start and what the process
//!   exits with; it outlives connections.
//! - [`ledger`]: one channel set-up's channels, unsettled tags and
//!   tickets; settles batches (coalesced acks), requeues everything,
//!   retires at once when the channels go.
//! - [`session`]: declares, opens the channels and consumers of one
//!   connection, says why a delivery stream ended.
//! - [`lane`]: how a consumer thread takes messages straight from the
//!   delivery streams, checks them and marks their acks, handing the
//!   engine only what it cannot finish alone.
//! - `lane_reports`: what the engine does with what a consumer thread
//!   hands over besides answers: deliveries to settle, streams that ended.
//! - [`workers`]: the consumer threads, which start a message only while
//!   the engine still wants it.
//! - [`redelivery`]: the delivery limit: its judgement of each delivery,
//!   and the copies and dead letters it sends instead of the consumer.
//! - [`pulse`]: the systemd watchdog and `STATUS=`, fed by the engine's
//!   own loop.
//! - [`seams`]: faults only the tests switch on.
//!
//! [`Engine::run`] is the supervisor: connect (each attempt bounded and
//! given up at once on a stop, a halt or a failure), consume on the
//! connection until it ends, wait by the backoff, again; and once the
//! lifecycle drains, finish without the broker if the connection is gone.
//! Every wait in it is raced with the worker results, the stop request and
//! the pulse's tick, or bounded by a few seconds.

pub mod lane;
mod lane_reports;
pub mod ledger;
pub mod lifecycle;
pub mod pulse;
pub mod redelivery;
pub mod seams;
pub mod session;
pub mod workers;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{FutureExt, StreamExt};
use lapin::Connection;

use crate::broker::{Backoff, Broker, ConnectError};
use crate::config::DeliveryLimit;
use crate::exit::{Exit, Fatal};
use crate::monitor::Stats;
use crate::outcome::Next;
use crate::publisher;
use crate::stop::StopRequest;
use crate::topology::Topology;
use lane::Lane;
use ledger::{Answer, Ledger, Taken};
use lifecycle::Lifecycle;
use pulse::Pulse;
use workers::{Finished, Job, Workers};

/// Why a session ends when a settlement hangs.
pub(crate) const UNSETTLED: &str =
    "a request to the broker was not taken within 5 s, so the connection is presumed dead";

/// How long one request to the broker may take to be taken or answered
/// (a settlement, a cancel, a close); one that does not answer must not
/// stop consumption silently or keep the process from ending.
pub(crate) const BROKER_STEP: Duration = Duration::from_secs(5);

/// How long declaring and starting the consumers may take on a fresh
/// connection before it is given up as dead.
const SETUP_STEP: Duration = Duration::from_secs(60);
const SETUP_HUNG: &str = "the broker did not answer while setting up; connecting again";

/// The most finished jobs settled together.
const MAX_BATCH: usize = 256;

/// What the engine takes from the configuration.
pub struct Settings {
    /// Each queue consumer's QoS.
    pub prefetch_count: u16,
    pub delivery_limit: Option<DeliveryLimit>,
    /// The consumer's name, for the log lines that report its failures.
    pub consumer: String,
}

/// The engine and what it drives.
pub struct Engine {
    broker: Broker,
    topology: Topology,
    prefetch_count: u16,
    backoff: Backoff,
    /// Whether consuming ever started: until then a declaration the broker
    /// refuses is a configuration error (exit 10); afterwards it is a
    /// broker still recovering, and is retried.
    consumed_once: bool,
    core: Core,
}

/// What every wait of the engine attends to, whatever the connection is
/// doing: the lifecycle, the workers' answers, the stop request and the
/// pulse.
struct Core {
    lifecycle: Lifecycle,
    workers: Workers,
    /// Jobs the engine holds for the workers (a delivery the delivery
    /// limit could not carry on), waiting for room with them.
    pending: VecDeque<Job>,
    stop: StopRequest,
    pulse: Pulse,
    stats: Arc<Stats>,
    /// `[delivery_limit]`, if any.
    limit: Option<DeliveryLimit>,
    /// A consumer that could not be built: the process ends with it.
    build_failure: Option<Fatal>,
    /// [`Settings::consumer`].
    consumer: String,
}

/// How a connection's session ended.
enum SessionEnd {
    /// The lifecycle has stopped or is draining: no reconnecting.
    Draining,
    /// The connection broke: connect again after the backoff.
    Lost(String),
    /// The broker is not ready for us yet: connect again after a delay.
    Retry(String),
}

/// How consuming on one channel set-up ended; the ledger is retired.
enum ChannelsEnd {
    Draining,
    ConnectionLost(String),
    Reopen(String),
    /// Something no retry can mend: exit.
    Fatal(Fatal),
}

/// What the consume loop reacts to. Built and matched at once, never
/// stored.
#[allow(clippy::large_enum_variant)]
enum Event {
    Finished(Finished),
    Taken(Taken),
    /// lapin's word on the connection; `None` once it says no more.
    Connection(Option<lapin::Event>),
    StopRequested,
    Tick,
}

impl Engine {
    pub fn new(
        broker: Broker,
        topology: Topology,
        settings: Settings,
        workers: Workers,
        stop: StopRequest,
        pulse: Pulse,
        stats: Arc<Stats>,
    ) -> Engine {
        Engine {
            broker,
            topology,
            prefetch_count: settings.prefetch_count,
            backoff: Backoff::new(),
            consumed_once: false,
            core: Core {
                lifecycle: Lifecycle::new(),
                workers,
                pending: VecDeque::new(),
                stop,
                pulse,
                stats,
                limit: settings.delivery_limit,
                build_failure: None,
                consumer: settings.consumer,
            },
        }
    }

    /// Ends the worker threads: gracefully (each consumer's `stop` runs)
    /// unless a consumer failed.
    pub fn finish(self, exit: &Result<Exit, Fatal>) {
        let graceful = matches!(exit, Ok(exit) if *exit != Exit::ConsumerFailed);
        self.core.workers.finish(graceful);
    }

    /// Runs until the process should exit, and says how.
    pub async fn run(&mut self) -> Result<Exit, Fatal> {
        self.core
            .pulse
            .ready(&format!("Connecting to {}", self.broker.describe()));
        loop {
            if let Some(fatal) = self.core.build_failure.take() {
                return Err(fatal);
            }
            if !self.core.lifecycle.is_running() {
                return Ok(self.core.drain_offline().await);
            }
            let Some(connection) = self.connect().await? else {
                continue;
            };
            // Consumers publish through this connection while it lasts.
            let connection = Arc::new(connection);
            publisher::service().connected(connection.clone());
            let end = self.session(&connection).await;
            if self
                .core
                .lifecycle
                .exit()
                .is_some_and(|exit| exit != Exit::ConsumerFailed)
                && self.core.build_failure.is_none()
            {
                // A graceful stop with the connection still up: the
                // consumers' `stop` may publish through it.
                self.core
                    .pulse
                    .status("Stopping: running the consumers' stop");
                self.core.workers.stop_consumers();
            }
            publisher::service().disconnected();
            self.core.stats.set_consuming(false);
            self.core.stats.set_node(None);
            // Deliveries of a closed connection cannot be settled; the
            // broker delivers them again.
            self.core.pending.clear();
            // Closing the connection closes its channels: the broker
            // requeues whatever was delivered and not settled. It may
            // already be gone.
            self.core.pulse.status("Closing the connection");
            bounded(
                "closing the connection",
                connection.close(200, "Goodbye".into()),
            )
            .await;
            let end = end?;
            if let Some(fatal) = self.core.build_failure.take() {
                return Err(fatal);
            }
            if !self.core.lifecycle.is_running() {
                // Draining: finish without reconnecting.
                continue;
            }
            let (what, then) = match end {
                SessionEnd::Draining => continue,
                SessionEnd::Lost(reason) => {
                    let broker = self.broker.describe();
                    let what = format!(
                        "Lost the connection to {broker}: {reason}; reconnecting{}",
                        self.to_next_node()
                    );
                    (what, ", and consuming will resume")
                }
                SessionEnd::Retry(reason) => (format!("{reason}; retrying"), ""),
            };
            self.core.stats.reconnected();
            self.back_off(
                |delay| format!("{what} in {delay:.1} s{then}"),
                |delay| format!("Waiting {delay:.1} s to reconnect: {what}"),
            )
            .await;
        }
    }

    /// Waits by the backoff before trying again, saying so in the log and
    /// in `STATUS=` (each given the delay in seconds); false if the
    /// lifecycle stopped running meanwhile.
    async fn back_off(
        &mut self,
        log_line: impl FnOnce(f64) -> String,
        status: impl FnOnce(f64) -> String,
    ) -> bool {
        let delay = self.backoff.next_delay();
        let seconds = delay.as_secs_f64();
        log::warn!("{}", log_line(seconds));
        self.core.pulse.status(&status(seconds));
        self.core
            .interruptible(async_io::Timer::after(delay))
            .await
            .is_some()
    }

    /// Connects, retrying without limit while the broker is unreachable,
    /// until it answers. A refusal ends the retries at once: trying again
    /// cannot change it. `Ok(None)`: the lifecycle stopped running first.
    async fn connect(&mut self) -> Result<Option<Connection>, Fatal> {
        let mut attempt = 1u64;
        loop {
            let describe = self.broker.describe();
            log::info!("Connecting to {describe} (attempt {attempt})");
            self.core
                .pulse
                .status(&format!("Connecting to {describe} (attempt {attempt})"));
            let Some(result) = self.core.interruptible(self.broker.connect()).await else {
                return Ok(None);
            };
            match result {
                Ok(connection) => {
                    log::info!("Connected to {describe}");
                    self.core.stats.set_node(Some(self.broker.address()));
                    return Ok(Some(connection));
                }
                Err(refusal @ (ConnectError::Refused(_) | ConnectError::Untrusted(_))) => {
                    return Err(Fatal::new(Exit::Connection, self.broker.refusal(&refusal)));
                }
                Err(ConnectError::Unreachable(reason)) => {
                    let next = self.to_next_node();
                    let waited = self
                        .back_off(
                            |delay| format!("Cannot connect to {describe} (attempt {attempt}): {reason}; retrying{next} in {delay:.1} s"),
                            |delay| format!("Cannot reach the broker (attempt {attempt}); retrying in {delay:.0} s"),
                        )
                        .await;
                    if !waited {
                        return Ok(None);
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Moves on to the next of several nodes, and says which, for a log
    /// line's "retrying" or "reconnecting"; nothing with one node.
    fn to_next_node(&self) -> String {
        if self.broker.node_count() == 1 {
            return String::new();
        }
        self.broker.next_node();
        format!(" to {}", self.broker.describe())
    }

    /// Declares and consumes on one connection until it ends, setting the
    /// channels up again whenever one closes while the connection lives.
    async fn session(&mut self, connection: &Connection) -> Result<SessionEnd, Fatal> {
        let mut names: Option<Vec<String>> = None;
        loop {
            self.core
                .pulse
                .status("Declaring queues and bindings, starting the consumers");
            let limit = self.core.limit.clone();
            let setup = bounded_for(
                "declaring queues and bindings and starting the consumers",
                SETUP_STEP,
                session::open(
                    connection,
                    &self.topology,
                    names.as_deref(),
                    self.prefetch_count,
                    limit.as_ref(),
                ),
            );
            let mut opened = match self.core.interruptible(setup).await {
                None => return Ok(SessionEnd::Draining),
                Some(None) => return Ok(SessionEnd::Lost(SETUP_HUNG.to_owned())),
                Some(Some(Err(fatal))) => return self.setup_failed(connection, fatal),
                Some(Some(Ok(opened))) => opened,
            };
            self.consumed_once = true;
            self.backoff.consuming();
            self.core.stats.set_consuming(true);
            self.core.pulse.status(&format!(
                "Consuming from {}",
                opened
                    .names
                    .iter()
                    .map(|queue| format!("{queue:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            let lane = Arc::new(Lane::new(
                opened.ledger.shared(),
                std::mem::take(&mut opened.streams),
                self.core.limit.as_ref().map(|limit| limit.max),
                self.core.stats.clone(),
            ));
            self.core.workers.open_lane(&lane);
            let end = self.core.consume(connection, &mut opened.ledger).await;
            self.core.workers.close_lane();
            drop(lane);
            names = Some(std::mem::take(&mut opened.names));
            let reason = match end {
                ChannelsEnd::Draining => return Ok(SessionEnd::Draining),
                ChannelsEnd::ConnectionLost(reason) => return Ok(SessionEnd::Lost(reason)),
                ChannelsEnd::Reopen(reason) => reason,
                ChannelsEnd::Fatal(fatal) => return Err(fatal),
            };
            if !connection.status().connected() {
                return Ok(SessionEnd::Lost(reason));
            }
            self.core.pending.clear();
            opened.ledger.close("reopening").await;
            drop(opened);
            let waited = self
                .back_off(
                    |delay| {
                        format!(
                            "{reason}; opening new channels and consuming again in {delay:.1} s"
                        )
                    },
                    |delay| format!("Waiting {delay:.1} s to open new channels: {reason}"),
                )
                .await;
            if !waited {
                return Ok(SessionEnd::Draining);
            }
        }
    }

    /// A declaration or consumer set-up failed: a lost connection is
    /// reconnected; a refusal is fatal at start (exit 10, 11 or 15) and
    /// retried once consuming has worked (the broker may not be back
    /// whole: a passive declare finds no queue until it is).
    fn setup_failed(&self, connection: &Connection, fatal: Fatal) -> Result<SessionEnd, Fatal> {
        if !connection.status().connected() {
            Ok(SessionEnd::Lost(fatal.message))
        } else if self.consumed_once && fatal.exit != Exit::Permission {
            Ok(SessionEnd::Retry(fatal.message))
        } else {
            Err(fatal)
        }
    }
}

impl Core {
    /// Runs `step` while attending to everything else: worker answers
    /// (whose channels are gone: no ledger lives while the engine waits
    /// here), the stop request, the pulse. `None` once the lifecycle stops
    /// running; `step` is then dropped unfinished.
    async fn interruptible<T>(&mut self, step: impl std::future::Future<Output = T>) -> Option<T> {
        let mut step = std::pin::pin!(step);
        loop {
            self.pulse.turned();
            self.lifecycle.lane_busy(self.workers.busy());
            if !self.lifecycle.is_running() {
                return None;
            }
            // Built and matched at once, never stored: boxing would cost an
            // allocation a message.
            #[allow(clippy::large_enum_variant)]
            enum Woke<T> {
                Done(T),
                Finished(Finished),
                StopRequested,
                Tick,
            }
            let (workers, stop, pulse) = (&self.workers, &self.stop, &mut self.pulse);
            let woke = async { Woke::Done(step.as_mut().await) }
                .or(async {
                    match workers.next_result().await {
                        Some(finished) => Woke::Finished(finished),
                        None => futures_lite::future::pending().await,
                    }
                })
                .or(async {
                    stop.requested().await;
                    Woke::StopRequested
                })
                .or(async {
                    pulse.tick().await;
                    Woke::Tick
                })
                .await;
            match woke {
                Woke::Done(value) => return Some(value),
                Woke::Finished(finished) => {
                    // No ledger: nothing to settle, so nothing can hang,
                    // and what comes from a lane is for channels gone.
                    self.answer(None, vec![finished]).await;
                }
                Woke::StopRequested => {
                    if self.lifecycle.stop_requested() {
                        self.start_draining(None).await;
                    }
                }
                Woke::Tick => {}
            }
        }
    }

    /// The lifecycle is draining and no connection is left: wait for the
    /// workers to hand back what they hold (nothing can be settled: the
    /// broker delivers it again), then say how to exit. Never waits for
    /// the broker.
    async fn drain_offline(&mut self) -> Exit {
        self.workers.hold();
        self.pending.clear();
        loop {
            self.pulse.turned();
            self.lifecycle.lane_busy(self.workers.busy());
            if let Some(exit) = self.lifecycle.exit() {
                return exit;
            }
            self.pulse.status(&format!(
                "Stopping: waiting for {} message(s) given to the consumer",
                self.lifecycle.in_flight()
            ));
            let (workers, pulse) = (&self.workers, &mut self.pulse);
            let finished = async { workers.next_result().await.map(Some) }
                .or(async {
                    pulse.tick().await;
                    Some(None)
                })
                .await;
            match finished {
                Some(Some(finished)) => {
                    // No ledger: nothing to settle, so nothing can hang,
                    // and what comes from a lane is for channels gone.
                    self.answer(None, vec![finished]).await;
                }
                Some(None) => {}
                // The worker threads are gone: nothing is in flight.
                None => {
                    return match self.lifecycle.phase() {
                        lifecycle::Phase::Draining { exit, .. }
                        | lifecycle::Phase::Stopped(exit) => exit,
                        lifecycle::Phase::Running => Exit::Success,
                    };
                }
            }
        }
    }

    /// Dispatches deliveries and settles outcomes until the lifecycle
    /// stops or the channels end. The ledger is retired when this returns.
    async fn consume(&mut self, connection: &Connection, ledger: &mut Ledger) -> ChannelsEnd {
        let end = self.consume_until_end(connection, ledger).await;
        // Retired first, so that no consumer thread marks an ack after the
        // last ones are sent: its answer goes to the engine instead, which
        // says that the message comes again.
        ledger.retire();
        match end {
            ChannelsEnd::ConnectionLost(_) => end,
            // Acks answered and not yet taken go out before the channels
            // close, or the broker would deliver those messages again.
            _ => match ledger.settle_sent().await {
                Some(answers) => {
                    self.count(answers);
                    end
                }
                None => match end {
                    ChannelsEnd::Reopen(_) => ChannelsEnd::ConnectionLost(UNSETTLED.to_owned()),
                    end => end,
                },
            },
        }
    }

    /// Counts settled answers as fedora-messaging counts them.
    fn count(&self, answers: Vec<Answer>) {
        if answers.is_empty() {
            return;
        }
        self.stats.settled();
        for (outcome, took) in answers {
            self.stats.answered(&outcome, took);
        }
    }

    async fn consume_until_end(
        &mut self,
        connection: &Connection,
        ledger: &mut Ledger,
    ) -> ChannelsEnd {
        // lapin's connection events are one channel, not a broadcast:
        // nothing else in the host may listen to them, or the two would
        // take each other's events.
        let mut events = Some(connection.events_listener().boxed());
        loop {
            self.pulse.turned();
            self.lifecycle.lane_busy(self.workers.busy());
            while self.lifecycle.is_running()
                && self.lifecycle.in_flight() < self.workers.capacity()
            {
                let Some(job) = self.pending.pop_front() else {
                    break;
                };
                self.lifecycle.dispatched();
                self.workers.submit(job).await;
            }
            if self.lifecycle.exit().is_some() {
                if self.lifecycle.requeue_all() && !ledger.requeue_all().await {
                    return ChannelsEnd::ConnectionLost(UNSETTLED.to_owned());
                }
                return ChannelsEnd::Draining;
            }
            let running = self.lifecycle.is_running();
            let (workers, stop, pulse) = (&self.workers, &self.stop, &mut self.pulse);
            let event = async {
                match workers.next_result().await {
                    Some(finished) => Event::Finished(finished),
                    None => futures_lite::future::pending().await,
                }
            }
            .or(async { Event::Taken(ledger.taken().await) })
            .or(async {
                match events.as_mut() {
                    Some(events) => Event::Connection(events.next().await),
                    None => futures_lite::future::pending().await,
                }
            })
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
            .await;
            match event {
                Event::Tick => {}
                Event::Taken(Taken::Acks(answers)) => self.count(answers),
                Event::Taken(Taken::FlushDue) => ledger.send_marked(),
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
                    if let Some(closed) = ledger
                        .queues()
                        .iter()
                        .find(|queue| !queue.channel.status().connected())
                    {
                        return ChannelsEnd::Reopen(format!(
                            "consuming from {:?} failed: {error}",
                            closed.queue
                        ));
                    }
                    log::debug!("a channel this set-up does not consume on failed: {error}");
                }
                Event::Connection(Some(_)) => {}
                Event::Connection(None) => events = None,
                Event::StopRequested => {
                    if self.lifecycle.stop_requested() {
                        self.start_draining(Some(ledger)).await;
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
                    let (hung, rest) = self.answer(Some(ledger), batch).await;
                    if hung {
                        return ChannelsEnd::ConnectionLost(UNSETTLED.to_owned());
                    }
                    if self.build_failure.is_some() {
                        return ChannelsEnd::Draining;
                    }
                    for finished in rest {
                        if let Err(end) = self.lane_report(connection, ledger, finished).await {
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
    /// once. True when a settlement hung (the ledger is then retired).
    async fn answer(
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
                    // A consumer that cannot be built ends the process as
                    // a load error does (exit 1 with its reason).
                    self.build_failure.get_or_insert(fatal);
                    started_draining |= self.lifecycle.stop_requested();
                    continue;
                }
                Finished::Unstarted(_) => {
                    // Unsettled: the broker delivers it again once the
                    // channel closes (or requeue_all returns it).
                    self.lifecycle.returned();
                    continue;
                }
                Finished::Done(job, outcome, took) => {
                    if job.from_engine {
                        self.lifecycle.returned();
                    }
                    (job, outcome, took)
                }
                // The next look at the busy threads takes it.
                Finished::Idle => continue,
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
            let settlement = ledger.settle(to_settle).await;
            self.count(settlement.settled);
            hung = settlement.hung;
            if started_draining && !hung {
                ledger.cancel_all().await;
            }
        }
        (hung, rest)
    }

    /// The lifecycle just started draining: no job starts any more, and
    /// the broker is asked to stop delivering.
    async fn start_draining(&mut self, ledger: Option<&Ledger>) {
        self.workers.hold();
        // Only now, with the workers held, is the count of busy threads
        // one that can only fall.
        self.lifecycle.lane_busy(self.workers.busy());
        self.pending.clear();
        self.stats.set_consuming(false);
        self.pulse.stopping();
        let in_flight = self.lifecycle.in_flight();
        if in_flight > 0 {
            log::info!(
                "Waiting for the workers to finish or hand back the {in_flight} message(s) given to them before stopping"
            );
        }
        if let Some(ledger) = ledger {
            ledger.cancel_all().await;
        }
    }
}

/// A settlement outside the batches: `Err` when it was not taken in time.
fn taken(settled: bool) -> Result<(), ChannelsEnd> {
    if settled {
        Ok(())
    } else {
        Err(ChannelsEnd::ConnectionLost(UNSETTLED.to_owned()))
    }
}

/// Runs `step` for at most [`BROKER_STEP`]; `None` (logged) if it took
/// longer.
pub(crate) async fn bounded<T>(
    what: &str,
    step: impl std::future::Future<Output = T>,
) -> Option<T> {
    bounded_for(what, BROKER_STEP, step).await
}

/// Runs `step` for at most `limit`; `None` (logged) if it took longer.
async fn bounded_for<T>(
    what: &str,
    limit: Duration,
    step: impl std::future::Future<Output = T>,
) -> Option<T> {
    let finished = async { Some(step.await) }
        .or(async {
            async_io::Timer::after(limit).await;
            None
        })
        .await;
    if finished.is_none() {
        log::warn!("{what}: no answer from the broker within {limit:?}");
    }
    finished
}
