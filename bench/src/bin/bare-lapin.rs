//! The benchmark's baseline: the least a lapin consumer can do with the
//! same settings as the host. It consumes `QUEUE` with prefetch
//! `PREFETCH`, acknowledges each message after doing nothing with it, and
//! exits after `COUNT` messages.
//!
//! ```text
//! bare-lapin AMQP_URL QUEUE PREFETCH COUNT
//! ```

use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, queue, prefetch, count] = args.as_slice() else {
        eprintln!("usage: bare-lapin AMQP_URL QUEUE PREFETCH COUNT");
        std::process::exit(2);
    };
    let (Ok(prefetch), Ok(count)) = (prefetch.parse::<u16>(), count.parse::<u64>()) else {
        eprintln!("PREFETCH and COUNT are numbers");
        std::process::exit(2);
    };
    if let Err(error) = async_global_executor::block_on(consume(url, queue, prefetch, count)) {
        eprintln!("bare-lapin: {error}");
        std::process::exit(1);
    }
}

async fn consume(url: &str, queue: &str, prefetch: u16, count: u64) -> lapin::Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "bare-lapin".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut seen = 0;
    while seen < count {
        let Some(delivery) = deliveries.next().await else {
            break;
        };
        delivery?.acker.ack(BasicAckOptions::default()).await?;
        seen += 1;
    }
    connection.close(200, "done".into()).await
}
