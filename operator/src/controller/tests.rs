//! Unit tests of the reconciler's pure helpers: machine timers against
//! kube-runtime's debounce, and node cores from capacity.

use super::targets::cores;
use super::*;
use k8s_openapi::api::core::v1::NodeStatus;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

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

#[test]
fn map_memory_sums_the_nodes_that_reported_and_names_the_largest() {
    use crate::rollout::NodeReport;
    let node = |name: &str, bytes: Option<u64>| NodeReport {
        map_memory_bytes: bytes,
        ..NodeReport::new(name)
    };
    assert_eq!(super::map_memory(&[node("a", None)]), None);
    let m = super::map_memory(&[node("a", Some(120)), node("b", Some(300)), node("c", None)])
        .expect("figures");
    assert_eq!(
        (
            m.total_bytes,
            m.max_node_bytes,
            m.max_node.as_str(),
            m.nodes
        ),
        (420, 300, "b", 2)
    );
}
