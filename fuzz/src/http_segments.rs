//! Target `http_segments`: an arbitrary script of segments, expiries and
//! closes fed to one [`Connection`], in either role or with the role left
//! to inference.
//!
//! Input layout (little endian): one config byte (`% 3`: 0 infer the
//! role, 1 server, 2 client), then steps until the input runs out, each a
//! tag byte (`% 4`) and its fields:
//!
//! | tag | step | fields |
//! | --- | --- | --- |
//! | 0 | read segment | `ts: u64`, `uncaptured: u32`, `cap: u16`, `cap` bytes |
//! | 1 | write segment | as read |
//! | 2 | `expire` | `now: u64`, `timeout: u64` |
//! | 3 | `close` | `ts: u64` |
//!
//! A segment's `len` is `cap + uncaptured`: never less than what was
//! captured, at most what a syscall's `u32` return value can say beyond it.
//! A last `cap` longer than the input takes what is left.

use bpfleet_httptrace::redact::{DEFAULT_HEADERS, DEFAULT_QUERY_PARAMS, REDACTED};
use bpfleet_httptrace::{Connection, Direction, Exchange, Outcome, Role, Segment};

use crate::Reader;

const READ: u8 = 0;
const WRITE: u8 = 1;
const EXPIRE: u8 = 2;
const CLOSE: u8 = 3;

/// Runs one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let Some(config) = r.u8() else {
        return;
    };
    let role = match config % 3 {
        1 => Some(Role::Server),
        2 => Some(Role::Client),
        _ => None,
    };
    let mut conn = Connection::new(role, crate::builtin_redactor());
    let mut ledger = Ledger::default();
    let mut last_ts = 0;
    while let Some(tag) = r.u8() {
        match tag % 4 {
            t @ (READ | WRITE) => {
                let (Some(ts), Some(uncaptured), Some(cap)) = (r.u64(), r.u32(), r.u16()) else {
                    break;
                };
                let bytes = r.up_to(usize::from(cap));
                let direction = if t == READ {
                    Direction::Read
                } else {
                    Direction::Write
                };
                let seg = Segment {
                    ts_ns: ts,
                    direction,
                    len: bytes.len() as u64 + u64::from(uncaptured),
                    data: bytes,
                };
                last_ts = ts;
                ledger.fed(direction, seg.len);
                for e in conn.feed(&seg) {
                    ledger.check(&e);
                    assert_eq!(Some(e.role), conn.role(), "exchange of another role");
                }
                conn.take_parse_errors();
            }
            EXPIRE => {
                let (Some(now), Some(timeout)) = (r.u64(), r.u64()) else {
                    break;
                };
                for e in conn.expire(now, timeout) {
                    ledger.check(&e);
                    assert_eq!(e.outcome, Outcome::Timeout, "expire ends only timeouts");
                    assert!(
                        now.saturating_sub(e.start_ns) >= timeout,
                        "expired before its timeout: {e:?}, now {now}, timeout {timeout}"
                    );
                }
            }
            _ => {
                let Some(ts) = r.u64() else {
                    break;
                };
                for e in conn.close(ts) {
                    ledger.check(&e);
                }
                after_close(&mut conn, ts);
            }
        }
    }
    for e in conn.close(last_ts) {
        ledger.check(&e);
    }
    after_close(&mut conn, last_ts);
}

/// A closed connection holds no request: closing again or expiring
/// everything yields nothing.
fn after_close(conn: &mut Connection, ts: u64) {
    assert!(conn.close(ts).is_empty(), "a second close found exchanges");
    assert!(
        conn.expire(u64::MAX, 0).is_empty(),
        "requests left after close"
    );
}

/// What one connection was fed, to bound what it reports.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    read: u64,
    write: u64,
    exchanges: u64,
}

impl Ledger {
    pub(crate) fn fed(&mut self, direction: Direction, len: u64) {
        let total = match direction {
            Direction::Read => &mut self.read,
            Direction::Write => &mut self.write,
        };
        *total = total.saturating_add(len);
    }

    /// Checks one exchange against what was fed and against the redaction
    /// defaults (every caller uses [`Redactor::builtin`]).
    pub(crate) fn check(&mut self, e: &Exchange) {
        let (requests, responses) = match e.role {
            Role::Server => (self.read, self.write),
            Role::Client => (self.write, self.read),
        };
        self.exchanges += 1;
        assert!(
            self.exchanges <= requests,
            "{} exchanges out of {requests} request bytes",
            self.exchanges
        );
        assert!(e.end_ns >= e.start_ns, "ends before it starts: {e:?}");
        assert_eq!(e.duration_ns(), e.end_ns - e.start_ns);
        assert!(
            e.request_bytes <= requests,
            "request of {} bytes, {requests} fed: {e:?}",
            e.request_bytes
        );
        assert!(
            e.response_bytes <= responses,
            "response of {} bytes, {responses} fed: {e:?}",
            e.response_bytes
        );
        if let Some(body) = e.request_body_bytes {
            assert!(
                body <= e.request_bytes,
                "request body past the request: {e:?}"
            );
        }
        if let Some(body) = e.response_body_bytes {
            assert!(
                body <= e.response_bytes,
                "response body past the response: {e:?}"
            );
        }
        match e.outcome {
            Outcome::Complete => assert!(e.status.is_some(), "complete without a status: {e:?}"),
            Outcome::Timeout => assert!(
                e.status.is_none() && e.response_bytes == 0,
                "timed out with a response: {e:?}"
            ),
            Outcome::Closed => {}
        }
        assert_redacted(e);
    }
}

/// No value of a default sensitive header or query parameter survives.
pub(crate) fn assert_redacted(e: &Exchange) {
    for (name, value) in &e.request_headers {
        if DEFAULT_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            assert_eq!(value, REDACTED, "header {name} kept its value");
        }
    }
    let host = e
        .request_headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.as_str());
    assert_eq!(e.host.as_deref(), host, "host is not the first Host header");
    assert_query_redacted(&e.target, &DEFAULT_QUERY_PARAMS);
}

/// Every parameter of `target` named (case-insensitively, no percent
/// escapes) in `names` has the value [`REDACTED`].
pub(crate) fn assert_query_redacted<S: AsRef<str>>(target: &str, names: &[S]) {
    let Some((_, query)) = target.split_once('?') else {
        return;
    };
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    for pair in query.split('&') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        if key.contains(['%', '+']) {
            continue;
        }
        if names.iter().any(|n| n.as_ref().eq_ignore_ascii_case(key)) {
            assert_eq!(
                value, REDACTED,
                "query parameter {key} kept its value in {target}"
            );
        }
    }
}

/// Writes inputs in this target's layout.
#[derive(Debug, Clone)]
pub struct Script {
    buf: Vec<u8>,
}

impl Script {
    pub fn new(role: Option<Role>) -> Self {
        let config = match role {
            None => 0,
            Some(Role::Server) => 1,
            Some(Role::Client) => 2,
        };
        Self { buf: vec![config] }
    }

    /// A segment of `len` bytes of which `data` was captured (`len` is
    /// raised to `data.len()` if lower).
    pub fn segment(mut self, ts: u64, direction: Direction, data: &[u8], len: u64) -> Self {
        let data = &data[..data.len().min(usize::from(u16::MAX))];
        let uncaptured = u32::try_from(len.saturating_sub(data.len() as u64)).unwrap_or(u32::MAX);
        self.buf.push(match direction {
            Direction::Read => READ,
            Direction::Write => WRITE,
        });
        self.buf.extend_from_slice(&ts.to_le_bytes());
        self.buf.extend_from_slice(&uncaptured.to_le_bytes());
        self.buf
            .extend_from_slice(&(data.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(data);
        self
    }

    /// A segment captured whole.
    pub fn full(self, ts: u64, direction: Direction, data: &[u8]) -> Self {
        let len = data.len() as u64;
        self.segment(ts, direction, data, len)
    }

    pub fn expire(mut self, now: u64, timeout: u64) -> Self {
        self.buf.push(EXPIRE);
        self.buf.extend_from_slice(&now.to_le_bytes());
        self.buf.extend_from_slice(&timeout.to_le_bytes());
        self
    }

    pub fn close(mut self, ts: u64) -> Self {
        self.buf.push(CLOSE);
        self.buf.extend_from_slice(&ts.to_le_bytes());
        self
    }

    pub fn build(self) -> Vec<u8> {
        self.buf
    }
}
