//! OpenTelemetry traces, end to end: a real OTLP/HTTP receiver (Python,
//! decoding with opentelemetry-proto from PyPI) records what the hosts
//! export; a message published by an application instrumented with
//! OpenTelemetry's pika instrumentation, so its `traceparent` comes from a
//! client we did not write, is followed through one host's consume, its
//! republished copy, and a second host's consume.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fm_e2e::broker::{TestBroker, queue_config};
use fm_e2e::nodes::amqp_url;
use fm_e2e::process::Running;
use fm_e2e::python::{bridge_config, bridge_host_running, tracing_venv};
use fm_e2e::*;
use lapin::types::FieldTable;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn script(name: &str) -> PathBuf {
    workspace_root().join("tests/fixtures/python").join(name)
}

/// The test's OTLP/HTTP receiver, writing each span it takes as a JSON
/// line.
struct Receiver {
    _process: Running,
    endpoint: String,
    spans: PathBuf,
}

impl Receiver {
    fn start(dir: &Path) -> Receiver {
        let spans = dir.join("spans.jsonl");
        let mut process = Running::start(
            Command::new(tracing_venv().join("bin/python"))
                .arg(script("otlp_receiver.py"))
                .arg(&spans),
        );
        let line = process.wait_for("listening on ", WAIT);
        let port = line.trim().rsplit(' ').next().unwrap().to_owned();
        Receiver {
            _process: process,
            endpoint: format!("http://127.0.0.1:{port}"),
            spans,
        }
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.spans)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The spans once `until` holds for them; fails after [`WAIT`].
    fn spans_when(&self, until: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let spans = self.spans();
            if until(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver never had the spans; it has:\n{}",
                serde_json::to_string_pretty(&spans).unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `command` exporting traces to `endpoint` as service `service`.
fn traced<'a>(command: &'a mut Command, endpoint: &str, service: &str) -> &'a mut Command {
    command
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_SERVICE_NAME", service)
}

fn named<'a>(spans: &'a [Value], service: &str, name: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|span| span["service"] == service && span["name"] == name)
        .collect()
}

/// The one span of `service` named `name`; fails if there is not exactly
/// one.
fn one<'a>(spans: &'a [Value], service: &str, name: &str) -> &'a Value {
    let found = named(spans, service, name);
    assert_eq!(
        found.len(),
        1,
        "{service} {name}: {}",
        serde_json::to_string_pretty(spans).unwrap()
    );
    found[0]
}

/// One line per span, in the receiver's order: for the test's output and
/// the closing note.
fn outline(spans: &[Value]) -> String {
    spans
        .iter()
        .map(|span| {
            format!(
                "{:<15} {:<22} {:<9} trace {} span {} parent {} links {}",
                span["service"].as_str().unwrap_or(""),
                span["name"].as_str().unwrap_or(""),
                span["kind"].as_str().unwrap_or(""),
                span["trace_id"].as_str().unwrap_or(""),
                span["span_id"].as_str().unwrap_or(""),
                span["parent_span_id"].as_str().unwrap_or(""),
                span["links"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_pika_instrumented_message_is_traced_through_a_consume_its_republished_copy_and_a_second_consume()
 {
    let broker = TestBroker::connect();
    let first = TestBroker::unique_name("traced-first");
    let second = TestBroker::unique_name("traced-second");
    broker.declare_queue(&first, FieldTable::default());
    broker.declare_queue(&second, FieldTable::default());
    let dir = scratch();
    let receiver = Receiver::start(dir.path());
    let hosts: Vec<Running> = [(&first, "host-a"), (&second, "host-b")]
        .into_iter()
        .map(|(queue, service)| {
            let own = dir.path().join(service);
            std::fs::create_dir_all(&own).unwrap();
            let conf = config_file(&own, &queue_config(queue, ""));
            let mut command = scripted_consume(&conf);
            let mut host = Running::start(traced(&mut command, &receiver.endpoint, service));
            host.wait_for("Consuming messages from queue", WAIT);
            host
        })
        .collect();
    let body = json!({
        "do": "publish",
        "publish": {"topic": format!("{second}.copy"), "body": {"do": "ack"}},
        "span": {"attributes": {"saver.file": "/srv/saved"}, "event": "saved", "event_attributes": {"bytes": 42}},
    });
    let published = Command::new(tracing_venv().join("bin/python"))
        .arg(script("pika_publisher.py"))
        .args([
            amqp_url(),
            "amq.topic",
            &format!("{first}.original"),
            &body.to_string(),
            "original",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint)
        .output()
        .unwrap();
    assert!(published.status.success(), "{published:?}");
    let trace_id = String::from_utf8(published.stdout)
        .unwrap()
        .trim()
        .to_owned();

    let process_first = format!("process {first}");
    let process_second = format!("process {second}");
    let spans = receiver.spans_when(|spans| {
        !named(spans, "host-b", &process_second).is_empty()
            && !named(spans, "host-a", "send amq.topic").is_empty()
            && spans.iter().any(|span| span["service"] == "pika-publisher")
    });
    println!(
        "the trace as the receiver recorded it:\n{}",
        outline(&spans)
    );

    // The process span's parent is the span pika's instrumentation wrote
    // into the message: one of its PRODUCER spans (it makes two, nested).
    let consumed = one(&spans, "host-a", &process_first);
    assert_eq!(consumed["kind"], "CONSUMER");
    assert_eq!(consumed["trace_id"], trace_id.as_str());
    let sent = spans
        .iter()
        .find(|span| {
            span["service"] == "pika-publisher" && span["span_id"] == consumed["parent_span_id"]
        })
        .unwrap_or_else(|| {
            panic!(
                "the process span's parent is no pika span:\n{}",
                outline(&spans)
            )
        });
    assert_eq!(sent["kind"], "PRODUCER");
    assert_eq!(sent["trace_id"], trace_id.as_str());
    assert_eq!(
        consumed["links"],
        json!([{"trace_id": trace_id, "span_id": sent["span_id"]}])
    );
    let attributes = &consumed["attributes"];
    assert_eq!(attributes["messaging.system"], "rabbitmq");
    assert_eq!(attributes["messaging.destination.name"], "amq.topic");
    assert_eq!(
        attributes["messaging.rabbitmq.destination.routing_key"],
        format!("{first}.original")
    );
    assert_eq!(attributes["messaging.message.id"], "original");
    assert!(attributes["messaging.rabbitmq.message.delivery_tag"].is_i64());
    assert_eq!(attributes["fedora_messaging.outcome"], "ack");
    // What the consumer added through fm_plugin_api::trace, then the
    // settlement.
    assert_eq!(attributes["saver.file"], "/srv/saved");
    assert_eq!(consumed["events"][0]["name"], "saved");
    assert_eq!(consumed["events"][0]["attributes"]["bytes"], 42);
    assert_eq!(consumed["events"][1]["name"], "settle");
    assert_eq!(
        consumed["events"][1]["attributes"]["messaging.operation.name"],
        "ack"
    );

    let copy_sent = one(&spans, "host-a", "send amq.topic");
    assert_eq!(copy_sent["kind"], "PRODUCER");
    assert_eq!(copy_sent["trace_id"], trace_id.as_str());
    assert_eq!(copy_sent["parent_span_id"], consumed["span_id"]);
    let copy_consumed = one(&spans, "host-b", &process_second);
    assert_eq!(copy_consumed["trace_id"], trace_id.as_str());
    assert_eq!(copy_consumed["parent_span_id"], copy_sent["span_id"]);
    assert_eq!(
        copy_consumed["attributes"]["messaging.rabbitmq.destination.routing_key"],
        format!("{second}.copy")
    );

    for host in hosts {
        host.signal("TERM");
        let run = host.finish();
        assert_eq!(run.code(), 0, "{run:#?}");
    }
    for queue in [&first, &second] {
        broker.delete_queue(queue);
    }
}

#[test]
fn a_python_callbacks_publish_through_the_bridge_continues_the_trace() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("traced-bridge");
    let copies = TestBroker::unique_name("traced-bridge-copies");
    broker.declare_queue(&queue, FieldTable::default());
    broker.declare_queue(&copies, FieldTable::default());
    broker.bind(&copies, "amq.topic", &format!("{copies}.#"));
    let dir = scratch();
    let receiver = Receiver::start(dir.path());
    let out = dir.path().join("written.jsonl");
    let conf = config_file(
        dir.path(),
        &bridge_config(
            &queue_config(&queue, ""),
            "bridge_callbacks:Scripted",
            &out,
            "traced",
        ),
    );
    let mut command = bridge_host_running(&conf, "consume");
    let mut host = Running::start(traced(&mut command, &receiver.endpoint, "bridged"));
    host.wait_for("Consuming messages from queue", WAIT);
    broker.publish(&json!({"id": "p1", "topic": format!("{queue}.t"),
                          "body": {"do": "publish", "to": format!("{copies}.copy")}}));
    let process = format!("process {queue}");
    let spans = receiver.spans_when(|spans| {
        !named(spans, "bridged", &process).is_empty()
            && !named(spans, "bridged", "send amq.topic").is_empty()
    });
    println!("{}", outline(&spans));
    let consumed = one(&spans, "bridged", &process);
    let sent = one(&spans, "bridged", "send amq.topic");
    assert_eq!(sent["trace_id"], consumed["trace_id"]);
    assert_eq!(sent["parent_span_id"], consumed["span_id"]);
    // The copy in the queue carries the send span's context.
    broker.wait_depth(&copies, 1);
    let copy = broker.take_all(&copies).remove(0);
    let traceparent = text_header(&copy.headers, "traceparent")
        .unwrap_or_else(|| panic!("no traceparent on the copy: {:?}", copy.headers));
    assert_eq!(
        traceparent,
        format!(
            "00-{}-{}-01",
            sent["trace_id"].as_str().unwrap(),
            sent["span_id"].as_str().unwrap()
        )
    );
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    for name in [&queue, &copies] {
        broker.delete_queue(name);
    }
}

#[test]
fn a_collector_that_is_down_costs_no_message_and_the_loss_is_counted() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("traced-down");
    broker.declare_queue(&queue, FieldTable::default());
    for n in 1..=20 {
        broker.publish(
            &json!({"id": format!("m{n}"), "topic": format!("{queue}.t"), "body": {"do": "ack"}}),
        );
    }
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &queue_config(&queue, "[monitoring]\naddress = \"127.0.0.1\"\nport = 0\n"),
    );
    // Nothing listens there.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let mut command = scripted_consume(&conf);
    let mut host = Running::start(traced(&mut command, &nowhere, "down"));
    let line = host.wait_for("Monitoring on http://", WAIT);
    let address = line.rsplit("http://").next().unwrap().trim().to_owned();
    host.wait_for("(m20): ack", WAIT);
    broker.wait_depth(&queue, 0);
    host.wait_for("Could not export", WAIT);
    let deadline = Instant::now() + WAIT;
    let lost = loop {
        let (_, metrics) = http_get(&address, "/metrics");
        let lost: f64 = metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix("fedora_messaging_spans_lost_total{reason=\"export_failed\"} ")
            })
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0);
        if lost >= 20.0 || Instant::now() > deadline {
            break lost;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(lost >= 20.0, "{lost} spans counted lost");
    let stopping = Instant::now();
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "{:?}",
        stopping.elapsed()
    );
    broker.delete_queue(&queue);
}

#[test]
fn a_tracing_setting_that_cannot_be_honoured_is_a_usage_error_naming_it() {
    // Refused before anything is declared: the queue is never made.
    let queue = TestBroker::unique_name("traced-never");
    let dir = scratch();
    let conf = config_file(dir.path(), &queue_config(&queue, ""));
    let refused = run(scripted_consume(&conf)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"));
    assert_eq!(refused.code(), 2, "{refused:#?}");
    assert!(
        refused
            .output()
            .contains("OTEL_EXPORTER_OTLP_PROTOCOL is \"grpc\""),
        "{refused:#?}"
    );
    let conf = config_file(
        dir.path(),
        &queue_config(&queue, "[tracing]\nsampler = \"sometimes\"\n"),
    );
    let refused = run(&mut scripted_consume(&conf));
    assert_eq!(refused.code(), 2, "{refused:#?}");
    assert!(
        refused
            .output()
            .contains("[tracing] sampler is \"sometimes\""),
        "{refused:#?}"
    );
}

#[test]
fn an_exec_command_gets_the_messages_trace_context_in_its_environment() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("traced-exec");
    broker.declare_queue(&queue, FieldTable::default());
    let dir = scratch();
    let receiver = Receiver::start(dir.path());
    let seen = dir.path().join("traceparent");
    let conf = config_file(
        dir.path(),
        &format!(
            "callback = \"libfm_exec.so:Exec\"\n{}\n[consumer_config]\ncommand = [\"/bin/sh\", \"-c\", \"cat > /dev/null; printf '%s' \\\"$TRACEPARENT\\\" > {}\"]\n",
            queue_config(&queue, ""),
            seen.display()
        ),
    );
    let mut command = fedora_messaging();
    command
        .env(
            "FEDORA_MESSAGING_PLUGIN_PATH",
            plugin("fm_exec").parent().unwrap(),
        )
        .arg("--conf")
        .arg(&conf)
        .arg("consume");
    let mut host = Running::start(traced(&mut command, &receiver.endpoint, "exec"));
    host.wait_for("Consuming messages from queue", WAIT);
    broker.publish(&json!({"id": "e1", "topic": format!("{queue}.t"), "body": {}}));
    let process = format!("process {queue}");
    let spans = receiver.spans_when(|spans| !named(spans, "exec", &process).is_empty());
    let consumed = one(&spans, "exec", &process);
    let traceparent = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(
        traceparent,
        format!(
            "00-{}-{}-01",
            consumed["trace_id"].as_str().unwrap(),
            consumed["span_id"].as_str().unwrap()
        )
    );
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    broker.delete_queue(&queue);
}

#[test]
fn the_publish_command_sends_each_message_in_a_send_span_whose_context_it_carries() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("traced-publish");
    broker.declare_queue(&queue, FieldTable::default());
    broker.bind(&queue, "amq.topic", &format!("{queue}.#"));
    let dir = scratch();
    let receiver = Receiver::start(dir.path());
    let conf = config_file(dir.path(), &format!("amqp_url = \"{}\"\n", amqp_url()));
    let file = record_file(
        dir.path(),
        &[json!({"id": "cli1", "topic": format!("{queue}.t"), "body": {}})],
    );
    let mut command = fedora_messaging();
    command.arg("--conf").arg(&conf).arg("publish").arg(&file);
    let published = run(traced(&mut command, &receiver.endpoint, "publisher"));
    assert_eq!(published.code(), 0, "{published:#?}");
    let spans =
        receiver.spans_when(|spans| !named(spans, "publisher", "send amq.topic").is_empty());
    let sent = one(&spans, "publisher", "send amq.topic");
    assert_eq!(sent["kind"], "PRODUCER");
    assert_eq!(sent["parent_span_id"], "");
    assert_eq!(sent["attributes"]["messaging.message.id"], "cli1");
    broker.wait_depth(&queue, 1);
    let message = broker.take_all(&queue).remove(0);
    assert_eq!(
        text_header(&message.headers, "traceparent"),
        Some(format!(
            "00-{}-{}-01",
            sent["trace_id"].as_str().unwrap(),
            sent["span_id"].as_str().unwrap()
        ))
    );
    broker.delete_queue(&queue);
}

/// A text header's value.
fn text_header(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        lapin::types::AMQPValue::LongString(text) => {
            Some(String::from_utf8_lossy(text.as_bytes()).into_owned())
        }
        _ => None,
    }
}
