//! `kubectl bpfleet`: manual control of rollouts without editing the spec
//! (so GitOps sees no drift) and a status view. Commands write the
//! annotations of [`crate::requests`] with a fresh request id; the operator
//! acknowledges each id in `status.rollout.acknowledgedRequests`, which
//! `--wait` watches for.

use std::fmt::Write as _;
use std::time::Duration;

use bpfleet_api::TracerProgram;
use bpfleet_api::program::{AnalysisVerdict, Phase};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::requests;

pub mod image;
use crate::rollout::conditions::phase_name;
use crate::{Error, Result};

/// Control bpfleet rollouts: status, promote, abort, retry, pause, resume,
/// undo; push program images. Uses the current kubeconfig context (KUBECONFIG honoured).
#[derive(clap::Parser, Debug)]
#[command(name = "kubectl-bpfleet", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Build and push program images (no cluster needed).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Show a TracerProgram's rollout: revisions, step, nodes, gates,
    /// failing nodes, conditions and the version registry.
    Status { name: String },
    /// Finish the current pause, analysis or promotion wait.
    Promote {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Stop the rollout and return every node to the stable revision.
    Abort {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Roll out again a revision that was aborted, or rerun a held step.
    Retry {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Hold the rollout where it is (nodes keep what they run).
    Pause { name: String },
    /// Release a hold set by `pause`.
    Resume { name: String },
    /// Make a revision of the registry the stable one and return every node
    /// to it. The spec's revision stays held until the spec changes: with
    /// GitOps, revert the commit in Git afterwards (see docs/operator.md).
    Undo {
        name: String,
        /// Revision id from `kubectl bpfleet status` (the registry).
        #[arg(long)]
        to_revision: String,
        #[command(flatten)]
        wait: Wait,
    },
}

#[derive(clap::Args, Debug)]
pub struct Wait {
    /// Wait until the operator acknowledges the request (seconds, 0: don't).
    #[arg(long, default_value_t = 30)]
    pub wait: u64,
}

fn request_id() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos().to_string())
        .unwrap_or_else(|_| "0".into())
}

/// Runs one plugin command, printing to stdout.
pub async fn run(cli: Cli) -> Result<()> {
    let cmd = match cli.command {
        Command::Image(i) => return image::run(i).await,
        other => other,
    };
    let client = Client::try_default().await?;
    let api: Api<TracerProgram> = Api::all(client);
    match cmd {
        Command::Image(_) => Ok(()),
        Command::Status { name } => {
            let tp = api.get(&name).await.map_err(|e| not_found(&name, e))?;
            print!("{}", render_status(&tp));
            Ok(())
        }
        Command::Promote { name, wait } => {
            command(&api, &name, requests::PROMOTE, None, wait).await
        }
        Command::Abort { name, wait } => command(&api, &name, requests::ABORT, None, wait).await,
        Command::Retry { name, wait } => command(&api, &name, requests::RETRY, None, wait).await,
        Command::Undo {
            name,
            to_revision,
            wait,
        } => {
            let tp = api.get(&name).await.map_err(|e| not_found(&name, e))?;
            let known = tp
                .status
                .as_ref()
                .is_some_and(|s| s.history.iter().any(|h| h.revision == to_revision));
            if !known {
                return Err(Error::InvalidSpec(format!(
                    "--to-revision {to_revision}: not in the registry of {name} (see `kubectl bpfleet status {name}`)"
                )));
            }
            command(&api, &name, requests::UNDO, Some(&to_revision), wait).await
        }
        Command::Pause { name } => {
            annotate(&api, &name, requests::PAUSED, Some("true")).await?;
            println!(
                "tracerprogram/{name} paused (annotation {})",
                requests::PAUSED
            );
            Ok(())
        }
        Command::Resume { name } => {
            annotate(&api, &name, requests::PAUSED, None).await?;
            println!("tracerprogram/{name} resumed");
            Ok(())
        }
    }
}

fn not_found(name: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(s) if s.code == 404 => {
            Error::InvalidSpec(format!("tracerprogram {name:?} not found"))
        }
        other => Error::Kube(other),
    }
}

async fn annotate(
    api: &Api<TracerProgram>,
    name: &str,
    key: &str,
    value: Option<&str>,
) -> Result<()> {
    let patch = json!({"metadata": {"annotations": {key: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| not_found(name, e))?;
    Ok(())
}

async fn command(
    api: &Api<TracerProgram>,
    name: &str,
    key: &str,
    revision: Option<&str>,
    wait: Wait,
) -> Result<()> {
    let id = request_id();
    let value = match revision {
        Some(r) => format!("{r}@{id}"),
        None => id,
    };
    annotate(api, name, key, Some(&value)).await?;
    let verb = key.trim_start_matches("bpfleet.dev/");
    let ack = format!("{verb}/{value}");
    println!("tracerprogram/{name}: {verb} requested ({ack})");
    if wait.wait == 0 {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.wait);
    while tokio::time::Instant::now() < deadline {
        let tp = api.get(name).await?;
        let acked = tp
            .status
            .as_ref()
            .and_then(|s| s.rollout.as_ref())
            .is_some_and(|r| r.acknowledged_requests.contains(&ack));
        if acked {
            let st = tp.status.unwrap_or_default();
            println!(
                "acknowledged: phase {}, {}",
                st.phase.map_or("-", phase_name),
                st.message.unwrap_or_default()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(Error::Agent(format!(
        "the operator did not acknowledge {ack} within {}s; is it running? (`kubectl bpfleet status {name}`)",
        wait.wait
    )))
}

/// The status view, as text.
pub fn render_status(tp: &TracerProgram) -> String {
    let st = tp.status.clone().unwrap_or_default();
    let mut o = String::new();
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(o, "Name:       {}", tp.name_any());
    let _ = writeln!(o, "Version:    {}", tp.spec.version);
    let _ = writeln!(
        o,
        "Phase:      {}{}",
        st.phase.map_or("-", phase_name),
        st.message
            .as_ref()
            .map(|m| format!(" — {m}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        o,
        "Revision:   current {} stable {} candidate {}",
        dash(&st.current_revision),
        dash(&st.stable_revision),
        dash(&st.candidate_revision)
    );
    let strategy = if tp.spec.strategy.canary.is_some() {
        "canary"
    } else if tp.spec.strategy.blue_green.is_some() {
        "blueGreen"
    } else {
        "immediate"
    };
    let _ = writeln!(
        o,
        "Strategy:   {strategy}, step {} ({}), nodes on candidate {}%",
        dash(&st.current_step),
        st.current_step_index.map_or("-".into(), |i| i.to_string()),
        st.current_node_percent
            .map_or("-".into(), |p| p.to_string())
    );
    let n = &st.nodes;
    let _ = writeln!(
        o,
        "Nodes:      desired {} updated {} ready {} failed {}",
        n.desired, n.updated, n.ready, n.failed
    );
    if tp.spec.paused || st.phase == Some(Phase::Paused) {
        let _ = writeln!(o, "Paused:     yes");
    }
    if !st.failing_nodes.is_empty() {
        let _ = writeln!(o, "Failing nodes:");
        for f in &st.failing_nodes {
            let _ = writeln!(
                o,
                "  {:<20} {:<12} {:<20} {}",
                f.node,
                f.revision.as_deref().unwrap_or("-"),
                f.reason,
                f.message
            );
        }
    }
    if let Some(v) = &st.verification {
        let _ = writeln!(
            o,
            "Verification of {}: {} — {} of {} nodes loaded it, {} refused, {} pending",
            v.revision, v.result, v.verified, v.nodes, v.failed, v.pending
        );
        let _ = writeln!(
            o,
            "  {:<32} {:<7} {:>6} {:>9} {:>7}  first error",
            "KERNEL", "BTF", "NODES", "VERIFIED", "FAILED"
        );
        for k in &v.kernels {
            let _ = writeln!(
                o,
                "  {:<32} {:<7} {:>6} {:>9} {:>7}  {}",
                k.kernel_release,
                k.btf.as_deref().unwrap_or("-"),
                k.nodes,
                k.verified,
                k.failed,
                k.first_error.as_deref().unwrap_or("-")
            );
        }
        for n in &v.failed_nodes {
            let _ = writeln!(
                o,
                "  refused on {:<20} kernel {:<24} {}: {}",
                n.node, n.kernel_release, n.reason, n.first_error
            );
        }
    }
    if let Some(a) = &st.last_analysis {
        let verdict = match a.verdict {
            AnalysisVerdict::Running => "Running",
            AnalysisVerdict::Passed => "Passed",
            AnalysisVerdict::Failed => "Failed",
            AnalysisVerdict::Inconclusive => "Inconclusive",
        };
        let _ = writeln!(o, "Last analysis of {}: {verdict}", a.revision);
        for g in &a.gates {
            let _ = writeln!(
                o,
                "  {} {:<22} measured {:<14} threshold {}{}",
                if g.passed { "ok  " } else { "FAIL" },
                g.gate,
                g.measured,
                g.threshold,
                g.message
                    .as_ref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            );
        }
    }
    if !st.conditions.is_empty() {
        let _ = writeln!(o, "Conditions:");
        for c in &st.conditions {
            let _ = writeln!(
                o,
                "  {:<12} {:<6} {:<22} {}",
                c.type_, c.status, c.reason, c.message
            );
        }
    }
    if !st.history.is_empty() {
        let _ = writeln!(o, "History (newest first):");
        let _ = writeln!(
            o,
            "  {:<12} {:<10} {:<11} {:<12} DEPLOYED",
            "REVISION", "VERSION", "STATE", "OUTCOME"
        );
        for h in &st.history {
            let _ = writeln!(
                o,
                "  {:<12} {:<10} {:<11} {:<12} {}",
                h.revision,
                h.version,
                format!("{:?}", h.state).to_uppercase(),
                h.outcome
                    .map(|x| format!("{x:?}"))
                    .unwrap_or_else(|| "-".into()),
                h.deployed_at
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_else(|| "-".into())
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpfleet_api::TracerProgramStatus;
    use bpfleet_api::program::{
        AnalysisResult, FailingNode, GateResult, KernelVerification, NodeVerification, Verification,
    };

    #[test]
    fn status_view_shows_gates_failures_and_history() {
        let spec = serde_json::from_value(json!({
            "version": "3.0.0",
            "bytecode": {"file": {"path": "/x.o"}},
            "sha256": "ab".repeat(32),
            "programs": [{"name": "p", "type": "Tracepoint", "tracepoint": {"category": "syscalls", "name": "sys_enter_write"}}],
            "strategy": {"canary": {"steps": [{"setNodePercent": 50}]}}
        }))
        .expect("spec");
        let mut tp = TracerProgram::new("tracer", spec);
        tp.status = Some(TracerProgramStatus {
            phase: Some(Phase::Aborted),
            message: Some("gate programFailures failed".into()),
            stable_revision: Some("aaaaaaaaaa".into()),
            failing_nodes: vec![FailingNode {
                node: "node-b".into(),
                revision: Some("bbbbbbbbbb".into()),
                reason: "VerifierRejected".into(),
                message: "R1 invalid mem access".into(),
                since: None,
            }],
            last_analysis: Some(AnalysisResult {
                revision: "bbbbbbbbbb".into(),
                verdict: AnalysisVerdict::Failed,
                gates: vec![GateResult {
                    gate: "programFailures".into(),
                    passed: false,
                    measured: "12".into(),
                    threshold: "≤ 0".into(),
                    message: None,
                }],
                finished_at: None,
            }),
            verification: Some(Verification {
                revision: "bbbbbbbbbb".into(),
                result: "Failed".into(),
                nodes: 3,
                verified: 2,
                failed: 1,
                pending: 0,
                kernels: vec![
                    KernelVerification {
                        kernel_release: "6.8.0-45-generic".into(),
                        nodes: 2,
                        verified: 2,
                        failed: 0,
                        first_error: None,
                        btf: Some("Present".into()),
                    },
                    KernelVerification {
                        kernel_release: "5.4.0-old".into(),
                        nodes: 1,
                        verified: 0,
                        failed: 1,
                        first_error: Some("unknown func bpf_ringbuf_output#130".into()),
                        btf: None,
                    },
                ],
                failed_nodes: vec![NodeVerification {
                    node: "node-b".into(),
                    kernel_release: "5.4.0-old".into(),
                    reason: "VerifierRejected".into(),
                    first_error: "unknown func bpf_ringbuf_output#130".into(),
                }],
            }),
            ..Default::default()
        });
        let text = render_status(&tp);
        for want in [
            "Phase:      Aborted — gate programFailures failed",
            "stable aaaaaaaaaa",
            "Strategy:   canary",
            "node-b",
            "VerifierRejected",
            "Last analysis of bbbbbbbbbb: Failed",
            "FAIL programFailures",
            "Verification of bbbbbbbbbb: Failed — 2 of 3 nodes loaded it, 1 refused, 0 pending",
            "KERNEL                           BTF      NODES  VERIFIED  FAILED  first error",
            "6.8.0-45-generic                 Present      2         2       0  -",
            "5.4.0-old                        -            1         0       1  unknown func bpf_ringbuf_output#130",
            "refused on node-b",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
