//! What the operator keeps of Nodes and agent Pods in its reflector
//! stores: only the fields it reads. A kubelet's Node carries its image
//! list, conditions, addresses and managed fields (often 10-20 KiB each);
//! at 5000 nodes that is 50-100 MB held for nothing. Pure functions.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeStatus, NodeSystemInfo, Pod, PodSpec, PodStatus};
use kube::api::ObjectMeta;

use crate::agents::ENDPOINT_ANNOTATION;

/// The metadata every store needs (identity and resource version) plus
/// labels; annotations only when `keep_annotation` names one present.
fn meta(m: &mut ObjectMeta, keep_annotation: Option<&str>) -> ObjectMeta {
    let annotations = keep_annotation.and_then(|k| {
        let v = m.annotations.as_mut()?.remove(k)?;
        Some(BTreeMap::from([(k.to_string(), v)]))
    });
    ObjectMeta {
        name: m.name.take(),
        namespace: m.namespace.take(),
        uid: m.uid.take(),
        resource_version: m.resource_version.take(),
        generation: m.generation,
        labels: m.labels.take(),
        annotations,
        deletion_timestamp: m.deletion_timestamp.take(),
        ..ObjectMeta::default()
    }
}

/// A Node as the operator reads it: name, labels (node selectors), the
/// agent-endpoint annotation, CPU capacity and kernel release.
pub fn node(n: &mut Node) {
    let status = n.status.take().map(|s| NodeStatus {
        capacity: s
            .capacity
            .and_then(|mut c| c.remove_entry("cpu"))
            .map(|(k, v)| BTreeMap::from([(k, v)])),
        node_info: s.node_info.map(|i| NodeSystemInfo {
            kernel_version: i.kernel_version,
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    });
    *n = Node {
        metadata: meta(&mut n.metadata, Some(ENDPOINT_ANNOTATION)),
        spec: None,
        status,
    };
}

/// An agent Pod as discovery reads it: namespace, labels, node, phase and
/// IP.
pub fn pod(p: &mut Pod) {
    let spec = p.spec.take().map(|s| PodSpec {
        node_name: s.node_name,
        ..PodSpec::default()
    });
    let status = p.status.take().map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        ..PodStatus::default()
    });
    *p = Pod {
        metadata: meta(&mut p.metadata, None),
        spec,
        status,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_kubelet_node_keeps_what_targets_read_and_nothing_else() {
        let mut n: Node = serde_json::from_value(json!({
            "metadata": {
                "name": "n1", "uid": "u1", "resourceVersion": "7",
                "labels": {"kubernetes.io/os": "linux", "tier": "edge"},
                "annotations": {
                    ENDPOINT_ANNOTATION: "unix:///run/a.sock",
                    "node.alpha.kubernetes.io/ttl": "0"
                },
                "managedFields": [{"manager": "kubelet", "operation": "Update"}]
            },
            "spec": {"podCIDR": "10.0.0.0/24", "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {
                "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                "allocatable": {"cpu": "7"},
                "nodeInfo": {"kernelVersion": "6.1.0-13-amd64", "osImage": "Debian", "machineID": "m",
                    "architecture": "amd64", "bootID": "b", "containerRuntimeVersion": "c",
                    "kernelVersion": "6.1.0-13-amd64", "kubeProxyVersion": "", "kubeletVersion": "v1",
                    "operatingSystem": "linux", "systemUUID": "s"},
                "images": [{"names": ["registry.example/a:1"], "sizeBytes": 1}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]
            }
        }))
        .expect("node");
        let ns = std::collections::HashMap::new();
        let before = crate::controller::target_summary(&n, &ns);
        node(&mut n);
        assert_eq!(crate::controller::target_summary(&n, &ns), before);
        let left = serde_json::to_value(&n).expect("json");
        assert_eq!(
            left,
            json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {
                    "name": "n1", "uid": "u1", "resourceVersion": "7",
                    "labels": {"kubernetes.io/os": "linux", "tier": "edge"},
                    "annotations": {ENDPOINT_ANNOTATION: "unix:///run/a.sock"}
                },
                "status": {
                    "capacity": {"cpu": "8"},
                    "nodeInfo": {"kernelVersion": "6.1.0-13-amd64", "architecture": "", "bootID": "",
                        "containerRuntimeVersion": "", "kubeProxyVersion": "", "kubeletVersion": "",
                        "machineID": "", "operatingSystem": "", "osImage": "", "systemUUID": ""}
                }
            })
        );
    }

    #[test]
    fn an_agent_pod_keeps_what_discovery_reads() {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "agent-x", "namespace": "bpfleet-system",
                "labels": {"app.kubernetes.io/component": "agent"},
                "annotations": {"a": "b"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "agent", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.9", "hostIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .expect("pod");
        let d = crate::agents::Discovery {
            port: 50051,
            namespace: "bpfleet-system".into(),
            selector: String::new(),
        };
        let sel = crate::agents::parse_selector("app.kubernetes.io/component=agent").expect("sel");
        let before = crate::agents::pod_endpoints([&p], &d, &sel);
        pod(&mut p);
        assert_eq!(crate::agents::pod_endpoints([&p], &d, &sel), before);
        assert_eq!(
            before.get("n1").map(String::as_str),
            Some("https://10.0.0.9:50051")
        );
        let left = serde_json::to_value(&p).expect("json");
        assert_eq!(left["metadata"].get("annotations"), None);
        assert_eq!(left["spec"], json!({"containers": [], "nodeName": "n1"}));
        assert_eq!(
            left["status"],
            json!({"phase": "Running", "podIP": "10.0.0.9"})
        );
    }
}
