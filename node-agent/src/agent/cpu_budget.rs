//! A TracerPolicy's CPU budget on one program (`maxCpuOverheadPercent`,
//! `reduceSamplingOnBreach`): the decision taken at each enforcement step
//! from the program's measured CPU share ([`super::usage`]) and the
//! sampling it runs with. Pure: the agent reads the figures, writes slot 8
//! of `bpfleet_config` and keeps the state ([`super::enforce`]).
//!
//! Sampling is slot 8 (`BPFLEET_CFG_SAMPLE_PPM`): the share of its events
//! a program keeps, per million. What 0 means is the program's to say,
//! and a program that honours slot 8 says it in its object
//! (`BPFLEET_DECLARE_SAMPLING(all)` or `(none)` in `bpfleet_gate.h`).
//! The operator writes the policy's sampling (the *requested* value); the
//! agent may hold a lower one in the slot (the value *in force*):
//!
//! - over budget (the share over the last period above the budget): the
//!   share kept is halved, down to the floor (`--sampling-floor-ppm`, or
//!   the requested share when that is lower);
//! - under the low mark (a quarter of the budget): doubled, up to the
//!   requested share, which is then written back as the operator wrote
//!   it. The mark leaves a factor of two for noise: a cut halves a share
//!   above the budget to one above half of it, twice the mark, and a
//!   share doubled from under the mark stays under half the budget. (At
//!   half the budget, a busy program on a real kernel went back and forth
//!   between two values: its measured share after a cut came out under
//!   half its share before, as less time in BPF leaves more calls.)
//! - between the two: held.
//!
//! A program that does not declare sampling is never cut; it is reported
//! `cannot_sample` while over budget. A budget without
//! `reduce_sampling` is reported `not_reducing` while over, and a share
//! cut earlier is put back.

/// Slot 8 of `bpfleet_config` (`BPFLEET_CFG_SAMPLE_PPM`).
pub const SAMPLE_SLOT: u32 = 8;
/// Every event kept.
pub const ALL_PPM: u64 = 1_000_000;
/// Share of the budget under which a cut share is doubled back.
pub const LOW_MARK: f64 = 0.25;

use bpfleet_proto::v1 as pb;

pub use crate::state::{BudgetState, ZeroMeans};

/// A change of the sampling in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Reduce,
    Restore,
}

impl Action {
    /// The action's name (metric label, audit).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reduce => "reduce",
            Self::Restore => "restore",
        }
    }
}

/// What one step decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The slot 8 value to hold (raw, as written).
    pub in_force: u64,
    pub state: BudgetState,
    /// Set when `in_force` differs from the value before the step.
    pub action: Option<Action>,
}

/// The inputs of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inputs {
    /// Budget, percent of the node's CPU time.
    pub max_cpu_percent: f64,
    /// Whether sampling may be reduced.
    pub reduce_sampling: bool,
    /// How the program samples (None: it does not declare sampling).
    pub sampling: Option<ZeroMeans>,
    /// Slot 8 as the operator last wrote it (raw).
    pub requested: u64,
    /// Slot 8 as it holds now (raw).
    pub in_force: u64,
    /// CPU share over the last period, percent (None: not measured yet).
    pub measured: Option<f64>,
    /// Lowest share per million the agent cuts to.
    pub floor: u64,
}

/// One enforcement step.
pub fn step(i: &Inputs) -> Step {
    let Some(zero) = i.sampling else {
        // Never cut; a cut made while a revision that samples was active
        // goes back.
        let state = match i.measured {
            None => BudgetState::Measuring,
            Some(m) if m > i.max_cpu_percent => BudgetState::CannotSample,
            Some(_) => BudgetState::Within,
        };
        return Step {
            in_force: i.requested,
            state,
            action: (i.requested != i.in_force).then_some(Action::Restore),
        };
    };
    let wanted = zero.effective(i.requested);
    let now = zero.effective(i.in_force).min(wanted);
    let raw = |eff: u64| if eff >= wanted { i.requested } else { eff };
    let held = |state| Step {
        in_force: raw(now),
        state,
        action: (raw(now) != i.in_force).then_some(Action::Restore),
    };
    let reduced = now < wanted;
    if !i.reduce_sampling {
        // A cut made under an earlier budget goes back at once.
        let state = match i.measured {
            None => BudgetState::Measuring,
            Some(m) if m > i.max_cpu_percent => BudgetState::NotReducing,
            Some(_) => BudgetState::Within,
        };
        return Step {
            in_force: i.requested,
            state,
            action: (i.requested != i.in_force).then_some(Action::Restore),
        };
    }
    let Some(m) = i.measured else {
        return held(if reduced {
            BudgetState::Reduced
        } else {
            BudgetState::Measuring
        });
    };
    if m > i.max_cpu_percent {
        let floor = i.floor.min(wanted);
        if now <= floor {
            return held(BudgetState::AtFloor);
        }
        let next = (now / 2).max(floor);
        return Step {
            in_force: raw(next),
            state: if next <= floor {
                BudgetState::AtFloor
            } else {
                BudgetState::Reduced
            },
            action: Some(Action::Reduce),
        };
    }
    if reduced && m < i.max_cpu_percent * LOW_MARK {
        let next = now.saturating_mul(2).min(wanted);
        return Step {
            in_force: raw(next),
            state: if next < wanted {
                BudgetState::Reduced
            } else {
                BudgetState::Within
            },
            action: Some(Action::Restore),
        };
    }
    held(if reduced {
        BudgetState::Reduced
    } else {
        BudgetState::Within
    })
}

/// The slot 8 value to hold when the operator writes `new` as the
/// requested sampling: `new` itself, unless a cut is in force that keeps
/// less than `new` would, which then stays until the load falls.
pub fn on_request(zero: Option<ZeroMeans>, old_requested: u64, in_force: u64, new: u64) -> u64 {
    let Some(zero) = zero else {
        return new;
    };
    let cut = zero.effective(in_force) < zero.effective(old_requested);
    if cut && zero.effective(in_force) < zero.effective(new) {
        zero.effective(in_force)
    } else {
        new
    }
}

/// A budget as UpdateConfig sets it.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSpec {
    /// Percent of the node's CPU time, above 0.
    pub max_cpu_percent: f64,
    pub reduce_sampling: bool,
    pub policy: String,
}

impl BudgetSpec {
    /// Decodes the request's budget: None for `max_cpu_percent` 0 (no
    /// budget); an error naming the field when it is not a percentage.
    pub fn from_pb(b: &pb::CpuBudget) -> Result<Option<Self>, String> {
        let max = check_max_cpu_percent(b.max_cpu_percent)?;
        if b.policy.len() > 253 {
            return Err(format!(
                "cpu_budget.policy: {} bytes, at most 253 (a Kubernetes object name)",
                b.policy.len()
            ));
        }
        Ok((max > 0.0).then(|| Self {
            max_cpu_percent: max,
            reduce_sampling: b.reduce_sampling,
            policy: b.policy.clone(),
        }))
    }
}

/// Checks a budget as UpdateConfig carries it: a share of the node's CPU
/// time, finite, 0 (no budget) to 100.
pub fn check_max_cpu_percent(v: f64) -> Result<f64, String> {
    if !v.is_finite() || !(0.0..=100.0).contains(&v) {
        return Err(format!(
            "cpu_budget.max_cpu_percent: {v} is not a percentage from 0 (no budget) to 100"
        ));
    }
    Ok(v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn inputs(requested: u64, in_force: u64, measured: Option<f64>) -> Inputs {
        Inputs {
            max_cpu_percent: 1.0,
            reduce_sampling: true,
            sampling: Some(ZeroMeans::All),
            requested,
            in_force,
            measured,
            floor: 1000,
        }
    }

    /// Runs steps with a program whose cost follows its sampling: `full`
    /// percent at every event kept.
    fn run(mut i: Inputs, full: f64, steps: usize) -> Vec<(u64, BudgetState)> {
        let zero = i.sampling.unwrap();
        let mut out = Vec::new();
        for _ in 0..steps {
            i.measured = Some(full * zero.effective(i.in_force) as f64 / ALL_PPM as f64);
            let s = step(&i);
            i.in_force = s.in_force;
            out.push((s.in_force, s.state));
        }
        out
    }

    #[test]
    fn over_budget_halves_down_to_the_floor() {
        // 8 % at every event kept, budget 1 %: 1/2, 1/4, 1/8 (exactly 1 %:
        // not over), held there.
        let got = run(inputs(0, 0, None), 8.0, 5);
        assert_eq!(
            got,
            vec![
                (500_000, BudgetState::Reduced),
                (250_000, BudgetState::Reduced),
                (125_000, BudgetState::Reduced),
                (125_000, BudgetState::Reduced),
                (125_000, BudgetState::Reduced),
            ]
        );
        // Far over: down to the floor, then at_floor.
        let got = run(inputs(0, 0, None), 10_000.0, 11);
        assert_eq!(got[8], (1953, BudgetState::Reduced));
        assert_eq!(got[9], (1000, BudgetState::AtFloor));
        assert_eq!(got[10], (1000, BudgetState::AtFloor));
    }

    #[test]
    fn under_the_low_mark_doubles_back_to_the_request_as_written() {
        // Cut to 1/8, then the load falls to a tenth of what it was.
        let mut i = inputs(0, 125_000, Some(0.1));
        let s = step(&i);
        assert_eq!((s.in_force, s.action), (250_000, Some(Action::Restore)));
        assert_eq!(s.state, BudgetState::Reduced);
        i.in_force = 500_000;
        let s = step(&i);
        // Back to the operator's 0 (all), not to 1,000,000.
        assert_eq!((s.in_force, s.state), (0, BudgetState::Within));
        assert_eq!(s.action, Some(Action::Restore));
        // Between the low mark and the budget: held.
        let s = step(&inputs(0, 250_000, Some(0.3)));
        assert_eq!(
            (s.in_force, s.state, s.action),
            (250_000, BudgetState::Reduced, None)
        );
        // Within at the request: nothing.
        let s = step(&inputs(300_000, 300_000, Some(0.1)));
        assert_eq!(
            (s.in_force, s.state, s.action),
            (300_000, BudgetState::Within, None)
        );
    }

    #[test]
    fn a_request_below_the_floor_is_the_floor() {
        let s = step(&inputs(500, 500, Some(5.0)));
        assert_eq!(
            (s.in_force, s.state, s.action),
            (500, BudgetState::AtFloor, None)
        );
        let s = step(&inputs(4000, 4000, Some(5.0)));
        assert_eq!((s.in_force, s.action), (2000, Some(Action::Reduce)));
        let s = step(&inputs(4000, 2000, Some(5.0)));
        assert_eq!((s.in_force, s.state), (1000, BudgetState::AtFloor));
    }

    #[test]
    fn programs_that_do_not_sample_are_reported_never_written() {
        let mut i = inputs(0, 0, Some(3.0));
        i.sampling = None;
        let s = step(&i);
        assert_eq!(
            (s.in_force, s.state, s.action),
            (0, BudgetState::CannotSample, None)
        );
        i.measured = Some(0.2);
        assert_eq!(step(&i).state, BudgetState::Within);
        i.measured = None;
        assert_eq!(step(&i).state, BudgetState::Measuring);
        // A revision that samples was cut, then one that does not became
        // active: the request goes back.
        i.in_force = 250_000;
        let s = step(&i);
        assert_eq!((s.in_force, s.action), (0, Some(Action::Restore)));
    }

    #[test]
    fn zero_means_none_has_nothing_to_cut() {
        let mut i = inputs(0, 0, Some(3.0));
        i.sampling = Some(ZeroMeans::None);
        let s = step(&i);
        assert_eq!(
            (s.in_force, s.state, s.action),
            (0, BudgetState::AtFloor, None)
        );
        // With a share requested, it is cut like any other.
        i.requested = 100_000;
        i.in_force = 100_000;
        assert_eq!(step(&i).in_force, 50_000);
    }

    #[test]
    fn not_reducing_reports_and_puts_a_cut_back() {
        let mut i = inputs(0, 0, Some(3.0));
        i.reduce_sampling = false;
        let s = step(&i);
        assert_eq!(
            (s.in_force, s.state, s.action),
            (0, BudgetState::NotReducing, None)
        );
        i.in_force = 250_000;
        let s = step(&i);
        assert_eq!((s.in_force, s.action), (0, Some(Action::Restore)));
    }

    #[test]
    fn no_measurement_holds() {
        let s = step(&inputs(0, 250_000, None));
        assert_eq!(
            (s.in_force, s.state, s.action),
            (250_000, BudgetState::Reduced, None)
        );
        let s = step(&inputs(0, 0, None));
        assert_eq!(
            (s.in_force, s.state, s.action),
            (0, BudgetState::Measuring, None)
        );
    }

    #[test]
    fn a_new_request_keeps_a_cut_that_keeps_less() {
        let all = Some(ZeroMeans::All);
        // Cut to 1/4 of all; the operator now asks for 1/2: the cut holds.
        assert_eq!(on_request(all, 0, 250_000, 500_000), 250_000);
        // ... for 1/10: lower than the cut, taken as written.
        assert_eq!(on_request(all, 0, 250_000, 100_000), 100_000);
        // No cut in force: the request is taken whatever it is.
        assert_eq!(on_request(all, 100_000, 100_000, 0), 0);
        assert_eq!(on_request(None, 0, 0, 7), 7);
    }

    #[test]
    fn budgets_are_percentages() {
        assert_eq!(check_max_cpu_percent(0.5), Ok(0.5));
        assert_eq!(check_max_cpu_percent(0.0), Ok(0.0));
        for bad in [-1.0, 100.5, f64::NAN, f64::INFINITY] {
            let e = check_max_cpu_percent(bad).unwrap_err();
            assert!(e.starts_with("cpu_budget.max_cpu_percent:"), "{e}");
        }
    }
}
