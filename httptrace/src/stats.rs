//! RED statistics over sliding windows (1m, 5m, 15m, 1h): request rate,
//! error rate and latency percentiles per key (service and route), the
//! figures the node agent serves on its analytics API and the operator's
//! health gates compare between canary and stable nodes.
//!
//! Latencies go into a log-linear histogram (16 sub-buckets per power of
//! two, so a reported percentile is within 6.25 % of the true value) kept
//! sparse, in 10-second slots; a window merges the slots it covers. Slots
//! with no traffic cost nothing. Time is passed in, never read.

use std::collections::{BTreeMap, VecDeque};

/// Width of one slot.
pub const SLOT_NS: u64 = 10_000_000_000;
/// The longest window kept.
pub const MAX_WINDOW_NS: u64 = 3600 * 1_000_000_000;

const SUB_BUCKETS_LOG2: u32 = 4;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKETS_LOG2;

/// The windows reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    OneMinute,
    FiveMinutes,
    FifteenMinutes,
    OneHour,
}

impl Window {
    pub const ALL: [Window; 4] = [
        Window::OneMinute,
        Window::FiveMinutes,
        Window::FifteenMinutes,
        Window::OneHour,
    ];

    pub fn nanos(self) -> u64 {
        let secs = match self {
            Window::OneMinute => 60,
            Window::FiveMinutes => 300,
            Window::FifteenMinutes => 900,
            Window::OneHour => 3600,
        };
        secs * 1_000_000_000
    }

    pub fn label(self) -> &'static str {
        match self {
            Window::OneMinute => "1m",
            Window::FiveMinutes => "5m",
            Window::FifteenMinutes => "15m",
            Window::OneHour => "1h",
        }
    }
}

/// Sparse log-linear histogram of nanosecond latencies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Bucket index → count, sorted by index.
    buckets: Vec<(u16, u32)>,
    count: u64,
    sum_ns: u128,
}

/// Bucket of a value: values below 16 ns are exact; above, the exponent
/// picks a power of two and the next four bits a sub-bucket.
fn bucket_of(v: u64) -> u16 {
    if v < SUB_BUCKETS {
        return v as u16;
    }
    let exp = 63 - v.leading_zeros(); // ≥ 4
    let sub = (v >> (exp - SUB_BUCKETS_LOG2)) & (SUB_BUCKETS - 1);
    ((exp - SUB_BUCKETS_LOG2 + 1) as u64 * SUB_BUCKETS + sub) as u16
}

/// The midpoint of a bucket (its representative value).
fn value_of(b: u16) -> u64 {
    let b = u64::from(b);
    if b < SUB_BUCKETS {
        return b;
    }
    let exp = b / SUB_BUCKETS + SUB_BUCKETS_LOG2 as u64 - 1;
    let sub = b % SUB_BUCKETS;
    let low = (SUB_BUCKETS + sub) << (exp - SUB_BUCKETS_LOG2 as u64);
    let width = 1u64 << (exp - SUB_BUCKETS_LOG2 as u64);
    low + width / 2
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        let b = bucket_of(ns);
        match self.buckets.binary_search_by_key(&b, |(k, _)| *k) {
            Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(1),
            Err(i) => self.buckets.insert(i, (b, 1)),
        }
        self.count += 1;
        self.sum_ns += u128::from(ns);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for &(b, n) in &other.buckets {
            match self.buckets.binary_search_by_key(&b, |(k, _)| *k) {
                Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(n),
                Err(i) => self.buckets.insert(i, (b, n)),
            }
        }
        self.count += other.count;
        self.sum_ns += other.sum_ns;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0..=1) in ns; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for &(b, n) in &self.buckets {
            seen += u64::from(n);
            if seen >= rank {
                return Some(value_of(b));
            }
        }
        self.buckets.last().map(|&(b, _)| value_of(b))
    }

    pub fn mean_ns(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ns as f64 / self.count as f64)
    }
}

/// Counts of one slot or window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Red {
    pub requests: u64,
    /// Server side: 5xx and no response; client side: 4xx, 5xx and no
    /// response (OpenTelemetry HTTP semantic conventions).
    pub errors: u64,
    pub latency: Histogram,
}

impl Red {
    fn merge(&mut self, other: &Red) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latency.merge(&other.latency);
    }
}

/// One window's figures for one key.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub window: Window,
    pub requests: u64,
    pub rate_per_second: f64,
    /// `errors / requests`, 0 when there were no requests.
    pub error_rate: f64,
    pub p50_ns: Option<u64>,
    pub p95_ns: Option<u64>,
    pub p99_ns: Option<u64>,
}

/// Sliding-window statistics for many keys.
#[derive(Debug)]
pub struct Windows<K: Ord + Clone> {
    series: BTreeMap<K, VecDeque<(u64, Red)>>,
    /// Keys beyond this are folded into `overflow`.
    max_keys: usize,
    overflow: K,
}

impl<K: Ord + Clone> Windows<K> {
    /// `overflow` is the key that absorbs traffic once `max_keys` exist.
    pub fn new(max_keys: usize, overflow: K) -> Self {
        Self {
            series: BTreeMap::new(),
            max_keys: max_keys.max(1),
            overflow,
        }
    }

    /// Records one exchange ending at `now_ns`.
    pub fn record(&mut self, key: K, now_ns: u64, latency_ns: u64, error: bool) {
        self.record_ref(&key, now_ns, latency_ns, error);
    }

    /// Like [`Windows::record`], cloning the key only for a new series.
    pub fn record_ref(&mut self, key: &K, now_ns: u64, latency_ns: u64, error: bool) {
        let slot = now_ns - now_ns % SLOT_NS;
        let slots = if let Some(slots) = self.series.get_mut(key) {
            slots
        } else if self.series.len() < self.max_keys {
            self.series.entry(key.clone()).or_default()
        } else {
            self.series.entry(self.overflow.clone()).or_default()
        };
        if slots.back().is_none_or(|(s, _)| *s < slot) {
            slots.push_back((slot, Red::default()));
        }
        // Late events (slightly out of order) land in the newest slot.
        if let Some((_, red)) = slots.back_mut() {
            red.requests += 1;
            red.errors += u64::from(error);
            red.latency.record(latency_ns);
        }
    }

    /// Drops slots older than the longest window, and keys left empty.
    pub fn expire(&mut self, now_ns: u64) {
        let oldest = now_ns.saturating_sub(MAX_WINDOW_NS + SLOT_NS);
        self.series.retain(|_, slots| {
            while slots.front().is_some_and(|(s, _)| *s < oldest) {
                slots.pop_front();
            }
            !slots.is_empty()
        });
    }

    /// Figures for `key` over `window` ending at `now_ns`.
    pub fn summary(&self, key: &K, window: Window, now_ns: u64) -> Summary {
        let red = self.merged(key, window, now_ns);
        summarize(window, &red)
    }

    /// Raw merged counts (for comparing nodes or keys).
    pub fn merged(&self, key: &K, window: Window, now_ns: u64) -> Red {
        let mut red = Red::default();
        let from = now_ns.saturating_sub(window.nanos());
        if let Some(slots) = self.series.get(key) {
            for (start, r) in slots.iter().rev() {
                if *start + SLOT_NS <= from {
                    break;
                }
                red.merge(r);
            }
        }
        red
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.series.keys()
    }
}

pub fn summarize(window: Window, red: &Red) -> Summary {
    let secs = window.nanos() as f64 / 1e9;
    Summary {
        window,
        requests: red.requests,
        rate_per_second: red.requests as f64 / secs,
        error_rate: if red.requests == 0 {
            0.0
        } else {
            red.errors as f64 / red.requests as f64
        },
        p50_ns: red.latency.quantile(0.50),
        p95_ns: red.latency.quantile(0.95),
        p99_ns: red.latency.quantile(0.99),
    }
}

/// Bucket bounds (seconds) of the `http.server.request.duration` and
/// `http.client.request.duration` histograms in the OpenTelemetry HTTP
/// semantic conventions.
pub const SEMCONV_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..1_000_000u64).step_by(7).chain([u64::MAX / 2, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b >= last, "bucket order at {v}");
            last = b;
            let rep = value_of(b) as f64;
            if v >= SUB_BUCKETS {
                let err = (rep - v as f64).abs() / v as f64;
                assert!(err <= 1.0 / SUB_BUCKETS as f64, "{v} -> {rep}: {err}");
            } else {
                assert_eq!(rep as u64, v);
            }
        }
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut h = Histogram::default();
        for ms in 1..=1000u64 {
            h.record(ms * 1_000_000);
        }
        for (q, want_ms) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0)] {
            let got = h.quantile(q).expect("data") as f64 / 1e6;
            assert!((got - want_ms).abs() / want_ms < 0.0625, "q{q}: {got}ms");
        }
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn windows_slide_and_expire() {
        const S: u64 = 1_000_000_000;
        let mut w: Windows<&str> = Windows::new(10, "other");
        let t0 = 10_000 * S;
        // 60 requests in the first minute, 10% errors, 100 ms each.
        for i in 0..60 {
            w.record("svc", t0 + i * S, 100_000_000, i % 10 == 0);
        }
        let one = w.summary(&"svc", Window::OneMinute, t0 + 59 * S);
        assert_eq!(one.requests, 60);
        assert!((one.error_rate - 0.1).abs() < 1e-9);
        assert!((one.rate_per_second - 1.0).abs() < 1e-9);
        let p99 = one.p99_ns.expect("data") as f64;
        assert!((p99 - 1e8).abs() / 1e8 < 0.0625);
        // Three minutes later the 1m window is empty, the 5m one is not.
        let later = t0 + 240 * S;
        assert_eq!(w.summary(&"svc", Window::OneMinute, later).requests, 0);
        assert_eq!(w.summary(&"svc", Window::FiveMinutes, later).requests, 60);
        w.expire(t0 + 2 * 3600 * S);
        assert_eq!(w.keys().count(), 0);
    }

    #[test]
    fn keys_beyond_the_cap_fold_into_overflow() {
        let mut w: Windows<String> = Windows::new(2, "other".into());
        for k in ["a", "b", "c", "d", "a"] {
            w.record(k.into(), 1, 1, false);
        }
        let keys: Vec<&String> = w.keys().collect();
        assert_eq!(keys, ["a", "b", "other"]);
        assert_eq!(w.summary(&"other".into(), Window::OneMinute, 1).requests, 2);
        assert_eq!(w.summary(&"a".into(), Window::OneMinute, 1).requests, 2);
    }
}
