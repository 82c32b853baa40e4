//! bpfman's bytecode images built the way its documentation builds them: a
//! Containerfile `FROM scratch` that copies the object to the image root and
//! labels the image with `io.ebpf.programs` and `io.ebpf.maps` (JSON maps of
//! name to type), built by the real `buildah` (Debian's package) and pushed
//! to a [`Registry`] fixture. No daemon: buildah runs with the `vfs` storage
//! driver, its storage, runtime state, signature policy and auth file in a
//! temporary directory of its own, and `chroot` isolation (the
//! Containerfile has no `RUN`, so no container runtime is needed). Needs
//! root, as the tests that use it run. The one file outside that directory
//! is containers/image's digest cache, `/var/lib/containers/cache/
//! blob-info-cache-v1.boltdb` for root, which buildah offers no flag to move.

use std::path::Path;
use std::process::{Command, Output};

use crate::registry::Registry;

/// Our Containerfile for a bpfman-format bytecode image: the object (build
/// argument `OBJECT`, a file of the build context) at the image root, the
/// programs and maps JSON (build arguments `PROGRAMS`, `MAPS`) as labels.
/// Quoted labels keep JSON with spaces whole.
const CONTAINERFILE: &str = "\
FROM scratch
ARG OBJECT
ARG PROGRAMS
ARG MAPS
LABEL \"io.ebpf.programs\"=\"$PROGRAMS\" \"io.ebpf.maps\"=\"$MAPS\"
COPY $OBJECT /
";

/// Builds a bytecode image of `obj` (it lands at the image root under its
/// own file name) with labels `io.ebpf.programs` = `programs_json` and
/// `io.ebpf.maps` = `maps_json`, pushes it to `registry` as `repo_tag`
/// (`repo:tag`) with `creds` if given, and returns the digest reference
/// `host/repo@sha256:...` of the pushed manifest.
pub fn buildah_bytecode_image(
    obj: &Path,
    programs_json: &str,
    maps_json: &str,
    registry: &Registry,
    repo_tag: &str,
    creds: Option<(&str, &str)>,
) -> String {
    let work = tempfile::Builder::new()
        .prefix("bpfleet-buildah-")
        .tempdir()
        .unwrap_or_else(|e| panic!("buildah scratch dir: {e}"));
    let dir = work.path();
    let file_name = obj
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_else(|| panic!("object path {} has no file name", obj.display()));
    let context = dir.join("context");
    std::fs::create_dir(&context).unwrap_or_else(|e| panic!("buildah context: {e}"));
    std::fs::copy(obj, context.join(file_name))
        .unwrap_or_else(|e| panic!("copying {} into the build context: {e}", obj.display()));
    let containerfile = dir.join("Containerfile");
    write(&containerfile, CONTAINERFILE.as_bytes());
    // Accept any image: only our own `FROM scratch` build is involved, and
    // the machine's /etc/containers/policy.json stays out of it.
    let policy = dir.join("policy.json");
    write(
        &policy,
        br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    );
    // Storage configuration and auth file of its own (buildah wants the
    // auth file to exist; credentials go in with --creds only).
    write(&dir.join("storage.conf"), b"[storage]\ndriver = \"vfs\"\n");
    write(&dir.join("auth.json"), b"{}");
    let local = "localhost/bpfleet-bytecode:build";

    let out = buildah(
        dir,
        &[
            "build",
            "--quiet",
            "--format=oci",
            "--isolation=chroot",
            "--layers=false",
            &format!("--signature-policy={}", policy.display()),
            &format!("--build-arg=OBJECT={file_name}"),
            &format!("--build-arg=PROGRAMS={programs_json}"),
            &format!("--build-arg=MAPS={maps_json}"),
            &format!("--file={}", containerfile.display()),
            &format!("--tag={local}"),
            &context.display().to_string(),
        ],
    );
    expect_success("build", &out);

    let digest_file = dir.join("digest");
    let mut push = vec![
        "push".to_string(),
        "--quiet".into(),
        "--format=oci".into(),
        format!("--signature-policy={}", policy.display()),
        format!("--digestfile={}", digest_file.display()),
    ];
    if registry.tls() {
        let certs = dir.join("certs");
        std::fs::create_dir(&certs).unwrap_or_else(|e| panic!("buildah cert dir: {e}"));
        // buildah takes every *.crt of --cert-dir as a CA.
        write(&certs.join("ca.crt"), &registry.ca_pem());
        push.push(format!("--cert-dir={}", certs.display()));
    } else {
        push.push("--tls-verify=false".into());
    }
    if let Some((user, pass)) = creds {
        push.push(format!("--creds={user}:{pass}"));
    }
    push.push(local.to_string());
    push.push(format!("docker://{}/{repo_tag}", registry.host()));
    let args: Vec<&str> = push.iter().map(String::as_str).collect();
    let out = buildah(dir, &args);
    expect_success("push", &out);

    let digest = std::fs::read_to_string(&digest_file)
        .unwrap_or_else(|e| panic!("buildah push --digestfile: {e}"));
    let digest = digest.trim();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "buildah push wrote digest {digest:?}"
    );
    let repo = repo_tag.split(':').next().unwrap_or(repo_tag);
    format!("{}/{repo}@{digest}", registry.host())
}

/// Runs buildah with its storage (vfs), runtime state, storage
/// configuration, auth file and `HOME` all under `dir` (the first two made
/// by buildah, the next two by `buildah_bytecode_image`).
fn buildah(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new("buildah");
    cmd.arg(format!("--root={}", dir.join("storage").display()))
        .arg(format!("--runroot={}", dir.join("run").display()))
        .arg("--storage-driver=vfs")
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("BUILDAH_ISOLATION", "chroot")
        .env("REGISTRY_AUTH_FILE", dir.join("auth.json"))
        .env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"));
    cmd.output()
        .unwrap_or_else(|e| panic!("buildah (apt-get install buildah; scripts/setup.sh does): {e}"))
}

fn expect_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "buildah {what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
