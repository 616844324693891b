//! The delivery limit's judgement of one delivery (`[delivery_limit]`):
//! consume it, carry its count back to its queue, or stop it as over the
//! limit; and the headers of the copies that carry the count or the dead
//! letter. Pure: [`super::redelivery`] carries these decisions out.
//!
//! What is counted is attempts: deliveries a consumer started. The count
//! lives with the message, so that it survives a crash and is shared by
//! every host consuming the queue: the host writes it in [`COUNT_HEADER`]
//! on a copy at the end of the queue, sealed ([`super::seal`]) so that no
//! publisher can write one. A delivery the broker marks `redelivered` was
//! delivered before and not settled; unless this process knows it gave it
//! back unstarted, that earlier delivery is taken for an attempt (a crash,
//! or a host whose connection broke). Nothing else a publisher can write
//! is believed: the broker's own counts only on a quorum queue's
//! redeliveries, where the broker writes them.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::seal::{Counted, Seal};

/// How many attempts were made on the message (deliveries a consumer
/// started).
pub const COUNT_HEADER: &str = "x-fm-delivery-count";
/// The seal on [`COUNT_HEADER`] and [`TOPIC_HEADER`].
pub const SEAL_HEADER: &str = "x-fm-delivery-seal";
/// A copy's topic: the copy is routed to its queue by the queue's name.
pub const TOPIC_HEADER: &str = "x-fm-topic";
/// Why a message was dead-lettered by the host.
pub const REASON_HEADER: &str = "x-fm-dead-letter-reason";
/// The queue a dead letter left, sealed by [`LEFT_SEAL_HEADER`]: a dead
/// letter that comes back there is recognised.
pub const LEFT_HEADER: &str = "x-fm-dead-lettered-from";
/// The seal on [`LEFT_HEADER`].
pub const LEFT_SEAL_HEADER: &str = "x-fm-dead-letter-seal";
/// What a dead letter's mark is sealed as, in place of a topic: no count
/// the host seals has it (a count's attempts stay below the limit).
const LEFT_MARK: &str = "\0dead-lettered";
/// A quorum queue's count of earlier deliveries that came back.
const BROKER_COUNT_HEADER: &str = "x-delivery-count";
/// RabbitMQ 4.3's count of earlier deliveries to a consumer, whatever
/// ended them (its `x-delivery-count` no longer counts a requeueing nack).
const ACQUIRED_COUNT_HEADER: &str = "x-acquired-count";

/// Headers never copied from the message: those the broker routes by
/// (RabbitMQ's sender-selected distribution would send the copy to every
/// queue a publisher names), the broker's counts (stale on a copy), and
/// the host's own (written afresh).
const NOT_COPIED: [&str; 7] = [
    "CC",
    "BCC",
    BROKER_COUNT_HEADER,
    ACQUIRED_COUNT_HEADER,
    COUNT_HEADER,
    SEAL_HEADER,
    TOPIC_HEADER,
];

/// `[delivery_limit]` as the engine applies it.
#[derive(Debug)]
pub struct Policy {
    pub max: u32,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    /// Seals and opens the host's counts.
    pub seal: Seal,
    /// The consumed queues that are quorum queues.
    pub quorum_queues: Vec<String>,
    /// The counts this process keeps for deliveries that will come again.
    pub remembered: Remembered,
    /// Seconds a message waits after its first attempt before its next;
    /// doubled after each further attempt, up to `max_retry_delay`.
    pub retry_delay: f64,
    pub max_retry_delay: f64,
}

impl Policy {
    /// How long a message that came back after `attempts` attempts waits
    /// before its next.
    pub fn retry_wait(&self, attempts: u32) -> Duration {
        let exponent = i32::try_from(attempts.saturating_sub(1).min(30)).unwrap_or(30);
        let doubled = self.retry_delay * 2f64.powi(exponent);
        Duration::from_secs_f64(doubled.min(self.max_retry_delay).max(0.0))
    }

    /// Remembers that `made` attempts were counted for `delivery` of
    /// `queue`, which goes back to the broker without a sealed copy: when
    /// it comes again, this process counts from there ([`Remembered`]).
    /// `false` when the memory is full.
    pub fn remember(&self, queue: &str, delivery: &Delivery, made: u32) -> bool {
        self.remembered
            .remember(fingerprint(&Fields::of(queue, delivery)), made)
    }

    pub fn is_quorum(&self, queue: &str) -> bool {
        self.quorum_queues.iter().any(|name| name == queue)
    }
}

/// What to do with a delivery, given the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the consumer.
    Consume,
    /// `attempts` were made, fewer than the limit, and the message does
    /// not carry that count yet: a copy carrying it goes to the end of the
    /// queue, and this delivery is acked.
    CarryCount(u32),
    /// `attempts` were made, the limit: never consumed again.
    OverLimit(u32),
    /// A dead letter this queue's hosts sent, back in the queue it left:
    /// the dead-letter exchange routes there. Never consumed again, and
    /// not sent round again.
    CameBack,
}

impl Verdict {
    /// The attempts made on the message, given the `attempts` its count
    /// carries.
    pub fn made_from(self, attempts: u32) -> u32 {
        match self {
            Verdict::Consume | Verdict::CameBack => attempts,
            Verdict::CarryCount(made) | Verdict::OverLimit(made) => made,
        }
    }

    /// The attempts made on a message the limit stopped (0 for one it
    /// lets through: see [`Verdict::made_from`]).
    pub fn made(self) -> u32 {
        self.made_from(0)
    }
}

/// How a delivery was seen: what the broker says of it, and what this
/// process knows.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub redelivered: bool,
    pub headers: Option<&'a FieldTable>,
    /// The queue is a quorum queue, whose redeliveries carry the broker's
    /// counts.
    pub quorum: bool,
    /// The attempts this process counted for this very message when it
    /// last let it go ([`Remembered`]): all that were made, this
    /// delivery's predecessor included.
    pub remembered: Option<u32>,
}

/// Judges one delivery against `max`, given the `attempts` its sealed
/// count carries (0 without one).
pub fn judge(max: u32, seen: &Seen<'_>, attempts: u32) -> Verdict {
    let made = match seen.remembered {
        Some(counted) => counted.max(attempts),
        None if !seen.redelivered => attempts,
        None => attempts.saturating_add(broker_returns(seen).max(1)),
    };
    if made >= max {
        Verdict::OverLimit(made)
    } else if made != attempts {
        Verdict::CarryCount(made)
    } else {
        Verdict::Consume
    }
}

/// How often a quorum queue says this copy was handed out before; 0 where
/// the broker does not write it (a classic queue, a first delivery).
fn broker_returns(seen: &Seen<'_>) -> u32 {
    if !seen.quorum || !seen.redelivered {
        return 0;
    }
    let header = |name| {
        seen.headers
            .and_then(|headers| headers.inner().get(name))
            .and_then(as_count)
    };
    header(ACQUIRED_COUNT_HEADER)
        .or_else(|| header(BROKER_COUNT_HEADER))
        .unwrap_or(0)
}

/// How many fingerprints [`Remembered`] holds at most: more than any
/// prefetch a process loses at once, small enough to never matter.
const REMEMBERED_MAX: usize = 65_536;

/// The counts this process keeps, by [`fingerprint`], for messages that
/// come again marked `redelivered` without a sealed copy carrying their
/// count: those lapin still held, unstarted, when their channel or
/// connection was lost (not an attempt: the count stays), and those whose
/// queue refused the copy (the consumer's attempt is counted ahead).
/// What a crash or another host meets is not here.
#[derive(Debug, Default)]
pub struct Remembered {
    counts: Mutex<HashMap<u64, u32>>,
}

impl Remembered {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u32>> {
        // Every step under it is an insert or a removal.
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers a delivery given back with `attempts` counted; `false`
    /// when the memory is full (it then counts as an attempt when it
    /// comes again).
    pub fn remember(&self, fingerprint: u64, attempts: u32) -> bool {
        let mut counts = self.counts();
        if counts.len() >= REMEMBERED_MAX && !counts.contains_key(&fingerprint) {
            return false;
        }
        counts.insert(fingerprint, attempts);
        true
    }

    /// The attempts counted when the delivery with `fingerprint` was given
    /// back, forgotten now that it came again.
    pub fn take(&self, fingerprint: u64) -> Option<u32> {
        self.counts().remove(&fingerprint)
    }
}

/// What tells one message from another in [`Remembered`]: its queue, id
/// and body (not its headers: a copy's count changes them).
pub fn fingerprint(fields: &Fields<'_>) -> u64 {
    let mut hasher = DefaultHasher::new();
    fields.queue.hash(&mut hasher);
    fields.message_id.hash(&mut hasher);
    fields.body.hash(&mut hasher);
    hasher.finish()
}

/// The count a delivery carries, read against its seal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No count: a message no host has copied.
    Nothing,
    /// A count sealed by a host holding the secret, for this queue, with
    /// the message's topic.
    Sealed { attempts: u32, topic: String },
}

/// The delivery's fields the seal is about.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub queue: &'a str,
    pub message_id: &'a [u8],
    pub body: &'a [u8],
    pub headers: Option<&'a FieldTable>,
}

impl<'a> Fields<'a> {
    /// The fields of `delivery`, from `queue`.
    pub fn of(queue: &'a str, delivery: &'a Delivery) -> Fields<'a> {
        Fields {
            queue,
            message_id: crate::wire::message_id(&delivery.properties).as_bytes(),
            body: &delivery.data,
            headers: delivery.properties.headers().as_ref(),
        }
    }

    /// Header `name`, if it is there.
    fn header(&self, name: &str) -> Option<&'a AMQPValue> {
        self.headers.and_then(|headers| headers.inner().get(name))
    }

    /// Header `name` as text, if it is text.
    fn header_text(&self, name: &str) -> Option<&'a str> {
        match self.header(name)? {
            AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok(),
            AMQPValue::ShortString(text) => Some(text.as_str()),
            _ => None,
        }
    }
}

/// The sealed count `fields` carry, and, when they carry counts that are
/// not believed, what to log about them (only on a first delivery: a
/// redelivery was reported when it came first).
pub fn read_count(seal: &Seal, fields: &Fields<'_>, seen: &Seen<'_>) -> (Found, Option<String>) {
    let sealed = match (
        fields.header(COUNT_HEADER).and_then(as_count),
        fields.header_text(TOPIC_HEADER),
        fields.header_text(SEAL_HEADER),
    ) {
        (Some(attempts), Some(topic), Some(signed)) => {
            let counted = Counted {
                queue: fields.queue,
                message_id: fields.message_id,
                topic,
                body: fields.body,
                attempts,
            };
            seal.opens(&counted, signed).then(|| Found::Sealed {
                attempts,
                topic: topic.to_owned(),
            })
        }
        _ => None,
    };
    let sealed = sealed.unwrap_or(Found::Nothing);
    if seen.redelivered {
        // Said when it came first.
        return (sealed, None);
    }
    let mut doubts = Vec::new();
    if sealed == Found::Nothing
        && [COUNT_HEADER, SEAL_HEADER]
            .iter()
            .any(|name| fields.header(name).is_some())
    {
        doubts.push(format!(
            "a {COUNT_HEADER} without a valid seal (written by a publisher, or by a host with another secret)"
        ));
    }
    // A first delivery: no broker count is the broker's.
    for name in [BROKER_COUNT_HEADER, ACQUIRED_COUNT_HEADER] {
        if fields.header(name).is_some() {
            let whose = if seen.quorum {
                "on a first delivery"
            } else {
                "on a classic queue"
            };
            doubts.push(format!(
                "a {name} {whose}, where the broker does not write it"
            ));
        }
    }
    let doubt = (!doubts.is_empty()).then(|| format!("carries {}: ignored", doubts.join(" and ")));
    (sealed, doubt)
}

/// The headers of the copy that carries `attempts` back to its queue,
/// sealed: the message's own, less [`NOT_COPIED`], with the count, the
/// topic (the copy is routed by the queue's name) and the seal.
pub fn carried_back(seal: &Seal, fields: &Fields<'_>, topic: &str, attempts: u32) -> FieldTable {
    let mut headers = copied(fields.headers);
    let counted = Counted {
        queue: fields.queue,
        message_id: fields.message_id,
        topic,
        body: fields.body,
        attempts,
    };
    headers.insert(
        ShortString::from(COUNT_HEADER),
        AMQPValue::LongLongInt(i64::from(attempts)),
    );
    headers.insert(
        ShortString::from(TOPIC_HEADER),
        AMQPValue::LongString(LongString::from(topic)),
    );
    headers.insert(
        ShortString::from(SEAL_HEADER),
        AMQPValue::LongString(LongString::from(seal.sign(&counted))),
    );
    headers
}

/// `headers` less [`NOT_COPIED`].
fn copied(headers: Option<&FieldTable>) -> FieldTable {
    let mut copy = FieldTable::default();
    for (name, value) in headers.map(FieldTable::inner).into_iter().flatten() {
        if !NOT_COPIED.contains(&name.as_str()) {
            copy.insert(name.clone(), value.clone());
        }
    }
    copy
}

/// The headers of a message dead-lettered from `fields.queue`: its own
/// less [`NOT_COPIED`], how many attempts were made (unsealed: it is for
/// people, and a limit on the dead-letter queue starts afresh), why, and
/// the queue it left, sealed ([`came_back`]).
pub fn dead_lettered(seal: &Seal, fields: &Fields<'_>, attempts: u32, max: u32) -> FieldTable {
    let mut headers = copied(fields.headers);
    headers.insert(
        ShortString::from(LEFT_HEADER),
        AMQPValue::LongString(LongString::from(fields.queue)),
    );
    headers.insert(
        ShortString::from(LEFT_SEAL_HEADER),
        AMQPValue::LongString(LongString::from(seal.sign(&left_mark(fields)))),
    );
    headers.insert(
        ShortString::from(COUNT_HEADER),
        AMQPValue::LongLongInt(i64::from(attempts)),
    );
    headers.insert(
        ShortString::from(REASON_HEADER),
        AMQPValue::LongString(LongString::from(format!(
            "delivered {} without being acknowledged; [delivery_limit] max is {max}",
            times(attempts)
        ))),
    );
    headers
}

/// What a dead letter's mark seals: the queue it left, the message.
fn left_mark<'a>(fields: &Fields<'a>) -> Counted<'a> {
    Counted {
        queue: fields.queue,
        message_id: fields.message_id,
        topic: LEFT_MARK,
        body: fields.body,
        attempts: u32::MAX,
    }
}

/// Whether `fields` are a dead letter sent from this very queue by a host
/// holding the secret: its dead-letter exchange routed it back.
pub fn came_back(seal: &Seal, fields: &Fields<'_>) -> bool {
    fields.header_text(LEFT_HEADER) == Some(fields.queue)
        && fields
            .header_text(LEFT_SEAL_HEADER)
            .is_some_and(|signed| seal.opens(&left_mark(fields), signed))
}

/// "once", "3 times".
pub fn times(count: u32) -> String {
    if count == 1 {
        "once".to_owned()
    } else {
        format!("{count} times")
    }
}

fn as_count(value: &AMQPValue) -> Option<u32> {
    let number: i64 = match value {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    };
    Some(u32::try_from(number.max(0)).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = 3;

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (name, value) in entries {
            table.insert(ShortString::from(*name), value.clone());
        }
        table
    }

    fn seen(redelivered: bool, headers: Option<&FieldTable>, quorum: bool) -> Seen<'_> {
        Seen {
            redelivered,
            headers,
            quorum,
            remembered: None,
        }
    }

    fn seal() -> Seal {
        Seal::new(b"the hosts' secret")
    }

    fn fields(headers: Option<&FieldTable>) -> Fields<'_> {
        Fields {
            queue: "q",
            message_id: b"m1",
            body: b"{}",
            headers,
        }
    }

    /// The count a delivery with `headers` carries, as the lane reads it.
    fn attempts(headers: &FieldTable, redelivered: bool) -> u32 {
        let seen = seen(redelivered, Some(headers), false);
        match read_count(&seal(), &fields(Some(headers)), &seen).0 {
            Found::Sealed { attempts, .. } => attempts,
            Found::Nothing => 0,
        }
    }

    #[test]
    fn the_wait_before_a_retry_doubles_up_to_its_most() {
        let policy = Policy {
            max: 10,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            seal: seal(),
            quorum_queues: Vec::new(),
            remembered: Remembered::default(),
            retry_delay: 0.5,
            max_retry_delay: 3.0,
        };
        let waits: Vec<f64> = (1..=6)
            .map(|n| policy.retry_wait(n).as_secs_f64())
            .collect();
        assert_eq!(waits, [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]);
        assert_eq!(policy.retry_wait(u32::MAX), Duration::from_secs(3));
        let none = Policy {
            retry_delay: 0.0,
            ..policy
        };
        assert_eq!(none.retry_wait(4), Duration::ZERO);
    }

    #[test]
    fn first_deliveries_are_consumed() {
        assert_eq!(judge(MAX, &seen(false, None, false), 0), Verdict::Consume);
        assert_eq!(judge(1, &seen(false, None, true), 0), Verdict::Consume);
    }

    #[test]
    fn a_redelivery_is_an_attempt_carried_to_a_sealed_copy_until_the_limit() {
        assert_eq!(
            judge(MAX, &seen(true, None, false), 0),
            Verdict::CarryCount(1)
        );
        let first = carried_back(&seal(), &fields(None), "t", 1);
        assert_eq!(attempts(&first, false), 1);
        assert_eq!(
            judge(MAX, &seen(false, Some(&first), false), 1),
            Verdict::Consume
        );
        assert_eq!(
            judge(MAX, &seen(true, Some(&first), false), 1),
            Verdict::CarryCount(2)
        );
        let second = carried_back(&seal(), &fields(Some(&first)), "t", 2);
        assert_eq!(attempts(&second, true), 2);
        assert_eq!(
            judge(MAX, &seen(true, Some(&second), false), 2),
            Verdict::OverLimit(3)
        );
        // A limit of one: no second attempt at all.
        assert_eq!(judge(1, &seen(true, None, false), 0), Verdict::OverLimit(1));
        // A copy whose count reaches a limit lowered since.
        assert_eq!(
            judge(2, &seen(false, Some(&second), false), 2),
            Verdict::OverLimit(2)
        );
    }

    #[test]
    fn a_delivery_remembered_unstarted_is_not_an_attempt() {
        let returned = |counted| Seen {
            remembered: Some(counted),
            ..seen(true, None, true)
        };
        assert_eq!(judge(MAX, &returned(2), 2), Verdict::Consume);
        assert_eq!(judge(MAX, &returned(3), 3), Verdict::OverLimit(3));
        // Given back after a crash's redelivery was counted, before the
        // copy carrying that count went out: the count is kept.
        assert_eq!(judge(MAX, &returned(1), 0), Verdict::CarryCount(1));
    }

    #[test]
    fn remembered_deliveries_are_remembered_once_by_fingerprint() {
        let remembered = Remembered::default();
        let one = fingerprint(&fields(None));
        let other = fingerprint(&Fields {
            body: b"[]",
            ..fields(None)
        });
        assert_ne!(one, other);
        assert!(remembered.remember(one, 2));
        assert_eq!(remembered.take(other), None);
        assert_eq!(remembered.take(one), Some(2));
        assert_eq!(remembered.take(one), None, "forgotten once it came again");
    }

    #[test]
    fn the_broker_counts_only_on_a_quorum_queues_redelivery() {
        let returned = |name: &str, n: i64| table(&[(name, AMQPValue::LongLongInt(n))]);
        let two = returned("x-delivery-count", 2);
        assert_eq!(
            judge(MAX, &seen(true, Some(&two), true), 0),
            Verdict::CarryCount(2)
        );
        assert_eq!(
            judge(MAX, &seen(true, Some(&two), true), 1),
            Verdict::OverLimit(3)
        );
        // Written by a publisher: a classic queue, a first delivery.
        let forged = returned("x-delivery-count", 99);
        assert_eq!(
            judge(MAX, &seen(true, Some(&forged), false), 0),
            Verdict::CarryCount(1)
        );
        assert_eq!(
            judge(MAX, &seen(false, Some(&forged), true), 0),
            Verdict::Consume
        );
        let zero = returned("x-delivery-count", 0);
        assert_eq!(
            judge(MAX, &seen(true, Some(&zero), false), 2),
            Verdict::OverLimit(3)
        );
        let odd = returned("x-delivery-count", -4);
        assert_eq!(
            judge(MAX, &seen(true, Some(&odd), true), 0),
            Verdict::CarryCount(1)
        );
    }

    #[test]
    fn rabbitmq_4_3s_acquired_count_is_the_brokers_count_where_it_is_written() {
        // 4.3: a requeueing nack leaves x-delivery-count at 0, and
        // x-acquired-count says how often the message was handed out.
        let headers = table(&[
            ("x-delivery-count", AMQPValue::LongLongInt(0)),
            ("x-acquired-count", AMQPValue::LongLongInt(2)),
        ]);
        assert_eq!(
            judge(MAX, &seen(true, Some(&headers), true), 0),
            Verdict::CarryCount(2)
        );
        assert_eq!(
            judge(MAX, &seen(true, Some(&headers), true), 1),
            Verdict::OverLimit(3)
        );
        assert_eq!(
            judge(MAX, &seen(false, Some(&headers), true), 0),
            Verdict::Consume
        );
    }

    #[test]
    fn counts_without_a_valid_seal_are_not_believed_and_said_once() {
        let forged = [
            table(&[("x-fm-delivery-count", AMQPValue::LongLongInt(99))]),
            table(&[("x-fm-delivery-count", AMQPValue::LongLongInt(i64::MAX))]),
            table(&[("x-delivery-count", AMQPValue::LongLongInt(99))]),
            table(&[("x-acquired-count", AMQPValue::LongLongInt(99))]),
        ];
        for headers in &forged {
            let first = seen(false, Some(headers), false);
            let (found, doubt) = read_count(&seal(), &fields(Some(headers)), &first);
            assert_eq!(found, Found::Nothing, "{headers:?}");
            assert!(
                doubt.is_some_and(|doubt| doubt.ends_with(": ignored")),
                "{headers:?}"
            );
            let again = seen(true, Some(headers), false);
            let (_, doubt) = read_count(&seal(), &fields(Some(headers)), &again);
            assert_eq!(doubt, None, "said once: {headers:?}");
        }
        // Well formed, sealed with another secret, or moved to another
        // queue, message or topic.
        let sealed = carried_back(&Seal::new(b"another secret!!"), &fields(None), "t", 2);
        assert_eq!(attempts(&sealed, false), 0);
        let sealed = carried_back(&seal(), &fields(None), "t", 2);
        let elsewhere = Fields {
            queue: "dead",
            ..fields(Some(&sealed))
        };
        let first = seen(false, Some(&sealed), false);
        assert_eq!(read_count(&seal(), &elsewhere, &first).0, Found::Nothing);
        let other = Fields {
            message_id: b"m2",
            ..fields(Some(&sealed))
        };
        assert_eq!(read_count(&seal(), &other, &first).0, Found::Nothing);
        let mut retitled = sealed.clone();
        retitled.insert(
            ShortString::from(TOPIC_HEADER),
            AMQPValue::LongString(LongString::from("another.topic")),
        );
        assert_eq!(attempts(&retitled, false), 0);
        // A quorum queue's redelivery: the broker wrote it.
        let broker = table(&[("x-delivery-count", AMQPValue::LongLongInt(1))]);
        let redelivered = seen(true, Some(&broker), true);
        assert_eq!(
            read_count(&seal(), &fields(Some(&broker)), &redelivered).1,
            None
        );
    }

    #[test]
    fn copies_carry_no_routing_headers_nor_stale_counts() {
        let original = table(&[
            ("fedora_messaging_severity", AMQPValue::LongInt(20)),
            (
                "CC",
                AMQPValue::FieldArray(vec![AMQPValue::LongString("other".into())].into()),
            ),
            (
                "BCC",
                AMQPValue::FieldArray(vec![AMQPValue::LongString("other".into())].into()),
            ),
            ("x-delivery-count", AMQPValue::LongLongInt(5)),
            ("x-acquired-count", AMQPValue::LongLongInt(5)),
        ]);
        let copy = carried_back(&seal(), &fields(Some(&original)), "org.topic", 1);
        let inner = copy.inner();
        for gone in ["CC", "BCC", "x-delivery-count", "x-acquired-count"] {
            assert!(!inner.contains_key(gone), "{gone} in {copy:?}");
        }
        assert_eq!(
            inner.get("fedora_messaging_severity"),
            Some(&AMQPValue::LongInt(20))
        );
        let (found, _) = read_count(
            &seal(),
            &fields(Some(&copy)),
            &seen(false, Some(&copy), false),
        );
        assert_eq!(
            found,
            Found::Sealed {
                attempts: 1,
                topic: "org.topic".to_owned()
            }
        );
        let dead = dead_lettered(&seal(), &fields(Some(&copy)), 3, 3);
        for gone in ["CC", "BCC", "x-delivery-count", SEAL_HEADER, TOPIC_HEADER] {
            assert!(!dead.inner().contains_key(gone), "{gone} in {dead:?}");
        }
    }

    #[test]
    fn dead_lettered_headers_say_how_often_and_why_and_keep_the_rest() {
        let original = table(&[("fedora_messaging_severity", AMQPValue::LongInt(20))]);
        let headers = dead_lettered(&seal(), &fields(Some(&original)), 3, 3);
        assert!(came_back(&seal(), &fields(Some(&headers))));
        // In another queue, or marked by a publisher: not a cycle.
        let elsewhere = Fields {
            queue: "other",
            ..fields(Some(&headers))
        };
        assert!(!came_back(&seal(), &elsewhere));
        let mut forged = headers.clone();
        forged.insert(
            ShortString::from(LEFT_SEAL_HEADER),
            AMQPValue::LongString(LongString::from(format!("v1:{}", "0".repeat(64)))),
        );
        assert!(!came_back(&seal(), &fields(Some(&forged))));
        // A count's seal is no mark.
        let counted = carried_back(&seal(), &fields(None), "t", 1);
        assert!(!came_back(&seal(), &fields(Some(&counted))));
        let inner = headers.inner();
        assert_eq!(
            inner.get("fedora_messaging_severity"),
            Some(&AMQPValue::LongInt(20))
        );
        assert_eq!(inner.get(COUNT_HEADER), Some(&AMQPValue::LongLongInt(3)));
        let Some(AMQPValue::LongString(reason)) = inner.get(REASON_HEADER) else {
            panic!("no reason in {headers:?}");
        };
        assert_eq!(
            reason.to_string(),
            "delivered 3 times without being acknowledged; [delivery_limit] max is 3"
        );
    }
}
