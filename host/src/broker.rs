//! Connecting to the broker: which node of `amqp_urls` to try (the
//! listed order, round and round), client properties, and telling a
//! broker that is not there yet (retry) from one that refuses us
//! (exit 14).

use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use lapin::tcp::{AsyncTcpStream, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri, SASLMechanism};
use lapin::{Connection, ConnectionProperties};

use crate::amqp_url::BrokerUrl;
use crate::config::{self, Config};
use crate::exit::{Exit, Fatal};
use crate::tls;

/// How to reach the broker, and who we say we are: one node, or the
/// nodes of one cluster (`amqp_urls`), of which one is current.
pub struct Broker {
    nodes: Vec<Node>,
    /// The node [`Broker::connect`] tries; moved on by
    /// [`Broker::next_node`].
    current: AtomicUsize,
}

/// One node's URL and what connecting to it takes.
struct Node {
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
        let mut urls = Vec::new();
        for text in config.broker_urls() {
            let url = BrokerUrl::parse(text).map_err(|error| {
                let message = match &config.amqp_urls {
                    Some(_) => format!("amqp_urls: {error}"),
                    None => error.to_string(),
                };
                Fatal::new(Exit::Usage, message)
            })?;
            urls.push(url);
        }
        if urls.is_empty() {
            // The configuration refuses an empty amqp_urls; this keeps
            // node() from dividing by zero whatever built the Config.
            return Err(Fatal::new(
                Exit::Usage,
                "amqp_urls is empty: list the cluster's nodes".to_owned(),
            ));
        }
        // As fedora-messaging: TLS only for amqps; [tls] serves every node.
        let tls = if urls.iter().any(|url| url.uri.scheme == AMQPScheme::AMQPS) {
            Some(tls::load(&config.tls)?)
        } else {
            None
        };
        let client = client_properties(config, app_name);
        let mut nodes = Vec::with_capacity(urls.len());
        for mut url in urls {
            let node_tls = match &tls {
                Some(setup) if url.uri.scheme == AMQPScheme::AMQPS => {
                    if setup.client_certificate {
                        url.uri.query.auth_mechanism = Some(SASLMechanism::External);
                    }
                    Some(setup.config.clone())
                }
                _ => None,
            };
            for parameter in &url.ignored {
                log::debug!("amqp_url parameter {parameter:?} has no effect here");
            }
            check_handshake_fits(&url, &client, app_name.is_some())?;
            let mut properties = ConnectionProperties::default();
            if let Some(locale) = &url.locale {
                properties = properties.with_locale(locale.as_str().into());
            }
            for (key, value) in &client {
                properties =
                    properties.with_client_property(key.as_str().into(), value.clone().into());
            }
            nodes.push(Node {
                url,
                properties,
                tls: node_tls,
            });
        }
        Ok(Broker {
            nodes,
            current: AtomicUsize::new(0),
        })
    }

    fn node(&self) -> &Node {
        &self.nodes[self.current.load(Ordering::Relaxed) % self.nodes.len()]
    }

    /// How many nodes there are to try.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Moves on to the next node in the listed order (after the last, the
    /// first): the current one failed or was lost.
    pub fn next_node(&self) {
        let next = (self.current.load(Ordering::Relaxed) + 1) % self.nodes.len();
        self.current.store(next, Ordering::Relaxed);
    }

    /// For log lines: the current node, user and vhost (never the
    /// password), with its place in `amqp_urls` when there are several.
    pub fn describe(&self) -> String {
        match self.nodes.len() {
            1 => self.node().url.describe(),
            count => format!(
                "{} (node {} of {count})",
                self.node().url.describe(),
                self.current.load(Ordering::Relaxed) % count + 1
            ),
        }
    }

    /// The current node as `host:port`, for `/ready` and `/metrics`.
    pub fn address(&self) -> String {
        self.node().url.address()
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

    /// One attempt on the current node, bounded by the URL's `socket_timeout` (the TCP
    /// connect) and `stack_timeout` (everything up to an open connection).
    ///
    /// Dropping the future (the caller gave up, or a stop came) shuts the
    /// socket down, so lapin's I/O thread ends instead of waiting for ever
    /// on a peer that never speaks.
    pub async fn connect(&self) -> Result<Connection, ConnectError> {
        let node = self.node();
        let runtime = lapin::runtime::default_runtime()
            .map_err(|error| ConnectError::Unreachable(error.to_string()))?;
        let socket = AttemptSocket::default();
        let _give_up = GiveUpOnDrop(socket.clone());
        let connecting = Connection::connector(
            node.url.uri.clone(),
            runtime,
            open_transport(socket.clone(), node.url.socket_timeout, node.tls.clone()),
            node.properties.clone(),
        );
        let stack_timeout = node.url.stack_timeout;
        let outcome = async { Some(connecting.await) }
            .or(async {
                async_io::Timer::after(stack_timeout).await;
                None
            })
            .await;
        match outcome {
            Some(Ok(connection)) => {
                socket.keep();
                Ok(connection)
            }
            Some(Err(error)) => Err(classify(error)),
            None => Err(ConnectError::Unreachable(format!(
                "no open AMQP connection within {:.1} s (the URL's stack_timeout): the peer accepted TCP but did not complete the handshake",
                stack_timeout.as_secs_f64()
            ))),
        }
    }
}

/// The client properties every connection sends: `[client_properties]`,
/// the app name (`--app-name` first) and the reserved three.
fn client_properties(config: &Config, app_name: Option<&str>) -> Vec<(String, String)> {
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
    client
}

/// The socket of one connection attempt, shut down when the attempt is
/// given up: lapin's I/O thread owns the stream and would otherwise read
/// from a silent peer for ever.
#[derive(Clone, Default)]
struct AttemptSocket(Arc<Mutex<SocketSlot>>);

#[derive(Default)]
struct SocketSlot {
    /// A duplicate of the attempt's socket, once it is connected.
    socket: Option<std::net::TcpStream>,
    /// The attempt ended: kept (it succeeded) or given up.
    settled: bool,
}

impl AttemptSocket {
    fn slot(&self) -> std::sync::MutexGuard<'_, SocketSlot> {
        // A poisoned lock only means a panic elsewhere mid-update; the slot
        // is still usable.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the connected socket; false if the attempt was already
    /// given up (the socket is then shut down at once).
    fn register(&self, socket: &std::net::TcpStream) -> bool {
        let mut slot = self.slot();
        if slot.settled {
            let _ = socket.shutdown(std::net::Shutdown::Both);
            return false;
        }
        slot.socket = socket.try_clone().ok();
        true
    }

    /// The attempt succeeded: the socket is the connection's now.
    fn keep(&self) {
        let mut slot = self.slot();
        slot.settled = true;
        slot.socket = None;
    }
}

/// Gives the attempt up when dropped, unless it was kept: whether
/// connect() returned or its future was dropped mid-way.
struct GiveUpOnDrop(AttemptSocket);

impl Drop for GiveUpOnDrop {
    fn drop(&mut self) {
        let mut slot = self.0.slot();
        if !slot.settled {
            slot.settled = true;
            if let Some(socket) = slot.socket.take() {
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// What lapin's I/O thread calls to open the transport: a TCP connection
/// within `socket_timeout`, registered so that the attempt can shut it
/// down, then TLS when configured.
fn open_transport<R>(
    socket: AttemptSocket,
    socket_timeout: Duration,
    tls: Option<OwnedTLSConfig>,
) -> impl AsyncFn(AMQPUri, R) -> lapin::Result<AsyncTcpStream<async_io::Async<std::net::TcpStream>>>
+ Send
+ Sync
+ 'static
where
    R: Send + 'static,
{
    async move |uri: AMQPUri, _runtime: R| {
        let host = uri.authority.host.clone();
        let port = uri.authority.port;
        // Name resolution blocks lapin's I/O thread, which has nothing
        // else to do until the connection exists.
        let addresses = (host.as_str(), port).to_socket_addrs()?;
        let mut last_error = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host:?} has no address"),
        );
        let mut connected = None;
        for address in addresses {
            let attempt =
                async { Some(async_io::Async::<std::net::TcpStream>::connect(address).await) }.or(
                    async {
                        async_io::Timer::after(socket_timeout).await;
                        None
                    },
                );
            match attempt.await {
                Some(Ok(stream)) => {
                    connected = Some(stream);
                    break;
                }
                Some(Err(error)) => last_error = error,
                None => {
                    last_error = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no TCP connection to {address} within {:.1} s (the URL's socket_timeout)",
                            socket_timeout.as_secs_f64()
                        ),
                    );
                }
            }
        }
        let Some(stream) = connected else {
            return Err(last_error.into());
        };
        if !socket.register(stream.get_ref()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the connection attempt was given up",
            )
            .into());
        }
        let stream = AsyncTcpStream::Plain(stream);
        match &tls {
            None => Ok(stream),
            Some(tls) => Ok(stream.into_tls(&host, tls.as_ref()).await?),
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
    fn nodes_are_tried_in_the_listed_order_round_and_round() {
        let config = Config::parse(
            "amqp_urls = ['amqp://u:p@a:5701/%2F', 'amqp://u:p@b:5702/%2F', 'amqp://u:p@c:5703/%2F']\n",
        )
        .unwrap();
        let broker = Broker::new(&config, None).unwrap();
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push((broker.address(), broker.describe()));
            broker.next_node();
        }
        assert_eq!(
            seen,
            [
                ("a:5701", "amqp://u@a:5701 vhost \"/\" (node 1 of 3)"),
                ("b:5702", "amqp://u@b:5702 vhost \"/\" (node 2 of 3)"),
                ("c:5703", "amqp://u@c:5703 vhost \"/\" (node 3 of 3)"),
                ("a:5701", "amqp://u@a:5701 vhost \"/\" (node 1 of 3)"),
            ]
            .map(|(address, describe)| (address.to_owned(), describe.to_owned()))
        );
        let single = Broker::new(
            &Config::parse("amqp_url = 'amqp://u:p@a/'\n").unwrap(),
            None,
        )
        .unwrap();
        single.next_node();
        assert_eq!(single.describe(), "amqp://u@a:5672 vhost \"/\"");
        let bad = Config::parse("amqp_urls = ['amqp://a/', 'http://b/']\n").unwrap();
        let error = Broker::new(&bad, None)
            .err()
            .expect("an http:// node is refused");
        assert_eq!(error.exit, Exit::Usage);
        assert!(
            error.message.starts_with("amqp_urls: "),
            "{}",
            error.message
        );
    }

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
