//! Prometheus export of the tracer, following the OpenTelemetry HTTP
//! semantic conventions: `http_server_request_duration_seconds` and
//! `http_client_request_duration_seconds` (semconv buckets), request and
//! response body sizes, labelled `http_request_method`,
//! `http_response_status_code`, `http_route`, `k8s_namespace_name`,
//! `k8s_pod_name`, `service_name` and `error_type` (every label bounded:
//! methods normalised, routes through the route policy, services capped).
//! Tracer health and alerts come from a collector read at scrape time:
//! `bpfleet_tracer_events_lost_total` (the kernel counter),
//! `bpfleet_tracer_parse_errors_total`, `bpfleet_tracer_events_total`,
//! `bpfleet_tracer_connections`, `bpfleet_tracer_reader_up`,
//! `bpfleet_http_requests_total` / `bpfleet_http_errors_total` per program
//! and revision, `bpfleet_http_alert_firing`.

use std::sync::Arc;

use bpfleet_httptrace::stats::SEMCONV_DURATION_BUCKETS;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Hub;
use super::record::{Record, Side};

/// Labels of the HTTP histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub http_request_method: String,
    /// Empty when no response came.
    pub http_response_status_code: String,
    pub http_route: String,
    pub k8s_namespace_name: String,
    pub k8s_pod_name: String,
    pub service_name: String,
    /// Empty unless the exchange is an error (see [`Record::error_type`]).
    pub error_type: String,
}

type Hist = Family<HttpLabels, Histogram, fn() -> Histogram>;

/// Body size buckets in bytes: 0, then powers of 4 from 16 B to 16 MiB.
pub const SIZE_BUCKETS: [f64; 12] = [
    0.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(SEMCONV_DURATION_BUCKETS)
}

fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

/// The HTTP metric families (cheap to clone: shared inside).
#[derive(Debug, Clone)]
pub struct Families {
    server_duration: Hist,
    client_duration: Hist,
    server_request_body: Hist,
    server_response_body: Hist,
    client_request_body: Hist,
    client_response_body: Hist,
    transitions: Family<Vec<(String, String)>, Counter>,
}

impl Default for Families {
    fn default() -> Self {
        let d = || Hist::new_with_constructor(duration_histogram as fn() -> Histogram);
        let s = || Hist::new_with_constructor(size_histogram as fn() -> Histogram);
        Self {
            server_duration: d(),
            client_duration: d(),
            server_request_body: s(),
            server_response_body: s(),
            client_request_body: s(),
            client_response_body: s(),
            transitions: Family::default(),
        }
    }
}

impl Families {
    /// Durations of exchanges the kernel counted under `r`'s labels; no
    /// body sizes (metrics mode does not measure them).
    pub fn observe_durations(&self, r: &Record, durations_ns: &[u64]) {
        if durations_ns.is_empty() {
            return;
        }
        let dur = match r.side {
            Side::Server => &self.server_duration,
            Side::Client => &self.client_duration,
        };
        let h = dur.get_or_create(&Self::labels(r));
        for d in durations_ns {
            h.observe(*d as f64 / 1e9);
        }
    }

    fn labels(r: &Record) -> HttpLabels {
        HttpLabels {
            http_request_method: r.method.to_string(),
            http_response_status_code: r.status.map(|s| s.to_string()).unwrap_or_default(),
            http_route: r.route.clone(),
            k8s_namespace_name: r.namespace.clone(),
            k8s_pod_name: r.pod.clone(),
            service_name: r.service.clone(),
            error_type: r.error_type(),
        }
    }

    /// Records exchanges that share their labels (see
    /// [`Record::group`]); `rs` is not empty.
    pub fn observe(&self, rs: &[&Record]) {
        let Some(r) = rs.first() else {
            return;
        };
        let labels = Self::labels(r);
        let (dur, req, resp) = match r.side {
            Side::Server => (
                &self.server_duration,
                &self.server_request_body,
                &self.server_response_body,
            ),
            Side::Client => (
                &self.client_duration,
                &self.client_request_body,
                &self.client_response_body,
            ),
        };
        {
            let h = dur.get_or_create(&labels);
            for r in rs {
                h.observe(r.duration_ns as f64 / 1e9);
            }
        }
        if rs.iter().any(|r| r.request_body_bytes.is_some()) {
            let h = req.get_or_create(&labels);
            for b in rs.iter().filter_map(|r| r.request_body_bytes) {
                h.observe(b as f64);
            }
        }
        if rs.iter().any(|r| r.response_body_bytes.is_some()) {
            let h = resp.get_or_create(&labels);
            for b in rs.iter().filter_map(|r| r.response_body_bytes) {
                h.observe(b as f64);
            }
        }
    }

    /// Counts an alert transition.
    pub fn transition(&self, rule: &str, state: &str) {
        self.transitions
            .get_or_create(&vec![
                ("rule".into(), rule.into()),
                ("state".into(), state.into()),
            ])
            .inc();
    }

    /// Registers the families and the health collector of `hub`.
    pub fn register(&self, registry: &mut Registry, hub: Arc<Hub>) {
        for (name, help, fam) in [
            (
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests seen by the tracer (OpenTelemetry http.server.request.duration)",
                &self.server_duration,
            ),
            (
                "http_client_request_duration_seconds",
                "Duration of HTTP client requests seen by the tracer (OpenTelemetry http.client.request.duration)",
                &self.client_duration,
            ),
            (
                "http_server_request_body_size_bytes",
                "Size of HTTP server request bodies (OpenTelemetry http.server.request.body.size)",
                &self.server_request_body,
            ),
            (
                "http_server_response_body_size_bytes",
                "Size of HTTP server response bodies (OpenTelemetry http.server.response.body.size)",
                &self.server_response_body,
            ),
            (
                "http_client_request_body_size_bytes",
                "Size of HTTP client request bodies (OpenTelemetry http.client.request.body.size)",
                &self.client_request_body,
            ),
            (
                "http_client_response_body_size_bytes",
                "Size of HTTP client response bodies (OpenTelemetry http.client.response.body.size)",
                &self.client_response_body,
            ),
        ] {
            registry.register(name, help, fam.clone());
        }
        registry.register(
            "bpfleet_http_alert_transitions",
            "HTTP alert rule transitions by rule and state (firing, resolved)",
            self.transitions.clone(),
        );
        registry.register_collector(Box::new(HealthCollector { hub }));
    }
}

#[derive(Debug)]
struct HealthCollector {
    hub: Arc<Hub>,
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(String, String)>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (l, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(l)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(String, String)>, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (l, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(l)?)?;
    }
    Ok(())
}

impl Collector for HealthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type Rows<T> = Vec<(Vec<(String, String)>, T)>;
        let (mut lost, mut events, mut malformed, mut evicted): (Rows<u64>, Rows<u64>, _, _) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut conns, mut up): (Rows<i64>, Rows<i64>) = (Vec::new(), Vec::new());
        let (mut requests, mut errors): (Rows<u64>, Rows<u64>) = (Vec::new(), Vec::new());
        let mut firing: Rows<i64> = Vec::new();
        {
            let st = self.hub.lock();
            for (program, info) in &st.programs {
                let l = vec![("program".to_string(), program.clone())];
                let r = st.readers.get(program).cloned().unwrap_or_default();
                lost.push((l.clone(), r.lost));
                events.push((l.clone(), r.events));
                malformed.push((l.clone(), r.malformed + r.parse_errors));
                evicted.push((l.clone(), r.evicted));
                conns.push((l.clone(), r.connections as i64));
                up.push((l, i64::from(r.running)));
                for (rev, tok) in &info.revisions {
                    let f = st
                        .figures
                        .get(&(program.clone(), *tok))
                        .cloned()
                        .unwrap_or_default();
                    let l = vec![
                        ("program".to_string(), program.clone()),
                        ("revision".to_string(), rev.clone()),
                    ];
                    requests.push((l.clone(), f.requests));
                    errors.push((l, f.errors));
                }
            }
            for (rule, key) in st.firing.keys() {
                firing.push((
                    vec![
                        ("rule".to_string(), rule.clone()),
                        ("service_name".to_string(), key.service.clone()),
                        ("http_route".to_string(), key.route.clone()),
                        ("side".to_string(), key.side.as_str().to_string()),
                    ],
                    1,
                ));
            }
        }
        let e = &mut encoder;
        counter(
            e,
            "bpfleet_tracer_events_lost",
            "Events the tracer's kernel side dropped because the ring buffer was full (kernel counter http_lost)",
            &lost,
        )?;
        counter(
            e,
            "bpfleet_tracer_events",
            "Ring-buffer events read by the agent",
            &events,
        )?;
        counter(
            e,
            "bpfleet_tracer_parse_errors",
            "Ring-buffer events the agent could not decode, and HTTP message heads it could not parse",
            &malformed,
        )?;
        counter(
            e,
            "bpfleet_tracer_connections_evicted",
            "Connections forgotten because the connection table was full",
            &evicted,
        )?;
        gauge(
            e,
            "bpfleet_tracer_connections",
            "Connections the reader is tracking",
            &conns,
        )?;
        gauge(
            e,
            "bpfleet_tracer_reader_up",
            "1 while the agent reads the tracer's ring buffer",
            &up,
        )?;
        counter(
            e,
            "bpfleet_http_requests",
            "HTTP exchanges (server and client side) attributed to the revision that reported them",
            &requests,
        )?;
        counter(
            e,
            "bpfleet_http_errors",
            "HTTP exchanges with a 5xx response or no response, per revision (what the canary gates read)",
            &errors,
        )?;
        if let Some(c) = self.hub.otlp_counters() {
            use std::sync::atomic::Ordering::Relaxed;
            let none: Vec<(String, String)> = Vec::new();
            for (name, help, v) in [
                (
                    "bpfleet_tracer_spans_exported",
                    "Spans accepted by the OTLP endpoint",
                    c.exported.load(Relaxed),
                ),
                (
                    "bpfleet_tracer_spans_dropped",
                    "Spans dropped because the export queue was full",
                    c.dropped.load(Relaxed),
                ),
                (
                    "bpfleet_tracer_span_export_failures",
                    "Spans whose export failed",
                    c.failed.load(Relaxed),
                ),
            ] {
                counter(e, name, help, &[(none.clone(), v)])?;
            }
        }
        gauge(
            e,
            "bpfleet_http_alert_firing",
            "1 for every (rule, service, route, side) whose alert is firing",
            &firing,
        )?;
        Ok(())
    }
}
