//! Userspace throughput of HTTP reconstruction: segments (one per captured
//! syscall, i.e. one ring-buffer event) processed per second on one core.
//!
//! Run: `cargo bench -p bpfleet-httptrace --bench events`
//! Prints median and min-max over rounds for three traffic shapes.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bpfleet_httptrace::redact::Redactor;
use bpfleet_httptrace::{Connection, Direction, Role, Segment};

const ROUNDS: usize = 7;
const EXCHANGES: usize = 200_000;
/// Payload bytes the kernel side captures per syscall.
const CAPTURE: usize = 256;

struct Shape {
    name: &'static str,
    request: Vec<u8>,
    response: Vec<Vec<u8>>,
}

fn shapes() -> Vec<Shape> {
    let small_req = b"GET /api/v1/items/12345?fields=name HTTP/1.1\r\nHost: shop.svc\r\nUser-Agent: wrk\r\nAccept: */*\r\nAuthorization: Bearer abc\r\n\r\n".to_vec();
    let mut small_resp =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n".to_vec();
    small_resp.extend(vec![b'x'; 64]);
    let mut big_resp = b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n".to_vec();
    big_resp.extend(vec![b'y'; 65536]);
    let chunked = vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
        b"10\r\n0123456789abcdef\r\n".to_vec(),
        b"10\r\n0123456789abcdef\r\n".to_vec(),
        b"0\r\n\r\n".to_vec(),
    ];
    vec![
        Shape {
            name: "keep-alive GET, 64 B JSON",
            request: small_req.clone(),
            response: vec![small_resp],
        },
        Shape {
            name: "chunked response, 4 writes",
            request: small_req.clone(),
            response: chunked,
        },
        Shape {
            name: "64 KiB body, 4 writes, truncated capture",
            request: small_req,
            response: big_resp.chunks(16384).map(<[u8]>::to_vec).collect(),
        },
    ]
}

fn main() {
    println!("segments/s on one core, {EXCHANGES} exchanges per round, {ROUNDS} rounds");
    for shape in shapes() {
        let per_exchange = 1 + shape.response.len();
        let mut rates = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let mut c = Connection::new(Some(Role::Server), Arc::new(Redactor::builtin()));
            let mut done = 0usize;
            let start = Instant::now();
            let mut ts = 0u64;
            for _ in 0..EXCHANGES {
                ts += 1;
                let r = &shape.request;
                done += c
                    .feed(&Segment::truncated(ts, Direction::Read, r, CAPTURE))
                    .len();
                for part in &shape.response {
                    ts += 1;
                    let seg = Segment::truncated(ts, Direction::Write, part, CAPTURE);
                    done += black_box(c.feed(&seg)).len();
                }
            }
            let secs = start.elapsed().as_secs_f64();
            assert_eq!(done, EXCHANGES, "every exchange reconstructed");
            rates.push((EXCHANGES * per_exchange) as f64 / secs);
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "{:<42} median {:>10.0}  min {:>10.0}  max {:>10.0}",
            shape.name,
            rates[ROUNDS / 2],
            rates[0],
            rates[ROUNDS - 1]
        );
    }
}
