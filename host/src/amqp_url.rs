//! `amqp_url`, read as pika reads it, so a fedora-messaging URL means the
//! same broker, vhost and credentials here.
//!
//! pika's rules (its `URLParameters`): host `localhost` and port 5672 (5671
//! for `amqps`) unless given; user and password percent-decoded, `guest` /
//! `guest` unless given; the vhost is the first path segment,
//! percent-decoded, and `/` when the path is empty or `/` (lapin's own
//! parser gives `""` there); every query parameter must be one pika knows,
//! given once. Of those, `heartbeat`, `channel_max`, `frame_max`,
//! `locale`, `socket_timeout` (the TCP connect, 10 s unless given) and
//! `stack_timeout` (the whole bring-up: TCP, TLS and the AMQP handshake,
//! 15 s unless given) are honoured, with pika's defaults; the others are
//! accepted and ignored, as fedora-messaging ignores them too (Twisted, not
//! pika, manages its sockets) or because this host configures the same
//! thing elsewhere (`ssl_options`: use `[tls]`; `client_properties`: use
//! the `[client_properties]` table).

use std::fmt;
use std::time::Duration;

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use percent_encoding::percent_decode_str;

/// The query parameters pika accepts and this host ignores.
const IGNORED_PARAMETERS: [&str; 6] = [
    "blocked_connection_timeout",
    "client_properties",
    "connection_attempts",
    "retry_delay",
    "ssl_options",
    "tcp_options",
];

/// pika's `DEFAULT_SOCKET_TIMEOUT`.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// pika's `DEFAULT_STACK_TIMEOUT`.
pub const STACK_TIMEOUT: Duration = Duration::from_secs(15);

/// A broker address with pika's meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub uri: AMQPUri,
    /// The AMQP locale (pika's `locale` parameter), if given.
    pub locale: Option<String>,
    /// How long opening the TCP connection may take (`socket_timeout`).
    pub socket_timeout: Duration,
    /// How long the whole bring-up may take: TCP, TLS and the AMQP
    /// handshake (`stack_timeout`).
    pub stack_timeout: Duration,
    /// Query parameters accepted but without effect here.
    pub ignored: Vec<String>,
}

/// Why `amqp_url` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid amqp_url: {}", self.0)
    }
}

impl std::error::Error for UrlError {}

fn error(message: impl Into<String>) -> UrlError {
    UrlError(message.into())
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// A timeout in seconds, as pika takes it: a positive number.
fn seconds(name: &str, value: &str) -> Result<Duration, UrlError> {
    value
        .parse::<f64>()
        .ok()
        .filter(|seconds| *seconds > 0.0)
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .ok_or_else(|| {
            error(format!(
                "{name} must be a positive number of seconds, not {value:?}"
            ))
        })
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, UrlError> {
    value
        .parse()
        .map_err(|_| error(format!("{name} must be a whole number, not {value:?}")))
}

impl BrokerUrl {
    pub fn parse(text: &str) -> Result<BrokerUrl, UrlError> {
        let url = url::Url::parse(text).map_err(|e| error(format!("{e} in {text:?}")))?;
        let scheme = match url.scheme() {
            "amqp" => AMQPScheme::AMQP,
            "amqps" => AMQPScheme::AMQPS,
            other => {
                return Err(error(format!(
                    "unexpected scheme {other:?}; use amqp:// or amqps://"
                )));
            }
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(address)) => address.to_string(),
            Some(host) => host.to_string(),
            None => String::new(),
        };
        let host = if host.is_empty() {
            "localhost".to_owned()
        } else {
            host
        };
        let port = url.port().unwrap_or(match scheme {
            AMQPScheme::AMQP => 5672,
            AMQPScheme::AMQPS => 5671,
        });
        let userinfo = if url.username().is_empty() && url.password().is_none() {
            AMQPUserInfo {
                username: "guest".to_owned(),
                password: "guest".to_owned(),
            }
        } else {
            AMQPUserInfo {
                username: decode(url.username()),
                password: url.password().map(decode).unwrap_or_default(),
            }
        };
        let path = url.path();
        let vhost = if path.len() > 1 {
            decode(path.split('/').nth(1).unwrap_or_default())
        } else {
            "/".to_owned()
        };

        let mut query = AMQPQueryString::default();
        let mut locale = None;
        let mut ignored = Vec::new();
        let mut socket_timeout = SOCKET_TIMEOUT;
        let mut stack_timeout = STACK_TIMEOUT;
        let mut seen = Vec::new();
        for (name, value) in url.query_pairs() {
            // parse_qs drops parameters without a value.
            if value.is_empty() {
                continue;
            }
            if seen.contains(&name) {
                return Err(error(format!("parameter {name:?} is given more than once")));
            }
            seen.push(name.clone());
            match name.as_ref() {
                "heartbeat" => query.heartbeat = Some(number(&name, &value)?),
                "channel_max" => query.channel_max = Some(number(&name, &value)?),
                "frame_max" => query.frame_max = Some(number(&name, &value)?),
                "socket_timeout" => socket_timeout = seconds(&name, &value)?,
                "stack_timeout" => stack_timeout = seconds(&name, &value)?,
                "locale" => {
                    crate::wire::check_short("locale", &value).map_err(error)?;
                    locale = Some(value.clone().into_owned());
                }
                known if IGNORED_PARAMETERS.contains(&known) => ignored.push(known.to_owned()),
                unknown => {
                    return Err(error(format!(
                        "unknown parameter {unknown:?} (pika accepts heartbeat, channel_max, frame_max, locale, socket_timeout, stack_timeout, {})",
                        IGNORED_PARAMETERS.join(", ")
                    )));
                }
            }
        }
        Ok(BrokerUrl {
            uri: AMQPUri {
                scheme,
                authority: AMQPAuthority {
                    userinfo,
                    host,
                    port,
                },
                vhost,
                query,
            },
            locale,
            socket_timeout,
            stack_timeout,
            ignored,
        })
    }

    /// `host:port`, an IPv6 address in brackets.
    pub fn address(&self) -> String {
        let authority = &self.uri.authority;
        if authority.host.contains(':') {
            format!("[{}]:{}", authority.host, authority.port)
        } else {
            format!("{}:{}", authority.host, authority.port)
        }
    }

    /// `scheme://user@host:port vhost`, for log lines (never the password).
    pub fn describe(&self) -> String {
        let authority = &self.uri.authority;
        let user = match self.uri.query.auth_mechanism {
            Some(lapin::uri::SASLMechanism::External) => "client-certificate".to_owned(),
            _ => authority.userinfo.username.clone(),
        };
        format!(
            "{}://{user}@{} vhost {:?}",
            self.uri.scheme,
            self.address(),
            self.uri.vhost
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> BrokerUrl {
        BrokerUrl::parse(text).unwrap()
    }

    #[test]
    fn fedora_messaging_default_url() {
        let url = parse("amqp://?connection_attempts=3&retry_delay=5");
        assert_eq!(url.uri.authority.host, "localhost");
        assert_eq!(url.uri.authority.port, 5672);
        assert_eq!(url.uri.vhost, "/");
        assert_eq!(url.uri.authority.userinfo.username, "guest");
        assert_eq!(url.uri.authority.userinfo.password, "guest");
        assert_eq!(url.ignored, ["connection_attempts", "retry_delay"]);
    }

    #[test]
    fn socket_and_stack_timeouts_are_pikas_seconds() {
        let url = parse("amqp://h/");
        assert_eq!(url.socket_timeout, SOCKET_TIMEOUT);
        assert_eq!(url.stack_timeout, STACK_TIMEOUT);
        let url = parse("amqp://h/?socket_timeout=2.5&stack_timeout=4");
        assert_eq!(url.socket_timeout, Duration::from_millis(2500));
        assert_eq!(url.stack_timeout, Duration::from_secs(4));
        assert!(url.ignored.is_empty());
        for bad in ["0", "-1", "soon", "inf"] {
            let error = BrokerUrl::parse(&format!("amqp://h/?socket_timeout={bad}")).unwrap_err();
            assert!(
                error.to_string().contains("positive number of seconds"),
                "{error}"
            );
        }
    }

    #[test]
    fn empty_path_and_slash_mean_the_default_vhost() {
        // lapin's own parser gives "" for the first.
        assert_eq!(parse("amqp://broker").uri.vhost, "/");
        assert_eq!(parse("amqp://broker/").uri.vhost, "/");
        assert_eq!(parse("amqp://broker/%2F").uri.vhost, "/");
        assert_eq!(parse("amqp://broker/%2f").uri.vhost, "/");
        assert_eq!(parse("amqp://broker/pubsub").uri.vhost, "pubsub");
        assert_eq!(parse("amqp://broker/first/second").uri.vhost, "first");
    }

    #[test]
    fn fedora_public_broker() {
        let url = parse("amqps://fedora:@rabbitmq.fedoraproject.org/%2Fpublic_pubsub");
        assert_eq!(url.uri.scheme, AMQPScheme::AMQPS);
        assert_eq!(url.uri.authority.port, 5671);
        assert_eq!(url.uri.vhost, "/public_pubsub");
        assert_eq!(url.uri.authority.userinfo.username, "fedora");
        assert_eq!(url.uri.authority.userinfo.password, "");
    }

    #[test]
    fn credentials_are_percent_decoded() {
        let url = parse("amqp://us%40er:p%3Ass%2Fw@host:5673/v");
        assert_eq!(url.uri.authority.userinfo.username, "us@er");
        assert_eq!(url.uri.authority.userinfo.password, "p:ss/w");
        assert_eq!(url.uri.authority.port, 5673);
    }

    #[test]
    fn ipv6_literals() {
        let url = parse("amqp://guest:guest@[::1]:5672/%2F");
        assert_eq!(url.uri.authority.host, "::1");
        assert_eq!(url.describe(), "amqp://guest@[::1]:5672 vhost \"/\"");
    }

    #[test]
    fn honoured_parameters() {
        let url = parse("amqp://h/?heartbeat=30&channel_max=64&frame_max=131072&locale=fr_FR");
        assert_eq!(url.uri.query.heartbeat, Some(30));
        assert_eq!(url.uri.query.channel_max, Some(64));
        assert_eq!(url.uri.query.frame_max, Some(131072));
        assert_eq!(url.locale.as_deref(), Some("fr_FR"));
    }

    #[test]
    fn pika_refusals() {
        for (text, expected) in [
            ("http://h/", "unexpected scheme"),
            (
                "amqp://h/?heartbeat=soon",
                "heartbeat must be a whole number",
            ),
            (
                "amqp://h/?auth_mechanism=external",
                "unknown parameter \"auth_mechanism\"",
            ),
            ("amqp://h/?heartbeat=1&heartbeat=2", "more than once"),
        ] {
            let message = BrokerUrl::parse(text).unwrap_err().to_string();
            assert!(message.contains(expected), "{text}: {message}");
        }
    }
}
