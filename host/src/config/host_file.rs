//! The keys only this host reads, kept out of the file it shares with
//! fedora-messaging's CLI: Python's CLI refuses a key it does not know, so
//! during a rollout the shared file holds fedora-messaging's keys alone,
//! and the host-only ones go in a file of their own: `--host-conf PATH`
//! (`FEDORA_MESSAGING_HOST_CONF`), or else `NAME.host.toml` beside the
//! configuration file `NAME.toml`, read when it exists. Its keys join the
//! shared file's; a key set in both is an error, and so is a key
//! fedora-messaging knows.

use std::path::{Path, PathBuf};

/// The top-level keys only this host reads.
pub const HOST_ONLY_KEYS: [&str; 7] = [
    "workers",
    "delivery_limit",
    "amqp_urls",
    "python",
    "stop_timeout",
    "soft_timeout",
    "tracing",
];

/// `NAME.host.toml` beside the configuration file `NAME.toml` (or `NAME`).
pub fn beside(config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map_or_else(|| "config".into(), |stem| stem.to_string_lossy());
    config.with_file_name(format!("{stem}.host.toml"))
}

/// Which host file is read, if any: the one given (which must exist), or
/// the one beside the configuration file when it exists.
pub fn choose(given: Option<&Path>, config_file: &Path) -> Result<Option<PathBuf>, String> {
    match given {
        Some(path) if path.is_file() => Ok(Some(path.to_owned())),
        Some(_) => Err(
            "is not a file: check the --host-conf option or FEDORA_MESSAGING_HOST_CONF".to_owned(),
        ),
        None => Ok(Some(beside(config_file)).filter(|path| path.is_file())),
    }
}

/// The host file's keys (lower-cased, as fedora-messaging reads the top
/// level), checked: each is one only this host reads, and none is set in
/// `shared` as well.
pub fn keys(text: &str, shared: &toml::Table) -> Result<toml::Table, String> {
    let table: toml::Table = toml::from_str(text).map_err(|error| error.message().to_owned())?;
    let mut keys = toml::Table::new();
    for (key, value) in table {
        let key = key.to_lowercase();
        if !HOST_ONLY_KEYS.contains(&key.as_str()) {
            return Err(format!(
                "`{key}` is not a key only this host reads ({}): put it in the shared configuration file",
                HOST_ONLY_KEYS.join(", ")
            ));
        }
        if shared
            .keys()
            .any(|shared| shared.eq_ignore_ascii_case(&key))
        {
            return Err(format!(
                "`{key}` is set here and in the shared configuration file: keep one"
            ));
        }
        keys.insert(key, value);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_file_is_beside_the_configuration_file() {
        assert_eq!(
            beside(Path::new("/etc/fedora-messaging/config.toml")),
            Path::new("/etc/fedora-messaging/config.host.toml")
        );
        assert_eq!(beside(Path::new("koji")), Path::new("koji.host.toml"));
    }

    #[test]
    fn only_host_keys_and_each_in_one_file() {
        let shared: toml::Table =
            toml::from_str("amqp_url = 'amqp://x/'\nSTOP_TIMEOUT = 5\n").unwrap();
        let keys = keys(
            "Workers = 4\n[python]\ninterpreter = '/srv/venv/bin/python'\n",
            &shared,
        )
        .unwrap();
        assert_eq!(keys["workers"].as_integer(), Some(4));
        assert!(keys.contains_key("python"));
        let error = super::keys("amqp_url = 'amqp://y/'\n", &shared).unwrap_err();
        assert!(
            error.contains("put it in the shared configuration file"),
            "{error}"
        );
        let error = super::keys("stop_timeout = 9\n", &shared).unwrap_err();
        assert!(error.contains("keep one"), "{error}");
    }
}
