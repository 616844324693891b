//! The benchmark's baselines: the least a lapin consumer can do with the
//! same settings as the host. It consumes `QUEUE` with prefetch
//! `PREFETCH`, does nothing with each message, settles as `ACKS` says,
//! and exits after `COUNT` messages:
//!
//! - `each`: acks every message on its own, awaiting each ack (the naive
//!   consumer);
//! - `multiple`: acks with `multiple` once per PREFETCH/2 deliveries, and
//!   once more for the rest at the end: still at-least-once, since it
//!   acks only what it has handled (the hand-tuned consumer);
//! - `auto`: lets the broker consider each message acked as it sends it
//!   (no at-least-once; the broker's delivery ceiling).
//!
//! It prints how long it took from the first delivery to the last
//! settlement, the line the harness reads.
//!
//! ```text
//! bare-lapin AMQP_URL QUEUE PREFETCH COUNT each|multiple|auto
//! ```

use std::time::Instant;

use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Acks {
    Each,
    Multiple,
    Auto,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, queue, prefetch, count, acks] = args.as_slice() else {
        eprintln!("usage: bare-lapin AMQP_URL QUEUE PREFETCH COUNT each|multiple|auto");
        std::process::exit(2);
    };
    let (Ok(prefetch), Ok(count)) = (prefetch.parse::<u16>(), count.parse::<u64>()) else {
        eprintln!("PREFETCH and COUNT are numbers");
        std::process::exit(2);
    };
    let acks = match acks.as_str() {
        "each" => Acks::Each,
        "multiple" => Acks::Multiple,
        "auto" => Acks::Auto,
        other => {
            eprintln!("ACKS is each, multiple or auto, not {other:?}");
            std::process::exit(2);
        }
    };
    if let Err(error) = async_global_executor::block_on(consume(url, queue, prefetch, count, acks))
    {
        eprintln!("bare-lapin: {error}");
        std::process::exit(1);
    }
}

async fn consume(
    url: &str,
    queue: &str,
    prefetch: u16,
    count: u64,
    acks: Acks,
) -> lapin::Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "bare-lapin".into(),
            BasicConsumeOptions {
                no_ack: acks == Acks::Auto,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let ack_every = u64::from(prefetch / 2).max(1);
    let mut first_delivery = None;
    let mut unacked = None;
    let mut seen = 0;
    while seen < count {
        let Some(delivery) = deliveries.next().await else {
            break;
        };
        let delivery = delivery?;
        first_delivery.get_or_insert_with(Instant::now);
        seen += 1;
        match acks {
            Acks::Each => {
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            Acks::Multiple => {
                unacked = Some(delivery.delivery_tag);
                if seen % ack_every == 0 {
                    channel
                        .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                        .await?;
                    unacked = None;
                }
            }
            Acks::Auto => {}
        }
    }
    if let Some(last) = unacked {
        channel
            .basic_ack(last, BasicAckOptions { multiple: true })
            .await?;
    }
    if let Some(first_delivery) = first_delivery {
        println!(
            "first delivery to last settle: {:.6} s",
            first_delivery.elapsed().as_secs_f64()
        );
    }
    connection.close(200, "done".into()).await
}
