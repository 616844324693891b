//! The bridge's framing: every frame on the pipes between the plugin and
//! Python is `length (u32, little-endian) | kind (one byte) | payload`,
//! `length` counting the payload only.
//!
//! Lengths, not line ends, make a frame's end certain, so a message body
//! travels as its raw bytes and no text needs escaping. What keeps other
//! writers off the pipes is the driver's (it hands descriptors to no
//! child); the reader here only makes sure that what arrives anyway ends
//! the conversation at once, never stalls it: an unknown kind or an
//! absurd length is [`FrameError::Corrupt`], and once a frame's first byte
//! is in, the rest must follow within [`FRAME_BOUND`].

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// How long the rest of a frame may take once its first byte arrived:
/// the writer sends a frame whole, so anything slower is a writer that
/// died half-way or bytes that are no frame.
pub const FRAME_BOUND: Duration = Duration::from_secs(10);

/// The largest payload taken: room for a message at RabbitMQ's own
/// 512 MiB limit, and a bound on what a corrupt length can make the
/// plugin allocate.
pub const MAX_PAYLOAD: usize = 512 << 20;

const HEADER: usize = 5;

/// The kinds of frame. Plugin to Python: a message, a publish's reply.
/// Python to plugin: ready, start failed, done, a log record, a publish.
pub mod kind {
    pub const MESSAGE: u8 = b'M';
    pub const REPLY: u8 = b'R';
    pub const READY: u8 = b'Y';
    pub const START_FAILED: u8 = b'F';
    pub const DONE: u8 = b'D';
    pub const LOG: u8 = b'L';
    pub const PUBLISH: u8 = b'P';
}

/// Why no frame was read.
#[derive(Debug)]
pub enum FrameError {
    /// The writer closed its end (between frames).
    Closed,
    /// No frame began before the deadline given.
    TimedOut,
    /// What arrived is no frame, or stopped half-way.
    Corrupt(String),
    Io(io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Closed => write!(f, "its output closed"),
            FrameError::TimedOut => write!(f, "it did not answer in time"),
            FrameError::Corrupt(what) => {
                write!(f, "it sent what is no frame of the bridge: {what}")
            }
            FrameError::Io(error) => write!(f, "reading its output failed: {error}"),
        }
    }
}

/// Builds one frame; `payload` writes the payload after the header, whose
/// length is filled in at the end.
pub fn frame(kind: u8, payload: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut frame = vec![0, 0, 0, 0, kind];
    payload(&mut frame);
    let length = u32::try_from(frame.len() - HEADER).unwrap_or(u32::MAX);
    frame[..4].copy_from_slice(&length.to_le_bytes());
    frame
}

/// Reads frames from one pipe, with the bounds above.
pub struct FrameReader<R> {
    source: R,
    buffer: Vec<u8>,
    start: usize,
    /// What each read lands in, made once: a frame a message is read with
    /// no buffer to clear.
    chunk: Box<[u8]>,
}

impl<R: Read + AsRawFd> FrameReader<R> {
    pub fn new(source: R) -> FrameReader<R> {
        FrameReader {
            source,
            buffer: Vec::with_capacity(64 << 10),
            start: 0,
            chunk: vec![0; 64 << 10].into_boxed_slice(),
        }
    }

    /// The next frame, its kind among `kinds`, waiting until
    /// `first_byte_by` (`None`: for as long as it takes) for it to begin.
    pub fn next(
        &mut self,
        kinds: &[u8],
        first_byte_by: Option<Instant>,
    ) -> Result<(u8, Vec<u8>), FrameError> {
        // Bytes left from an earlier read are a frame begun.
        let mut frame_by = (self.buffered() > 0).then(|| Instant::now() + FRAME_BOUND);
        while self.buffered() < HEADER {
            self.fill(first_byte_by, &mut frame_by)?;
        }
        let header = &self.buffer[self.start..self.start + HEADER];
        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let frame_kind = header[4];
        if !kinds.contains(&frame_kind) {
            return Err(FrameError::Corrupt(format!(
                "a frame of kind {:?} where {:?} was expected, starting {:?}",
                char::from(frame_kind),
                String::from_utf8_lossy(kinds),
                String::from_utf8_lossy(
                    &self.buffer[self.start..self.buffer.len().min(self.start + 80)]
                )
            )));
        }
        if length > MAX_PAYLOAD {
            return Err(FrameError::Corrupt(format!(
                "a frame of {length} bytes, over the {MAX_PAYLOAD} the bridge takes"
            )));
        }
        while self.buffered() < HEADER + length {
            self.fill(first_byte_by, &mut frame_by)?;
        }
        let payload = self.buffer[self.start + HEADER..self.start + HEADER + length].to_vec();
        self.start += HEADER + length;
        if self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
        Ok((frame_kind, payload))
    }

    fn buffered(&self) -> usize {
        self.buffer.len() - self.start
    }

    /// Reads what the pipe has, waiting until `first_byte_by` while
    /// nothing of a frame is in, then until `frame_by` (set here when the
    /// first byte is).
    fn fill(
        &mut self,
        first_byte_by: Option<Instant>,
        frame_by: &mut Option<Instant>,
    ) -> Result<(), FrameError> {
        let begun = self.buffered() > 0;
        let deadline = if begun { *frame_by } else { first_byte_by };
        if let Some(deadline) = deadline
            && !readable_before(self.source.as_raw_fd(), deadline).map_err(FrameError::Io)?
        {
            return Err(if begun {
                FrameError::Corrupt(format!(
                    "{} byte(s) of a frame, and no more within {FRAME_BOUND:?}",
                    self.buffered()
                ))
            } else {
                FrameError::TimedOut
            });
        }
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        let read = loop {
            match self.source.read(&mut self.chunk) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                other => break other.map_err(FrameError::Io)?,
            }
        };
        if read == 0 {
            return Err(if begun {
                FrameError::Corrupt(format!(
                    "the output closed in the middle of a frame, after {} byte(s)",
                    self.buffered()
                ))
            } else {
                FrameError::Closed
            });
        }
        self.buffer.extend_from_slice(&self.chunk[..read]);
        if !begun {
            *frame_by = Some(Instant::now() + FRAME_BOUND);
        }
        Ok(())
    }
}

/// Whether `fd` has something to read (or is closed) before `deadline`.
fn readable_before(fd: i32, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let millis =
            libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        match ready {
            0 => return Ok(false),
            1.. => return Ok(true),
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn reader_of(bytes: &[u8]) -> FrameReader<io::PipeReader> {
        let (read, mut write) = io::pipe().expect("a pipe");
        write.write_all(bytes).expect("written");
        drop(write);
        FrameReader::new(read)
    }

    #[test]
    fn frames_come_back_as_they_were_built() {
        let mut bytes = frame(kind::DONE, |out| out.extend_from_slice(b"\"ack\""));
        bytes.extend(frame(kind::LOG, |out| out.extend_from_slice(&[0, 10, 255])));
        bytes.extend(frame(kind::READY, |_| {}));
        let mut reader = reader_of(&bytes);
        let kinds = [kind::DONE, kind::LOG, kind::READY];
        assert_eq!(
            reader.next(&kinds, None).unwrap(),
            (kind::DONE, b"\"ack\"".to_vec())
        );
        assert_eq!(
            reader.next(&kinds, None).unwrap(),
            (kind::LOG, vec![0, 10, 255])
        );
        assert_eq!(reader.next(&kinds, None).unwrap(), (kind::READY, vec![]));
        assert!(matches!(reader.next(&kinds, None), Err(FrameError::Closed)));
    }

    #[test]
    fn a_foreign_writers_bytes_end_the_conversation() {
        let mut reader = reader_of(b"a log line from a forked child\n");
        let error = reader.next(&[kind::DONE], None).unwrap_err();
        assert!(matches!(error, FrameError::Corrupt(_)), "{error}");
        let mut huge = reader_of(&[0xff, 0xff, 0xff, 0x7f, kind::DONE]);
        assert!(matches!(
            huge.next(&[kind::DONE], None),
            Err(FrameError::Corrupt(_))
        ));
    }

    #[test]
    fn a_frame_cut_short_is_corrupt_and_a_silent_pipe_times_out() {
        let mut cut = reader_of(&frame(kind::DONE, |out| out.extend_from_slice(b"abc"))[..6]);
        assert!(matches!(
            cut.next(&[kind::DONE], None),
            Err(FrameError::Corrupt(_))
        ));
        let (read, _write) = io::pipe().expect("a pipe");
        let mut silent = FrameReader::new(read);
        let deadline = Instant::now() + Duration::from_millis(20);
        assert!(matches!(
            silent.next(&[kind::DONE], Some(deadline)),
            Err(FrameError::TimedOut)
        ));
    }
}
