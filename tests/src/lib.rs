//! The end-to-end tests' harness: builds what the tests run (the host, the
//! workspace's plugins, the out-of-tree fixtures) once per test binary, and
//! runs the real `fedora-messaging` binary with a deadline.
//!
//! Each test reads as a scenario: write a config and a record file, run the
//! binary, look at its exit code, output and files.

pub mod alerts;
pub mod broker;
pub mod nodes;
pub mod process;
pub mod proxy;
pub mod python;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long one run of the binary may take before the test fails.
pub const RUN_DEADLINE: Duration = Duration::from_secs(150);

/// The repository's root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where cargo builds, and where tests leave what they report.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The cargo running these tests, started in the workspace's root (set
/// `current_dir` to run it in another crate, where that crate's
/// `.cargo/config.toml` applies).
pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

fn run_cargo(args: &[&str]) {
    run_cargo_in(&workspace_root(), args);
}

/// Runs cargo in `dir`, where that directory's `.cargo/config.toml` applies.
fn run_cargo_in(dir: &Path, args: &[&str]) {
    succeed(cargo().current_dir(dir).args(args));
}

fn succeed(command: &mut Command) {
    let status = command
        .status()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(status.success(), "{command:?} failed: {status}");
}

/// Builds the host and the workspace's plugins (debug), once.
fn built_workspace() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            run_cargo(&["build", "--workspace", "--lib", "--bins"]);
            target_dir().join("debug")
        })
        .clone()
}

/// The `fedora-messaging` binary.
pub fn host_binary() -> PathBuf {
    built_workspace().join("fedora-messaging")
}

/// A plugin of the workspace, by crate name: `plugin("test_consumers")`.
pub fn plugin(lib_name: &str) -> PathBuf {
    built_workspace().join(format!("lib{lib_name}.so"))
}

/// Plugins built outside the workspace, each as its author would.
#[derive(Debug, Clone, Copy)]
pub enum OutOfTree {
    /// `examples/third-party-consumer`, exporting `TopicCounter`.
    ThirdParty,
    /// Built against a plugin-api whose message layout differs.
    ChangedAbi,
    /// Built against a plugin-api whose host services differ.
    ChangedServices,
    /// Built with `panic = "abort"`.
    PanicAbort,
}

/// Builds the out-of-tree plugins (once) and returns one's path.
pub fn out_of_tree_plugin(which: OutOfTree) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let target = target_dir().join("out-of-tree");
        let target = target.to_str().expect("a UTF-8 target path");
        run_cargo_in(
            &workspace_root().join("examples/third-party-consumer"),
            &["build", "--target-dir", target],
        );
        run_cargo(&[
            "build",
            "--manifest-path",
            "tests/fixtures/Cargo.toml",
            "-p",
            "changed-abi-plugin",
            "--target-dir",
            target,
        ]);
        // On its own: built together, the two fixtures' plugin-api
        // features would unify.
        run_cargo(&[
            "build",
            "--manifest-path",
            "tests/fixtures/Cargo.toml",
            "-p",
            "changed-services-plugin",
            "--target-dir",
            target,
        ]);
        // Only the plugin's own crate is built with abort, as a plugin
        // author's `panic = "abort"` profile would build its cdylib.
        run_cargo(&[
            "rustc",
            "--manifest-path",
            "tests/fixtures/Cargo.toml",
            "-p",
            "panic-abort-plugin",
            "--lib",
            "--target-dir",
            target,
            "--",
            "-C",
            "panic=abort",
        ]);
        PathBuf::from(target).join("debug")
    });
    dir.join(match which {
        OutOfTree::ThirdParty => "libtopic_counter.so",
        OutOfTree::ChangedAbi => "libchanged_abi_plugin.so",
        OutOfTree::ChangedServices => "libchanged_services_plugin.so",
        OutOfTree::PanicAbort => "libpanic_abort_plugin.so",
    })
}

/// A past revision of the plugin interface: a commit of this repository
/// whose plugins and host are built from its tree (taken from the history
/// into `target/revision-N/`, never kept in the tree) to hold later hosts
/// and plugins to it.
pub struct Revision {
    pub number: u32,
    commit: &'static str,
    /// The commit's subject, to find it by should the history have been
    /// rewritten on its way to another clone.
    subject: &'static str,
}

/// Revision 1, the first one plugins were built against. Its plugins must
/// load in every later host.
pub const REVISION_1: Revision = Revision {
    number: 1,
    commit: "6c036cb64debdc1547e2a26ccc55e0283fe0b07a",
    subject: "One path for waiting after a lost connection and after a refused re-declaration",
};

/// Revision 2 (fm-plugin-api 0.1.1, publishing), its last commit.
pub const REVISION_2: Revision = Revision {
    number: 2,
    commit: "2a50ec37888ea97915857fcc5d2e5b27de7b2424",
    subject: "json: UTF-8 is checked only in string runs that are not ASCII",
};

/// Revision 3 (fm-plugin-api 0.1.2, the host's configuration and the
/// Python bridge), its last commit.
pub const REVISION_3: Revision = Revision {
    number: 3,
    commit: "a8caaa0d1d29e14774dd14ca5b7bee53f936edeb",
    subject: "Re-read mends: one next_answer serves Python's logs and publishes for the start, each message and the other threads' reader",
};

/// Revision 4 (fm-plugin-api 0.1.3, taking the next message ahead), its
/// last commit.
pub const REVISION_4: Revision = Revision {
    number: 4,
    commit: "486326ae3b70740872953950afd0a1963fef65c6",
    subject: "Alert rules and a Grafana dashboard, tested by promtool on the real host",
};

impl Revision {
    /// The commit, or the commit with its subject.
    fn find_commit(&self, root: &Path) -> String {
        let git = |args: &[&str]| {
            Command::new("git")
                .arg("-C")
                .arg(root)
                .args(args)
                .output()
                .ok()
                .filter(|output| output.status.success())
                .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        };
        if git(&["cat-file", "-e", &format!("{}^{{commit}}", self.commit)]).is_some() {
            return self.commit.to_owned();
        }
        git(&["log", "--all", "--format=%H", "-F", "--grep", self.subject, "-1"])
            .filter(|commit| !commit.is_empty())
            .unwrap_or_else(|| {
                panic!(
                    "commit {} (plugin interface revision {}) is not in this clone: fetch the whole history",
                    self.commit, self.number
                )
            })
    }

    /// The commit's tree in `target/revision-N/source`, and the target
    /// directory its builds use (its own: its plugin-api must not replace
    /// the workspace's in the main one).
    fn tree(&self) -> (PathBuf, PathBuf) {
        let root = workspace_root();
        let commit = self.find_commit(&root);
        let dir = target_dir().join(format!("revision-{}", self.number));
        let (source, target) = (dir.join("source"), dir.join("target"));
        // Kept between runs (with its build) while it is the same commit:
        // fresh files would make cargo rebuild its crates.
        let marker = dir.join("commit");
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(commit.as_str()) {
            return (source, target);
        }
        let _ = std::fs::remove_dir_all(&source);
        std::fs::create_dir_all(&source).expect("create the revision's source directory");
        let archive = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "git -C '{}' archive {commit} | tar -x -C '{}'",
                root.display(),
                source.display()
            ))
            .status()
            .expect("run git archive");
        assert!(archive.success(), "git archive of {commit} failed");
        std::fs::write(&marker, &commit).expect("write the revision's marker");
        (source, target)
    }

    /// Builds `packages` of the revision's tree; its build directory.
    fn build(&self, packages: &[&str]) -> PathBuf {
        let (source, target) = self.tree();
        let manifest = source.join("Cargo.toml");
        let mut args = vec![
            "build",
            "--manifest-path",
            manifest.to_str().expect("a UTF-8 path"),
            "--target-dir",
            target.to_str().expect("a UTF-8 path"),
        ];
        for package in packages {
            args.extend(["-p", package]);
        }
        // Only loaded, never debugged: debug info would triple the disk
        // these two old trees take.
        succeed(cargo().env("CARGO_PROFILE_DEV_DEBUG", "false").args(&args));
        target.join("debug")
    }

    /// Built once per test process and revision.
    fn built(&self, what: usize, packages: &[&str]) -> PathBuf {
        static BUILT: [[OnceLock<PathBuf>; 2]; 4] = [
            [OnceLock::new(), OnceLock::new()],
            [OnceLock::new(), OnceLock::new()],
            [OnceLock::new(), OnceLock::new()],
            [OnceLock::new(), OnceLock::new()],
        ];
        let index = usize::try_from(self.number - 1).expect("a small revision number");
        BUILT[index][what]
            .get_or_init(|| self.build(packages))
            .clone()
    }

    /// One of the revision's plugins (`printer`, `saver`, `test_consumers`,
    /// from revision 3 on the Python bridge, `fm_python`, and from revision
    /// 4 on Exec, `fm_exec`).
    pub fn plugin(&self, lib_name: &str) -> PathBuf {
        let mut packages = vec!["printer", "saver", "test-consumers"];
        if self.number >= 3 {
            packages.push("fm-python");
        }
        if self.number >= 4 {
            packages.push("fm-exec");
        }
        self.built(0, &packages).join(format!("lib{lib_name}.so"))
    }

    /// The revision's `fedora-messaging` host, as [`fedora_messaging`]
    /// runs the current one.
    pub fn fedora_messaging(&self) -> Command {
        command_for(&self.built(1, &["fm-host"]).join("fedora-messaging"))
    }
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The exit code; a test fails if the process died of a signal.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {self:#?}"))
    }

    /// Both streams, for assertions that do not care which.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// A command line for the binary, with no inherited configuration: each
/// test says which config it uses.
pub fn fedora_messaging() -> Command {
    command_for(&host_binary())
}

fn command_for(binary: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .env_remove("FEDORA_MESSAGING_CONF")
        .env_remove("FEDORA_MESSAGING_PLUGIN_PATH")
        .env_remove("RUST_LOG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null());
    command
}

/// Runs `command` to completion, killing it and failing the test if it
/// takes longer than [`RUN_DEADLINE`].
pub fn run(command: &mut Command) -> Run {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
    let stdout = drain(&mut child, true);
    let stderr = drain(&mut child, false);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if started.elapsed() > RUN_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {RUN_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn drain(child: &mut Child, stdout: bool) -> std::thread::JoinHandle<String> {
    let mut stream: Box<dyn Read + Send> = if stdout {
        Box::new(child.stdout.take().expect("piped stdout"))
    } else {
        Box::new(child.stderr.take().expect("piped stderr"))
    };
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    })
}

/// A scratch directory for one test, removed afterwards.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fm-e2e-")
        .tempdir()
        .expect("a temporary directory")
}

/// Writes `lines` as a record file and returns its path.
pub fn record_file(dir: &Path, lines: &[serde_json::Value]) -> PathBuf {
    let path = dir.join("messages.jsonl");
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(&path, text).expect("write the record file");
    path
}

/// Writes a configuration file and returns its path.
pub fn config_file(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).expect("write the config");
    path
}

/// `--callback` for the test plugin's `Scripted` consumer, which does what
/// each message's body says.
pub fn scripted() -> String {
    format!("{}:Scripted", plugin("test_consumers").display())
}

/// A directory as systemd gives a unit's credentials
/// (`$CREDENTIALS_DIRECTORY`), holding the tests' `delivery-limit-secret`.
pub fn test_credentials() -> PathBuf {
    workspace_root().join("tests/fixtures/credentials")
}

/// [`scripted_consume`] as a systemd unit with the tests' credentials
/// runs it: `[delivery_limit]` finds its secret there.
pub fn limited_consume(conf: &Path) -> Command {
    let mut command = scripted_consume(conf);
    command.env("CREDENTIALS_DIRECTORY", test_credentials());
    command
}

/// How many times Scripted started message `id` in `output`.
pub fn scripted_starts(output: &str, id: &str) -> usize {
    output
        .lines()
        .filter(|line| line.contains("message #") && line.contains(&format!("({id}):")))
        .count()
}

/// `consume` with the configuration `conf` and the test consumer Scripted.
pub fn scripted_consume(conf: &Path) -> Command {
    let mut command = fedora_messaging();
    command
        .arg("--conf")
        .arg(conf)
        .args(["consume", "--callback"])
        .arg(scripted());
    command
}

/// The outcome lines `reconsume` prints (`ID OUTCOME`), in order.
pub fn outcome_lines(run: &Run) -> Vec<String> {
    run.stdout
        .lines()
        .filter(|line| !line.starts_with('[') && !line.starts_with("INSPECT "))
        .map(str::to_owned)
        .collect()
}

/// Serves `answer` once with `status` on 127.0.0.1 and returns the base URL
/// and a handle giving the request line it received.
pub fn serve_once(
    status: &'static str,
    answer: String,
) -> (String, std::thread::JoinHandle<String>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/datagrepper", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        // Read the rest of the head so the client sees a clean exchange.
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        )
        .unwrap();
        request_line.trim_end().to_owned()
    });
    (url, server)
}

/// `GET path` on `address` (a monitoring port); returns the status line
/// and the body.
pub fn http_get(address: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the monitoring port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// The ids in a file the saver plugin wrote (one record line a message),
/// in order, duplicates included; nothing if there is no file yet.
pub fn saved_ids(saved: &Path) -> Vec<String> {
    std::fs::read_to_string(saved)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|line| line["id"].as_str().map(str::to_owned))
        .collect()
}

/// How many of `ids` repeat an earlier one.
pub fn duplicates(ids: &[String]) -> usize {
    ids.len() - ids.iter().collect::<std::collections::HashSet<_>>().len()
}

/// Whether process `pid` is gone (or a zombie waiting for its reaper)
/// within `timeout`: an orphan is reaped by whoever inherits it, which
/// takes a moment.
pub fn gone_within(pid: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let gone = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
        };
        if gone || Instant::now() >= deadline {
            return gone;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a
/// `[monitoring]` the test then queries.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}
