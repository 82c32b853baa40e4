//! Every answer the agent gives about what it holds: List (programs,
//! revisions, links, pins, config), Stats (kernel run figures, dispatched
//! runs, map memory, program errors), Health, NodeInfo, and the
//! [`ProgramView`]s published to the HTTP tracer. The only place that
//! builds these; it reads the kernel's figures through [`crate::kernel`]
//! and changes nothing.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use bpfleet_proto::v1::{
    self as pb, LinkInfo, NodeInfoResponse, ProgramEntry, RevisionState as PbState, SwitchMethod,
};

use super::Agent;
use super::switch::since_settled;
use crate::error::{Error, Result};
use crate::hooks::{self, switch_method};
use crate::kernel::{self, CONFIG_MAP, ERRORS_MAP, PinnedMap, Slot, hook_of};

/// A program as [`Agent::program_views`] shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgramView {
    pub program: String,
    /// Shared map name -> pin.
    pub shared_maps: BTreeMap<String, PathBuf>,
    /// Revision -> revision token.
    pub revisions: BTreeMap<String, u64>,
    pub active: Option<String>,
    /// The namespace filter (empty: none).
    pub namespaces: Vec<String>,
    /// The tracer rules UpdateConfig set (None: the agent's own).
    pub tracer_rules: Option<crate::http::rules::PolicyRules>,
    /// The alert rules UpdateConfig set (empty: none).
    pub alerts: Vec<crate::alerts::PolicyAlert>,
}

impl Agent {
    pub(super) fn revision_info(&self, program: &str, revision: &str) -> Result<pb::RevisionInfo> {
        let p = self
            .state
            .programs
            .get(program)
            .ok_or_else(|| Error::NotFound(format!("program {program}")))?;
        let r = p
            .revisions
            .get(revision)
            .ok_or_else(|| Error::NotFound(format!("revision {program}/{revision}")))?;
        let rt = self.rt.get(program);
        let mut prog_ids = Vec::new();
        for bp in r.progs.keys() {
            if let Some(fd) = rt.and_then(|rt| rt.progs.get(&(revision.to_string(), bp.clone())))
                && let Ok(f) = kernel::prog_figures(fd.as_fd())
            {
                prog_ids.push(f.id);
            }
        }
        let mut links = Vec::new();
        for (e, key) in r.entries.iter().zip(kernel::entry_keys(&r.entries)) {
            let method = switch_method(hook_of(e));
            let pin = p.shared_links.get(&key).map(|l| l.pin.clone());
            let (link_id, mut prog_id) = pin
                .as_ref()
                .and_then(|pin| kernel::obj_get(pin).ok())
                .and_then(|fd| kernel::link_ids(fd.as_fd()).ok())
                .unwrap_or_default();
            if method == SwitchMethod::Dispatch {
                // The dispatcher runs what is in its slot.
                prog_id = rt
                    .and_then(|rt| rt.slots.get(&key))
                    .and_then(Slot::prog_id)
                    .unwrap_or(0);
            }
            links.push(LinkInfo {
                entry: key,
                hook: e.hook,
                target: e.target.clone(),
                switch_method: method as i32,
                pin: pin.map(|p| p.display().to_string()).unwrap_or_default(),
                link_id,
                prog_id,
            });
        }
        let pins = r
            .progs
            .values()
            .chain(r.maps.values())
            .map(|p| p.display().to_string())
            .collect();
        let state = if r.orphaned {
            PbState::Orphaned
        } else if p.active.as_deref() == Some(revision) {
            PbState::Active
        } else {
            PbState::Inactive
        };
        Ok(pb::RevisionInfo {
            program: program.to_string(),
            revision: revision.to_string(),
            state: state as i32,
            sha256: r.sha256.clone(),
            revision_token: r.token,
            prog_ids,
            pins,
            links,
            entries: r
                .entries
                .iter()
                .map(|e| ProgramEntry {
                    bpf_program: e.bpf_program.clone(),
                    hook: e.hook,
                    target: e.target.clone(),
                    pid: e.pid,
                })
                .collect(),
            loaded_at_unix_ms: r.loaded_at_unix_ms,
            load_nanos: r.load_nanos,
        })
    }

    /// Programs, revisions, links and pins.
    pub fn list(&self, program: &str) -> Result<Vec<pb::ProgramInfo>> {
        let mut out = Vec::new();
        for (name, p) in &self.state.programs {
            if !program.is_empty() && name != program {
                continue;
            }
            let mut revisions = Vec::new();
            for r in p.revisions.keys() {
                revisions.push(self.revision_info(name, r)?);
            }
            let shared_pins = p
                .shared_maps
                .values()
                .chain(p.shared_links.values().map(|l| &l.pin))
                .chain(
                    p.shared_links
                        .values()
                        .flat_map(|l| l.slot.iter().chain(&l.dispatcher)),
                )
                .map(|p| p.display().to_string())
                .collect();
            out.push(pb::ProgramInfo {
                program: name.clone(),
                active_revision: p.active.clone().unwrap_or_default(),
                revisions,
                shared_pins,
                persistent_maps: p.persistent_maps.clone(),
                config: p
                    .shared_maps
                    .get(CONFIG_MAP)
                    .map(|pin| kernel::maps::read_config(pin))
                    .transpose()?
                    .unwrap_or_default(),
                namespaces: p.namespaces.clone(),
                tracer_rules: p.tracer_rules.as_ref().map(|r| r.to_pb()),
                tracer_rules_overridden: p.tracer_rules.is_some() && self.cfg.tracer_rules_file,
                cpu_budget: self.cpu_budget_status(p),
                firing_alerts: self
                    .alerts
                    .firing(name)
                    .iter()
                    .map(crate::alerts::Firing::to_pb)
                    .collect(),
            });
        }
        if !program.is_empty() && out.is_empty() {
            return Err(Error::NotFound(format!("program {program}")));
        }
        Ok(out)
    }

    /// Kernel statistics per revision, and the node's figures from `/proc`.
    pub fn stats(&self, program: &str) -> Result<pb::StatsResponse> {
        if !program.is_empty() && !self.state.programs.contains_key(program) {
            return Err(Error::NotFound(format!("program {program}")));
        }
        let mut revisions = Vec::new();
        for (name, p) in &self.state.programs {
            if !program.is_empty() && name != program {
                continue;
            }
            let rt = self.rt.get(name);
            // The node's log ring is the agent's, not the program's.
            let shared_bytes: u64 = p
                .shared_maps
                .iter()
                .filter(|(m, _)| *m != kernel::LOG_MAP)
                .map(|(_, pin)| kernel::maps::pinned_memory(pin))
                .sum();
            for (rname, r) in &p.revisions {
                let mut rs = pb::RevisionStats {
                    program: name.clone(),
                    revision: rname.clone(),
                    active: p.active.as_deref() == Some(rname.as_str()),
                    load_nanos: r.load_nanos,
                    ..Default::default()
                };
                // Programs behind a dispatcher: what it ran for them.
                let mut dispatched = r.dispatched.clone();
                if rs.active
                    && let Some(rt) = rt
                {
                    for (e, key) in r.entries.iter().zip(kernel::entry_keys(&r.entries)) {
                        if let Some(l) = p.shared_links.get(&key).filter(|l| l.slot.is_some()) {
                            let open = since_settled(rt, l, &key);
                            let acc = dispatched.entry(e.bpf_program.clone()).or_default();
                            acc.runs += open.runs;
                            acc.run_ns += open.run_ns;
                        }
                    }
                }
                for bp in r.progs.keys() {
                    if let Some(fd) = rt.and_then(|rt| rt.progs.get(&(rname.clone(), bp.clone())))
                        && let Ok(f) = kernel::prog_figures(fd.as_fd())
                    {
                        let d = dispatched.get(bp).copied().unwrap_or_default();
                        let run_cnt = f.run_cnt + d.runs;
                        let run_time_ns = f.run_time_ns + d.run_ns;
                        rs.run_cnt += run_cnt;
                        rs.run_time_ns += run_time_ns;
                        rs.progs.push(pb::ProgStats {
                            bpf_program: bp.clone(),
                            prog_id: f.id,
                            run_cnt,
                            run_time_ns,
                            recursion_misses: f.recursion_misses,
                        });
                    }
                }
                let mut own = 0;
                for (m, pin) in &r.maps {
                    if let Ok(h) = PinnedMap::open(pin) {
                        own += h.memory();
                        if m == ERRORS_MAP {
                            rs.program_errors = h.percpu_sum();
                            rs.events_lost = h.percpu_sum_at(1);
                        }
                    }
                }
                rs.map_memory_bytes = own + if rs.active { shared_bytes } else { 0 };
                revisions.push(rs);
            }
        }
        Ok(pb::StatsResponse {
            revisions,
            stats_enabled: self.stats_fd.is_some(),
            // Node-wide, whatever `program` asked for: read now, so two
            // answers bracket the operator's sample window.
            node: crate::procfs::read_node_figures(),
        })
    }

    /// Each program's cumulative run figures now, summed over its
    /// revisions as [`Agent::stats`] reports them (dispatched runs
    /// included): what [`super::usage::Usage`] samples.
    pub fn program_totals(&self) -> Vec<(String, super::usage::Totals)> {
        let Ok(stats) = self.stats("") else {
            return Vec::new();
        };
        let mut out: BTreeMap<String, super::usage::Totals> = BTreeMap::new();
        for name in self.state.programs.keys() {
            out.insert(
                name.clone(),
                super::usage::Totals {
                    lost: Some(0),
                    ..Default::default()
                },
            );
        }
        for r in &stats.revisions {
            let t = out.entry(r.program.clone()).or_default();
            t.run_ns = t.run_ns.saturating_add(r.run_time_ns);
            t.runs = t.runs.saturating_add(r.run_cnt);
            t.errors = t.errors.saturating_add(r.program_errors);
            t.lost = match (t.lost, r.events_lost) {
                (Some(a), Some(b)) => Some(a.saturating_add(b)),
                _ => None,
            };
        }
        out.into_iter().collect()
    }

    /// Every (program, revision) the agent holds, orphans included (the
    /// program views leave them out: their tokens are unknown, but their
    /// log origin is computed from the names).
    pub fn log_names(&self) -> Vec<(String, String)> {
        self.state
            .programs
            .iter()
            .flat_map(|(p, ps)| ps.revisions.keys().map(|r| (p.clone(), r.clone())))
            .collect()
    }

    /// Log records each revision's programs dropped in the kernel
    /// (`bpfleet_log_drops`, summed over the CPUs): (program, revision,
    /// rate limited, ring full), for revisions whose object logs.
    pub fn log_drops(&self) -> Vec<(String, String, u64, u64)> {
        let mut out = Vec::new();
        for (name, p) in &self.state.programs {
            for (rname, r) in &p.revisions {
                let Some(pin) = r.maps.get(kernel::LOG_DROPS_MAP) else {
                    continue;
                };
                if let Ok(h) = PinnedMap::open(pin) {
                    out.push((
                        name.clone(),
                        rname.clone(),
                        h.percpu_sum_at(0).unwrap_or(0),
                        h.percpu_sum_at(1).unwrap_or(0),
                    ));
                }
            }
        }
        out
    }

    /// Every program's shared map pins, revisions with their gate tokens,
    /// and active revision: what runtimes reading shared maps (the HTTP
    /// tracer's ring buffer) need, without kernel calls.
    pub fn program_views(&self) -> Vec<ProgramView> {
        self.state
            .programs
            .keys()
            .filter_map(|name| self.program_view(name))
            .collect()
    }

    /// What the HTTP tracer is told of one program; None when it is gone.
    pub fn program_view(&self, program: &str) -> Option<ProgramView> {
        let p = self.state.programs.get(program)?;
        Some(ProgramView {
            program: program.to_string(),
            shared_maps: p.shared_maps.clone(),
            revisions: p
                .revisions
                .iter()
                .filter(|(_, r)| !r.orphaned)
                .map(|(n, r)| (n.clone(), r.token))
                .collect(),
            active: p.active.clone(),
            namespaces: p.namespaces.clone(),
            tracer_rules: p.tracer_rules.clone(),
            alerts: p.alerts.clone(),
        })
    }

    /// Health of the agent.
    pub fn health(&self) -> pb::HealthResponse {
        let mut problems = self.problems.clone();
        if !kernel::is_bpffs(&self.cfg.pin_root) {
            problems.push(format!(
                "pin root {} is not on bpffs",
                self.cfg.pin_root.display()
            ));
        }
        pb::HealthResponse {
            ok: problems.is_empty(),
            pin_root: self.cfg.pin_root.display().to_string(),
            programs: self.state.programs.len() as u32,
            revisions: self
                .state
                .programs
                .values()
                .map(|p| p.revisions.len() as u32)
                .sum(),
            problems,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// What this node offers.
    pub fn node_info(&self) -> NodeInfoResponse {
        let eff = kernel::caps::effective();
        let mut have = Vec::new();
        let mut missing = Vec::new();
        for c in [
            hooks::caps::BPF,
            hooks::caps::PERFMON,
            hooks::caps::NET_ADMIN,
            hooks::caps::SYS_ADMIN,
            hooks::caps::SYS_RESOURCE,
        ] {
            if eff & (1u64 << c) != 0 {
                have.push(hooks::caps::name(c).to_string());
            } else {
                missing.push(hooks::caps::name(c).to_string());
            }
        }
        NodeInfoResponse {
            node_name: self.cfg.node_name.clone(),
            kernel_release: kernel::sys::kernel_release(),
            btf_present: Path::new("/sys/kernel/btf/vmlinux").exists(),
            bpffs_mounted: kernel::is_bpffs(&self.cfg.pin_root),
            hooks: self.support.rows(),
            capabilities: have,
            missing_capabilities: missing,
        }
    }
}
