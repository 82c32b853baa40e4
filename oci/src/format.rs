//! What an image holding a BPF object looks like, both ways: the labels
//! that declare its programs and maps, extracting the object from a layer,
//! and building the layer, config and manifest of a new image.

use std::collections::BTreeMap;
use std::io::Read;

use serde_json::{Value, json};

use crate::{Error, Result, digest_of};

/// The media type of bpfleet's artifact layer: the ELF object itself.
pub const OBJECT_MEDIA_TYPE: &str = "application/vnd.bpfleet.bpf.object.v1";
/// The artifact type of bpfleet's artifact manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.bpfleet.program.v1";
/// The OCI empty descriptor's media type (an artifact's config).
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// Label (config) or annotation (artifact) naming programs and types.
pub const PROGRAMS_LABEL: &str = "io.ebpf.programs";
/// Label (config) or annotation (artifact) naming maps and types.
pub const MAPS_LABEL: &str = "io.ebpf.maps";
/// An OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// A Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// An OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// A Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Image config media types (bpfman's format).
const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
/// Gzip-compressed tar layers.
const TAR_GZIP: [&str; 2] = [
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];
/// Plain tar layers.
const TAR: [&str; 2] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
];
/// Largest config or manifest read.
pub const MAX_METADATA: u64 = 1 << 20;

/// Which of the two formats an image is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// bpfman's bytecode image.
    Bpfman,
    /// bpfleet's artifact.
    Artifact,
}

impl Format {
    /// The name users write (`--format`).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Bpfman => "bpfman",
            Format::Artifact => "artifact",
        }
    }
}

/// What an image declares it holds: program (function) name to type,
/// map name to type, as bpfman's labels write them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Labels {
    /// `io.ebpf.programs`; None when the image does not say.
    pub programs: Option<BTreeMap<String, String>>,
    /// `io.ebpf.maps`; None when the image does not say.
    pub maps: Option<BTreeMap<String, String>>,
}

impl Labels {
    /// Reads the two labels from a string map (config labels or manifest
    /// annotations); a label that is not a JSON object of strings is
    /// refused naming it.
    pub fn from_map(m: Option<&serde_json::Map<String, Value>>) -> Result<Self> {
        let read = |key: &str| -> Result<Option<BTreeMap<String, String>>> {
            let Some(v) = m.and_then(|m| m.get(key)) else {
                return Ok(None);
            };
            let text = v
                .as_str()
                .ok_or_else(|| Error::Invalid(format!("label {key} is not a string")))?;
            serde_json::from_str(text).map(Some).map_err(|e| {
                Error::Invalid(format!(
                    "label {key} is not a JSON object of names to types ({e}): {}",
                    excerpt(text, 120)
                ))
            })
        };
        Ok(Self {
            programs: read(PROGRAMS_LABEL)?,
            maps: read(MAPS_LABEL)?,
        })
    }

    /// The labels as a string map (values are JSON text).
    pub fn to_map(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        if let Some(p) = &self.programs {
            m.insert(PROGRAMS_LABEL.into(), Value::String(json!(p).to_string()));
        }
        if let Some(p) = &self.maps {
            m.insert(MAPS_LABEL.into(), Value::String(json!(p).to_string()));
        }
        m
    }
}

/// A descriptor as manifests carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn read(v: &Value, what: &str) -> Result<Self> {
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| Error::Invalid(format!("{what} has no {k}")))
        };
        Ok(Self {
            media_type: s("mediaType")?,
            digest: s("digest")?,
            size: v
                .get("size")
                .and_then(Value::as_u64)
                .ok_or_else(|| Error::Invalid(format!("{what} has no size")))?,
        })
    }

    fn to_json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }

    /// The descriptor of `bytes` as `media_type`.
    pub fn of(media_type: &str, bytes: &[u8]) -> Self {
        Self {
            media_type: media_type.into(),
            digest: digest_of(bytes),
            size: bytes.len() as u64,
        }
    }
}

/// A manifest, read: either an index to pick from or an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Manifest {
    /// `(platform os/architecture, descriptor)` per entry.
    Index(Vec<(String, Descriptor)>),
    /// An image manifest: its config, layers and annotations.
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
        annotations: Option<serde_json::Map<String, Value>>,
    },
}

impl Manifest {
    /// Parses a manifest of any of the four media types.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::Invalid(format!("manifest is not JSON: {e}")))?;
        if let Some(list) = v.get("manifests").and_then(Value::as_array) {
            let mut out = Vec::new();
            for (i, m) in list.iter().enumerate() {
                let d = Descriptor::read(m, &format!("index entry {i}"))?;
                let p = m.get("platform");
                let field = |k: &str| {
                    p.and_then(|p| p.get(k))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                };
                let mut platform = format!("{}/{}", field("os"), field("architecture"));
                if !field("variant").is_empty() {
                    platform = format!("{platform}/{}", field("variant"));
                }
                out.push((platform, d));
            }
            return Ok(Manifest::Index(out));
        }
        let config = Descriptor::read(
            v.get("config")
                .ok_or_else(|| Error::Invalid("manifest has no config and no manifests".into()))?,
            "config",
        )?;
        let layers = v
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Invalid("manifest has no layers".into()))?
            .iter()
            .enumerate()
            .map(|(i, l)| Descriptor::read(l, &format!("layer {i}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Manifest::Image {
            config,
            layers,
            annotations: v.get("annotations").and_then(Value::as_object).cloned(),
        })
    }
}

/// The index entry for `arch` on Linux (`amd64`, `arm64`...), refused
/// naming the platforms the index has.
pub fn pick_platform<'a>(
    entries: &'a [(String, Descriptor)],
    arch: &str,
) -> Result<&'a Descriptor> {
    let want = format!("linux/{arch}");
    entries
        .iter()
        .find(|(p, _)| p == &want || p.starts_with(&format!("{want}/")))
        .map(|(_, d)| d)
        .ok_or_else(|| {
            let have: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
            Error::Invalid(format!(
                "the image index has no {want} manifest (it has: {})",
                have.join(", ")
            ))
        })
}

/// The Go name of this machine's architecture, as image platforms say it.
pub fn node_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// How an image manifest is read: its format and the one layer holding the
/// object. Refuses anything else naming what it found.
pub fn classify(config: &Descriptor, layers: &[Descriptor]) -> Result<(Format, Descriptor)> {
    let [layer] = layers else {
        return Err(Error::Invalid(format!(
            "the image has {} layers; a BPF image has exactly one (the object, or a tar holding it)",
            layers.len()
        )));
    };
    if layer.media_type == OBJECT_MEDIA_TYPE {
        return Ok((Format::Artifact, layer.clone()));
    }
    let tar =
        TAR_GZIP.contains(&layer.media_type.as_str()) || TAR.contains(&layer.media_type.as_str());
    if tar && CONFIG_TYPES.contains(&config.media_type.as_str()) {
        return Ok((Format::Bpfman, layer.clone()));
    }
    Err(Error::Invalid(format!(
        "layer media type {} with config {} is neither bpfman's bytecode image (a tar layer) nor a bpfleet artifact ({OBJECT_MEDIA_TYPE})",
        layer.media_type, config.media_type
    )))
}

/// The labels of a bpfman image's config blob.
pub fn config_labels(config: &[u8]) -> Result<Labels> {
    let v: Value = serde_json::from_slice(config)
        .map_err(|e| Error::Invalid(format!("image config is not JSON: {e}")))?;
    Labels::from_map(
        v.get("config")
            .and_then(|c| c.get("Labels"))
            .and_then(Value::as_object),
    )
}

/// The object inside a layer: the bytes themselves for an artifact; for a
/// tar (gzip or not), the single `*.o` file at its root. At most `max`
/// bytes are read out.
pub fn extract(layer: &Descriptor, bytes: &[u8], max: u64) -> Result<Vec<u8>> {
    if layer.media_type == OBJECT_MEDIA_TYPE {
        return Ok(bytes.to_vec());
    }
    if TAR_GZIP.contains(&layer.media_type.as_str()) {
        from_tar(flate2::read::GzDecoder::new(bytes), max)
    } else {
        from_tar(bytes, max)
    }
}

fn from_tar(r: impl Read, max: u64) -> Result<Vec<u8>> {
    let bad = |e: std::io::Error| Error::Invalid(format!("the layer is not a readable tar: {e}"));
    let mut ar = tar::Archive::new(r);
    let mut found: Option<(String, Vec<u8>)> = None;
    let mut others = Vec::new();
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let name = path
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string();
        let is_object =
            entry.header().entry_type().is_file() && !name.contains('/') && name.ends_with(".o");
        if !is_object {
            continue;
        }
        if found.is_some() {
            others.push(name);
            continue;
        }
        if entry.size() > max {
            return Err(Error::Invalid(format!(
                "{name} in the layer is {} bytes, at most {max} accepted",
                entry.size()
            )));
        }
        let mut buf = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut buf).map_err(bad)?;
        found = Some((name, buf));
    }
    match found {
        None => Err(Error::Invalid(
            "the layer holds no *.o file at its root".into(),
        )),
        Some((first, _)) if !others.is_empty() => Err(Error::Invalid(format!(
            "the layer holds several objects at its root ({first}, {}); one is expected",
            others.join(", ")
        ))),
        Some((_, b)) => Ok(b),
    }
}

/// A new image's parts: blobs (config first) and the manifest.
#[derive(Clone, Debug)]
pub struct Built {
    /// `(descriptor, bytes)`: the config, then the layer.
    pub blobs: Vec<(Descriptor, Vec<u8>)>,
    /// The manifest's bytes and media type.
    pub manifest: Vec<u8>,
    pub manifest_type: &'static str,
}

impl Built {
    /// The manifest's digest: what the reference pins.
    pub fn digest(&self) -> String {
        digest_of(&self.manifest)
    }
}

/// Builds an image of `object` (named `file_name` inside a tar) in
/// `format`. The bytes are reproducible: the same object and labels give
/// the same digest.
pub fn build(format: Format, object: &[u8], file_name: &str, labels: &Labels) -> Result<Built> {
    match format {
        Format::Artifact => {
            let config = b"{}".to_vec();
            let cd = Descriptor::of(EMPTY_MEDIA_TYPE, &config);
            let ld = Descriptor::of(OBJECT_MEDIA_TYPE, object);
            let mut layer = ld.to_json();
            layer["annotations"] = json!({"org.opencontainers.image.title": file_name});
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": ARTIFACT_TYPE,
                "config": cd.to_json(),
                "layers": [layer],
                "annotations": labels.to_map(),
            });
            Ok(Built {
                blobs: vec![(cd, config), (ld, object.to_vec())],
                manifest: manifest.to_string().into_bytes(),
                manifest_type: OCI_MANIFEST,
            })
        }
        Format::Bpfman => {
            let tar = tar_of(object, file_name)?;
            let diff_id = digest_of(&tar);
            let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut gz, &tar)
                .map_err(|e| Error::Invalid(format!("compressing the layer: {e}")))?;
            let layer = gz
                .finish()
                .map_err(|e| Error::Invalid(format!("compressing the layer: {e}")))?;
            let config = json!({
                "architecture": node_arch(),
                "os": "linux",
                "config": {"Labels": labels.to_map()},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            })
            .to_string()
            .into_bytes();
            let cd = Descriptor::of(CONFIG_TYPES[0], &config);
            let ld = Descriptor::of(TAR_GZIP[0], &layer);
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": cd.to_json(),
                "layers": [ld.to_json()],
            });
            Ok(Built {
                blobs: vec![(cd, config), (ld, layer)],
                manifest: manifest.to_string().into_bytes(),
                manifest_type: OCI_MANIFEST,
            })
        }
    }
}

/// A tar with `object` as `file_name` at its root, times and owners zero.
fn tar_of(object: &[u8], file_name: &str) -> Result<Vec<u8>> {
    if file_name.is_empty() || file_name.contains('/') {
        return Err(Error::Invalid(format!(
            "object file name {file_name:?} must be a plain file name"
        )));
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(object.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, file_name, object)
        .map_err(|e| Error::Invalid(format!("writing the layer's tar: {e}")))?;
    b.into_inner()
        .map_err(|e| Error::Invalid(format!("writing the layer's tar: {e}")))
}

/// The first `n` characters of `s`: how much of an untrusted value an
/// error message quotes (also used by the agent's digest checks).
pub fn excerpt(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_excerpt_counts_characters_not_bytes() {
        assert_eq!(excerpt("h\u{e9}llo w\u{f6}rld", 2), "h\u{e9}");
        assert_eq!(excerpt("short", 80), "short");
        assert_eq!(excerpt("", 3), "");
    }

    fn labels() -> Labels {
        Labels {
            programs: Some([("count".to_string(), "tracepoint".to_string())].into()),
            maps: Some([("counts".to_string(), "hash".to_string())].into()),
        }
    }

    fn read_back(b: &Built) -> (Format, Labels, Vec<u8>) {
        let Manifest::Image {
            config,
            layers,
            annotations,
        } = Manifest::parse(&b.manifest).unwrap()
        else {
            panic!("an image manifest")
        };
        let (format, layer) = classify(&config, &layers).unwrap();
        let blob = |d: &Descriptor| {
            b.blobs
                .iter()
                .find(|(x, _)| x == d)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let labels = match format {
            Format::Bpfman => config_labels(&blob(&config)).unwrap(),
            Format::Artifact => Labels::from_map(annotations.as_ref()).unwrap(),
        };
        assert_eq!(digest_of(&blob(&layer)), layer.digest);
        (
            format,
            labels,
            extract(&layer, &blob(&layer), 1 << 20).unwrap(),
        )
    }

    #[test]
    fn both_formats_round_trip_the_object_and_labels() {
        for f in [Format::Bpfman, Format::Artifact] {
            let b = build(f, b"\x7fELF-object", "count.bpf.o", &labels()).unwrap();
            let (format, l, obj) = read_back(&b);
            assert_eq!(
                (format, l, obj.as_slice()),
                (f, labels(), &b"\x7fELF-object"[..])
            );
            // Reproducible: the same input, the same digest.
            assert_eq!(
                build(f, b"\x7fELF-object", "count.bpf.o", &labels())
                    .unwrap()
                    .digest(),
                b.digest()
            );
        }
    }

    #[test]
    fn a_tar_must_hold_exactly_one_object_at_its_root() {
        let d = Descriptor::of(TAR[0], b"");
        let mut two = tar::Builder::new(Vec::new());
        for name in ["a.o", "b.o", "sub/c.o", "README"] {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_entry_type(tar::EntryType::Regular);
            two.append_data(&mut h, name, &b"x"[..]).unwrap();
        }
        let e = extract(&d, &two.into_inner().unwrap(), 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.o, b.o"), "{e}");
        let none = tar_of(b"x", "notes.txt").unwrap();
        let e = extract(&d, &none, 100).unwrap_err().to_string();
        assert!(e.contains("no *.o"), "{e}");
        let big = tar_of(&[0u8; 200], "x.o").unwrap();
        let e = extract(&d, &big, 100).unwrap_err().to_string();
        assert!(e.contains("200 bytes"), "{e}");
        assert!(
            extract(
                &d,
                b"not a tar at all, long enough to be read as a header?",
                100
            )
            .is_err()
        );
    }

    #[test]
    fn indexes_pick_linux_and_the_architecture() {
        let idx = serde_json::json!({"schemaVersion":2,"mediaType":OCI_INDEX,"manifests":[
            {"mediaType":OCI_MANIFEST,"digest":"sha256:aa","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}},
            {"mediaType":OCI_MANIFEST,"digest":"sha256:bb","size":2,"platform":{"os":"linux","architecture":"amd64"}}]});
        let Manifest::Index(e) = Manifest::parse(idx.to_string().as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(pick_platform(&e, "amd64").unwrap().digest, "sha256:bb");
        assert_eq!(pick_platform(&e, "arm64").unwrap().digest, "sha256:aa");
        let err = pick_platform(&e, "s390x").unwrap_err().to_string();
        assert!(
            err.contains("linux/s390x") && err.contains("linux/arm64/v8"),
            "{err}"
        );
    }

    #[test]
    fn foreign_images_and_bad_labels_are_refused_naming_what_was_found() {
        let c = Descriptor::of(CONFIG_TYPES[0], b"{}");
        let l = Descriptor::of("application/vnd.wasm.content.layer.v1+wasm", b"");
        let e = classify(&c, std::slice::from_ref(&l))
            .unwrap_err()
            .to_string();
        assert!(e.contains("wasm"), "{e}");
        let e = classify(&c, &[l.clone(), l]).unwrap_err().to_string();
        assert!(e.contains("2 layers"), "{e}");
        let cfg = serde_json::json!({"config":{"Labels":{PROGRAMS_LABEL: "[1,2]"}}}).to_string();
        let e = config_labels(cfg.as_bytes()).unwrap_err().to_string();
        assert!(e.contains(PROGRAMS_LABEL), "{e}");
        assert_eq!(config_labels(b"{}").unwrap(), Labels::default());
        assert!(Manifest::parse(b"{}").is_err());
    }
}
