//! The machine's node actions carried out as agent calls: per node in
//! order, nodes in parallel (at most [`FANOUT`] at once), each outcome
//! recorded as a node failure or cleared, the cache told that the node's
//! view predates the calls. The Load requests of a reconcile are built
//! once per revision ([`LoadRequests`]: one base64 decode or ConfigMap
//! read per revision, not per node) and cloned for each node. Decides
//! nothing: which action goes where is the machine's.
//!
//! A Load request of an image may carry registry credentials: requests are
//! never formatted (no `{:?}`, no tracing field), failures and log lines
//! carry only the agent's answer or a message naming the pull secret, and
//! [`LoadRequests`] has no `Debug`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;

use bpfleet_api::TracerProgramSpec;
use bpfleet_proto::v1 as pb;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use tracing::{info, warn};

use super::snapshots::snapshot;
use super::targets::Target;
use super::{Context, now};
use crate::cache::NodeCache;
use crate::load::{self, RevisionSnapshot, Source};
use crate::rollout::{ActionKind, NodeAction, NodeFailure, SOURCE_UNAVAILABLE};
use crate::{observe, policy, pull_secret};

/// Nodes acted on at once per reconcile.
const FANOUT: usize = 64;

/// The policy writes for nodes about to hold the program for the first
/// time: made after their Load succeeds, before anything else, so that no
/// revision runs there unfiltered (the config map is shared by every
/// revision, so later loads find it written).
pub(super) struct FirstLoad<'a> {
    /// Empty when no policy applies (a new config map holds the defaults).
    pub(super) requests: Vec<pb::UpdateConfigRequest>,
    pub(super) nodes: HashSet<&'a str>,
}

/// Carries out the machine's actions: per node in order (stopping at the
/// first failure on that node), nodes in parallel, at most `parallel` (the
/// machine's limit, e.g. verification's `maxConcurrent`) and at most
/// [`FANOUT`] at once. True when every action succeeded.
pub(super) async fn carry_out(
    ctx: &Context,
    program: &str,
    loads: &mut LoadRequests<'_>,
    actions: &[NodeAction],
    targets: &[Target],
    first_load: Option<&FirstLoad<'_>>,
    parallel: Option<usize>,
) -> bool {
    let (spec, spec_revision) = (loads.spec, loads.spec_revision);
    let budget = loads.budget.clone();
    let budget = &budget;
    loads
        .prepare(actions, |revision| async move {
            load_request(ctx, program, spec, spec_revision, &revision)
                .await
                .map(|mut r| {
                    r.budget = budget.clone();
                    r
                })
        })
        .await;
    let loads = &*loads;
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
                        if !act(ctx, program, loads, a, endpoint).await {
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
        .buffer_unordered(parallel.map_or(FANOUT, |p| p.clamp(1, FANOUT)))
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
    loads: &LoadRequests<'_>,
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
                attempts: 1,
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
        ActionKind::Load => match loads.get(&a.revision) {
            Some(Ok(req)) => client.load(req.clone()).await.map(|_| ()),
            Some(Err((reason, message))) => return fail(reason, message.clone()),
            // carry_out prepared every revision its actions load.
            None => {
                return fail(
                    "InvalidRequest",
                    format!("no Load request was built for revision {}", a.revision),
                );
            }
        },
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
            Some(mut f) => {
                // Only a Load fetches a source: an Activate, Rollback or
                // Unload answered so is an agent fault, not a wait.
                if f.source_unavailable() && a.kind != ActionKind::Load {
                    f.reason = "AgentError".into();
                }
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

/// A Load request as built for a revision, or why it could not be:
/// (reason, message) for the failure of every node that was to load it.
type Built = std::result::Result<pb::LoadRequest, (&'static str, String)>;

/// The Load requests of one reconcile, one per revision: built the first
/// time an action loads that revision (one base64 decode, one snapshot
/// read, one ConfigMap GET), then cloned for every node that loads it, in
/// this pass and the later passes of the same reconcile. A failure to
/// build is kept too: every node that was to load the revision records it,
/// and the next reconcile tries again.
pub(super) struct LoadRequests<'a> {
    spec: &'a TracerProgramSpec,
    /// The revision `spec` describes ("" when none is loaded, at teardown).
    spec_revision: &'a str,
    built: HashMap<String, Built>,
    /// The applying TracerPolicy's budgets, sent with every Load.
    budget: Option<pb::Budget>,
}

impl<'a> LoadRequests<'a> {
    pub(super) fn new(spec: &'a TracerProgramSpec, spec_revision: &'a str) -> Self {
        LoadRequests {
            spec,
            spec_revision,
            built: HashMap::new(),
            budget: None,
        }
    }

    /// Sends `budget` (the applying TracerPolicy's) with every Load.
    pub(super) fn with_budget(mut self, budget: Option<pb::Budget>) -> Self {
        self.budget = budget;
        self
    }

    /// Builds, with `build`, the request of every revision `actions` load
    /// that has none yet; one call per revision.
    async fn prepare<F, Fut>(&mut self, actions: &[NodeAction], mut build: F)
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Built>,
    {
        for revision in unbuilt(actions, &self.built) {
            let built = build(revision.clone()).await;
            self.built.insert(revision, built);
        }
    }

    fn get(&self, revision: &str) -> Option<&Built> {
        self.built.get(revision)
    }
}

/// The revisions `actions` load that `built` has no request for, each once,
/// in order.
fn unbuilt(actions: &[NodeAction], built: &HashMap<String, Built>) -> BTreeSet<String> {
    actions
        .iter()
        .filter(|a| a.kind == ActionKind::Load && !built.contains_key(&a.revision))
        .map(|a| a.revision.clone())
        .collect()
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
        RevisionSnapshot::from_spec(spec)
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
                    SOURCE_UNAVAILABLE,
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
                        SOURCE_UNAVAILABLE,
                        format!("bytecode.configMap {namespace}/{name} has no key {key:?} in binaryData or data"),
                    )
                })?;
            Source::Bytes(bytes)
        }
        // Read for each reconcile that loads the revision (a rotated
        // Secret is picked up), in the operator's namespace only.
        Source::Image {
            reference,
            pull_secret: Some(secret),
        } => {
            let credentials =
                pull_secret::credentials(&ctx.client, &ctx.namespace, &secret, &reference)
                    .await
                    .map_err(|m| (SOURCE_UNAVAILABLE, m))?;
            Source::Pull {
                reference,
                credentials: Some(credentials),
            }
        }
        other => other,
    };
    load::request(program, revision, &ls, source).map_err(|e| ("InvalidRequest", e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::rollout::testing::spec;

    fn action(node: &str, revision: &str, kind: ActionKind) -> NodeAction {
        NodeAction {
            node: node.into(),
            revision: revision.into(),
            kind,
        }
    }

    fn request(revision: &str) -> pb::LoadRequest {
        pb::LoadRequest {
            revision: revision.into(),
            ..Default::default()
        }
    }

    /// Three nodes load `r1` and one `r2`, over two passes: two builds, and
    /// every node gets the request of its revision. A failed build is kept
    /// for every node of that revision, not retried per node.
    #[tokio::test]
    async fn load_requests_are_built_once_per_revision() {
        let spec = spec("v1");
        let mut loads = LoadRequests::new(&spec, "r1");
        let asked = RefCell::new(Vec::new());
        let build = |revision: String| {
            asked.borrow_mut().push(revision.clone());
            async move {
                if revision == "r3" {
                    Err(("RevisionUnavailable", format!("no snapshot of {revision}")))
                } else {
                    Ok(request(&revision))
                }
            }
        };
        let first = [
            action("a", "r1", ActionKind::Load),
            action("a", "r1", ActionKind::Activate),
            action("b", "r1", ActionKind::Load),
            action("c", "r2", ActionKind::Load),
            action("d", "r0", ActionKind::Unload),
        ];
        loads.prepare(&first, build).await;
        assert_eq!(*asked.borrow(), ["r1", "r2"]);
        let second = [
            action("e", "r1", ActionKind::Load),
            action("f", "r3", ActionKind::Load),
            action("g", "r3", ActionKind::Load),
        ];
        loads.prepare(&second, build).await;
        assert_eq!(*asked.borrow(), ["r1", "r2", "r3"]);
        assert_eq!(loads.get("r1"), Some(&Ok(request("r1"))));
        assert_eq!(loads.get("r2"), Some(&Ok(request("r2"))));
        assert!(matches!(
            loads.get("r3"),
            Some(Err(("RevisionUnavailable", m))) if m.contains("r3")
        ));
        assert_eq!(loads.get("r0"), None);
    }
}
