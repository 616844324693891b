//! The delivery limit's judgement of one delivery (`[delivery_limit]`):
//! consume it, carry its count back to its queue, or stop it as over the
//! limit; and the headers of the copies that carry the count or the dead
//! letter. Pure: [`super::redelivery`] carries these decisions out.
//!
//! The count lives with the message, so that it survives a crash and is
//! shared by every host consuming the queue: a quorum queue's
//! `x-delivery-count` says how many earlier deliveries came back; a
//! classic queue only says "redelivered", so the host carries the count
//! itself in [`COUNT_HEADER`] on a copy at the end of the queue.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// How many times the message has been delivered, counting the first.
pub const COUNT_HEADER: &str = "x-fm-delivery-count";
/// Why a message was dead-lettered by the host.
pub const REASON_HEADER: &str = "x-fm-dead-letter-reason";
/// What a quorum queue says: how many earlier deliveries came back.
const BROKER_COUNT_HEADER: &str = "x-delivery-count";

/// What to do with a delivery, given the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the consumer.
    Consume,
    /// A classic queue's redelivery within the limit: this is delivery
    /// `number`; a copy carrying it goes to the end of the queue and this
    /// one is acked.
    CarryCount(u32),
    /// This would be delivery `number`, over the limit: never consumed
    /// again.
    OverLimit(u32),
}

/// Judges one delivery against `max`.
pub fn judge(max: u32, redelivered: bool, headers: Option<&FieldTable>) -> Verdict {
    let header = |name: &str| {
        headers
            .and_then(|headers| headers.inner().get(name))
            .and_then(as_count)
    };
    if let Some(returned) = header(BROKER_COUNT_HEADER) {
        let number = returned.saturating_add(1);
        return if number > max {
            Verdict::OverLimit(number)
        } else {
            Verdict::Consume
        };
    }
    let carried = header(COUNT_HEADER).unwrap_or(1).max(1);
    let number = if redelivered {
        carried.saturating_add(1)
    } else {
        carried
    };
    if number > max {
        Verdict::OverLimit(number)
    } else if redelivered {
        Verdict::CarryCount(number)
    } else {
        Verdict::Consume
    }
}

/// The headers of the copy that carries the count back to `queue`
/// (RabbitMQ's sender-selected distribution: the broker routes by `BCC`
/// too, and strips it).
pub fn carried_back(headers: Option<&FieldTable>, number: u32, queue: &str) -> FieldTable {
    let mut headers = with_count(headers, number);
    headers.insert(
        ShortString::from("BCC"),
        AMQPValue::FieldArray(vec![AMQPValue::LongString(LongString::from(queue))].into()),
    );
    headers
}

/// `headers` with the count.
fn with_count(headers: Option<&FieldTable>, number: u32) -> FieldTable {
    let mut headers = headers.cloned().unwrap_or_default();
    headers.insert(
        ShortString::from(COUNT_HEADER),
        AMQPValue::LongLongInt(i64::from(number)),
    );
    headers
}

/// The headers of a dead-lettered message: how often it was delivered
/// (`number - 1`: the delivery over the limit never reached the consumer)
/// and why.
pub fn dead_lettered(headers: Option<&FieldTable>, number: u32, max: u32) -> FieldTable {
    let delivered = number.saturating_sub(1);
    let mut headers = with_count(headers, delivered);
    headers.insert(
        ShortString::from(REASON_HEADER),
        AMQPValue::LongString(LongString::from(format!(
            "delivered {} without being acknowledged; [delivery_limit] max is {max}",
            times(delivered)
        ))),
    );
    headers
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

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (name, value) in entries {
            table.insert(ShortString::from(*name), value.clone());
        }
        table
    }

    #[test]
    fn first_deliveries_are_consumed() {
        assert_eq!(judge(3, false, None), Verdict::Consume);
        assert_eq!(judge(1, false, None), Verdict::Consume);
    }

    #[test]
    fn classic_redeliveries_carry_their_count_until_the_limit() {
        assert_eq!(judge(3, true, None), Verdict::CarryCount(2));
        let second = carried_back(None, 2, "q");
        assert!(second.inner().contains_key("BCC"));
        assert_eq!(judge(3, false, Some(&second)), Verdict::Consume);
        assert_eq!(judge(3, true, Some(&second)), Verdict::CarryCount(3));
        let third = carried_back(Some(&second), 3, "q");
        assert_eq!(judge(3, true, Some(&third)), Verdict::OverLimit(4));
        // A limit of one: no second delivery at all.
        assert_eq!(judge(1, true, None), Verdict::OverLimit(2));
        // A copy whose count is over a limit lowered since.
        assert_eq!(judge(2, false, Some(&third)), Verdict::OverLimit(3));
    }

    #[test]
    fn a_quorum_queue_counts_for_us() {
        let returned = |n: i64| table(&[("x-delivery-count", AMQPValue::LongLongInt(n))]);
        assert_eq!(judge(3, true, Some(&returned(1))), Verdict::Consume);
        assert_eq!(judge(3, true, Some(&returned(2))), Verdict::Consume);
        assert_eq!(judge(3, true, Some(&returned(3))), Verdict::OverLimit(4));
        let odd = table(&[("x-delivery-count", AMQPValue::LongInt(-4))]);
        assert_eq!(judge(3, true, Some(&odd)), Verdict::Consume);
    }

    #[test]
    fn dead_lettered_headers_say_how_often_and_why_and_keep_the_rest() {
        let original = table(&[("fedora_messaging_severity", AMQPValue::LongInt(20))]);
        let headers = dead_lettered(Some(&original), 4, 3);
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
