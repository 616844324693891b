//! How many messages wait in each consumed queue, as the broker says: a
//! passive declare of each queue when consuming starts and every
//! [`ASK_EVERY`] after, on a channel of its own, for `/metrics` and
//! `/ready`. A consumer that stays connected while nothing reaches it (the
//! silent stall fedora-messaging's operators meet) shows there as messages
//! ready and nothing settled, which the alert rules in `contrib/prometheus`
//! fire on.
//!
//! The asking is a task of the global executor, not of the engine's
//! thread: it costs the consume loop nothing, and it goes on if that loop
//! stops turning. Each ask is bounded; one that fails or is not answered
//! leaves the last figure shown. The task lives as long as the
//! [`DepthWatch`] of one set-up, whose drop forgets the figures.

use std::sync::Arc;
use std::time::Duration;

use async_io::Timer;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::deadline::within;
use crate::monitor::Stats;

/// How often each queue's depth is asked.
pub const ASK_EVERY: Duration = Duration::from_secs(30);

/// How long one ask (opening the channel, or one passive declare) may
/// take before it is given up until the next round.
const ASK_BOUND: Duration = Duration::from_secs(5);

/// The running watch of one set-up's queues; dropping it stops the task.
pub struct DepthWatch {
    _task: async_global_executor::Task<()>,
    stats: Arc<Stats>,
}

impl Drop for DepthWatch {
    fn drop(&mut self) {
        self.stats.forget_queues_ready();
    }
}

/// Starts asking the depth of `queues` on `connection`, every `every`.
pub fn watch(
    connection: Arc<Connection>,
    queues: Vec<String>,
    stats: Arc<Stats>,
    every: Duration,
) -> DepthWatch {
    let task =
        async_global_executor::spawn(ask_round_by_round(connection, queues, stats.clone(), every));
    DepthWatch { _task: task, stats }
}

async fn ask_round_by_round(
    connection: Arc<Connection>,
    queues: Vec<String>,
    stats: Arc<Stats>,
    every: Duration,
) {
    let mut channel: Option<Channel> = None;
    while connection.status().connected() {
        for queue in &queues {
            // A passive declare of a queue that is gone closes the
            // channel: the next ask opens another.
            if !channel
                .as_ref()
                .is_some_and(|open| open.status().connected())
            {
                channel = within(ASK_BOUND, connection.create_channel())
                    .await
                    .and_then(Result::ok);
            }
            let Some(open) = &channel else { break };
            let options = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            match within(
                ASK_BOUND,
                open.queue_declare(queue.as_str().into(), options, FieldTable::default()),
            )
            .await
            {
                Some(Ok(declared)) => stats.set_queue_ready(queue, declared.message_count()),
                Some(Err(error)) => log::debug!("Cannot ask the depth of queue {queue:?}: {error}"),
                None => log::debug!("The broker did not say the depth of queue {queue:?} in time"),
            }
        }
        Timer::after(every).await;
    }
}
