//! Connecting to the broker: client properties, and telling a broker that
//! is not there yet (retry) from one that refuses us (exit 14).

use std::time::Duration;

use lapin::types::LongString;
use lapin::{Connection, ConnectionProperties};

use crate::amqp_url::BrokerUrl;
use crate::config::{self, Config};
use crate::exit::{Exit, Fatal};
use crate::stop::StopRequest;

/// How to reach the broker, and who we say we are.
pub struct Broker {
    url: BrokerUrl,
    properties: ConnectionProperties,
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// Nothing answered or the connection broke: try again later.
    Unreachable(String),
    /// The broker answered and said no (credentials, vhost, TLS).
    Refused(String),
}

impl Broker {
    /// `app_name` is `--app-name`, which wins over the configuration's.
    pub fn new(config: &Config, app_name: Option<&str>) -> Result<Broker, Fatal> {
        let url = BrokerUrl::parse(&config.amqp_url)
            .map_err(|error| Fatal::new(Exit::Usage, error.to_string()))?;
        for parameter in &url.ignored {
            log::debug!("amqp_url parameter {parameter:?} has no effect here");
        }
        let mut properties = ConnectionProperties::default();
        if let Some(locale) = &url.locale {
            properties = properties.with_locale(locale.as_str().into());
        }
        for (key, value) in &config.client_properties {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            properties = properties.with_client_property(key.as_str().into(), text.into());
        }
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
        properties = properties.with_client_property("app".into(), app.into());
        for (key, value) in config::reserved_client_properties() {
            properties = properties.with_client_property(key.into(), LongString::from(value));
        }
        Ok(Broker { url, properties })
    }

    /// For log lines: the broker, user and vhost (never the password).
    pub fn describe(&self) -> String {
        self.url.describe()
    }

    /// One attempt.
    pub async fn connect(&self) -> Result<Connection, ConnectError> {
        Connection::connect_uri(self.url.uri.clone(), self.properties.clone())
            .await
            .map_err(classify)
    }

    /// Connects, retrying while the broker is unreachable (logging each
    /// attempt), until it answers. `Ok(None)`: a stop was requested first.
    pub async fn connect_with_retry(
        &self,
        stop: &StopRequest,
    ) -> Result<Option<Connection>, Fatal> {
        let mut delay = Duration::from_secs(1);
        loop {
            if stop.is_requested() {
                return Ok(None);
            }
            match self.connect().await {
                Ok(connection) => {
                    log::info!("Connected to {}", self.describe());
                    return Ok(Some(connection));
                }
                Err(ConnectError::Refused(reason)) => {
                    return Err(Fatal::new(
                        Exit::Connection,
                        format!(
                            "the broker at {} refused the connection: {reason}",
                            self.describe()
                        ),
                    ));
                }
                Err(ConnectError::Unreachable(reason)) => {
                    log::warn!(
                        "Cannot connect to {}: {reason}; retrying in {} s",
                        self.describe(),
                        delay.as_secs()
                    );
                    if stop.wait(delay).await {
                        return Ok(None);
                    }
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
}

/// Refusals are the broker's answers to the handshake; anything else
/// (refused TCP connection, reset, timeout) may go away.
fn classify(error: lapin::Error) -> ConnectError {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => ConnectError::Refused(format!(
            "{} {}",
            amqp.kind().get_id(),
            amqp.get_message().as_str()
        )),
        lapin::ErrorKind::AuthProviderError(reason) => ConnectError::Refused(reason.clone()),
        lapin::ErrorKind::InvalidConnectionState(_) => ConnectError::Refused(format!(
            "{error} (the broker closed the connection during the handshake: check the credentials and the vhost)"
        )),
        _ => ConnectError::Unreachable(error.to_string()),
    }
}
