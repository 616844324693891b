//! Bounded redelivery (`[delivery_limit]`) carried out: no message is
//! handed to the consumer more than `max` times, whatever ended its
//! earlier deliveries: a `Nack`, a failure, a lost connection, or a crash
//! of the host. [`super::limit`] judges each delivery; this sends what it
//! decides instead of the consumer.
//!
//! A classic queue's redelivery within the limit: before the consumer sees
//! it, the host publishes a copy carrying the count
//! ([`COUNT_HEADER`](super::limit::COUNT_HEADER)) to the end of the same
//! queue (confirmed), then acks the original; the consumer meets the copy
//! later. The copy goes through the default exchange with the message's
//! own routing key (its topic) and the queue in RabbitMQ's `BCC` header,
//! so it reaches that queue alone and keeps its topic. The queue's order
//! changes for that message only, and a crash between the confirm and the
//! ack leaves both (at-least-once, as ever).
//!
//! A message over the limit is not consumed again: it goes to the
//! configured dead-letter exchange with its properties and body, the count
//! and a reason ([`REASON_HEADER`](super::limit::REASON_HEADER)), or, with
//! none configured, is rejected without requeue (the queue's own
//! dead-letter exchange then keeps it).

use lapin::message::Delivery;

use super::deadline::UNSETTLED;
use super::limit::{Verdict, carried_back, dead_lettered, times};
use super::settler::{Forwarded, Ledger};
use super::{ChannelsEnd, taken};
use crate::config::DeliveryLimit;
use crate::exit::{Exit, Fatal};
use crate::monitor::Stats;
use crate::wire;

/// What became of a delivery the limit stopped before the consumer.
pub enum Carried {
    /// Copied where it goes and acked, or rejected.
    Settled,
    /// The count could not be carried (its queue took no copy), so the
    /// consumer gets the delivery as it is rather than see it loop.
    Consume(Box<Delivery>),
    /// The channel the copies go out on failed (said why): the delivery
    /// went back to its queue, and the copies need a new channel.
    PublisherFailed(String),
}

/// A delivery the limit stops before the consumer: a classic queue's
/// redelivery goes back to the end of its queue carrying its count; one
/// over the limit goes to the dead-letter exchange, or is rejected.
pub(super) async fn carry_out(
    ledger: &Ledger,
    source: usize,
    delivery: Delivery,
    verdict: Verdict,
    limit: &DeliveryLimit,
    stats: &Stats,
) -> Result<Carried, ChannelsEnd> {
    let id = wire::message_id(&delivery.properties).to_owned();
    let topic = delivery.routing_key.as_str().to_owned();
    let queue = ledger.names()[source].clone();
    let headers = delivery.properties.headers().clone();
    let (forwarded, over) = match verdict {
        Verdict::Consume => return Ok(Carried::Consume(Box::new(delivery))),
        Verdict::CarryCount(number) => {
            log::info!(
                "Message {id} came back (delivery {number} of at most {}); requeued at the end of queue {queue:?} with its count",
                limit.max
            );
            let headers = carried_back(headers.as_ref(), number, &queue);
            (ledger.forward(delivery, "", &topic, headers).await, false)
        }
        Verdict::OverLimit(number) => {
            let delivered = number - 1;
            let Some(exchange) = limit
                .dead_letter_exchange
                .as_deref()
                .filter(|name| !name.is_empty())
            else {
                log::warn!(
                    "Message {id} (topic {topic}) was delivered {}, [delivery_limit] max, and no dead_letter_exchange is set: rejected without requeue",
                    times(delivered)
                );
                taken(ledger.reject(delivery).await)?;
                stats.over_limit();
                return Ok(Carried::Settled);
            };
            log::warn!(
                "Message {id} (topic {topic}) was delivered {}, [delivery_limit] max: sent to dead-letter exchange {exchange:?} instead of the consumer",
                times(delivered)
            );
            let routing_key = limit.dead_letter_routing_key.as_deref().unwrap_or(&topic);
            let headers = dead_lettered(headers.as_ref(), number, limit.max);
            (
                ledger
                    .forward(delivery, exchange, routing_key, headers)
                    .await,
                true,
            )
        }
    };
    match forwarded {
        Forwarded::Done => {
            if over {
                stats.over_limit();
            }
            Ok(Carried::Settled)
        }
        Forwarded::Unroutable(delivery) if over => {
            log::error!(
                "The dead-letter exchange routed message {id} nowhere: bind a queue to it; rejected without requeue"
            );
            taken(ledger.reject(*delivery).await)?;
            stats.over_limit();
            Ok(Carried::Settled)
        }
        Forwarded::Unroutable(delivery) => {
            log::warn!(
                "Queue {queue:?} took no copy of message {id}, so its delivery count cannot be carried; handing it to the consumer as it is"
            );
            Ok(Carried::Consume(delivery))
        }
        Forwarded::Failed(reason, delivery) => {
            taken(ledger.requeue(*delivery).await)?;
            Ok(Carried::PublisherFailed(reason))
        }
        Forwarded::Forbidden(reason) => Err(ChannelsEnd::Fatal(Fatal::new(
            Exit::Permission,
            format!(
                "{reason} ([delivery_limit] sends messages there: grant the user write permission on it, or remove [delivery_limit])"
            ),
        ))),
        Forwarded::Hung => Err(ChannelsEnd::ConnectionLost(UNSETTLED.to_owned())),
    }
}
