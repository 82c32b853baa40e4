//! Unit tests of [`super`]: message boundaries found in captured and
//! partly captured segments.

use super::*;
use crate::Direction;

fn feed_all(kind: Kind, segs: &[Segment<'_>]) -> Vec<Event> {
    let mut s = Stream::new(kind);
    let mut out = Vec::new();
    for seg in segs {
        s.feed(seg, &mut RequestContext::default, &mut out);
    }
    out
}

fn ended(events: &[Event]) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Ended { ts_ns, bytes } => Some((*ts_ns, *bytes)),
            _ => None,
        })
        .collect()
}

#[test]
fn invalid_heads_are_counted_once_and_the_stream_recovers() {
    let mut s = Stream::new(Kind::Requests);
    let mut out = Vec::new();
    let bad = b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n";
    s.feed(
        &Segment::full(1, Direction::Read, bad),
        &mut RequestContext::default,
        &mut out,
    );
    assert!(out.is_empty());
    let good = b"GET /ok HTTP/1.1\r\n\r\n";
    s.feed(
        &Segment::full(2, Direction::Read, good),
        &mut RequestContext::default,
        &mut out,
    );
    assert_eq!(ended(&out), vec![(2, good.len() as u64)]);
    assert_eq!(s.take_invalid(), 1);
    assert_eq!(s.take_invalid(), 0);
}

#[test]
fn content_length_body_counted_across_uncaptured_bytes() {
    let mut msg = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n".to_vec();
    let head_len = msg.len() as u64;
    msg.extend(std::iter::repeat_n(b'x', 600));
    let rest = vec![b'y'; 400];
    let events = feed_all(
        Kind::Requests,
        &[
            Segment::truncated(1, Direction::Read, &msg, 64),
            Segment::truncated(2, Direction::Read, &rest, 16),
        ],
    );
    assert!(matches!(&events[0], Event::Began { ts_ns: 1, .. }));
    assert_eq!(ended(&events), vec![(2, head_len + 1000)]);
}

#[test]
fn chunked_response_with_framing_captured() {
    let body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n";
    let events = feed_all(Kind::Responses, &[Segment::full(7, Direction::Write, body)]);
    assert_eq!(ended(&events), vec![(7, body.len() as u64)]);
}

#[test]
fn chunked_split_at_every_byte() {
    let body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    for cut in 1..body.len() {
        let events = feed_all(
            Kind::Responses,
            &[
                Segment::full(1, Direction::Write, &body[..cut]),
                Segment::full(2, Direction::Write, &body[cut..]),
            ],
        );
        assert_eq!(ended(&events), vec![(2, body.len() as u64)], "cut at {cut}");
    }
}

#[test]
fn chunk_sizes_outside_the_capture_resync_at_the_next_message() {
    let mut big = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    big.extend(b"400\r\n");
    big.extend(vec![b'z'; 1024]);
    big.extend(b"\r\n0\r\n\r\n");
    let next = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    let events = feed_all(
        Kind::Responses,
        &[
            Segment::truncated(10, Direction::Write, &big, 80),
            Segment::truncated(11, Direction::Write, b"tail-bytes", 0),
            Segment::full(20, Direction::Write, next),
        ],
    );
    // The first response ends at its last byte seen (ts 11), the second
    // is framed exactly.
    assert_eq!(
        ended(&events),
        vec![(11, big.len() as u64 + 10), (20, next.len() as u64)]
    );
}

#[test]
fn head_cut_short_keeps_the_start_line() {
    let msg = b"GET /very/long/path?q=1 HTTP/1.1\r\nHost: example\r\nUser-Agent: curl\r\n\r\n";
    let events = feed_all(
        Kind::Requests,
        &[Segment::truncated(1, Direction::Read, msg, 40)],
    );
    match &events[0] {
        Event::Began { head, .. } => {
            assert!(head.truncated);
            assert_eq!(
                head.start,
                Start::Request {
                    method: "GET".into(),
                    target: "/very/long/path?q=1".into()
                }
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn non_http_bytes_never_start_a_message() {
    let events = feed_all(
        Kind::Requests,
        &[
            Segment::full(1, Direction::Read, b"\x16\x03\x01\x02\x00 TLS hello"),
            Segment::full(2, Direction::Read, b"GETX / HTTP/1.1\r\n\r\n"),
        ],
    );
    assert!(events.is_empty());
}

#[test]
fn interim_100_continue_is_not_the_answer() {
    let seg = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    let mut asked = 0;
    let mut s = Stream::new(Kind::Responses);
    let mut out = Vec::new();
    s.feed(
        &Segment::full(1, Direction::Write, seg),
        &mut || {
            asked += 1;
            RequestContext::default()
        },
        &mut out,
    );
    assert_eq!(asked, 1, "only the final response consumes a request");
    assert_eq!(ended(&out).len(), 2);
}

#[test]
fn a_status_code_cut_by_the_capture_is_no_status() {
    // Found by fuzzing: "HTTP/1.1 20" (a capture ending inside the code)
    // was read as status 20.
    for cut in ["HTTP/1.1 2", "HTTP/1.1 20", "HTTP/1.1 2000", "HTTP/1.1 2x0"] {
        assert_eq!(
            parse_start_line(Kind::Responses, cut.as_bytes()),
            None,
            "{cut:?}"
        );
    }
    assert!(matches!(
        parse_start_line(Kind::Responses, b"HTTP/1.1 200"),
        Some(Start::Response { status: 200 })
    ));
}
