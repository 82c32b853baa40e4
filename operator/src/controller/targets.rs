//! The nodes a reconcile considers: every Node, marked selected when the
//! program's `spec.nodeSelector` matches it, with its agent's endpoint
//! (from [`crate::agents`] discovery) and its core count. Reads the
//! reflector stores only; calls no agent and writes nothing.

use std::collections::HashMap;

use bpfleet_api::TracerProgram;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

use super::Context;
use crate::rollout::NodeReport;
use crate::{Error, Result, agents, selector};

/// One node as the reconcile sees it.
pub(super) struct Target {
    pub(super) name: String,
    pub(super) endpoint: Option<String>,
    pub(super) cores: u32,
    pub(super) selected: bool,
    /// `status.nodeInfo.kernelVersion`, when the kubelet reported it.
    pub(super) kernel: Option<String>,
}

pub(super) fn cores(node: &Node) -> u32 {
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

pub(super) fn target(node: &Node, pods: &HashMap<String, String>, selected: bool) -> Target {
    Target {
        name: node.name_any(),
        endpoint: agents::endpoint_in(node, pods),
        cores: cores(node),
        selected,
        kernel: node
            .status
            .as_ref()
            .and_then(|s| s.node_info.as_ref())
            .map(|i| i.kernel_version.clone())
            .filter(|k| !k.is_empty()),
    }
}

pub(super) fn pod_endpoints(ctx: &Context) -> HashMap<String, String> {
    let pods = ctx.pods.state();
    agents::pod_endpoints(
        pods.iter().map(|p| &**p),
        &ctx.discovery,
        &ctx.agent_selector,
    )
}

/// Every node, marked selected when `spec.nodeSelector` matches it.
pub(super) fn targets(tp: &TracerProgram, ctx: &Context) -> Result<Vec<Target>> {
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

pub(super) fn all_targets(ctx: &Context) -> Vec<Target> {
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

/// Selected nodes always get a report (unreachable when the agent does not
/// answer); other nodes only when their agent holds the program.
pub(super) fn split(
    targets: &[Target],
    reports: &[NodeReport],
) -> (Vec<NodeReport>, Vec<NodeReport>) {
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
