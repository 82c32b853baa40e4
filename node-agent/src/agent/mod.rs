//! The agent's core: the programs and revisions it owns and the lifecycle
//! operations on them. Transport-free: the gRPC server and the tests call
//! it directly. It owns every pin under the pin root that its state file or
//! its pin-root scan accounts for, and touches nothing else; every kernel
//! call goes through [`crate::kernel`].
//!
//! One concern a file: [`request`] (protobuf requests to checked domain
//! types, pure), [`admit`] and [`budget`] (admission of a load, pure),
//! `load`, `switch` (activate, rollback), `unload`, `adopt` (re-adoption
//! at start), `config` (UpdateConfig), [`usage`] (each program's CPU
//! share over time windows, pure), [`cpu_budget`] (the CPU budget's
//! step, pure) and `enforce` (CPU budgets kept per program, slot 8
//! written) and [`views`] (the only place that
//! builds List, Stats, Health, NodeInfo and [`ProgramView`]s). This file
//! holds the [`Agent`] itself, its [`Config`], the state save, the audit
//! wrappers and the program-view channel: every operation that changes
//! what a [`ProgramView`] shows publishes the new views before it returns,
//! under the caller's lock on the agent, so readers of the channel (the
//! HTTP tracer's hub and runtime) never act on views older than the last
//! returned operation.

pub mod admit;
mod adopt;
pub mod budget;
mod config;
pub mod cpu_budget;
mod displaced;
mod enforce;
mod load;
pub mod object_dirs;
pub mod request;
mod switch;
mod unload;
pub mod usage;
pub mod views;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use bpfleet_proto::v1::HookKind;
use tokio::sync::watch;

use crate::audit::Audit;
use crate::error::{Error, Result};
use crate::hooks::NodeSupport;
use crate::image::{ImageConfig, Images};
use crate::kernel::{self, Slot};
use crate::state::{Persister, StateFile};
use crate::trust::Verifiers;

pub use budget::Budgets;
pub use enforce::BudgetFigures;
pub use request::{MAX_ENTRIES, MAX_PERSISTENT_MAPS, MAX_TARGET};
pub use switch::{MAX_HISTORY, Switched};
pub use views::ProgramView;

/// The program views as published: every program's, in name order.
pub type Views = Arc<Vec<ProgramView>>;

/// Agent configuration (from the command line).
#[derive(Debug, Clone)]
pub struct Config {
    /// Root of the agent's pins on bpffs.
    pub pin_root: PathBuf,
    /// State file path (outside bpffs).
    pub state_file: PathBuf,
    /// JSON-lines audit log.
    pub audit_log: Option<PathBuf>,
    /// Most programs (names) loaded at once.
    pub max_programs: usize,
    /// Most revisions per program.
    pub max_revisions: usize,
    /// Map memory budget of one program (all its revisions and shared maps).
    pub max_map_bytes_per_program: u64,
    /// Map memory budget of the whole agent.
    pub max_map_bytes_total: u64,
    /// Largest object accepted.
    pub max_object_bytes: usize,
    /// Trusted public keys: (name, PEM).
    pub trusted_keys: Vec<(String, String)>,
    /// Accept objects without a signature.
    pub allow_unsigned: bool,
    /// Turn on kernel run-time stats while the agent runs.
    pub enable_stats: bool,
    /// Node name reported by NodeInfo.
    pub node_name: String,
    /// Registries and the node's image cache.
    pub images: ImageConfig,
    /// Directories a path source must resolve into (`--object-dir`); empty:
    /// any absolute path ([`object_dirs`]).
    pub object_dirs: Vec<PathBuf>,
    /// Ids of the BPF helpers this node refuses (`--deny-helper`): a Load
    /// whose programs call one fails as on a kernel lacking the helper.
    pub denied_helpers: BTreeSet<u32>,
    /// Whether `--http-rules` is given: that file's tracer rules are in
    /// force on this node instead of those UpdateConfig sets per program
    /// (List reports them as overridden).
    pub tracer_rules_file: bool,
    /// Print the records of the node's BPF log ring as JSON lines on
    /// stdout (`--no-bpf-log` turns it off; the ring is kept either way,
    /// so objects load alike).
    pub bpf_log: bool,
    /// Size of the node's BPF log ring when the agent makes it.
    pub bpf_log_ring_bytes: u32,
    /// How often CPU budgets are enforced, and the window each step
    /// measures over (`--budget-period-seconds`).
    pub budget_period: std::time::Duration,
    /// The lowest sampling a CPU budget cuts a program to, per million
    /// (`--sampling-floor-ppm`).
    pub sampling_floor_ppm: u64,
}

impl Config {
    /// Defaults for a pin root and a state file.
    pub fn new(pin_root: impl Into<PathBuf>, state_file: impl Into<PathBuf>) -> Self {
        Self {
            pin_root: pin_root.into(),
            state_file: state_file.into(),
            audit_log: None,
            max_programs: 64,
            max_revisions: 8,
            max_map_bytes_per_program: 64 << 20,
            max_map_bytes_total: 512 << 20,
            max_object_bytes: 16 << 20,
            trusted_keys: Vec::new(),
            allow_unsigned: false,
            enable_stats: true,
            node_name: String::new(),
            images: ImageConfig::default(),
            object_dirs: Vec::new(),
            denied_helpers: BTreeSet::new(),
            tracer_rules_file: false,
            bpf_log: true,
            bpf_log_ring_bytes: 256 << 10,
            budget_period: std::time::Duration::from_secs(5),
            sampling_floor_ppm: 1000,
        }
    }
}

impl Config {
    /// The budgets part of the configuration.
    pub fn budgets(&self) -> Budgets {
        Budgets {
            max_programs: self.max_programs,
            max_revisions: self.max_revisions,
            max_map_bytes_per_program: self.max_map_bytes_per_program,
            max_map_bytes_total: self.max_map_bytes_total,
        }
    }
}

/// Kernel objects the agent holds open for one program.
#[derive(Default)]
struct Runtime {
    /// Dispatcher key -> its slot (program array).
    slots: BTreeMap<String, Slot>,
    /// Dispatcher key -> the dispatcher program (for its run figures).
    dispatchers: BTreeMap<String, OwnedFd>,
    /// (revision, bpf program) -> program fd.
    progs: BTreeMap<(String, String), OwnedFd>,
    /// Shared link key -> link fd.
    links: BTreeMap<String, OwnedFd>,
}

/// The node agent.
pub struct Agent {
    cfg: Config,
    verifiers: Verifiers,
    state: StateFile,
    rt: BTreeMap<String, Runtime>,
    support: NodeSupport,
    audit: Audit,
    stats_fd: Option<OwnedFd>,
    problems: Vec<String>,
    /// Persistent maps the last Load recreated (its audit detail).
    recreations: Vec<String>,
    persister: Persister,
    views: watch::Sender<Views>,
    images: Arc<Images>,
    /// What the programs' policy alerts fire now (List reads it; the
    /// evaluators publish into it).
    alerts: Arc<crate::alerts::Board>,
    /// Each program's run figures over time ([`usage`]).
    usage: usage::Usage,
    /// When the CPU budgets were last enforced (monotonic ns).
    last_enforced_ns: u64,
    /// Sampling changes of CPU budgets since start, by program and action.
    enforcements: BTreeMap<(String, &'static str), u64>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("pin_root", &self.config().pin_root)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Starts the agent: bpffs, state file, re-adoption of what is pinned.
    /// Never unloads anything.
    pub fn new(cfg: Config) -> Result<Self> {
        kernel::install_libbpf_log();
        kernel::ensure_bpffs(&cfg.pin_root)?;
        if let Some(dir) = cfg.state_file.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let opened = StateFile::open(&cfg.state_file)?;
        let state = opened.state;
        let verifiers = Verifiers::new(&cfg.trusted_keys, cfg.allow_unsigned)?;
        let images = Arc::new(Images::new(
            &cfg.images,
            &cfg.state_file,
            verifiers.clone(),
            cfg.max_object_bytes as u64,
        )?);
        let audit = Audit::new(cfg.audit_log.as_deref())?;
        // Its own handle on the audit log: lines are appended whole.
        let alerts = Arc::new(crate::alerts::Board::new(Audit::new(
            cfg.audit_log.as_deref(),
        )?));
        let stats_fd = if cfg.enable_stats {
            match kernel::enable_stats() {
                Ok(fd) => Some(fd),
                Err(e) => {
                    tracing::warn!(error = %e, "BPF run-time stats unavailable");
                    None
                }
            }
        } else {
            None
        };
        let cfg_state_file = cfg.state_file.clone();
        let mut agent = Self {
            cfg,
            verifiers,
            state,
            rt: BTreeMap::new(),
            support: kernel::probe::node_support(),
            audit,
            stats_fd,
            problems: Vec::new(),
            recreations: Vec::new(),
            persister: Persister::new(cfg_state_file),
            views: watch::channel(Arc::new(Vec::new())).0,
            images,
            alerts,
            usage: usage::Usage::default(),
            last_enforced_ns: 0,
            enforcements: BTreeMap::new(),
        };
        if let Some(c) = opened.corrupt {
            agent.problems.push(format!(
                "state file {} was corrupt ({}); kept as {}; pins re-adopted",
                agent.cfg.state_file.display(),
                c.reason,
                c.kept.map_or_else(
                    || "nothing (moving it failed)".into(),
                    |k| k.display().to_string()
                )
            ));
        }
        agent.adopt();
        agent.let_go_of_log_ring();
        agent.save()?;
        agent.publish_all();
        Ok(agent)
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The board of the programs' firing policy alerts.
    pub fn alert_board(&self) -> Arc<crate::alerts::Board> {
        self.alerts.clone()
    }

    fn save(&mut self) -> Result<()> {
        self.persister.save_now(&self.state)
    }

    fn save_soon(&mut self) {
        self.persister.save_soon(&self.state);
    }

    fn prog_dir(&self, program: &str) -> PathBuf {
        self.cfg.pin_root.join(program)
    }

    /// Pin of the node's BPF log ring.
    pub fn log_ring_pin(&self) -> PathBuf {
        kernel::log_ring_pin(&self.cfg.pin_root)
    }

    /// Removes the node's log ring pin when no program the agent holds
    /// uses it (after the last such program is unloaded, or at start when
    /// it was left behind): what runs nothing goes, as with every pin.
    fn let_go_of_log_ring(&mut self) {
        let used = self
            .state
            .programs
            .values()
            .any(|p| p.shared_maps.contains_key(kernel::LOG_MAP));
        if used {
            return;
        }
        let pin = self.log_ring_pin();
        match std::fs::remove_file(&pin) {
            Ok(()) => tracing::info!(pin = %pin.display(), "log ring let go: no program uses it"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(pin = %pin.display(), error = %e, "cannot remove the log ring pin")
            }
        }
    }

    /// A receiver of the program views: holds the views as of the last
    /// operation that returned, and is marked changed by every operation
    /// that changes them.
    pub fn subscribe_views(&self) -> watch::Receiver<Views> {
        self.views.subscribe()
    }

    /// Publishes every program's view (at start, after adoption).
    fn publish_all(&self) {
        let now = self.program_views();
        self.views.send_if_modified(|v| {
            if **v == now {
                false
            } else {
                *v = Arc::new(now);
                true
            }
        });
    }

    /// Publishes `program`'s view when it changed. Called by every
    /// operation that may change it, before it returns; an operation
    /// touches one program, so only that view is built (a switch stays a
    /// few microseconds however many programs the node holds), and the
    /// others are kept as published.
    fn publish(&self, program: &str) {
        let fresh = self.program_view(program);
        self.views.send_if_modified(|all| {
            // Published in name order, as the programs are kept.
            let at = all.binary_search_by(|v| v.program.as_str().cmp(program));
            match (at, fresh) {
                (Ok(i), Some(view)) if all[i] == view => false,
                (Ok(i), Some(view)) => {
                    Arc::make_mut(all)[i] = view;
                    true
                }
                (Ok(i), None) => {
                    Arc::make_mut(all).remove(i);
                    true
                }
                (Err(i), Some(view)) => {
                    Arc::make_mut(all).insert(i, view);
                    true
                }
                (Err(_), None) => false,
            }
        });
    }

    /// Writes an audit line for the outcome of an operation.
    fn audit_result<T>(
        &self,
        actor: &str,
        action: &str,
        program: &str,
        revision: &str,
        res: &Result<T>,
        ok_detail: impl FnOnce(&T) -> String,
    ) {
        match res {
            Ok(v) => self
                .audit
                .write(actor, action, program, revision, "ok", &ok_detail(v)),
            Err(e) => self
                .audit
                .write(actor, action, program, revision, e.kind(), &e.to_string()),
        }
    }

    /// Samples every program's run figures into the usage rings (the
    /// agent's sampler calls it once a [`usage::SAMPLE_PERIOD`]).
    pub fn sample_usage(&mut self) {
        let totals = self.program_totals();
        let cpus = crate::procfs::online_cpus().unwrap_or(0);
        self.usage.record(kernel::sys::mono_ns(), cpus, totals);
        self.evaluate_kernel_alerts();
    }

    /// The programs' policy alerts on kernel signals, on the usage rings
    /// just sampled, published to the board; the alerts of programs gone
    /// resolve.
    fn evaluate_kernel_alerts(&self) {
        use crate::alerts::{KernelFigures, Source, kernel_breaches};
        for (name, p) in &self.state.programs {
            let found = kernel_breaches(&p.alerts, |w| {
                let d = std::time::Duration::from_nanos(w.nanos());
                let partial = self.usage.up_to(name, d);
                KernelFigures {
                    cpu_percent: self.usage.cpu_percent(name, d),
                    errors: partial.map(|f| f.errors),
                    lost: partial.and_then(|f| f.lost),
                }
            });
            self.alerts.publish(name, Source::Kernel, found);
        }
        let names: Vec<String> = self.state.programs.keys().cloned().collect();
        self.alerts.retain(&names);
    }

    /// Each program's CPU share, runs, errors and events lost over time
    /// windows, as sampled so far.
    pub fn usage(&self) -> &usage::Usage {
        &self.usage
    }

    /// The image side (pulls happen outside the agent's lock).
    pub fn images(&self) -> Arc<Images> {
        self.images.clone()
    }

    /// Whether a hook is usable here (for callers that pre-check).
    pub fn hook_supported(&self, h: HookKind) -> Result<()> {
        self.support.check(h)
    }
}

/// The error of a poisoned lock on the agent.
pub fn poisoned() -> Error {
    Error::Precondition("agent state lock poisoned".into())
}
