//! Events to exchanges: one [`Connection`] per traced connection, created
//! on its first data event and dropped on close, on expiry, or when the
//! table is full (oldest idle first).

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

pub struct Pipeline {
    conns: HashMap<ConnId, Entry>,
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
                let seg = Segment {
                    ts_ns: e.ts_ns,
                    direction: e.direction,
                    len: e.len,
                    data: e.data,
                };
                let done = entry.conn.feed(&seg);
                self.health.parse_errors += entry.conn.take_parse_errors();
                emit(e.conn, entry, done, out);
            }
        }
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
