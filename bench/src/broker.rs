//! The benchmark queue on the local broker: declared as the contenders'
//! configurations declare it, emptied, and filled with messages in
//! fedora-messaging's wire format.

use fm_bench::sample_message;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2F";
pub use fm_bench::QUEUE;

pub struct Broker {
    _connection: Connection,
    channel: Channel,
}

impl Broker {
    pub fn connect() -> lapin::Result<Broker> {
        async_global_executor::block_on(async {
            let connection = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            channel
                .queue_declare(
                    QUEUE.into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            channel
                .queue_bind(
                    QUEUE.into(),
                    "amq.topic".into(),
                    format!("{QUEUE}.#").as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok(Broker {
                _connection: connection,
                channel,
            })
        })
    }

    /// Empties the queue and publishes `count` persistent messages to it,
    /// each confirmed.
    pub fn fill(&self, count: u64) -> Result<(), String> {
        let outgoing = sample_message()?
            .outgoing("")
            .map_err(|error| format!("the sample message: {error}"))?;
        async_global_executor::block_on(async {
            self.channel
                .queue_purge(QUEUE.into(), QueuePurgeOptions::default())
                .await
                .map_err(|error| format!("purge: {error}"))?;
            let mut sent = 0;
            while sent < count {
                // Confirms are awaited in batches: one round trip per batch.
                let batch = (count - sent).min(1000);
                let mut confirms = Vec::with_capacity(batch as usize);
                for _ in 0..batch {
                    let confirm = self
                        .channel
                        .basic_publish(
                            "amq.topic".into(),
                            outgoing.routing_key.as_str().into(),
                            BasicPublishOptions::default(),
                            &outgoing.body,
                            outgoing.properties.clone(),
                        )
                        .await
                        .map_err(|error| format!("publish: {error}"))?;
                    confirms.push(confirm);
                }
                for confirm in confirms {
                    confirm.await.map_err(|error| format!("confirm: {error}"))?;
                }
                sent += batch;
            }
            Ok(())
        })
    }

    /// Messages ready in the queue (not those delivered and unsettled).
    pub fn depth(&self) -> Result<u32, String> {
        async_global_executor::block_on(async {
            self.channel
                .queue_declare(
                    QUEUE.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map(|queue| queue.message_count())
                .map_err(|error| format!("queue depth: {error}"))
        })
    }
}
