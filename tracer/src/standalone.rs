//! Loads and attaches the tracer object without the node agent, for tests
//! and benchmarks. Nothing is pinned: dropping [`Standalone`] detaches and
//! unloads every program.

use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use libbpf_rs::{Link, MapCore, MapFlags, Object, ObjectBuilder};

use crate::{Error, Result, bpf};

/// Where libbpf looks tracepoint ids up.
const TRACEFS_EVENTS: &str = "/sys/kernel/tracing/events";

/// The loaded tracer with all its programs attached.
pub struct Standalone {
    // Links before the object: detach, then unload.
    links: Vec<Link>,
    obj: Object,
}

impl Standalone {
    /// Loads the tracer, writes `config` (slot, value) into `bpfleet_config`
    /// and `ports` into the port filter, then attaches every program.
    pub fn load(config: &[(u32, u64)], ports: &[u16]) -> Result<Self> {
        if !std::path::Path::new(TRACEFS_EVENTS).is_dir() {
            return Err(Error::NoTracefs);
        }
        let open = ObjectBuilder::default()
            .open_memory(bpfleet_bpf::HTTP_TRACER)
            .map_err(bpf("opening the tracer object"))?;
        let obj = open.load().map_err(bpf("loading the tracer"))?;
        let this = Self {
            links: Vec::new(),
            obj,
        };
        for (slot, value) in config {
            this.update("bpfleet_config", &slot.to_ne_bytes(), &value.to_ne_bytes())?;
        }
        for port in ports {
            this.update("bpfleet_ports", &port.to_ne_bytes(), &[1])?;
        }
        let mut links = Vec::new();
        for prog in this.obj.progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            links.push(prog.attach().map_err(bpf(format!("attaching {name}")))?);
        }
        Ok(Self { links, ..this })
    }

    fn map(&self, name: &'static str) -> Result<libbpf_rs::Map<'_>> {
        self.obj
            .maps()
            .find(|m| m.name() == name)
            .ok_or(Error::MissingMap(name))
    }

    /// Writes one entry of one of the tracer's maps (its config map, the
    /// policy's `bpfleet_pids` and `bpfleet_ports`), while it runs.
    pub fn update(&self, map: &'static str, key: &[u8], value: &[u8]) -> Result<()> {
        self.map(map)?
            .update(key, value, MapFlags::ANY)
            .map_err(bpf(format!("writing {map}")))
    }

    /// Events dropped because the ring buffer was full, summed over CPUs.
    pub fn lost(&self) -> Result<u64> {
        crate::pinned::lost_sum(&self.map("http_lost")?)
    }

    /// Metrics mode's counts, to read while it runs.
    pub fn aggregates(&self) -> Result<crate::pinned::Aggregates> {
        crate::pinned::Aggregates::from_map(&self.map(crate::pinned::AGGS_MAP)?)
    }

    /// Number of attached programs.
    pub fn programs(&self) -> usize {
        self.links.len()
    }

    /// Drains the ring buffer once, handing each record to `f`, waiting at
    /// most `timeout` for the first one.
    pub fn drain(&self, timeout: Duration, f: impl FnMut(&[u8])) -> Result<()> {
        self.read(timeout, || false, f)
    }

    /// Reads the ring buffer until `stop` is set, handing each record to
    /// `f`; polls every `poll` so it notices `stop` and batched records.
    pub fn run_reader(
        &self,
        stop: &AtomicBool,
        poll: Duration,
        f: impl FnMut(&[u8]),
    ) -> Result<()> {
        self.read(poll, || !stop.load(Ordering::Relaxed), f)
    }

    fn read(
        &self,
        poll: Duration,
        again: impl FnMut() -> bool,
        f: impl FnMut(&[u8]),
    ) -> Result<()> {
        crate::pinned::read_ring(&self.map("http_events")?, poll, || true, again, f)
    }

    /// Total (run_cnt, run_time_ns) of all tracer programs; run time is only
    /// counted while BPF stats are enabled (see [`enable_stats`]).
    pub fn run_stats(&self) -> (u64, u64) {
        let mut cnt = 0;
        let mut ns = 0;
        for prog in self.obj.progs() {
            let mut info = libbpf_sys::bpf_prog_info::default();
            let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
            // SAFETY: the fd is a live program fd owned by `self.obj`; info
            // and len point to a correctly sized, writable bpf_prog_info.
            let rc = unsafe {
                libbpf_sys::bpf_prog_get_info_by_fd(prog.as_fd().as_raw_fd(), &mut info, &mut len)
            };
            if rc == 0 {
                cnt += info.run_cnt;
                ns += info.run_time_ns;
            }
        }
        (cnt, ns)
    }
}

/// Turns on kernel BPF run-time accounting (`BPF_ENABLE_STATS`) for as long
/// as the returned fd is open.
pub fn enable_stats() -> Result<std::os::fd::OwnedFd> {
    // SAFETY: plain syscall wrapper; a non-negative return is a new fd we own.
    let fd = unsafe { libbpf_sys::bpf_enable_stats(libbpf_sys::BPF_STATS_RUN_TIME) };
    if fd < 0 {
        return Err(Error::Bpf {
            what: "enabling BPF stats".into(),
            source: libbpf_rs::Error::from_raw_os_error(-fd),
        });
    }
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}
