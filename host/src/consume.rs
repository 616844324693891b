//! `fedora-messaging consume`: connect, declare, consume, dispatch each
//! message to the consumer, settle it as its outcome says, and stop the
//! way fedora-messaging stops.
//!
//! This module builds what the command needs from the configuration (the
//! broker, the topology, the consumers and their threads, signals,
//! monitoring) and hands it to the [`Engine`]. One message's path through
//! the engine: a queue's delivery stream → [`wire::check_delivery`] (a
//! message fedora-messaging would refuse is rejected here, without
//! requeue) → a ticket in the channel's ledger → a worker thread → its
//! outcome → the lifecycle, then the ledger's settlement → go on, or drain
//! and exit.
//!
//! [`wire::check_delivery`]: crate::wire::check_delivery

use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;
use crate::broker_rules;
use crate::config::{Config, LIMIT_CREDENTIAL};
use crate::engine::handler::Handler;
use crate::engine::limit::Policy;
use crate::engine::message::Source;
use crate::engine::pulse::Pulse;
use crate::engine::seal::{MIN_SECRET, Seal};
use crate::engine::workers::Workers;
use crate::engine::{Engine, Settings};
use crate::exit::{Exit, Fatal};
use crate::monitor::{self, Stats};
use crate::notify::Notifier;
use crate::plugin;
use crate::publisher;
use crate::stop::StopRequest;
use crate::topology::{Overrides, Topology};

/// What `consume` was asked to do.
pub struct ConsumeArgs<'a> {
    /// `--app-name`.
    pub app_name: Option<&'a str>,
    pub overrides: Overrides,
}

/// Runs `consume` with `workers` instances of the plugin consumer
/// `callback` (`LIB:Symbol`) to its end and returns how the process exits.
pub fn run(
    config: &Config,
    callback: &str,
    workers: u16,
    args: &ConsumeArgs<'_>,
) -> Result<Exit, Fatal> {
    run_with(config, args, || {
        // The library, its ABI and the consumer's name are checked here, at
        // once; each instance is built on its worker's thread while the
        // engine connects (so that `new` may publish), and consuming
        // begins once all are.
        let (plugin, name) = plugin::load_library(callback)?;
        plugin.ensure_consumer(&name)?;
        let plugin = Arc::new(plugin);
        let consumer_config = Arc::new(config.consumer_config_json());
        let sources = (0..workers)
            .map(|_| {
                let plugin = plugin.clone();
                let name = name.clone();
                let consumer_config = consumer_config.clone();
                Source::Build(Box::new(move || {
                    let consumer = plugin.build(&name, &consumer_config)?;
                    Ok(Box::new(consumer) as Box<dyn Handler>)
                }))
            })
            .collect();
        Ok((name, sources))
    })
}

/// Runs `consume` with the handlers `build` makes (one worker thread
/// each, and the consumer's name for the log), once the command line and
/// configuration have been checked.
pub fn run_with(
    config: &Config,
    args: &ConsumeArgs<'_>,
    build: impl FnOnce() -> Result<(String, Vec<Source>), Fatal>,
) -> Result<Exit, Fatal> {
    let Prepared {
        topology,
        broker,
        delivery_limit,
    } = prepare(config, &args.overrides, args.app_name)?;
    if config.qos.prefetch_size != 0 {
        log::warn!("qos.prefetch_size is not supported by RabbitMQ; using 0");
    }
    let limit_max = config.delivery_limit.as_ref().map(|limit| limit.max);
    for warning in broker_rules::warnings(&topology, limit_max) {
        log::warn!("{warning}");
    }
    let (consumer, consumers) = build()?;
    let prefetch_count = prefetch_for(config.qos.prefetch_count, consumers.len());
    let stop = StopRequest::on_signals().map_err(|error| {
        Fatal::new(
            Exit::Registration,
            format!("cannot install signal handlers: {error}"),
        )
    })?;
    let stats = Arc::new(Stats::default());
    publisher::service().use_broker(publisher::Settings::from_config(config), stats.clone());
    if let Some(monitoring) = config
        .monitoring()
        .map_err(|m| Fatal::new(Exit::Usage, m))?
    {
        monitor::serve(&monitoring.address, monitoring.port, stats.clone()).map_err(|error| {
            Fatal::new(
                Exit::Error,
                format!(
                    "cannot serve [monitoring] on {:?} port {}: {error}",
                    monitoring.address, monitoring.port
                ),
            )
        })?;
    }
    let workers = Workers::start(consumers, &stats).map_err(|error| {
        Fatal::new(
            Exit::Registration,
            format!("cannot start a consumer thread: {error}"),
        )
    })?;
    let notifier = Arc::new(Notifier::from_env());
    let soft_timeout = config.soft_timeout.map(Duration::from_secs_f64);
    let pulse = Pulse::new(notifier.clone(), stats.clone(), soft_timeout);
    let settings = Settings {
        prefetch_count,
        delivery_limit,
        consumer,
        stop_timeout: Duration::from_secs_f64(config.stop_timeout),
    };
    let mut engine = Engine::new(
        broker,
        topology,
        settings,
        workers,
        stop,
        pulse,
        stats.clone(),
    );
    // Not async-io's block_on, which would make this thread drive the
    // reactor while the engine waits, which is nearly all the time now
    // that messages go from lapin to the consumer threads; async-io's own
    // thread drives it instead (0.93 of the CPU per message at prefetch
    // 1000, four alternating rounds).
    let result = futures_lite::future::block_on(engine.run());
    if let Some(summary) = stats.summary() {
        log::info!("Message counts: {summary}");
        notifier.counts(summary);
    }
    if let Some(span) = stats.span() {
        log::info!("{span}");
    }
    notifier.stopping();
    result
}

/// What `consume` makes of the command line and the configuration before
/// it builds a consumer or connects.
pub(crate) struct Prepared {
    pub topology: Topology,
    pub broker: Broker,
    pub delivery_limit: Option<Policy>,
}

/// Checks and reads, in `consume`'s order, everything that can stop it
/// before it connects: the overrides, the broker's URLs, TLS files and
/// client properties, and the delivery limit's secret. `check` runs it
/// too, so that its exit 0 means `consume` gets past all of them.
pub(crate) fn prepare(
    config: &Config,
    overrides: &Overrides,
    app_name: Option<&str>,
) -> Result<Prepared, Fatal> {
    overrides
        .check()
        .map_err(|reason| Fatal::new(Exit::Usage, reason))?;
    let topology = Topology::new(config, overrides);
    let broker = Broker::new(config, app_name)?;
    let delivery_limit = delivery_limit(config, &topology)?;
    Ok(Prepared {
        topology,
        broker,
        delivery_limit,
    })
}

/// `[delivery_limit]` as the engine applies it, with its secret read: from
/// `secret_file`, or from the systemd credential [`LIMIT_CREDENTIAL`].
fn delivery_limit(config: &Config, topology: &Topology) -> Result<Option<Policy>, Fatal> {
    let Some(limit) = &config.delivery_limit else {
        return Ok(None);
    };
    let credential = std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(|directory| std::path::Path::new(&directory).join(LIMIT_CREDENTIAL))
        .filter(|path| path.exists());
    let path = match (&limit.secret_file, credential) {
        (Some(file), _) => std::path::PathBuf::from(file),
        (None, Some(credential)) => credential,
        (None, None) => {
            return Err(Fatal::new(
                Exit::Usage,
                format!(
                    "[delivery_limit] needs a secret to seal its delivery counts, so that no publisher can write one: set secret_file to a file of at least {MIN_SECRET} random bytes shared by every host of the queue (head -c 32 /dev/urandom > /etc/fedora-messaging/delivery-limit.secret), or give the unit the credential {LIMIT_CREDENTIAL}"
                ),
            ));
        }
    };
    let secret = std::fs::read(&path).map_err(|error| {
        Fatal::new(
            Exit::Usage,
            format!(
                "cannot read [delivery_limit]'s secret from {}: {error}; fix secret_file, or its permissions",
                path.display()
            ),
        )
    })?;
    let secret = secret.trim_ascii();
    if secret.len() < MIN_SECRET {
        return Err(Fatal::new(
            Exit::Usage,
            format!(
                "[delivery_limit]'s secret in {} has {} bytes, fewer than {MIN_SECRET}: write a longer random one (head -c 32 /dev/urandom)",
                path.display(),
                secret.len()
            ),
        ));
    }
    let quorum_queues = topology
        .queues
        .iter()
        .filter(|queue| queue.is_quorum())
        .map(|queue| queue.name.clone())
        .collect();
    Ok(Some(Policy {
        max: limit.max,
        dead_letter_exchange: limit.dead_letter_exchange.clone(),
        dead_letter_routing_key: limit.dead_letter_routing_key.clone(),
        seal: Seal::new(secret),
        quorum_queues,
        remembered: Default::default(),
        retry_delay: limit.retry_delay,
        max_retry_delay: limit.max_retry_delay,
    }))
}

/// The prefetch used when `qos.prefetch_count = 0` asks for no limit.
pub const UNLIMITED_PREFETCH: u16 = 1000;

/// Each worker needs a message of its own to be busy, so a prefetch below
/// the number of workers is raised to it. "No limit" (0) would let the
/// broker push a whole queue into memory, where it waits for workers that
/// take a few at a time; it is taken as [`UNLIMITED_PREFETCH`].
fn prefetch_for(configured: u16, workers: usize) -> u16 {
    let workers = u16::try_from(workers).unwrap_or(u16::MAX);
    if configured == 0 {
        let bounded = UNLIMITED_PREFETCH.max(workers);
        log::warn!(
            "qos.prefetch_count = 0 (no limit) would let the broker send the whole queue into memory; using {bounded}"
        );
        bounded
    } else if configured < workers {
        log::info!(
            "qos.prefetch_count = {configured} is below the number of workers; using {workers}, so that each worker can have a message"
        );
        workers
    } else {
        configured
    }
}
