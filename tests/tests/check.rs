//! `fedora-messaging check` against `consume`: whatever stops `consume`
//! at start before it connects (the broker's URLs, the TLS files, the
//! client properties, the delivery limit's secret) stops `check` with the
//! same line and exit code, so that its exit 0 means `consume` starts.
//! None of these runs reaches a broker: each fails before connecting.

use fm_e2e::{Run, config_file, fedora_messaging, plugin, run, scratch};

/// Runs `command` (`check` or `consume`) of the Printer plugin with the
/// configuration file `conf`.
fn printer(command: &str, conf: &std::path::Path) -> Run {
    let callback = format!("{}:Printer", plugin("printer").display());
    run(fedora_messaging()
        .arg("--conf")
        .arg(conf)
        .arg(command)
        .arg("--callback")
        .arg(callback))
}

/// The line a run ends with on standard error, `Error: …`.
fn error_line(stderr: &str) -> Option<&str> {
    stderr
        .lines()
        .rev()
        .find(|line| line.starts_with("Error: "))
}

#[test]
fn check_refuses_what_consume_refuses_before_connecting() {
    let dir = scratch();
    let short_secret = dir.path().join("short.secret");
    std::fs::write(&short_secret, "too short").unwrap();
    let long_app = "a".repeat(5000);
    let cases = [
        (
            "an http URL",
            "amqp_url = \"http://localhost\"\n".to_owned(),
        ),
        (
            "a node that is no URL",
            "amqp_urls = [\"amqp://localhost\", \"bogus://node2\"]\n".to_owned(),
        ),
        (
            "an amqps URL whose CA file is missing",
            "amqp_url = \"amqps://localhost\"\n[tls]\nca_cert = \"/nonexistent/ca.pem\"\n"
                .to_owned(),
        ),
        (
            "client properties too large to send",
            format!("[client_properties]\napp = \"{long_app}\"\n"),
        ),
        (
            "a delivery limit without a secret",
            "[delivery_limit]\nmax = 3\n".to_owned(),
        ),
        (
            "a delivery limit with a short secret",
            format!(
                "[delivery_limit]\nmax = 3\nsecret_file = \"{}\"\n",
                short_secret.display()
            ),
        ),
    ];
    for (what, toml) in cases {
        let conf = config_file(dir.path(), &toml);
        let consumed = printer("consume", &conf);
        assert_ne!(consumed.code(), 0, "{what}: consume started: {consumed:#?}");
        let checked = printer("check", &conf);
        assert_eq!(
            checked.code(),
            consumed.code(),
            "{what}: check and consume exit differently: {checked:#?} {consumed:#?}"
        );
        assert_eq!(
            error_line(&checked.stderr),
            error_line(&consumed.stderr),
            "{what}"
        );
        assert!(
            !checked.stdout.contains("OK: consume would start"),
            "{what}: {checked:#?}"
        );
    }
}

/// A `log_config` level Python's `dictConfig` would refuse is refused at
/// load, naming the logger and the line; it used to be dropped without a
/// word, leaving the default level.
#[test]
fn a_log_level_python_does_not_know_stops_check_and_consume() {
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        "[log_config]\nversion = 1\n[log_config.loggers.fedora_messaging]\nlevel = \"LOUD\"\n",
    );
    for command in ["check", "consume"] {
        let refused = printer(command, &conf);
        assert_eq!(refused.code(), 2, "{command}: {refused:#?}");
        assert_eq!(
            error_line(&refused.stderr),
            Some(
                format!(
                    "Error: {}:4: log_config: logger \"fedora_messaging\" has the level \"LOUD\", which Python's logging does not know: give DEBUG, INFO, WARNING, ERROR, CRITICAL or NOTSET, or a number",
                    conf.display()
                )
                .as_str()
            ),
            "{command}"
        );
    }
}
