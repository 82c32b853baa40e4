//! Prometheus endpoint: kernel figures read at scrape time
//! (`bpfleet_program_runs_total`, `bpfleet_program_run_seconds_total`,
//! `bpfleet_program_errors_total`, `bpfleet_map_memory_bytes`, labelled by
//! program and revision) and the agent's own operation counters
//! (`bpfleet_agent_operations_total` by op and result).

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::agent::Agent;

type Labels = Vec<(String, String)>;

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    ops: Family<Labels, Counter>,
}

#[derive(Debug)]
struct KernelCollector {
    agent: Arc<Mutex<Agent>>,
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = match self.agent.lock() {
            Ok(a) => a.stats("").map(|s| s.revisions).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let labels = |r: &bpfleet_proto::v1::RevisionStats| -> Labels {
            vec![
                ("program".into(), r.program.clone()),
                ("revision".into(), r.revision.clone()),
            ]
        };
        {
            let mut m = encoder.encode_descriptor(
                "bpfleet_program_runs",
                "Runs of the revision's BPF programs (kernel run_cnt)",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for r in &stats {
                let l = labels(r);
                ConstCounter::new(r.run_cnt).encode(m.encode_family(&l)?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "bpfleet_program_run_seconds",
                "Time spent in the revision's BPF programs (kernel run_time_ns)",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for r in &stats {
                let l = labels(r);
                ConstCounter::new(r.run_time_ns as f64 / 1e9).encode(m.encode_family(&l)?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "bpfleet_program_errors",
                "Errors the revision's programs reported (bpfleet_errors map)",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for r in &stats {
                let l = labels(r);
                ConstCounter::new(r.program_errors).encode(m.encode_family(&l)?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "bpfleet_map_memory_bytes",
                "Kernel memory of the revision's maps (the active one also carries the shared maps)",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for r in &stats {
                let l = labels(r);
                ConstGauge::new(r.map_memory_bytes as i64).encode(m.encode_family(&l)?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "bpfleet_revision_active",
                "1 for the active revision of a program, 0 for the others",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for r in &stats {
                let l = labels(r);
                ConstGauge::new(i64::from(r.active)).encode(m.encode_family(&l)?)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    /// Metrics over `agent`.
    pub fn new(agent: Arc<Mutex<Agent>>) -> Arc<Self> {
        let mut registry = Registry::default();
        let ops = Family::<Labels, Counter>::default();
        registry.register(
            "bpfleet_agent_operations",
            "Agent API operations by op and result",
            ops.clone(),
        );
        registry.register_collector(Box::new(KernelCollector { agent }));
        Arc::new(Self { registry, ops })
    }

    /// Counts one operation.
    pub fn record(&self, op: &str, result: &str) {
        self.ops
            .get_or_create(&vec![
                ("op".into(), op.into()),
                ("result".into(), result.into()),
            ])
            .inc();
    }

    /// Text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `GET /metrics` (any path) on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf)).await;
            let body = tokio::task::spawn_blocking(move || metrics.render())
                .await
                .unwrap_or_default();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
