//! Traced exchanges as OTLP spans over gRPC (off unless
//! `--otlp-endpoint` is given; Jaeger and the OpenTelemetry Collector
//! accept it). Readers hand records to a bounded queue (full: the span is
//! dropped and counted, tracing never slows the readers down); one task
//! batches them (up to 512 or every second) and exports them with
//! `opentelemetry-otlp`, one resource per `service.name`, all services
//! sharing one gRPC channel.
//!
//! A span per exchange: name `METHOD route`, kind server or client, start
//! and end from the kernel timestamps (converted to wall-clock time),
//! semantic-convention attributes (`http.request.method`, `http.route`,
//! `url.path` and `url.query` as redacted by httptrace,
//! `http.response.status_code`, `error.type`, ports, `k8s.*`), status
//! error when the semantic conventions call the exchange an error. Spans of
//! the two ends of one request are separate traces: without touching the
//! traffic there is no context to propagate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanExporter};
use tokio::sync::mpsc;

use super::mono_ns;
use super::record::{Record, Side};
use crate::error::{Error, Result};

/// Spans waiting for export before new ones are dropped.
pub const QUEUE: usize = 8192;
const BATCH: usize = 512;
const FLUSH: Duration = Duration::from_secs(1);

/// Export counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

/// The readers' end of the span queue.
#[derive(Debug, Clone)]
pub struct Sink {
    tx: mpsc::Sender<Record>,
    pub counters: Arc<Counters>,
}

impl Sink {
    /// Queues a span; drops (and counts) it when the queue is full.
    pub fn send(&self, r: &Record) {
        if self.tx.try_send(r.clone()).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Checks an endpoint (`http://host:4317` or `https://...`).
pub fn check_endpoint(endpoint: &str) -> Result<()> {
    let uri: tonic::transport::Uri = endpoint
        .parse()
        .map_err(|e| Error::Invalid(format!("--otlp-endpoint {endpoint:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(()),
        _ => Err(Error::Invalid(format!(
            "--otlp-endpoint {endpoint:?}: expected http://host:port or https://host:port"
        ))),
    }
}

/// A queue and the receiving end for [`run`].
pub fn queue() -> (Sink, mpsc::Receiver<Record>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (
        Sink {
            tx,
            counters: Arc::default(),
        },
        rx,
    )
}

/// Exports queued spans to `endpoint` until every sender is gone.
pub async fn run(endpoint: String, mut rx: mpsc::Receiver<Record>, counters: Arc<Counters>) {
    let channel = match tonic::transport::Channel::from_shared(endpoint.clone()) {
        Ok(c) => c.timeout(Duration::from_secs(10)).connect_lazy(),
        Err(e) => {
            tracing::error!(endpoint, error = %e, "OTLP endpoint unusable; no spans exported");
            return;
        }
    };
    let mut exporters: BTreeMap<String, opentelemetry_otlp::SpanExporter> = BTreeMap::new();
    let scope = InstrumentationScope::builder("bpfleet-agent")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let ids = RandomIdGenerator::default();
    let mut batch: Vec<Record> = Vec::with_capacity(BATCH);
    loop {
        let open = tokio::select! {
            r = rx.recv() => match r {
                Some(r) => { batch.push(r); true }
                None => false,
            },
            () = tokio::time::sleep(FLUSH) => true,
        };
        while batch.len() < BATCH
            && let Ok(r) = rx.try_recv()
        {
            batch.push(r);
        }
        if !batch.is_empty() && (batch.len() >= BATCH || !open || rx.is_empty()) {
            // Wall clock = kernel monotonic clock + this offset.
            let offset = wall_offset();
            let mut by_service: BTreeMap<String, Vec<SpanData>> = BTreeMap::new();
            for r in batch.drain(..) {
                let span = to_span(&r, offset, &ids, &scope);
                by_service.entry(r.service).or_default().push(span);
            }
            for (service, spans) in by_service {
                let n = spans.len() as u64;
                let exporter = match exporters.get(&service) {
                    Some(e) => e,
                    None => match build(&channel, &endpoint, &service) {
                        Ok(e) => exporters.entry(service).or_insert(e),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot build an OTLP exporter");
                            counters.failed.fetch_add(n, Ordering::Relaxed);
                            continue;
                        }
                    },
                };
                match exporter.export(spans).await {
                    Ok(()) => counters.exported.fetch_add(n, Ordering::Relaxed),
                    Err(e) => {
                        tracing::warn!(error = %e, "OTLP export failed");
                        counters.failed.fetch_add(n, Ordering::Relaxed)
                    }
                };
            }
        }
        if !open {
            return;
        }
    }
}

fn build(
    channel: &tonic::transport::Channel,
    endpoint: &str,
    service: &str,
) -> Result<opentelemetry_otlp::SpanExporter> {
    let mut e = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_channel(channel.clone())
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| Error::Transport(format!("OTLP exporter: {e}")))?;
    e.set_resource(
        &Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", service.to_string()),
                KeyValue::new("telemetry.sdk.name", "bpfleet-agent"),
            ])
            .build(),
    );
    Ok(e)
}

/// Nanoseconds to add to the kernel monotonic clock to get Unix time.
fn wall_offset() -> i128 {
    let wall = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    wall - i128::from(mono_ns())
}

fn wall(mono: u64, offset: i128) -> SystemTime {
    let ns = (i128::from(mono) + offset).max(0);
    SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// One exchange as a span.
pub fn to_span(
    r: &Record,
    offset: i128,
    ids: &RandomIdGenerator,
    scope: &InstrumentationScope,
) -> SpanData {
    let (path, query) = match r.target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (r.target.clone(), None),
    };
    let mut attributes = vec![
        KeyValue::new("http.request.method", r.method),
        KeyValue::new("http.route", r.route.clone()),
        KeyValue::new("url.path", path),
        KeyValue::new("network.protocol.name", "http"),
    ];
    if let Some(q) = query {
        attributes.push(KeyValue::new("url.query", q));
    }
    if let Some(s) = r.status {
        attributes.push(KeyValue::new("http.response.status_code", i64::from(s)));
    }
    let error_type = r.error_type();
    if !error_type.is_empty() {
        attributes.push(KeyValue::new("error.type", error_type.clone()));
    }
    match r.side {
        Side::Server => {
            attributes.push(KeyValue::new("server.port", i64::from(r.local_port)));
            attributes.push(KeyValue::new("client.port", i64::from(r.remote_port)));
        }
        Side::Client => attributes.push(KeyValue::new("server.port", i64::from(r.remote_port))),
    }
    if !r.namespace.is_empty() {
        attributes.push(KeyValue::new("k8s.namespace.name", r.namespace.clone()));
        attributes.push(KeyValue::new("k8s.pod.name", r.pod.clone()));
    }
    if !r.deployment.is_empty() {
        attributes.push(KeyValue::new("k8s.deployment.name", r.deployment.clone()));
    }
    if !r.command_line.is_empty() {
        attributes.push(KeyValue::new(
            "process.command_line",
            r.command_line.to_string(),
        ));
    }
    let status = if r.semconv_error() {
        Status::error(error_type)
    } else {
        Status::Unset
    };
    let start = r.end_ns.saturating_sub(r.duration_ns);
    SpanData {
        span_context: SpanContext::new(
            ids.new_trace_id(),
            ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: match r.side {
            Side::Server => SpanKind::Server,
            Side::Client => SpanKind::Client,
        },
        name: format!("{} {}", r.method, r.route).into(),
        start_time: wall(start, offset),
        end_time: wall(r.end_ns, offset),
        attributes,
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bpfleet_httptrace::Outcome;

    #[test]
    fn endpoints_are_checked() {
        assert!(check_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(check_endpoint("https://collector.monitoring:4317").is_ok());
        for bad in ["127.0.0.1:4317", "ftp://x:1", "http://", "not a uri"] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_exchange_becomes_a_semconv_span() {
        let r = Record {
            token: 1,
            side: Side::Server,
            method: "GET",
            status: Some(503),
            route: "/items/{id}".into(),
            service: "shop".into(),
            namespace: "prod".into(),
            pod: "shop-7d9f8c6b5d-x2k4q".into(),
            deployment: "shop".into(),
            command_line: "shop --password [REDACTED]".into(),
            duration_ns: 180_000_000,
            end_ns: 5_000_000_000,
            request_body_bytes: None,
            response_body_bytes: None,
            outcome: Outcome::Complete,
            target: "/items/7?token=[REDACTED]".into(),
            local_port: 8080,
            remote_port: 40000,
        };
        let scope = InstrumentationScope::builder("t").build();
        let s = to_span(
            &r,
            1_000_000_000_000_000_000,
            &RandomIdGenerator::default(),
            &scope,
        );
        assert_eq!(s.name, "GET /items/{id}");
        assert_eq!(s.span_kind, SpanKind::Server);
        assert_eq!(
            s.end_time.duration_since(s.start_time).unwrap(),
            Duration::from_millis(180)
        );
        let attr = |k: &str| {
            s.attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attr("url.path").as_deref(), Some("/items/7"));
        assert_eq!(attr("url.query").as_deref(), Some("token=[REDACTED]"));
        assert_eq!(attr("http.response.status_code").as_deref(), Some("503"));
        assert_eq!(attr("error.type").as_deref(), Some("503"));
        assert_eq!(attr("server.port").as_deref(), Some("8080"));
        assert_eq!(
            attr("k8s.pod.name").as_deref(),
            Some("shop-7d9f8c6b5d-x2k4q")
        );
        assert_eq!(attr("k8s.deployment.name").as_deref(), Some("shop"));
        assert_eq!(
            attr("process.command_line").as_deref(),
            Some("shop --password [REDACTED]")
        );
        assert!(matches!(s.status, Status::Error { .. }));
    }
}
