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
//!   (no at-least-once; the broker's delivery ceiling);
//! - `thread`: as `multiple`, but each message goes to a thread of its own
//!   and back before it is acked, as a host does whose one task reads the
//!   deliveries and hands them to consumer threads: what that hand-off
//!   costs, at its leanest (lapin's I/O thread drives the socket either
//!   way, so a consumer thread may read the stream itself instead).
//!
//! It prints how long it took from the first delivery to the last
//! settlement, the line the harness reads.
//!
//! ```text
//! bare-lapin AMQP_URL QUEUE PREFETCH COUNT each|multiple|auto|thread
//! ```

use std::time::Instant;

use futures_lite::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Acks {
    Each,
    Multiple,
    Auto,
    Thread,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, queue, prefetch, count, acks] = args.as_slice() else {
        eprintln!("usage: bare-lapin AMQP_URL QUEUE PREFETCH COUNT each|multiple|auto|thread");
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
        "thread" => Acks::Thread,
        other => {
            eprintln!("ACKS is each, multiple, auto or thread, not {other:?}");
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
    if acks == Acks::Thread {
        return through_a_thread(connection, channel, deliveries, count, ack_every).await;
    }
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
            Acks::Auto | Acks::Thread => {}
        }
    }
    finish(&channel, unacked, first_delivery).await?;
    connection.close(200, "done".into()).await
}

/// `thread`: each delivery goes to a consumer thread, which hands back its
/// tag; the answers are acked with `multiple` once per `ack_every` (they
/// come back in order: one thread).
async fn through_a_thread(
    connection: Connection,
    channel: lapin::Channel,
    mut deliveries: lapin::Consumer,
    count: u64,
    ack_every: u64,
) -> lapin::Result<()> {
    let (jobs, jobs_out) = async_channel::unbounded::<lapin::message::Delivery>();
    let (answers_in, answers) = async_channel::unbounded::<u64>();
    let consumer = std::thread::spawn(move || {
        while let Ok(delivery) = jobs_out.recv_blocking() {
            let tag = delivery.delivery_tag;
            drop(delivery);
            if answers_in.send_blocking(tag).is_err() {
                break;
            }
        }
    });
    // Built and matched at once, never stored: boxing would cost an
    // allocation a message.
    #[allow(clippy::large_enum_variant)]
    enum Event {
        Delivery(Option<lapin::Result<lapin::message::Delivery>>),
        Answer(u64),
    }
    let mut first_delivery = None;
    let (mut answered, mut unacked) = (0, None);
    while answered < count {
        let event = async { Event::Delivery(deliveries.next().await) }
            .or(async {
                match answers.recv().await {
                    Ok(tag) => Event::Answer(tag),
                    Err(_) => futures_lite::future::pending().await,
                }
            })
            .await;
        match event {
            Event::Delivery(None) => break,
            Event::Delivery(Some(delivery)) => {
                first_delivery.get_or_insert_with(Instant::now);
                let _ = jobs.send(delivery?).await;
            }
            Event::Answer(tag) => {
                answered += 1;
                unacked = Some(tag);
                if answered % ack_every == 0 {
                    channel
                        .basic_ack(tag, BasicAckOptions { multiple: true })
                        .await?;
                    unacked = None;
                }
            }
        }
    }
    finish(&channel, unacked, first_delivery).await?;
    drop(jobs);
    let _ = consumer.join();
    connection.close(200, "done".into()).await
}

/// Acks what is left with `multiple`, then prints the line the harness
/// reads.
async fn finish(
    channel: &lapin::Channel,
    unacked: Option<u64>,
    first_delivery: Option<Instant>,
) -> lapin::Result<()> {
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
    Ok(())
}
