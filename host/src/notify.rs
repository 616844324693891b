//! systemd's notification protocol (what `sd_notify` does), spoken
//! directly: datagrams to the socket in `NOTIFY_SOCKET`. Without that
//! variable (not under a `Type=notify` unit) nothing is sent.
//!
//! The host says `READY=1` once the plugin is loaded and checked and the
//! first connection attempt is under way (so a broker outage at boot does not
//! trip `TimeoutStartSec`), `STATUS=` lines as it connects, consumes and
//! reconnects (with the message counts once there are some, refreshed at
//! most once a second), and `STOPPING=1` when it stops. With `WatchdogSec=`,
//! the engine pings `WATCHDOG=1` from its own loop (see
//! `engine::pulse`): an engine that stops turning stops the pings and
//! systemd restarts the service, while a consumer busy on its own thread
//! or a broker outage (the engine still turns while it waits) does not.

use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::Duration;

/// Where notifications go, if anywhere.
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
    status: Mutex<Status>,
}

/// What `STATUS=` says: what the host is doing, and its counts.
#[derive(Default)]
struct Status {
    doing: String,
    counts: String,
}

impl Status {
    fn line(&self) -> String {
        if self.counts.is_empty() {
            format!("STATUS={}", self.doing)
        } else {
            format!("STATUS={} ({})", self.doing, self.counts)
        }
    }
}

struct Target {
    socket: UnixDatagram,
    address: std::os::unix::net::SocketAddr,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (honoured only when
    /// `WATCHDOG_PID`, if set, is this process).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let address = socket_address(&path.to_string_lossy())?;
            let socket = UnixDatagram::unbound().ok()?;
            Some(Target { socket, address })
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .map(|pid| pid.trim() == std::process::id().to_string())
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros);
        Notifier {
            target,
            watchdog,
            status: Mutex::default(),
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
            status: Mutex::default(),
        }
    }

    /// Sends `state` (`KEY=value` lines); a failure only costs the message.
    pub fn send(&self, state: &str) {
        if let Some(target) = &self.target
            && let Err(error) = target
                .socket
                .send_to_addr(state.as_bytes(), &target.address)
        {
            log::debug!("cannot notify systemd ({state}): {error}");
        }
    }

    /// Whether anything is listening: without it, nothing needs
    /// computing.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    pub fn ready(&self, doing: &str) {
        let line = self.update(|status| status.doing = doing.to_owned());
        self.send(&format!("READY=1\n{line}"));
    }

    /// Says what the host is doing now.
    pub fn status(&self, doing: &str) {
        let line = self.update(|status| status.doing = doing.to_owned());
        self.send(&line);
    }

    /// Says how many messages went which way, if that changed.
    pub fn counts(&self, counts: String) {
        let mut changed = false;
        let line = self.update(|status| {
            changed = status.counts != counts;
            status.counts = counts;
        });
        if changed {
            self.send(&line);
        }
    }

    pub fn stopping(&self) {
        let line = self.update(|status| status.doing = "Stopping".to_owned());
        self.send(&format!("STOPPING=1\n{line}"));
    }

    fn update(&self, change: impl FnOnce(&mut Status)) -> String {
        // A poisoned lock only means a panic elsewhere mid-update; the
        // status text is still usable.
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut status);
        status.line()
    }

    /// How often to ping the watchdog (half its timeout), when enabled.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.target.as_ref()?;
        self.watchdog.map(|timeout| timeout / 2)
    }
}

/// `NOTIFY_SOCKET` is a path, or `@name` for an abstract socket.
fn socket_address(text: &str) -> Option<std::os::unix::net::SocketAddr> {
    if let Some(name) = text.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()
    } else {
        std::os::unix::net::SocketAddr::from_pathname(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_the_socket() {
        let dir = std::env::temp_dir().join(format!("fm-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            target: Some(Target {
                socket: UnixDatagram::unbound().unwrap(),
                address: socket_address(path.to_str().unwrap()).unwrap(),
            }),
            watchdog: Some(Duration::from_secs(10)),
            status: Mutex::default(),
        };
        notifier.ready("Connecting");
        notifier.counts("1 received".to_owned());
        // Unchanged counts send nothing.
        notifier.counts("1 received".to_owned());
        notifier.status("Consuming");
        let mut buffer = [0u8; 256];
        let mut next = || {
            let size = receiver.recv(&mut buffer).unwrap();
            String::from_utf8_lossy(&buffer[..size]).into_owned()
        };
        assert_eq!(next(), "READY=1\nSTATUS=Connecting");
        assert_eq!(next(), "STATUS=Connecting (1 received)");
        assert_eq!(next(), "STATUS=Consuming (1 received)");
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(5)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_no_watchdog_runs() {
        let notifier = Notifier::disabled();
        notifier.ready("x");
        assert_eq!(notifier.watchdog_interval(), None);
    }
}
