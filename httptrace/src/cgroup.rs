//! Kubernetes identity from a process's cgroup path: the pod UID and the
//! container ID, in the path forms kubelet produces with the systemd and
//! cgroupfs drivers, on cgroup v2 (`0::/...`) and v1 (`N:controller:/...`),
//! for containerd, CRI-O and Docker. The node agent maps the pod UID to
//! namespace, pod and owner through the apiserver.

/// What a cgroup path says about the workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// Pod UID with dashes (`0b9f3c2e-1d4a-...`).
    pub pod_uid: String,
    /// Container ID (64 hex), when the path reaches a container.
    pub container_id: Option<String>,
}

/// Parses one cgroup path, or one line of `/proc/<pid>/cgroup`
/// (`hierarchy:controllers:path`). `None` when it is not a pod's cgroup.
pub fn parse(line: &str) -> Option<PodRef> {
    let path = line.trim().rsplit_once(':').map_or(line.trim(), |(_, p)| p);
    let mut pod_uid = None;
    let mut container_id = None;
    for seg in path.split('/') {
        if let Some(uid) = pod_segment(seg) {
            pod_uid = Some(uid);
            container_id = None;
        } else if pod_uid.is_some()
            && let Some(id) = container_segment(seg)
        {
            container_id = Some(id);
        }
    }
    pod_uid.map(|pod_uid| PodRef {
        pod_uid,
        container_id,
    })
}

/// Parses a whole `/proc/<pid>/cgroup` file: the v2 line wins, else the
/// first v1 line that names a pod.
pub fn parse_proc_cgroup(text: &str) -> Option<PodRef> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .iter()
        .find(|l| l.starts_with("0::"))
        .and_then(|l| parse(l))
        .or_else(|| lines.iter().find_map(|l| parse(l)))
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice`
/// (systemd).
fn pod_segment(seg: &str) -> Option<String> {
    let seg = seg.strip_suffix(".slice").unwrap_or(seg);
    let idx = seg.rfind("pod")?;
    let before = &seg[..idx];
    if !(before.is_empty() || before.ends_with('-')) {
        return None;
    }
    let uid = seg[idx + 3..].replace('_', "-");
    is_uid(&uid).then_some(uid)
}

fn is_uid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `<id>`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`.
fn container_segment(seg: &str) -> Option<String> {
    let seg = seg.strip_suffix(".scope").unwrap_or(seg);
    let id = seg.rsplit('-').next().unwrap_or(seg);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b9f3c2e-1d4a-4c8e-9f00-1a2b3c4d5e6f";
    const CID: &str = "4f1e9c0a2b3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5061728394a5b6c7d";

    fn want(container: bool) -> Option<PodRef> {
        Some(PodRef {
            pod_uid: UID.into(),
            container_id: container.then(|| CID.into()),
        })
    }

    #[test]
    fn cgroup_v2_systemd_containerd() {
        let p = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(parse(&p), want(true));
    }

    #[test]
    fn cgroup_v2_systemd_guaranteed_crio() {
        let p = format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-{CID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(parse(&p), want(true));
    }

    #[test]
    fn cgroupfs_driver_v1_line() {
        let p = format!("4:memory:/kubepods/besteffort/pod{UID}/{CID}");
        assert_eq!(parse(&p), want(true));
    }

    #[test]
    fn docker_scope_and_pod_level_only() {
        let p = format!("/kubepods/burstable/pod{UID}/docker-{CID}.scope");
        assert_eq!(parse(&p), want(true));
        assert_eq!(parse(&format!("/kubepods/pod{UID}")), want(false));
    }

    #[test]
    fn not_a_pod() {
        for p in [
            "0::/system.slice/containerd.service",
            "0::/user.slice/user-0.slice/session-1.scope",
            "0::/",
            "0::/kubepods.slice/kubepods-podnotauid.slice",
            "",
        ] {
            assert_eq!(parse(p), None, "{p}");
        }
    }

    #[test]
    fn proc_file_prefers_the_v2_line() {
        let text = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{CID}\n1:name=systemd:/\n0::/kubepods/besteffort/pod{UID}/{CID}\n"
        );
        assert_eq!(parse_proc_cgroup(&text), want(true));
        assert_eq!(parse_proc_cgroup("0::/init.scope\n"), None);
    }
}
