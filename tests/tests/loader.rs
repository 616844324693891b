//! Loading `LIB:Symbol`: every way a plugin can be refused, the search
//! path, plugins built outside the workspace, and several plugins in one
//! process.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use fm_e2e::*;
use serde_json::json;

/// Runs `reconsume` on one empty message with `callback`, in `dir`.
fn load(callback: &str, dir: &Path) -> Run {
    let file = record_file(dir, &[json!({"id": "m1", "topic": "t", "body": {}})]);
    run(fedora_messaging()
        .current_dir(dir)
        .args(["reconsume", "--callback", callback, "--file"])
        .arg(file))
}

/// The single error line of a refused load.
fn refusal(run: &Run) -> &str {
    assert_eq!(run.code(), 1, "a load error exits 1: {run:#?}");
    assert!(outcome_lines(run).is_empty(), "nothing consumed: {run:#?}");
    let line = run.stderr.trim_end();
    assert_eq!(line.lines().count(), 1, "one line: {run:#?}");
    line
}

fn copy_plugin(from: &Path, dir: &Path) -> PathBuf {
    let to = dir.join(from.file_name().unwrap());
    std::fs::copy(from, &to).unwrap();
    to
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_missing_file() {
    let dir = scratch();
    let run = load("./libmissing.so:Printer", dir.path());
    assert_eq!(
        refusal(&run),
        "Error: plugin ./libmissing.so does not exist: check the path (a relative path starts from the working directory)"
    );
}

#[test]
fn a_file_that_is_not_a_shared_object() {
    let dir = scratch();
    std::fs::write(dir.path().join("libfake.so"), "#!/bin/sh\necho hi\n").unwrap();
    let run = load("./libfake.so:Printer", dir.path());
    assert_eq!(
        refusal(&run),
        "Error: ./libfake.so is not a shared object (no ELF header): pass the libNAME.so that cargo builds for a crate with crate-type = [\"cdylib\"]"
    );
}

#[test]
fn a_shared_object_that_is_not_a_plugin() {
    let dir = scratch();
    let library = plugin("test_not_a_plugin");
    let run = load(&format!("{}:Printer", library.display()), dir.path());
    assert_eq!(
        refusal(&run),
        format!(
            "Error: {} is a shared object but not a fedora-messaging consumer plugin: build it against fm-plugin-api and export its consumers with export_consumers!",
            library.display()
        )
    );
}

#[test]
fn a_plugin_built_against_a_changed_interface() {
    let dir = scratch();
    let library = out_of_tree_plugin(OutOfTree::ChangedAbi);
    let run = load(&format!("{}:Fixture", library.display()), dir.path());
    assert_eq!(
        refusal(&run),
        format!(
            "Error: plugin {} was built against an incompatible plugin-api (mismatched type: expected u8, found u32): rebuild the plugin against plugin-api 0.1",
            library.display()
        )
    );
}

#[test]
fn a_plugin_whose_host_services_differ_refuses_to_start_and_asks_for_a_rebuild() {
    // Its root module matches the host's; what it was told the host offers
    // does not, and it checks that before reading any of it.
    let dir = scratch();
    let library = out_of_tree_plugin(OutOfTree::ChangedServices);
    let run = load(&format!("{}:Fixture", library.display()), dir.path());
    let line = refusal(&run);
    assert!(
        line.contains("whose host services do not match this host's")
            && line.contains("rebuild the plugin against the host's fm-plugin-api"),
        "{line}"
    );
}

#[test]
fn a_plugin_built_with_panic_abort() {
    let dir = scratch();
    let library = out_of_tree_plugin(OutOfTree::PanicAbort);
    let run = load(&format!("{}:Fixture", library.display()), dir.path());
    assert_eq!(
        refusal(&run),
        format!(
            "Error: plugin {} was built with panic = \"abort\", so a panic in it would kill the host instead of failing one message: rebuild it with panic = \"unwind\" (remove panic = \"abort\" from its Cargo profile)",
            library.display()
        )
    );
}

#[test]
fn a_consumer_name_the_library_does_not_export() {
    let dir = scratch();
    let library = plugin("test_consumers");
    let run = load(&format!("{}:Missing", library.display()), dir.path());
    assert_eq!(
        refusal(&run),
        format!(
            "Error: plugin {} exports no consumer named \"Missing\" (available: Scripted, Inspect, PanicInNew, FailInNew)",
            library.display()
        )
    );
}

#[test]
fn a_python_callback() {
    let dir = scratch();
    for callback in ["fedora_messaging.example:printer", "my_consumer.py:Saver"] {
        let run = load(callback, dir.path());
        assert_eq!(
            refusal(&run),
            format!(
                "Error: {callback:?} is a Python callback, which runs through the Python bridge plugin, libfm_python.so; it is not in /usr/lib64/fedora-messaging, /usr/lib/fedora-messaging: install the fedora-messaging-rs package, which ships it, or build it (cargo build --release -p fm-python) and add its directory to FEDORA_MESSAGING_PLUGIN_PATH"
            )
        );
    }
}

#[test]
fn a_callback_without_a_consumer_name() {
    let dir = scratch();
    let run = load("libprinter.so", dir.path());
    assert_eq!(
        refusal(&run),
        "Error: cannot parse the callback \"libprinter.so\": give a library and a consumer name separated by ':', as in --callback=libsaver.so:SaveMessage"
    );
}

#[test]
fn a_world_writable_plugin_or_directory_is_refused_group_writable_is_not() {
    let dir = scratch();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    set_mode(&plugins, 0o755);
    let library = copy_plugin(&plugin("printer"), &plugins);
    let callback = format!("{}:Printer", library.display());

    set_mode(&library, 0o664);
    let group_writable = load(&callback, dir.path());
    assert_eq!(group_writable.code(), 0, "{group_writable:#?}");

    set_mode(&library, 0o666);
    let run = load(&callback, dir.path());
    let real = library.canonicalize().unwrap();
    assert_eq!(
        refusal(&run),
        format!(
            "Error: refusing to load plugin {}: it is writable by every user (mode 0666), so another user could change the code this process runs; run chmod o-w {}",
            library.display(),
            real.display()
        )
    );

    set_mode(&library, 0o755);
    set_mode(&plugins, 0o777);
    let run = load(&callback, dir.path());
    assert_eq!(
        refusal(&run),
        format!(
            "Error: refusing to load plugin {}: its directory {} is writable by every user, so another user could change the code this process runs; run chmod o-w {}",
            library.display(),
            real.parent().unwrap().display(),
            real.parent().unwrap().display()
        )
    );

    // The sticky bit (as on /tmp) keeps others from replacing our file.
    set_mode(&plugins, 0o1777);
    let sticky = load(&callback, dir.path());
    assert_eq!(sticky.code(), 0, "{sticky:#?}");
}

#[test]
fn a_plugin_owned_by_another_user_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        eprintln!("not root: cannot give a file to another user; ownership case not checked");
        return;
    }
    let dir = scratch();
    let library = copy_plugin(&plugin("printer"), dir.path());
    let nobody = 65534;
    std::os::unix::fs::chown(&library, Some(nobody), Some(nobody)).unwrap();
    let run = load(&format!("{}:Printer", library.display()), dir.path());
    assert!(
        refusal(&run).contains(&format!(
            "it is owned by uid {nobody}, neither root nor the user running fedora-messaging (uid 0)"
        )),
        "{run:#?}"
    );
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

#[test]
fn a_bare_file_name_is_looked_up_in_the_plugin_path() {
    let dir = scratch();
    let first = dir.path().join("first");
    let second = dir.path().join("second");
    for d in [&first, &second] {
        std::fs::create_dir(d).unwrap();
        set_mode(d, 0o755);
    }
    copy_plugin(&plugin("printer"), &second);
    let path = std::env::join_paths([&first, &second]).unwrap();
    let file = record_file(dir.path(), &[json!({"id": "m1", "topic": "t", "body": {}})]);
    let found = run(fedora_messaging()
        .env("FEDORA_MESSAGING_PLUGIN_PATH", &path)
        .args(["reconsume", "--callback", "libprinter.so:Printer", "--file"])
        .arg(&file));
    assert_eq!(found.code(), 0, "{found:#?}");
    assert!(found.stdout.starts_with("Id: m1\n"), "{found:#?}");

    let missing = run(fedora_messaging()
        .env("FEDORA_MESSAGING_PLUGIN_PATH", &path)
        .args([
            "reconsume",
            "--callback",
            "libsaver.so:SaveMessage",
            "--file",
        ])
        .arg(&file));
    assert_eq!(
        refusal(&missing),
        format!(
            "Error: plugin libsaver.so not found in {}, {}, /usr/lib64/fedora-messaging, /usr/lib/fedora-messaging: give its path (with a '/') or add its directory to FEDORA_MESSAGING_PLUGIN_PATH",
            first.display(),
            second.display()
        )
    );
}

#[test]
fn a_third_party_plugin_built_outside_the_workspace_runs() {
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        "[consumer_config]\nreport_every = 2\nstop_after = 3\n[log_config.loggers.topic_counter]\nlevel = 'INFO'\n",
    );
    let file = record_file(
        dir.path(),
        &[
            json!({"id": "a", "topic": "t.one", "body": {}}),
            json!({"id": "b", "topic": "t.two", "body": {}}),
            json!({"id": "c", "topic": "t.one", "body": {}}),
            json!({"id": "d", "topic": "t.one", "body": {}}),
        ],
    );
    let library = out_of_tree_plugin(OutOfTree::ThirdParty);
    let run = run(fedora_messaging()
        .arg("--conf")
        .arg(conf)
        .args(["reconsume", "--callback"])
        .arg(format!("{}:TopicCounter", library.display()))
        .arg("--file")
        .arg(file));
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(outcome_lines(&run), ["a ack", "b ack", "c halt 0"]);
    assert!(
        run.stdout
            .contains("[topic_counter INFO] after 2 messages: {\"t.one\": 1, \"t.two\": 1}"),
        "{run:#?}"
    );
    assert!(
        run.stdout
            .contains("[topic_counter INFO] counted 3 messages"),
        "{run:#?}"
    );
}

#[test]
fn an_elf_file_the_dynamic_loader_refuses() {
    // An executable has an ELF header but cannot be dlopen()ed.
    let dir = scratch();
    let executable = host_binary();
    let run = load(&format!("{}:Printer", executable.display()), dir.path());
    let line = refusal(&run);
    assert!(
        line.starts_with(&format!(
            "Error: cannot load plugin {}: ",
            executable.display()
        )),
        "{run:#?}"
    );
    assert!(
        line.contains("cannot dynamically load"),
        "dlerror's reason: {run:#?}"
    );
}

#[test]
fn a_fifo_or_a_directory_is_refused_at_once() {
    let dir = scratch();
    let fifo = dir.path().join("libfifo.so");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    // Nobody ever writes to the FIFO: opening it must not wait for one.
    let run = load(&format!("{}:Printer", fifo.display()), dir.path());
    assert_eq!(
        refusal(&run),
        format!(
            "Error: plugin {} is a FIFO, not a regular file: pass the libNAME.so file itself",
            fifo.display()
        )
    );
    let directory = dir.path().join("libdir.so");
    std::fs::create_dir(&directory).unwrap();
    let run = load(&format!("{}:Printer", directory.display()), dir.path());
    assert_eq!(
        refusal(&run),
        format!(
            "Error: plugin {} is a directory, not a regular file: pass the libNAME.so file itself",
            directory.display()
        )
    );
}

#[test]
fn a_symlink_is_checked_where_it_sits_and_where_it_points() {
    let dir = scratch();
    let safe = dir.path().join("safe");
    let open = dir.path().join("open");
    for d in [&safe, &open] {
        std::fs::create_dir(d).unwrap();
    }
    set_mode(&safe, 0o755);
    set_mode(&open, 0o777);
    let library = copy_plugin(&plugin("printer"), &safe);

    // A link in a directory anyone may write to: anyone could repoint it.
    let link = open.join("libopenlink.so");
    std::os::unix::fs::symlink(&library, &link).unwrap();
    let run = load(&format!("{}:Printer", link.display()), dir.path());
    let open_real = open.canonicalize().unwrap();
    assert_eq!(
        refusal(&run),
        format!(
            "Error: refusing to load plugin {}: its directory {} is writable by every user, so another user could change the code this process runs; run chmod o-w {}",
            link.display(),
            open_real.display(),
            open_real.display()
        )
    );

    // A link in a safe directory to a library in an open one.
    let exposed = copy_plugin(&plugin("printer"), &open);
    let link = safe.join("libexposed.so");
    std::os::unix::fs::symlink(&exposed, &link).unwrap();
    let run = load(&format!("{}:Printer", link.display()), dir.path());
    assert!(
        refusal(&run).contains(&format!(
            "its directory {} is writable by every user",
            open_real.display()
        )),
        "{run:#?}"
    );

    // A safe link to a safe library loads.
    let link = safe.join("liblinked.so");
    std::os::unix::fs::symlink(&library, &link).unwrap();
    let run = load(&format!("{}:Printer", link.display()), dir.path());
    assert_eq!(run.code(), 0, "{run:#?}");

    // A directory above the plugin that anyone may write to is as open as
    // the plugin's own: its entries can be renamed away and replaced.
    let nested = open.join("deeper");
    std::fs::create_dir(&nested).unwrap();
    set_mode(&nested, 0o755);
    let deep = copy_plugin(&plugin("printer"), &nested);
    let run = load(&format!("{}:Printer", deep.display()), dir.path());
    assert!(
        refusal(&run).contains(&format!(
            "its directory {} is writable by every user",
            open_real.display()
        )),
        "{run:#?}"
    );
}

/// Whether a file of this path is mapped into this process.
fn mapped(path: &Path) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let path = path.canonicalize().unwrap();
    maps.lines()
        .any(|line| line.ends_with(path.to_str().unwrap()))
}

/// Defect 6 of issue #10: the ownership check followed a symlink, then
/// `dlopen` opened the link's path again, so a link repointed between the
/// two loaded a library nobody checked. Here a link flips between a safe
/// library and one in a world-writable directory while it is loaded, for
/// thousands of loads (each through a link of its own name, since the
/// dynamic loader reuses a library already loaded under the same name);
/// whatever each load answers, the exposed library must never be mapped
/// into the process.
#[test]
fn a_symlink_swapped_during_loading_never_loads_what_was_not_checked() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const LOADS: usize = 3000;
    let dir = scratch();
    let safe = dir.path().join("safe");
    let open = dir.path().join("open");
    let links = dir.path().join("links");
    for d in [&safe, &open, &links] {
        std::fs::create_dir(d).unwrap();
        set_mode(d, 0o755);
    }
    set_mode(&open, 0o777);
    let good = copy_plugin(&plugin("printer"), &safe);
    let evil = copy_plugin(&plugin("printer"), &open);
    let link = |n: usize| links.join(format!("libswapped{n}.so"));
    for n in 0..LOADS {
        std::os::unix::fs::symlink(&good, link(n)).unwrap();
    }

    let current = std::sync::Arc::new(AtomicUsize::new(0));
    // The link the swapper has begun to flip: each load waits for it, so
    // that every load races the swapper.
    let flipping = std::sync::Arc::new(AtomicUsize::new(usize::MAX));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let swapper = {
        let (current, flipping, stop, links, good, evil) = (
            current.clone(),
            flipping.clone(),
            stop.clone(),
            links.clone(),
            good.clone(),
            evil.clone(),
        );
        std::thread::spawn(move || {
            let staged = links.join("staged");
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n = current.load(Ordering::SeqCst);
                let link = links.join(format!("libswapped{n}.so"));
                for target in [&evil, &good] {
                    let _ = std::fs::remove_file(&staged);
                    std::os::unix::fs::symlink(target, &staged).unwrap();
                    std::fs::rename(&staged, &link).unwrap();
                    swaps += 1;
                }
                flipping.store(n, Ordering::SeqCst);
            }
            swaps
        })
    };
    let (mut loaded, mut refused) = (0, 0);
    for n in 0..LOADS {
        current.store(n, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while flipping.load(Ordering::SeqCst) != n {
            assert!(
                std::time::Instant::now() < deadline && !swapper.is_finished(),
                "the swapper stopped flipping"
            );
            std::hint::spin_loop();
        }
        match fm_host::plugin::Plugin::load(&link(n)) {
            Ok(_) => loaded += 1,
            Err(_) => refused += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    println!(
        "{LOADS} loads during {swaps} swaps: {loaded} loaded the safe library, {refused} refused"
    );
    assert!(
        !mapped(&evil),
        "a library nobody checked was loaded ({loaded} loads, {refused} refusals)"
    );
    assert!(mapped(&good), "the safe library was loaded at least once");
}
