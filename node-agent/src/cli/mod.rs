//! Command line: `serve` runs the agent; every other subcommand is a client
//! for one RPC, over the node-local socket or over mTLS TCP, for people
//! debugging a node.

use std::path::PathBuf;

use bpfleet_proto::v1::{self as pb, agent_client::AgentClient, load_request::Source};
use clap::{Args, Parser, Subcommand};
use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use crate::error::{Error, Result};
use crate::hooks::{ALL_HOOKS, hook_name};
use crate::server::MAX_MESSAGE;

mod serve;
pub use serve::ServeArgs;

/// bpfleet node agent.
#[derive(Debug, Parser)]
#[command(name = "bpfleet-agent", version, about)]
pub struct Cli {
    #[command(subcommand)]
    /// What to do.
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent.
    Serve(Box<ServeArgs>),
    /// Load a revision (inactive).
    Load {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Make a revision active.
    Activate {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        program: String,
        #[arg(long)]
        revision: String,
    },
    /// Switch back to the previous (or a named) revision.
    Rollback {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        program: String,
        #[arg(long, default_value = "")]
        to: String,
    },
    /// Unload a revision or a whole program.
    Unload {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        program: String,
        #[arg(long, default_value = "")]
        revision: String,
    },
    /// List programs, revisions, links and pins.
    List {
        #[command(flatten)]
        conn: Conn,
        #[arg(long, default_value = "")]
        program: String,
    },
    /// Kernel statistics.
    Stats {
        #[command(flatten)]
        conn: Conn,
        #[arg(long, default_value = "")]
        program: String,
    },
    /// Write config map entries (hex key=value), and/or set the program's
    /// namespace filter.
    UpdateConfig {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        program: String,
        #[arg(long, default_value = "")]
        map: String,
        /// KEYHEX=VALUEHEX, e.g. 00000000=e803000000000000
        #[arg(long = "set", required_unless_present_any = ["replace", "namespaces"])]
        entries: Vec<String>,
        /// Make a hash map hold exactly the --set entries (none: empty it).
        #[arg(long)]
        replace: bool,
        /// Set the program's namespace filter: comma-separated Kubernetes
        /// namespaces whose exchanges the HTTP tracer keeps ("" lifts it).
        #[arg(long)]
        namespaces: Option<String>,
    },
    /// Agent health.
    Health {
        #[command(flatten)]
        conn: Conn,
    },
    /// What this node's kernel offers.
    NodeInfo {
        #[command(flatten)]
        conn: Conn,
    },
}

/// How a client subcommand reaches the agent.
#[derive(Debug, Args, Clone)]
pub struct Conn {
    /// Agent Unix socket.
    #[arg(
        long,
        env = "BPFLEET_SOCKET",
        default_value = "/run/bpfleet/agent.sock"
    )]
    pub socket: PathBuf,
    /// Agent TCP address (https://host:port); uses mTLS with the options below.
    #[arg(long)]
    pub addr: Option<String>,
    /// CA of the agent's certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Client key.
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// `load` options.
#[derive(Debug, Args)]
pub struct LoadArgs {
    #[arg(long)]
    program: String,
    #[arg(long)]
    revision: String,
    /// Object file, sent inline.
    #[arg(long, conflicts_with = "object_path")]
    object: Option<PathBuf>,
    /// Object path on the node.
    #[arg(long)]
    object_path: Option<String>,
    /// Hex sha256 (computed from --object when omitted).
    #[arg(long, default_value = "")]
    sha256: String,
    /// File with the base64 cosign signature.
    #[arg(long)]
    signature_file: Option<PathBuf>,
    /// BPF_PROGRAM:HOOK:TARGET, e.g. count:tracepoint:syscalls/sys_enter_write.
    #[arg(long = "entry", required = true)]
    entries: Vec<String>,
    /// Map shared by every revision; repeatable.
    #[arg(long = "persistent-map")]
    persistent_maps: Vec<String>,
    /// Persistent map this revision gets afresh when the pinned one has
    /// another layout (the loaded revisions keep the old one); repeatable.
    #[arg(long = "recreate-incompatible-map")]
    recreate_maps: Vec<String>,
}

/// Parses `BPF_PROGRAM:HOOK:TARGET`.
pub fn parse_entry(s: &str) -> Result<pb::ProgramEntry> {
    let mut it = s.splitn(3, ':');
    let (Some(p), Some(h), Some(t)) = (it.next(), it.next(), it.next()) else {
        return Err(Error::Invalid(format!(
            "entry {s:?} is not BPF_PROGRAM:HOOK:TARGET"
        )));
    };
    let hook = ALL_HOOKS
        .iter()
        .find(|k| hook_name(**k) == h)
        .ok_or_else(|| Error::Invalid(format!("unknown hook {h:?}")))?;
    Ok(pb::ProgramEntry {
        bpf_program: p.into(),
        hook: *hook as i32,
        target: t.into(),
        pid: 0,
    })
}

/// Connects to an agent's Unix socket.
pub async fn connect_unix(path: PathBuf) -> Result<AgentClient<Channel>> {
    let ch = Endpoint::try_from("http://localhost")
        .map_err(|e| Error::Transport(e.to_string()))?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .map_err(|e| Error::Transport(format!("connecting to the agent socket: {e}")))?;
    Ok(client(ch))
}

/// Connects over TCP with mTLS. `identity` is (cert PEM, key PEM); None
/// connects without a client certificate (which the agent refuses).
pub async fn connect_tls(
    addr: &str,
    ca_pem: &[u8],
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: &str,
) -> Result<AgentClient<Channel>> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(domain);
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    let ch = Endpoint::from_shared(addr.to_string())
        .map_err(|e| Error::Transport(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| Error::Transport(format!("TLS config: {e}")))?
        .connect()
        .await
        .map_err(|e| Error::Transport(format!("connecting to {addr}: {e}")))?;
    Ok(client(ch))
}

fn client(ch: Channel) -> AgentClient<Channel> {
    AgentClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

async fn connect(c: &Conn) -> Result<AgentClient<Channel>> {
    match &c.addr {
        None => connect_unix(c.socket.clone()).await,
        Some(addr) => {
            let rd = |p: &Option<PathBuf>, what: &str| -> Result<Vec<u8>> {
                let p = p
                    .as_ref()
                    .ok_or_else(|| Error::Invalid(format!("--addr needs --{what}")))?;
                std::fs::read(p).map_err(|e| Error::io(format!("reading {}", p.display()), e))
            };
            let ca = rd(&c.ca, "ca")?;
            let id = (rd(&c.cert, "cert")?, rd(&c.key, "key")?);
            let host = addr
                .trim_start_matches("https://")
                .rsplit_once(':')
                .map_or("localhost", |(h, _)| h)
                .trim_matches(['[', ']'])
                .to_string();
            connect_tls(addr, &ca, Some(id), &host).await
        }
    }
}

fn show<T: std::fmt::Debug>(
    r: std::result::Result<tonic::Response<T>, tonic::Status>,
) -> Result<()> {
    match r {
        Ok(r) => {
            println!("{:#?}", r.into_inner());
            Ok(())
        }
        Err(s) => Err(Error::Transport(format!("{:?}: {}", s.code(), s.message()))),
    }
}

/// Runs a client subcommand.
pub async fn run_client(cmd: Command) -> Result<()> {
    match cmd {
        Command::Serve(_) => Err(Error::Invalid("serve is not a client command".into())),
        Command::Load { conn, load } => {
            let (source, sha) = match (&load.object, &load.object_path) {
                (Some(f), _) => {
                    let b = std::fs::read(f)
                        .map_err(|e| Error::io(format!("reading {}", f.display()), e))?;
                    let sha = if load.sha256.is_empty() {
                        crate::trust::sha256_hex(&b)
                    } else {
                        load.sha256.clone()
                    };
                    (Source::Object(b), sha)
                }
                (None, Some(p)) => (Source::ObjectPath(p.clone()), load.sha256.clone()),
                (None, None) => {
                    return Err(Error::Invalid("give --object or --object-path".into()));
                }
            };
            let signature = match &load.signature_file {
                Some(f) => std::fs::read_to_string(f)
                    .map_err(|e| Error::io(format!("reading {}", f.display()), e))?,
                None => String::new(),
            };
            let entries = load
                .entries
                .iter()
                .map(|e| parse_entry(e))
                .collect::<Result<Vec<_>>>()?;
            let req = pb::LoadRequest {
                program: load.program,
                revision: load.revision,
                source: Some(source),
                sha256: sha,
                signature,
                entries,
                persistent_maps: load.persistent_maps,
                recreate_incompatible_maps: load.recreate_maps,
                budget: None,
            };
            show(connect(&conn).await?.load(req).await)
        }
        Command::Activate {
            conn,
            program,
            revision,
        } => show(
            connect(&conn)
                .await?
                .activate(pb::ActivateRequest { program, revision })
                .await,
        ),
        Command::Rollback { conn, program, to } => show(
            connect(&conn)
                .await?
                .rollback(pb::RollbackRequest {
                    program,
                    to_revision: to,
                })
                .await,
        ),
        Command::Unload {
            conn,
            program,
            revision,
        } => show(
            connect(&conn)
                .await?
                .unload(pb::UnloadRequest { program, revision })
                .await,
        ),
        Command::List { conn, program } => show(
            connect(&conn)
                .await?
                .list(pb::ListRequest { program })
                .await,
        ),
        Command::Stats { conn, program } => show(
            connect(&conn)
                .await?
                .stats(pb::StatsRequest { program })
                .await,
        ),
        Command::UpdateConfig {
            conn,
            program,
            map,
            entries,
            replace,
            namespaces,
        } => {
            let mut out = Vec::new();
            for e in &entries {
                let (k, v) = e
                    .split_once('=')
                    .ok_or_else(|| Error::Invalid(format!("{e:?} is not KEYHEX=VALUEHEX")))?;
                let key =
                    hex::decode(k).map_err(|er| Error::Invalid(format!("key {k:?}: {er}")))?;
                let value =
                    hex::decode(v).map_err(|er| Error::Invalid(format!("value {v:?}: {er}")))?;
                out.push(pb::ConfigEntry { key, value });
            }
            show(
                connect(&conn)
                    .await?
                    .update_config(pb::UpdateConfigRequest {
                        program,
                        map,
                        entries: out,
                        replace,
                        namespaces: namespaces.map(|n| pb::NamespaceFilter {
                            names: n
                                .split(',')
                                .map(str::trim)
                                .filter(|s| !s.is_empty())
                                .map(str::to_string)
                                .collect(),
                        }),
                        tracer_rules: None,
                        cpu_budget: None,
                        alerts: None,
                    })
                    .await,
            )
        }
        Command::Health { conn } => show(connect(&conn).await?.health(pb::HealthRequest {}).await),
        Command::NodeInfo { conn } => show(
            connect(&conn)
                .await?
                .node_info(pb::NodeInfoRequest {})
                .await,
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bpfleet_proto::v1::HookKind;

    #[test]
    fn entries_parse_with_colons_in_the_target() {
        let e = parse_entry("probe:uprobe:/usr/lib/libssl.so.3:SSL_write").unwrap();
        assert_eq!(e.hook, HookKind::Uprobe as i32);
        assert_eq!(e.target, "/usr/lib/libssl.so.3:SSL_write");
        assert!(parse_entry("x:nohook:y").is_err());
        assert!(parse_entry("x").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
