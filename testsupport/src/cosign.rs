//! The real `cosign` CLI (v2, built from the Go module proxy by
//! `e2e/controlplane/cosign/build.sh`) for the signature tests: key pairs,
//! blob signatures, image signatures stored in a [`Registry`] the classic
//! way (a `sha256-<hex>.sig` tag beside the image), uploads and
//! verification. Everything stays on this machine: every signing call says
//! `--tlog-upload=false`, verification `--insecure-ignore-tlog=true`, and
//! cosign runs with a private `HOME` (no docker config, no TUF cache of the
//! user's), fetches no trusted root over TUF and has no way out but
//! loopback: the private runner at the bottom of this file says how.
//!
//! The registry's private CA is passed with `--registry-cacert`, its
//! credentials with `--registry-username`/`--registry-password`: nothing is
//! written to a docker config.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::registry::Registry;

/// The cosign binary: `$BPFLEET_COSIGN`, else `cosign` in
/// `$BPFLEET_CONTROLPLANE_BIN` or the repository's `.cache/controlplane/bin`.
/// Panics, naming the build script, when it is not there.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BPFLEET_COSIGN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "BPFLEET_COSIGN={} is not a file",
            path.display()
        );
        return path;
    }
    let bin = std::env::var_os("BPFLEET_CONTROLPLANE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(".cache/controlplane/bin")
        });
    let path = bin.join("cosign");
    assert!(
        path.is_file(),
        "cosign not found at {}: build it with `bash e2e/controlplane/cosign/build.sh` \
         (scripts/setup.sh does), or set BPFLEET_COSIGN",
        path.display()
    );
    path
}

/// `cosign generate-key-pair` in `dir` with `password` (cosign reads it
/// from `COSIGN_PASSWORD`): the encrypted
/// private key and the public key, `(dir/cosign.key, dir/cosign.pub)`.
pub fn generate_key_pair(dir: &Path, password: &str) -> (PathBuf, PathBuf) {
    let out = cosign(dir, Some(password), &["generate-key-pair"]);
    expect_success("generate-key-pair", &out);
    let key = dir.join("cosign.key");
    let public = dir.join("cosign.pub");
    assert!(
        key.is_file() && public.is_file(),
        "cosign generate-key-pair wrote no cosign.key/cosign.pub in {}",
        dir.display()
    );
    (key, public)
}

/// `cosign sign-blob` of `file` with `key` (encrypted with `password`): the
/// base64 signature, as `signature.value` carries it. Nothing else is
/// produced (no bundle, no certificate, no transparency-log entry).
pub fn sign_blob(file: &Path, key: &Path, password: &str) -> String {
    let dir = scratch();
    let sig = dir.path().join("blob.sig");
    let out = cosign(
        dir.path(),
        Some(password),
        &[
            "sign-blob",
            "--yes",
            "--tlog-upload=false",
            "--key",
            &path_arg(key),
            "--output-signature",
            &path_arg(&sig),
            &path_arg(file),
        ],
    );
    expect_success("sign-blob", &out);
    let b64 =
        std::fs::read_to_string(&sig).unwrap_or_else(|e| panic!("cosign sign-blob output: {e}"));
    b64.trim().to_string()
}

/// `cosign verify-blob` of `file` against the base64 `signature` with
/// `public`, offline (no transparency log). Returns cosign's output.
pub fn verify_blob(file: &Path, signature: &str, public: &Path) -> Output {
    let dir = scratch();
    let sig = dir.path().join("blob.sig");
    std::fs::write(&sig, signature).unwrap_or_else(|e| panic!("{}: {e}", sig.display()));
    cosign(
        dir.path(),
        None,
        &[
            "verify-blob",
            "--insecure-ignore-tlog=true",
            "--key",
            &path_arg(public),
            "--signature",
            &path_arg(&sig),
            &path_arg(file),
        ],
    )
}

/// `cosign sign --key` of `reference` (`host/repo@sha256:...`, pinned by
/// digest) in `registry`: the signature is pushed as the
/// `sha256-<hex>.sig` tag of the same repository. `creds` are the
/// registry's basic-auth user and password, if it has users.
pub fn sign_image(
    reference: &str,
    key: &Path,
    password: &str,
    registry: &Registry,
    creds: Option<(&str, &str)>,
) {
    assert!(
        reference.contains("@sha256:"),
        "sign_image wants a digest reference, got {reference}"
    );
    let dir = scratch();
    let mut args = vec![
        "sign".to_string(),
        "--yes".into(),
        "--tlog-upload=false".into(),
        "--key".into(),
        path_arg(key),
    ];
    args.extend(registry_args(registry, creds));
    args.push(reference.to_string());
    let out = cosign(dir.path(), Some(password), &strs(&args));
    expect_success("sign", &out);
}

/// `cosign verify --key public` of `reference` in `registry`, offline (no
/// transparency log). Returns cosign's output: success or failure is the
/// caller's to judge.
pub fn verify_image(
    reference: &str,
    public: &Path,
    registry: &Registry,
    creds: Option<(&str, &str)>,
) -> Output {
    let dir = scratch();
    let mut args = vec![
        "verify".to_string(),
        "--insecure-ignore-tlog=true".into(),
        "--key".into(),
        path_arg(public),
    ];
    args.extend(registry_args(registry, creds));
    args.push(reference.to_string());
    cosign(dir.path(), None, &strs(&args))
}

/// `cosign upload blob -f file host/repo:tag`: the file as an OCI artifact
/// in `registry`. Returns the digest reference cosign prints
/// (`host/repo@sha256:...`).
pub fn upload_blob(
    file: &Path,
    registry: &Registry,
    repo_tag: &str,
    creds: Option<(&str, &str)>,
) -> String {
    let dir = scratch();
    let mut args = vec![
        "upload".to_string(),
        "blob".into(),
        "-f".into(),
        path_arg(file),
    ];
    args.extend(registry_args(registry, creds));
    args.push(format!("{}/{repo_tag}", registry.host()));
    let out = cosign(dir.path(), None, &strs(&args));
    expect_success("upload blob", &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .map(str::trim)
        .find(|l| l.contains("@sha256:"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("cosign upload blob printed no digest reference: {stdout}"))
}

/// The flags that point cosign at the fixture: its CA (or plain HTTP) and
/// its credentials.
fn registry_args(registry: &Registry, creds: Option<(&str, &str)>) -> Vec<String> {
    let mut args = Vec::new();
    if registry.tls() {
        args.push(format!(
            "--registry-cacert={}",
            registry.ca_file().display()
        ));
    } else {
        args.push("--allow-http-registry".into());
    }
    if let Some((user, pass)) = creds {
        args.push(format!("--registry-username={user}"));
        args.push(format!("--registry-password={pass}"));
    }
    args
}

/// Runs cosign in `cwd` with a fresh `HOME` of its own (so no user
/// configuration, docker config or TUF cache is read or written), with
/// `COSIGN_PASSWORD` when given, and kept off the network but for loopback:
///
/// - cosign v2.6 `verify` and `verify-blob` fetch Sigstore's trusted root
///   over TUF even with `--key` and `--insecure-ignore-tlog` unless a
///   service key is given out of band; `SIGSTORE_REKOR_PUBLIC_KEY` names a
///   key made here that nothing trusts (read only to check a log entry,
///   which `--insecure-ignore-tlog` skips), and the fetch is not attempted;
/// - every HTTP(S) proxy variable points at a closed loopback port, so any
///   other request cosign might make fails on this machine instead of
///   leaving it (Go never proxies loopback, so the fixture is reached
///   directly).
fn cosign(cwd: &Path, password: Option<&str>, args: &[&str]) -> Output {
    let home = scratch();
    let untrusted = home.path().join("untrusted-rekor.pub");
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("throw-away key: {e}"));
    std::fs::write(&untrusted, key.public_key_pem())
        .unwrap_or_else(|e| panic!("{}: {e}", untrusted.display()));
    let nowhere = "http://127.0.0.1:9";
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .current_dir(cwd)
        .env("HOME", home.path())
        .env("TUF_ROOT", home.path().join(".sigstore"))
        .env("DOCKER_CONFIG", home.path().join(".docker"))
        .env("SIGSTORE_REKOR_PUBLIC_KEY", &untrusted)
        .env("HTTPS_PROXY", nowhere)
        .env("https_proxy", nowhere)
        .env("HTTP_PROXY", nowhere)
        .env("http_proxy", nowhere)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("COSIGN_REPOSITORY")
        .env_remove("COSIGN_EXPERIMENTAL");
    match password {
        Some(p) => cmd.env("COSIGN_PASSWORD", p),
        None => cmd.env_remove("COSIGN_PASSWORD"),
    };
    cmd.output()
        .unwrap_or_else(|e| panic!("cosign {}: {e}", args.first().unwrap_or(&"")))
}

fn expect_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "cosign {what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("bpfleet-cosign-")
        .tempdir()
        .unwrap_or_else(|e| panic!("cosign scratch dir: {e}"))
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
