//! The .deb that `scripts/package` builds: exactly the files the README
//! lists, the configuration as a conffile, the conflict with the Python
//! command line package, man pages and completions that work, and a host
//! that runs the packaged plugins.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use fm_e2e::*;
use serde_json::json;

/// The profile the test packages (see the workspace's Cargo.toml).
const PROFILE: &str = "package-check";

fn output(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Builds the .deb and returns its path.
fn build_deb() -> PathBuf {
    let status = Command::new(workspace_root().join("scripts/package"))
        .arg("deb")
        .env("PROFILE", PROFILE)
        .status()
        .expect("run scripts/package");
    assert!(status.success(), "scripts/package deb failed: {status}");
    let dir = workspace_root().join("target/packages");
    let version = env!("CARGO_PKG_VERSION");
    let deb = dir.join(format!("fedora-messaging-rs_{version}-1_amd64.deb"));
    assert!(deb.exists(), "no {}", deb.display());
    deb
}

#[test]
fn the_deb_installs_what_the_readme_says() {
    let deb = build_deb();
    let listing = output(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let files: BTreeSet<&str> = listing
        .lines()
        .filter(|line| !line.starts_with('d'))
        .map(|line| line.rsplit(' ').next().unwrap().trim_start_matches('.'))
        .collect();
    let commands = [
        "",
        "-consume",
        "-publish",
        "-new-plugin",
        "-reconsume",
        "-record",
        "-replay",
    ];
    let mut expected: BTreeSet<String> = [
        "/usr/bin/fedora-messaging",
        "/usr/lib/systemd/system/fm-consumer@.service",
        "/etc/fedora-messaging/config.toml",
        "/usr/lib/fedora-messaging/libprinter.so",
        "/usr/lib/fedora-messaging/libsaver.so",
        "/usr/lib/fedora-messaging/libfm_python.so",
        "/usr/lib/fedora-messaging/libfm_exec.so",
        "/usr/share/bash-completion/completions/fedora-messaging",
        "/usr/share/zsh/vendor-completions/_fedora-messaging",
        "/usr/share/fish/vendor_completions.d/fedora-messaging.fish",
        "/usr/share/doc/fedora-messaging-rs/README.md",
        "/usr/share/doc/fedora-messaging-rs/config.toml.example",
        "/usr/share/doc/fedora-messaging-rs/copyright",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    expected.extend(
        commands
            .iter()
            .map(|command| format!("/usr/share/man/man1/fedora-messaging{command}.1.gz")),
    );
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(files, expected, "{listing}");
    assert!(
        listing
            .lines()
            .any(|line| line.starts_with("-rwxr-xr-x")
                && line.ends_with("/usr/bin/fedora-messaging")),
        "{listing}"
    );

    let control = output(Command::new("dpkg-deb").arg("--field").arg(&deb));
    assert!(
        control.lines().any(|l| l == "Package: fedora-messaging-rs"),
        "{control}"
    );
    assert!(
        control.lines().any(|l| l == "Conflicts: fedora-messaging"),
        "{control}"
    );
    let dir = scratch();
    let control_dir = dir.path().join("DEBIAN");
    output(
        Command::new("dpkg-deb")
            .arg("--control")
            .arg(&deb)
            .arg(&control_dir),
    );
    assert_eq!(
        std::fs::read_to_string(control_dir.join("conffiles")).unwrap(),
        "/etc/fedora-messaging/config.toml\n"
    );

    // What is inside works.
    let root = dir.path().join("root");
    output(
        Command::new("dpkg-deb")
            .arg("--extract")
            .arg(&deb)
            .arg(&root),
    );
    check_installed(&root);
}

fn check_installed(root: &Path) {
    let host = root.join("usr/bin/fedora-messaging");
    let version = output(Command::new(&host).arg("--version"));
    assert_eq!(
        version,
        format!("fedora-messaging {}\n", env!("CARGO_PKG_VERSION"))
    );
    // The packaged host runs the packaged plugin, found by its bare name.
    let dir = scratch();
    let messages = record_file(
        dir.path(),
        &[json!({"id": "p1", "topic": "t", "body": {"hello": "package"}})],
    );
    let run = run(Command::new(&host)
        .env_remove("FEDORA_MESSAGING_CONF")
        .env(
            "FEDORA_MESSAGING_PLUGIN_PATH",
            root.join("usr/lib/fedora-messaging"),
        )
        .args(["--conf"])
        .arg(root.join("etc/fedora-messaging/config.toml"))
        .args(["reconsume", "--callback", "libprinter.so:Printer", "--file"])
        .arg(&messages));
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(run.stdout.contains("\"hello\": \"package\""), "{run:#?}");
    // A Python callback runs through the packaged bridge, found the same
    // way, with the Python named by [python].
    let python_conf = config_file(
        dir.path(),
        &format!(
            "[python]\ninterpreter = \"{}\"\n",
            fm_e2e::python::bridge_venv().join("bin/python").display()
        ),
    );
    let bridged = fm_e2e::run(
        Command::new(&host)
            .env_remove("FEDORA_MESSAGING_CONF")
            .env(
                "FEDORA_MESSAGING_PLUGIN_PATH",
                root.join("usr/lib/fedora-messaging"),
            )
            .arg("--conf")
            .arg(&python_conf)
            .args([
                "reconsume",
                "--callback",
                "fedora_messaging.example:printer",
                "--file",
            ])
            .arg(&messages),
    );
    assert_eq!(bridged.code(), 0, "{bridged:#?}");
    assert!(bridged.stdout.contains("Id: p1"), "{bridged:#?}");

    let man = output(
        Command::new("sh")
            .arg("-c")
            .arg("gzip -dc \"$1\"")
            .arg("sh")
            .arg(root.join("usr/share/man/man1/fedora-messaging-record.1.gz")),
    );
    assert!(man.contains("\\-\\-limit"), "{man}");
    output(
        Command::new("bash")
            .arg("-n")
            .arg(root.join("usr/share/bash-completion/completions/fedora-messaging")),
    );
    // The completion offers the subcommands.
    let offered = output(Command::new("bash").arg("-c").arg(format!(
        "source {}; function=$(complete -p fedora-messaging | sed -E 's/.* -F ([^ ]+) .*/\\1/'); \
         COMP_WORDS=(fedora-messaging re); COMP_CWORD=1; \
         \"$function\" fedora-messaging re fedora-messaging; echo \"${{COMPREPLY[*]}}\"",
        root.join("usr/share/bash-completion/completions/fedora-messaging")
            .display()
    )));
    assert_eq!(offered.trim(), "record replay reconsume", "{offered}");
}
