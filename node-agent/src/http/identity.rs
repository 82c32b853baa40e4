//! Who a traced process is: its Kubernetes pod (pod UID from
//! `/proc/<pid>/cgroup`, namespace and name from kubelet's pod log
//! directory `/var/log/pods/<namespace>_<pod>_<uid>/`, which exists on every
//! node and needs no apiserver access) or, outside pods, its process name.
//!
//! Answers are cached per process for a minute; the numbers of distinct
//! service names and of distinct pods are capped (then `other`) so label
//! cardinality stays bounded whatever runs on the node, for as long as the
//! agent runs.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bpfleet_httptrace::cgroup;
use bpfleet_httptrace::redact::Redactor;

/// What the metrics label a process with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `service_name`: the pod's only container, else the pod, else the
    /// process name; `unknown` when the process is gone.
    pub service: String,
    /// Empty outside pods.
    pub namespace: String,
    /// Empty outside pods.
    pub pod: String,
    /// The Deployment that owns the pod, when its name says so
    /// ([`deployment_of`]); empty otherwise.
    pub deployment: String,
    /// The process's command line (`/proc/<pid>/cmdline`, arguments joined
    /// by spaces, at most [`MAX_CMDLINE`] bytes read) with the policy's
    /// `redaction` applied: the defaults and `commandLinePatterns`. Empty
    /// when unreadable. Spans only (`process.command_line`), never a
    /// metric label.
    pub command_line: Arc<str>,
}

/// Bytes of `/proc/<pid>/cmdline` read; the rest is cut off (an argument
/// cut in two is redacted as what is left of it).
pub const MAX_CMDLINE: usize = 4096;

/// `/proc/<pid>/cmdline` as one line: NUL-separated arguments joined by
/// spaces, at most [`MAX_CMDLINE`] bytes, lossily decoded.
fn read_cmdline(path: &Path) -> String {
    use std::io::Read;
    let mut raw = Vec::new();
    let read =
        std::fs::File::open(path).and_then(|f| f.take(MAX_CMDLINE as u64).read_to_end(&mut raw));
    if read.is_err() {
        return String::new();
    }
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    args.join(" ")
}

/// Characters of the generated parts of Kubernetes names (apimachinery's
/// safe alphabet: no vowels, no 0, 1 or 3).
const GENERATED: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The Deployment owning a pod, from the pod's name alone. A Deployment
/// names its ReplicaSet `<deployment>-<pod-template-hash>` (a 32-bit hash
/// written in the safe alphabet: 6 to 10 characters in practice) and the
/// ReplicaSet names its pods `<replicaset>-<5 generated characters>`.
/// StatefulSet pods (`<name>-<ordinal>`), DaemonSet and Job pods
/// (`<name>-<5 generated>`) and bare pods give `None`: without the
/// apiserver they cannot be told apart, so no owner is guessed for them.
pub fn deployment_of(pod: &str) -> Option<&str> {
    let generated = |s: &str, len: std::ops::RangeInclusive<usize>| {
        len.contains(&s.len()) && s.bytes().all(|b| GENERATED.contains(&b))
    };
    let (replicaset, suffix) = pod.rsplit_once('-')?;
    let (deployment, hash) = replicaset.rsplit_once('-')?;
    (!deployment.is_empty() && generated(suffix, 5..=5) && generated(hash, 6..=10))
        .then_some(deployment)
}

/// A pod as kubelet's log directory names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// Container names (subdirectories), sorted.
    pub containers: Vec<String>,
}

/// Finds pod `uid` under `pods_dir` (`<namespace>_<pod>_<uid>`).
pub fn pod_from_log_dir(pods_dir: &Path, uid: &str) -> Option<PodInfo> {
    let suffix = format!("_{uid}");
    for ent in std::fs::read_dir(pods_dir).ok()?.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_suffix(&suffix) else {
            continue;
        };
        // Namespaces cannot contain '_', pod names cannot either.
        let Some((namespace, pod)) = rest.split_once('_') else {
            continue;
        };
        let mut containers: Vec<String> = std::fs::read_dir(ent.path())
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        containers.sort();
        return Some(PodInfo {
            namespace: namespace.to_string(),
            name: pod.to_string(),
            containers,
        });
    }
    None
}

const TTL: Duration = Duration::from_secs(60);
const MAX_CACHED: usize = 4096;

/// Resolves and caches identities by process id.
#[derive(Debug)]
pub struct Resolver {
    proc_root: PathBuf,
    pods_dir: PathBuf,
    cache: HashMap<u32, (Instant, Arc<Identity>)>,
    max_services: usize,
    services: HashSet<String>,
    max_pods: usize,
    pods: HashSet<(String, String)>,
    redactor: Arc<Redactor>,
}

impl Resolver {
    /// `redactor` is applied to command lines once per process and minute.
    pub fn new(
        proc_root: PathBuf,
        pods_dir: PathBuf,
        max_services: usize,
        redactor: Arc<Redactor>,
    ) -> Self {
        Self {
            proc_root,
            pods_dir,
            cache: HashMap::new(),
            max_services: max_services.max(1),
            services: HashSet::new(),
            max_pods: max_services.max(1) * 4,
            pods: HashSet::new(),
            redactor,
        }
    }

    /// New redaction rules: every command line is read and redacted again
    /// (the cache is dropped), so none is kept redacted by old rules.
    pub fn set_redactor(&mut self, redactor: Arc<Redactor>) {
        self.redactor = redactor;
        self.cache.clear();
    }

    pub fn resolve(&mut self, tgid: u32) -> Arc<Identity> {
        let now = Instant::now();
        if let Some((at, id)) = self.cache.get(&tgid)
            && now.duration_since(*at) < TTL
        {
            return id.clone();
        }
        if self.cache.len() >= MAX_CACHED {
            self.cache
                .retain(|_, (at, _)| now.duration_since(*at) < TTL);
            if self.cache.len() >= MAX_CACHED {
                self.cache.clear();
            }
        }
        let mut id = self.lookup(tgid);
        if !self.services.contains(&id.service) {
            if self.services.len() < self.max_services {
                self.services.insert(id.service.clone());
            } else {
                id.service = "other".into();
            }
        }
        if !id.pod.is_empty() {
            let pod = (id.namespace.clone(), id.pod.clone());
            if !self.pods.contains(&pod) {
                if self.pods.len() < self.max_pods {
                    self.pods.insert(pod);
                } else {
                    id.pod = "other".into();
                }
            }
        }
        let id = Arc::new(id);
        self.cache.insert(tgid, (now, id.clone()));
        id
    }

    fn lookup(&self, tgid: u32) -> Identity {
        let dir = self.proc_root.join(tgid.to_string());
        let comm = std::fs::read_to_string(dir.join("comm"))
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty());
        let command_line: Arc<str> = self
            .redactor
            .cmdline(&read_cmdline(&dir.join("cmdline")))
            .into();
        let pod = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|t| cgroup::parse_proc_cgroup(&t))
            .and_then(|r| pod_from_log_dir(&self.pods_dir, &r.pod_uid));
        match pod {
            Some(p) => Identity {
                service: match p.containers.as_slice() {
                    [only] => only.clone(),
                    _ => p.name.clone(),
                },
                namespace: p.namespace,
                deployment: deployment_of(&p.name).unwrap_or_default().to_string(),
                pod: p.name,
                command_line,
            },
            None => Identity {
                service: comm.unwrap_or_else(|| "unknown".into()),
                namespace: String::new(),
                pod: String::new(),
                deployment: String::new(),
                command_line,
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const UID: &str = "0b9f3c2e-1d4a-4c8e-9f00-1a2b3c4d5e6f";

    fn fake_proc(root: &Path, pid: u32, comm: &str, cgroup: &str) {
        let d = root.join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
        std::fs::write(d.join("cgroup"), cgroup).unwrap();
    }

    #[test]
    fn pods_from_kubelet_log_dirs_and_processes_by_name() {
        let t = tempfile::tempdir().unwrap();
        let proc_root = t.path().join("proc");
        let pods = t.path().join("pods");
        std::fs::create_dir_all(pods.join(format!("shop_checkout-7d9f_{UID}/api"))).unwrap();
        std::fs::create_dir_all(pods.join("other_x_11111111-2222-3333-4444-555555555555/a"))
            .unwrap();
        fake_proc(
            &proc_root,
            10,
            "checkout",
            &format!(
                "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{}.scope\n",
                UID.replace('-', "_"),
                "a".repeat(64)
            ),
        );
        fake_proc(
            &proc_root,
            11,
            "python3",
            "0::/user.slice/session-1.scope\n",
        );
        let mut r = Resolver::new(proc_root, pods, 10, Default::default());
        assert_eq!(
            *r.resolve(10),
            Identity {
                service: "api".into(),
                namespace: "shop".into(),
                pod: "checkout-7d9f".into(),
                deployment: String::new(),
                command_line: "".into(),
            }
        );
        assert_eq!(r.resolve(11).service, "python3");
        assert_eq!(r.resolve(11).pod, "");
        assert_eq!(r.resolve(12).service, "unknown", "a process that is gone");
    }

    #[test]
    fn deployments_from_replicaset_pod_names() {
        for (pod, want) in [
            ("checkout-7d9f8c6b5d-x2k4q", Some("checkout")),
            ("web-api-5c6b7d8f9-zq2lm", Some("web-api")),
            ("a-b-c-56d7f8b9c4-ww9xz", Some("a-b-c")),
            // StatefulSet, DaemonSet / Job / bare ReplicaSet, plain names.
            ("kafka-0", None),
            ("fluentd-x7k2p", None),
            ("kube-proxy-x7k2p", None),
            ("checkout-7d9f", None),
            // A vowel, or a 1, is never generated.
            ("checkout-7d9f8c6b5a-x2k4q", None),
            ("checkout-7d9f8c6b5d-x2k1q", None),
            ("-7d9f8c6b5d-x2k4q", None),
            ("", None),
        ] {
            assert_eq!(deployment_of(pod), want, "{pod}");
        }
    }

    #[test]
    fn a_deployments_pod_names_its_owner() {
        let t = tempfile::tempdir().unwrap();
        let proc_root = t.path().join("proc");
        let pods = t.path().join("pods");
        std::fs::create_dir_all(pods.join(format!("shop_checkout-7d9f8c6b5d-x2k4q_{UID}/api")))
            .unwrap();
        fake_proc(
            &proc_root,
            10,
            "checkout",
            &format!("0::/kubepods/pod{UID}/{}\n", "c".repeat(64)),
        );
        let mut r = Resolver::new(proc_root, pods, 10, Default::default());
        let id = r.resolve(10);
        assert_eq!(
            (id.pod.as_str(), id.deployment.as_str()),
            ("checkout-7d9f8c6b5d-x2k4q", "checkout")
        );
    }

    #[test]
    fn pods_are_capped() {
        let t = tempfile::tempdir().unwrap();
        let proc_root = t.path().join("proc");
        let pods = t.path().join("pods");
        // One service name (the container "api"), five pods: the cap is
        // four pods per allowed service.
        for i in 0..5u32 {
            let uid = format!("0b9f3c2e-1d4a-4c8e-9f00-00000000000{i}");
            std::fs::create_dir_all(pods.join(format!("shop_api-{i}_{uid}/api"))).unwrap();
            fake_proc(
                &proc_root,
                100 + i,
                "api",
                &format!("0::/kubepods/pod{uid}/{}\n", "b".repeat(64)),
            );
        }
        let mut r = Resolver::new(proc_root, pods, 1, Default::default());
        let got: Vec<String> = (0..5).map(|i| r.resolve(100 + i).pod.clone()).collect();
        assert_eq!(got, ["api-0", "api-1", "api-2", "api-3", "other"]);
        assert_eq!(r.resolve(104).service, "api");
    }

    #[test]
    fn service_names_are_capped() {
        let t = tempfile::tempdir().unwrap();
        for (pid, comm) in [(1, "a"), (2, "b"), (3, "c")] {
            fake_proc(t.path(), pid, comm, "0::/\n");
        }
        let mut r = Resolver::new(
            t.path().into(),
            t.path().join("none"),
            2,
            Default::default(),
        );
        assert_eq!(r.resolve(1).service, "a");
        assert_eq!(r.resolve(2).service, "b");
        assert_eq!(r.resolve(3).service, "other");
        assert_eq!(r.resolve(1).service, "a");
    }

    #[test]
    fn command_lines_are_read_whole_and_redacted_by_the_rules_in_force() {
        let t = tempfile::tempdir().unwrap();
        fake_proc(t.path(), 7, "app", "0::/\n");
        std::fs::write(
            t.path().join("7/cmdline"),
            b"/usr/bin/app\0--password\0hunter2\0--pin=1234\0--port\08080\0",
        )
        .unwrap();
        fake_proc(t.path(), 8, "big", "0::/\n");
        std::fs::write(t.path().join("8/cmdline"), vec![b'x'; 3 * MAX_CMDLINE]).unwrap();
        let mut r = Resolver::new(
            t.path().into(),
            t.path().join("none"),
            10,
            Default::default(),
        );
        // The built-in rules only: the password goes, the pin stays.
        assert_eq!(
            &*r.resolve(7).command_line,
            "/usr/bin/app --password [REDACTED] --pin=1234 --port 8080"
        );
        assert_eq!(r.resolve(8).command_line.len(), MAX_CMDLINE);
        assert_eq!(&*r.resolve(9).command_line, "", "a process that is gone");
        // New rules apply at once, not after the cache's minute.
        let policy = Redactor::new(&[], &[], &["(--pin=)\\S+".into()], false).unwrap();
        r.set_redactor(Arc::new(policy));
        assert_eq!(
            &*r.resolve(7).command_line,
            "/usr/bin/app --password [REDACTED] --pin=[REDACTED] --port 8080"
        );
    }
}
