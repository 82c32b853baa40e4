//! Events to exchanges: one [`Connection`] per traced connection, created
//! on its first data event and dropped on close, on expiry, or when the
//! table is full (oldest idle first). Also the path keys the kernel
//! announces (metrics mode), which name its counts and the requests it
//! hands over when a connection leaves metrics mode.

use std::collections::HashMap;
use std::sync::Arc;

use bpfleet_httptrace::redact::Redactor;
use bpfleet_httptrace::{Connection, Exchange, Segment};

use crate::event::{ConnId, Event, Kind};

/// An exchange and where it was seen.
#[derive(Clone, Debug, PartialEq)]
pub struct Traced {
    pub conn: ConnId,
    pub cgroup_id: u64,
    pub local_port: u16,
    pub remote_port: u16,
    /// Gate token of the revision that reported the event completing the
    /// exchange (for timeouts and evictions: the connection's last event).
    pub revision: u32,
    pub exchange: Exchange,
}

struct Entry {
    conn: Connection,
    cgroup_id: u64,
    local_port: u16,
    remote_port: u16,
    last_ns: u64,
    revision: u32,
}

/// Counters of the pipeline's own health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    pub events: u64,
    pub malformed: u64,
    /// HTTP message heads that could not be parsed.
    pub parse_errors: u64,
    pub connections_evicted: u64,
}

/// Path keys kept (the kernel announces at most `HTTP_PATHS_MAX`, 4096).
pub const MAX_PATHS: usize = 8192;

pub struct Pipeline {
    conns: HashMap<ConnId, Entry>,
    paths: HashMap<u64, String>,
    redactor: Arc<Redactor>,
    max_conns: usize,
    /// Requests without an answer after this long are reported as timeouts.
    pub request_timeout_ns: u64,
    /// Connections silent this long are forgotten (after expiring requests).
    pub idle_ns: u64,
    health: Health,
}

impl Pipeline {
    pub fn new(redactor: Arc<Redactor>, max_conns: usize) -> Self {
        Self {
            conns: HashMap::new(),
            paths: HashMap::new(),
            redactor,
            max_conns: max_conns.max(1),
            request_timeout_ns: 30_000_000_000,
            idle_ns: 300_000_000_000,
            health: Health::default(),
        }
    }

    /// New redaction rules, for connections open now and later.
    pub fn set_redactor(&mut self, redactor: Arc<Redactor>) {
        for entry in self.conns.values_mut() {
            entry.conn.set_redactor(redactor.clone());
        }
        self.redactor = redactor;
    }

    pub fn health(&self) -> Health {
        self.health
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The path the kernel announced for a path key.
    pub fn path(&self, key: u64) -> Option<&str> {
        self.paths.get(&key).map(String::as_str)
    }

    /// Every path key's name, as the kernel announced them.
    pub fn paths(&self) -> impl Iterator<Item = (u64, &str)> {
        self.paths.iter().map(|(k, p)| (*k, p.as_str()))
    }

    /// Takes a name the kernel announced to an earlier reader (handed on,
    /// see [`crate::aggregate::Handover`]), within the same bound as
    /// announcements.
    pub fn remember_path(&mut self, key: u64, path: String) {
        if self.paths.len() < MAX_PATHS || self.paths.contains_key(&key) {
            self.paths.insert(key, path);
        }
    }

    /// Handles one raw ring-buffer record.
    pub fn handle_raw(&mut self, raw: &[u8], out: &mut Vec<Traced>) {
        self.health.events += 1;
        match Event::decode(raw) {
            Ok(e) => self.handle(&e, out),
            Err(_) => self.health.malformed += 1,
        }
    }

    pub fn handle(&mut self, e: &Event<'_>, out: &mut Vec<Traced>) {
        match e.kind {
            Kind::Close => {
                if let Some(mut entry) = self.conns.remove(&e.conn) {
                    entry.revision = e.revision;
                    let done = entry.conn.close(e.ts_ns);
                    emit(e.conn, &entry, done, out);
                }
            }
            Kind::Data => {
                let seg = Segment {
                    ts_ns: e.ts_ns,
                    direction: e.direction,
                    len: e.len,
                    data: e.data,
                };
                self.feed(e, &seg, out);
            }
            Kind::Path => {
                if let (Some(key), Some(path)) = (e.path_key(), e.path())
                    && (self.paths.len() < MAX_PATHS || self.paths.contains_key(&key))
                {
                    self.paths
                        .insert(key, String::from_utf8_lossy(path).into_owned());
                }
            }
            Kind::Handover => {
                // The request the kernel had read and not yet seen
                // answered: given to the connection as the head it was
                // (its headers are not known), so the response that
                // follows pairs with it.
                let (Some(key), Some(method)) = (e.path_key(), e.method()) else {
                    return;
                };
                let path = self.paths.get(&key).map_or("/", String::as_str);
                let head = format!("{} {path} HTTP/1.1\r\n\r\n", method.as_str());
                let seg = Segment {
                    ts_ns: e.ts_ns,
                    direction: e.direction,
                    len: head.len() as u64,
                    data: head.as_bytes(),
                };
                self.feed(e, &seg, out);
            }
        }
    }

    fn feed(&mut self, e: &Event<'_>, seg: &Segment<'_>, out: &mut Vec<Traced>) {
        if !self.conns.contains_key(&e.conn) && self.conns.len() >= self.max_conns {
            self.evict_one(out);
        }
        let redactor = &self.redactor;
        let entry = self.conns.entry(e.conn).or_insert_with(|| Entry {
            conn: Connection::new(e.role, redactor.clone()),
            cgroup_id: e.cgroup_id,
            local_port: e.local_port,
            remote_port: e.remote_port,
            last_ns: e.ts_ns,
            revision: e.revision,
        });
        entry.last_ns = e.ts_ns;
        entry.revision = e.revision;
        let done = entry.conn.feed(seg);
        self.health.parse_errors += entry.conn.take_parse_errors();
        emit(e.conn, entry, done, out);
    }

    /// Reports requests that timed out and forgets idle connections.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Traced>) {
        let timeout = self.request_timeout_ns;
        let idle = self.idle_ns;
        self.conns.retain(|id, entry| {
            let done = entry.conn.expire(now_ns, timeout);
            emit(*id, entry, done, out);
            now_ns.saturating_sub(entry.last_ns) < idle || !entry.conn.is_quiet()
        });
    }

    fn evict_one(&mut self, out: &mut Vec<Traced>) {
        let oldest = self
            .conns
            .iter()
            .min_by_key(|(_, e)| e.last_ns)
            .map(|(id, _)| *id);
        if let Some(id) = oldest
            && let Some(mut entry) = self.conns.remove(&id)
        {
            let done = entry.conn.close(entry.last_ns);
            emit(id, &entry, done, out);
            self.health.connections_evicted += 1;
        }
    }
}

fn emit(conn: ConnId, entry: &Entry, done: Vec<Exchange>, out: &mut Vec<Traced>) {
    out.extend(done.into_iter().map(|exchange| Traced {
        conn,
        cgroup_id: entry.cgroup_id,
        local_port: entry.local_port,
        remote_port: entry.remote_port,
        revision: entry.revision,
        exchange,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::HEADER_LEN;

    /// A raw record as the kernel side writes it (server end, socket 5).
    fn record(kind: u8, ts: u64, dir: u8, len: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&ts.to_le_bytes());
        b[8..16].copy_from_slice(&5u64.to_le_bytes());
        b[24..28].copy_from_slice(&42u32.to_le_bytes());
        b[36..40].copy_from_slice(&len.to_le_bytes());
        b[40..44].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b[48] = kind;
        b[49] = dir;
        b[50] = 1;
        b[52..56].copy_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn a_handed_over_request_pairs_with_the_response_that_follows() {
        let mut p = Pipeline::new(Arc::new(Redactor::builtin()), 16);
        let mut out = Vec::new();
        let mut path = 9u64.to_le_bytes().to_vec();
        path.extend_from_slice(b"/api/orders/7");
        p.handle_raw(&record(4, 1, 0, 0, &path), &mut out);
        assert_eq!(p.path(9), Some("/api/orders/7"));
        let mut ho = 9u64.to_le_bytes().to_vec();
        ho.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
        p.handle_raw(&record(5, 1_000, 0, 0, &ho), &mut out);
        assert!(out.is_empty());
        let resp = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        p.handle_raw(&record(1, 5_000, 1, resp.len() as u32, resp), &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        let e = &out[0].exchange;
        assert_eq!(
            (e.method.as_str(), e.target.as_str(), e.status),
            ("POST", "/api/orders/7", Some(201))
        );
        assert_eq!(e.duration_ns(), 4_000);
        assert_eq!(out[0].revision, 3);
        assert_eq!(p.health().malformed, 0);
    }

    #[test]
    fn the_path_table_is_bounded() {
        let mut p = Pipeline::new(Arc::new(Redactor::builtin()), 16);
        let mut out = Vec::new();
        for k in 0..(MAX_PATHS as u64 + 10) {
            let mut path = k.to_le_bytes().to_vec();
            path.extend_from_slice(b"/x");
            p.handle_raw(&record(4, 1, 0, 0, &path), &mut out);
        }
        assert_eq!(p.paths.len(), MAX_PATHS);
    }
}
