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
//!   thread; anything else goes to the engine's consume loop
//!   (`consuming`), which tells the [`lifecycle`] first;
//! - [`settler`]: carries the book's decisions to the broker (acks
//!   coalesced, nacks, rejects); deliveries the consumer never saw are
//!   settled by `lane_reports` and [`redelivery`];
//! - the token is dropped once the answer has been acted on; draining ends
//!   when no token is left.
//!
//! Around it: `waiting` is what every wait of the engine attends to (the
//! workers' answers and tokens, the stop request, the pulse), [`deadline`]
//! bounds every request to the broker, [`depth`] asks how many messages
//! wait in the consumed queues, [`pulse`] is what systemd hears
//! (the watchdog and `STATUS=`), and [`seams`] are faults only the tests'
//! builds switch on.
//!
//! [`Engine::run`] is the supervisor: connect (each attempt bounded and
//! given up at once on a stop, a halt or a failure), consume on the
//! connection until it ends, wait by the backoff, again; and once the
//! lifecycle drains, finish without the broker if the connection is gone.
//! Every wait in it is raced with the worker results, the stop request and
//! the pulse's tick, or bounded by a few seconds.

pub mod ahead;
pub mod book;
mod consumer_log;
mod consuming;
pub mod deadline;
pub mod depth;
pub mod gate;
pub mod handler;
mod held;
pub mod inflight;
pub mod lane;
mod lane_reports;
pub mod lifecycle;
pub mod limit;
pub mod message;
pub mod pulse;
mod put_back;
pub mod redelivery;
pub mod seal;
pub mod seams;
pub mod session;
pub mod settler;
mod waiting;
pub mod workers;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use lapin::Connection;

use crate::broker::{Backoff, Broker, ConnectError};
use crate::exit::{Exit, Fatal};
use crate::monitor::Stats;
use crate::publisher;
use crate::refusals::RefusalRound;
use crate::stop::StopRequest;
use crate::topology::Topology;
use consuming::{Channels, Reopening};
use deadline::{SETUP_STEP, UNSETTLED, bounded, bounded_for};
use lane::Lane;
use lifecycle::Lifecycle;
use limit::Policy;
use pulse::Pulse;
use waiting::Core;
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
    pub delivery_limit: Option<Policy>,
    /// The consumer's name, for the log lines that report its failures.
    pub consumer: String,
    /// How long a draining waits for the messages in progress.
    pub stop_timeout: Duration,
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
                held: Default::default(),
                stop,
                pulse,
                stats,
                limit: settings.delivery_limit.map(Arc::new),
                build_failure: None,
                panic_seen: false,
                workers_told_to_end: false,
                consumer: settings.consumer,
                stop_timeout: settings.stop_timeout,
                stop_deadline: None,
                gave_up_waiting: false,
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
            let connection = Arc::new(connection);
            let publishing = self.open_publishing(&connection).await;
            // Consumers publish through it while it lasts.
            publisher::service().connected(publishing.clone());
            let end = self.session(&connection, &publishing).await;
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
            self.core.stats.set_blocked(None);
            // Deliveries of a closed connection cannot be settled; the
            // broker delivers them again.
            self.core.pending.clear();
            // Closing the connection closes its channels: the broker
            // requeues whatever was delivered and not settled. It may
            // already be gone.
            self.core.pulse.status("Closing the connection");
            let closing = bounded("closing the connection", async {
                if !Arc::ptr_eq(&publishing, &connection) {
                    let _ = publishing.close(200, "Goodbye".into()).await;
                }
                connection.close(200, "Goodbye".into()).await
            });
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
    /// until it answers. A refusal moves on to the next node at once; one
    /// from every node in a row ends the retries ([`RefusalRound`]).
    /// `Ok(None)`: the lifecycle stopped running first.
    async fn connect(&mut self) -> Result<Option<Connection>, Fatal> {
        let mut attempt = 1u64;
        let mut refusals = RefusalRound::new(self.broker.node_count());
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
                    let line = self.broker.refusal(&refusal);
                    if let Err(every) = refusals.refused(line.clone()) {
                        return Err(Fatal::new(Exit::Connection, every));
                    }
                    let next = self.to_next_node();
                    log::warn!("{line}; trying{next}");
                    attempt += 1;
                }
                Err(ConnectError::Unreachable(reason)) => {
                    refusals.broken();
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

    /// A connection of its own for what the host publishes (the delivery
    /// limit's copies and dead letters, what consumers publish), to the
    /// node `consuming` reached. During a memory or disk alarm RabbitMQ
    /// blocks a connection that publishes and stops reading from it, so
    /// acks sent on it would wait too; one that only consumes is never
    /// blocked. Where the broker refuses a second connection (a connection
    /// limit), publishing shares the consuming one, and the log says so.
    async fn open_publishing(&mut self, consuming: &Arc<Connection>) -> Arc<Connection> {
        match self.core.interruptible(self.broker.connect()).await {
            Some(Ok(publishing)) => Arc::new(publishing),
            Some(Err(error)) => {
                log::warn!(
                    "Publishing shares the consuming connection, which a memory or disk alarm then blocks whole: no connection of its own: {}",
                    self.broker.refusal(&error)
                );
                consuming.clone()
            }
            None => consuming.clone(),
        }
    }

    /// Declares and consumes on one connection until it ends, publishing
    /// on `publishing`. A channel that fails while the connection lives is
    /// opened again on its own ([`Core::channel_failed`]), while the
    /// others go on.
    async fn session(
        &mut self,
        connection: &Arc<Connection>,
        publishing: &Connection,
    ) -> Result<SessionEnd, Fatal> {
        if !self.core.workers.are_built() {
            // Connected first, so that a consumer's `new` may publish;
            // consuming waits, so that one that cannot be built stops the
            // host before a message was delivered to it.
            self.core.pulse.status("Building the consumers");
            let built = self.core.workers.all_built();
            if self.core.interruptible(built.wait()).await.is_none() {
                return Ok(SessionEnd::Draining);
            }
        }
        self.core
            .pulse
            .status("Declaring queues and bindings, starting the consumers");
        let limit = self.core.limit.clone();
        let setup = bounded_for(
            "declaring queues and bindings and starting the consumers",
            SETUP_STEP,
            session::open(
                connection,
                publishing,
                &self.topology,
                self.core.prefetch_count,
                limit.as_deref(),
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
        self.core
            .pulse
            .status(&consuming::consuming_status(&opened.names));
        let _depth = depth::watch(
            connection.clone(),
            opened.names.clone(),
            self.core.stats.clone(),
            seams::get().queue_depth_every().unwrap_or(depth::ASK_EVERY),
        );
        let streams = opened
            .streams
            .into_iter()
            .enumerate()
            .map(|(source, stream)| (opened.ledger.channel(source), stream))
            .collect();
        let lane = Arc::new(Lane::new(
            opened.ledger.shared(),
            streams,
            self.core.limit.clone(),
            self.core.stats.clone(),
        ));
        self.core.workers.open_lane(&lane);
        let queues = opened.names.len();
        let mut channels = Channels {
            connection,
            publishing,
            ledger: opened.ledger,
            lane,
            reopening: (0..queues).map(|_| Reopening::default()).collect(),
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

/// A settlement outside the batches: `Err` when it was not taken in time.
fn taken(settled: bool) -> Result<(), ChannelsEnd> {
    if settled {
        Ok(())
    } else {
        Err(ChannelsEnd::ConnectionLost(UNSETTLED.to_owned()))
    }
}
