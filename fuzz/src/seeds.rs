//! The seed corpus, written as code so that every seed says what it is:
//! real HTTP/1.1 exchanges (pipelined, chunked, split, cut short by the
//! capture, interim responses, reads until close), ring-buffer records laid
//! out as `struct http_event_hdr`, and TracerPolicy rule documents.
//! `tests/corpus.rs` checks that `corpus/` holds every one of them
//! (`BPFLEET_WRITE_SEEDS=1 cargo test` writes them).

use bpfleet_httptrace::{Direction, Role};

use crate::http_segments::Script as Segments;
use crate::rules::input;
use crate::tracer_events::{Header, KIND_DATA, Script as Events};

const R: Direction = Direction::Read;
const W: Direction = Direction::Write;

/// One seed: its target, a file name, and the bytes.
pub struct Seed {
    pub target: &'static str,
    pub name: &'static str,
    pub data: Vec<u8>,
}

fn seed(target: &'static str, name: &'static str, data: Vec<u8>) -> Seed {
    Seed { target, name, data }
}

const GET: &[u8] = b"GET /api/users/42?token=s3cr3t&page=2 HTTP/1.1\r\nHost: shop.local\r\nAuthorization: Bearer abc\r\nAccept: */*\r\n\r\n";
const OK_LEN: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
const POST: &[u8] = b"POST /orders HTTP/1.1\r\nHost: shop.local\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"item\":1234}";
const CHUNKED: &[u8] = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n";

pub fn all() -> Vec<Seed> {
    let mut v = http_segments();
    v.extend(tracer_events());
    v.extend(rules());
    v.extend(agent_requests());
    v.extend(agent_replies());
    v
}

/// What one agent holds of the traced program, as its `List` and `Stats`
/// replies say: `active` and the other revisions loaded, each revision's
/// counters grown by `tick` (run time, errors, requests) since it loaded.
fn agent_answer(active: &str, inactive: &[&str], tick: u64, errors: u64) -> (Vec<u8>, Vec<u8>) {
    use crate::agent_replies::PROGRAM;
    use bpfleet_httptrace::stats::SEMCONV_DURATION_BUCKETS;
    use bpfleet_proto::v1 as pb;
    use prost::Message;
    let mut names = vec![active];
    names.extend(inactive);
    let info = |rev: &str, state: pb::RevisionState| pb::RevisionInfo {
        program: PROGRAM.into(),
        revision: rev.into(),
        state: state as i32,
        sha256: format!("{:0>64}", rev.len()),
        revision_token: 7,
        prog_ids: vec![101, 102],
        pins: vec![format!("/sys/fs/bpf/bpfleet/{PROGRAM}/{rev}/prog_count")],
        links: vec![],
        entries: vec![pb::ProgramEntry {
            bpf_program: "count".into(),
            hook: pb::HookKind::Tracepoint as i32,
            target: "syscalls/sys_enter_write".into(),
            pid: 0,
        }],
        loaded_at_unix_ms: 1_800_000_000_000,
        load_nanos: 2_500_000,
    };
    let mut revisions = vec![info(active, pb::RevisionState::Active)];
    revisions.extend(
        inactive
            .iter()
            .map(|r| info(r, pb::RevisionState::Inactive)),
    );
    let mut config = vec![0u64; 16];
    config[15] = 3;
    let list = pb::ListResponse {
        programs: vec![
            pb::ProgramInfo {
                program: PROGRAM.into(),
                active_revision: active.into(),
                revisions,
                shared_pins: vec![format!("/sys/fs/bpf/bpfleet/{PROGRAM}/link_count")],
                persistent_maps: vec![],
                config,
                namespaces: vec!["shop".into()],
                tracer_rules: Some(pb::TracerRules {
                    redact_query_params: vec!["sid".into()],
                    route_patterns: vec!["/items/{item}".into()],
                    ..Default::default()
                }),
                tracer_rules_overridden: false,
                cpu_budget: Some(pb::CpuBudgetStatus {
                    max_cpu_percent: 0.5,
                    reduce_sampling: true,
                    policy: "shop-http".into(),
                    measured_cpu_percent: Some(0.42),
                    requested_sampling_ppm: 0,
                    sampling_ppm: 125_000,
                    state: pb::CpuBudgetState::Reduced as i32,
                    changed_at_unix_ms: 1_700_000_000_000,
                    samples: true,
                }),
                firing_alerts: vec![pb::FiringAlert {
                    name: "HighErrorRate".into(),
                    severity: "Critical".into(),
                    signal: "ErrorRate".into(),
                    value: 0.5,
                    threshold: 0.1,
                    window: "1m".into(),
                    since_unix: 1_800_000_000,
                    service: "shop".into(),
                    route: "/items/{item}".into(),
                    side: "server".into(),
                    policy: "shop-policy".into(),
                }],
            },
            pb::ProgramInfo {
                program: "other".into(),
                active_revision: "o1".into(),
                revisions: vec![pb::RevisionInfo {
                    program: "other".into(),
                    ..info("o1", pb::RevisionState::Active)
                }],
                ..Default::default()
            },
        ],
    };
    let mut counts = vec![0u64; SEMCONV_DURATION_BUCKETS.len() + 1];
    counts[3] = 90 * tick;
    counts[6] = 9 * tick;
    counts[10] = tick;
    let stats = pb::StatsResponse {
        revisions: names
            .iter()
            .map(|rev| pb::RevisionStats {
                program: PROGRAM.into(),
                revision: (*rev).into(),
                active: *rev == active,
                progs: vec![pb::ProgStats {
                    bpf_program: "count".into(),
                    prog_id: 101,
                    run_cnt: 1000 * tick,
                    run_time_ns: 40_000 * tick,
                    recursion_misses: 0,
                }],
                run_cnt: 1000 * tick,
                run_time_ns: 40_000 * tick,
                program_errors: errors,
                events_lost: Some(errors),
                map_memory_bytes: 1 << 20,
                load_nanos: 2_500_000,
                http: Some(pb::HttpFigures {
                    requests: 100 * tick,
                    errors: tick,
                    latency_bounds_seconds: SEMCONV_DURATION_BUCKETS.to_vec(),
                    latency_bucket_counts: counts.clone(),
                }),
            })
            .collect(),
        stats_enabled: true,
        // Two CPUs at 100 Hz for ten seconds a tick: 2000 jiffies, 2 %
        // of them softirq, 10 % system; the agent at 3 % of a core.
        node: Some(pb::NodeFigures {
            cpu_total_jiffies: Some(1_000_000 + 2000 * tick),
            cpu_softirq_jiffies: Some(20_000 + 40 * tick),
            cpu_system_jiffies: Some(100_000 + 200 * tick),
            cpus: Some(2),
            agent_cpu_jiffies: Some(500 + 30 * tick),
            agent_rss_bytes: Some(40 << 20),
            btf_present: Some(true),
        }),
    };
    (list.encode_to_vec(), stats.encode_to_vec())
}

fn agent_replies() -> Vec<Seed> {
    use crate::agent_replies::{NodeReply, Round, input, revisions};
    let t = "agent_replies";
    let (stable, cand) = revisions();
    let (stable, cand) = (stable.as_str(), cand.as_str());
    let answer = |active: &str, inactive: &[&str], tick: u64, errors: u64| NodeReply {
        answer: Some(agent_answer(active, inactive, tick, errors)),
        refused: None,
    };
    // The canary as it goes when every action is carried out: both nodes
    // load the candidate (verification), node-0 switches to it, the
    // analysis measures both.
    let canary = |errors: u64| -> Vec<Round> {
        (1..=6u64)
            .map(|i| Round {
                extra_seconds: 0,
                nodes: vec![
                    if i == 1 {
                        answer(stable, &[], i, 0)
                    } else {
                        answer(cand, &[stable], i, errors * i)
                    },
                    if i == 1 {
                        answer(stable, &[], i, 0)
                    } else {
                        answer(stable, &[cand], i, 0)
                    },
                ],
            })
            .collect()
    };
    let refused = |code: tonic::Code, msg: String, for_stable: bool| NodeReply {
        answer: Some(agent_answer(stable, &[], 1, 0)),
        refused: Some((code as u8, msg.into_bytes(), for_stable)),
    };
    let verifier = format!(
        "verifier rejected program count: {}",
        "R1 invalid mem access 'scalar'\n".repeat(60)
    );
    vec![
        seed(t, "canary-healthy", input(2, 4, &canary(0))),
        seed(t, "canary-program-errors", input(2, 4, &canary(5))),
        seed(
            t,
            "load-verifier-rejected",
            input(
                2,
                2,
                &[
                    Round {
                        extra_seconds: 0,
                        nodes: vec![answer(stable, &[], 1, 0), answer(stable, &[], 1, 0)],
                    },
                    Round {
                        extra_seconds: 0,
                        nodes: vec![
                            refused(tonic::Code::InvalidArgument, verifier, false),
                            answer(stable, &[], 2, 0),
                        ],
                    },
                    Round {
                        extra_seconds: 5,
                        nodes: vec![
                            refused(
                                tonic::Code::Aborted,
                                "pulling registry.local/traced@sha256:00: connection refused"
                                    .into(),
                                false,
                            ),
                            refused(
                                tonic::Code::FailedPrecondition,
                                "hook fentry not supported on this kernel".into(),
                                true,
                            ),
                        ],
                    },
                ],
            ),
        ),
        seed(
            t,
            "unreachable-and-garbage",
            input(
                4,
                8,
                &[
                    Round {
                        extra_seconds: 0,
                        nodes: vec![
                            answer(stable, &[], 1, 0),
                            NodeReply::default(),
                            NodeReply {
                                answer: Some((vec![0x0a, 0xff, 0xff], vec![0x08])),
                                refused: None,
                            },
                            refused(tonic::Code::Unavailable, "connection reset".into(), true),
                        ],
                    },
                    Round {
                        extra_seconds: 30,
                        nodes: vec![
                            answer(cand, &[stable], 2, 0),
                            answer(stable, &[], 2, 0),
                            NodeReply {
                                answer: Some((Vec::new(), Vec::new())),
                                refused: None,
                            },
                            answer(stable, &[cand], 2, 0),
                        ],
                    },
                ],
            ),
        ),
    ]
}

fn agent_requests() -> Vec<Seed> {
    use crate::agent_requests::{HELD_NAMES, HELD_OBJECT, REAL_DIGEST, input};
    use bpfleet_proto::v1 as pb;
    let t = "agent_requests";
    let entry = |name: &str, target: &str| pb::ProgramEntry {
        bpf_program: name.into(),
        hook: pb::HookKind::Tracepoint as i32,
        target: target.into(),
        pid: 0,
    };
    let load = |object: &[u8]| pb::LoadRequest {
        program: "http-tracer".into(),
        revision: "v2".into(),
        entries: vec![
            entry("exit_read", "syscalls/sys_exit_read"),
            entry("exit_write", "syscalls/sys_exit_write"),
        ],
        persistent_maps: vec!["http_aggs".into()],
        source: Some(pb::load_request::Source::Object(object.to_vec())),
        ..Default::default()
    };
    let config = pb::UpdateConfigRequest {
        program: "http-tracer".into(),
        map: String::new(),
        entries: vec![pb::ConfigEntry {
            key: 8u32.to_ne_bytes().to_vec(),
            value: 500_000u64.to_ne_bytes().to_vec(),
        }],
        replace: false,
        namespaces: Some(pb::NamespaceFilter {
            names: vec!["shop".into(), "payments".into(), "shop".into()],
        }),
        tracer_rules: None,
        cpu_budget: Some(pb::CpuBudget {
            max_cpu_percent: 0.5,
            reduce_sampling: true,
            policy: "shop-http".into(),
        }),
        alerts: Some(pb::AlertRules {
            rules: vec![pb::PolicyAlert {
                name: "HighErrorRate".into(),
                signal: "ErrorRate".into(),
                threshold: 0.1,
                window: "1m".into(),
                severity: "Critical".into(),
                policy: "shop-policy".into(),
                min_requests: 0,
            }],
        }),
    };
    vec![
        seed(
            t,
            "load-new-program",
            input(0, REAL_DIGEST, &load(b"\x7fELF new")),
        ),
        seed(t, "load-wrong-digest", input(0, 0, &load(b"\x7fELF new"))),
        seed(
            t,
            "load-held-revision",
            input(0, REAL_DIGEST | HELD_NAMES, &load(HELD_OBJECT)),
        ),
        seed(
            t,
            "load-object-path",
            input(
                0,
                0,
                &pb::LoadRequest {
                    source: Some(pb::load_request::Source::ObjectPath(
                        "/var/lib/bpfleet/x.o".into(),
                    )),
                    ..load(b"")
                },
            ),
        ),
        seed(t, "update-config-namespaces", input(1, 0, &config)),
        seed(
            t,
            "activate",
            input(
                2,
                0,
                &pb::ActivateRequest {
                    program: "http-tracer".into(),
                    revision: "v2".into(),
                },
            ),
        ),
        seed(
            t,
            "rollback-previous",
            input(
                3,
                0,
                &pb::RollbackRequest {
                    program: "http-tracer".into(),
                    to_revision: String::new(),
                },
            ),
        ),
        seed(
            t,
            "unload-program",
            input(
                4,
                0,
                &pb::UnloadRequest {
                    program: "http-tracer".into(),
                    revision: String::new(),
                },
            ),
        ),
    ]
}

fn http_segments() -> Vec<Seed> {
    let t = "http_segments";
    let pipelined_requests = [GET, b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"].concat();
    let pipelined_responses = [OK_LEN, b"HTTP/1.1 204 No Content\r\n\r\n"].concat();
    vec![
        seed(
            t,
            "server-get-200",
            Segments::new(Some(Role::Server))
                .full(1_000, R, GET)
                .full(2_000, W, OK_LEN)
                .build(),
        ),
        seed(
            t,
            "client-post-chunked",
            Segments::new(Some(Role::Client))
                .full(1_000, W, POST)
                .full(5_000, R, CHUNKED)
                .close(9_000)
                .build(),
        ),
        seed(
            t,
            "inferred-pipelined",
            Segments::new(None)
                .full(1_000, R, &pipelined_requests)
                .full(3_000, W, &pipelined_responses)
                .build(),
        ),
        seed(
            t,
            "split-head-and-cut-capture",
            Segments::new(Some(Role::Server))
                .full(1_000, R, &POST[..30])
                .full(1_500, R, &POST[30..])
                .segment(
                    2_000,
                    W,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n<html>",
                    4_096,
                )
                .segment(2_500, W, b"more", 95_950)
                .build(),
        ),
        seed(
            t,
            "head-and-continue",
            Segments::new(Some(Role::Server))
                .full(1_000, R, b"HEAD /big HTTP/1.1\r\nHost: a\r\n\r\n")
                .full(1_100, W, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                .full(
                    2_000,
                    R,
                    b"PUT /blob HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
                )
                .full(2_100, W, b"HTTP/1.1 100 Continue\r\n\r\n")
                .full(2_200, R, b"abc")
                .full(2_300, W, b"HTTP/1.0 200 OK\r\n\r\nuntil close")
                .close(3_000)
                .build(),
        ),
        seed(
            t,
            "timeout-then-late-answer",
            Segments::new(Some(Role::Client))
                .full(1_000, W, b"GET /slow HTTP/1.1\r\n\r\n")
                .expire(40_000_000_000, 30_000_000_000)
                .full(
                    50_000_000_000,
                    R,
                    b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 0\r\n\r\n",
                )
                .build(),
        ),
        seed(
            t,
            "garbage-then-resync",
            Segments::new(Some(Role::Server))
                .full(1_000, R, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                .segment(
                    2_000,
                    R,
                    b"GET /x?password=p HTTP/1.1\r\nCookie: a=b",
                    8_000,
                )
                .full(3_000, R, b"GET /y HTTP/1.1\r\n\r\n")
                .full(
                    4_000,
                    W,
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found",
                )
                .build(),
        ),
    ]
}

fn tracer_events() -> Vec<Seed> {
    let t = "tracer_events";
    let header = Header {
        ts_ns: 1_000,
        sock_id: 0xffff_8880_1234_5678,
        cgroup_id: 4242,
        tgid: 300,
        pid: 301,
        fd: 5,
        len: GET.len() as u32,
        cap: GET.len() as u32,
        local_port: 8080,
        remote_port: 51000,
        kind: KIND_DATA,
        dir: 0,
        role: 1,
        rev: 1,
    };
    let response = Header {
        ts_ns: 2_000,
        len: OK_LEN.len() as u32,
        cap: OK_LEN.len() as u32,
        dir: 1,
        ..header
    };
    vec![
        seed(
            t,
            "raw-records",
            Events::new(8, 35, 38)
                .raw(&header.record(GET))
                .raw(&response.record(OK_LEN))
                .raw(&header.record(&GET[..10]))
                .raw(&[0u8; 20])
                .raw(&Header { kind: 9, ..header }.record(b""))
                .build(),
        ),
        seed(
            t,
            "server-and-client",
            Events::new(8, 35, 38)
                .data(1, 1_000, R, Some(Role::Server), GET, 0)
                .data(2, 1_100, W, Some(Role::Client), POST, 0)
                .data(2, 1_900, R, None, CHUNKED, 0)
                .data(1, 2_000, W, Some(Role::Server), OK_LEN, 0)
                .close(1, 3_000)
                .close(2, 3_000)
                .build(),
        ),
        seed(
            t,
            "eviction-and-ticks",
            Events::new(1, 10, 12)
                .data(1, 1_000, R, None, GET, 0)
                .data(6, 2_000, W, None, POST, 0)
                .tick(3_000)
                .data(1, 4_000, R, None, GET, 4_000)
                .tick(1 << 20)
                .tick(u64::MAX)
                .build(),
        ),
    ]
}

fn rules() -> Vec<Seed> {
    let t = "rules";
    let sample = "/carts/77/items?sid=abc&token=t&x=1\nAuthorization: Bearer b\nX-Session: s\nHost: shop\nserver --password hunter2 https://u:p@db/x /a/b/c/d/e";
    vec![
        seed(
            t,
            "config-yaml",
            input(
                "redaction:\n  headers: [X-Session]\n  queryParams: [sid]\n  commandLinePatterns: ['--pin=\\S+']\nroutes:\n  patterns: ['/carts/{id}', '/assets/*']\n  unmatched: Wildcard\n  maxRoutes: 50\n",
                sample,
            ),
        ),
        seed(
            t,
            "config-json",
            input(
                r#"{"redaction":{"headers":["X-Session"],"disableDefaults":true},"routes":{"patterns":["/carts/{id}/items"],"unmatched":"heuristic","maxRoutes":2}}"#,
                sample,
            ),
        ),
        seed(
            t,
            "manifest-yaml",
            input(
                "apiVersion: bpfleet.dev/v1alpha1\nkind: TracerPolicy\nmetadata:\n  name: shop\nspec:\n  targets:\n    programNames: [http-tracer]\n  config:\n    samplingRate: 0.5\n    redaction:\n      commandLinePatterns: ['(?i)secret=\\w+', '[a-z]{2,8}\\d*']\n    routes:\n      patterns: ['/static/*']\n",
                sample,
            ),
        ),
        seed(
            t,
            "bad-rules",
            input(
                "redaction: {commandLinePatterns: ['(']}\nroutes: {patterns: ['/ok', 'nope', '/a/*/b'], maxRoutes: -1}\n",
                sample,
            ),
        ),
    ]
}
