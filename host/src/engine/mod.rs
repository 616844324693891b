//! The consume engine: everything between an open broker and the exit
//! code, for `consume` and `record`.
//!
//! One message's path, top to bottom through the files:
//! - [`session`]: declares, opens a channel per queue with its QoS and
//!   consumer, and says why a delivery stream ended;
//! - [`lane`]: a consumer thread takes the delivery straight from its
//!   stream, admitted in the channel's book, and checks it
//!   ([`limit`] judges it against `[delivery_limit]`);
//! - [`message`]: the job it becomes, with its settlement handle
//!   ([`message::Ticket`], poisoned when its channel dies) and its
//!   in-flight token ([`inflight`]);
//! - [`workers`]: the consumer thread hands it to the consumer
//!   ([`handler`]);
//! - the answer: a plain ack is marked in the [`book`] by the consumer
//!   thread; anything else goes to the engine (`answer`, below), which
//!   tells the [`lifecycle`] first;
//! - [`settler`]: carries the book's decisions to the broker (acks
//!   coalesced, nacks, rejects); deliveries the consumer never saw are
//!   settled by `lane_reports` and [`redelivery`];
//! - the token is dropped once the answer has been acted on; draining ends
//!   when no token is left.
//!
//! Around it: [`deadline`] bounds every request to the broker, [`pulse`]
//! is what systemd hears (the watchdog and `STATUS=`), and [`seams`] are
//! faults only the tests' builds switch on.
//!
//! [`Engine::run`] is the supervisor: connect (each attempt bounded and
//! given up at once on a stop, a halt or a failure), consume on the
//! connection until it ends, wait by the backoff, again; and once the
//! lifecycle drains, finish without the broker if the connection is gone.
//! Every wait in it is raced with the worker results, the stop request and
//! the pulse's tick, or bounded by a few seconds.

pub mod book;
pub mod deadline;
pub mod handler;
pub mod inflight;
pub mod lane;
mod lane_reports;
pub mod lifecycle;
pub mod limit;
pub mod message;
pub mod pulse;
pub mod redelivery;
pub mod seams;
pub mod session;
pub mod settler;
pub mod workers;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
use deadline::{SETUP_STEP, UNSETTLED, bounded, bounded_for};
use lane::Lane;
use lifecycle::Lifecycle;
use message::{Answer, Finished, Job};
use pulse::Pulse;
use settler::{Ledger, Taken};
use workers::Workers;

const SETUP_HUNG: &str = "the broker did not answer while setting up; connecting again";

/// The most finished jobs settled together.
const MAX_BATCH: usize = 256;

/// How long the consumer threads may take to end once told to: a consumer
/// still being built (an import that hangs) or whose `stop` hangs must not
/// keep the process from exiting.
const WORKERS_END: Duration = Duration::from_secs(30);

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
    /// Each queue consumer's QoS.
    prefetch_count: u16,
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
    /// The first consumer that could not be built: the process exits 1
    /// with it once the others have finished what they hold.
    build_failure: Option<Fatal>,
    /// Whether a consumer thread's panic was taken into account.
    panic_seen: bool,
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

/// How consuming on one connection's channels ended; the ledger is
/// retired.
enum ChannelsEnd {
    Draining,
    ConnectionLost(String),
    /// Something no retry can mend: exit.
    Fatal(Fatal),
}

/// One connection's channels while the engine consumes on them.
struct Channels<'c> {
    connection: &'c Connection,
    /// Settles on the channels.
    ledger: Ledger,
    /// What the consumer threads read.
    lane: Arc<Lane>,
    /// Per queue: when a new channel is due, after its channel failed.
    reopen_at: Vec<Option<Instant>>,
    /// Per queue: the waits between a channel's failures and its reopening.
    backoff: Vec<Backoff>,
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
    /// News from the in-flight tokens ([`Core::in_flight_news`]).
    InFlight,
    /// A failed channel is due to be opened again.
    ReopenDue,
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
            backoff: Backoff::new(),
            consumed_once: false,
            core: Core {
                prefetch_count: settings.prefetch_count,
                lifecycle: Lifecycle::new(),
                workers,
                pending: VecDeque::new(),
                stop,
                pulse,
                stats,
                limit: settings.delivery_limit,
                build_failure: None,
                panic_seen: false,
                consumer: settings.consumer,
            },
        }
    }

    /// Runs until the process should exit, and says how; the consumer
    /// threads have ended (or were given [`WORKERS_END`] to) when it
    /// returns.
    pub async fn run(&mut self) -> Result<Exit, Fatal> {
        let result = self.run_to_exit().await;
        // After a failure the consumers' `stop` does not run, as in
        // fedora-messaging.
        let graceful = !matches!(result, Ok(Exit::ConsumerFailed));
        self.core.end_workers(graceful).await;
        result
    }

    async fn run_to_exit(&mut self) -> Result<Exit, Fatal> {
        self.core
            .pulse
            .ready(&format!("Connecting to {}", self.broker.describe()));
        loop {
            if !self.core.lifecycle.is_running() {
                let exit = self.core.drain_offline().await;
                return self.core.exit_with(exit);
            }
            let Some(connection) = self.connect().await? else {
                continue;
            };
            // Consumers publish through this connection while it lasts.
            let connection = Arc::new(connection);
            publisher::service().connected(connection.clone());
            let end = self.session(&connection).await;
            if let Some(exit) = self.core.lifecycle.exit()
                && exit != Exit::ConsumerFailed
            {
                // A graceful stop with the connection still up: the
                // consumers' `stop` may publish through it.
                self.core.end_workers(true).await;
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
            let closing = bounded(
                "closing the connection",
                connection.close(200, "Goodbye".into()),
            );
            self.core.pulse.beating(closing).await;
            let end = end?;
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

    /// Declares and consumes on one connection until it ends. A channel
    /// that fails while the connection lives is opened again on its own
    /// ([`Core::channel_failed`]), while the others go on.
    async fn session(&mut self, connection: &Connection) -> Result<SessionEnd, Fatal> {
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
                self.core.prefetch_count,
                limit.as_ref(),
            ),
        );
        let opened = match self.core.interruptible(setup).await {
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
        let streams = opened
            .streams
            .into_iter()
            .enumerate()
            .map(|(source, stream)| (opened.ledger.channel(source), stream))
            .collect();
        let lane = Arc::new(Lane::new(
            opened.ledger.shared(),
            streams,
            self.core.limit.as_ref().map(|limit| limit.max),
            self.core.stats.clone(),
        ));
        self.core.workers.open_lane(&lane);
        let queues = opened.names.len();
        let mut channels = Channels {
            connection,
            ledger: opened.ledger,
            lane,
            reopen_at: vec![None; queues],
            backoff: vec![Backoff::new(); queues],
        };
        let end = self.core.consume(&mut channels).await;
        self.core.workers.close_lane();
        match end {
            ChannelsEnd::Draining => Ok(SessionEnd::Draining),
            ChannelsEnd::ConnectionLost(reason) => Ok(SessionEnd::Lost(reason)),
            ChannelsEnd::Fatal(fatal) => Err(fatal),
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
    /// One turn of any of the engine's loops: the pulse, a consumer
    /// thread's panic, and, while draining, whether anything is still in
    /// flight.
    fn turn(&mut self) {
        self.pulse.turned();
        if !self.panic_seen && self.workers.tracker().panicked() {
            self.panic_seen = true;
            log::error!(
                "A consumer thread panicked while handling a message (see the panic above); the message goes back to its queue, and the host stops as on a consumer failure"
            );
            if self.lifecycle.answered(Next::Abort(Exit::ConsumerFailed)) {
                self.hold_workers();
            }
        }
        if self.lifecycle.is_running() || self.lifecycle.exit().is_some() {
            return;
        }
        // Draining, so the workers are held: the count can only fall.
        if self.workers.tracker().count() > 0 {
            return;
        }
        // Only reports that carry no token can still wait unread.
        while let Some(finished) = self.workers.try_next_result() {
            if let Finished::BuildFailed(fatal) = finished {
                self.build_failed(fatal);
            }
        }
        self.lifecycle.nothing_in_flight();
    }

    /// How the process exits once the lifecycle has stopped with `exit`.
    fn exit_with(&mut self, exit: Exit) -> Result<Exit, Fatal> {
        let build_failure = self.build_failure.take();
        match (exit, build_failure) {
            (Exit::Error, Some(fatal)) => Err(fatal),
            (exit, Some(fatal)) => {
                log::error!("A consumer could not be built: {fatal}");
                Ok(exit)
            }
            (exit, None) => Ok(exit),
        }
    }

    /// A consumer instance could not be built: the others finish what they
    /// hold, then the process exits 1 with the first such reason.
    fn build_failed(&mut self, fatal: Fatal) {
        self.build_failure.get_or_insert(fatal);
        if self.lifecycle.build_failed() {
            self.hold_workers();
        }
    }

    /// Resolves when the in-flight tokens have news for [`Core::turn`]:
    /// the last one is gone while `draining`, or one was dropped by a
    /// panic not yet `panic_seen`. Pending otherwise.
    async fn in_flight_news(workers: &Workers, draining: bool, panic_seen: bool) {
        let tracker = workers.tracker();
        let idle = async {
            if !draining {
                futures_lite::future::pending::<()>().await;
            }
            tracker.idle().await;
        };
        let panic = async {
            if panic_seen {
                futures_lite::future::pending::<()>().await;
            }
            tracker.panic().await;
        };
        idle.or(panic).await;
    }

    /// Tells the consumer threads to end, and waits for them with the
    /// pulse going, for at most [`WORKERS_END`].
    async fn end_workers(&mut self, graceful: bool) {
        self.workers.close(graceful);
        if graceful {
            self.pulse.status("Stopping: running the consumers' stop");
        }
        let (workers, pulse) = (&self.workers, &mut self.pulse);
        let ended = pulse
            .beating(
                async {
                    workers.ended().await;
                    true
                }
                .or(async {
                    async_io::Timer::after(WORKERS_END).await;
                    false
                }),
            )
            .await;
        if !ended {
            log::warn!(
                "A consumer thread did not end within {WORKERS_END:?} of being told to (a consumer still being built, or one whose stop hangs); exiting without it"
            );
        }
    }

    /// Runs `step` while attending to everything else: worker answers
    /// (whose channels are gone: no ledger lives while the engine waits
    /// here), the stop request, the pulse. `None` once the lifecycle stops
    /// running; `step` is then dropped unfinished.
    async fn interruptible<T>(&mut self, step: impl std::future::Future<Output = T>) -> Option<T> {
        let mut step = std::pin::pin!(step);
        loop {
            self.turn();
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
            let panic_seen = self.panic_seen;
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
                .or(async {
                    Core::in_flight_news(workers, false, panic_seen).await;
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
        self.hold_workers();
        loop {
            self.turn();
            if let Some(exit) = self.lifecycle.exit() {
                return exit;
            }
            self.pulse.status(&format!(
                "Stopping: waiting for {} message(s) given to the consumer",
                self.workers.tracker().count()
            ));
            let (workers, pulse, panic_seen) = (&self.workers, &mut self.pulse, self.panic_seen);
            let finished = async {
                match workers.next_result().await {
                    Some(finished) => Some(finished),
                    // Every thread is gone, and with it every token.
                    None => futures_lite::future::pending().await,
                }
            }
            .or(async {
                pulse.tick().await;
                None
            })
            .or(async {
                Core::in_flight_news(workers, true, panic_seen).await;
                None
            })
            .await;
            if let Some(finished) = finished {
                // No ledger: nothing to settle, so nothing can hang, and
                // what comes from a lane is for channels gone.
                self.answer(None, vec![finished]).await;
            }
        }
    }

    /// Dispatches deliveries and settles outcomes until the lifecycle
    /// stops or the channels end. The ledger is retired when this returns.
    async fn consume(&mut self, channels: &mut Channels<'_>) -> ChannelsEnd {
        let end = self.consume_until_end(channels).await;
        let ledger = &mut channels.ledger;
        // Retired first, so that no consumer thread marks an ack after the
        // last ones are sent: its answer goes to the engine instead, which
        // says that the message comes again.
        ledger.retire();
        match end {
            ChannelsEnd::ConnectionLost(_) => end,
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
    fn count(&self, answers: Vec<Answer>) {
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
        loop {
            self.turn();
            while self.lifecycle.is_running() && self.workers.has_room() {
                let Some(job) = self.pending.pop_front() else {
                    break;
                };
                self.workers.submit(job);
            }
            if self.lifecycle.exit().is_some() {
                let ledger = &mut channels.ledger;
                if self.lifecycle.requeue_all() && !self.pulse.beating(ledger.requeue_all()).await {
                    return ChannelsEnd::ConnectionLost(UNSETTLED.to_owned());
                }
                return ChannelsEnd::Draining;
            }
            let (running, panic_seen) = (self.lifecycle.is_running(), self.panic_seen);
            let reopen_due = running
                .then(|| channels.reopen_at.iter().flatten().min().copied())
                .flatten();
            let (workers, stop, pulse) = (&self.workers, &self.stop, &mut self.pulse);
            let ledger = &mut channels.ledger;
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
            .await;
            match event {
                Event::Tick | Event::InFlight => {}
                Event::Taken(Taken::Acks(answers)) => self.count(answers),
                Event::Taken(Taken::FlushDue) => channels.ledger.send_marked(),
                Event::ReopenDue => {
                    if let Err(end) = self.reopen_due_channels(channels).await {
                        return end;
                    }
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
                Event::Connection(Some(_)) => {}
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
    async fn channel_failed(&mut self, channels: &mut Channels<'_>, source: usize, reason: String) {
        let channel = channels.ledger.retire_channel(source);
        let queue = &channels.ledger.names()[source];
        if self.lifecycle.is_running() {
            let delay = channels.backoff[source].next_delay();
            log::warn!(
                "{reason}; opening a new channel for queue {queue:?} and consuming from it again in {:.1} s",
                delay.as_secs_f64()
            );
            channels.reopen_at[source] = Some(Instant::now() + delay);
        } else {
            log::warn!("{reason}; stopping, so queue {queue:?} is not consumed again");
        }
        if channel.status().connected() {
            let closing = bounded("closing a channel", channel.close(200, "reopening".into()));
            self.pulse.beating(closing).await;
        }
    }

    /// Opens a new channel for each queue whose reopening is due; one that
    /// cannot be opened yet is tried again after its backoff.
    async fn reopen_due_channels(
        &mut self,
        channels: &mut Channels<'_>,
    ) -> Result<(), ChannelsEnd> {
        let now = Instant::now();
        for source in 0..channels.reopen_at.len() {
            if channels.reopen_at[source].is_none_or(|due| due > now) {
                continue;
            }
            channels.reopen_at[source] = None;
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
                    channels.backoff[source].consuming();
                }
                Some(Err(fatal)) if !channels.connection.status().connected() => {
                    return Err(ChannelsEnd::ConnectionLost(fatal.message));
                }
                Some(Err(fatal)) if fatal.exit == Exit::Permission => {
                    return Err(ChannelsEnd::Fatal(fatal));
                }
                Some(Err(fatal)) => {
                    let delay = channels.backoff[source].next_delay();
                    log::warn!(
                        "{}; trying queue {queue:?} again in {:.1} s",
                        fatal.message,
                        delay.as_secs_f64()
                    );
                    channels.reopen_at[source] = Some(Instant::now() + delay);
                }
            }
        }
        Ok(())
    }

    /// No job starts any more, and none waits with the engine: their
    /// tokens go, and the broker delivers them again.
    fn hold_workers(&mut self) {
        self.workers.hold();
        self.pending.clear();
    }

    /// The lifecycle just started draining: no job starts any more, and
    /// the broker is asked to stop delivering.
    async fn start_draining(&mut self, ledger: Option<&Ledger>) {
        self.hold_workers();
        self.stats.set_consuming(false);
        self.pulse.stopping();
        let in_flight = self.workers.tracker().count();
        if in_flight > 0 {
            log::info!(
                "Waiting for the workers to finish or hand back the {in_flight} message(s) given to them before stopping"
            );
        }
        if let Some(ledger) = ledger {
            self.pulse.beating(ledger.cancel_all()).await;
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
