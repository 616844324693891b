//! The command line: fedora-messaging's commands and options.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config, Source};
use crate::exit::{Exit, Fatal};
use crate::logging::LogSettings;
use crate::plugin::LoadError;
use crate::record::Recorder;
use crate::topology::Overrides;
use crate::{check, consume, engine, new_plugin, plugin, publish, reconsume, traces};

/// Where the packages install the README and the documentation.
macro_rules! doc_root {
    () => {
        "/usr/share/doc/fedora-messaging-rs/"
    };
}

/// Where the documentation is: installed by the packages, and beside the
/// README in the source.
macro_rules! docs_dir {
    () => {
        concat!(doc_root!(), "docs/")
    };
}

/// The end of a command's `--help` and man page: the document, and its
/// section, that says more.
macro_rules! documented_in {
    ($file:literal, $section:literal) => {
        concat!(
            "Documentation: the section \"",
            $section,
            "\" of ",
            docs_dir!(),
            $file,
            "\n(docs/",
            $file,
            " in the source)"
        )
    };
}

/// The end of `--help`, and of the man page.
const AFTER_HELP: &str = concat!(
    "\
Exit status (fedora-messaging's):
  0    stopped by a signal, end of input, or a consumer's halt(0)
  1    the consumer could not be loaded or built; other errors
  2    bad command line or configuration file
  10   the broker refused a queue or binding declaration
  11   another error while setting up consumption
  12   the broker cancelled the consumer
  13   the consumer failed (or panicked) on a message
  14   the broker refused the connection (credentials, vhost, TLS)
  15   the broker refused to let us consume (permissions)
  N    a consumer halted with exit code N
  121  publish: the broker returned or refused a message
  111  publish: the broker could not be reached within 30 s

Files:
  /etc/fedora-messaging/config.toml
      the default configuration
  NAME.host.toml beside the configuration file NAME.toml
      the keys only this host reads (workers, delivery_limit, amqp_urls,
      python, stop_timeout, soft_timeout, tracing), if the file exists;
      see --host-conf
  /usr/lib64/fedora-messaging, /usr/lib/fedora-messaging
      where a bare plugin file name is found

Environment:
  FEDORA_MESSAGING_CONF          the configuration file, as --conf
  FEDORA_MESSAGING_HOST_CONF     the host-only keys' file, as --host-conf
  FEDORA_MESSAGING_PLUGIN_PATH   directories searched for plugins first
  RUST_LOG                       log levels, replacing log_config's

Documentation:
  ",
    doc_root!(),
    "README.md, then in ",
    docs_dir!(),
    "
  (README.md and docs/ in the source): migrating.md (from the Python
  consumer), python-and-commands.md, writing-consumers.md, operating.md
  (exit codes, systemd, what to do when...), monitoring.md,
  configuration.md (every key), commands.md, differences.md"
);

/// fedora-messaging's default for `replay` and `reconsume`.
const DATAGREPPER_URL: &str = "https://apps.fedoraproject.org/datagrepper";

#[derive(Debug, Parser)]
#[command(
    name = "fedora-messaging",
    version,
    about = "Run fedora-messaging consumers built as shared objects",
    after_long_help = AFTER_HELP
)]
pub struct Cli {
    /// Configuration file to use instead of /etc/fedora-messaging/config.toml
    #[arg(
        long,
        env = "FEDORA_MESSAGING_CONF",
        global = true,
        value_name = "PATH"
    )]
    conf: Option<PathBuf>,

    /// File of the keys only this host reads (workers, delivery_limit,
    /// amqp_urls, python, stop_timeout, soft_timeout, tracing), so that
    /// the configuration file stays one fedora-messaging's CLI reads
    /// [default: NAME.host.toml beside the configuration file NAME.toml,
    /// if it exists]
    #[arg(
        long,
        env = "FEDORA_MESSAGING_HOST_CONF",
        global = true,
        value_name = "PATH"
    )]
    host_conf: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume messages from the broker with a consumer plugin
    #[command(after_long_help = documented_in!("operating.md", "consume"))]
    Consume(ConsumeArgs),

    /// Check the configuration and the consumer, without the broker
    ///
    /// Builds the consumer (imports a Python callback), says what it runs
    /// with and which queues consume would declare; exits 0, or as consume
    /// would at start.
    #[command(after_long_help = documented_in!("commands.md", "check"))]
    Check(CheckArgs),

    /// Record messages from the broker to a file, one JSON object a line
    #[command(after_long_help = documented_in!("commands.md", "record"))]
    Record(RecordArgs),

    /// Publish the messages of a record file (one JSON object a line, as
    /// `record` writes them)
    #[command(after_long_help = documented_in!("commands.md", "publish"))]
    Publish(PublishArgs),

    /// Replay a message from datagrepper by its id: publish it again as it
    /// was (topic_prefix is not applied)
    #[command(after_long_help = documented_in!("commands.md", "replay"))]
    Replay(ReplayArgs),

    /// Run a consumer on recorded messages, without a broker: each message
    /// of --file, or one message fetched from datagrepper by its id
    #[command(after_long_help = documented_in!("commands.md", "reconsume"))]
    Reconsume(ReconsumeArgs),

    /// Start a plugin crate: Cargo.toml, a consumer, a test through the
    /// testing kit, a sample record file and a configuration
    #[command(after_long_help = documented_in!("writing-consumers.md", "Starting a plugin crate"))]
    NewPlugin(NewPluginArgs),
}

#[derive(Debug, Args)]
struct NewPluginArgs {
    /// The crate's name, e.g. koji-watch (its consumer is KojiWatch)
    #[arg(value_name = "NAME")]
    name: String,

    /// The directory to create the crate in
    #[arg(long, value_name = "DIR", default_value = ".")]
    dir: PathBuf,

    /// Build against the fm-plugin-api source in DIR instead of the
    /// release this host loads
    #[arg(long, value_name = "DIR")]
    api: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    #[command(flatten)]
    callback: CallbackArgs,

    /// The name of the application, sent to the broker as the `app` client
    /// property
    #[arg(long, value_name = "NAME")]
    app_name: Option<String>,

    /// How many instances of the consumer run side by side, each on its
    /// own thread (default: the configuration's `workers`, else 1)
    #[arg(long, value_name = "N")]
    workers: Option<u16>,

    #[command(flatten)]
    source: SourceArgs,
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    callback: CallbackArgs,

    #[command(flatten)]
    source: SourceArgs,
}

#[derive(Debug, Args)]
struct RecordArgs {
    /// The file to write (it is truncated), or - for standard output
    #[arg(value_name = "FILE")]
    file: PathBuf,

    /// Stop after this many messages (and show a progress bar on a
    /// terminal)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,

    /// The name of the application, sent to the broker as the `app` client
    /// property
    #[arg(long, value_name = "NAME", default_value = "recorder")]
    app_name: String,

    #[command(flatten)]
    source: SourceArgs,
}

/// Where `consume` and `record` take messages from, when not from the
/// configuration.
#[derive(Debug, Args)]
struct SourceArgs {
    /// A routing key to bind with, instead of each binding's own; repeat
    /// for several
    #[arg(long, value_name = "KEY")]
    routing_key: Vec<String>,

    /// The queue to consume from, instead of the configured ones; every
    /// binding binds it (declared not durable, auto-delete, exclusive, as
    /// fedora-messaging declares it)
    #[arg(long, value_name = "NAME")]
    queue_name: Option<String>,

    /// The exchange every binding binds to, instead of its own
    #[arg(long, value_name = "NAME")]
    exchange: Option<String>,
}

impl SourceArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            routing_keys: self.routing_key.clone(),
            queue_name: self.queue_name.clone(),
            exchange: self.exchange.clone(),
        }
    }
}

#[derive(Debug, Args)]
struct PublishArgs {
    /// The exchange to publish to (default: the configuration's
    /// publish_exchange)
    #[arg(long, value_name = "NAME")]
    exchange: Option<String>,

    /// The record file, or - for standard input
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// The id of the message to fetch from datagrepper
    message_id: String,

    /// Where to fetch the message from
    #[arg(long, value_name = "URL", default_value = DATAGREPPER_URL)]
    datagrepper_url: String,
}

#[derive(Debug, Args)]
struct ReconsumeArgs {
    /// The id of a message to fetch from datagrepper
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    message_id: Option<String>,

    /// A file of messages in fedora-messaging's record format (one JSON
    /// object a line), or - for standard input
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,

    #[command(flatten)]
    callback: CallbackArgs,

    /// Where to fetch the message from
    #[arg(long, value_name = "URL", default_value = DATAGREPPER_URL)]
    datagrepper_url: String,

    /// Write what the consumer publishes to FILE (record format, one
    /// message a line, appended) instead of printing it; nothing is ever
    /// sent to a broker
    #[arg(long, value_name = "FILE")]
    publish_to: Option<PathBuf>,
}

/// Which consumer to run.
#[derive(Debug, Args)]
struct CallbackArgs {
    /// The consumer: a plugin library and a consumer it exports,
    /// e.g. libsaver.so:SaveMessage (default: the configuration's `callback`)
    #[arg(long, value_name = "LIB:Symbol")]
    callback: Option<String>,

    /// Same as --callback, and wins over it (fedora-messaging's option for
    /// a Python file, kept so existing command lines work)
    #[arg(long, value_name = "LIB:Symbol")]
    callback_file: Option<String>,
}

impl CallbackArgs {
    /// fedora-messaging's precedence: --callback-file, --callback, then
    /// the configuration.
    fn resolve(&self, config: &Config) -> Result<String, LoadError> {
        self.callback_file
            .as_ref()
            .or(self.callback.as_ref())
            .or(config.callback.as_ref())
            .cloned()
            .ok_or(LoadError::NoCallback)
    }
}

/// Runs the command line and returns the process's exit code.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return error.exit_code();
        }
    };
    match execute(&cli) {
        Ok(exit) => exit.code(),
        Err(fatal) => {
            eprintln!("Error: {fatal}");
            fatal.exit.code()
        }
    }
}

fn execute(cli: &Cli) -> Result<Exit, Fatal> {
    let source = match &cli.conf {
        Some(path) => Source::Given(path.clone()),
        None => Source::Default,
    };
    let (config, host_file) = Config::load(&source, cli.host_conf.as_deref())
        .map_err(|error| Fatal::new(Exit::Usage, error.to_string()))?;
    let mut log_settings = LogSettings::from_log_config(config.log_config.as_ref());
    if matches!(&cli.command, Command::Check(_)) {
        // What the check finds is said at INFO.
        log_settings.at_least(log::LevelFilter::Info);
    }
    if matches!(&cli.command, Command::Record(args) if args.file == std::path::Path::new("-")) {
        // The recording owns standard output.
        log_settings.to_stderr = true;
    }
    log_settings.install();
    for warning in config.ignored_keys() {
        log::warn!("{warning}");
    }
    // Debug, not info: fedora-messaging logs this before its logging is
    // set up, so its users never see it by default either.
    if source == Source::Default && !std::path::Path::new(config::DEFAULT_PATH).exists() {
        log::debug!(
            "The configuration file, {}, does not exist.",
            config::DEFAULT_PATH
        );
    }
    let file_read = match &source {
        Source::Given(path) => Some(path.as_path()),
        Source::Default => Some(std::path::Path::new(config::DEFAULT_PATH)).filter(|p| p.exists()),
    };
    // Traces follow what goes through the broker: `check`, `reconsume`
    // and `new-plugin` send nothing. The guard exports the last spans as
    // the command ends.
    let _exporting = match &cli.command {
        Command::Consume(_) | Command::Record(_) | Command::Publish(_) | Command::Replay(_) => {
            traces::start_configured(config.tracing.as_ref())
                .map_err(|reason| Fatal::new(Exit::Usage, reason))?
        }
        _ => None,
    };
    match &cli.command {
        Command::Consume(args) => {
            let callback = args.callback.resolve(&config)?;
            plugin::describe_configuration(file_read, host_file.as_deref(), Some(&callback));
            let workers = args.workers.unwrap_or(config.workers);
            config::check_workers(workers)
                .map_err(|reason| Fatal::new(Exit::Usage, format!("--workers {reason}")))?;
            consume::run(
                &config,
                &callback,
                workers,
                &consume::ConsumeArgs {
                    app_name: args.app_name.as_deref(),
                    overrides: args.source.overrides(),
                },
            )
        }
        Command::Check(args) => {
            let callback = args.callback.resolve(&config)?;
            plugin::describe_configuration(file_read, host_file.as_deref(), Some(&callback));
            check::run(
                &config,
                &callback,
                &args.source.overrides(),
                file_read,
                host_file.as_deref(),
            )
        }
        Command::Record(args) => consume::run_with(
            &config,
            &consume::ConsumeArgs {
                app_name: Some(&args.app_name),
                overrides: args.source.overrides(),
            },
            || {
                let recorder = Recorder::create(&args.file, args.limit)?;
                Ok((
                    "Recorder".to_owned(),
                    vec![engine::message::Source::Built(Box::new(recorder))],
                ))
            },
        ),
        Command::Publish(args) => publish::run(&config, args.exchange.as_deref(), &args.file),
        Command::Replay(args) => publish::replay(&config, &args.datagrepper_url, &args.message_id),
        Command::NewPlugin(args) => {
            let api = match &args.api {
                Some(path) => new_plugin::Api::Path(path),
                None => new_plugin::Api::Release,
            };
            new_plugin::run(&args.name, &args.dir, &api)
        }
        Command::Reconsume(args) => {
            let callback = args.callback.resolve(&config)?;
            plugin::describe_configuration(file_read, host_file.as_deref(), Some(&callback));
            let input = match (&args.file, &args.message_id) {
                (Some(file), _) => reconsume::Input::File(file),
                (None, Some(message_id)) => reconsume::Input::Datagrepper {
                    url: &args.datagrepper_url,
                    message_id,
                },
                (None, None) => {
                    return Err(Fatal::new(Exit::Usage, "give a MESSAGE_ID or --file FILE"));
                }
            };
            reconsume::run(&config, &callback, input, args.publish_to.as_deref())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;

    /// The headings of a document of `docs/`, as written.
    fn headings(file: &str) -> Vec<String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs")
            .join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        text.lines()
            .filter(|line| line.starts_with('#') && line.contains("# "))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn each_command_points_to_a_section_its_document_has() {
        let cli = Cli::command();
        for command in cli.get_subcommands().filter(|c| c.get_name() != "help") {
            let help = command
                .get_after_long_help()
                .unwrap_or_else(|| panic!("{} has no pointer", command.get_name()))
                .to_string();
            let section = help
                .split('"')
                .nth(1)
                .unwrap_or_else(|| panic!("no section in {help:?}"));
            let file = help
                .split("(docs/")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .unwrap_or_else(|| panic!("no file in {help:?}"));
            assert!(
                headings(file)
                    .iter()
                    .any(|heading| heading.contains(section)),
                "{}: no heading of {file} says {section:?}",
                command.get_name()
            );
        }
    }

    #[test]
    fn the_documents_the_help_lists_exist() {
        let listed = AFTER_HELP
            .split("Documentation:")
            .nth(1)
            .expect("a Documentation section");
        let files: Vec<&str> = listed
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|word| word.ends_with(".md") && !word.contains(['/', '(']))
            .collect();
        assert!(files.len() >= 8, "{files:?}");
        for file in files {
            assert!(!headings(file).is_empty(), "{file}");
        }
    }
}
