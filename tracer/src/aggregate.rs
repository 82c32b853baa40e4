//! Metrics mode's counts: the kernel side's `http_aggs` entries (per CPU,
//! cumulative, keyed by process, revision, role, method, status and path
//! key; `struct http_agg_key` / `struct http_agg_val` in
//! `bpf/progs/http_tracer.h`), decoded, summed over CPUs and turned into
//! the growth since the last read. Pure: the map is read in [`crate::pinned`].

use std::collections::HashMap;

use bpfleet_httptrace::Role;

use crate::{Error, Result};

/// Size of `struct http_agg_key` (asserted in `http_tracer.h`).
pub const KEY_LEN: usize = 24;
/// Latency buckets: the OpenTelemetry HTTP bounds, then +Inf.
pub const BUCKETS: usize = 15;
/// Size of `struct http_agg_val` (asserted in `http_tracer.h`).
pub const VALUE_LEN: usize = 16 + 8 * BUCKETS;
/// Upper bounds of the finite buckets in nanoseconds: 5 ms .. 10 s, the
/// same as `SEMCONV_DURATION_BUCKETS` and the kernel's `bucket_of`.
pub const BOUNDS_NS: [u64; BUCKETS - 1] = [
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    75_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    750_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    7_500_000_000,
    10_000_000_000,
];
/// The path key new paths share once the kernel's table of paths is full.
pub const PATH_OVERFLOW: u64 = 1;

/// The request methods the kernel side tells apart (`enum http_method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Other,
    Get,
    Post,
    Put,
    Delete,
    Head,
    Options,
    Patch,
}

impl Method {
    pub fn from_code(c: u8) -> Self {
        match c {
            1 => Method::Get,
            2 => Method::Post,
            3 => Method::Put,
            4 => Method::Delete,
            5 => Method::Head,
            6 => Method::Options,
            7 => Method::Patch,
            _ => Method::Other,
        }
    }

    /// The method as a request line spells it; `_OTHER` (the semantic
    /// conventions' name) for the rest.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Other => "_OTHER",
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
            Method::Options => "OPTIONS",
            Method::Patch => "PATCH",
        }
    }
}

/// One aggregate's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AggKey {
    pub tgid: u32,
    /// Gate token of the revision that counted (0: loaded outside the agent).
    pub revision: u32,
    pub path_key: u64,
    /// `None`: the connection closed before a response.
    pub status: Option<u16>,
    pub method: Method,
    pub role: Option<Role>,
    /// The bytes as the kernel keys them (to delete the entry).
    pub raw: [u8; KEY_LEN],
}

impl AggKey {
    pub fn decode(b: &[u8]) -> Result<Self> {
        let raw: [u8; KEY_LEN] = b
            .try_into()
            .map_err(|_| Error::Event("aggregate key of the wrong size"))?;
        let u32_at =
            |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let mut k = [0u8; 8];
        k.copy_from_slice(&raw[8..16]);
        let status = u16::from_le_bytes([raw[16], raw[17]]);
        Ok(Self {
            tgid: u32_at(0),
            revision: u32_at(4),
            path_key: u64::from_le_bytes(k),
            status: (status != 0).then_some(status),
            method: Method::from_code(raw[18]),
            role: match raw[19] {
                1 => Some(Role::Server),
                2 => Some(Role::Client),
                _ => None,
            },
            raw,
        })
    }
}

/// Counts of one aggregate: exchanges, their summed latency and the
/// latency buckets (not cumulative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub count: u64,
    pub sum_ns: u64,
    pub buckets: [u64; BUCKETS],
}

impl Counts {
    /// One CPU's value.
    pub fn decode(b: &[u8]) -> Result<Self> {
        if b.len() < VALUE_LEN {
            return Err(Error::Event("aggregate value too short"));
        }
        let at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_le_bytes(a)
        };
        let mut buckets = [0u64; BUCKETS];
        for (i, slot) in buckets.iter_mut().enumerate() {
            *slot = at(2 + i);
        }
        Ok(Self {
            count: at(0),
            sum_ns: at(1),
            buckets,
        })
    }

    pub fn add(&mut self, o: &Counts) {
        self.count = self.count.wrapping_add(o.count);
        self.sum_ns = self.sum_ns.wrapping_add(o.sum_ns);
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a = a.wrapping_add(b);
        }
    }

    /// `self - earlier`, or `None` when a counter went back (the entry was
    /// deleted and made again): then all of `self` is new.
    fn since(&self, earlier: &Counts) -> Option<Counts> {
        let mut d = Counts {
            count: self.count.checked_sub(earlier.count)?,
            sum_ns: self.sum_ns.checked_sub(earlier.sum_ns)?,
            buckets: [0; BUCKETS],
        };
        for (i, slot) in d.buckets.iter_mut().enumerate() {
            *slot = self.buckets[i].checked_sub(earlier.buckets[i])?;
        }
        Some(d)
    }

    /// One duration per exchange, spread evenly inside each bucket (the
    /// assumption Prometheus' `histogram_quantile` makes), so each lands in
    /// the bucket the kernel counted it in; the +Inf bucket's get the mean
    /// the latency sum leaves for them (at least just above 10 s).
    pub fn durations(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(usize::try_from(self.count).unwrap_or(0).min(1 << 20));
        let mut finite_sum: u64 = 0;
        for (b, &n) in self.buckets.iter().enumerate().take(BUCKETS - 1) {
            let lo = if b == 0 { 0 } else { BOUNDS_NS[b - 1] };
            let hi = BOUNDS_NS[b];
            for i in 0..n {
                let v = lo + (hi - lo) / (n + 1) * (i + 1);
                finite_sum = finite_sum.saturating_add(v);
                out.push(v);
            }
        }
        let inf = self.buckets[BUCKETS - 1];
        if let Some(mean) = self.sum_ns.saturating_sub(finite_sum).checked_div(inf) {
            let floor = BOUNDS_NS[BUCKETS - 2] + 1_000_000;
            out.extend(std::iter::repeat_n(
                mean.max(floor),
                usize::try_from(inf).unwrap_or(0),
            ));
        }
        out
    }
}

/// Cumulative counts to their growth since the previous read.
#[derive(Debug, Default)]
pub struct Deltas {
    last: HashMap<AggKey, Counts>,
}

impl Deltas {
    /// `now` holds every entry's current totals (summed over CPUs); the
    /// result, the entries that grew and by how much. Entries missing from
    /// `now` (deleted, or evicted) are forgotten.
    pub fn update(&mut self, now: Vec<(AggKey, Counts)>) -> Vec<(AggKey, Counts)> {
        let mut next = HashMap::with_capacity(now.len());
        let mut out = Vec::new();
        for (k, c) in now {
            let d = match self.last.get(&k) {
                Some(prev) => c.since(prev).unwrap_or(c),
                None => c,
            };
            if d.count > 0 {
                out.push((k, d));
            }
            next.insert(k, c);
        }
        self.last = next;
        out
    }

    /// Hands `delta` of `key` back at the next [`Deltas::update`] (a path
    /// key the reader cannot name yet).
    pub fn defer(&mut self, key: &AggKey, delta: &Counts) {
        if let Some(c) = self.last.get_mut(key) {
            match c.since(delta) {
                Some(back) => *c = back,
                None => {
                    self.last.remove(key);
                }
            }
        }
    }

    /// Forgets `key` (its entry was deleted).
    pub fn forget(&mut self, key: &AggKey) {
        self.last.remove(key);
    }

    /// Every entry's totals as last read: what a stopping reader hands
    /// on ([`Handover`]).
    pub fn totals(&self) -> Vec<(AggKey, Counts)> {
        self.last.iter().map(|(k, c)| (*k, *c)).collect()
    }

    /// Starts from the totals a previous reader handed on: the next
    /// [`Deltas::update`] reports what was counted since that reader's
    /// last read (entries it never saw, all of theirs).
    pub fn resume(totals: Vec<(AggKey, Counts)>) -> Self {
        Self {
            last: totals.into_iter().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// What a metrics-mode reader that stops (its agent shutting down for a
/// restart or an upgrade; the program stays loaded and counting) leaves
/// for the next reader of the same `http_aggs`: the totals it last
/// reported and the names of their path keys. The next reader reports
/// from there on, so the exchanges counted while no reader ran are
/// reported too, under their routes, instead of being taken as the
/// starting point. A text file, one line per entry:
///
/// ```text
/// bpfleet-http-aggs-handover 1
/// map <id of the http_aggs map>
/// c <key, 24 bytes in hex> <count> <sum_ns> <15 bucket counts>
/// p <path key> <path bytes in hex>
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handover {
    /// Kernel id of the `http_aggs` map the totals were read from: a
    /// reader of another map (the program was loaded again) ignores them.
    pub map_id: u32,
    pub totals: Vec<(AggKey, Counts)>,
    /// Names of the path keys the kernel announced to the stopping reader.
    pub paths: Vec<(u64, String)>,
}

const HANDOVER_MAGIC: &str = "bpfleet-http-aggs-handover 1";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Handover {
    pub fn encode(&self) -> String {
        let mut out = format!("{HANDOVER_MAGIC}\nmap {}\n", self.map_id);
        for (k, c) in &self.totals {
            out.push_str(&format!("c {} {} {}", hex(&k.raw), c.count, c.sum_ns));
            for b in c.buckets {
                out.push_str(&format!(" {b}"));
            }
            out.push('\n');
        }
        for (key, path) in &self.paths {
            out.push_str(&format!("p {key} {}\n", hex(path.as_bytes())));
        }
        out
    }

    /// Parses [`Handover::encode`]'s text; anything else is an error
    /// naming the line.
    pub fn decode(text: &str) -> std::result::Result<Self, String> {
        let mut lines = text.lines().enumerate();
        if lines.next().map(|(_, l)| l) != Some(HANDOVER_MAGIC) {
            return Err(format!("line 1: not \"{HANDOVER_MAGIC}\""));
        }
        let mut h = Handover::default();
        let mut map = None;
        for (i, line) in lines {
            let bad = |what: &str| format!("line {}: {what}", i + 1);
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["map", id] => map = Some(id.parse().map_err(|_| bad("map id not a number"))?),
                ["c", key, rest @ ..] if rest.len() == 2 + BUCKETS => {
                    let raw = unhex(key).ok_or_else(|| bad("key not hex"))?;
                    let k = AggKey::decode(&raw).map_err(|_| bad("key not 24 bytes"))?;
                    let n: Vec<u64> = rest
                        .iter()
                        .map(|v| v.parse())
                        .collect::<std::result::Result<_, _>>()
                        .map_err(|_| bad("count not a number"))?;
                    let mut buckets = [0u64; BUCKETS];
                    buckets.copy_from_slice(&n[2..]);
                    h.totals.push((
                        k,
                        Counts {
                            count: n[0],
                            sum_ns: n[1],
                            buckets,
                        },
                    ));
                }
                ["p", key, path] => {
                    let key = key.parse().map_err(|_| bad("path key not a number"))?;
                    let path = unhex(path).ok_or_else(|| bad("path not hex"))?;
                    h.paths
                        .push((key, String::from_utf8_lossy(&path).into_owned()));
                }
                _ => return Err(bad("not a map, c or p line")),
            }
        }
        h.map_id = map.ok_or("no map line")?;
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tgid: u32, status: u16, method: u8, role: u8) -> AggKey {
        let mut b = [0u8; KEY_LEN];
        b[0..4].copy_from_slice(&tgid.to_le_bytes());
        b[4..8].copy_from_slice(&7u32.to_le_bytes());
        b[8..16].copy_from_slice(&99u64.to_le_bytes());
        b[16..18].copy_from_slice(&status.to_le_bytes());
        b[18] = method;
        b[19] = role;
        AggKey::decode(&b).expect("24 bytes")
    }

    fn counts(count: u64, sum_ns: u64, buckets: &[(usize, u64)]) -> Counts {
        let mut c = Counts {
            count,
            sum_ns,
            ..Counts::default()
        };
        for (b, n) in buckets {
            c.buckets[*b] = *n;
        }
        c
    }

    #[test]
    fn decodes_the_kernel_layout() {
        let k = key(42, 404, 2, 1);
        assert_eq!(k.tgid, 42);
        assert_eq!(k.revision, 7);
        assert_eq!(k.path_key, 99);
        assert_eq!(k.status, Some(404));
        assert_eq!(k.method, Method::Post);
        assert_eq!(k.role, Some(Role::Server));
        assert_eq!(key(1, 0, 9, 2).status, None);
        assert_eq!(key(1, 0, 9, 2).method, Method::Other);
        assert_eq!(key(1, 0, 9, 2).role, Some(Role::Client));
        let mut v = vec![0u8; VALUE_LEN];
        v[0..8].copy_from_slice(&3u64.to_le_bytes());
        v[8..16].copy_from_slice(&600u64.to_le_bytes());
        v[16 + 8 * 14..16 + 8 * 15].copy_from_slice(&1u64.to_le_bytes());
        let c = Counts::decode(&v).expect("136 bytes");
        assert_eq!((c.count, c.sum_ns, c.buckets[14]), (3, 600, 1));
        assert!(Counts::decode(&v[..100]).is_err());
        assert!(AggKey::decode(&v[..10]).is_err());
    }

    #[test]
    fn deltas_are_the_growth_and_survive_resets() {
        let mut d = Deltas::default();
        let k = key(1, 200, 1, 1);
        let first = d.update(vec![(k, counts(5, 50, &[(0, 5)]))]);
        assert_eq!(first, vec![(k, counts(5, 50, &[(0, 5)]))]);
        assert!(d.update(vec![(k, counts(5, 50, &[(0, 5)]))]).is_empty());
        let grown = d.update(vec![(k, counts(8, 80, &[(0, 7), (3, 1)]))]);
        assert_eq!(grown, vec![(k, counts(3, 30, &[(0, 2), (3, 1)]))]);
        // Deleted and made again: everything in it is new.
        let reset = d.update(vec![(k, counts(2, 20, &[(0, 2)]))]);
        assert_eq!(reset, vec![(k, counts(2, 20, &[(0, 2)]))]);
        // Gone from the map: forgotten, and new again if it comes back.
        assert!(d.update(vec![]).is_empty());
        assert!(d.is_empty());
    }

    #[test]
    fn deferred_growth_comes_back_once() {
        let mut d = Deltas::default();
        let k = key(1, 200, 1, 1);
        let got = d.update(vec![(k, counts(4, 40, &[(1, 4)]))]);
        d.defer(&k, &got[0].1);
        let again = d.update(vec![(k, counts(6, 60, &[(1, 6)]))]);
        assert_eq!(again, vec![(k, counts(6, 60, &[(1, 6)]))]);
        assert!(d.update(vec![(k, counts(6, 60, &[(1, 6)]))]).is_empty());
    }

    #[test]
    fn a_handover_resumes_where_the_last_read_ended() {
        let mut d = Deltas::default();
        let (a, b) = (key(1, 200, 1, 1), key(2, 404, 1, 1));
        d.update(vec![(a, counts(4, 40, &[(1, 4)]))]);
        let h = Handover {
            map_id: 77,
            totals: d.totals(),
            paths: vec![(9, "/caf\u{e9} x\n".into())],
        };
        let back = Handover::decode(&h.encode()).expect("decodes");
        assert_eq!(back, h);
        // The next reader reports only what came after, and new entries
        // whole.
        let mut next = Deltas::resume(back.totals);
        let grown = next.update(vec![
            (a, counts(6, 60, &[(1, 6)])),
            (b, counts(1, 10, &[(0, 1)])),
        ]);
        let mut grown: Vec<_> = grown.into_iter().map(|(k, c)| (k.tgid, c.count)).collect();
        grown.sort_unstable();
        assert_eq!(grown, vec![(1, 2), (2, 1)]);
    }

    #[test]
    fn a_damaged_handover_is_refused_with_its_line() {
        let good = Handover {
            map_id: 3,
            totals: vec![(key(1, 200, 1, 1), counts(1, 1, &[(0, 1)]))],
            paths: vec![],
        }
        .encode();
        assert_eq!(
            Handover::decode(""),
            Err(format!("line 1: not \"{HANDOVER_MAGIC}\""))
        );
        let short = good.replace(" 1 1 1 0", " 1 1 1");
        assert!(
            Handover::decode(&short).unwrap_err().starts_with("line 3"),
            "{short}"
        );
        let no_map: String = good
            .lines()
            .filter(|l| !l.starts_with("map"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(Handover::decode(&no_map), Err("no map line".into()));
        assert!(
            Handover::decode(&format!("{good}p 1 zz\n"))
                .unwrap_err()
                .contains("path not hex")
        );
        assert!(
            Handover::decode(&format!("{good}c 00 1\n"))
                .unwrap_err()
                .contains("line 4")
        );
    }

    #[test]
    fn durations_land_in_their_buckets() {
        let c = counts(6, 0, &[(0, 2), (6, 3), (14, 1)]);
        let mut ds = c.durations();
        assert_eq!(ds.len(), 6);
        let bucket = |ns: u64| {
            BOUNDS_NS
                .iter()
                .position(|b| ns <= *b)
                .unwrap_or(BUCKETS - 1)
        };
        ds.sort_unstable();
        let got: Vec<usize> = ds.iter().map(|d| bucket(*d)).collect();
        assert_eq!(got, vec![0, 0, 6, 6, 6, 14]);
        // The +Inf bucket's share of the sum, when there is one.
        let c = counts(1, 30_000_000_000, &[(14, 1)]);
        assert_eq!(c.durations(), vec![30_000_000_000]);
    }
}
