//! `new-plugin`: the crate it writes builds (also inside another
//! workspace's directory), passes its own tests and clippy, is formatted,
//! and its library runs in this host on its sample with its
//! configuration.

use fm_e2e::*;

#[test]
fn a_new_plugin_crate_tests_builds_and_runs_in_the_host() {
    let dir = scratch();
    let created = run(fedora_messaging()
        .args(["new-plugin", "koji-watch", "--dir"])
        .arg(dir.path())
        .arg("--api")
        .arg(workspace_root().join("plugin-api")));
    assert_eq!(created.code(), 0, "{created:#?}");
    let root = dir.path().join("koji-watch");
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "tests/sample.jsonl",
        "koji-watch.toml",
        ".gitignore",
    ] {
        assert!(root.join(file).is_file(), "no {file}: {created:#?}");
    }
    // Where the out-of-tree plugins build, so their dependencies are reused.
    let target = target_dir().join("out-of-tree");
    let cargo_in_crate = |args: &[&str]| {
        let mut command = cargo();
        command
            .current_dir(&root)
            .args(args)
            .env("CARGO_TARGET_DIR", &target);
        run(&mut command)
    };
    let formatted = cargo_in_crate(&["fmt", "--check"]);
    assert_eq!(formatted.code(), 0, "{formatted:#?}");
    let tested = cargo_in_crate(&["test"]);
    assert_eq!(tested.code(), 0, "{tested:#?}");
    assert!(tested.stdout.contains("2 passed"), "{tested:#?}");
    let linted = cargo_in_crate(&["clippy", "--all-targets", "--", "-D", "warnings"]);
    assert_eq!(linted.code(), 0, "{linted:#?}");
    let built = cargo_in_crate(&["build"]);
    assert_eq!(built.code(), 0, "{built:#?}");

    let library = target.join("debug/libkoji_watch.so");
    let ran = run(fedora_messaging()
        .current_dir(&root)
        .args(["--conf", "koji-watch.toml", "reconsume", "--callback"])
        .arg(format!("{}:KojiWatch", library.display()))
        .args(["--file", "tests/sample.jsonl"]));
    assert_eq!(ran.code(), 0, "{ran:#?}");
    assert_eq!(outcome_lines(&ran), ["m1 ack", "m2 ack"], "{ran:#?}");
    assert!(
        ran.output().contains(
            "[koji_watch WARNING] m1 on org.fedoraproject.prod.buildsys.build.state.change (message 1 here)"
        ),
        "{ran:#?}"
    );

    let again = run(fedora_messaging()
        .args(["new-plugin", "koji-watch", "--dir"])
        .arg(dir.path()));
    assert_eq!(again.code(), 2, "{again:#?}");
    assert!(again.stderr.contains("already exists"), "{again:#?}");
    let bad = run(fedora_messaging().args(["new-plugin", "../escape"]));
    assert_eq!(bad.code(), 2, "{bad:#?}");
    assert!(bad.stderr.contains("is not a crate name"), "{bad:#?}");
}

#[test]
fn a_name_the_generated_code_or_rust_uses_still_gives_a_crate_that_builds() {
    let dir = scratch();
    // Created inside another workspace's directory, as from this
    // repository's root, the crate still builds on its own: cargo refused
    // it as a package the enclosing workspace does not list.
    std::fs::write(
        dir.path().join("Cargo.toml"),
        "[workspace]\nresolver = \"3\"\n",
    )
    .unwrap();
    // `message` would make a type `Message`, which the crate imports.
    let created = run(fedora_messaging()
        .args(["new-plugin", "message", "--dir"])
        .arg(dir.path())
        .arg("--api")
        .arg(workspace_root().join("plugin-api")));
    assert_eq!(created.code(), 0, "{created:#?}");
    let mut command = cargo();
    command
        .current_dir(dir.path().join("message"))
        .args(["test"])
        .env("CARGO_TARGET_DIR", target_dir().join("out-of-tree"));
    let tested = run(&mut command);
    assert_eq!(tested.code(), 0, "{tested:#?}");
    assert!(tested.stdout.contains("2 passed"), "{tested:#?}");

    let keyword = run(fedora_messaging()
        .args(["new-plugin", "self", "--dir"])
        .arg(dir.path()));
    assert_eq!(keyword.code(), 2, "{keyword:#?}");
    assert!(keyword.stderr.contains("is a Rust keyword"), "{keyword:#?}");
}
