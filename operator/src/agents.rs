//! Finding and calling node agents.
//!
//! An agent is found, per Node, by (1) the Node annotation
//! `bpfleet.dev/agent-endpoint` — `unix:///path/agent.sock` or
//! `https://host:port` — which suits agents that are not pods (the local
//! demo, the tests, nodes outside the cluster's pod network); otherwise
//! (2) the Running pod on that node matching the agent label selector in the
//! agent namespace, at `https://<podIP>:<agent-port>`. HTTPS always means
//! mutual TLS: the operator presents its client certificate and checks the
//! agent's against the agent CA and the expected name.
//!
//! Channels are created lazily and cached per endpoint; tonic reconnects
//! them, so a restarted agent is picked up without operator action.
//!
//! [`agent_fetch`] is the one observation call ([`crate::cache`]'s
//! [`Fetch`]): an agent's `List` and `Stats` of every program. The calls
//! that change a node (Load, Activate, Rollback, Unload, UpdateConfig) are
//! made by the reconcilers through [`Pool::client`]. This module knows
//! nothing of rollouts or of the apiserver.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bpfleet_proto::v1 as pb;
use bpfleet_proto::v1::agent_client::AgentClient;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Node, Pod};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use tracing::warn;

use crate::cache::Fetch;
use crate::metrics::Metrics;
use crate::observe::NodeView;
use crate::{Error, Result};

/// Node annotation naming the agent endpoint explicitly.
pub const ENDPOINT_ANNOTATION: &str = "bpfleet.dev/agent-endpoint";
/// Agent calls in flight at once: the operator-wide limit of the cache's
/// observations (each one `List` and one `Stats`), and of the writes of one
/// policy sync.
pub const AGENT_FANOUT: usize = 64;
/// Largest gRPC message either way (object bytes travel in Load).
pub const MAX_MESSAGE: usize = 64 << 20;

/// mTLS material for agents reached over HTTPS.
#[derive(Clone, Debug)]
pub struct Tls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Name the agent certificates carry (checked instead of the pod IP).
    pub server_name: String,
}

/// How the operator finds and reaches agents.
#[derive(Clone, Debug)]
pub struct Discovery {
    pub port: u16,
    pub namespace: String,
    /// `key=value` pairs, comma separated.
    pub selector: String,
}

pub struct Pool {
    tls: Option<Tls>,
    connect_timeout: Duration,
    request_timeout: Duration,
    clients: Mutex<HashMap<String, AgentClient<Channel>>>,
}

impl Pool {
    pub fn new(tls: Option<Tls>, request_timeout: Duration) -> Self {
        Pool {
            tls,
            connect_timeout: Duration::from_secs(3),
            request_timeout,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// A client for `endpoint`, created on first use.
    pub fn client(&self, endpoint: &str) -> Result<AgentClient<Channel>> {
        // A poisoned lock only means another task panicked while inserting;
        // the map itself is still a valid cache.
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(endpoint) {
            return Ok(c.clone());
        }
        let channel = self.channel(endpoint)?;
        let client = AgentClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        clients.insert(endpoint.to_string(), client.clone());
        Ok(client)
    }

    /// Drops the cached channel of `endpoint` (after a transport failure).
    pub fn forget(&self, endpoint: &str) {
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(endpoint);
    }

    fn channel(&self, endpoint: &str) -> Result<Channel> {
        if let Some(path) = endpoint.strip_prefix("unix://") {
            let path = PathBuf::from(path);
            let ep = Endpoint::try_from("http://agent.local")
                .map_err(|e| Error::Agent(format!("{endpoint}: {e}")))?
                .connect_timeout(self.connect_timeout)
                .timeout(self.request_timeout);
            return Ok(
                ep.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                })),
            );
        }
        if endpoint.starts_with("https://") {
            let Some(tls) = &self.tls else {
                return Err(Error::Agent(format!(
                    "{endpoint}: HTTPS endpoints need --agent-ca, --client-cert and --client-key"
                )));
            };
            let cfg = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
                .domain_name(tls.server_name.clone());
            let ep = Endpoint::from_shared(endpoint.to_string())
                .map_err(|e| Error::Agent(format!("{endpoint}: {e}")))?
                .tls_config(cfg)
                .map_err(|e| Error::Agent(format!("{endpoint}: TLS configuration: {e}")))?
                .connect_timeout(self.connect_timeout)
                .timeout(self.request_timeout);
            return Ok(ep.connect_lazy());
        }
        Err(Error::Agent(format!(
            "endpoint {endpoint:?} is neither unix:///path nor https://host:port"
        )))
    }
}

/// Parses `key=value,key2=value2` (the subset of label selectors the agent
/// discovery needs).
pub fn parse_selector(s: &str) -> Result<Vec<(String, String)>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| {
                    Error::Config(format!(
                        "--agent-selector: {p:?} is not key=value (e.g. app.kubernetes.io/component=agent)"
                    ))
                })
        })
        .collect()
}

/// The endpoint of the agent on `node`: its annotation, else a Running agent
/// pod on it. None when neither exists.
pub fn endpoint<'a>(
    node: &Node,
    pods: impl IntoIterator<Item = &'a Pod>,
    d: &Discovery,
    selector: &[(String, String)],
) -> Option<String> {
    endpoint_in(node, &pod_endpoints(pods, d, selector))
}

/// [`endpoint`] with the agent pods already indexed by [`pod_endpoints`]
/// (one pass over the pods for a whole fleet of nodes).
pub fn endpoint_in(node: &Node, pod_endpoints: &HashMap<String, String>) -> Option<String> {
    if let Some(e) = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ENDPOINT_ANNOTATION))
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
    {
        return Some(e.to_string());
    }
    pod_endpoints.get(node.metadata.name.as_deref()?).cloned()
}

/// The endpoint of the first Running agent pod of each node, by node name.
pub fn pod_endpoints<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    d: &Discovery,
    selector: &[(String, String)],
) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for p in pods {
        if p.metadata.namespace.as_deref() != Some(d.namespace.as_str()) {
            continue;
        }
        let labels = p.metadata.labels.as_ref();
        if !selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        {
            continue;
        }
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        let Some(st) = p.status.as_ref() else {
            continue;
        };
        if st.phase.as_deref() != Some("Running") || out.contains_key(node) {
            continue;
        }
        let Some(ip) = st.pod_ip.as_deref() else {
            continue;
        };
        let e = if ip.contains(':') {
            format!("https://[{ip}]:{}", d.port)
        } else {
            format!("https://{ip}:{}", d.port)
        };
        out.insert(node.to_string(), e);
    }
    out
}

/// The cache's call to an agent: its `List` and `Stats` of every program
/// (or of the one named), both at once, within `timeout`.
pub fn agent_fetch(pool: Arc<Pool>, metrics: Arc<Metrics>, timeout: Duration) -> Fetch {
    Arc::new(
        move |node: String, endpoint: String, scope: Option<String>| {
            let (pool, metrics) = (pool.clone(), metrics.clone());
            Box::pin(async move {
                let client = match pool.client(&endpoint) {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(%node, error = %e, "no client for agent");
                        return None;
                    }
                };
                let (mut lc, mut sc) = (client.clone(), client);
                // One program's look is counted apart: it says how often an
                // action kept the node's answer of every program from serving.
                let call = if scope.is_some() {
                    "observe_program"
                } else {
                    "observe"
                };
                let program = scope.unwrap_or_default();
                let program2 = program.clone();
                // NotFound from an agent means it holds nothing.
                let list = async move {
                    match lc.list(pb::ListRequest { program }).await {
                        Ok(r) => Ok(r.into_inner()),
                        Err(s) if s.code() == tonic::Code::NotFound => {
                            Ok(pb::ListResponse::default())
                        }
                        Err(s) => Err(s),
                    }
                };
                let stats = async move {
                    match sc.stats(pb::StatsRequest { program: program2 }).await {
                        Ok(r) => Ok(r.into_inner()),
                        Err(s) if s.code() == tonic::Code::NotFound => {
                            Ok(pb::StatsResponse::default())
                        }
                        Err(s) => Err(s),
                    }
                };
                match tokio::time::timeout(timeout, futures::future::try_join(list, stats)).await {
                    Ok(Ok((list, stats))) => {
                        metrics.call(call, "ok");
                        Some(NodeView::from_answers(&list, &stats))
                    }
                    Ok(Err(status)) => {
                        metrics.call(call, "unreachable");
                        warn!(%node, %endpoint, code = ?status.code(), message = %status.message(), "agent did not answer List/Stats");
                        if matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::Unknown
                        ) {
                            pool.forget(&endpoint);
                        }
                        None
                    }
                    Err(_) => {
                        metrics.call(call, "unreachable");
                        warn!(%node, %endpoint, "agent timed out on List/Stats");
                        pool.forget(&endpoint);
                        None
                    }
                }
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;

    fn node(name: &str, ann: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: ann
                    .map(|a| BTreeMap::from([(ENDPOINT_ANNOTATION.to_string(), a.to_string())])),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn pod(ns: &str, node: &str, ip: &str, phase: &str, component: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/component".to_string(),
                    component.to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: Some(ip.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn annotation_wins_then_running_agent_pod_on_the_node() {
        let d = Discovery {
            port: 50051,
            namespace: "bpfleet-system".into(),
            selector: String::new(),
        };
        let sel = parse_selector("app.kubernetes.io/component=agent").unwrap();
        let pods = [
            pod("bpfleet-system", "n1", "10.0.0.9", "Pending", "agent"),
            pod("other", "n1", "10.0.0.8", "Running", "agent"),
            pod("bpfleet-system", "n1", "10.0.0.7", "Running", "operator"),
            pod("bpfleet-system", "n2", "10.0.0.6", "Running", "agent"),
            pod("bpfleet-system", "n1", "fd00::5", "Running", "agent"),
        ];
        assert_eq!(
            endpoint(&node("n1", Some("unix:///run/a.sock")), &pods, &d, &sel).as_deref(),
            Some("unix:///run/a.sock")
        );
        assert_eq!(
            endpoint(&node("n1", None), &pods, &d, &sel).as_deref(),
            Some("https://[fd00::5]:50051")
        );
        assert_eq!(
            endpoint(&node("n2", None), &pods, &d, &sel).as_deref(),
            Some("https://10.0.0.6:50051")
        );
        assert_eq!(endpoint(&node("n3", None), &pods, &d, &sel), None);
    }

    #[test]
    fn selectors_and_endpoints_are_checked() {
        assert!(parse_selector("a=b, c=d").unwrap().len() == 2);
        let e = parse_selector("a").unwrap_err().to_string();
        assert!(e.contains("--agent-selector"), "{e}");
        let pool = Pool::new(None, Duration::from_secs(1));
        let e = pool.channel("https://10.0.0.1:1").unwrap_err().to_string();
        assert!(e.contains("--agent-ca"), "{e}");
        let e = pool.channel("tcp://x").unwrap_err().to_string();
        assert!(e.contains("neither unix"), "{e}");
    }
}
