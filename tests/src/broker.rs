//! The test broker, reached as guest: the main node of the version under
//! test (see [`crate::nodes`]), or another node by its URL; queues,
//! messages and users set up for tests.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::nodes::{amqp_url, rabbitmqctl, rabbitmqctl_if_it_can};
use async_global_executor::block_on;
use fm_host::wire::RecordMessage;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

/// A connection to the test broker, for setting up and inspecting queues.
pub struct TestBroker {
    _connection: Connection,
    channel: Channel,
}

/// A message as it sits in a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: String,
    pub redelivered: bool,
}

/// A message taken from a queue whole.
#[derive(Debug, Clone)]
pub struct Taken {
    pub id: String,
    pub redelivered: bool,
    pub headers: FieldTable,
    pub body: Vec<u8>,
}

impl TestBroker {
    pub fn connect() -> TestBroker {
        TestBroker::connect_to(amqp_url())
    }

    pub fn connect_to(url: &str) -> TestBroker {
        block_on(async {
            let connection = Connection::connect(url, ConnectionProperties::default())
                .await
                .unwrap_or_else(|error| {
                    panic!(
                        "no RabbitMQ at {url} ({error}): run {}",
                        crate::nodes::version().start_with
                    )
                });
            let channel = connection.create_channel().await.expect("a channel");
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .expect("publisher confirms");
            TestBroker {
                _connection: connection,
                channel,
            }
        })
    }

    /// A queue name no other test (or earlier run) uses.
    pub fn unique_name(prefix: &str) -> String {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        format!(
            "fm-e2e-{prefix}-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        )
    }

    /// Declares a durable queue (with `arguments`) bound to amq.topic with
    /// routing key `NAME.#`, as the config from [`queue_config`] does.
    pub fn declare_queue(&self, name: &str, arguments: FieldTable) {
        self.declare_bound(name, true, arguments);
    }

    /// The same queue, but not durable: a broker restart deletes it.
    pub fn declare_transient_queue(&self, name: &str) {
        self.declare_bound(name, false, FieldTable::default());
    }

    fn declare_bound(&self, name: &str, durable: bool, arguments: FieldTable) {
        block_on(async {
            self.channel
                .queue_declare(
                    name.into(),
                    QueueDeclareOptions {
                        durable,
                        ..QueueDeclareOptions::default()
                    },
                    arguments,
                )
                .await
                .expect("declare the test queue");
            self.channel
                .queue_bind(
                    name.into(),
                    "amq.topic".into(),
                    format!("{name}.#").as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind the test queue");
        });
    }

    /// Publishes a record as `fedora-messaging publish` would, to amq.topic.
    pub fn publish(&self, record: &serde_json::Value) {
        let outgoing = outgoing(record);
        self.publish_raw(&outgoing.routing_key, outgoing.properties, &outgoing.body);
    }

    /// Publishes a record as [`TestBroker::publish`] does, with `extra`
    /// headers beside its own (what a careless or hostile publisher adds).
    pub fn publish_with_headers(
        &self,
        record: &serde_json::Value,
        extra: &[(&str, lapin::types::AMQPValue)],
    ) {
        let outgoing = outgoing(record);
        let mut headers = outgoing.properties.headers().clone().unwrap_or_default();
        for (name, value) in extra {
            headers.insert((*name).into(), value.clone());
        }
        let properties = outgoing.properties.with_headers(headers);
        self.publish_raw(&outgoing.routing_key, properties, &outgoing.body);
    }

    /// Publishes records as [`TestBroker::publish`] does, all before
    /// waiting for the confirms: thousands in a second or two, where one
    /// confirm at a time takes a millisecond or more each.
    pub fn publish_all(&self, records: &[serde_json::Value]) {
        block_on(async {
            let mut confirms = Vec::with_capacity(records.len());
            for record in records {
                let outgoing = outgoing(record);
                confirms.push(
                    self.send(&outgoing.routing_key, outgoing.properties, &outgoing.body)
                        .await,
                );
            }
            for confirm in confirms {
                let confirmation = confirm.await.expect("the broker's confirm");
                assert!(confirmation.is_ack(), "the broker refused a message");
            }
        });
    }

    /// Publishes exactly these properties and body, and waits for the
    /// broker's confirm.
    pub fn publish_raw(&self, routing_key: &str, properties: BasicProperties, body: &[u8]) {
        block_on(async {
            let confirm = self.send(routing_key, properties, body).await;
            confirm.await.expect("the broker's confirm");
        });
    }

    /// Sends one message to amq.topic; the broker's confirm is to await.
    async fn send(
        &self,
        routing_key: &str,
        properties: BasicProperties,
        body: &[u8],
    ) -> lapin::PublisherConfirm {
        self.channel
            .basic_publish(
                "amq.topic".into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish")
    }

    /// How many messages wait in `queue`.
    pub fn depth(&self, queue: &str) -> u32 {
        block_on(async {
            self.channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("the queue exists")
                .message_count()
        })
    }

    /// Takes every message out of `queue` (acknowledging them), in order.
    pub fn drain(&self, queue: &str) -> Vec<Queued> {
        self.take_all(queue)
            .into_iter()
            .map(|taken| Queued {
                id: taken.id,
                redelivered: taken.redelivered,
            })
            .collect()
    }

    /// Takes every message out of `queue` whole, in order.
    pub fn take_all(&self, queue: &str) -> Vec<Taken> {
        let mut taken = Vec::new();
        block_on(async {
            while let Some(message) = self
                .channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get")
            {
                let properties = &message.delivery.properties;
                taken.push(Taken {
                    id: properties
                        .message_id()
                        .as_ref()
                        .map(|id| id.as_str().to_owned())
                        .unwrap_or_default(),
                    redelivered: message.delivery.redelivered,
                    headers: properties.headers().clone().unwrap_or_default(),
                    body: message.delivery.data.clone(),
                });
            }
        });
        taken
    }

    /// Waits (up to 30 s, then fails the test) until `queue` holds at
    /// least `count` ready messages; how many it holds then.
    pub fn wait_depth_at_least(&self, queue: &str, count: u32) -> u32 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let depth = self.depth(queue);
            if depth >= count {
                return depth;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{queue} holds {depth} messages, not {count}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Waits (up to 30 s, then fails the test) until `queue` holds
    /// exactly `count` ready messages.
    pub fn wait_depth(&self, queue: &str, count: u32) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let depth = self.depth(queue);
            if depth == count {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{queue} holds {depth} messages, not {count}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Binds `queue` to `exchange` with `routing_key`.
    pub fn bind(&self, queue: &str, exchange: &str, routing_key: &str) {
        block_on(async {
            self.channel
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    routing_key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind the queue");
        });
    }

    /// Whether `queue` exists: a passive declare, on a channel of its own,
    /// which the broker closes when it does not.
    pub fn queue_exists(&self, queue: &str) -> bool {
        block_on(async {
            let channel = self._connection.create_channel().await.expect("a channel");
            let declared = channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            if declared.is_ok() {
                let _ = channel.close(200, "checked".into()).await;
            }
            declared.is_ok()
        })
    }

    pub fn delete_queue(&self, queue: &str) {
        block_on(async {
            self.channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await
                .expect("delete the queue");
        });
    }
}

/// A config consuming the durable queue `queue` (bound with `QUEUE.#`),
/// plus `extra` TOML, logging at INFO.
pub fn queue_config(queue: &str, extra: &str) -> String {
    queue_config_at(amqp_url(), queue, extra)
}

/// [`queue_config`] for the broker at `url`.
pub fn queue_config_at(url: &str, queue: &str, extra: &str) -> String {
    format!(
        r#"amqp_url = "{url}"
{extra}
{}
[log_config]
version = 1
disable_existing_loggers = false

[log_config.root]
level = "INFO"
"#,
        queue_tables(queue, &format!("{queue}.#"))
    )
}

/// The `[queues]` and `[[bindings]]` tables of a durable `queue` bound to
/// amq.topic with `routing_key`, as both fedora-messaging and this host
/// read them.
pub fn queue_tables(queue: &str, routing_key: &str) -> String {
    format!(
        r#"[queues."{queue}"]
durable = true
auto_delete = false
exclusive = false
arguments = {{}}

[[bindings]]
queue = "{queue}"
exchange = "amq.topic"
routing_keys = ["{routing_key}"]
"#
    )
}

/// A broker user with these permissions on vhost `/` (configure, write,
/// read regexps), or none at all when `permissions` is `None`.
pub fn ensure_user(name: &str, password: &str, permissions: Option<[&str; 3]>) {
    // Left over from an earlier run, possibly with other permissions.
    rabbitmqctl_if_it_can(&["delete_user", name]);
    rabbitmqctl(&["add_user", name, password]);
    if let Some([configure, write, read]) = permissions {
        rabbitmqctl(&["set_permissions", "-p", "/", name, configure, write, read]);
    }
}

/// A fresh durable queue whose rejected messages go to a queue of their
/// own (a dead-letter exchange), and a config consuming it with `extra`
/// TOML. Returns the broker, the queue, the dead-letter queue, the config.
pub fn dead_lettered_queue(prefix: &str, extra: &str) -> (TestBroker, String, String, String) {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name(prefix);
    let dead = format!("{queue}-dead");
    broker.declare_queue(&dead, FieldTable::default());
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dead.as_str().into()),
    );
    broker.declare_queue(&queue, arguments);
    let config = queue_config(&queue, extra).replace(
        "arguments = {}",
        &format!(
            "arguments = {{\"x-dead-letter-exchange\" = \"\", \"x-dead-letter-routing-key\" = \"{dead}\"}}"
        ),
    );
    (broker, queue, dead, config)
}

/// A fresh durable queue holding `messages` (id, body for Scripted), and a
/// config consuming it with `extra` TOML. Returns the broker, the queue,
/// the directory holding the config (removed when dropped), the config.
pub fn queue_with(
    prefix: &str,
    extra: &str,
    messages: &[(&str, serde_json::Value)],
) -> (TestBroker, String, tempfile::TempDir, std::path::PathBuf) {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name(prefix);
    broker.declare_queue(&queue, FieldTable::default());
    for (id, body) in messages {
        broker.publish(
            &serde_json::json!({"id": id, "topic": format!("{queue}.test"), "body": body}),
        );
    }
    let dir = crate::scratch();
    let conf = crate::config_file(dir.path(), &queue_config(&queue, extra));
    (broker, queue, dir, conf)
}

/// A test record as `fedora-messaging publish` would send it.
fn outgoing(record: &serde_json::Value) -> fm_host::wire::Outgoing {
    RecordMessage::from_json(record.clone())
        .expect("a valid test record")
        .outgoing("")
        .expect("a publishable test record")
}
