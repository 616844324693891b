//! What a RabbitMQ cluster asks of the configuration: `amqp_urls`, the
//! nodes to connect to in turn (this host's own key), and the rules
//! RabbitMQ enforces on a replicated (quorum) queue, checked at load so
//! that a breach names the key to change instead of surfacing as the
//! broker's refusal at declare time.

use super::Config;

impl Config {
    /// The broker URLs to connect to, in the order they are tried:
    /// `amqp_urls`, or `amqp_url` alone.
    pub fn broker_urls(&self) -> Vec<&str> {
        match &self.amqp_urls {
            Some(urls) => urls.iter().map(String::as_str).collect(),
            None => vec![self.amqp_url.as_str()],
        }
    }

    /// `amqp_urls` replaces `amqp_url`: both at once would leave it unclear
    /// which node is meant.
    pub(super) fn check_nodes(&self, sets_amqp_url: bool) -> Result<(), String> {
        match &self.amqp_urls {
            None => Ok(()),
            Some(_) if sets_amqp_url => Err(
                "amqp_urls and amqp_url are both set: list every node in amqp_urls and remove amqp_url"
                    .to_owned(),
            ),
            Some(urls) if urls.is_empty() => {
                Err("amqp_urls is empty: list the cluster's nodes, or remove it and set amqp_url".to_owned())
            }
            Some(_) => Ok(()),
        }
    }

    /// The rules RabbitMQ enforces on replicated queues, checked before
    /// anything is declared so that a breach names the key to change.
    pub(super) fn check_queue_types(&self) -> Result<(), String> {
        for (name, queue) in &self.queues {
            let Some(kind) = queue.arguments.get("x-queue-type") else {
                continue;
            };
            let breach = match kind.as_str() {
                Some("quorum") if !queue.durable => "must be durable: set durable = true",
                Some("quorum") if queue.exclusive => "cannot be exclusive: set exclusive = false",
                Some("quorum") if queue.auto_delete => {
                    "cannot be auto-delete: set auto_delete = false"
                }
                Some("quorum") if name.is_empty() => {
                    "needs a name: RabbitMQ does not name quorum queues"
                }
                Some("stream") => {
                    return Err(format!(
                        "[queues.{name:?}]: stream queues (x-queue-type = \"stream\") are not supported: they need a consumer offset; use \"quorum\" or \"classic\""
                    ));
                }
                Some("quorum" | "classic") => continue,
                Some(other) => {
                    return Err(format!(
                        "[queues.{name:?}]: x-queue-type {other:?} is not one RabbitMQ knows: use \"classic\" or \"quorum\""
                    ));
                }
                None => {
                    return Err(format!(
                        "[queues.{name:?}]: x-queue-type must be a string, \"classic\" or \"quorum\""
                    ));
                }
            };
            return Err(format!("[queues.{name:?}]: a quorum queue {breach}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_urls_lists_the_nodes_instead_of_amqp_url() {
        let config = Config::parse("").unwrap();
        assert_eq!(
            config.broker_urls(),
            ["amqp://?connection_attempts=3&retry_delay=5"]
        );
        let config = Config::parse("amqp_urls = ['amqp://a:5672/', 'amqp://b:5672/']\n").unwrap();
        assert_eq!(config.broker_urls(), ["amqp://a:5672/", "amqp://b:5672/"]);
        let (line, message) =
            Config::parse("amqp_url = 'amqp://a/'\namqp_urls = ['amqp://b/']\n").unwrap_err();
        assert_eq!(line, Some(2));
        assert!(message.contains("remove amqp_url"), "{message}");
        let (line, message) = Config::parse("\nAMQP_URLS = []\n").unwrap_err();
        assert!(message.contains("amqp_urls is empty"), "{message}");
        assert_eq!(line, None, "found only in lower case");
    }

    #[test]
    fn quorum_queues_must_follow_rabbitmqs_rules_and_streams_are_refused() {
        let queue = |name: &str, durable: bool, auto_delete: bool, exclusive: bool, kind: &str| {
            Config::parse(&format!(
                "[queues.{name:?}]\ndurable = {durable}\nauto_delete = {auto_delete}\nexclusive = {exclusive}\narguments = {{ \"x-queue-type\" = {kind} }}\n"
            ))
        };
        assert!(queue("q", true, false, false, "'quorum'").is_ok());
        assert!(queue("q", false, true, true, "'classic'").is_ok());
        for (result, expected) in [
            (
                queue("q", false, false, false, "'quorum'"),
                "must be durable",
            ),
            (
                queue("q", true, false, true, "'quorum'"),
                "cannot be exclusive",
            ),
            (
                queue("q", true, true, false, "'quorum'"),
                "cannot be auto-delete",
            ),
            (queue("", true, false, false, "'quorum'"), "needs a name"),
            (queue("q", true, false, false, "'stream'"), "stream queues"),
            (
                queue("q", true, false, false, "'lazy'"),
                "not one RabbitMQ knows",
            ),
            (queue("q", true, false, false, "1"), "must be a string"),
        ] {
            let (line, message) = result.unwrap_err();
            assert_eq!(line, Some(1), "{message}");
            assert!(message.contains(expected), "{message} lacks {expected}");
        }
    }
}
