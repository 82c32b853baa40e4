//! Programs held on a node that no TracerProgram wants: loaded by a
//! TracerProgram deleted while its node's agent was away, left behind when
//! a finalizer was removed by force, or brought back by a node that left
//! the cluster and returned. The operator's reconciles never look at them
//! (they ask agents about their own programs), so a sweep does: every
//! `every`, it lists what each agent holds, and a program whose name is no
//! TracerProgram's (deleting ones included: their finalizer unloads them)
//! is reported on the Node as `OrphanFound`, and unloaded once it has been
//! an orphan for `grace` (`OrphanUnloaded`; the agent's audit log has the
//! Unload). A program that is wanted again before then is never touched.
//! Only the leader sweeps (the sweep is part of its term), and only once
//! the TracerProgram store is synced, so an empty store at start-up never
//! makes every program look like an orphan.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bpfleet_api::TracerProgram;
use bpfleet_proto::v1 as pb;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::ResourceExt;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::Store;
use tokio::time::Instant;
use tracing::{info, warn};

use super::Context;
use super::targets::all_targets;
use crate::agents::AGENT_FANOUT;

/// What the sweep remembers between rounds: since when each (node,
/// program) has been an orphan.
#[derive(Default, Debug)]
pub struct Book {
    since: BTreeMap<(String, String), Instant>,
}

/// What one round decided for the orphans it saw.
#[derive(Debug, PartialEq, Eq)]
pub struct Round {
    /// Seen for the first time: to report.
    pub found: Vec<(String, String)>,
    /// Orphans for at least the grace period: to unload.
    pub due: Vec<(String, String)>,
}

impl Book {
    /// Takes in what every answering node holds (`held`: node -> program
    /// names) and the wanted program names. Nodes that did not answer keep
    /// their orphans' clocks; a program wanted again is forgotten.
    pub fn round(
        &mut self,
        held: &BTreeMap<String, Vec<String>>,
        wanted: &HashSet<String>,
        now: Instant,
        grace: Duration,
    ) -> Round {
        let mut found = Vec::new();
        let mut due = Vec::new();
        let mut present = BTreeSet::new();
        for (node, programs) in held {
            for p in programs.iter().filter(|p| !wanted.contains(*p)) {
                let key = (node.clone(), p.clone());
                let since = *self.since.entry(key.clone()).or_insert_with(|| {
                    found.push(key.clone());
                    now
                });
                if now.duration_since(since) >= grace {
                    due.push(key.clone());
                }
                present.insert(key);
            }
        }
        self.since
            .retain(|k, _| present.contains(k) || !held.contains_key(&k.0));
        Round { found, due }
    }

    /// Forgets an orphan that was unloaded.
    pub fn unloaded(&mut self, node: &str, program: &str) {
        self.since.remove(&(node.to_string(), program.to_string()));
    }
}

/// Sweeps until dropped (the end of the leader's term).
pub async fn sweep(
    ctx: Arc<Context>,
    programs: Store<TracerProgram>,
    grace: Duration,
    every: Duration,
) {
    if programs.wait_until_ready().await.is_err() {
        return;
    }
    info!(
        grace_seconds = grace.as_secs(),
        "sweeping for programs no TracerProgram wants"
    );
    let mut book = Book::default();
    loop {
        tokio::time::sleep(every).await;
        round(&ctx, &programs, &mut book, grace).await;
    }
}

async fn round(ctx: &Context, programs: &Store<TracerProgram>, book: &mut Book, grace: Duration) {
    let targets = all_targets(ctx);
    let endpoints: BTreeMap<String, String> = targets
        .into_iter()
        .filter_map(|t| Some((t.name, t.endpoint?)))
        .collect();
    let calls: Vec<_> = endpoints
        .iter()
        .map(|(node, endpoint)| async move {
            let list = async {
                let mut c = ctx.pool.client(endpoint).ok()?;
                let r = c
                    .list(pb::ListRequest {
                        program: String::new(),
                    })
                    .await
                    .ok()?;
                Some(r.into_inner().programs)
            };
            (node.clone(), list.await)
        })
        .collect();
    let answers: Vec<(String, Option<Vec<pb::ProgramInfo>>)> = futures::stream::iter(calls)
        .buffer_unordered(AGENT_FANOUT)
        .collect()
        .await;
    let held: BTreeMap<String, Vec<String>> = answers
        .into_iter()
        .filter_map(|(n, l)| Some((n, l?.into_iter().map(|p| p.program).collect())))
        .collect();
    // Read after the lists: a program created meanwhile is wanted.
    let wanted: HashSet<String> = programs.state().iter().map(|tp| tp.name_any()).collect();
    let r = book.round(&held, &wanted, Instant::now(), grace);
    for (node, program) in &r.found {
        warn!(%node, %program, grace_seconds = grace.as_secs(), "a program no TracerProgram wants is loaded");
        event(
            ctx,
            node,
            false,
            "OrphanFound",
            format!(
                "program {program} is loaded on this node but no TracerProgram wants it; it is unloaded in {} s unless one does",
                grace.as_secs()
            ),
        )
        .await;
    }
    for (node, program) in r.due {
        let Some(endpoint) = endpoints.get(&node) else {
            continue;
        };
        let res = match ctx.pool.client(endpoint) {
            Ok(mut c) => c
                .unload(pb::UnloadRequest {
                    program: program.clone(),
                    revision: String::new(),
                })
                .await
                .map(|_| ())
                .map_err(|s| s.message().to_string()),
            Err(e) => Err(e.to_string()),
        };
        match res {
            Ok(()) => {
                ctx.metrics.call("unload_orphan", "ok");
                book.unloaded(&node, &program);
                info!(%node, %program, "unloaded a program no TracerProgram wants");
                event(
                    ctx,
                    &node,
                    false,
                    "OrphanUnloaded",
                    format!(
                        "program {program} unloaded: no TracerProgram wanted it for {} s",
                        grace.as_secs()
                    ),
                )
                .await;
            }
            Err(m) => {
                ctx.metrics.call("unload_orphan", "refused");
                warn!(%node, %program, error = %m, "could not unload an orphaned program; trying again next round");
                event(
                    ctx,
                    &node,
                    true,
                    "OrphanUnloadFailed",
                    format!("program {program}: {m}"),
                )
                .await;
            }
        }
    }
}

async fn event(ctx: &Context, node: &str, warning: bool, reason: &str, note: String) {
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node.to_string()),
        ..Default::default()
    };
    let ev = KubeEvent {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(note),
        action: "Sweep".into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&ev, &reference).await {
        warn!(%reason, error = %err, "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(v: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        v.iter()
            .map(|(n, p)| (n.to_string(), p.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn key(n: &str, p: &str) -> (String, String) {
        (n.to_string(), p.to_string())
    }

    #[test]
    fn an_orphan_is_reported_once_and_due_after_the_grace_period() {
        let grace = Duration::from_secs(60);
        let wanted: HashSet<String> = ["tracer".to_string()].into();
        let t0 = Instant::now();
        let mut b = Book::default();
        let r = b.round(&held(&[("a", &["tracer", "stray"])]), &wanted, t0, grace);
        assert_eq!(r.found, [key("a", "stray")]);
        assert!(r.due.is_empty());
        let r = b.round(
            &held(&[("a", &["tracer", "stray"])]),
            &wanted,
            t0 + Duration::from_secs(59),
            grace,
        );
        assert!(r.found.is_empty() && r.due.is_empty(), "{r:?}");
        // A node that did not answer keeps the clock.
        let r = b.round(&held(&[]), &wanted, t0 + Duration::from_secs(59), grace);
        assert!(r.due.is_empty());
        let r = b.round(
            &held(&[("a", &["tracer", "stray"])]),
            &wanted,
            t0 + Duration::from_secs(60),
            grace,
        );
        assert_eq!(r.due, [key("a", "stray")]);
        assert!(r.found.is_empty(), "reported once");
        b.unloaded("a", "stray");
        assert!(b.since.is_empty());
    }

    #[test]
    fn a_program_wanted_again_or_gone_starts_over() {
        let grace = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut b = Book::default();
        let none = HashSet::new();
        b.round(&held(&[("a", &["p"]), ("b", &["p"])]), &none, t0, grace);
        // Wanted again (a TracerProgram of that name came back): forgotten.
        let wanted: HashSet<String> = ["p".to_string()].into();
        let r = b.round(
            &held(&[("a", &["p"]), ("b", &["p"])]),
            &wanted,
            t0 + Duration::from_secs(30),
            grace,
        );
        assert!(r.found.is_empty() && r.due.is_empty());
        assert!(b.since.is_empty());
        // An orphan again later: a new clock, not the old one.
        let r = b.round(
            &held(&[("a", &["p"])]),
            &none,
            t0 + Duration::from_secs(61),
            grace,
        );
        assert_eq!(r.found, [key("a", "p")]);
        assert!(r.due.is_empty(), "the grace period starts again");
    }
}
