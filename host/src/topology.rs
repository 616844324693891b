//! What is declared on the broker: the configuration's queues and
//! bindings, with `consume`'s command-line overrides applied the way
//! fedora-messaging applies them. Exchanges are never declared (as in
//! fedora-messaging since 2.0).

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{Channel, Connection};

use crate::config::{self, Config};
use crate::exit::{Exit, Fatal};
use crate::wire::check_short;

/// `consume`'s options that change what is declared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--routing-key`s: replace every binding's routing keys.
    pub routing_keys: Vec<String>,
    /// `--queue-name`: the only queue, with fedora-messaging's default
    /// queue settings, and the queue of every binding.
    pub queue_name: Option<String>,
    /// `--exchange`: every binding's exchange.
    pub exchange: Option<String>,
}

impl Overrides {
    /// Each override must fit where AMQP puts it.
    pub fn check(&self) -> Result<(), String> {
        for key in &self.routing_keys {
            check_short("--routing-key", key)?;
        }
        if let Some(queue) = &self.queue_name {
            check_short("--queue-name", queue)?;
        }
        if let Some(exchange) = &self.exchange {
            check_short("--exchange", exchange)?;
        }
        Ok(())
    }
}

/// One queue to declare and consume from, with its bindings.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    /// `""` asks the broker for a name.
    pub name: String,
    pub settings: config::Queue,
    pub bindings: Vec<BindingSpec>,
}

impl QueueSpec {
    /// Whether its arguments make it a quorum queue.
    pub fn is_quorum(&self) -> bool {
        self.settings
            .arguments
            .get("x-queue-type")
            .and_then(|kind| kind.as_str())
            == Some("quorum")
    }
}

/// One `queue.bind`: a binding with one of its routing keys.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingSpec {
    pub exchange: String,
    pub routing_key: String,
    pub arguments: toml::Table,
}

/// Everything `consume` declares, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub queues: Vec<QueueSpec>,
    pub passive: bool,
}

impl Topology {
    pub fn new(config: &Config, overrides: &Overrides) -> Topology {
        let queues: Vec<(String, config::Queue)> = match &overrides.queue_name {
            // fedora-messaging means the default queue's settings here (it
            // crashes looking them up when the file defines [queues.*]).
            Some(name) => vec![(name.clone(), config::default_queue())],
            None => config
                .queues
                .iter()
                .map(|(name, queue)| (name.clone(), queue.clone()))
                .collect(),
        };
        let mut specs: Vec<QueueSpec> = queues
            .into_iter()
            .map(|(name, settings)| QueueSpec {
                name,
                settings,
                bindings: Vec::new(),
            })
            .collect();
        for binding in &config.bindings {
            let queue = overrides.queue_name.as_ref().unwrap_or(&binding.queue);
            let exchange = overrides.exchange.as_ref().unwrap_or(&binding.exchange);
            let routing_keys = if overrides.routing_keys.is_empty() {
                &binding.routing_keys
            } else {
                &overrides.routing_keys
            };
            let Some(spec) = specs.iter_mut().find(|spec| spec.name == *queue) else {
                // fedora-messaging drops these silently.
                log::warn!(
                    "Ignoring the binding of queue {queue:?} to {exchange:?}: no such queue in [queues]"
                );
                continue;
            };
            spec.bindings
                .extend(routing_keys.iter().map(|key| BindingSpec {
                    exchange: exchange.clone(),
                    routing_key: key.clone(),
                    arguments: binding.arguments.clone(),
                }));
        }
        Topology {
            queues: specs,
            passive: config.passive_declares,
        }
    }

    /// Declares every queue and binding on one channel, closed afterwards,
    /// and returns the queues' names (the broker's, for `""`), in order.
    pub async fn declare(&self, connection: &Connection) -> Result<Vec<String>, Fatal> {
        let channel = connection.create_channel().await.map_err(|error| {
            Fatal::new(
                Exit::Registration,
                format!("cannot open a channel to declare queues: {error}"),
            )
        })?;
        let mut names = Vec::with_capacity(self.queues.len());
        for spec in &self.queues {
            let name = self.declare_queue(&channel, spec).await?;
            for binding in &spec.bindings {
                channel
                    .queue_bind(
                        name.as_str().into(),
                        binding.exchange.as_str().into(),
                        binding.routing_key.as_str().into(),
                        QueueBindOptions::default(),
                        field_table(&binding.arguments),
                    )
                    .await
                    .map_err(|error| {
                        let hint = match broker_code(&error) {
                            Some(404) => {
                                " (exchanges are not declared by consumers: create it, or fix the binding's `exchange`)"
                            }
                            Some(403) => " (check your user's permissions)",
                            _ => "",
                        };
                        Fatal::new(
                            Exit::Declaration,
                            format!(
                                "Unable to bind queue {name:?} to exchange {:?} with routing key {:?}: the broker responded with {}{hint}",
                                binding.exchange,
                                binding.routing_key,
                                broker_reply(&error)
                            ),
                        )
                    })?;
            }
            log::info!(
                "Declared queue {name:?} with {} binding(s)",
                spec.bindings.len()
            );
            names.push(name);
        }
        // A close that fails changes nothing: everything is declared.
        let _ = channel.close(200, "declarations done".into()).await;
        Ok(names)
    }

    async fn declare_queue(&self, channel: &Channel, spec: &QueueSpec) -> Result<String, Fatal> {
        let name = &spec.name;
        let options = QueueDeclareOptions {
            passive: self.passive,
            durable: spec.settings.durable,
            exclusive: spec.settings.exclusive,
            auto_delete: spec.settings.auto_delete,
            nowait: false,
        };
        let queue = channel
            .queue_declare(
                name.as_str().into(),
                options,
                field_table(&spec.settings.arguments),
            )
            .await
            .map_err(|error| {
                let hint = match broker_code(&error) {
                    Some(404) if self.passive => {
                        " (passive_declares is on, so the queue must already exist: create it or turn passive_declares off)"
                    }
                    // 405 when exclusivity differs or another connection
                    // holds it exclusively, 406 for the other settings.
                    Some(405) | Some(406) => {
                        " (the queue exists with other settings or is another connection's exclusive queue: match its settings in [queues], or with --queue-name use a new name, since it declares fedora-messaging's default queue: not durable, auto-delete, exclusive)"
                    }
                    Some(403) => " (check your user's permissions)",
                    _ => "",
                };
                Fatal::new(
                    Exit::Declaration,
                    format!(
                        "Unable to declare the queue {name:?} on the AMQP broker: the broker responded with {}{hint}",
                        broker_reply(&error)
                    ),
                )
            })?;
        Ok(queue.name().as_str().to_owned())
    }
}

/// Whether `queue` still exists, even if it cannot be used right now (a
/// passive declare on a channel of its own, since a refusal closes the
/// channel).
pub async fn queue_exists(connection: &Connection, queue: &str) -> Result<bool, lapin::Error> {
    let channel = connection.create_channel().await?;
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
    {
        Ok(_) => {
            let _ = channel.close(200, "checked".into()).await;
            Ok(true)
        }
        // RabbitMQ answers 404 too for a queue that exists on a node that
        // is down (a classic queue's home node), or whose process stopped:
        // only "no queue" means it is gone.
        Err(error) if broker_code(&error) == Some(404) => Ok(!says_no_such_queue(&error)),
        Err(error) => Err(error),
    }
}

/// Whether a 404 is RabbitMQ's "NOT_FOUND - no queue 'NAME' in vhost
/// 'VHOST'", rather than "home node 'NODE' of durable queue … is down or
/// inaccessible" and the like, which are about a queue that exists.
fn says_no_such_queue(error: &lapin::Error) -> bool {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => amqp.get_message().as_str().contains("no queue"),
        _ => false,
    }
}

/// The AMQP reply code of a broker refusal, if the error is one.
pub fn broker_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.kind().get_id()),
        _ => None,
    }
}

/// `CODE TEXT` of a broker refusal, or the error itself.
pub fn broker_reply(error: &lapin::Error) -> String {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            format!("{} {}", amqp.kind().get_id(), amqp.get_message().as_str())
        }
        _ => error.to_string(),
    }
}

/// TOML arguments as an AMQP table, with integers typed as pika types
/// them (32-bit when they fit), so a queue declared by fedora-messaging is
/// equivalent to ours.
pub fn field_table(table: &toml::Table) -> FieldTable {
    let mut fields = FieldTable::default();
    for (key, value) in table {
        fields.insert(key.as_str().into(), amqp_value(value));
    }
    fields
}

fn amqp_value(value: &toml::Value) -> AMQPValue {
    match value {
        toml::Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        toml::Value::Integer(n) => match i32::try_from(*n) {
            Ok(small) => AMQPValue::LongInt(small),
            Err(_) => AMQPValue::LongLongInt(*n),
        },
        toml::Value::Float(f) => AMQPValue::Double(*f),
        toml::Value::Boolean(b) => AMQPValue::Boolean(*b),
        toml::Value::Datetime(d) => AMQPValue::LongString(LongString::from(d.to_string())),
        toml::Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(amqp_value).collect::<Vec<_>>(),
        )),
        toml::Value::Table(table) => AMQPValue::FieldTable(field_table(table)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_QUEUES: &str = r#"
        [queues.first]
        durable = true
        auto_delete = false
        exclusive = false
        arguments = {"x-max-length" = 100}
        [queues.second]
        durable = true
        auto_delete = false
        exclusive = false
        arguments = {}
        [[bindings]]
        queue = "first"
        exchange = "amq.topic"
        routing_keys = ["a.#", "b.#"]
        [[bindings]]
        queue = "second"
        exchange = "other"
        routing_keys = ["c"]
        [[bindings]]
        queue = "missing"
        exchange = "amq.topic"
        routing_keys = ["d"]
    "#;

    #[test]
    fn one_bind_per_routing_key_and_unknown_queues_ignored() {
        let config = Config::parse(TWO_QUEUES).unwrap();
        let topology = Topology::new(&config, &Overrides::default());
        let summary: Vec<(String, Vec<String>)> = topology
            .queues
            .iter()
            .map(|q| {
                (
                    q.name.clone(),
                    q.bindings
                        .iter()
                        .map(|b| format!("{}:{}", b.exchange, b.routing_key))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "first".to_owned(),
                    vec!["amq.topic:a.#".to_owned(), "amq.topic:b.#".to_owned()]
                ),
                ("second".to_owned(), vec!["other:c".to_owned()]),
            ]
        );
    }

    #[test]
    fn overrides_apply_to_every_binding() {
        let config = Config::parse(TWO_QUEUES).unwrap();
        let overrides = Overrides {
            routing_keys: vec!["x".into(), "y".into()],
            queue_name: Some("mine".into()),
            exchange: Some("ex".into()),
        };
        let topology = Topology::new(&config, &overrides);
        assert_eq!(topology.queues.len(), 1);
        let queue = &topology.queues[0];
        assert_eq!(queue.name, "mine");
        assert_eq!(queue.settings, config::default_queue());
        // Three bindings, each now to "mine" on "ex" with both keys.
        assert_eq!(queue.bindings.len(), 6);
        assert!(queue.bindings.iter().all(|b| b.exchange == "ex"));
    }

    #[test]
    fn the_defaults_consume_everything_from_a_server_named_queue() {
        let topology = Topology::new(&Config::default(), &Overrides::default());
        assert_eq!(topology.queues.len(), 1);
        assert_eq!(topology.queues[0].name, "");
        assert_eq!(topology.queues[0].bindings[0].routing_key, "#");
        assert_eq!(topology.queues[0].bindings[0].exchange, "amq.topic");
    }

    #[test]
    fn integers_are_typed_as_pika_types_them() {
        let table: toml::Table =
            toml::from_str("small = 100\nbig = 10000000000\nq = 'quorum'").unwrap();
        let fields = field_table(&table);
        assert_eq!(fields.inner()["small"], AMQPValue::LongInt(100));
        assert_eq!(
            fields.inner()["big"],
            AMQPValue::LongLongInt(10_000_000_000)
        );
        assert_eq!(fields.inner()["q"], AMQPValue::LongString("quorum".into()));
    }
}
