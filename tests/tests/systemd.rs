//! Running under systemd: the unit file, and the notification protocol
//! spoken to a socket of the test's own (no systemd needed).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use fm_e2e::broker::{TestBroker, queue_config};
use fm_e2e::nodes::version;
use fm_e2e::*;
use lapin::types::FieldTable;
use serde_json::json;

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(workspace_root().join("fm-consumer@.service")).unwrap();
    for line in [
        "Type=notify",
        "ExecStart=/usr/bin/fedora-messaging --conf %d/config.toml consume",
        "LoadCredential=config.toml:/etc/fedora-messaging/%i.toml",
        "DynamicUser=yes",
        "Restart=on-failure",
        "RestartSec=60",
        "WatchdogSec=60",
        // SIGTERM to the host alone, which lets the command in progress
        // finish; control-group would kill the command too (exit 13).
        "KillMode=mixed",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line:?}");
    }
    let dir = scratch();
    let (verified, said) = analyze(&["verify", "--man=no"], &unit_in(dir.path()));
    assert!(verified, "{said}");
    assert!(said.trim().is_empty(), "warnings: {said}");
}

/// The unit, for `systemd-analyze`, with ExecStart pointing at our binary
/// (verify checks that it exists), as `fm-consumer@e2e.service` in `dir`.
fn unit_in(dir: &std::path::Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(workspace_root().join("fm-consumer@.service")).unwrap();
    let instance = dir.join("fm-consumer@e2e.service");
    std::fs::write(
        &instance,
        unit.replace(
            "/usr/bin/fedora-messaging",
            &host_binary().display().to_string(),
        ),
    )
    .unwrap();
    instance
}

/// `systemd-analyze ARGS UNIT`: whether it succeeded, and what it said.
fn analyze(args: &[&str], unit: &std::path::Path) -> (bool, String) {
    let output = std::process::Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("run systemd-analyze");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn the_unit_runs_least_privileged_and_rates_ok() {
    let dir = scratch();
    let (ran, said) = analyze(&["security", "--offline=true"], &unit_in(dir.path()));
    assert!(ran, "{said}");
    let overall = said
        .lines()
        .find(|line| line.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure level: {said}"));
    println!("{overall}");
    let score: f64 = overall
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no score in {overall:?}"));
    assert!(score <= 2.5, "exposure {score} above 2.5 (\"OK\"):\n{said}");
    assert!(overall.contains(" OK"), "{overall}");
}

#[test]
fn the_drop_in_the_unit_documents_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(workspace_root().join("fm-consumer@.service")).unwrap();
    // The commented block after "with the lines it needs of these:".
    let drop_in: String = unit
        .lines()
        .skip_while(|line| !line.starts_with("#   [Service]"))
        .take_while(|line| line.starts_with("#   "))
        .map(|line| format!("{}\n", &line[4..]))
        .collect();
    assert!(drop_in.contains("ReadWritePaths="), "{drop_in}");
    let dir = scratch();
    let instance = unit_in(dir.path());
    let drop_ins = dir.path().join("fm-consumer@e2e.service.d");
    std::fs::create_dir(&drop_ins).unwrap();
    std::fs::write(drop_ins.join("override.conf"), &drop_in).unwrap();
    let (verified, said) = analyze(&["verify", "--man=no"], &instance);
    assert!(verified, "{said}");
    assert!(said.trim().is_empty(), "warnings: {said}");
    // The drop-in is read: a key systemd does not know is reported.
    std::fs::write(
        drop_ins.join("override.conf"),
        format!("{drop_in}NoSuchKey=1\n"),
    )
    .unwrap();
    let (_, said) = analyze(&["verify", "--man=no"], &instance);
    assert!(said.contains("NoSuchKey"), "{said}");
}

#[test]
fn ready_status_watchdog_and_stopping_reach_notify_socket() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("notify");
    broker.declare_queue(&queue, FieldTable::default());
    for (id, body) in [
        // The watchdog keeps pinging while the consumer blocks.
        ("slow", json!({"do": "ack", "sleep_ms": 1500})),
        ("last", json!({"do": "halt"})),
    ] {
        broker.publish(&json!({"id": id, "topic": format!("{queue}.t"), "body": body}));
    }
    let dir = scratch();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let conf = config_file(dir.path(), &queue_config(&queue, ""));
    let mut command = fedora_messaging();
    command
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .arg("--conf")
        .arg(&conf)
        .args(["consume", "--callback"])
        .arg(scripted());
    let consumer = std::thread::spawn(move || run(&mut command));
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    // The consumer thread ends within the harness's deadline; then what is
    // left in the socket is read until it stays quiet (200 ms).
    loop {
        let finished = consumer.is_finished();
        match socket.recv(&mut buffer) {
            Ok(size) => received.push(String::from_utf8_lossy(&buffer[..size]).into_owned()),
            Err(_) if finished => break,
            Err(_) => {}
        }
    }
    let run = consumer.join().unwrap();
    assert!(!received.is_empty(), "nothing was sent: {run:#?}");
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(
        received[0].starts_with(&format!(
            "READY=1\nSTATUS=Connecting to amqp://guest@{}",
            version().address
        )),
        "{received:?}"
    );
    assert!(
        received.contains(&format!("STATUS=Consuming from \"{queue}\"")),
        "{received:?}"
    );
    let pings = received.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(pings >= 3, "{pings} pings in {received:?}");
    let stopping = received
        .iter()
        .rfind(|m| m.starts_with("STOPPING=1"))
        .unwrap_or_else(|| panic!("no STOPPING=1 in {received:?}"));
    assert_eq!(
        stopping,
        "STOPPING=1\nSTATUS=Stopping (2 received, 2 processed, 0 dropped, 0 rejected, 0 failed)"
    );
    broker.delete_queue(&queue);
}

/// Runs a consumer failure through `reconsume` with standard output going
/// to a file, telling the host (or not) that the file is journald's stream.
fn log_output(as_journal: bool) -> String {
    use std::os::unix::fs::MetadataExt;
    let dir = scratch();
    let messages = record_file(
        dir.path(),
        &[json!({"id": "m1", "topic": "t", "body": {"do": "fail", "reason": "boom"}})],
    );
    let out_path = dir.path().join("stdout");
    let out = std::fs::File::create(&out_path).unwrap();
    let meta = out.metadata().unwrap();
    let mut command = fedora_messaging();
    command
        .args(["reconsume", "--callback"])
        .arg(scripted())
        .arg("--file")
        .arg(&messages)
        .stdout(out);
    if as_journal {
        command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    } else {
        command.env_remove("JOURNAL_STREAM");
    }
    let status = command.status().unwrap();
    assert_eq!(status.code(), Some(13));
    std::fs::read_to_string(&out_path).unwrap()
}

#[test]
fn log_lines_carry_syslog_priorities_only_for_journald() {
    let journal = log_output(true);
    assert!(
        journal
            .lines()
            .any(|line| line.starts_with("<3>[fedora_messaging.reconsume ERROR] Unexpected error")),
        "{journal}"
    );
    assert!(
        journal.lines().any(|line| line == "m1 failed: boom"),
        "the command's own output has no prefix: {journal}"
    );
    let plain = log_output(false);
    assert!(
        plain
            .lines()
            .any(|line| line.starts_with("[fedora_messaging.reconsume ERROR] Unexpected error")),
        "{plain}"
    );
    assert!(!plain.contains("<3>"), "{plain}");
}
