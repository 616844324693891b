//! Where in the configuration file a key path was written, so that an
//! error a plugin reports about `consumer_config.build.tags[1]` can name
//! the file and line, as the host's own configuration errors do. The file
//! is read with toml's spanned parser, which keeps each key's position.

use std::path::Path;

use toml::de::{DeTable, DeValue};

/// `FILE:LINE` of `key_path` (`consumer_config.a.b[2]`: dotted keys, `[n]`
/// for an array's element) in `file`: the deepest part of the path the
/// file holds. `None` when the file cannot be read or holds none of it.
pub fn key_path_in_file(file: &Path, key_path: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let offset = key_path_offset(&text, key_path)?;
    let line = text[..offset].matches('\n').count() + 1;
    Some(format!("{}:{line}", file.display()))
}

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a.b[2][0]` as its steps; `?` (a step serde could not name) ends it.
fn steps(key_path: &str) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    for part in key_path.split('.') {
        let (key, mut indices) = match part.find('[') {
            Some(at) => (&part[..at], &part[at..]),
            None => (part, ""),
        };
        if key == "?" {
            break;
        }
        if !key.is_empty() {
            steps.push(Step::Key(key));
        }
        while let Some(rest) = indices.strip_prefix('[') {
            let Some((number, after)) = rest.split_once(']') else {
                break;
            };
            match number.parse() {
                Ok(index) => steps.push(Step::Index(index)),
                Err(_) => return steps,
            }
            indices = after;
        }
    }
    steps
}

/// The byte offset of the deepest step of `key_path` found in `text`.
fn key_path_offset(text: &str, key_path: &str) -> Option<usize> {
    let document = DeTable::parse(text).ok()?;
    let mut found = None;
    let mut here: Option<&DeValue<'_>> = None;
    let mut table = Some(document.get_ref());
    for (depth, step) in steps(key_path).into_iter().enumerate() {
        let value = match (step, table, here) {
            (Step::Key(key), Some(table), _) => {
                // fedora-messaging lower-cases top-level keys only.
                let entry = table.iter().find(|(name, _)| {
                    let name: &str = name.get_ref();
                    if depth == 0 {
                        name.eq_ignore_ascii_case(key)
                    } else {
                        name == key
                    }
                });
                let Some((name, value)) = entry else { break };
                found = Some(name.span().start);
                value
            }
            (Step::Index(index), _, Some(DeValue::Array(array))) => {
                let Some(element) = array.get(index) else {
                    break;
                };
                found = Some(element.span().start);
                element
            }
            _ => break,
        };
        here = Some(value.get_ref());
        table = match value.get_ref() {
            DeValue::Table(inner) => Some(inner),
            _ => None,
        };
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"amqp_url = "amqp://localhost"

[consumer_config]
packages = "kernel"
Label = "x"

[consumer_config.build]
tags = [
    1,
    "x",
]
"#;

    fn line_of(key_path: &str) -> Option<usize> {
        key_path_offset(FILE, key_path).map(|offset| FILE[..offset].matches('\n').count() + 1)
    }

    #[test]
    fn finds_the_line_of_each_part_of_a_key_path() {
        assert_eq!(line_of("consumer_config"), Some(3));
        assert_eq!(line_of("CONSUMER_CONFIG.packages"), Some(4));
        assert_eq!(line_of("consumer_config.Label"), Some(5));
        assert_eq!(
            line_of("consumer_config.label"),
            Some(3),
            "inner keys keep their case"
        );
        assert_eq!(line_of("consumer_config.build"), Some(7));
        assert_eq!(line_of("consumer_config.build.tags"), Some(8));
        assert_eq!(line_of("consumer_config.build.tags[1]"), Some(10));
        assert_eq!(line_of("consumer_config.build.tags[7]"), Some(8));
        assert_eq!(line_of("consumer_config.missing.deeper"), Some(3));
        assert_eq!(line_of("consumer_config.?.x"), Some(3));
        assert_eq!(line_of("nothing"), None);
    }
}
