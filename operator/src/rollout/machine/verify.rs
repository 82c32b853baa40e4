//! Verify everywhere before switching anywhere (`strategy.verifyFirst`):
//! the candidate is loaded, inactive, on every selected node (the kernel's
//! verifier runs there, nothing is switched) before the first step runs.
//! At most `maxConcurrent` nodes load at once. Once every node answered,
//! a node that refused the revision blocks the rollout (`Block`: it fails,
//! `failurePolicy` applies) or is left out of it (`Exclude`: it keeps what
//! it runs and the rest proceeds). The outcome is kept in
//! `status.verification`, counted per kernel release, bounded in size
//! whatever the fleet's.

use std::collections::{BTreeMap, BTreeSet};

use bpfleet_api::program::{
    KernelVerification, NodeVerification, Verification, VerifyFailurePolicy,
};

use super::{Machine, StepState};
use crate::rollout::NodeReport;

/// `status.verification.result` while nodes are still loading.
pub const VERIFYING: &str = "Verifying";
/// Every node loaded the revision.
pub const PASSED: &str = "Passed";
/// Some nodes refused it and are left out of the rollout.
pub const EXCLUDED: &str = "Excluded";
/// Some nodes refused it and the rollout was stopped.
pub const FAILED: &str = "Failed";

/// Kernel releases listed in the summary.
const MAX_KERNELS: usize = 32;
/// Refusing nodes listed in the summary.
const MAX_FAILED_NODES: usize = 20;
/// Longest error line kept.
const MAX_LINE: usize = 240;

const UNKNOWN_KERNEL: &str = "unknown";

/// `btf` of a kernel release: every node of it that reported has BTF.
pub const BTF_PRESENT: &str = "Present";
/// None of its nodes that reported has BTF.
pub const BTF_ABSENT: &str = "Absent";
/// Some have, some have not.
pub const BTF_MIXED: &str = "Mixed";

impl Machine<'_> {
    /// Verification is on and not yet done for `c`.
    pub(super) fn verifying(&self, c: &str) -> bool {
        self.verify.is_some() && self.progress.verified_revision.as_deref() != Some(c)
    }

    /// Nodes left out of the rollout of `c`: verification of `c` ended
    /// `Excluded` (by policy, or by a promote past a failed verification)
    /// and they refused it without loading it.
    pub(super) fn excluded(&self, c: &str) -> BTreeSet<String> {
        let excluding = self.verify.is_some()
            && self.progress.verified_revision.as_deref() == Some(c)
            && self
                .status
                .verification
                .as_ref()
                .is_some_and(|v| v.revision == c && v.result == EXCLUDED);
        if !excluding {
            return BTreeSet::new();
        }
        self.nodes
            .iter()
            .filter(|n| !n.has(c) && n.failure(c).is_some())
            .map(|n| n.node.clone())
            .collect()
    }

    /// Marks the verification of `c` done with `result`.
    pub(super) fn verified(&mut self, c: &str, result: &str) {
        self.progress.verified_revision = Some(c.to_string());
        self.refresh_verification(c, result);
        self.restart_clocks();
    }

    /// Rewrites `status.verification` from what the nodes report now.
    pub(super) fn refresh_verification(&mut self, c: &str, result: &str) {
        self.status.verification = Some(summary(c, result, &self.nodes));
    }

    /// The verify gate before the first step.
    pub(super) fn eval_verify(&mut self, c: &str) -> StepState {
        let total = self.nodes.len();
        let pending: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| !n.has(c) && n.failure(c).is_none())
            .map(|n| n.node.clone())
            .collect();
        let failed = self.nodes.iter().filter(|n| n.failure(c).is_some()).count();
        if !pending.is_empty() {
            self.refresh_verification(c, VERIFYING);
            let text = format!(
                "verifying revision {c} on every node before any switch: loaded on {} of {total}, {failed} refused it",
                total - pending.len() - failed
            );
            return self.wait_on_nodes(c, &pending, text);
        }
        let policy = self.verify.as_ref().map(|v| v.on_failure);
        if failed == 0 {
            self.verified(c, PASSED);
            let kernels = self.kernel_line();
            self.event(
                false,
                "Verified",
                format!("revision {c} loaded on all {total} nodes ({kernels}); its steps start"),
            );
            return StepState::Done;
        }
        let refusals = refusals_text(c, &self.nodes);
        if policy == Some(VerifyFailurePolicy::Exclude) && failed < total {
            self.verified(c, EXCLUDED);
            self.event(
                true,
                "NodesExcluded",
                format!(
                    "{failed} of {total} nodes cannot load revision {c} and are left out of its rollout, keeping what they run: {refusals}"
                ),
            );
            return StepState::Done;
        }
        self.refresh_verification(c, FAILED);
        StepState::Failed {
            reason: "VerificationFailed",
            message: format!(
                "{failed} of {total} nodes cannot load it, no node was switched: {refusals}"
            ),
        }
    }

    /// A promote past a failed verification: the refusing nodes are left
    /// out, as with `onFailure: Exclude`.
    pub(super) fn override_verification(&mut self, c: &str) {
        self.verified(c, EXCLUDED);
    }

    /// `6.1.0-x: 3 nodes, 6.8.0: 2 nodes`.
    fn kernel_line(&self) -> String {
        let v = summary("", PASSED, &self.nodes);
        v.kernels
            .iter()
            .map(|k| format!("kernel {}: {} node(s)", k.kernel_release, k.nodes))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Nodes acted on at once while verifying `c`: `maxConcurrent`.
    pub(super) fn load_budget(&self, c: &str) -> Option<usize> {
        let v = self.verify.as_ref()?;
        self.verifying(c)
            .then(|| usize::try_from(v.max_concurrent.max(1)).unwrap_or(1))
    }
}

/// The refusing nodes grouped by kernel release, with the first error
/// line of each group: `kernel 6.1.0: node-b, node-c: VerifierRejected:
/// unknown func bpf_ringbuf_output#130`. At most five groups.
fn refusals_text(c: &str, nodes: &[NodeReport]) -> String {
    let mut groups: BTreeMap<&str, (Vec<&str>, String)> = BTreeMap::new();
    for n in nodes {
        let Some(f) = n.failure(c) else { continue };
        let kernel = n.kernel.as_deref().unwrap_or(UNKNOWN_KERNEL);
        let g = groups.entry(kernel).or_insert_with(|| {
            (
                Vec::new(),
                format!("{}: {}", f.reason, first_error(&f.message)),
            )
        });
        g.0.push(n.node.as_str());
    }
    let mut parts: Vec<String> = groups
        .iter()
        .take(5)
        .map(|(k, (names, err))| {
            let mut shown: Vec<&str> = names.iter().take(5).copied().collect();
            if names.len() > 5 {
                shown.push("...");
            }
            format!("kernel {k}: {}: {err}", shown.join(", "))
        })
        .collect();
    if groups.len() > 5 {
        parts.push(format!("and {} more kernel release(s)", groups.len() - 5));
    }
    parts.join("; ")
}

/// The summary of the verification of `c` on `nodes`.
pub fn summary(c: &str, result: &str, nodes: &[NodeReport]) -> Verification {
    // Per release, with the nodes that said their kernel has BTF and those
    // that said it has none.
    let mut kernels: BTreeMap<&str, (KernelVerification, u32, u32)> = BTreeMap::new();
    let mut out = Verification {
        revision: c.to_string(),
        result: result.to_string(),
        nodes: count(nodes.len()),
        ..Default::default()
    };
    for n in nodes {
        let release = n.kernel.as_deref().unwrap_or(UNKNOWN_KERNEL);
        let (k, with_btf, without_btf) = kernels.entry(release).or_insert_with(|| {
            (
                KernelVerification {
                    kernel_release: release.to_string(),
                    ..Default::default()
                },
                0,
                0,
            )
        });
        k.nodes += 1;
        match n.btf {
            Some(true) => *with_btf += 1,
            Some(false) => *without_btf += 1,
            None => {}
        }
        if let Some(f) = n.failure(c) {
            k.failed += 1;
            out.failed += 1;
            let line = first_error(&f.message);
            if k.first_error.is_none() {
                k.first_error = Some(line.clone());
            }
            if out.failed_nodes.len() < MAX_FAILED_NODES {
                out.failed_nodes.push(NodeVerification {
                    node: n.node.clone(),
                    kernel_release: release.to_string(),
                    reason: f.reason.clone(),
                    first_error: line,
                });
            }
        } else if n.has(c) {
            k.verified += 1;
            out.verified += 1;
        } else {
            out.pending += 1;
        }
    }
    let mut kernels: Vec<KernelVerification> = kernels
        .into_values()
        .map(|(k, with_btf, without_btf)| KernelVerification {
            btf: btf_of(with_btf, without_btf).map(str::to_string),
            ..k
        })
        .collect();
    kernels.sort_by(|a, b| {
        b.nodes
            .cmp(&a.nodes)
            .then_with(|| a.kernel_release.cmp(&b.kernel_release))
    });
    kernels.truncate(MAX_KERNELS);
    out.kernels = kernels;
    out
}

/// The `btf` of a release whose nodes said `with` times that their kernel
/// has BTF and `without` times that it has none.
fn btf_of(with: u32, without: u32) -> Option<&'static str> {
    match (with, without) {
        (0, 0) => None,
        (_, 0) => Some(BTF_PRESENT),
        (0, _) => Some(BTF_ABSENT),
        _ => Some(BTF_MIXED),
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The line of an agent's refusal that says what is wrong: for a verifier
/// log (`verifier rejected program P: <log>`), its last line that is not
/// an instruction or a statistic; otherwise the message's first line. Cut
/// to 240 bytes on a character boundary.
pub fn first_error(message: &str) -> String {
    let log = message
        .split_once("verifier rejected program ")
        .and_then(|(_, rest)| rest.split_once(": "))
        .map(|(_, log)| log);
    let line = match log {
        Some(log) => log
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .rfind(|l| !is_log_noise(l))
            .unwrap_or_else(|| log.lines().next().unwrap_or("").trim()),
        None => message.lines().next().unwrap_or("").trim(),
    };
    let mut end = line.len().min(MAX_LINE);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}

/// Verifier log lines that are not the error: instructions (`12: (85)
/// call ...`), register states, and the closing statistics.
fn is_log_noise(line: &str) -> bool {
    let numbered = line
        .split_once(':')
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    numbered
        || line.starts_with("processed ")
        || line.starts_with("verification time")
        || line.starts_with("stack depth")
        || line.starts_with(';')
        || line.split_whitespace().all(|t| t.contains('='))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::clock::time;
    use crate::rollout::{LoadedRevision, NodeFailure};

    fn node(name: &str, kernel: &str, loaded: bool, refused: Option<&str>) -> NodeReport {
        NodeReport {
            revisions: loaded
                .then(|| LoadedRevision {
                    revision: "c".into(),
                    active: false,
                    health: None,
                })
                .into_iter()
                .collect(),
            failures: refused
                .map(|m| NodeFailure {
                    revision: "c".into(),
                    reason: "VerifierRejected".into(),
                    message: m.into(),
                    at: time(1),
                    attempts: 1,
                })
                .into_iter()
                .collect(),
            kernel: (!kernel.is_empty()).then(|| kernel.to_string()),
            ..NodeReport::new(name)
        }
    }

    const REJECTED: &str = "verifier rejected program count: 0: R1=ctx() R10=fp0\n12: (85) call bpf_ringbuf_output#130\nunknown func bpf_ringbuf_output#130\nprocessed 12 insns (limit 1000000)";

    #[test]
    fn the_error_line_is_the_verifiers_not_an_instruction_or_a_statistic() {
        assert_eq!(first_error(REJECTED), "unknown func bpf_ringbuf_output#130");
        assert_eq!(
            first_error("refused: signature does not verify\nmore"),
            "refused: signature does not verify"
        );
        let long = "é".repeat(200);
        let cut = first_error(&long);
        assert!(cut.len() <= MAX_LINE && cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn summary_counts_per_kernel_and_lists_the_refusing_nodes() {
        let nodes = [
            node("a", "6.1.0", true, None),
            node("b", "5.4.0", false, Some(REJECTED)),
            node("c", "6.1.0", false, None),
            node("d", "", true, None),
        ];
        let v = summary("c", VERIFYING, &nodes);
        assert_eq!((v.nodes, v.verified, v.failed, v.pending), (4, 2, 1, 1));
        assert_eq!(v.kernels[0].kernel_release, "6.1.0");
        assert_eq!((v.kernels[0].nodes, v.kernels[0].verified), (2, 1));
        let old = v.kernels.iter().find(|k| k.kernel_release == "5.4.0");
        assert_eq!(
            old.and_then(|k| k.first_error.as_deref()),
            Some("unknown func bpf_ringbuf_output#130")
        );
        assert!(v.kernels.iter().any(|k| k.kernel_release == UNKNOWN_KERNEL));
        assert_eq!(v.failed_nodes.len(), 1);
        assert_eq!(v.failed_nodes[0].node, "b");
        assert_eq!(v.failed_nodes[0].kernel_release, "5.4.0");
    }

    fn with_btf(btf: Option<bool>, n: NodeReport) -> NodeReport {
        NodeReport { btf, ..n }
    }

    #[test]
    fn summary_says_per_kernel_whether_its_nodes_have_btf() {
        let nodes = [
            // Every node of 6.1.0 has BTF.
            with_btf(Some(true), node("a", "6.1.0", true, None)),
            with_btf(Some(true), node("b", "6.1.0", false, Some(REJECTED))),
            // 5.4.0: one with, one without, one that did not say.
            with_btf(Some(true), node("c", "5.4.0", true, None)),
            with_btf(Some(false), node("d", "5.4.0", false, Some(REJECTED))),
            with_btf(None, node("e", "5.4.0", true, None)),
            // 4.19.0: none of those that said has BTF.
            with_btf(Some(false), node("f", "4.19.0", false, Some(REJECTED))),
            with_btf(None, node("g", "4.19.0", false, Some(REJECTED))),
            // 6.8.0: no node said.
            with_btf(None, node("h", "6.8.0", true, None)),
        ];
        let v = summary("c", VERIFYING, &nodes);
        let btf = |release: &str| {
            v.kernels
                .iter()
                .find(|k| k.kernel_release == release)
                .map(|k| k.btf.as_deref())
        };
        assert_eq!(btf("6.1.0"), Some(Some(BTF_PRESENT)));
        assert_eq!(btf("5.4.0"), Some(Some(BTF_MIXED)));
        assert_eq!(btf("4.19.0"), Some(Some(BTF_ABSENT)));
        assert_eq!(btf("6.8.0"), Some(None), "no node said: unset");
        // Unset is left out of the status, set is camelCase `btf`.
        let json = serde_json::to_value(&v.kernels).expect("json");
        let of = |release: &str| {
            json.as_array()
                .and_then(|ks| ks.iter().find(|k| k["kernelRelease"] == release))
                .cloned()
                .expect("release listed")
        };
        assert_eq!(of("6.1.0")["btf"], "Present");
        assert!(of("6.8.0").get("btf").is_none(), "{json}");
        // The counts are those of before.
        assert_eq!((v.nodes, v.verified, v.failed, v.pending), (8, 4, 4, 0));
    }

    #[test]
    fn summary_stays_bounded_at_five_thousand_nodes() {
        let nodes: Vec<NodeReport> = (0..5000)
            .map(|i| {
                let kernel = format!("6.{}.0", i % 50);
                // Every release mixed, its longest value.
                with_btf(
                    Some(i % 7 != 0),
                    node(
                        &format!("n{i:04}"),
                        &kernel,
                        i % 3 != 0,
                        (i % 3 == 0).then_some(REJECTED),
                    ),
                )
            })
            .collect();
        let v = summary("c", FAILED, &nodes);
        assert_eq!(v.failed, 1667);
        assert_eq!(v.kernels.len(), MAX_KERNELS);
        assert!(
            v.kernels
                .iter()
                .all(|k| k.btf.as_deref() == Some(BTF_MIXED)),
            "{:?}",
            v.kernels
        );
        assert_eq!(v.failed_nodes.len(), MAX_FAILED_NODES);
        let bytes = serde_json::to_vec(&v).expect("json").len();
        assert!(bytes < 16 * 1024, "{bytes} bytes");
    }

    #[test]
    fn refusals_are_grouped_by_kernel() {
        let nodes = [
            node("a", "6.1.0", true, None),
            node("b", "5.4.0", false, Some(REJECTED)),
            node("c", "5.4.0", false, Some(REJECTED)),
        ];
        assert_eq!(
            refusals_text("c", &nodes),
            "kernel 5.4.0: b, c: VerifierRejected: unknown func bpf_ringbuf_output#130"
        );
    }
}
