//! The packages `scripts/package` builds. The .deb: exactly the files the
//! documentation lists (with the documentation itself, whose links resolve
//! inside the package), the configuration as a conffile, the conflict with the
//! Python command line package, man pages and completions that work, and
//! a host that runs the packaged plugins. The .rpm: the same files at
//! Fedora's paths. The development packages: fm-plugin-api in the system
//! cargo registry, from which a plugin builds offline.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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

/// What `scripts/package` builds: the host's package and the development
/// package, as .deb and .rpm.
struct Packages {
    host_deb: PathBuf,
    devel_deb: PathBuf,
    host_rpm: PathBuf,
    devel_rpm: PathBuf,
}

/// Builds the packages, once for all the tests here (the script rebuilds
/// the trees it packs, so two runs at once would trip over each other).
fn built_packages() -> &'static Packages {
    static BUILT: OnceLock<Packages> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(workspace_root().join("scripts/package"))
            .env("PROFILE", PROFILE)
            .status()
            .expect("run scripts/package");
        assert!(status.success(), "scripts/package failed: {status}");
        let dir = workspace_root().join("target/packages");
        let version = env!("CARGO_PKG_VERSION");
        let packages = Packages {
            host_deb: dir.join(format!("fedora-messaging-rs_{version}-1_amd64.deb")),
            devel_deb: dir.join(format!("librust-fm-plugin-api-dev_{version}-1_amd64.deb")),
            host_rpm: dir.join(format!("fedora-messaging-rs-{version}-1.x86_64.rpm")),
            devel_rpm: dir.join(format!("rust-fm-plugin-api-devel-{version}-1.noarch.rpm")),
        };
        for package in [
            &packages.host_deb,
            &packages.devel_deb,
            &packages.host_rpm,
            &packages.devel_rpm,
        ] {
            assert!(package.exists(), "no {}", package.display());
        }
        packages
    })
}

/// The files (not directories) a .deb installs.
fn deb_files(deb: &Path) -> BTreeSet<String> {
    output(Command::new("dpkg-deb").arg("--contents").arg(deb))
        .lines()
        .filter(|line| !line.starts_with('d'))
        .map(|line| {
            line.rsplit(' ')
                .next()
                .unwrap()
                .trim_start_matches('.')
                .to_owned()
        })
        .collect()
}

/// Unpacks `deb` under `root`, as installing it would.
fn extract(deb: &Path, root: &Path) {
    output(Command::new("dpkg-deb").arg("--extract").arg(deb).arg(root));
}

#[test]
fn the_deb_installs_what_the_readme_says() {
    let deb = &built_packages().host_deb;
    let listing = output(Command::new("dpkg-deb").arg("--contents").arg(deb));
    let files = deb_files(deb);
    let commands = [
        "",
        "-check",
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
        "/usr/share/doc/fedora-messaging-rs/contrib/prometheus/fedora-messaging.rules.yml",
        "/usr/share/doc/fedora-messaging-rs/contrib/grafana/fedora-messaging.json",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    expected.extend(
        commands
            .iter()
            .map(|command| format!("/usr/share/man/man1/fedora-messaging{command}.1.gz")),
    );
    // The documentation the README links to, every file of docs/.
    expected.extend(
        documents()
            .into_iter()
            .map(|name| format!("/usr/share/doc/fedora-messaging-rs/docs/{name}")),
    );
    assert_eq!(files, expected, "{listing}");
    assert!(
        listing
            .lines()
            .any(|line| line.starts_with("-rwxr-xr-x")
                && line.ends_with("/usr/bin/fedora-messaging")),
        "{listing}"
    );

    let control = output(Command::new("dpkg-deb").arg("--field").arg(deb));
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
            .arg(deb)
            .arg(&control_dir),
    );
    assert_eq!(
        std::fs::read_to_string(control_dir.join("conffiles")).unwrap(),
        "/etc/fedora-messaging/config.toml\n"
    );

    // What is inside works.
    let root = dir.path().join("root");
    extract(deb, &root);
    check_installed(&root);
}

/// The names of the tree's documents, `docs/*.md`.
fn documents() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(workspace_root().join("docs"))
        .expect("docs/")
        .map(|entry| entry.expect("an entry of docs/").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "{names:?}");
    names
}

fn check_installed(root: &Path) {
    // The packaged documentation reads on its own: every relative link of
    // the README and of docs/ names a file and heading the package has.
    let doc = root.join("usr/share/doc/fedora-messaging-rs");
    let mut pages = vec![doc.join("README.md")];
    pages.extend(documents().iter().map(|name| doc.join("docs").join(name)));
    output(
        Command::new(workspace_root().join("scripts/check-links"))
            .args(&pages)
            .current_dir(&doc),
    );

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

/// The development package holds fm-plugin-api as a distribution installs
/// a crate: a plugin crate that asks for it by version builds offline from
/// the system registry directory alone, its tests (the testing kit) pass
/// there, and the packaged host runs what it built.
#[test]
fn a_plugin_builds_offline_against_the_devel_package_and_runs_in_the_packaged_host() {
    let debs = built_packages();
    let dir = scratch();
    let root = dir.path().join("root");
    extract(&debs.devel_deb, &root);
    extract(&debs.host_deb, &root);
    let registry = root.join("usr/share/cargo/registry");
    let installed = registry.join(format!("fm-plugin-api-{}", env!("CARGO_PKG_VERSION")));
    for file in [
        "Cargo.toml",
        ".cargo-checksum.json",
        "src/lib.rs",
        "src/testing.rs",
    ] {
        assert!(
            installed.join(file).is_file(),
            "no {file} in {}",
            installed.display()
        );
    }

    // fm-plugin-api's own dependencies, installed beside it the way the
    // distribution's packages of those crates would be: vendored from the
    // example's lock, where fm-plugin-api itself is the source tree's (so
    // it cannot come from here).
    let vendor = dir.path().join("vendor");
    let example = workspace_root().join("examples/third-party-consumer");
    output(
        cargo()
            .current_dir(&example)
            .args(["vendor", "--quiet", "--versioned-dirs"])
            .arg(&vendor),
    );
    for entry in std::fs::read_dir(&vendor).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        assert!(!name.starts_with("fm-plugin-api"), "vendored {name}");
        std::fs::rename(entry.path(), registry.join(name)).unwrap();
    }

    // The example as its author ships it: no lock, no .cargo/config.toml
    // patching in the source tree; cargo configured as a distribution's
    // offline build configures it.
    let crate_dir = dir.path().join("topic-counter");
    copy_tree(&example.join("src"), &crate_dir.join("src"));
    copy_tree(&example.join("tests"), &crate_dir.join("tests"));
    std::fs::copy(example.join("Cargo.toml"), crate_dir.join("Cargo.toml")).unwrap();
    std::fs::create_dir(crate_dir.join(".cargo")).unwrap();
    std::fs::write(
        crate_dir.join(".cargo/config.toml"),
        format!(
            "[source.crates-io]\nreplace-with = \"system\"\n\n[source.system]\ndirectory = {:?}\n\n[net]\noffline = true\n",
            registry.display().to_string()
        ),
    )
    .unwrap();
    let target = target_dir().join("devel-check");
    let cargo_in_crate = |args: &[&str]| {
        let mut command = cargo();
        command
            .current_dir(&crate_dir)
            .args(args)
            .env("CARGO_TARGET_DIR", &target)
            // Nothing here needs debug info; it only costs disk.
            .env("CARGO_PROFILE_DEV_DEBUG", "false");
        output(&mut command)
    };
    let metadata: serde_json::Value =
        serde_json::from_str(&cargo_in_crate(&["metadata", "--format-version", "1"])).unwrap();
    let api = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|package| package["name"] == "fm-plugin-api")
        .expect("fm-plugin-api among the packages");
    assert_eq!(
        api["manifest_path"],
        installed.join("Cargo.toml").display().to_string(),
        "{api}"
    );
    cargo_in_crate(&["test", "--quiet"]);
    cargo_in_crate(&["build", "--quiet"]);

    let conf = config_file(
        dir.path(),
        "[consumer_config]\nreport_every = 2\n[log_config.loggers.topic_counter]\nlevel = 'INFO'\n",
    );
    let run = run(Command::new(root.join("usr/bin/fedora-messaging"))
        .env_remove("FEDORA_MESSAGING_CONF")
        .arg("--conf")
        .arg(&conf)
        .args(["reconsume", "--callback"])
        .arg(format!(
            "{}:TopicCounter",
            target.join("debug/libtopic_counter.so").display()
        ))
        .arg("--file")
        .arg(example.join("tests/messages.jsonl")));
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(
        outcome_lines(&run),
        ["c1 ack", "c2 ack", "c3 ack", "c4 ack"]
    );
    assert!(
        run.stdout.contains("[topic_counter INFO] after 4 messages"),
        "{run:#?}"
    );
}

/// The .rpms install what the .debs install, at Fedora's paths, with the
/// configuration marked `%config(noreplace)`.
#[test]
fn the_rpms_install_what_the_debs_install() {
    let packages = built_packages();
    let rpm_files = |rpm: &Path, query: &str| -> BTreeSet<String> {
        output(Command::new("rpm").args(["-qp", query]).arg(rpm))
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let from_deb: BTreeSet<String> = deb_files(&packages.host_deb)
        .into_iter()
        // Debian's copyright file has no counterpart in an .rpm.
        .filter(|path| path != "/usr/share/doc/fedora-messaging-rs/copyright")
        .map(|path| {
            path.replace("/usr/lib/fedora-messaging/", "/usr/lib64/fedora-messaging/")
                .replace("/zsh/vendor-completions/", "/zsh/site-functions/")
        })
        .collect();
    assert_eq!(rpm_files(&packages.host_rpm, "--list"), from_deb);
    assert_eq!(
        rpm_files(&packages.host_rpm, "--configfiles"),
        BTreeSet::from(["/etc/fedora-messaging/config.toml".to_owned()])
    );

    let devel_from_deb: BTreeSet<String> = deb_files(&packages.devel_deb)
        .into_iter()
        .filter(|path| path.starts_with("/usr/share/cargo/registry/"))
        .collect();
    assert!(
        devel_from_deb.contains(&format!(
            "/usr/share/cargo/registry/fm-plugin-api-{}/.cargo-checksum.json",
            env!("CARGO_PKG_VERSION")
        )),
        "{devel_from_deb:?}"
    );
    assert_eq!(rpm_files(&packages.devel_rpm, "--list"), devel_from_deb);
    let arch = output(
        Command::new("rpm")
            .args(["-qp", "--queryformat", "%{ARCH}"])
            .arg(&packages.devel_rpm),
    );
    assert_eq!(arch, "noarch");
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let destination = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &destination);
        } else {
            std::fs::copy(entry.path(), &destination).unwrap();
        }
    }
}
