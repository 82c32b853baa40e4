//! Objects from OCI registries: pull, verify, check against the request,
//! and keep by digest on the node.
//!
//! An image reaches the agent as a reference pinned by digest. [`Images`]
//! answers with the object and what vouches for it, before the agent is
//! locked (a slow registry holds up nobody else):
//!
//! 1. the node cache under the agent's state directory, keyed by the pinned
//!    digest, so re-adoption, rollback and undo never need the registry;
//! 2. else the registry: every manifest and blob checked against its digest
//!    (`bpfleet_oci`), the object taken out of bpfman's bytecode image or
//!    bpfleet's artifact;
//! 3. the image's labels (`io.ebpf.programs`) against the request's
//!    entries: a program the image does not declare, or declares as another
//!    type, is refused naming both;
//! 4. without a blob signature in the request, the image's cosign
//!    signatures (the `sha256-<hex>.sig` tag) against the trusted keys; the
//!    verified payload and signature are cached beside the object and
//!    checked again on every cache hit, so a key removed from the agent
//!    stops vouching at once, with no registry.
//!
//! The credentials of a request are used for its pull only: not stored,
//! logged, audited or reported (their Debug prints no password).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine;
use bpfleet_oci::{Credentials, Labels, Pinned, Registry, RegistryOptions};
use bpfleet_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hooks::hook_from_i32;
use crate::trust::{Verifiers, sha256_hex};

/// Where images come from and where they are kept.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    /// Cache directory (`<state dir>/images` unless set).
    pub cache_dir: Option<PathBuf>,
    /// Most bytes of objects the cache keeps (least recently used go).
    pub cache_max_bytes: u64,
    /// PEM bundles of CAs trusted for registries, (name, bytes).
    pub ca_pems: Vec<(String, Vec<u8>)>,
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub insecure: Vec<String>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            cache_max_bytes: 256 << 20,
            ca_pems: Vec::new(),
            insecure: Vec::new(),
        }
    }
}

/// An image resolved to its object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub object: Vec<u8>,
    /// The reference as the request gave it.
    pub reference: String,
    /// The image manifest's digest (the platform's under an index).
    pub manifest_digest: String,
    /// The trusted key that verified its cosign signature, when one did.
    pub signer: Option<String>,
    /// Whether the object came from the node cache.
    pub cached: bool,
}

/// What the cache keeps beside an object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Meta {
    reference: String,
    manifest_digest: String,
    format: String,
    labels: Labels,
    /// Hex sha256 of `object` (a damaged entry is pulled again).
    object_sha256: String,
    /// The cosign payload (base64) and signature that vouched for it.
    #[serde(default)]
    signature: Option<(String, String)>,
}

/// The image side of the agent; shared by every Load.
pub struct Images {
    registry: Registry,
    cache: Cache,
    verifiers: Verifiers,
    max_object: u64,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images")
            .field("cache", &self.cache.dir)
            .finish_non_exhaustive()
    }
}

impl Images {
    /// Images for an agent whose state file is `state_file`.
    pub fn new(
        cfg: &ImageConfig,
        state_file: &Path,
        verifiers: Verifiers,
        max_object: u64,
    ) -> Result<Self> {
        let registry = Registry::new(&RegistryOptions {
            ca_pems: cfg.ca_pems.iter().map(|(_, b)| b.clone()).collect(),
            insecure: cfg.insecure.clone(),
            timeout: None,
        })
        .map_err(|e| {
            let names: Vec<&str> = cfg.ca_pems.iter().map(|(n, _)| n.as_str()).collect();
            Error::Invalid(format!("--registry-ca {}: {e}", names.join(", ")))
        })?;
        let dir = cfg.cache_dir.clone().unwrap_or_else(|| {
            state_file
                .parent()
                .unwrap_or(Path::new("/var/lib/bpfleet"))
                .join("images")
        });
        Ok(Self {
            registry,
            cache: Cache {
                dir,
                max_bytes: cfg.cache_max_bytes,
            },
            verifiers,
            max_object,
        })
    }

    /// The object of `src` for a revision with `entries`; `blob_signed`
    /// when the request carries a blob signature (checked at admission
    /// instead of the image's).
    pub async fn fetch(
        &self,
        src: &pb::ImageSource,
        entries: &[pb::ProgramEntry],
        blob_signed: bool,
    ) -> Result<Fetched> {
        let image = Pinned::parse(&src.reference).map_err(|e| Error::Invalid(e.to_string()))?;
        let creds = src.credentials.as_ref().map(|c| Credentials {
            username: c.username.clone(),
            password: c.password.clone(),
        });
        if let Some((object, meta)) = self.cache.get(&image) {
            check_labels(&meta.labels, entries)?;
            let mut signer = None;
            if !blob_signed {
                signer = match &meta.signature {
                    Some((p, s)) => self.cached_signer(p, s),
                    None => None,
                };
                if signer.is_none() && !self.verifiers.allows_unsigned() {
                    signer = self.signer(&image, creds.as_ref()).await?.map(|(n, _)| n);
                }
            }
            return Ok(Fetched {
                object,
                reference: src.reference.clone(),
                manifest_digest: meta.manifest_digest,
                signer,
                cached: true,
            });
        }
        let pulled = self
            .registry
            .pull(&image, creds.as_ref(), self.max_object)
            .await
            .map_err(oci_error)?;
        check_labels(&pulled.labels, entries)?;
        let (signer, signature) = if blob_signed {
            (None, None)
        } else {
            match self.signer(&image, creds.as_ref()).await? {
                Some((n, sig)) => (Some(n), Some(sig)),
                None => (None, None),
            }
        };
        let meta = Meta {
            reference: src.reference.clone(),
            manifest_digest: pulled.manifest_digest.clone(),
            format: pulled.format.as_str().into(),
            labels: pulled.labels.clone(),
            object_sha256: sha256_hex(&pulled.object),
            signature,
        };
        if let Err(e) = self.cache.put(&image, &pulled.object, &meta) {
            // A full or read-only disk costs the cache, not the load.
            tracing::warn!(image = %image, error = %e, "image not cached");
        }
        Ok(Fetched {
            object: pulled.object,
            reference: src.reference.clone(),
            manifest_digest: pulled.manifest_digest,
            signer,
            cached: false,
        })
    }

    /// The trusted key a cached payload and signature still verify with.
    fn cached_signer(&self, payload_b64: &str, sig: &str) -> Option<String> {
        let payload = base64::engine::general_purpose::STANDARD
            .decode(payload_b64)
            .ok()?;
        self.verifiers.check_signed(&payload, sig).ok()
    }

    /// The image's cosign signature that a trusted key verifies: (key
    /// name, (payload base64, signature)); None when the image is unsigned
    /// and the agent allows that. Refused otherwise, naming why.
    async fn signer(
        &self,
        image: &Pinned,
        creds: Option<&Credentials>,
    ) -> Result<Option<(String, (String, String))>> {
        let sigs = self
            .registry
            .signatures(image, creds)
            .await
            .map_err(oci_error)?;
        if sigs.is_empty() {
            if self.verifiers.allows_unsigned() {
                return Ok(None);
            }
            return Err(Error::Denied(format!(
                "image {image} has no cosign signature for {} (tag {}) and no blob signature, and the agent requires signatures (start it with --allow-unsigned to opt out)",
                image.digest(),
                bpfleet_oci::cosign::signature_tag(image.digest())
            )));
        }
        let mut last = None;
        for (payload, sig) in &sigs {
            match self.verifiers.check_signed(payload, sig) {
                Ok(name) => {
                    let p = base64::engine::general_purpose::STANDARD.encode(payload);
                    return Ok(Some((name, (p, sig.clone()))));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(Error::Denied(format!(
            "image {image}: none of its {} cosign signatures verifies ({})",
            sigs.len(),
            last.map_or_else(String::new, |e| e.to_string())
        )))
    }
}

/// Registry failures are `SourceUnavailable` (ask again later); content
/// that can never load is an invalid request.
fn oci_error(e: bpfleet_oci::Error) -> Error {
    match e {
        bpfleet_oci::Error::Unavailable(m) => Error::SourceUnavailable(m),
        bpfleet_oci::Error::Invalid(m) => Error::Invalid(m),
    }
}

/// Types an image label may give a program hooked as `hook` (bpfman's
/// names and libbpf's section names, lower case).
fn label_types(hook: pb::HookKind) -> &'static [&'static str] {
    use pb::HookKind as H;
    match hook {
        H::Tracepoint => &["tracepoint", "tp"],
        H::RawTracepoint => &["raw_tracepoint", "raw_tp"],
        H::Uprobe | H::Uretprobe => &["uprobe", "uretprobe"],
        H::Xdp => &["xdp"],
        H::TcxIngress | H::TcxEgress => &["tcx", "tc"],
        H::CgroupSkbIngress | H::CgroupSkbEgress => &["cgroup_skb", "cgroup/skb"],
        H::SockOps => &["sockops", "sock_ops"],
        H::Kprobe | H::Kretprobe => &["kprobe", "kretprobe"],
        H::Fentry => &["fentry"],
        H::Fexit => &["fexit"],
        _ => &[],
    }
}

/// Each entry's program against the image's `io.ebpf.programs`, when the
/// image declares them.
pub fn check_labels(labels: &Labels, entries: &[pb::ProgramEntry]) -> Result<()> {
    let Some(declared) = &labels.programs else {
        return Ok(());
    };
    let list = || {
        declared
            .iter()
            .map(|(n, t)| format!("{n}: {t}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (i, e) in entries.iter().enumerate() {
        let hook =
            hook_from_i32(e.hook).map_err(|er| Error::Invalid(format!("entry {i}: {er}")))?;
        let hook_name = hook
            .as_str_name()
            .trim_start_matches("HOOK_KIND_")
            .to_lowercase();
        match declared.get(&e.bpf_program) {
            None => {
                return Err(Error::Invalid(format!(
                    "entry {i} loads program {:?} ({hook_name}), which the image does not declare (io.ebpf.programs: {})",
                    e.bpf_program,
                    list()
                )));
            }
            Some(t) if !label_types(hook).contains(&t.to_lowercase().as_str()) => {
                return Err(Error::Invalid(format!(
                    "entry {i} hooks program {:?} as {hook_name}; the image declares it as {t:?} (io.ebpf.programs: {})",
                    e.bpf_program,
                    list()
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Objects by pinned digest: `<dir>/sha256-<hex>/{object,meta.json}`;
/// recency is the meta file's modification time.
struct Cache {
    dir: PathBuf,
    max_bytes: u64,
}

impl Cache {
    fn entry(&self, image: &Pinned) -> PathBuf {
        self.dir.join(format!("sha256-{}", image.hex()))
    }

    /// The cached object and meta, when whole; a damaged entry is removed.
    fn get(&self, image: &Pinned) -> Option<(Vec<u8>, Meta)> {
        let dir = self.entry(image);
        let meta_path = dir.join("meta.json");
        let meta: Meta = serde_json::from_slice(&std::fs::read(&meta_path).ok()?).ok()?;
        let object = std::fs::read(dir.join("object")).ok()?;
        if sha256_hex(&object) != meta.object_sha256 {
            tracing::warn!(image = %image, "cached object damaged; pulling again");
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
        if let Ok(f) = std::fs::File::options().append(true).open(&meta_path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some((object, meta))
    }

    /// Stores an entry (written aside, then renamed in), then evicts the
    /// least recently used entries beyond the size bound.
    fn put(&self, image: &Pinned, object: &[u8], meta: &Meta) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let dir = self.entry(image);
        let tmp = self
            .dir
            .join(format!(".tmp-{}-{}", image.hex(), std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        std::fs::write(tmp.join("object"), object)?;
        std::fs::write(tmp.join("meta.json"), serde_json::to_vec_pretty(meta)?)?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir)?;
        self.evict(&dir);
        Ok(())
    }

    /// Removes the oldest entries until the objects fit (never `keep`).
    fn evict(&self, keep: &Path) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("sha256-"))
            })
            .filter_map(|p| {
                let used = std::fs::metadata(p.join("meta.json"))
                    .and_then(|m| m.modified())
                    .ok()?;
                let size = std::fs::metadata(p.join("object"))
                    .map(|m| m.len())
                    .unwrap_or(0);
                Some((used, size, p))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort();
        for (_, size, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            if std::fs::remove_dir_all(&path).is_ok() {
                tracing::info!(entry = %path.display(), bytes = size, "image cache: least recently used entry evicted");
                total -= size;
            }
        }
    }

    /// What the cache holds: (entry name, bytes).
    #[cfg(test)]
    fn list(&self) -> std::collections::BTreeMap<String, u64> {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let n = e.file_name().to_str()?.to_string();
                        let size = std::fs::metadata(e.path().join("object")).ok()?.len();
                        Some((n, size))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(name: &str, hook: pb::HookKind) -> pb::ProgramEntry {
        pb::ProgramEntry {
            bpf_program: name.into(),
            hook: hook as i32,
            target: "x".into(),
            pid: 0,
        }
    }

    fn labels(p: &[(&str, &str)]) -> Labels {
        Labels {
            programs: Some(
                p.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
            ),
            maps: None,
        }
    }

    #[test]
    fn labels_must_declare_each_entry_with_a_matching_type() {
        let l = labels(&[("count", "tracepoint"), ("pass", "xdp")]);
        check_labels(
            &l,
            &[
                entry("count", pb::HookKind::Tracepoint),
                entry("pass", pb::HookKind::Xdp),
            ],
        )
        .unwrap();
        let e = check_labels(&l, &[entry("other", pb::HookKind::Tracepoint)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"other\"") && e.contains("count: tracepoint"),
            "{e}"
        );
        let e = check_labels(&l, &[entry("pass", pb::HookKind::TcxIngress)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tcx_ingress") && e.contains("\"xdp\""), "{e}");
        // An image that declares nothing is not checked.
        check_labels(&Labels::default(), &[entry("any", pb::HookKind::Xdp)]).unwrap();
        // bpfman's type names are accepted in any case.
        check_labels(
            &labels(&[("t", "TC")]),
            &[entry("t", pb::HookKind::TcxEgress)],
        )
        .unwrap();
    }

    fn pinned(n: u8) -> Pinned {
        Pinned::parse(&format!("r.example/x@sha256:{}", hex::encode([n; 32]))).unwrap()
    }

    fn meta(object: &[u8]) -> Meta {
        Meta {
            reference: "r".into(),
            manifest_digest: "sha256:m".into(),
            format: "artifact".into(),
            labels: Labels::default(),
            object_sha256: sha256_hex(object),
            signature: None,
        }
    }

    #[test]
    fn the_cache_keeps_by_digest_evicts_the_least_recently_used_and_drops_damage() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache {
            dir: d.path().join("images"),
            max_bytes: 250,
        };
        for n in 1..=2u8 {
            c.put(&pinned(n), &[n; 100], &meta(&[n; 100])).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // 1 is used again: 2 is now the least recently used.
        assert_eq!(c.get(&pinned(1)).unwrap().0, vec![1; 100]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        c.put(&pinned(3), &[3; 100], &meta(&[3; 100])).unwrap();
        let held: Vec<String> = c.list().into_keys().collect();
        assert_eq!(held.len(), 2, "{held:?}");
        assert!(c.get(&pinned(2)).is_none());
        assert!(c.get(&pinned(1)).is_some() && c.get(&pinned(3)).is_some());
        // A damaged object is not served and is removed.
        std::fs::write(c.entry(&pinned(3)).join("object"), b"tampered").unwrap();
        assert!(c.get(&pinned(3)).is_none());
        assert!(!c.entry(&pinned(3)).exists());
        // An entry larger than the bound alone is kept (it is in use).
        c.put(&pinned(4), &[4; 300], &meta(&[4; 300])).unwrap();
        assert!(c.get(&pinned(4)).is_some());
    }
}
