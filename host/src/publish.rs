//! `fedora-messaging publish [--exchange X] FILE`: publish a record file
//! with publisher confirms, as fedora-messaging's `publish` does; and
//! `replay MESSAGE_ID`, which publishes one message from datagrepper the
//! same way.
//!
//! Exit codes are fedora-messaging's: 0 all confirmed; 2 a line is not a
//! message (its number is named); 121 the broker refused or returned a
//! message; 111 the broker could not be reached within 30 s; 1 anything
//! else. Unlike fedora-messaging, the whole file is checked before the
//! first message is sent, so a bad line publishes nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};

use crate::broker::{Broker, ConnectError};
use crate::config::Config;
use crate::exit::{Exit, Fatal};
use crate::reconsume;
use crate::refusals::RefusalRound;
use crate::topology::{broker_code, broker_reply};
use crate::traces;
use crate::wire::{self, RecordMessage, read_record_file};

/// fedora-messaging's publish timeout.
const TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(config: &Config, exchange: Option<&str>, file: &Path) -> Result<Exit, Fatal> {
    let messages = read_record_file(file)?;
    let exchange = exchange.unwrap_or(&config.publish_exchange);
    wire::check_short("--exchange", exchange).map_err(|reason| Fatal::new(Exit::Usage, reason))?;
    publish(config, exchange, &messages, &config.topic_prefix, true)
}

/// `fedora-messaging replay MESSAGE_ID`: fetches the message from
/// datagrepper and publishes it to the configuration's `publish_exchange`
/// as it was, so without `topic_prefix`. The exit codes are `publish`'s
/// (fedora-messaging's `replay` ends in a traceback and 1 on a publish
/// error).
pub fn replay(config: &Config, datagrepper_url: &str, message_id: &str) -> Result<Exit, Fatal> {
    let message = reconsume::fetch_from_datagrepper(datagrepper_url, message_id)?;
    let exit = publish(config, &config.publish_exchange, &[message], "", false)?;
    println!("Message with ID {message_id} has been successfully replayed.");
    Ok(exit)
}

/// Publishes `messages` in order with `topic_prefix`, each confirmed by
/// the broker; `echo` prints each topic as `publish` does.
fn publish(
    config: &Config,
    exchange: &str,
    messages: &[RecordMessage],
    topic_prefix: &str,
    echo: bool,
) -> Result<Exit, Fatal> {
    let broker = Broker::new(config, None)?;
    let deadline = Instant::now() + TIMEOUT;
    // What the publish is doing, for the error when the deadline passes.
    let stage = std::cell::Cell::new("connecting");
    let publishing = async {
        let connection = connect_within(&broker, deadline).await?;
        let other = |what: &str, error: lapin::Error| {
            Fatal::new(Exit::Error, format!("cannot {what}: {error}"))
        };
        stage.set("opening a channel");
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| other("open a channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| other("enable publisher confirms", e))?;
        // Publish everything, then collect the confirms in order: one round
        // trip for the file instead of one a message.
        stage.set("publishing");
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            let outgoing = message.outgoing(topic_prefix).map_err(|reason| {
                Fatal::new(Exit::Usage, format!("message {}: {reason}", message.id))
            })?;
            if echo {
                println!("Publishing message with topic {}", outgoing.routing_key);
            }
            let (properties, span) = traces::send(
                exchange,
                &outgoing.routing_key,
                &message.id,
                outgoing.properties,
            );
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    outgoing.routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &outgoing.body,
                    properties,
                )
                .await
                .map_err(|error| ended(span.as_ref(), refusal(exchange, &message.id, error)))?;
            confirms.push((message.id.as_str(), confirm, span));
        }
        stage.set("waiting for the broker's confirmations");
        for (id, confirm, span) in confirms {
            let confirmed = confirm
                .await
                .map_err(|error| ended(span.as_ref(), refusal(exchange, id, error)))?;
            match confirmed {
                Confirmation::Ack(None) | Confirmation::NotRequested => {
                    if let Some(span) = span {
                        span.end(None);
                    }
                }
                Confirmation::Ack(Some(_)) | Confirmation::Nack(_) => {
                    return Err(ended(
                        span.as_ref(),
                        Fatal::new(
                            Exit::PublishRefused,
                            format!(
                                "the broker did not accept message {id} for exchange {exchange:?}"
                            ),
                        ),
                    ));
                }
            }
        }
        stage.set("closing the connection");
        let _ = connection.close(200, "Goodbye".into()).await;
        Ok(Exit::Success)
    };
    // fedora-messaging's timeout covers the whole publish, confirmations
    // included: a broker that takes the connection and never answers
    // cannot hold the command.
    async_global_executor::block_on(publishing.or(async {
        async_io::Timer::at(deadline).await;
        Err(Fatal::new(
            Exit::PublishTimeout,
            format!(
                "publishing to {} did not complete within {} s (still {})",
                broker.describe(),
                TIMEOUT.as_secs(),
                stage.get()
            ),
        ))
    }))
}

/// `fatal`, after ending the message's `send` span with it.
fn ended(span: Option<&traces::SendSpan>, fatal: Fatal) -> Fatal {
    if let Some(span) = span {
        span.fail(&fatal.message);
    }
    fatal
}

fn refusal(exchange: &str, id: &str, error: lapin::Error) -> Fatal {
    let exit = match broker_code(&error) {
        Some(403) | Some(404) => Exit::PublishRefused,
        _ => Exit::Error,
    };
    Fatal::new(
        exit,
        format!(
            "cannot publish message {id} to exchange {exchange:?}: {}",
            broker_reply(&error)
        ),
    )
}

async fn connect_within(broker: &Broker, deadline: Instant) -> Result<lapin::Connection, Fatal> {
    let mut delay = Duration::from_millis(500);
    let mut refusals = RefusalRound::new(broker.node_count());
    loop {
        match broker.connect().await {
            Ok(connection) => return Ok(connection),
            Err(refusal @ (ConnectError::Refused(_) | ConnectError::Untrusted(_))) => {
                let line = broker.refusal(&refusal);
                refusals
                    .refused(line.clone())
                    .map_err(|every| Fatal::new(Exit::Error, every))?;
                log::warn!("{line}; trying the next node");
                broker.next_node();
            }
            Err(ConnectError::Unreachable(reason)) => {
                refusals.broken();
                if Instant::now() + delay > deadline {
                    return Err(Fatal::new(
                        Exit::PublishTimeout,
                        format!(
                            "cannot reach the broker at {} within {} s: {reason}",
                            broker.describe(),
                            TIMEOUT.as_secs()
                        ),
                    ));
                }
                // The next of several nodes, in amqp_urls' order.
                broker.next_node();
                async_io::Timer::after(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
