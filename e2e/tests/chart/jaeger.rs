//! A real Jaeger v2 (built from the Go module proxy by
//! `e2e/controlplane/jaeger/build.sh`) as the chart's `otlp.endpoint`
//! points the agents at one: its OTLP/gRPC receiver takes the HTTP
//! tracer's spans into its in-memory store, and its query service answers
//! `/api/v3` as the Jaeger UI and Grafana's Jaeger data source ask it.
//! Started and read by the scrape test (scrape.rs), which drives the
//! traffic; every address on loopback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bpfleet_agent::bpflog::rfc3339_micros;
use bpfleet_testsupport::free_port;
use serde_json::Value;

use crate::processes::{Running, log_file};
use crate::support::{tool, write};

/// A running Jaeger: the process, its OTLP/gRPC and query HTTP ports, its
/// log.
pub struct Jaeger {
    pub process: Running,
    pub otlp: u16,
    pub query: u16,
    pub log: PathBuf,
}

/// One span as the query API returns it (OTLP JSON), with its resource's
/// `service.name`.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub trace_id: String,
    pub name: String,
    /// OTLP's SpanKind number (2 server, 3 client).
    pub kind: u64,
    /// OTLP's status code number (0 unset, 2 error).
    pub status: u64,
    pub attributes: Value,
}

impl Span {
    /// A string or integer attribute as text.
    pub fn attr(&self, key: &str) -> Option<String> {
        let a = self
            .attributes
            .as_array()?
            .iter()
            .find(|a| a["key"] == key)?;
        let v = &a["value"];
        v["stringValue"]
            .as_str()
            .map(str::to_string)
            .or_else(|| v["intValue"].as_str().map(str::to_string))
            .or_else(|| v["intValue"].as_i64().map(|i| i.to_string()))
    }
}

impl Jaeger {
    /// Starts Jaeger under `dir` with memory storage, the OTLP/gRPC
    /// receiver and the query service on free loopback ports, its own
    /// metrics off (they would take a fixed port); returns once the query
    /// API answers.
    pub fn start(dir: &Path) -> Jaeger {
        std::fs::create_dir_all(dir).unwrap();
        let (otlp, query, query_grpc) = (free_port(), free_port(), free_port());
        let config = format!(
            "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp}
processors:
  batch:
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"
        );
        let config = write(dir, "jaeger.yaml", &config);
        let log = dir.join("jaeger.log");
        let child = Command::new(tool("jaeger"))
            .arg(format!("--config={config}"))
            .current_dir(dir)
            .stdout(log_file(&log))
            .stderr(log_file(&log))
            .spawn()
            .expect("jaeger starts");
        let mut j = Jaeger {
            process: Running(child, None),
            otlp,
            query,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(s)) = j.process.0.try_wait() {
                panic!("jaeger exited ({s}):\n{}", j.log_text());
            }
            if j.get("/api/v3/services").is_ok() {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "Jaeger's query API never answered:\n{}",
                j.log_text()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the query API: the JSON body, or what went wrong.
    pub fn get(&self, path_and_query: &str) -> Result<Value, String> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{}{path_and_query}", self.query))
            .output()
            .map_err(|e| format!("curl: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        if !out.status.success() || code != "200" {
            return Err(format!(
                "{path_and_query}: HTTP {code} {body} {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_str(body).map_err(|e| format!("{path_and_query}: {e}: {body}"))
    }

    /// The services Jaeger holds spans of.
    pub fn services(&self) -> Result<Vec<String>, String> {
        let v = self.get("/api/v3/services")?;
        Ok(v["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect())
    }

    /// Every span of `service`'s traces that started in the last hour
    /// (search: `/api/v3/traces`).
    pub fn search(&self, service: &str) -> Result<Vec<Span>, String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let q = format!(
            "/api/v3/traces?query.service_name={service}&query.start_time_min={}&query.start_time_max={}&query.num_traces=1000",
            rfc3339_micros((now - 3600) * 1_000_000_000),
            rfc3339_micros((now + 300) * 1_000_000_000),
        );
        self.get(&q).map(|v| spans(&v))
    }

    /// One trace by its id (`/api/v3/traces/{id}`).
    pub fn trace(&self, id: &str) -> Result<Vec<Span>, String> {
        self.get(&format!("/api/v3/traces/{id}")).map(|v| spans(&v))
    }
}

/// The spans of a query API answer (`{"result": {"resourceSpans": ...}}`).
fn spans(v: &Value) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in v["result"]["resourceSpans"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let service = rs["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_string();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                out.push(Span {
                    service: service.clone(),
                    trace_id: s["traceId"].as_str().unwrap_or_default().to_string(),
                    name: s["name"].as_str().unwrap_or_default().to_string(),
                    kind: s["kind"].as_u64().unwrap_or(0),
                    status: s["status"]["code"].as_u64().unwrap_or(0),
                    attributes: s["attributes"].clone(),
                });
            }
        }
    }
    out
}
