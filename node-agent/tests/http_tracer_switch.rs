//! The tracer as bpfleet runs it: loaded by the real node agent as a
//! managed program in two revisions with shared maps, switched back and
//! forth through the agent's dispatchers while a client keeps sending
//! requests. Every request must be reported exactly once on each side —
//! none lost in a switch, none seen by both revisions — in events mode
//! (the shared ring buffer, read by the test with the tracer crate's
//! pipeline) and in metrics mode (the shared counts). The agent core runs
//! in-process. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use bpfleet_agent::{Agent, Config};
use bpfleet_httptrace::Role;
use bpfleet_httptrace::redact::Redactor;
use bpfleet_proto::v1 as pb;
use bpfleet_tracer::event::config;
use bpfleet_tracer::pinned::Aggregates;
use bpfleet_tracer::pipeline::{Pipeline, Traced};
use common::PinRoot;
use common::http::{PROGRAM, TestServer, tracer_req};
use libbpf_rs::{MapCore, MapFlags, MapHandle, RingBufferBuilder};

/// A pin root of its own, removed (after the agent unloads) on drop.
struct Root {
    pins: PinRoot,
    agent: Option<Agent>,
}

impl Drop for Root {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.as_mut() {
            // Everything the program has, whatever state a failure left.
            let _ = agent.unload(PROGRAM, "", "test");
        }
        self.agent = None;
        // The pin root goes with `pins`, after the agent.
    }
}

fn write_map(agent: &mut Agent, map: &str, key: Vec<u8>, value: Vec<u8>) {
    agent
        .update_config(
            &pb::UpdateConfigRequest {
                program: PROGRAM.into(),
                map: map.into(),
                entries: vec![pb::ConfigEntry { key, value }],
                replace: false,
                namespaces: None,
                tracer_rules: None,
                cpu_budget: None,
                alerts: None,
            },
            "test",
        )
        .expect("config written");
}

/// Sends GET /ok on keep-alive connections until stopped, counting the
/// responses that came back in `sent`.
fn client(port: u16, stop: &AtomicBool, sent: &AtomicU64) {
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::Relaxed) {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        for _ in 0..50 {
            c.write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            let mut got = 0;
            while got < 43 {
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0, "server closed");
                got += n;
            }
            sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An in-process agent in a pin root of its own with the tracer loaded as
/// r1 and r2, the server's port marked, `slots` written and r1 active.
fn start(tag: &str, server: &TestServer, slots: &[(u32, u64)]) -> (Root, std::path::PathBuf) {
    let pins = PinRoot::new(tag);
    let path = pins.path.clone();
    let mut cfg = Config::new(&path, pins.state_file());
    cfg.allow_unsigned = true;
    let mut root = Root { pins, agent: None };
    root.agent = Some(Agent::new(cfg).expect("agent starts (run as root)"));
    let agent = root.agent.as_mut().unwrap();
    agent.load(tracer_req("r1"), "test").expect("r1 loads");
    agent.load(tracer_req("r2"), "test").expect("r2 loads");
    write_map(
        agent,
        "bpfleet_ports",
        server.port.to_ne_bytes().to_vec(),
        vec![1],
    );
    for (slot, value) in slots {
        write_map(
            agent,
            "",
            slot.to_ne_bytes().to_vec(),
            value.to_ne_bytes().to_vec(),
        );
    }
    agent.activate(PROGRAM, "r1", "test").expect("r1 active");
    (root, path)
}

#[test]
fn switching_revisions_loses_and_doubles_nothing() {
    let server = TestServer::start();
    // Events mode, both ends: every syscall is an event here.
    let (mut root, path) = start(
        "tracer",
        &server,
        &[
            (config::PORT_FILTER, 1),
            (config::EVENTS, 1),
            (config::ENDS, config::ENDS_BOTH),
        ],
    );
    let agent = root.agent.as_mut().unwrap();

    let events = MapHandle::from_pinned_path(path.join(PROGRAM).join("_map_http_events"))
        .expect("shared ring buffer pinned");
    let lost = MapHandle::from_pinned_path(path.join(PROGRAM).join("_map_http_lost")).unwrap();

    let stop_client = AtomicBool::new(false);
    let stop_reader = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let mut pipeline = Pipeline::new(Arc::new(Redactor::builtin()), 1024);
    let mut got: Vec<Traced> = Vec::new();
    let mut switches = 0;
    thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut b = RingBufferBuilder::new();
            b.add(&events, |raw: &[u8]| {
                pipeline.handle_raw(raw, &mut got);
                0
            })
            .unwrap();
            let rb = b.build().unwrap();
            while !stop_reader.load(Ordering::Relaxed) {
                rb.poll(Duration::from_millis(20)).unwrap();
                rb.consume().unwrap();
            }
            rb.consume().unwrap();
        });
        let traffic = s.spawn(|| client(server.port, &stop_client, &sent));
        for to in ["r2", "r1", "r2", "r1", "r2", "r1"] {
            thread::sleep(Duration::from_millis(150));
            if to == "r1" {
                agent.rollback(PROGRAM, "r1", "test").expect("rollback");
            } else {
                agent.activate(PROGRAM, to, "test").expect("activate");
            }
            switches += 1;
        }
        thread::sleep(Duration::from_millis(150));
        stop_client.store(true, Ordering::Relaxed);
        traffic.join().unwrap();
        thread::sleep(Duration::from_millis(300));
        stop_reader.store(true, Ordering::Relaxed);
        reader.join().unwrap();
    });
    let sent = sent.load(Ordering::Relaxed);
    let server_side = got
        .iter()
        .filter(|t| t.exchange.role == Role::Server && t.exchange.status == Some(200))
        .count() as u64;
    let client_side = got
        .iter()
        .filter(|t| t.exchange.role == Role::Client && t.exchange.status == Some(200))
        .count() as u64;
    assert!(sent > 500, "too little traffic to mean anything: {sent}");
    assert_eq!(switches, 6);
    assert_eq!(server_side, sent, "server side: every request once");
    // Each exchange names the revision that reported it: r1 has revision token
    // 1, r2 token 2, and both ran.
    let revisions: std::collections::BTreeSet<u32> = got.iter().map(|t| t.revision).collect();
    assert_eq!(revisions, [1, 2].into());
    assert_eq!(client_side, sent, "client side: every request once");
    let dropped: u64 = lost
        .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
        .unwrap()
        .unwrap_or_default()
        .iter()
        .map(|v| u64::from_ne_bytes(v[..8].try_into().unwrap()))
        .sum();
    assert_eq!(dropped, 0);
    assert_eq!(pipeline.health().malformed, 0);
    drop(events);
    drop(lost);

    // Unloading the inactive revision, then the whole program, leaves
    // nothing pinned.
    let agent = root.agent.as_mut().unwrap();
    agent.unload(PROGRAM, "r2", "test").expect("unload r2");
    agent
        .unload(PROGRAM, "", "test")
        .expect("unload the program");
    let left = root.pins.pins();
    assert!(left.is_empty(), "pins left: {left:?}");
}

/// Metrics mode (the default, server end): revisions switched back and
/// forth under keep-alive traffic; the kernel's counts, summed over the
/// two revisions, equal the responses the client got (none lost at a
/// switch, none counted twice), both revisions counted some, and nothing
/// but the path's announcement reached the ring buffer.
#[test]
fn metrics_mode_counts_every_exchange_once_across_switches() {
    let server = TestServer::start();
    let (mut root, path) = start("tracer-metrics", &server, &[(config::PORT_FILTER, 1)]);
    let agent = root.agent.as_mut().unwrap();
    let aggs =
        Aggregates::open(&path.join(PROGRAM).join("_map_http_aggs")).expect("shared counts pinned");

    let stop_client = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    thread::scope(|s| {
        let traffic = s.spawn(|| client(server.port, &stop_client, &sent));
        for to in ["r2", "r1", "r2", "r1", "r2", "r1"] {
            thread::sleep(Duration::from_millis(150));
            if to == "r1" {
                agent.rollback(PROGRAM, "r1", "test").expect("rollback");
            } else {
                agent.activate(PROGRAM, to, "test").expect("activate");
            }
        }
        thread::sleep(Duration::from_millis(150));
        stop_client.store(true, Ordering::Relaxed);
        traffic.join().unwrap();
    });
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > 500, "too little traffic to mean anything: {sent}");
    // The last exchange on each connection is counted when its response is
    // written, before the client reads it: all are in by now.
    let mut per_revision: std::collections::BTreeMap<u32, u64> = Default::default();
    for (k, c) in aggs.read().unwrap() {
        assert_eq!(k.role, Some(Role::Server), "client end not traced");
        assert_eq!(k.status, Some(200), "{k:?}");
        assert_eq!(k.method.as_str(), "GET");
        *per_revision.entry(k.revision).or_default() += c.count;
    }
    assert_eq!(
        per_revision.values().sum::<u64>(),
        sent,
        "every exchange once: {per_revision:?}"
    );
    assert_eq!(
        per_revision.keys().copied().collect::<Vec<_>>(),
        vec![1, 2],
        "both revisions counted"
    );
    drop(aggs);
    let agent = root.agent.as_mut().unwrap();
    agent
        .unload(PROGRAM, "", "test")
        .expect("unload the program");
    let left = root.pins.pins();
    assert!(left.is_empty(), "pins left: {left:?}");
}
