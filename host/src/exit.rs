//! How the process ends: fedora-messaging's exit codes, in one place.

use std::fmt;

/// Why the process exits, each with fedora-messaging's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A graceful stop: signal, end of input, or a consumer's `halt(0)`.
    Success,
    /// The consumer could not be loaded or built, or another error that
    /// fedora-messaging reports as a `ClickException`.
    Error,
    /// Bad usage or configuration (Click's usage errors).
    Usage,
    /// The broker refused a queue or binding declaration.
    Declaration,
    /// Something else went wrong while setting up consumption.
    Registration,
    /// The broker cancelled the consumer.
    Canceled,
    /// The consumer failed on a message.
    ConsumerFailed,
    /// The broker refused the connection (credentials, vhost, TLS).
    Connection,
    /// The broker refused to let us consume, or to publish the delivery
    /// limit's copies (403).
    Permission,
    /// A consumer asked to halt with this code.
    Halt(i32),
    /// `publish`: the broker returned or refused a message (EREMOTEIO).
    PublishRefused,
    /// `publish`: the broker did not answer in time (ECONNREFUSED).
    PublishTimeout,
}

impl Exit {
    pub fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::Error => 1,
            Exit::Usage => 2,
            Exit::Declaration => 10,
            Exit::Registration => 11,
            Exit::Canceled => 12,
            Exit::ConsumerFailed => 13,
            Exit::Connection => 14,
            Exit::Permission => 15,
            Exit::Halt(code) => code,
            Exit::PublishRefused => 121,
            Exit::PublishTimeout => 111,
        }
    }
}

/// An error that ends the process: a one-line message and its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal {
    pub exit: Exit,
    pub message: String,
}

impl Fatal {
    pub fn new(exit: Exit, message: impl Into<String>) -> Fatal {
        Fatal {
            exit,
            message: message.into(),
        }
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Fatal {}
