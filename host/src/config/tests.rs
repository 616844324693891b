use super::*;

/// The example the packages install as /etc/fedora-messaging/config.toml.
const EXAMPLE: &str = include_str!("../../../config.toml.example");

#[test]
fn the_example_config_loads_as_the_defaults_plus_a_callback() {
    let example = Config::parse(EXAMPLE).unwrap();
    assert_eq!(example.ignored_keys(), Vec::<String>::new());
    let mut defaults = Config::parse("").unwrap();
    defaults.callback = Some("libprinter.so:Printer".to_owned());
    defaults
        .client_properties
        .insert("app".into(), "Example consumer".into());
    // log_config is kept as written; the logger it gives is the
    // default one.
    assert_eq!(
        crate::logging::LogSettings::from_log_config(example.log_config.as_ref()),
        crate::logging::LogSettings::default()
    );
    defaults.log_config = example.log_config.clone();
    assert_eq!(example, defaults);
}

#[test]
fn soft_timeout_is_off_unless_set_and_a_bad_one_names_its_key() {
    assert_eq!(Config::parse("").unwrap().soft_timeout, None);
    assert_eq!(
        Config::parse("soft_timeout = 300").unwrap().soft_timeout,
        Some(300.0)
    );
    for bad in [
        "soft_timeout = 0",
        "soft_timeout = -5",
        "soft_timeout = 1e9",
    ] {
        let (line, message) = Config::parse(&format!("\n{bad}")).unwrap_err();
        assert_eq!(line, Some(2), "{bad}");
        assert!(
            message.starts_with("soft_timeout is seconds"),
            "{bad}: {message}"
        );
    }
}

#[test]
fn stop_timeout_is_sixty_seconds_unless_set_and_a_bad_one_names_its_key() {
    assert_eq!(Config::parse("").unwrap().stop_timeout, 60.0);
    assert_eq!(Config::parse("stop_timeout = 5").unwrap().stop_timeout, 5.0);
    for bad in ["stop_timeout = -1", "stop_timeout = 1e9"] {
        let (line, message) = Config::parse(&format!("\n{bad}")).unwrap_err();
        assert_eq!(line, Some(2), "{bad}");
        assert!(
            message.starts_with("stop_timeout is seconds"),
            "{bad}: {message}"
        );
    }
}

#[test]
fn the_example_config_documents_every_key() {
    let documented = |key: &str| {
        EXAMPLE.lines().any(|line| {
            let line = line.trim_start_matches(['#', ' ']);
            line.starts_with(&format!("{key} ="))
                || line.starts_with(&format!("[{key}"))
                || line.starts_with(&format!("[[{key}]]"))
        })
    };
    let inner = [
        "prefetch_size",
        "prefetch_count",
        "ca_cert",
        "certfile",
        "keyfile",
        "address",
        "port",
        "durable",
        "auto_delete",
        "exclusive",
        "arguments",
        "queue",
        "exchange",
        "routing_keys",
    ];
    for key in KEYS.into_iter().chain(inner) {
        assert!(documented(key), "config.toml.example does not show {key}");
    }
}

#[test]
fn empty_file_gives_fedora_messaging_defaults() {
    let config = Config::parse("").unwrap();
    assert_eq!(
        config.amqp_url,
        "amqp://?connection_attempts=3&retry_delay=5"
    );
    assert_eq!(config.publish_exchange, "amq.topic");
    assert_eq!(
        (config.qos.prefetch_size, config.qos.prefetch_count),
        (0, 10)
    );
    assert_eq!(config.queues[""], default_queue());
    assert_eq!(config.bindings[0].routing_keys, ["#"]);
    assert_eq!(config.bindings[0].exchange, "amq.topic");
    assert!(config.exchanges.contains_key("amq.topic"));
    assert!(!config.passive_declares);
    assert_eq!(config.monitoring(), Ok(None));
}

#[test]
fn a_table_replaces_the_default_wholesale() {
    let config = Config::parse(
        "[queues.mine]\ndurable = true\nauto_delete = false\nexclusive = false\narguments = {}\n",
    )
    .unwrap();
    assert_eq!(config.queues.keys().collect::<Vec<_>>(), ["mine"]);
}

#[test]
fn a_partial_qos_keeps_the_other_default() {
    let config = Config::parse("[qos]\nprefetch_count = 25\n").unwrap();
    assert_eq!(
        (config.qos.prefetch_size, config.qos.prefetch_count),
        (0, 25)
    );
}

#[test]
fn keys_fedora_messaging_ignores_load_with_a_warning() {
    let config = Config::parse("[qos]\nprefetch_cuont = 25\n[tls]\nverify = false\n").unwrap();
    assert_eq!(config.qos.prefetch_count, 10);
    assert_eq!(
        config.ignored_keys(),
        [
            "ignoring unknown key `prefetch_cuont` in [qos]",
            "ignoring unknown key `verify` in [tls]"
        ]
    );
}

#[test]
fn delivery_limit_is_optional_and_needs_a_max_of_at_least_one() {
    assert_eq!(Config::parse("").unwrap().delivery_limit, None);
    let config =
        Config::parse("[delivery_limit]\nmax = 5\ndead_letter_exchange = \"dlx\"\n").unwrap();
    assert_eq!(
        config.delivery_limit,
        Some(DeliveryLimit {
            max: 5,
            dead_letter_exchange: Some("dlx".to_owned()),
            dead_letter_routing_key: None,
            secret_file: None,
            retry_delay: 1.0,
            max_retry_delay: 60.0,
        })
    );
    let (_, message) = Config::parse("[delivery_limit]\nmax = 3\nretry_delay = -1\n").unwrap_err();
    assert!(message.contains("seconds from 0 to 86400"), "{message}");
    let none = Config::parse("[delivery_limit]\nmax = 3\nretry_delay = 0\n").unwrap();
    assert_eq!(none.delivery_limit.unwrap().retry_delay, 0.0);
    let (line, message) = Config::parse("workers = 1\n[delivery_limit]\nmax = 0\n").unwrap_err();
    assert_eq!(line, Some(2));
    assert!(message.contains("at least 1"), "{message}");
    let (_, message) = Config::parse("[delivery_limit]\nmax = 3\nexchange = \"x\"\n").unwrap_err();
    assert!(message.contains("unknown field `exchange`"), "{message}");
}

#[test]
fn unknown_key_lists_the_valid_ones() {
    let (line, message) = Config::parse("amqp_url = 'amqp://'\ncallbak = 'x'\n").unwrap_err();
    assert_eq!(line, Some(2));
    assert!(message.contains("unknown field `callbak`"), "{message}");
    for key in KEYS {
        assert!(message.contains(key), "{key} missing from: {message}");
    }
}

#[test]
fn queue_shape_errors_name_the_line() {
    let (line, message) =
        Config::parse("\n[queues.q]\ndurable = true\nauto_delete = false\narguments = {}\n")
            .unwrap_err();
    assert_eq!(line, Some(2));
    assert!(message.contains("exclusive"), "{message}");
    assert!(message.contains("[queues.q]"), "{message}");
}

#[test]
fn a_log_level_python_does_not_know_names_its_line_whichever_quotes() {
    for (quote, text) in [('"', "INFO"), ('\'', "INFO"), ('"', "LOUD"), ('\'', "LOUD")] {
        let file = format!(
            "[log_config.root]\nlevel = {quote}INFO{quote}\n[log_config.loggers.x]\nlevel = {quote}{text}{quote}\n"
        );
        match Config::parse(&file) {
            Ok(_) => assert_eq!(text, "INFO", "{file}"),
            Err((line, message)) => {
                assert_eq!(line, Some(4), "{file}");
                assert!(message.contains("logger \"x\""), "{message}");
            }
        }
    }
    let (line, _) = Config::parse("[log_config.root]\nlevel = -3\n").unwrap_err();
    assert_eq!(line, Some(2));
}

#[test]
fn binding_routing_keys_must_be_a_list() {
    let (_, message) =
        Config::parse("[[bindings]]\nexchange = 'amq.topic'\nrouting_keys = '#'\n").unwrap_err();
    assert!(
        message.contains("sequence") || message.contains("array"),
        "{message}"
    );
}

#[test]
fn upper_case_top_level_keys_are_accepted() {
    let config = Config::parse("AMQP_URL = 'amqp://broker/'\n").unwrap();
    assert_eq!(config.amqp_url, "amqp://broker/");
}

#[test]
fn of_keys_differing_only_in_case_the_last_wins() {
    let config = Config::parse("amqp_url = 'amqp://a/'\nAMQP_URL = 'amqp://b/'\n").unwrap();
    assert_eq!(config.amqp_url, "amqp://b/");
    let config = Config::parse("AMQP_URL = 'amqp://b/'\namqp_url = 'amqp://a/'\n").unwrap();
    assert_eq!(config.amqp_url, "amqp://a/");
}

#[test]
fn an_error_echoes_at_most_a_screenful_of_its_line() {
    let deep = format!("x = {}1{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let (line, message) = Config::parse(&deep).unwrap_err();
    assert_eq!(line, Some(1));
    assert!(
        message.len() < 1000,
        "{} bytes: {message:.300}",
        message.len()
    );
    assert!(
        message.contains("(at `x = [[[") && message.contains("…`)"),
        "{message}"
    );
}

#[test]
fn reserved_client_properties_are_refused() {
    let (line, message) =
        Config::parse("[client_properties]\napp = 'mine'\nproduct = 'other'\n").unwrap_err();
    assert_eq!(line, Some(3));
    assert!(
        message.contains("\"product\" is a reserved keyword"),
        "{message}"
    );
}

#[test]
fn monitoring_needs_a_port_when_enabled() {
    let (_, message) = Config::parse("[monitoring]\naddress = '127.0.0.1'\n").unwrap_err();
    assert!(message.contains("port"), "{message}");
    let config = Config::parse("[monitoring]\nport = 8070\n").unwrap();
    let monitoring = config.monitoring().unwrap().unwrap();
    assert_eq!((monitoring.address.as_str(), monitoring.port), ("", 8070));
}

#[test]
fn names_longer_than_amqp_allows_are_configuration_errors() {
    let long = "q".repeat(256);
    let (line, message) = Config::parse(&format!(
        "\n[[bindings]]\nexchange = 'amq.topic'\nrouting_keys = ['{long}']\n"
    ))
    .unwrap_err();
    assert_eq!(line, Some(2));
    assert!(
        message.contains("a routing key is 256 bytes long"),
        "{message}"
    );
    let (_, message) = Config::parse(&format!(
        "[queues.q]\ndurable = true\nauto_delete = false\nexclusive = false\narguments = {{ {long} = 1 }}\n"
    ))
    .unwrap_err();
    assert!(message.contains("an argument name"), "{message}");
}

#[test]
fn syntax_errors_name_the_line() {
    let (line, _) = Config::parse("a = 1\nb = = 2\n").unwrap_err();
    assert_eq!(line, Some(2));
}

#[test]
fn consumer_config_reaches_consumers_as_json() {
    let config =
        Config::parse("[consumer_config]\npath = '/tmp/x'\nn = 3\nwhen = 1979-05-27\n").unwrap();
    assert_eq!(
        config.consumer_config_json(),
        serde_json::json!({"path": "/tmp/x", "n": 3, "when": "1979-05-27"})
    );
}
