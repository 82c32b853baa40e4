//! Unit tests of the hub: per-revision figures, the namespace filter,
//! per-program rules, alerts.

use super::*;
use bpfleet_httptrace::Outcome;

fn view(program: &str, active: &str) -> ProgramView {
    ProgramView {
        program: program.into(),
        shared_maps: [
            (EVENTS_MAP.to_string(), PathBuf::from("/x/_map_http_events")),
            (LOST_MAP.to_string(), PathBuf::from("/x/_map_http_lost")),
        ]
        .into(),
        revisions: [("r1".to_string(), 1), ("r2".to_string(), 2)].into(),
        active: Some(active.into()),
        namespaces: Vec::new(),
        tracer_rules: None,
        alerts: Vec::new(),
    }
}

/// A program's TracerPolicy rules apply to it alone, laid over the
/// command line's; a change moves the generation readers watch; an
/// `--http-rules` file wins over them.
#[test]
fn a_programs_policy_rules_apply_to_it_unless_the_node_file_wins() {
    let cli = bpfleet_httptrace::rules::RouteRules {
        patterns: vec!["/cli/{id}".into()],
        ..Default::default()
    };
    let cfg = |file: bool| HttpConfig {
        tracer_rules: Rules {
            routes: cli.clone(),
            ..Default::default()
        },
        rules_file: file.then(|| (PathBuf::from("/p.yaml"), Rules::default())),
        ..Default::default()
    };
    let policy = rules::PolicyRules {
        redaction: rules::Redaction {
            query_params: vec!["sid".into()],
            ..Default::default()
        },
        routes: rules::Routes {
            patterns: vec!["/items/{item}".into()],
            ..Default::default()
        },
    };
    let mut with = view("t", "r1");
    with.tracer_rules = Some(policy.clone());
    let other = ProgramView {
        program: "u".into(),
        ..view("u", "r1")
    };

    let hub = Hub::new(cfg(false)).unwrap();
    hub.set_programs(&[view("t", "r1"), other.clone()]);
    let g0 = hub.rules_generation();
    assert_eq!(hub.rules_for("t").1.routes.patterns, ["/cli/{id}"]);
    hub.set_programs(&[with.clone(), other.clone()]);
    let (g1, t) = hub.rules_for("t");
    assert!(g1 > g0, "a changed program's rules move the generation");
    assert_eq!(t.routes.patterns, ["/cli/{id}", "/items/{item}"]);
    assert_eq!(t.redaction.query_params, ["sid"]);
    assert_eq!(hub.rules_for("u").1.routes.patterns, ["/cli/{id}"]);
    // The same rules again: compiled once, the generation stays.
    hub.set_programs(&[with.clone(), other.clone()]);
    assert_eq!(hub.rules_generation(), g1);
    assert!(Arc::ptr_eq(&hub.rules_for("t").1, &t));
    // Gone again: the node's rules, a new generation.
    hub.set_programs(&[view("t", "r1"), other.clone()]);
    assert!(hub.rules_generation() > g1);
    assert_eq!(hub.rules_for("t").1.routes.patterns, ["/cli/{id}"]);

    // With a node file, the file's rules stay in force.
    let hub = Hub::new(cfg(true)).unwrap();
    hub.set_programs(&[with, other]);
    assert_eq!(hub.rules_generation(), 0);
    assert_eq!(hub.rules_for("t").1.routes.patterns, ["/cli/{id}"]);
}

fn rec(token: u64, status: Option<u16>) -> Record {
    Record {
        token,
        side: Side::Server,
        method: "GET",
        status,
        route: "/a".into(),
        service: "svc".into(),
        namespace: String::new(),
        pod: String::new(),
        deployment: String::new(),
        command_line: "".into(),
        duration_ns: 2_000_000,
        end_ns: 100 * 1_000_000_000,
        target: "/a".into(),
        local_port: 80,
        remote_port: 40000,
        request_body_bytes: Some(10),
        response_body_bytes: Some(20),
        outcome: Outcome::Complete,
    }
}

#[test]
fn figures_per_revision_and_only_for_tracers() {
    let hub = Hub::new(HttpConfig::default()).unwrap();
    let other = ProgramView {
        program: "syscount".into(),
        revisions: [("v1".to_string(), 1)].into(),
        ..Default::default()
    };
    hub.set_programs(&[view("t", "r2"), other]);
    // Token 0 (an object loaded outside the agent) goes to the active one.
    hub.apply(
        "t",
        &[rec(1, Some(200)), rec(2, Some(503)), rec(0, Some(200))],
    );
    let mut s = pb::StatsResponse {
        revisions: ["r1", "r2"]
            .iter()
            .map(|r| pb::RevisionStats {
                program: "t".into(),
                revision: r.to_string(),
                ..Default::default()
            })
            .chain([pb::RevisionStats {
                program: "syscount".into(),
                revision: "v1".into(),
                ..Default::default()
            }])
            .collect(),
        stats_enabled: true,
        ..Default::default()
    };
    hub.fill_stats(&mut s);
    let r1 = s.revisions[0].http.clone().unwrap();
    let r2 = s.revisions[1].http.clone().unwrap();
    assert_eq!((r1.requests, r1.errors), (1, 0));
    assert_eq!((r2.requests, r2.errors), (2, 1));
    assert_eq!(r2.latency_bucket_counts[0], 2, "2 ms <= 5 ms");
    assert!(s.revisions[2].http.is_none(), "not a tracer");
    // A program that goes away takes its figures along.
    hub.set_programs(&[]);
    hub.fill_stats(&mut s);
    assert!(hub.lock().figures.is_empty());
}

#[test]
fn the_namespace_filter_drops_exchanges_of_other_namespaces() {
    let hub = Hub::new(HttpConfig::default()).unwrap();
    let mut v = view("t", "r1");
    v.namespaces = vec!["shop".into()];
    hub.set_programs(&[v]);
    let in_ns = |ns: &str| Record {
        namespace: ns.into(),
        ..rec(1, Some(200))
    };
    hub.apply(
        "t",
        &[in_ns("shop"), in_ns("other"), in_ns(""), in_ns("shop")],
    );
    let st = hub.lock();
    let f = st.figures.get(&("t".to_string(), 1)).expect("figures");
    assert_eq!(f.requests, 2, "only the two exchanges of namespace shop");
    let r = st.readers.get("t").expect("reader status");
    assert_eq!((r.exchanges, r.namespace_dropped), (2, 2));
    drop(st);
    // The filter lifted: everything counts again.
    hub.set_programs(&[view("t", "r1")]);
    hub.apply("t", &[in_ns("other")]);
    let st = hub.lock();
    assert_eq!(st.figures[&("t".to_string(), 1)].requests, 3);
}

#[test]
fn counted_exchanges_feed_figures_and_metrics_under_the_filter() {
    let hub = Arc::new(Hub::new(HttpConfig::default()).unwrap());
    let mut v = view("t", "r1");
    v.namespaces = vec!["shop".into()];
    hub.set_programs(&[v]);
    let counted = |ns: &str, token: u64, status: Option<u16>, ms: &[u64]| Counted {
        record: Record {
            namespace: ns.into(),
            ..rec(token, status)
        },
        durations_ns: ms.iter().map(|m| m * 1_000_000).collect(),
    };
    hub.apply_counted(
        "t",
        &[
            counted("shop", 1, Some(200), &[3, 3, 120]),
            counted("shop", 2, Some(503), &[7]),
            counted("other", 1, Some(200), &[1, 1]),
        ],
    );
    let st = hub.lock();
    let r1 = &st.figures[&("t".to_string(), 1)];
    assert_eq!((r1.requests, r1.errors), (3, 0));
    assert_eq!(r1.buckets[record::bucket_index(0.003)], 2);
    assert_eq!(r1.buckets[record::bucket_index(0.12)], 1);
    let r2 = &st.figures[&("t".to_string(), 2)];
    assert_eq!((r2.requests, r2.errors), (1, 1));
    let r = st.readers.get("t").expect("reader status");
    assert_eq!((r.exchanges, r.counted, r.namespace_dropped), (4, 4, 2));
    drop(st);
    let mut text = String::new();
    let mut reg = prometheus_client::registry::Registry::default();
    hub.families().register(&mut reg, hub.clone());
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    assert!(
        text.contains("http_server_request_duration_seconds_count{http_request_method=\"GET\",http_response_status_code=\"200\",http_route=\"/a\",k8s_namespace_name=\"shop\",k8s_pod_name=\"\",service_name=\"svc\",error_type=\"\"} 3"),
        "{text}"
    );
    assert!(!text.contains("k8s_namespace_name=\"other\""), "{text}");
}

#[test]
fn a_followed_channel_is_in_force_for_the_next_batch() {
    let hub = Hub::new(HttpConfig::default()).unwrap();
    let (tx, rx) = watch::channel(Arc::new(vec![view("t", "r1")]));
    hub.follow(rx);
    assert_eq!(hub.tracer_programs().len(), 1, "the views at follow time");
    let in_ns = |ns: &str| Record {
        namespace: ns.into(),
        ..rec(1, Some(200))
    };
    // The agent publishes a namespace filter; the very next batch is
    // filtered, with no call on the hub in between.
    let mut v = view("t", "r1");
    v.namespaces = vec!["shop".into()];
    tx.send_replace(Arc::new(vec![v]));
    hub.apply("t", &[in_ns("shop"), in_ns("other")]);
    assert_eq!(hub.lock().figures[&("t".to_string(), 1)].requests, 1);
    // The program unloaded: the hub forgets it and its figures.
    tx.send_replace(Arc::new(Vec::new()));
    assert!(hub.tracer_programs().is_empty());
    assert!(hub.lock().figures.is_empty());
}

#[test]
fn alerts_fire_and_count_transitions() {
    let cfg = HttpConfig {
        rules: vec![parse_rule("Errors=error_rate>0.5/1m/2").unwrap()],
        ..Default::default()
    };
    let hub = Hub::new(cfg).unwrap();
    hub.set_programs(&[view("t", "r1")]);
    hub.apply("t", &[rec(1, Some(500)), rec(1, Some(500)), rec(1, None)]);
    let t = hub.evaluate(101 * 1_000_000_000);
    assert!(matches!(&t[..], [Transition::Firing { rule, .. }] if rule == "Errors"));
    assert_eq!(hub.lock().firing.len(), 1);
    assert!(hub.evaluate(102 * 1_000_000_000).is_empty());
    let t = hub.evaluate(400 * 1_000_000_000);
    assert!(matches!(&t[..], [Transition::Resolved { .. }]));
    assert!(hub.lock().firing.is_empty());
}

/// A program's policy alerts see its own exchanges only, under the
/// policy's names; they fire and resolve on the board, and go when the
/// program's rules do.
#[test]
fn policy_alerts_are_evaluated_per_program() {
    const S: u64 = 1_000_000_000;
    let board = Arc::new(Board::default());
    let hub = Hub::with_board(HttpConfig::default(), board.clone()).unwrap();
    let rule = crate::alerts::from_pb(&pb::AlertRules {
        rules: vec![pb::PolicyAlert {
            name: "ShopErrors".into(),
            signal: "ErrorRate".into(),
            threshold: 0.5,
            window: "1m".into(),
            severity: "Critical".into(),
            policy: "shop".into(),
            min_requests: 3,
        }],
    })
    .unwrap();
    let mut t = view("t", "r1");
    t.alerts = rule;
    let u = view("u", "r1");
    hub.set_programs(&[t.clone(), u.clone()]);
    // Program u fails, t does not: t's alert stays quiet although the
    // node-wide series (both programs' exchanges) is mostly errors.
    hub.apply(
        "u",
        &[rec(1, Some(500)), rec(1, Some(500)), rec(1, Some(500))],
    );
    hub.apply("t", &[rec(1, Some(200)), rec(1, Some(200))]);
    hub.evaluate(101 * S);
    assert!(board.firing("t").is_empty() && board.firing("u").is_empty());
    // Too few of t's own: 2 failures of 4, then 3 of 5 (enough).
    hub.apply("t", &[rec(1, Some(500)), rec(1, Some(503))]);
    hub.evaluate(101 * S);
    assert!(board.firing("t").is_empty(), "2 of 4 is not above 0.5");
    hub.apply("t", &[rec(1, Some(500))]);
    hub.evaluate(102 * S);
    let f = board.firing("t");
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].breach.rule.name, "ShopErrors");
    assert_eq!(
        f[0].breach.series,
        ("svc".into(), "/a".into(), "server".into())
    );
    assert!((f[0].breach.value - 0.6).abs() < 1e-9);
    // Past the 1m window: no requests, resolved.
    hub.evaluate(200 * S);
    assert!(board.firing("t").is_empty());
    // Firing again, then the rules are taken away: resolved at once.
    let late = Record {
        end_ns: 300 * S,
        ..rec(1, Some(500))
    };
    hub.apply("t", &[late.clone(), late.clone(), late]);
    hub.evaluate(301 * S);
    assert_eq!(board.firing("t").len(), 1);
    hub.set_programs(&[view("t", "r1"), u]);
    hub.evaluate(302 * S);
    assert!(board.firing("t").is_empty());
    assert!(hub.lock().program_windows.is_empty());
}

#[test]
fn bad_route_patterns_are_refused() {
    let mut cfg = HttpConfig::default();
    cfg.tracer_rules.routes.patterns = vec!["/a/*/b".into()];
    let e = Hub::new(cfg).unwrap_err().to_string();
    assert!(e.contains("routes.patterns[0]"), "{e}");
    let mut cfg = HttpConfig::default();
    cfg.tracer_rules.redaction.command_line_patterns = vec!["(".into()];
    let e = Hub::new(cfg).unwrap_err().to_string();
    assert!(e.contains("redaction.commandLinePatterns[0]"), "{e}");
}
