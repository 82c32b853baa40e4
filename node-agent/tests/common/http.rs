//! Helpers of the tests that drive the HTTP tracer inside the agent
//! process: its load request, the Stats figures polled until they settle,
//! an OTLP/gRPC collector that keeps the spans the agent exports, pods
//! faked as kubelet lays out their cgroups, and Python's server started
//! in one. Generic HTTP pieces (test server, GET, curl, the metrics
//! parser) come from `bpfleet-testsupport`; nothing here asserts a figure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bpfleet_proto::v1 as pb;
use bpfleet_testsupport::cgroup::Cgroup;
pub use bpfleet_testsupport::http::{TestServer, curl, get};
pub use bpfleet_testsupport::metrics::{Sample, parse as parse_metrics, sum};
pub use bpfleet_testsupport::python::PythonServer;
use bpfleet_tracer::{PERSISTENT_MAPS, PROGRAMS};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

use super::{free_port, load_req, tracepoints};

pub const PROGRAM: &str = "http-tracer";

/// The tracer object as revision `revision`, every program on its
/// tracepoint, its shared maps kept across revisions.
pub fn tracer_req(revision: &str) -> pb::LoadRequest {
    load_req(
        PROGRAM,
        revision,
        bpfleet_bpf::HTTP_TRACER,
        tracepoints(&PROGRAMS),
        &PERSISTENT_MAPS,
    )
}

/// `python3 -m http.server` serving `hello.txt` on a free port; moved into
/// `cg` when given as soon as it is spawned, before it serves anything.
pub fn python_in(cg: Option<&Cgroup>) -> PythonServer {
    PythonServer::start_on(
        free_port(),
        &[("hello.txt", "hello from python\n")],
        |pid| {
            if let Some(cg) = cg {
                cg.adopt(pid);
            }
        },
    )
}

/// A cgroup whose path names a pod UID, as kubelet lays them out
/// (`.../kubepods/pod<uid>/<container>`), under a directory of the test's
/// own on the cgroup2 mount; removed when dropped (after its processes).
pub fn pod_cgroup(tag: &str, uid: &str) -> Cgroup {
    Cgroup::new(
        format!(
            "bpfleet-test-{tag}-{}/kubepods/pod{uid}/web",
            std::process::id()
        )
        .as_ref(),
    )
}

// ---------------------------------------------------------- OTLP collector

/// An OTLP/gRPC trace collector: keeps (service.name, span).
#[derive(Clone, Default)]
pub struct Collector {
    pub spans: Arc<std::sync::Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.clone())
                .map(|v| match v {
                    Value::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    pub async fn start(&self) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let svc = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        port
    }

    pub fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }
}

pub fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
        .map(|v| match v {
            Value::StringValue(s) => s,
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

// ------------------------------------------------------------ Stats

pub async fn figures(
    c: &mut pb::agent_client::AgentClient<tonic::transport::Channel>,
) -> BTreeMap<String, pb::HttpFigures> {
    c.stats(pb::StatsRequest {
        program: PROGRAM.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .revisions
    .into_iter()
    .map(|r| {
        (
            r.revision.clone(),
            r.http.expect("a tracer revision has http figures"),
        )
    })
    .collect()
}

/// Polls Stats until revision `rev` counts `n` requests (then checks that
/// it stays there: nothing counted twice later).
pub async fn wait_requests(
    c: &mut pb::agent_client::AgentClient<tonic::transport::Channel>,
    rev: &str,
    n: u64,
) -> BTreeMap<String, pb::HttpFigures> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let f = figures(c).await;
        let got = f[rev].requests;
        if got >= n || Instant::now() > deadline {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let f = figures(c).await;
            assert_eq!(f[rev].requests, n, "revision {rev}: {f:?}");
            return f;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn self_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim()
        .to_string()
}

/// The bytes of every key and value of every map pinned under `root`, as
/// `bpftool map dump` reads them (one buffer per map; ring buffers, which
/// have no keys, give nothing).
pub fn pinned_map_bytes(root: &super::PinRoot) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for pin in root.pins() {
        let o = std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&pin)
            .output()
            .expect("bpftool is installed");
        if !o.status.success() {
            // A program or link pin, or a ring buffer.
            continue;
        }
        let text = String::from_utf8_lossy(&o.stdout);
        let bytes: Vec<u8> = text
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter_map(|t| t.strip_prefix("0x"))
            .filter(|h| h.len() == 2)
            .filter_map(|h| u8::from_str_radix(h, 16).ok())
            .collect();
        out.push((pin, bytes));
    }
    assert!(!out.is_empty(), "no map pinned under the root");
    out
}
