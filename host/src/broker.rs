//! Connecting to the broker: client properties, and telling a broker that
//! is not there yet (retry) from one that refuses us (exit 14).

use std::time::{Duration, Instant};

use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPScheme, SASLMechanism};
use lapin::{Connection, ConnectionProperties};

use crate::amqp_url::BrokerUrl;
use crate::config::{self, Config};
use crate::exit::{Exit, Fatal};
use crate::notify::Notifier;
use crate::stop::StopRequest;
use crate::tls;

/// How to reach the broker, and who we say we are.
pub struct Broker {
    url: BrokerUrl,
    properties: ConnectionProperties,
    /// For `amqps://` URLs.
    tls: Option<OwnedTLSConfig>,
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// Nothing answered or the connection broke: try again later.
    Unreachable(String),
    /// The broker answered and said no (credentials, vhost, our TLS
    /// certificate).
    Refused(String),
    /// The broker's TLS certificate does not verify against the trusted
    /// authorities.
    Untrusted(String),
}

impl Broker {
    /// `app_name` is `--app-name`, which wins over the configuration's.
    pub fn new(config: &Config, app_name: Option<&str>) -> Result<Broker, Fatal> {
        let mut url = BrokerUrl::parse(&config.amqp_url)
            .map_err(|error| Fatal::new(Exit::Usage, error.to_string()))?;
        // As fedora-messaging: TLS only for amqps.
        let tls = if url.uri.scheme == AMQPScheme::AMQPS {
            let setup = tls::load(&config.tls)?;
            if setup.client_certificate {
                url.uri.query.auth_mechanism = Some(SASLMechanism::External);
            }
            Some(setup.config)
        } else {
            None
        };
        for parameter in &url.ignored {
            log::debug!("amqp_url parameter {parameter:?} has no effect here");
        }
        let mut properties = ConnectionProperties::default();
        if let Some(locale) = &url.locale {
            properties = properties.with_locale(locale.as_str().into());
        }
        let mut client: Vec<(String, String)> = config
            .client_properties
            .iter()
            .map(|(key, value)| {
                let text = match value {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (key.clone(), text)
            })
            .collect();
        let app = app_name
            .map(str::to_owned)
            .or_else(|| {
                config
                    .client_properties
                    .get("app")
                    .and_then(toml::Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "Unknown".to_owned());
        client.push(("app".to_owned(), app));
        client.extend(
            config::reserved_client_properties()
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value)),
        );
        check_handshake_fits(&url, &client, app_name.is_some())?;
        for (key, value) in client {
            properties = properties.with_client_property(key.as_str().into(), value.into());
        }
        Ok(Broker {
            url,
            properties,
            tls,
        })
    }

    /// For log lines: the broker, user and vhost (never the password).
    pub fn describe(&self) -> String {
        self.url.describe()
    }

    /// The one-line message for a failed attempt, shared by `consume` and
    /// `publish` (which give refusals different exit codes).
    pub fn refusal(&self, error: &ConnectError) -> String {
        match error {
            ConnectError::Refused(reason) => format!(
                "the broker at {} refused the connection: {reason}",
                self.describe()
            ),
            ConnectError::Untrusted(reason) => format!(
                "the broker at {} is not trusted: {reason}: check [tls] ca_cert (or the system's trust store when it is unset)",
                self.describe()
            ),
            ConnectError::Unreachable(reason) => {
                format!("cannot reach the broker at {}: {reason}", self.describe())
            }
        }
    }

    /// One attempt.
    pub async fn connect(&self) -> Result<Connection, ConnectError> {
        let uri = self.url.uri.clone();
        let properties = self.properties.clone();
        let connected = match &self.tls {
            None => Connection::connect_uri(uri, properties).await,
            Some(tls) => {
                let runtime = lapin::runtime::default_runtime()
                    .map_err(|error| ConnectError::Unreachable(error.to_string()))?;
                Connection::connect_uri_with_config(uri, properties, tls.clone(), runtime).await
            }
        };
        connected.map_err(classify)
    }

    /// Connects, retrying without limit while the broker is unreachable
    /// (logging each attempt with the next delay), until it answers. A
    /// refusal ends the retries at once: trying again cannot change it.
    /// `Ok(None)`: a stop was requested first.
    pub async fn connect_with_retry(
        &self,
        stop: &StopRequest,
        backoff: &mut Backoff,
        notifier: &Notifier,
    ) -> Result<Option<Connection>, Fatal> {
        let mut attempt = 1u64;
        loop {
            if stop.is_requested() {
                return Ok(None);
            }
            match self.connect().await {
                Ok(connection) => {
                    log::info!("Connected to {}", self.describe());
                    return Ok(Some(connection));
                }
                Err(refusal @ (ConnectError::Refused(_) | ConnectError::Untrusted(_))) => {
                    return Err(Fatal::new(Exit::Connection, self.refusal(&refusal)));
                }
                Err(ConnectError::Unreachable(reason)) => {
                    let delay = backoff.next_delay();
                    log::warn!(
                        "Cannot connect to {} (attempt {attempt}): {reason}; retrying in {:.1} s",
                        self.describe(),
                        delay.as_secs_f64()
                    );
                    notifier.status(&format!(
                        "Cannot reach the broker (attempt {attempt}); retrying in {:.0} s",
                        delay.as_secs_f64()
                    ));
                    if stop.wait(delay).await {
                        return Ok(None);
                    }
                    attempt += 1;
                }
            }
        }
    }
}

/// RabbitMQ takes no frame larger than this until the connection is tuned,
/// and resets a connection whose `connection.start-ok` is larger.
const HANDSHAKE_FRAME_MAX: usize = 4096;

/// What lapin adds to the client properties (`platform` and its
/// `capabilities` table, 254 bytes encoded), with room to spare.
const LAPIN_PROPERTIES: usize = 300;

/// Refuses client properties (the app name, `[client_properties]`) that
/// would make `connection.start-ok` too large for the broker to accept: it
/// resets the connection, and retrying would never end. Exit 2, naming
/// what to shorten.
fn check_handshake_fits(
    url: &BrokerUrl,
    client: &[(String, String)],
    app_from_command_line: bool,
) -> Result<(), Fatal> {
    // A field-table entry of a long string: key, type, length, value.
    let encoded: usize = client
        .iter()
        .map(|(key, value)| 1 + key.len() + 1 + 4 + value.len())
        .sum();
    let userinfo = &url.uri.authority.userinfo;
    let locale = url.locale.as_deref().unwrap_or("en_US");
    // Frame header and end, method ids, the table's length, the mechanism
    // ("EXTERNAL" at most), the PLAIN response and the locale.
    let rest = 8
        + 4
        + 4
        + LAPIN_PROPERTIES
        + 9
        + 6
        + userinfo.username.len()
        + userinfo.password.len()
        + 1
        + locale.len();
    let budget = HANDSHAKE_FRAME_MAX.saturating_sub(rest);
    if encoded <= budget {
        return Ok(());
    }
    let app_len = client
        .iter()
        .find(|(key, _)| key == "app")
        .map_or(0, |(_, value)| value.len());
    let what = if app_from_command_line && app_len > budget / 2 {
        format!("shorten --app-name ({app_len} bytes)")
    } else {
        "shorten [client_properties] (or --app-name)".to_owned()
    };
    Err(Fatal::new(
        Exit::Usage,
        format!(
            "the client properties take {encoded} bytes, more than the {budget} the AMQP handshake leaves them (RabbitMQ accepts no frame over {HANDSHAKE_FRAME_MAX} bytes before the connection is tuned): {what}"
        ),
    ))
}

/// Exponential backoff with jitter: about 1 s, then doubling up to 10 s,
/// each delay spread by ±20 % so that many consumers restarted by one
/// broker outage do not all come back at the same instant.
///
/// It starts over at about 1 s only once consuming has lasted
/// [`Backoff::STABLE`]: a connection that breaks each time consuming
/// starts (a message that breaks it on delivery) keeps the waits growing,
/// so it costs an attempt every 10 s, never a spin.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    /// Since when the channels have been consuming, if they are.
    consuming_since: Option<Instant>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    /// The longest wait: how stale "consuming again once the broker is
    /// back" can get.
    pub const CAP: Duration = Duration::from_secs(10);

    /// How long consuming must last for a later failure to count as a new
    /// outage rather than the same one again.
    pub const STABLE: Duration = Duration::from_secs(30);

    pub fn new() -> Backoff {
        Backoff {
            next: Self::FIRST,
            consuming_since: None,
        }
    }

    /// Consuming has started (again).
    pub fn consuming(&mut self) {
        self.consuming_since = Some(Instant::now());
    }

    /// The delay before the next attempt, after a failure to connect or
    /// the end of a connection or of its channels.
    pub fn next_delay(&mut self) -> Duration {
        if self
            .consuming_since
            .take()
            .is_some_and(|since| since.elapsed() >= Self::STABLE)
        {
            self.next = Self::FIRST;
        }
        let base = self.next;
        self.next = (base * 2).min(Self::CAP);
        base.mul_f64(0.8 + 0.4 * fastrand::f64())
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// Refusals are the broker's answers to the handshake, TLS ones included
/// (under TLS 1.3 a rejected client certificate arrives as an alert after
/// the handshake); anything else (refused TCP connection, reset, timeout)
/// may go away.
fn classify(error: lapin::Error) -> ConnectError {
    match error.kind() {
        lapin::ErrorKind::IOError(io) if is_tls_refusal(io) => {
            if io.to_string().contains("invalid peer certificate") {
                ConnectError::Untrusted(format!("TLS: {io}"))
            } else {
                ConnectError::Refused(format!(
                    "TLS: {io} (check the client certificate, [tls] certfile and keyfile)"
                ))
            }
        }
        lapin::ErrorKind::ProtocolError(amqp) => ConnectError::Refused(format!(
            "{} {}",
            amqp.kind().get_id(),
            amqp.get_message().as_str()
        )),
        lapin::ErrorKind::AuthProviderError(reason) => ConnectError::Refused(reason.clone()),
        // Something answered that does not speak AMQP (as we expect it):
        // retrying cannot help.
        lapin::ErrorKind::ParsingError(_) | lapin::ErrorKind::InvalidProtocolVersion(_) => {
            ConnectError::Refused(format!(
                "{error} (is this port speaking AMQP? check amqp_url's scheme and port)"
            ))
        }
        lapin::ErrorKind::InvalidConnectionState(_) => ConnectError::Refused(format!(
            "{error} (the broker closed the connection during the handshake: check the credentials and the vhost)"
        )),
        _ => ConnectError::Unreachable(error.to_string()),
    }
}

/// rustls reports an alert from the broker, or a broker certificate it
/// cannot verify, as invalid data; an EOF or reset is not one of those.
fn is_tls_refusal(error: &std::io::Error) -> bool {
    let text = error.to_string();
    error.kind() == std::io::ErrorKind::InvalidData
        && (text.contains("alert") || text.contains("certificate"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_near_a_second_doubles_caps_and_starts_over_after_stable_consuming() {
        let mut backoff = Backoff::new();
        let delays: Vec<f64> = (0..8).map(|_| backoff.next_delay().as_secs_f64()).collect();
        assert!((0.8..=1.2).contains(&delays[0]), "{delays:?}");
        assert!((1.6..=2.4).contains(&delays[1]), "{delays:?}");
        assert!(
            delays
                .iter()
                .all(|d| *d <= 1.2 * Backoff::CAP.as_secs_f64()),
            "{delays:?}"
        );
        assert!(delays[7] >= 0.8 * Backoff::CAP.as_secs_f64(), "{delays:?}");
        // Consuming that ended young keeps the waits long.
        backoff.consuming();
        assert!(backoff.next_delay() >= Backoff::CAP.mul_f64(0.8));
        // Consuming that lasted starts them over.
        backoff.consuming_since = Instant::now().checked_sub(Backoff::STABLE);
        assert!(backoff.next_delay() <= Duration::from_millis(1200));
    }

    #[test]
    fn tls_alerts_are_refusals_and_eof_is_not() {
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: UnknownCA",
        );
        assert!(is_tls_refusal(&alert));
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "tls eof");
        assert!(!is_tls_refusal(&eof));
    }
}
