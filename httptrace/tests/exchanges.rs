//! Whole exchanges on one connection, as the node agent will feed them:
//! keep-alive, pipelining, chunked bodies, split and truncated captures,
//! client and server side, timeouts, closes, and redaction.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bpfleet_httptrace::redact::{REDACTED, Redactor};
use bpfleet_httptrace::{Connection, Direction, Exchange, Outcome, Role, Segment};

const MS: u64 = 1_000_000;

fn server() -> Connection {
    Connection::new(Some(Role::Server), Arc::new(Redactor::builtin()))
}

fn read(ts: u64, data: &[u8]) -> Segment<'_> {
    Segment::full(ts, Direction::Read, data)
}

fn write(ts: u64, data: &[u8]) -> Segment<'_> {
    Segment::full(ts, Direction::Write, data)
}

fn summary(x: &[Exchange]) -> Vec<(String, String, Option<u16>, Outcome)> {
    x.iter()
        .map(|e| (e.method.clone(), e.target.clone(), e.status, e.outcome))
        .collect()
}

#[test]
fn keep_alive_server_exchanges_are_timed_and_counted() {
    let mut c = server();
    let mut out = Vec::new();
    for i in 0..3u64 {
        let t0 = i * 100 * MS;
        let req = format!("GET /items/{i} HTTP/1.1\r\nHost: shop\r\n\r\n");
        out.extend(c.feed(&read(t0, req.as_bytes())));
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        out.extend(c.feed(&write(t0 + 7 * MS, resp)));
    }
    assert_eq!(out.len(), 3);
    for (i, e) in out.iter().enumerate() {
        assert_eq!(e.target, format!("/items/{i}"));
        assert_eq!(e.status, Some(200));
        assert_eq!(e.duration_ns(), 7 * MS);
        assert_eq!(e.host.as_deref(), Some("shop"));
        assert_eq!(e.response_bytes, 43);
        assert_eq!(e.request_bytes, 37);
        assert_eq!(e.response_body_bytes, Some(5));
        assert_eq!(e.request_body_bytes, Some(0));
    }
    assert!(c.is_quiet());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut c = server();
    let reqs = b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzDELETE /c HTTP/1.1\r\n\r\n";
    assert!(c.feed(&read(1, reqs)).is_empty());
    let resps = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\nno";
    let out = c.feed(&write(2, resps));
    assert_eq!(
        summary(&out),
        vec![
            ("GET".into(), "/a".into(), Some(200), Outcome::Complete),
            ("POST".into(), "/b".into(), Some(201), Outcome::Complete),
            ("DELETE".into(), "/c".into(), Some(503), Outcome::Complete),
        ]
    );
    assert_eq!(out[1].request_bytes, 42);
}

#[test]
fn chunked_response_split_over_writes() {
    let mut c = server();
    c.feed(&read(0, b"GET /stream HTTP/1.1\r\n\r\n"));
    let mut out = Vec::new();
    out.extend(c.feed(&write(
        MS,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    )));
    out.extend(c.feed(&write(2 * MS, b"4\r\nwiki\r\n")));
    out.extend(c.feed(&write(3 * MS, b"5\r\npedia\r\n")));
    assert!(out.is_empty(), "not finished before the last chunk");
    out.extend(c.feed(&write(9 * MS, b"0\r\n\r\n")));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].duration_ns(), 9 * MS);
}

#[test]
fn split_reads_of_a_head() {
    let mut c = server();
    let req = b"GET /split HTTP/1.1\r\nHost: x\r\n\r\n";
    for chunk in req.chunks(3) {
        assert!(c.feed(&read(5, chunk)).is_empty());
    }
    let out = c.feed(&write(6, b"HTTP/1.1 204 No Content\r\n\r\n"));
    assert_eq!(
        summary(&out),
        vec![("GET".into(), "/split".into(), Some(204), Outcome::Complete)]
    );
}

#[test]
fn large_bodies_beyond_the_capture_are_framed_by_length() {
    let mut c = server();
    let mut req = b"PUT /blob HTTP/1.1\r\nContent-Length: 100000\r\n\r\n".to_vec();
    req.extend(vec![0u8; 100_000]);
    // The kernel saw one big read but captured only 256 bytes of it.
    assert!(
        c.feed(&Segment::truncated(1, Direction::Read, &req, 256))
            .is_empty()
    );
    let mut resp = b"HTTP/1.1 200 OK\r\nContent-Length: 50000\r\n\r\n".to_vec();
    resp.extend(vec![1u8; 50_000]);
    let mut out = Vec::new();
    for (i, part) in resp.chunks(16_384).enumerate() {
        out.extend(c.feed(&Segment::truncated(
            10 + i as u64,
            Direction::Write,
            part,
            256,
        )));
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request_bytes, req.len() as u64);
    assert_eq!(out[0].response_bytes, resp.len() as u64);
    assert_eq!(out[0].response_body_bytes, Some(50_000));
    assert_eq!(out[0].request_body_bytes, Some(100_000));
    assert_eq!(out[0].end_ns, 13);
}

#[test]
fn head_request_response_has_no_body() {
    let mut c = server();
    c.feed(&read(0, b"HEAD /big HTTP/1.1\r\n\r\n"));
    let out = c.feed(&write(
        1,
        b"HTTP/1.1 200 OK\r\nContent-Length: 999999\r\n\r\n",
    ));
    assert_eq!(out.len(), 1, "a HEAD response ends with its head");
    c.feed(&read(2, b"GET /next HTTP/1.1\r\n\r\n"));
    let out = c.feed(&write(
        3,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    ));
    assert_eq!(
        summary(&out),
        vec![("GET".into(), "/next".into(), Some(404), Outcome::Complete)]
    );
}

#[test]
fn client_side_role_is_inferred_from_the_first_request() {
    let mut c = Connection::new(None, Arc::new(Redactor::builtin()));
    assert!(
        c.feed(&read(0, b"HTTP/1.1 200 OK\r\n\r\n")).is_empty(),
        "nothing to pair yet"
    );
    c.feed(&write(10, b"GET /api HTTP/1.1\r\nHost: upstream\r\n\r\n"));
    assert_eq!(c.role(), Some(Role::Client));
    let out = c.feed(&read(
        25,
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    ));
    assert_eq!(out[0].role, Role::Client);
    assert_eq!(out[0].status, Some(500));
    assert_eq!(out[0].duration_ns(), 15);
}

#[test]
fn unanswered_requests_time_out_then_the_rest_proceeds() {
    let mut c = server();
    c.feed(&read(0, b"GET /slow HTTP/1.1\r\n\r\n"));
    assert!(c.expire(5 * MS, 10 * MS).is_empty(), "not yet");
    let out = c.expire(11 * MS, 10 * MS);
    assert_eq!(
        summary(&out),
        vec![("GET".into(), "/slow".into(), None, Outcome::Timeout)]
    );
    assert_eq!(out[0].end_ns, 11 * MS);
    assert!(c.is_quiet());
}

#[test]
fn close_ends_read_until_close_bodies_and_reports_orphans() {
    let mut c = server();
    c.feed(&read(0, b"GET /legacy HTTP/1.1\r\n\r\n"));
    assert!(
        c.feed(&write(1, b"HTTP/1.0 200 OK\r\n\r\nbody without length"))
            .is_empty()
    );
    c.feed(&write(2, b" more body"));
    let out = c.close(3);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].outcome, Outcome::Complete);
    assert_eq!(out[0].end_ns, 2, "ends at its last byte, not at close");

    let mut c = server();
    c.feed(&read(
        0,
        b"POST /upload HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
    ));
    let out = c.close(4);
    assert_eq!(
        summary(&out),
        vec![("POST".into(), "/upload".into(), None, Outcome::Closed)]
    );
}

#[test]
fn interim_continue_then_final_status() {
    let mut c = server();
    c.feed(&read(
        0,
        b"PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    ));
    assert!(
        c.feed(&write(1, b"HTTP/1.1 100 Continue\r\n\r\n"))
            .is_empty()
    );
    c.feed(&read(2, b"ok"));
    let out = c.feed(&write(
        3,
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    ));
    assert_eq!(
        summary(&out),
        vec![("PUT".into(), "/f".into(), Some(201), Outcome::Complete)]
    );
}

#[test]
fn secrets_never_leave_the_parser() {
    let mut c = server();
    c.feed(&read(
        0,
        b"GET /login?user=bob&access_token=SECRET1 HTTP/1.1\r\nAuthorization: Bearer SECRET2\r\nCookie: sid=SECRET3\r\nAccept: */*\r\n\r\n",
    ));
    let out = c.feed(&write(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    let e = &out[0];
    let shown = format!("{e:?}");
    for secret in ["SECRET1", "SECRET2", "SECRET3"] {
        assert!(!shown.contains(secret), "{secret} leaked: {shown}");
    }
    assert_eq!(e.target, format!("/login?user=bob&access_token={REDACTED}"));
    let auth = e.request_headers.iter().find(|(n, _)| n == "Authorization");
    assert_eq!(auth.map(|(_, v)| v.as_str()), Some(REDACTED));
    let accept = e.request_headers.iter().find(|(n, _)| n == "Accept");
    assert_eq!(accept.map(|(_, v)| v.as_str()), Some("*/*"));
}
