//! `contrib/prometheus/fedora-messaging.rules.yml` and the Grafana
//! dashboard, against the real host: each test puts a host in the state
//! an alert is about, scrapes its `/metrics` twice, and has promtool show
//! exactly that alert firing and every other one silent
//! ([`fm_e2e::alerts`]). The blocked connection's case is in `blocked.rs`,
//! beside the memory alarm it needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fm_e2e::alerts::{
    Scrape, assert_alerts, assert_alerts_when_unreachable, exported_names, mentioned_names, scrape,
};
use fm_e2e::broker::{TestBroker, queue_config, queue_config_at, queue_with};
use fm_e2e::nodes::{amqp_url, version};
use fm_e2e::process::Running;
use fm_e2e::proxy::Proxy;
use fm_e2e::*;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// How long apart the two scrapes of a state are at least, so that a rate
/// (or an age growing) shows between them: a measurement, not a wait for
/// an event.
const MEASURED_OVER: Duration = Duration::from_secs(1);

/// Starts `command` and waits for its monitoring address.
fn monitored(command: &mut std::process::Command) -> (Running, String) {
    let mut consumer = Running::start(command);
    let line = consumer.wait_for("Monitoring on http://", WAIT);
    let address = line.rsplit("http://").next().unwrap().trim().to_owned();
    (consumer, address)
}

const MONITORING: &str = "[monitoring]\naddress = \"127.0.0.1\"\nport = 0\n";

/// The value of `series` (name and labels, exactly) in `metrics`; 0 if
/// absent.
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// Scrapes until `until` holds for the metrics; fails after [`WAIT`].
fn scrape_when(address: &str, until: impl Fn(&str) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let scraped = scrape(address);
        if until(&scraped.text) {
            return scraped;
        }
        assert!(
            Instant::now() < deadline,
            "the metrics never got there:\n{}",
            scraped.text
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The second scrape of a state that holds: at least [`MEASURED_OVER`]
/// after `first`, once `until` holds.
fn scrape_again(address: &str, first: &Scrape, until: impl Fn(&str) -> bool) -> Scrape {
    scrape_when(address, |metrics| {
        first.at.elapsed() >= MEASURED_OVER && until(metrics)
    })
}

fn record(queue: &str, id: &str, body: Value) -> Value {
    json!({"id": id, "topic": format!("{queue}.t"), "body": body})
}

#[test]
fn a_consumer_at_work_fires_no_alert_and_the_dashboard_and_rules_name_only_exported_metrics() {
    let (broker, queue, _dir, conf) = queue_with("alerts-healthy", MONITORING, &[]);
    let (consumer, address) = monitored(&mut scripted_consume(&conf));
    // A steady stream while the two scrapes are taken.
    let publishing = Arc::new(AtomicBool::new(true));
    let publisher = {
        let (publishing, queue) = (publishing.clone(), queue.clone());
        std::thread::spawn(move || {
            let broker = TestBroker::connect();
            let mut sent = 0;
            while publishing.load(Ordering::Relaxed) {
                sent += 1;
                broker.publish(&record(&queue, &format!("m{sent}"), json!({"do": "ack"})));
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let processed = "fedora_messaging_consumed_total{result=\"processed\"}";
    let first = scrape_when(&address, |metrics| value(metrics, processed) >= 10.0);
    let second = scrape_again(&address, &first, |metrics| {
        value(metrics, processed) >= value(&first.text, processed) + 20.0
    });
    assert_alerts("healthy", &first, &second, &[]);

    // What the rules and the dashboard use is what the host exports.
    let exported = exported_names(&second.text);
    let rules = std::fs::read_to_string(fm_e2e::alerts::rules_file()).unwrap();
    let dashboard_file = workspace_root().join("contrib/grafana/fedora-messaging.json");
    let dashboard = std::fs::read_to_string(&dashboard_file).unwrap();
    let parsed: Value = serde_json::from_str(&dashboard)
        .unwrap_or_else(|error| panic!("{}: not JSON: {error}", dashboard_file.display()));
    assert!(
        parsed["panels"]
            .as_array()
            .is_some_and(|panels| !panels.is_empty())
    );
    for (what, text) in [("the rules", &rules), ("the dashboard", &dashboard)] {
        let unknown: Vec<_> = mentioned_names(text)
            .into_iter()
            .filter(|name| !exported.contains(name))
            .collect();
        assert!(
            unknown.is_empty(),
            "{what} name metrics the host does not export: {unknown:?}; it exports {exported:?}"
        );
    }

    publishing.store(false, Ordering::Relaxed);
    publisher.join().unwrap();
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    broker.delete_queue(&queue);
}

#[test]
fn a_callback_stuck_on_one_message_fires_the_stuck_callback_alert_only() {
    let files = scratch();
    let go = files.path().join("go");
    let (broker, queue, _dir, conf) = queue_with(
        "alerts-stuck",
        MONITORING,
        &[
            ("m1", json!({"do": "ack", "wait_file": go})),
            ("m2", json!({"do": "ack"})),
            ("m3", json!({"do": "ack"})),
        ],
    );
    let (mut consumer, address) = monitored(&mut scripted_consume(&conf));
    let in_progress =
        |metrics: &str| value(metrics, "fedora_messaging_messages_in_progress") == 1.0;
    let first = scrape_when(&address, in_progress);
    let second = scrape_again(&address, &first, in_progress);
    assert_alerts("stuck", &first, &second, &["FedoraMessagingStuckCallback"]);

    std::fs::write(&go, b"").unwrap();
    consumer.wait_for("(m3): ack", WAIT);
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    broker.delete_queue(&queue);
}

/// A consumer of `queue` from outside the host that takes one message and
/// never settles it.
struct Holder {
    _connection: Connection,
    _consumer: lapin::Consumer,
}

fn hold_active_consumer(queue: &str) -> Holder {
    async_global_executor::block_on(async {
        let connection = Connection::connect(amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .basic_qos(1, BasicQosOptions::default())
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                queue.into(),
                "the-active-one".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Holder {
            _connection: connection,
            _consumer: consumer,
        }
    })
}

#[test]
fn a_host_that_receives_nothing_while_messages_wait_fires_the_silent_stall_alert() {
    // A single-active-consumer queue whose active consumer is someone
    // else's, which holds its one message and takes no more: the host
    // stays connected and consuming, and the broker delivers it nothing,
    // while messages wait.
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("alerts-stall");
    let mut arguments = FieldTable::default();
    arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    broker.declare_queue(&queue, arguments);
    let _holder = hold_active_consumer(&queue);
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &queue_config(&queue, MONITORING).replace(
            "arguments = {}",
            "arguments = {\"x-single-active-consumer\" = true}",
        ),
    );
    let mut command = scripted_consume(&conf);
    command.env("FM_TEST_QUEUE_DEPTH_EVERY", "0.2");
    let (consumer, address) = monitored(&mut command);
    for id in ["w1", "w2", "w3", "w4"] {
        broker.publish(&record(&queue, id, json!({"do": "ack"})));
    }
    // w1 is the holder's; the other three wait, as the host's probe says.
    let ready = format!("fedora_messaging_queue_messages_ready{{queue=\"{queue}\"}}");
    let waiting = |metrics: &str| value(metrics, &ready) == 3.0;
    let first = scrape_when(&address, waiting);
    let second = scrape_again(&address, &first, waiting);
    assert_eq!(value(&second.text, "fedora_messaging_consuming"), 1.0);
    assert_eq!(value(&second.text, "fedora_messaging_received_total"), 0.0);
    assert_alerts("stall", &first, &second, &["FedoraMessagingSilentStall"]);

    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    broker.delete_queue(&queue);
}

#[test]
fn a_host_cut_off_from_the_broker_fires_the_not_connected_alert() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("alerts-cut");
    broker.declare_queue(&queue, FieldTable::default());
    let proxy = Proxy::start(version().address);
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &queue_config_at(&proxy.url(), &queue, MONITORING),
    );
    let (mut consumer, address) = monitored(&mut scripted_consume(&conf));
    consumer.wait_for("Consuming messages from queue", WAIT);
    proxy.cut();
    let cut_off = |metrics: &str| value(metrics, "fedora_messaging_connected") == 0.0;
    let first = scrape_when(&address, cut_off);
    let second = scrape_again(&address, &first, cut_off);
    assert_alerts(
        "disconnected",
        &first,
        &second,
        &["FedoraMessagingNotConnected"],
    );

    consumer.signal("TERM");
    consumer.finish();
    broker.delete_queue(&queue);
}

#[test]
fn a_host_connected_but_not_consuming_fires_the_not_ready_alert() {
    // The consumer's `new` hangs (as a Python import can): connected, and
    // /ready says "consuming": false.
    let (broker, queue, _dir, conf) = queue_with(
        "alerts-unready",
        &format!("{MONITORING}[consumer_config]\nhang_instance = 1\n"),
        &[],
    );
    let (mut consumer, address) = monitored(&mut scripted_consume(&conf));
    consumer.wait_for("instance 1 hangs in new", WAIT);
    let unready = |metrics: &str| {
        value(metrics, "fedora_messaging_connected") == 1.0
            && value(metrics, "fedora_messaging_consuming") == 0.0
    };
    let first = scrape_when(&address, unready);
    let second = scrape_again(&address, &first, unready);
    assert_alerts("not-ready", &first, &second, &["FedoraMessagingNotReady"]);

    // A graceful stop would wait out the hanging build; this test is done.
    consumer.signal("KILL");
    consumer.finish();
    broker.delete_queue(&queue);
}

#[test]
fn messages_nacked_past_the_delivery_limit_fire_the_limit_and_failure_rate_alerts() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("alerts-limit");
    let dead = format!("{queue}-dead");
    broker.declare_queue(&dead, FieldTable::default());
    broker.bind(&dead, "amq.direct", &dead);
    broker.declare_queue(&queue, FieldTable::default());
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &queue_config(
            &queue,
            &format!(
                "{MONITORING}[delivery_limit]\nmax = 2\nretry_delay = 0\ndead_letter_exchange = \"amq.direct\"\ndead_letter_routing_key = \"{dead}\"\n"
            ),
        ),
    );
    let (mut consumer, address) = monitored(&mut limited_consume(&conf));
    consumer.wait_for("Consuming messages from queue", WAIT);
    let first = scrape(&address);
    for id in ["n1", "n2", "n3"] {
        broker.publish(&record(&queue, id, json!({"do": "nack"})));
    }
    let second = scrape_again(&address, &first, |metrics| {
        value(metrics, "fedora_messaging_over_delivery_limit_total") == 3.0
    });
    assert_alerts(
        "over-limit",
        &first,
        &second,
        &[
            "FedoraMessagingOverDeliveryLimit",
            "FedoraMessagingHighFailureRate",
        ],
    );

    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    broker.wait_depth(&dead, 3);
    for name in [&queue, &dead] {
        broker.delete_queue(name);
    }
}

#[test]
fn a_host_prometheus_cannot_reach_fires_the_down_alert_only() {
    assert_alerts_when_unreachable(&["FedoraMessagingDown"]);
}
