//! One connection's channels: declaring the queues and bindings, opening
//! a channel per queue with its QoS and consumer, and what the end of a
//! queue's delivery stream means.

use lapin::Connection;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};

use super::deadline::{UNSETTLED, bounded};
use super::limit::Policy;
use super::settler::{Ledger, Publisher, QueueChannel};
use crate::exit::{Exit, Fatal};
use crate::topology::{Topology, broker_code, broker_reply, queue_exists};

/// What one set-up opened: the queues' names (the broker's, for
/// server-named queues), their ledger and their delivery streams (in the
/// ledger's order).
pub struct Opened {
    pub names: Vec<String>,
    pub ledger: Ledger,
    pub streams: Vec<lapin::Consumer>,
}

/// Declares the queues and bindings, then opens a channel per queue with QoS `prefetch_count` and
/// starts consuming on it; with a delivery limit, also a channel in
/// confirm mode for its copies on the `publishing` connection, once its
/// dead-letter exchange is known to exist.
pub async fn open(
    connection: &Connection,
    publishing: &Connection,
    topology: &Topology,
    prefetch_count: u16,
    limit: Option<&Policy>,
) -> Result<Opened, Fatal> {
    let names = topology.declare(connection).await?;
    let publisher = match limit {
        Some(limit) => Some(open_publisher(publishing, limit).await?),
        None => None,
    };
    let mut queues = Vec::with_capacity(names.len());
    let mut streams = Vec::with_capacity(names.len());
    for name in &names {
        let (queue, stream) = start_consumer(connection, name, prefetch_count).await?;
        queues.push(queue);
        streams.push(stream);
    }
    Ok(Opened {
        names,
        ledger: Ledger::new(queues, publisher, prefetch_count),
        streams,
    })
}

/// The delivery limit's channel, in confirm mode, on the publishing
/// `connection`; its dead-letter exchange must exist (exit 10 otherwise,
/// as for any declaration).
pub async fn open_publisher(connection: &Connection, limit: &Policy) -> Result<Publisher, Fatal> {
    let registration = |what: &str, error: lapin::Error| {
        Fatal::new(
            Exit::Registration,
            format!("cannot {what} for [delivery_limit]: {error} (please report this bug)"),
        )
    };
    if let Some(exchange) = limit
        .dead_letter_exchange
        .as_deref()
        .filter(|name| !name.is_empty())
    {
        let channel = connection
            .create_channel()
            .await
            .map_err(|error| registration("open a channel", error))?;
        channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|error| {
                Fatal::new(
                    Exit::Declaration,
                    format!(
                        "[delivery_limit] dead_letter_exchange {exchange:?} cannot be used: {}; declare it, or fix the name",
                        broker_reply(&error)
                    ),
                )
            })?;
        let _ = channel.close(200, "checked".into()).await;
    }
    let channel = connection
        .create_channel()
        .await
        .map_err(|error| registration("open a channel", error))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|error| registration("enable publisher confirms", error))?;
    Ok(Publisher {
        channel,
        connection: connection.status().clone(),
    })
}

/// Opens a channel for `queue`, sets QoS on it and starts consuming.
pub async fn start_consumer(
    connection: &Connection,
    queue: &str,
    prefetch_count: u16,
) -> Result<(QueueChannel, lapin::Consumer), Fatal> {
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
        .basic_qos(prefetch_count, BasicQosOptions { global: false })
        .await
        .map_err(|error| registration("set QoS", error))?;
    let consumer_tag: ShortString = uuid::Uuid::new_v4().to_string().into();
    let stream = channel
        .basic_consume(
            queue.into(),
            consumer_tag.clone(),
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
        QueueChannel {
            queue: queue.into(),
            channel,
            consumer_tag,
        },
        stream,
    ))
}

/// What the end of a queue's stream, while consuming, means.
pub enum StreamEnd {
    /// The connection is gone.
    ConnectionLost(String),
    /// The channel closed, or the broker cancelled a consumer whose queue
    /// still exists: set the channels up again.
    Reopen(String),
    /// The broker cancelled the consumer and the queue is gone (exit 12).
    QueueGone,
}

/// Why `source`'s stream ended: the connection, the channel, or the
/// broker's cancel (then whether the queue still exists says which).
pub async fn why_ended(connection: &Connection, queue: &QueueChannel) -> StreamEnd {
    if !connection.status().connected() {
        return StreamEnd::ConnectionLost("the connection closed".to_owned());
    }
    if !queue.channel.status().connected() {
        return StreamEnd::Reopen(format!("The channel of queue {:?} was closed", queue.queue));
    }
    // fedora-messaging exits 12 on any cancel; a queue that still exists
    // (its node failed, a quorum queue's leader moved) is consumed again
    // instead.
    let checked = bounded("checking a cancelled consumer's queue", async {
        queue_exists(connection, &queue.queue).await
    });
    match checked.await {
        None => StreamEnd::ConnectionLost(UNSETTLED.to_owned()),
        Some(Ok(false)) => {
            log::error!(
                "The consumer of queue {:?} was canceled by the AMQP broker and the queue is gone! The consumer was canceled server-side, check with system administrators.",
                queue.queue
            );
            StreamEnd::QueueGone
        }
        Some(Ok(true)) => StreamEnd::Reopen(format!(
            "The AMQP broker canceled the consumer of queue {:?}, which still exists",
            queue.queue
        )),
        Some(Err(error)) => StreamEnd::Reopen(format!(
            "The AMQP broker canceled the consumer of queue {:?} (checking the queue: {error})",
            queue.queue
        )),
    }
}
