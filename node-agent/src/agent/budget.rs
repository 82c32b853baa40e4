//! The agent's budgets: how many programs, how many revisions per program,
//! and how much map memory one program and the whole agent may hold. Pure
//! arithmetic over figures the caller measured; no kernel call.

use crate::error::{Error, Result};

/// Limits from the agent's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Most programs (names) loaded at once.
    pub max_programs: usize,
    /// Most revisions per program.
    pub max_revisions: usize,
    /// Map memory of one program (all its revisions and shared maps).
    pub max_map_bytes_per_program: u64,
    /// Map memory of the whole agent.
    pub max_map_bytes_total: u64,
}

impl Budgets {
    /// Refuses a new revision of `program` when the program count (for a
    /// new program) or the program's revision count is at its limit.
    /// `programs` is how many programs are loaded, `revisions` how many
    /// revisions `program` has (None: the program is new).
    pub fn check_counts(
        &self,
        program: &str,
        programs: usize,
        revisions: Option<usize>,
    ) -> Result<()> {
        match revisions {
            None if programs >= self.max_programs => Err(Error::Budget(format!(
                "{programs} programs loaded, at most {}",
                self.max_programs
            ))),
            Some(n) if n >= self.max_revisions => Err(Error::Budget(format!(
                "program {program} has {n} revisions, at most {}; unload one first",
                self.max_revisions
            ))),
            _ => Ok(()),
        }
    }

    /// Map memory a new revision may still create: what is left of the
    /// program's budget (the request's own, when it sets a smaller one) and
    /// of the agent's, whichever is less.
    pub fn map_room(&self, requested: Option<u64>, used_by_program: u64, used_total: u64) -> u64 {
        let prog_limit = requested.map_or(self.max_map_bytes_per_program, |r| {
            r.min(self.max_map_bytes_per_program)
        });
        prog_limit
            .saturating_sub(used_by_program)
            .min(self.max_map_bytes_total.saturating_sub(used_total))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const B: Budgets = Budgets {
        max_programs: 2,
        max_revisions: 3,
        max_map_bytes_per_program: 1000,
        max_map_bytes_total: 1500,
    };

    #[test]
    fn counts_refuse_a_new_program_or_revision_at_the_limit() {
        assert!(B.check_counts("p", 1, None).is_ok());
        let e = B.check_counts("p", 2, None).unwrap_err();
        assert!(
            matches!(e, Error::Budget(ref m) if m == "2 programs loaded, at most 2"),
            "{e}"
        );
        // An existing program is not counted again.
        assert!(B.check_counts("p", 2, Some(2)).is_ok());
        let e = B.check_counts("p", 2, Some(3)).unwrap_err().to_string();
        assert!(e.contains("program p has 3 revisions, at most 3"), "{e}");
    }

    #[test]
    fn room_is_the_smaller_of_what_is_left_of_both_budgets() {
        assert_eq!(B.map_room(None, 0, 0), 1000);
        assert_eq!(B.map_room(None, 400, 400), 600);
        assert_eq!(B.map_room(None, 0, 1200), 300);
        assert_eq!(B.map_room(Some(100), 40, 40), 60);
        // A request cannot raise the agent's per-program budget.
        assert_eq!(B.map_room(Some(5000), 0, 0), 1000);
        // Over budget already: no room, no underflow.
        assert_eq!(B.map_room(None, 2000, 2000), 0);
    }
}
