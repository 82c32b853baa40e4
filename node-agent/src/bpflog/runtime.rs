//! The BPF log reader: one thread that reads the node's log ring while it
//! is pinned (a program using `bpfleet_log.h` is loaded), writes each
//! record as one JSON line on stdout, and counts what it printed and what
//! did not decode. Lines of one turn are written with one locked write of
//! whole lines, so they never interleave with anything else the process
//! writes on stdout (nothing else does in `serve`: the agent's own logs go
//! to stderr). It follows the agent's program views to name records (and,
//! for an origin they do not name, asks the agent for its orphaned
//! revisions too, at most once a second and only when the agent is free)
//! and
//! notices when the ring's pin goes (the last program using it was
//! unloaded) or is made again (another map id), reading the new one.
//!
//! Started after the agent dropped its capabilities; it needs none beyond
//! reading the pin.

use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{LogCounters, Names, Record, json_line, wall_now_ns, wall_ns};
use crate::agent::{Agent, Views};
use crate::kernel::{self, logring::LogRing};

/// Longest wait for records.
const POLL: Duration = Duration::from_millis(100);
/// How often the pin is checked while the ring is read, and looked for
/// while there is none.
const CHECK: Duration = Duration::from_millis(250);
/// Least time between two questions to the agent about an origin the
/// views do not name.
const ASK: Duration = Duration::from_secs(1);

/// The running reader; stopped (and joined) when dropped.
#[derive(Debug)]
pub struct LogReader {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// What the reader needs.
#[derive(Debug)]
pub struct ReaderConfig {
    /// The ring's pin (`<pin-root>/_bpfleet_log`).
    pub pin: PathBuf,
    /// The node's name in every line (`--node-name`, else the hostname).
    pub node: String,
    /// The agent's published program views.
    pub views: watch::Receiver<Views>,
    /// The agent, asked (never waited for) about origins the views do not
    /// name: revisions adopted as orphans.
    pub agent: Arc<Mutex<Agent>>,
    /// Where the counters go.
    pub counters: Arc<LogCounters>,
}

impl LogReader {
    /// Starts the reader thread, writing on stdout.
    pub fn start(cfg: ReaderConfig) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("bpf-log".into())
            .spawn(move || read(cfg, &flag, &mut std::io::stdout()))?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for LogReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The node's name: `configured`, else the kernel's hostname.
pub fn node_name(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

struct Turn {
    names: Names,
    views: watch::Receiver<Views>,
    agent: Arc<Mutex<Agent>>,
    asked: Option<Instant>,
    lines: Vec<u8>,
}

impl Turn {
    fn record(&mut self, raw: &[u8], node: &str, counters: &LogCounters) {
        if self.views.has_changed().unwrap_or(false) {
            let v = self.views.borrow_and_update().clone();
            // Kept with the names from before: a record of a revision
            // unloaded a moment ago still names it.
            self.names.extend(Names::from_views(&v));
        }
        match Record::decode(raw) {
            Ok(rec) => {
                if self.names.get(rec.origin).is_none() {
                    self.ask_agent();
                }
                let wall = wall_ns(rec.ts_ns, kernel::sys::mono_ns(), wall_now_ns());
                self.lines
                    .extend_from_slice(json_line(&rec, &self.names, node, wall).as_bytes());
                self.lines.push(b'\n');
                counters.printed(&rec, &self.names);
            }
            Err(e) => {
                counters.malformed();
                tracing::debug!(error = %e, "BPF log record dropped");
            }
        }
    }

    /// Names of every revision the agent holds, orphans included, when the
    /// agent is free and was not asked in the last [`ASK`].
    fn ask_agent(&mut self) {
        if self.asked.is_some_and(|at| at.elapsed() < ASK) {
            return;
        }
        self.asked = Some(Instant::now());
        let pairs = match self.agent.try_lock() {
            Ok(a) => a.log_names(),
            Err(_) => return,
        };
        self.names.extend(Names::from_pairs(pairs));
    }

    /// Writes the lines of this turn, whole, in one locked write.
    fn flush(&mut self, out: &mut impl Write) {
        if self.lines.is_empty() {
            return;
        }
        if let Err(e) = out.write_all(&self.lines).and_then(|()| out.flush()) {
            tracing::warn!(error = %e, lines = self.lines.iter().filter(|b| **b == b'\n').count(), "cannot write BPF log lines on stdout");
        }
        self.lines.clear();
    }
}

/// The reader's loop, until `stop`.
fn read(cfg: ReaderConfig, stop: &AtomicBool, out: &mut impl Write) {
    let ReaderConfig {
        pin,
        node,
        mut views,
        agent,
        counters,
    } = cfg;
    let names = Names::from_views(&views.borrow_and_update().clone());
    let turn = RefCell::new(Turn {
        names,
        views,
        agent,
        asked: None,
        lines: Vec::new(),
    });
    let mut last_error = String::new();
    while !stop.load(Ordering::Relaxed) {
        if kernel::logring::pinned_id(&pin).is_none() {
            std::thread::sleep(CHECK);
            continue;
        }
        let ring = match LogRing::open(&pin) {
            Ok(r) => r,
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    tracing::warn!(error = e, "cannot read the BPF log ring");
                    last_error = e;
                }
                std::thread::sleep(CHECK);
                continue;
            }
        };
        tracing::info!(pin = %pin.display(), map_id = ring.id(), "reading the node's BPF log ring");
        let mut checked = Instant::now();
        let res = ring.run(
            stop,
            POLL,
            |raw| turn.borrow_mut().record(raw, &node, &counters),
            || {
                turn.borrow_mut().flush(out);
                if checked.elapsed() < CHECK {
                    return true;
                }
                checked = Instant::now();
                kernel::logring::pinned_id(&pin) == Some(ring.id())
            },
        );
        turn.borrow_mut().flush(out);
        match res {
            Ok(()) if !stop.load(Ordering::Relaxed) => {
                tracing::info!(pin = %pin.display(), "the BPF log ring was let go or made again");
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading the BPF log ring failed");
                std::thread::sleep(CHECK);
            }
        }
    }
}
