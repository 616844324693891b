//! Consumers for the host's end-to-end tests; not examples.
//!
//! - `Scripted` does what each message's body says: `{"do": "ack" | "nack"
//!   | "nack_once" | "drop" | "halt" | "halt_requeue" | "fail" | "error" |
//!   "panic", "code": N, "reason": "…", "sleep_ms": N, "sleep_once_ms": N}`,
//!   and logs a running count (its state) when it starts and ends each
//!   message. `nack_once` nacks the first delivery of an id and acks the
//!   next; `sleep_once_ms` sleeps only on the first delivery of an id (in
//!   the process, whichever instance gets it). `"once_file": PATH` does
//!   the action only if PATH does not exist yet (creating it), and acks
//!   otherwise: once across restarts of the host. `"wait_file": PATH`
//!   waits until PATH exists (at most 20 s, then fails), so that a test
//!   decides when the message ends.
//!   `"rendezvous": N` first waits (up to `within_ms`, default 20 s) until
//!   N messages with it are being handled at once, by instances side by
//!   side, and fails otherwise: it proves that `workers` run in parallel.
//!   `"span": {"attributes": {K: V}, "event": NAME, "event_attributes":
//!   {…}}` sets attributes and adds an event on the message's span;
//!   `"panic_on_drop": true` makes the instance panic when it is dropped;
//!   `"do": "panic_bomb"` panics with a payload whose own `Drop` panics;
//!   `"do": "thread_panic"` acks after a thread of its own panicked;
//!   `"do": "abort"` ends the whole process at once.
//!   `"do": "publish", "publish": SPEC` publishes through the host (SPEC:
//!   `topic`, `body`, and optionally `severity`, `priority`, `headers`,
//!   `usernames`, `packages`, `schema`, `exchange`, `timeout_ms`,
//!   `from_thread`, and `pad_bytes`: a body field that long), logs `published ID` and acks, or fails with the
//!   error's kind (`publish failed: Forbidden(…)`). A `consumer_config`
//!   with `publish_on_new = SPEC` publishes from `new`, one with
//!   `publish_on_stop = SPEC` from `stop`. One with `fail_instance = N`
//!   makes the N-th instance built in the process (from 1) fail in `new`;
//!   `hang_instance = N` makes it hang in `new` (for 10 minutes), as an
//!   import that never returns would.
//! - `Inspect` prints everything `Message` offers, as one JSON line, and
//!   halts after a message whose body is `{"end": true}`.
//! - `PanicInNew` and `FailInNew` never start.

use fm_plugin_api::{
    Consumer, ConsumerError, Init, Message, Outgoing, Publisher, Severity, export_consumers,
};
use serde_json::{Value, json};

pub struct Scripted {
    seen: u64,
    /// `consumer_config.publish_on_stop`: published from `stop`.
    publish_on_stop: Option<Value>,
    panic_on_drop: bool,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        if self.panic_on_drop {
            panic!("cannot close the database");
        }
    }
}

/// A panic payload that panics again when dropped.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("the payload went off");
    }
}

/// Ids already nacked by `nack_once` and slept on by `sleep_once_ms`, in
/// the whole process: with several workers, the second delivery may reach
/// another instance.
static NACKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
static SLEPT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Whether `id` is new to `seen` (and remembers it).
fn first_time(seen: &std::sync::Mutex<Vec<String>>, id: &str) -> bool {
    let mut seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if seen.iter().any(|known| known == id) {
        false
    } else {
        seen.push(id.to_owned());
        true
    }
}

/// Instances built in the process, and whether any has started a message.
static BUILT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Messages inside a rendezvous, across every instance in the process.
static MET: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn rendezvous(wanted: u64, within_ms: u64) -> Result<(), ConsumerError> {
    use std::sync::atomic::Ordering;
    MET.fetch_add(1, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(within_ms);
    while MET.load(Ordering::SeqCst) < wanted {
        if std::time::Instant::now() > deadline {
            return Err(ConsumerError::failed(format!(
                "only {} of {wanted} messages were handled at once",
                MET.load(Ordering::SeqCst)
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}

impl Consumer for Scripted {
    fn new(init: &Init) -> Result<Self, ConsumerError> {
        log::info!(
            "{} built with {}",
            init.consumer_name(),
            init.config_value()
        );
        if let Some(spec) = init.config_value().get("publish_on_new") {
            publish(spec)?;
        }
        let instance = BUILT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if init.config_value()["fail_instance"].as_u64() == Some(instance) {
            return Err(ConsumerError::failed(format!(
                "instance {instance} was told to fail (fail_instance)"
            )));
        }
        if init.config_value()["hang_instance"].as_u64() == Some(instance) {
            log::info!("instance {instance} hangs in new");
            std::thread::sleep(std::time::Duration::from_secs(600));
        }
        Ok(Scripted {
            publish_on_stop: init.config_value().get("publish_on_stop").cloned(),
            seen: 0,
            panic_on_drop: false,
        })
    }

    fn consume(&mut self, message: &Message) -> Result<(), ConsumerError> {
        self.seen += 1;
        let body = message.body();
        let mut action = body["do"].as_str().unwrap_or("ack");
        if let Some(path) = body["once_file"].as_str()
            && std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .is_err()
        {
            action = "ack";
        }
        let code = body["code"].as_i64().unwrap_or(0) as i32;
        let reason = body["reason"].as_str().unwrap_or("scripted failure");
        log::info!("message #{} ({}): {action}", self.seen, message.id());
        self.panic_on_drop |= body["panic_on_drop"] == true;
        let sleep_once = body["sleep_once_ms"]
            .as_u64()
            .filter(|_| first_time(&SLEPT, message.id()));
        if let Some(wanted) = body["rendezvous"].as_u64() {
            rendezvous(wanted, body["within_ms"].as_u64().unwrap_or(20_000))?;
        }
        if let Some(path) = body["wait_file"].as_str() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !std::path::Path::new(path).exists() {
                if std::time::Instant::now() > deadline {
                    return Err(ConsumerError::failed(format!("{path} did not appear")));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        if let Some(millis) = body["sleep_ms"].as_u64().or(sleep_once) {
            std::thread::sleep(std::time::Duration::from_millis(millis));
        }
        if let Some(span) = body["span"].as_object() {
            // What a consumer adds to its message's trace (revision 5).
            for (key, value) in span["attributes"].as_object().into_iter().flatten() {
                fm_plugin_api::trace::set_attribute(key, value.as_str().unwrap_or(""));
            }
            if let Some(name) = span["event"].as_str() {
                fm_plugin_api::trace::add_event(name, &span["event_attributes"]);
            }
        }
        log::info!("done #{} ({})", self.seen, message.id());
        match action {
            "ack" => Ok(()),
            "nack" => Err(ConsumerError::Nack),
            "nack_once" => {
                if first_time(&NACKED, message.id()) {
                    Err(ConsumerError::Nack)
                } else {
                    Ok(())
                }
            }
            "drop" => Err(ConsumerError::Drop),
            "halt" => Err(ConsumerError::halt(code)),
            "halt_requeue" => Err(ConsumerError::halt_and_requeue(code)),
            "fail" => Err(ConsumerError::failed(reason)),
            "error" => {
                let inner = std::io::Error::other(reason.to_owned());
                Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    Wrapped(inner),
                ))?
            }
            "panic" => panic!("{reason}"),
            // A crash no guard can catch, as a segfault or an OOM kill.
            "abort" => std::process::abort(),
            "panic_bomb" => std::panic::panic_any(Bomb),
            "thread_panic" => {
                let panicked = std::thread::Builder::new()
                    .name("scripted-helper".into())
                    .spawn(|| panic!("the helper thread gave up"))?
                    .join()
                    .is_err();
                log::info!("the helper thread panicked: {panicked}");
                Ok(())
            }
            "publish" => publish(&body["publish"]),
            other => Err(ConsumerError::failed(format!("unknown action {other:?}"))),
        }
    }

    fn stop(&mut self) {
        log::info!("stopping after {} messages", self.seen);
        if let Some(spec) = &self.publish_on_stop
            && let Err(error) = publish(spec)
        {
            log::error!("{error}");
        }
    }
}

/// Publishes what `spec` says (see the crate's doc).
fn publish(spec: &Value) -> Result<(), ConsumerError> {
    let strings = |key: &str| -> Vec<String> {
        spec[key]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut body = spec["body"].clone();
    // A body this many bytes long, over the broker's message size limit.
    if let (Some(bytes), Some(fields)) = (spec["pad_bytes"].as_u64(), body.as_object_mut()) {
        fields.insert(
            "pad".to_owned(),
            "x".repeat(usize::try_from(bytes).unwrap_or(usize::MAX))
                .into(),
        );
    }
    let mut message = Outgoing::new(spec["topic"].as_str().unwrap_or("scripted"), body)
        .usernames(strings("usernames"))
        .packages(strings("packages"));
    if let Some(level) = spec["severity"].as_u64().and_then(Severity::from_level) {
        message = message.severity(level);
    }
    if let Some(priority) = spec["priority"].as_u64() {
        message = message.priority(priority as u8);
    }
    if let Some(headers) = spec["headers"].as_object() {
        for (name, value) in headers {
            message = message.header(name.as_str(), value.clone());
        }
    }
    if let Some(schema) = spec["schema"].as_str() {
        message = message.schema(schema);
    }
    if let Some(exchange) = spec["exchange"].as_str() {
        message = message.exchange(exchange);
    }
    let publisher = match spec["timeout_ms"].as_u64() {
        Some(millis) => Publisher::with_timeout(std::time::Duration::from_millis(millis)),
        None => Publisher::new(),
    };
    let published = if spec["from_thread"] == true {
        std::thread::spawn(move || publisher.publish(&message))
            .join()
            .map_err(|_| ConsumerError::failed("the publishing thread panicked"))?
    } else {
        publisher.publish(&message)
    };
    match published {
        Ok(id) => {
            log::info!("published {id}");
            Ok(())
        }
        Err(error) => Err(ConsumerError::failed(format!("publish failed: {error:?}"))),
    }
}

/// An error with a source, to check that `?` keeps the chain.
#[derive(Debug)]
struct Wrapped(std::io::Error);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("wrapped")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

pub struct Inspect {
    /// `consumer_config.out`: a file to append the lines to. A line on
    /// standard output longer than a pipe's atomic write can be cut by
    /// the host's own log lines.
    out: Option<std::fs::File>,
}

impl Consumer for Inspect {
    fn new(init: &Init) -> Result<Self, ConsumerError> {
        let out = match init.config_value().get("out").and_then(Value::as_str) {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|error| ConsumerError::failed(format!("{path}: {error}")))?,
            ),
            None => None,
        };
        Ok(Inspect { out })
    }

    fn consume(&mut self, message: &Message) -> Result<(), ConsumerError> {
        let mut seen = json!({
            "id": message.id(),
            "topic": message.topic(),
            "queue": message.queue(),
            "severity": message.severity().level(),
            "priority": message.priority(),
            "sent_at": message.sent_at(),
            "schema": message.schema(),
            "raw_body": String::from_utf8_lossy(message.raw_body()),
            "usernames": message.usernames(),
            "groups": message.groups(),
            "packages": message.packages(),
            "containers": message.containers(),
            "modules": message.modules(),
            "flatpaks": message.flatpaks(),
            "publish": fm_plugin_api::publish("t", &Value::Null).err().map(|e| e.to_string()),
        });
        // Set, not put in json!: json! re-reads each number through serde,
        // which refuses the NaN and Infinity a body or header may hold.
        seen["headers"] = Value::Object(message.headers().clone());
        seen["body"] = message.body().clone();
        match &mut self.out {
            Some(out) => {
                use std::io::Write;
                writeln!(out, "{seen}")?;
            }
            None => println!("INSPECT {seen}"),
        }
        // The differential test's last message.
        if message.body().get("end") == Some(&Value::Bool(true)) {
            return Err(ConsumerError::halt(0));
        }
        Ok(())
    }
}

pub struct PanicInNew;

impl Consumer for PanicInNew {
    fn new(_init: &Init) -> Result<Self, ConsumerError> {
        panic!("cannot start: no database")
    }

    fn consume(&mut self, _message: &Message) -> Result<(), ConsumerError> {
        Ok(())
    }
}

pub struct FailInNew;

impl Consumer for FailInNew {
    fn new(_init: &Init) -> Result<Self, ConsumerError> {
        Err(ConsumerError::failed("the database is read-only"))
    }

    fn consume(&mut self, _message: &Message) -> Result<(), ConsumerError> {
        Ok(())
    }
}

export_consumers!(Scripted, Inspect, PanicInNew, FailInNew);
