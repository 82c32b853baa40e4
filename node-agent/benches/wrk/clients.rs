//! Traffic for the tracer bench: wrk in the bench's namespace, and an
//! open-loop client at a fixed rate on keep-alive connections. It only
//! sends requests and counts answers; it reads no tracer figure.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bpfleet_testsupport::netns;

/// Runs wrk in the namespace; returns (requests/s, requests).
pub fn wrk(ns: &str, port: u16, secs: u64, conns: u64) -> (f64, u64) {
    let out = Command::new("nsenter")
        .args([
            &format!("--net={ns}"),
            "wrk",
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"));
    let total = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk output:\n{text}"));
    (rps, total)
}

/// What a fixed-rate run measured.
pub struct Paced {
    /// Requests answered.
    pub done: u64,
    /// Seconds from the start to the last answer.
    pub elapsed: f64,
    /// Answers later than 1 ms after they were due.
    pub late: u64,
    /// Latency from the time a request was due to its answer (so a client
    /// falling behind shows), median and 99th percentile, microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Open-loop client at a fixed rate: `threads` keep-alive connections, the
/// k-th request of thread i due at start + (i + k * threads) / rate; a
/// thread behind schedule sends at once (no request is skipped, none sent
/// early).
pub fn paced(ns: &str, port: u16, rate: u64, secs: u64, threads: u64) -> Paced {
    paced_reconnecting(ns, port, rate, secs, threads, 0)
}

/// [`paced`], each thread closing its connection and opening a new one
/// after every `per_connection` requests (0: never).
pub fn paced_reconnecting(
    ns: &str,
    port: u16,
    rate: u64,
    secs: u64,
    threads: u64,
    per_connection: u64,
) -> Paced {
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(secs);
    let done = Arc::new(AtomicU64::new(0));
    let late = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (ns, done, late) = (ns.to_string(), done.clone(), late.clone());
            std::thread::spawn(move || {
                netns::enter(&ns);
                // Sleep to the due time, not up to 50 µs past it (the
                // default timer slack).
                // SAFETY: prctl on the calling thread, no pointers.
                unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_nodelay(true).unwrap();
                let req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
                let mut buf = [0u8; 4096];
                let mut k = 0u64;
                let mut lat_us: Vec<u32> = Vec::new();
                loop {
                    let due =
                        start + Duration::from_nanos((i + k * threads) * 1_000_000_000 / rate);
                    if due >= end {
                        return (Instant::now(), lat_us);
                    }
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    if per_connection > 0 && k > 0 && k.is_multiple_of(per_connection) {
                        s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                        s.set_nodelay(true).unwrap();
                    }
                    s.write_all(req).unwrap();
                    read_response(&mut s, &mut buf);
                    let took = due.elapsed();
                    lat_us.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                    if took > Duration::from_millis(1) {
                        late.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    k += 1;
                }
            })
        })
        .collect();
    let mut last = start;
    let mut lat: Vec<u32> = Vec::new();
    for h in handles {
        let (t, l) = h.join().unwrap();
        last = last.max(t);
        lat.extend(l);
    }
    lat.sort_unstable();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |v| f64::from(*v))
    };
    Paced {
        done: done.load(Ordering::Relaxed),
        elapsed: last.duration_since(start).as_secs_f64(),
        late: late.load(Ordering::Relaxed),
        p50_us: pct(0.5),
        p99_us: pct(0.99),
    }
}

/// Reads one response with a Content-Length body.
fn read_response(s: &mut TcpStream, buf: &mut [u8]) {
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).unwrap();
        assert!(n > 0, "nginx closed the connection");
        have += n;
        let Some(head) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
        let len: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("content-length");
        if have >= head + 4 + len {
            assert_eq!(have, head + 4 + len, "one response at a time");
            return;
        }
    }
}
