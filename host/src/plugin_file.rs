//! The file a plugin is loaded from: opened once, checked as it was opened,
//! and loaded from that same open file, so what is checked is what runs.
//!
//! Checking a path and then loading the path leaves a window in which
//! another user who can change a symlink or a directory on the way swaps
//! in their own library, whose constructors then run in this process. So
//! [`PluginFile::open`] opens the path once (following symlinks, without
//! blocking on a FIFO), and everything else is asked of the open file:
//! `fstat` says whether it is a regular file and who may write it, its
//! real path (from `/proc/self/fd`) gives the directories to check, its
//! first bytes the ELF header, and the dynamic loader is given
//! `/proc/self/fd/N`, which names that file whatever happens to the path.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::plugin_error::LoadError;

/// An open plugin file that passed every check.
pub struct PluginFile {
    /// Kept open until the library is loaded: `/proc/self/fd/N` names it.
    file: File,
}

impl PluginFile {
    /// Opens `path` and checks, like sshd with keys, that nobody but root
    /// or the user running the host could have written the file, or
    /// replaced it in its directory or any directory above, either on the
    /// way `path` names it or where it really is. Group-writable files
    /// are fine (Fedora's default umask makes build output
    /// group-writable), and so are world-writable directories with the
    /// sticky bit, like /tmp, where others cannot replace what they do
    /// not own. Then checks that it is an ELF file.
    pub fn open(path: &Path) -> Result<PluginFile, LoadError> {
        let unreadable = |error: std::io::Error| LoadError::Unreadable {
            path: path.to_owned(),
            reason: error.to_string(),
        };
        // O_NONBLOCK: opening a FIFO for reading would wait for a writer.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(unreadable)?;
        let meta = file.metadata().map_err(unreadable)?;
        if !meta.file_type().is_file() {
            return Err(LoadError::NotRegularFile {
                path: path.to_owned(),
                kind: file_kind(&meta),
            });
        }
        let opened = PluginFile { file };
        let real = opened.real_path().map_err(unreadable)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        let insecure = |problem: String, fix: String| LoadError::Insecure {
            path: path.to_owned(),
            problem,
            fix,
        };
        if meta.mode() & 0o002 != 0 {
            return Err(insecure(
                format!(
                    "it is writable by every user (mode {:04o})",
                    meta.mode() & 0o7777
                ),
                format!("run chmod o-w {}", real.display()),
            ));
        }
        if meta.uid() != 0 && meta.uid() != euid {
            return Err(insecure(
                format!(
                    "it is owned by uid {}, neither root nor the user running fedora-messaging (uid {euid})",
                    meta.uid()
                ),
                format!("chown it to root or to uid {euid}, or copy it somewhere you own"),
            ));
        }
        // Where the file really is, and where the path given puts it (a
        // symlink's own directory: whoever can write there can point the
        // link elsewhere).
        let given_dir = path
            .parent()
            .map(|dir| {
                if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                }
            })
            .map(std::fs::canonicalize)
            .transpose()
            .map_err(unreadable)?;
        for dir in real.parent().into_iter().chain(given_dir.as_deref()) {
            for dir in dir.ancestors() {
                check_directory(dir, euid).map_err(|(problem, fix)| insecure(problem, fix))?;
            }
        }
        opened.check_elf(path)?;
        Ok(opened)
    }

    /// The path the dynamic loader should open: this very file. The file
    /// stays open for good, as libraries are never unloaded: the dynamic
    /// loader hands back a library already loaded under the same name, so
    /// this descriptor's number must never name another file.
    pub fn into_loader_path(self) -> PathBuf {
        let path = self.loader_path();
        std::mem::forget(self.file);
        path
    }

    fn loader_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Where the open file is, as the kernel knows it.
    fn real_path(&self) -> std::io::Result<PathBuf> {
        std::fs::read_link(self.loader_path())
    }

    fn check_elf(&self, path: &Path) -> Result<(), LoadError> {
        let mut magic = [0u8; 4];
        match (&self.file).read_exact(&mut magic) {
            Ok(()) if magic == *b"\x7fELF" => Ok(()),
            Ok(()) => Err(LoadError::NotSharedObject {
                path: path.to_owned(),
            }),
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(LoadError::NotSharedObject {
                    path: path.to_owned(),
                })
            }
            Err(error) => Err(LoadError::Unreadable {
                path: path.to_owned(),
                reason: error.to_string(),
            }),
        }
    }
}

/// `Err((problem, fix))` when someone other than root or `euid` could
/// replace what `dir` holds.
fn check_directory(dir: &Path, euid: u32) -> Result<(), (String, String)> {
    let meta = std::fs::metadata(dir).map_err(|error| {
        (
            format!(
                "its directory {} cannot be checked ({error})",
                dir.display()
            ),
            "make it readable by the user running fedora-messaging".to_owned(),
        )
    })?;
    let sticky = meta.mode() & 0o1000 != 0;
    if meta.mode() & 0o002 != 0 && !sticky {
        return Err((
            format!("its directory {} is writable by every user", dir.display()),
            format!("run chmod o-w {}", dir.display()),
        ));
    }
    if meta.uid() != 0 && meta.uid() != euid {
        return Err((
            format!(
                "its directory {} is owned by uid {}, neither root nor the user running fedora-messaging (uid {euid})",
                dir.display(),
                meta.uid()
            ),
            "move the plugin to a directory owned by root or by you".to_owned(),
        ));
    }
    Ok(())
}

fn file_kind(meta: &Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}
