//! Scaling out on RabbitMQ's own clustering: a 3-node cluster on 127.0.0.1
//! (scripts/rabbitmq-cluster), a quorum queue declared by the hosts' own
//! configuration, three host processes competing for it, each given all
//! three nodes (`amqp_urls`), and nodes lost mid-stream; and the rules a
//! quorum queue's declaration must follow, checked before the broker sees
//! it.
//!
//! The cluster test prints its figures (shares, duplicates, losses,
//! failover times); `cargo test --test cluster -- --nocapture` shows them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fm_e2e::broker::{TestBroker, queue_config};
use fm_e2e::nodes::{amqp_url, rabbitmqctl};
use fm_e2e::process::Running;
use fm_e2e::*;
use lapin::types::FieldTable;
use serde_json::{Value, json};

/// The cluster's nodes and their AMQP ports (scripts/rabbitmq-cluster).
const NODES: [(&str, u16); 3] = [("fm-c1", 5721), ("fm-c2", 5722), ("fm-c3", 5723)];
const MESSAGES: usize = 20_000;
const PREFETCH: usize = 10;
const HOSTS: usize = 3;
const WAIT: Duration = Duration::from_secs(60);
/// The host's line for a consumer started on a queue.
const CONSUMING: &str = "Consuming messages from queue";
const QUORUM: &str = r#"{"x-queue-type" = "quorum"}"#;
/// Messages published a second: the stream lasts about 20 s.
const PUBLISH_RATE: usize = 1000;

fn url(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2F")
}

/// The cluster, started fresh (or found running) and stopped, its data
/// deleted, when dropped: whether the test passed or panicked.
struct Cluster;

impl Cluster {
    fn start() -> Cluster {
        cluster_script("start");
        Cluster
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        cluster_script("stop");
    }
}

fn cluster_script(command: &str) {
    let status = Command::new(workspace_root().join("scripts/rabbitmq-cluster"))
        .arg(command)
        .status()
        .unwrap_or_else(|error| panic!("cannot run scripts/rabbitmq-cluster: {error}"));
    assert!(
        status.success(),
        "scripts/rabbitmq-cluster {command} failed"
    );
}

fn node_ctl(node: &str, args: &[&str]) -> String {
    let node = format!("{node}@localhost");
    let mut full = vec!["-n", node.as_str()];
    full.extend_from_slice(args);
    rabbitmqctl(&full)
}

/// The node holding `queue`'s leader, asked of `via`.
fn leader(via: &str, queue: &str) -> String {
    let listing = node_ctl(
        via,
        &["-q", "list_queues", "name", "leader", "--formatter", "json"],
    );
    let queues: Vec<Value> = serde_json::from_str(&listing).expect("list_queues as JSON");
    let leader = queues
        .iter()
        .find(|entry| entry["name"] == queue)
        .and_then(|entry| entry["leader"].as_str())
        .unwrap_or_else(|| panic!("no leader for {queue} in {listing}"));
    leader.trim_end_matches("@localhost").to_owned()
}

/// One host process: its saved ids' file and its monitoring address.
struct Host {
    running: Running,
    saved: PathBuf,
    monitoring: String,
    /// The node it was given first.
    first_node: &'static str,
}

/// A host consuming `queue` with the saver, given every node with node
/// `first` first, declaring the queue itself with `arguments` (TOML).
fn host(dir: &Path, queue: &str, index: usize, first: usize, arguments: &str) -> Host {
    let saved = dir.join(format!("saved-{index}.jsonl"));
    let urls: Vec<String> = (0..NODES.len())
        .map(|offset| format!("{:?}", url(NODES[(first + offset) % NODES.len()].1)))
        .collect();
    let conf = dir.join(format!("host-{index}.toml"));
    std::fs::write(
        &conf,
        format!(
            r#"amqp_urls = [{urls}]
callback = "{saver}:SaveMessage"

[queues."{queue}"]
durable = true
auto_delete = false
exclusive = false
arguments = {arguments}

[[bindings]]
queue = "{queue}"
exchange = "amq.topic"
routing_keys = ["{queue}.#"]

[qos]
prefetch_count = {PREFETCH}

[monitoring]
address = "127.0.0.1"
port = 0

[consumer_config]
path = "{saved}"

[log_config.root]
level = "INFO"
"#,
            urls = urls.join(", "),
            saver = plugin("saver").display(),
            saved = saved.display(),
        ),
    )
    .expect("write the host's configuration");
    let mut running = Running::start(fedora_messaging().arg("--conf").arg(&conf).arg("consume"));
    let line = running.wait_for("Monitoring on http://", WAIT);
    let monitoring = line.rsplit("http://").next().unwrap_or_default().to_owned();
    running.wait_for(CONSUMING, WAIT);
    Host {
        running,
        saved,
        monitoring,
        first_node: NODES[first].0,
    }
}

fn all_saved(hosts: &[Host]) -> Vec<String> {
    hosts
        .iter()
        .flat_map(|host| saved_ids(&host.saved))
        .collect()
}

/// Waits until the hosts together saved `distinct` distinct ids.
fn wait_distinct(hosts: &[Host], distinct: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let ids = all_saved(hosts);
        let seen = ids.iter().collect::<HashSet<_>>().len();
        if seen >= distinct {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {seen} distinct messages saved after {WAIT:?} (wanted {distinct})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `host` saves more than `than` lines; how long that took.
/// Fails the test, with the host's log, after [`WAIT`].
fn wait_saves_more(host: &mut Host, than: usize, since: Instant) -> Duration {
    loop {
        if saved_ids(&host.saved).len() > than {
            return since.elapsed();
        }
        if since.elapsed() > WAIT {
            panic!(
                "the host first given {} saved nothing more within {WAIT:?}; its log:\n{}",
                host.first_node,
                host.running.lines_so_far("").join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How many consumers each host has started so far.
fn consumer_counts(hosts: &mut [Host]) -> Vec<usize> {
    hosts
        .iter_mut()
        .map(|host| host.running.lines_so_far(CONSUMING).len())
        .collect()
}

/// The live stream's progress, and how far the publisher may go. The
/// stream stops short of its end until a host that lost its node consumes
/// again; then fresh messages are let through, so that the host always has
/// messages to take once it is back, however long its failover took.
#[derive(Clone)]
struct Stream {
    published: Arc<AtomicUsize>,
    allowed: Arc<AtomicUsize>,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            published: Arc::new(AtomicUsize::new(0)),
            allowed: Arc::new(AtomicUsize::new(MESSAGES * 9 / 10)),
        }
    }

    fn published(&self) -> usize {
        self.published.load(Ordering::SeqCst)
    }

    /// Lets the publisher go `fresh` messages past where it is now, but
    /// no further than `limit`.
    fn release(&self, fresh: usize, limit: usize) {
        let up_to = (self.published() + fresh).min(limit);
        self.allowed.fetch_max(up_to, Ordering::SeqCst);
    }

    /// Waits (bounded) until the publisher may publish up to `end`; how
    /// long that took.
    fn wait_allowed(&self, end: usize) -> Duration {
        let waiting = Instant::now();
        let deadline = waiting + WAIT * 4;
        while self.allowed.load(Ordering::SeqCst) < end && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        waiting.elapsed()
    }
}

/// Waits until `host`, whose node was lost at `since` (when it had
/// started `consumers` consumers), consumes on a new connection and saves
/// a message from it; how long after `since` that was. Messages it had in
/// hand when the node went are saved at once, and are not what this
/// measures; `fresh` more messages of the stream (up to `limit`) are let
/// through once it consumes, so that there is something to take.
fn consuming_again(
    host: &mut Host,
    consumers: usize,
    since: Instant,
    stream: &Stream,
    limit: usize,
) -> Duration {
    host.running.wait_for_count(CONSUMING, consumers + 1, WAIT);
    let before = saved_ids(&host.saved).len();
    stream.release(MESSAGES / 20, limit);
    wait_saves_more(host, before, since)
}

#[test]
fn three_hosts_share_a_quorum_queue_and_lose_nothing_when_nodes_go() {
    let _cluster = Cluster::start();
    let queue = TestBroker::unique_name("cluster");
    let dir = scratch();
    // The first host declares the queue through the first node, which
    // then holds its leader (RabbitMQ places it client-local).
    let mut hosts = vec![host(dir.path(), &queue, 0, 0, QUORUM)];
    for index in 1..HOSTS {
        hosts.push(host(dir.path(), &queue, index, index, QUORUM));
    }
    let stopped = leader(NODES[2].0, &queue);
    let killed = NODES
        .iter()
        .map(|(name, _)| *name)
        .find(|name| *name != stopped)
        .expect("another node");
    let (_, publish_port) = *NODES
        .iter()
        .find(|(name, _)| *name != stopped && *name != killed)
        .expect("a third node");

    let published: Vec<String> = (0..MESSAGES).map(|n| format!("m{n:05}")).collect();
    let records: Vec<Value> = published
        .iter()
        .map(|id| json!({"id": id, "topic": format!("{queue}.test"), "body": {"n": id}}))
        .collect();
    // A live stream at about PUBLISH_RATE: the faults come while messages
    // keep arriving, and every host has messages to take once it is back.
    let stream = Stream::new();
    let publisher = {
        let stream = stream.clone();
        std::thread::spawn(move || {
            let broker = TestBroker::connect_to(&url(publish_port));
            let mut started = Instant::now();
            for (turn, chunk) in records.chunks(PUBLISH_RATE / 10).enumerate() {
                started += stream.wait_allowed(stream.published() + chunk.len());
                broker.publish_all(chunk);
                stream.published.fetch_add(chunk.len(), Ordering::SeqCst);
                let due = started + Duration::from_millis(100) * (turn as u32 + 1);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        })
    };
    let published_so_far = |share: usize| {
        let deadline = Instant::now() + WAIT;
        while stream.published() < share {
            assert!(Instant::now() < deadline, "publishing stalled");
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    // Fault 1: the leader's node stops (stop_app), mid-stream.
    published_so_far(MESSAGES / 4);
    let on_stopped = hosts
        .iter()
        .position(|host| host.first_node == stopped)
        .expect("a host started on the stopped node");
    let consumers = consumer_counts(&mut hosts);
    let saved_at_stop: Vec<usize> = hosts
        .iter()
        .map(|host| saved_ids(&host.saved).len())
        .collect();
    let stop_at = Instant::now();
    node_ctl(&stopped, &["stop_app"]);
    let stop_took = stop_at.elapsed();
    // Fresh messages for this fault stop a twentieth short of the end,
    // which is kept for the second.
    let failover = consuming_again(
        &mut hosts[on_stopped],
        consumers[on_stopped],
        stop_at,
        &stream,
        MESSAGES * 19 / 20,
    );
    // The others keep their node: they go on consuming, with the same
    // consumer or, should the broker cancel it, a new one.
    let mut kept = Vec::new();
    for (index, host) in hosts.iter_mut().enumerate() {
        if index != on_stopped {
            wait_saves_more(host, saved_at_stop[index], stop_at);
            let again = host.running.lines_so_far(CONSUMING).len() - consumers[index];
            kept.push(format!("host {index}: {again} new consumer(s)"));
        }
    }
    let new_leader = leader(killed, &queue);
    node_ctl(&stopped, &["start_app"]);

    // Fault 2: another node's VM killed outright (SIGKILL), mid-stream.
    published_so_far(MESSAGES * 3 / 5);
    let pid = node_ctl(killed, &["-q", "eval", "os:getpid()."]);
    let pid = pid.trim().trim_matches('"');
    let on_killed = hosts
        .iter()
        .position(|host| host.first_node == killed)
        .expect("a host started on the killed node");
    let consumers = consumer_counts(&mut hosts);
    let kill_at = Instant::now();
    let status = Command::new("kill")
        .args(["-9", pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -9 {pid} failed");
    let failover_kill = consuming_again(
        &mut hosts[on_killed],
        consumers[on_killed],
        kill_at,
        &stream,
        MESSAGES,
    );
    stream.release(MESSAGES, MESSAGES);
    let restart = Command::new(workspace_root().join("scripts/rabbitmq-node"))
        .args([
            "start",
            killed,
            &NODES
                .iter()
                .find(|(n, _)| *n == killed)
                .map(|(_, p)| p.to_string())
                .unwrap_or_default(),
        ])
        .status()
        .expect("run scripts/rabbitmq-node");
    assert!(restart.success(), "restarting {killed} failed");

    publisher
        .join()
        .expect("every message published and confirmed");
    wait_distinct(&hosts, MESSAGES);

    // Every host still consumes, on some node, at the end.
    let mut nodes_at_end = Vec::new();
    for host in &hosts {
        let (_, ready) = http_get(&host.monitoring, "/ready");
        let ready: Value = serde_json::from_str(&ready).expect("/ready as JSON");
        assert_eq!(ready["consuming"], true, "{ready}");
        nodes_at_end.push(ready["node"].clone());
    }

    let ids = all_saved(&hosts);
    let distinct: HashSet<&String> = ids.iter().collect();
    let lost: Vec<&String> = published
        .iter()
        .filter(|id| !distinct.contains(id))
        .collect();
    let shares: Vec<usize> = hosts
        .iter()
        .map(|host| saved_ids(&host.saved).len())
        .collect();
    let duplicated = duplicates(&ids);
    let mut outputs = Vec::new();
    for host in hosts {
        let running = host.running;
        running.signal("TERM");
        let run = running.finish();
        assert_eq!(run.code(), 0, "{run:#?}");
        outputs.push(run.output());
    }
    eprintln!(
        "cluster: published {MESSAGES}, saved {} ({duplicated} duplicates), lost {}; shares {shares:?}; \
         fault 1: stop_app of {stopped} (leader; took {stop_took:?}), new leader {new_leader}, \
         its host consuming again after {failover:?}, the others kept consuming ({kept:?}); fault 2: SIGKILL of {killed}, its host consuming again after {failover_kill:?}; \
         nodes at the end {nodes_at_end:?}",
        ids.len(),
        lost.len()
    );
    for (index, output) in outputs.iter().enumerate() {
        for line in output.lines().filter(|line| {
            line.contains("cancel") || line.contains("Lost") || line.contains("Connected to")
        }) {
            eprintln!("host {index}: {line}");
        }
    }
    assert!(lost.is_empty(), "lost: {:?}", &lost[..lost.len().min(20)]);
    assert!(
        duplicated <= 2 * PREFETCH * HOSTS,
        "{duplicated} duplicates over two faults"
    );
    for (index, share) in shares.iter().enumerate() {
        assert!(
            *share >= MESSAGES / 20,
            "host {index} saved only {share} of {MESSAGES}: the load was not shared ({shares:?})"
        );
    }

    a_cancel_for_a_queue_that_still_exists_is_followed_by_consuming_again(dir.path());
}

/// A classic queue lives on one node; when that node stops, RabbitMQ
/// cancels the consumers on the other nodes while the queue still exists.
/// The host consumes again once the queue is back, instead of exiting.
fn a_cancel_for_a_queue_that_still_exists_is_followed_by_consuming_again(dir: &Path) {
    let queue = TestBroker::unique_name("cluster-classic");
    let (home, home_port) = NODES[0];
    TestBroker::connect_to(&url(home_port)).declare_queue(&queue, FieldTable::default());
    let mut host = host(dir, &queue, HOSTS, 1, "{}");
    let publisher = TestBroker::connect_to(&url(NODES[1].1));
    let batch = |from: usize| -> Vec<Value> {
        (from..from + 10)
            .map(
                |n| json!({"id": format!("c{n:02}"), "topic": format!("{queue}.test"), "body": {}}),
            )
            .collect()
    };
    publisher.publish_all(&batch(0));
    wait_distinct(std::slice::from_ref(&host), 10);

    let stop_at = Instant::now();
    node_ctl(home, &["stop_app"]);
    host.running.wait_for("canceled the consumer", WAIT);
    node_ctl(home, &["start_app"]);
    host.running.wait_for_count(CONSUMING, 2, WAIT);
    let again = stop_at.elapsed();
    publisher.publish_all(&batch(10));
    wait_distinct(std::slice::from_ref(&host), 20);
    let cancel = host
        .running
        .lines_so_far("canceled the consumer")
        .join("\n");
    let run = {
        host.running.signal("TERM");
        host.running.finish()
    };
    assert_eq!(run.code(), 0, "{run:#?}");
    eprintln!(
        "classic queue on a stopped node: {cancel}; consuming again {again:?} after the stop"
    );
}

/// A quorum queue's rules are checked at load (exit 2, naming the rule),
/// not left to the broker; a stream queue is refused the same way.
#[test]
fn a_quorum_queue_that_breaks_rabbitmqs_rules_is_a_configuration_error() {
    let url = amqp_url();
    let dir = scratch();
    for (settings, expected) in [
        (
            "durable = false\nauto_delete = false\nexclusive = false\narguments = {\"x-queue-type\" = \"quorum\"}",
            "a quorum queue must be durable",
        ),
        (
            "durable = true\nauto_delete = true\nexclusive = false\narguments = {\"x-queue-type\" = \"quorum\"}",
            "cannot be auto-delete",
        ),
        (
            "durable = true\nauto_delete = false\nexclusive = false\narguments = {\"x-queue-type\" = \"stream\"}",
            "stream queues",
        ),
    ] {
        let conf = config_file(
            dir.path(),
            &format!("amqp_url = \"{url}\"\n[queues.\"q\"]\n{settings}\n"),
        );
        let run = run(&mut scripted_consume(&conf));
        assert_eq!(run.code(), 2, "{run:#?}");
        assert!(run.output().contains(expected), "{run:#?}");
    }
}

/// Hosts that declare one queue must agree: a host whose configuration
/// asks for a quorum queue where a classic one exists stops with exit 10
/// and the broker's reason.
#[test]
fn a_declaration_that_disagrees_with_the_queue_exits_ten_with_the_brokers_reason() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("disagree");
    broker.declare_queue(&queue, FieldTable::default());
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &queue_config(&queue, "").replace(
            "arguments = {}",
            "arguments = {\"x-queue-type\" = \"quorum\"}",
        ),
    );
    let run = run(&mut scripted_consume(&conf));
    assert_eq!(run.code(), 10, "{run:#?}");
    assert!(
        run.output().contains("PRECONDITION_FAILED") && run.output().contains("x-queue-type"),
        "{run:#?}"
    );
    broker.delete_queue(&queue);
}
