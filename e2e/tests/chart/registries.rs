//! The agent's image flags as the chart renders them: the image cache on
//! the state hostPath (so it survives the pod) with its bound, the
//! registry CA bundle mounted read-only from the user's ConfigMap, and
//! plain HTTP only for the registries listed, each its own flag.

use serde_json::Value;

use crate::support::{AGENT, all_on, container, docs, flag, flags, named, render, strs};

/// The agent's args, mounts and volumes of a render.
fn agent(extra: &[&str]) -> (Vec<String>, Vec<Value>, Vec<Value>) {
    let d = docs(&render(extra));
    let c = container(&d, AGENT, "DaemonSet");
    let volumes = named(&d, "DaemonSet", AGENT)["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .clone();
    (
        strs(&c["args"]),
        c["volumeMounts"].as_array().unwrap().clone(),
        volumes,
    )
}

fn by_name<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|v| v["name"] == name)
}

/// The host path `dir` (in the container) lives under, through its mount.
fn host_path_of(dir: &str, mounts: &[Value], volumes: &[Value]) -> String {
    let m = mounts
        .iter()
        .filter(|m| {
            let at = m["mountPath"].as_str().unwrap();
            dir.starts_with(&format!("{at}/"))
        })
        .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
        .unwrap_or_else(|| panic!("{dir} is on no mount"));
    assert_ne!(m["readOnly"], true, "{dir} is on a read-only mount");
    let v = by_name(volumes, m["name"].as_str().unwrap()).unwrap();
    let host = v["hostPath"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("{dir} is not on a hostPath: {v}"));
    format!(
        "{host}{}",
        dir.strip_prefix(m["mountPath"].as_str().unwrap()).unwrap()
    )
}

#[test]
fn defaults_cache_on_the_state_hostpath_and_trust_no_extra_registry() {
    let (args, mounts, volumes) = agent(&[]);
    let cache = flag(&args, "--image-cache-dir");
    let state = flag(&args, "--state-file");
    // Beside the state file, on the same hostPath: what the agent's own
    // default would be, and it survives the pod.
    assert_eq!(
        std::path::Path::new(&cache).parent(),
        std::path::Path::new(&state).parent()
    );
    assert_eq!(
        host_path_of(&cache, &mounts, &volumes),
        "/var/lib/bpfleet/images"
    );
    assert_eq!(flag(&args, "--image-cache-max-bytes"), "268435456");
    let names: Vec<String> = flags(&args).into_iter().map(|(f, _)| f).collect();
    for absent in ["--registry-ca", "--insecure-registry"] {
        assert!(!names.iter().any(|f| f == absent), "{absent}: {args:?}");
    }
    assert!(by_name(&mounts, "registry-ca").is_none());
    assert!(by_name(&volumes, "registry-ca").is_none());
}

#[test]
fn values_become_the_cache_bound_the_ca_bundle_and_insecure_registries() {
    let (args, mounts, volumes) = agent(&["-f", &all_on()]);
    assert_eq!(flag(&args, "--image-cache-max-bytes"), "536870912");
    let ca = flag(&args, "--registry-ca");
    assert_eq!(ca, "/etc/bpfleet/registry-ca/ca.crt");
    let m = by_name(&mounts, "registry-ca").expect("CA bundle mounted");
    assert_eq!(m["mountPath"], "/etc/bpfleet/registry-ca");
    assert_eq!(m["readOnly"], true);
    let v = by_name(&volumes, "registry-ca").unwrap();
    assert_eq!(v["configMap"]["name"], "registry-ca");
    assert_eq!(v["configMap"]["defaultMode"], 0o444);
    let items = v["configMap"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        (&items[0]["key"], &items[0]["path"]),
        (&Value::from("bundle.pem"), &Value::from("ca.crt"))
    );
    let insecure: Vec<String> = flags(&args)
        .into_iter()
        .filter(|(f, _)| f == "--insecure-registry")
        .filter_map(|(_, v)| v)
        .collect();
    assert_eq!(insecure, ["registry.lab.internal:5000", "10.0.0.7:5000"]);

    // Another state hostPath moves the cache with it; a large bound stays
    // an integer (not 1.073741824e+10).
    let (args, mounts, volumes) = agent(&[
        "--set",
        "agent.stateHostPath=/data/bpfleet",
        "--set",
        "agent.imageCache.maxBytes=10737418240",
    ]);
    assert_eq!(
        host_path_of(&flag(&args, "--image-cache-dir"), &mounts, &volumes),
        "/data/bpfleet/images"
    );
    assert_eq!(flag(&args, "--image-cache-max-bytes"), "10737418240");
}
