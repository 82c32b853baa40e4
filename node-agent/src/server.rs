//! The gRPC front of the agent: the `bpfleet.agent.v1.Agent` service over a
//! node-local Unix socket and over TCP with mutual TLS (rustls; only client
//! certificates chaining to the configured CA are accepted, and of those
//! only the ones carrying a `--client-identity`, checked by [`PinnedLayer`]
//! in front of every service of the TCP server), plus the
//! Prometheus endpoint and HTTP API. Every call runs the agent core on a
//! blocking thread. With the HTTP tracer runtime on ([`crate::http`]),
//! Stats fills `RevisionStats.http` for tracer revisions.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bpfleet_proto::v1::{self as pb, agent_server::AgentServer};
use sha2::{Digest, Sha256};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::codegen::{BoxFuture, http};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::agent::Agent;
use crate::agent::usage::SAMPLE_PERIOD;
use crate::audit::Audit;
use crate::error::{Error, Result};
use crate::http::{HttpConfig, Hub, runtime::Runtime};
use crate::metrics::Metrics;

/// Largest gRPC message accepted (objects travel inline).
pub const MAX_MESSAGE: usize = 32 << 20;

/// mTLS material (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Server certificate chain.
    pub cert: PathBuf,
    /// Server private key.
    pub key: PathBuf,
    /// CA that client certificates must chain to.
    pub client_ca: PathBuf,
    /// Identities a client certificate must carry ([`crate::peer`]); a
    /// TCP listener refuses to start with none.
    pub client_identities: Vec<String>,
}

/// Checks `--client-identity` values: non-empty, no spaces or wildcards
/// (matching is exact, so a `*` would only ever match itself).
pub fn check_identities(ids: &[String]) -> Result<Vec<String>> {
    for id in ids {
        if id.is_empty() || id.contains(char::is_whitespace) || id.contains('*') {
            return Err(Error::Invalid(format!(
                "--client-identity {id:?}: must be a non-empty name without spaces or `*` \
                 (a DNS or URI subject alternative name, or a common name)"
            )));
        }
    }
    Ok(ids.to_vec())
}

/// A tower layer over the whole TCP server: every request (each RPC, read
/// only or not, of every service added) is refused with PermissionDenied
/// unless the client's certificate carries an allowed identity; each
/// refusal is logged and audited with the refused subject and the method.
#[derive(Clone)]
pub struct PinnedLayer {
    allowed: Arc<Vec<String>>,
    audit: Arc<Audit>,
}

impl PinnedLayer {
    /// Admits only `allowed`; refusals go to `audit`.
    pub fn new(allowed: Vec<String>, audit: Audit) -> Self {
        Self {
            allowed: Arc::new(allowed),
            audit: Arc::new(audit),
        }
    }

    /// The verdict on one request's connection.
    fn check<B>(&self, req: &http::Request<B>) -> Result<(), Status> {
        let info = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
        let leaf = info
            .and_then(TlsConnectInfo::peer_certs)
            .and_then(|c| c.first().map(|l| l.as_ref().to_vec()));
        let (who, refused) = match leaf {
            None => (
                "x509:none".to_string(),
                Error::Denied("no client certificate".into()),
            ),
            Some(der) => match crate::peer::admit(&der, &self.allowed) {
                Ok(_) => return Ok(()),
                Err(e) => (cert_actor(&der), e),
            },
        };
        let remote = info
            .and_then(|i| i.get_ref().remote_addr())
            .map_or_else(String::new, |a| a.to_string());
        let method = req.uri().path();
        tracing::warn!(actor = %who, %remote, method, error = %refused, "client refused");
        self.audit
            .write(&who, method, "", "", refused.kind(), &refused.to_string());
        Err(refused.into())
    }
}

impl<S> tower::Layer<S> for PinnedLayer {
    type Service = Pinned<S>;
    fn layer(&self, inner: S) -> Pinned<S> {
        Pinned {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`PinnedLayer`] wraps around the server's routes.
#[derive(Clone)]
pub struct Pinned<S> {
    inner: S,
    layer: PinnedLayer,
}

impl<S, B> tower::Service<http::Request<B>> for Pinned<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match self.layer.check(&req) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

/// Where the agent listens.
#[derive(Debug, Clone, Default)]
pub struct Listen {
    /// Node-local Unix socket.
    pub unix: Option<PathBuf>,
    /// TCP address for the operator (mTLS required).
    pub tcp: Option<SocketAddr>,
    /// mTLS material for `tcp`.
    pub tls: Option<TlsFiles>,
    /// Prometheus endpoint.
    pub metrics: Option<SocketAddr>,
}

/// The tonic service.
#[derive(Clone)]
pub struct AgentService {
    agent: Arc<Mutex<Agent>>,
    metrics: Arc<Metrics>,
    hub: Option<Arc<Hub>>,
}

impl AgentService {
    /// Service over a shared agent.
    pub fn new(agent: Arc<Mutex<Agent>>, metrics: Arc<Metrics>) -> Self {
        Self {
            agent,
            metrics,
            hub: None,
        }
    }

    /// Service whose Stats carries the HTTP figures of `hub`.
    pub fn with_http(agent: Arc<Mutex<Agent>>, metrics: Arc<Metrics>, hub: Arc<Hub>) -> Self {
        Self {
            agent,
            metrics,
            hub: Some(hub),
        }
    }

    /// The agent's image side, taken under a short lock.
    async fn images(&self) -> Result<Arc<crate::image::Images>, Status> {
        let agent = self.agent.clone();
        tokio::task::spawn_blocking(move || {
            agent
                .lock()
                .map(|a| a.images())
                .map_err(|_| Status::from(crate::agent::poisoned()))
        })
        .await
        .map_err(|e| Status::internal(format!("agent task failed: {e}")))?
    }

    async fn run<T, F>(&self, op: &'static str, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&mut Agent) -> Result<T> + Send + 'static,
    {
        let agent = self.agent.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut a = agent.lock().map_err(|_| crate::agent::poisoned())?;
            f(&mut a)
        })
        .await
        .map_err(|e| Status::internal(format!("agent task failed: {e}")))?;
        self.record(op, res)
    }

    /// [`Self::run`] for an operation of a few microseconds that never
    /// waits on the kernel for long (a switch: one map write or
    /// `bpf_link_update`, the state file written by its own thread). When
    /// the agent is free it runs right here on the gRPC task, saving the
    /// two thread hand-offs of a blocking task (most of a switch's latency
    /// over gRPC); when a Load or another call holds the agent, it waits
    /// on a blocking thread like any call.
    async fn run_quick<T, F>(&self, op: &'static str, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&mut Agent) -> Result<T> + Send + 'static,
    {
        // The guard goes with this statement, before any await.
        let f = match self.agent.try_lock() {
            Ok(mut a) => return self.record(op, f(&mut a)),
            Err(std::sync::TryLockError::Poisoned(_)) => {
                return self.record(op, Err(crate::agent::poisoned()));
            }
            Err(std::sync::TryLockError::WouldBlock) => f,
        };
        self.run(op, f).await
    }

    fn record<T>(&self, op: &'static str, res: Result<T>) -> Result<T, Status> {
        match res {
            Ok(v) => {
                self.metrics.record(op, "ok");
                Ok(v)
            }
            Err(e) => {
                self.metrics.record(op, e.kind());
                Err(e.into())
            }
        }
    }
}

/// A client certificate as the audit log names it: subject and the start
/// of its SHA-256.
fn cert_actor(leaf: &[u8]) -> String {
    let fp = hex::encode(&Sha256::digest(leaf)[..8]);
    let subject = x509_parser::parse_x509_certificate(leaf)
        .ok()
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_else(|| "unparsable".into());
    format!("x509:{subject} sha256:{fp}")
}

/// Who is calling: certificate subject for mTLS, credentials on the socket.
pub fn actor<T>(req: &Request<T>) -> String {
    if let Some(certs) = req.peer_certs()
        && let Some(leaf) = certs.first()
    {
        return cert_actor(leaf.as_ref());
    }
    if let Some(info) = req.extensions().get::<UdsConnectInfo>()
        && let Some(cred) = &info.peer_cred
    {
        return format!("unix:uid={},pid={}", cred.uid(), cred.pid().unwrap_or(0));
    }
    req.remote_addr()
        .map_or_else(|| "unknown".into(), |a| format!("tcp:{a}"))
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn load(
        &self,
        req: Request<pb::LoadRequest>,
    ) -> Result<Response<pb::LoadResponse>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        // An image is pulled (or found in the node cache) before the agent
        // is locked: a slow registry holds up no other call.
        let fetched = match &r.source {
            Some(pb::load_request::Source::Image(src)) => {
                let images = self.images().await?;
                Some(
                    images
                        .fetch(src, &r.entries, !r.signature.trim().is_empty())
                        .await,
                )
            }
            _ => None,
        };
        let (revision, created) = self
            .run("load", move |a| a.load_fetched(r, fetched, &who))
            .await?;
        Ok(Response::new(pb::LoadResponse {
            revision: Some(revision),
            created,
        }))
    }

    async fn activate(
        &self,
        req: Request<pb::ActivateRequest>,
    ) -> Result<Response<pb::ActivateResponse>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let s = self
            .run_quick("activate", move |a| {
                a.activate(&r.program, &r.revision, &who)
            })
            .await?;
        Ok(Response::new(pb::ActivateResponse {
            active_revision: s.active,
            previous_revision: s.previous,
            switch_nanos: s.nanos,
        }))
    }

    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let s = self
            .run_quick("rollback", move |a| {
                a.rollback(&r.program, &r.to_revision, &who)
            })
            .await?;
        Ok(Response::new(pb::RollbackResponse {
            active_revision: s.active,
            previous_revision: s.previous,
            switch_nanos: s.nanos,
        }))
    }

    async fn unload(
        &self,
        req: Request<pb::UnloadRequest>,
    ) -> Result<Response<pb::UnloadResponse>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let removed_pins = self
            .run("unload", move |a| a.unload(&r.program, &r.revision, &who))
            .await?;
        Ok(Response::new(pb::UnloadResponse { removed_pins }))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let r = req.into_inner();
        let programs = self.run("list", move |a| a.list(&r.program)).await?;
        Ok(Response::new(pb::ListResponse { programs }))
    }

    async fn stats(
        &self,
        req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let r = req.into_inner();
        let hub = self.hub.clone();
        Ok(Response::new(
            self.run("stats", move |a| {
                let mut s = a.stats(&r.program)?;
                if let Some(h) = hub {
                    h.fill_stats(&mut s);
                }
                Ok(s)
            })
            .await?,
        ))
    }

    async fn update_config(
        &self,
        req: Request<pb::UpdateConfigRequest>,
    ) -> Result<Response<pb::UpdateConfigResponse>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        // A namespace filter is in force when UpdateConfig returns: the
        // agent publishes its program views before it returns, and the
        // tracer's hub reads the latest published views when it filters.
        let maps_written = self
            .run("update_config", move |a| a.update_config(&r, &who))
            .await?;
        Ok(Response::new(pb::UpdateConfigResponse { maps_written }))
    }

    async fn health(
        &self,
        _req: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        Ok(Response::new(self.run("health", |a| Ok(a.health())).await?))
    }

    async fn node_info(
        &self,
        _req: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        Ok(Response::new(
            self.run("node_info", |a| Ok(a.node_info())).await?,
        ))
    }
}

/// The BPF log reader, when `--no-bpf-log` is not given.
fn start_bpf_log(
    agent: &Arc<Mutex<Agent>>,
    metrics: &Metrics,
) -> Result<Option<crate::bpflog::runtime::LogReader>> {
    use crate::bpflog::runtime::{LogReader, ReaderConfig, node_name};
    let a = agent.lock().map_err(|_| crate::agent::poisoned())?;
    if !a.config().bpf_log {
        tracing::info!("BPF log reader off (--no-bpf-log)");
        return Ok(None);
    }
    let cfg = ReaderConfig {
        pin: a.log_ring_pin(),
        node: node_name(&a.config().node_name),
        views: a.subscribe_views(),
        agent: agent.clone(),
        counters: metrics.bpf_log(),
    };
    LogReader::start(cfg)
        .map(Some)
        .map_err(|e| Error::io("starting the BPF log reader", e))
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading {what} {}", path.display()), e))
}

/// Samples every program's run figures once a [`SAMPLE_PERIOD`], for the
/// CPU shares of [`crate::agent::usage`] (and evaluates the policy alerts
/// on kernel signals), and enforces the CPU budgets once a
/// `--budget-period-seconds` ([`Agent::tick`]). A thread of its own, not a
/// task on tokio's blocking pool: a blocking call every second would keep
/// whichever of the pool's threads it lands on from retiring, so the
/// agent's thread count would depend on the last storm of calls.
struct Sampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(agent: Arc<Mutex<Agent>>) -> Result<Self> {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bpfleet-usage".into())
            .spawn(move || {
                let mut next = std::time::Instant::now();
                while !flag.load(Ordering::Relaxed) {
                    match agent.lock() {
                        Ok(mut a) => a.tick(),
                        Err(_) => tracing::error!("usage sampler: agent state lock poisoned"),
                    }
                    next += SAMPLE_PERIOD;
                    // Slept in short steps, so that a stop is seen soon.
                    while !flag.load(Ordering::Relaxed) {
                        let now = std::time::Instant::now();
                        if now >= next {
                            break;
                        }
                        std::thread::sleep((next - now).min(std::time::Duration::from_millis(100)));
                    }
                    // Behind (a long lock wait): start again from now, no burst.
                    next = next.max(std::time::Instant::now());
                }
            })
            .map_err(|e| Error::io("starting the usage sampler thread", e))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs the listeners until `shutdown` completes, with the HTTP tracer
/// runtime on and its default settings.
pub async fn serve(
    agent: Agent,
    listen: Listen,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    serve_with(agent, listen, HttpConfig::default(), shutdown).await
}

/// Runs the listeners until `shutdown` completes; the HTTP tracer runtime
/// runs when `http.enabled`.
pub async fn serve_with(
    agent: Agent,
    listen: Listen,
    http: HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    // The refusals of the TCP listener's identity check go to the agent's
    // audit log, through a handle of their own (lines are appended whole).
    let refusal_audit = Audit::new(agent.config().audit_log.as_deref())?;
    let board = agent.alert_board();
    let agent = Arc::new(Mutex::new(agent));
    let hub = if http.enabled {
        Some(Arc::new(Hub::with_board(http, board.clone())?))
    } else {
        None
    };
    let metrics = Metrics::with_http(agent.clone(), hub.clone());
    // Stopped (thread joined) when this function returns.
    let _bpf_log = start_bpf_log(&agent, &metrics)?;
    let svc = match &hub {
        Some(h) => AgentService::with_http(agent.clone(), metrics.clone(), h.clone()),
        None => AgentService::new(agent.clone(), metrics.clone()),
    };
    if let Some((endpoint, rx, counters)) = hub.as_ref().and_then(|h| h.take_otlp()) {
        tracing::info!(endpoint, "exporting HTTP spans over OTLP");
        tokio::spawn(crate::http::otlp::run(endpoint, rx, counters));
    }
    // Stopped (threads joined) when this function returns.
    let _runtime = hub
        .as_ref()
        .map(|h| Runtime::start(agent.clone(), h.clone()));
    // Aborted when this function returns.
    let _sampler = Sampler::start(agent.clone())?;
    let make = || {
        AgentServer::new(svc.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    };
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = tokio::task::JoinSet::new();

    if let Some(addr) = listen.metrics {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Transport(format!("binding metrics on {addr}: {e}")))?;
        tracing::info!(%addr, "metrics listening");
        let m = metrics.clone();
        let mut stop = stop_tx.subscribe();
        tasks.spawn(async move {
            tokio::select! {
                () = crate::metrics::serve(l, m) => {}
                _ = stop.recv() => {}
            }
            Ok(())
        });
    }
    if let Some(path) = &listen.unix {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    format!("removing stale socket {}", path.display()),
                    e,
                ));
            }
        }
        let uds = UnixListener::bind(path)
            .map_err(|e| Error::Transport(format!("binding {}: {e}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
        tracing::info!(socket = %path.display(), "gRPC listening on unix socket");
        let router = Server::builder().add_service(make());
        let mut stop = stop_tx.subscribe();
        tasks.spawn(async move {
            router
                .serve_with_incoming_shutdown(UnixListenerStream::new(uds), async move {
                    let _ = stop.recv().await;
                })
                .await
                .map_err(|e| Error::Transport(format!("unix socket server: {e}")))
        });
    }
    if let Some(addr) = listen.tcp {
        let tls = listen.tls.as_ref().ok_or_else(|| {
            Error::Transport(
                "a TCP listener needs --tls-cert, --tls-key and --client-ca (mTLS)".into(),
            )
        })?;
        let identity = Identity::from_pem(read(&tls.cert, "certificate")?, read(&tls.key, "key")?);
        let ca = Certificate::from_pem(read(&tls.client_ca, "client CA")?);
        if tls.client_identities.is_empty() {
            return Err(Error::Transport(
                "a TCP listener needs --client-identity: the name(s) the operator's client \
                 certificate carries (with only --client-ca, every certificate that CA signed \
                 would get in)"
                    .into(),
            ));
        }
        let cfg = ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(ca)
            .client_auth_optional(false);
        let router = Server::builder()
            .tls_config(cfg)
            .map_err(|e| Error::Transport(format!("TLS config: {e}")))?
            .layer(PinnedLayer::new(
                tls.client_identities.clone(),
                refusal_audit,
            ))
            .add_service(make());
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Transport(format!("binding {addr}: {e}")))?;
        tracing::info!(%addr, identities = ?tls.client_identities, "gRPC listening on TCP with mTLS");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
        let mut stop = stop_tx.subscribe();
        tasks.spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.recv().await;
                })
                .await
                .map_err(|e| Error::Transport(format!("TCP server: {e}")))
        });
    }
    if tasks.is_empty() {
        return Err(Error::Transport(
            "nothing to listen on: give --socket and/or --listen".into(),
        ));
    }
    tokio::select! {
        () = shutdown => {}
        Some(res) = tasks.join_next() => {
            let _ = stop_tx.send(());
            return res.map_err(|e| Error::Transport(format!("listener task: {e}")))?;
        }
    }
    let _ = stop_tx.send(());
    while let Some(res) = tasks.join_next().await {
        res.map_err(|e| Error::Transport(format!("listener task: {e}")))??;
    }
    if let Some(path) = &listen.unix {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
