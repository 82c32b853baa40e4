//! Target `tracer_events`: a list of ring-buffer records and clock ticks
//! through one [`Pipeline`], whose connection table is kept small so that
//! eviction runs too.
//!
//! Input layout (little endian): `max_conns: u8` (`% 8 + 1`), then
//! `timeout_shift: u8` and `idle_shift: u8` (`request_timeout_ns` and
//! `idle_ns` are `1 << (shift % 40)`), then steps, each a tag byte (`% 3`):
//!
//! | tag | step | fields |
//! | --- | --- | --- |
//! | 0 | raw record | `n: u16`, `n` bytes, given to `handle_raw` as they are |
//! | 1 | laid-out record | a [`Header`] in compact form (see `laid_out`), then its payload |
//! | 2 | `tick` | `now: u64` |
//!
//! Raw records reach every branch of `Event::decode`, kinds it does not know
//! yet included; laid-out ones get the fuzzer past the header quickly, on a
//! few connection ids so that records of one connection meet.

use std::collections::HashMap;

use bpfleet_httptrace::{Direction, Role};
use bpfleet_tracer::event::{ConnId, Event, HEADER_LEN, Kind};
use bpfleet_tracer::pipeline::{Pipeline, Traced};

use crate::Reader;
use crate::http_segments::Ledger;

const RAW: u8 = 0;
const LAID_OUT: u8 = 1;
const TICK: u8 = 2;

/// `kind` values of `struct http_event_hdr` (bpf/progs/http_tracer.h).
pub const KIND_DATA: u8 = 1;
pub const KIND_CLOSE: u8 = 3;

/// The fields of `struct http_event_hdr`, in its order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub ts_ns: u64,
    pub sock_id: u64,
    pub cgroup_id: u64,
    pub tgid: u32,
    pub pid: u32,
    pub fd: u32,
    pub len: u32,
    pub cap: u32,
    pub local_port: u16,
    pub remote_port: u16,
    pub kind: u8,
    pub dir: u8,
    pub role: u8,
    pub rev: u32,
}

impl Header {
    /// The record the kernel side writes: the 56-byte header, then `payload`.
    pub fn record(&self, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + payload.len());
        b.extend_from_slice(&self.ts_ns.to_le_bytes());
        b.extend_from_slice(&self.sock_id.to_le_bytes());
        b.extend_from_slice(&self.cgroup_id.to_le_bytes());
        b.extend_from_slice(&self.tgid.to_le_bytes());
        b.extend_from_slice(&self.pid.to_le_bytes());
        b.extend_from_slice(&self.fd.to_le_bytes());
        b.extend_from_slice(&self.len.to_le_bytes());
        b.extend_from_slice(&self.cap.to_le_bytes());
        b.extend_from_slice(&self.local_port.to_le_bytes());
        b.extend_from_slice(&self.remote_port.to_le_bytes());
        b.extend_from_slice(&[self.kind, self.dir, self.role, 0]);
        b.extend_from_slice(&self.rev.to_le_bytes());
        b.extend_from_slice(payload);
        b
    }
}

/// Runs one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let (Some(max_conns), Some(timeout_shift), Some(idle_shift)) = (r.u8(), r.u8(), r.u8()) else {
        return;
    };
    let max_conns = usize::from(max_conns % 8) + 1;
    let mut pipeline = Pipeline::new(crate::builtin_redactor(), max_conns);
    pipeline.request_timeout_ns = 1 << (timeout_shift % 40);
    pipeline.idle_ns = 1 << (idle_shift % 40);
    let mut ledgers: HashMap<ConnId, Ledger> = HashMap::new();
    let mut records = 0u64;
    let mut out = Vec::new();
    while let Some(tag) = r.u8() {
        match tag % 3 {
            RAW => {
                let Some(n) = r.u16() else {
                    break;
                };
                let raw = r.up_to(usize::from(n));
                records += 1;
                feed(&mut pipeline, &mut ledgers, raw, &mut out);
            }
            LAID_OUT => {
                let Some((header, payload)) = laid_out(&mut r) else {
                    break;
                };
                records += 1;
                feed(
                    &mut pipeline,
                    &mut ledgers,
                    &header.record(payload),
                    &mut out,
                );
            }
            _ => {
                let Some(now) = r.u64() else {
                    break;
                };
                pipeline.tick(now, &mut out);
            }
        }
        for t in out.drain(..) {
            check(&mut ledgers, &t);
        }
        assert!(
            pipeline.connections() <= max_conns,
            "{} connections in a table of {max_conns}",
            pipeline.connections()
        );
        let health = pipeline.health();
        assert_eq!(health.events, records, "events counted");
        assert!(health.malformed <= health.events);
        assert!(health.connections_evicted <= health.events);
    }
    pipeline.tick(u64::MAX, &mut out);
    for t in out.drain(..) {
        check(&mut ledgers, &t);
    }
}

/// Hands one record to the pipeline, first noting its bytes in the ledger
/// of its connection when it decodes as data.
fn feed(
    pipeline: &mut Pipeline,
    ledgers: &mut HashMap<ConnId, Ledger>,
    raw: &[u8],
    out: &mut Vec<Traced>,
) {
    if let Ok(e) = Event::decode(raw) {
        assert!(e.data.len() <= raw.len() - HEADER_LEN);
        // A handover becomes the request head the kernel had read:
        // "METHOD path HTTP/1.1\r\n\r\n", the path as announced (or "/").
        let fed = if e.kind == Kind::Handover {
            let path = e.path_key().and_then(|k| pipeline.path(k)).unwrap_or("/");
            let method = e.method().map_or("", |m| m.as_str());
            (method.len() + 1 + path.len() + " HTTP/1.1\r\n\r\n".len()) as u64
        } else {
            e.len.max(e.data.len() as u64)
        };
        ledgers.entry(e.conn).or_default().fed(e.direction, fed);
    }
    pipeline.handle_raw(raw, out);
}

fn check(ledgers: &mut HashMap<ConnId, Ledger>, t: &Traced) {
    let Some(ledger) = ledgers.get_mut(&t.conn) else {
        panic!("an exchange on a connection that was never fed: {t:?}");
    };
    ledger.check(&t.exchange);
}

/// A laid-out record: `kind: u8` (`% 4`: 0 data, 1 close, 2 and 3: the
/// next byte is the kind, as it is), `dir: u8`, `role: u8`, `conn: u8`
/// (socket `conn % 4`, tgid `conn / 4 % 4`, fd `conn / 16`), `ts: u64`,
/// `len: u32`, `rev: u8`, `cap: u16`, then up to `cap` payload bytes; `cap`
/// in the header is the payload's length.
fn laid_out<'a>(r: &mut Reader<'a>) -> Option<(Header, &'a [u8])> {
    let kind = match r.u8()? % 4 {
        0 => KIND_DATA,
        1 => KIND_CLOSE,
        _ => r.u8()?,
    };
    let (dir, role, conn) = (r.u8()?, r.u8()?, r.u8()?);
    let (ts_ns, len, rev, cap) = (r.u64()?, r.u32()?, r.u8()?, r.u16()?);
    let payload = r.up_to(usize::from(cap));
    let header = Header {
        ts_ns,
        sock_id: u64::from(conn % 4),
        cgroup_id: 7,
        tgid: u32::from(conn / 4 % 4),
        pid: 100,
        fd: u32::from(conn / 16),
        len,
        cap: payload.len() as u32,
        local_port: 8080,
        remote_port: 40000,
        kind,
        dir,
        role,
        rev: u32::from(rev),
    };
    Some((header, payload))
}

/// Writes inputs in this target's layout.
#[derive(Debug, Clone)]
pub struct Script {
    buf: Vec<u8>,
}

impl Script {
    /// `request_timeout_ns` and `idle_ns` are `1 << timeout_shift` and
    /// `1 << idle_shift`.
    pub fn new(max_conns: u8, timeout_shift: u8, idle_shift: u8) -> Self {
        Self {
            buf: vec![max_conns.saturating_sub(1), timeout_shift, idle_shift],
        }
    }

    /// Any bytes as one record.
    pub fn raw(mut self, record: &[u8]) -> Self {
        let record = &record[..record.len().min(usize::from(u16::MAX))];
        self.buf.push(RAW);
        self.buf
            .extend_from_slice(&(record.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(record);
        self
    }

    /// A record laid out from compact fields: a data record on connection
    /// `conn` (see [`laid_out`]) of `len` bytes of which `payload` was
    /// captured.
    pub fn data(
        mut self,
        conn: u8,
        ts: u64,
        direction: Direction,
        role: Option<Role>,
        payload: &[u8],
        len: u32,
    ) -> Self {
        let payload = &payload[..payload.len().min(usize::from(u16::MAX))];
        self.buf.extend_from_slice(&[
            LAID_OUT,
            0,
            match direction {
                Direction::Read => 0,
                Direction::Write => 1,
            },
            match role {
                None => 0,
                Some(Role::Server) => 1,
                Some(Role::Client) => 2,
            },
            conn,
        ]);
        self.buf.extend_from_slice(&ts.to_le_bytes());
        self.buf
            .extend_from_slice(&len.max(payload.len() as u32).to_le_bytes());
        self.buf.push(1);
        self.buf
            .extend_from_slice(&(payload.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(payload);
        self
    }

    /// A close record on connection `conn`.
    pub fn close(mut self, conn: u8, ts: u64) -> Self {
        self.buf.extend_from_slice(&[LAID_OUT, 1, 0, 0, conn]);
        self.buf.extend_from_slice(&ts.to_le_bytes());
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        self.buf.push(1);
        self.buf.extend_from_slice(&0u16.to_le_bytes());
        self
    }

    pub fn tick(mut self, now: u64) -> Self {
        self.buf.push(TICK);
        self.buf.extend_from_slice(&now.to_le_bytes());
        self
    }

    pub fn build(self) -> Vec<u8> {
        self.buf
    }
}
