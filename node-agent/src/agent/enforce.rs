//! CPU budgets on the agent: the budget UpdateConfig sets per program,
//! the slot 8 writes of UpdateConfig while a cut is in force, and the
//! enforcement step the agent's sampler runs once a `--budget-period`
//! ([`super::cpu_budget`] decides; this file reads the figures, writes
//! slot 8 of the program's `bpfleet_config`, keeps the state and reports
//! each change as an audit line, a log line and a metric).

use std::time::Duration;

use bpfleet_proto::v1 as pb;

use super::Agent;
use super::cpu_budget::{self, Action, BudgetSpec, BudgetState, Inputs, SAMPLE_SLOT, ZeroMeans};
use super::usage::SAMPLE_PERIOD;
use crate::audit::now_ms;
use crate::error::{Error, Result};
use crate::kernel::{self, CONFIG_MAP};
use crate::state::{CpuBudgetState, ProgramState};

/// UpdateConfig entries, (key, value).
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Who the audit lines of the agent's own changes name.
const ACTOR: &str = "agent";

/// A program's figures for the metrics endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetFigures {
    pub program: String,
    /// CPU share over the last enforcement period (None: not measured).
    pub cpu_percent: Option<f64>,
    /// The share of events kept in force, per million, for programs with
    /// a budget that declare sampling.
    pub sampling_ppm: Option<u64>,
}

/// The sampling the active revision of `p` declares.
fn sampling_of(p: &ProgramState) -> Option<ZeroMeans> {
    let active = p.active.as_ref()?;
    p.revisions.get(active)?.sampling
}

/// Slot 8 value and the new value of one UpdateConfig entry, when the
/// entry is slot 8 of `bpfleet_config`.
fn sample_entry(key: &[u8], value: &[u8]) -> Option<u64> {
    (key == SAMPLE_SLOT.to_ne_bytes()).then_some(())?;
    Some(u64::from_ne_bytes(value.try_into().ok()?))
}

impl Agent {
    /// The window a step measures over: one period, less half a sample
    /// period so that the sample taken just before the last step is the
    /// base (every figure is after the last change).
    fn budget_window(&self) -> Duration {
        self.cfg.budget_period.saturating_sub(SAMPLE_PERIOD / 2)
    }

    /// The sampler's tick: samples usage and, once a period, runs the
    /// enforcement step.
    pub fn tick(&mut self) {
        self.sample_usage();
        let now = kernel::sys::mono_ns();
        let period = u64::try_from(self.budget_window().as_nanos()).unwrap_or(u64::MAX);
        if now.saturating_sub(self.last_enforced_ns) >= period {
            self.last_enforced_ns = now;
            self.enforce_budgets();
        }
    }

    /// Rewrites the slot 8 entry of an UpdateConfig of `bpfleet_config`
    /// while the program has a budget: the request is recorded as the
    /// requested sampling, and the value written is that request unless a
    /// cut in force keeps less ([`cpu_budget::on_request`]). Returns the
    /// entries to write and the budget's new (requested, in force).
    pub(super) fn budget_entries(
        &self,
        program: &str,
        map: &str,
        entries: &[(Vec<u8>, Vec<u8>)],
    ) -> (Entries, Option<(u64, u64)>) {
        let mut out = entries.to_vec();
        let Some(p) = self.state.programs.get(program) else {
            return (out, None);
        };
        let Some(b) = p.cpu_budget.as_ref().filter(|_| map == CONFIG_MAP) else {
            return (out, None);
        };
        let mut seen = None;
        for (k, v) in &mut out {
            if let Some(asked) = sample_entry(k, v) {
                let keep =
                    cpu_budget::on_request(sampling_of(p), b.requested_ppm, b.in_force_ppm, asked);
                *v = keep.to_ne_bytes().to_vec();
                seen = Some((asked, keep));
            }
        }
        (out, seen)
    }

    /// Records what UpdateConfig wrote to slot 8 of a program with a budget.
    pub(super) fn budget_written(&mut self, program: &str, requested: u64, in_force: u64) {
        if let Some(b) = self
            .state
            .programs
            .get_mut(program)
            .and_then(|p| p.cpu_budget.as_mut())
        {
            b.requested_ppm = requested;
            b.in_force_ppm = in_force;
        }
    }

    /// Sets or removes a program's budget (UpdateConfig `cpu_budget`).
    /// Removing it writes the requested sampling back. Whether the state
    /// changed.
    pub(super) fn set_cpu_budget(
        &mut self,
        program: &str,
        spec: Option<&BudgetSpec>,
    ) -> Result<bool> {
        let p = self
            .state
            .programs
            .get_mut(program)
            .ok_or_else(|| Error::NotFound(format!("program {program}")))?;
        let pin = p.shared_maps.get(CONFIG_MAP).cloned();
        match (spec, p.cpu_budget.as_mut()) {
            (None, None) => Ok(false),
            (None, Some(b)) => {
                let (requested, in_force) = (b.requested_ppm, b.in_force_ppm);
                if requested != in_force
                    && let Some(pin) = &pin
                {
                    kernel::maps::write_u64(pin, SAMPLE_SLOT, requested)?;
                }
                p.cpu_budget = None;
                if requested != in_force {
                    self.audit.write(
                        ACTOR,
                        "cpu_budget",
                        program,
                        "",
                        "ok",
                        &format!(
                            "budget removed: sampling {in_force} -> {requested} ppm (the request)"
                        ),
                    );
                }
                tracing::info!(program, "CPU budget removed");
                Ok(true)
            }
            (Some(s), Some(b)) => {
                let changed = b.max_cpu_percent != s.max_cpu_percent
                    || b.reduce_sampling != s.reduce_sampling
                    || b.policy != s.policy;
                b.max_cpu_percent = s.max_cpu_percent;
                b.reduce_sampling = s.reduce_sampling;
                b.policy = s.policy.clone();
                Ok(changed)
            }
            (Some(s), None) => {
                let now = pin
                    .as_ref()
                    .and_then(|pin| kernel::maps::read_u64(pin, SAMPLE_SLOT))
                    .unwrap_or(0);
                p.cpu_budget = Some(CpuBudgetState {
                    max_cpu_percent: s.max_cpu_percent,
                    reduce_sampling: s.reduce_sampling,
                    policy: s.policy.clone(),
                    requested_ppm: now,
                    in_force_ppm: now,
                    state: BudgetState::Measuring,
                    measured_percent: None,
                    changed_at_unix_ms: now_ms(),
                });
                tracing::info!(
                    program,
                    max_cpu_percent = s.max_cpu_percent,
                    reduce_sampling = s.reduce_sampling,
                    policy = %s.policy,
                    "CPU budget set"
                );
                Ok(true)
            }
        }
    }

    /// One enforcement step for every program with a budget.
    pub fn enforce_budgets(&mut self) {
        let window = self.budget_window();
        let floor = self.cfg.sampling_floor_ppm;
        let names: Vec<String> = self
            .state
            .programs
            .iter()
            .filter(|(_, p)| p.cpu_budget.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        let mut changed = false;
        for name in names {
            let measured = self.usage.cpu_percent(&name, window);
            let Some(p) = self.state.programs.get(&name) else {
                continue;
            };
            let Some(b) = p.cpu_budget.clone() else {
                continue;
            };
            let pin = p.shared_maps.get(CONFIG_MAP).cloned();
            // Without a config map there is no slot to write.
            let sampling = pin.as_ref().and(sampling_of(p));
            let in_force = pin
                .as_ref()
                .and_then(|pin| kernel::maps::read_u64(pin, SAMPLE_SLOT))
                .unwrap_or(b.in_force_ppm);
            let s = cpu_budget::step(&Inputs {
                max_cpu_percent: b.max_cpu_percent,
                reduce_sampling: b.reduce_sampling,
                sampling,
                requested: b.requested_ppm,
                in_force,
                measured,
                floor,
            });
            let mut written = in_force;
            if let (Some(action), Some(pin)) = (s.action, &pin) {
                match kernel::maps::write_u64(pin, SAMPLE_SLOT, s.in_force) {
                    Ok(()) => {
                        written = s.in_force;
                        self.budget_changed(&name, &b, action, in_force, s.in_force, measured);
                    }
                    Err(e) => {
                        tracing::error!(program = %name, error = %e, "cannot write the sampling of a CPU budget");
                        self.audit
                            .write(ACTOR, "cpu_budget", &name, "", e.kind(), &e.to_string());
                    }
                }
            }
            if s.state != b.state && s.action.is_none() {
                self.budget_state_changed(&name, &b, s.state, measured, written);
            }
            if let Some(b) = self
                .state
                .programs
                .get_mut(&name)
                .and_then(|p| p.cpu_budget.as_mut())
            {
                if b.state != s.state || b.in_force_ppm != written {
                    b.changed_at_unix_ms = now_ms();
                    changed = true;
                }
                b.state = s.state;
                b.in_force_ppm = written;
                b.measured_percent = measured;
            }
        }
        if changed {
            self.save_soon();
        }
    }

    fn budget_changed(
        &mut self,
        program: &str,
        b: &CpuBudgetState,
        action: Action,
        from: u64,
        to: u64,
        measured: Option<f64>,
    ) {
        let share = measured.map_or_else(|| "not measured".into(), |m| format!("{m:.3} %"));
        let detail = format!(
            "{} sampling {from} -> {to} ppm (requested {}): CPU {share} of the node over {:?}, budget {} % (policy {})",
            action.as_str(),
            b.requested_ppm,
            self.cfg.budget_period,
            b.max_cpu_percent,
            b.policy
        );
        self.audit
            .write(ACTOR, "cpu_budget", program, "", "ok", &detail);
        tracing::warn!(
            program,
            action = action.as_str(),
            from,
            to,
            measured,
            budget = b.max_cpu_percent,
            "CPU budget: sampling changed"
        );
        *self
            .enforcements
            .entry((program.to_string(), action.as_str()))
            .or_default() += 1;
    }

    fn budget_state_changed(
        &mut self,
        program: &str,
        b: &CpuBudgetState,
        state: BudgetState,
        measured: Option<f64>,
        in_force: u64,
    ) {
        let share = measured.map_or_else(|| "not measured".into(), |m| format!("{m:.3} %"));
        let detail = format!(
            "{} -> {}: CPU {share} of the node over {:?}, budget {} %, sampling {in_force} ppm (policy {})",
            b.state.as_str(),
            state.as_str(),
            self.cfg.budget_period,
            b.max_cpu_percent,
            b.policy
        );
        self.audit
            .write(ACTOR, "cpu_budget", program, "", "ok", &detail);
        match state {
            BudgetState::CannotSample | BudgetState::NotReducing | BudgetState::AtFloor => {
                tracing::warn!(
                    program,
                    state = state.as_str(),
                    measured,
                    budget = b.max_cpu_percent,
                    "CPU budget exceeded"
                )
            }
            _ => {
                tracing::info!(
                    program,
                    state = state.as_str(),
                    measured,
                    budget = b.max_cpu_percent,
                    "CPU budget"
                )
            }
        }
    }

    /// A program's budget as List reports it.
    pub(super) fn cpu_budget_status(&self, p: &ProgramState) -> Option<pb::CpuBudgetStatus> {
        let b = p.cpu_budget.as_ref()?;
        let state = match b.state {
            BudgetState::Measuring => pb::CpuBudgetState::Measuring,
            BudgetState::Within => pb::CpuBudgetState::Within,
            BudgetState::Reduced => pb::CpuBudgetState::Reduced,
            BudgetState::AtFloor => pb::CpuBudgetState::AtFloor,
            BudgetState::CannotSample => pb::CpuBudgetState::CannotSample,
            BudgetState::NotReducing => pb::CpuBudgetState::NotReducing,
        };
        Some(pb::CpuBudgetStatus {
            max_cpu_percent: b.max_cpu_percent,
            reduce_sampling: b.reduce_sampling,
            policy: b.policy.clone(),
            measured_cpu_percent: b.measured_percent,
            requested_sampling_ppm: b.requested_ppm,
            sampling_ppm: b.in_force_ppm,
            state: state as i32,
            changed_at_unix_ms: b.changed_at_unix_ms,
            samples: sampling_of(p).is_some(),
        })
    }

    /// Every program's CPU share over the last enforcement period, and the
    /// sampling in force of those with a budget that sample.
    pub fn budget_figures(&self) -> Vec<BudgetFigures> {
        let window = self.budget_window();
        self.state
            .programs
            .iter()
            .map(|(name, p)| BudgetFigures {
                program: name.clone(),
                cpu_percent: self.usage.cpu_percent(name, window),
                sampling_ppm: p
                    .cpu_budget
                    .as_ref()
                    .and_then(|b| sampling_of(p).map(|z| z.effective(b.in_force_ppm))),
            })
            .collect()
    }

    /// Sampling changes made since start: (program, reduce | restore, count).
    pub fn enforcement_counts(&self) -> Vec<(String, &'static str, u64)> {
        self.enforcements
            .iter()
            .map(|((p, a), n)| (p.clone(), *a, *n))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_slot_8_entries_are_sampling() {
        assert_eq!(
            sample_entry(&8u32.to_ne_bytes(), &5u64.to_ne_bytes()),
            Some(5)
        );
        assert_eq!(sample_entry(&9u32.to_ne_bytes(), &5u64.to_ne_bytes()), None);
        assert_eq!(sample_entry(&8u32.to_ne_bytes(), &[0; 4]), None);
    }
}
