//! Wiring: command-line arguments, the kube client, reflectors for Nodes,
//! agent Pods and TracerPolicies, leader election, the metrics endpoint and
//! the controller. `bpfleet-operator --help` documents every flag.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bpfleet_api::{TracerPolicy, TracerProgram};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::{error, info, warn};

use crate::agents::{self, AGENT_FANOUT, Discovery, Pool, Tls, agent_fetch};
use crate::cache::NodeCache;
use crate::controller::{Context, error_policy, reconcile};
use crate::leader::{self, LeaseConfig};
use crate::metrics::{self, Metrics};
use crate::policy::{self, PolicyContext};
use crate::{Error, Result, slim};

/// bpfleet operator: rolls TracerPrograms out to node agents (immediate,
/// canary, blue-green), gates them on health, rolls back, and keeps the
/// version registry in status.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "bpfleet-operator", version)]
pub struct Args {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "BPFLEET_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// Namespace of the operator: its Lease and the revision snapshots
    /// (ControllerRevisions) live here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "bpfleet-system")]
    pub namespace: String,
    /// Namespace of the agent pods (default: --namespace).
    #[arg(long)]
    pub agent_namespace: Option<String>,
    /// Labels (key=value,...) of the agent pods.
    #[arg(long, default_value = "app.kubernetes.io/component=agent")]
    pub agent_selector: String,
    /// gRPC port of agent pods.
    #[arg(long, default_value_t = 50051)]
    pub agent_port: u16,
    /// CA that signed the agents' server certificates (PEM).
    #[arg(long, env = "BPFLEET_AGENT_CA", requires_all = ["client_cert", "client_key"])]
    pub agent_ca: Option<PathBuf>,
    /// The operator's client certificate for mTLS to agents (PEM).
    #[arg(long, env = "BPFLEET_CLIENT_CERT", requires = "agent_ca")]
    pub client_cert: Option<PathBuf>,
    /// Key of --client-cert (PEM).
    #[arg(long, env = "BPFLEET_CLIENT_KEY", requires = "agent_ca")]
    pub client_key: Option<PathBuf>,
    /// Name the agents' certificates carry (checked instead of pod IPs).
    #[arg(long, default_value = "bpfleet-agent")]
    pub agent_tls_name: String,
    /// Timeout of one mutating agent call (Load can take seconds for big
    /// objects: the verifier runs).
    #[arg(long, default_value_t = 60)]
    pub agent_timeout_seconds: u64,
    /// Timeout of the List and Stats calls that observe a node.
    #[arg(long, default_value_t = 5)]
    pub observe_timeout_seconds: u64,
    /// How long one answer of an agent's List and Stats serves every
    /// program's reconcile. Never after the operator acted on that node for
    /// the program: that program's next look asks the agent again.
    #[arg(long, default_value_t = 2000)]
    pub observe_max_age_millis: u64,
    /// Look at every program at least this often (drift on nodes).
    #[arg(long, default_value_t = 30)]
    pub resync_seconds: u64,
    /// TracerPrograms reconciled at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u16,
    /// A program loaded on a node that no TracerProgram wants (deleted
    /// while the node's agent was away, a finalizer removed by force, a
    /// node that came back) is reported on the Node (event OrphanFound)
    /// and unloaded after this many seconds (OrphanUnloaded); 0 never
    /// unloads nor looks for them.
    #[arg(long, default_value_t = 600)]
    pub orphan_grace_seconds: u64,
    /// How often every agent is asked what it holds, for orphans.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub orphan_sweep_seconds: u64,
    /// Run only while holding the leader Lease (for several replicas).
    #[arg(long)]
    pub leader_elect: bool,
    #[arg(long, default_value = "bpfleet-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (default: --namespace).
    #[arg(long)]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease and in events (default: host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Log lines on stdout: `text` (for people; colours only on a
    /// terminal) or `json` (one object per line with `timestamp`, `level`,
    /// `message`, the event's fields and `target`, for a log pipeline).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Triggers of one program within this window make one reconcile (a
/// status write and the watch event it causes, node and pod bursts).
const DEBOUNCE: Duration = Duration::from_millis(500);

fn read(path: &PathBuf, flag: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Config(format!("{flag} {}: {e}", path.display())))
}

fn identity(args: &Args) -> String {
    args.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| format!("bpfleet-operator-{}", std::process::id()))
    })
}

/// A stream that yields `()` whenever the hashed property of some object
/// changes, appears or disappears; used to re-reconcile every program when
/// nodes, agent pods or policies change in ways that matter.
fn changes<K, S>(stream: S, property: fn(&K) -> u64) -> impl Stream<Item = ()> + Send + 'static
where
    K: Resource + Clone + Send + 'static,
    S: Stream<Item = std::result::Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let mut seen: HashMap<String, u64> = HashMap::new();
    stream.filter_map(move |ev| {
        let fire = match ev {
            Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                let key = format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
                let h = property(&o);
                seen.insert(key, h) != Some(h)
            }
            Ok(watcher::Event::Delete(o)) => {
                let key = format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
                seen.remove(&key).is_some()
            }
            Ok(watcher::Event::Init) | Ok(watcher::Event::InitDone) => false,
            Err(e) => {
                warn!(error = %e, "watch error (retrying with backoff)");
                false
            }
        };
        std::future::ready(fire.then_some(()))
    })
}

fn hash<T: Hash>(t: T) -> u64 {
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

fn node_property(n: &Node) -> u64 {
    let cpu = n
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("cpu"))
        .map(|q| q.0.clone());
    hash((
        n.labels(),
        n.annotations().get(agents::ENDPOINT_ANNOTATION),
        cpu,
    ))
}

fn pod_property(p: &Pod) -> u64 {
    let st = p.status.as_ref();
    hash((
        p.spec.as_ref().and_then(|s| s.node_name.clone()),
        st.and_then(|s| s.phase.clone()),
        st.and_then(|s| s.pod_ip.clone()),
    ))
}

fn policy_property(p: &TracerPolicy) -> u64 {
    hash((p.metadata.generation, p.labels()))
}

/// A reflector store of `api`'s objects as `slim` leaves them.
fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
    slim: fn(&mut K),
) -> (
    Store<K>,
    impl Stream<Item = std::result::Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, cfg).default_backoff().modify(slim));
    (reader, stream)
}

/// Runs the operator until a signal, a lost lease or a fatal error, with
/// the client of the environment (in-cluster, or KUBECONFIG).
pub async fn run(args: Args) -> Result<()> {
    let client = Client::try_default().await?;
    run_with(client, args).await
}

/// [`run`] with a given client (tests run the operator in-process against
/// their own apiserver).
pub async fn run_with(client: Client, args: Args) -> Result<()> {
    let metrics = Metrics::new();
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|e| Error::Config(format!("--metrics-listen {}: {e}", args.metrics_listen)))?;
    let addr = listener.local_addr().unwrap_or(args.metrics_listen);
    info!(%addr, "serving /metrics, /healthz, /readyz");
    let m = metrics.clone();
    tokio::spawn(async move {
        if let Err(e) = metrics::serve(listener, m).await {
            error!(error = %e, "metrics endpoint stopped");
        }
    });

    let tls = match (&args.agent_ca, &args.client_cert, &args.client_key) {
        (Some(ca), Some(cert), Some(key)) => Some(Tls {
            ca_pem: read(ca, "--agent-ca")?,
            cert_pem: read(cert, "--client-cert")?,
            key_pem: read(key, "--client-key")?,
            server_name: args.agent_tls_name.clone(),
        }),
        _ => None,
    };
    let agent_selector = agents::parse_selector(&args.agent_selector)?;
    let identity = identity(&args);

    let lease = LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| args.namespace.clone()),
        identity: identity.clone(),
        duration: Duration::from_secs(15),
        renew: Duration::from_secs(5),
    };
    if !args.leader_elect {
        return operate(client, &args, &metrics, tls, agent_selector, &identity).await;
    }
    // Ready while standing by: a follower is healthy, just idle.
    metrics.ready.store(true, Ordering::Relaxed);
    loop {
        leader::acquire(&client, &lease).await?;
        metrics.leader.set(1);
        let lost = tokio::select! {
            r = operate(client.clone(), &args, &metrics, tls.clone(), agent_selector.clone(), &identity) => return r,
            e = leader::hold(&client, &lease) => e,
        };
        // Dropping `operate` stopped every reconcile, watch and agent call
        // of this term before another replica can take the lease. Stand by
        // and campaign again, in this process: an apiserver that is away
        // longer than the lease (an upgrade, a restart) must not restart
        // every replica.
        metrics.leader.set(0);
        warn!(error = %lost, "stopped reconciling: the leader lease is lost; campaigning again");
    }
}

/// Watches, the controllers and the agent pool of one term: until a
/// signal (as leader: until the lease is lost, when the caller drops it).
async fn operate(
    client: Client,
    args: &Args,
    metrics: &Arc<Metrics>,
    tls: Option<Tls>,
    agent_selector: Vec<(String, String)>,
    identity: &str,
) -> Result<()> {
    let agent_namespace = args
        .agent_namespace
        .clone()
        .unwrap_or_else(|| args.namespace.clone());
    let (nodes, node_events) = reflect(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        slim::node,
    );
    let (pods, pod_events) = reflect(
        Api::<Pod>::namespaced(client.clone(), &agent_namespace),
        watcher::Config::default().labels(&args.agent_selector),
        slim::pod,
    );
    let (policies, policy_events) = reflect(
        Api::<TracerPolicy>::all(client.clone()),
        watcher::Config::default(),
        |p: &mut TracerPolicy| p.managed_fields_mut().clear(),
    );
    let trigger = futures::stream::select_all([
        changes(node_events, node_property).boxed(),
        changes(pod_events, pod_property).boxed(),
        changes(policy_events, policy_property).boxed(),
    ]);

    let pool = Arc::new(Pool::new(
        tls,
        Duration::from_secs(args.agent_timeout_seconds),
    ));
    let cache = NodeCache::new(
        Duration::from_millis(args.observe_max_age_millis),
        AGENT_FANOUT,
        agent_fetch(
            pool.clone(),
            metrics.clone(),
            Duration::from_secs(args.observe_timeout_seconds),
        ),
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "bpfleet-operator".into(),
                instance: Some(identity.to_string()),
            },
        ),
        metrics: metrics.clone(),
        pool,
        cache,
        discovery: Discovery {
            port: args.agent_port,
            namespace: agent_namespace,
            selector: args.agent_selector.clone(),
        },
        agent_selector,
        nodes: nodes.clone(),
        pods: pods.clone(),
        policies: policies.clone(),
        namespace: args.namespace.clone(),
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        debounce: DEBOUNCE,
        samples: Mutex::default(),
        failures: Mutex::default(),
        snapshots: Mutex::default(),
        refusals: Mutex::default(),
        started: Instant::now(),
    });

    let programs: Api<TracerProgram> = Api::all(client.clone());
    let controller = Controller::new(programs, watcher::Config::default())
        .with_config(
            controller::Config::default()
                .concurrency(args.concurrency)
                .debounce(DEBOUNCE),
        )
        .reconcile_all_on(trigger)
        .shutdown_on_signal();

    // TracerPolicy status, from the programs' statuses: every program
    // change looks at every policy (policies are few; a program may have
    // left a policy's selector as well as entered it).
    let policy_ctx = Arc::new(PolicyContext {
        client: client.clone(),
        programs: controller.store(),
        policies: policies.clone(),
        metrics: metrics.clone(),
    });
    let policy_controller = Controller::new(
        Api::<TracerPolicy>::all(client.clone()),
        watcher::Config::default(),
    );
    let all_policies = policy_controller.store();
    let policy_controller = policy_controller
        .watches(
            Api::<TracerProgram>::all(client.clone()),
            watcher::Config::default(),
            move |_: TracerProgram| {
                all_policies
                    .state()
                    .iter()
                    .map(|p| ObjectRef::from_obj(&**p))
                    .collect::<Vec<_>>()
            },
        )
        .with_config(controller::Config::default().debounce(DEBOUNCE))
        .shutdown_on_signal();

    // The reflectors run as part of the trigger stream; wait for their
    // first lists before the first reconcile sees an empty node set.
    let ready = {
        let (n, p, q, m) = (
            nodes.clone(),
            pods.clone(),
            policies.clone(),
            metrics.clone(),
        );
        async move {
            let _ = tokio::join!(
                n.wait_until_ready(),
                p.wait_until_ready(),
                q.wait_until_ready()
            );
            m.ready.store(true, Ordering::Relaxed);
            info!("caches synced");
        }
    };
    let orphan_sweep = {
        let (ctx, store) = (ctx.clone(), controller.store());
        let grace = Duration::from_secs(args.orphan_grace_seconds);
        let every = Duration::from_secs(args.orphan_sweep_seconds);
        async move {
            if !grace.is_zero() {
                crate::controller::orphans::sweep(ctx, store, grace, every).await;
            }
        }
    };
    let run = async {
        // The controller drives the trigger stream (and so the reflectors);
        // reconciles that start before the caches are ready see the stores
        // block in `targets` until they are.
        // A sweep that is off ends at once: the controllers alone decide
        // when a term ends.
        let sweep = async {
            orphan_sweep.await;
            std::future::pending::<()>().await;
        };
        let controllers = async {
            tokio::join!(
                ready,
                controller
                    .run(
                        |tp, ctx| async move {
                            ctx.nodes.wait_until_ready().await.ok();
                            ctx.pods.wait_until_ready().await.ok();
                            ctx.policies.wait_until_ready().await.ok();
                            reconcile(tp, ctx).await
                        },
                        error_policy,
                        ctx,
                    )
                    .for_each(|res| async move {
                        if let Err(e) = res {
                            tracing::debug!(error = %e, "controller");
                        }
                    }),
                policy_controller
                    .run(
                        |p, ctx| async move {
                            ctx.programs.wait_until_ready().await.ok();
                            ctx.policies.wait_until_ready().await.ok();
                            policy::reconcile(p, ctx).await
                        },
                        policy::error_policy,
                        policy_ctx,
                    )
                    .for_each(|res| async move {
                        if let Err(e) = res {
                            tracing::debug!(error = %e, "policy controller");
                        }
                    })
            )
        };
        tokio::select! {
            _ = controllers => {}
            () = sweep => {}
        }
    };
    run.await;
    Ok(())
}

/// Sets up logging as `--log-format` says (RUST_LOG filters, default info).
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        // One object per line, the event's message and fields at the top
        // level beside `timestamp`, `level` and `target`.
        b.json().flatten_event(true).init();
    } else {
        use std::io::IsTerminal;
        b.with_ansi(std::io::stdout().is_terminal()).init();
    }
}
