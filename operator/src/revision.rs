//! Revision ids: a short, stable hash of what a node actually loads.
//!
//! The id is the first 10 hex digits of SHA-256 over the canonical JSON of
//! `bytecode`, `sha256`, `programs` (in order: their order is the load order)
//! `persistentMaps` and `recreateIncompatibleMaps` (each sorted: they are
//! sets; the latter left out when empty, so older ids hold). `version`, `strategy`,
//! `nodeSelector`, `paused`, `failurePolicy` and the other rollout settings are
//! left out on purpose: editing how or where a revision rolls out must not
//! start a new rollout. The JSON shape comes from the API types' serde
//! attributes, so the id only changes when the content (or the API) does.

use bpfleet_api::TracerProgramSpec;
use bpfleet_api::program::{BytecodeSource, ProgramEntry};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::Result;

/// Number of hex digits kept: 40 bits, collision-free in practice for the
/// few hundred revisions a program ever has.
pub const REVISION_LEN: usize = 10;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Content<'a> {
    bytecode: &'a BytecodeSource,
    sha256: &'a str,
    programs: &'a [ProgramEntry],
    persistent_maps: Vec<&'a str>,
    /// Left out when empty, so the ids of specs without it stay as they were.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    recreate_incompatible_maps: Vec<&'a str>,
}

/// The revision id of a spec (see the module docs for what it covers).
pub fn revision_id(spec: &TracerProgramSpec) -> Result<String> {
    let mut persistent_maps: Vec<&str> = spec.persistent_maps.iter().map(String::as_str).collect();
    persistent_maps.sort_unstable();
    persistent_maps.dedup();
    let mut recreate_incompatible_maps: Vec<&str> = spec
        .recreate_incompatible_maps
        .iter()
        .map(String::as_str)
        .collect();
    recreate_incompatible_maps.sort_unstable();
    recreate_incompatible_maps.dedup();
    let content = Content {
        bytecode: &spec.bytecode,
        sha256: &spec.sha256,
        programs: &spec.programs,
        persistent_maps,
        recreate_incompatible_maps,
    };
    let bytes = serde_json::to_vec(&content)?;
    let digest = Sha256::digest(&bytes);
    let mut id = String::with_capacity(REVISION_LEN);
    for byte in digest.iter().take(REVISION_LEN / 2) {
        id.push_str(&format!("{byte:02x}"));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::testing::spec;

    #[test]
    fn id_is_short_hex_and_stable() {
        let a = revision_id(&spec("a")).expect("id");
        assert_eq!(a.len(), REVISION_LEN);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, revision_id(&spec("a")).expect("id"));
        assert_ne!(a, revision_id(&spec("b")).expect("id"));
    }

    #[test]
    fn rollout_settings_do_not_change_the_id() {
        let base = spec("a");
        let id = revision_id(&base).expect("id");
        let mut other = base.clone();
        other.version = "9.9.9".into();
        other.paused = true;
        other.revision_history_limit = 3;
        other.progress_deadline_seconds = 30;
        other.strategy.immediate = None;
        other.strategy.canary = Some(bpfleet_api::program::CanaryStrategy {
            steps: vec![],
            max_unavailable: 2,
        });
        other.node_selector = Some(Default::default());
        assert_eq!(id, revision_id(&other).expect("id"));
    }

    #[test]
    fn content_changes_the_id() {
        let base = spec("a");
        let id = revision_id(&base).expect("id");
        let mut maps = base.clone();
        maps.persistent_maps = vec!["counts".into()];
        assert_ne!(id, revision_id(&maps).expect("id"));
        let mut progs = base.clone();
        progs.programs[0].name = "other".into();
        assert_ne!(id, revision_id(&progs).expect("id"));
        let mut code = base.clone();
        code.bytecode.inline = Some("AAAAAAAA".into());
        assert_ne!(id, revision_id(&code).expect("id"));
    }

    #[test]
    fn the_incompatible_map_policy_changes_the_id() {
        let mut refuse = spec("a");
        refuse.persistent_maps = vec!["counts".into()];
        let id = revision_id(&refuse).expect("id");
        // Spelled out as it was before the field existed: same id.
        let old = Content {
            bytecode: &refuse.bytecode,
            sha256: &refuse.sha256,
            programs: &refuse.programs,
            persistent_maps: vec!["counts"],
            recreate_incompatible_maps: vec![],
        };
        let json = serde_json::to_string(&old).expect("json");
        assert!(!json.contains("recreate"), "{json}");
        let mut recreate = refuse.clone();
        recreate.recreate_incompatible_maps = vec!["counts".into()];
        assert_ne!(id, revision_id(&recreate).expect("id"));
        let mut twice = refuse.clone();
        twice.recreate_incompatible_maps = vec!["counts".into(), "counts".into()];
        assert_eq!(
            revision_id(&recreate).expect("id"),
            revision_id(&twice).expect("id")
        );
    }

    #[test]
    fn persistent_maps_are_a_set() {
        let mut a = spec("a");
        a.persistent_maps = vec!["x".into(), "y".into()];
        let mut b = spec("a");
        b.persistent_maps = vec!["y".into(), "x".into(), "y".into()];
        assert_eq!(revision_id(&a).expect("id"), revision_id(&b).expect("id"));
    }
}
