//! `fedora-messaging reconsume`: run a consumer on messages without a
//! broker, from a record file (`--file`) or from datagrepper (a message id).
//!
//! Unlike fedora-messaging's `reconsume`, which dies with a traceback on any
//! exception, this prints each message's outcome and exits as `consume`
//! would: a halt exits with its code, a failure with 13.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::exit::{Exit, Fatal};
use crate::outcome::{Next, Outcome};
use crate::plugin;
use crate::publisher;
use crate::wire::{RecordMessage, read_record_file};

/// Where the messages come from.
pub enum Input<'a> {
    /// A record file, `-` for standard input.
    File(&'a Path),
    /// One message fetched from datagrepper.
    Datagrepper { url: &'a str, message_id: &'a str },
}

/// Runs `callback` (a `LIB:Symbol`) on every message of `input`, in order.
/// What the consumer publishes is printed, or appended to `publish_to`.
pub fn run(
    config: &Config,
    callback: &str,
    input: Input<'_>,
    publish_to: Option<&Path>,
) -> Result<Exit, Fatal> {
    let messages = match input {
        Input::File(path) => read_record_file(path)?,
        Input::Datagrepper { url, message_id } => vec![fetch_from_datagrepper(url, message_id)?],
    };
    let output = match publish_to {
        None => publisher::Output::Print,
        Some(path) => publisher::Output::File(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|error| {
                    Fatal::new(
                        Exit::Usage,
                        format!("cannot open --publish-to {}: {error}", path.display()),
                    )
                })?,
        ),
    };
    publisher::service().use_output(publisher::Settings::from_config(config), output);
    let mut consumer = plugin::load_consumer(callback, &config.consumer_config_json())?;
    for message in &messages {
        // Nothing is taken ahead here, so nothing can come back unstarted.
        let outcome = consumer
            .consume(&message.view())
            .unwrap_or_else(|_| Outcome::Failed {
                reason: "the consumer left the message unstarted".to_owned(),
            });
        // The outcome line is the command's output; a closed stdout must
        // not stop the replay, so write errors are ignored.
        let _ = writeln!(std::io::stdout(), "{} {outcome}", message.id);
        match outcome.disposition().1 {
            Next::Continue => {}
            Next::Stop(exit) => {
                if exit != Exit::Success {
                    log::info!("Consumer halted with non-zero exit code ({})", exit.code());
                }
                consumer.stop();
                return Ok(exit);
            }
            Next::Abort(exit) => {
                log::error!(
                    "Unexpected error occurred in consumer {} on message {}: {}",
                    consumer.name(),
                    message.id,
                    outcome
                );
                return Ok(exit);
            }
        }
    }
    consumer.stop();
    Ok(Exit::Success)
}

/// `GET {url}/v2/id?id=…&is_raw=true`, as fedora-messaging's `reconsume`
/// and `replay` do, with their 5 second timeout.
pub fn fetch_from_datagrepper(url: &str, message_id: &str) -> Result<RecordMessage, Fatal> {
    let endpoint = format!("{}/v2/id", url.trim_end_matches('/'));
    let fail = |reason: String| {
        Fatal::new(
            Exit::Error,
            format!("cannot get message {message_id} from {endpoint}: {reason}"),
        )
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let body = agent
        .get(&endpoint)
        .query("id", message_id)
        .query("is_raw", "true")
        .call()
        .and_then(|mut response| response.body_mut().read_to_string())
        .map_err(|error| fail(error.to_string()))?;
    let value = fm_plugin_api::json::parse_object(body.as_bytes())
        .map_err(|error| fail(format!("not a JSON object: {error}")))?;
    RecordMessage::from_json(serde_json::Value::Object(value)).map_err(fail)
}
