//! Property tests: the same traffic, cut into reads and writes at any
//! points, gives the same exchanges; arbitrary bytes never panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bpfleet_httptrace::redact::Redactor;
use bpfleet_httptrace::{Connection, Direction, Role, Segment};
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Gen {
    method: &'static str,
    path: String,
    req_body: usize,
    status: u16,
    resp_body: usize,
    chunked: bool,
}

fn exchange() -> impl Strategy<Value = Gen> {
    (
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH"]),
        "/[a-z0-9]{0,12}(/[a-z0-9]{1,8}){0,3}",
        0usize..300,
        prop::sample::select(vec![200u16, 201, 301, 400, 404, 500, 503]),
        0usize..600,
        any::<bool>(),
    )
        .prop_map(|(method, path, req_body, status, resp_body, chunked)| Gen {
            method,
            path,
            req_body,
            status,
            resp_body,
            chunked,
        })
}

fn render(g: &Gen) -> (Vec<u8>, Vec<u8>) {
    let mut req = format!("{} {} HTTP/1.1\r\nHost: h\r\n", g.method, g.path);
    if g.req_body > 0 {
        req.push_str(&format!("Content-Length: {}\r\n", g.req_body));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend(std::iter::repeat_n(b'q', g.req_body));

    let mut resp = format!("HTTP/1.1 {} X\r\n", g.status).into_bytes();
    if g.chunked {
        resp.extend(b"Transfer-Encoding: chunked\r\n\r\n");
        let mut left = g.resp_body;
        let mut size = 1;
        while left > 0 {
            let n = size.min(left);
            resp.extend(format!("{n:x}\r\n").into_bytes());
            resp.extend(std::iter::repeat_n(b'r', n));
            resp.extend(b"\r\n");
            left -= n;
            size = size * 3 + 1;
        }
        resp.extend(b"0\r\n\r\n");
    } else {
        resp.extend(format!("Content-Length: {}\r\n\r\n", g.resp_body).into_bytes());
        resp.extend(std::iter::repeat_n(b'r', g.resp_body));
    }
    (req, resp)
}

/// Cuts `data` at the given fractions into segments.
fn cut<'a>(data: &'a [u8], cuts: &[u16]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| (*c as usize * data.len()) / u16::MAX as usize)
        .collect();
    points.push(0);
    points.push(data.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &data[w[0]..w[1]]).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_split_gives_the_same_exchanges(
        gens in prop::collection::vec(exchange(), 1..6),
        req_cuts in prop::collection::vec(any::<u16>(), 0..8),
        resp_cuts in prop::collection::vec(any::<u16>(), 0..8),
    ) {
        let mut c = Connection::new(Some(Role::Server), Arc::new(Redactor::builtin()));
        let mut out = Vec::new();
        let mut ts = 0;
        // Keep-alive: each request fully read, then its response written,
        // each cut into arbitrary syscalls.
        for g in &gens {
            let (req, resp) = render(g);
            for part in cut(&req, &req_cuts) {
                ts += 1;
                out.extend(c.feed(&Segment::full(ts, Direction::Read, part)));
            }
            for part in cut(&resp, &resp_cuts) {
                ts += 1;
                out.extend(c.feed(&Segment::full(ts, Direction::Write, part)));
            }
        }
        prop_assert_eq!(out.len(), gens.len());
        for (e, g) in out.iter().zip(&gens) {
            let (req, resp) = render(g);
            prop_assert_eq!(&e.method, g.method);
            prop_assert_eq!(&e.target, &g.path);
            prop_assert_eq!(e.status, Some(g.status));
            prop_assert_eq!(e.request_bytes, req.len() as u64);
            prop_assert_eq!(e.response_bytes, resp.len() as u64);
            prop_assert!(e.end_ns >= e.start_ns);
        }
        prop_assert!(c.is_quiet());
    }

    #[test]
    fn pipelined_traffic_matches_in_order(
        gens in prop::collection::vec(exchange(), 1..6),
        cuts in prop::collection::vec(any::<u16>(), 0..8),
    ) {
        let mut c = Connection::new(Some(Role::Server), Arc::new(Redactor::builtin()));
        let mut reqs = Vec::new();
        let mut resps = Vec::new();
        for g in &gens {
            let (a, b) = render(g);
            reqs.extend(a);
            resps.extend(b);
        }
        let mut out = Vec::new();
        for part in cut(&reqs, &cuts) {
            out.extend(c.feed(&Segment::full(1, Direction::Read, part)));
        }
        for part in cut(&resps, &cuts) {
            out.extend(c.feed(&Segment::full(2, Direction::Write, part)));
        }
        let got: Vec<(String, Option<u16>)> = out.iter().map(|e| (e.target.clone(), e.status)).collect();
        let want: Vec<(String, Option<u16>)> = gens.iter().map(|g| (g.path.clone(), Some(g.status))).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        segs in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..200), 0usize..220, 0u64..1000),
            0..40,
        ),
        close in any::<bool>(),
    ) {
        let mut c = Connection::new(None, Arc::new(Redactor::builtin()));
        let mut ts = 0;
        for (write, data, cap, extra) in &segs {
            ts += 1;
            let dir = if *write { Direction::Write } else { Direction::Read };
            let data: &[u8] = data;
            let cap = (*cap).min(data.len());
            let seg = Segment { ts_ns: ts, direction: dir, len: data.len() as u64 + extra, data: &data[..cap] };
            for e in c.feed(&seg) {
                prop_assert!(e.end_ns >= e.start_ns);
            }
            c.expire(ts, 50);
        }
        if close {
            c.close(ts + 1);
            prop_assert!(c.is_quiet());
        }
    }

    #[test]
    fn http_shaped_noise_never_panics(
        parts in prop::collection::vec(
            prop::sample::select(vec![
                "GET / HTTP/1.1\r\n", "HTTP/1.1 200 OK\r\n", "Content-Length: 5\r\n",
                "Content-Length: 99999999999999999999\r\n", "Transfer-Encoding: chunked\r\n",
                "\r\n", "5\r\nhello\r\n", "0\r\n\r\n", "zz\r\n", "HTTP/1.1 100 Continue\r\n\r\n",
                "HEAD /x HTTP/1.1\r\n", "ffffffffffffffffff\r\n",
            ]),
            0..30,
        ),
        dirs in prop::collection::vec(any::<bool>(), 30),
    ) {
        let mut c = Connection::new(Some(Role::Server), Arc::new(Redactor::builtin()));
        for (i, p) in parts.iter().enumerate() {
            let dir = if dirs[i] { Direction::Write } else { Direction::Read };
            c.feed(&Segment::full(i as u64, dir, p.as_bytes()));
        }
        c.close(1000);
    }
}
