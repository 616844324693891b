//! The alert rules of `contrib/prometheus`, tested by `promtool test rules`
//! on what a real host's `/metrics` said.
//!
//! A test scrapes the host twice while it is in the state an alert is
//! about (stuck on a message, stalled, blocked, …). [`assert_alerts`] then
//! writes promtool's input as if that state lasted 45 minutes: the second
//! scrape's values, with counters and histograms going on at the rate seen
//! between the two scrapes, an age (a gauge in `_seconds`) that grew with
//! the clock between them growing on with it, and every other gauge
//! held. It asks, at minute 40, for exactly the named alerts to
//! fire, each with its labels and annotations, and for every other alert
//! of the file to stay silent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};
use yaml_rust2::{Yaml, YamlLoader};

use crate::{http_get, workspace_root};

/// The scrape job the rules expect, and the instance the tests say.
pub const JOB: &str = "fedora-messaging";
pub const INSTANCE: &str = "consumer.example:9100";

/// Minutes of input series, and the minute the alerts are looked at.
const MINUTES: usize = 45;
const EVAL_MINUTE: usize = 40;

/// The alert rules file.
pub fn rules_file() -> PathBuf {
    workspace_root().join("contrib/prometheus/fedora-messaging.rules.yml")
}

/// One answer of `/metrics`, and when it was taken.
pub struct Scrape {
    pub at: Instant,
    pub text: String,
}

/// `GET /metrics` on the host's monitoring `address`.
pub fn scrape(address: &str) -> Scrape {
    let (status, text) = http_get(address, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{text}");
    Scrape {
        at: Instant::now(),
        text,
    }
}

/// Every metric name the host exports, from the `# TYPE` lines (which are
/// there even when a family has no series yet): a histogram's as its
/// `_bucket`, `_sum` and `_count` series.
pub fn exported_names(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE NAME KIND");
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_owned());
        }
    }
    names
}

/// Every `fedora_messaging_…` name `text` mentions.
pub fn mentioned_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("fedora_messaging_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// An alert of the rules file: its name, labels and annotations.
struct Rule {
    name: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn rules() -> Vec<Rule> {
    let text = std::fs::read_to_string(rules_file()).expect("the rules file");
    let documents = YamlLoader::load_from_str(&text).expect("the rules file is YAML");
    let strings = |yaml: &Yaml| -> BTreeMap<String, String> {
        yaml.as_hash()
            .into_iter()
            .flatten()
            .map(|(key, value)| {
                let text = value.as_str().expect("a string");
                (key.as_str().expect("a key").to_owned(), text.to_owned())
            })
            .collect()
    };
    let mut rules = Vec::new();
    for group in documents[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            rules.push(Rule {
                name: rule["alert"].as_str().expect("alert rules only").to_owned(),
                labels: strings(&rule["labels"]),
                annotations: strings(&rule["annotations"]),
            });
        }
    }
    rules
}

/// A series line of the text format with the job's and instance's labels
/// added: `name{a="b"} 1` → (`name{a="b",job=…,instance=…}`, 1).
fn labelled(line: &str) -> (String, String, f64) {
    let (series, value) = line.rsplit_once(' ').expect("NAME VALUE");
    let value: f64 = value.parse().expect("a number");
    let ours = format!("job=\"{JOB}\",instance=\"{INSTANCE}\"");
    let (name, selector) = match series.split_once('{') {
        Some((name, labels)) => (name, format!("{name}{{{ours},{labels}")),
        None => (series, format!("{series}{{{ours}}}")),
    };
    (name.to_owned(), selector, value)
}

/// How a family's value goes on while a state lasts.
#[derive(Clone, Copy, PartialEq)]
enum Course {
    /// A counter or histogram: at the rate seen.
    Counted,
    /// An age: with the clock, if it grew with it between the scrapes
    /// (the same message still in hand), else held.
    Age,
    Held,
}

fn courses(metrics: &str) -> BTreeMap<String, Course> {
    let mut courses = BTreeMap::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE NAME KIND");
            let course = match kind {
                "counter" | "histogram" => Course::Counted,
                _ if name.ends_with("_seconds") => Course::Age,
                _ => Course::Held,
            };
            courses.insert(name.to_owned(), course);
        }
    }
    courses
}

/// promtool's input series for the host staying as it was from `first` to
/// `second`, plus Prometheus's own `up` (1 while the host answers).
fn input_series(first: &Scrape, second: &Scrape) -> Vec<Value> {
    let seconds = second.at.duration_since(first.at).as_secs_f64();
    assert!(seconds > 0.5, "scrapes too close together to see a rate");
    let before: BTreeMap<String, f64> = samples(&first.text)
        .map(|(_, series, value)| (series, value))
        .collect();
    let courses = courses(&second.text);
    let course_of = |name: &str| {
        let histogram_part = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .and_then(|family| courses.get(family))
            .filter(|course| **course == Course::Counted);
        histogram_part
            .or(courses.get(name))
            .copied()
            .unwrap_or(Course::Held)
    };
    let mut series = vec![json!({
        "series": format!("up{{job=\"{JOB}\",instance=\"{INSTANCE}\"}}"),
        "values": format!("1x{MINUTES}"),
    })];
    for (name, selector, value) in samples(&second.text) {
        let grew = before.get(&selector).map(|earlier| value - earlier);
        let per_minute = match (course_of(&name), grew) {
            (Course::Counted, Some(grew)) => grew / seconds * 60.0,
            (Course::Age, Some(grew)) if grew >= seconds / 2.0 => 60.0,
            _ => 0.0,
        };
        let values: Vec<String> = (0..=MINUTES)
            .map(|minute| format!("{}", (value + per_minute * minute as f64).max(0.0)))
            .collect();
        series.push(json!({"series": selector, "values": values.join(" ")}));
    }
    series
}

fn samples(metrics: &str) -> impl Iterator<Item = (String, String, f64)> + '_ {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(labelled)
}

/// Asserts with promtool that, were the host to stay as it was from
/// `first` to `second`, exactly the alerts in `firing` fire and no other;
/// returns promtool's output. `scenario` names the files kept under
/// `target/alert-rules/` for a look after a failure.
pub fn assert_alerts(scenario: &str, first: &Scrape, second: &Scrape, firing: &[&str]) -> String {
    run_promtool(scenario, input_series(first, second), firing)
}

/// As [`assert_alerts`], for a host Prometheus cannot reach: only `up`,
/// at 0, and no series of the host's.
pub fn assert_alerts_when_unreachable(firing: &[&str]) -> String {
    let up = json!({
        "series": format!("up{{job=\"{JOB}\",instance=\"{INSTANCE}\"}}"),
        "values": format!("0x{MINUTES}"),
    });
    run_promtool("unreachable", vec![up], firing)
}

fn run_promtool(scenario: &str, series: Vec<Value>, firing: &[&str]) -> String {
    let rules = rules();
    for name in firing {
        assert!(
            rules.iter().any(|rule| rule.name == *name),
            "no alert {name} in the rules file"
        );
    }
    let tests: Vec<Value> = rules
        .iter()
        .map(|rule| {
            let expected: Vec<Value> = if firing.contains(&rule.name.as_str()) {
                let mut labels = rule.labels.clone();
                labels.insert("job".into(), JOB.into());
                labels.insert("instance".into(), INSTANCE.into());
                let annotations: BTreeMap<&String, String> = rule
                    .annotations
                    .iter()
                    .map(|(key, text)| (key, rendered(text)))
                    .collect();
                vec![json!({"exp_labels": labels, "exp_annotations": annotations})]
            } else {
                Vec::new()
            };
            json!({
                "eval_time": format!("{EVAL_MINUTE}m"),
                "alertname": rule.name,
                "exp_alerts": expected,
            })
        })
        .collect();
    // YAML is a superset of JSON: promtool reads this as it is.
    let test = json!({
        "rule_files": [rules_file()],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": tests}],
    });
    let dir = crate::target_dir().join("alert-rules");
    std::fs::create_dir_all(&dir).expect("target/alert-rules");
    let path = dir.join(format!("{scenario}.test.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&test).unwrap()).expect("the test file");
    let output = Command::new(promtool())
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .expect("run promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool test rules {} ({scenario}, expecting {firing:?}):\n{said}",
        path.display()
    );
    println!("{scenario}: expecting {firing:?}\n{said}");
    said
}

/// An annotation as Prometheus renders it for the tests' instance: the
/// rules' templates use `$labels.instance` only.
fn rendered(template: &str) -> String {
    let text = template.replace("{{ $labels.instance }}", INSTANCE);
    assert!(
        !text.contains("{{"),
        "an annotation template the tests do not render: {template}"
    );
    text
}

/// promtool, from Debian's `prometheus` package (scripts/test installs it).
fn promtool() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("promtool"))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("promtool is not installed: `apt-get install prometheus` (scripts/test does it)")
    })
}
