//! The threads of the tracer runtime: a watcher that follows the agent's
//! published program views (a `watch` channel the agent sends on before an
//! operation returns; the watcher wakes within 25 ms of a change and looks
//! at the rules file and its readers every 250 ms), starts one reader per
//! tracer program, stops readers of programs that were unloaded, keeps the
//! kernel side from tracing the agent itself (`bpfleet_config
//! [CFG_IGNORE_TGID]` = the agent's pid, written through UpdateConfig so
//! it is audited) and evaluates alert rules every second; and the readers,
//! which turn the kernel's counts (every second) into [`Counted`] label
//! sets and the pinned ring buffer into [`Record`]s for the [`Hub`]. It
//! never polls the agent for views; it takes the agent's lock only to
//! write the pid.
//!
//! Threads are started after the agent dropped its capabilities, so they
//! run with the reduced set.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bpfleet_httptrace::route::Routes;
use bpfleet_httptrace::{Outcome, Role};
use bpfleet_tracer::aggregate::{AggKey, Counts, Deltas, Handover};
use bpfleet_tracer::event::config::{IGNORE_TGID, PATHS_EPOCH};
use bpfleet_tracer::pinned::{Aggregates, Pinned, forget_paths};
use bpfleet_tracer::pipeline::{Pipeline, Traced};
use tokio::sync::watch;

use super::identity::Resolver;
use super::record::{Record, Side, normalize_method};
use super::rules::load_policy;
use super::{Counted, Hub, TracerPins, mono_ns};
use crate::agent::{Agent, ProgramView, Views};
use crate::kernel::{self, CONFIG_MAP};

/// How often the watcher looks at its readers and the rules file (a change
/// of the agent's program views wakes it sooner).
const WATCH: Duration = Duration::from_millis(250);
/// Longest wait for ring-buffer data (the kernel side batches wake-ups).
const POLL: Duration = Duration::from_millis(100);
/// Timeouts, the lost counter and alert evaluation run this often.
const TICK: Duration = Duration::from_secs(1);
/// A reader that failed is retried after this long.
const RETRY: Duration = Duration::from_secs(5);

struct Reader {
    stop: Arc<AtomicBool>,
    /// Set with `stop` when the agent shuts down: the reader leaves its
    /// counts for the next agent ([`Handover`]).
    hand_over: Arc<AtomicBool>,
    handle: JoinHandle<()>,
    events_pin: PathBuf,
}

/// The running watcher; stops it and every reader when dropped.
#[derive(Debug)]
pub struct Runtime {
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

impl Runtime {
    /// Starts the watcher over `agent`: the hub follows the agent's
    /// program views, and so does the watcher.
    pub fn start(agent: Arc<Mutex<Agent>>, hub: Arc<Hub>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let views = match agent.lock() {
            Ok(a) => {
                hub.follow(a.subscribe_views());
                Some(a.subscribe_views())
            }
            Err(_) => {
                tracing::error!("agent state lock poisoned; the HTTP tracer does not start");
                None
            }
        };
        let watcher = views.and_then(|views| {
            std::thread::Builder::new()
                .name("http-tracer".into())
                .spawn(move || watch(&agent, views, &hub, &flag))
                .map_err(|e| tracing::error!(error = %e, "cannot start the HTTP tracer watcher"))
                .ok()
        });
        Self { stop, watcher }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.watcher.take() {
            let _ = h.join();
        }
    }
}

/// Size and modification time of the policy file, to notice a change
/// (a ConfigMap update swaps a symlink; metadata follows it).
fn stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Re-reads the TracerPolicy file when it changed; rules that do not parse
/// or compile are refused and the ones in force stay.
fn reload_rules(hub: &Hub, seen: &mut Option<(u64, SystemTime)>) {
    let Some((path, base)) = &hub.config().rules_file else {
        return;
    };
    let now = stamp(path);
    if now == *seen {
        return;
    }
    *seen = now;
    match load_policy(base.clone(), path) {
        Ok(rules) => {
            if *hub.rules().1 != rules {
                tracing::info!(file = %path.display(), "HTTP tracer rules reloaded");
                hub.set_rules(rules);
            } else {
                hub.set_rules_error(None);
            }
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "HTTP tracer rules not reloaded; the previous ones stay");
            hub.set_rules_error(Some(e.to_string()));
        }
    }
}

fn watch(
    agent: &Mutex<Agent>,
    mut views: watch::Receiver<Views>,
    hub: &Arc<Hub>,
    stop: &AtomicBool,
) {
    let mut readers: BTreeMap<String, Reader> = BTreeMap::new();
    let mut rules_seen = hub.config().rules_file.as_ref().and_then(|(p, _)| stamp(p));
    let mut failed: BTreeMap<String, Instant> = BTreeMap::new();
    let mut last_eval = Instant::now();
    let own = std::process::id();
    while !stop.load(Ordering::Relaxed) {
        reload_rules(hub, &mut rules_seen);
        // The views as the agent last published them (the hub reads the
        // same ones when it filters). Cloned out of the channel (the
        // agent's lock is taken below, and the agent publishes under it)
        // and dropped before the wait, so a publish never finds the list
        // shared and has to copy every program's view.
        let current: Views = views.borrow_and_update().clone();
        let poisoned = current
            .iter()
            .filter(|v| is_tracer(v))
            .any(|v| !ignore_self(agent, v, own));
        drop(current);
        if poisoned {
            tracing::error!("agent state lock poisoned; the HTTP tracer stops");
            break;
        }
        let wanted: BTreeMap<String, TracerPins> = hub
            .tracer_programs()
            .into_iter()
            .map(|t| (t.program.clone(), t))
            .collect();
        // Readers of programs that went away, or whose pins changed.
        let gone: Vec<String> = readers
            .iter()
            .filter(|(p, r)| wanted.get(*p).is_none_or(|t| t.events != r.events_pin))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone {
            if let Some(r) = readers.remove(&p) {
                r.stop.store(true, Ordering::Relaxed);
                let _ = r.handle.join();
                tracing::info!(program = p, "HTTP tracer reader stopped");
            }
            // A program unloaded while the agent was down may have left
            // counts for a reader that will not come.
            if !wanted.contains_key(&p)
                && let Some(f) = handover_file(hub, &p)
            {
                let _ = std::fs::remove_file(f);
            }
        }
        // Readers that ended by themselves (an error, or the pin vanished).
        let ended: Vec<String> = readers
            .iter()
            .filter(|(_, r)| r.handle.is_finished())
            .map(|(p, _)| p.clone())
            .collect();
        for p in ended {
            if let Some(r) = readers.remove(&p) {
                let _ = r.handle.join();
                failed.insert(p, Instant::now());
            }
        }
        failed.retain(|p, at| wanted.contains_key(p) && at.elapsed() < RETRY);
        let mut lost_lock = false;
        for (p, pins) in wanted {
            if readers.contains_key(&p) || failed.contains_key(&p) {
                continue;
            }
            if !new_paths_epoch(agent, &pins) {
                lost_lock = true;
                break;
            }
            let flag = Arc::new(AtomicBool::new(false));
            let hand_over = Arc::new(AtomicBool::new(false));
            let events = pins.events.clone();
            let (h, st, ho) = (hub.clone(), flag.clone(), hand_over.clone());
            match std::thread::Builder::new()
                .name(format!("http-reader-{p}"))
                .spawn(move || read(&h, &pins, &st, &ho))
            {
                Ok(handle) => {
                    tracing::info!(program = p, "HTTP tracer reader started");
                    readers.insert(
                        p,
                        Reader {
                            stop: flag,
                            hand_over,
                            handle,
                            events_pin: events,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(program = p, error = %e, "cannot start an HTTP tracer reader");
                    failed.insert(p, Instant::now());
                }
            }
        }
        if lost_lock {
            tracing::error!("agent state lock poisoned; the HTTP tracer stops");
            break;
        }
        if last_eval.elapsed() >= TICK {
            hub.evaluate(mono_ns());
            last_eval = Instant::now();
        }
        let until = Instant::now() + WATCH;
        while Instant::now() < until
            && !stop.load(Ordering::Relaxed)
            && !views.has_changed().unwrap_or(false)
        {
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    // The agent is stopping; its programs stay loaded and counting, and
    // the next agent's readers go on from these readers' last reads.
    for (_, r) in readers {
        r.hand_over.store(true, Ordering::Relaxed);
        r.stop.store(true, Ordering::Relaxed);
        let _ = r.handle.join();
    }
}

/// Where a stopping reader of `program` leaves its counts: beside the
/// agent's state file, which outlives the agent (a hostPath).
fn handover_file(hub: &Hub, program: &str) -> Option<PathBuf> {
    hub.config()
        .handover_dir
        .as_ref()
        .map(|d| d.join(format!("http-tracer-{program}.handover")))
}

/// The counts a previous agent's reader of `aggs` left in `file`, which
/// is consumed: None when there are none, they do not parse, or they were
/// read from another map (the program was loaded again since).
fn take_handover(file: &Path, aggs: &Aggregates, program: &str) -> Option<Handover> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(program, file = %file.display(), error = %e, "cannot read the HTTP tracer's handed-over counts; counting starts afresh");
            return None;
        }
    };
    if let Err(e) = std::fs::remove_file(file) {
        tracing::warn!(program, file = %file.display(), error = %e, "cannot remove the HTTP tracer's handed-over counts");
    }
    let h = match Handover::decode(&text) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(program, file = %file.display(), error = e, "the HTTP tracer's handed-over counts do not parse; counting starts afresh");
            return None;
        }
    };
    match aggs.map_id() {
        Ok(id) if id == h.map_id => Some(h),
        Ok(id) => {
            tracing::info!(
                program,
                handed_over = h.map_id,
                now = id,
                "handed-over HTTP counts are of an earlier load of the program; counting starts afresh"
            );
            None
        }
        Err(e) => {
            tracing::warn!(program, error = %e, "cannot check the handed-over HTTP counts; counting starts afresh");
            None
        }
    }
}

/// Writes `h` to `file` whole (a temporary file renamed over it).
fn write_handover(file: &Path, h: &Handover) -> std::io::Result<()> {
    let tmp = file.with_extension("handover.tmp");
    std::fs::write(&tmp, h.encode())?;
    std::fs::rename(&tmp, file)
}

fn is_tracer(v: &ProgramView) -> bool {
    v.shared_maps.contains_key(super::EVENTS_MAP) && v.shared_maps.contains_key(super::LOST_MAP)
}

/// Makes sure the kernel side ignores the agent's own process (its HTTP
/// endpoint would otherwise trace itself); written, through the agent so
/// that it is audited, only when it differs. False when the agent's lock is
/// poisoned.
fn ignore_self(agent: &Mutex<Agent>, v: &ProgramView, own: u32) -> bool {
    let Some(pin) = v.shared_maps.get(CONFIG_MAP) else {
        return true;
    };
    if kernel::maps::read_u64(pin, IGNORE_TGID) == Some(u64::from(own)) {
        return true;
    }
    write_slot(
        agent,
        &v.program,
        IGNORE_TGID,
        u64::from(own),
        "cannot tell the tracer to ignore the agent",
    )
}

/// Writes one `bpfleet_config` slot of `program` through the agent, so
/// that it is audited (as `agent:http-tracer`); a refusal is logged with
/// `failed`. False when the agent's lock is poisoned.
fn write_slot(agent: &Mutex<Agent>, program: &str, slot: u32, value: u64, failed: &str) -> bool {
    let req = crate::agent::request::slots_write(program, &[(slot, value)]);
    let Ok(mut a) = agent.lock() else {
        return false;
    };
    if let Err(e) = a.update_config(&req, "agent:http-tracer") {
        tracing::warn!(program, error = %e, "{failed}");
    }
    true
}

/// A reader about to start has no names for the path keys announced
/// before it (an agent restart finds the program loaded and its keys
/// known): the kernel forgets them, then moves to a new paths epoch, so
/// that sockets that marked a key announced look again, and every key is
/// announced to the new reader on its next request. The epoch is written
/// through the agent like the pid (audited). False when the agent's lock
/// is poisoned.
fn new_paths_epoch(agent: &Mutex<Agent>, pins: &TracerPins) -> bool {
    let (Some(paths), Some(config)) = (&pins.paths, &pins.config) else {
        return true; // an object from before metrics mode
    };
    if let Err(e) = forget_paths(paths) {
        tracing::warn!(program = pins.program, error = %e, "cannot reset the tracer's path keys");
        return true;
    }
    let epoch = kernel::maps::read_u64(config, PATHS_EPOCH).unwrap_or(0) as u32;
    write_slot(
        agent,
        &pins.program,
        PATHS_EPOCH,
        u64::from(epoch.wrapping_add(1)),
        "cannot move the tracer to a new paths epoch",
    )
}

/// One reader: until `stop` or until the ring buffer's pin disappears.
/// Stopped with `hand_over` set, it leaves its counts for the next
/// agent's reader.
fn read(hub: &Hub, pins: &TracerPins, stop: &AtomicBool, hand_over: &AtomicBool) {
    let program = pins.program.as_str();
    let cfg = hub.config();
    let fail = |e: String| {
        tracing::warn!(program, error = e, "HTTP tracer reader failed");
        hub.reader_status(program, |s| {
            s.running = false;
            s.error = Some(e);
        });
    };
    let pinned = match Pinned::open(&pins.events, &pins.lost) {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    let aggregates = match pins.aggs.as_deref().map(Aggregates::open).transpose() {
        Ok(a) => a,
        Err(e) => return fail(e.to_string()),
    };
    let mut counts = KernelCounts::new(cfg.proc_root.clone());
    let mut handed: Vec<(u64, String)> = Vec::new();
    let handover = handover_file(hub, program);
    if let Some(a) = &aggregates {
        match handover
            .as_deref()
            .and_then(|f| take_handover(f, a, program))
        {
            // The previous agent stopped (a restart, an upgrade) and left
            // its last read: what the kernel counted since, also while no
            // agent ran, is reported by this reader.
            Some(h) => {
                tracing::info!(
                    program,
                    entries = h.totals.len(),
                    "HTTP tracer counts taken over from the previous agent"
                );
                counts.deltas = Deltas::resume(h.totals);
                handed = h.paths;
            }
            // Otherwise what the kernel counted before this reader (an
            // agent that was killed, and restarts to find the program
            // loaded) is not reported: figures start from zero with the
            // reader, as they do for events. A new program's reader starts
            // at Load, before Activate sends traffic to it.
            None => counts.prime(a),
        }
    }
    let (mut generation, rules) = hub.rules_for(program);
    let mut routes = match rules.routes() {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    let redactor = match rules.redactor() {
        Ok(r) => Arc::new(r),
        Err(e) => return fail(e.to_string()),
    };
    let mut resolver = Resolver::new(
        cfg.proc_root.clone(),
        cfg.pods_dir.clone(),
        cfg.max_services,
        redactor.clone(),
    );
    let mut pipeline = Pipeline::new(redactor, cfg.max_connections);
    for (key, path) in handed {
        pipeline.remember_path(key, path);
    }
    pipeline.request_timeout_ns = u64::try_from(cfg.request_timeout.as_nanos()).unwrap_or(u64::MAX);
    hub.reader_status(program, |s| {
        s.running = true;
        s.error = None;
    });
    let own = std::process::id();
    let shared = RefCell::new((pipeline, Vec::<Traced>::new()));
    let mut last_tick = Instant::now();
    let mut records = Vec::new();
    let mut own_dropped = 0u64;
    let res = pinned.run(
        stop,
        POLL,
        |raw| {
            let mut g = shared.borrow_mut();
            let (p, out) = &mut *g;
            p.handle_raw(raw, out);
        },
        || {
            let mut g = shared.borrow_mut();
            let (p, out) = &mut *g;
            if hub.rules_generation() != generation {
                // Reloaded rules (checked by the watcher): exchanges
                // completed from here on follow them.
                let (g, rules) = hub.rules_for(program);
                if let (Ok(r), Ok(red)) = (rules.routes(), rules.redactor()) {
                    routes = r;
                    let red = Arc::new(red);
                    resolver.set_redactor(red.clone());
                    p.set_redactor(red);
                }
                generation = g;
            }
            let tick = last_tick.elapsed() >= TICK;
            if tick {
                p.tick(mono_ns(), out);
                last_tick = Instant::now();
                if let Some(a) = &aggregates {
                    let counted = counts.take(a, p, &mut routes, &mut resolver, own);
                    hub.apply_counted(program, &counted);
                }
            }
            for t in out.drain(..) {
                if t.conn.tgid == own {
                    own_dropped += 1;
                } else {
                    records.push(to_record(t, &mut routes, &mut resolver));
                }
            }
            hub.apply(program, &records);
            records.clear();
            let h = p.health();
            let conns = p.connections() as u64;
            let lost = if tick { pinned.lost().ok() } else { None };
            hub.reader_status(program, |s| {
                s.events = h.events;
                s.malformed = h.malformed;
                s.parse_errors = h.parse_errors;
                s.evicted = h.connections_evicted;
                s.connections = conns;
                s.own_dropped = own_dropped;
                if let Some(l) = lost {
                    s.lost = l;
                }
            });
        },
    );
    if res.is_ok()
        && hand_over.load(Ordering::Relaxed)
        && let (Some(a), Some(file)) = (&aggregates, &handover)
    {
        let (p, _) = &*shared.borrow();
        match a.map_id() {
            Ok(map_id) => {
                let h = counts.handover(map_id, p);
                match write_handover(file, &h) {
                    Ok(()) => tracing::info!(
                        program,
                        entries = h.totals.len(),
                        file = %file.display(),
                        "HTTP tracer counts handed over to the next agent"
                    ),
                    Err(e) => {
                        tracing::warn!(program, file = %file.display(), error = %e, "cannot hand the HTTP tracer's counts over; the next agent starts from zero")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(program, error = %e, "cannot hand the HTTP tracer's counts over; the next agent starts from zero")
            }
        }
    }
    match res {
        Ok(()) => hub.reader_status(program, |s| s.running = false),
        Err(e) => fail(e.to_string()),
    }
}

/// How many reads a count may wait for its path key's name (the kernel
/// announces a key once, and again after the ring buffer refused it)
/// before it is recorded under `/*`.
const UNNAMED_READS: u32 = 5;

/// Metrics mode's side of a reader: the kernel's counts become their
/// growth per read, named by the path keys the pipeline learnt, and the
/// entries of processes that exited are deleted once their last counts
/// were taken.
struct KernelCounts {
    deltas: Deltas,
    /// Growth whose path key has no name yet, and how many reads it waited.
    waiting: Vec<(AggKey, Counts, u32)>,
    proc_root: PathBuf,
}

impl KernelCounts {
    fn new(proc_root: PathBuf) -> Self {
        Self {
            deltas: Deltas::default(),
            waiting: Vec::new(),
            proc_root,
        }
    }

    /// What the next reader needs to go on from this one's last read: the
    /// totals it read, less the growth still waiting for a path's name
    /// (the next reader reports it), and the names of their path keys.
    fn handover(&mut self, map_id: u32, pipeline: &Pipeline) -> Handover {
        for (k, c, _) in std::mem::take(&mut self.waiting) {
            self.deltas.defer(&k, &c);
        }
        let totals = self.deltas.totals();
        let keys: std::collections::HashSet<u64> = totals.iter().map(|(k, _)| k.path_key).collect();
        let paths = pipeline
            .paths()
            .filter(|(k, _)| keys.contains(k))
            .map(|(k, p)| (k, p.to_string()))
            .collect();
        Handover {
            map_id,
            totals,
            paths,
        }
    }

    /// Takes the counts as they are now as the starting point.
    fn prime(&mut self, aggs: &Aggregates) {
        if let Ok(now) = aggs.read() {
            self.deltas.update(now);
        }
    }

    fn take(
        &mut self,
        aggs: &Aggregates,
        pipeline: &Pipeline,
        routes: &mut Routes,
        resolver: &mut Resolver,
        own: u32,
    ) -> Vec<Counted> {
        let now = match aggs.read() {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the tracer's counts");
                return Vec::new();
            }
        };
        let mut gone: Vec<AggKey> = Vec::new();
        let mut alive: BTreeMap<u32, bool> = BTreeMap::new();
        for (k, _) in &now {
            let live = *alive
                .entry(k.tgid)
                .or_insert_with(|| self.proc_root.join(k.tgid.to_string()).exists());
            if !live {
                gone.push(*k);
            }
        }
        let grown = self.deltas.update(now);
        // Taken: the entries of exited processes can go (nothing adds to
        // them any more).
        for k in &gone {
            if aggs.delete(k).is_ok() {
                self.deltas.forget(k);
            }
        }
        let end_ns = mono_ns();
        let mut out = Vec::new();
        let mut still = Vec::new();
        let pending = std::mem::take(&mut self.waiting)
            .into_iter()
            .chain(grown.into_iter().map(|(k, c)| (k, c, 0)));
        for (k, c, waited) in pending {
            if k.tgid == own {
                continue;
            }
            let Some(side) = k.role.map(|r| match r {
                Role::Server => Side::Server,
                Role::Client => Side::Client,
            }) else {
                continue;
            };
            let path = if k.path_key == bpfleet_tracer::aggregate::PATH_OVERFLOW {
                None
            } else {
                match pipeline.path(k.path_key) {
                    Some(p) => Some(p),
                    None if waited < UNNAMED_READS => {
                        still.push((k, c, waited + 1));
                        continue;
                    }
                    None => None,
                }
            };
            let route = path.map_or_else(|| "/*".to_string(), |p| routes.route(p));
            let id = resolver.resolve(k.tgid);
            out.push(Counted {
                record: Record {
                    token: u64::from(k.revision),
                    side,
                    method: k.method.as_str(),
                    status: k.status,
                    route,
                    service: id.service.clone(),
                    namespace: id.namespace.clone(),
                    pod: id.pod.clone(),
                    deployment: id.deployment.clone(),
                    command_line: id.command_line.clone(),
                    duration_ns: 0,
                    end_ns,
                    target: path.unwrap_or_default().to_string(),
                    local_port: 0,
                    remote_port: 0,
                    request_body_bytes: None,
                    response_body_bytes: None,
                    outcome: if k.status.is_some() {
                        Outcome::Complete
                    } else {
                        Outcome::Closed
                    },
                },
                durations_ns: c.durations(),
            });
        }
        self.waiting = still;
        out
    }
}

fn to_record(t: Traced, routes: &mut Routes, resolver: &mut Resolver) -> Record {
    let id = resolver.resolve(t.conn.tgid);
    let e = t.exchange;
    Record {
        token: u64::from(t.revision),
        side: match e.role {
            Role::Server => Side::Server,
            Role::Client => Side::Client,
        },
        method: normalize_method(&e.method),
        status: e.status,
        route: routes.route(&e.target),
        service: id.service.clone(),
        namespace: id.namespace.clone(),
        pod: id.pod.clone(),
        deployment: id.deployment.clone(),
        command_line: id.command_line.clone(),
        duration_ns: e.duration_ns(),
        end_ns: e.end_ns,
        target: e.target,
        local_port: t.local_port,
        remote_port: t.remote_port,
        request_body_bytes: e.request_body_bytes,
        response_body_bytes: e.response_body_bytes,
        outcome: e.outcome,
    }
}
