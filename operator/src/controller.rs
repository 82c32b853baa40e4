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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bpfleet_api::program::Phase;
use bpfleet_api::{TracerPolicy, TracerProgram, TracerProgramSpec, TracerProgramStatus};
use bpfleet_proto::v1 as pb;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::agents::{self, Discovery, Pool};
use crate::cache::{Fetch, NodeCache, Sighting};
use crate::load::{self, LoadSpec, Source};
use crate::metrics::Metrics;
use crate::observe::{self, FailureBook, NodeView, SampleBook};
use crate::revision::revision_id;
use crate::rollout::{self, ActionKind, Input, NodeAction, NodeFailure, NodeReport, Output};
use crate::{Error, Result, policy, requests, selector};

/// Finalizer that keeps a TracerProgram until every node unloaded it.
pub const FINALIZER: &str = "bpfleet.dev/unload";
/// Field manager of the status the operator writes.
pub const MANAGER: &str = "bpfleet-operator";
/// Label on revision snapshots naming their program.
pub const PROGRAM_LABEL: &str = "bpfleet.dev/program";
pub const REVISION_LABEL: &str = "bpfleet.dev/revision";

/// Nodes acted on at once per reconcile.
const FANOUT: usize = 64;
/// Nodes observed at once, operator-wide (each one `List` and one `Stats`).
pub const OBSERVE_FANOUT: usize = 64;
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
    pub snapshots: Mutex<HashMap<(String, String), LoadSpec>>,
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

/// One node as the reconcile sees it.
struct Target {
    name: String,
    endpoint: Option<String>,
    cores: u32,
    selected: bool,
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
    let (mut reports, stamps) = observe_stamped(&name, &all, ctx).await;
    forget_unloaded(ctx, &name, &targets, &reports);
    let applied = configure(tp, ctx, policy.as_deref(), &targets, &reports, &stamps).await;
    // Nodes that do not hold the program yet get the policy's writes right
    // after their Load, before the Activate that follows.
    let want = policy::desired(policy.as_deref());
    let first_load = FirstLoad {
        requests: if want.stamp == 0 {
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
        // Status first: what was decided is on record before it is done.
        if out.status != written {
            write_status(ctx, &name, &out.status).await?;
        }
        publish(tp, ctx, &out.events).await;
        let repeated = out.actions.iter().any(|a| sent.contains(a));
        let mut more = !out.actions.is_empty() && !repeated;
        if more {
            let ok = carry_out(
                ctx,
                &name,
                &tp.spec,
                &revision,
                &out.actions,
                &targets,
                Some(&first_load),
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

fn history_ids(s: &TracerProgramStatus) -> Vec<&str> {
    s.history.iter().map(|h| h.revision.as_str()).collect()
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
        write_status(ctx, &name, &out.status).await?;
    }
    publish(tp, ctx, &out.events).await;
    carry_out(ctx, &name, &tp.spec, "", &out.actions, &targets, None).await;
    Err(Error::Finalizer(format!(
        "waiting to unload {name}: {} node action(s) sent, unreachable: [{}]",
        out.actions.len(),
        unreachable.join(", ")
    )))
}

/// Writes a status saying why the spec cannot be acted on.
async fn stalled(
    tp: &TracerProgram,
    ctx: &Context,
    old: &TracerProgramStatus,
    generation: i64,
    err: &Error,
) -> Result<Action> {
    let name = tp.name_any();
    let message = err.to_string();
    let mut st = old.clone();
    st.observed_generation = Some(generation);
    st.message = Some(message.clone());
    let now = now();
    let cond = |type_: &str, status: &str, reason: &str| {
        let since = old
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.clone(),
            observed_generation: Some(generation),
            last_transition_time: since,
        }
    };
    let mut conditions = vec![
        cond("Ready", "False", "InvalidSpec"),
        cond("Stalled", "True", "InvalidSpec"),
        cond("Reconciling", "False", "InvalidSpec"),
    ];
    for c in &old.conditions {
        if !conditions.iter().any(|n| n.type_ == c.type_) {
            conditions.push(c.clone());
        }
    }
    st.conditions = conditions;
    if st != *old {
        write_status(ctx, &name, &st).await?;
        publish(
            tp,
            ctx,
            &[rollout::Event {
                warning: true,
                reason: "InvalidSpec".into(),
                message: message.clone(),
            }],
        )
        .await;
    }
    warn!(program = %name, %message, "spec cannot be acted on");
    Err(Error::InvalidSpec(message))
}

async fn write_status(ctx: &Context, name: &str, status: &TracerProgramStatus) -> Result<()> {
    let api: Api<TracerProgram> = Api::all(ctx.client.clone());
    let patch = json!({
        "apiVersion": TracerProgram::api_version(&()),
        "kind": TracerProgram::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn publish(tp: &TracerProgram, ctx: &Context, events: &[rollout::Event]) {
    let reference = tp.object_ref(&());
    for e in events {
        let ev = KubeEvent {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.clone(),
            note: Some(observe::truncate(&e.message, 1000)),
            action: "Rollout".into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&ev, &reference).await {
            warn!(reason = %e.reason, error = %err, "could not publish event");
        }
    }
}

/// The TracerPolicy that applies to `tp` (see [`policy::winner`]).
fn policy_for(tp: &TracerProgram, policies: &Store<TracerPolicy>) -> Option<Arc<TracerPolicy>> {
    let all = policies.state();
    let name = tp.name_any();
    let targeting = all
        .iter()
        .filter(|p| policy::targets_program(p, &name, tp.labels()))
        .count();
    if targeting > 1 {
        warn!(program = %name, policies = targeting,
            "several TracerPolicies target this program; the first by name applies");
    }
    policy::winner(&name, tp.labels(), &all).cloned()
}

fn cores(node: &Node) -> u32 {
    node.status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("cpu"))
        .and_then(|q| {
            let q = q.0.trim();
            match q.strip_suffix('m') {
                Some(milli) => milli.parse::<u32>().ok().map(|m| m.div_ceil(1000)),
                None => q.parse::<u32>().ok(),
            }
        })
        .filter(|c| *c > 0)
        .unwrap_or(1)
}

fn target(node: &Node, pods: &HashMap<String, String>, selected: bool) -> Target {
    Target {
        name: node.name_any(),
        endpoint: agents::endpoint_in(node, pods),
        cores: cores(node),
        selected,
    }
}

fn pod_endpoints(ctx: &Context) -> HashMap<String, String> {
    let pods = ctx.pods.state();
    agents::pod_endpoints(
        pods.iter().map(|p| &**p),
        &ctx.discovery,
        &ctx.agent_selector,
    )
}

/// Every node, marked selected when `spec.nodeSelector` matches it.
fn targets(tp: &TracerProgram, ctx: &Context) -> Result<Vec<Target>> {
    let pods = pod_endpoints(ctx);
    let mut out = Vec::new();
    for node in ctx.nodes.state() {
        let selected = match &tp.spec.node_selector {
            None => true,
            Some(s) => selector::matches(s, node.labels())
                .map_err(|e| Error::InvalidSpec(format!("spec.nodeSelector: {e}")))?,
        };
        out.push(target(&node, &pods, selected));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn all_targets(ctx: &Context) -> Vec<Target> {
    let pods = pod_endpoints(ctx);
    let mut out: Vec<Target> = ctx
        .nodes
        .state()
        .iter()
        .map(|n| target(n, &pods, true))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// What each of `targets` holds of `program` (in order), through the
/// cache: a node whose agent has no endpoint or does not answer is
/// unreachable.
async fn observe(program: &str, targets: &[&Target], ctx: &Context) -> Vec<NodeReport> {
    observe_stamped(program, targets, ctx).await.0
}

/// [`observe`], with the configuration stamp of `program` on each node
/// (None where the node does not hold it or did not answer).
async fn observe_stamped(
    program: &str,
    targets: &[&Target],
    ctx: &Context,
) -> (Vec<NodeReport>, Vec<Option<u64>>) {
    let asked: Vec<(&str, &str)> = targets
        .iter()
        .filter_map(|t| Some((t.name.as_str(), t.endpoint.as_deref()?)))
        .collect();
    let mut seen = ctx.cache.observe(program, &asked).await.into_iter();
    let sightings: Vec<Option<Sighting>> = targets
        .iter()
        .map(|t| t.endpoint.as_ref().and_then(|_| seen.next()))
        .collect();
    let stamps = sightings
        .iter()
        .map(|s| s.as_ref()?.view.as_ref()?.config_stamp(program))
        .collect();
    (reports_of(program, targets, &sightings, ctx), stamps)
}

/// Puts the applying policy's configuration in force on every node that
/// holds the program (see [`policy::sync`]); an Event when it wrote some.
async fn configure(
    tp: &TracerProgram,
    ctx: &Context,
    policy: Option<&TracerPolicy>,
    targets: &[Target],
    reports: &[NodeReport],
    stamps: &[Option<u64>],
) -> Option<bpfleet_api::program::AppliedPolicy> {
    let name = tp.name_any();
    let holding: Vec<policy::Holding> = targets
        .iter()
        .zip(reports)
        .zip(stamps)
        .filter_map(|((t, r), s)| {
            Some(policy::Holding {
                node: &t.name,
                endpoint: t.endpoint.as_deref(),
                stamp: (*s)?,
                revisions: r
                    .revisions
                    .iter()
                    .map(|v| v.revision.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            })
        })
        .collect();
    let synced = policy::sync(
        &ctx.pool,
        &ctx.cache,
        &ctx.metrics,
        &ctx.refusals,
        &name,
        policy,
        &holding,
    )
    .await;
    if synced.written > 0 {
        let message = match policy {
            Some(p) => format!(
                "TracerPolicy {} (generation {}) configuration written on {} node(s)",
                p.name_any(),
                p.metadata.generation.unwrap_or(0),
                synced.written
            ),
            None => format!(
                "no TracerPolicy applies: program defaults restored on {} node(s)",
                synced.written
            ),
        };
        let ev = rollout::Event {
            reason: "ConfigApplied".into(),
            message,
            warning: false,
        };
        publish(tp, ctx, std::slice::from_ref(&ev)).await;
    }
    synced.applied
}

/// The reports of `program` on `targets` from what was seen of each.
fn reports_of(
    program: &str,
    targets: &[&Target],
    seen: &[Option<Sighting>],
    ctx: &Context,
) -> Vec<NodeReport> {
    let failures = ctx.failures();
    let mut samples = ctx.samples();
    targets
        .iter()
        .zip(seen)
        .map(
            |(t, s)| match s.as_ref().and_then(|s| Some((s.at, s.view.as_ref()?))) {
                Some((at, view)) => observe::report(
                    &t.name,
                    program,
                    view,
                    &mut samples,
                    &failures,
                    ctx.ns(at),
                    t.cores,
                ),
                None => observe::unreachable(&t.name),
            },
        )
        .collect()
}

/// Selected nodes always get a report (unreachable when the agent does not
/// answer); other nodes only when their agent holds the program.
fn split(targets: &[Target], reports: &[NodeReport]) -> (Vec<NodeReport>, Vec<NodeReport>) {
    let mut nodes = Vec::new();
    let mut departed = Vec::new();
    for (t, r) in targets.iter().zip(reports) {
        if t.selected {
            nodes.push(r.clone());
        } else if !r.revisions.is_empty() {
            departed.push(r.clone());
        }
    }
    (nodes, departed)
}

/// Drops the sample windows of revisions no node holds any more.
fn forget_unloaded(ctx: &Context, program: &str, targets: &[Target], reports: &[NodeReport]) {
    let live: HashSet<(&str, &str)> = targets
        .iter()
        .zip(reports)
        .flat_map(|(t, r)| {
            r.revisions
                .iter()
                .map(move |v| (t.name.as_str(), v.revision.as_str()))
        })
        .collect();
    ctx.samples().retain(program, |n, r| live.contains(&(n, r)));
}

/// The cache's call to an agent: its `List` and `Stats` of every program,
/// both at once, within `timeout`.
pub fn agent_fetch(pool: Arc<Pool>, metrics: Arc<Metrics>, timeout: Duration) -> Fetch {
    Arc::new(move |node: String, endpoint: String| {
        let (pool, metrics) = (pool.clone(), metrics.clone());
        Box::pin(async move {
            let client = match pool.client(&endpoint) {
                Ok(c) => c,
                Err(e) => {
                    warn!(%node, error = %e, "no client for agent");
                    return None;
                }
            };
            let (mut lc, mut sc) = (client.clone(), client);
            // NotFound from an agent means it holds nothing.
            let list = async move {
                match lc
                    .list(pb::ListRequest {
                        program: String::new(),
                    })
                    .await
                {
                    Ok(r) => Ok(r.into_inner()),
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(pb::ListResponse::default()),
                    Err(s) => Err(s),
                }
            };
            let stats = async move {
                match sc
                    .stats(pb::StatsRequest {
                        program: String::new(),
                    })
                    .await
                {
                    Ok(r) => Ok(r.into_inner()),
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(pb::StatsResponse::default()),
                    Err(s) => Err(s),
                }
            };
            match tokio::time::timeout(timeout, futures::future::try_join(list, stats)).await {
                Ok(Ok((list, stats))) => {
                    metrics.call("observe", "ok");
                    Some(NodeView::from_answers(&list, &stats))
                }
                Ok(Err(status)) => {
                    metrics.call("observe", "unreachable");
                    warn!(%node, %endpoint, code = ?status.code(), message = %status.message(), "agent did not answer List/Stats");
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown
                    ) {
                        pool.forget(&endpoint);
                    }
                    None
                }
                Err(_) => {
                    metrics.call("observe", "unreachable");
                    warn!(%node, %endpoint, "agent timed out on List/Stats");
                    pool.forget(&endpoint);
                    None
                }
            }
        })
    })
}

/// The policy writes for nodes about to hold the program for the first
/// time: made after their Load succeeds, before anything else, so that no
/// revision runs there unfiltered (the config map is shared by every
/// revision, so later loads find it written).
struct FirstLoad<'a> {
    /// Empty when no policy applies (a new config map holds the defaults).
    requests: Vec<pb::UpdateConfigRequest>,
    nodes: HashSet<&'a str>,
}

/// Carries out the machine's actions: per node in order (stopping at the
/// first failure on that node), nodes in parallel. True when every action
/// succeeded.
async fn carry_out(
    ctx: &Context,
    program: &str,
    spec: &TracerProgramSpec,
    spec_revision: &str,
    actions: &[NodeAction],
    targets: &[Target],
    first_load: Option<&FirstLoad<'_>>,
) -> bool {
    let mut per_node: BTreeMap<&str, Vec<&NodeAction>> = BTreeMap::new();
    for a in actions {
        per_node.entry(a.node.as_str()).or_default().push(a);
    }
    let endpoints: HashMap<&str, Option<&str>> = targets
        .iter()
        .map(|t| (t.name.as_str(), t.endpoint.as_deref()))
        .collect();
    let per_node: Vec<_> = per_node
        .into_iter()
        .map(|(node, acts)| {
            let endpoint = endpoints.get(node).copied().flatten();
            async move {
                // Boxed when it starts: a node waiting its turn holds only
                // its arguments, not room for a whole gRPC call.
                Box::pin(async move {
                    // Whatever happens to the calls (done, refused, or this
                    // future dropped), the node's cached view predates them.
                    let _seen = Acted {
                        cache: &ctx.cache,
                        node,
                        program,
                    };
                    for a in acts {
                        if !act(ctx, program, spec, spec_revision, a, endpoint).await {
                            return false;
                        }
                        if a.kind == ActionKind::Load
                            && let (Some(f), Some(endpoint)) = (first_load, endpoint)
                            && !f.requests.is_empty()
                            && f.nodes.contains(node)
                        {
                            // A failure here is found and reported by the
                            // next reconcile's look at the node's stamp.
                            if let Err((_, m)) = policy::write(&ctx.pool, endpoint, &f.requests).await {
                                warn!(%node, %program, message = %m, "policy configuration after first load failed");
                            }
                        }
                    }
                    true
                })
                .await
            }
        })
        .collect();
    futures::stream::iter(per_node)
        .buffer_unordered(FANOUT)
        .collect::<Vec<bool>>()
        .await
        .into_iter()
        .all(|ok| ok)
}

/// Tells the cache, when dropped, that the operator acted on `node` for
/// `program`.
struct Acted<'a> {
    cache: &'a NodeCache,
    node: &'a str,
    program: &'a str,
}

impl Drop for Acted<'_> {
    fn drop(&mut self) {
        self.cache.acted(self.node, self.program);
    }
}

/// One action on one node; false when it failed.
async fn act(
    ctx: &Context,
    program: &str,
    spec: &TracerProgramSpec,
    spec_revision: &str,
    a: &NodeAction,
    endpoint: Option<&str>,
) -> bool {
    let Some(endpoint) = endpoint else {
        return false;
    };
    let fail = |reason: &str, message: String| {
        ctx.failures().record(
            &a.node,
            program,
            NodeFailure {
                revision: a.revision.clone(),
                reason: reason.to_string(),
                message: observe::truncate(&message, observe::MAX_MESSAGE),
                at: now(),
            },
        );
        false
    };
    let mut client = match ctx.pool.client(endpoint) {
        Ok(c) => c,
        Err(e) => {
            warn!(node = %a.node, error = %e, "no client for agent");
            return false;
        }
    };
    let call = match a.kind {
        ActionKind::Load => {
            let req = match load_request(ctx, program, spec, spec_revision, &a.revision).await {
                Ok(r) => r,
                Err((reason, message)) => return fail(reason, message),
            };
            client.load(req).await.map(|_| ())
        }
        ActionKind::Activate => client
            .activate(pb::ActivateRequest {
                program: program.to_string(),
                revision: a.revision.clone(),
            })
            .await
            .map(|_| ()),
        ActionKind::Rollback => client
            .rollback(pb::RollbackRequest {
                program: program.to_string(),
                to_revision: a.revision.clone(),
            })
            .await
            .map(|_| ()),
        ActionKind::Unload => client
            .unload(pb::UnloadRequest {
                program: program.to_string(),
                revision: a.revision.clone(),
            })
            .await
            .map(|_| ()),
    };
    let what = format!("{:?}", a.kind).to_lowercase();
    match call {
        Ok(()) => {
            ctx.metrics.call(&what, "ok");
            info!(node = %a.node, revision = %a.revision, action = %what, "done");
            ctx.failures().clear(&a.node, program, &a.revision);
            true
        }
        Err(status) => match observe::failure_of(&status, &a.revision, now()) {
            Some(f) => {
                ctx.metrics.call(&what, "refused");
                warn!(node = %a.node, revision = %a.revision, action = %what, reason = %f.reason, message = %status.message(), "agent refused");
                ctx.failures().record(&a.node, program, f);
                false
            }
            None => {
                ctx.metrics.call(&what, "unreachable");
                warn!(node = %a.node, revision = %a.revision, action = %what, message = %status.message(), "agent unreachable");
                ctx.pool.forget(endpoint);
                false
            }
        },
    }
}

/// The Load request for `revision`: from the spec when it is the spec's
/// revision, else from the revision's snapshot. Errors are (reason,
/// message) for the node's failure.
async fn load_request(
    ctx: &Context,
    program: &str,
    spec: &TracerProgramSpec,
    spec_revision: &str,
    revision: &str,
) -> std::result::Result<pb::LoadRequest, (&'static str, String)> {
    let ls = if revision == spec_revision {
        LoadSpec::from_spec(spec)
    } else {
        snapshot(ctx, program, revision).await.map_err(|e| {
            (
                "RevisionUnavailable",
                format!(
                    "revision {revision} is not in the spec and its snapshot cannot be read: {e}"
                ),
            )
        })?
    };
    let source = load::source(&ls.bytecode).map_err(|e| ("SourceUnsupported", e.to_string()))?;
    let source = match source {
        Source::ConfigMap {
            namespace,
            name,
            key,
        } => {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
            let cm = api.get(&name).await.map_err(|e| {
                (
                    "SourceUnavailable",
                    format!("bytecode.configMap {namespace}/{name}: {e}"),
                )
            })?;
            let bytes = cm
                .binary_data
                .as_ref()
                .and_then(|d| d.get(&key))
                .map(|b| b.0.clone())
                .or_else(|| {
                    cm.data
                        .as_ref()
                        .and_then(|d| d.get(&key))
                        .map(|s| s.clone().into_bytes())
                })
                .ok_or_else(|| {
                    (
                        "SourceUnavailable",
                        format!("bytecode.configMap {namespace}/{name} has no key {key:?} in binaryData or data"),
                    )
                })?;
            Source::Bytes(bytes)
        }
        other => other,
    };
    load::request(program, revision, &ls, source).map_err(|e| ("InvalidRequest", e.to_string()))
}

fn snapshot_name(program: &str, revision: &str) -> String {
    format!("{program}-{revision}")
}

/// Keeps a ControllerRevision with the load spec of the spec's revision,
/// owned by the TracerProgram, so later rollbacks and new nodes can load it.
async fn ensure_snapshot(tp: &TracerProgram, ctx: &Context, revision: &str) -> Result<()> {
    let program = tp.name_any();
    let key = (program.clone(), revision.to_string());
    let ls = LoadSpec::from_spec(&tp.spec);
    if ctx
        .snapshots
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
        == Some(&ls)
    {
        return Ok(());
    }
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let owner = OwnerReference {
        api_version: TracerProgram::api_version(&()).into_owned(),
        kind: TracerProgram::kind(&()).into_owned(),
        name: program.clone(),
        uid: tp.uid().unwrap_or_default(),
        controller: Some(false),
        block_owner_deletion: None,
    };
    let cr = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(snapshot_name(&program, revision)),
            namespace: Some(ctx.namespace.clone()),
            labels: Some(BTreeMap::from([
                (PROGRAM_LABEL.to_string(), program.clone()),
                (REVISION_LABEL.to_string(), revision.to_string()),
            ])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        data: RawExtension(serde_json::to_value(&ls)?),
        revision: Some(tp.status.as_ref().map_or(0, |s| s.history.len() as i64) + 1),
    };
    match api.create(&PostParams::default(), &cr).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Same id: same bytecode, digest, programs and maps; the
            // signature may have been added since, so refresh the data.
            let patch = json!({"data": serde_json::to_value(&ls)?});
            api.patch(
                &snapshot_name(&program, revision),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        }
        Err(e) => return Err(e.into()),
    }
    ctx.snapshots
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key, ls);
    Ok(())
}

async fn snapshot(ctx: &Context, program: &str, revision: &str) -> Result<LoadSpec> {
    let key = (program.to_string(), revision.to_string());
    if let Some(ls) = ctx
        .snapshots
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
    {
        return Ok(ls.clone());
    }
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let cr = api.get(&snapshot_name(program, revision)).await?;
    let ls: LoadSpec = serde_json::from_value(cr.data.0)?;
    ctx.snapshots
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key, ls.clone());
    Ok(ls)
}

/// Deletes the snapshots of revisions the registry no longer lists.
async fn prune_snapshots(ctx: &Context, program: &str, status: &TracerProgramStatus) {
    let keep: HashSet<&str> = status
        .history
        .iter()
        .map(|h| h.revision.as_str())
        .chain(status.current_revision.as_deref())
        .chain(status.stable_revision.as_deref())
        .chain(status.candidate_revision.as_deref())
        .collect();
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let lp = ListParams::default().labels(&format!("{PROGRAM_LABEL}={program}"));
    let Ok(list) = api.list(&lp).await else {
        return;
    };
    for cr in list {
        let rev = cr.labels().get(REVISION_LABEL).cloned().unwrap_or_default();
        if !keep.contains(rev.as_str()) {
            let name = cr.name_any();
            if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
                warn!(snapshot = %name, error = %e, "could not delete a trimmed revision snapshot");
            }
            ctx.snapshots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&(program.to_string(), rev));
        }
    }
}

async fn delete_snapshots(ctx: &Context, program: &str) -> Result<()> {
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let lp = ListParams::default().labels(&format!("{PROGRAM_LABEL}={program}"));
    api.delete_collection(&DeleteParams::default(), &lp).await?;
    ctx.snapshots
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|k, _| k.0 != program);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeStatus;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn machine_timers_fire_on_the_whole_second_despite_debounce() {
        let t = |ms: i64| Timestamp::from_millisecond(ms).expect("timestamp");
        let debounce = Duration::from_millis(500);
        // A pass at 43.47 s sets a 10 s pause: due at 53 s (the machine
        // cut 43.47 to 43); reconcile at 53.1 s, i.e. requeue 9.1 s after
        // 43.5 s less the debounce.
        assert_eq!(
            timer(t(43_470), 10, t(43_500), debounce),
            Duration::from_millis(9_100)
        );
        // A pass at 44.9 s of the same pause (9 s left by the machine's
        // count) lands on the same moment.
        assert_eq!(
            timer(t(44_900), 9, t(44_950), debounce),
            Duration::from_millis(7_650)
        );
        // Already due: at once (the debounce alone delays it).
        assert_eq!(timer(t(60_000), 1, t(61_000), debounce), Duration::ZERO);
    }

    #[test]
    fn node_cores_from_capacity() {
        let node = |cpu: Option<&str>| Node {
            status: cpu.map(|c| NodeStatus {
                capacity: Some(BTreeMap::from([(
                    "cpu".to_string(),
                    Quantity(c.to_string()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(cores(&node(Some("8"))), 8);
        assert_eq!(cores(&node(Some("3500m"))), 4);
        assert_eq!(cores(&node(Some("junk"))), 1);
        assert_eq!(cores(&node(None)), 1);
    }
}
