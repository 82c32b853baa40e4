//! What a node loads for one revision, and how it becomes an agent `Load`
//! request. [`RevisionSnapshot`] is the part of a spec the revision id
//! covers plus the signature; the operator keeps one per revision (the data
//! of a ControllerRevision, see `controller::snapshots`) so that a node
//! joining mid-rollout, a rollback or an undo can load a revision the
//! current spec no longer describes.
//!
//! Pure: fetching a ConfigMap's bytes and reading an image's pull secret
//! are the caller's job ([`Source`] says what to fetch).

use base64::Engine;
use bpfleet_api::TracerProgramSpec;
use bpfleet_api::program::{
    BytecodeSignature, BytecodeSource, Direction, HookType, ProgramEntry, XdpMode,
};
use bpfleet_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::registry::Credentials;
use crate::{Error, Result};

/// The load-relevant part of a spec, as snapshotted per revision (the data
/// of its ControllerRevision). Its JSON field names are persisted in the
/// apiserver: renaming a field makes older snapshots unreadable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSnapshot {
    pub bytecode: BytecodeSource,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<BytecodeSignature>,
    pub programs: Vec<ProgramEntry>,
    #[serde(default)]
    pub persistent_maps: Vec<String>,
    /// Persistent maps a revision may recreate when their layout changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recreate_incompatible_maps: Vec<String>,
}

impl RevisionSnapshot {
    pub fn from_spec(spec: &TracerProgramSpec) -> Self {
        RevisionSnapshot {
            bytecode: spec.bytecode.clone(),
            sha256: spec.sha256.clone(),
            signature: spec.signature.clone(),
            programs: spec.programs.clone(),
            persistent_maps: spec.persistent_maps.clone(),
            recreate_incompatible_maps: spec.recreate_incompatible_maps.clone(),
        }
    }
}

/// Where the object bytes come from, once resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A path on the node; the agent reads it.
    Path(String),
    /// The bytes themselves (inline).
    Bytes(Vec<u8>),
    /// A key of a ConfigMap the operator reads and sends as bytes.
    ConfigMap {
        namespace: String,
        name: String,
        key: String,
    },
    /// An OCI image the agent pulls, pinned by digest; `pull_secret` names
    /// the Secret (in the operator's namespace) the operator reads the
    /// registry's credentials from before the request is built.
    Image {
        reference: String,
        pull_secret: Option<String>,
    },
    /// An image with its pull secret read: the credentials for the
    /// reference's registry, if any (their `Debug` shows neither field).
    Pull {
        reference: String,
        credentials: Option<Credentials>,
    },
}

/// The source of a spec's bytecode, or why it cannot be used.
pub fn source(b: &BytecodeSource) -> Result<Source> {
    if let Some(f) = &b.file {
        return Ok(Source::Path(f.path.clone()));
    }
    if let Some(text) = &b.inline {
        let compact: String = text.split_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| Error::InvalidSpec(format!("bytecode.inline is not base64: {e}")))?;
        return Ok(Source::Bytes(bytes));
    }
    if let Some(c) = &b.config_map {
        return Ok(Source::ConfigMap {
            namespace: c.namespace.clone(),
            name: c.name.clone(),
            key: c.key.clone(),
        });
    }
    if let Some(i) = &b.image {
        if !i.reference.contains("@sha256:") {
            return Err(Error::InvalidSpec(format!(
                "bytecode.image.reference {:?} is not pinned by digest (registry/repository[:tag]@sha256:<64 hex>)",
                i.reference
            )));
        }
        return Ok(Source::Image {
            reference: i.reference.clone(),
            pull_secret: i.pull_secret.clone().filter(|s| !s.is_empty()),
        });
    }
    Err(Error::InvalidSpec(
        "bytecode sets none of image, file, inline or configMap".into(),
    ))
}

/// The agent program entries of a spec's `programs`: one per attach point
/// (an XDP or TC entry on three interfaces is three agent entries).
pub fn entries(programs: &[ProgramEntry]) -> Result<Vec<pb::ProgramEntry>> {
    let mut out = Vec::new();
    for (i, p) in programs.iter().enumerate() {
        let field = |f: &str| format!("programs[{i}].{f}");
        let missing = |f: &str| {
            Error::InvalidSpec(format!(
                "{} is required for type {}",
                field(f),
                p.hook.as_str()
            ))
        };
        let mut push = |hook: pb::HookKind, target: String, pid: i32| {
            out.push(pb::ProgramEntry {
                bpf_program: p.name.clone(),
                hook: hook as i32,
                target,
                pid,
            });
        };
        match p.hook {
            HookType::Tracepoint => {
                let t = p.tracepoint.as_ref().ok_or_else(|| missing("tracepoint"))?;
                push(
                    pb::HookKind::Tracepoint,
                    format!("{}/{}", t.category, t.name),
                    0,
                );
            }
            HookType::RawTracepoint => {
                let t = p
                    .raw_tracepoint
                    .as_ref()
                    .ok_or_else(|| missing("rawTracepoint"))?;
                push(pb::HookKind::RawTracepoint, t.name.clone(), 0);
            }
            HookType::Uprobe => {
                let u = p.uprobe.as_ref().ok_or_else(|| missing("uprobe"))?;
                let Some(function) = &u.function else {
                    return Err(Error::Unsupported(format!(
                        "{}: attaching by offset alone is not supported by the agent; name the function",
                        field("uprobe.offset")
                    )));
                };
                let hook = if u.retprobe {
                    pb::HookKind::Uretprobe
                } else {
                    pb::HookKind::Uprobe
                };
                push(hook, format!("{}:{function}", u.target), u.pid.unwrap_or(0));
            }
            HookType::Kprobe => {
                let k = p.kprobe.as_ref().ok_or_else(|| missing("kprobe"))?;
                let hook = if k.retprobe {
                    pb::HookKind::Kretprobe
                } else {
                    pb::HookKind::Kprobe
                };
                push(hook, k.function.clone(), 0);
            }
            HookType::Fentry => {
                let f = p.fentry.as_ref().ok_or_else(|| missing("fentry"))?;
                push(pb::HookKind::Fentry, f.function.clone(), 0);
            }
            HookType::Fexit => {
                let f = p.fexit.as_ref().ok_or_else(|| missing("fexit"))?;
                push(pb::HookKind::Fexit, f.function.clone(), 0);
            }
            HookType::Xdp => {
                let x = p.xdp.as_ref().ok_or_else(|| missing("xdp"))?;
                if x.mode != XdpMode::default() {
                    return Err(Error::Unsupported(format!(
                        "{}: only the default XDP mode is supported by the agent",
                        field("xdp.mode")
                    )));
                }
                for ifname in &x.interfaces {
                    push(pb::HookKind::Xdp, ifname.clone(), 0);
                }
            }
            // Legacy TC is served by tcx on kernels that have it (6.6+):
            // the same programs, attached with a link that can be updated.
            HookType::Tc | HookType::Tcx => {
                let t = if p.hook == HookType::Tc {
                    p.tc.as_ref().ok_or_else(|| missing("tc"))?
                } else {
                    p.tcx.as_ref().ok_or_else(|| missing("tcx"))?
                };
                let hook = match t.direction {
                    Direction::Ingress => pb::HookKind::TcxIngress,
                    Direction::Egress => pb::HookKind::TcxEgress,
                };
                for ifname in &t.interfaces {
                    push(hook, ifname.clone(), 0);
                }
            }
            HookType::CgroupSkb => {
                let c = p.cgroup_skb.as_ref().ok_or_else(|| missing("cgroupSkb"))?;
                let hook = match c.direction {
                    Direction::Ingress => pb::HookKind::CgroupSkbIngress,
                    Direction::Egress => pb::HookKind::CgroupSkbEgress,
                };
                push(hook, c.cgroup_path.clone(), 0);
            }
            HookType::SockOps => {
                let c = p.sock_ops.as_ref().ok_or_else(|| missing("sockOps"))?;
                push(pb::HookKind::SockOps, c.cgroup_path.clone(), 0);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidSpec(
            "programs attach nowhere (every XDP/TC entry lists no interface)".into(),
        ));
    }
    Ok(out)
}

/// The agent request that loads `revision` of `program` from `spec`, with
/// `source` resolved (a ConfigMap's bytes already fetched).
pub fn request(
    program: &str,
    revision: &str,
    spec: &RevisionSnapshot,
    source: Source,
) -> Result<pb::LoadRequest> {
    let src = match source {
        Source::Path(p) => pb::load_request::Source::ObjectPath(p),
        Source::Bytes(b) => pb::load_request::Source::Object(b),
        Source::ConfigMap {
            namespace,
            name,
            key,
        } => {
            return Err(Error::InvalidSpec(format!(
                "ConfigMap {namespace}/{name} key {key} must be fetched before building the request"
            )));
        }
        Source::Image {
            reference,
            pull_secret: None,
        } => image(reference, None),
        Source::Image {
            pull_secret: Some(secret),
            ..
        } => {
            return Err(Error::InvalidSpec(format!(
                "pull secret {secret} must be read before building the request"
            )));
        }
        Source::Pull {
            reference,
            credentials,
        } => image(reference, credentials),
    };
    Ok(pb::LoadRequest {
        program: program.to_string(),
        revision: revision.to_string(),
        source: Some(src),
        sha256: spec.sha256.clone(),
        signature: spec
            .signature
            .as_ref()
            .map(|s| s.value.clone())
            .unwrap_or_default(),
        entries: entries(&spec.programs)?,
        persistent_maps: spec.persistent_maps.clone(),
        recreate_incompatible_maps: spec.recreate_incompatible_maps.clone(),
        budget: None,
    })
}

fn image(reference: String, credentials: Option<Credentials>) -> pb::load_request::Source {
    pb::load_request::Source::Image(pb::ImageSource {
        reference,
        credentials: credentials.map(|c| pb::RegistryCredentials {
            username: c.username,
            password: c.password,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpfleet_api::program::{FileSource, TcHook, TracepointHook, UprobeHook, XdpHook};

    fn entry(hook: HookType) -> ProgramEntry {
        ProgramEntry::new("prog", hook)
    }

    #[test]
    fn tracepoint_uprobe_and_interfaces_translate() {
        let mut tp = entry(HookType::Tracepoint);
        tp.tracepoint = Some(TracepointHook {
            category: "syscalls".into(),
            name: "sys_enter_write".into(),
        });
        let mut up = entry(HookType::Uprobe);
        up.uprobe = Some(UprobeHook {
            target: "/usr/lib/libssl.so.3".into(),
            function: Some("SSL_write".into()),
            offset: None,
            retprobe: true,
            pid: Some(42),
        });
        let mut xdp = entry(HookType::Xdp);
        xdp.xdp = Some(XdpHook {
            interfaces: vec!["eth0".into(), "eth1".into()],
            mode: XdpMode::default(),
        });
        let mut tc = entry(HookType::Tc);
        tc.tc = Some(TcHook {
            interfaces: vec!["eth0".into()],
            direction: Direction::Egress,
        });
        let e = entries(&[tp, up, xdp, tc]).unwrap();
        let got: Vec<(i32, &str, i32)> = e
            .iter()
            .map(|e| (e.hook, e.target.as_str(), e.pid))
            .collect();
        assert_eq!(
            got,
            [
                (
                    pb::HookKind::Tracepoint as i32,
                    "syscalls/sys_enter_write",
                    0
                ),
                (
                    pb::HookKind::Uretprobe as i32,
                    "/usr/lib/libssl.so.3:SSL_write",
                    42
                ),
                (pb::HookKind::Xdp as i32, "eth0", 0),
                (pb::HookKind::Xdp as i32, "eth1", 0),
                (pb::HookKind::TcxEgress as i32, "eth0", 0),
            ]
        );
    }

    #[test]
    fn missing_hook_details_name_the_field() {
        let e = entries(&[entry(HookType::Tracepoint), entry(HookType::Xdp)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("programs[0].tracepoint"), "{e}");
        let mut up = entry(HookType::Uprobe);
        up.uprobe = Some(UprobeHook {
            target: "/bin/x".into(),
            function: None,
            offset: Some(16),
            retprobe: false,
            pid: None,
        });
        let e = entries(&[up]).unwrap_err().to_string();
        assert!(e.contains("programs[0].uprobe.offset"), "{e}");
    }

    #[test]
    fn sources_resolve_or_say_why_not() {
        let file = BytecodeSource {
            file: Some(FileSource {
                path: "/opt/x.o".into(),
            }),
            ..Default::default()
        };
        assert_eq!(source(&file).unwrap(), Source::Path("/opt/x.o".into()));
        let inline = BytecodeSource {
            inline: Some("f0VM\nRg==".into()),
            ..Default::default()
        };
        assert_eq!(source(&inline).unwrap(), Source::Bytes(b"\x7fELF".to_vec()));
        let bad = BytecodeSource {
            inline: Some("***".into()),
            ..Default::default()
        };
        assert!(
            source(&bad)
                .unwrap_err()
                .to_string()
                .contains("bytecode.inline")
        );
        let image = |reference: &str, pull_secret: Option<&str>| BytecodeSource {
            image: Some(bpfleet_api::program::ImageSource {
                reference: reference.into(),
                pull_secret: pull_secret.map(str::to_string),
            }),
            ..Default::default()
        };
        let pinned = format!("r.example/x:v1@sha256:{}", "0".repeat(64));
        assert_eq!(
            source(&image(&pinned, Some("regcred"))).unwrap(),
            Source::Image {
                reference: pinned.clone(),
                pull_secret: Some("regcred".into())
            }
        );
        // An empty name is no secret (anonymous pull).
        assert_eq!(
            source(&image(&pinned, Some(""))).unwrap(),
            Source::Image {
                reference: pinned.clone(),
                pull_secret: None
            }
        );
        let e = source(&image("r.example/x:v1", None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bytecode.image.reference") && e.contains("digest"),
            "{e}"
        );
    }

    #[test]
    fn an_image_is_sent_with_its_registry_credentials_only_once_read() {
        let mut spec = RevisionSnapshot::from_spec(&crate::rollout::testing::spec("a"));
        let reference = format!("r.example:5000/bpf/x@sha256:{}", "ab".repeat(32));
        spec.bytecode = BytecodeSource {
            image: Some(bpfleet_api::program::ImageSource {
                reference: reference.clone(),
                pull_secret: Some("regcred".into()),
            }),
            ..Default::default()
        };
        let unread = source(&spec.bytecode).unwrap();
        let e = request("p", "r1", &spec, unread).unwrap_err().to_string();
        assert!(e.contains("regcred"), "{e}");
        let creds = Credentials {
            username: "ci".into(),
            password: "SECRET-pw".into(),
        };
        let pull = Source::Pull {
            reference: reference.clone(),
            credentials: Some(creds),
        };
        assert!(!format!("{pull:?}").contains("SECRET"), "{pull:?}");
        let req = request("p", "r1", &spec, pull).unwrap();
        assert_eq!(
            req.source,
            Some(pb::load_request::Source::Image(pb::ImageSource {
                reference: reference.clone(),
                credentials: Some(pb::RegistryCredentials {
                    username: "ci".into(),
                    password: "SECRET-pw".into(),
                }),
            }))
        );
        assert!(!format!("{req:?}").contains("SECRET"));
        // No signature in the spec: the agent checks the image's own.
        assert_eq!(req.signature, "");
        let anonymous = Source::Image {
            reference: reference.clone(),
            pull_secret: None,
        };
        let req = request("p", "r1", &spec, anonymous).unwrap();
        assert!(matches!(
            req.source,
            Some(pb::load_request::Source::Image(pb::ImageSource {
                credentials: None,
                ..
            }))
        ));
    }

    #[test]
    fn the_recreate_policy_reaches_the_request_and_older_snapshots_read() {
        let mut tp = crate::rollout::testing::spec("a");
        tp.persistent_maps = vec!["counts".into()];
        tp.recreate_incompatible_maps = vec!["counts".into()];
        let snap = RevisionSnapshot::from_spec(&tp);
        let req = request("p", "r1", &snap, Source::Path("/x.o".into())).unwrap();
        assert_eq!(req.persistent_maps, ["counts"]);
        assert_eq!(req.recreate_incompatible_maps, ["counts"]);
        // A snapshot stored before the field existed reads as Refuse.
        let mut old = serde_json::to_value(&snap).unwrap();
        old.as_object_mut()
            .unwrap()
            .remove("recreateIncompatibleMaps");
        let back: RevisionSnapshot = serde_json::from_value(old).unwrap();
        assert!(back.recreate_incompatible_maps.is_empty());
    }
}
