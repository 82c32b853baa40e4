//! Defects found while fuzzing, each kept as a test of the fixed behaviour
//! (the fix has its own unit test beside the code).

use std::sync::Arc;

use bpfleet_httptrace::redact::Redactor;
use bpfleet_httptrace::{Connection, Direction, Role, Segment};

/// A response whose capture ends inside its status code is reported with
/// the digits that were captured: `HTTP/1.1 20` cut there gives status 20,
/// and `HTTP/1.1 2` gave 2. `parse_start_line` (httptrace/src/stream.rs)
/// parsed the status of a cut-short head as any `u16`, where a whole head
/// goes through httparse (exactly three digits); it now wants three digits. It takes a capture that
/// ends within 12 bytes of a response's start: a pipelined response
/// starting near the end of a write's captured prefix (at byte 245 of the
/// default 256, say), which the second half of the test shows.
#[test]
fn a_status_code_cut_by_the_capture_is_not_reported_as_another() {
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    for cap in 9..=12 {
        let mut c = Connection::new(Some(Role::Server), Arc::new(Redactor::builtin()));
        assert!(
            c.feed(&Segment::full(
                1,
                Direction::Read,
                b"GET / HTTP/1.1\r\n\r\n"
            ))
            .is_empty()
        );
        let mut done = c.feed(&Segment::truncated(2, Direction::Write, response, cap));
        done.extend(c.close(3));
        assert_eq!(done.len(), 1);
        let status = done[0].status;
        assert!(
            status.is_none() || status == Some(200),
            "capture of {cap} bytes: status {status:?}"
        );
    }
    // Pipelined: two responses in one write, the capture ending 11 bytes
    // into the second.
    let first = b"HTTP/1.1 204 No Content\r\n\r\n";
    let both = [&first[..], response].concat();
    let mut c = Connection::new(Some(Role::Server), Arc::new(Redactor::builtin()));
    let requests = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
    assert!(
        c.feed(&Segment::full(1, Direction::Read, requests))
            .is_empty()
    );
    let mut done = c.feed(&Segment::truncated(
        2,
        Direction::Write,
        &both,
        first.len() + 11,
    ));
    done.extend(c.close(3));
    let statuses: Vec<Option<u16>> = done.iter().map(|e| e.status).collect();
    assert!(
        statuses == [Some(204), Some(200)] || statuses == [Some(204), None],
        "{statuses:?}"
    );
}
