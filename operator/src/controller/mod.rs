//! The reconciler: for each TracerProgram, gather what the state machine
//! needs (the selected nodes and what their agents report, the gates of the
//! targeting TracerPolicy, the manual requests), run the machine, write the
//! status it returns through the status subresource (server-side apply,
//! only when it changed), publish its events and carry out its node
//! actions over gRPC. A finalizer unloads the program from every node
//! before the object goes.
//!
//! The spec is never written. Everything a restarted operator needs is in
//! status, except the health-sample windows and the failures of calls that
//! are re-made anyway (both in memory, rebuilt within a reconcile or two).
//!
//! This file owns the reconcile itself (apply, finish, cleanup) and the
//! [`Context`] it runs in. Its rooms: [`targets`] (which nodes, where their
//! agents are), [`look`] (what the nodes hold, through the shared cache),
//! [`configure`] (the policy's writes), [`actions`] (the machine's node
//! actions as agent calls, Load requests built once per revision),
//! [`snapshots`] (the ControllerRevision per revision) and [`report`]
//! (status for a spec that cannot be acted on, and Events). The machine
//! itself is [`crate::rollout`]; this module must not decide anything the
//! machine decides.

mod actions;
mod configure;
mod look;
pub mod orphans;
mod report;
mod snapshots;
mod targets;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bpfleet_api::program::Phase;
use bpfleet_api::{TracerPolicy, TracerProgram, TracerProgramStatus};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use tracing::{info, instrument, warn};

use crate::agents::{Discovery, Pool};
use crate::cache::NodeCache;
use crate::load::{self, RevisionSnapshot};
use crate::metrics::Metrics;
use crate::observe::{FailureBook, SampleBook};
use crate::revision::revision_id;
use crate::rollout::{self, Input, NodeAction, Output};
use crate::{Error, Result, policy, requests, status};

use actions::{FirstLoad, LoadRequests, carry_out};
use configure::configure;
use look::{forget_unloaded, observe, observe_stamped};
use report::{policy_for, publish, stalled};
use snapshots::{delete_snapshots, ensure_snapshot, history_ids, prune_snapshots};
use targets::{Target, all_targets, split, targets};

pub use snapshots::{PROGRAM_LABEL, REVISION_LABEL};

/// What a reconcile reads of a Node (name, endpoint, cores, kernel), for
/// tests elsewhere that change Nodes.
#[cfg(test)]
pub(crate) fn target_summary(
    node: &k8s_openapi::api::core::v1::Node,
    pods: &std::collections::HashMap<String, String>,
) -> (String, Option<String>, u32, Option<String>) {
    let t = targets::target(node, pods, true);
    (t.name, t.endpoint, t.cores, t.kernel)
}

/// Finalizer that keeps a TracerProgram until every node unloaded it.
pub const FINALIZER: &str = "bpfleet.dev/unload";

/// One reconcile moves batch after batch of nodes while they confirm, for
/// at most this many passes and this long; then it requeues.
const MAX_PASSES: usize = 32;
const PASS_BUDGET: Duration = Duration::from_secs(5);

/// Everything a reconcile uses.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub pool: Arc<Pool>,
    /// What agents hold, shared by every program's reconcile.
    pub cache: NodeCache,
    pub discovery: Discovery,
    pub agent_selector: Vec<(String, String)>,
    pub nodes: Store<Node>,
    pub pods: Store<Pod>,
    pub policies: Store<TracerPolicy>,
    /// Where revision snapshots (ControllerRevisions) live.
    pub namespace: String,
    /// Requeue of a program with nothing pending (drift check).
    pub resync: Duration,
    /// What kube-runtime adds to every requeue (its debounce); timers of
    /// the machine are requeued this much early so they fire on time.
    pub debounce: Duration,
    pub samples: Mutex<SampleBook>,
    pub failures: Mutex<FailureBook>,
    /// Revision snapshots known to exist, with their content.
    pub snapshots: Mutex<HashMap<(String, String), RevisionSnapshot>>,
    /// Policy configuration writes agents refused.
    pub refusals: Mutex<policy::Refusals>,
    pub started: Instant,
}

impl Context {
    /// `at` in nanoseconds since the operator started (the sample clock).
    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_nanos()).unwrap_or(u64::MAX)
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, FailureBook> {
        // The book stays consistent even if a holder panicked mid-insert.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn samples(&self) -> std::sync::MutexGuard<'_, SampleBook> {
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// The entry point kube-runtime calls.
#[instrument(skip(tp, ctx), fields(program = %tp.name_any()))]
pub async fn reconcile(tp: Arc<TracerProgram>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let api: Api<TracerProgram> = Api::all(ctx.client.clone());
    let res = finalizer(&api, FINALIZER, tp, |ev| async {
        match ev {
            Finalizer::Apply(tp) => apply(&tp, &ctx).await,
            Finalizer::Cleanup(tp) => cleanup(&tp, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    let result = if res.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciles
        .get_or_create(&crate::metrics::ResultLabel {
            result: result.into(),
        })
        .inc();
    res
}

/// Transient errors back off from 2 s up to 2 min per object; permanent
/// ones wait for a change of the object (they were written to status).
pub fn error_policy(tp: Arc<TracerProgram>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(err.kind());
    warn!(program = %tp.name_any(), error = %err, "reconcile failed");
    if err.is_transient() {
        Action::requeue(Duration::from_secs(5))
    } else {
        Action::await_change()
    }
}

async fn apply(tp: &TracerProgram, ctx: &Context) -> Result<Action> {
    let name = tp.name_any();
    let status = tp.status.clone().unwrap_or_default();
    let generation = tp.metadata.generation.unwrap_or(0);

    // A spec the apiserver accepted but the operator cannot act on: say so
    // in status and wait for the next change.
    let revision = match revision_id(&tp.spec).and_then(|r| {
        load::entries(&tp.spec.programs)?;
        Ok(r)
    }) {
        Ok(r) => r,
        Err(e) => return stalled(tp, ctx, &status, generation, &e).await,
    };
    ensure_snapshot(tp, ctx, &revision).await?;

    let (requests, problems) = requests::from_annotations(tp.annotations());
    for p in &problems {
        warn!(program = %name, "{p}");
    }
    let policy = policy_for(tp, &ctx.policies);
    let gates = policy
        .as_ref()
        .map(|p| p.spec.health.clone())
        .unwrap_or_default();
    let targets = match targets(tp, ctx) {
        Ok(t) => t,
        Err(e) => return stalled(tp, ctx, &status, generation, &e).await,
    };
    let all: Vec<&Target> = targets.iter().collect();
    let look::Stamped {
        mut reports,
        stamps,
        budgets,
        firing,
    } = observe_stamped(&name, &all, ctx).await;
    let budget_nodes: Vec<(&str, &bpfleet_proto::v1::CpuBudgetStatus)> = targets
        .iter()
        .zip(&budgets)
        .filter_map(|(t, b)| Some((t.name.as_str(), b.as_ref()?)))
        .collect();
    forget_unloaded(ctx, &name, &targets, &reports);
    let applied = configure(
        tp,
        ctx,
        policy.as_deref(),
        &targets,
        &reports,
        &stamps,
        &firing,
    )
    .await;
    // Nodes that do not hold the program yet get the policy's writes right
    // after their Load, before the Activate that follows.
    let want = policy::desired(policy.as_deref());
    // A policy that cannot work is written nowhere (see policy::check).
    let invalid = policy
        .as_deref()
        .is_some_and(|p| !policy::check::problems(&p.spec).is_empty());
    let first_load = FirstLoad {
        requests: if want.stamp == 0 || invalid {
            Vec::new()
        } else {
            want.requests(&name)
        },
        nodes: targets
            .iter()
            .zip(&stamps)
            .filter(|(_, s)| s.is_none())
            .map(|(t, _)| t.name.as_str())
            .collect(),
    };

    let source_commit = tp
        .annotations()
        .get(bpfleet_api::program::SOURCE_COMMIT_ANNOTATION)
        .map(String::as_str);
    // Pass after pass: decide, write status, act, and look again at the
    // nodes acted on. Each pass is one ordinary reconcile of the machine
    // (its status fed back as the last status), so a rollout whose nodes
    // confirm quickly moves batch after batch of `maxUnavailable` nodes
    // without waiting for a requeue; the loop ends when the machine waits
    // (pause, analysis, nodes that did not move), when a call failed, when
    // the machine asks again for something already done in this reconcile
    // (left to the next reconcile, after a fresh look), or at the budget.
    let begun = Instant::now();
    let index: HashMap<&str, usize> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut written = status.clone();
    let mut sent: HashSet<NodeAction> = HashSet::new();
    // Built on the first pass that loads a revision, shared by its nodes
    // and by the later passes.
    let mut loads = LoadRequests::new(&tp.spec, &revision).with_budget(if invalid {
        None
    } else {
        policy::budget(policy.as_deref())
    });
    let mut passes = 0;
    loop {
        passes += 1;
        let (nodes, departed) = split(&targets, &reports);
        let at = Timestamp::now();
        let input = Input {
            program: &name,
            generation,
            spec: &tp.spec,
            status: &written,
            source_commit,
            nodes: &nodes,
            departed: &departed,
            gates: &gates,
            requests: &requests,
            now: Time(at),
        };
        let mut out = match rollout::reconcile(&input) {
            Ok(out) => out,
            Err(e) => return stalled(tp, ctx, &written, generation, &e).await,
        };
        out.status.policy.clone_from(&applied);
        set_budget_condition(
            &mut out.status,
            &status,
            &budget_nodes,
            generation,
            &input.now,
        );
        out.status.map_memory = map_memory(&reports);
        // Status first: what was decided is on record before it is done.
        if out.status != written {
            status::apply::<TracerProgram>(&ctx.client, &name, &out.status).await?;
        }
        publish(tp, ctx, &out.events).await;
        let repeated = out.actions.iter().any(|a| sent.contains(a));
        let mut more = !out.actions.is_empty() && !repeated;
        if more {
            let ok = carry_out(
                ctx,
                &name,
                &mut loads,
                &out.actions,
                &targets,
                Some(&first_load),
                out.parallel,
            )
            .await;
            sent.extend(out.actions.iter().cloned());
            more = ok && passes < MAX_PASSES && begun.elapsed() < PASS_BUDGET;
        }
        if !more {
            return finish(tp, ctx, &status, &out, at, !out.actions.is_empty()).await;
        }
        // A fresh look at the nodes acted on (the cache asks their agents
        // again: what it held of them predates the calls).
        let again: Vec<usize> = out
            .actions
            .iter()
            .filter_map(|a| index.get(a.node.as_str()).copied())
            .collect::<BTreeSet<usize>>()
            .into_iter()
            .collect();
        let looked: Vec<&Target> = again.iter().map(|&i| &targets[i]).collect();
        for (i, r) in again.into_iter().zip(observe(&name, &looked, ctx).await) {
            reports[i] = r;
        }
        written = out.status;
    }
}

/// After the last pass (decided at `at`): snapshots of trimmed revisions,
/// metrics, and when to look again (`acted`: that pass had actions,
/// carried out or not).
async fn finish(
    tp: &TracerProgram,
    ctx: &Context,
    old: &TracerProgramStatus,
    out: &Output,
    at: Timestamp,
    acted: bool,
) -> Result<Action> {
    let name = tp.name_any();
    if history_ids(old) != history_ids(&out.status) {
        prune_snapshots(ctx, &name, &out.status).await;
    }
    ctx.metrics.set_phase(&name, out.status.phase);
    if out.status.phase == Some(Phase::Aborted) && old.phase != Some(Phase::Aborted) {
        ctx.metrics
            .aborts
            .get_or_create(&crate::metrics::ProgramLabel {
                program: name.clone(),
            })
            .inc();
    }
    // Look again soon after acting (the calls completed, so the next
    // reconcile sees their result and moves the next batch of nodes), at
    // the machine's next timer, and in any case at the resync interval.
    let mut after = ctx.resync;
    if acted {
        after = after.min(Duration::from_millis(500));
    }
    if let Some(s) = out.requeue_after {
        after = after.min(timer(at, s, Timestamp::now(), ctx.debounce));
    }
    Ok(Action::requeue(after))
}

/// Past the whole second a machine timer is due at, so that the machine
/// (which reads time in whole seconds) finds it due.
const TIMER_MARGIN_MS: i64 = 100;

/// Sets the program's `BudgetEnforced` condition from what its nodes
/// report of its CPU budget ([`policy::cpu`]), or removes it when none
/// reports one; `before` holds the transition times to keep.
fn set_budget_condition(
    out: &mut TracerProgramStatus,
    before: &TracerProgramStatus,
    nodes: &[(&str, &bpfleet_proto::v1::CpuBudgetStatus)],
    generation: i64,
    now: &Time,
) {
    out.conditions
        .retain(|c| c.type_ != policy::cpu::BUDGET_ENFORCED);
    if let Some(c) = policy::cpu::program_condition(nodes, &before.conditions, generation, now) {
        out.conditions.push(c);
    }
}

/// The requeue delay, from `now`, for a machine timer of `secs` seconds
/// set by a pass at `at`: the machine counts from `at` cut to the whole
/// second, and kube-runtime delays every requeue by `debounce`. Without
/// both corrections a 10 s pause lasts up to 11.5 s.
fn timer(at: Timestamp, secs: i64, now: Timestamp, debounce: Duration) -> Duration {
    let due_ms = at
        .as_second()
        .saturating_add(secs.max(1))
        .saturating_mul(1000)
        .saturating_add(TIMER_MARGIN_MS);
    let lead_ms = i64::try_from(debounce.as_millis()).unwrap_or(i64::MAX);
    let left_ms = due_ms
        .saturating_sub(now.as_millisecond())
        .saturating_sub(lead_ms);
    Duration::from_millis(u64::try_from(left_ms).unwrap_or(0))
}

async fn cleanup(tp: &TracerProgram, ctx: &Context) -> Result<Action> {
    let name = tp.name_any();
    let status = tp.status.clone().unwrap_or_default();
    // Every node with an agent counts: the program may linger on nodes the
    // selector stopped matching.
    let targets = all_targets(ctx);
    let all: Vec<&Target> = targets.iter().collect();
    let reports = observe(&name, &all, ctx).await;
    let (nodes, departed) = split(&targets, &reports);
    let gates = bpfleet_api::policy::HealthGates::default();
    let requests = rollout::Requests::default();
    let input = Input {
        program: &name,
        generation: tp.metadata.generation.unwrap_or(0),
        spec: &tp.spec,
        status: &status,
        source_commit: None,
        nodes: &nodes,
        departed: &departed,
        gates: &gates,
        requests: &requests,
        now: now(),
    };
    let out = rollout::teardown(&input);
    let unreachable: Vec<&str> = nodes
        .iter()
        .chain(&departed)
        .filter(|n| !n.reachable)
        .map(|n| n.node.as_str())
        .collect();
    if out.actions.is_empty() && unreachable.is_empty() {
        delete_snapshots(ctx, &name).await?;
        ctx.failures().forget(&name);
        ctx.samples().retain(&name, |_, _| false);
        ctx.metrics.forget_program(&name);
        info!(program = %name, "unloaded from every node; removing the finalizer");
        return Ok(Action::await_change());
    }
    if out.status != status {
        status::apply::<TracerProgram>(&ctx.client, &name, &out.status).await?;
    }
    publish(tp, ctx, &out.events).await;
    // Teardown only unloads: no Load request is ever built here.
    let mut loads = LoadRequests::new(&tp.spec, "");
    carry_out(ctx, &name, &mut loads, &out.actions, &targets, None, None).await;
    Err(Error::Finalizer(format!(
        "waiting to unload {name}: {} node action(s) sent, unreachable: [{}]",
        out.actions.len(),
        unreachable.join(", ")
    )))
}

/// The program's map memory over the nodes whose agents reported figures
/// (every loaded revision's; the agent counts the shared maps with the
/// active one). None when none did.
pub(crate) fn map_memory(
    reports: &[rollout::NodeReport],
) -> Option<bpfleet_api::program::MapMemory> {
    let mut out = bpfleet_api::program::MapMemory::default();
    for r in reports {
        let Some(bytes) = r.map_memory_bytes else {
            continue;
        };
        let node = i64::try_from(bytes).unwrap_or(i64::MAX);
        out.total_bytes = out.total_bytes.saturating_add(node);
        out.nodes += 1;
        if node > out.max_node_bytes || out.max_node.is_empty() {
            out.max_node_bytes = node;
            out.max_node.clone_from(&r.node);
        }
    }
    (out.nodes > 0).then_some(out)
}

#[cfg(test)]
mod tests;
