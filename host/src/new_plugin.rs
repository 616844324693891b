//! `new-plugin NAME`: starts a plugin crate, the shortest way from nothing
//! to a consumer this host runs: a `Cargo.toml` built as a plugin must be,
//! a consumer skeleton, a unit test through the testing kit, a sample
//! record file and a configuration that runs it.
//!
//! A subcommand rather than a `cargo generate` template: it needs nothing
//! installed beyond this host, and the host knows which `fm-plugin-api`
//! revision its plugins must be built against, so the crate it writes
//! asks for exactly that one.

use std::path::{Path, PathBuf};

use crate::exit::{Exit, Fatal};

/// Where the new crate's `fm-plugin-api` comes from.
pub enum Api<'a> {
    /// The `0.MINOR` release this host loads (crates.io, or a registry
    /// that replaces it, such as the system's).
    Release,
    /// A local copy of the crate's source.
    Path(&'a Path),
}

/// Writes the crate `name` into `dir/name` and says what to do next.
pub fn run(name: &str, dir: &Path, api: &Api<'_>) -> Result<Exit, Fatal> {
    check_name(name).map_err(|reason| Fatal::new(Exit::Usage, reason))?;
    let root = dir.join(name);
    if root.exists() {
        return Err(Fatal::new(
            Exit::Usage,
            format!(
                "{} already exists: choose another name or --dir",
                root.display()
            ),
        ));
    }
    let files = files(name, api);
    for (path, text) in &files {
        let path = root.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| write_error(parent, &error))?;
        }
        std::fs::write(&path, text).map_err(|error| write_error(&path, &error))?;
    }
    // Laid out as `cargo fmt` would, where rustfmt is installed (it is with
    // the usual Rust toolchains): names of any length then read as if
    // written by hand. Without it the code is the same, less tidy.
    let _ = std::process::Command::new("rustfmt")
        .args(["--edition", "2024"])
        .arg(root.join("src/lib.rs"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    let library = name.replace('-', "_");
    println!(
        "Created the plugin crate {root}. Next:\n  cd {root}\n  cargo test\n  cargo build --release\n  fedora-messaging --conf {name}.toml reconsume --file tests/sample.jsonl\n(the consumer is {consumer} in target/release/lib{library}.so)",
        root = root.display(),
        consumer = type_name(name),
    );
    Ok(Exit::Success)
}

fn write_error(path: &Path, error: &std::io::Error) -> Fatal {
    Fatal::new(
        Exit::Error,
        format!("cannot write {}: {error}", path.display()),
    )
}

/// Rust's keywords, and the built-in crates: cargo refuses a package, and
/// Rust a library, named like one.
const RESERVED_CRATE_NAMES: [&str; 58] = [
    "abstract",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
    "alloc",
    "core",
    "std",
    "test",
    "proc_macro",
    "proc-macro",
    "Self",
];

/// Names the generated code itself uses, or Rust's prelude gives: a
/// consumer type named like one would not compile (or would shadow what
/// the code means), so it takes the suffix `Consumer`.
const TAKEN_TYPE_NAMES: [&str; 37] = [
    "Self",
    "Consumer",
    "ConsumerError",
    "Init",
    "Message",
    "Deserialize",
    "Conf",
    "Harness",
    "Outcome",
    "Result",
    "Option",
    "Some",
    "None",
    "Ok",
    "Err",
    "Box",
    "String",
    "Vec",
    "Send",
    "Sync",
    "Sized",
    "Unpin",
    "Drop",
    "Fn",
    "FnMut",
    "FnOnce",
    "Copy",
    "Clone",
    "Default",
    "Eq",
    "PartialEq",
    "Ord",
    "PartialOrd",
    "Iterator",
    "From",
    "Into",
    "ToString",
];

/// A crate name cargo accepts, which is also the library's file name.
fn check_name(name: &str) -> Result<(), String> {
    if RESERVED_CRATE_NAMES.contains(&name) {
        return Err(format!(
            "{name:?} is a Rust keyword or a built-in crate's name, which no crate may have: choose another (e.g. {name}-watch)"
        ));
    }
    let valid = name
        .chars()
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a crate name: use letters, digits, '-' and '_', starting with a letter (e.g. koji-watch)"
        ))
    }
}

/// `koji-watch` → `KojiWatch`, the consumer's type and exported name;
/// `message` → `MessageConsumer` ([`TAKEN_TYPE_NAMES`]).
fn type_name(name: &str) -> String {
    let camel = camel_case(name);
    if TAKEN_TYPE_NAMES.contains(&camel.as_str()) {
        camel + "Consumer"
    } else {
        camel
    }
}

fn camel_case(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn files(name: &str, api: &Api<'_>) -> Vec<(PathBuf, String)> {
    let consumer = type_name(name);
    let library = name.replace('-', "_");
    let dependency = match api {
        Api::Release => format!("version = \"{}\"", crate::plugin::api_revision()),
        Api::Path(path) => format!("path = {:?}", path.display().to_string()),
    };
    let cargo_toml = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
# cdylib: the plugin the host loads; rlib: so that tests/ can use the crate.
crate-type = ["cdylib", "rlib"]

[dependencies]
fm-plugin-api = {{ {dependency} }}
log = "0.4"
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

[dev-dependencies]
fm-plugin-api = {{ {dependency}, features = ["testing"] }}

# A workspace of its own, so that the crate builds wherever it was created,
# even inside another workspace's directory. To make it a member of an
# enclosing workspace instead, remove this table and list the crate there.
[workspace]
"#
    );
    let lib_rs = format!(
        r##"//! The {consumer} consumer: what happens when a message arrives.

use fm_plugin_api::{{Consumer, ConsumerError, Init, Message, export_consumers}};
use serde::Deserialize;

/// Built once with the `[consumer_config]` table, then given each message.
pub struct {consumer} {{
    topic_part: String,
    seen: u64,
}}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {{
    /// Messages whose topic contains this are logged.
    topic_part: String,
}}

impl Consumer for {consumer} {{
    fn new(init: &Init) -> Result<Self, ConsumerError> {{
        let conf: Conf = init.config()?;
        Ok({consumer} {{
            topic_part: conf.topic_part,
            seen: 0,
        }})
    }}

    fn consume(&mut self, message: &Message) -> Result<(), ConsumerError> {{
        self.seen += 1;
        if message.topic().contains(&self.topic_part) {{
            // Shown as `{library}` in the host's log; WARNING and above by
            // default ("Logging" in fedora-messaging-rs's
            // docs/writing-consumers.md says how to show INFO).
            log::warn!("{{}} on {{}} (message {{}} here)", message.id(), message.topic(), self.seen);
        }}
        // Ok(()) acknowledges; Err(ConsumerError::Nack), Drop, halt(n) and
        // failed(reason) do what fedora-messaging's exceptions do.
        Ok(())
    }}
}}

export_consumers!({consumer});

#[cfg(test)]
mod tests {{
    use super::*;
    use fm_plugin_api::testing::{{Harness, Outcome, messages_from_file}};

    #[test]
    fn logs_the_messages_it_watches_and_acks_every_one() {{
        let mut consumer = Harness::start::<{consumer}>("{consumer}", r#"topic_part = "buildsys""#).unwrap();
        let messages = messages_from_file("tests/sample.jsonl").unwrap();
        for message in &messages {{
            assert_eq!(consumer.consume(message), Outcome::Ack);
        }}
        let logs = consumer.logs();
        assert_eq!(logs.len(), 1, "{{logs:?}}");
        assert!(logs[0].text.starts_with("m1 on org.fedoraproject.prod.buildsys"));
    }}

    #[test]
    fn a_mistake_in_consumer_config_names_the_key() {{
        let error = Harness::start::<{consumer}>("{consumer}", "topic_part = 3").err().unwrap();
        assert!(error.starts_with("consumer_config.topic_part: invalid type"), "{{error}}");
    }}
}}
"##
    );
    let sample = r#"{"body": {"build_id": 2610, "name": "kernel"}, "headers": {"fedora_messaging_schema": "base.message", "fedora_messaging_severity": 20, "sent-at": "2024-05-01T10:00:00+00:00"}, "id": "m1", "priority": 0, "queue": null, "topic": "org.fedoraproject.prod.buildsys.build.state.change"}
{"body": {"comment": "works for me"}, "headers": {"fedora_messaging_schema": "base.message", "fedora_messaging_severity": 20, "sent-at": "2024-05-01T10:00:05+00:00"}, "id": "m2", "priority": 0, "queue": null, "topic": "org.fedoraproject.prod.bodhi.update.comment"}
"#
    .to_owned();
    let config = format!(
        r#"# fedora-messaging --conf {name}.toml reconsume --file tests/sample.jsonl
# runs the consumer on the sample without a broker; `consume` runs it on
# the queues below. Installed, the library goes to
# /usr/lib64/fedora-messaging/ and the callback is "lib{library}.so:{consumer}".
amqp_url = "amqp://guest:guest@localhost:5672/%2F"
callback = "target/release/lib{library}.so:{consumer}"

[queues."{name}"]
durable = true
auto_delete = false
exclusive = false
arguments = {{}}

[[bindings]]
queue = "{name}"
exchange = "amq.topic"
routing_keys = ["org.fedoraproject.prod.buildsys.#"]

[consumer_config]
topic_part = "buildsys"
"#
    );
    vec![
        (PathBuf::from("Cargo.toml"), cargo_toml),
        (PathBuf::from("src/lib.rs"), lib_rs),
        (PathBuf::from("tests/sample.jsonl"), sample),
        (PathBuf::from(format!("{name}.toml")), config),
        (PathBuf::from(".gitignore"), "/target\n".to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_types_and_bad_ones_are_refused() {
        assert_eq!(type_name("koji-watch"), "KojiWatch");
        assert_eq!(type_name("my_saver2"), "MySaver2");
        for (taken, renamed) in [
            ("message", "MessageConsumer"),
            ("consumer", "ConsumerConsumer"),
            ("result", "ResultConsumer"),
            ("conf", "ConfConsumer"),
        ] {
            assert_eq!(type_name(taken), renamed);
        }
        assert!(check_name("koji-watch").is_ok());
        assert!(check_name("message").is_ok());
        for bad in [
            "",
            "2fast",
            "has space",
            "../escape",
            "a/b",
            "self",
            "fn",
            "std",
            "test",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
