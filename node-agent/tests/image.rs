//! Objects from a real registry into a real agent: Debian's docker-registry
//! behind TLS from a private CA and basic auth (testsupport's fixture),
//! images pushed by `bpfleet_oci` in both formats and by buildah the way
//! bpfman documents, signatures made by the real cosign CLI. Each test
//! asserts what the kernel runs (a real counter) or what the agent refused
//! and why, and that no credential reaches the audit log or a reply.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use bpfleet_bpf as objs;
use bpfleet_oci::Credentials;
use bpfleet_oci::format::{self, Format, Labels};
use bpfleet_proto::v1::{self as pb, load_request::Source};
use bpfleet_testsupport::cosign;
use bpfleet_testsupport::registry::{Registry, RegistryOpts};
use bpfleet_testsupport::request::sha256_hex;
use common::*;

const USER: &str = "node-puller";
const PASS: &str = "pull-secret-Zq81";
const KEY_PASSWORD: &str = "key-pw";

fn registry() -> Registry {
    Registry::start(RegistryOpts {
        tls: true,
        users: vec![(USER.into(), PASS.into())],
    })
}

fn creds() -> Credentials {
    Credentials {
        username: USER.into(),
        password: PASS.into(),
    }
}

fn labels(programs: &[(&str, &str)]) -> Labels {
    Labels {
        programs: Some(
            programs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        ),
        maps: Some([("counts".to_string(), "array".to_string())].into()),
    }
}

/// Pushes `obj` as `repo:tag` in `fmt`; the digest-pinned reference.
async fn push(
    reg: &Registry,
    repo: &str,
    tag: &str,
    fmt: Format,
    obj: &[u8],
    l: &Labels,
) -> String {
    let client = reg.client();
    let built = format::build(fmt, obj, "syscount.bpf.o", l).unwrap();
    let repo = format!("{}/{repo}", reg.host());
    let digest = client
        .push(&repo, tag, &built, Some(&creds()))
        .await
        .unwrap();
    format!("{repo}@{digest}")
}

/// A syscount Load of `reference` with `creds` (user, password).
fn image_req(
    revision: &str,
    reference: &str,
    obj: &[u8],
    creds: Option<(&str, &str)>,
) -> pb::LoadRequest {
    let mut r = syscount(revision, obj);
    r.source = Some(Source::Image(pb::ImageSource {
        reference: reference.into(),
        credentials: creds.map(|(u, p)| pb::RegistryCredentials {
            username: u.into(),
            password: p.into(),
        }),
    }));
    r
}

type Client = pb::agent_client::AgentClient<tonic::transport::Channel>;

/// Loads syscount `revision` from `reference` with the registry's
/// credentials.
async fn load(
    c: &mut Client,
    revision: &str,
    reference: &str,
    obj: &[u8],
) -> Result<tonic::Response<pb::LoadResponse>, tonic::Status> {
    c.load(image_req(revision, reference, obj, Some((USER, PASS))))
        .await
}

async fn activate(c: &mut Client, revision: &str) {
    c.activate(pb::ActivateRequest {
        program: "syscount".into(),
        revision: revision.into(),
    })
    .await
    .unwrap();
}

fn agent(root: &PinRoot, reg: &Registry, extra: &[&str]) -> AgentProc {
    let ca = reg.ca_file().display().to_string();
    let mut args = vec!["--registry-ca", ca.as_str()];
    args.extend_from_slice(extra);
    AgentProc::start(root, None, &args)
}

fn audit(root: &PinRoot) -> String {
    std::fs::read_to_string(root.audit_log()).unwrap_or_default()
}

async fn active(
    c: &mut pb::agent_client::AgentClient<tonic::transport::Channel>,
) -> Option<String> {
    let l = c
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    l.programs
        .iter()
        .find(|p| p.program == "syscount")
        .map(|p| p.active_revision.clone())
        .filter(|a| !a.is_empty())
}

async fn unload(c: &mut Client) {
    c.unload(pb::UnloadRequest {
        program: "syscount".into(),
        revision: String::new(),
    })
    .await
    .unwrap();
}

/// Both formats pulled by digest with credentials over TLS: each runs (the
/// counter counts this thread's getppid calls) and the audit line names
/// the image; a second load of the same digest comes from the node cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_of_both_formats_load_by_digest_and_run() {
    let reg = registry();
    let root = PinRoot::new("image-load");
    let l = labels(&[("count_getppid", "tracepoint")]);
    let v1 = push(
        &reg,
        "bpf/syscount",
        "v1",
        Format::Artifact,
        objs::SYSCOUNT_V1,
        &l,
    )
    .await;
    let v2 = push(
        &reg,
        "bpf/syscount",
        "v2",
        Format::Bpfman,
        objs::SYSCOUNT_V2,
        &l,
    )
    .await;
    let a = agent(&root, &reg, &["--allow-unsigned"]);
    let mut c = a.client().await;
    let counts = root.path.join("syscount/_map_counts");
    // v1 counts into slot 0, v2 into slot 1.
    for (rev, reference, obj, k) in [
        ("v1", &v1, objs::SYSCOUNT_V1, 0),
        ("v2", &v2, objs::SYSCOUNT_V2, 1),
    ] {
        load(&mut c, rev, reference, obj).await.unwrap();
        activate(&mut c, rev).await;
        let tid = gettid();
        c.update_config(only_thread("syscount", tid)).await.unwrap();
        let before = slot(&counts, k);
        getppid_n(25);
        assert_eq!(slot(&counts, k), before + 25, "{rev} counts getppid");
    }
    assert_eq!(active(&mut c).await.as_deref(), Some("v2"));
    let log = audit(&root);
    assert!(
        log.contains(&format!("image {v1}")) && log.contains(&format!("image {v2}")),
        "{log}"
    );
    assert!(log.contains("cached false"), "{log}");
    // Unload and load again: the node cache answers, no registry needed.
    unload(&mut c).await;
    let mut reg = reg;
    reg.stop();
    load(&mut c, "v1", &v1, objs::SYSCOUNT_V1).await.unwrap();
    assert!(audit(&root).contains("cached true"), "{}", audit(&root));
    unload(&mut c).await;
    assert!(
        !audit(&root).contains(PASS),
        "the password reached the audit log"
    );
    drop(a);
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
}

/// What the registry serves must be what the reference pins: a tag alone,
/// a manifest or a layer changed in the registry's storage, and labels
/// that disagree with the entries are each refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_that_does_not_match_the_reference_is_refused() {
    let reg = registry();
    let root = PinRoot::new("image-tamper");
    let l = labels(&[("count_getppid", "tracepoint")]);
    let a = agent(&root, &reg, &["--allow-unsigned"]);
    let mut c = a.client().await;
    let refused = |r: Result<tonic::Response<pb::LoadResponse>, tonic::Status>| r.unwrap_err();

    // A tag alone.
    let e = refused(
        c.load(image_req(
            "t",
            &format!("{}/bpf/x:v1", reg.host()),
            objs::SYSCOUNT_V1,
            Some((USER, PASS)),
        ))
        .await,
    );
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("no digest"), "{}", e.message());

    // Labels that do not declare the entry's program.
    let other = push(
        &reg,
        "bpf/other",
        "v1",
        Format::Bpfman,
        objs::SYSCOUNT_V1,
        &labels(&[("count_all", "tracepoint")]),
    )
    .await;
    let e = refused(load(&mut c, "l", &other, objs::SYSCOUNT_V1).await);
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("\"count_getppid\"") && e.message().contains("count_all: tracepoint"),
        "{}",
        e.message()
    );
    // Declared under another type.
    let xdp = push(
        &reg,
        "bpf/xdp",
        "v1",
        Format::Artifact,
        objs::SYSCOUNT_V1,
        &labels(&[("count_getppid", "xdp")]),
    )
    .await;
    let e = refused(load(&mut c, "x", &xdp, objs::SYSCOUNT_V1).await);
    assert!(
        e.message().contains("declares it as \"xdp\""),
        "{}",
        e.message()
    );

    // A layer changed in the registry (same size, one byte flipped).
    let layered = push(
        &reg,
        "bpf/layer",
        "v1",
        Format::Artifact,
        objs::SYSCOUNT_V1,
        &l,
    )
    .await;
    let layer = format::Descriptor::of(format::OBJECT_MEDIA_TYPE, objs::SYSCOUNT_V1).digest;
    flip_blob(&reg, &layer);
    let e = refused(load(&mut c, "y", &layered, objs::SYSCOUNT_V1).await);
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains(&layer),
        "names the layer: {}",
        e.message()
    );

    // A manifest changed in the registry.
    let manifested = push(
        &reg,
        "bpf/manifest",
        "v1",
        Format::Bpfman,
        objs::SYSCOUNT_V2,
        &l,
    )
    .await;
    let digest = manifested.split('@').nth(1).unwrap().to_string();
    flip_blob(&reg, &digest);
    let e = refused(load(&mut c, "z", &manifested, objs::SYSCOUNT_V2).await);
    assert!(
        e.message().contains(&format!("for digest {digest}")) || e.message().contains(&digest),
        "{}",
        e.message()
    );
    let log = audit(&root);
    assert!(
        log.matches("\"invalid\"").count() >= 4 || log.matches("invalid").count() >= 4,
        "{log}"
    );
    drop(a);
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
}

/// Flips one byte of blob `digest` in the registry's storage, keeping its
/// size (what a tampered or damaged registry serves).
fn flip_blob(reg: &Registry, digest: &str) {
    let hex = digest.trim_start_matches("sha256:");
    let path = reg.storage_dir().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut b = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Inside the JSON or object, away from the structure's first bytes.
    let i = b.len() / 2;
    b[i] = if b[i] == b'a' { b'b' } else { b'a' };
    std::fs::write(&path, b).unwrap();
}

/// Wrong credentials and a registry that is down are `SourceUnavailable`
/// (gRPC Aborted) with the registry's answer, and the password is in no
/// reply or audit line; an agent restarted while the registry is down
/// re-adopts its program and loads a cached image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_registry_is_reported_and_the_cache_carries_on() {
    let mut reg = registry();
    let root = PinRoot::new("image-down");
    let l = labels(&[("count_getppid", "tracepoint")]);
    let v1 = push(
        &reg,
        "bpf/syscount",
        "v1",
        Format::Artifact,
        objs::SYSCOUNT_V1,
        &l,
    )
    .await;
    let mut a = agent(&root, &reg, &["--allow-unsigned"]);
    let mut c = a.client().await;

    let e = c
        .load(image_req(
            "v1",
            &v1,
            objs::SYSCOUNT_V1,
            Some((USER, "wrong-password")),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Aborted, "{e:?}");
    assert!(
        e.message().starts_with("source unavailable: "),
        "{}",
        e.message()
    );
    assert!(
        e.message().contains("401")
            || e.message().to_lowercase().contains("unauthorized")
            || e.message().to_lowercase().contains("authentication"),
        "{}",
        e.message()
    );
    assert!(!e.message().contains("wrong-password"));
    let e = c
        .load(image_req("v1", &v1, objs::SYSCOUNT_V1, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Aborted, "anonymous: {e:?}");

    load(&mut c, "v1", &v1, objs::SYSCOUNT_V1).await.unwrap();
    activate(&mut c, "v1").await;
    reg.stop();
    // A digest never pulled, with the registry down.
    let other = v1.replace(&v1[v1.len() - 8..], "00000000");
    let e = load(&mut c, "v2", &other, objs::SYSCOUNT_V2)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Aborted, "{e:?}");
    assert!(
        e.message().contains(&reg.host()),
        "names the registry: {}",
        e.message()
    );

    drop(c);
    a.kill9();
    drop(a);
    let a = agent(&root, &reg, &["--allow-unsigned"]);
    let mut c = a.client().await;
    assert_eq!(active(&mut c).await.as_deref(), Some("v1"), "re-adopted");
    // The same image as another revision: from the cache.
    load(&mut c, "v1b", &v1, objs::SYSCOUNT_V1).await.unwrap();
    let log = audit(&root);
    assert!(log.contains("cached true"), "{log}");
    assert!(log.contains("source_unavailable"), "{log}");
    for secret in [PASS, "wrong-password"] {
        assert!(!log.contains(secret), "a password reached the audit log");
    }
    unload(&mut c).await;
    drop(a);
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
}

/// cosign's own signatures: an image signed by the real `cosign sign` with
/// a trusted key loads without `--allow-unsigned`; signed with another key
/// or unsigned it is refused; a blob signature by the real `cosign
/// sign-blob` verifies too. Each outcome is an audit line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cosign_signatures_decide_what_loads() {
    let reg = registry();
    let root = PinRoot::new("image-cosign");
    let keys = tempfile::tempdir().unwrap();
    let (trusted_key, trusted_pub) = keypair(keys.path(), "trusted");
    let (other_key, _) = keypair(keys.path(), "other");
    let l = labels(&[("count_getppid", "tracepoint")]);
    let signed = push(
        &reg,
        "bpf/signed",
        "v1",
        Format::Bpfman,
        objs::SYSCOUNT_V1,
        &l,
    )
    .await;
    let foreign = push(
        &reg,
        "bpf/foreign",
        "v1",
        Format::Artifact,
        objs::SYSCOUNT_V1,
        &l,
    )
    .await;
    let unsigned = push(
        &reg,
        "bpf/unsigned",
        "v1",
        Format::Artifact,
        objs::SYSCOUNT_V2,
        &l,
    )
    .await;
    cosign::sign_image(
        &signed,
        &trusted_key,
        KEY_PASSWORD,
        &reg,
        Some((USER, PASS)),
    );
    cosign::sign_image(&foreign, &other_key, KEY_PASSWORD, &reg, Some((USER, PASS)));

    let pubkey = trusted_pub.display().to_string();
    let a = agent(&root, &reg, &["--trusted-key", &pubkey]);
    let mut c = a.client().await;
    load(&mut c, "v1", &signed, objs::SYSCOUNT_V1)
        .await
        .unwrap();
    assert!(
        audit(&root).contains(&format!("signed_by {pubkey}")),
        "{}",
        audit(&root)
    );

    let e = load(&mut c, "f", &foreign, objs::SYSCOUNT_V1)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .contains("none of its 1 cosign signatures verifies"),
        "{}",
        e.message()
    );
    let e = load(&mut c, "u", &unsigned, objs::SYSCOUNT_V2)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("no cosign signature"),
        "{}",
        e.message()
    );

    // A blob signature from the real `cosign sign-blob`, inline.
    let obj = keys.path().join("syscount_v2.bpf.o");
    std::fs::write(&obj, objs::SYSCOUNT_V2).unwrap();
    let sig = cosign::sign_blob(&obj, &trusted_key, KEY_PASSWORD);
    let mut blob = syscount("b", objs::SYSCOUNT_V2);
    blob.signature = sig.clone();
    c.load(blob).await.unwrap();
    // The same blob signature by the other key does not verify.
    let mut wrong = syscount("w", objs::SYSCOUNT_V2);
    wrong.signature = cosign::sign_blob(&obj, &other_key, KEY_PASSWORD);
    assert_eq!(
        c.load(wrong).await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );

    let log = audit(&root);
    assert!(
        log.matches("\"denied\"").count() >= 3 || log.matches("denied").count() >= 3,
        "{log}"
    );
    unload(&mut c).await;
    drop(a);

    // With --allow-unsigned, the unsigned image loads.
    let a = agent(&root, &reg, &["--allow-unsigned"]);
    let mut c = a.client().await;
    load(&mut c, "u", &unsigned, objs::SYSCOUNT_V2)
        .await
        .unwrap();
    unload(&mut c).await;
    drop(a);
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
}

fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    cosign::generate_key_pair(&d, KEY_PASSWORD)
}

/// bpfman's documented build (a `FROM scratch` Containerfile with the
/// object at the root and the labels), by the real buildah: the image
/// loads and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bpfman_image_built_by_buildah_loads() {
    let reg = registry();
    let root = PinRoot::new("image-buildah");
    let dir = tempfile::tempdir().unwrap();
    let obj = dir.path().join("syscount.bpf.o");
    std::fs::write(&obj, objs::SYSCOUNT_V1).unwrap();
    let reference = bpfleet_testsupport::buildah::buildah_bytecode_image(
        &obj,
        r#"{"count_getppid":"tracepoint"}"#,
        r#"{"counts":"array"}"#,
        &reg,
        "bpf/buildah:v1",
        Some((USER, PASS)),
    );
    let a = agent(&root, &reg, &["--allow-unsigned"]);
    let mut c = a.client().await;
    load(&mut c, "v1", &reference, objs::SYSCOUNT_V1)
        .await
        .unwrap();
    activate(&mut c, "v1").await;
    c.update_config(only_thread("syscount", gettid()))
        .await
        .unwrap();
    let counts = root.path.join("syscount/_map_counts");
    let before = slot(&counts, 0);
    getppid_n(10);
    assert_eq!(slot(&counts, 0), before + 10);
    unload(&mut c).await;
    drop(a);
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
}

/// A multi-architecture index: the agent takes this machine's platform's
/// manifest (another architecture's image holds another object).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_resolves_to_this_machines_platform() {
    let reg = registry();
    let root = PinRoot::new("image-index");
    let client = reg.client();
    let l = labels(&[("count_getppid", "tracepoint")]);
    let repo = format!("{}/bpf/multi", reg.host());
    let arch = format::node_arch();
    let other = if arch == "arm64" { "amd64" } else { "arm64" };
    let mut entries = Vec::new();
    for (platform, obj) in [(arch, objs::SYSCOUNT_V1), (other, objs::SYSCOUNT_V2)] {
        let built = format::build(Format::Bpfman, obj, "syscount.bpf.o", &l).unwrap();
        let digest = client
            .push(&repo, platform, &built, Some(&creds()))
            .await
            .unwrap();
        entries.push(serde_json::json!({
            "mediaType": format::OCI_MANIFEST, "digest": digest, "size": built.manifest.len(),
            "platform": {"os": "linux", "architecture": platform},
        }));
    }
    let index = format::Built {
        blobs: Vec::new(),
        manifest: serde_json::json!({"schemaVersion": 2, "mediaType": format::OCI_INDEX, "manifests": entries})
            .to_string()
            .into_bytes(),
        manifest_type: format::OCI_INDEX,
    };
    let digest = client
        .push(&repo, "multi", &index, Some(&creds()))
        .await
        .unwrap();
    let a = agent(&root, &reg, &["--allow-unsigned"]);
    let mut c = a.client().await;
    // The request's sha256 is this platform's object: the other one's
    // would be refused by digest.
    let r = load(&mut c, "v1", &format!("{repo}@{digest}"), objs::SYSCOUNT_V1)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revision.unwrap().sha256, sha256_hex(objs::SYSCOUNT_V1));
    unload(&mut c).await;
    drop(a);
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
}

/// A plain-HTTP registry is reached only when the agent names it with
/// `--insecure-registry`; otherwise the pull fails on TLS, unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_needs_the_registry_named_insecure() {
    let reg = Registry::start(RegistryOpts {
        tls: false,
        users: Vec::new(),
    });
    let root = PinRoot::new("image-http");
    let client = reg.client();
    let built = format::build(
        Format::Artifact,
        objs::SYSCOUNT_V1,
        "syscount.bpf.o",
        &labels(&[("count_getppid", "tracepoint")]),
    )
    .unwrap();
    let repo = format!("{}/bpf/plain", reg.host());
    let digest = client.push(&repo, "v1", &built, None).await.unwrap();
    let reference = format!("{repo}@{digest}");
    let req = || image_req("v1", &reference, objs::SYSCOUNT_V1, None);

    let a = AgentProc::start(&root, None, &["--allow-unsigned"]);
    let mut c = a.client().await;
    let e = c.load(req()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Aborted, "{e:?}");
    drop(c);
    drop(a);

    let host = reg.host();
    let a = AgentProc::start(
        &root,
        None,
        &["--allow-unsigned", "--insecure-registry", &host],
    );
    let mut c = a.client().await;
    c.load(req()).await.unwrap();
    unload(&mut c).await;
    drop(a);
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
}
