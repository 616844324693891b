//! Counts messages per topic and logs the counts every `report_every`
//! messages; halts cleanly after `stop_after` messages if it is set.

use std::collections::BTreeMap;

use fm_plugin_api::{Consumer, ConsumerError, Init, Message, export_consumers};
use serde::Deserialize;

#[derive(Deserialize)]
struct Conf {
    #[serde(default = "default_report_every")]
    report_every: u64,
    stop_after: Option<u64>,
}

fn default_report_every() -> u64 {
    100
}

pub struct TopicCounter {
    conf: Conf,
    seen: u64,
    per_topic: BTreeMap<String, u64>,
}

impl Consumer for TopicCounter {
    fn new(init: &Init) -> Result<Self, ConsumerError> {
        Ok(TopicCounter {
            conf: init.config()?,
            seen: 0,
            per_topic: BTreeMap::new(),
        })
    }

    fn consume(&mut self, message: &Message) -> Result<(), ConsumerError> {
        self.seen += 1;
        *self
            .per_topic
            .entry(message.topic().to_owned())
            .or_default() += 1;
        if self.seen.is_multiple_of(self.conf.report_every) {
            log::info!("after {} messages: {:?}", self.seen, self.per_topic);
        }
        if Some(self.seen) == self.conf.stop_after {
            return Err(ConsumerError::halt(0));
        }
        Ok(())
    }

    fn stop(&mut self) {
        log::info!("counted {} messages: {:?}", self.seen, self.per_topic);
    }
}

export_consumers!(TopicCounter);
