//! The image tests' real tools proved against each other: Debian's
//! docker-registry behind TLS from a throw-away CA and basic auth, and the
//! real cosign CLI pushing, signing (the classic `sha256-<hex>.sig` tag) and
//! verifying there, with nothing sent to a transparency log. No root needed.
//! A missing tool fails the test with how to get it: nothing is skipped.

use std::net::TcpStream;

use bpfleet_testsupport::cosign;
use bpfleet_testsupport::registry::{Registry, RegistryOpts};
use sha2::{Digest, Sha256};

const USER: &str = "puller";
const PASS: &str = "s3cret pass";
const CREDS: Option<(&str, &str)> = Some((USER, PASS));
const KEY_PASSWORD: &str = "key password";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

fn tls_registry_with_user() -> Registry {
    Registry::start(RegistryOpts {
        tls: true,
        users: vec![(USER.to_string(), PASS.to_string())],
    })
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn auth_is_enforced_over_tls_from_the_fixture_ca() {
    let reg = tls_registry_with_user();
    assert!(reg.host().starts_with("127.0.0.1:"), "{}", reg.host());
    assert!(
        reg.ca_pem().starts_with(b"-----BEGIN CERTIFICATE-----"),
        "CA PEM"
    );

    let (code, _) = reg.get("/v2/", None, None);
    assert_eq!(code, 401, "no credentials");
    let (code, _) = reg.get("/v2/", Some((USER, "wrong")), None);
    assert_eq!(code, 401, "wrong password");
    let (code, _) = reg.get("/v2/", CREDS, None);
    assert_eq!(code, 200, "right credentials");

    // The certificate names 127.0.0.1 and localhost, and nothing trusts it
    // but the fixture's CA.
    let out = std::process::Command::new("curl")
        .args(["--silent", "--max-time", "10", "--output", "/dev/null"])
        .arg(format!("https://{}/v2/", reg.host()))
        .env_remove("CURL_CA_BUNDLE")
        .status()
        .expect("curl");
    assert!(
        !out.success(),
        "curl trusted the fixture's certificate without its CA"
    );
    let out = std::process::Command::new("curl")
        .args(["--silent", "--max-time", "10", "--output", "/dev/null"])
        .arg("--cacert")
        .arg(reg.ca_file())
        .arg(format!("https://localhost:{}/v2/", reg.port()))
        .status()
        .expect("curl");
    assert!(out.success(), "localhost is not in the server certificate");
}

#[test]
fn cosign_pushes_signs_the_classic_way_and_verifies_offline() {
    let reg = tls_registry_with_user();
    let work = tempfile::tempdir().expect("tempdir");
    let object = work.path().join("prog.bpf.o");
    let content = b"\x7fELF not really, but bytes the registry must keep".to_vec();
    std::fs::write(&object, &content).expect("write object");

    // Push: cosign uploads the file as an OCI artifact and prints its digest
    // reference.
    let reference = cosign::upload_blob(&object, &reg, "bpfleet/prog:v1", CREDS);
    let prefix = format!("{}/bpfleet/prog@sha256:", reg.host());
    assert!(reference.starts_with(&prefix), "{reference}");
    let digest_hex = &reference[prefix.len()..];
    assert_eq!(digest_hex.len(), 64, "{reference}");

    // The registry holds it: the manifest by digest is what the reference
    // names, its single layer is the file.
    let (code, manifest_bytes) = reg.get(
        &format!("/v2/bpfleet/prog/manifests/sha256:{digest_hex}"),
        CREDS,
        Some(OCI_MANIFEST),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&manifest_bytes));
    assert_eq!(sha256_hex(&manifest_bytes), digest_hex, "manifest digest");
    let manifest = json(&manifest_bytes);
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(
        layers[0]["digest"],
        format!("sha256:{}", sha256_hex(&content)),
        "{manifest}"
    );
    let (code, _) = reg.get(
        &format!("/v2/bpfleet/prog/manifests/sha256:{digest_hex}"),
        None,
        Some(OCI_MANIFEST),
    );
    assert_eq!(code, 401, "a pull without credentials");

    // Sign with one key; another key stands for an untrusted signer.
    let keys = work.path().join("trusted");
    let other = work.path().join("other");
    std::fs::create_dir_all(&keys).expect("mkdir");
    std::fs::create_dir_all(&other).expect("mkdir");
    let (key, public) = cosign::generate_key_pair(&keys, KEY_PASSWORD);
    let (_, other_public) = cosign::generate_key_pair(&other, "another password");
    cosign::sign_image(&reference, &key, KEY_PASSWORD, &reg, CREDS);

    // The signature is the `sha256-<hex>.sig` tag in the same repository:
    // one simple-signing layer whose annotation holds the signature and
    // whose payload names the signed digest.
    let sig_tag = format!("/v2/bpfleet/prog/manifests/sha256-{digest_hex}.sig");
    let (code, sig_bytes) = reg.get(
        &sig_tag,
        CREDS,
        Some(&format!(
            "{OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json"
        )),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&sig_bytes));
    let sig_manifest = json(&sig_bytes);
    let sig_layers = sig_manifest["layers"].as_array().expect("layers");
    assert_eq!(sig_layers.len(), 1, "{sig_manifest}");
    assert_eq!(sig_layers[0]["mediaType"], SIMPLE_SIGNING, "{sig_manifest}");
    let signature = sig_layers[0]["annotations"][SIGNATURE_ANNOTATION]
        .as_str()
        .unwrap_or_else(|| panic!("no {SIGNATURE_ANNOTATION} annotation: {sig_manifest}"));
    assert!(signature.len() > 60, "signature {signature}");
    let payload_digest = sig_layers[0]["digest"].as_str().expect("layer digest");
    let (code, payload) = reg.get(
        &format!("/v2/bpfleet/prog/blobs/{payload_digest}"),
        CREDS,
        None,
    );
    assert_eq!(code, 200);
    let payload = json(&payload);
    assert_eq!(
        payload["critical"]["image"]["docker-manifest-digest"],
        format!("sha256:{digest_hex}"),
        "{payload}"
    );

    // cosign verifies it with the signer's key and not with another.
    let ok = cosign::verify_image(&reference, &public, &reg, CREDS);
    assert!(
        ok.status.success(),
        "verify with the signing key: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = cosign::verify_image(&reference, &other_public, &reg, CREDS);
    assert!(
        !bad.status.success(),
        "verify with another key succeeded: {}",
        String::from_utf8_lossy(&bad.stdout)
    );

    // Unsigned content in the same registry does not verify.
    let unsigned = work.path().join("unsigned.o");
    std::fs::write(&unsigned, b"never signed").expect("write");
    let unsigned_ref = cosign::upload_blob(&unsigned, &reg, "bpfleet/prog:unsigned", CREDS);
    let out = cosign::verify_image(&unsigned_ref, &public, &reg, CREDS);
    assert!(!out.status.success(), "an unsigned artifact verified");
}

#[test]
fn stop_and_start_again_keep_port_and_content() {
    let mut reg = tls_registry_with_user();
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("blob");
    std::fs::write(&file, b"kept across a restart").expect("write");
    let reference = cosign::upload_blob(&file, &reg, "bpfleet/keep:v1", CREDS);
    let digest = reference.rsplit('@').next().expect("digest").to_string();
    let path = format!("/v2/bpfleet/keep/manifests/{digest}");
    let (code, before) = reg.get(&path, CREDS, Some(OCI_MANIFEST));
    assert_eq!(code, 200);
    let host = reg.host();

    reg.stop();
    assert!(!reg.is_running());
    assert!(
        TcpStream::connect(("127.0.0.1", reg.port())).is_err(),
        "something still listens on {host} after stop()"
    );

    reg.start_again();
    assert_eq!(reg.host(), host, "same port");
    let (code, after) = reg.get(&path, CREDS, Some(OCI_MANIFEST));
    assert_eq!(code, 200, "content gone after start_again()");
    assert_eq!(before, after);
    let (code, _) = reg.get("/v2/", None, None);
    assert_eq!(code, 401, "auth still on after start_again()");
}

#[test]
fn plain_http_without_users_serves_anyone_and_drop_removes_everything() {
    let reg = Registry::start(RegistryOpts::default());
    assert!(!reg.tls());
    let (code, _) = reg.get("/v2/", None, None);
    assert_eq!(code, 200);
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("blob");
    std::fs::write(&file, b"over plain http").expect("write");
    let reference = cosign::upload_blob(&file, &reg, "plain/blob:v1", None);
    assert!(reference.contains("@sha256:"), "{reference}");

    let storage = reg.storage_dir();
    let port = reg.port();
    assert!(
        storage
            .join("docker/registry/v2/repositories/plain/blob")
            .is_dir()
    );
    drop(reg);
    assert!(!storage.exists(), "storage left behind");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "registry still listening after drop"
    );
}

#[test]
fn sign_blob_gives_only_the_signature_and_cosign_verifies_it() {
    let work = tempfile::tempdir().expect("tempdir");
    let (key, public) = cosign::generate_key_pair(work.path(), KEY_PASSWORD);
    let other_dir = work.path().join("other");
    std::fs::create_dir(&other_dir).expect("mkdir");
    let (_, other_public) = cosign::generate_key_pair(&other_dir, "x");
    let blob = work.path().join("prog.o");
    std::fs::write(&blob, b"object bytes").expect("write");

    let sig = cosign::sign_blob(&blob, &key, KEY_PASSWORD);
    assert!(
        !sig.contains('\n') && !sig.is_empty(),
        "one base64 line, got {sig:?}"
    );
    let mut leftovers: Vec<_> = std::fs::read_dir(work.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    leftovers.sort();
    assert_eq!(
        leftovers,
        ["cosign.key", "cosign.pub", "other", "prog.o"],
        "sign-blob wrote files of its own"
    );

    let verify =
        |public: &std::path::Path, file: &std::path::Path| cosign::verify_blob(file, &sig, public);
    let ok = verify(&public, &blob);
    assert!(
        ok.status.success(),
        "verify-blob: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        !verify(&other_public, &blob).status.success(),
        "another key verified"
    );
    let tampered = work.path().join("tampered.o");
    std::fs::write(&tampered, b"object bytez").expect("write");
    assert!(
        !verify(&public, &tampered).status.success(),
        "tampered blob verified"
    );
}
