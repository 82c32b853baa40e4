//! Structured logs from BPF programs (`bpf/include/bpfleet_log.h`): the
//! records of the node's log ring decoded ([`Record::decode`]), named with
//! the program and revision that wrote them ([`Names`], from the agent's
//! program views and [`crate::names::log_origin`]) and turned into one
//! JSON object per line ([`json_line`]), which the reader ([`runtime`])
//! writes on the agent's stdout for the cluster's log pipeline. Also the
//! agent-side counters ([`LogCounters`]): records printed by program,
//! revision and level, and records that did not decode. The kernel-side
//! drops (rate limit, full ring) are read from each revision's
//! `bpfleet_log_drops` at scrape time ([`crate::metrics`]).
//!
//! Pure but for [`runtime`]: decoding and formatting are unit-tested
//! without root.

pub mod runtime;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;

use crate::agent::ProgramView;

/// `BPFLEET_LOG_MAGIC`: "BFLG" as a little-endian u32.
pub const MAGIC: u32 = 0x474c_4642;
/// Length of a version 1 record (`struct bpfleet_log_record`).
pub const RECORD_LEN: usize = 72;
/// Label value of a record's program and revision when its origin names
/// no revision the agent holds (parentheses: no program can be named so).
pub const UNKNOWN: &str = "(unknown)";

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 1 error, 2 warn, 3 info, 4 debug (others are printed as numbers).
    pub level: u8,
    /// The program's own message number.
    pub msg_id: u32,
    /// `bpf_ktime_get_ns()` at the call.
    pub ts_ns: u64,
    /// `bpfleet_revision`: the revision's token.
    pub token: u64,
    /// `bpfleet_log_origin`: which program and revision.
    pub origin: u64,
    /// The fields the call gave (0-4).
    pub fields: Vec<u64>,
}

/// Why a record was not decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than a version 1 record.
    Short(usize),
    /// Not a bpfleet_log record.
    Magic(u32),
    /// Version 0, or more than four fields.
    Header { version: u16, nfields: u8 },
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Short(n) => write!(f, "record of {n} bytes, at least {RECORD_LEN} expected"),
            Self::Magic(m) => write!(f, "magic {m:#010x}, not {MAGIC:#010x}"),
            Self::Header { version, nfields } => {
                write!(f, "version {version} with {nfields} fields")
            }
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(a)
}

impl Record {
    /// Decodes a record as the kernel wrote it (native byte order). A
    /// later version only appends, so any version from 1 on decodes; the
    /// bytes after the first [`RECORD_LEN`] are ignored.
    pub fn decode(raw: &[u8]) -> Result<Self, Malformed> {
        if raw.len() < RECORD_LEN {
            return Err(Malformed::Short(raw.len()));
        }
        let magic = u32_at(raw, 0);
        if magic != MAGIC {
            return Err(Malformed::Magic(magic));
        }
        let version = u16_at(raw, 4);
        let nfields = raw[7];
        if version == 0 || nfields > 4 {
            return Err(Malformed::Header { version, nfields });
        }
        Ok(Self {
            level: raw[6],
            msg_id: u32_at(raw, 8),
            ts_ns: u64_at(raw, 16),
            token: u64_at(raw, 24),
            origin: u64_at(raw, 32),
            fields: (0..usize::from(nfields))
                .map(|i| u64_at(raw, 40 + 8 * i))
                .collect(),
        })
    }

    /// The level's name in the JSON line and the metric's label.
    pub fn level_name(&self) -> String {
        match self.level {
            1..=4 => LEVELS[usize::from(self.level) - 1].into(),
            n => n.to_string(),
        }
    }
}

/// The levels of `bpfleet_log.h`, 1 to 4.
pub const LEVELS: [&str; 4] = ["error", "warn", "info", "debug"];

/// Origin -> (program, revision) of every revision the agent holds.
#[derive(Debug, Default, Clone)]
pub struct Names(HashMap<u64, (String, String)>);

impl Names {
    /// From the agent's published program views.
    pub fn from_views(views: &[ProgramView]) -> Self {
        let mut m = HashMap::new();
        for v in views {
            for r in v.revisions.keys() {
                m.insert(
                    crate::names::log_origin(&v.program, r),
                    (v.program.clone(), r.clone()),
                );
            }
        }
        Self(m)
    }

    /// From (program, revision) pairs.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(p, r)| (crate::names::log_origin(&p, &r), (p, r)))
                .collect(),
        )
    }

    /// Adds the names of `other`.
    pub fn extend(&mut self, other: Names) {
        self.0.extend(other.0);
    }

    /// The program and revision of `origin`, if the agent holds it.
    pub fn get(&self, origin: u64) -> Option<(&str, &str)> {
        self.0.get(&origin).map(|(p, r)| (p.as_str(), r.as_str()))
    }
}

/// One JSON log line, as written (keys in this order).
#[derive(Debug, Serialize)]
struct Line<'a> {
    ts: &'a str,
    level: &'a str,
    source: &'static str,
    node: &'a str,
    /// null when the origin names no revision the agent holds.
    program: Option<&'a str>,
    revision: Option<&'a str>,
    msg_id: u32,
    fields: &'a [u64],
    /// The revision's token (`bpfleet_revision`), to match with List.
    token: u64,
}

/// The record as one JSON object, without the newline. `wall_ns` is the
/// record's time on the wall clock (ns since the epoch).
pub fn json_line(rec: &Record, names: &Names, node: &str, wall_ns: u64) -> String {
    let named = names.get(rec.origin);
    let line = Line {
        ts: &rfc3339_micros(wall_ns),
        level: &rec.level_name(),
        source: "bpf",
        node,
        program: named.map(|(p, _)| p),
        revision: named.map(|(_, r)| r),
        msg_id: rec.msg_id,
        fields: &rec.fields,
        token: rec.token,
    };
    // Strings, integers and a slice of integers: serialising cannot fail;
    // should it, the line still says so, whole.
    serde_json::to_string(&line).unwrap_or_else(|e| {
        format!(r#"{{"source":"bpf","error":"cannot encode a log record: {e}"}}"#)
    })
}

/// A kernel monotonic time (`bpf_ktime_get_ns`) on the wall clock, given
/// both clocks read now.
pub fn wall_ns(ts_ns: u64, mono_now_ns: u64, wall_now_ns: u64) -> u64 {
    wall_now_ns.saturating_sub(mono_now_ns.saturating_sub(ts_ns))
}

/// The wall clock now, ns since the epoch.
pub fn wall_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `2026-12-03T08:15:02.123456Z` from ns since the epoch (UTC).
pub fn rfc3339_micros(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let micros = (ns % 1_000_000_000) / 1_000;
    let (year, month, day) = crate::civil::date((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3_600,
        (rem % 3_600) / 60,
        rem % 60
    )
}

type Labels = Vec<(String, String)>;

/// The agent-side counters of the BPF log.
#[derive(Debug, Default)]
pub struct LogCounters {
    /// `bpfleet_bpf_log_records_total{program,revision,level}`.
    pub records: Family<Labels, Counter>,
    /// Records that did not decode (`reason="malformed"` of
    /// `bpfleet_bpf_log_dropped_total`).
    pub malformed: AtomicU64,
}

impl LogCounters {
    /// Counts one printed record.
    pub fn printed(&self, rec: &Record, names: &Names) {
        let (p, r) = names.get(rec.origin).unwrap_or((UNKNOWN, UNKNOWN));
        self.records
            .get_or_create(&vec![
                ("program".into(), p.into()),
                ("revision".into(), r.into()),
                ("level".into(), rec.level_name()),
            ])
            .inc();
    }

    /// Counts one record that did not decode.
    pub fn malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn raw(level: u8, nfields: u8, msg_id: u32, origin: u64, fields: [u64; 4]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_ne_bytes());
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.push(level);
        b.push(nfields);
        b.extend_from_slice(&msg_id.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&5_000_000_000u64.to_ne_bytes());
        b.extend_from_slice(&3u64.to_ne_bytes());
        b.extend_from_slice(&origin.to_ne_bytes());
        for f in fields {
            b.extend_from_slice(&f.to_ne_bytes());
        }
        assert_eq!(b.len(), RECORD_LEN);
        b
    }

    fn views() -> Vec<ProgramView> {
        vec![ProgramView {
            program: "syscount".into(),
            revisions: BTreeMap::from([("v1".into(), 1), ("v2".into(), 3)]),
            ..Default::default()
        }]
    }

    #[test]
    fn a_record_decodes_with_the_fields_the_call_gave() {
        let origin = crate::names::log_origin("syscount", "v2");
        let r = Record::decode(&raw(2, 2, 7, origin, [11, 22, 99, 99])).unwrap();
        assert_eq!(
            r,
            Record {
                level: 2,
                msg_id: 7,
                ts_ns: 5_000_000_000,
                token: 3,
                origin,
                fields: vec![11, 22],
            }
        );
        assert_eq!(r.level_name(), "warn");
        // A later version appends: the first 72 bytes still decode.
        let mut longer = raw(1, 0, 1, origin, [0; 4]);
        longer[4] = 2;
        longer.extend_from_slice(&[0xff; 16]);
        assert_eq!(Record::decode(&longer).unwrap().fields, Vec::<u64>::new());
    }

    #[test]
    fn what_is_not_a_record_is_refused_with_the_reason() {
        let ok = raw(2, 1, 7, 1, [0; 4]);
        assert_eq!(Record::decode(&ok[..40]), Err(Malformed::Short(40)));
        let mut bad = ok.clone();
        bad[0] ^= 0xff;
        assert!(matches!(Record::decode(&bad), Err(Malformed::Magic(_))));
        let mut five = ok.clone();
        five[7] = 5;
        assert_eq!(
            Record::decode(&five),
            Err(Malformed::Header {
                version: 1,
                nfields: 5
            })
        );
        let mut v0 = ok;
        v0[4] = 0;
        assert!(
            Record::decode(&v0)
                .unwrap_err()
                .to_string()
                .contains("version 0")
        );
    }

    #[test]
    fn the_json_line_names_program_revision_and_node() {
        let names = Names::from_views(&views());
        let origin = crate::names::log_origin("syscount", "v2");
        let r = Record::decode(&raw(2, 2, 7, origin, [11, u64::MAX, 0, 0])).unwrap();
        let line = json_line(&r, &names, "node-a", 1_796_285_702_123_456_789);
        assert!(!line.contains('\n'));
        assert_eq!(
            line,
            r#"{"ts":"2026-12-03T08:15:02.123456Z","level":"warn","source":"bpf","node":"node-a","program":"syscount","revision":"v2","msg_id":7,"fields":[11,18446744073709551615],"token":3}"#
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for k in [
            "ts", "level", "source", "node", "program", "revision", "msg_id", "fields", "token",
        ] {
            assert!(v.get(k).is_some(), "{k} missing in {line}");
        }
        assert_eq!(v["fields"][1].as_u64(), Some(u64::MAX));
    }

    #[test]
    fn an_unknown_origin_is_printed_with_its_token_and_no_names() {
        let names = Names::from_views(&views());
        let r = Record::decode(&raw(9, 0, 1, 12345, [0; 4])).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json_line(&r, &names, "n", 0)).unwrap();
        assert!(v["program"].is_null() && v["revision"].is_null());
        assert_eq!(v["token"], 3);
        assert_eq!(v["level"], "9");
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000000Z");
        let c = LogCounters::default();
        c.printed(&r, &names);
        assert_eq!(
            c.records
                .get_or_create(&vec![
                    ("program".into(), UNKNOWN.into()),
                    ("revision".into(), UNKNOWN.into()),
                    ("level".into(), "9".into()),
                ])
                .get(),
            1
        );
    }

    #[test]
    fn origins_tell_programs_and_revisions_apart() {
        use crate::names::log_origin;
        assert_ne!(log_origin("a", "bc"), log_origin("ab", "c"));
        assert_ne!(log_origin("p", "v1"), log_origin("p", "v2"));
        assert_ne!(log_origin("p", "v1"), 0);
        assert_eq!(log_origin("p", "v1"), log_origin("p", "v1"));
    }

    #[test]
    fn wall_time_follows_the_monotonic_distance() {
        assert_eq!(wall_ns(900, 1_000, 10_000), 9_900);
        // A record stamped after "now" was read (another CPU) is now.
        assert_eq!(wall_ns(1_100, 1_000, 10_000), 10_000);
        assert_eq!(
            rfc3339_micros(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            rfc3339_micros(4_107_542_400_000_001_000),
            "2100-03-01T00:00:00.000001Z"
        );
    }
}
