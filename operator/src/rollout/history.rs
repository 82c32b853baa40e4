//! The version registry in `status.history`: one record per revision ever
//! rolled out, newest first, with its state (ACTIVE on nodes, INACTIVE and
//! safe to roll back to, DEPRECATED: aborted, superseded mid-rollout or
//! undone) and outcome, trimmed to `revisionHistoryLimit` without ever
//! dropping an active revision or the spec's own revision.

use bpfleet_api::TracerProgramSpec;
use bpfleet_api::program::{RevisionOutcome, RevisionRecord, RevisionState};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The outcome recorded for `revision`.
pub fn outcome(history: &[RevisionRecord], revision: &str) -> Option<RevisionOutcome> {
    history
        .iter()
        .find(|r| r.revision == revision)
        .and_then(|r| r.outcome)
}

/// Whether the registry knows `revision`.
pub fn contains(history: &[RevisionRecord], revision: &str) -> bool {
    history.iter().any(|r| r.revision == revision)
}

/// Sets the outcome of `revision`, if recorded.
pub fn set_outcome(
    history: &mut [RevisionRecord],
    revision: &str,
    outcome: Option<RevisionOutcome>,
) {
    if let Some(r) = history.iter_mut().find(|r| r.revision == revision) {
        r.outcome = outcome;
    }
}

/// Moves `deployedAt` of `revision` to `now` (a retry starts a new attempt).
pub fn touch(history: &mut [RevisionRecord], revision: &str, now: Time) {
    if let Some(r) = history.iter_mut().find(|r| r.revision == revision) {
        r.deployed_at = Some(now);
    }
}

/// When `revision` was last deployed, if recorded.
pub fn deployed_at(history: &[RevisionRecord], revision: &str) -> Option<Time> {
    history
        .iter()
        .find(|r| r.revision == revision)
        .and_then(|r| r.deployed_at.clone())
}

/// Records a rollout of the spec's revision starting now, as the newest entry.
pub fn record_start(
    history: &mut Vec<RevisionRecord>,
    revision: &str,
    spec: &TracerProgramSpec,
    source_commit: Option<&str>,
    now: Time,
) {
    history.retain(|r| r.revision != revision);
    history.insert(
        0,
        RevisionRecord {
            revision: revision.to_string(),
            version: spec.version.clone(),
            sha256: spec.sha256.clone(),
            source_commit: source_commit.map(str::to_string),
            deployed_at: Some(now),
            state: RevisionState::Active,
            outcome: Some(RevisionOutcome::InProgress),
        },
    );
}

/// Recomputes every state from which revisions are on nodes (`active`).
pub fn refresh_states(history: &mut [RevisionRecord], active: &[&str]) {
    for r in history.iter_mut() {
        r.state = if active.contains(&r.revision.as_str()) {
            RevisionState::Active
        } else {
            match r.outcome {
                Some(
                    RevisionOutcome::Aborted
                    | RevisionOutcome::Superseded
                    | RevisionOutcome::RolledBack,
                ) => RevisionState::Deprecated,
                Some(RevisionOutcome::Promoted | RevisionOutcome::InProgress) | None => {
                    RevisionState::Inactive
                }
            }
        };
    }
}

/// Keeps at most `limit` records (newest first), plus any active record and
/// the records named in `keep`, which are never dropped.
pub fn trim(history: &mut Vec<RevisionRecord>, limit: i32, keep: &[&str]) {
    let limit = usize::try_from(limit.max(1)).unwrap_or(1);
    let pinned = |r: &RevisionRecord| {
        r.state == RevisionState::Active || keep.contains(&r.revision.as_str())
    };
    let pinned_count = history.iter().filter(|r| pinned(r)).count();
    let mut room = limit.saturating_sub(pinned_count);
    history.retain(|r| {
        if pinned(r) {
            true
        } else if room > 0 {
            room -= 1;
            true
        } else {
            false
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::clock::time;
    use crate::rollout::testing::spec;

    fn registry(n: usize) -> Vec<RevisionRecord> {
        let mut h = Vec::new();
        for i in 0..n {
            record_start(
                &mut h,
                &format!("r{i}"),
                &spec("x"),
                Some("abc"),
                time(i as i64),
            );
            set_outcome(&mut h, &format!("r{i}"), Some(RevisionOutcome::Promoted));
        }
        h
    }

    #[test]
    fn newest_first_and_restart_moves_to_front() {
        let mut h = registry(3);
        let order: Vec<&str> = h.iter().map(|r| r.revision.as_str()).collect();
        assert_eq!(order, ["r2", "r1", "r0"]);
        record_start(&mut h, "r0", &spec("x"), None, time(10));
        assert_eq!(h[0].revision, "r0");
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].outcome, Some(RevisionOutcome::InProgress));
        assert_eq!(h[0].deployed_at, Some(time(10)));
    }

    #[test]
    fn states_follow_nodes_and_outcomes() {
        let mut h = registry(3);
        set_outcome(&mut h, "r1", Some(RevisionOutcome::Aborted));
        refresh_states(&mut h, &["r2"]);
        let states: Vec<RevisionState> = h.iter().map(|r| r.state).collect();
        assert_eq!(
            states,
            [
                RevisionState::Active,
                RevisionState::Deprecated,
                RevisionState::Inactive
            ]
        );
    }

    #[test]
    fn trim_keeps_newest_and_pinned() {
        let mut h = registry(6);
        refresh_states(&mut h, &["r0"]);
        trim(&mut h, 3, &["r4"]);
        let left: Vec<&str> = h.iter().map(|r| r.revision.as_str()).collect();
        // r0 (active) and r4 (kept) are pinned; one slot left for the newest other.
        assert_eq!(left, ["r5", "r4", "r0"]);
        trim(&mut h, 1, &[]);
        let left: Vec<&str> = h.iter().map(|r| r.revision.as_str()).collect();
        assert_eq!(left, ["r0"]);
    }
}
