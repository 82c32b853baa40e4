//! One traced connection: pairs requests with responses (HTTP/1.x answers
//! in order, so pipelined requests queue), times each exchange, and turns
//! requests that never get an answer into timeouts or closed exchanges.
//!
//! Header values and targets are redacted as an [`Exchange`] is built; the raw
//! values never leave this module.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::redact::Redactor;
use crate::stream::{Event, Head, Kind, RequestContext, Start, Stream, starts_message};
use crate::{Direction, Segment};

/// Which end of the connection the traced process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// It accepted the connection: requests are read, responses written.
    Server,
    /// It connected: requests are written, responses read.
    Client,
}

/// How an exchange ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A response was seen to its end.
    Complete,
    /// No response within the timeout.
    Timeout,
    /// The connection closed before a response.
    Closed,
}

/// One request and its response, redacted.
#[derive(Clone, Debug, PartialEq)]
pub struct Exchange {
    pub role: Role,
    pub method: String,
    /// Request target (path and query), with sensitive query values redacted.
    pub target: String,
    /// `Host` header, when captured.
    pub host: Option<String>,
    /// Request headers as captured, sensitive values redacted.
    pub request_headers: Vec<(String, String)>,
    /// `None` when no response came.
    pub status: Option<u16>,
    /// Bytes of the request (head and body).
    pub request_bytes: u64,
    /// Bytes of the response (head and body).
    pub response_bytes: u64,
    /// Bytes of the request body; `None` when its head was not captured
    /// whole (its length is then unknown).
    pub request_body_bytes: Option<u64>,
    /// Bytes of the response body; `None` without a response or when its
    /// head was not captured whole.
    pub response_body_bytes: Option<u64>,
    /// First byte of the request seen (kernel ns).
    pub start_ns: u64,
    /// Last byte of the response seen, or when the exchange was given up.
    pub end_ns: u64,
    pub outcome: Outcome,
}

impl Exchange {
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

#[derive(Debug)]
struct Pending {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    start_ns: u64,
    bytes: u64,
    head_bytes: Option<u64>,
    /// The request's own end was seen.
    complete: bool,
    /// A response head for it was seen (status).
    status: Option<u16>,
}

/// Pairs the two directions of one connection.
#[derive(Debug)]
pub struct Connection {
    role: Option<Role>,
    requests: Stream,
    responses: Stream,
    /// Requests in order; the front is the one the next response answers.
    pending: VecDeque<Pending>,
    /// How many pending requests have a response head already.
    answered: usize,
    /// The request stream's open message (index into `pending`) is the last.
    request_open: bool,
    /// The response stream is inside an interim (1xx) response.
    interim: bool,
    /// Head length of the response in progress (`None`: cut short).
    response_head: Option<u64>,
    redactor: Arc<Redactor>,
    /// Pending requests beyond this are dropped (counted in `dropped`).
    max_pending: usize,
    dropped: u64,
}

impl Connection {
    /// A connection whose role is known from accept/connect, or `None` to
    /// infer it from the first message seen.
    pub fn new(role: Option<Role>, redactor: Arc<Redactor>) -> Self {
        Self {
            role,
            requests: Stream::new(Kind::Requests),
            responses: Stream::new(Kind::Responses),
            pending: VecDeque::new(),
            answered: 0,
            request_open: false,
            interim: false,
            response_head: None,
            redactor,
            max_pending: 256,
            dropped: 0,
        }
    }

    pub fn role(&self) -> Option<Role> {
        self.role
    }

    /// Redaction rules for the exchanges this connection completes from
    /// now on (requests already waiting for an answer included).
    pub fn set_redactor(&mut self, redactor: Arc<Redactor>) {
        self.redactor = redactor;
    }

    /// Message heads that could not be parsed since the last call (the
    /// stream then resynchronises at the next message).
    pub fn take_parse_errors(&mut self) -> u64 {
        self.requests.take_invalid() + self.responses.take_invalid()
    }

    /// Requests dropped because too many were waiting for answers.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Feeds one segment; returns the exchanges it completed.
    pub fn feed(&mut self, seg: &Segment<'_>) -> Vec<Exchange> {
        let mut done = Vec::new();
        let Some(role) = self.role.or_else(|| infer_role(seg)) else {
            return done;
        };
        self.role = Some(role);
        let carries_requests = matches!(
            (role, seg.direction),
            (Role::Server, Direction::Read) | (Role::Client, Direction::Write)
        );
        let mut events = Vec::new();
        if carries_requests {
            self.requests
                .feed(seg, &mut RequestContext::default, &mut events);
            for e in events {
                self.on_request_event(e);
            }
        } else {
            let pending = &self.pending;
            let mut next = self.answered;
            let mut ask = || {
                let ctx = RequestContext {
                    head_request: pending
                        .get(next)
                        .is_some_and(|p| p.method.eq_ignore_ascii_case("HEAD")),
                };
                next += 1;
                ctx
            };
            self.responses.feed(seg, &mut ask, &mut events);
            for e in events {
                self.on_response_event(role, e, &mut done);
            }
        }
        done
    }

    fn on_request_event(&mut self, event: Event) {
        match event {
            Event::Began {
                head,
                ts_ns,
                head_bytes,
            } => {
                let Start::Request { method, target } = head.start else {
                    return;
                };
                if self.pending.len() >= self.max_pending {
                    self.dropped += 1;
                    self.request_open = false;
                    return;
                }
                self.pending.push_back(Pending {
                    method,
                    target,
                    headers: head.headers,
                    start_ns: ts_ns,
                    bytes: 0,
                    head_bytes,
                    complete: false,
                    status: None,
                });
                self.request_open = true;
            }
            Event::Ended { bytes, .. } => {
                if self.request_open
                    && let Some(p) = self.pending.back_mut()
                {
                    p.bytes = bytes;
                    p.complete = true;
                }
                self.request_open = false;
            }
        }
    }

    fn on_response_event(&mut self, role: Role, event: Event, done: &mut Vec<Exchange>) {
        match event {
            Event::Began {
                head, head_bytes, ..
            } => {
                let Head {
                    start: Start::Response { status },
                    ..
                } = head
                else {
                    return;
                };
                self.response_head = head_bytes;
                if (100..200).contains(&status) {
                    self.interim = true;
                    return;
                }
                if let Some(p) = self.pending.get_mut(self.answered) {
                    p.status = Some(status);
                    self.answered += 1;
                }
            }
            Event::Ended { ts_ns, bytes } => {
                if std::mem::take(&mut self.interim) {
                    return;
                }
                if self.answered == 0 {
                    // A response to nothing we saw (tracing began mid-stream).
                    return;
                }
                if let Some(p) = self.pending.pop_front() {
                    self.answered -= 1;
                    if self.request_open && self.pending.is_empty() {
                        // Answered before its body ended (e.g. 413): the
                        // request stream's open message was this one.
                        self.request_open = false;
                    }
                    let body = self.response_head.map(|h| bytes.saturating_sub(h));
                    done.push(self.exchange(role, p, (bytes, body), ts_ns, Outcome::Complete));
                }
            }
        }
    }

    fn exchange(
        &self,
        role: Role,
        p: Pending,
        (response_bytes, response_body_bytes): (u64, Option<u64>),
        end_ns: u64,
        outcome: Outcome,
    ) -> Exchange {
        let headers = self.redactor.headers(p.headers);
        let host = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.clone());
        Exchange {
            role,
            target: self.redactor.target(&p.target),
            method: p.method,
            host,
            request_headers: headers,
            status: p.status,
            request_bytes: p.bytes,
            response_bytes,
            request_body_bytes: p
                .head_bytes
                .filter(|_| p.complete)
                .map(|h| p.bytes.saturating_sub(h)),
            response_body_bytes,
            start_ns: p.start_ns,
            end_ns: end_ns.max(p.start_ns),
            outcome,
        }
    }

    /// Gives up on requests that started more than `timeout_ns` before
    /// `now_ns` without a response head.
    pub fn expire(&mut self, now_ns: u64, timeout_ns: u64) -> Vec<Exchange> {
        let mut done = Vec::new();
        let Some(role) = self.role else {
            return done;
        };
        // Only unanswered requests can time out, and answers come in order,
        // so they are the tail after `answered`.
        while self.pending.len() > self.answered {
            let idx = self.answered;
            let start = self.pending[idx].start_ns;
            if now_ns.saturating_sub(start) < timeout_ns {
                break;
            }
            if let Some(p) = self.pending.remove(idx) {
                done.push(self.exchange(role, p, (0, None), now_ns, Outcome::Timeout));
            }
            if self.pending.len() == idx {
                self.request_open = false;
            }
        }
        done
    }

    /// The connection closed at `ts_ns`: finishes a response that runs to
    /// close, and reports requests left without an answer.
    pub fn close(&mut self, ts_ns: u64) -> Vec<Exchange> {
        let mut done = Vec::new();
        let Some(role) = self.role else {
            return done;
        };
        let mut events = Vec::new();
        self.responses.close(&mut events);
        for e in events {
            self.on_response_event(role, e, &mut done);
        }
        while let Some(p) = self.pending.pop_front() {
            done.push(self.exchange(role, p, (0, None), ts_ns, Outcome::Closed));
        }
        self.answered = 0;
        self.request_open = false;
        done
    }

    /// Nothing is in flight: the connection can be forgotten without losing
    /// an exchange.
    pub fn is_quiet(&self) -> bool {
        self.pending.is_empty() && self.requests.is_idle() && self.responses.is_idle()
    }
}

/// The role implied by a segment that starts a request.
fn infer_role(seg: &Segment<'_>) -> Option<Role> {
    if !starts_message(Kind::Requests, seg.data) {
        return None;
    }
    Some(match seg.direction {
        Direction::Read => Role::Server,
        Direction::Write => Role::Client,
    })
}
