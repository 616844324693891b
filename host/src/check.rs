//! `fedora-messaging check`: what `consume` would run, checked without
//! the broker. It loads the configuration, loads the plugin and builds one
//! consumer (a Python callback is imported, so the bridge says which
//! Python, fedora-messaging and schema packages it found), stops it, and
//! prints the queues it would consume and their bindings. It runs the
//! checks `consume` makes before connecting ([`consume::prepare`]: the
//! URLs, TLS files, client properties, the delivery limit's secret), and
//! exits 0, or with the code `consume` would have exited with at start;
//! no queue is touched.

use std::path::Path;

use crate::config::Config;
use crate::consume::{self, Prepared};
use crate::exit::{Exit, Fatal};
use crate::plugin;
use crate::topology::Overrides;
use crate::traces;

/// Runs the check of `callback` under `config`, read from `file` (and
/// `host_file`).
pub fn run(
    config: &Config,
    callback: &str,
    overrides: &Overrides,
    file: Option<&Path>,
    host_file: Option<&Path>,
) -> Result<Exit, Fatal> {
    // What `consume` checks before it connects, in its order: a URL, a
    // TLS file or a delivery limit's secret it would refuse fails here.
    let Prepared { topology, .. } = consume::prepare(config, overrides, None)?;
    match file {
        Some(file) => println!("Configuration: {}", file.display()),
        None => println!("Configuration: fedora-messaging's defaults (no file)"),
    }
    if let Some(host_file) = host_file {
        println!("Host-only keys: {}", host_file.display());
    }
    // As `consume` reads them, from [tracing] and OpenTelemetry's
    // variables.
    match traces::configured(config.tracing.as_ref())
        .map_err(|reason| Fatal::new(Exit::Usage, reason))?
    {
        Some(settings) => println!(
            "Traces: exported to {} as service {:?}",
            settings.traces_url, settings.service_name
        ),
        None => println!("Traces: off"),
    }
    let (plugin, name) = plugin::load_library(callback)?;
    plugin.ensure_consumer(&name)?;
    println!("Consumer: {name}, from {}", plugin.path().display());
    let mut consumer = plugin.build(&name, &config.consumer_config_json())?;
    consumer.stop();
    println!("Consumer built: {callback}");
    if topology.queues.is_empty() {
        println!("Queues: none (consume would have nothing to consume)");
    }
    for queue in &topology.queues {
        let name = if queue.name.is_empty() {
            "(named by the broker)"
        } else {
            queue.name.as_str()
        };
        let bindings: Vec<String> = queue
            .bindings
            .iter()
            .map(|binding| format!("{} {:?}", binding.exchange, binding.routing_key))
            .collect();
        println!(
            "Queue: {name} (durable {}, {}), bound to: {}",
            queue.settings.durable,
            if topology.passive {
                "declared passively"
            } else {
                "declared"
            },
            if bindings.is_empty() {
                "nothing".to_owned()
            } else {
                bindings.join(", ")
            }
        );
    }
    println!("OK: consume would start with this configuration");
    Ok(Exit::Success)
}
