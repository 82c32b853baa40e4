//! What the agent keeps of one traced exchange, and the pure rules applied
//! to it: method normalisation, error classification (OpenTelemetry HTTP
//! semantic conventions for metrics and analytics, the gRPC contract for
//! the operator's gates) and the per-revision cumulative figures that Stats
//! reports.

use std::sync::Arc;

use bpfleet_httptrace::Outcome;
use bpfleet_httptrace::stats::SEMCONV_DURATION_BUCKETS;
use bpfleet_proto::v1 as pb;

/// Which end of the exchange the traced process was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Server,
    Client,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }
}

/// The key of the sliding windows and alerts: one service's route, seen
/// from one side.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub service: String,
    pub route: String,
    pub side: Side,
}

/// One exchange, reduced to bounded-cardinality fields and redacted (the
/// target itself is never kept, only its route).
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Gate token of the revision it is attributed to.
    pub token: u64,
    pub side: Side,
    /// Normalised: a known method or `_OTHER`.
    pub method: &'static str,
    pub status: Option<u16>,
    pub route: String,
    pub service: String,
    pub namespace: String,
    pub pod: String,
    /// Owning Deployment (from the pod name); empty when unknown. Spans
    /// only: not a metric label.
    pub deployment: String,
    /// The process's command line, redacted ([`super::identity::Identity`]);
    /// spans only.
    pub command_line: Arc<str>,
    pub duration_ns: u64,
    /// Kernel monotonic time the exchange ended.
    pub end_ns: u64,
    /// Request target, already redacted (for spans; never a label).
    pub target: String,
    /// Port of the traced process's end, and of the peer.
    pub local_port: u16,
    pub remote_port: u16,
    /// `None` when the head was not captured whole.
    pub request_body_bytes: Option<u64>,
    /// `None` without a response or when its head was cut short.
    pub response_body_bytes: Option<u64>,
    pub outcome: Outcome,
}

impl Record {
    /// OpenTelemetry HTTP semantic conventions: a server errs on 5xx or
    /// no response, a client on 4xx, 5xx or no response.
    pub fn semconv_error(&self) -> bool {
        match (self.side, self.status) {
            (_, None) => true,
            (Side::Server, Some(s)) => s >= 500,
            (Side::Client, Some(s)) => s >= 400,
        }
    }

    /// The gRPC `HttpFigures.errors` contract, both sides alike: 5xx and
    /// requests that never got an answer.
    pub fn gate_error(&self) -> bool {
        self.status.is_none_or(|s| s >= 500)
    }

    /// `error.type` of the semantic conventions: the status code of an
    /// error response, `timeout` or `closed` when none came, empty when
    /// the exchange is not an error.
    pub fn error_type(&self) -> String {
        match (self.status, self.outcome) {
            (None, Outcome::Timeout) => "timeout".into(),
            (None, _) => "closed".into(),
            (Some(s), _) if self.semconv_error() => s.to_string(),
            _ => String::new(),
        }
    }

    /// What the metric labels of this record depend on.
    pub fn group(&self) -> Group<'_> {
        Group {
            side: self.side,
            method: self.method,
            status: self.status,
            outcome: self.outcome,
            route: &self.route,
            service: &self.service,
            namespace: &self.namespace,
            pod: &self.pod,
        }
    }

    pub fn key(&self) -> Key {
        Key {
            service: self.service.clone(),
            route: self.route.clone(),
            side: self.side,
        }
    }
}

/// Exchanges the kernel counted under one label set (metrics mode):
/// `record` carries the labels (its duration and end are unused), one
/// duration per exchange.
#[derive(Clone, Debug, PartialEq)]
pub struct Counted {
    pub record: Record,
    pub durations_ns: Vec<u64>,
}

/// Records with equal groups have equal metric labels and window keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Group<'a> {
    side: Side,
    method: &'static str,
    status: Option<u16>,
    outcome: Outcome,
    route: &'a str,
    service: &'a str,
    namespace: &'a str,
    pod: &'a str,
}

/// Methods kept as they are; everything else is `_OTHER` (semantic
/// conventions), so a client sending junk cannot create series.
pub fn normalize_method(m: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
    ];
    KNOWN.iter().find(|k| **k == m).copied().unwrap_or("_OTHER")
}

/// Cumulative figures of one revision since the agent first saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Figures {
    pub requests: u64,
    pub errors: u64,
    /// One count per bound of [`SEMCONV_DURATION_BUCKETS`], then +Inf;
    /// not cumulative.
    pub buckets: [u64; SEMCONV_DURATION_BUCKETS.len() + 1],
}

impl Default for Figures {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            buckets: [0; SEMCONV_DURATION_BUCKETS.len() + 1],
        }
    }
}

/// Index of the bucket a duration falls in: the first bound it does not
/// exceed (Prometheus `le` semantics), or the +Inf bucket.
pub fn bucket_index(seconds: f64) -> usize {
    SEMCONV_DURATION_BUCKETS
        .iter()
        .position(|b| seconds <= *b)
        .unwrap_or(SEMCONV_DURATION_BUCKETS.len())
}

impl Figures {
    pub fn record(&mut self, r: &Record) {
        self.record_duration(r.duration_ns, r.gate_error());
    }

    /// One exchange of `duration_ns`; `error` per the gRPC contract.
    pub fn record_duration(&mut self, duration_ns: u64, error: bool) {
        self.requests += 1;
        self.errors += u64::from(error);
        self.buckets[bucket_index(duration_ns as f64 / 1e9)] += 1;
    }

    pub fn merge(&mut self, other: &Figures) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
    }

    pub fn to_proto(&self) -> pb::HttpFigures {
        pb::HttpFigures {
            requests: self.requests,
            errors: self.errors,
            latency_bounds_seconds: SEMCONV_DURATION_BUCKETS.to_vec(),
            latency_bucket_counts: self.buckets.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(side: Side, status: Option<u16>, ms: u64) -> Record {
        Record {
            token: 1,
            side,
            method: "GET",
            status,
            route: "/".into(),
            service: "s".into(),
            namespace: String::new(),
            pod: String::new(),
            deployment: String::new(),
            command_line: "".into(),
            duration_ns: ms * 1_000_000,
            end_ns: 0,
            target: "/".into(),
            local_port: 0,
            remote_port: 0,
            request_body_bytes: None,
            response_body_bytes: None,
            outcome: if status.is_some() {
                Outcome::Complete
            } else {
                Outcome::Timeout
            },
        }
    }

    #[test]
    fn errors_by_side_and_contract() {
        let server_404 = rec(Side::Server, Some(404), 1);
        let client_404 = rec(Side::Client, Some(404), 1);
        let server_503 = rec(Side::Server, Some(503), 1);
        let timeout = rec(Side::Client, None, 1);
        assert!(!server_404.semconv_error());
        assert!(client_404.semconv_error());
        assert!(
            !client_404.gate_error(),
            "gates count 5xx and no answer only"
        );
        assert!(server_503.semconv_error() && server_503.gate_error());
        assert!(timeout.semconv_error() && timeout.gate_error());
        assert_eq!(server_404.error_type(), "");
        assert_eq!(client_404.error_type(), "404");
        assert_eq!(server_503.error_type(), "503");
        assert_eq!(timeout.error_type(), "timeout");
    }

    #[test]
    fn methods_outside_the_standard_set_are_other() {
        assert_eq!(normalize_method("GET"), "GET");
        assert_eq!(normalize_method("PATCH"), "PATCH");
        assert_eq!(normalize_method("get"), "_OTHER");
        assert_eq!(normalize_method("BREW"), "_OTHER");
    }

    #[test]
    fn buckets_follow_le_semantics() {
        assert_eq!(bucket_index(0.0), 0);
        assert_eq!(bucket_index(0.005), 0);
        assert_eq!(bucket_index(0.0051), 1);
        assert_eq!(bucket_index(0.12), 6, "0.1 < 0.12 <= 0.25");
        assert_eq!(bucket_index(10.0), 13);
        assert_eq!(bucket_index(11.0), 14, "+Inf");
        let mut f = Figures::default();
        for r in [
            rec(Side::Server, Some(200), 120),
            rec(Side::Server, Some(500), 2),
            rec(Side::Client, None, 20_000),
        ] {
            f.record(&r);
        }
        let p = f.to_proto();
        assert_eq!((p.requests, p.errors), (3, 2));
        assert_eq!(
            p.latency_bounds_seconds.len() + 1,
            p.latency_bucket_counts.len()
        );
        assert_eq!(p.latency_bucket_counts[6], 1);
        assert_eq!(p.latency_bucket_counts[0], 1);
        assert_eq!(p.latency_bucket_counts[14], 1);
        assert_eq!(p.latency_bucket_counts.iter().sum::<u64>(), 3);
    }
}
