//! UpdateConfig: runtime configuration written into a program's pinned
//! maps without a reload (every instance of the map, every entry checked
//! against every instance before the first is written), and the namespace
//! filter, tracer rules, CPU budget and alert rules kept in the state file
//! (slot 8 while a budget holds a cut: [`super::enforce`]). A changed
//! filter is published with the program views before UpdateConfig returns.

use std::collections::HashSet;
use std::path::PathBuf;

use bpfleet_proto::v1 as pb;

use super::Agent;
use super::request::{self, ConfigCmd, config_map_name};
use crate::error::{Error, Result};
use crate::fault;
use crate::kernel::PinnedMap;
use crate::kernel::maps::MapShape;

impl Agent {
    /// Writes config map entries into every pinned instance of the map,
    /// and sets the namespace filter when the request carries one.
    pub fn update_config(
        &mut self,
        req: &pb::UpdateConfigRequest,
        actor: &str,
    ) -> Result<Vec<String>> {
        let res = request::update_config(req).and_then(|cmd| self.update_config_cmd(&cmd));
        self.publish(&req.program);
        let map = config_map_name(req);
        self.audit_result(
            actor,
            "update_config",
            &req.program,
            "",
            &res,
            |w| {
                let mut line = format!(
                    "map {map}: {} entries into {} maps",
                    req.entries.len(),
                    w.len()
                );
                if let Some(b) = &req.cpu_budget {
                    line.push_str(&format!(
                        "; CPU budget {} % (reduce sampling: {}, policy {})",
                        b.max_cpu_percent, b.reduce_sampling, b.policy
                    ));
                }
                if let Some(n) = &req.namespaces {
                    line.push_str(&format!("; namespace filter [{}]", n.names.join(",")));
                }
                if let Some(r) = &req.tracer_rules {
                    // Counts only: a pattern may hold text nobody should
                    // find in an audit log.
                    line.push_str(&format!(
                        "; tracer rules: {} headers, {} query parameters, {} command-line patterns redacted, {} route patterns",
                        r.redact_headers.len(),
                        r.redact_query_params.len(),
                        r.redact_command_line_patterns.len(),
                        r.route_patterns.len()
                    ));
                }
                if let Some(a) = &req.alerts {
                    let names: Vec<&str> = a.rules.iter().map(|r| r.name.as_str()).collect();
                    line.push_str(&format!("; alerts [{}]", names.join(",")));
                }
                line
            },
        );
        res
    }

    fn update_config_cmd(&mut self, cmd: &ConfigCmd) -> Result<Vec<String>> {
        if !self.state.programs.contains_key(&cmd.program) {
            return Err(Error::NotFound(format!("program {}", cmd.program)));
        }
        // While the program has a CPU budget, slot 8 is the requested
        // sampling: what is written may be the cut in force.
        let (entries, sampling) = self.budget_entries(&cmd.program, &cmd.map, &cmd.entries);
        let written = if cmd.only_namespaces() {
            Vec::new()
        } else {
            self.write_map(&ConfigCmd {
                entries,
                ..cmd.clone()
            })?
        };
        if let Some((requested, in_force)) = sampling {
            self.budget_written(&cmd.program, requested, in_force);
        }
        fault::point("config.after_kernel");
        let mut changed = false;
        if let Some(p) = self.state.programs.get_mut(&cmd.program) {
            if let Some(ns) = &cmd.namespaces
                && p.namespaces != *ns
            {
                p.namespaces = ns.clone();
                changed = true;
            }
            // An empty set of rules puts the agent's own back.
            let rules = cmd
                .tracer_rules
                .as_ref()
                .map(|r| Some(r.clone()).filter(|r| *r != Default::default()));
            if let Some(rules) = rules
                && p.tracer_rules != rules
            {
                p.tracer_rules = rules;
                changed = true;
            }
            if let Some(alerts) = &cmd.alerts
                && p.alerts != *alerts
            {
                p.alerts = alerts.clone();
                changed = true;
            }
        }
        if let Some(spec) = &cmd.cpu_budget {
            changed |= self.set_cpu_budget(&cmd.program, spec.as_ref())?;
        }
        if changed || sampling.is_some() {
            self.save()?;
        }
        fault::point("config.after_state");
        Ok(written)
    }

    /// The map part of UpdateConfig: every entry checked against every
    /// instance of the map before the first is written.
    fn write_map(&self, cmd: &ConfigCmd) -> Result<Vec<String>> {
        let map = cmd.map.as_str();
        let p = self
            .state
            .programs
            .get(&cmd.program)
            .ok_or_else(|| Error::NotFound(format!("program {}", cmd.program)))?;
        let mut pins: Vec<PathBuf> = Vec::new();
        if let Some(pin) = p.shared_maps.get(map) {
            pins.push(pin.clone());
        } else {
            pins.extend(
                p.revisions
                    .values()
                    .filter_map(|r| r.maps.get(map).cloned()),
            );
        }
        if pins.is_empty() {
            return Err(Error::NotFound(format!(
                "program {} has no map named {map}",
                cmd.program
            )));
        }
        let handles: Vec<PinnedMap> = pins
            .iter()
            .map(|pin| PinnedMap::open(pin))
            .collect::<Result<_>>()?;
        for h in &handles {
            check_entries(&h.shape(), cmd)?;
        }
        let writing = format!("writing {map}");
        let clearing = format!("clearing {map}");
        for h in &handles {
            for (k, v) in &cmd.entries {
                h.update(k, v, &writing)?;
            }
            if cmd.replace {
                // The new entries are in before the stale ones go, so a
                // filter never passes through empty.
                let keep: HashSet<&[u8]> = cmd.entries.iter().map(|(k, _)| k.as_slice()).collect();
                for k in h.keys() {
                    if !keep.contains(k.as_slice()) {
                        h.delete(&k, &clearing)?;
                    }
                }
            }
        }
        Ok(pins.iter().map(|p| p.display().to_string()).collect())
    }
}

/// Refuses entries that do not fit a map instance of `shape`, and
/// `replace` on a map whose entries cannot be deleted.
fn check_entries(shape: &MapShape, cmd: &ConfigCmd) -> Result<()> {
    let map = &cmd.map;
    if cmd.replace && !shape.is_hash {
        return Err(Error::Invalid(format!(
            "replace: map {map} is a {} map; only hash maps can be replaced",
            shape.kind
        )));
    }
    for (i, (k, v)) in cmd.entries.iter().enumerate() {
        if k.len() != shape.key_size as usize || v.len() != shape.value_size as usize {
            return Err(Error::Invalid(format!(
                "entry {i}: map {map} takes {}-byte keys and {}-byte values, got {} and {}",
                shape.key_size,
                shape.value_size,
                k.len(),
                v.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn shape(is_hash: bool) -> MapShape {
        MapShape {
            kind: if is_hash { "Hash" } else { "Array" }.into(),
            is_hash,
            key_size: 4,
            value_size: 8,
            max_entries: 16,
        }
    }

    fn cmd(entries: Vec<(Vec<u8>, Vec<u8>)>, replace: bool) -> ConfigCmd {
        ConfigCmd {
            program: "p".into(),
            map: "bpfleet_config".into(),
            entries,
            replace,
            namespaces: None,
            tracer_rules: None,
            cpu_budget: None,
            alerts: None,
        }
    }

    #[test]
    fn entries_must_fit_every_instance() {
        assert!(check_entries(&shape(false), &cmd(vec![(vec![0; 4], vec![0; 8])], false)).is_ok());
        let e = check_entries(
            &shape(false),
            &cmd(
                vec![(vec![0; 4], vec![0; 8]), (vec![0; 4], vec![0; 4])],
                false,
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "entry 1: map bpfleet_config takes 4-byte keys and 8-byte values, got 4 and 4"
            ),
            "{e}"
        );
    }

    #[test]
    fn only_hash_maps_can_be_replaced() {
        assert!(check_entries(&shape(true), &cmd(Vec::new(), true)).is_ok());
        let e = check_entries(&shape(false), &cmd(Vec::new(), true))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a Array map; only hash maps"), "{e}");
    }
}
