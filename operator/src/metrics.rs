//! The operator's Prometheus metrics (prefix `bpfleet_`) and the HTTP
//! endpoint that serves them with the health probes: `/metrics`,
//! `/healthz` (the process runs) and `/readyz` (caches synced and, with
//! leader election, this replica leads or stands by without error).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use bpfleet_api::program::Phase;

use crate::rollout::conditions::phase_name;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub program: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabel {
    pub program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub call: String,
    pub result: String,
}

/// Every phase a program can be in, for the one-hot `rollout_phase` gauge.
const PHASES: [Phase; 7] = [
    Phase::Pending,
    Phase::Progressing,
    Phase::Paused,
    Phase::Healthy,
    Phase::Degraded,
    Phase::Aborted,
    Phase::Terminating,
];

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabel, Counter>,
    pub errors: Family<KindLabel, Counter>,
    pub duration: Histogram,
    pub phase: Family<PhaseLabels, Gauge>,
    pub aborts: Family<ProgramLabel, Counter>,
    pub agent_calls: Family<CallLabels, Counter>,
    pub leader: Gauge,
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("bpfleet");
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register(
            "operator_reconciles",
            "Reconciles of TracerPrograms, by result (ok, error)",
            reconciles.clone(),
        );
        let errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "operator_reconcile_errors",
            "Failed reconciles by error kind (kube, agent, invalid_spec, ...)",
            errors.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "operator_reconcile_duration_seconds",
            "Time one reconcile took, agent calls included",
            duration.clone(),
        );
        let phase = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "rollout_phase",
            "1 for the phase each TracerProgram is in, 0 for the others",
            phase.clone(),
        );
        let aborts = Family::<ProgramLabel, Counter>::default();
        registry.register(
            "rollout_aborts",
            "Rollouts aborted (failed gate, failed load, deadline or by request)",
            aborts.clone(),
        );
        let agent_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "operator_agent_calls",
            "gRPC calls to node agents by call and result (ok, refused, unreachable)",
            agent_calls.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "operator_leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        // Series that exist before their first event, at 0: a rate over
        // them is 0 rather than no data (dashboards, and alerts that
        // compare against 0).
        for kind in crate::error::Error::KINDS {
            drop(errors.get_or_create(&KindLabel {
                kind: kind.to_string(),
            }));
        }
        for result in ["ok", "error"] {
            drop(reconciles.get_or_create(&ResultLabel {
                result: result.to_string(),
            }));
        }
        Arc::new(Metrics {
            registry,
            reconciles,
            errors,
            duration,
            phase,
            aborts,
            agent_calls,
            leader,
            ready: AtomicBool::new(false),
        })
    }

    pub fn set_phase(&self, program: &str, phase: Option<Phase>) {
        // The program's abort counter exists from its first phase, at 0.
        drop(self.aborts.get_or_create(&ProgramLabel {
            program: program.to_string(),
        }));
        for p in PHASES {
            let v = i64::from(Some(p) == phase);
            self.phase
                .get_or_create(&PhaseLabels {
                    program: program.to_string(),
                    phase: phase_name(p).to_string(),
                })
                .set(v);
        }
    }

    pub fn forget_program(&self, program: &str) {
        self.aborts.remove(&ProgramLabel {
            program: program.to_string(),
        });
        for p in PHASES {
            self.phase.remove(&PhaseLabels {
                program: program.to_string(),
                phase: phase_name(p).to_string(),
            });
        }
    }

    /// A reconcile (of a program or a policy) failed with `kind`.
    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn call(&self, call: &str, result: &str) {
        self.agent_calls
            .get_or_create(&CallLabels {
                call: call.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

async fn ready(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced\n")
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, m: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(m);
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_a_dashboard_rates_exist_at_zero_before_their_first_event() {
        let m = Metrics::new();
        let text = m.render();
        for kind in crate::error::Error::KINDS {
            assert!(
                text.contains(&format!(
                    "bpfleet_operator_reconcile_errors_total{{kind=\"{kind}\"}} 0"
                )),
                "{kind}: {text}"
            );
        }
        assert!(text.contains(r#"bpfleet_operator_reconciles_total{result="error"} 0"#));
        assert!(!text.contains("bpfleet_rollout_aborts_total{"), "{text}");
        m.set_phase("tracer", Some(Phase::Healthy));
        assert!(
            m.render()
                .contains(r#"bpfleet_rollout_aborts_total{program="tracer"} 0"#)
        );
        m.forget_program("tracer");
        assert!(!m.render().contains(r#"program="tracer""#));
    }

    #[test]
    fn phase_gauge_is_one_hot_and_names_are_stable() {
        let m = Metrics::new();
        m.set_phase("tracer", Some(Phase::Progressing));
        m.reconciles
            .get_or_create(&ResultLabel {
                result: "ok".into(),
            })
            .inc();
        let text = m.render();
        assert!(
            text.contains(r#"bpfleet_rollout_phase{program="tracer",phase="Progressing"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"bpfleet_rollout_phase{program="tracer",phase="Healthy"} 0"#));
        assert!(text.contains(r#"bpfleet_operator_reconciles_total{result="ok"} 1"#));
        m.forget_program("tracer");
        assert!(!m.render().contains("program=\"tracer\""));
    }
}
