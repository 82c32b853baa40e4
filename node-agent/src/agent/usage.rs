//! Per-program CPU usage over time windows: every program's cumulative
//! kernel figures (BPF run time, runs, program errors, events lost, summed
//! over its revisions as Stats reports them) sampled at a steady period
//! into a ring per program, and the differences over a window read back.
//!
//! The CPU share of a program over a window is the BPF run time it added
//! divided by the wall time of the window times the node's online CPUs,
//! in percent: the share of the whole node's CPU time, so 100 % is every
//! CPU busy in the program. The run time of a program behind a dispatcher
//! (tracepoints, raw tracepoints, uprobes) is the dispatcher's run time
//! while it ran the program: the tail-called revision's time and the few
//! instructions of the dispatcher before the tail call.
//!
//! A total that goes down (a revision unloaded, so its figures leave the
//! sum; the program unloaded and loaded again) starts the ring afresh: a
//! window never spans such a drop. A window is answered only when the
//! ring holds a sample at least that old, so a figure is always over the
//! whole window asked for, never a shorter one passed off as it.
//!
//! Pure: the caller reads the kernel and the clock and hands the figures
//! in ([`Usage::record`]); everything here is arithmetic.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// A program's cumulative figures at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// BPF run time, ns (kernel `run_time_ns`, dispatched runs included).
    pub run_ns: u64,
    /// Runs (kernel `run_cnt`).
    pub runs: u64,
    /// Errors the program counted (`bpfleet_errors` slot 0).
    pub errors: u64,
    /// Events the program dropped (`bpfleet_errors` slot 1); None when
    /// one of its revisions' objects predates that slot.
    pub lost: Option<u64>,
}

/// One sample: the monotonic time it was taken and the totals then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    at_ns: u64,
    totals: Totals,
}

/// What a program did over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowFigures {
    /// The wall time the figures cover: the window asked for, or up to
    /// one sampling period more.
    pub span: Duration,
    /// BPF run time as a share of the node's CPU time, percent (0 to 100).
    pub cpu_percent: f64,
    /// BPF run time added, ns.
    pub run_ns: u64,
    /// Runs added.
    pub runs: u64,
    /// Program errors added.
    pub errors: u64,
    /// Events lost added (None when the program does not count them).
    pub lost: Option<u64>,
}

/// The share of the node's CPU time that `run_ns` of BPF run time is over
/// `wall_ns` of wall time on `cpus` CPUs, in percent. None when the wall
/// time or the CPU count is zero.
pub fn cpu_percent(run_ns: u64, wall_ns: u64, cpus: u32) -> Option<f64> {
    if wall_ns == 0 || cpus == 0 {
        return None;
    }
    Some(run_ns as f64 * 100.0 / (wall_ns as f64 * f64::from(cpus)))
}

/// Rings of samples per program.
#[derive(Debug, Clone)]
pub struct Usage {
    /// How far back samples are kept.
    keep: Duration,
    /// Online CPUs of the node, as of the last sample.
    cpus: u32,
    rings: BTreeMap<String, VecDeque<Sample>>,
}

/// How often the agent samples (its sampler's period).
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// The longest window kept by default: the longest alert window (1 h) and
/// a little more, so a 1 h window is answerable at every sample.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(3600 + 120);

impl Default for Usage {
    fn default() -> Self {
        Self::new(DEFAULT_KEEP)
    }
}

impl Usage {
    /// Rings keeping `keep` of history.
    pub fn new(keep: Duration) -> Self {
        Self {
            keep,
            cpus: 0,
            rings: BTreeMap::new(),
        }
    }

    /// Records the totals of every program the agent holds at `at_ns`
    /// (monotonic) on a node with `cpus` online CPUs. Programs not in
    /// `totals` are gone: their rings are dropped. A sample not later than
    /// the last one of its program is ignored.
    pub fn record(
        &mut self,
        at_ns: u64,
        cpus: u32,
        totals: impl IntoIterator<Item = (String, Totals)>,
    ) {
        if cpus > 0 {
            self.cpus = cpus;
        }
        let keep_ns = u64::try_from(self.keep.as_nanos()).unwrap_or(u64::MAX);
        // Rings of the programs in `totals` move over; the others go.
        let mut old = std::mem::take(&mut self.rings);
        for (program, t) in totals {
            let mut ring = old.remove(&program).unwrap_or_default();
            match ring.back() {
                Some(last) if last.at_ns >= at_ns => {}
                Some(last) if went_down(&last.totals, &t) => {
                    ring.clear();
                    ring.push_back(Sample { at_ns, totals: t });
                }
                _ => ring.push_back(Sample { at_ns, totals: t }),
            }
            // Keep one sample older than `keep`, so a window of exactly
            // `keep` still has its base.
            while ring.len() > 2 && at_ns.saturating_sub(ring[1].at_ns) >= keep_ns {
                ring.pop_front();
            }
            self.rings.insert(program, ring);
        }
    }

    /// Forgets a program (unloaded).
    pub fn forget(&mut self, program: &str) {
        self.rings.remove(program);
    }

    /// The online CPUs the shares are computed with (0 before any sample).
    pub fn cpus(&self) -> u32 {
        self.cpus
    }

    /// What `program` did over the last `window`: from the newest sample
    /// back to the newest one at least `window` older. None when the
    /// program is unknown or its ring does not reach that far back yet.
    pub fn window(&self, program: &str, window: Duration) -> Option<WindowFigures> {
        let ring = self.rings.get(program)?;
        let newest = ring.back()?;
        let window_ns = u64::try_from(window.as_nanos()).ok()?;
        let base = ring.iter().rev().find(|s| {
            newest.at_ns.saturating_sub(s.at_ns) >= window_ns && s.at_ns < newest.at_ns
        })?;
        self.between(base, newest)
    }

    /// Like [`Usage::window`], but while the ring does not reach `window`
    /// back yet, over all it holds (at least two samples): for counts
    /// (errors, events lost) that is a lower bound of the window's, which
    /// an alert may fire on without waiting for the whole window.
    pub fn up_to(&self, program: &str, window: Duration) -> Option<WindowFigures> {
        if let Some(w) = self.window(program, window) {
            return Some(w);
        }
        let ring = self.rings.get(program)?;
        let (oldest, newest) = (ring.front()?, ring.back()?);
        newest.at_ns.checked_sub(oldest.at_ns).filter(|w| *w > 0)?;
        self.between(oldest, newest)
    }

    /// The figures from sample `a` to the later sample `b`.
    fn between(&self, a: &Sample, b: &Sample) -> Option<WindowFigures> {
        let wall_ns = b.at_ns - a.at_ns;
        let (a, b) = (&a.totals, &b.totals);
        let run_ns = b.run_ns.saturating_sub(a.run_ns);
        Some(WindowFigures {
            span: Duration::from_nanos(wall_ns),
            cpu_percent: cpu_percent(run_ns, wall_ns, self.cpus)?,
            run_ns,
            runs: b.runs.saturating_sub(a.runs),
            errors: b.errors.saturating_sub(a.errors),
            lost: match (a.lost, b.lost) {
                (Some(x), Some(y)) => Some(y.saturating_sub(x)),
                _ => None,
            },
        })
    }

    /// The CPU share of `program` over the last `window`, percent of the
    /// node's CPU time ([`Usage::window`]).
    pub fn cpu_percent(&self, program: &str, window: Duration) -> Option<f64> {
        self.window(program, window).map(|w| w.cpu_percent)
    }

    /// Program errors `program` counted over the last `window`.
    pub fn errors(&self, program: &str, window: Duration) -> Option<u64> {
        self.window(program, window).map(|w| w.errors)
    }

    /// Events `program` lost over the last `window` (None also when it
    /// does not count them).
    pub fn events_lost(&self, program: &str, window: Duration) -> Option<u64> {
        self.window(program, window).and_then(|w| w.lost)
    }
}

/// Whether a cumulative figure fell between two samples.
fn went_down(before: &Totals, now: &Totals) -> bool {
    now.run_ns < before.run_ns
        || now.runs < before.runs
        || now.errors < before.errors
        || matches!((before.lost, now.lost), (Some(b), Some(n)) if n < b)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn t(run_ns: u64) -> Totals {
        Totals {
            run_ns,
            runs: run_ns / 100,
            errors: 0,
            lost: Some(0),
        }
    }

    fn rec(u: &mut Usage, at_s: u64, run_ns: u64) {
        u.record(at_s * S, 4, [("p".to_string(), t(run_ns))]);
    }

    #[test]
    fn up_to_counts_over_what_the_ring_holds_until_the_window_is_full() {
        let mut u = Usage::default();
        let e = |errors: u64| Totals { errors, ..t(0) };
        u.record(S, 4, [("p".to_string(), e(0))]);
        assert!(
            u.up_to("p", Duration::from_secs(60)).is_none(),
            "one sample"
        );
        u.record(11 * S, 4, [("p".to_string(), e(5))]);
        assert!(u.window("p", Duration::from_secs(60)).is_none());
        let w = u.up_to("p", Duration::from_secs(60)).unwrap();
        assert_eq!((w.errors, w.span), (5, Duration::from_secs(10)));
        // Once the ring reaches back a whole window, exactly `window`.
        u.record(71 * S, 4, [("p".to_string(), e(9))]);
        let w = u.up_to("p", Duration::from_secs(60)).unwrap();
        assert_eq!((w.errors, w.span), (4, Duration::from_secs(60)));
    }

    #[test]
    fn share_is_run_time_over_wall_time_times_cpus() {
        // 40 ms of BPF over 1 s on 4 CPUs: 1 % of the node.
        assert_eq!(cpu_percent(40_000_000, S, 4), Some(1.0));
        assert_eq!(cpu_percent(S, S, 1), Some(100.0));
        assert_eq!(cpu_percent(1, 0, 4), None);
        assert_eq!(cpu_percent(1, S, 0), None);
    }

    #[test]
    fn a_window_needs_a_sample_that_old() {
        let mut u = Usage::default();
        rec(&mut u, 10, 0);
        assert_eq!(
            u.cpu_percent("p", Duration::from_secs(1)),
            None,
            "one sample"
        );
        rec(&mut u, 11, 40_000_000);
        assert_eq!(u.cpu_percent("p", Duration::from_secs(1)), Some(1.0));
        assert_eq!(u.cpu_percent("p", Duration::from_secs(2)), None);
        rec(&mut u, 12, 40_000_000);
        // Over 2 s: 40 ms on 4 CPUs = 0.5 %; the last second alone: 0.
        assert_eq!(u.cpu_percent("p", Duration::from_secs(2)), Some(0.5));
        assert_eq!(u.cpu_percent("p", Duration::from_secs(1)), Some(0.0));
        assert_eq!(u.cpu_percent("q", Duration::from_secs(1)), None);
    }

    #[test]
    fn the_base_is_the_newest_sample_far_enough_back() {
        let mut u = Usage::default();
        for (at, run) in [
            (0, 0),
            (1, 10 * S / 100),
            (2, 20 * S / 100),
            (3, 60 * S / 100),
        ] {
            rec(&mut u, at, run);
        }
        let w = u.window("p", Duration::from_millis(1500)).unwrap();
        // From the sample at 1 s to the one at 3 s.
        assert_eq!(w.span, Duration::from_secs(2));
        assert_eq!(w.run_ns, 50 * S / 100);
        assert!((w.cpu_percent - 6.25).abs() < 1e-9, "{}", w.cpu_percent);
    }

    #[test]
    fn errors_lost_and_runs_are_differences() {
        let mut u = Usage::default();
        let a = Totals {
            run_ns: 100,
            runs: 5,
            errors: 2,
            lost: Some(7),
        };
        let b = Totals {
            run_ns: 300,
            runs: 9,
            errors: 5,
            lost: Some(10),
        };
        u.record(S, 2, [("p".into(), a)]);
        u.record(2 * S, 2, [("p".into(), b)]);
        let w = u.window("p", Duration::from_secs(1)).unwrap();
        assert_eq!((w.runs, w.errors, w.lost), (4, 3, Some(3)));
        assert_eq!(u.errors("p", Duration::from_secs(1)), Some(3));
        assert_eq!(u.events_lost("p", Duration::from_secs(1)), Some(3));
        u.record(3 * S, 2, [("p".into(), Totals { lost: None, ..b })]);
        assert_eq!(u.events_lost("p", Duration::from_secs(1)), None);
    }

    #[test]
    fn a_total_that_falls_starts_afresh() {
        let mut u = Usage::default();
        rec(&mut u, 0, 0);
        rec(&mut u, 1, 80_000_000);
        // A revision unloaded: its run time left the sum.
        rec(&mut u, 2, 10_000_000);
        assert_eq!(u.cpu_percent("p", Duration::from_secs(1)), None);
        rec(&mut u, 3, 50_000_000);
        assert_eq!(u.cpu_percent("p", Duration::from_secs(1)), Some(1.0));
    }

    #[test]
    fn gone_programs_are_dropped_and_old_samples_trimmed() {
        let mut u = Usage::new(Duration::from_secs(3));
        for at in 0..10 {
            rec(&mut u, at, at * 4_000_000);
        }
        assert_eq!(u.rings["p"].len(), 4, "3 s kept plus the base");
        assert!(u.cpu_percent("p", Duration::from_secs(3)).is_some());
        assert_eq!(u.cpu_percent("p", Duration::from_secs(4)), None);
        u.record(11 * S, 4, []);
        assert!(u.rings.is_empty());
    }

    #[test]
    fn a_sample_not_later_is_ignored_and_cpus_kept() {
        let mut u = Usage::default();
        rec(&mut u, 5, 0);
        rec(&mut u, 5, 999);
        rec(&mut u, 4, 999);
        assert_eq!(u.rings["p"].len(), 1);
        u.record(6 * S, 0, [("p".to_string(), t(40_000_000))]);
        assert_eq!(u.cpus(), 4, "a zero CPU count keeps the last known");
        assert_eq!(u.cpu_percent("p", Duration::from_secs(1)), Some(1.0));
        u.forget("p");
        assert_eq!(u.cpu_percent("p", Duration::from_secs(1)), None);
    }
}
