//! The gRPC front of the agent: the `bpfleet.agent.v1.Agent` service over a
//! node-local Unix socket and over TCP with mutual TLS (rustls; only client
//! certificates chaining to the configured CA are accepted), plus the
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
use tonic::transport::server::UdsConnectInfo;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::agent::Agent;
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

/// Who is calling: certificate subject for mTLS, credentials on the socket.
pub fn actor<T>(req: &Request<T>) -> String {
    if let Some(certs) = req.peer_certs()
        && let Some(leaf) = certs.first()
    {
        let fp = hex::encode(&Sha256::digest(leaf.as_ref())[..8]);
        let subject = x509_parser::parse_x509_certificate(leaf.as_ref())
            .ok()
            .map(|(_, c)| c.subject().to_string())
            .unwrap_or_else(|| "unparsable".into());
        return format!("x509:{subject} sha256:{fp}");
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
            .run("activate", move |a| {
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
            .run("rollback", move |a| {
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

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading {what} {}", path.display()), e))
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
    let agent = Arc::new(Mutex::new(agent));
    let hub = if http.enabled {
        Some(Arc::new(Hub::new(http)?))
    } else {
        None
    };
    let metrics = Metrics::with_http(agent.clone(), hub.clone());
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
        let cfg = ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(ca)
            .client_auth_optional(false);
        let router = Server::builder()
            .tls_config(cfg)
            .map_err(|e| Error::Transport(format!("TLS config: {e}")))?
            .add_service(make());
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Transport(format!("binding {addr}: {e}")))?;
        tracing::info!(%addr, "gRPC listening on TCP with mTLS");
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
