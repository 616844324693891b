//! fedora-messaging's configuration file: where it is found, its keys and
//! defaults, and its validation.
//!
//! Every file fedora-messaging 3.x loads loads here with the same meaning:
//! each top-level key replaces its default wholesale (no deep merge), keys
//! are case-insensitive at the top level, and an unknown top-level key is an
//! error listing the valid ones. Where fedora-messaging would crash later on
//! a partial table (`[qos]` with only `prefetch_count`), the missing entries
//! take their defaults instead.
//!
//! Six keys are this host's own: `workers`, the number of consumer
//! instances; `[delivery_limit]`, how often one message may be delivered;
//! `amqp_urls`, the nodes of a cluster; `[python]`, how the Python bridge
//! runs a Python callback; `stop_timeout`, how long a stop waits for the
//! messages in progress; and `soft_timeout`, how long one message may be
//! in the consumer's hands before a warning names it (a file using any of them is not one the
//! Python fedora-messaging loads; the bridge hands Python the file without
//! them).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod cluster;
pub mod host_file;
pub mod locate;

/// The file read when neither `--conf` nor `FEDORA_MESSAGING_CONF` is set.
pub const DEFAULT_PATH: &str = "/etc/fedora-messaging/config.toml";

/// The top-level keys: fedora-messaging's 15 in its order, then this
/// host's own.
pub const KEYS: [&str; 22] = [
    "amqp_url",
    "client_properties",
    "publish_exchange",
    "topic_prefix",
    "publish_priority",
    "passive_declares",
    "exchanges",
    "queues",
    "bindings",
    "qos",
    "callback",
    "consumer_config",
    "tls",
    "log_config",
    "monitoring",
    "workers",
    "delivery_limit",
    "amqp_urls",
    "python",
    "stop_timeout",
    "soft_timeout",
    "tracing",
];

/// The most consumer instances `workers` may ask for.
pub const MAX_WORKERS: u16 = 1024;

/// A loaded, validated configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "defaults::amqp_url")]
    pub amqp_url: String,
    #[serde(default)]
    pub client_properties: toml::Table,
    #[serde(default = "defaults::publish_exchange")]
    pub publish_exchange: String,
    #[serde(default)]
    pub topic_prefix: String,
    #[serde(default)]
    pub publish_priority: Option<u8>,
    #[serde(default)]
    pub passive_declares: bool,
    /// Never declared (as in fedora-messaging); kept so configs load.
    #[serde(default = "defaults::exchanges")]
    pub exchanges: BTreeMap<String, toml::Table>,
    #[serde(default = "defaults::queues")]
    pub queues: BTreeMap<String, Queue>,
    #[serde(default = "defaults::bindings")]
    pub bindings: Vec<Binding>,
    #[serde(default)]
    pub qos: Qos,
    #[serde(default)]
    pub callback: Option<String>,
    #[serde(default)]
    pub consumer_config: toml::Table,
    #[serde(default)]
    pub tls: Tls,
    /// A Python `logging.config.dictConfig` table; see [`crate::logging`].
    #[serde(default)]
    pub log_config: Option<toml::Table>,
    /// `[monitoring]`: empty means disabled.
    #[serde(default)]
    monitoring: toml::Table,
    /// How many instances of the consumer run side by side, each on its
    /// own thread; 1 is fedora-messaging's one message at a time.
    #[serde(default = "defaults::workers")]
    pub workers: u16,
    /// `[delivery_limit]`: without it, a message may be delivered any
    /// number of times, as in fedora-messaging.
    #[serde(default)]
    pub delivery_limit: Option<DeliveryLimit>,
    /// The nodes of one cluster, instead of `amqp_url`: the host connects
    /// to them in turn (see [`Config::broker_urls`]).
    #[serde(default)]
    pub amqp_urls: Option<Vec<String>>,
    /// `[python]`: how the Python bridge runs a Python callback.
    #[serde(default)]
    pub python: Option<PythonSettings>,
    /// Seconds a stop waits for the messages in progress before it gives
    /// them back to the broker and exits (fedora-messaging waits for ever).
    #[serde(default = "defaults::stop_timeout")]
    pub stop_timeout: f64,
    /// Seconds a message may be in the consumer's hands before a warning
    /// names it, once; none when not set.
    #[serde(default)]
    pub soft_timeout: Option<f64>,
    /// `[tracing]`: where traces go, beyond OpenTelemetry's variables
    /// (`traces::settings`).
    #[serde(default)]
    pub tracing: Option<TracingTable>,
}

/// `[tracing]`: each key overrides the OpenTelemetry variable it names.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingTable {
    /// The collector's base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT`:
    /// `/v1/traces` is added.
    pub endpoint: Option<String>,
    /// As `OTEL_SERVICE_NAME`.
    pub service_name: Option<String>,
    /// As `OTEL_TRACES_SAMPLER`.
    pub sampler: Option<String>,
    /// As `OTEL_TRACES_SAMPLER_ARG`: the ratio of a `traceidratio`.
    pub sampler_arg: Option<f64>,
}

/// `[python]`: read by the Python bridge plugin (`plugins/python`), checked
/// here so a mistake is an error at load, like any other key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonSettings {
    /// The interpreter, e.g. a virtual environment's `bin/python`; `python3`
    /// from `PATH` when not given.
    pub interpreter: Option<String>,
    /// Seconds Python may take to import the callback and be ready; the
    /// bridge's default when not given.
    pub start_timeout: Option<f64>,
}

/// `[delivery_limit]`: a message delivered `max` times is not handed to
/// the consumer again; it goes to `dead_letter_exchange` (routed by
/// `dead_letter_routing_key`, or its own routing key), or is rejected
/// without requeue when no exchange is given. A message that comes back
/// waits `retry_delay` seconds after its first attempt, twice that after
/// its second, and so on up to `max_retry_delay`, before its next.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryLimit {
    pub max: u32,
    #[serde(default)]
    pub dead_letter_exchange: Option<String>,
    #[serde(default)]
    pub dead_letter_routing_key: Option<String>,
    /// A file holding the secret that seals the host's counts, shared by
    /// the hosts of a queue; without it, the systemd credential
    /// [`LIMIT_CREDENTIAL`].
    #[serde(default)]
    pub secret_file: Option<String>,
    /// Seconds; 0 for no wait.
    #[serde(default = "default_retry_delay")]
    pub retry_delay: f64,
    /// Seconds.
    #[serde(default = "default_max_retry_delay")]
    pub max_retry_delay: f64,
}

fn default_retry_delay() -> f64 {
    1.0
}

fn default_max_retry_delay() -> f64 {
    60.0
}

/// The systemd credential (`LoadCredential=`) that holds
/// `[delivery_limit]`'s secret when `secret_file` is not set.
pub const LIMIT_CREDENTIAL: &str = "delivery-limit-secret";

impl Config {
    /// Keys that fedora-messaging ignores and so does this host, one
    /// sentence each, for the log.
    pub fn ignored_keys(&self) -> Vec<String> {
        let monitoring = self.monitoring().ok().flatten().map(|m| m.ignored);
        [
            ("qos", Some(&self.qos.ignored)),
            ("tls", Some(&self.tls.ignored)),
            ("monitoring", monitoring.as_ref()),
        ]
        .into_iter()
        .flat_map(|(table, ignored)| {
            ignored
                .into_iter()
                .flat_map(|keys| keys.keys())
                .map(move |key| format!("ignoring unknown key `{key}` in [{table}]"))
        })
        .collect()
    }
}

/// A `[queues.<name>]` table; all four keys are required, as in
/// fedora-messaging. The name `""` asks the broker to name the queue.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Queue {
    pub durable: bool,
    pub auto_delete: bool,
    pub exclusive: bool,
    pub arguments: toml::Table,
}

/// One `[[bindings]]` entry: one binding per routing key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    #[serde(default)]
    pub queue: String,
    pub exchange: String,
    pub routing_keys: Vec<String>,
    /// Passed to `queue.bind` as its arguments.
    #[serde(default)]
    pub arguments: toml::Table,
}

/// Keys fedora-messaging would ignore in a table; reported as warnings.
type Ignored = BTreeMap<String, toml::Value>;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Qos {
    #[serde(default)]
    pub prefetch_size: u32,
    #[serde(default = "defaults::prefetch_count")]
    pub prefetch_count: u16,
    #[serde(flatten)]
    pub(crate) ignored: Ignored,
}

impl Default for Qos {
    fn default() -> Self {
        Qos {
            prefetch_size: 0,
            prefetch_count: defaults::prefetch_count(),
            ignored: Ignored::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Tls {
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    #[serde(default)]
    pub certfile: Option<PathBuf>,
    #[serde(default)]
    pub keyfile: Option<PathBuf>,
    #[serde(flatten)]
    pub(crate) ignored: Ignored,
}

/// Where the health endpoints listen.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Monitoring {
    #[serde(default)]
    pub address: String,
    pub port: u16,
    #[serde(flatten)]
    pub(crate) ignored: Ignored,
}

mod defaults {
    use super::{Binding, Queue};
    use std::collections::BTreeMap;

    pub fn amqp_url() -> String {
        "amqp://?connection_attempts=3&retry_delay=5".to_owned()
    }
    pub fn publish_exchange() -> String {
        "amq.topic".to_owned()
    }
    pub fn prefetch_count() -> u16 {
        10
    }
    /// Below systemd's default `TimeoutStopSec` (90 s), so that the host,
    /// not the SIGKILL, ends a stop that the consumer holds up.
    pub fn stop_timeout() -> f64 {
        60.0
    }

    pub fn workers() -> u16 {
        1
    }
    pub fn exchanges() -> BTreeMap<String, toml::Table> {
        let mut topic = toml::Table::new();
        topic.insert("type".into(), "topic".into());
        topic.insert("durable".into(), true.into());
        topic.insert("auto_delete".into(), false.into());
        topic.insert("arguments".into(), toml::Table::new().into());
        BTreeMap::from([("amq.topic".to_owned(), topic)])
    }
    /// The settings fedora-messaging gives a server-named queue, and the
    /// queue `--queue-name` names.
    pub fn queue() -> Queue {
        Queue {
            durable: false,
            auto_delete: true,
            exclusive: true,
            arguments: toml::Table::new(),
        }
    }
    pub fn queues() -> BTreeMap<String, Queue> {
        BTreeMap::from([(String::new(), queue())])
    }
    pub fn bindings() -> Vec<Binding> {
        vec![Binding {
            queue: String::new(),
            exchange: "amq.topic".to_owned(),
            routing_keys: vec!["#".to_owned()],
            arguments: toml::Table::new(),
        }]
    }
}

pub use defaults::queue as default_queue;

/// The client properties this host always sends; a config may not change
/// them (fedora-messaging reserves the same three keys).
pub fn reserved_client_properties() -> [(&'static str, String); 3] {
    [
        ("product", "Fedora Messaging (Rust host)".to_owned()),
        (
            "information",
            "https://fedora-messaging.readthedocs.io/en/stable/".to_owned(),
        ),
        (
            "version",
            format!("fedora-messaging-rs {}", env!("CARGO_PKG_VERSION")),
        ),
    ]
}

/// Why a configuration could not be used; always names the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based line of the offending text, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.path.display(), line, self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Which file to read, and whether the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--conf` or `FEDORA_MESSAGING_CONF`: must exist.
    Given(PathBuf),
    /// The default path: absent means defaults.
    Default,
}

impl Config {
    /// Loads the configuration as fedora-messaging's CLI does, with the
    /// keys of the host file ([`host_file`]: `host_conf`, or the one
    /// beside the configuration file); and which host file was read.
    pub fn load(
        source: &Source,
        host_conf: Option<&Path>,
    ) -> Result<(Config, Option<PathBuf>), ConfigError> {
        let path = match source {
            Source::Given(path) => {
                if !path.is_file() {
                    return Err(ConfigError {
                        path: path.clone(),
                        line: None,
                        message: "is not a file: check the --conf option or FEDORA_MESSAGING_CONF"
                            .to_owned(),
                    });
                }
                path.clone()
            }
            Source::Default => PathBuf::from(DEFAULT_PATH),
        };
        let host_file = host_file::choose(host_conf, &path).map_err(|message| ConfigError {
            path: host_conf.unwrap_or(&path).to_owned(),
            line: None,
            message,
        })?;
        let text = if path.exists() {
            read_text(&path)?
        } else {
            String::new()
        };
        let config = match &host_file {
            None if !path.exists() => Config::default(),
            None => Config::parse(&text).map_err(|(line, message)| ConfigError {
                path: path.clone(),
                line,
                message,
            })?,
            Some(host_path) => {
                let shared: toml::Table = toml::from_str(&text).unwrap_or_default();
                let host_keys =
                    host_file::keys(&read_text(host_path)?, &shared).map_err(|message| {
                        ConfigError {
                            path: host_path.clone(),
                            line: None,
                            message,
                        }
                    })?;
                Config::parse_with(&text, host_keys).map_err(|(line, message)| ConfigError {
                    path: path.clone(),
                    line,
                    message: format!("{message} (with the keys of {})", host_path.display()),
                })?
            }
        };
        Ok((config, host_file))
    }

    /// [`Config::parse`] with a host file's keys added to the text's.
    pub fn parse_with(
        text: &str,
        host_keys: toml::Table,
    ) -> Result<Config, (Option<usize>, String)> {
        if host_keys.is_empty() {
            return Config::parse(text);
        }
        let table: toml::Table = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let sets_amqp_url = table.keys().any(|key| key.eq_ignore_ascii_case("amqp_url"));
        let mut merged: toml::Table = table
            .into_iter()
            .map(|(key, value)| (key.to_lowercase(), value))
            .collect();
        merged.extend(host_keys);
        let config = Config::deserialize(toml::Value::Table(merged))
            .map_err(|e| (None, e.message().to_owned()))?;
        config.validate(text, sets_amqp_url)
    }

    /// Parses and validates configuration text; an error carries the line.
    pub fn parse(text: &str) -> Result<Config, (Option<usize>, String)> {
        let table: toml::Table = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let sets_amqp_url = table.keys().any(|key| key.eq_ignore_ascii_case("amqp_url"));
        let all_lowercase = table.keys().all(|k| *k == k.to_lowercase());
        let config: Config = if all_lowercase {
            // Straight from the text, so errors carry their position.
            toml::from_str(text).map_err(|e| toml_error(text, &e))?
        } else {
            // fedora-messaging lower-cases top-level keys.
            let lowered: toml::Table = table
                .into_iter()
                .map(|(key, value)| (key.to_lowercase(), value))
                .collect();
            Config::deserialize(toml::Value::Table(lowered))
                .map_err(|e| (None, e.message().to_owned()))?
        };
        config.validate(text, sets_amqp_url)
    }

    fn validate(self, text: &str, sets_amqp_url: bool) -> Result<Config, (Option<usize>, String)> {
        for (key, value) in reserved_client_properties() {
            if let Some(given) = self.client_properties.get(key)
                && given.as_str() != Some(value.as_str())
            {
                return Err((
                    line_of_key(text, key),
                    format!("\"{key}\" is a reserved keyword in client_properties: remove it"),
                ));
            }
        }
        self.monitoring()
            .map_err(|message| (line_of_key(text, "monitoring"), message))?;
        check_workers(self.workers)
            .map_err(|message| (line_of_key(text, "workers"), format!("workers {message}")))?;
        if !(0.0..=86_400.0).contains(&self.stop_timeout) {
            return Err((
                line_of_key(text, "stop_timeout"),
                format!(
                    "stop_timeout is seconds from 0 to 86400 (how long a stop waits for the messages in progress), not {}",
                    self.stop_timeout
                ),
            ));
        }
        if let Some(soft_timeout) = self.soft_timeout
            && !(soft_timeout > 0.0 && soft_timeout <= 86_400.0)
        {
            return Err((
                line_of_key(text, "soft_timeout"),
                format!(
                    "soft_timeout is seconds from 0 (excluded) to 86400 (how long a message may be in the consumer's hands before a warning names it), not {soft_timeout}"
                ),
            ));
        }
        if let Some(log_config) = &self.log_config {
            crate::logging::check_levels(log_config)
                .map_err(|(written, message)| (line_setting(text, "level", &written), message))?;
        }
        self.check_amqp_names()
            .map_err(|(key, message)| (line_of_key(text, key), message))?;
        self.check_nodes(sets_amqp_url)
            .map_err(|message| (line_of_key(text, "amqp_urls"), message))?;
        self.check_queue_types()
            .map_err(|message| (line_of_key(text, "queues"), message))?;
        if let Some(limit) = &self.delivery_limit {
            let problem = if limit.max == 0 {
                Some(
                    "[delivery_limit] max must be at least 1 (the first delivery counts); remove the table for no limit",
                )
            } else if !(0.0..=86_400.0).contains(&limit.retry_delay)
                || !(0.0..=86_400.0).contains(&limit.max_retry_delay)
            {
                Some(
                    "[delivery_limit] retry_delay and max_retry_delay are seconds from 0 to 86400 (0: no wait)",
                )
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err((line_of_key(text, "delivery_limit"), problem.to_owned()));
            }
        }
        Ok(self)
    }

    /// Names that travel as AMQP short strings must fit one (255 bytes);
    /// the error carries the key to find the line by.
    fn check_amqp_names(&self) -> Result<(), (&'static str, String)> {
        use crate::wire::check_short;
        let short = |key: &'static str, what: &str, text: &str| {
            check_short(what, text).map_err(|message| (key, format!("[{key}]: {message}")))
        };
        short(
            "publish_exchange",
            "publish_exchange",
            &self.publish_exchange,
        )?;
        for (name, queue) in &self.queues {
            short("queues", "a queue name", name)?;
            check_table_keys(&queue.arguments).map_err(|m| ("queues", m))?;
        }
        for binding in &self.bindings {
            short("bindings", "a binding's queue", &binding.queue)?;
            short("bindings", "a binding's exchange", &binding.exchange)?;
            for key in &binding.routing_keys {
                short("bindings", "a routing key", key)?;
            }
            check_table_keys(&binding.arguments).map_err(|m| ("bindings", m))?;
        }
        for key in self.client_properties.keys() {
            short("client_properties", "a client property name", key)?;
        }
        if let Some(limit) = &self.delivery_limit {
            for name in [&limit.dead_letter_exchange, &limit.dead_letter_routing_key]
                .into_iter()
                .flatten()
            {
                short(
                    "delivery_limit",
                    "a dead-letter exchange or routing key",
                    name,
                )?;
            }
        }
        Ok(())
    }

    /// The `[monitoring]` section, if enabled.
    pub fn monitoring(&self) -> Result<Option<Monitoring>, String> {
        if self.monitoring.is_empty() {
            return Ok(None);
        }
        Monitoring::deserialize(toml::Value::Table(self.monitoring.clone()))
            .map(Some)
            .map_err(|e| format!("[monitoring]: {}", e.message()))
    }

    /// The `[consumer_config]` table as JSON, as consumers receive it.
    pub fn consumer_config_json(&self) -> serde_json::Value {
        toml_to_json(&toml::Value::Table(self.consumer_config.clone()))
    }
}

impl Default for Config {
    fn default() -> Self {
        // The defaults are exactly what an empty file gives.
        match Config::parse("") {
            Ok(config) => config,
            Err((_, message)) => unreachable!("the built-in defaults are valid: {message}"),
        }
    }
}

/// `workers` (or `--workers`) must be 1 to [`MAX_WORKERS`].
pub fn check_workers(workers: u16) -> Result<(), String> {
    if (1..=MAX_WORKERS).contains(&workers) {
        Ok(())
    } else {
        Err(format!(
            "must be 1 (one message at a time, as fedora-messaging) to {MAX_WORKERS}, not {workers}"
        ))
    }
}

/// Argument tables become AMQP field tables, whose keys are short strings.
fn check_table_keys(table: &toml::Table) -> Result<(), String> {
    for (key, value) in table {
        crate::wire::check_short("an argument name", key)?;
        if let toml::Value::Table(inner) = value {
            check_table_keys(inner)?;
        }
    }
    Ok(())
}

/// TOML to JSON, with dates and times as their TOML text.
pub fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    use serde_json::Value as Json;
    match value {
        toml::Value::String(s) => Json::String(s.clone()),
        toml::Value::Integer(i) => Json::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .unwrap_or(Json::Null),
        toml::Value::Boolean(b) => Json::Bool(*b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(items) => Json::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Json::Object(
            table
                .iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// One line from toml's multi-line error, with the line it points at.
fn toml_error(text: &str, error: &toml::de::Error) -> (Option<usize>, String) {
    let line = error.span().map(|span| line_number(text, span.start));
    let mut message = error.message().trim().replace('\n', " ");
    if let Some(line) = line
        && let Some(source_line) = text.lines().nth(line - 1)
    {
        message = format!("{message} (at `{}`)", shortened(source_line.trim()));
    }
    (line, message)
}

/// The longest piece of a line an error message echoes.
const ECHO_WIDTH: usize = 120;

/// `line`, cut to [`ECHO_WIDTH`] characters (marked with `…`), so that an
/// error about a huge line stays one readable line.
fn shortened(line: &str) -> std::borrow::Cow<'_, str> {
    match line.char_indices().nth(ECHO_WIDTH) {
        Some((cut, _)) => format!("{}…", &line[..cut]).into(),
        None => line.into(),
    }
}

fn line_number(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The first line that sets `key` to `value` (as TOML shows it, `"LOUD"`),
/// whichever quotes the file wrote it with.
fn line_setting(text: &str, key: &str, value: &str) -> Option<usize> {
    let bare = |text: &str| text.trim_start().trim_start_matches(['"', '\'']).to_owned();
    let value = bare(value);
    text.lines()
        .position(|line| {
            assigned(line, key)
                .is_some_and(|rest| bare(rest).starts_with(value.trim_end_matches('"')))
        })
        .map(|index| index + 1)
}

/// The first line that sets `key` or opens a table named `key`.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            // `[table]` and `[[array of tables]]`.
            let opens =
                line.starts_with('[') && line.trim_start_matches('[').trim_start().starts_with(key);
            assigned(line, key).is_some() || opens
        })
        .map(|index| index + 1)
}

/// What `line` sets `key` to (the text after `=`), if it sets `key`.
fn assigned<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.trim_start()
        .strip_prefix(key)
        .and_then(|rest| rest.trim_start().strip_prefix('='))
}

/// A configuration file's text.
fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|error| ConfigError {
        path: path.to_owned(),
        line: None,
        message: format!("cannot read it: {error}"),
    })
}

#[cfg(test)]
mod tests;
