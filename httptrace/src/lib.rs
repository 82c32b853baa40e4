//! Userspace half of bpfleet's HTTP tracer: turns the payload prefixes that
//! the kernel side captures on `read`/`write`-family syscalls into HTTP/1.x
//! exchanges (method, route, status, sizes, timing), ready for metrics and
//! spans.
//!
//! The kernel captures only the first bytes of each syscall buffer (the
//! request line, status line and headers) plus the full byte count, so the
//! parser frames messages by *counting* bytes it may never see: bodies with
//! `Content-Length` and chunk data are skipped by length; when the framing
//! itself falls outside the capture (a head cut short, chunk sizes in an
//! unseen part) the stream resynchronises at the next segment that starts a
//! message, and the message ends at the last byte it was seen to own.
//!
//! Sensitive data is removed here, before an [`Exchange`] exists:
//! [`redact::Redactor`] rewrites header values, query parameters and command
//! lines, so nothing downstream ever holds a secret.
//!
//! No I/O, no BPF, no clock: callers pass timestamps in. The node agent owns
//! the ring buffer, connection table and export.

mod connection;
mod stream;

pub mod alerts;
pub mod cgroup;
pub mod redact;
pub mod route;
pub mod rules;
pub mod stats;

pub use connection::{Connection, Exchange, Outcome, Role};

/// Which way bytes moved, seen from the traced process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `read`, `readv`, `recvfrom`, `recvmsg`: bytes into the process.
    Read,
    /// `write`, `writev`, `sendto`, `sendmsg`: bytes out of the process.
    Write,
}

/// One syscall's worth of bytes on a connection.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    /// Kernel timestamp (ns) when the syscall returned.
    pub ts_ns: u64,
    pub direction: Direction,
    /// Bytes the syscall moved (its return value).
    pub len: u64,
    /// The captured prefix of those bytes; `data.len() <= len`.
    pub data: &'a [u8],
}

impl<'a> Segment<'a> {
    /// A segment whose bytes were all captured.
    pub fn full(ts_ns: u64, direction: Direction, data: &'a [u8]) -> Self {
        Self {
            ts_ns,
            direction,
            len: data.len() as u64,
            data,
        }
    }

    /// A segment of `len` bytes of which only the first `cap` were captured.
    pub fn truncated(ts_ns: u64, direction: Direction, data: &'a [u8], cap: usize) -> Self {
        Self {
            ts_ns,
            direction,
            len: data.len() as u64,
            data: &data[..cap.min(data.len())],
        }
    }
}
