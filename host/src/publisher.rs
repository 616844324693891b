//! Publishing from consumers: the process-wide service behind the plugin
//! interface's `publish` and `publish_confirmed`.
//!
//! Under `consume` it publishes through the engine's own connection (never
//! a connection per plugin), on a channel of its own in confirm mode, and
//! returns once the broker confirmed the message: a consumer that publishes
//! while handling a message has its messages confirmed before that message
//! is acknowledged. A call blocks its caller (a consumer's thread, or one
//! the plugin started) and never the engine. While the connection is down
//! it waits for the engine's next one, up to its deadline. Under
//! `reconsume` messages are printed, or written to a file in the record
//! format, never sent. Elsewhere publishing is unavailable.
//!
//! On the wire a message is exactly what the `publish` command sends:
//! [`RecordMessage::outgoing`], with `topic_prefix`.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, Connection};
use serde_json::Value;

use crate::monitor::Stats;
use crate::record::record_line;
use crate::topology::{broker_code, broker_reply};
use crate::traces;
use crate::wire::{self, RecordMessage};

/// The longest a publish waits, whatever timeout it asks for (a longer
/// one would overflow the clock).
const LONGEST_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Why a publish failed; the plugin interface's `PublishFailure`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Timeout(String),
    Unreachable(String),
    Forbidden(String),
    Returned(String),
    Invalid(String),
    Unavailable(String),
}

impl Failure {
    /// What it says, without its kind.
    pub fn reason(&self) -> &str {
        match self {
            Failure::Timeout(reason)
            | Failure::Unreachable(reason)
            | Failure::Forbidden(reason)
            | Failure::Returned(reason)
            | Failure::Invalid(reason)
            | Failure::Unavailable(reason) => reason,
        }
    }
}

/// What the configuration says about publishing.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `publish_exchange`.
    pub exchange: String,
    pub topic_prefix: String,
    /// `publish_priority`: a message's priority when it sets none.
    pub priority: Option<u8>,
}

impl Settings {
    pub fn from_config(config: &crate::config::Config) -> Settings {
        Settings {
            exchange: config.publish_exchange.clone(),
            topic_prefix: config.topic_prefix.clone(),
            priority: config.publish_priority,
        }
    }
}

/// Where `reconsume` puts what consumers publish.
pub enum Output {
    /// Standard output, one `published to EXCHANGE: RECORD` line each.
    Print,
    /// A file, one record line each (`--publish-to FILE`).
    File(std::fs::File),
}

/// The service; see [`service`].
pub struct Service {
    state: Mutex<State>,
    /// Signalled when the engine's connection comes or goes.
    changed: Condvar,
    /// Held while a publishing channel is being opened.
    opening: Mutex<()>,
}

struct State {
    sink: Sink,
    settings: Option<Settings>,
    stats: Option<Arc<Stats>>,
    connection: Option<Arc<Connection>>,
    channel: Option<Channel>,
}

enum Sink {
    Unavailable,
    Broker,
    Output(Output),
}

/// The process's publishing service.
pub fn service() -> &'static Service {
    static SERVICE: OnceLock<Service> = OnceLock::new();
    SERVICE.get_or_init(|| Service {
        state: Mutex::new(State {
            sink: Sink::Unavailable,
            settings: None,
            stats: None,
            connection: None,
            channel: None,
        }),
        changed: Condvar::new(),
        opening: Mutex::new(()),
    })
}

impl Service {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere mid-update; the
        // state is still consistent (each update is one assignment).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `consume`: publish to the broker the engine connects to.
    pub fn use_broker(&self, settings: Settings, stats: Arc<Stats>) {
        let mut state = self.lock();
        state.sink = Sink::Broker;
        state.settings = Some(settings);
        state.stats = Some(stats);
    }

    /// `reconsume`: print or write each message, never send it.
    pub fn use_output(&self, settings: Settings, output: Output) {
        let mut state = self.lock();
        state.sink = Sink::Output(output);
        state.settings = Some(settings);
    }

    /// The engine has a connection.
    pub fn connected(&self, connection: Arc<Connection>) {
        let mut state = self.lock();
        state.connection = Some(connection);
        state.channel = None;
        self.changed.notify_all();
    }

    /// The engine's connection is gone (or about to be closed).
    pub fn disconnected(&self) {
        let mut state = self.lock();
        state.connection = None;
        state.channel = None;
        self.changed.notify_all();
    }

    /// Publishes `record` (fedora-messaging's record format) to `exchange`
    /// (empty: `publish_exchange`) within `timeout`; the message's id.
    pub fn publish(
        &self,
        record: &str,
        exchange: &str,
        timeout: Duration,
    ) -> Result<String, Failure> {
        let timeout = timeout.min(LONGEST_TIMEOUT);
        let asked = Instant::now();
        let deadline = asked + timeout;
        let (message, exchange) = {
            let state = self.lock();
            let Some(settings) = &state.settings else {
                return Err(Failure::Unavailable(
                    "this command does not publish; consumers publish under `consume` and `reconsume`".to_owned(),
                ));
            };
            let message = prepare(record, settings)?;
            let exchange = if exchange.is_empty() {
                settings.exchange.clone()
            } else {
                exchange.to_owned()
            };
            wire::check_short("the exchange", &exchange).map_err(Failure::Invalid)?;
            (message, exchange)
        };
        if let Some(written) = self.write_out(&message, &exchange) {
            return written;
        }
        let mut outgoing = {
            let state = self.lock();
            let prefix = state
                .settings
                .as_ref()
                .map_or("", |s| s.topic_prefix.as_str());
            message.outgoing(prefix).map_err(Failure::Invalid)?
        };
        // A child of the message the consumer handles, if any; the copy
        // carries the send span's trace context on.
        let (properties, span) = traces::send(
            &exchange,
            &outgoing.routing_key,
            &message.id,
            outgoing.properties,
        );
        outgoing.properties = properties;
        let published =
            self.publish_until_answered(&outgoing, &exchange, deadline, timeout, asked, message.id);
        if let Some(span) = span {
            span.end(published.as_ref().err().map(Failure::reason));
        }
        published
    }

    /// Publishes `outgoing` until the broker confirms or refuses it, the
    /// deadline passes, or no connection comes.
    fn publish_until_answered(
        &self,
        outgoing: &wire::Outgoing,
        exchange: &str,
        deadline: Instant,
        timeout: Duration,
        asked: Instant,
        id: String,
    ) -> Result<String, Failure> {
        let mut had_connection = false;
        loop {
            let channel = self.channel(deadline, timeout, &mut had_connection)?;
            match publish_on(&channel, exchange, outgoing, deadline) {
                Attempt::Confirmed => {
                    if let Some(stats) = &self.lock().stats {
                        stats.published(asked.elapsed());
                    }
                    return Ok(id);
                }
                Attempt::Refused(failure) => {
                    self.forget(&channel);
                    return Err(failure);
                }
                Attempt::TimedOut => {
                    return Err(Failure::Timeout(format!(
                        "the broker did not confirm message {id} within {:.1} s",
                        timeout.as_secs_f64()
                    )));
                }
                // The channel or the connection broke: wait for the next.
                Attempt::Broken(reason) => {
                    log::debug!("publishing message {id} failed ({reason}); trying again");
                    self.forget(&channel);
                }
            }
        }
    }

    /// Under `reconsume`: the message printed or written (`None` under
    /// `consume`).
    fn write_out(
        &self,
        message: &RecordMessage,
        exchange: &str,
    ) -> Option<Result<String, Failure>> {
        let mut state = self.lock();
        let prefix = state
            .settings
            .as_ref()
            .map_or(String::new(), |s| s.topic_prefix.clone());
        let Sink::Output(output) = &mut state.sink else {
            return None;
        };
        let line = match message
            .as_published(&prefix)
            .and_then(|published| record_line(&published.view()))
        {
            Ok(line) => line.trim_end().to_owned(),
            Err(reason) => return Some(Err(Failure::Invalid(reason))),
        };
        let written = match output {
            // A closed stdout must not fail the consumer.
            Output::Print => {
                let _ = writeln!(std::io::stdout(), "published to {exchange}: {line}");
                Ok(())
            }
            Output::File(file) => writeln!(file, "{line}").and_then(|()| file.flush()),
        };
        Some(written.map(|()| message.id.clone()).map_err(|error| {
            Failure::Unavailable(format!("cannot write the published message: {error}"))
        }))
    }

    /// The publishing channel, opened on the engine's connection when
    /// needed; waits for a connection up to `deadline`. The state's lock
    /// is never held while the broker is asked for anything, so the engine
    /// (which takes it to say its connection came or went) never waits on
    /// a publisher.
    fn channel(
        &self,
        deadline: Instant,
        timeout: Duration,
        had_connection: &mut bool,
    ) -> Result<Channel, Failure> {
        loop {
            if let Some(channel) = self.current_channel() {
                return Ok(channel);
            }
            let connection = self
                .lock()
                .connection
                .clone()
                .filter(|connection| connection.status().connected());
            if let Some(connection) = connection {
                *had_connection = true;
                // One opening at a time; another may have finished first.
                let _opening = self
                    .opening
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some(channel) = self.current_channel() {
                    return Ok(channel);
                }
                match open_channel(&connection, deadline) {
                    Ok(channel) => {
                        let mut state = self.lock();
                        // Unless the engine moved on to another connection
                        // meanwhile.
                        if state
                            .connection
                            .as_ref()
                            .is_some_and(|current| Arc::ptr_eq(current, &connection))
                        {
                            state.channel = Some(channel.clone());
                        }
                        return Ok(channel);
                    }
                    Err(reason) => log::debug!("cannot open a publishing channel: {reason}"),
                }
            }
            let state = self.lock();
            let now = Instant::now();
            if now >= deadline {
                return Err(if *had_connection {
                    Failure::Timeout(format!(
                        "no publishing channel within {:.1} s",
                        timeout.as_secs_f64()
                    ))
                } else {
                    Failure::Unreachable(format!(
                        "no connection to the broker within {:.1} s",
                        timeout.as_secs_f64()
                    ))
                });
            }
            // Woken when the engine connects or disconnects; at most a
            // tenth of a second, so that a channel that failed to open is
            // tried again without spinning.
            let wait = (deadline - now).min(Duration::from_millis(100));
            drop(
                self.changed
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            );
        }
    }

    /// The publishing channel, if one is open.
    fn current_channel(&self) -> Option<Channel> {
        self.lock()
            .channel
            .clone()
            .filter(|channel| channel.status().connected())
    }

    fn forget(&self, channel: &Channel) {
        let mut state = self.lock();
        if state
            .channel
            .as_ref()
            .is_some_and(|current| current.id() == channel.id())
        {
            state.channel = None;
        }
    }
}

/// The record, checked as `publish` checks a file's lines, with
/// `publish_priority` for a message that sets no priority.
fn prepare(record: &str, settings: &Settings) -> Result<RecordMessage, Failure> {
    let mut value: Value = serde_json::from_str(record)
        .map_err(|error| Failure::Invalid(format!("not a JSON object: {error}")))?;
    if let (Some(priority), Value::Object(fields)) = (settings.priority, &mut value)
        && fields.get("priority").is_none_or(Value::is_null)
    {
        fields.insert("priority".to_owned(), Value::from(priority));
    }
    RecordMessage::from_json(value).map_err(Failure::Invalid)
}

fn open_channel(connection: &Connection, deadline: Instant) -> Result<Channel, String> {
    let opening = async {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok::<_, lapin::Error>(channel)
    };
    match async_global_executor::block_on(until(deadline, opening)) {
        Some(Ok(channel)) => Ok(channel),
        Some(Err(error)) => Err(error.to_string()),
        None => Err("no answer before the deadline".to_owned()),
    }
}

enum Attempt {
    Confirmed,
    Refused(Failure),
    TimedOut,
    Broken(String),
}

fn publish_on(
    channel: &Channel,
    exchange: &str,
    outgoing: &wire::Outgoing,
    deadline: Instant,
) -> Attempt {
    let publishing = async {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                outgoing.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &outgoing.body,
                outgoing.properties.clone(),
            )
            .await?;
        confirm.await
    };
    match async_global_executor::block_on(until(deadline, publishing)) {
        None => Attempt::TimedOut,
        Some(Ok(Confirmation::Ack(_) | Confirmation::NotRequested)) => Attempt::Confirmed,
        Some(Ok(Confirmation::Nack(_))) => Attempt::Refused(Failure::Returned(format!(
            "the broker did not accept the message for exchange {exchange:?}"
        ))),
        Some(Err(error)) => match broker_code(&error) {
            Some(403) => Attempt::Refused(Failure::Forbidden(format!(
                "exchange {exchange:?}: {}",
                broker_reply(&error)
            ))),
            Some(404) => Attempt::Refused(Failure::Returned(format!(
                "exchange {exchange:?}: {}",
                broker_reply(&error)
            ))),
            // The message itself is refused (larger than the broker's
            // max_message_size): sending it again cannot help.
            Some(406) => Attempt::Refused(Failure::Returned(broker_reply(&error))),
            _ => Attempt::Broken(error.to_string()),
        },
    }
}

/// `step`, unless `deadline` comes first (`None`).
async fn until<T>(deadline: Instant, step: impl std::future::Future<Output = T>) -> Option<T> {
    async { Some(step.await) }
        .or(async {
            async_io::Timer::at(deadline).await;
            None
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(priority: Option<u8>) -> Settings {
        Settings {
            exchange: "amq.topic".to_owned(),
            topic_prefix: String::new(),
            priority,
        }
    }

    #[test]
    fn a_timeout_too_long_for_the_clock_is_bounded_not_a_panic() {
        // A plugin can ask for u64::MAX milliseconds.
        let result = service().publish(r#"{"topic": "t", "body": {}}"#, "", Duration::MAX);
        assert!(matches!(result, Err(Failure::Unavailable(_))), "{result:?}");
    }

    #[test]
    fn a_record_without_priority_takes_publish_priority() {
        let record = r#"{"topic": "t", "body": {}}"#;
        assert_eq!(prepare(record, &settings(Some(4))).unwrap().priority, 4);
        assert_eq!(prepare(record, &settings(None)).unwrap().priority, 0);
        let own = r#"{"topic": "t", "body": {}, "priority": 2}"#;
        assert_eq!(prepare(own, &settings(Some(4))).unwrap().priority, 2);
    }

    #[test]
    fn records_that_are_not_messages_are_invalid() {
        for record in ["[]", r#"{"topic": "t", "body": []}"#, "{"] {
            assert!(
                matches!(prepare(record, &settings(None)), Err(Failure::Invalid(_))),
                "{record}"
            );
        }
    }
}
