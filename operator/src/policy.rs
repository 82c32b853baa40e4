//! TracerPolicies at work. Three parts:
//!
//! - which policy applies to a program ([`winner`]: of those targeting it,
//!   the first by name; its gates judge the rollout, its `spec.config` is
//!   written to the program's nodes);
//! - [`sync`], called by the program reconciler: writes that configuration
//!   ([`crate::runtime_config`]) to every node holding the program whose
//!   agent reports another stamp, and sums up, for the program's status,
//!   on how many nodes it is in force;
//! - the TracerPolicy reconciler ([`reconcile`]), which writes the policy's
//!   status from the programs' statuses: what it targets, whether it is in
//!   force, overridden by another policy, or refused. It never writes the
//!   spec.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bpfleet_api::policy::PolicyFiringAlert;
use bpfleet_api::program::{AppliedPolicy, FiringAlert, MAX_FIRING_NODE_NAMES};
use bpfleet_api::{TracerPolicy, TracerPolicyStatus, TracerProgram};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use tracing::{info, instrument, warn};

use crate::agents::{AGENT_FANOUT, Pool};
use crate::cache::NodeCache;
use crate::metrics::Metrics;
use crate::observe::{MAX_MESSAGE, truncate};
use crate::runtime_config::{NodeConfig, PIDS_MAP, PORTS_MAP};
use crate::{Error, Result, selector, status};

pub mod check;
pub mod cpu;

/// Whether a policy targets the program `name` with `labels`.
pub fn targets_program(p: &TracerPolicy, name: &str, labels: &BTreeMap<String, String>) -> bool {
    let t = &p.spec.targets;
    if t.program_names.iter().any(|n| n == name) {
        return true;
    }
    t.program_selector
        .as_ref()
        .is_some_and(|s| selector::matches(s, labels).unwrap_or(false))
}

/// The policy that applies to program `name`: the first by name of those
/// targeting it.
pub fn winner<'a>(
    name: &str,
    labels: &BTreeMap<String, String>,
    policies: impl IntoIterator<Item = &'a Arc<TracerPolicy>>,
) -> Option<&'a Arc<TracerPolicy>> {
    policies
        .into_iter()
        .filter(|p| targets_program(p, name, labels))
        .min_by_key(|p| p.name_any())
}

// ------------------------------------------------------------ writing config

/// One node holding the program, as the reconcile saw it.
pub struct Holding<'a> {
    pub node: &'a str,
    pub endpoint: Option<&'a str>,
    /// The stamp its agent reports.
    pub stamp: u64,
    /// The revisions it holds, joined: a refusal is retried once they change.
    pub revisions: String,
    /// The policy alerts its agent reports firing for the program: (name,
    /// severity).
    pub firing: &'a [(String, String)],
}

/// The alerts firing on `holding`, per (alert, severity): the node count
/// and the first node names by name, bounded (at most 32 alerts, 10 names
/// each) whatever the fleet's size. Pure.
pub fn firing_summary(holding: &[Holding<'_>]) -> Vec<FiringAlert> {
    let mut by: BTreeMap<(&str, &str), (i32, BTreeSet<&str>)> = BTreeMap::new();
    for h in holding {
        for (alert, severity) in h.firing {
            let e = by.entry((alert, severity)).or_default();
            e.0 = e.0.saturating_add(1);
            e.1.insert(h.node);
            if e.1.len() > MAX_FIRING_NODE_NAMES {
                e.1.pop_last();
            }
        }
    }
    by.into_iter()
        .take(32)
        .map(|((alert, severity), (nodes, names))| FiringAlert {
            alert: alert.to_string(),
            severity: severity.to_string(),
            nodes,
            node_names: names.into_iter().map(str::to_string).collect(),
        })
        .collect()
}

/// Writes an agent refused, per (node, program): the stamp, the revisions
/// the node held, and the agent's message. The same write is not made again
/// until one of them changes, so a program without the policy maps is not
/// asked every reconcile.
#[derive(Default)]
pub struct Refusals(HashMap<(String, String), (u64, String, String)>);

impl Refusals {
    fn get(&self, node: &str, program: &str, stamp: u64, revisions: &str) -> Option<&str> {
        self.0
            .get(&(node.to_string(), program.to_string()))
            .filter(|(s, r, _)| *s == stamp && r == revisions)
            .map(|(_, _, m)| m.as_str())
    }
}

/// What [`sync`] did and found.
pub struct Synced {
    /// For the program's status (None: no policy applies).
    pub applied: Option<AppliedPolicy>,
    /// Nodes written in this call.
    pub written: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The book stays usable even if a holder panicked.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The budgets `policy` sets (`spec.budgets.maxPrograms` and
/// `maxMapMemory`), as every Load of a program it applies to carries them:
/// the agent counts the programs loaded with the same group (the policy's
/// name) on its node and refuses the next one past a budget
/// (`BudgetExceeded`). None when it sets neither.
pub fn budget(policy: Option<&TracerPolicy>) -> Option<bpfleet_proto::v1::Budget> {
    let p = policy?;
    let b = p.spec.budgets.as_ref()?;
    let max_programs = b
        .max_programs
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0);
    // An unreadable quantity is the policy's InvalidSpec, never sent.
    let max_map = b
        .max_map_memory
        .as_ref()
        .and_then(|q| crate::gates::parse_quantity(&q.0).ok())
        .unwrap_or(0);
    (max_programs > 0 || max_map > 0).then(|| bpfleet_proto::v1::Budget {
        max_map_memory_bytes: 0,
        group: p.name_any(),
        group_max_programs: max_programs,
        group_max_map_memory_bytes: max_map,
    })
}

/// The configuration `policy` asks for (the defaults when None): its
/// `spec.config` and its CPU budget.
pub fn desired(policy: Option<&TracerPolicy>) -> NodeConfig {
    policy.map_or_else(NodeConfig::defaults, |p| {
        let b = p.spec.budgets.as_ref();
        NodeConfig::of(&p.spec.config)
            .with_cpu_budget(
                b.and_then(|b| b.max_cpu_overhead_percent),
                b.is_some_and(|b| b.reduce_sampling_on_breach),
                &p.name_any(),
            )
            .with_alerts(&p.name_any(), &p.spec.alerts)
    })
}

/// Puts the configuration of `policy` (the defaults when None) in force on
/// every node of `holding` that reports another stamp, nodes in parallel.
pub async fn sync(
    pool: &Pool,
    cache: &NodeCache,
    metrics: &Metrics,
    refusals: &Mutex<Refusals>,
    program: &str,
    policy: Option<&TracerPolicy>,
    holding: &[Holding<'_>],
) -> Synced {
    let want = desired(policy);
    if let Some(p) = policy {
        let problems = check::problems(&p.spec);
        if !problems.is_empty() {
            // Nothing of it reaches a node: they keep what they hold.
            let configured = holding.iter().filter(|h| h.stamp == want.stamp).count();
            return Synced {
                applied: Some(AppliedPolicy {
                    name: p.name_any(),
                    generation: p.metadata.generation.unwrap_or(0),
                    nodes: i32::try_from(holding.len()).unwrap_or(i32::MAX),
                    configured_nodes: i32::try_from(configured).unwrap_or(i32::MAX),
                    message: Some(truncate(
                        &format!("not applied, invalid: {}", problems.join("; ")),
                        MAX_MESSAGE,
                    )),
                    // The nodes keep what they hold, alerts included.
                    firing_alerts: firing_summary(holding),
                }),
                written: 0,
            };
        }
    }
    let mut messages: BTreeMap<&str, String> = BTreeMap::new();
    let mut todo = Vec::new();
    {
        let mut book = lock(refusals);
        // Refusals of nodes that no longer hold the program are moot.
        let held: std::collections::HashSet<&str> = holding.iter().map(|h| h.node).collect();
        book.0
            .retain(|(n, p), _| p != program || held.contains(n.as_str()));
        for h in holding.iter().filter(|h| h.stamp != want.stamp) {
            match (
                h.endpoint,
                book.get(h.node, program, want.stamp, &h.revisions),
            ) {
                // Unreachable agents are the rollout's to report.
                (None, _) => {}
                (Some(_), Some(m)) => {
                    messages.insert(h.node, m.to_string());
                }
                (Some(e), None) => todo.push((h, e)),
            }
        }
    }
    let requests = want.requests(program);
    let requests = &requests;
    // Collected first and boxed, as carry_out does: the futures borrow the
    // reconcile's data, which a lazily mapped stream cannot prove Send.
    let calls: Vec<_> = todo
        .into_iter()
        .map(|(h, endpoint)| {
            Box::pin(async move {
                let r = write(pool, endpoint, requests).await;
                // The node's cached view predates the writes.
                cache.acted(h.node, program);
                (h, r)
            })
        })
        .collect();
    let results: Vec<(&Holding, WriteResult)> = futures::stream::iter(calls)
        .buffer_unordered(AGENT_FANOUT)
        .collect()
        .await;
    let mut written = 0;
    {
        let mut book = lock(refusals);
        for (h, r) in results {
            let key = (h.node.to_string(), program.to_string());
            match r {
                Ok(()) => {
                    metrics.call("update_config", "ok");
                    book.0.remove(&key);
                    written += 1;
                }
                Err((true, m)) => {
                    metrics.call("update_config", "refused");
                    warn!(node = %h.node, %program, message = %m, "agent refused the policy configuration");
                    book.0
                        .insert(key, (want.stamp, h.revisions.clone(), m.clone()));
                    messages.insert(h.node, m);
                }
                Err((false, m)) => {
                    metrics.call("update_config", "unreachable");
                    warn!(node = %h.node, %program, message = %m, "agent unreachable for the policy configuration");
                }
            }
        }
    }
    if written > 0 {
        info!(%program, nodes = written, stamp = want.stamp, policy = ?policy.map(|p| p.name_any()), "configuration written");
    }
    let applied = policy.map(|p| {
        let stale = holding.iter().filter(|h| h.stamp != want.stamp).count();
        let missing = stale - written;
        AppliedPolicy {
            name: p.name_any(),
            generation: p.metadata.generation.unwrap_or(0),
            nodes: i32::try_from(holding.len()).unwrap_or(i32::MAX),
            configured_nodes: i32::try_from(holding.len() - missing).unwrap_or(i32::MAX),
            message: messages
                .iter()
                .next()
                .map(|(n, m)| truncate(&format!("node {n}: {m}"), MAX_MESSAGE)),
            firing_alerts: firing_summary(holding),
        }
    });
    Synced { applied, written }
}

/// Err((refused, message)): refused when the agent answered no, else it
/// did not answer.
type WriteResult = std::result::Result<(), (bool, String)>;

/// The calls of one node in order, up to the first that fails.
pub async fn write(
    pool: &Pool,
    endpoint: &str,
    requests: &[bpfleet_proto::v1::UpdateConfigRequest],
) -> WriteResult {
    let mut client = pool.client(endpoint).map_err(|e| (false, e.to_string()))?;
    for req in requests {
        if let Err(s) = client.update_config(req.clone()).await {
            let map = if req.map.is_empty() {
                "bpfleet_config"
            } else {
                req.map.as_str()
            };
            let refused = !matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            );
            if !refused {
                pool.forget(endpoint);
            }
            let hint = if s.code() == tonic::Code::NotFound && (map == PIDS_MAP || map == PORTS_MAP)
            {
                " (the program was built without the bpfleet_gate.h that declares it, so it cannot filter by it)"
            } else {
                ""
            };
            return Err((refused, format!("writing {map}: {}{hint}", s.message())));
        }
    }
    Ok(())
}

// ------------------------------------------------------------ policy status

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const ALERTS_FIRING: &str = "AlertsFiring";

/// The policy's alerts firing over the programs it applies to, from each
/// program's summary (`applied`: program name and its summary): node
/// counts summed, node and program names the first by name, bounded.
pub fn policy_firing<'a>(
    applied: impl IntoIterator<Item = (&'a str, &'a [FiringAlert])>,
) -> Vec<PolicyFiringAlert> {
    /// Per (alert, severity): nodes, first node names, first programs.
    type Sums<'b> = BTreeMap<(&'b str, &'b str), (i32, BTreeSet<&'b str>, BTreeSet<&'b str>)>;
    let mut by: Sums = BTreeMap::new();
    for (program, alerts) in applied {
        for a in alerts {
            let e = by.entry((&a.alert, &a.severity)).or_default();
            e.0 = e.0.saturating_add(a.nodes);
            e.1.extend(a.node_names.iter().map(String::as_str));
            e.2.insert(program);
            while e.1.len() > MAX_FIRING_NODE_NAMES {
                e.1.pop_last();
            }
            while e.2.len() > MAX_FIRING_NODE_NAMES {
                e.2.pop_last();
            }
        }
    }
    by.into_iter()
        .take(32)
        .map(
            |((alert, severity), (nodes, names, programs))| PolicyFiringAlert {
                alert: alert.to_string(),
                severity: severity.to_string(),
                nodes,
                node_names: names.into_iter().map(str::to_string).collect(),
                programs: programs.into_iter().map(str::to_string).collect(),
            },
        )
        .collect()
}

/// The status of `policy` given every program and policy (pure).
pub fn status_of(
    policy: &TracerPolicy,
    programs: &[Arc<TracerProgram>],
    policies: &[Arc<TracerPolicy>],
    now: &Time,
) -> TracerPolicyStatus {
    let me = policy.name_any();
    let generation = policy.metadata.generation.unwrap_or(0);
    let invalid = check::problems(&policy.spec);
    let mut targeted: Vec<&Arc<TracerProgram>> = programs
        .iter()
        .filter(|tp| tp.metadata.deletion_timestamp.is_none())
        .filter(|tp| targets_program(policy, &tp.name_any(), tp.labels()))
        .collect();
    targeted.sort_by_key(|tp| tp.name_any());

    let mut overridden: BTreeMap<String, String> = BTreeMap::new();
    let mut firing_in: Vec<(String, &[FiringAlert])> = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let (mut nodes, mut configured) = (0i64, 0i64);
    for tp in &targeted {
        let name = tp.name_any();
        // Not in `policies` yet (a store that lags): this one, then.
        let w = winner(&name, tp.labels(), policies).map_or_else(|| me.clone(), |w| w.name_any());
        if w != me {
            overridden.insert(name, w);
            continue;
        }
        let applied = tp.status.as_ref().and_then(|s| s.policy.as_ref());
        // What fires is the nodes' present state, whichever generation of
        // the policy the program's status was written for.
        if let Some(a) = applied.filter(|a| a.name == me && !a.firing_alerts.is_empty()) {
            firing_in.push((name.clone(), a.firing_alerts.as_slice()));
        }
        match applied {
            Some(a) if a.name == me && a.generation == generation => {
                nodes += i64::from(a.nodes);
                configured += i64::from(a.configured_nodes);
                if let Some(m) = &a.message {
                    refused.push(format!("{name}: {m}"));
                } else if a.configured_nodes < a.nodes {
                    pending.push(format!("{name} {}/{} nodes", a.configured_nodes, a.nodes));
                }
            }
            // The program's reconcile has not written this generation yet.
            _ => pending.push(format!("{name} not yet reconciled")),
        }
    }
    let applies = targeted.len() - overridden.len();

    let (ready, reason, message) = if !invalid.is_empty() {
        (
            false,
            "InvalidSpec",
            format!(
                "not written to any node (they keep what they hold): {}",
                invalid.join("; ")
            ),
        )
    } else if !refused.is_empty() {
        (
            false,
            "ConfigRefused",
            format!("refused: {}", refused.join("; ")),
        )
    } else if !pending.is_empty() {
        (
            false,
            "Applying",
            format!("writing: {}", pending.join(", ")),
        )
    } else if !targeted.is_empty() && applies == 0 {
        let by: BTreeSet<&str> = overridden.values().map(String::as_str).collect();
        (
            false,
            "Overridden",
            format!(
                "every targeted program is configured by {} (the first policy by name applies)",
                by.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )
    } else if targeted.is_empty() {
        (true, "NoTargets", "targets no TracerProgram".to_string())
    } else {
        let mut m = format!("in force on {configured}/{nodes} nodes of {applies} program(s)");
        if !overridden.is_empty() {
            let list: Vec<String> = overridden
                .iter()
                .map(|(p, w)| format!("{p} (by {w})"))
                .collect();
            m.push_str(&format!("; overridden for {}", list.join(", ")));
        }
        (true, "Applied", m)
    };
    let previous = policy
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let condition = |kind: &str, on: bool, reason: &str, message: String| {
        let status = if on { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|c| c.type_ == kind && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            type_: kind.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: truncate(&message, 1000),
            observed_generation: Some(generation),
            last_transition_time: since,
        }
    };
    let reconciling = reason == "Applying";
    // The CPU budget, summed up over the programs the policy applies to.
    let budgets: Vec<(String, Option<&Condition>)> = targeted
        .iter()
        .filter(|tp| !overridden.contains_key(&tp.name_any()))
        .map(|tp| {
            let c = tp.status.as_ref().and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == cpu::BUDGET_ENFORCED)
            });
            (tp.name_any(), c)
        })
        .collect();
    let budgets: Vec<(&str, Option<&Condition>)> =
        budgets.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    let budget = cpu::policy_condition(
        policy
            .spec
            .budgets
            .as_ref()
            .is_some_and(|b| b.max_cpu_overhead_percent.is_some_and(|m| m > 0.0)),
        &budgets,
        previous,
        generation,
        now,
    );
    let firing = policy_firing(firing_in.iter().map(|(p, a)| (p.as_str(), *a)));
    let alerts_condition = if firing.is_empty() {
        condition(
            ALERTS_FIRING,
            false,
            "NoneFiring",
            if policy.spec.alerts.is_empty() {
                "the policy has no alerts".to_string()
            } else {
                format!("none of {} alert(s) fires", policy.spec.alerts.len())
            },
        )
    } else {
        let list: Vec<String> = firing
            .iter()
            .map(|f| format!("{} ({}) on {} node(s)", f.alert, f.severity, f.nodes))
            .collect();
        condition(ALERTS_FIRING, true, "Firing", list.join("; "))
    };
    let names: Vec<String> = targeted.iter().map(|tp| tp.name_any()).collect();
    TracerPolicyStatus {
        observed_generation: Some(generation),
        target_summary: Some(format!("{}", names.len())),
        targeted_programs: names,
        conditions: [
            condition(READY, ready, reason, message.clone()),
            condition(
                RECONCILING,
                reconciling,
                if reconciling { "Applying" } else { "Settled" },
                if reconciling { message } else { String::new() },
            ),
            alerts_condition,
        ]
        .into_iter()
        .chain(budget)
        .collect(),
        firing_alerts: firing,
    }
}

/// What the TracerPolicy reconciler uses.
pub struct PolicyContext {
    pub client: Client,
    pub programs: Store<TracerProgram>,
    pub policies: Store<TracerPolicy>,
    pub metrics: Arc<Metrics>,
}

/// Writes a TracerPolicy's status when it changed. Program changes (their
/// status included) trigger it through the controller's watch.
#[instrument(skip(p, ctx), fields(policy = %p.name_any()))]
pub async fn reconcile(p: Arc<TracerPolicy>, ctx: Arc<PolicyContext>) -> Result<Action> {
    let status = status_of(
        &p,
        &ctx.programs.state(),
        &ctx.policies.state(),
        &Time(k8s_openapi::jiff::Timestamp::now()),
    );
    if p.status.as_ref() != Some(&status) {
        status::apply::<TracerPolicy>(&ctx.client, &p.name_any(), &status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

pub fn error_policy(p: Arc<TracerPolicy>, err: &Error, ctx: Arc<PolicyContext>) -> Action {
    ctx.metrics.error(err.kind());
    warn!(policy = %p.name_any(), error = %err, "policy status not written");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests;
