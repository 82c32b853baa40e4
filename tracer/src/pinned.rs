//! The tracer's shared maps as the node agent pins them: the ring buffer
//! (`http_events`), the lost-events counter (`http_lost`) and metrics
//! mode's counts (`http_aggs`), opened by
//! path so a reader outlives revision switches (the maps are persistent,
//! shared by every revision of the program).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use libbpf_rs::{MapCore, MapHandle};

use crate::aggregate::{AggKey, Counts};
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
    /// and calling `tick` after every poll (at least every `poll`) and
    /// every [`BATCH`] records.
    pub fn run(
        &self,
        stop: &AtomicBool,
        poll: Duration,
        f: impl FnMut(&[u8]),
        tick: impl FnMut(),
    ) -> Result<()> {
        let pin = &self.events_pin;
        let tick = std::cell::RefCell::new(tick);
        read_ring(
            &self.events,
            poll,
            || {
                (tick.borrow_mut())();
                !stop.load(Ordering::Relaxed)
            },
            || {
                (tick.borrow_mut())();
                !stop.load(Ordering::Relaxed) && pin.exists()
            },
            f,
        )
    }
}

/// Name of metrics mode's counts in the tracer object.
pub const AGGS_MAP: &str = "http_aggs";
/// The path keys the kernel announced (`http_paths`).
pub const PATHS_MAP: &str = "http_paths";

/// Forgets every path key the kernel announced (`http_paths`), so that
/// each is announced again on its next request: a reader that starts on a
/// program already loaded (an agent restart) has no names for the keys
/// announced to the one before it. The kernel caches "announced" per
/// socket only together with the paths epoch (config slot
/// [`crate::event::config::PATHS_EPOCH`]), which the caller changes after
/// this. The number of keys removed.
pub fn forget_paths(pin: &Path) -> Result<usize> {
    let map =
        MapHandle::from_pinned_path(pin).map_err(bpf(format!("opening {}", pin.display())))?;
    let keys: Vec<Vec<u8>> = map.keys().collect();
    let mut n = 0;
    for k in keys {
        match map.delete(&k) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
            Err(e) => return Err(bpf("deleting from http_paths")(e)),
        }
    }
    Ok(n)
}

/// Metrics mode's counts (`http_aggs`), opened by path like the ring
/// buffer.
#[derive(Debug)]
pub struct Aggregates {
    map: MapHandle,
}

impl Aggregates {
    pub fn open(pin: &Path) -> Result<Self> {
        let map =
            MapHandle::from_pinned_path(pin).map_err(bpf(format!("opening {}", pin.display())))?;
        Ok(Self { map })
    }

    /// Wraps a map the caller opened (the standalone loader's).
    pub fn from_map(map: &libbpf_rs::Map<'_>) -> Result<Self> {
        let map = MapHandle::try_from(map).map_err(bpf("duplicating http_aggs"))?;
        Ok(Self { map })
    }

    /// The map's kernel id (unique while the map exists).
    pub fn map_id(&self) -> Result<u32> {
        use libbpf_rs::MapCore;
        Ok(self
            .map
            .info()
            .map_err(bpf("reading http_aggs' id"))?
            .info
            .id)
    }

    /// Every entry with its counts summed over the CPUs. Entries whose
    /// key or value does not decode are skipped (a foreign object).
    pub fn read(&self) -> Result<Vec<(AggKey, Counts)>> {
        let mut out = Vec::new();
        for raw in self.map.keys() {
            let Ok(key) = AggKey::decode(&raw) else {
                continue;
            };
            let Some(per_cpu) = self
                .map
                .lookup_percpu(&raw, libbpf_rs::MapFlags::ANY)
                .map_err(bpf("reading http_aggs"))?
            else {
                continue; // deleted since the key was listed
            };
            let mut sum = Counts::default();
            for v in per_cpu {
                if let Ok(c) = Counts::decode(&v) {
                    sum.add(&c);
                }
            }
            out.push((key, sum));
        }
        Ok(out)
    }

    /// Deletes an entry (of a process that exited, once its last counts
    /// were taken).
    pub fn delete(&self, key: &AggKey) -> Result<()> {
        match self.map.delete(&key.raw) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(bpf("deleting from http_aggs")(e)),
        }
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

/// Records handled between two calls of the batch callback: bounds what a
/// reader holds before handing it on, and how long it goes without
/// checking whether to stop, however fast the kernel side produces.
pub const BATCH: usize = 4096;

/// The one ring-buffer read loop: waits at most `poll` for a wake-up (the
/// kernel side wakes the reader only when the backlog crosses a threshold,
/// so the wait is mostly a timer), then drains in batches of [`BATCH`]
/// records, calling `batch` after each full one (stop draining when it
/// says so), and `again` once drained. libbpf's own poll and consume keep
/// going while the producer keeps producing, which under sustained load
/// never returns; this loop always does.
pub(crate) fn read_ring(
    map: &dyn MapCore,
    poll: Duration,
    mut batch: impl FnMut() -> bool,
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
    let timeout_ms = i32::try_from(poll.as_millis()).unwrap_or(i32::MAX);
    loop {
        let mut pfd = libc::pollfd {
            fd: rb.epoll_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the epoll fd lives as long as `rb`.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(crate::Error::Bpf {
                    what: "waiting for the ring buffer".into(),
                    source: libbpf_rs::Error::from(e),
                });
            }
        }
        loop {
            let n = rb.consume_raw_n(BATCH);
            if n < 0 {
                return Err(crate::Error::Bpf {
                    what: "reading the ring buffer".into(),
                    source: libbpf_rs::Error::from_raw_os_error(-n),
                });
            }
            if (n as usize) < BATCH || !batch() {
                break;
            }
        }
        if !again() {
            return Ok(());
        }
    }
}
