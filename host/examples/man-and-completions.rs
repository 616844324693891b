//! Writes the man pages and shell completions generated from the command
//! line's own definition, so they never disagree with `--help`:
//!
//! ```text
//! cargo run -p fm-host --example man-and-completions -- OUT_DIR
//! ```
//!
//! OUT_DIR gets `man/fedora-messaging.1` and one page per subcommand
//! (`fedora-messaging-consume.1`, …), and `completions/` with
//! `fedora-messaging.bash`, `_fedora-messaging` (zsh) and
//! `fedora-messaging.fish`. The packages install them.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use fm_host::cli::Cli;

fn main() {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: man-and-completions OUT_DIR");
        std::process::exit(2);
    };
    if let Err(error) = generate(&out) {
        eprintln!("cannot write to {}: {error}", out.display());
        std::process::exit(1);
    }
}

fn generate(out: &Path) -> std::io::Result<()> {
    let command = Cli::command();
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    clap_mangen::generate_to(command.clone(), &man)?;
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(
            shell,
            &mut command.clone(),
            "fedora-messaging",
            &completions,
        )?;
    }
    Ok(())
}
