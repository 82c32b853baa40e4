//! Manual control without touching `spec`: annotations on the
//! TracerProgram, read into the state machine's [`Requests`]. Annotations
//! are metadata, so a GitOps tool that owns the spec sees no drift; the
//! machine acknowledges each command id in `status.rollout.acknowledgedRequests`
//! and never carries the same id out twice, so an annotation left in place
//! is harmless.
//!
//! | annotation | value | effect |
//! | --- | --- | --- |
//! | `bpfleet.dev/paused` | `"true"` | hold the rollout while set |
//! | `bpfleet.dev/promote` | request id | finish the current pause, analysis or promotion wait |
//! | `bpfleet.dev/abort` | request id | return every node to the stable revision |
//! | `bpfleet.dev/retry` | request id | roll an aborted revision out again |
//! | `bpfleet.dev/undo` | `REVISION` or `REVISION@ID` | make a registry revision the stable one |
//!
//! `kubectl bpfleet promote|abort|retry|undo|pause|resume` writes them with a
//! fresh id (the time in nanoseconds).

use std::collections::BTreeMap;

use crate::rollout::{Command, CommandKind, Requests};

pub const PAUSED: &str = "bpfleet.dev/paused";
pub const PROMOTE: &str = "bpfleet.dev/promote";
pub const ABORT: &str = "bpfleet.dev/abort";
pub const RETRY: &str = "bpfleet.dev/retry";
pub const UNDO: &str = "bpfleet.dev/undo";

/// Reads the manual requests from a TracerProgram's annotations. Values
/// that cannot mean anything (an empty undo revision) are reported as
/// problems and otherwise ignored.
pub fn from_annotations(annotations: &BTreeMap<String, String>) -> (Requests, Vec<String>) {
    let mut problems = Vec::new();
    let pause = match annotations.get(PAUSED).map(|v| v.trim()) {
        None | Some("") | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            problems.push(format!(
                "annotation {PAUSED}={other:?} is neither \"true\" nor \"false\"; ignored"
            ));
            false
        }
    };
    let mut commands = Vec::new();
    for (key, kind) in [
        (PROMOTE, CommandKind::Promote),
        (ABORT, CommandKind::Abort),
        (RETRY, CommandKind::Retry),
    ] {
        if let Some(v) = annotations.get(key).map(|v| v.trim())
            && !v.is_empty()
        {
            let name = key.trim_start_matches("bpfleet.dev/");
            commands.push(Command {
                id: format!("{name}/{v}"),
                kind,
            });
        }
    }
    if let Some(v) = annotations.get(UNDO).map(|v| v.trim())
        && !v.is_empty()
    {
        let revision = v.split_once('@').map_or(v, |(r, _)| r).trim();
        if revision.is_empty() {
            problems.push(format!(
                "annotation {UNDO}={v:?} names no revision (expected REVISION or REVISION@ID); ignored"
            ));
        } else {
            commands.push(Command {
                id: format!("undo/{v}"),
                kind: CommandKind::Undo {
                    revision: revision.to_string(),
                },
            });
        }
    }
    (Requests { pause, commands }, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_annotations_no_requests() {
        let (r, p) = from_annotations(&ann(&[("other", "x")]));
        assert_eq!(r, Requests::default());
        assert!(p.is_empty());
    }

    #[test]
    fn each_kind_becomes_a_command_with_a_distinct_id() {
        let (r, p) = from_annotations(&ann(&[
            (PAUSED, "true"),
            (PROMOTE, "17"),
            (ABORT, "18"),
            (RETRY, "19"),
            (UNDO, "abc1234567@20"),
        ]));
        assert!(p.is_empty());
        assert!(r.pause);
        let ids: Vec<&str> = r.commands.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            ["promote/17", "abort/18", "retry/19", "undo/abc1234567@20"]
        );
        assert_eq!(
            r.commands[3].kind,
            CommandKind::Undo {
                revision: "abc1234567".into()
            }
        );
    }

    #[test]
    fn undo_without_id_uses_the_revision_and_bad_values_are_reported() {
        let (r, _) = from_annotations(&ann(&[(UNDO, "abc1234567")]));
        assert_eq!(r.commands[0].id, "undo/abc1234567");
        let (r, p) = from_annotations(&ann(&[(UNDO, "@5"), (PAUSED, "yes")]));
        assert!(r.commands.is_empty() && !r.pause);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains(PAUSED) && p[1].contains(UNDO), "{p:?}");
    }
}
