//! Decoding of the kernel side's ring-buffer records. The layout mirrors
//! `struct http_event_hdr` in `bpf/progs/http_tracer.h`: 56 bytes, little
//! endian, followed by `cap` payload bytes: a syscall's bytes (data), a
//! path key and its bytes (path), or the request a connection had pending
//! when it left metrics mode (handover).

use bpfleet_httptrace::{Direction, Role};

use crate::{Error, Result};

/// Size of `struct http_event_hdr`; `http_tracer.h` asserts the same
/// size and offsets at compile time.
pub const HEADER_LEN: usize = 56;
/// Offset of `kind`; `dir` and `role` follow it.
const OFF_KIND: usize = 48;
/// Offset of `rev`, the gate token of the revision that reported the event.
const OFF_REV: usize = 52;
/// Payload bytes captured per syscall when the policy sets nothing.
pub const DEFAULT_CAPTURE: u64 = 256;
/// The most the kernel side can capture per syscall.
pub const MAX_CAPTURE: u64 = 4095;

/// Slots of `bpfleet_config` the tracer reads: its own (`http_tracer.h`)
/// and the TracerPolicy's (`bpfleet_gate.h`, written by the operator).
pub mod config {
    /// The tracer's own: the reader's process, never traced.
    pub const IGNORE_TGID: u32 = 2;
    /// The tracer's own: the paths epoch. A socket's "path announced"
    /// mark holds only in the epoch it was set in; a reader that starts
    /// anew empties `http_paths` ([`crate::pinned::forget_paths`]) and then
    /// changes the epoch, so every key is announced to it again.
    pub const PATHS_EPOCH: u32 = 3;
    pub const SAMPLE_PPM: u32 = 8;
    pub const CAPTURE: u32 = 9;
    /// 1: only processes in `bpfleet_pids`.
    pub const PID_FILTER: u32 = 10;
    /// Bit 0: only ports marked 1 in `bpfleet_ports`; bit 1: never ports
    /// marked 2.
    pub const PORT_FILTER: u32 = 11;
    /// Ends traced: bit 0 the server (accepting) end, bit 1 the client
    /// end; 0 is the server end only.
    pub const ENDS: u32 = 12;
    pub const ENDS_SERVER: u64 = 1;
    pub const ENDS_CLIENT: u64 = 2;
    pub const ENDS_BOTH: u64 = 3;
    /// 1: every read and write as an event (no counting in the kernel);
    /// 0: metrics mode.
    pub const EVENTS: u32 = 13;
}

/// Bytes of a path the kernel hashes into a path key (`HTTP_PATH_MAX`).
pub const PATH_MAX: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Data,
    Close,
    /// A path key counted for the first time: `data` is the key (8 bytes)
    /// then the path.
    Path,
    /// A connection left metrics mode with a request pending: `data` is
    /// the request's path key (8 bytes) and method code; `ts_ns` is when
    /// it was read and `direction` the request's.
    Handover,
}

/// Identity of a connection across events: the process and the kernel
/// socket, so that dup'ed fds of one connection (a reader and a writer
/// half) are one connection; the fd only for non-socket fds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub tgid: u32,
    pub sock: u64,
    /// 0 when `sock` identifies the connection.
    pub fd: u32,
}

/// One decoded record; `data` borrows the ring buffer.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    pub kind: Kind,
    pub ts_ns: u64,
    pub conn: ConnId,
    pub fd: u32,
    pub cgroup_id: u64,
    pub pid: u32,
    pub len: u64,
    pub local_port: u16,
    pub remote_port: u16,
    pub direction: Direction,
    pub role: Option<Role>,
    /// Gate token of the revision whose program reported the event; 0 when
    /// the object was not loaded by the node agent (standalone).
    pub revision: u32,
    pub data: &'a [u8],
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl<'a> Event<'a> {
    pub fn decode(b: &'a [u8]) -> Result<Self> {
        if b.len() < HEADER_LEN {
            return Err(Error::Event("shorter than its header"));
        }
        let cap = u32_at(b, 40) as usize;
        let data = b
            .get(HEADER_LEN..HEADER_LEN + cap)
            .ok_or(Error::Event("payload shorter than announced"))?;
        let kind = match b[OFF_KIND] {
            1 => Kind::Data,
            3 => Kind::Close,
            4 if cap >= 8 => Kind::Path,
            5 if cap >= 9 => Kind::Handover,
            4 | 5 => return Err(Error::Event("path or handover record too short")),
            _ => return Err(Error::Event("unknown kind")),
        };
        let direction = match b[OFF_KIND + 1] {
            0 => Direction::Read,
            _ => Direction::Write,
        };
        let role = match b[OFF_KIND + 2] {
            1 => Some(Role::Server),
            2 => Some(Role::Client),
            _ => None,
        };
        Ok(Self {
            kind,
            ts_ns: u64_at(b, 0),
            conn: {
                let sock = u64_at(b, 8);
                ConnId {
                    tgid: u32_at(b, 24),
                    sock,
                    fd: if sock == 0 { u32_at(b, 32) } else { 0 },
                }
            },
            fd: u32_at(b, 32),
            cgroup_id: u64_at(b, 16),
            pid: u32_at(b, 28),
            len: u64::from(u32_at(b, 36)),
            local_port: u16_at(b, 44),
            remote_port: u16_at(b, 46),
            direction,
            role,
            revision: u32_at(b, OFF_REV),
            data,
        })
    }
}

impl Event<'_> {
    /// The path key of a path or handover record.
    pub fn path_key(&self) -> Option<u64> {
        match self.kind {
            Kind::Path | Kind::Handover => Some(u64_at(self.data, 0)),
            _ => None,
        }
    }

    /// The path bytes of a path record.
    pub fn path(&self) -> Option<&[u8]> {
        (self.kind == Kind::Path).then(|| &self.data[8..])
    }

    /// The method of a handover record.
    pub fn method(&self) -> Option<crate::aggregate::Method> {
        (self.kind == Kind::Handover).then(|| crate::aggregate::Method::from_code(self.data[8]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, cap: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&7u64.to_le_bytes());
        b[8..16].copy_from_slice(&5u64.to_le_bytes());
        b[24..28].copy_from_slice(&42u32.to_le_bytes());
        b[32..36].copy_from_slice(&9u32.to_le_bytes());
        b[36..40].copy_from_slice(&1000u32.to_le_bytes());
        b[40..44].copy_from_slice(&cap.to_le_bytes());
        b[44..46].copy_from_slice(&8080u16.to_le_bytes());
        b[48] = kind;
        b[49] = 1;
        b[50] = 1;
        b[52..56].copy_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn decodes_the_header_layout() {
        let b = record(1, 3, b"GET");
        let e = Event::decode(&b).expect("valid");
        assert_eq!(e.kind, Kind::Data);
        assert_eq!(e.ts_ns, 7);
        assert_eq!(
            e.conn,
            ConnId {
                tgid: 42,
                sock: 5,
                fd: 0
            }
        );
        assert_eq!(e.fd, 9);
        assert_eq!(e.len, 1000);
        assert_eq!(e.local_port, 8080);
        assert_eq!(e.direction, Direction::Write);
        assert_eq!(e.role, Some(Role::Server));
        assert_eq!(e.revision, 3);
        assert_eq!(e.data, b"GET");
    }

    #[test]
    fn decodes_path_and_handover_records() {
        let mut p = 77u64.to_le_bytes().to_vec();
        p.extend_from_slice(b"/api/users/1");
        let b = record(4, p.len() as u32, &p);
        let e = Event::decode(&b).expect("valid");
        assert_eq!(e.kind, Kind::Path);
        assert_eq!(e.path_key(), Some(77));
        assert_eq!(e.path(), Some(&b"/api/users/1"[..]));
        let mut h = 78u64.to_le_bytes().to_vec();
        h.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
        let b = record(5, h.len() as u32, &h);
        let e = Event::decode(&b).expect("valid");
        assert_eq!(e.kind, Kind::Handover);
        assert_eq!(e.path_key(), Some(78));
        assert_eq!(e.method(), Some(crate::aggregate::Method::Post));
        assert!(Event::decode(&record(4, 3, b"abc")).is_err());
        assert!(Event::decode(&record(5, 8, &[0; 8])).is_err());
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert!(Event::decode(&[0u8; 10]).is_err());
        assert!(Event::decode(&record(1, 10, b"GET")).is_err());
        assert!(Event::decode(&record(9, 0, b"")).is_err());
    }
}
