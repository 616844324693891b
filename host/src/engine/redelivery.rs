//! Bounded redelivery (`[delivery_limit]`) carried out: no message is
//! handed to the consumer more than `max` times, whatever ended its
//! earlier attempts: a `Nack`, a failure, a lost connection, or a crash of
//! the host. [`super::limit`] judges each delivery; this sends what it
//! decides instead of the consumer.
//!
//! A redelivery that is an attempt, within the limit: before the consumer
//! sees it, the host publishes a copy carrying the sealed count
//! ([`COUNT_HEADER`](super::limit::COUNT_HEADER)) to the end of the same
//! queue (confirmed), then acks the original; the consumer meets the copy
//! later. The copy goes through the default exchange by the queue's name,
//! so it reaches that queue alone, whatever its topic or its publisher's
//! `CC` and `BCC` (dropped); the topic travels in
//! [`TOPIC_HEADER`](super::limit::TOPIC_HEADER) and is restored when the
//! copy is read. The queue's order changes for that message only, and a
//! crash between the confirm and the ack leaves both (at-least-once, as
//! ever).
//!
//! A message over the limit is not consumed again: it goes to the
//! configured dead-letter exchange with its properties and body, the count
//! and a reason ([`REASON_HEADER`](super::limit::REASON_HEADER)), or, with
//! none configured, is rejected without requeue (the queue's own
//! dead-letter exchange then keeps it). One the dead-letter exchange
//! routes nowhere stays in its queue ([`super::held`]).

use lapin::message::Delivery;

use super::deadline::UNSETTLED;
use super::limit::{Fields, Policy, Verdict, carried_back, dead_lettered, times};
use super::settler::{Forwarded, Ledger};
use super::{ChannelsEnd, taken};
use crate::exit::{Exit, Fatal};
use crate::monitor::Stats;
use crate::wire;

/// What became of a delivery the limit stopped before the consumer.
pub enum Carried {
    /// Copied where it goes and acked, or rejected.
    Settled,
    /// Over the limit, and the dead-letter exchange did not take it: it
    /// stays unsettled in its queue, to be sent again later.
    Kept(Box<Delivery>, Untaken),
    /// A dead letter back in the queue it left: it stays unsettled there,
    /// never consumed and not sent round again.
    CameBack(Box<Delivery>),
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
    limit: &Policy,
    stats: &Stats,
) -> Result<Carried, ChannelsEnd> {
    let id = wire::message_id(&delivery.properties).to_owned();
    let topic = delivery.routing_key.as_str().to_owned();
    let queue = ledger.names()[source].clone();
    let (forwarded, over) = match verdict {
        Verdict::Consume => return Ok(Carried::Consume(Box::new(delivery))),
        Verdict::CameBack => {
            log::error!(
                "Message {id} came back to queue {queue:?}, which it left as a dead letter: dead-letter exchange {:?} routes it back; it stays in the queue, unacked and not consumed, until this host stops; route the dead-letter exchange to another queue",
                limit.dead_letter_exchange.as_deref().unwrap_or_default()
            );
            return Ok(Carried::CameBack(Box::new(delivery)));
        }
        Verdict::CarryCount(attempts) => {
            log::info!(
                "Message {id} came back after {} of at most {}; requeued at the end of queue {queue:?} with its count",
                attempts_text(attempts),
                limit.max
            );
            let headers = carried_back(
                &limit.seal,
                &Fields::of(&queue, &delivery),
                &topic,
                attempts,
            );
            (ledger.forward(delivery, "", &queue, headers).await, false)
        }
        Verdict::OverLimit(attempts) => {
            let Some(exchange) = limit
                .dead_letter_exchange
                .as_deref()
                .filter(|name| !name.is_empty())
            else {
                log::warn!(
                    "Message {id} (topic {topic}) was delivered {}, [delivery_limit] max, and no dead_letter_exchange is set: rejected without requeue",
                    times(attempts)
                );
                let rejected = ledger.reject(delivery).await;
                taken(rejected.is_some())?;
                if rejected == Some(true) {
                    stats.over_limit();
                }
                return Ok(Carried::Settled);
            };
            log::warn!(
                "Message {id} (topic {topic}) was delivered {}, [delivery_limit] max: sent to dead-letter exchange {exchange:?} instead of the consumer",
                times(attempts)
            );
            let routing_key = limit.dead_letter_routing_key.as_deref().unwrap_or(&topic);
            let headers = dead_lettered(
                &limit.seal,
                &Fields::of(&queue, &delivery),
                attempts,
                limit.max,
            );
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
        Forwarded::Doubled => {
            log::warn!(
                "Message {id} was copied, but its channel closed before the original was acked: the broker delivers the original again too"
            );
            Ok(Carried::Settled)
        }
        Forwarded::Unroutable(delivery) if over => {
            Ok(Carried::Kept(delivery, Untaken::RoutedNowhere))
        }
        Forwarded::Refused(delivery) if over => Ok(Carried::Kept(delivery, Untaken::Refused)),
        Forwarded::Blocked(delivery) if over => Ok(Carried::Kept(delivery, Untaken::Blocked)),
        Forwarded::Unroutable(delivery) => {
            log::warn!(
                "Queue {queue:?} took no copy of message {id}, so its delivery count cannot be carried; handing it to the consumer as it is"
            );
            Ok(Carried::Consume(delivery))
        }
        Forwarded::Refused(delivery) => Ok(consume_remembering(
            limit,
            &queue,
            *delivery,
            verdict,
            &format!(
                "Queue {queue:?} refused the copy of message {id} that carries its count (full, with x-overflow = reject-publish?)"
            ),
        )),
        Forwarded::Blocked(delivery) => Ok(consume_remembering(
            limit,
            &queue,
            *delivery,
            verdict,
            &format!(
                "The broker blocks publishing, so the copy of message {id} that carries its count cannot go out"
            ),
        )),
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

/// The copy that carries a delivery's count did not go out (`why`): the
/// delivery goes to the consumer as it is, its attempt counted ahead in
/// this process for when the message comes again.
fn consume_remembering(
    limit: &Policy,
    queue: &str,
    delivery: Delivery,
    verdict: Verdict,
    why: &str,
) -> Carried {
    let Verdict::CarryCount(made) = verdict else {
        return Carried::Consume(Box::new(delivery));
    };
    limit.remember(queue, &delivery, made.saturating_add(1));
    log::warn!(
        "{why}: handing it to the consumer as it is; this host alone remembers its {}",
        attempts_text(made)
    );
    Carried::Consume(Box::new(delivery))
}

/// Why a dead-letter exchange did not take a dead letter.
#[derive(Debug, Clone, Copy)]
pub enum Untaken {
    /// No queue is bound to it for the routing key.
    RoutedNowhere,
    /// The queue it routes to refused it (full, `reject-publish`).
    Refused,
    /// The broker blocks publishing (a memory or disk alarm).
    Blocked,
}

impl Untaken {
    /// What happened, and what the operator can do about it.
    pub fn why_and_fix(self) -> (&'static str, &'static str) {
        match self {
            Untaken::RoutedNowhere => ("routed nowhere", "bind a queue to the exchange"),
            Untaken::Refused => ("refused by its queue", "make room in the dead-letter queue"),
            Untaken::Blocked => (
                "not sent: the broker blocks publishing",
                "free memory or disk space on the broker",
            ),
        }
    }
}

/// "1 attempt", "2 attempts".
fn attempts_text(attempts: u32) -> String {
    if attempts == 1 {
        "1 attempt".to_owned()
    } else {
        format!("{attempts} attempts")
    }
}
