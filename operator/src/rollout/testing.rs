//! Fixtures for the unit tests: specs and strategies.

use bpfleet_api::TracerProgramSpec;
use bpfleet_api::program::{
    AnalysisStep, BlueGreenStrategy, BytecodeSource, CanaryStep, CanaryStrategy, FailurePolicy,
    FileSource, ImmediateStrategy, PauseStep, ProgramEntry, Strategy,
};

/// A spec whose content (and so revision) is determined by `content`.
pub fn spec(content: &str) -> TracerProgramSpec {
    TracerProgramSpec {
        version: "1.0.0".into(),
        bytecode: BytecodeSource {
            file: Some(FileSource {
                path: format!("/var/lib/bpfleet/{content}.bpf.o"),
            }),
            ..Default::default()
        },
        sha256: format!("{:0>64}", content.len()),
        signature: None,
        programs: vec![ProgramEntry::tracepoint(
            "count",
            "syscalls",
            "sys_enter_write",
        )],
        persistent_maps: vec![],
        recreate_incompatible_maps: vec![],
        node_selector: None,
        strategy: immediate(),
        progress_deadline_seconds: 600,
        failure_policy: FailurePolicy::Rollback,
        revision_history_limit: 10,
        paused: false,
    }
}

/// A strategy with nothing set (invalid on its own).
pub fn none() -> Strategy {
    Strategy {
        immediate: None,
        canary: None,
        blue_green: None,
        verify_first: None,
    }
}

pub fn immediate() -> Strategy {
    Strategy {
        immediate: Some(ImmediateStrategy {}),
        ..none()
    }
}

pub fn canary(steps: Vec<CanaryStep>) -> Strategy {
    Strategy {
        canary: Some(CanaryStrategy {
            steps,
            max_unavailable: 1,
        }),
        ..none()
    }
}

pub fn blue_green(auto: bool, after: Option<i32>, pre: bool, post: bool, keep: i32) -> Strategy {
    let window = AnalysisStep {
        duration_seconds: 30,
        interval_seconds: 10,
        policy_ref: None,
    };
    Strategy {
        blue_green: Some(BlueGreenStrategy {
            auto_promotion_enabled: auto,
            auto_promotion_seconds: after,
            pre_promotion_analysis: pre.then(|| window.clone()),
            post_promotion_analysis: post.then_some(window),
            keep_previous_seconds: keep,
        }),
        ..none()
    }
}

fn step() -> CanaryStep {
    CanaryStep {
        set_node_percent: None,
        pause: None,
        analysis: None,
    }
}

pub fn percent(p: i32) -> CanaryStep {
    CanaryStep {
        set_node_percent: Some(p),
        ..step()
    }
}

pub fn pause() -> CanaryStep {
    CanaryStep {
        pause: Some(PauseStep { duration: None }),
        ..step()
    }
}

pub fn pause_for(d: &str) -> CanaryStep {
    CanaryStep {
        pause: Some(PauseStep {
            duration: Some(d.into()),
        }),
        ..step()
    }
}

pub fn analysis(duration: i32, interval: i32) -> CanaryStep {
    CanaryStep {
        analysis: Some(AnalysisStep {
            duration_seconds: duration,
            interval_seconds: interval,
            policy_ref: None,
        }),
        ..step()
    }
}
