//! Whether a consumer thread may start a message: the gate, held once and
//! for good when the host drains (a halt, a failure, a stop).
//!
//! A consumer in another process that was handed a message ahead of time
//! ([`super::ahead`]) cannot look at the gate, so the host also shows the
//! draining as a descriptor that becomes readable then ([`draining_fd`]),
//! which such a consumer checks before it begins a message. There is one
//! such descriptor per process: a process runs one engine, and once it
//! drains it never consumes again.

use std::io::{PipeReader, PipeWriter, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a worker may start the message it took.
#[derive(Default)]
pub struct Gate {
    /// Set once for good: the process is draining.
    held: AtomicBool,
}

impl Gate {
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    pub fn hold(&self) {
        if !self.held.swap(true, Ordering::SeqCst) {
            DRAINING.announce();
        }
    }
}

/// The process's draining descriptor, made when a consumer first asks.
static DRAINING: Draining = Draining {
    state: Mutex::new(DrainingState {
        announced: false,
        pipe: None,
    }),
};

struct Draining {
    state: Mutex<DrainingState>,
}

struct DrainingState {
    announced: bool,
    /// Close-on-exec, both ends (`std::io::pipe`): a command the host runs
    /// never holds it, and a consumer that hands it on places it itself.
    pipe: Option<(PipeReader, PipeWriter)>,
}

impl Draining {
    fn announce(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.announced = true;
        if let Some((_, writer)) = state.pipe.as_mut() {
            // One byte, never read: the pipe stays readable for good.
            let _ = writer.write(b"d");
        }
    }

    fn fd(&self) -> Option<RawFd> {
        let mut state = self.state.lock().ok()?;
        if state.pipe.is_none() {
            let (reader, mut writer) = std::io::pipe().ok()?;
            if state.announced {
                let _ = writer.write(b"d");
            }
            state.pipe = Some((reader, writer));
        }
        state.pipe.as_ref().map(|(reader, _)| reader.as_raw_fd())
    }
}

/// A descriptor that becomes readable once any gate of this process is
/// held, and stays so; `None` if no pipe could be made. It lives as long
/// as the process.
pub fn draining_fd() -> Option<RawFd> {
    DRAINING.fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the length of the call.
        unsafe { libc::poll(&mut poll, 1, 0) == 1 }
    }

    #[test]
    fn the_draining_descriptor_becomes_readable_when_a_gate_is_held_and_stays_so() {
        // One process-wide descriptor: this is the only test that holds a
        // gate in this binary's process.
        let fd = draining_fd().expect("a pipe");
        assert!(!readable(fd));
        let gate = Gate::default();
        gate.hold();
        assert!(gate.is_held());
        assert!(readable(fd));
        gate.hold();
        Gate::default().hold();
        assert!(readable(fd));
        assert_eq!(draining_fd(), Some(fd));
    }
}
