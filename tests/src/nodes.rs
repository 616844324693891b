//! Which RabbitMQ the tests run against, and the broker nodes they start.
//!
//! `FM_TEST_BROKER` chooses the version: `rabbitmq3` (the default,
//! bookworm's 3.10 on 127.0.0.1:5672, `scripts/start-rabbitmq`) or
//! `rabbitmq4` (trixie's 4.0 on 127.0.0.1:5682, `scripts/rabbitmq4 start`).
//! Nodes of the tests' own (`scripts/rabbitmq-node`) are of the same
//! version, and every node a test process starts is stopped when that
//! process exits, whether its tests passed or not.

use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// One broker version's main node and fault node.
#[derive(Debug)]
pub struct Version {
    /// As `FM_TEST_BROKER` names it.
    pub name: &'static str,
    pub major: u8,
    /// The main node's AMQP address.
    pub address: &'static str,
    /// The URL tests give the host for the main node.
    pub url: &'static str,
    /// The main node's name for its CLI, where it is not the CLI's default.
    main_node: Option<&'static str>,
    cli: &'static str,
    /// How the main node is started.
    pub start_with: &'static str,
    /// The node that fault tests stop and restart, and its AMQP port.
    pub fault_node: &'static str,
    pub fault_port: u16,
}

const RABBITMQ3: Version = Version {
    name: "rabbitmq3",
    major: 3,
    address: "127.0.0.1:5672",
    url: "amqp://guest:guest@127.0.0.1:5672/%2F",
    main_node: None,
    cli: "rabbitmqctl",
    start_with: "scripts/start-rabbitmq",
    fault_node: "fm-faults",
    fault_port: 5701,
};

const RABBITMQ4: Version = Version {
    name: "rabbitmq4",
    major: 4,
    address: "127.0.0.1:5682",
    url: "amqp://guest:guest@127.0.0.1:5682/%2F",
    main_node: Some("fm-rabbit4@localhost"),
    cli: "/opt/fm-rabbitmq4/bin/rabbitmqctl",
    start_with: "scripts/rabbitmq4 start",
    fault_node: "fm4-faults",
    fault_port: 5741,
};

/// The version under test, from `FM_TEST_BROKER`.
pub fn version() -> &'static Version {
    static CHOSEN: OnceLock<&'static Version> = OnceLock::new();
    CHOSEN.get_or_init(|| match std::env::var("FM_TEST_BROKER").as_deref() {
        Err(_) | Ok("") | Ok("rabbitmq3") => &RABBITMQ3,
        Ok("rabbitmq4") => &RABBITMQ4,
        Ok(other) => panic!("FM_TEST_BROKER={other:?}: use rabbitmq3 or rabbitmq4"),
    })
}

/// The URL of the main test node.
pub fn amqp_url() -> &'static str {
    version().url
}

/// The URL of the fault node ([`start_fault_node`]).
pub fn fault_url() -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/%2F", version().fault_port)
}

/// The version's `rabbitmqctl`, given the main node unless `args` name
/// another with `-n`.
fn cli(args: &[&str]) -> Command {
    let version = version();
    let mut command = Command::new(version.cli);
    if let Some(node) = version.main_node
        && !args.contains(&"-n")
    {
        command.args(["-n", node]);
    }
    command.args(args);
    command
}

/// Runs `rabbitmqctl` (as root) and returns its output; fails the test if
/// it fails.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = cli(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run rabbitmqctl {args:?}: {error}"));
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `rabbitmqctl` where failing is fine (deleting what may not exist).
pub fn rabbitmqctl_if_it_can(args: &[&str]) {
    let _ = cli(args).output();
}

/// `rabbitmqctl` on the node `name@localhost`.
pub fn node_ctl(name: &str, args: &[&str]) -> String {
    let node = format!("{name}@localhost");
    let mut full = vec!["-n", node.as_str()];
    full.extend_from_slice(args);
    rabbitmqctl(&full)
}

/// Starts (if it is not running) the node `name@localhost` of the version
/// under test, with AMQP on `port`, `settings` appended to its
/// rabbitmq.conf and `plugins` as its enabled_plugins (see
/// scripts/rabbitmq-node). It is stopped when this process exits.
pub fn start_node(name: &str, port: u16, settings: &[&str], plugins: Option<&str>) {
    stop_at_exit(name);
    let port = port.to_string();
    let mut args = vec!["start", name, port.as_str()];
    args.extend_from_slice(settings);
    let mut command = node_script(&args);
    if let Some(plugins) = plugins {
        command.env("FM_NODE_PLUGINS", plugins);
    }
    let status = command
        .status()
        .unwrap_or_else(|error| panic!("cannot run scripts/rabbitmq-node: {error}"));
    assert!(status.success(), "scripts/rabbitmq-node {args:?} failed");
}

/// Stops the node `name@localhost` (its data is kept for a restart).
pub fn stop_node(name: &str) {
    let status = node_script(&["stop", name])
        .status()
        .unwrap_or_else(|error| panic!("cannot run scripts/rabbitmq-node: {error}"));
    assert!(status.success(), "scripts/rabbitmq-node stop {name} failed");
}

/// The fault node's delivery-acknowledgement timeout, short enough to
/// test (RabbitMQ 3.10 checks it about once a minute).
const FAULT_NODE_SETTINGS: [&str; 1] = ["consumer_timeout = 5000"];

/// Starts the fault node, if it is not running.
pub fn start_fault_node() {
    start_node(
        version().fault_node,
        version().fault_port,
        &FAULT_NODE_SETTINGS,
        None,
    );
}

/// Starts the fault node if need be, and keeps this process's other tests
/// of it out while the guard lives: some stop the node, or raise its
/// alarms.
pub fn fault_node_alone() -> MutexGuard<'static, ()> {
    static ALONE: Mutex<()> = Mutex::new(());
    let guard = ALONE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    start_fault_node();
    guard
}

/// The fault node's memory alarm, raised (a watermark of 0) until dropped:
/// the broker blocks every connection that publishes.
pub struct MemoryAlarm;

impl MemoryAlarm {
    pub fn raise() -> MemoryAlarm {
        fault_node_ctl(&["set_vm_memory_high_watermark", "0"]);
        MemoryAlarm
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        fault_node_ctl(&["set_vm_memory_high_watermark", "0.4"]);
    }
}

pub fn stop_fault_node() {
    stop_node(version().fault_node);
}

/// `rabbitmqctl` on the fault node.
pub fn fault_node_ctl(args: &[&str]) -> String {
    node_ctl(version().fault_node, args)
}

fn node_script(args: &[&str]) -> Command {
    let mut command = Command::new(crate::workspace_root().join("scripts/rabbitmq-node"));
    command
        .args(args)
        .env("FM_RABBITMQ", version().major.to_string());
    command
}

/// The nodes this process started, stopped at its exit.
static STARTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn stop_at_exit(name: &str) {
    let mut started = STARTED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if started.is_empty() {
        // The test harness has no hook for the end of a run; the C
        // library's exit handlers run when it returns or exits, whether
        // tests failed or not.
        // SAFETY: registers a function that takes no arguments and does
        // not unwind (it catches everything it calls).
        unsafe { libc::atexit(stop_started_nodes) };
    }
    if !started.iter().any(|known| known == name) {
        started.push(name.to_owned());
    }
}

extern "C" fn stop_started_nodes() {
    let _ = std::panic::catch_unwind(|| {
        let started = std::mem::take(
            &mut *STARTED
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for name in started {
            let _ = node_script(&["stop", &name]).status();
        }
    });
}
