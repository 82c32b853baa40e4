//! Which nodes are canaries: every node gets a rank from SHA-256 of the
//! program name and the node name; nodes sorted by rank (then name) form the
//! canary order, and a step at `p` % takes the first `ceil(p × n / 100)` of
//! it. The order depends on nothing but the names, so a resumed or restarted
//! rollout picks the same nodes, a higher percentage is a superset of a lower
//! one, and different programs spread their canaries over different nodes.
//! A node joining the selection takes its place in the order: it is a canary
//! if its rank falls inside the current share.

use sha2::{Digest, Sha256};

/// The rank of a node for a program: the first 8 bytes of
/// SHA-256(`program` NUL `node`), big-endian.
pub fn rank(program: &str, node: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(program.as_bytes());
    h.update([0u8]);
    h.update(node.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Nodes in canary order.
pub fn canary_order<'a>(program: &str, nodes: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut ranked: Vec<(u64, &str)> = nodes.into_iter().map(|n| (rank(program, n), n)).collect();
    ranked.sort_unstable();
    ranked.dedup();
    ranked.into_iter().map(|(_, n)| n).collect()
}

/// How many of `total` nodes `percent` % is, rounded up so that any
/// non-zero percentage moves at least one node.
pub fn canary_count(percent: i32, total: usize) -> usize {
    let percent = usize::try_from(percent.clamp(0, 100)).unwrap_or(0);
    (percent * total).div_ceil(100)
}

/// The canary nodes at `percent` %, in canary order.
pub fn canary_nodes<'a>(
    program: &str,
    nodes: impl IntoIterator<Item = &'a str>,
    percent: i32,
) -> Vec<&'a str> {
    let mut order = canary_order(program, nodes);
    order.truncate(canary_count(percent, order.len()));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn counts_round_up() {
        assert_eq!(canary_count(0, 10), 0);
        assert_eq!(canary_count(1, 10), 1);
        assert_eq!(canary_count(10, 10), 1);
        assert_eq!(canary_count(11, 10), 2);
        assert_eq!(canary_count(100, 10), 10);
        assert_eq!(canary_count(50, 3), 2);
        assert_eq!(canary_count(150, 3), 3);
        assert_eq!(canary_count(-5, 3), 0);
        assert_eq!(canary_count(50, 0), 0);
    }

    #[test]
    fn order_is_independent_of_input_order() {
        let n = names(20);
        let forward = canary_order("http", n.iter().map(String::as_str));
        let backward = canary_order("http", n.iter().rev().map(String::as_str));
        assert_eq!(forward, backward);
        assert_eq!(forward.len(), 20);
    }

    #[test]
    fn programs_spread_differently() {
        let n = names(20);
        let a = canary_nodes("http", n.iter().map(String::as_str), 10);
        let b = canary_nodes("syscount", n.iter().map(String::as_str), 10);
        assert_eq!(a.len(), 2);
        assert_ne!(a, b);
    }

    #[test]
    fn larger_share_contains_smaller() {
        let n = names(37);
        let mut previous: Vec<&str> = Vec::new();
        for p in 0..=100 {
            let now = canary_nodes("http", n.iter().map(String::as_str), p);
            assert!(previous.iter().all(|x| now.contains(x)), "{p}");
            previous = now;
        }
    }
}
