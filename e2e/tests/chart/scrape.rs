//! A real Prometheus (the server built from the module proxy beside
//! promtool) scrapes the operator and the agent started with the chart's
//! arguments, as the chart's ServiceMonitors would have it scrape them
//! (job = the metrics Service's name, `node` from the pod's node), with the
//! chart's PrometheusRule loaded as its rule file. The operator rolls the
//! HTTP tracer out to the agent, traffic is driven through it, and then
//! every Grafana panel's query and every alert's inputs are asked of
//! Prometheus: each must return data, not only name a metric that exists.
//! The chart's `otlp.endpoint` points the agent at a real Jaeger v2
//! (jaeger.rs), and the driven exchanges must be found there as spans
//! through its query API, each once.
//! Needs root and bpffs (the agent loads the tracer).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bpfleet_e2e::ControlPlane;
use bpfleet_testsupport::free_port;
use bpfleet_testsupport::netns::Netns;
use serde_json::{Value, json};

use crate::jaeger::{Jaeger, Span};
use crate::processes::{Running, build_binaries, http_get, log_file, start_agent, start_operator};
use crate::support::{AGENT, NS, OPERATOR, docs, kind, render, tool, write};

/// How often the test's Prometheus scrapes and evaluates (the chart's
/// ServiceMonitor says 30 s; a test cannot wait for that).
const INTERVAL: &str = "1s";

/// Series an agent exports only for programs a TracerPolicy gives a CPU
/// budget or alerts (and their counters only after a first change). This
/// test's policy (applied after the panels are asked, for spans) has
/// neither, so panels over them are not asked for data here; the policy e2e tests (operator/tests/rollout_e2e/policy.rs) and
/// the agent's cpu_budget and http_policy_alerts tests read them.
const POLICY_ONLY: [&str; 4] = [
    "bpfleet_agent_program_cpu_percent",
    "bpfleet_agent_sampling_ppm",
    "bpfleet_agent_budget_enforcements_total",
    "bpfleet_agent_policy_alert_firing",
];

/// Rounds of traffic the test drives: each a GET of `/` (200), of
/// `/missing` (404) and a DELETE of `/` (501).
const ROUNDS: usize = 30;

/// Rounds driven once every connection is traced in events mode, whose
/// exchanges Jaeger must hold as spans.
const SPAN_ROUNDS: usize = 10;

/// A Grafana query as Prometheus takes it: the dashboards' one variable,
/// `$node`, set to "All" (Grafana's `.*` for a regex matcher).
fn grafana_to_promql(expr: &str) -> String {
    assert!(
        !expr.replace("$node", "").contains('$'),
        "a dashboard uses a variable this test does not set: {expr}"
    );
    expr.replace("$node", ".*")
}

/// The vector selectors of a PromQL expression, each `metric{matchers}`
/// (or a bare metric name followed by a range or `)`), without ranges:
/// what an expression reads, each of which must return series for the
/// expression to mean anything.
fn selectors(expr: &str) -> Vec<String> {
    const NOT_METRICS: &[&str] = &[
        "sum",
        "by",
        "rate",
        "increase",
        "max",
        "min",
        "count",
        "histogram_quantile",
        "absent",
        "unless",
        "on",
        "and",
        "or",
        "le",
        "without",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if c == '"' {
            // Skip a string (label values).
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += 1 + usize::from(b[i] == b'\\');
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let name = &expr[start..i];
            let rest = expr[i..].trim_start();
            if NOT_METRICS.contains(&name) || rest.starts_with('(') {
                continue;
            }
            // Label names inside `by (...)` or `{...}` are skipped with
            // their groups below; a name followed by a comparison inside
            // braces never reaches here.
            if rest.starts_with('{') {
                let open = expr.len() - rest.len();
                let close = expr[open..]
                    .find('}')
                    .map(|e| open + e + 1)
                    .unwrap_or(b.len());
                out.push(format!("{name}{}", &expr[open..close]));
                i = close;
            } else {
                out.push(name.to_string());
            }
            continue;
        }
        if c == '(' {
            // `by (a, b)` / `on (a)`: label lists, not selectors.
            let before = expr[..i].trim_end();
            if ["by", "on", "without", "ignoring"]
                .iter()
                .any(|k| before.ends_with(k))
            {
                i += expr[i..].find(')').map_or(b.len() - i, |e| e + 1);
                continue;
            }
        }
        if c == '[' {
            i += expr[i..].find(']').map_or(b.len() - i, |e| e + 1);
            continue;
        }
        if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    out
}

#[test]
fn selectors_are_what_an_expression_reads() {
    assert_eq!(
        selectors(
            r#"sum by (node, program) (rate(bpfleet_program_run_seconds_total{job="a"}[5m])) * 100 > 2"#
        ),
        vec![r#"bpfleet_program_run_seconds_total{job="a"}"#]
    );
    assert_eq!(
        selectors(
            r#"(up{job="a"} == 1 unless on (node) max by (node) (bpfleet_tracer_reader_up{job="a"}) == 1)"#
        ),
        vec![r#"up{job="a"}"#, r#"bpfleet_tracer_reader_up{job="a"}"#]
    );
    assert_eq!(
        selectors(r#"histogram_quantile(0.99, sum by (le) (rate(x_bucket{a=~"5.."}[5m])))"#),
        vec![r#"x_bucket{a=~"5.."}"#]
    );
    assert_eq!(selectors("absent(up == 1)"), vec!["up"]);
}

/// Prometheus's instant query `q`: the result vector, or the error it gave.
fn query(port: u16, q: &str) -> Result<Vec<Value>, String> {
    let url = format!("http://127.0.0.1:{port}/api/v1/query");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", &url, "--data-urlencode"])
        .arg(format!("query={q}"))
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))?;
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The chart's PrometheusRule groups as a Prometheus rule file.
fn rule_file(d: &[Value], dir: &Path) -> (String, Vec<(String, String)>) {
    let rules = kind(d, "PrometheusRule");
    assert_eq!(rules.len(), 1, "one PrometheusRule rendered");
    let groups = &rules[0]["spec"]["groups"];
    let mut alerts = Vec::new();
    for g in groups.as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            if let Some(a) = r["alert"].as_str() {
                alerts.push((a.to_string(), r["expr"].as_str().unwrap().to_string()));
            }
        }
    }
    let text = serde_yaml::to_string(&json!({ "groups": groups })).unwrap();
    (write(dir, "rules.yaml", &text), alerts)
}

/// The scrape jobs the chart's ServiceMonitors make: one per metrics
/// Service, job named after it, `node` (the relabelling of the pod's node
/// name), `namespace` and `pod` as the Prometheus Operator adds them.
fn scrape_config(d: &[Value], targets: &[(&str, u16, &str)], rules: &str) -> String {
    let services: BTreeSet<String> = kind(d, "Service")
        .iter()
        .filter_map(|s| s["metadata"]["name"].as_str())
        .filter(|n| n.ends_with("-metrics"))
        .map(str::to_string)
        .collect();
    let monitors = kind(d, "ServiceMonitor");
    assert_eq!(monitors.len(), 2, "the operator's and the agent's");
    let mut jobs = Vec::new();
    for (component, port, pod) in targets {
        let job = services
            .iter()
            .find(|s| s.contains(component))
            .unwrap_or_else(|| panic!("no metrics Service for {component}: {services:?}"));
        jobs.push(json!({
            "job_name": job,
            "scrape_interval": INTERVAL,
            "metrics_path": "/metrics",
            "static_configs": [{
                "targets": [format!("127.0.0.1:{port}")],
                "labels": {"node": "chart-node", "namespace": NS, "pod": pod},
            }],
        }));
    }
    serde_yaml::to_string(&json!({
        "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
        "rule_files": [rules],
        "scrape_configs": jobs,
    }))
    .unwrap()
}

/// Applies `object` (server-side) and waits up to `seconds` until the
/// TracerProgram http-tracer's status satisfies `done` (`what` names that
/// in the failure, with the status and the operator's log).
async fn apply_and_wait(
    cp: &ControlPlane,
    dir: &Path,
    object: &Value,
    what: &str,
    seconds: u64,
    operator_log: &dyn Fn() -> String,
    done: impl Fn(&Value) -> bool,
) {
    let f = write(dir, "object.json", &object.to_string());
    cp.kubectl_ok(&["apply", "--server-side", "-f", &f])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let out = cp
            .kubectl_ok(&["get", "tracerprogram", "http-tracer", "-o", "json"])
            .unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        if done(&v["status"]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never: {what}: {}\n{}",
            v["status"],
            operator_log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn prometheus_and_jaeger_find_the_driven_traffic() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "runs the real agent: run as root"
    );
    let bins = build_binaries();
    // The default install (Helm-generated certificates) with its
    // monitoring parts on; the tracer object is not signed here (the
    // signature path has tests of its own).
    let d = docs(&render(&[
        "--set",
        "agent.signatures.allowUnsigned=true",
        "--set",
        "monitoring.serviceMonitor.enabled=true",
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.dashboards.enabled=true",
        "--set",
        "otlp.enabled=true",
        "--set",
        "otlp.endpoint=http://jaeger-collector.observability:4317",
    ]));
    let dir = tempfile::tempdir().unwrap();
    let jaeger = Jaeger::start(&dir.path().join("jaeger"));
    let agent_root = dir.path().join("agent");
    let (_agent, grpc, agent_metrics, pin_root, _) =
        start_agent(&d, &d, &bins[AGENT], &agent_root, Some(jaeger.otlp));
    let cp = ControlPlane::start().await.expect("control plane starts");
    let (operator, operator_log) = start_operator(&cp, &d, &bins[OPERATOR], dir.path(), grpc).await;
    let operator_text = || std::fs::read_to_string(&operator_log).unwrap_or_default();

    // The HTTP tracer on the node's disk, in the chart's object directory
    // (moved under the agent's root like every path), rolled out by the
    // operator.
    let objects = agent_root.join("state/objects");
    std::fs::create_dir_all(&objects).unwrap();
    let object = objects.join("http_tracer.bpf.o");
    std::fs::write(&object, bpfleet_bpf::HTTP_TRACER).unwrap();
    let tp = crate::tracer_spec::http_tracer(object.to_str().unwrap());
    apply_and_wait(
        &cp,
        dir.path(),
        &tp,
        "the tracer became Healthy",
        120,
        &operator_text,
        |s| s["phase"] == "Healthy",
    )
    .await;

    // Prometheus, as the ServiceMonitors and the PrometheusRule say.
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let (rules, alerts) = rule_file(&d, &prom_dir);
    let config = write(
        &prom_dir,
        "prometheus.yml",
        &scrape_config(
            &d,
            &[
                ("operator", operator.metrics, "bpfleet-operator-0"),
                ("agent", agent_metrics, "bpfleet-agent-0"),
            ],
            &rules,
        ),
    );
    let web = free_port();
    let prom_log = prom_dir.join("prometheus.log");
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={config}"))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(log_file(&prom_log))
        .stderr(log_file(&prom_log))
        .spawn()
        .expect("prometheus starts");
    let mut prometheus = Running(child, None);
    let prom_text = || std::fs::read_to_string(&prom_log).unwrap_or_default();

    // Traffic through the tracer, in a network namespace of the test's
    // own: 200s, 404s and 501s (python's answer to a method it does not
    // serve) from a real server.
    let ns = Netns::new("scrape");
    let port = free_port();
    let server = Command::new("nsenter")
        .arg(format!("--net={}", ns.path()))
        .args([
            "python3",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _server = Running(server, None);
    let base = format!("http://127.0.0.1:{port}");
    let drive = |rounds: usize| {
        for _ in 0..rounds {
            for (method, path) in [("GET", "/"), ("GET", "/missing"), ("DELETE", "/")] {
                let _ = Command::new("nsenter")
                    .arg(format!("--net={}", ns.path()))
                    .args(["curl", "-s", "-o", "/dev/null", "--retry", "5"])
                    .args(["--retry-connrefused", "--retry-delay", "0", "-X", method])
                    .arg(format!("{base}{path}"))
                    .status();
            }
        }
    };

    // Every target up, then traffic over several scrapes, so that rates
    // over the panels' windows have two samples or more.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(s)) = prometheus.0.try_wait() {
            panic!("prometheus exited ({s}):\n{}", prom_text());
        }
        let up = query(web, "up == 1").map(|r| r.len()).unwrap_or(0);
        if up == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw both targets up:\n{}",
            prom_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for _ in 0..ROUNDS / 5 {
        drive(5);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut missing = Vec::new();
    // Every dashboard panel's query returns data.
    let mut panels = 0;
    let mut policy_only = 0;
    for cm in kind(&d, "ConfigMap") {
        let Some(data) = cm["data"].as_object() else {
            continue;
        };
        for (file, text) in data {
            if !file.ends_with(".json") {
                continue;
            }
            let dash: Value = serde_json::from_str(text.as_str().unwrap()).unwrap();
            for p in dash["panels"].as_array().into_iter().flatten() {
                for t in p["targets"].as_array().into_iter().flatten() {
                    let Some(expr) = t["expr"].as_str() else {
                        continue;
                    };
                    if POLICY_ONLY.iter().any(|m| expr.contains(m)) {
                        policy_only += 1;
                        continue;
                    }
                    panels += 1;
                    match query(web, &grafana_to_promql(expr)) {
                        Ok(r) if !r.is_empty() => {}
                        Ok(_) => missing.push(format!("{file} {:?}: no data: {expr}", p["title"])),
                        Err(e) => missing.push(format!("{file} {:?}: {e}: {expr}", p["title"])),
                    }
                }
            }
        }
    }
    assert!(panels >= 20, "only {panels} panel queries found");
    assert_eq!(
        policy_only,
        POLICY_ONLY.len(),
        "one panel for each series a policy makes"
    );

    // Every alert's inputs return data, and Prometheus evaluates every
    // rule without an error.
    for (alert, expr) in &alerts {
        for s in selectors(expr) {
            match query(web, &s) {
                Ok(r) if !r.is_empty() => {}
                Ok(_) => missing.push(format!("alert {alert}: no data for {s}")),
                Err(e) => missing.push(format!("alert {alert}: {e}: {s}")),
            }
        }
    }
    let out = Command::new("curl")
        .args(["-sS", &format!("http://127.0.0.1:{web}/api/v1/rules")])
        .output()
        .unwrap();
    let rules: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut evaluated = 0;
    for g in rules["data"]["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            evaluated += 1;
            if r["health"] != "ok" {
                missing.push(format!(
                    "rule {}: health {} {}",
                    r["name"], r["health"], r["lastError"]
                ));
            }
        }
    }
    assert_eq!(evaluated, alerts.len(), "every alert loaded: {rules}");
    assert!(
        missing.is_empty(),
        "{} of {panels} panel queries and {} alerts' inputs without data:\n{}\n\nagent metrics:\n{}",
        missing.len(),
        alerts.len(),
        missing.join("\n"),
        http_get(agent_metrics, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default()
    );

    // Spans: metrics mode (the tracer's default) counts exchanges in the
    // kernel and sends none; a TracerPolicy puts every connection in
    // events mode, and the exchanges driven after it reaches the node must
    // each be in Jaeger once.
    let policy = json!({
        "apiVersion": "bpfleet.dev/v1alpha1", "kind": "TracerPolicy",
        "metadata": {"name": "spans"},
        "spec": {
            "targets": {"programNames": ["http-tracer"]},
            "config": {"exchangeEvents": "All", "ends": "Both"},
        },
    });
    apply_and_wait(
        &cp,
        dir.path(),
        &policy,
        "the policy reached the node",
        60,
        &operator_text,
        |s| s["policy"]["name"] == "spans" && s["policy"]["configuredNodes"] == 1,
    )
    .await;
    drive(SPAN_ROUNDS);
    traces_in_jaeger(&jaeger, SPAN_ROUNDS, port, agent_metrics);

    // The agent's and the operator's own logs, with the chart's
    // `logFormat` (json), as a log pipeline reads them.
    for (who, path) in [
        ("agent", agent_root.join("agent.log")),
        ("operator", operator_log.clone()),
    ] {
        log_shape(who, &std::fs::read_to_string(&path).unwrap());
    }

    // Nothing left loaded: the TracerProgram goes, the agent unloads.
    cp.kubectl_ok(&[
        "delete",
        "tracerprogram",
        "http-tracer",
        "--wait=true",
        "--timeout=60s",
    ])
    .unwrap();
    drop(prometheus);
    drop(operator);
    let _ = std::fs::remove_dir_all(&pin_root);
}

/// Every line of a log is one JSON object a pipeline's stock JSON stage
/// takes whole: an agent's or operator's event (`timestamp` in RFC 3339,
/// `level`, `target`, the message and fields at the top level) or a BPF
/// program's record (`source` "bpf", docs/logs.md); no line so long that
/// the kubelet would split it (16 KiB) into partial records.
fn log_shape(who: &str, text: &str) {
    let mut events = 0;
    let mut messages = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.len() < 16 << 10,
            "{who}: a line of {} bytes",
            line.len()
        );
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{who}: not one JSON object per line ({e}): {line}"));
        let o = v
            .as_object()
            .unwrap_or_else(|| panic!("{who}: not an object: {line}"));
        if o.get("source").and_then(Value::as_str) == Some("bpf") {
            for k in [
                "ts", "level", "node", "program", "revision", "msg_id", "fields",
            ] {
                assert!(o.contains_key(k), "{who}: BPF record without {k}: {line}");
            }
            continue;
        }
        events += 1;
        let ts = o["timestamp"].as_str().unwrap_or_default();
        assert!(
            ts.len() >= 20 && ts.as_bytes()[10] == b'T' && ts.ends_with('Z'),
            "{who}: timestamp not RFC 3339 UTC: {line}"
        );
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                .contains(&o["level"].as_str().unwrap_or("")),
            "{who}: level: {line}"
        );
        assert!(o["target"].is_string(), "{who}: target: {line}");
        assert!(
            !o.contains_key("fields"),
            "{who}: fields nested, not at the top level: {line}"
        );
        messages += usize::from(o["message"].is_string());
    }
    assert!(events >= 3, "{who}: only {events} log lines:\n{text}");
    assert!(
        messages * 2 >= events,
        "{who}: most lines without a message:\n{text}"
    );
}

#[test]
fn log_shape_takes_json_events_and_refuses_text_and_nesting() {
    let event = r#"{"timestamp":"2026-12-03T15:56:39.889681Z","level":"INFO","message":"gRPC listening","socket":"/run/a.sock","target":"bpfleet_agent::server"}"#;
    let bpf = r#"{"ts":"2026-12-03T08:15:02.123456Z","level":"warn","source":"bpf","node":"n","program":"p","revision":"r","msg_id":7,"fields":[1],"token":3}"#;
    log_shape("json", &[event, bpf, event, event].join("\n"));
    for bad in [
        "2026-12-03T15:56:39.889681Z  INFO bpfleet_agent::server: gRPC listening",
        r#"{"timestamp":"2026-12-03T15:56:39Z","level":"INFO","fields":{"message":"m"},"target":"t"}"#,
        r#"{"timestamp":"1733241399","level":"INFO","message":"m","target":"t"}"#,
    ] {
        let text = [event, event, event, bad].join("\n");
        assert!(
            std::panic::catch_unwind(|| log_shape("bad", &text)).is_err(),
            "accepted: {bad}"
        );
    }
}

/// The driven exchanges as Jaeger holds them: the server's spans, one per
/// request, by method and status (5xx an error, 4xx not, as the semantic
/// conventions say for a server), the clients' spans as many; one trace
/// fetched again by its id; and the agent's export counters agreeing.
fn traces_in_jaeger(jaeger: &Jaeger, rounds: usize, port: u16, agent_metrics: u16) {
    let port = port.to_string();
    let server_key = |s: &Span| {
        (
            s.attr("http.request.method").unwrap_or_default(),
            s.attr("http.response.status_code").unwrap_or_default(),
            s.status,
        )
    };
    let want = BTreeSet::from([
        (("DELETE".to_string(), "501".to_string(), 2), rounds),
        (("GET".to_string(), "200".to_string(), 0), rounds),
        (("GET".to_string(), "404".to_string(), 0), rounds),
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut server, mut client);
    loop {
        let services = jaeger.services().unwrap_or_default();
        let all: Vec<Span> = services
            .iter()
            .flat_map(|s| jaeger.search(s).unwrap_or_default())
            .filter(|s| s.attr("server.port").as_ref() == Some(&port))
            .collect();
        server = all
            .iter()
            .filter(|s| s.kind == 2)
            .cloned()
            .collect::<Vec<_>>();
        client = all
            .iter()
            .filter(|s| s.kind == 3)
            .cloned()
            .collect::<Vec<_>>();
        let mut got = std::collections::BTreeMap::new();
        for s in &server {
            *got.entry(server_key(s)).or_insert(0usize) += 1;
        }
        let got: BTreeSet<_> = got.into_iter().collect();
        if got == want && client.len() == 3 * rounds {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Jaeger holds, of the driven exchanges, server spans {got:?} (want {want:?}) and {} client spans (want {}); services {services:?}\nagent metrics:\n{}\njaeger:\n{}",
            client.len(),
            3 * rounds,
            http_get(agent_metrics, "/metrics")
                .map(|r| r.1)
                .unwrap_or_default(),
            jaeger.log_text()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let services: BTreeSet<&str> = server.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services.len(), 1, "one server, one service: {services:?}");
    assert!(
        !services.contains(""),
        "spans without a service.name: {server:?}"
    );

    // A failed exchange found again by its trace id, as the UI links it.
    let failed = server.iter().find(|s| s.status == 2).unwrap();
    assert_eq!(failed.name, "DELETE /", "{failed:?}");
    let trace = jaeger
        .trace(&failed.trace_id)
        .unwrap_or_else(|e| panic!("trace {}: {e}", failed.trace_id));
    assert_eq!(
        trace.len(),
        1,
        "one span per trace (no context to join): {trace:?}"
    );
    let got = &trace[0];
    assert_eq!(
        (&got.service, &got.name, got.kind, got.status),
        (&failed.service, &failed.name, 2, 2)
    );
    for (key, value) in [
        ("http.route", "/"),
        ("url.path", "/"),
        ("http.response.status_code", "501"),
        ("error.type", "501"),
    ] {
        assert_eq!(got.attr(key).as_deref(), Some(value), "{key} of {got:?}");
    }

    // The agent says it exported at least these and lost none.
    let metrics = http_get(agent_metrics, "/metrics").unwrap().1;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in the agent's metrics:\n{metrics}"))
    };
    assert!(value("bpfleet_tracer_spans_exported") >= (6 * rounds) as f64);
    assert_eq!(value("bpfleet_tracer_spans_dropped"), 0.0);
    assert_eq!(value("bpfleet_tracer_span_export_failures"), 0.0);
}
