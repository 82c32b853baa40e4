//! The agent process under concurrent, conflicting requests, over its
//! real gRPC API (several connections at once) and the real kernel:
//!
//! - two clients switching one program (Activate and Rollback, both
//!   ways, at once) for many rounds: every call succeeds or fails with
//!   FailedPrecondition and a reason; after each round List names exactly
//!   one active revision, the dispatcher's slot and List's link run it,
//!   and it is the one counting `getppid(2)` (the total counting too);
//! - a hundred concurrent Loads across 64 programs, duplicates (the same
//!   name and digest: idempotent, one `created`) and conflicts (the same
//!   revision with another digest: one digest wins, every other load of
//!   it is refused as immutable) among them: every reply agrees with the
//!   final List, the pins under the pin root are exactly List's, bpftool
//!   has every listed program; then 64 concurrent Unloads leave nothing;
//! - UpdateConfig storms on a running program's config map and port map
//!   (replace): after each storm the map holds one writer's entries, never
//!   a mix, and the program still counts;
//! - the agent's open fds and RSS (/proc) after storms of Loads and
//!   Unloads are back within a stated bound of what they were after the
//!   first storm.
//!
//! Each test has its own agent and pin root, removed when it ends, failed
//! or not. Needs root.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bpfleet_bpf as objs;
use bpfleet_proto::v1::{self as pb, RevisionState};
use bpfleet_testsupport::request::sha256_hex;
use common::*;
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use tonic::Code;

type Client = pb::agent_client::AgentClient<tonic::transport::Channel>;

const PROGRAM: &str = "syscount";

/// An agent process on a pin root of its own. The agent goes first
/// (killed), then the pins (removed, and with them whatever was loaded).
struct Node {
    agent: AgentProc,
    root: PinRoot,
}

impl Node {
    fn start(tag: &str) -> Self {
        Self::start_with(tag, &[])
    }

    fn start_with(tag: &str, extra: &[&str]) -> Self {
        let root = PinRoot::new(&format!("conc-{tag}"));
        let mut args = vec!["--allow-unsigned"];
        args.extend_from_slice(extra);
        let agent = AgentProc::start(&root, None, &args);
        Self { agent, root }
    }

    /// A connection of its own (HTTP/2 over the Unix socket).
    async fn client(&self) -> Client {
        self.agent.client().await
    }

    fn pid(&self) -> u32 {
        self.agent.pid()
    }
}

async fn list(c: &mut Client) -> Vec<pb::ProgramInfo> {
    c.list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .programs
}

/// Every pin List names.
fn listed_pins(list: &[pb::ProgramInfo]) -> BTreeSet<PathBuf> {
    let mut pins = BTreeSet::new();
    for p in list {
        pins.extend(p.shared_pins.iter().map(PathBuf::from));
        for r in &p.revisions {
            pins.extend(r.pins.iter().map(PathBuf::from));
        }
    }
    pins
}

/// The pins under the root against List's, and bpftool against List's
/// program ids.
fn check_pins_and_kernel(root: &PinRoot, list: &[pb::ProgramInfo]) {
    let on_disk: BTreeSet<PathBuf> = root.pins().into_iter().collect();
    let listed = listed_pins(list);
    let leaked: Vec<_> = on_disk.difference(&listed).collect();
    let missing: Vec<_> = listed.difference(&on_disk).collect();
    assert!(
        leaked.is_empty() && missing.is_empty(),
        "pins not in List: {leaked:?}; List's pins missing: {missing:?}"
    );
    let kernel = bpftool_ids(&["prog", "show"]);
    for p in list {
        for r in &p.revisions {
            for id in &r.prog_ids {
                assert!(
                    kernel.contains(id),
                    "{}/{}: bpftool has no program {id}",
                    p.program,
                    r.revision
                );
            }
        }
    }
}

/// A pseudo-random sequence (xorshift), the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One switch call of the two clients'.
#[derive(Clone, Copy, Debug)]
enum Switch {
    Activate(&'static str),
    /// To a named revision, or ("") to the previous one.
    Rollback(&'static str),
}

const SWITCHES: [Switch; 5] = [
    Switch::Activate("v1"),
    Switch::Activate("v2"),
    Switch::Rollback(""),
    Switch::Rollback("v1"),
    Switch::Rollback("v2"),
];

/// Sends `ops` one after another; returns each outcome: the active
/// revision the reply names, or the refusal.
async fn switch_all(
    mut c: Client,
    ops: Vec<Switch>,
) -> Vec<(Switch, Result<String, tonic::Status>)> {
    let mut out = Vec::new();
    for op in ops {
        let r = match op {
            Switch::Activate(rev) => c
                .activate(pb::ActivateRequest {
                    program: PROGRAM.into(),
                    revision: rev.into(),
                })
                .await
                .map(|r| r.into_inner().active_revision),
            Switch::Rollback(rev) => c
                .rollback(pb::RollbackRequest {
                    program: PROGRAM.into(),
                    to_revision: rev.into(),
                })
                .await
                .map(|r| r.into_inner().active_revision),
        };
        out.push((op, r));
    }
    out
}

/// List's one program against the kernel: exactly one revision active, the
/// one List names; each dispatcher slot and each link of it runs that
/// revision's program; the inactive revision's links run nothing of its
/// own. Returns the active revision.
async fn check_one_active(root: &PinRoot, c: &mut Client) -> String {
    let l = list(c).await;
    assert_eq!(l.len(), 1, "{l:?}");
    let p = &l[0];
    let active: Vec<&str> = p
        .revisions
        .iter()
        .filter(|r| r.state == RevisionState::Active as i32)
        .map(|r| r.revision.as_str())
        .collect();
    assert_eq!(active, [p.active_revision.as_str()], "{p:?}");
    let named = p
        .revisions
        .iter()
        .find(|r| r.revision == p.active_revision)
        .unwrap();
    for r in &p.revisions {
        for l in &r.links {
            let runs_it = l.prog_id != 0 && r.prog_ids.contains(&l.prog_id);
            assert_eq!(
                runs_it,
                r.revision == p.active_revision,
                "revision {} ({:?}) vs link {l:?}, {} active",
                r.revision,
                r.prog_ids,
                p.active_revision
            );
        }
    }
    let slots: Vec<PathBuf> = root
        .pins()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("_slot_"))
        })
        .collect();
    assert!(!slots.is_empty(), "no dispatcher slot pinned");
    for slot in &slots {
        let runs = slot_prog(slot);
        assert!(
            named.prog_ids.contains(&runs),
            "{} runs {runs}, List's active {} is {:?}",
            slot.display(),
            named.revision,
            named.prog_ids
        );
    }
    check_pins_and_kernel(root, &l);
    p.active_revision.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_clients_switching_one_program_leave_one_active_revision() {
    let node = Node::start("switch");
    let mut c = node.client().await;
    c.load(syscount("v1", objs::SYSCOUNT_V1)).await.unwrap();
    c.load(syscount("v2", objs::SYSCOUNT_V2)).await.unwrap();
    // Only this thread counts (the test's body stays on it).
    c.update_config(only_thread(PROGRAM, gettid()))
        .await
        .unwrap();
    c.activate(pb::ActivateRequest {
        program: PROGRAM.into(),
        revision: "v1".into(),
    })
    .await
    .unwrap();
    let counts = node.root.path.join("syscount/_map_counts");

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen_active = BTreeSet::new();
    let rounds = 60;
    // Two clients, a connection each.
    let (ca, cb) = (node.client().await, node.client().await);
    for round in 0..rounds {
        let mut ops = || -> Vec<Switch> { (0..6).map(|_| SWITCHES[rng.below(5)]).collect() };
        let (a_ops, b_ops) = (ops(), ops());
        let (a, b) = tokio::join!(switch_all(ca.clone(), a_ops), switch_all(cb.clone(), b_ops));
        for (op, r) in a.into_iter().chain(b) {
            match r {
                Ok(active) => {
                    let want = match op {
                        Switch::Activate(rev) | Switch::Rollback(rev) => rev,
                    };
                    assert!(
                        active == "v1" || active == "v2",
                        "round {round}: {op:?} answered active {active:?}"
                    );
                    if !want.is_empty() {
                        assert_eq!(active, want, "round {round}: {op:?}");
                    }
                    *outcomes.entry(format!("{op:?} ok")).or_default() += 1;
                }
                Err(s) => {
                    // The only refusal possible here: a rollback with no
                    // previous revision, or to the revision already active.
                    assert_eq!(
                        s.code(),
                        Code::FailedPrecondition,
                        "round {round}: {op:?}: {s:?}"
                    );
                    assert!(
                        s.message().contains(PROGRAM),
                        "round {round}: {op:?}: the refusal names no program: {s:?}"
                    );
                    *outcomes.entry(format!("{op:?} refused")).or_default() += 1;
                }
            }
        }
        let active = check_one_active(&node.root, &mut c).await;
        // The kernel agrees: the active revision counts, the other does
        // not, and the shared total counts every call.
        let total = slot(&counts, 3);
        assert_eq!(counting(&node.root), active, "round {round}");
        assert_eq!(slot(&counts, 3), total + 10, "round {round}: total");
        seen_active.insert(active);
    }
    eprintln!("{rounds} rounds of two clients x 6 switches: {outcomes:?}");
    assert_eq!(seen_active, ["v1", "v2"].map(String::from).into());
    for kind in ["Activate", "Rollback"] {
        let ok: u64 = outcomes
            .iter()
            .filter(|(k, _)| k.starts_with(kind) && k.ends_with(" ok"))
            .map(|(_, n)| n)
            .sum();
        assert!(ok >= 20, "too few {kind} calls succeeded: {outcomes:?}");
    }

    c.unload(pb::UnloadRequest {
        program: PROGRAM.into(),
        revision: String::new(),
    })
    .await
    .unwrap();
    assert!(list(&mut c).await.is_empty());
    assert!(node.root.pins().is_empty(), "{:?}", node.root.pins());
}

/// One Load of the storm: program `p<i>`, revision v1, object v1 or v2,
/// on a tracepoint of the test's own (the kernel runs at most 64
/// programs on one tracepoint, and the tests run side by side).
#[derive(Clone, Copy, Debug)]
struct Load {
    program: usize,
    v2_object: bool,
    tracepoint: &'static str,
}

impl Load {
    fn name(&self) -> String {
        format!("p{:02}", self.program)
    }

    fn object(&self) -> &'static [u8] {
        if self.v2_object {
            objs::SYSCOUNT_V2
        } else {
            objs::SYSCOUNT_V1
        }
    }

    fn request(&self) -> pb::LoadRequest {
        load_req(
            &self.name(),
            "v1",
            self.object(),
            vec![entry(
                "count_getppid",
                pb::HookKind::Tracepoint,
                self.tracepoint,
            )],
            &["counts"],
        )
    }
}

/// The storm: a Load of each of 64 programs on `tracepoint`, 24
/// duplicates of some, 12 conflicting ones (the same revision, the other
/// object), shuffled.
fn storm(seed: u64, tracepoint: &'static str) -> Vec<Load> {
    let load = |program, v2_object| Load {
        program,
        v2_object,
        tracepoint,
    };
    let mut loads: Vec<Load> = (0..64).map(|program| load(program, false)).collect();
    loads.extend((0..24).map(|i| load((i * 5) % 64, false)));
    loads.extend((0..12).map(|i| load(40 + i, true)));
    let mut rng = Rng(seed);
    for i in (1..loads.len()).rev() {
        let j = rng.below(i + 1);
        loads.swap(i, j);
    }
    loads
}

/// Sends every load at once over `conns` connections; returns each load
/// with its outcome.
async fn send_storm(
    node: &Node,
    conns: usize,
    loads: &[Load],
) -> Vec<(Load, Result<pb::LoadResponse, tonic::Status>)> {
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(node.client().await);
    }
    let tasks: Vec<_> = loads
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut c = clients[i % conns].clone();
            let (l, req) = (*l, l.request());
            tokio::spawn(async move { (l, c.load(req).await.map(|r| r.into_inner())) })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Unloads every program at once; List and the pin root are empty after.
async fn unload_all(node: &Node, c: &mut Client) -> BTreeSet<u32> {
    let l = list(c).await;
    let ids: BTreeSet<u32> = l
        .iter()
        .flat_map(|p| p.revisions.iter().flat_map(|r| r.prog_ids.clone()))
        .collect();
    let tasks: Vec<_> = l
        .iter()
        .map(|p| {
            let mut c = c.clone();
            let program = p.program.clone();
            tokio::spawn(async move {
                c.unload(pb::UnloadRequest {
                    program,
                    revision: String::new(),
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert!(list(c).await.is_empty());
    assert!(node.root.pins().is_empty(), "{:?}", node.root.pins());
    ids
}

/// The storm's replies against the final List.
fn check_storm(
    root: &PinRoot,
    results: &[(Load, Result<pb::LoadResponse, tonic::Status>)],
    l: &[pb::ProgramInfo],
) {
    let listed: BTreeMap<&str, &pb::ProgramInfo> =
        l.iter().map(|p| (p.program.as_str(), p)).collect();
    check_pins_and_kernel(root, l);
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(load, r)| r.as_ref().err().map(|s| format!("{load:?}: {s:?}")))
        .filter(|s| !s.contains("immutable"))
        .collect();
    assert!(failed.is_empty(), "loads failed: {failed:#?}");
    assert_eq!(listed.len(), 64, "{:?}", listed.keys());
    let mut created: BTreeMap<String, u64> = BTreeMap::new();
    let mut refused = 0;
    for (load, r) in results {
        let name = load.name();
        let p = listed
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{name} not listed"));
        assert_eq!(p.revisions.len(), 1, "{p:?}");
        let rev = &p.revisions[0];
        let digest = sha256_hex(load.object());
        match r {
            Ok(reply) => {
                let got = reply.revision.as_ref().unwrap();
                assert_eq!(got.sha256, digest, "{name}: reply's digest vs request's");
                assert_eq!(rev.sha256, digest, "{name}: List vs an accepted load");
                assert_eq!(got.prog_ids, rev.prog_ids, "{name}: reply vs List");
                assert_eq!(got.pins, rev.pins, "{name}: reply vs List");
                if reply.created {
                    *created.entry(name).or_default() += 1;
                }
            }
            Err(s) => {
                assert_eq!(s.code(), Code::AlreadyExists, "{name}: {s:?}");
                assert!(
                    s.message().contains("immutable") && s.message().contains(&name),
                    "{name}: {s:?}"
                );
                assert_ne!(rev.sha256, digest, "{name}: the listed digest was refused");
                refused += 1;
            }
        }
    }
    // Each program made once, whatever the order; each conflict refused
    // on one side (the v1 loads of a program, 1 or 2, or its v2 load).
    assert!(
        created.len() == 64 && created.values().all(|n| *n == 1),
        "created per program: {created:?}"
    );
    assert!((12..=24).contains(&refused), "{refused} loads refused");
    check_pins_and_kernel(root, l);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_loads_across_64_programs_agree_with_list() {
    let node = Node::start("loads");
    let mut c = node.client().await;
    let loads = storm(0x2545_f491_4f6c_dd1d, "syscalls/sys_enter_getpgid");
    let t = Instant::now();
    let results = send_storm(&node, 4, &loads).await;
    eprintln!("100 concurrent loads in {:?}", t.elapsed());
    let l = list(&mut c).await;
    check_storm(&node.root, &results, &l);

    // 64 concurrent Activates; then every program counts each call: 64
    // dispatchers on the same tracepoint (as many as the kernel allows),
    // each running its program.
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                c.activate(pb::ActivateRequest {
                    program: format!("p{i:02}"),
                    revision: "v1".into(),
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for p in list(&mut c).await {
        assert_eq!(p.active_revision, "v1", "{p:?}");
    }
    let before: Vec<u64> = (0..64)
        .map(|i| slot(&node.root.path.join(format!("p{i:02}/_map_counts")), 3))
        .collect();
    for _ in 0..7 {
        // SAFETY: no pointers; getpgid(0) only reads.
        unsafe { libc::getpgid(0) };
    }
    for (i, b) in before.iter().enumerate() {
        let after = slot(&node.root.path.join(format!("p{i:02}/_map_counts")), 3);
        // Other processes call getpgid(2) too: at least our 7.
        assert!(after >= b + 7, "p{i:02}: {b} -> {after}");
    }

    let t = Instant::now();
    let ids = unload_all(&node, &mut c).await;
    eprintln!("64 concurrent unloads in {:?}", t.elapsed());
    for id in ids {
        assert!(!prog_exists(id), "program {id} still loaded after Unload");
    }
}

/// The config storm's writers: even ones write slots 4-7 of
/// `bpfleet_config` (all four to their number), odd ones replace the
/// port map with four ports of their own.
fn config_write(w: u64) -> pb::UpdateConfigRequest {
    if w.is_multiple_of(2) {
        pb::UpdateConfigRequest {
            program: PROGRAM.into(),
            map: String::new(),
            entries: (4u32..8)
                .map(|k| pb::ConfigEntry {
                    key: k.to_ne_bytes().to_vec(),
                    value: w.to_ne_bytes().to_vec(),
                })
                .collect(),
            replace: false,
            namespaces: None,
            tracer_rules: None,
            cpu_budget: None,
            alerts: None,
        }
    } else {
        pb::UpdateConfigRequest {
            program: PROGRAM.into(),
            map: "bpfleet_ports".into(),
            entries: ports_of(w)
                .into_iter()
                .map(|p| pb::ConfigEntry {
                    key: p.to_ne_bytes().to_vec(),
                    value: vec![1],
                })
                .collect(),
            replace: true,
            namespaces: None,
            tracer_rules: None,
            cpu_budget: None,
            alerts: None,
        }
    }
}

fn ports_of(w: u64) -> BTreeSet<u16> {
    (0..4).map(|i| (1000 + w * 4 + i) as u16).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn update_config_storms_leave_one_writers_entries() {
    let node = Node::start("config");
    let mut c = node.client().await;
    c.load(syscount("v1", objs::SYSCOUNT_V1)).await.unwrap();
    c.update_config(only_thread(PROGRAM, gettid()))
        .await
        .unwrap();
    c.activate(pb::ActivateRequest {
        program: PROGRAM.into(),
        revision: "v1".into(),
    })
    .await
    .unwrap();
    let dir = node.root.path.join(PROGRAM);
    let config = MapHandle::from_pinned_path(dir.join("_map_bpfleet_config")).unwrap();
    let ports = MapHandle::from_pinned_path(dir.join("_map_bpfleet_ports")).unwrap();
    let conns: Vec<Client> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(node.client().await);
        }
        v
    };
    let writers = 60u64;
    for round in 0..10u64 {
        let first = round * writers;
        let tasks: Vec<_> = (first..first + writers)
            .map(|w| {
                let mut c = conns[(w % 4) as usize].clone();
                tokio::spawn(async move { c.update_config(config_write(w)).await })
            })
            .collect();
        for t in tasks {
            let r = t.await.unwrap();
            assert!(r.is_ok(), "round {round}: {r:?}");
        }
        let slots: Vec<u64> = (4u32..8)
            .map(|k| {
                let v = config
                    .lookup(&k.to_ne_bytes(), MapFlags::ANY)
                    .unwrap()
                    .unwrap();
                u64::from_ne_bytes(v[..8].try_into().unwrap())
            })
            .collect();
        assert!(
            slots.iter().all(|v| *v == slots[0])
                && slots[0].is_multiple_of(2)
                && (first..first + writers).contains(&slots[0]),
            "round {round}: config slots 4-7 are {slots:?}, not one writer's"
        );
        let in_map: BTreeSet<u16> = ports
            .keys()
            .map(|k| u16::from_ne_bytes(k[..2].try_into().unwrap()))
            .collect();
        let writer = (first..first + writers)
            .filter(|w| w % 2 == 1)
            .find(|w| ports_of(*w) == in_map);
        assert!(
            writer.is_some(),
            "round {round}: the port map holds {in_map:?}, not one writer's ports"
        );
        // Slot 0 (only this thread counts) was never written by the storm,
        // and the program keeps counting.
        assert_eq!(counting(&node.root), "v1", "round {round}");
    }
    drop((config, ports));
    c.unload(pb::UnloadRequest {
        program: PROGRAM.into(),
        revision: String::new(),
    })
    .await
    .unwrap();
    assert!(node.root.pins().is_empty(), "{:?}", node.root.pins());
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// What the agent holds when idle: its fds, RSS and threads once the
/// blocking threads of the last storm have retired (tokio lets an idle one
/// go after 10 s; waited for up to 20 s, until the count is back to
/// `threads_idle` when given).
fn settle(pid: u32, threads_idle: Option<usize>) -> (usize, u64, usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = threads(pid);
        let done = threads_idle.is_some_and(|idle| n <= idle);
        if done || Instant::now() > deadline {
            return (open_fds(pid), status_kib(pid, "VmRSS:"), n);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Open fds may not grow at all; RSS by at most this much over three
/// storms of 100 loads and 64 unloads each (allocator caches; a leak of a
/// loaded object per load would be several MiB a storm).
const RSS_BOUND_KIB: u64 = 8 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fds_and_memory_return_after_load_storms() {
    const TP: &str = "syscalls/sys_enter_getsid";
    let node = Node::start("memory");
    let pid = node.pid();
    let mut c = node.client().await;
    let fresh = (open_fds(pid), status_kib(pid, "VmRSS:"), threads(pid));
    // A first storm warms the allocator and the agent's lazily made
    // things; its end is the baseline.
    send_storm(&node, 4, &storm(1, TP)).await;
    let during = (open_fds(pid), status_kib(pid, "VmRSS:"), threads(pid));
    unload_all(&node, &mut c).await;
    let base = settle(pid, Some(fresh.2));
    for seed in 2..5 {
        let results = send_storm(&node, 4, &storm(seed, TP)).await;
        check_storm(&node.root, &results, &list(&mut c).await);
        unload_all(&node, &mut c).await;
    }
    let end = settle(pid, Some(base.2));
    eprintln!(
        "agent (fds, RSS KiB, threads): fresh {fresh:?}, loaded {during:?}, after the first storm {base:?}, after three more {end:?}"
    );
    assert_eq!(
        end.2, base.2,
        "threads: after the first storm vs at the end"
    );
    assert!(
        end.0 <= base.0,
        "open fds grew from {} to {} over three storms",
        base.0,
        end.0
    );
    assert!(
        end.1 <= base.1 + RSS_BOUND_KIB,
        "RSS grew from {} KiB to {} KiB over three storms (bound {RSS_BOUND_KIB} KiB)",
        base.1,
        end.1
    );
}

/// Found by the load storm (two agents' storms of 64 programs on one
/// tracepoint side by side): the kernel runs at most 64 programs on one
/// tracepoint, whoever loaded them,
/// and the agent answered the 65th Load with Internal "failed to attach
/// tracepoint", the kernel's reason (E2BIG) dropped. Now: ResourceExhausted
/// naming the limit, and nothing of the refused program left pinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_program_past_the_kernels_limit_on_a_tracepoint_is_refused_cleanly() {
    const TP: &str = "syscalls/sys_enter_getpriority";
    // The agent's own limit (64 programs by default) raised, so the
    // kernel's is the one reached: 65 programs at once on one tracepoint
    // nothing else uses.
    let node = Node::start_with("limit", &["--max-programs", "100"]);
    let mut c = node.client().await;
    let loads: Vec<Load> = (0..65)
        .map(|program| Load {
            program,
            v2_object: false,
            tracepoint: TP,
        })
        .collect();
    let results = send_storm(&node, 4, &loads).await;
    let refused: Vec<&tonic::Status> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let s = refused[0];
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(
        s.message().contains("64 per tracepoint") && s.message().contains(TP),
        "{s:?}"
    );
    let l = list(&mut c).await;
    assert_eq!(l.len(), 64, "the refused program is listed");
    check_pins_and_kernel(&node.root, &l);
    unload_all(&node, &mut c).await;
}
