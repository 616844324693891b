//! Whether traces are exported, where, under which service name and with
//! which sampler: OpenTelemetry's standard variables, which `[tracing]`
//! overrides key by key (a value in code or a file beats the environment,
//! as OpenTelemetry's SDKs have it). Pure: the environment comes in as a
//! lookup, so every rule has a unit test.

pub use crate::config::TracingTable;

/// Which traces are recorded: OpenTelemetry's `OTEL_TRACES_SAMPLER` names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    /// The publisher's sampling decision when a message carries one, else
    /// the inner rule.
    ParentBased(Root),
}

/// A `parentbased_…` sampler's rule for a message without a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

/// Traces are exported: where, as which service, sampled how.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The full URL spans are posted to.
    pub traces_url: String,
    pub service_name: String,
    pub sampling: Sampling,
}

/// The service name when neither `[tracing]` nor `OTEL_SERVICE_NAME` says.
pub const DEFAULT_SERVICE_NAME: &str = "fedora-messaging";

/// `None` when traces are off: no endpoint is configured, or
/// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` says so. An
/// error names the key or variable and what it may be; the sampler is
/// checked even when traces are off, so that a mistake shows before the
/// endpoint is added.
pub fn settings(
    table: Option<&TracingTable>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Settings>, String> {
    let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    let table = table.cloned().unwrap_or_default();
    if env("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match env("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => {
            return Err(format!(
                "OTEL_TRACES_EXPORTER is {other:?}: this host exports traces over OTLP only; set it to \"otlp\" or \"none\", or unset it"
            ));
        }
    }
    let service_name = table
        .service_name
        .clone()
        .or_else(|| env("OTEL_SERVICE_NAME"))
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    let sampling = match &table.sampler {
        Some(name) => sampling("[tracing] sampler", name, table.sampler_arg)?,
        None => match env("OTEL_TRACES_SAMPLER") {
            Some(name) => {
                let arg = match env("OTEL_TRACES_SAMPLER_ARG") {
                    Some(text) => Some(text.trim().parse::<f64>().map_err(|_| {
                        format!("OTEL_TRACES_SAMPLER_ARG is {text:?}: give a ratio from 0 to 1")
                    })?),
                    None => None,
                };
                sampling("OTEL_TRACES_SAMPLER", &name, table.sampler_arg.or(arg))?
            }
            None => Sampling::ParentBased(Root::AlwaysOn),
        },
    };
    let traces_url = match (&table.endpoint, env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
        (Some(base), _) => with_traces_path("[tracing] endpoint", base)?,
        (None, Some(url)) => checked_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &url)?,
        (None, None) => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Some(base) => with_traces_path("OTEL_EXPORTER_OTLP_ENDPOINT", &base)?,
            None => return Ok(None),
        },
    };
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = env(name)
            && protocol.trim() != "http/protobuf"
        {
            return Err(format!(
                "{name} is {protocol:?}: this host exports over OTLP/HTTP with protobuf; set it to \"http/protobuf\", or unset it"
            ));
        }
    }
    Ok(Some(Settings {
        traces_url,
        service_name,
        sampling,
    }))
}

fn checked_url(what: &str, url: &str) -> Result<String, String> {
    let url = url.trim();
    let parsed = url::Url::parse(url).map_err(|error| {
        format!("{what} is {url:?}, not a URL ({error}): give http://HOST:4318 or https://…")
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "{what} is {url:?}: give an http:// or https:// URL of an OTLP/HTTP collector, such as http://localhost:4318"
        ));
    }
    Ok(url.to_owned())
}

/// A base endpoint with OTLP/HTTP's traces path added, as the
/// specification says for `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn with_traces_path(what: &str, base: &str) -> Result<String, String> {
    let base = checked_url(what, base)?;
    Ok(format!("{}/v1/traces", base.trim_end_matches('/')))
}

fn sampling(what: &str, name: &str, arg: Option<f64>) -> Result<Sampling, String> {
    let ratio = || -> Result<f64, String> {
        match arg {
            None => Ok(1.0),
            Some(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
            Some(ratio) => Err(format!(
                "the sampler's ratio is {ratio}: give a ratio from 0 to 1"
            )),
        }
    };
    Ok(match name.trim() {
        "always_on" => Sampling::AlwaysOn,
        "always_off" => Sampling::AlwaysOff,
        "traceidratio" => Sampling::Ratio(ratio()?),
        "parentbased_always_on" => Sampling::ParentBased(Root::AlwaysOn),
        "parentbased_always_off" => Sampling::ParentBased(Root::AlwaysOff),
        "parentbased_traceidratio" => Sampling::ParentBased(Root::Ratio(ratio()?)),
        other => {
            return Err(format!(
                "{what} is {other:?}: give always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn off_unless_an_endpoint_is_configured() {
        assert_eq!(settings(None, with_env(&[])), Ok(None));
        assert_eq!(
            settings(None, with_env(&[("OTEL_SERVICE_NAME", "x")])),
            Ok(None)
        );
    }

    #[test]
    fn the_standard_variables_configure_it() {
        let on = settings(
            None,
            with_env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                ("OTEL_SERVICE_NAME", "saver"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ]),
        );
        assert_eq!(
            on,
            Ok(Some(Settings {
                traces_url: "http://collector:4318/v1/traces".to_owned(),
                service_name: "saver".to_owned(),
                sampling: Sampling::ParentBased(Root::Ratio(0.25)),
            }))
        );
        // The traces endpoint is used as it is.
        let on = settings(
            None,
            with_env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://c/x")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(on.traces_url, "https://c/x");
        assert_eq!(on.service_name, DEFAULT_SERVICE_NAME);
        assert_eq!(on.sampling, Sampling::ParentBased(Root::AlwaysOn));
    }

    #[test]
    fn the_table_overrides_the_environment_key_by_key() {
        let table = TracingTable {
            endpoint: Some("http://file:4318".to_owned()),
            sampler: Some("traceidratio".to_owned()),
            sampler_arg: Some(0.5),
            ..TracingTable::default()
        };
        let on = settings(
            Some(&table),
            with_env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
                ("OTEL_SERVICE_NAME", "from-env"),
                ("OTEL_TRACES_SAMPLER", "always_off"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(on.traces_url, "http://file:4318/v1/traces");
        assert_eq!(on.service_name, "from-env");
        assert_eq!(on.sampling, Sampling::Ratio(0.5));
    }

    #[test]
    fn switched_off_by_the_standard_variables() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(settings(None, with_env(&[endpoint, off])), Ok(None));
        }
    }

    #[test]
    fn what_cannot_be_honoured_is_an_error_naming_it() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        for (vars, names) in [
            (
                vec![endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                vec![endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")],
                "OTEL_TRACES_EXPORTER",
            ),
            (
                vec![endpoint, ("OTEL_TRACES_SAMPLER", "sometimes")],
                "OTEL_TRACES_SAMPLER",
            ),
            (
                vec![
                    endpoint,
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ],
                "ratio is 2",
            ),
            (
                vec![
                    endpoint,
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "half"),
                ],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://c")], "http://"),
        ] {
            let error = settings(None, with_env(&vars)).unwrap_err();
            assert!(error.contains(names), "{error}");
        }
        let table = TracingTable {
            endpoint: Some("nowhere".to_owned()),
            ..TracingTable::default()
        };
        let error = settings(Some(&table), with_env(&[])).unwrap_err();
        assert!(error.starts_with("[tracing] endpoint"), "{error}");
    }
}
