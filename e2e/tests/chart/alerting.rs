//! Alert routing and runbooks, checked with the real tools built from the Go
//! module proxy (`e2e/controlplane/prometheus`, `e2e/controlplane/alertmanager`):
//! every alert of the rendered PrometheusRule has a severity, the release
//! namespace and a runbook page; `promtool check rules` accepts the rules
//! and `promtool test rules` runs `alerts-test.yaml` (beside this file),
//! which must hold a firing and a quiet case for every alert; the rendered
//! AlertmanagerConfig, turned into the alertmanager.yml the Prometheus
//! Operator would generate from it ([`alertmanager_yml`], limits there),
//! passes `amtool check-config`, and `amtool config routes test` sends every
//! critical alert to the pager and every warning to chat.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use bpfleet_e2e::workspace_root;
use serde_json::{Value, json};

use crate::support::{NS, all_on, docs, kind, read, render, run_tool, text, write};

const RUNBOOKS: &str = "https://github.com/bpfleet/bpfleet/blob/main/docs/runbooks";

/// The PrometheusRule rendered with `extra` (its rules enabled).
fn prometheus_rule(extra: &[&str]) -> Value {
    let mut args = vec!["--set", "monitoring.prometheusRule.enabled=true"];
    args.extend_from_slice(extra);
    let d = docs(&render(&args));
    let rules = kind(&d, "PrometheusRule");
    assert_eq!(rules.len(), 1, "one PrometheusRule");
    rules[0].clone()
}

/// Every alerting rule of a PrometheusRule, by alert name.
fn alerts(rule: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for g in rule["spec"]["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().expect("only alerting rules");
            assert!(
                out.insert(name.to_string(), r.clone()).is_none(),
                "alert {name} defined twice"
            );
        }
    }
    assert!(!out.is_empty(), "no alerts rendered");
    out
}

/// Writes the rule's groups as a Prometheus rule file `rules.yaml` in `dir`
/// and checks it with `promtool check rules`.
pub fn promtool_check_rules(rule: &Value, dir: &Path) {
    let groups = json!({"groups": rule["spec"]["groups"]});
    write(dir, "rules.yaml", &serde_yaml::to_string(&groups).unwrap());
    let out = run_tool("promtool", &["check", "rules", "rules.yaml"], dir);
    let n = alerts(rule).len();
    assert!(
        out.status.success() && text(&out).contains(&format!("SUCCESS: {n} rules found")),
        "promtool check rules: {}",
        text(&out)
    );
}

#[test]
fn every_alert_has_a_severity_the_release_namespace_and_a_runbook() {
    let index = read("docs/runbooks/README.md");
    let rule = prometheus_rule(&[]);
    let all = alerts(&rule);
    for (name, r) in &all {
        let severity = r["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            matches!(severity, "warning" | "critical"),
            "{name}: severity {severity:?}, want warning or critical"
        );
        assert_eq!(r["labels"]["namespace"], NS, "{name}: release namespace");
        assert_eq!(
            r["annotations"]["runbook_url"],
            format!("{RUNBOOKS}/{name}.md"),
            "{name}: runbook_url"
        );
        let page = read(&format!("docs/runbooks/{name}.md"));
        assert!(page.starts_with(&format!("# {name}\n")), "{name}.md title");
        assert!(
            page.contains(&format!("**Severity:** {severity}.")),
            "{name}.md states severity {severity}"
        );
        for section in ["## What it means", "## What to check", "## What to do"] {
            assert!(page.contains(section), "{name}.md lacks {section:?}");
        }
        assert!(
            index.contains(&format!("| {name} | {severity} | [{name}.md]({name}.md) |")),
            "docs/runbooks/README.md does not list {name} as {severity}"
        );
    }
    // No page for an alert that no longer exists.
    for e in std::fs::read_dir(workspace_root().join("docs/runbooks")).unwrap() {
        let f = e.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(stem) = f.strip_suffix(".md").filter(|s| *s != "README") {
            assert!(all.contains_key(stem), "docs/runbooks/{f}: no such alert");
        }
    }
    // The base is a value; a trailing slash is not doubled.
    let own = prometheus_rule(&[
        "--set",
        "monitoring.prometheusRule.runbookBaseUrl=https://wiki.example.org/bpfleet/",
    ]);
    for (name, r) in alerts(&own) {
        assert_eq!(
            r["annotations"]["runbook_url"],
            format!("https://wiki.example.org/bpfleet/{name}.md")
        );
    }
}

/// One `alert_rule_test` case of the unit-test file.
struct Case {
    alert: String,
    fires: bool,
    expected: Vec<Value>,
}

fn cases(tests: &Value) -> Vec<Case> {
    let mut out = Vec::new();
    for t in tests["tests"].as_array().expect("tests") {
        for c in t["alert_rule_test"].as_array().expect("alert_rule_test") {
            let expected = c["exp_alerts"].as_array().cloned().unwrap_or_default();
            out.push(Case {
                alert: c["alertname"].as_str().expect("alertname").to_string(),
                fires: !expected.is_empty(),
                expected,
            });
        }
    }
    out
}

#[test]
fn promtool_checks_the_rules_and_runs_a_unit_test_for_every_alert() {
    let rule = prometheus_rule(&[]);
    let dir = tempfile::tempdir().unwrap();
    promtool_check_rules(&rule, dir.path());

    // Every alert has a firing case (with its severity and runbook_url, which
    // promtool compares exactly with the rule's) and a quiet one, and no
    // case names an alert the chart does not have.
    let unit = read("e2e/tests/chart/alerts-test.yaml");
    let tests: Value = serde_yaml::from_str(&unit).unwrap();
    assert_eq!(tests["rule_files"], json!(["rules.yaml"]));
    let all = alerts(&rule);
    let cases = cases(&tests);
    for c in &cases {
        assert!(
            all.contains_key(&c.alert),
            "alerts-test.yaml tests {}, which the chart does not define",
            c.alert
        );
        for e in &c.expected {
            let r = &all[&c.alert];
            assert_eq!(
                e["exp_labels"]["severity"], r["labels"]["severity"],
                "{}: expected severity",
                c.alert
            );
            assert!(
                e["exp_annotations"]["runbook_url"].is_string(),
                "{}: expected runbook_url",
                c.alert
            );
        }
    }
    let fires: BTreeSet<&str> = cases
        .iter()
        .filter(|c| c.fires)
        .map(|c| c.alert.as_str())
        .collect();
    let quiet: BTreeSet<&str> = cases
        .iter()
        .filter(|c| !c.fires)
        .map(|c| c.alert.as_str())
        .collect();
    for name in all.keys() {
        assert!(
            fires.contains(name.as_str()),
            "alerts-test.yaml has no case where {name} fires"
        );
        assert!(
            quiet.contains(name.as_str()),
            "alerts-test.yaml has no case where {name} stays quiet"
        );
    }

    write(dir.path(), "alerts-test.yaml", &unit);
    let out = run_tool(
        "promtool",
        &["test", "rules", "alerts-test.yaml"],
        dir.path(),
    );
    assert!(
        out.status.success() && text(&out).contains("SUCCESS"),
        "promtool test rules: {}",
        text(&out)
    );
}

/// The alertmanager.yml the Prometheus Operator generates for one
/// AlertmanagerConfig, as far as routing goes; what amtool can check.
///
/// What it does as the operator does: the AlertmanagerConfig's route
/// becomes a child of a root route whose receiver is a `null` receiver
/// (the Alertmanager's own, here empty), with a `namespace` matcher for
/// the object's namespace (the operator's default `OnNamespace` matcher
/// strategy) and `continue: true`; receivers are renamed
/// `<namespace>/<name>/<receiver>`; camelCase fields become the
/// alertmanager.yml's snake_case ones; matchers become matcher strings.
///
/// Its limits: Secret references (PagerDuty routing keys, Slack webhook
/// URLs) are not read; each becomes a placeholder of the right type
/// (`secret:<name>/<key>`, or an `https://secret.invalid/...` URL), so
/// amtool checks the shape, not the credentials. Only the receiver kinds
/// and fields listed below are known; any other field panics rather than
/// being dropped, so the conversion never checks less than the chart
/// renders. Inhibit rules, time intervals and global settings of the
/// real Alertmanager are not modelled.
pub fn alertmanager_yml(amc: &Value) -> Value {
    let ns = amc["metadata"]["namespace"].as_str().expect("namespace");
    let name = amc["metadata"]["name"].as_str().expect("name");
    let prefix = |r: &str| format!("{ns}/{name}/{r}");
    let mut top = route(&amc["spec"]["route"], &prefix);
    let mut matchers = vec![Value::String(format!("namespace={ns:?}"))];
    if let Some(m) = top.get("matchers").and_then(Value::as_array) {
        matchers.extend(m.iter().cloned());
    }
    top["matchers"] = Value::Array(matchers);
    top["continue"] = Value::Bool(true);
    let mut receivers = vec![json!({"name": "null"})];
    for r in amc["spec"]["receivers"].as_array().expect("receivers") {
        receivers.push(receiver(r, &prefix));
    }
    json!({
        "route": {"receiver": "null", "routes": [top]},
        "receivers": receivers,
    })
}

fn route(r: &Value, prefix: &dyn Fn(&str) -> String) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in r.as_object().expect("route is an object") {
        let (key, val) = match k.as_str() {
            "receiver" => ("receiver", json!(prefix(v.as_str().unwrap()))),
            "groupBy" => ("group_by", v.clone()),
            "groupWait" => ("group_wait", v.clone()),
            "groupInterval" => ("group_interval", v.clone()),
            "repeatInterval" => ("repeat_interval", v.clone()),
            "continue" => ("continue", v.clone()),
            "matchers" => (
                "matchers",
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|m| {
                        let op = m["matchType"].as_str().unwrap_or("=");
                        assert!(matches!(op, "=" | "!=" | "=~" | "!~"), "matchType {op}");
                        let value = m["value"].as_str().unwrap();
                        json!(format!("{}{op}{value:?}", m["name"].as_str().unwrap()))
                    })
                    .collect(),
            ),
            "routes" => (
                "routes",
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|c| route(c, prefix))
                    .collect(),
            ),
            other => panic!("alertmanager_yml: route field {other} is not converted; extend it"),
        };
        out.insert(key.to_string(), val);
    }
    Value::Object(out)
}

fn receiver(r: &Value, prefix: &dyn Fn(&str) -> String) -> Value {
    let secret = |v: &Value| {
        format!(
            "secret:{}/{}",
            v["name"].as_str().unwrap(),
            v["key"].as_str().unwrap()
        )
    };
    let secret_url = |v: &Value| {
        format!(
            "https://secret.invalid/{}/{}",
            v["name"].as_str().unwrap(),
            v["key"].as_str().unwrap()
        )
    };
    let mut out = serde_json::Map::new();
    for (k, v) in r.as_object().expect("receiver is an object") {
        if k == "name" {
            out.insert("name".into(), json!(prefix(v.as_str().unwrap())));
            continue;
        }
        let (key, fields): (&str, &[(&str, &str)]) = match k.as_str() {
            "pagerdutyConfigs" => (
                "pagerduty_configs",
                &[
                    ("routingKey", "routing_key"),
                    ("serviceKey", "service_key"),
                    ("sendResolved", "send_resolved"),
                    ("severity", "severity"),
                ],
            ),
            "slackConfigs" => (
                "slack_configs",
                &[
                    ("apiURL", "api_url"),
                    ("channel", "channel"),
                    ("sendResolved", "send_resolved"),
                    ("title", "title"),
                    ("text", "text"),
                ],
            ),
            "webhookConfigs" => (
                "webhook_configs",
                &[
                    ("url", "url"),
                    ("urlSecret", "url"),
                    ("sendResolved", "send_resolved"),
                ],
            ),
            other => panic!("alertmanager_yml: receiver kind {other} is not converted; extend it"),
        };
        let items = v
            .as_array()
            .unwrap()
            .iter()
            .map(|item| {
                let mut c = serde_json::Map::new();
                for (f, fv) in item.as_object().unwrap() {
                    let to = fields
                        .iter()
                        .find(|(from, _)| from == f)
                        .unwrap_or_else(|| {
                            panic!("alertmanager_yml: {k} field {f} is not converted; extend it")
                        })
                        .1;
                    let converted = match f.as_str() {
                        "routingKey" | "serviceKey" => json!(secret(fv)),
                        "apiURL" | "urlSecret" => json!(secret_url(fv)),
                        _ => fv.clone(),
                    };
                    c.insert(to.to_string(), converted);
                }
                Value::Object(c)
            })
            .collect();
        out.insert(key.to_string(), Value::Array(items));
    }
    Value::Object(out)
}

/// Where `amtool config routes test` sends an alert with `labels`.
pub fn routed_to(dir: &Path, labels: &[(String, String)]) -> String {
    let mut args = vec![
        "config".to_string(),
        "routes".to_string(),
        "test".to_string(),
        "--config.file=alertmanager.yml".to_string(),
    ];
    args.extend(labels.iter().map(|(k, v)| format!("{k}={v}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_tool("amtool", &args, dir);
    assert!(out.status.success(), "amtool {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn alertmanager_config_routes_critical_to_the_pager_and_warning_to_chat() {
    let d = docs(&render(&["-f", &all_on()]));
    let amcs = kind(&d, "AlertmanagerConfig");
    assert_eq!(amcs.len(), 1, "all-on renders one AlertmanagerConfig");
    let amc = amcs[0];
    assert_eq!(amc["apiVersion"], "monitoring.coreos.com/v1alpha1");
    let config = alertmanager_yml(amc);
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "alertmanager.yml",
        &serde_yaml::to_string(&config).unwrap(),
    );
    let out = run_tool("amtool", &["check-config", "alertmanager.yml"], dir.path());
    assert!(
        out.status.success() && text(&out).contains("SUCCESS"),
        "amtool check-config: {}\n{config:#}",
        text(&out)
    );
    let name = amc["metadata"]["name"].as_str().unwrap();
    let pager = format!("{NS}/{name}/pager");
    let chat = format!("{NS}/{name}/chat");

    // Every alert of the rendered PrometheusRule, with the labels the rule
    // gives it, reaches the receiver its severity names.
    let rule = kind(&d, "PrometheusRule")[0];
    for (alert, r) in alerts(rule) {
        let mut labels = vec![("alertname".to_string(), alert.clone())];
        for (k, v) in r["labels"].as_object().unwrap() {
            labels.push((k.clone(), v.as_str().unwrap().to_string()));
        }
        let want = match r["labels"]["severity"].as_str().unwrap() {
            "critical" => &pager,
            _ => &chat,
        };
        assert_eq!(&routed_to(dir.path(), &labels), want, "{alert}");
    }
    let l = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    // Without a severity: chat, the AlertmanagerConfig's own receiver.
    assert_eq!(
        routed_to(dir.path(), &l(&[("alertname", "X"), ("namespace", NS)])),
        chat
    );
    // Another namespace's alerts are not this config's to route.
    assert_eq!(
        routed_to(
            dir.path(),
            &l(&[
                ("alertname", "X"),
                ("namespace", "shop"),
                ("severity", "critical")
            ])
        ),
        "null"
    );

    // The same routing with the receivers broken is refused by amtool, so
    // the check above is not vacuous.
    let mut broken = config.clone();
    broken["route"]["routes"][0]["routes"][0]["receiver"] = json!("nobody");
    write(
        dir.path(),
        "broken.yml",
        &serde_yaml::to_string(&broken).unwrap(),
    );
    let out = run_tool("amtool", &["check-config", "broken.yml"], dir.path());
    assert!(
        !out.status.success(),
        "amtool accepted a route to an undefined receiver: {}",
        text(&out)
    );
}
