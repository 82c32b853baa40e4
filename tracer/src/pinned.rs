//! The tracer's shared maps as the node agent pins them: the ring buffer
//! (`http_events`) and the lost-events counter (`http_lost`), opened by
//! path so a reader outlives revision switches (the maps are persistent,
//! shared by every revision of the program).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use libbpf_rs::{MapCore, MapHandle};

use crate::{Result, bpf};

/// Name of the ring buffer map in the tracer object.
pub const EVENTS_MAP: &str = "http_events";
/// Name of the per-CPU lost-events counter in the tracer object.
pub const LOST_MAP: &str = "http_lost";

/// The pinned ring buffer and lost counter of one tracer program.
#[derive(Debug)]
pub struct Pinned {
    events: MapHandle,
    lost: MapHandle,
    events_pin: PathBuf,
}

impl Pinned {
    /// Opens the two pins.
    pub fn open(events_pin: &Path, lost_pin: &Path) -> Result<Self> {
        let events = MapHandle::from_pinned_path(events_pin)
            .map_err(bpf(format!("opening {}", events_pin.display())))?;
        let lost = MapHandle::from_pinned_path(lost_pin)
            .map_err(bpf(format!("opening {}", lost_pin.display())))?;
        Ok(Self {
            events,
            lost,
            events_pin: events_pin.to_path_buf(),
        })
    }

    /// Events the kernel side dropped because the ring buffer was full.
    pub fn lost(&self) -> Result<u64> {
        lost_sum(&self.lost)
    }

    /// Reads the ring buffer until `stop` is set or the ring buffer's pin
    /// disappears (the program was unloaded), handing each record to `f`
    /// and calling `tick` after every poll (at least every `poll`).
    pub fn run(
        &self,
        stop: &AtomicBool,
        poll: Duration,
        f: impl FnMut(&[u8]),
        mut tick: impl FnMut(),
    ) -> Result<()> {
        let pin = &self.events_pin;
        read_ring(
            &self.events,
            poll,
            || {
                tick();
                !stop.load(Ordering::Relaxed) && pin.exists()
            },
            f,
        )
    }
}

/// Sum of a per-CPU u64 counter at key 0.
pub(crate) fn lost_sum(map: &dyn MapCore) -> Result<u64> {
    let per_cpu = map
        .lookup_percpu(&0u32.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
        .map_err(bpf("reading http_lost"))?
        .unwrap_or_default();
    Ok(per_cpu
        .iter()
        .filter_map(|v| v.get(..8))
        .map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_ne_bytes(a)
        })
        .sum())
}

/// The one ring-buffer read loop: polls at most `poll`, drains what is
/// there on every tick as well (the kernel side wakes the reader only when
/// the backlog crosses a threshold, so a poll that timed out reports
/// nothing), and stops when `again` says so.
pub(crate) fn read_ring(
    map: &dyn MapCore,
    poll: Duration,
    mut again: impl FnMut() -> bool,
    mut f: impl FnMut(&[u8]),
) -> Result<()> {
    let mut builder = libbpf_rs::RingBufferBuilder::new();
    builder
        .add(map, |raw: &[u8]| {
            f(raw);
            0
        })
        .map_err(bpf("opening the ring buffer"))?;
    let rb = builder.build().map_err(bpf("opening the ring buffer"))?;
    loop {
        rb.poll(poll).map_err(bpf("polling the ring buffer"))?;
        rb.consume().map_err(bpf("reading the ring buffer"))?;
        if !again() {
            return Ok(());
        }
    }
}
