//! The HTTP tracer's userspace inside the agent. A program is a tracer
//! when its shared (persistent) maps include the tracer's ring buffer and
//! lost counter (`http_events`, `http_lost`); for each such program a
//! reader thread reads the exchanges the kernel counted (metrics mode,
//! `http_aggs`, every second) and turns the pinned ring buffer into
//! exchanges ([`bpfleet_tracer::pipeline::Pipeline`]: sampled connections,
//! and what the kernel could not frame), and records both here. The maps
//! are shared by every revision, so the reader survives switches; counts
//! and events carry the gate token of the revision that saw them, and
//! exchanges are attributed by that token.
//!
//! Kept here, behind one lock: per-revision cumulative figures (the gRPC
//! Stats `HttpFigures` the operator's gates read), sliding windows per
//! service and route (the analytics API) and alert state; the Prometheus
//! families live in [`export`]. Which programs are tracers comes from the
//! agent's published program views ([`Hub::follow`]), read afresh whenever
//! the state is read. Nothing here calls the kernel: the reader threads
//! ([`runtime`]) go through `bpfleet_tracer` and [`crate::kernel`].

pub mod alert_rule;
pub mod api;
pub mod export;
pub mod identity;
pub mod otlp;
pub mod record;
pub mod rules;
pub mod runtime;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use bpfleet_httptrace::alerts::{Alerts, Rule, Transition, breached};
use bpfleet_httptrace::redact::Redactor;
use bpfleet_httptrace::route::Routes;
use bpfleet_httptrace::rules::Rules;
use bpfleet_httptrace::stats::Windows;
use bpfleet_proto::v1 as pb;

use crate::agent::{ProgramView, Views};
use crate::alerts::{Board, Breach, Source};
use crate::error::{Error, Result};
pub use alert_rule::{default_rules, parse_rule};
pub use record::Counted;
use record::{Figures, Key, Record, Side};

/// The shared maps that make a program an HTTP tracer.
pub const EVENTS_MAP: &str = bpfleet_tracer::pinned::EVENTS_MAP;
pub const LOST_MAP: &str = bpfleet_tracer::pinned::LOST_MAP;
/// Metrics mode's counts (absent from tracer objects older than it).
pub const AGGS_MAP: &str = bpfleet_tracer::pinned::AGGS_MAP;
/// The path keys the kernel announced (absent likewise).
pub const PATHS_MAP: &str = bpfleet_tracer::pinned::PATHS_MAP;

/// Where a tracer program's shared maps are pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracerPins {
    pub program: String,
    pub events: PathBuf,
    pub lost: PathBuf,
    pub aggs: Option<PathBuf>,
    pub paths: Option<PathBuf>,
    /// `bpfleet_config`.
    pub config: Option<PathBuf>,
}

/// Configuration of the tracer runtime (from the command line).
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Run readers for tracer programs.
    pub enabled: bool,
    /// Redaction and route naming: the command line's routes and the
    /// TracerPolicy's rules ([`rules`]), as the agent started with them.
    pub tracer_rules: Rules,
    /// The TracerPolicy file (`--http-rules`), re-read when it changes,
    /// with the command line's rules it is laid over.
    pub rules_file: Option<(PathBuf, Rules)>,
    /// Distinct service names before further ones become `other`.
    pub max_services: usize,
    /// Most (service, route, side) series in the sliding windows.
    pub max_series: usize,
    /// Connections tracked at once per tracer program.
    pub max_connections: usize,
    /// A request without an answer after this long is a timeout.
    pub request_timeout: Duration,
    /// kubelet's pod log directory (pod UID to namespace and name).
    pub pods_dir: PathBuf,
    /// Where process information is read (`/proc`).
    pub proc_root: PathBuf,
    /// Alert rules evaluated in-process.
    pub rules: Vec<Rule>,
    /// OTLP/gRPC endpoint for spans (`http://collector:4317`); none: off.
    pub otlp_endpoint: Option<String>,
    /// Where a stopping agent's readers leave their metrics-mode counts
    /// for the next agent (the state file's directory); none: nowhere, and
    /// a restarted agent's figures start from zero.
    pub handover_dir: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tracer_rules: Rules::default(),
            rules_file: None,
            max_services: 64,
            max_series: 2000,
            max_connections: 16384,
            request_timeout: Duration::from_secs(30),
            pods_dir: PathBuf::from("/var/log/pods"),
            proc_root: PathBuf::from("/proc"),
            rules: default_rules(),
            otlp_endpoint: None,
            handover_dir: None,
        }
    }
}

impl HttpConfig {
    /// A fresh route mapper for a reader.
    pub fn route_mapper(&self) -> Result<Routes> {
        self.tracer_rules
            .routes()
            .map_err(|e| Error::Invalid(format!("HTTP route rules: {e}")))
    }

    /// The redactor every connection of a reader shares.
    pub fn redactor(&self) -> Result<Redactor> {
        self.tracer_rules
            .redactor()
            .map_err(|e| Error::Invalid(format!("HTTP redaction rules: {e}")))
    }
}

/// A tracer program as the hub knows it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProgramInfo {
    /// Revision -> gate token.
    revisions: BTreeMap<String, u64>,
    active_token: u64,
    events_pin: PathBuf,
    lost_pin: PathBuf,
    aggs_pin: Option<PathBuf>,
    paths_pin: Option<PathBuf>,
    config_pin: Option<PathBuf>,
    /// The program's namespace filter (empty: every exchange is kept).
    namespaces: Arc<[String]>,
    /// The rules its TracerPolicy gave (UpdateConfig), as received.
    policy_rules: Option<rules::PolicyRules>,
    /// Those rules laid over the command line's, compiled once; None: the
    /// node's own rules apply (no policy rules, or `--http-rules` given,
    /// which wins).
    rules: Option<Arc<Rules>>,
    /// Its TracerPolicy's alert rules on HTTP signals, with the tracer's
    /// rule of each; evaluated on the program's own windows.
    alerts: Vec<(crate::alerts::PolicyAlert, Rule)>,
}

/// What a reader reports about itself.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReaderStatus {
    running: bool,
    error: Option<String>,
    events: u64,
    /// Ring-buffer records that could not be decoded.
    malformed: u64,
    /// HTTP heads that could not be parsed.
    parse_errors: u64,
    connections: u64,
    evicted: u64,
    exchanges: u64,
    /// Of `exchanges`, those counted in the kernel (metrics mode).
    counted: u64,
    /// Exchanges of the agent's own process, dropped.
    own_dropped: u64,
    /// Exchanges outside the program's namespace filter, dropped.
    namespace_dropped: u64,
    lost: u64,
    last_exchange: Option<Instant>,
}

/// The series that absorbs traffic beyond `max_series`.
fn overflow_key() -> Key {
    Key {
        service: "other".into(),
        route: "/*".into(),
        side: Side::Server,
    }
}

/// A firing alert.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Firing {
    value: f64,
    since: Instant,
}

#[derive(Debug)]
pub(crate) struct State {
    programs: BTreeMap<String, ProgramInfo>,
    readers: BTreeMap<String, ReaderStatus>,
    /// (program, gate token) -> cumulative figures.
    figures: BTreeMap<(String, u64), Figures>,
    windows: Windows<Key>,
    alerts: Alerts<Key>,
    firing: BTreeMap<(String, Key), Firing>,
    /// Windows of each program with policy alerts on HTTP signals: its own
    /// exchanges only (the node-wide `windows` mix every program's).
    program_windows: BTreeMap<String, Windows<Key>>,
    /// Programs whose HTTP alerts were published to the board last time.
    alerts_published: std::collections::BTreeSet<String>,
    /// Most series in one program's windows.
    max_series: usize,
    /// The agent's published program views ([`Hub::follow`]); `programs`
    /// is brought up to date from it whenever the state is read.
    views: Option<watch::Receiver<Views>>,
    /// The command line's rules, under a program's policy rules.
    base_rules: Rules,
    /// `--http-rules` given: it wins over every program's policy rules.
    rules_file: bool,
    /// The rules generation readers compare ([`CurrentRules`]'s), moved
    /// on when a program's rules change.
    generation: Arc<AtomicU64>,
}

impl State {
    /// Takes the latest published views when they changed.
    fn sync_views(&mut self) {
        let Some(rx) = self.views.as_mut() else {
            return;
        };
        if !rx.has_changed().unwrap_or(false) {
            return;
        }
        let views = rx.borrow_and_update().clone();
        self.set_programs(&views);
    }

    /// Which programs are tracers, with their pins, tokens and rules;
    /// forgets programs that are gone (their figures with them). True when
    /// a program's rules changed.
    fn set_programs(&mut self, views: &[ProgramView]) {
        let mut programs = BTreeMap::new();
        let mut rules_changed = false;
        for v in views {
            let (Some(events), Some(lost)) =
                (v.shared_maps.get(EVENTS_MAP), v.shared_maps.get(LOST_MAP))
            else {
                continue;
            };
            let active_token = v
                .active
                .as_ref()
                .and_then(|a| v.revisions.get(a))
                .copied()
                .unwrap_or(0);
            programs.insert(
                v.program.clone(),
                ProgramInfo {
                    revisions: v.revisions.clone(),
                    active_token,
                    events_pin: events.clone(),
                    lost_pin: lost.clone(),
                    aggs_pin: v.shared_maps.get(AGGS_MAP).cloned(),
                    paths_pin: v.shared_maps.get(PATHS_MAP).cloned(),
                    config_pin: v.shared_maps.get(crate::kernel::CONFIG_MAP).cloned(),
                    namespaces: v.namespaces.clone().into(),
                    policy_rules: v.tracer_rules.clone(),
                    rules: self.program_rules(&v.program, v.tracer_rules.as_ref()),
                    alerts: v
                        .alerts
                        .iter()
                        .filter_map(|a| a.http_rule().map(|r| (a.clone(), r)))
                        .collect(),
                },
            );
        }
        // Windows for the programs with HTTP alerts, kept across changes
        // of their rules.
        self.program_windows
            .retain(|p, _| programs.get(p).is_some_and(|i| !i.alerts.is_empty()));
        for (p, i) in &programs {
            if !i.alerts.is_empty() && !self.program_windows.contains_key(p) {
                self.program_windows
                    .insert(p.clone(), Windows::new(self.max_series, overflow_key()));
            }
        }
        for (p, i) in &programs {
            let before = self.programs.get(p).and_then(|b| b.rules.as_ref());
            if before.map(Arc::as_ptr) != i.rules.as_ref().map(Arc::as_ptr) {
                rules_changed = true;
            }
        }
        self.figures.retain(|(p, tok), _| {
            programs
                .get(p)
                .is_some_and(|i| i.revisions.values().any(|t| t == tok))
        });
        self.readers.retain(|p, _| programs.contains_key(p));
        self.programs = programs;
        if rules_changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The compiled rules of a program whose policy gave `policy`: the
    /// ones compiled before when the policy's rules did not change.
    fn program_rules(
        &self,
        program: &str,
        policy: Option<&rules::PolicyRules>,
    ) -> Option<Arc<Rules>> {
        let policy = policy.filter(|_| !self.rules_file)?;
        if let Some(before) = self.programs.get(program)
            && before.policy_rules.as_ref() == Some(policy)
            && before.rules.is_some()
        {
            return before.rules.clone();
        }
        match rules::lay_over(self.base_rules.clone(), policy) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                // UpdateConfig compiled them against the built-in base; a
                // command-line route may still clash. The node's rules stay.
                tracing::warn!(program, error = %e, "the TracerPolicy's tracer rules do not compile here; the node's own apply");
                None
            }
        }
    }
}

/// The rules readers apply now; the generation changes with every reload.
#[derive(Debug)]
struct CurrentRules {
    generation: Arc<AtomicU64>,
    rules: Mutex<Arc<Rules>>,
    /// Why the last reload of the file was refused (the rules before it
    /// stay in force).
    error: Mutex<Option<String>>,
}

/// The tracer runtime's shared state; see the module doc.
#[derive(Debug)]
pub struct Hub {
    cfg: HttpConfig,
    current: CurrentRules,
    state: Mutex<State>,
    families: export::Families,
    otlp: Option<otlp::Sink>,
    /// The exporting end of the span queue, until [`Hub::take_otlp`].
    otlp_rx: Mutex<Option<tokio::sync::mpsc::Receiver<Record>>>,
    /// Where the programs' policy alerts on HTTP signals are published.
    board: Arc<Board>,
}

impl Hub {
    /// Checks the configuration (route patterns) and builds the hub, with
    /// a board of its own for policy alerts (tests).
    pub fn new(cfg: HttpConfig) -> Result<Self> {
        Self::with_board(cfg, Arc::new(Board::default()))
    }

    /// Like [`Hub::new`]; the programs' policy alerts on HTTP signals go
    /// to `board` (the agent's).
    pub fn with_board(cfg: HttpConfig, board: Arc<Board>) -> Result<Self> {
        cfg.route_mapper()?;
        cfg.redactor()?;
        let (otlp, otlp_rx) = match &cfg.otlp_endpoint {
            Some(e) => {
                otlp::check_endpoint(e)?;
                let (sink, rx) = otlp::queue();
                (Some(sink), Some(rx))
            }
            None => (None, None),
        };
        let current = CurrentRules {
            generation: Arc::new(AtomicU64::new(0)),
            rules: Mutex::new(Arc::new(cfg.tracer_rules.clone())),
            error: Mutex::new(None),
        };
        let generation = current.generation.clone();
        Ok(Self {
            current,
            state: Mutex::new(State {
                programs: BTreeMap::new(),
                readers: BTreeMap::new(),
                figures: BTreeMap::new(),
                windows: Windows::new(cfg.max_series, overflow_key()),
                alerts: Alerts::default(),
                firing: BTreeMap::new(),
                program_windows: BTreeMap::new(),
                alerts_published: Default::default(),
                max_series: cfg.max_series,
                views: None,
                base_rules: cfg.tracer_rules.clone(),
                rules_file: cfg.rules_file.is_some(),
                generation,
            }),
            families: export::Families::default(),
            otlp,
            otlp_rx: Mutex::new(otlp_rx),
            cfg,
            board,
        })
    }

    /// The span exporter's work, once: (endpoint, queue, counters); run it
    /// with [`otlp::run`] on a tokio runtime.
    pub fn take_otlp(
        &self,
    ) -> Option<(
        String,
        tokio::sync::mpsc::Receiver<Record>,
        std::sync::Arc<otlp::Counters>,
    )> {
        let rx = self.otlp_rx.lock().ok()?.take()?;
        let endpoint = self.cfg.otlp_endpoint.clone()?;
        let counters = self.otlp.as_ref()?.counters.clone();
        Some((endpoint, rx, counters))
    }

    pub(crate) fn otlp_counters(&self) -> Option<&otlp::Counters> {
        self.otlp.as_ref().map(|s| &*s.counters)
    }

    pub fn config(&self) -> &HttpConfig {
        &self.cfg
    }

    /// The rules in force and their generation.
    pub fn rules(&self) -> (u64, Arc<Rules>) {
        let rules = self
            .current
            .rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (self.current.generation.load(Ordering::Acquire), rules)
    }

    /// The rules in force for `program` and their generation: its
    /// TracerPolicy's (laid over the command line's) when the operator gave
    /// some and no `--http-rules` file overrides them, else the node's.
    pub fn rules_for(&self, program: &str) -> (u64, Arc<Rules>) {
        // The generation is read before the rules: a change in between is
        // seen again at the reader's next batch.
        let (generation, node) = self.rules();
        let own = self
            .lock()
            .programs
            .get(program)
            .and_then(|p| p.rules.clone());
        (generation, own.unwrap_or(node))
    }

    /// Generation of the rules in force (readers compare it per batch).
    pub fn rules_generation(&self) -> u64 {
        self.current.generation.load(Ordering::Acquire)
    }

    /// Puts checked rules in force; readers pick them up at their next
    /// batch.
    pub fn set_rules(&self, rules: Rules) {
        *self.current.rules.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
        *self.current.error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.current.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Records why a reload was refused.
    pub fn set_rules_error(&self, error: Option<String>) {
        *self.current.error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    pub fn rules_error(&self) -> Option<String> {
        self.current
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn families(&self) -> &export::Families {
        &self.families
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves figures that are at worst
        // one batch short; keep serving them.
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.sync_views();
        st
    }

    /// Follows the agent's program views: from now on the hub reads the
    /// latest published views whenever it reads its state, so a change the
    /// agent published (a namespace filter, say) is in force for the next
    /// batch of exchanges, with no hand-over lag.
    pub fn follow(&self, views: watch::Receiver<Views>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = views.borrow().clone();
        st.views = Some(views);
        st.set_programs(&now);
    }

    /// Sets the programs from `views` directly (a hub that follows no
    /// agent, as in tests); see [`Hub::follow`].
    pub fn set_programs(&self, views: &[ProgramView]) {
        self.lock().set_programs(views);
    }

    /// Tracer programs and their pins.
    pub fn tracer_programs(&self) -> Vec<TracerPins> {
        self.lock()
            .programs
            .iter()
            .map(|(p, i)| TracerPins {
                program: p.clone(),
                events: i.events_pin.clone(),
                lost: i.lost_pin.clone(),
                aggs: i.aggs_pin.clone(),
                paths: i.paths_pin.clone(),
                config: i.config_pin.clone(),
            })
            .collect()
    }

    pub(crate) fn reader_status(&self, program: &str, f: impl FnOnce(&mut ReaderStatus)) {
        let mut st = self.lock();
        f(st.readers.entry(program.to_string()).or_default());
    }

    /// The namespace filter of `program` (TracerPolicy
    /// config.filters.namespaces): exchanges of processes outside those
    /// namespaces' pods are dropped before any metric, window or span sees
    /// them.
    fn namespace_filter(&self, program: &str) -> impl Fn(&Record) -> bool + use<> {
        let namespaces = self
            .lock()
            .programs
            .get(program)
            .map(|p| p.namespaces.clone());
        move |r: &Record| {
            namespaces
                .as_ref()
                .is_none_or(|ns| ns.is_empty() || ns.contains(&r.namespace))
        }
    }

    /// Records exchanges the kernel counted (metrics mode): each `Counted`
    /// is one label set with the durations of its exchanges since the last
    /// read. Not spans: nothing of them goes to OTLP.
    pub fn apply_counted(&self, program: &str, counted: &[Counted]) {
        if counted.is_empty() {
            return;
        }
        let keep = self.namespace_filter(program);
        // The filter runs once per label set.
        let (kept_sets, dropped_sets): (Vec<&Counted>, Vec<&Counted>) =
            counted.iter().partition(|c| keep(&c.record));
        let count = |v: &[&Counted]| v.iter().map(|c| c.durations_ns.len() as u64).sum::<u64>();
        let (kept, dropped) = (count(&kept_sets), count(&dropped_sets));
        for c in &kept_sets {
            self.families.observe_durations(&c.record, &c.durations_ns);
        }
        let mut st = self.lock();
        let st = &mut *st;
        let active = st.programs.get(program).map_or(0, |p| p.active_token);
        let mut own = st.program_windows.get_mut(program);
        for c in kept_sets {
            let r = &c.record;
            let key = r.key();
            let token = if r.token == 0 { active } else { r.token };
            let f = st.figures.entry((program.to_string(), token)).or_default();
            for d in &c.durations_ns {
                f.record_duration(*d, r.gate_error());
            }
            for d in &c.durations_ns {
                st.windows.record_ref(&key, r.end_ns, *d, r.semconv_error());
                if let Some(w) = own.as_deref_mut() {
                    w.record_ref(&key, r.end_ns, *d, r.semconv_error());
                }
            }
        }
        let s = st.readers.entry(program.to_string()).or_default();
        s.exchanges += kept;
        s.counted += kept;
        s.namespace_dropped += dropped;
        if kept > 0 {
            s.last_exchange = Some(Instant::now());
        }
    }

    /// Records a batch of exchanges of `program`.
    pub fn apply(&self, program: &str, records: &[Record]) {
        if records.is_empty() {
            return;
        }
        let filter = self.namespace_filter(program);
        let keep = |r: &&Record| filter(r);
        let kept = records.iter().filter(keep).count();
        // A batch's records mostly share their labels: group them so label
        // sets and series are built and looked up once per group.
        let mut groups: HashMap<record::Group<'_>, Vec<&Record>> = HashMap::new();
        for r in records.iter().filter(keep) {
            groups.entry(r.group()).or_default().push(r);
            if let Some(o) = &self.otlp {
                o.send(r);
            }
        }
        for rs in groups.values() {
            self.families.observe(rs);
        }
        let mut st = self.lock();
        let st = &mut *st;
        let active = st.programs.get(program).map_or(0, |p| p.active_token);
        let mut own = st.program_windows.get_mut(program);
        let mut per_token: BTreeMap<u64, Figures> = BTreeMap::new();
        for rs in groups.values() {
            let key = rs[0].key();
            for r in rs {
                let token = if r.token == 0 { active } else { r.token };
                per_token.entry(token).or_default().record(r);
                st.windows
                    .record_ref(&key, r.end_ns, r.duration_ns, r.semconv_error());
                if let Some(w) = own.as_deref_mut() {
                    w.record_ref(&key, r.end_ns, r.duration_ns, r.semconv_error());
                }
            }
        }
        for (token, f) in per_token {
            st.figures
                .entry((program.to_string(), token))
                .or_default()
                .merge(&f);
        }
        let s = st.readers.entry(program.to_string()).or_default();
        s.exchanges += kept as u64;
        s.namespace_dropped += (records.len() - kept) as u64;
        if kept > 0 {
            s.last_exchange = Some(Instant::now());
        }
    }

    /// Evaluates the alert rules at `now_ns` (kernel monotonic time) and
    /// drops window slots older than the longest window; returns the
    /// transitions (also counted in the metrics and logged).
    pub fn evaluate(&self, now_ns: u64) -> Vec<Transition<Key>> {
        let mut st = self.lock();
        let st = &mut *st;
        st.windows.expire(now_ns);
        let transitions = st.alerts.evaluate(&self.cfg.rules, &st.windows, now_ns);
        for t in &transitions {
            match t {
                Transition::Firing { rule, key, value } => {
                    tracing::warn!(
                        rule,
                        service = key.service,
                        route = key.route,
                        side = key.side.as_str(),
                        value,
                        "HTTP alert firing"
                    );
                    self.families.transition(rule, "firing");
                    st.firing.insert(
                        (rule.clone(), key.clone()),
                        Firing {
                            value: *value,
                            since: Instant::now(),
                        },
                    );
                }
                Transition::Resolved { rule, key, value } => {
                    tracing::info!(
                        rule,
                        service = key.service,
                        route = key.route,
                        side = key.side.as_str(),
                        value,
                        "HTTP alert resolved"
                    );
                    self.families.transition(rule, "resolved");
                    st.firing.remove(&(rule.clone(), key.clone()));
                }
            }
        }
        self.evaluate_policy_alerts(st, now_ns);
        transitions
    }

    /// The programs' policy alerts on HTTP signals, each on the program's
    /// own windows, published to the board (which reports transitions).
    fn evaluate_policy_alerts(&self, st: &mut State, now_ns: u64) {
        let mut published = std::collections::BTreeSet::new();
        for (p, info) in &st.programs {
            let Some(w) = st.program_windows.get_mut(p) else {
                continue;
            };
            w.expire(now_ns);
            let rules: Vec<Rule> = info.alerts.iter().map(|(_, r)| r.clone()).collect();
            let found: Vec<Breach> = breached(&rules, w, now_ns)
                .into_iter()
                .map(|(i, key, value)| Breach {
                    rule: info.alerts[i].0.clone(),
                    series: (key.service, key.route, key.side.as_str().to_string()),
                    value,
                })
                .collect();
            self.board.publish(p, Source::Http, found);
            published.insert(p.clone());
        }
        // Programs that lost their HTTP alerts (or went): theirs resolve.
        for p in st.alerts_published.difference(&published) {
            self.board.publish(p, Source::Http, Vec::new());
        }
        st.alerts_published = published;
    }

    /// Fills `http` of every revision of a tracer program (zero figures
    /// for revisions that saw no traffic yet); leaves other programs alone.
    pub fn fill_stats(&self, stats: &mut pb::StatsResponse) {
        let st = self.lock();
        for rs in &mut stats.revisions {
            let Some(info) = st.programs.get(&rs.program) else {
                continue;
            };
            let Some(token) = info.revisions.get(&rs.revision) else {
                continue;
            };
            let fig = st
                .figures
                .get(&(rs.program.clone(), *token))
                .cloned()
                .unwrap_or_default();
            rs.http = Some(fig.to_proto());
        }
    }
}

/// Kernel monotonic time in ns (the clock of `bpf_ktime_get_ns`, which
/// stamps every event); read through [`crate::kernel::sys`].
pub fn mono_ns() -> u64 {
    crate::kernel::sys::mono_ns()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
