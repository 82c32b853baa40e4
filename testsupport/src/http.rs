//! HTTP on loopback for tests: a small keep-alive HTTP/1.1 server whose
//! behaviour is chosen by path ([`TestServer`]), a one-shot GET for the
//! agent's own endpoints ([`get`]) and curl driven for status codes
//! ([`curl`]). Plain std sockets; nothing here knows the agent or the
//! tracer, nor parses more HTTP than a test needs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

/// What `/slow` sleeps unless [`TestServer::with_slow`] says otherwise.
pub const DEFAULT_SLOW: Duration = Duration::from_millis(120);

/// A keep-alive HTTP/1.1 server on 127.0.0.1, stopped (and its connection
/// threads joined) when dropped. By path: `/missing` 404, `/boom` 500,
/// `/slow` 200 after a sleep, `/chunked` 200 with a chunked body,
/// `/items/<id>` 201, `/hang` never answers (it waits for the client to
/// close), anything else 200 `hello`. A query string is ignored; a request
/// body is read by its Content-Length.
pub struct TestServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl TestServer {
    /// A server whose `/slow` sleeps [`DEFAULT_SLOW`].
    pub fn start() -> Self {
        Self::with_slow(DEFAULT_SLOW)
    }

    /// A server whose `/slow` sleeps `slow`.
    pub fn with_slow(slow: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("test server: bind 127.0.0.1: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("test server: nonblocking: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("test server: local address: {e}"))
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut workers = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => workers.push(thread::spawn(move || serve(s, slow))),
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        Self {
            port,
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What the server answers for `path` (query already cut off); `None` for
/// `/hang`, which never answers.
fn response(path: &str, slow: Duration) -> Option<&'static [&'static [u8]]> {
    Some(match path {
        "/hang" => return None,
        "/missing" => &[b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"],
        "/boom" => &[b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom"],
        "/slow" => {
            thread::sleep(slow);
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow"]
        }
        "/chunked" => &[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5\r\nhello\r\n",
            b"6\r\n world\r\n",
            b"0\r\n\r\n",
        ],
        p if p.starts_with("/items/") => {
            &[b"HTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\ncreated"]
        }
        _ => &[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"],
    })
}

/// Serves one connection until the client closes it (or 10 s of silence).
fn serve(stream: TcpStream, slow: Duration) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut body_len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                body_len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; body_len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path = path.split('?').next().unwrap_or("/");
        let Some(parts) = response(path, slow) else {
            // Never answers: waits for the client to give up and close.
            let mut b = [0u8; 1];
            let _ = reader.read(&mut b);
            return;
        };
        // Each part is one write, as a server streaming a body would.
        if parts.iter().any(|p| out.write_all(p).is_err()) {
            return;
        }
    }
}

/// GET `path` on 127.0.0.1:`port` (a server that closes after answering,
/// as the agent's metrics listener does): (status, body).
pub fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n").as_bytes())
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    split_response(&out)
}

/// (status, body) of a whole HTTP/1 response; status 0 when unreadable.
pub fn split_response(text: &str) -> (u16, String) {
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// curl on `urls` in one process (so one keep-alive connection per host),
/// `args` before them (headers, `-X POST`, ...); returns the status codes.
pub fn curl(args: &[String], urls: &[String]) -> Vec<u16> {
    let mut all: Vec<String> = vec!["-sS".into()];
    all.extend(args.iter().cloned());
    for u in urls {
        all.extend([
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}\\n".into(),
            u.clone(),
        ]);
    }
    let out = Command::new("curl")
        .args(&all)
        .output()
        .unwrap_or_else(|e| panic!("curl (apt-get install curl): {e}"));
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            l.trim()
                .parse()
                .unwrap_or_else(|e| panic!("curl printed {l:?} for a status: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_by_path() {
        let s = Duration::ZERO;
        assert!(response("/hang", s).is_none());
        let first = |p: &str| String::from_utf8_lossy(response(p, s).unwrap()[0]).into_owned();
        assert!(first("/missing").starts_with("HTTP/1.1 404"));
        assert!(first("/boom").starts_with("HTTP/1.1 500"));
        assert!(first("/items/42").starts_with("HTTP/1.1 201"));
        assert!(first("/ok").ends_with("hello"));
        assert_eq!(response("/chunked", s).unwrap().len(), 4);
    }

    #[test]
    fn a_response_splits_into_status_and_body() {
        let (status, body) = split_response("HTTP/1.1 503 Nope\r\nA: b\r\n\r\n{\"x\":1}");
        assert_eq!((status, body.as_str()), (503, "{\"x\":1}"));
        assert_eq!(split_response(""), (0, String::new()));
    }

    #[test]
    fn the_server_answers_keep_alive_requests_in_order() {
        let server = TestServer::with_slow(Duration::from_millis(1));
        let mut c = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        c.write_all(
            b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\nPOST /items/1?x=y HTTP/1.1\r\nContent-Length: 2\r\n\r\nabGET /slow HTTP/1.1\r\n\r\n",
        )
        .unwrap();
        let mut got = String::new();
        let mut buf = [0u8; 512];
        while !got.ends_with("slow") {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let codes: Vec<&str> = got.split("HTTP/1.1 ").skip(1).map(|r| &r[..3]).collect();
        assert_eq!(codes, ["500", "201", "200"]);
    }
}
