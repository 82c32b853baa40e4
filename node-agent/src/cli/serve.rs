//! `bpfleet-agent serve`'s flags and what they become: the agent's
//! [`Config`], the HTTP tracer's settings and the listeners.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::agent::Config;
use crate::error::{Error, Result};
use crate::http::{HttpConfig, parse_rule};
use crate::server::{Listen, TlsFiles};
use bpfleet_httptrace::route::Unmatched;
use bpfleet_httptrace::rules::{RouteRules, Rules};

/// `serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Root of the agent's pins (on bpffs; mounted on /sys/fs/bpf if needed).
    #[arg(long, env = "BPFLEET_PIN_ROOT", default_value = "/sys/fs/bpf/bpfleet")]
    pub pin_root: PathBuf,
    /// State file (written atomically).
    #[arg(
        long,
        env = "BPFLEET_STATE_FILE",
        default_value = "/var/lib/bpfleet/state.json"
    )]
    pub state_file: PathBuf,
    /// JSON-lines audit log.
    #[arg(long, env = "BPFLEET_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// The agent's own log lines on stderr: `text` (for people; colours
    /// only on a terminal) or `json` (one object per line with `timestamp`,
    /// `level`, `message`, the event's fields and `target`, for a log
    /// pipeline). Filtered by RUST_LOG (default info).
    #[arg(long, env = "BPFLEET_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Node-local Unix socket.
    #[arg(
        long,
        env = "BPFLEET_SOCKET",
        default_value = "/run/bpfleet/agent.sock"
    )]
    pub socket: PathBuf,
    /// TCP address for the operator (requires the three TLS options and
    /// --client-identity: the agent refuses to start without them).
    #[arg(long, env = "BPFLEET_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Server certificate (PEM).
    #[arg(long, env = "BPFLEET_TLS_CERT", requires_all = ["tls_key", "client_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// Server key (PEM).
    #[arg(long, env = "BPFLEET_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA that operator client certificates must chain to (PEM).
    #[arg(long, env = "BPFLEET_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Identity a TCP client's certificate must carry, besides chaining to
    /// --client-ca; repeatable (comma-separated in the variable). Matched
    /// exactly against the certificate's DNS and URI subject alternative
    /// names, or against its subject common name when it has neither
    /// (DNS names without regard to case). Any other client is refused
    /// with PermissionDenied on every call, and audited. Required with
    /// --listen: a CA alone would let in every certificate it ever signed.
    #[arg(
        long = "client-identity",
        env = "BPFLEET_CLIENT_IDENTITY",
        value_delimiter = ','
    )]
    pub client_identities: Vec<String>,
    /// Prometheus endpoint address.
    #[arg(long, env = "BPFLEET_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Trusted cosign public key (PEM file); repeatable.
    #[arg(long = "trusted-key")]
    pub trusted_keys: Vec<PathBuf>,
    /// Accept objects without a signature.
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Directory a Load's object_path (spec.bytecode.file.path) must
    /// resolve into, symlinks and `..` resolved; repeatable
    /// (comma-separated in the variable). A path that escapes, or is not a
    /// regular file, is refused before anything is read. Unset: any
    /// absolute path on the node is read (the agent warns at start).
    #[arg(
        long = "object-dir",
        env = "BPFLEET_OBJECT_DIRS",
        value_delimiter = ','
    )]
    pub object_dirs: Vec<PathBuf>,
    /// BPF helper this node treats as missing, by name (`bpf_ringbuf_output`,
    /// the `bpf_` prefix optional) or decimal id (`130`); repeatable. A
    /// Load whose programs call it fails with InvalidArgument as on a kernel
    /// lacking it (`unknown func bpf_ringbuf_output#130`), before anything
    /// is loaded or pinned.
    #[arg(long = "deny-helper", value_name = "NAME")]
    pub deny_helpers: Vec<String>,
    /// Where pulled images' objects are kept, by digest, so restarts,
    /// rollbacks and undos need no registry [default: `images` beside the
    /// state file].
    #[arg(long, env = "BPFLEET_IMAGE_CACHE_DIR")]
    pub image_cache_dir: Option<PathBuf>,
    /// Most bytes of objects the image cache keeps; the least recently
    /// used go first.
    #[arg(long, default_value_t = 256 << 20)]
    pub image_cache_max_bytes: u64,
    /// PEM bundle of CAs trusted for registries, beside the system's;
    /// repeatable.
    #[arg(long = "registry-ca")]
    pub registry_cas: Vec<PathBuf>,
    /// Registry (`host[:port]`) pulled from over plain HTTP; repeatable.
    /// Every other registry is HTTPS only.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Most programs at once.
    #[arg(long, default_value_t = 64)]
    pub max_programs: usize,
    /// Most revisions per program.
    #[arg(long, default_value_t = 8)]
    pub max_revisions: usize,
    /// Map memory budget per program, bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_map_bytes_per_program: u64,
    /// Map memory budget of the agent, bytes.
    #[arg(long, default_value_t = 512 << 20)]
    pub max_map_bytes_total: u64,
    /// Node name reported by NodeInfo.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,
    /// Keep every capability instead of dropping to CAP_BPF, CAP_PERFMON,
    /// CAP_NET_ADMIN (and CAP_SYS_RESOURCE if held) after setup.
    #[arg(long)]
    pub keep_all_capabilities: bool,
    /// Do not run the HTTP tracer runtime. When on (the default), every
    /// program whose shared maps include the tracer's `http_events` and
    /// `http_lost` gets a reader: HTTP metrics on the metrics endpoint,
    /// /api/analytics, and `http` figures in Stats.
    #[arg(long, env = "BPFLEET_NO_HTTP_TRACER")]
    pub no_http_tracer: bool,
    /// Route pattern for `http_route` (`/api/users/{id}`, `/static/*`);
    /// repeatable, first match wins.
    #[arg(long = "http-route")]
    pub http_routes: Vec<String>,
    /// What unmatched paths become: `heuristic` (identifiers become {id},
    /// at most three segments) or `wildcard` (`/*`).
    #[arg(long, default_value = "heuristic", value_parser = ["heuristic", "wildcard"])]
    pub http_unmatched: String,
    /// Distinct heuristic routes before unmatched paths become `/*`.
    #[arg(long, default_value_t = 200)]
    pub http_max_routes: usize,
    /// The TracerPolicy whose redaction and route rules the tracer applies:
    /// a file with its `spec.config` or the whole manifest (YAML or JSON).
    /// Its routes come after `--http-route`; its redaction lists add to
    /// the built-in defaults (unless `disableDefaults`).
    #[arg(long, env = "BPFLEET_HTTP_RULES")]
    pub http_rules: Option<PathBuf>,
    /// Distinct service names before further ones become `other`.
    #[arg(long, default_value_t = 64)]
    pub http_max_services: usize,
    /// Seconds without a response before a request counts as a timeout.
    #[arg(long, default_value_t = 30)]
    pub http_request_timeout_seconds: u64,
    /// kubelet's pod log directory (maps pod UIDs to namespace and name).
    #[arg(long, env = "BPFLEET_PODS_LOG_DIR", default_value = "/var/log/pods")]
    pub pods_log_dir: PathBuf,
    /// Alert rule `NAME=error_rate|p99>THRESHOLD/1m|5m|15m|1h[/MIN_REQUESTS]`
    /// (p99 in seconds); repeatable; replaces the default rules
    /// (HttpHighErrorRate=error_rate>0.05/5m/20, HttpHighLatencyP99=p99>1/5m/20).
    #[arg(long = "http-alert")]
    pub http_alerts: Vec<String>,
    /// Do not print BPF log records. When on (the default), the records
    /// programs write with `bpfleet_log.h` (BPFLEET_LOG_WARN(id, ...)) into
    /// the node's log ring become one JSON object per line on stdout
    /// (ts, level, source="bpf", node, program, revision, msg_id, fields,
    /// token), for the cluster's log pipeline; the agent's own logs stay on
    /// stderr. Off, the ring is still made (objects load alike) and fills
    /// up unread: its records count as dropped (ring_full).
    #[arg(long, env = "BPFLEET_NO_BPF_LOG")]
    pub no_bpf_log: bool,
    /// Size in bytes of the node's BPF log ring, one for every program
    /// (a power of two, 4096 to 67108864). Read when the ring is made, at
    /// the first Load of a program that logs; a ring already pinned keeps
    /// its size. At 72 bytes a record plus 8 of header, 262144 holds
    /// about 3,200 records.
    #[arg(long, env = "BPFLEET_BPF_LOG_RING_BYTES", default_value_t = 256 << 10)]
    pub bpf_log_ring_bytes: u32,
    /// How often, in seconds, CPU budgets (a TracerPolicy's
    /// maxCpuOverheadPercent) are enforced, and the window each step
    /// measures a program's CPU share over: BPF run time over wall time
    /// times online CPUs. Over budget, a program that declares sampling
    /// keeps half the share of events it kept; under a quarter of the
    /// budget, twice as many, up to what its policy asks (1 to 3600).
    #[arg(long, env = "BPFLEET_BUDGET_PERIOD_SECONDS", default_value_t = 5)]
    pub budget_period_seconds: u64,
    /// The lowest sampling, per million events, a CPU budget cuts a
    /// program to (1 to 1000000; a policy asking for less keeps its own).
    #[arg(long, env = "BPFLEET_SAMPLING_FLOOR_PPM", default_value_t = 1000)]
    pub sampling_floor_ppm: u64,
    /// Export every traced exchange as an OTLP span to this gRPC endpoint
    /// (`http://otel-collector:4317`, Jaeger's OTLP port); off when unset.
    #[arg(long, env = "BPFLEET_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

impl ServeArgs {
    /// The HTTP tracer runtime's settings.
    pub fn http_config(&self) -> Result<HttpConfig> {
        let mut cfg = HttpConfig {
            enabled: !self.no_http_tracer,
            tracer_rules: Rules {
                routes: RouteRules {
                    patterns: self.http_routes.clone(),
                    unmatched: match self.http_unmatched.as_str() {
                        "wildcard" => Unmatched::Wildcard,
                        _ => Unmatched::Heuristic,
                    },
                    max_routes: self.http_max_routes,
                },
                ..Default::default()
            },
            max_services: self.http_max_services,
            request_timeout: std::time::Duration::from_secs(
                self.http_request_timeout_seconds.max(1),
            ),
            pods_dir: self.pods_log_dir.clone(),
            otlp_endpoint: self.otlp_endpoint.clone(),
            // Beside the state, which outlives the agent (a restart or an
            // upgrade finds both).
            handover_dir: Some(match self.state_file.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            }),
            ..Default::default()
        };
        if let Some(e) = &cfg.otlp_endpoint {
            crate::http::otlp::check_endpoint(e)?;
        }
        if !self.http_alerts.is_empty() {
            cfg.rules = self
                .http_alerts
                .iter()
                .map(|r| parse_rule(r))
                .collect::<Result<_>>()?;
        }
        if let Some(path) = &self.http_rules {
            let base = cfg.tracer_rules.clone();
            cfg.tracer_rules = crate::http::rules::load_policy(base.clone(), path)?;
            cfg.rules_file = Some((path.clone(), base));
        }
        cfg.route_mapper()?;
        cfg.redactor()?;
        Ok(cfg)
    }

    /// Agent configuration and listeners.
    pub fn split(self) -> Result<(Config, Listen)> {
        let mut cfg = Config::new(self.pin_root, self.state_file);
        cfg.audit_log = self.audit_log;
        cfg.max_programs = self.max_programs;
        cfg.max_revisions = self.max_revisions;
        cfg.max_map_bytes_per_program = self.max_map_bytes_per_program;
        cfg.max_map_bytes_total = self.max_map_bytes_total;
        cfg.allow_unsigned = self.allow_unsigned;
        cfg.tracer_rules_file = self.http_rules.is_some();
        cfg.bpf_log = !self.no_bpf_log;
        cfg.bpf_log_ring_bytes = check_log_ring_bytes(self.bpf_log_ring_bytes)?;
        if !(1..=3600).contains(&self.budget_period_seconds) {
            return Err(Error::Invalid(format!(
                "--budget-period-seconds {}: must be 1 to 3600",
                self.budget_period_seconds
            )));
        }
        cfg.budget_period = std::time::Duration::from_secs(self.budget_period_seconds);
        if !(1..=1_000_000).contains(&self.sampling_floor_ppm) {
            return Err(Error::Invalid(format!(
                "--sampling-floor-ppm {}: must be 1 to 1000000",
                self.sampling_floor_ppm
            )));
        }
        cfg.sampling_floor_ppm = self.sampling_floor_ppm;
        crate::agent::object_dirs::check_dirs(&self.object_dirs)?;
        if self.object_dirs.is_empty() {
            tracing::warn!(
                "no --object-dir: a Load's object_path may name any file on the node; \
                 give --object-dir to restrict path sources"
            );
        }
        cfg.object_dirs = self.object_dirs;
        for h in &self.deny_helpers {
            cfg.denied_helpers
                .insert(crate::kernel::helpers::parse_helper(h)?);
        }
        if !cfg.denied_helpers.is_empty() {
            let names: Vec<String> = cfg
                .denied_helpers
                .iter()
                .filter_map(|id| crate::kernel::helpers::helper_name(*id))
                .collect();
            tracing::warn!(
                denied = ?names,
                "--deny-helper: Loads whose programs call these helpers are refused"
            );
        }
        cfg.node_name = self.node_name;
        for k in &self.trusted_keys {
            let pem = std::fs::read_to_string(k)
                .map_err(|e| Error::io(format!("reading {}", k.display()), e))?;
            cfg.trusted_keys.push((k.display().to_string(), pem));
        }
        cfg.images.cache_dir = self.image_cache_dir;
        cfg.images.cache_max_bytes = self.image_cache_max_bytes;
        cfg.images.insecure = self.insecure_registries;
        for f in &self.registry_cas {
            let pem =
                std::fs::read(f).map_err(|e| Error::io(format!("reading {}", f.display()), e))?;
            cfg.images.ca_pems.push((f.display().to_string(), pem));
        }
        if self.listen.is_some() && self.client_identities.is_empty() {
            return Err(Error::Invalid(
                "--listen needs --client-identity: the name the operator's client certificate \
                 carries (the chart's is bpfleet-operator); the CA alone would let in every \
                 certificate it signed"
                    .into(),
            ));
        }
        let tls = match (self.tls_cert, self.tls_key, self.client_ca) {
            (Some(cert), Some(key), Some(client_ca)) => Some(TlsFiles {
                cert,
                key,
                client_ca,
                client_identities: crate::server::check_identities(&self.client_identities)?,
            }),
            _ => None,
        };
        Ok((
            cfg,
            Listen {
                unix: Some(self.socket),
                tcp: self.listen,
                tls,
                metrics: self.metrics_listen,
            },
        ))
    }
}

/// Checks `--bpf-log-ring-bytes`: a ring buffer's size is a power of two
/// and a multiple of the page size; more than 64 MiB for log lines is a
/// mistake.
fn check_log_ring_bytes(n: u32) -> Result<u32> {
    if !n.is_power_of_two() || !(4096..=64 << 20).contains(&n) {
        return Err(Error::Invalid(format!(
            "--bpf-log-ring-bytes {n}: must be a power of two from 4096 to 67108864 \
             (a ring buffer's size is a power of two and a multiple of the page size)"
        )));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn deny_helper_takes_names_and_ids_and_refuses_unknown_ones() {
        let serve = |args: &[&str]| {
            let mut argv = vec!["bpfleet-agent", "serve"];
            argv.extend_from_slice(args);
            let Command::Serve(s) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not serve")
            };
            s.split().map(|(cfg, _)| cfg)
        };
        let cfg = serve(&[
            "--deny-helper",
            "bpf_ringbuf_output",
            "--deny-helper",
            "get_current_pid_tgid",
            "--deny-helper",
            "1",
        ])
        .unwrap();
        assert_eq!(
            cfg.denied_helpers.into_iter().collect::<Vec<_>>(),
            [1, 14, 130]
        );
        assert!(serve(&[]).unwrap().denied_helpers.is_empty());
        let e = serve(&["--deny-helper", "bpf_ringbuf_outptu"]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("--deny-helper") && msg.contains("bpf_ringbuf_outptu"),
            "{msg}"
        );
    }

    #[test]
    fn the_bpf_log_is_on_by_default_and_its_ring_size_is_checked() {
        let serve = |args: &[&str]| {
            let mut argv = vec!["bpfleet-agent", "serve"];
            argv.extend_from_slice(args);
            let Command::Serve(s) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not serve")
            };
            s.split().map(|(cfg, _)| cfg)
        };
        let cfg = serve(&[]).unwrap();
        assert!(cfg.bpf_log);
        assert_eq!(cfg.bpf_log_ring_bytes, 256 << 10);
        let cfg = serve(&["--no-bpf-log", "--bpf-log-ring-bytes", "65536"]).unwrap();
        assert!(!cfg.bpf_log);
        assert_eq!(cfg.bpf_log_ring_bytes, 65536);
        for bad in ["65535", "2048", "134217728"] {
            let msg = serve(&["--bpf-log-ring-bytes", bad])
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("--bpf-log-ring-bytes") && msg.contains(bad),
                "{msg}"
            );
        }
    }
}
