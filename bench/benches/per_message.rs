//! The host's own cost per message, without a broker: check a delivery as
//! fedora-messaging would (decode), lend it to a plugin consumer across
//! the abi_stable boundary, and turn the answer into a settlement. The
//! message has fedora-messaging's standard headers and a 1 KiB JSON body;
//! the consumer is the no-op plugin, built first.
//!
//! ```text
//! cargo bench -p fm-bench --bench per_message
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use fm_host::in_progress::InProgress;
use fm_host::outcome::Outcome;
use fm_host::plugin;
use fm_host::traces::settings::{Root, Sampling};
use fm_host::traces::{self, Delivered, Tracing, export::Discard};
use fm_host::wire;

fn noop_plugin() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf();
    // `cargo bench` measures release code; `cargo test --benches` (CI)
    // only checks that the bench runs, with the debug build.
    let (profile, dir) = if cfg!(debug_assertions) {
        ("dev", "debug")
    } else {
        ("release", "release")
    };
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(&root)
        .args(["build", "--profile", profile, "-p", "bench-noop"])
        .status()
        .expect("run cargo");
    assert!(status.success(), "building bench-noop failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join(dir).join("libbench_noop.so")
}

fn per_message(c: &mut Criterion) {
    let plugin = noop_plugin();
    let mut consumer = plugin::load_consumer(
        &format!("{}:Noop", plugin.display()),
        &serde_json::json!({}),
    )
    .expect("load the no-op consumer");
    let outgoing = fm_bench::sample_message()
        .and_then(|message| message.outgoing(""))
        .expect("the sample message");
    assert!(
        (1024..1200).contains(&outgoing.body.len()),
        "a 1 KiB body, not {}",
        outgoing.body.len()
    );
    let view = |checked| {
        wire::view_of(
            &outgoing.properties,
            &outgoing.body,
            &outgoing.routing_key,
            "fm-bench",
            checked,
        )
    };
    c.bench_function("decode + plugin call + outcome", |b| {
        b.iter(|| {
            let checked = wire::check_delivery(&outgoing.properties, &outgoing.body)
                .expect("a valid message");
            let view = view(checked);
            let outcome = consumer
                .consume(&view)
                .expect("nothing is taken ahead here");
            std::hint::black_box(outcome.disposition())
        })
    });
    // What the boundary itself costs: the same call without the decode.
    let checked = wire::check_delivery(&outgoing.properties, &outgoing.body).expect("valid");
    c.bench_function("plugin call only", |b| {
        b.iter(|| {
            let view = view(checked);
            std::hint::black_box(consumer.consume(&view))
        })
    });
    // The account of what is in progress, which each consumer thread
    // keeps around the call (issue #28).
    let in_progress = InProgress::default();
    let id = wire::message_id(&outgoing.properties);
    c.bench_function("in-progress account: began + ended", |b| {
        b.iter(|| {
            in_progress.began(
                0,
                id,
                "org.fedoraproject.prod.bodhi.update.comment",
                Instant::now(),
            );
            in_progress.ended(0);
        })
    });
    traced(c, &outgoing);
}

/// What a message's `process` span costs the consumer thread (issue
/// #28): with traces off (the global is empty: one branch), and on, with
/// the span recorded or not sampled, for a message without trace context
/// and for one whose publisher traced it. Spans go to a processor that
/// drops them: the export queue's push (one lock) is not counted.
fn traced(c: &mut Criterion, outgoing: &wire::Outgoing) {
    // A publisher's context, sampled (`01`) or not (`00`): a parent-based
    // sampler follows it.
    let with_parent = |flags: &str| {
        let mut headers = outgoing.properties.headers().clone().unwrap_or_default();
        headers.insert(
            "traceparent".into(),
            lapin::types::AMQPValue::LongString(
                format!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-{flags}").into(),
            ),
        );
        headers
    };
    let parents = [with_parent("01"), with_parent("00")];
    let delivered = |headers| Delivered {
        queue: "fm-bench",
        exchange: "amq.topic",
        routing_key: &outgoing.routing_key,
        message_id: wire::message_id(&outgoing.properties),
        delivery_tag: 1,
        headers,
    };
    let plain = delivered(outgoing.properties.headers().as_ref());
    c.bench_function("process span: traces off", |b| {
        b.iter(|| {
            if let Some(span) = traces::process(std::hint::black_box(&plain)) {
                span.end(&Outcome::Ack);
            }
        })
    });
    for ((name, sampling), parent) in [
        ("sampled", Sampling::ParentBased(Root::AlwaysOn)),
        ("not sampled", Sampling::ParentBased(Root::AlwaysOff)),
    ]
    .into_iter()
    .zip(&parents)
    {
        let (tracing, _provider) = Tracing::new(sampling, "fm-bench", Discard);
        for (context, delivered) in [
            ("", delivered(outgoing.properties.headers().as_ref())),
            (", publisher traced", delivered(Some(parent))),
        ] {
            c.bench_function(&format!("process span: on, {name}{context}"), |b| {
                b.iter(|| {
                    let span = tracing.process(&delivered);
                    drop(span.enter());
                    span.end(&Outcome::Ack);
                })
            });
        }
    }
}

/// The body's JSON, checked (as the host does for every message) and
/// built (as `Message::body()` does when a consumer asks), against
/// serde_json doing the same: skipping (`IgnoredAny`, after checking the
/// UTF-8) and building a `Value`. serde_json is what both did before issue #10; it refuses
/// bodies Python accepts (NaN, deep nesting) and rounds big integers.
fn body_json(c: &mut Criterion) {
    let outgoing = fm_bench::sample_message()
        .and_then(|message| message.outgoing(""))
        .expect("the sample message");
    let body = outgoing.body.as_slice();
    c.bench_function("body check: fm_plugin_api::json", |b| {
        b.iter(|| fm_plugin_api::json::check_object(std::hint::black_box(body)))
    });
    // The check before: UTF-8 first (serde_json does not check the text
    // of what it skips), then serde_json skipping.
    c.bench_function("body check: from_utf8 + serde_json IgnoredAny", |b| {
        b.iter(|| {
            std::str::from_utf8(std::hint::black_box(body))
                .map(serde_json::from_str::<serde::de::IgnoredAny>)
        })
    });
    c.bench_function("body build: fm_plugin_api::json", |b| {
        b.iter(|| fm_plugin_api::json::parse_object(std::hint::black_box(body)))
    });
    c.bench_function("body build: serde_json Value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(std::hint::black_box(body)))
    });
}

criterion_group!(benches, per_message, body_json);
criterion_main!(benches);
