//! What the plugin does with what Python sends besides its answers: log
//! records go to the host's logger, publish requests to the host's
//! publisher; and what an answer means as an outcome.

use std::time::Duration;

use fm_plugin_api::{ConsumerError, FORWARDED_LOG_TARGET, PublishError, Publisher};
use serde_json::{Value, json};

/// A Python log record, through the host's logger under the Python
/// logger's name (`a.b` is the target `FORWARDED_LOG_TARGET::a::b`, which
/// the host shows as `a.b`).
pub fn forward_log(payload: &[u8]) {
    let Ok(record) = serde_json::from_slice::<Value>(payload) else {
        log::error!(
            "the Python bridge sent a log record that is no JSON: {:?}",
            String::from_utf8_lossy(payload)
        );
        return;
    };
    let level = match record.get("level").and_then(Value::as_u64).unwrap_or(40) {
        40.. => log::Level::Error,
        30..40 => log::Level::Warn,
        20..30 => log::Level::Info,
        10..20 => log::Level::Debug,
        _ => log::Level::Trace,
    };
    let name = record.get("name").and_then(Value::as_str).unwrap_or("root");
    let text = record
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // Python's own log_config chose to emit it: the host shows it under
    // the Python logger's name without filtering it again.
    let target = format!("{FORWARDED_LOG_TARGET}::{}", name.replace('.', "::"));
    log::log!(target: &target, level, "{text}");
}

/// A publish request from Python, done through the host; the reply's
/// payload.
pub fn publish(payload: &[u8]) -> Vec<u8> {
    let request = serde_json::from_slice::<Value>(payload).unwrap_or_default();
    let reply = publish_request(&request);
    reply.to_string().into_bytes()
}

fn publish_request(request: &Value) -> Value {
    let timeout = request
        .get("timeout")
        .and_then(Value::as_f64)
        .filter(|seconds| seconds.is_finite() && *seconds > 0.0)
        // One too long to be a Duration is as good as for ever: the host
        // bounds every wait.
        .map_or(Publisher::DEFAULT_TIMEOUT, |seconds| {
            Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
        });
    let record = request
        .get("record")
        .cloned()
        .unwrap_or_default()
        .to_string();
    let exchange = request.get("exchange").and_then(Value::as_str);
    match Publisher::with_timeout(timeout).publish_record(&record, exchange) {
        Ok(id) => json!({"published": id}),
        Err(error) => {
            let (kind, reason) = match error {
                PublishError::Timeout(reason) => ("Timeout", reason),
                PublishError::Unreachable(reason) => ("Unreachable", reason),
                PublishError::Forbidden(reason) => ("Forbidden", reason),
                PublishError::Returned(reason) => ("Returned", reason),
                PublishError::Invalid(reason) => ("Invalid", reason),
                PublishError::Unavailable(reason) => ("Unavailable", reason),
                other => ("Unavailable", other.to_string()),
            };
            json!({"publish_failed": {"kind": kind, "reason": reason}})
        }
    }
}

/// The callback's answer as an outcome, as fedora-messaging maps its
/// exceptions.
pub fn outcome(payload: &[u8]) -> Result<(), ConsumerError> {
    let done = serde_json::from_slice::<Value>(payload).unwrap_or_default();
    match &done {
        Value::String(word) if word == "ack" => Ok(()),
        Value::String(word) if word == "nack" => Err(ConsumerError::Nack),
        Value::String(word) if word == "drop" => Err(ConsumerError::Drop),
        // A message sent ahead, not begun: the host drains, or the
        // callback halted or failed on the one before.
        Value::String(word) if word == "unstarted" => Err(ConsumerError::Unstarted),
        Value::Object(answer) => {
            if let Some(halt) = answer.get("halt") {
                let exit_code = halt
                    .get("exit_code")
                    .and_then(Value::as_i64)
                    .and_then(|code| i32::try_from(code).ok())
                    .unwrap_or(1);
                let requeue = halt
                    .get("requeue")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                if let Some(reason) = halt.get("reason").and_then(Value::as_str) {
                    log::info!("the Python callback halts the consumer: {reason}");
                }
                return Err(ConsumerError::Halt { exit_code, requeue });
            }
            let reason = answer
                .get("failed")
                .and_then(Value::as_str)
                .unwrap_or("the Python callback failed");
            Err(ConsumerError::failed(reason))
        }
        other => Err(ConsumerError::failed(format!(
            "the Python bridge answered {other}, which is no outcome"
        ))),
    }
}
