//! What the node agent's and the operator's code says, asked of the code
//! itself rather than of its source text: the long flags of their clap
//! command definitions, the capabilities the agent keeps after setup
//! (`KEEP_AFTER_SETUP` through `caps::name`), the metric names their real
//! Prometheus registries expose (every family given a series first: an
//! empty family is not exposed), and the paths the agent's HTTP endpoint
//! answers. The agent's registry and endpoint need an `Agent`, which needs
//! root and bpffs: [`AgentCore`] builds one in a private pin root and
//! removes it on drop. Renders nothing; starts no process.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bpfleet_agent::hooks::{KEEP_AFTER_SETUP, caps};
use bpfleet_agent::http::record::{Record, Side};
use bpfleet_agent::http::{HttpConfig, Hub};
use bpfleet_agent::metrics::Metrics;
use bpfleet_agent::{Agent, Config};
use bpfleet_httptrace::Outcome;
use clap::CommandFactory;

/// Capabilities the agent keeps after setup (`KEEP_AFTER_SETUP`), as
/// Kubernetes names (`BPF`, `PERFMON`, ...).
pub fn agent_kept_capabilities() -> BTreeSet<String> {
    let caps: BTreeSet<String> = KEEP_AFTER_SETUP
        .iter()
        .map(|&c| {
            caps::name(c)
                .strip_prefix("CAP_")
                .filter(|n| *n != "?")
                .unwrap_or_else(|| panic!("capability {c} kept after setup has no name"))
                .to_string()
        })
        .collect();
    assert!(caps.contains("BPF"), "kept {caps:?}");
    caps
}

/// Whether the agent keeps CAP_SYS_ADMIN after setup (it must not: the
/// chart adds it only for setup work, `agent.bpfStats`).
pub fn agent_keeps_sys_admin() -> bool {
    KEEP_AFTER_SETUP.contains(&caps::SYS_ADMIN)
}

/// The long flags a clap command defines (`--name`), without the ones clap
/// adds itself (`--help`, `--version`).
fn long_flags(cmd: &clap::Command) -> BTreeSet<String> {
    cmd.get_arguments()
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .filter_map(clap::Arg::get_long)
        .map(|l| format!("--{l}"))
        .collect()
}

/// The long flags of `bpfleet-agent serve` (`bpfleet_agent::cli`).
pub fn agent_serve_flags() -> BTreeSet<String> {
    let cli = bpfleet_agent::cli::Cli::command();
    let serve = cli
        .find_subcommand("serve")
        .expect("bpfleet-agent has a serve subcommand");
    let out = long_flags(serve);
    assert!(
        out.contains("--pin-root") && out.contains("--trusted-key"),
        "{out:?}"
    );
    out
}

/// The long flags of `bpfleet-operator` (`bpfleet_operator::run::Args`).
pub fn operator_flags() -> BTreeSet<String> {
    let out = long_flags(&bpfleet_operator::run::Args::command());
    assert!(
        out.contains("--leader-elect") && out.contains("--agent-ca"),
        "{out:?}"
    );
    out
}

/// Sample names a text exposition announces in its `# TYPE` lines:
/// counters as `<name>_total`, histograms as `_bucket`, `_count` and
/// `_sum`, gauges as they are. Families with no sample yet are announced
/// too, so an idle registry gives every name it holds.
pub fn exposed_metrics(exposition: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in exposition.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut w = line.split_whitespace().skip(2);
        let (name, kind) = (w.next().unwrap(), w.next().unwrap());
        match kind {
            "counter" => {
                out.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_count", "_sum"] {
                    out.insert(format!("{name}{suffix}"));
                }
            }
            "gauge" => {
                out.insert(name.to_string());
            }
            other => panic!("{name}: metric type {other} the chart tests do not know"),
        }
    }
    out
}

/// What the operator's registry exports (`bpfleet_operator::metrics`),
/// every family given one series first.
pub fn operator_metrics() -> BTreeSet<String> {
    use bpfleet_operator::metrics::{Metrics, ProgramLabel, ResultLabel};
    let m = Metrics::new();
    m.reconciles
        .get_or_create(&ResultLabel {
            result: "ok".into(),
        })
        .inc();
    m.error("kube");
    m.set_phase("p", Some(bpfleet_api::program::Phase::Healthy));
    m.aborts
        .get_or_create(&ProgramLabel {
            program: "p".into(),
        })
        .inc();
    m.call("load", "ok");
    let out = exposed_metrics(&m.render());
    assert!(out.contains("bpfleet_rollout_aborts_total"), "{out:?}");
    out
}

/// The agent's core in-process, in a pin root of its own on bpffs (root
/// needed, as for the agent's own tests); the pin root is removed on drop.
/// Kernel run-time stats are left as they are.
pub struct AgentCore {
    agent: Arc<Mutex<Agent>>,
    pin_root: PathBuf,
    _scratch: tempfile::TempDir,
}

impl AgentCore {
    pub fn start(tag: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test builds the agent's core (bpffs): run it as root (as CI does)"
        );
        let pin_root = PathBuf::from(format!(
            "/sys/fs/bpf/bpfleet-chart-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let scratch = tempfile::tempdir().unwrap();
        let mut cfg = Config::new(&pin_root, scratch.path().join("state.json"));
        cfg.enable_stats = false;
        let agent = Agent::new(cfg).unwrap_or_else(|e| {
            let _ = std::fs::remove_dir_all(&pin_root);
            panic!("the agent's core starts in {}: {e}", pin_root.display())
        });
        Self {
            agent: Arc::new(Mutex::new(agent)),
            pin_root,
            _scratch: scratch,
        }
    }

    /// The agent's metrics and HTTP endpoint without the tracer runtime:
    /// the agent core's own families, one operation and one BPF log
    /// record counted (a family without a series is not exposed at all).
    pub fn endpoint(&self) -> Arc<Metrics> {
        let m = Metrics::new(self.agent.clone());
        m.record("load", "ok");
        one_bpf_log_record(&m);
        m
    }

    /// The endpoint with the HTTP tracer runtime's families, an OTLP
    /// endpoint configured so the span export counters are registered too,
    /// and one exchange per side, one alert transition and one operation
    /// recorded so that every family has a series: everything the agent
    /// can export.
    pub fn endpoint_with_tracer(&self) -> Arc<Metrics> {
        let hub = Hub::new(HttpConfig {
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            ..HttpConfig::default()
        })
        .expect("the tracer runtime's hub builds");
        for side in [Side::Server, Side::Client] {
            hub.families().observe(&[&exchange(side)]);
        }
        hub.families().transition("HttpHighErrorRate", "firing");
        let m = Metrics::with_http(self.agent.clone(), Some(Arc::new(hub)));
        m.record("load", "ok");
        one_bpf_log_record(&m);
        m
    }
}

/// One BPF log record counted as printed (`bpfleet_bpf_log_records_total`).
fn one_bpf_log_record(m: &Metrics) {
    m.bpf_log()
        .records
        .get_or_create(&vec![
            ("program".to_string(), "p".to_string()),
            ("revision".to_string(), "r".to_string()),
            ("level".to_string(), "warn".to_string()),
        ])
        .inc();
}

/// One complete exchange with both body sizes known.
fn exchange(side: Side) -> Record {
    Record {
        token: 1,
        side,
        method: "GET",
        status: Some(200),
        route: "/a".into(),
        service: "svc".into(),
        namespace: "default".into(),
        pod: "svc-0".into(),
        deployment: String::new(),
        command_line: "svc --port 80".into(),
        duration_ns: 2_000_000,
        end_ns: 1_000_000_000,
        target: "/a".into(),
        local_port: 80,
        remote_port: 40000,
        request_body_bytes: Some(10),
        response_body_bytes: Some(20),
        outcome: Outcome::Complete,
    }
}

impl Drop for AgentCore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_root);
    }
}

/// Every metric the agent can export: its core registry and collectors
/// plus the HTTP tracer's families and health collector.
pub fn agent_metrics() -> BTreeSet<String> {
    let core = AgentCore::start("metrics");
    let out = exposed_metrics(&core.endpoint_with_tracer().render());
    for m in [
        "bpfleet_program_run_seconds_total",
        "bpfleet_tracer_events_lost_total",
        "bpfleet_tracer_reader_up",
        "http_server_request_duration_seconds_count",
    ] {
        assert!(out.contains(m), "{m} not found in the agent: {out:?}");
    }
    out
}

/// The agent core's own metrics (no tracer runtime).
pub fn agent_core_metrics() -> BTreeSet<String> {
    let core = AgentCore::start("core-metrics");
    exposed_metrics(&core.endpoint().render())
}
