use std::collections::BTreeMap;
use std::sync::Arc;

use bpfleet_api::program::AppliedPolicy;
use bpfleet_api::{TracerPolicy, TracerPolicySpec, TracerProgram, TracerProgramStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

use super::*;
use crate::rollout::clock::time;
use crate::rollout::testing::spec;

fn policy(name: &str, generation: i64, spec_json: serde_json::Value) -> Arc<TracerPolicy> {
    let spec: TracerPolicySpec = serde_json::from_value(spec_json).expect("policy spec");
    let mut p = TracerPolicy::new(name, spec);
    p.metadata.generation = Some(generation);
    Arc::new(p)
}

fn by_name(name: &str, programs: &[&str]) -> Arc<TracerPolicy> {
    policy(name, 1, json!({"targets": {"programNames": programs}}))
}

fn program(
    name: &str,
    labels: &[(&str, &str)],
    applied: Option<AppliedPolicy>,
) -> Arc<TracerProgram> {
    let mut tp = TracerProgram::new(name, spec("a"));
    tp.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    tp.status = Some(TracerProgramStatus {
        policy: applied,
        ..Default::default()
    });
    Arc::new(tp)
}

fn applied(
    name: &str,
    generation: i64,
    nodes: i32,
    configured: i32,
    message: Option<&str>,
) -> Option<AppliedPolicy> {
    Some(AppliedPolicy {
        name: name.into(),
        generation,
        nodes,
        configured_nodes: configured,
        message: message.map(str::to_string),
        firing_alerts: Vec::new(),
    })
}

fn cond<'a>(s: &'a TracerPolicyStatus, t: &str) -> &'a Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .expect("condition")
}

fn now() -> Time {
    time(1_000)
}

#[test]
fn policies_target_by_name_or_label() {
    let labels = BTreeMap::from([("team".to_string(), "net".to_string())]);
    let sel = |v: &str| {
        policy(
            "p",
            1,
            json!({"targets": {"programSelector": {"matchLabels": {"team": v}}}}),
        )
    };
    assert!(targets_program(
        &by_name("p", &["tracer"]),
        "tracer",
        &labels
    ));
    assert!(!targets_program(
        &by_name("p", &["other"]),
        "tracer",
        &labels
    ));
    assert!(targets_program(&sel("net"), "tracer", &labels));
    assert!(!targets_program(&sel("web"), "tracer", &labels));
}

#[test]
fn the_first_targeting_policy_by_name_wins() {
    let all = [
        by_name("zeta", &["t"]),
        by_name("alpha", &["t"]),
        by_name("beta", &["u"]),
    ];
    let w = winner("t", &BTreeMap::new(), &all).expect("a winner");
    assert_eq!(w.name_any(), "alpha");
    assert!(winner("v", &BTreeMap::new(), &all).is_none());
}

#[test]
fn in_force_everywhere_is_ready() {
    let p = by_name("pol", &["t1", "t2"]);
    let programs = [
        program("t1", &[], applied("pol", 1, 3, 3, None)),
        program("t2", &[], applied("pol", 1, 2, 2, None)),
        program("other", &[], None),
    ];
    let s = status_of(&p, &programs, std::slice::from_ref(&p), &now());
    assert_eq!(s.targeted_programs, ["t1", "t2"]);
    assert_eq!(s.target_summary.as_deref(), Some("2"));
    assert_eq!(s.observed_generation, Some(1));
    let ready = cond(&s, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Applied")
    );
    assert!(ready.message.contains("5/5 nodes"), "{}", ready.message);
    assert_eq!(cond(&s, RECONCILING).status, "False");
}

#[test]
fn nodes_still_to_write_and_an_old_generation_are_pending() {
    let p = policy("pol", 2, json!({"targets": {"programNames": ["t1", "t2"]}}));
    let programs = [
        program("t1", &[], applied("pol", 2, 3, 1, None)),
        // Still describes generation 1 of the policy.
        program("t2", &[], applied("pol", 1, 3, 3, None)),
    ];
    let s = status_of(&p, &programs, std::slice::from_ref(&p), &now());
    let ready = cond(&s, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "Applying")
    );
    assert!(ready.message.contains("t1 1/3 nodes"), "{}", ready.message);
    assert!(
        ready.message.contains("t2 not yet reconciled"),
        "{}",
        ready.message
    );
    assert_eq!(cond(&s, RECONCILING).status, "True");
}

#[test]
fn a_refusal_is_named_with_the_agents_words() {
    let p = by_name("pol", &["t1"]);
    let programs = [program(
        "t1",
        &[],
        applied(
            "pol",
            1,
            3,
            2,
            Some("node b: writing bpfleet_ports: program t1 has no map named bpfleet_ports"),
        ),
    )];
    let s = status_of(&p, &programs, std::slice::from_ref(&p), &now());
    let ready = cond(&s, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ConfigRefused")
    );
    assert!(
        ready.message.contains("t1: node b: writing bpfleet_ports"),
        "{}",
        ready.message
    );
}

#[test]
fn a_policy_every_target_of_which_another_configures_is_overridden() {
    let a = by_name("a-first", &["t1"]);
    let b = by_name("b-second", &["t1"]);
    let programs = [program("t1", &[], applied("a-first", 1, 1, 1, None))];
    let all = [a.clone(), b.clone()];
    let sb = status_of(&b, &programs, &all, &now());
    let ready = cond(&sb, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "Overridden")
    );
    assert!(ready.message.contains("a-first"), "{}", ready.message);
    assert_eq!(sb.targeted_programs, ["t1"]);
    let sa = status_of(&a, &programs, &all, &now());
    assert_eq!(cond(&sa, READY).status, "True");
}

#[test]
fn targeting_nothing_is_ready_and_says_so() {
    let p = policy(
        "pol",
        1,
        json!({"targets": {"programSelector": {"matchLabels": {"team": "none"}}}}),
    );
    let programs = [program("t1", &[("team", "net")], None)];
    let s = status_of(&p, &programs, std::slice::from_ref(&p), &now());
    assert!(s.targeted_programs.is_empty());
    assert_eq!(s.target_summary.as_deref(), Some("0"));
    assert_eq!(cond(&s, READY).reason, "NoTargets");
}

#[test]
fn transition_times_move_only_on_a_change_of_state() {
    let mut p = (*by_name("pol", &["t1"])).clone();
    let ok = [program("t1", &[], applied("pol", 1, 1, 1, None))];
    let first = status_of(&p, &ok, &[], &time(100));
    p.status = Some(first.clone());
    let again = status_of(&p, &ok, &[], &time(200));
    assert_eq!(
        first, again,
        "nothing changed: the same status, nothing to write"
    );
    let pending = [program("t1", &[], applied("pol", 1, 2, 1, None))];
    let moved = status_of(&p, &pending, &[], &time(300));
    assert_eq!(cond(&moved, READY).last_transition_time, time(300));
}

#[test]
fn a_policy_that_cannot_work_says_which_field_and_is_written_nowhere() {
    let p = policy(
        "pol",
        2,
        json!({"targets": {"programNames": ["t1"]},
               "config": {"routes": {"patterns": ["/api/*", "/api/users/{id}"]}}}),
    );
    // Whatever the program reports, the policy's own problem comes first.
    let programs = [program("t1", &[], applied("pol", 2, 3, 3, None))];
    let s = status_of(&p, &programs, std::slice::from_ref(&p), &now());
    let ready = cond(&s, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        ready.message.contains("spec.config.routes.patterns[1]"),
        "{}",
        ready.message
    );
    // Nothing goes to an agent: sync answers before the pool is used.
    let pool = crate::agents::Pool::new(None, Duration::from_secs(1));
    let fetch: crate::cache::Fetch = Arc::new(|_, _, _| Box::pin(async { None }));
    let cache = NodeCache::new(Duration::from_secs(1), 1, fetch);
    let metrics = Metrics::new();
    let refusals = Mutex::new(Refusals::default());
    let holding = [Holding {
        node: "n1",
        endpoint: Some("unix:///nonexistent/agent.sock"),
        stamp: 7,
        revisions: "r1".into(),
        firing: &[],
    }];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let synced = rt.block_on(sync(
        &pool,
        &cache,
        &metrics,
        &refusals,
        "t1",
        Some(&p),
        &holding,
    ));
    assert_eq!(synced.written, 0);
    let applied = synced.applied.expect("applied");
    assert_eq!((applied.nodes, applied.configured_nodes), (1, 0));
    let m = applied.message.unwrap_or_default();
    assert!(
        m.contains("not applied, invalid: spec.config.routes.patterns[1]"),
        "{m}"
    );
    assert!(
        !metrics.render().contains("update_config"),
        "no agent was called"
    );
}

#[test]
fn a_policys_budgets_travel_with_every_load_named_by_the_policy() {
    let p = policy(
        "pol",
        1,
        json!({"targets": {"programNames": ["t1"]},
               "budgets": {"maxPrograms": 3, "maxMapMemory": "1Mi"}}),
    );
    let b = budget(Some(&p)).expect("budget");
    assert_eq!(
        (
            b.group.as_str(),
            b.group_max_programs,
            b.group_max_map_memory_bytes
        ),
        ("pol", 3, 1 << 20)
    );
    assert_eq!(
        b.max_map_memory_bytes, 0,
        "the program's own stays the agent's"
    );
    // None set: no budget at all (the agent's own flags apply).
    let p = policy(
        "pol",
        1,
        json!({"targets": {"programNames": ["t1"]}, "budgets": {"maxCpuOverheadPercent": 2}}),
    );
    assert_eq!(budget(Some(&p)), None);
    assert_eq!(budget(None), None);
}

/// Every field of the policy is acted on: its Ready message never says
/// otherwise.
#[test]
fn no_field_is_left_unacted_on() {
    let p = policy(
        "pol",
        1,
        json!({"targets": {"programNames": ["t1"]},
               "budgets": {"maxCpuOverheadPercent": 2},
               "alerts": [{"name": "A", "signal": "ErrorRate", "threshold": 0.1}]}),
    );
    let programs = [program("t1", &[], applied("pol", 1, 1, 1, None))];
    let s = status_of(&p, &programs, std::slice::from_ref(&p), &now());
    let ready = cond(&s, READY);
    assert_eq!(ready.status, "True");
    assert!(!ready.message.contains("not acted on"), "{}", ready.message);
}

/// A policy with a CPU budget sums up its programs' `BudgetEnforced`, and
/// sends the budget with the configuration (in the stamp).
#[test]
fn a_cpu_budget_is_sent_and_its_enforcement_summed_up() {
    let p = policy(
        "pol",
        1,
        json!({"targets": {"programNames": ["t1", "t2"]},
               "budgets": {"maxCpuOverheadPercent": 0.5}}),
    );
    let want = desired(Some(&p));
    assert_eq!(want.cpu_budget.max_cpu_percent, 0.5);
    assert!(
        want.cpu_budget.reduce_sampling,
        "reduceSamplingOnBreach defaults to true"
    );
    assert_eq!(want.cpu_budget.policy, "pol");
    let plain = desired(Some(&by_name("pol", &["t1", "t2"])));
    assert_ne!(want.stamp, plain.stamp, "the budget is in the stamp");
    assert_eq!(plain.cpu_budget.max_cpu_percent, 0.0);
    let slots = &want.requests("t1")[0];
    assert_eq!(slots.cpu_budget.as_ref(), Some(&want.cpu_budget));

    let mut t1 = (*program("t1", &[], applied("pol", 1, 1, 1, None))).clone();
    let reduced = Condition {
        type_: cpu::BUDGET_ENFORCED.into(),
        status: "True".into(),
        reason: "SamplingReduced".into(),
        message: "sampling reduced on n1: 0.41 % CPU".into(),
        observed_generation: Some(1),
        last_transition_time: now(),
    };
    t1.status.as_mut().unwrap().conditions.push(reduced);
    let programs = [
        Arc::new(t1),
        program("t2", &[], applied("pol", 1, 1, 1, None)),
    ];
    let s = status_of(&p, &programs, std::slice::from_ref(&p), &now());
    let b = cond(&s, cpu::BUDGET_ENFORCED);
    assert_eq!(
        (b.status.as_str(), b.reason.as_str()),
        ("True", "SamplingReduced")
    );
    assert_eq!(b.message, "t1: sampling reduced on n1: 0.41 % CPU");
    assert!(!cond(&s, READY).message.contains("not acted on"));
    // No budget: no condition.
    let quiet = by_name("pol", &["t1", "t2"]);
    let s = status_of(&quiet, &programs, std::slice::from_ref(&quiet), &now());
    assert!(s.conditions.iter().all(|c| c.type_ != cpu::BUDGET_ENFORCED));
}

/// Nodes' firing alerts summed up per program, bounded: counts of every
/// node, the first ten names.
#[test]
fn firing_alerts_per_program_are_bounded() {
    let names: Vec<String> = (0..5000).map(|i| format!("node-{i:04}")).collect();
    let both = [
        ("Faults".to_string(), "Critical".to_string()),
        ("Slow".to_string(), "Warning".to_string()),
    ];
    let holding: Vec<Holding> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Holding {
            node: n,
            endpoint: None,
            stamp: 1,
            revisions: String::new(),
            // Every node fires Faults, every other one Slow too.
            firing: if i % 2 == 0 { &both[..] } else { &both[..1] },
        })
        .collect();
    let s = firing_summary(&holding);
    assert_eq!(s.len(), 2);
    assert_eq!((s[0].alert.as_str(), s[0].nodes), ("Faults", 5000));
    assert_eq!((s[1].alert.as_str(), s[1].nodes), ("Slow", 2500));
    assert_eq!(s[0].node_names.len(), 10);
    assert_eq!(s[0].node_names[0], "node-0000");
    assert_eq!(s[1].node_names[1], "node-0002");
    assert!(firing_summary(&holding[..0]).is_empty());
}

/// The policy's status names what fires over its programs, with a
/// condition; programs another policy configures do not count.
#[test]
fn the_policy_status_sums_up_firing_alerts() {
    let p = policy(
        "pol",
        1,
        json!({"targets": {"programNames": ["t1", "t2"]},
               "alerts": [{"name": "Faults", "signal": "ProgramErrors", "threshold": 0}]}),
    );
    let firing = |nodes: &[&str]| {
        let mut a = applied("pol", 1, 3, 3, None).expect("applied");
        a.firing_alerts = vec![bpfleet_api::program::FiringAlert {
            alert: "Faults".into(),
            severity: "Critical".into(),
            nodes: i32::try_from(nodes.len()).expect("few"),
            node_names: nodes.iter().map(|n| n.to_string()).collect(),
        }];
        Some(a)
    };
    let quiet = [
        program("t1", &[], applied("pol", 1, 3, 3, None)),
        program("t2", &[], applied("pol", 1, 3, 3, None)),
    ];
    let s = status_of(&p, &quiet, std::slice::from_ref(&p), &now());
    assert!(s.firing_alerts.is_empty());
    let c = cond(&s, ALERTS_FIRING);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "NoneFiring")
    );
    assert_eq!(c.message, "none of 1 alert(s) fires");
    let loud = [
        program("t1", &[], firing(&["n2", "n3"])),
        program("t2", &[], firing(&["n1"])),
    ];
    let s = status_of(&p, &loud, std::slice::from_ref(&p), &now());
    assert_eq!(
        s.firing_alerts,
        [PolicyFiringAlert {
            alert: "Faults".into(),
            severity: "Critical".into(),
            nodes: 3,
            node_names: vec!["n1".into(), "n2".into(), "n3".into()],
            programs: vec!["t1".into(), "t2".into()],
        }]
    );
    let c = cond(&s, ALERTS_FIRING);
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Firing"));
    assert_eq!(c.message, "Faults (Critical) on 3 node(s)");
    assert_eq!(cond(&s, READY).status, "True", "firing is not unready");
}
