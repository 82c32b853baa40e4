//! bpfleet's API against a real kube-apiserver: the generated CRDs install,
//! every example is accepted with defaults applied, invalid objects are
//! refused by the apiserver itself with the offending field named, and
//! `kubectl get` shows the printer columns.

// Test helpers panic on purpose: the panic message is the test report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use bpfleet_api::{TracerPolicy, TracerProgram};
use bpfleet_e2e::ControlPlane;
use kube::Resource;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::discovery::ApiCapabilities;
use serde_json::{Value, json};

fn example(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("example exists");
    serde_yaml::from_str(&text).expect("example is YAML")
}

async fn started() -> (ControlPlane, kube::Client) {
    let cp = ControlPlane::start().await.expect("control plane starts");
    cp.install_crds().expect("CRDs install");
    let client = cp.client().await.expect("client");
    (cp, client)
}

fn dynamic_api<K: Resource<DynamicType = ()>>(client: &kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<K>(&());
    Api::all_with(client.clone(), &ar)
}

/// Server-side apply with strict field validation, as `kubectl apply
/// --server-side` does: unknown fields are errors, not silently pruned.
async fn apply(api: &Api<DynamicObject>, value: &Value) -> Result<DynamicObject, kube::Error> {
    let name = value["metadata"]["name"].as_str().expect("named object");
    let params = PatchParams::apply("bpfleet-e2e").validation_strict();
    api.patch(name, &params, &Patch::Apply(value)).await
}

#[tokio::test]
async fn examples_are_accepted_with_defaults() {
    let (cp, client) = started().await;
    let out = cp
        .kubectl_ok(&[
            "apply",
            "--server-side",
            "-f",
            &bpfleet_e2e::workspace_root()
                .join("examples")
                .to_string_lossy(),
        ])
        .expect("every example is accepted");
    assert_eq!(out.lines().count(), 4, "four objects applied: {out}");

    let programs: Api<TracerProgram> = Api::all(client.clone());
    let counter = programs.get("syscall-counter").await.expect("created");
    assert_eq!(counter.spec.progress_deadline_seconds, 600);
    assert_eq!(counter.spec.revision_history_limit, 10);
    assert_eq!(
        counter.spec.failure_policy,
        bpfleet_api::program::FailurePolicy::Rollback
    );
    assert!(!counter.spec.paused);
    let canary = programs.get("http-tracer").await.expect("created");
    let steps = &canary.spec.strategy.canary.as_ref().expect("canary").steps;
    assert_eq!(steps.len(), 6);
    let bg = programs.get("xdp-counter").await.expect("created");
    let bg = bg.spec.strategy.blue_green.expect("blue-green");
    assert!(!bg.auto_promotion_enabled);
    assert_eq!(bg.keep_previous_seconds, 600);

    let policies: Api<TracerPolicy> = Api::all(client);
    let policy = policies.get("http-tracer-policy").await.expect("created");
    assert_eq!(policy.spec.health.max_error_rate_ratio, Some(1.1));
    assert_eq!(
        policy.spec.health.no_data,
        bpfleet_api::policy::NoDataPolicy::Inconclusive
    );
}

/// One invalid object: what to change in a valid example, and the substrings
/// the apiserver's message must contain (field path first, then the reason).
struct Case {
    what: &'static str,
    base: &'static str,
    mutate: fn(&mut Value),
    expect: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        what: "digest that is not 64 hex",
        base: "http-tracer-canary.yaml",
        mutate: |v| v["spec"]["sha256"] = json!("abc123"),
        expect: &["spec.sha256", "should match"],
    },
    Case {
        what: "image pinned by tag only",
        base: "http-tracer-canary.yaml",
        mutate: |v| {
            v["spec"]["bytecode"]["image"]["reference"] =
                json!("registry.example.com/bpfleet/http-tracer:2.3.0")
        },
        expect: &["spec.bytecode.image.reference", "should match"],
    },
    Case {
        what: "node percent above 100",
        base: "http-tracer-canary.yaml",
        mutate: |v| v["spec"]["strategy"]["canary"]["steps"][3]["setNodePercent"] = json!(150),
        expect: &[
            "spec.strategy.canary.steps[3].setNodePercent",
            "less than or equal to 100",
        ],
    },
    Case {
        what: "two strategies",
        base: "http-tracer-canary.yaml",
        mutate: |v| v["spec"]["strategy"]["immediate"] = json!({}),
        expect: &[
            "spec.strategy",
            "exactly one of immediate, canary or blueGreen must be set",
        ],
    },
    Case {
        what: "no strategy",
        base: "syscall-counter-immediate.yaml",
        mutate: |v| v["spec"]["strategy"] = json!({}),
        expect: &[
            "spec.strategy",
            "exactly one of immediate, canary or blueGreen must be set",
        ],
    },
    Case {
        what: "unknown verification failure policy",
        base: "http-tracer-canary.yaml",
        mutate: |v| v["spec"]["strategy"]["verifyFirst"]["onFailure"] = json!("Ignore"),
        expect: &["spec.strategy.verifyFirst.onFailure", "supported values"],
    },
    Case {
        what: "no node may verify at a time",
        base: "http-tracer-canary.yaml",
        mutate: |v| v["spec"]["strategy"]["verifyFirst"]["maxConcurrent"] = json!(0),
        expect: &[
            "spec.strategy.verifyFirst.maxConcurrent",
            "greater than or equal to 1",
        ],
    },
    Case {
        what: "decreasing canary weights",
        base: "http-tracer-canary.yaml",
        mutate: |v| v["spec"]["strategy"]["canary"]["steps"][3]["setNodePercent"] = json!(5),
        expect: &[
            "spec.strategy.canary.steps",
            "setNodePercent values must not decrease",
        ],
    },
    Case {
        what: "a step with two actions",
        base: "http-tracer-canary.yaml",
        mutate: |v| v["spec"]["strategy"]["canary"]["steps"][0]["pause"] = json!({}),
        expect: &[
            "spec.strategy.canary.steps[0]",
            "a step sets exactly one of setNodePercent, pause or analysis",
        ],
    },
    Case {
        what: "unknown hook type",
        base: "syscall-counter-immediate.yaml",
        mutate: |v| v["spec"]["programs"][0]["type"] = json!("Kretprobe"),
        expect: &["spec.programs[0].type", "Unsupported value: \"Kretprobe\""],
    },
    Case {
        what: "hook settings that do not match the type",
        base: "syscall-counter-immediate.yaml",
        mutate: |v| v["spec"]["programs"][0]["type"] = json!("XDP"),
        expect: &[
            "spec.programs[0]",
            "tracepoint must be set when type is Tracepoint, and only then",
            "xdp must be set when type is XDP, and only then",
        ],
    },
    Case {
        what: "unknown field (strict validation)",
        base: "syscall-counter-immediate.yaml",
        mutate: |v| v["spec"]["programs"][0]["kprobeMulti"] = json!({"pattern": "tcp_*"}),
        expect: &[
            "spec.programs[name=\"count_writes\"].kprobeMulti",
            "field not declared in schema",
        ],
    },
    Case {
        what: "two bytecode sources",
        base: "syscall-counter-immediate.yaml",
        mutate: |v| v["spec"]["bytecode"]["inline"] = json!("f0VMRgIBAQ=="),
        expect: &[
            "spec.bytecode",
            "exactly one of image, file, inline or configMap must be set",
        ],
    },
    Case {
        what: "no programs",
        base: "syscall-counter-immediate.yaml",
        mutate: |v| v["spec"]["programs"] = json!([]),
        expect: &["spec.programs", "should have at least 1 items"],
    },
    Case {
        what: "relative file path",
        base: "syscall-counter-immediate.yaml",
        mutate: |v| v["spec"]["bytecode"]["file"]["path"] = json!("objects/x.bpf.o"),
        expect: &["spec.bytecode.file.path", "should match"],
    },
    Case {
        what: "missing required field",
        base: "syscall-counter-immediate.yaml",
        mutate: |v| {
            v["spec"].as_object_mut().expect("spec").remove("sha256");
        },
        expect: &["spec.sha256", "Required value"],
    },
    Case {
        what: "analysis interval longer than its window",
        base: "http-tracer-canary.yaml",
        mutate: |v| {
            v["spec"]["strategy"]["canary"]["steps"][2]["analysis"] =
                json!({"durationSeconds": 10, "intervalSeconds": 60})
        },
        expect: &[
            "spec.strategy.canary.steps[2].analysis",
            "intervalSeconds must not exceed durationSeconds",
        ],
    },
    Case {
        what: "policy targeting nothing",
        base: "http-tracer-policy.yaml",
        mutate: |v| v["spec"]["targets"] = json!({}),
        expect: &["spec.targets", "set programNames, programSelector, or both"],
    },
    Case {
        what: "sampling rate above 1",
        base: "http-tracer-policy.yaml",
        mutate: |v| v["spec"]["config"]["samplingRate"] = json!(1.5),
        expect: &["spec.config.samplingRate", "less than or equal to 1"],
    },
    Case {
        what: "port out of range",
        base: "http-tracer-policy.yaml",
        mutate: |v| v["spec"]["config"]["filters"]["ports"] = json!([80, 70000]),
        expect: &[
            "spec.config.filters.ports[1]",
            "less than or equal to 65535",
        ],
    },
    Case {
        what: "alert that needs no request at all",
        base: "http-tracer-policy.yaml",
        mutate: |v| v["spec"]["alerts"][0]["minRequests"] = json!(0),
        expect: &["spec.alerts[0].minRequests", "greater than or equal to 1"],
    },
    Case {
        what: "no-data policy that would pass",
        base: "http-tracer-policy.yaml",
        mutate: |v| v["spec"]["health"]["noData"] = json!("Pass"),
        expect: &["spec.health.noData", "Unsupported value: \"Pass\""],
    },
];

#[tokio::test]
async fn invalid_objects_are_rejected_naming_the_field() {
    let (_cp, client) = started().await;
    let programs = dynamic_api::<TracerProgram>(&client);
    let policies = dynamic_api::<TracerPolicy>(&client);
    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let mut value = example(case.base);
        value["metadata"]["name"] = json!(format!("invalid-{i}"));
        (case.mutate)(&mut value);
        let api = if value["kind"] == "TracerPolicy" {
            &policies
        } else {
            &programs
        };
        match apply(api, &value).await {
            Ok(_) => failures.push(format!("{}: accepted", case.what)),
            Err(kube::Error::Api(status)) => {
                let missing: Vec<&&str> = case
                    .expect
                    .iter()
                    .filter(|s| !status.message.contains(**s))
                    .collect();
                // Server-side apply reports unknown fields as HTTP 500 "failed to
                // create typed patch object"; everything else is 400/422.
                let refused = matches!(status.code, 400 | 422)
                    || status
                        .message
                        .contains("failed to create typed patch object");
                if !refused {
                    failures.push(format!(
                        "{}: HTTP {} {}",
                        case.what, status.code, status.message
                    ));
                } else if !missing.is_empty() {
                    failures.push(format!(
                        "{}: message lacks {missing:?}: {}",
                        case.what, status.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: unexpected error {e}", case.what)),
        }
    }
    // Nothing of the rejected objects was stored.
    let stored = programs.list(&Default::default()).await.expect("list");
    assert!(stored.items.is_empty(), "rejected objects were stored");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn kubectl_get_shows_printer_columns_from_status() {
    let (cp, client) = started().await;
    let programs = dynamic_api::<TracerProgram>(&client);
    let mut value = example("http-tracer-canary.yaml");
    value["metadata"]["name"] = json!("columns");
    apply(&programs, &value).await.expect("created");

    // Before any status: the columns exist, values are empty.
    let header = cp
        .kubectl_ok(&["get", "tp", "columns"])
        .expect("kubectl get tp");
    let first = header.lines().next().unwrap_or_default();
    let names: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(
        names,
        [
            "NAME", "VERSION", "REVISION", "STABLE", "PHASE", "STEP", "NODES", "READY", "AGE"
        ]
    );

    // Status as the operator writes it, through the status subresource.
    let status = json!({
        "apiVersion": "bpfleet.dev/v1alpha1",
        "kind": "TracerProgram",
        "status": {
            "observedGeneration": 1,
            "phase": "Progressing",
            "currentRevision": "5d1c0a9e7f",
            "stableRevision": "3b2a19c4d0",
            "candidateRevision": "5d1c0a9e7f",
            "currentStepIndex": 2,
            "currentStep": "3/6",
            "currentNodePercent": 10,
            "nodes": {"desired": 10, "updated": 1, "ready": 10, "failed": 0},
            "nodeSummary": "1/10",
            "conditions": [{
                "type": "Ready",
                "status": "False",
                "reason": "RolloutInProgress",
                "message": "canary step 3/6: analysing 1 canary node against 9 stable nodes",
                "lastTransitionTime": "2026-11-23T00:00:00Z",
                "observedGeneration": 1
            }]
        }
    });
    programs
        .patch_status(
            "columns",
            &PatchParams::apply("bpfleet-operator").force(),
            &Patch::Apply(&status),
        )
        .await
        .expect("status written through the subresource");
    let out = cp
        .kubectl_ok(&["get", "tp", "columns", "--no-headers"])
        .expect("kubectl get");
    let row: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        &row[..8],
        [
            "columns",
            "2.3.0",
            "5d1c0a9e7f",
            "3b2a19c4d0",
            "Progressing",
            "3/6",
            "1/10",
            "False"
        ],
        "{out}"
    );

    // The main resource ignores status, the status subresource ignores spec.
    let mut changed = value.clone();
    changed["spec"]["version"] = json!("2.3.1");
    changed["status"] = json!({"phase": "Healthy"});
    let after = apply(&programs, &changed).await.expect("spec update");
    assert_eq!(after.data["status"]["phase"], json!("Progressing"));
    assert_eq!(after.data["spec"]["version"], json!("2.3.1"));
    assert_eq!(after.metadata.generation, Some(2));

    // Short name, category and the policy's columns.
    let all = cp.kubectl_ok(&["get", "bpfleet"]).expect("category lookup");
    assert!(all.contains("tracerprogram.bpfleet.dev/columns"), "{all}");
    let caps: ApiCapabilities = kube::discovery::pinned_kind(
        &client,
        &kube::core::GroupVersionKind::gvk("bpfleet.dev", "v1alpha1", "TracerPolicy"),
    )
    .await
    .expect("discovered")
    .1;
    assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
}
