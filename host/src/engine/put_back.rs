//! What the delivery limit does with the deliveries no consumer started
//! when their channels end, so that they are never counted as attempts.
//!
//! A graceful stop (a signal, a halt, a failure's path, a queue gone)
//! first cancels the consumers, so lapin holds the last deliveries the
//! broker sent. Each is put back: a sealed copy carrying the count it has
//! (unchanged: no attempt was made) goes to the end of its queue,
//! confirmed, and the original is acked. Handed back instead, it would
//! come again marked `redelivered`, indistinguishable from a crash's.
//!
//! A delivery the engine holds ([`super::held`]) is not in lapin's
//! buffer: a stop carries a waiting redelivery's count on at once, and
//! leaves a dead letter to come again.
//!
//! A channel or a connection that is lost cannot take a copy: what lapin
//! still held of it, and what the engine held, is remembered by
//! fingerprint ([`Remembered`](super::limit::Remembered)), so that this
//! process does not count it when the broker delivers it again. Another
//! host, or this one after a crash, counts it: docs/operating.md says so.

use lapin::message::Delivery;

use super::ChannelsEnd;
use super::deadline::UNSETTLED;
use super::held::{Held, Hold};
use super::lane::{Doubts, Judged, Lane, Unstarted, judge};
use super::limit::{Fields, Policy, Verdict, carried_back};
use super::message::{Ticket, Why};
use super::redelivery::{self, Carried};
use super::settler::{Forwarded, Ledger};
use crate::monitor::Stats;
use crate::wire;

/// Cancels the consumers and puts back what lapin holds of every queue's
/// stream: each delivery the consumer did not start goes to the end of
/// its queue with its count, and one the limit stops is carried on or
/// dead-lettered as on any other delivery. What cannot be put back stays
/// unsettled, and the broker delivers it again.
pub(super) async fn put_back(
    ledger: &Ledger,
    lane: &Lane,
    held: Vec<Held>,
    policy: &Policy,
    stats: &Stats,
) -> Result<(), ChannelsEnd> {
    // Cancelled again (a broker ignores a second cancel): a failure the
    // engine learnt of outside a consumer's answer did not cancel them,
    // and each ack below would let the broker send one more.
    ledger.cancel_all().await;
    // A redelivery waiting out its retry delay goes on with its count
    // now; a dead letter not taken comes again, still over the limit.
    for held in held {
        let Held {
            hold: Hold::RetryWait,
            delivery,
            ticket,
            why: Why::Limited { verdict, .. },
            ..
        } = held
        else {
            continue;
        };
        if !ledger.owns(&ticket) {
            continue;
        }
        let carried =
            redelivery::carry_out(ledger, ticket.source(), delivery, verdict, policy, stats)
                .await?;
        if matches!(carried, Carried::Settled) {
            ledger.settled_elsewhere(&ticket);
        }
    }
    let mut put_back = 0;
    for Unstarted {
        delivery, ticket, ..
    } in lane.unstarted(None)
    {
        let Some(ticket) = ticket else { continue };
        if wire::check_delivery(&delivery.properties, &delivery.data).is_err() {
            // Refused when it comes again, as it would be now.
            continue;
        }
        match put_back_one(ledger, &ticket, delivery, policy, stats).await? {
            Outcome::PutBack => put_back += 1,
            Outcome::Settled => {}
            Outcome::Left => continue,
            Outcome::Stop => break,
        }
        ledger.settled_elsewhere(&ticket);
    }
    if put_back > 0 {
        log::info!(
            "Stopping: put {put_back} message(s) no consumer had started back at the end of their queue, their delivery counts unchanged"
        );
    }
    Ok(())
}

/// What became of one delivery put back.
enum Outcome {
    /// Its copy is in its queue, and it is acked.
    PutBack,
    /// The limit carried it on or dead-lettered it.
    Settled,
    /// Unsettled: the broker delivers it again.
    Left,
    /// Unsettled, and the copies cannot go out: leave the rest too.
    Stop,
}

async fn put_back_one(
    ledger: &Ledger,
    ticket: &Ticket,
    mut delivery: Delivery,
    policy: &Policy,
    stats: &Stats,
) -> Result<Outcome, ChannelsEnd> {
    let source = ticket.source();
    let queue = ledger.names()[source].clone();
    let Judged {
        verdict,
        made,
        topic,
    } = judge(policy, &queue, &delivery, Doubts::Quiet);
    if let Some(topic) = topic {
        delivery.routing_key = topic.into();
    }
    if verdict != Verdict::Consume {
        return Ok(
            match redelivery::carry_out(ledger, source, delivery, verdict, policy, stats).await? {
                Carried::Settled => Outcome::Settled,
                Carried::Consume(_) | Carried::Kept(..) | Carried::CameBack(_) => Outcome::Left,
                Carried::PublisherFailed(_) => Outcome::Stop,
            },
        );
    }
    let id = wire::message_id(&delivery.properties).to_owned();
    let topic = delivery.routing_key.as_str().to_owned();
    let copy = carried_back(&policy.seal, &Fields::of(&queue, &delivery), &topic, made);
    Ok(match ledger.forward(delivery, "", &queue, copy).await {
        Forwarded::Done | Forwarded::Doubled => Outcome::PutBack,
        Forwarded::Unroutable(_) | Forwarded::Refused(_) => {
            log::warn!(
                "Queue {queue:?} took no copy of message {id} while stopping; the broker delivers it again, counted as an attempt"
            );
            Outcome::Left
        }
        Forwarded::Failed(reason, _) | Forwarded::Forbidden(reason) => {
            log::warn!(
                "{reason}; the messages no consumer started go back to their queues, counted as attempts when they come again"
            );
            Outcome::Stop
        }
        Forwarded::Blocked(_) => {
            log::warn!(
                "The broker blocks publishing, so the messages no consumer started go back to their queues as they are, counted as attempts when they come again"
            );
            Outcome::Stop
        }
        Forwarded::Hung => return Err(ChannelsEnd::ConnectionLost(UNSETTLED.to_owned())),
    })
}

/// Remembers what lapin still holds of `source`'s lost stream (of every
/// queue's with `None`): the broker delivers it again, and this process
/// does not count that as an attempt.
pub(super) fn remember_unstarted(lane: &Lane, policy: &Policy, source: Option<usize>) {
    let mut forgotten = 0;
    for Unstarted {
        queue, delivery, ..
    } in lane.unstarted(source)
    {
        let Judged { made, .. } = judge(policy, &queue, &delivery, Doubts::Quiet);
        if !policy.remember(&queue, &delivery, made) {
            forgotten += 1;
        }
    }
    if forgotten > 0 {
        log::warn!(
            "{forgotten} message(s) no consumer started went back to the broker with their channel and cannot all be remembered: each counts as an attempt when it comes again"
        );
    }
}

/// What is still held when the channels end goes back to the broker with
/// them, its count remembered.
pub(super) fn remember_held(ledger: &Ledger, policy: &Policy, held: Vec<Held>) {
    for held in held {
        if let Why::Limited { verdict, .. } = held.why {
            let queue = &ledger.names()[held.ticket.source()];
            policy.remember(queue, &held.delivery, verdict.made());
        }
    }
}
