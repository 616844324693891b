//! Configuration files and URLs of any shape: loading them must never
//! panic, and every part of a loaded configuration must be usable.
#![no_main]

use fm_host::amqp_url::BrokerUrl;
use fm_host::config::Config;
use fm_host::logging::LogSettings;
use fm_host::topology::{Overrides, Topology};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = BrokerUrl::parse(text);
    if let Ok(config) = Config::parse(text) {
        let _ = config.consumer_config_json();
        let _ = config.ignored_keys();
        let _ = config.monitoring();
        let _ = LogSettings::from_log_config(config.log_config.as_ref());
        let _ = Topology::new(&config, &Overrides::default());
        let _ = BrokerUrl::parse(&config.amqp_url);
    }
});
