//! `reconsume --file` and `reconsume MESSAGE_ID`: every outcome, panics,
//! configuration, logging and the example plugins, through the real binary.

use fm_e2e::*;
use serde_json::{Value, json};

fn message(id: &str, action: Value) -> Value {
    json!({"id": id, "topic": "org.example.test", "body": action})
}

/// Runs `reconsume --file` on `lines` with `callback`, logging at INFO.
fn reconsume(callback: &str, lines: &[Value]) -> Run {
    let dir = scratch();
    let file = record_file(dir.path(), lines);
    let conf = config_file(dir.path(), "[log_config.root]\nlevel = 'INFO'\n");
    run(fedora_messaging()
        .arg("--conf")
        .arg(conf)
        .args(["reconsume", "--callback", callback, "--file"])
        .arg(file))
}

#[test]
fn ack_nack_and_drop_continue_and_state_survives_between_calls() {
    let run = reconsume(
        &scripted(),
        &[
            message("m1", json!({"do": "ack"})),
            message("m2", json!({"do": "nack"})),
            message("m3", json!({"do": "drop"})),
            message("m4", json!({})),
        ],
    );
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(
        outcome_lines(&run),
        ["m1 ack", "m2 nack", "m3 drop", "m4 ack"]
    );
    assert!(run.stdout.contains("message #4 (m4)"), "{run:#?}");
    assert!(run.stdout.contains("stopping after 4 messages"), "{run:#?}");
}

#[test]
fn halt_acks_stops_and_exits_with_its_code() {
    let run = reconsume(
        &scripted(),
        &[
            message("m1", json!({"do": "halt", "code": 3})),
            message("m2", json!({"do": "ack"})),
        ],
    );
    assert_eq!(run.code(), 3, "{run:#?}");
    assert_eq!(outcome_lines(&run), ["m1 halt 3"]);
    assert!(run.stdout.contains("stopping after 1 messages"), "{run:#?}");
}

#[test]
fn halt_zero_is_a_clean_exit() {
    let run = reconsume(&scripted(), &[message("m1", json!({"do": "halt"}))]);
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(outcome_lines(&run), ["m1 halt 0"]);
}

#[test]
fn halt_and_requeue_exits_with_its_code() {
    let run = reconsume(
        &scripted(),
        &[message("m1", json!({"do": "halt_requeue", "code": 4}))],
    );
    assert_eq!(run.code(), 4, "{run:#?}");
    assert_eq!(outcome_lines(&run), ["m1 halt 4 (requeue)"]);
}

#[test]
fn a_failure_exits_13_with_its_reason_and_stops() {
    let run = reconsume(
        &scripted(),
        &[
            message("m1", json!({"do": "fail", "reason": "database gone"})),
            message("m2", json!({"do": "ack"})),
        ],
    );
    assert_eq!(run.code(), 13, "{run:#?}");
    assert_eq!(outcome_lines(&run), ["m1 failed: database gone"]);
    assert!(
        run.stdout
            .contains("ERROR] Unexpected error occurred in consumer Scripted on message m1"),
        "{run:#?}"
    );
    assert!(
        !run.stdout.contains("stopping after"),
        "stop is not called after a failure: {run:#?}"
    );
}

#[test]
fn question_mark_on_an_error_keeps_its_sources() {
    let run = reconsume(
        &scripted(),
        &[message("m1", json!({"do": "error", "reason": "disk full"}))],
    );
    assert_eq!(run.code(), 13, "{run:#?}");
    assert_eq!(outcome_lines(&run), ["m1 failed: wrapped: disk full"]);
}

#[test]
fn a_panic_in_consume_is_a_failure_not_an_abort() {
    let run = reconsume(
        &scripted(),
        &[
            message("m1", json!({"do": "panic", "reason": "boom"})),
            message("m2", json!({"do": "ack"})),
        ],
    );
    assert_eq!(run.code(), 13, "{run:#?}");
    let lines = outcome_lines(&run);
    assert_eq!(lines.len(), 1, "{run:#?}");
    assert!(
        lines[0].starts_with("m1 failed: panicked at plugins/test-consumers/src/lib.rs:")
            && lines[0].ends_with(": boom"),
        "{run:#?}"
    );
    // Reported once, as the failure: not by the plugin's default hook.
    assert!(!run.stderr.contains("panicked"), "{run:#?}");
}

/// Issue #11: a panic while the host dropped the consumer crossed the
/// boundary, and abi_stable ended the process with exit 1 after `m1 ack`.
#[test]
fn a_panic_in_the_consumers_drop_is_logged_and_the_outcome_stands() {
    let run = reconsume(
        &scripted(),
        &[message("m1", json!({"do": "ack", "panic_on_drop": true}))],
    );
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(outcome_lines(&run), ["m1 ack"]);
    let output = run.output();
    assert!(
        output.contains("consumer panicked while being dropped: panicked at ")
            && output.contains("cannot close the database"),
        "{run:#?}"
    );
}

#[test]
fn a_panic_whose_payload_panics_when_dropped_is_one_failure() {
    let run = reconsume(&scripted(), &[message("m1", json!({"do": "panic_bomb"}))]);
    assert_eq!(run.code(), 13, "{run:#?}");
    let lines = outcome_lines(&run);
    assert_eq!(lines.len(), 1, "{run:#?}");
    assert!(
        lines[0].starts_with("m1 failed: panicked at ")
            && lines[0].ends_with("non-string panic payload"),
        "{run:#?}"
    );
}

/// The plugin's panic hook, which turns a consumer's panic into its
/// failure, also silenced panics on the plugin's own threads.
#[test]
fn a_panic_on_a_thread_of_the_plugin_is_logged() {
    let run = reconsume(&scripted(), &[message("m1", json!({"do": "thread_panic"}))]);
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(outcome_lines(&run), ["m1 ack"]);
    assert!(
        run.output()
            .contains("thread scripted-helper of the plugin panicked at ")
            && run.output().contains("the helper thread gave up"),
        "{run:#?}"
    );
}

#[test]
fn a_panic_in_new_stops_before_consuming() {
    let callback = format!("{}:PanicInNew", plugin("test_consumers").display());
    let run = reconsume(&callback, &[message("m1", json!({}))]);
    assert_eq!(run.code(), 1, "{run:#?}");
    assert!(outcome_lines(&run).is_empty(), "{run:#?}");
    assert!(
        run.stderr
            .starts_with("Error: consumer PanicInNew could not start: panicked at ")
            && run.stderr.trim_end().ends_with("cannot start: no database"),
        "{run:#?}"
    );
    assert_eq!(run.stderr.lines().count(), 1, "one line: {run:#?}");
}

#[test]
fn an_error_from_new_is_shown() {
    let callback = format!("{}:FailInNew", plugin("test_consumers").display());
    let run = reconsume(&callback, &[message("m1", json!({}))]);
    assert_eq!(run.code(), 1, "{run:#?}");
    assert_eq!(
        run.stderr.trim_end(),
        "Error: consumer FailInNew could not start: the database is read-only"
    );
}

#[test]
fn a_malformed_line_names_its_number_and_nothing_is_consumed() {
    let dir = scratch();
    let file = dir.path().join("messages.jsonl");
    std::fs::write(
        &file,
        "{\"topic\": \"t\", \"body\": {}}\n\n{\"topic\": \"t\", \"body\": [1]}\n",
    )
    .unwrap();
    let run = run(fedora_messaging()
        .args(["reconsume", "--callback", &scripted(), "--file"])
        .arg(&file));
    assert_eq!(run.code(), 2, "{run:#?}");
    assert!(outcome_lines(&run).is_empty(), "{run:#?}");
    assert_eq!(
        run.stderr.trim_end(),
        format!(
            "Error: {}:3: not a message in fedora-messaging's record format: \"body\" must be a JSON object",
            file.display()
        )
    );
}

#[test]
fn the_message_crosses_the_boundary_whole() {
    let record = json!({
        "id": "273ed91d-b8b5-487a-9576-95b9fbdf3eec",
        "topic": "org.fedoraproject.prod.bodhi.update.comment",
        "queue": "my_queue",
        "priority": 7,
        "body": {"comment": {"text": "héllo"}, "n": 1.5},
        "headers": {
            "fedora_messaging_schema": "bodhi.update.comment.v1",
            "fedora_messaging_severity": 30,
            "sent-at": "2019-07-30T19:12:22+00:00",
            "fedora_messaging_user_alice": true,
            "fedora_messaging_user_bob": true,
            "fedora_messaging_group_admins": true,
            "fedora_messaging_rpm_kernel": true,
            "fedora_messaging_container_httpd": true,
            "fedora_messaging_module_nodejs": true,
            "fedora_messaging_flatpak_firefox": true,
            "fedora_messaging_rpm_ignored": false
        }
    });
    let callback = format!("{}:Inspect", plugin("test_consumers").display());
    let run = reconsume(&callback, std::slice::from_ref(&record));
    assert_eq!(run.code(), 0, "{run:#?}");
    let line = run
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("INSPECT "))
        .unwrap_or_else(|| panic!("no INSPECT line: {run:#?}"));
    let seen: Value = serde_json::from_str(line).unwrap();
    assert_eq!(seen["id"], record["id"]);
    assert_eq!(seen["topic"], record["topic"]);
    assert_eq!(seen["queue"], "my_queue");
    assert_eq!(seen["priority"], 7);
    assert_eq!(seen["severity"], 30);
    assert_eq!(seen["schema"], "bodhi.update.comment.v1");
    assert_eq!(seen["sent_at"], "2019-07-30T19:12:22+00:00");
    assert_eq!(seen["headers"], record["headers"]);
    assert_eq!(seen["body"], record["body"]);
    assert_eq!(
        serde_json::from_str::<Value>(seen["raw_body"].as_str().unwrap()).unwrap(),
        record["body"]
    );
    assert_eq!(seen["usernames"], json!(["alice", "bob"]));
    assert_eq!(seen["groups"], json!(["admins"]));
    assert_eq!(seen["packages"], json!(["kernel"]));
    assert_eq!(seen["containers"], json!(["httpd"]));
    assert_eq!(seen["modules"], json!(["nodejs"]));
    assert_eq!(seen["flatpaks"], json!(["firefox"]));
    // The host's answer to a publish crosses back too: here a refusal of a
    // body that is not an object, before anything is printed or sent.
    assert_eq!(
        seen["publish"],
        "failed: invalid message: \"body\" must be a JSON object"
    );
}

#[test]
fn printer_prints_as_fedora_messaging_does() {
    let record = json!({
        "id": "95383db8-8cdc-4464-8276-d482ac28b0b6",
        "topic": "hi",
        "body": {"msg": "Hello world"},
        "headers": {"fedora_messaging_schema": "base.message", "sent-at": "2019-07-30T19:12:22+00:00"}
    });
    let callback = format!("{}:Printer", plugin("printer").display());
    let run = reconsume(&callback, &[record]);
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(
        run.stdout,
        "Id: 95383db8-8cdc-4464-8276-d482ac28b0b6\n\
         Topic: hi\n\
         Headers: {\n    \"fedora_messaging_schema\": \"base.message\",\n    \"sent-at\": \"2019-07-30T19:12:22+00:00\"\n}\n\
         Body: {\n    \"msg\": \"Hello world\"\n}\n\
         95383db8-8cdc-4464-8276-d482ac28b0b6 ack\n"
    );
}

#[test]
fn saver_writes_records_that_replay() {
    let dir = scratch();
    let saved = dir.path().join("out/saved.jsonl");
    let conf = config_file(
        dir.path(),
        &format!(
            "callback = '{}:SaveMessage'\n[consumer_config]\npath = '{}'\n",
            plugin("saver").display(),
            saved.display()
        ),
    );
    let input = record_file(
        dir.path(),
        &[
            message("s1", json!({"n": 1})),
            json!({"id": "s2", "topic": "t2", "body": {"ü": [1, 2]}, "headers": {"fedora_messaging_severity": 40}, "queue": "q", "priority": 3}),
        ],
    );
    let first = run(fedora_messaging()
        .arg("--conf")
        .arg(&conf)
        .args(["reconsume", "--file"])
        .arg(&input));
    assert_eq!(first.code(), 0, "{first:#?}");
    let saved_text = std::fs::read_to_string(&saved).unwrap();
    assert_eq!(saved_text.lines().count(), 2, "{saved_text}");
    assert!(
        saved_text.starts_with(r#"{"body": {"n": 1}, "headers": {}, "id": "s1", "priority": 0, "queue": null, "topic": "org.example.test"}"#),
        "{saved_text}"
    );
    // The saved file is itself a record file: replaying it gives the same
    // messages, field for field.
    let inspect = format!("{}:Inspect", plugin("test_consumers").display());
    let replay = run(fedora_messaging()
        .args(["reconsume", "--callback", &inspect, "--file"])
        .arg(&saved));
    assert_eq!(replay.code(), 0, "{replay:#?}");
    let seen: Vec<Value> = replay
        .stdout
        .lines()
        .filter_map(|line| line.strip_prefix("INSPECT "))
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (
            &seen[1]["id"],
            &seen[1]["topic"],
            &seen[1]["queue"],
            &seen[1]["priority"],
            &seen[1]["severity"]
        ),
        (
            &json!("s2"),
            &json!("t2"),
            &json!("q"),
            &json!(3),
            &json!(40)
        )
    );
    assert_eq!(seen[1]["body"], json!({"ü": [1, 2]}));
}

#[test]
fn consumer_config_and_callback_come_from_the_config_file() {
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &format!(
            "callback = '{}'\n[consumer_config]\ncolour = 'blue'\n[log_config.root]\nlevel = 'INFO'\n",
            scripted()
        ),
    );
    let file = record_file(dir.path(), &[message("m1", json!({}))]);
    let run = run(fedora_messaging()
        .env("FEDORA_MESSAGING_CONF", &conf)
        .args(["reconsume", "--file"])
        .arg(&file));
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(
        run.stdout
            .contains(r#"[test_consumers INFO] Scripted built with {"colour":"blue"}"#),
        "{run:#?}"
    );
}

#[test]
fn callback_file_wins_over_callback_which_wins_over_the_config() {
    let dir = scratch();
    let conf = config_file(dir.path(), "callback = 'libnowhere.so:Nothing'\n");
    let file = record_file(dir.path(), &[message("m1", json!({}))]);
    let printer = format!("{}:Printer", plugin("printer").display());
    let run = run(fedora_messaging()
        .arg("--conf")
        .arg(&conf)
        .args([
            "reconsume",
            "--callback",
            "libnowhere.so:Nothing",
            "--callback-file",
            &printer,
            "--file",
        ])
        .arg(&file));
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(run.stdout.starts_with("Id: m1\n"), "{run:#?}");
}

#[test]
fn plugin_logs_follow_log_config_levels() {
    let dir = scratch();
    let file = record_file(dir.path(), &[message("m1", json!({}))]);
    // fedora-messaging's default: loggers other than its own at WARNING.
    let quiet = run(fedora_messaging()
        .args(["reconsume", "--callback", &scripted(), "--file"])
        .arg(&file));
    assert_eq!(quiet.code(), 0, "{quiet:#?}");
    assert!(!quiet.output().contains("test_consumers"), "{quiet:#?}");
    // A logger named after the plugin's crate turns its INFO lines on, on
    // the stream the handler names.
    let conf = config_file(
        dir.path(),
        "[log_config.loggers.test_consumers]\nlevel = 'INFO'\n[log_config.handlers.console]\nstream = 'ext://sys.stderr'\n",
    );
    let loud = run(fedora_messaging()
        .arg("--conf")
        .arg(&conf)
        .args(["reconsume", "--callback", &scripted(), "--file"])
        .arg(&file));
    assert_eq!(loud.code(), 0, "{loud:#?}");
    assert!(
        loud.stderr
            .contains("[test_consumers INFO] message #1 (m1): ack"),
        "{loud:#?}"
    );
}

#[test]
fn configuration_errors_exit_2_naming_file_and_line() {
    let dir = scratch();
    let file = record_file(dir.path(), &[message("m1", json!({}))]);
    let conf = config_file(dir.path(), "amqp_url = 'amqp://'\ncallbak = 'x'\n");
    let run_with = |conf: &std::path::Path| {
        run(fedora_messaging()
            .arg("--conf")
            .arg(conf)
            .args(["reconsume", "--callback", &scripted(), "--file"])
            .arg(&file))
    };
    let unknown = run_with(&conf);
    assert_eq!(unknown.code(), 2, "{unknown:#?}");
    assert!(
        unknown.stderr.starts_with(&format!(
            "Error: {}:2: unknown field `callbak`, expected one of `amqp_url`",
            conf.display()
        )),
        "{unknown:#?}"
    );
    assert_eq!(unknown.stderr.lines().count(), 1, "{unknown:#?}");

    let missing = run_with(&dir.path().join("absent.toml"));
    assert_eq!(missing.code(), 2, "{missing:#?}");
    assert!(
        missing.stderr.contains("absent.toml: is not a file"),
        "{missing:#?}"
    );
}

#[test]
fn no_callback_anywhere_is_exit_1() {
    let dir = scratch();
    let file = record_file(dir.path(), &[message("m1", json!({}))]);
    let conf = config_file(dir.path(), "");
    let run = run(fedora_messaging()
        .arg("--conf")
        .arg(conf)
        .args(["reconsume", "--file"])
        .arg(&file));
    assert_eq!(run.code(), 1, "{run:#?}");
    assert!(
        run.stderr.starts_with("Error: no consumer given"),
        "{run:#?}"
    );
}

#[test]
fn a_message_id_is_fetched_from_datagrepper() {
    let answer =
        std::fs::read_to_string(workspace_root().join("tests/fixtures/datagrepper-answer.json"))
            .unwrap();
    let (url, server) = serve_once("200 OK", answer);
    let inspect = format!("{}:Inspect", plugin("test_consumers").display());
    let run = run(fedora_messaging().args([
        "reconsume",
        "5f7b3f1e-9a77-4ed1-9f4b-1f07bb4b1d55",
        "--callback",
        &inspect,
        "--datagrepper-url",
        &url,
    ]));
    assert_eq!(
        server.join().unwrap(),
        "GET /datagrepper/v2/id?id=5f7b3f1e-9a77-4ed1-9f4b-1f07bb4b1d55&is_raw=true HTTP/1.1"
    );
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(
        outcome_lines(&run),
        ["5f7b3f1e-9a77-4ed1-9f4b-1f07bb4b1d55 ack"]
    );
    let seen: Value = serde_json::from_str(
        run.stdout
            .lines()
            .find_map(|line| line.strip_prefix("INSPECT "))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(seen["topic"], "org.fedoraproject.prod.bodhi.update.comment");
    assert_eq!(seen["usernames"], json!(["bowlofeggs"]));
    assert_eq!(seen["packages"], json!(["python-fedora-messaging"]));
}

#[test]
fn a_datagrepper_error_is_exit_1_with_the_cause() {
    let (url, server) = serve_once("404 Not Found", "{\"error\": \"not found\"}".to_owned());
    let run = run(fedora_messaging().args([
        "reconsume",
        "nope",
        "--callback",
        &scripted(),
        "--datagrepper-url",
        &url,
    ]));
    server.join().unwrap();
    assert_eq!(run.code(), 1, "{run:#?}");
    assert!(
        run.stderr.starts_with(&format!(
            "Error: cannot get message nope from {url}/v2/id: "
        )),
        "{run:#?}"
    );
    assert!(run.stderr.contains("404"), "{run:#?}");
}

/// `| head -1` closes standard output under the host: the log, and so the
/// reason the host stops, goes to standard error instead of nowhere.
#[test]
fn with_standard_output_closed_the_log_goes_to_standard_error() {
    let dir = scratch();
    let file = record_file(dir.path(), &[message("m1", json!({"do": "ack"}))]);
    let mut child = fedora_messaging()
        .args(["reconsume", "--callback"])
        .arg(format!("{}:Printer", plugin("printer").display()))
        .arg("--file")
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < RUN_DEADLINE, "the host did not end");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(13), "{stderr}");
    assert!(
        stderr.contains("cannot write the log to standard output")
            && stderr.contains("Unexpected error occurred in consumer Printer on message m1"),
        "{stderr}"
    );
}
