//! Wall-clock jumps under a timed pause. The rollout's clocks are times in
//! status (so another replica or a restarted operator resumes them), read
//! against the wall clock: a clock that goes back must not stretch a pause
//! by the size of the jump; a clock that jumps forward counts as time
//! passed (the machine cannot tell it from an operator that was down).

use super::*;
use crate::common::*;
use bpfleet_api::program::Phase;

/// v1 stable on 3 nodes; v2 by canary (one node, a 60 s pause, all nodes),
/// ticked until it is 20 s into the pause.
fn twenty_seconds_into_a_minute_pause() -> (Fleet, String) {
    let (mut f, _) = stable_fleet(3);
    f.apply(spec(
        "v2",
        canary(1, vec![percent(33), pause(Some("60s")), percent(100)]),
    ));
    let v2 = f.revision();
    let mut guard = 0;
    while f.status.candidate_revision.as_deref() != Some(v2.as_str())
        || f.status.current_step_index != Some(1)
    {
        f.tick(1);
        guard += 1;
        assert!(
            guard < 20,
            "never reached the pause: {:?}",
            f.status.message
        );
    }
    assert_eq!(phase(&f), Phase::Paused);
    for _ in 0..4 {
        f.tick(5);
    }
    assert_eq!(f.status.message.as_deref(), Some("pausing 60s, 40s left"));
    assert_eq!(f.running(&v2), 1);
    (f, v2)
}

#[test]
fn a_clock_that_goes_back_an_hour_does_not_stretch_a_pause_by_an_hour() {
    let (mut f, v2) = twenty_seconds_into_a_minute_pause();
    let out = f.tick(-3600);
    assert_eq!(phase(&f), Phase::Paused);
    assert_eq!(
        f.status.current_step_index,
        Some(1),
        "not skipped, not restarted"
    );
    assert_eq!(f.running(&v2), 1, "no node moved");
    // The pause's clock restarts from now: at most the whole pause again,
    // not the 3,640 s the recorded start would ask for.
    assert_eq!(f.status.message.as_deref(), Some("pausing 60s, 60s left"));
    assert!(
        out.requeue_after.is_some_and(|s| s <= 60),
        "next look in {:?}",
        out.requeue_after
    );
    assert_eq!(f.event_count("ClockWentBack"), 1);
    // Time passes normally after the jump: the pause ends 60 s later.
    f.tick(59);
    assert_eq!(
        f.status.current_step_index,
        Some(1),
        "{:?}",
        f.status.message
    );
    f.settle(1, 10);
    f.settle(1, 5);
    assert_eq!(phase(&f), Phase::Healthy, "{:?}", f.status.message);
    assert_eq!(f.running(&v2), 3);
    assert_eq!(f.event_count("ClockWentBack"), 1, "reported once");
}

#[test]
fn a_clock_that_goes_back_a_little_keeps_the_pause_running() {
    // 5 s back, 20 s into the pause: the recorded start is still in the
    // past, so the pause just runs 5 s longer.
    let (mut f, _) = twenty_seconds_into_a_minute_pause();
    f.tick(-5);
    assert_eq!(f.status.message.as_deref(), Some("pausing 60s, 45s left"));
    assert_eq!(f.event_count("ClockWentBack"), 0);
}

#[test]
fn a_clock_that_jumps_forward_an_hour_ends_the_pause_and_nothing_else() {
    let (mut f, v2) = twenty_seconds_into_a_minute_pause();
    f.tick(3600);
    // The pause counts the hour as elapsed: the rollout moves to the next
    // step, and only that one (no step skipped, nothing aborted).
    assert_eq!(
        f.status.current_step_index,
        Some(2),
        "{:?}",
        f.status.message
    );
    assert_ne!(phase(&f), Phase::Aborted);
    f.settle(1, 10);
    f.settle(1, 5);
    assert_eq!(phase(&f), Phase::Healthy, "{:?}", f.status.message);
    assert_eq!(f.running(&v2), 3);
}

#[test]
fn a_held_rollout_whose_clock_goes_back_resumes_with_the_time_it_had_left() {
    let (mut f, _) = twenty_seconds_into_a_minute_pause();
    f.spec.paused = true;
    f.tick(10);
    f.tick(-3600);
    f.tick(10);
    f.spec.paused = false;
    let out = f.tick(0);
    assert_eq!(f.status.current_step_index, Some(1));
    assert!(
        out.requeue_after.is_some_and(|s| s <= 60),
        "next look in {:?}; {:?}",
        out.requeue_after,
        f.status.message
    );
}
