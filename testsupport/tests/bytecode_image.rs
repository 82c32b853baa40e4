//! bpfman's bytecode image format made by the real buildah and pushed to the
//! registry fixture: the image config carries the `io.ebpf.programs` and
//! `io.ebpf.maps` labels as given, the single tar+gzip layer holds the
//! object at its root, and the image can be signed by the real cosign.
//! Needs root (buildah) and the tools setup.sh installs; nothing is skipped.

use bpfleet_testsupport::buildah::buildah_bytecode_image;
use bpfleet_testsupport::cosign;
use bpfleet_testsupport::registry::{Registry, RegistryOpts};
use sha2::{Digest, Sha256};

const USER: &str = "pusher";
const PASS: &str = "push pass";
const CREDS: Option<(&str, &str)> = Some((USER, PASS));
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

fn blob(reg: &Registry, repo: &str, digest: &str) -> Vec<u8> {
    let (code, body) = reg.get(&format!("/v2/{repo}/blobs/{digest}"), CREDS, None);
    assert_eq!(code, 200, "blob {digest}");
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&body))),
        digest,
        "blob content does not match its digest"
    );
    body
}

#[test]
fn a_bpfman_bytecode_image_lands_with_its_labels_and_object() {
    let reg = Registry::start(RegistryOpts {
        tls: true,
        users: vec![(USER.to_string(), PASS.to_string())],
    });
    let work = tempfile::tempdir().expect("tempdir");
    let obj = work.path().join("syscount.bpf.o");
    let content: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&obj, &content).expect("write object");
    let programs = r#"{"count_enter": "tracepoint", "count_exit":"tracepoint"}"#;
    let maps = r#"{"counts":"hash"}"#;

    let reference =
        buildah_bytecode_image(&obj, programs, maps, &reg, "bytecode/syscount:v1", CREDS);
    let prefix = format!("{}/bytecode/syscount@sha256:", reg.host());
    assert!(reference.starts_with(&prefix), "{reference}");
    let digest = &reference[reference.len() - 71..];

    // The manifest by digest, and by tag the same one.
    let (code, manifest_bytes) = reg.get(
        &format!("/v2/bytecode/syscount/manifests/{digest}"),
        CREDS,
        Some(ACCEPT),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&manifest_bytes));
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&manifest_bytes))),
        digest
    );
    let (code, by_tag) = reg.get("/v2/bytecode/syscount/manifests/v1", CREDS, Some(ACCEPT));
    assert_eq!(code, 200);
    assert_eq!(by_tag, manifest_bytes, "the tag names another manifest");
    let manifest = json(&manifest_bytes);
    assert_eq!(manifest["mediaType"], ACCEPT, "{manifest}");

    // The config: the labels exactly as given, the platform of this machine.
    let config = json(&blob(
        &reg,
        "bytecode/syscount",
        manifest["config"]["digest"]
            .as_str()
            .expect("config digest"),
    ));
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["io.ebpf.programs"], programs, "{config}");
    assert_eq!(labels["io.ebpf.maps"], maps, "{config}");
    assert_eq!(config["os"], "linux");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(config["architecture"], arch);

    // One tar+gzip layer with the object at the root under its own name.
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(
        layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
        "{manifest}"
    );
    let layer = blob(
        &reg,
        "bytecode/syscount",
        layers[0]["digest"].as_str().expect("layer digest"),
    );
    let layer_file = work.path().join("layer.tar.gz");
    std::fs::write(&layer_file, &layer).expect("write layer");
    let listing = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(&layer_file)
        .output()
        .expect("tar");
    assert!(listing.status.success(), "the layer is not a tar+gzip");
    let names: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(names, ["syscount.bpf.o"], "layer entries");
    let unpacked = work.path().join("unpacked");
    std::fs::create_dir(&unpacked).expect("mkdir");
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&layer_file)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .expect("tar");
    assert!(status.success());
    assert_eq!(
        std::fs::read(unpacked.join("syscount.bpf.o")).expect("object in layer"),
        content
    );

    // The real cosign signs and verifies the image buildah pushed.
    let (key, public) = cosign::generate_key_pair(work.path(), "pw");
    cosign::sign_image(&reference, &key, "pw", &reg, CREDS);
    let out = cosign::verify_image(&reference, &public, &reg, CREDS);
    assert!(
        out.status.success(),
        "cosign verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
