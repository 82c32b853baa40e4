//! One direction of a connection: finds where HTTP messages start and end in
//! a sequence of [`Segment`]s whose bytes may be only partly captured.
//!
//! Knows nothing of pairing or redaction; it reports message heads (with the
//! raw header values) and message ends to [`crate::connection`], which owns
//! both.

use crate::Segment;

/// The largest message head (start line and headers) assembled across split
/// reads; a longer one is treated as cut short.
pub const MAX_HEAD: usize = 16 * 1024;
/// Headers kept per message (beyond that they are counted, not kept).
const MAX_HEADERS: usize = 64;

/// What a stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Requests,
    Responses,
}

/// A parsed start line and the headers that were captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub start: Start,
    /// Headers in order, names as sent (of a response only those framing
    /// needs). Empty when the head was cut short.
    pub headers: Vec<(String, String)>,
    /// The head was cut short: headers are missing and framing is unknown.
    pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    Request { method: String, target: String },
    Response { status: u16 },
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What feeding a segment produced, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A message began at `ts_ns`; `head_bytes` is the length of its head,
    /// `None` when the head was cut short by the capture.
    Began {
        head: Head,
        ts_ns: u64,
        head_bytes: Option<u64>,
    },
    /// The message that began last ended; `bytes` counts head and body.
    Ended { ts_ns: u64, bytes: u64 },
}

#[derive(Debug)]
enum Framing {
    /// `Content-Length` bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Response without length: ends when the connection closes.
    UntilClose,
}

#[derive(Debug)]
enum Chunk {
    /// Reading a chunk-size line.
    Size(Vec<u8>),
    /// Chunk data bytes left.
    Data(u64),
    /// The CRLF after chunk data: bytes left of it.
    DataEnd(u8),
    /// Trailer lines after the last chunk; holds the current line.
    Trailer(Vec<u8>),
}

#[derive(Debug)]
enum State {
    /// Between messages.
    Idle,
    /// A head split across reads: the bytes so far.
    Head { buf: Vec<u8>, ts_ns: u64 },
    /// In a body.
    Body { framing: Framing, open: Open },
    /// Framing lost: skip until a segment starts a new message. `open` is the
    /// message whose end is unknown, if one began.
    Lost { open: Option<Open> },
}

/// The message in progress: when it was last seen and how big it is so far.
#[derive(Debug, Clone, Copy)]
struct Open {
    last_ts: u64,
    bytes: u64,
}

/// The framing state of one direction of one connection.
#[derive(Debug)]
pub struct Stream {
    kind: Kind,
    state: State,
    /// Heads that could not be parsed (not HTTP/1.x where a message was
    /// due), since the last [`Stream::take_invalid`].
    invalid: u64,
}

/// What the response framing depends on in the request it answers.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestContext {
    pub head_request: bool,
}

impl Stream {
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            state: State::Idle,
            invalid: 0,
        }
    }

    /// Heads that failed to parse since the last call.
    pub fn take_invalid(&mut self) -> u64 {
        std::mem::take(&mut self.invalid)
    }

    /// Whether the stream is between messages (nothing open).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle | State::Lost { open: None })
    }

    /// Feeds one segment. For a response stream, `next_request` is asked,
    /// once per response head, about the request that response answers.
    pub fn feed(
        &mut self,
        seg: &Segment<'_>,
        next_request: &mut dyn FnMut() -> RequestContext,
        out: &mut Vec<Event>,
    ) {
        let mut data = seg.data;
        // Bytes of this segment not yet accounted for, captured or not.
        let mut left = seg.len.max(data.len() as u64);
        let ts = seg.ts_ns;
        let mut at_segment_start = true;
        loop {
            match &mut self.state {
                State::Idle => {
                    if left == 0 {
                        return;
                    }
                    let fully_captured = left == data.len() as u64;
                    if !(starts_message(self.kind, data)
                        || fully_captured && may_start_message(self.kind, data))
                    {
                        self.state = State::Lost { open: None };
                        return;
                    }
                    self.state = State::Head {
                        buf: Vec::new(),
                        ts_ns: ts,
                    };
                }
                State::Head { buf, ts_ns } => {
                    let began = *ts_ns;
                    let before = buf.len();
                    let room = MAX_HEAD.saturating_sub(before);
                    buf.extend_from_slice(&data[..data.len().min(room)]);
                    match parse_head(self.kind, buf) {
                        Parsed::Complete(head, head_len) => {
                            let used = head_len - before;
                            data = &data[used..];
                            left -= used as u64;
                            let framing = framing(self.kind, &head, next_request);
                            out.push(Event::Began {
                                head,
                                ts_ns: began,
                                head_bytes: Some(head_len as u64),
                            });
                            let open = Open {
                                last_ts: ts,
                                bytes: head_len as u64,
                            };
                            match framing {
                                Some(framing) => self.state = State::Body { framing, open },
                                None => {
                                    out.push(Event::Ended {
                                        ts_ns: ts,
                                        bytes: open.bytes,
                                    });
                                    self.state = State::Idle;
                                }
                            }
                        }
                        Parsed::Partial if left == data.len() as u64 && buf.len() < MAX_HEAD => {
                            // A split read: the rest of the head comes next.
                            return;
                        }
                        Parsed::Partial => {
                            // Cut short by the capture: keep the start line.
                            let Some(start) = parse_start_line(self.kind, buf) else {
                                self.state = State::Lost { open: None };
                                return;
                            };
                            let head = Head {
                                start,
                                headers: Vec::new(),
                                truncated: true,
                            };
                            if let Start::Response { .. } = head.start {
                                next_request();
                            }
                            out.push(Event::Began {
                                head,
                                ts_ns: began,
                                head_bytes: None,
                            });
                            let bytes = before as u64 + left;
                            self.state = State::Lost {
                                open: Some(Open { last_ts: ts, bytes }),
                            };
                            return;
                        }
                        Parsed::Invalid => {
                            self.invalid += 1;
                            self.state = State::Lost { open: None };
                            return;
                        }
                    }
                }
                State::Body { framing, open } => {
                    if left == 0 {
                        return;
                    }
                    open.last_ts = ts;
                    match framing {
                        Framing::Length(remaining) => {
                            let take = (*remaining).min(left);
                            *remaining -= take;
                            open.bytes += take;
                            left -= take;
                            data = &data[(take.min(data.len() as u64)) as usize..];
                            if *remaining == 0 {
                                out.push(Event::Ended {
                                    ts_ns: ts,
                                    bytes: open.bytes,
                                });
                                self.state = State::Idle;
                            }
                        }
                        Framing::UntilClose => {
                            open.bytes += left;
                            return;
                        }
                        Framing::Chunked(chunk) => {
                            let step = chunked(chunk, data, left);
                            open.bytes += step.used;
                            left -= step.used;
                            data = &data[(step.used.min(data.len() as u64)) as usize..];
                            match step.outcome {
                                ChunkOutcome::Done => {
                                    out.push(Event::Ended {
                                        ts_ns: ts,
                                        bytes: open.bytes,
                                    });
                                    self.state = State::Idle;
                                }
                                ChunkOutcome::NeedMore => return,
                                ChunkOutcome::Lost => {
                                    let mut open = *open;
                                    open.bytes += left;
                                    self.state = State::Lost { open: Some(open) };
                                    return;
                                }
                            }
                        }
                    }
                }
                State::Lost { open } => {
                    if at_segment_start && starts_message(self.kind, data) {
                        if let Some(o) = open.take() {
                            out.push(Event::Ended {
                                ts_ns: o.last_ts,
                                bytes: o.bytes,
                            });
                        }
                        self.state = State::Idle;
                        continue;
                    }
                    if let Some(o) = open {
                        o.last_ts = ts;
                        o.bytes += left;
                    }
                    return;
                }
            }
            at_segment_start = false;
        }
    }

    /// The connection closed: ends an open message (a read-until-close body
    /// or one whose framing was lost) at its last byte.
    pub fn close(&mut self, out: &mut Vec<Event>) {
        let open = match std::mem::replace(&mut self.state, State::Idle) {
            State::Body { open, .. } => Some(open),
            State::Lost { open } => open,
            State::Idle | State::Head { .. } => None,
        };
        if let Some(o) = open {
            out.push(Event::Ended {
                ts_ns: o.last_ts,
                bytes: o.bytes,
            });
        }
    }
}

/// Methods recognised at the start of a request.
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Whether `data` begins an HTTP/1.x message of `kind`.
pub fn starts_message(kind: Kind, data: &[u8]) -> bool {
    match kind {
        Kind::Requests => METHODS.iter().any(|m| data.starts_with(m)),
        Kind::Responses => data.starts_with(b"HTTP/1."),
    }
}

/// Whether `data` is too short to tell but could begin a message of `kind`
/// (a read that returned only the first bytes of a start line).
fn may_start_message(kind: Kind, data: &[u8]) -> bool {
    match kind {
        Kind::Requests => METHODS
            .iter()
            .any(|m| data.len() < m.len() && m.starts_with(data)),
        Kind::Responses => data.len() < 7 && b"HTTP/1.".starts_with(data),
    }
}

enum Parsed {
    Complete(Head, usize),
    Partial,
    Invalid,
}

fn parse_head(kind: Kind, buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (status, start, found) = match kind {
        Kind::Requests => {
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(status) => {
                    let start = match (req.method, req.path) {
                        (Some(m), Some(p)) => Start::Request {
                            method: m.to_string(),
                            target: p.to_string(),
                        },
                        _ => return Parsed::Partial,
                    };
                    (status, start, collect(req.headers))
                }
                Err(httparse::Error::TooManyHeaders) => return Parsed::Partial,
                Err(_) => return Parsed::Invalid,
            }
        }
        Kind::Responses => {
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(buf) {
                Ok(status) => {
                    let start = match resp.code {
                        Some(code) => Start::Response { status: code },
                        None => return Parsed::Partial,
                    };
                    (status, start, framing_headers(resp.headers))
                }
                Err(httparse::Error::TooManyHeaders) => return Parsed::Partial,
                Err(_) => return Parsed::Invalid,
            }
        }
    };
    match status {
        httparse::Status::Complete(n) => Parsed::Complete(
            Head {
                start,
                headers: found,
                truncated: false,
            },
            n,
        ),
        httparse::Status::Partial => Parsed::Partial,
    }
}

fn collect(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|h| !h.name.is_empty())
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// A response's headers as far as framing needs them: nothing downstream
/// looks at the others, and copying them costs an allocation per name and
/// value on every response.
fn framing_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|h| {
            h.name.eq_ignore_ascii_case("content-length")
                || h.name.eq_ignore_ascii_case("transfer-encoding")
        })
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// The start line alone, from a head that was cut short.
fn parse_start_line(kind: Kind, buf: &[u8]) -> Option<Start> {
    let line_end = buf.iter().position(|&b| b == b'\r' || b == b'\n');
    let line = std::str::from_utf8(&buf[..line_end.unwrap_or(buf.len())]).ok()?;
    let mut parts = line.splitn(3, ' ');
    match kind {
        Kind::Requests => {
            let method = parts.next()?;
            let target = parts.next()?;
            // Without the version the target may itself be cut: keep it only
            // when the whole line was captured.
            line_end?;
            Some(Start::Request {
                method: method.to_string(),
                target: target.to_string(),
            })
        }
        Kind::Responses => {
            parts.next()?;
            // Exactly three digits: a head cut by the capture inside its
            // status code ("HTTP/1.1 20") has no status, not status 20.
            let code = parts.next()?;
            if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let status = code.parse().ok()?;
            Some(Start::Response { status })
        }
    }
}

/// How the body of a message is delimited (RFC 9112 §6.3); `None` when it
/// has no body.
fn framing(
    kind: Kind,
    head: &Head,
    next_request: &mut dyn FnMut() -> RequestContext,
) -> Option<Framing> {
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = head
        .header("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    match (kind, &head.start) {
        (Kind::Responses, Start::Response { status }) => {
            // 1xx are interim: they answer nothing yet.
            if (100..200).contains(status) {
                return None;
            }
            let ctx = next_request();
            if ctx.head_request || *status == 204 || *status == 304 {
                None
            } else if chunked {
                Some(Framing::Chunked(Chunk::Size(Vec::new())))
            } else {
                match length {
                    Some(0) => None,
                    Some(n) => Some(Framing::Length(n)),
                    None => Some(Framing::UntilClose),
                }
            }
        }
        _ => {
            if chunked {
                Some(Framing::Chunked(Chunk::Size(Vec::new())))
            } else {
                match length {
                    Some(n) if n > 0 => Some(Framing::Length(n)),
                    _ => None,
                }
            }
        }
    }
}

enum ChunkOutcome {
    Done,
    NeedMore,
    Lost,
}

struct ChunkStep {
    used: u64,
    outcome: ChunkOutcome,
}

/// Longest chunk-size or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// Advances chunked framing over `data` (captured) within `left` bytes of
/// the segment (captured or not).
fn chunked(chunk: &mut Chunk, data: &[u8], left: u64) -> ChunkStep {
    let mut used: u64 = 0;
    loop {
        let captured = &data[(used.min(data.len() as u64)) as usize..];
        let remaining = left - used;
        if remaining == 0 {
            return ChunkStep {
                used,
                outcome: ChunkOutcome::NeedMore,
            };
        }
        match chunk {
            Chunk::Data(n) => {
                let take = (*n).min(remaining);
                *n -= take;
                used += take;
                if *n == 0 {
                    *chunk = Chunk::DataEnd(2);
                }
            }
            Chunk::DataEnd(n) => {
                let take = u64::from(*n).min(remaining);
                *n -= take as u8;
                used += take;
                if *n == 0 {
                    *chunk = Chunk::Size(Vec::new());
                }
            }
            Chunk::Size(line) | Chunk::Trailer(line) => {
                if captured.is_empty() {
                    // The framing is in bytes we did not capture.
                    return ChunkStep {
                        used,
                        outcome: ChunkOutcome::Lost,
                    };
                }
                let nl = captured.iter().position(|&b| b == b'\n');
                let end = nl.map_or(captured.len(), |i| i + 1);
                line.extend_from_slice(&captured[..end]);
                used += end as u64;
                if line.len() > MAX_CHUNK_LINE {
                    return ChunkStep {
                        used,
                        outcome: ChunkOutcome::Lost,
                    };
                }
                if nl.is_none() {
                    continue;
                }
                let text = String::from_utf8_lossy(line)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                if let Chunk::Size(_) = chunk {
                    let size = text.split(';').next().unwrap_or("").trim();
                    match u64::from_str_radix(size, 16) {
                        Ok(0) => *chunk = Chunk::Trailer(Vec::new()),
                        Ok(n) => *chunk = Chunk::Data(n),
                        Err(_) => {
                            return ChunkStep {
                                used,
                                outcome: ChunkOutcome::Lost,
                            };
                        }
                    }
                } else if text.is_empty() {
                    return ChunkStep {
                        used,
                        outcome: ChunkOutcome::Done,
                    };
                } else {
                    *chunk = Chunk::Trailer(Vec::new());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
