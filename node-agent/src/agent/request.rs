//! The edge: protobuf requests turned into checked domain types before the
//! agent acts on them. Every refusal is [`Error::Invalid`] and names the
//! field and the reason. Pure: no kernel, no file, no agent state (reading
//! an `object_path` happens in `load`, after decoding).

use std::path::PathBuf;

use bpfleet_proto::v1::{self as pb, load_request::Source};

use crate::error::{Error, Result};
use crate::hooks::hook_from_i32;
use crate::names::check_name;
use crate::state::EntryState;

/// Most entries one revision may declare.
pub const MAX_ENTRIES: usize = 64;
/// Most persistent maps one revision may declare.
pub const MAX_PERSISTENT_MAPS: usize = 32;
/// Longest hook target accepted.
pub const MAX_TARGET: usize = 4096;
/// Most entries one UpdateConfig may write.
pub const MAX_CONFIG_ENTRIES: usize = 4096;
/// Most namespaces in one namespace filter.
pub const MAX_NAMESPACES: usize = 64;

/// Where a revision's object comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectSource {
    /// Bytes sent in the request.
    Bytes(Vec<u8>),
    /// An absolute path on the node.
    Path(PathBuf),
    /// An OCI reference pinned by digest, pulled before the agent is
    /// locked (see `crate::image`); its Debug prints no password.
    Image(pb::ImageSource),
}

/// A checked Load request.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadCmd {
    pub program: String,
    pub revision: String,
    /// Entries with known hooks and sane program names and targets.
    pub entries: Vec<EntryState>,
    /// Map names (no `/`, no NUL, 1..=64 bytes).
    pub persistent_maps: Vec<String>,
    /// Persistent maps (each in `persistent_maps`) this revision gets a
    /// fresh copy of when the pinned one has another layout, instead of
    /// being refused.
    pub recreate_maps: Vec<String>,
    pub source: ObjectSource,
    /// Expected digest (checked against the bytes at admission).
    pub sha256: String,
    /// Signature, base64 (checked at admission).
    pub signature: String,
    /// The trusted key that verified the image's cosign signature, set
    /// once an image source is fetched (`crate::image`).
    pub verified_by: Option<String>,
    /// The request's own map memory budget, when it sets one.
    pub max_map_bytes: Option<u64>,
    /// The TracerPolicy budgets the program shares with the other programs
    /// of the same group on this node, when the request names a group.
    pub group: Option<GroupBudget>,
}

/// A TracerPolicy's `spec.budgets` as a Load carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupBudget {
    /// The policy's name.
    pub name: String,
    pub max_programs: Option<usize>,
    pub max_map_bytes: Option<u64>,
}

/// Decodes a Load request; the object's bytes are checked for size by
/// [`check_object_len`] once they are in hand.
pub fn load(req: pb::LoadRequest) -> Result<LoadCmd> {
    check_name("program", &req.program)?;
    check_name("revision", &req.revision)?;
    if req.entries.is_empty() {
        return Err(Error::Invalid(
            "a revision needs at least one program entry".into(),
        ));
    }
    if req.entries.len() > MAX_ENTRIES {
        return Err(Error::Invalid(format!(
            "{} entries, at most {MAX_ENTRIES}",
            req.entries.len()
        )));
    }
    if req.persistent_maps.len() > MAX_PERSISTENT_MAPS {
        return Err(Error::Invalid(format!(
            "{} persistent maps, at most {MAX_PERSISTENT_MAPS}",
            req.persistent_maps.len()
        )));
    }
    for m in &req.persistent_maps {
        if m.is_empty() || m.len() > 64 || m.contains('/') || m.contains('\0') {
            return Err(Error::Invalid(format!(
                "persistent map name {m:?} is not a map name"
            )));
        }
    }
    for m in &req.recreate_incompatible_maps {
        if !req.persistent_maps.contains(m) {
            return Err(Error::Invalid(format!(
                "recreate_incompatible_maps names {m:?}, which is not in persistent_maps"
            )));
        }
    }
    let mut recreate_maps = req.recreate_incompatible_maps.clone();
    recreate_maps.sort_unstable();
    recreate_maps.dedup();
    let mut entries = Vec::with_capacity(req.entries.len());
    for (i, e) in req.entries.iter().enumerate() {
        let hook =
            hook_from_i32(e.hook).map_err(|er| Error::Invalid(format!("entry {i}: {er}")))?;
        if e.bpf_program.is_empty() || e.bpf_program.len() > 128 {
            return Err(Error::Invalid(format!(
                "entry {i}: bpf_program must be 1..=128 bytes"
            )));
        }
        if e.target.is_empty() || e.target.len() > MAX_TARGET || e.target.contains('\0') {
            return Err(Error::Invalid(format!(
                "entry {i}: target must be 1..={MAX_TARGET} bytes without NUL"
            )));
        }
        entries.push(EntryState {
            bpf_program: e.bpf_program.clone(),
            hook: hook as i32,
            target: e.target.clone(),
            pid: e.pid,
        });
    }
    let source = match req.source {
        Some(Source::Object(b)) => ObjectSource::Bytes(b),
        Some(Source::ObjectPath(p)) => {
            let path = PathBuf::from(&p);
            if !path.is_absolute() {
                return Err(Error::Invalid(format!(
                    "object_path {p:?} must be absolute"
                )));
            }
            ObjectSource::Path(path)
        }
        Some(Source::Image(i)) => ObjectSource::Image(i),
        None => {
            return Err(Error::Invalid(
                "no object: set object bytes, object_path or image".into(),
            ));
        }
    };
    Ok(LoadCmd {
        program: req.program,
        revision: req.revision,
        entries,
        persistent_maps: req.persistent_maps,
        recreate_maps,
        source,
        sha256: req.sha256,
        signature: req.signature,
        verified_by: None,
        max_map_bytes: req
            .budget
            .as_ref()
            .map(|b| b.max_map_memory_bytes)
            .filter(|&b| b > 0),
        group: match req.budget {
            Some(b) if !b.group.is_empty() => {
                check_name("budget.group", &b.group)?;
                Some(GroupBudget {
                    name: b.group,
                    max_programs: usize::try_from(b.group_max_programs)
                        .ok()
                        .filter(|&n| n > 0),
                    max_map_bytes: Some(b.group_max_map_memory_bytes).filter(|&n| n > 0),
                })
            }
            _ => None,
        },
    })
}

/// Refuses an empty object or one larger than `max` bytes.
pub fn check_object_len(len: usize, max: usize) -> Result<()> {
    if len == 0 {
        return Err(Error::Invalid("object is empty".into()));
    }
    if len > max {
        return Err(Error::Invalid(format!(
            "object is {len} bytes, at most {max} accepted"
        )));
    }
    Ok(())
}

/// A checked UpdateConfig request.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigCmd {
    pub program: String,
    /// The map to write (`bpfleet_config` when the request names none).
    pub map: String,
    /// (key, value) pairs, at most [`MAX_CONFIG_ENTRIES`].
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Delete the keys not written (hash maps only).
    pub replace: bool,
    /// The new namespace filter (sorted, without repeats), when given.
    pub namespaces: Option<Vec<String>>,
    /// The program's new HTTP tracer rules, when given (size-checked; the
    /// patterns are compiled before anything is written).
    pub tracer_rules: Option<crate::http::rules::PolicyRules>,
    /// The program's new CPU budget, when given (`Some(None)`: none).
    pub cpu_budget: Option<Option<super::cpu_budget::BudgetSpec>>,
    /// The program's new alert rules, when given (checked).
    pub alerts: Option<Vec<crate::alerts::PolicyAlert>>,
}

impl ConfigCmd {
    /// Whether only what the agent keeps (the namespace filter, the
    /// tracer rules, the CPU budget, the alert rules) changes: no map is
    /// written.
    pub fn only_namespaces(&self) -> bool {
        (self.namespaces.is_some()
            || self.tracer_rules.is_some()
            || self.cpu_budget.is_some()
            || self.alerts.is_some())
            && self.entries.is_empty()
            && !self.replace
    }
}

/// Decodes an UpdateConfig request.
pub fn update_config(req: &pb::UpdateConfigRequest) -> Result<ConfigCmd> {
    check_name("program", &req.program)?;
    let namespaces = req
        .namespaces
        .as_ref()
        .map(|n| namespace_list(&n.names))
        .transpose()?;
    let tracer_rules = req
        .tracer_rules
        .as_ref()
        .map(crate::http::rules::PolicyRules::from_pb)
        .transpose()?;
    if let Some(r) = &tracer_rules {
        // Compiled here, against the built-in base, so a rule that cannot
        // work is refused before anything is written.
        crate::http::rules::lay_over(Default::default(), r)
            .map_err(|e| Error::Invalid(format!("tracer_rules: {e}")))?;
    }
    let cpu_budget = req
        .cpu_budget
        .as_ref()
        .map(super::cpu_budget::BudgetSpec::from_pb)
        .transpose()
        .map_err(Error::Invalid)?;
    let alerts = req
        .alerts
        .as_ref()
        .map(crate::alerts::from_pb)
        .transpose()?;
    let only_kept = (namespaces.is_some()
        || tracer_rules.is_some()
        || cpu_budget.is_some()
        || alerts.is_some())
        && req.entries.is_empty()
        && !req.replace;
    if !only_kept
        && (req.entries.len() > MAX_CONFIG_ENTRIES || (req.entries.is_empty() && !req.replace))
    {
        return Err(Error::Invalid(format!(
            "entries: 1..={MAX_CONFIG_ENTRIES} expected (0 only with replace, namespaces, tracer_rules, cpu_budget or alerts)"
        )));
    }
    Ok(ConfigCmd {
        program: req.program.clone(),
        map: config_map_name(req).to_string(),
        entries: req
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect(),
        replace: req.replace,
        namespaces,
        tracer_rules,
        cpu_budget,
        alerts,
    })
}

/// The map an UpdateConfig request writes (`bpfleet_config` by default).
pub fn config_map_name(req: &pb::UpdateConfigRequest) -> &str {
    if req.map.is_empty() {
        crate::kernel::CONFIG_MAP
    } else {
        req.map.as_str()
    }
}

/// An UpdateConfig that writes `slots` of `program`'s `bpfleet_config`
/// (key `u32`, value `u64`, native byte order, as the BPF side reads
/// them), the other slots left as they are. The one way the agent, its
/// tests and benches build such a write.
pub fn slots_write(program: &str, slots: &[(u32, u64)]) -> pb::UpdateConfigRequest {
    pb::UpdateConfigRequest {
        program: program.to_string(),
        map: String::new(),
        entries: slots
            .iter()
            .map(|(slot, value)| pb::ConfigEntry {
                key: slot.to_ne_bytes().to_vec(),
                value: value.to_ne_bytes().to_vec(),
            })
            .collect(),
        replace: false,
        namespaces: None,
        tracer_rules: None,
        cpu_budget: None,
        alerts: None,
    }
}

/// An UpdateConfig that enables `ports` in `program`'s `bpfleet_ports`
/// (key `u16`, value 1); with `replace`, every other port is removed.
pub fn ports_write(program: &str, ports: &[u16], replace: bool) -> pb::UpdateConfigRequest {
    pb::UpdateConfigRequest {
        program: program.to_string(),
        map: crate::kernel::PORTS_MAP.to_string(),
        entries: ports
            .iter()
            .map(|p| pb::ConfigEntry {
                key: p.to_ne_bytes().to_vec(),
                value: vec![1],
            })
            .collect(),
        replace,
        namespaces: None,
        tracer_rules: None,
        cpu_budget: None,
        alerts: None,
    }
}

/// A namespace filter as UpdateConfig gives it: at most 64 Kubernetes
/// namespace names (DNS labels), sorted, without repeats.
pub fn namespace_list(names: &[String]) -> Result<Vec<String>> {
    if names.len() > MAX_NAMESPACES {
        return Err(Error::Invalid(format!(
            "namespaces: at most {MAX_NAMESPACES}, got {}",
            names.len()
        )));
    }
    for (i, n) in names.iter().enumerate() {
        let ok = (1..=63).contains(&n.len())
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !n.starts_with('-')
            && !n.ends_with('-');
        if !ok {
            return Err(Error::Invalid(format!(
                "namespaces[{i}]: {n:?} is not a Kubernetes namespace name (1-63 of a-z, 0-9, '-', alphanumeric at both ends)"
            )));
        }
    }
    let mut out = names.to_vec();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Checks the (program, revision) names of Activate, Rollback and Unload;
/// an empty revision is allowed where `revision_optional` (Rollback's
/// "previous", Unload's "whole program").
pub fn names(program: &str, revision: &str, revision_optional: bool) -> Result<()> {
    check_name("program", program)?;
    if !(revision_optional && revision.is_empty()) {
        check_name("revision", revision)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bpfleet_proto::v1::{ConfigEntry, HookKind, NamespaceFilter, ProgramEntry};

    fn entry(hook: HookKind, bp: &str, target: &str) -> ProgramEntry {
        ProgramEntry {
            bpf_program: bp.into(),
            hook: hook as i32,
            target: target.into(),
            pid: 0,
        }
    }

    fn req() -> pb::LoadRequest {
        pb::LoadRequest {
            program: "p".into(),
            revision: "r1".into(),
            entries: vec![entry(HookKind::Tracepoint, "f", "syscalls/sys_enter_read")],
            source: Some(Source::Object(b"elf".to_vec())),
            sha256: "abc".into(),
            ..Default::default()
        }
    }

    fn refusal(r: pb::LoadRequest) -> String {
        match load(r) {
            Err(Error::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_good_request_decodes_into_entries_and_a_source() {
        let mut r = req();
        r.budget = Some(pb::Budget {
            max_map_memory_bytes: 0,
            ..Default::default()
        });
        let c = load(r).unwrap();
        assert_eq!(c.program, "p");
        assert_eq!(c.entries[0].hook, HookKind::Tracepoint as i32);
        assert_eq!(c.source, ObjectSource::Bytes(b"elf".to_vec()));
        assert_eq!(c.max_map_bytes, None, "a zero budget means none");
    }

    #[test]
    fn every_refusal_names_the_field_and_the_reason() {
        let mut r = req();
        r.program = "_x".into();
        assert!(refusal(r).contains("program name"));
        let mut r = req();
        r.revision = String::new();
        assert!(refusal(r).contains("revision name is empty"));
        let mut r = req();
        r.entries.clear();
        assert!(refusal(r).contains("at least one program entry"));
        let mut r = req();
        r.entries = vec![r.entries[0].clone(); MAX_ENTRIES + 1];
        assert!(refusal(r).contains("at most 64"));
        let mut r = req();
        r.persistent_maps = vec!["a/b".into()];
        assert!(refusal(r).contains("persistent map name"));
        let mut r = req();
        r.persistent_maps = vec!["counts".into()];
        r.recreate_incompatible_maps = vec!["other".into()];
        assert!(refusal(r).contains("\"other\", which is not in persistent_maps"));
        let mut r = req();
        r.persistent_maps = vec!["counts".into()];
        r.recreate_incompatible_maps = vec!["counts".into(), "counts".into()];
        assert_eq!(load(r).unwrap().recreate_maps, ["counts"]);
        let mut r = req();
        r.entries[0].hook = 0;
        let m = refusal(r);
        assert!(
            m.starts_with("entry 0:") && m.contains("unspecified"),
            "{m}"
        );
        let mut r = req();
        r.entries.push(entry(HookKind::Xdp, "", "eth0"));
        assert!(refusal(r).starts_with("entry 1: bpf_program"));
        let mut r = req();
        r.entries[0].target = "a\0b".into();
        assert!(refusal(r).contains("entry 0: target"));
        let mut r = req();
        r.source = Some(Source::ObjectPath("rel/x.o".into()));
        assert!(refusal(r).contains("must be absolute"));
        let mut r = req();
        r.source = None;
        assert!(refusal(r).contains("no object"));
    }

    #[test]
    fn object_size_is_checked_once_the_bytes_are_known() {
        assert!(check_object_len(0, 10).is_err());
        assert!(check_object_len(10, 10).is_ok());
        let e = check_object_len(11, 10).unwrap_err().to_string();
        assert!(e.contains("11 bytes, at most 10"), "{e}");
    }

    #[test]
    fn update_config_needs_entries_unless_it_replaces_or_only_filters() {
        let mut r = pb::UpdateConfigRequest {
            program: "p".into(),
            ..Default::default()
        };
        assert!(matches!(update_config(&r), Err(Error::Invalid(_))));
        r.replace = true;
        let c = update_config(&r).unwrap();
        assert_eq!(c.map, crate::kernel::CONFIG_MAP);
        assert!(!c.only_namespaces());
        r.replace = false;
        r.namespaces = Some(NamespaceFilter {
            names: vec!["b".into(), "a".into(), "b".into()],
        });
        let c = update_config(&r).unwrap();
        assert!(c.only_namespaces());
        assert_eq!(c.namespaces.as_deref(), Some(&["a".into(), "b".into()][..]));
        r.entries = vec![
            ConfigEntry {
                key: vec![0; 4],
                value: vec![0; 8],
            };
            MAX_CONFIG_ENTRIES + 1
        ];
        assert!(matches!(update_config(&r), Err(Error::Invalid(_))));
    }

    #[test]
    fn a_cpu_budget_alone_is_an_update_and_must_be_a_percentage() {
        let mut r = pb::UpdateConfigRequest {
            program: "p".into(),
            cpu_budget: Some(pb::CpuBudget {
                max_cpu_percent: 0.5,
                reduce_sampling: true,
                policy: "pol".into(),
            }),
            ..Default::default()
        };
        let c = update_config(&r).unwrap();
        assert!(c.only_namespaces(), "nothing written to a map");
        let b = c.cpu_budget.unwrap().unwrap();
        assert_eq!((b.max_cpu_percent, b.reduce_sampling), (0.5, true));
        assert_eq!(b.policy, "pol");
        // 0: the budget goes.
        r.cpu_budget = Some(pb::CpuBudget::default());
        assert_eq!(update_config(&r).unwrap().cpu_budget, Some(None));
        r.cpu_budget = Some(pb::CpuBudget {
            max_cpu_percent: 101.0,
            ..Default::default()
        });
        let e = update_config(&r).unwrap_err().to_string();
        assert!(e.contains("cpu_budget.max_cpu_percent: 101"), "{e}");
    }

    #[test]
    fn namespace_names_are_dns_labels() {
        assert!(namespace_list(&["default".into(), "kube-system".into()]).is_ok());
        for bad in ["", "-a", "a-", "Upper", "a_b", &"x".repeat(64)] {
            let e = namespace_list(&[bad.to_string()]).unwrap_err().to_string();
            assert!(e.contains("namespaces[0]"), "{bad}: {e}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("n{i}")).collect();
        assert!(namespace_list(&many).is_err());
    }

    #[test]
    fn switch_and_unload_names() {
        assert!(names("p", "r", false).is_ok());
        assert!(names("p", "", true).is_ok());
        assert!(names("p", "", false).is_err());
        assert!(names("", "r", false).is_err());
    }

    #[test]
    fn built_config_writes_pass_the_checks_with_the_bpf_layout() {
        let c = update_config(&slots_write("tracer", &[(3, 7), (12, u64::MAX)])).unwrap();
        assert_eq!(c.map, "bpfleet_config");
        assert!(!c.replace);
        assert_eq!(
            c.entries,
            vec![
                (3u32.to_ne_bytes().to_vec(), 7u64.to_ne_bytes().to_vec()),
                (
                    12u32.to_ne_bytes().to_vec(),
                    u64::MAX.to_ne_bytes().to_vec()
                ),
            ]
        );
        let c = update_config(&ports_write("tracer", &[80, 8080], true)).unwrap();
        assert_eq!(c.map, "bpfleet_ports");
        assert!(c.replace);
        assert_eq!(c.entries[1], (8080u16.to_ne_bytes().to_vec(), vec![1]));
        // Nothing to write is refused, as any empty UpdateConfig is.
        assert!(update_config(&slots_write("tracer", &[])).is_err());
    }

    #[test]
    fn tracer_rules_alone_are_a_config_write_and_are_compiled_first() {
        let mut r = pb::UpdateConfigRequest {
            program: "p".into(),
            tracer_rules: Some(pb::TracerRules {
                route_patterns: vec!["/items/{item}".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = update_config(&r).unwrap();
        assert!(c.only_namespaces(), "no map is written");
        assert_eq!(
            c.tracer_rules.unwrap().routes.patterns,
            ["/items/{item}".to_string()]
        );
        r.tracer_rules = Some(pb::TracerRules {
            redact_command_line_patterns: vec!["(".into()],
            ..Default::default()
        });
        let e = update_config(&r).unwrap_err().to_string();
        assert!(
            e.contains("tracer_rules") && e.contains("commandLinePatterns[0]"),
            "{e}"
        );
    }
}
