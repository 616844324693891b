//! `fedora-messaging consume`: connect, declare, consume, dispatch each
//! message to the consumer, settle it as its outcome says, and stop the
//! way fedora-messaging stops.
//!
//! One message's path: a queue's delivery stream → [`wire::check_delivery`]
//! (a message fedora-messaging would refuse is rejected here, without
//! requeue) → a worker thread ([`Workers`]) → its [`Outcome`] →
//! [`Outcome::disposition`] → [`settle`] → go on, stop, or abort.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};

use crate::broker::{Backoff, Broker};
use crate::config::Config;
use crate::dispatch::{Finished, Handler, Job, Workers};
use crate::exit::{Exit, Fatal};
use crate::monitor::{self, Stats};
use crate::notify::Notifier;
use crate::outcome::{Next, Outcome, Settle};
use crate::plugin;
use crate::stop::StopRequest;
use crate::topology::{Overrides, Topology, broker_code, broker_reply, queue_exists};
use crate::wire;

/// What `consume` was asked to do.
pub struct ConsumeArgs<'a> {
    /// `--app-name`.
    pub app_name: Option<&'a str>,
    pub overrides: Overrides,
}

/// Runs `consume` with `workers` instances of the plugin consumer
/// `callback` (`LIB:Symbol`) to its end and returns how the process exits.
pub fn run(
    config: &Config,
    callback: &str,
    workers: u16,
    args: &ConsumeArgs<'_>,
) -> Result<Exit, Fatal> {
    run_with(config, args, || {
        let consumers =
            plugin::load_consumers(callback, &config.consumer_config_json(), workers.into())?;
        Ok(consumers
            .into_iter()
            .map(|consumer| Box::new(consumer) as Box<dyn Handler>)
            .collect())
    })
}

/// Runs `consume` with the handlers `build` makes (one worker thread
/// each), once the command line and configuration have been checked.
pub fn run_with(
    config: &Config,
    args: &ConsumeArgs<'_>,
    build: impl FnOnce() -> Result<Vec<Box<dyn Handler>>, Fatal>,
) -> Result<Exit, Fatal> {
    args.overrides
        .check()
        .map_err(|reason| Fatal::new(Exit::Usage, reason))?;
    let topology = Topology::new(config, &args.overrides);
    let broker = Broker::new(config, args.app_name)?;
    if config.qos.prefetch_size != 0 {
        log::warn!("qos.prefetch_size is not supported by RabbitMQ; using 0");
    }
    let consumers = build()?;
    let prefetch_count = prefetch_for(config.qos.prefetch_count, consumers.len());
    let stop = StopRequest::on_signals().map_err(|error| {
        Fatal::new(
            Exit::Registration,
            format!("cannot install signal handlers: {error}"),
        )
    })?;
    let stats = Arc::new(Stats::default());
    if let Some(monitoring) = config
        .monitoring()
        .map_err(|m| Fatal::new(Exit::Usage, m))?
    {
        monitor::serve(&monitoring.address, monitoring.port, stats.clone()).map_err(|error| {
            Fatal::new(
                Exit::Error,
                format!(
                    "cannot serve [monitoring] on {:?} port {}: {error}",
                    monitoring.address, monitoring.port
                ),
            )
        })?;
    }
    let workers = Workers::start(consumers).map_err(|error| {
        Fatal::new(
            Exit::Registration,
            format!("cannot start a consumer thread: {error}"),
        )
    })?;
    let mut engine = Engine {
        broker,
        topology,
        prefetch_count,
        stop,
        workers,
        pending: VecDeque::new(),
        in_flight: 0,
        generation: 0,
        consumed_once: false,
        backoff: Backoff::new(),
        notifier: Arc::new(Notifier::from_env()),
        stats,
    };
    let result = async_global_executor::block_on(engine.run());
    if let Some(summary) = engine.stats.summary() {
        engine.notifier.counts(summary);
    }
    engine.notifier.stopping();
    let graceful = matches!(result, Ok(exit) if exit != Exit::ConsumerFailed);
    engine.workers.finish(graceful);
    result
}

/// Each worker needs a message of its own to be busy, so a prefetch below
/// the number of workers is raised to it (0, no limit, stays).
fn prefetch_for(configured: u16, workers: usize) -> u16 {
    let workers = u16::try_from(workers).unwrap_or(u16::MAX);
    if configured != 0 && configured < workers {
        log::info!(
            "qos.prefetch_count = {configured} is below the number of workers; using {workers}, so that each worker can have a message"
        );
        workers
    } else {
        configured
    }
}

struct Engine {
    broker: Broker,
    topology: Topology,
    prefetch_count: u16,
    stop: StopRequest,
    workers: Workers,
    /// Checked deliveries waiting for an idle worker.
    pending: VecDeque<Job>,
    /// Jobs handed to workers and not yet answered, whatever channels they
    /// came from.
    in_flight: usize,
    /// Counts channel set-ups; a job can only be settled on the channels
    /// of the set-up it arrived on.
    generation: u64,
    /// Whether consuming ever started: until then a declaration the broker
    /// refuses is a configuration error (exit 10); afterwards it is a
    /// broker still recovering, and is retried.
    consumed_once: bool,
    backoff: Backoff,
    /// systemd, when it supervises us.
    notifier: Arc<Notifier>,
    /// What `[monitoring]` reports.
    stats: Arc<Stats>,
}

/// How a connection's session ended.
enum SessionEnd {
    /// Stop the process with this code.
    Exit(Exit),
    /// The connection broke: connect again at once.
    Lost(String),
    /// The broker is not ready for us yet: connect again after a delay.
    Retry(String),
}

/// How consuming on one set of channels ended.
enum ChannelsEnd {
    Exit(Exit),
    ConnectionLost(String),
    /// A channel closed (or the broker cancelled a consumer whose queue
    /// still exists) while the connection lives: set up channels again.
    Reopen(String),
}

/// The queues' delivery streams. The engine polls them itself: a task
/// forwarding them would add a thread hop to every message.
struct Deliveries {
    streams: Vec<Option<std::pin::Pin<Box<lapin::Consumer>>>>,
    /// Where the next poll starts, so that a busy queue does not starve
    /// the others.
    next: usize,
}

impl Deliveries {
    /// The next delivery from any queue, or the end of a queue's stream
    /// (reported once); pending forever once every stream has ended.
    async fn next(&mut self) -> Event {
        futures_lite::future::poll_fn(|cx| {
            let count = self.streams.len();
            for offset in 0..count {
                let index = (self.next + offset) % count;
                let Some(stream) = &mut self.streams[index] else {
                    continue;
                };
                match stream.as_mut().poll_next(cx) {
                    std::task::Poll::Ready(Some(delivery)) => {
                        self.next = (index + 1) % count;
                        return std::task::Poll::Ready(Event::Delivery(index, delivery));
                    }
                    std::task::Poll::Ready(None) => {
                        self.streams[index] = None;
                        return std::task::Poll::Ready(Event::StreamEnded(index));
                    }
                    std::task::Poll::Pending => {}
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}

/// One queue being consumed on a connection.
struct QueueConsumer {
    queue: Arc<str>,
    channel: Channel,
    tag: ShortString,
}

/// What the session loop reacts to.
enum Event {
    Delivery(usize, lapin::Result<Delivery>),
    /// A queue's delivery stream ended.
    StreamEnded(usize),
    Done(Job, Outcome, Duration),
    /// A worker handed a job back without consuming it.
    Unstarted(Job),
    StopRequested,
}

impl Engine {
    async fn run(&mut self) -> Result<Exit, Fatal> {
        self.notifier
            .ready(&format!("Connecting to {}", self.broker.describe()));
        if let Some(interval) = self.notifier.watchdog_interval() {
            // Pings from the executor that runs the connection: if it
            // wedges, they stop and systemd restarts us.
            let notifier = self.notifier.clone();
            async_global_executor::spawn(async move {
                loop {
                    async_io::Timer::after(interval).await;
                    notifier.send("WATCHDOG=1");
                }
            })
            .detach();
        }
        if self.notifier.enabled() {
            let notifier = self.notifier.clone();
            let stats = self.stats.clone();
            async_global_executor::spawn(async move {
                loop {
                    async_io::Timer::after(STATUS_REFRESH).await;
                    if let Some(summary) = stats.summary() {
                        notifier.counts(summary);
                    }
                }
            })
            .detach();
        }
        loop {
            let Some(connection) = self
                .broker
                .connect_with_retry(&self.stop, &mut self.backoff, &self.notifier)
                .await?
            else {
                return Ok(Exit::Success);
            };
            let end = self.session(&connection).await;
            self.stats.set_consuming(false);
            // Closing the connection closes its channels: the broker
            // requeues whatever was delivered and not settled. It may
            // already be gone.
            bounded(
                "closing the connection",
                connection.close(200, "Goodbye".into()),
            )
            .await;
            // Deliveries of a closed connection cannot be settled; the
            // broker delivers them again. Jobs waiting for a worker are
            // handed back unstarted.
            self.pending.clear();
            self.workers.set_generation(self.generation + 1);
            let (what, then) = match end? {
                SessionEnd::Exit(exit) => return Ok(exit),
                SessionEnd::Lost(reason) => {
                    self.notifier.status(&format!("Reconnecting: {reason}"));
                    let broker = self.broker.describe();
                    let what = format!("Lost the connection to {broker}: {reason}; reconnecting");
                    (what, ", and consuming will resume")
                }
                SessionEnd::Retry(reason) => (format!("{reason}; retrying"), ""),
            };
            self.stats.reconnected();
            let delay = self.backoff.next_delay();
            log::warn!("{what} in {:.1} s{then}", delay.as_secs_f64());
            if self.stop.wait(delay).await {
                return Ok(Exit::Success);
            }
        }
    }

    /// Declares and consumes on one connection until it ends, setting the
    /// channels up again whenever one closes while the connection lives.
    async fn session(&mut self, connection: &Connection) -> Result<SessionEnd, Fatal> {
        let mut names: Option<Vec<String>> = None;
        loop {
            let declared = bounded_for(
                "declaring queues and bindings",
                SETUP_STEP,
                self.topology.declare(connection, names.as_deref()),
            );
            let queues = match declared.await {
                Some(Ok(queues)) => queues,
                Some(Err(fatal)) => return self.setup_failed(connection, fatal),
                None => return Ok(SessionEnd::Lost(SETUP_HUNG.to_owned())),
            };
            names = Some(queues.clone());
            self.generation += 1;
            self.workers.set_generation(self.generation);
            let started = bounded_for(
                "starting the consumers",
                SETUP_STEP,
                self.start_consumers(connection, &queues),
            );
            let (consumers, mut deliveries) = match started.await {
                Some(Ok(started)) => started,
                Some(Err(fatal)) => return self.setup_failed(connection, fatal),
                None => return Ok(SessionEnd::Lost(SETUP_HUNG.to_owned())),
            };
            self.consumed_once = true;
            self.backoff.consuming();
            self.stats.set_consuming(true);
            self.notifier.status(&format!(
                "Consuming from {}",
                queues
                    .iter()
                    .map(|queue| format!("{queue:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            let end = self.consume(connection, &consumers, &mut deliveries).await;
            match end {
                ChannelsEnd::Exit(exit) => return Ok(SessionEnd::Exit(exit)),
                ChannelsEnd::ConnectionLost(reason) => return Ok(SessionEnd::Lost(reason)),
                ChannelsEnd::Reopen(reason) => {
                    if !connection.status().connected() {
                        return Ok(SessionEnd::Lost(reason));
                    }
                    let delay = self.backoff.next_delay();
                    log::warn!(
                        "{reason}; opening new channels and consuming again in {:.1} s",
                        delay.as_secs_f64()
                    );
                    for consumer in &consumers {
                        bounded(
                            "closing a channel",
                            consumer.channel.close(200, "reopening".into()),
                        )
                        .await;
                    }
                    self.pending.clear();
                    if self.stop.wait(delay).await {
                        return Ok(SessionEnd::Exit(Exit::Success));
                    }
                }
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

    /// Starts consuming every queue, and returns their delivery streams.
    async fn start_consumers(
        &self,
        connection: &Connection,
        queues: &[String],
    ) -> Result<(Vec<QueueConsumer>, Deliveries), Fatal> {
        let mut consumers = Vec::with_capacity(queues.len());
        let mut streams = Vec::with_capacity(queues.len());
        for queue in queues {
            let (consumer, stream) = self.start_consumer(connection, queue).await?;
            consumers.push(consumer);
            streams.push(Some(Box::pin(stream)));
        }
        Ok((consumers, Deliveries { streams, next: 0 }))
    }

    /// Dispatches deliveries and settles outcomes until something ends it.
    async fn consume(
        &mut self,
        connection: &Connection,
        consumers: &[QueueConsumer],
        deliveries: &mut Deliveries,
    ) -> ChannelsEnd {
        let generation = self.generation;
        let mut stopping: Option<Exit> = None;
        // A consumer failed: what is in flight on other workers finishes
        // and is settled once, then everything else goes back.
        let mut failed = false;
        // Per queue consumer, the delivery tags not settled yet: an ack
        // with `multiple` may only cover tags that are all finished.
        let mut unsettled = vec![BTreeSet::new(); consumers.len()];
        loop {
            while stopping.is_none() && self.in_flight < self.workers.capacity() {
                let Some(job) = self.pending.pop_front() else {
                    break;
                };
                self.in_flight += 1;
                self.workers.submit(job).await;
            }
            if let Some(exit) = stopping
                && self.in_flight == 0
            {
                if failed && !requeue_unsettled(consumers).await {
                    return ChannelsEnd::ConnectionLost(UNSETTLED.to_owned());
                }
                return ChannelsEnd::Exit(exit);
            }

            match self.next_event(deliveries, stopping.is_some()).await {
                Event::Delivery(index, Ok(delivery)) => {
                    if stopping.is_some() {
                        // Not settled: requeued when the channel closes.
                        continue;
                    }
                    let consumer = &consumers[index];
                    match wire::check_delivery(&delivery.properties, &delivery.data) {
                        Ok(checked) => {
                            self.stats.received();
                            unsettled[index].insert(delivery.delivery_tag);
                            self.pending.push_back(Job {
                                delivery,
                                queue: consumer.queue.clone(),
                                checked,
                                generation,
                                source: index,
                            });
                        }
                        Err(reason) => {
                            log::warn!(
                                "Message id {} did not pass validation; ignoring message: {reason}",
                                wire::message_id(&delivery.properties)
                            );
                            if !settle(delivery, Settle::Reject).await {
                                return ChannelsEnd::ConnectionLost(UNSETTLED.to_owned());
                            }
                        }
                    }
                }
                Event::Delivery(index, Err(error)) => {
                    if stopping.is_some() {
                        continue;
                    }
                    let reason = format!(
                        "consuming from {:?} failed: {error}",
                        consumers[index].queue
                    );
                    return if connection.status().connected() {
                        ChannelsEnd::Reopen(reason)
                    } else {
                        ChannelsEnd::ConnectionLost(reason)
                    };
                }
                Event::StreamEnded(index) => {
                    if stopping.is_some() {
                        continue;
                    }
                    let consumer = &consumers[index];
                    if !connection.status().connected() {
                        return ChannelsEnd::ConnectionLost("the connection closed".to_owned());
                    }
                    if !consumer.channel.status().connected() {
                        return ChannelsEnd::Reopen(format!(
                            "The channel of queue {:?} was closed",
                            consumer.queue
                        ));
                    }
                    // The broker cancelled our consumer. fedora-messaging
                    // exits 12 on any cancel; a queue that still exists
                    // (its node failed, a quorum queue's leader moved) is
                    // consumed again instead.
                    let checked = bounded("checking a cancelled consumer's queue", async {
                        queue_exists(connection, &consumer.queue).await
                    });
                    let Some(exists) = checked.await else {
                        return ChannelsEnd::ConnectionLost(UNSETTLED.to_owned());
                    };
                    match exists {
                        Ok(false) => {
                            log::error!(
                                "The consumer of queue {:?} was canceled by the AMQP broker and the queue is gone! The consumer was canceled server-side, check with system administrators.",
                                consumer.queue
                            );
                            stopping = Some(Exit::Canceled);
                            self.cancel_all(consumers).await;
                        }
                        Ok(true) => {
                            return ChannelsEnd::Reopen(format!(
                                "The AMQP broker canceled the consumer of queue {:?}, which still exists",
                                consumer.queue
                            ));
                        }
                        Err(error) => {
                            return ChannelsEnd::Reopen(format!(
                                "The AMQP broker canceled the consumer of queue {:?} (checking the queue: {error})",
                                consumer.queue
                            ));
                        }
                    }
                }
                Event::Unstarted(job) => {
                    self.in_flight -= 1;
                    // Unsettled: the broker delivers it again once the
                    // channel closes (or requeue_unsettled returns it).
                    drop(job);
                }
                Event::Done(job, outcome, took) => {
                    // Whatever else has finished is settled with it, so
                    // one ack with `multiple` can cover a run of messages.
                    let mut batch = vec![(job, outcome, took)];
                    while batch.len() < MAX_BATCH {
                        match self.workers.try_next_result() {
                            Some(Finished::Done(job, outcome, took)) => {
                                batch.push((job, outcome, took));
                            }
                            Some(Finished::Unstarted(job)) => {
                                self.in_flight -= 1;
                                drop(job);
                            }
                            None => break,
                        }
                    }
                    let settled = self
                        .settle_batch(batch, consumers, &mut unsettled, generation)
                        .await;
                    let Some(nexts) = settled else {
                        return ChannelsEnd::ConnectionLost(UNSETTLED.to_owned());
                    };
                    for (next, failure) in nexts {
                        match next {
                            Next::Continue => {}
                            Next::Stop(exit) => {
                                if let Exit::Halt(code) = exit
                                    && code != 0
                                {
                                    log::info!("Consumer halted with non-zero exit code ({code})");
                                }
                                if stopping.is_none() {
                                    self.notifier.stopping();
                                    self.cancel_all(consumers).await;
                                }
                                // A halt's code wins over a signal's 0.
                                stopping = Some(match stopping {
                                    Some(Exit::Success) | None => exit,
                                    Some(earlier) => earlier,
                                });
                            }
                            Next::Abort(exit) => {
                                log::error!(
                                    "Unexpected error occurred in consumer on message {}",
                                    failure.unwrap_or_default()
                                );
                                if !failed {
                                    failed = true;
                                    if stopping.is_none() {
                                        self.notifier.stopping();
                                        self.cancel_all(consumers).await;
                                    }
                                    if self.in_flight > 0 {
                                        log::info!(
                                            "Waiting for the workers to finish or hand back the {} message(s) given to them before stopping",
                                            self.in_flight
                                        );
                                    }
                                }
                                // A failure's exit code wins over a halt's.
                                stopping = Some(exit);
                            }
                        }
                    }
                }
                Event::StopRequested => {
                    self.notifier.stopping();
                    self.stats.set_consuming(false);
                    stopping = Some(Exit::Success);
                    self.cancel_all(consumers).await;
                }
            }
        }
    }

    /// Settles finished jobs as their outcomes say and returns, in order,
    /// what comes next for each (with the id and outcome of a failure, for
    /// its log line); `None` when the connection did not take a
    /// settlement in time.
    ///
    /// Acks are coalesced: when the lowest unsettled tags of a channel are
    /// all acked by this batch, one `basic.ack` with `multiple` covers
    /// them, never a tag still pending, in flight or unstarted. The rest
    /// are settled one by one.
    async fn settle_batch(
        &mut self,
        batch: Vec<(Job, Outcome, Duration)>,
        consumers: &[QueueConsumer],
        unsettled: &mut [BTreeSet<u64>],
        generation: u64,
    ) -> Option<Vec<(Next, Option<String>)>> {
        let mut nexts = Vec::with_capacity(batch.len());
        let mut acks: Vec<Vec<Job>> = (0..consumers.len()).map(|_| Vec::new()).collect();
        for (job, outcome, took) in batch {
            self.in_flight -= 1;
            self.stats.answered(&outcome, took);
            let (action, next) = outcome.disposition();
            let failure =
                matches!(next, Next::Abort(_)).then(|| format!("{}: {outcome}", job.message_id()));
            nexts.push((next, failure));
            if job.generation != generation {
                log::info!(
                    "Message {} arrived on a channel that has closed since; the broker delivers it again",
                    job.message_id()
                );
            } else if action == Settle::Ack {
                acks[job.source].push(job);
            } else {
                unsettled[job.source].remove(&job.delivery.delivery_tag);
                if !settle(job.delivery, action).await {
                    return None;
                }
            }
        }
        for (source, mut jobs) in acks.into_iter().enumerate() {
            if jobs.is_empty() {
                continue;
            }
            jobs.sort_by_key(|job| job.delivery.delivery_tag);
            // Both ascending, and every acked tag is unsettled: the run is
            // where they agree from the start.
            let run = unsettled[source]
                .iter()
                .zip(&jobs)
                .take_while(|(tag, job)| **tag == job.delivery.delivery_tag)
                .count();
            let mut covered = 0;
            if run > 1 {
                let last = jobs[run - 1].delivery.delivery_tag;
                let ack = consumers[source]
                    .channel
                    .basic_ack(last, BasicAckOptions { multiple: true });
                match bounded("settling messages", ack).await {
                    Some(Ok(())) => {}
                    Some(Err(error)) => log::warn!(
                        "Could not acknowledge {run} messages of queue {:?}: {error}; the broker will deliver them again",
                        consumers[source].queue
                    ),
                    None => return None,
                }
                for job in &jobs[..run] {
                    unsettled[source].remove(&job.delivery.delivery_tag);
                }
                covered = run;
            }
            for job in jobs.into_iter().skip(covered) {
                unsettled[source].remove(&job.delivery.delivery_tag);
                if !settle(job.delivery, Settle::Ack).await {
                    return None;
                }
            }
        }
        Some(nexts)
    }

    /// Opens a channel for `queue`, sets QoS on it and starts consuming.
    async fn start_consumer(
        &self,
        connection: &Connection,
        queue: &str,
    ) -> Result<(QueueConsumer, lapin::Consumer), Fatal> {
        let registration = |what: &str, error: lapin::Error| {
            Fatal::new(
                Exit::Registration,
                format!("cannot {what} for queue {queue:?}: {error} (please report this bug)"),
            )
        };
        let channel = connection
            .create_channel()
            .await
            .map_err(|error| registration("open a channel", error))?;
        channel
            .basic_qos(self.prefetch_count, BasicQosOptions { global: false })
            .await
            .map_err(|error| registration("set QoS", error))?;
        let tag: ShortString = uuid::Uuid::new_v4().to_string().into();
        let stream = channel
            .basic_consume(
                queue.into(),
                tag.clone(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|error| match broker_code(&error) {
                Some(403) => Fatal::new(
                    Exit::Permission,
                    format!(
                        "the broker does not allow consuming from queue {queue:?}: {} (the user needs read permission on the queue)",
                        broker_reply(&error)
                    ),
                ),
                _ => registration("start consuming", error),
            })?;
        log::info!("Consuming messages from queue {queue:?}");
        Ok((
            QueueConsumer {
                queue: queue.into(),
                channel,
                tag,
            },
            stream,
        ))
    }

    /// The next thing to react to; finished jobs first, so settlements are
    /// not held up by a burst of deliveries.
    async fn next_event(&self, deliveries: &mut Deliveries, stopping: bool) -> Event {
        let done = async {
            match self.workers.next_result().await {
                Some(Finished::Done(job, outcome, took)) => Event::Done(job, outcome, took),
                Some(Finished::Unstarted(job)) => Event::Unstarted(job),
                None => futures_lite::future::pending().await,
            }
        };
        let delivered = deliveries.next();
        let stop = async {
            if stopping {
                futures_lite::future::pending::<()>().await;
            }
            self.stop.requested().await;
            Event::StopRequested
        };
        done.or(delivered).or(stop).await
    }

    /// Asks the broker to stop delivering to our consumers; what it already
    /// delivered and we did not settle goes back when the channels close.
    async fn cancel_all(&mut self, consumers: &[QueueConsumer]) {
        self.workers.hold();
        self.pending.clear();
        for consumer in consumers {
            let cancel = consumer
                .channel
                .basic_cancel(consumer.tag.clone(), BasicCancelOptions::default());
            if let Some(Err(error)) = bounded("cancelling a consumer", cancel).await {
                log::debug!("cancelling the consumer of {:?}: {error}", consumer.queue);
            }
        }
    }
}

/// Why a session ends when a settlement hangs.
const UNSETTLED: &str =
    "a request to the broker was not taken within 5 s, so the connection is presumed dead";

/// How long one request to the broker may take to be taken or answered
/// (a settlement, a cancel, a close); one that does not answer must not
/// stop consumption silently or keep the process from ending.
const SHUTDOWN_STEP: Duration = Duration::from_secs(5);

/// The most finished jobs settled together.
const MAX_BATCH: usize = 256;

/// How often systemd's `STATUS=` gets fresh message counts, when they
/// changed.
const STATUS_REFRESH: Duration = Duration::from_secs(1);

/// How long declaring, or starting the consumers, may take on a fresh
/// connection before it is given up as dead.
const SETUP_STEP: Duration = Duration::from_secs(60);
const SETUP_HUNG: &str = "the broker did not answer while setting up; connecting again";

/// Runs `step` for at most [`SHUTDOWN_STEP`]; `None` if it took longer.
async fn bounded<T>(what: &str, step: impl std::future::Future<Output = T>) -> Option<T> {
    bounded_for(what, SHUTDOWN_STEP, step).await
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

/// Settles one delivery as the outcome table says; taking the delivery by
/// value means it cannot be settled twice (a second settle would close the
/// channel). `false` when the library did not take the settlement within
/// [`SHUTDOWN_STEP`]: the connection is dead but not yet known to be, and
/// waiting on it would stop consumption silently.
#[must_use]
async fn settle(delivery: Delivery, action: Settle) -> bool {
    let settling = async {
        match action {
            Settle::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
            // After a failure, the other unsettled messages follow once no
            // worker holds one (requeue_unsettled), so none is settled
            // twice.
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
    match bounded("settling a message", settling).await {
        Some(Ok(_)) => true,
        Some(Err(error)) => {
            log::warn!(
                "Could not settle message {} ({action:?}): {error}; the broker will deliver it again",
                wire::message_id(&delivery.properties)
            );
            true
        }
        None => false,
    }
}

/// After a failure, once no worker holds a message: every delivery still
/// unsettled on the channels (prefetched, never handed out) goes back to
/// its queue, as fedora-messaging does with one `basic.nack` of tag 0 with
/// `multiple`. `false` when a channel did not take it in time.
#[must_use]
async fn requeue_unsettled(consumers: &[QueueConsumer]) -> bool {
    for consumer in consumers {
        let requeue = consumer.channel.basic_nack(
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
                consumer.queue
            ),
            None => return false,
        }
    }
    true
}
