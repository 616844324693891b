//! `fedora-messaging consume`: connect, declare, consume, dispatch each
//! message to the consumer, settle it as its outcome says, and stop the
//! way fedora-messaging stops.
//!
//! One message's path: a queue's delivery stream → [`wire::check_delivery`]
//! (a message fedora-messaging would refuse is rejected here, without
//! requeue) → a worker thread ([`Workers`]) → its [`Outcome`] →
//! [`Outcome::disposition`] → [`settle`] → go on, stop, or abort.

use std::collections::VecDeque;
use std::sync::Arc;

use futures_lite::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};

use crate::broker::Broker;
use crate::config::Config;
use crate::dispatch::{Job, Workers};
use crate::exit::{Exit, Fatal};
use crate::outcome::{Next, Outcome, Settle};
use crate::plugin;
use crate::stop::StopRequest;
use crate::topology::{Overrides, Topology, broker_code, broker_reply};
use crate::wire;

/// What `consume` was asked to do.
pub struct ConsumeArgs<'a> {
    /// `LIB:Symbol`.
    pub callback: &'a str,
    /// `--app-name`.
    pub app_name: Option<&'a str>,
    pub overrides: Overrides,
}

/// Runs `consume` to its end and returns how the process exits.
pub fn run(config: &Config, args: &ConsumeArgs<'_>) -> Result<Exit, Fatal> {
    let topology = Topology::new(config, &args.overrides);
    let broker = Broker::new(config, args.app_name)?;
    if config.qos.prefetch_size != 0 {
        log::warn!("qos.prefetch_size is not supported by RabbitMQ; using 0");
    }
    let consumer = plugin::load_consumer(args.callback, &config.consumer_config_json())?;
    let stop = StopRequest::on_signals().map_err(|error| {
        Fatal::new(
            Exit::Registration,
            format!("cannot install signal handlers: {error}"),
        )
    })?;
    let workers = Workers::start(vec![consumer]).map_err(|error| {
        Fatal::new(
            Exit::Registration,
            format!("cannot start a consumer thread: {error}"),
        )
    })?;
    let mut engine = Engine {
        broker,
        topology,
        prefetch_count: config.qos.prefetch_count,
        stop,
        workers,
        pending: VecDeque::new(),
        in_flight: 0,
    };
    let result = async_global_executor::block_on(engine.run());
    let graceful = matches!(result, Ok(exit) if exit != Exit::ConsumerFailed);
    engine.workers.finish(graceful);
    result
}

struct Engine {
    broker: Broker,
    topology: Topology,
    prefetch_count: u16,
    stop: StopRequest,
    workers: Workers,
    /// Checked deliveries waiting for an idle worker.
    pending: VecDeque<Job>,
    /// Jobs handed to workers and not yet answered, whatever their session.
    in_flight: usize,
}

/// How a connection's session ended.
enum SessionEnd {
    /// Stop the process with this code.
    Exit(Exit),
    /// The connection broke: connect again.
    Lost(String),
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
    Done(Job, Outcome),
    StopRequested,
}

impl Engine {
    async fn run(&mut self) -> Result<Exit, Fatal> {
        let mut session = 0u64;
        loop {
            let Some(connection) = self.broker.connect_with_retry(&self.stop).await? else {
                return Ok(Exit::Success);
            };
            session += 1;
            match self.session(&connection, session).await {
                Ok(SessionEnd::Exit(exit)) => {
                    // Closing the connection closes its channels: the broker
                    // requeues whatever was delivered and not settled.
                    let _ = connection.close(200, "Goodbye".into()).await;
                    return Ok(exit);
                }
                Ok(SessionEnd::Lost(reason)) => {
                    log::warn!(
                        "Lost the connection to {}: {reason}; consuming will resume once reconnected",
                        self.broker.describe()
                    );
                    // Their deliveries died with the connection; the broker
                    // delivers them again.
                    self.pending.clear();
                }
                Err(fatal) => {
                    let _ = connection.close(200, "Goodbye".into()).await;
                    return Err(fatal);
                }
            }
        }
    }

    /// Declares, consumes and dispatches on one connection until it ends.
    async fn session(
        &mut self,
        connection: &Connection,
        session: u64,
    ) -> Result<SessionEnd, Fatal> {
        let queues = self.topology.declare(connection).await?;
        let (incoming, deliveries) = async_channel::unbounded();
        let mut consumers = Vec::with_capacity(queues.len());
        for (index, queue) in queues.into_iter().enumerate() {
            let (consumer, stream) = self.start_consumer(connection, &queue).await?;
            consumers.push(consumer);
            let incoming = incoming.clone();
            async_global_executor::spawn(async move {
                let mut stream = stream;
                while let Some(delivery) = stream.next().await {
                    if incoming
                        .send(Event::Delivery(index, delivery))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = incoming.send(Event::StreamEnded(index)).await;
            })
            .detach();
        }
        drop(incoming);

        let mut stopping: Option<Exit> = None;
        loop {
            while stopping.is_none() && self.in_flight < self.workers.count() {
                let Some(job) = self.pending.pop_front() else {
                    break;
                };
                self.in_flight += 1;
                self.workers.submit(job).await;
            }
            if let Some(exit) = stopping
                && self.in_flight == 0
            {
                return Ok(SessionEnd::Exit(exit));
            }

            let event = self.next_event(&deliveries, stopping.is_some()).await;
            match event {
                Event::Delivery(index, Ok(delivery)) => {
                    if stopping.is_some() {
                        // Not settled: requeued when the channel closes.
                        continue;
                    }
                    let consumer = &consumers[index];
                    match wire::check_delivery(&delivery.properties, &delivery.data) {
                        Ok(checked) => self.pending.push_back(Job {
                            delivery,
                            queue: consumer.queue.clone(),
                            checked,
                            session,
                        }),
                        Err(reason) => {
                            log::warn!(
                                "Message id {} did not pass validation; ignoring message: {reason}",
                                wire::message_id(&delivery.properties)
                            );
                            settle(delivery, Settle::Reject, &consumer.channel).await;
                        }
                    }
                }
                Event::Delivery(index, Err(error)) => {
                    if stopping.is_some() {
                        continue;
                    }
                    return Ok(SessionEnd::Lost(format!(
                        "consuming from {:?} failed: {error}",
                        consumers[index].queue
                    )));
                }
                Event::StreamEnded(index) => {
                    if stopping.is_some() {
                        continue;
                    }
                    if !connection.status().connected() {
                        return Ok(SessionEnd::Lost("the connection closed".to_owned()));
                    }
                    log::error!(
                        "The consumer of queue {:?} was canceled by the AMQP broker! The consumer was canceled server-side, check with system administrators.",
                        consumers[index].queue
                    );
                    stopping = Some(Exit::Canceled);
                    self.cancel_all(&consumers).await;
                }
                Event::Done(job, outcome) => {
                    self.in_flight -= 1;
                    let message_id = job.message_id().to_owned();
                    let (action, next) = outcome.disposition();
                    if job.session == session {
                        let consumer = consumers
                            .iter()
                            .find(|consumer| consumer.queue == job.queue)
                            .map(|consumer| &consumer.channel);
                        if let Some(channel) = consumer {
                            settle(job.delivery, action, channel).await;
                        }
                    } else {
                        log::debug!(
                            "message {message_id} arrived on an earlier connection; the broker delivers it again"
                        );
                    }
                    match next {
                        Next::Continue => {}
                        Next::Stop(exit) => {
                            if let Exit::Halt(code) = exit
                                && code != 0
                            {
                                log::info!("Consumer halted with non-zero exit code ({code})");
                            }
                            if stopping.is_none() {
                                self.cancel_all(&consumers).await;
                            }
                            // A halt's code wins over a signal's 0.
                            stopping = Some(match stopping {
                                Some(Exit::Success) | None => exit,
                                Some(earlier) => earlier,
                            });
                        }
                        Next::Abort(exit) => {
                            log::error!(
                                "Unexpected error occurred in consumer on message {message_id}: {outcome}"
                            );
                            return Ok(SessionEnd::Exit(exit));
                        }
                    }
                }
                Event::StopRequested => {
                    stopping = Some(Exit::Success);
                    self.cancel_all(&consumers).await;
                }
            }
        }
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
    async fn next_event(
        &self,
        deliveries: &async_channel::Receiver<Event>,
        stopping: bool,
    ) -> Event {
        let done = async {
            match self.workers.next_result().await {
                Some((job, outcome)) => Event::Done(job, outcome),
                None => futures_lite::future::pending().await,
            }
        };
        let delivered = async {
            match deliveries.recv().await {
                Ok(event) => event,
                // Every stream has ended and said so already.
                Err(_) => futures_lite::future::pending().await,
            }
        };
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
        self.pending.clear();
        for consumer in consumers {
            if let Err(error) = consumer
                .channel
                .basic_cancel(consumer.tag.clone(), BasicCancelOptions::default())
                .await
            {
                log::debug!("cancelling the consumer of {:?}: {error}", consumer.queue);
            }
        }
    }
}

/// Settles one delivery as the outcome table says; taking the delivery by
/// value means it cannot be settled twice (a second settle would close the
/// channel).
async fn settle(delivery: Delivery, action: Settle, channel: &Channel) {
    let id = wire::message_id(&delivery.properties).to_owned();
    let result = match action {
        Settle::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
        Settle::Requeue => {
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
        // Tag 0 with `multiple`: every unsettled delivery on the channel,
        // prefetched ones included, as fedora-messaging does on a failure.
        Settle::RequeueAllUnsettled => channel
            .basic_nack(
                0,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await
            .map(|()| true),
    };
    if let Err(error) = result {
        log::warn!(
            "Could not settle message {id} ({action:?}): {error}; the broker will deliver it again"
        );
    }
}
