//! What RabbitMQ 4 does to the queues as configured, said at start: a
//! quorum queue drops a message after 20 deliveries unless something else
//! ends its loop first, and transient non-exclusive queues are deprecated.
//! Decided here, without I/O; `consume` logs the warnings.
//!
//! The host cannot ask the broker its version (lapin keeps
//! `connection.start`'s server properties to itself), so the warnings are
//! given on every broker, worded for the version they concern: they hold
//! for the upgrade a 3.x user will make.

use crate::topology::{QueueSpec, Topology};

/// RabbitMQ 4.0's delivery limit for a quorum queue that sets none: the
/// 21st nack (or reject, or return on a closed channel) removes it.
pub const BROKER_DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// One warning line per queue the broker would treat badly. `limit_max` is
/// `[delivery_limit] max`, when configured.
pub fn warnings(topology: &Topology, limit_max: Option<u32>) -> Vec<String> {
    let mut lines = Vec::new();
    if topology.passive {
        // The host declares nothing: the queues are what someone made them.
        return lines;
    }
    for queue in &topology.queues {
        if let Some(line) = default_delivery_limit(queue, limit_max) {
            lines.push(line);
        }
        if let Some(line) = transient_non_exclusive(queue) {
            lines.push(line);
        }
    }
    lines
}

fn default_delivery_limit(queue: &QueueSpec, limit_max: Option<u32>) -> Option<String> {
    let arguments = &queue.settings.arguments;
    let ends_its_own_loops = arguments.contains_key("x-delivery-limit")
        || arguments.contains_key("x-dead-letter-exchange")
        || limit_max.is_some_and(|max| max <= BROKER_DEFAULT_DELIVERY_LIMIT);
    if !queue.is_quorum() || ends_its_own_loops {
        return None;
    }
    Some(format!(
        "Queue {:?} is a quorum queue with neither x-delivery-limit nor x-dead-letter-exchange: \
         RabbitMQ 4 drops a message for good after {BROKER_DEFAULT_DELIVERY_LIMIT} deliveries, without a word \
         (unless a policy sets delivery-limit or dead-letter-exchange); set [delivery_limit] max \
         to {BROKER_DEFAULT_DELIVERY_LIMIT} or less so that the host dead-letters it first, or give the queue \
         a dead-letter exchange, or x-delivery-limit = -1 for no limit",
        queue.name
    ))
}

fn transient_non_exclusive(queue: &QueueSpec) -> Option<String> {
    let settings = &queue.settings;
    // A quorum queue is always durable (its rules refuse the others).
    if settings.durable || settings.exclusive || queue.is_quorum() {
        return None;
    }
    Some(format!(
        "[queues.{:?}] has durable = false and exclusive = false: RabbitMQ 4 deprecates transient \
         non-exclusive queues (transient_nonexcl_queues), and a broker that forbids them closes the \
         connection (541) when the host declares it; make the queue durable, or exclusive",
        queue.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn queue(name: &str, durable: bool, exclusive: bool, arguments: &str) -> QueueSpec {
        QueueSpec {
            name: name.to_owned(),
            settings: config::Queue {
                durable,
                auto_delete: false,
                exclusive,
                arguments: toml::from_str(arguments).expect("arguments"),
            },
            bindings: Vec::new(),
        }
    }

    fn topology(queues: Vec<QueueSpec>) -> Topology {
        Topology {
            queues,
            passive: false,
        }
    }

    const QUORUM: &str = "x-queue-type = 'quorum'";

    #[test]
    fn a_quorum_queue_with_nothing_to_end_its_loops_is_warned_of() {
        let lines = warnings(&topology(vec![queue("q", true, false, QUORUM)]), None);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("\"q\" is a quorum queue"), "{lines:?}");
        assert!(lines[0].contains("after 20 deliveries"), "{lines:?}");
    }

    #[test]
    fn a_limit_a_dead_letter_exchange_or_a_low_enough_max_silences_it() {
        let limited = queue(
            "a",
            true,
            false,
            "x-queue-type = 'quorum'\nx-delivery-limit = -1",
        );
        let dead_lettered = queue(
            "b",
            true,
            false,
            "x-queue-type = 'quorum'\nx-dead-letter-exchange = 'dlx'",
        );
        assert!(warnings(&topology(vec![limited, dead_lettered]), None).is_empty());
        let plain = || topology(vec![queue("q", true, false, QUORUM)]);
        assert!(warnings(&plain(), Some(20)).is_empty());
        assert_eq!(warnings(&plain(), Some(21)).len(), 1);
    }

    #[test]
    fn a_classic_queue_has_no_broker_limit() {
        assert!(warnings(&topology(vec![queue("q", true, false, "")]), None).is_empty());
    }

    #[test]
    fn a_transient_non_exclusive_queue_is_warned_of_by_its_key() {
        let lines = warnings(&topology(vec![queue("t", false, false, "")]), None);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("[queues.\"t\"] has durable = false"),
            "{lines:?}"
        );
        assert!(lines[0].contains("transient_nonexcl_queues"), "{lines:?}");
        let exclusive = queue("e", false, true, "");
        let durable = queue("d", true, false, "");
        assert!(warnings(&topology(vec![exclusive, durable]), None).is_empty());
    }

    #[test]
    fn passive_declares_declare_nothing_to_warn_of() {
        let mut passive = topology(vec![
            queue("t", false, false, ""),
            queue("q", true, false, QUORUM),
        ]);
        passive.passive = true;
        assert!(warnings(&passive, None).is_empty());
    }
}
