//! The node's BPF log ring (`bpfleet_log.h`) as the agent reads it: opened
//! from its pin, drained in a loop that hands every record to the caller
//! and asks it after each wait whether to go on. Which records mean what is
//! decided above ([`crate::bpflog`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use libbpf_rs::{MapCore, MapHandle, MapType, RingBufferBuilder};

use crate::error::{Error, Result};

/// Most records handed on between two calls of `again`: a ring that
/// keeps filling still gives the caller its turn (to flush, to stop).
const BATCH: usize = 1024;

/// The log ring opened from its pin.
#[derive(Debug)]
pub struct LogRing {
    map: MapHandle,
    id: u32,
}

impl LogRing {
    /// Opens the ring pinned at `pin`; refuses a map of another type.
    pub fn open(pin: &Path) -> Result<Self> {
        let map = MapHandle::from_pinned_path(pin)
            .map_err(|e| Error::kernel(format!("opening the log ring {}", pin.display()), e))?;
        if map.map_type() != MapType::RingBuf {
            return Err(Error::Precondition(format!(
                "{} is a {:?}, not the node's log ring",
                pin.display(),
                map.map_type()
            )));
        }
        let id = map
            .info()
            .map(|i| i.info.id)
            .map_err(|e| Error::kernel(format!("reading map info of {}", pin.display()), e))?;
        Ok(Self { map, id })
    }

    /// The ring's kernel map id (a ring made again at the same pin has
    /// another).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Reads until `stop` is set or `again` says no: waits at most `poll`
    /// for records, hands each to `f` (at most [`BATCH`] per turn), then
    /// calls `again`.
    pub fn run(
        &self,
        stop: &AtomicBool,
        poll: Duration,
        mut f: impl FnMut(&[u8]),
        mut again: impl FnMut() -> bool,
    ) -> Result<()> {
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&self.map, |raw: &[u8]| {
                f(raw);
                0
            })
            .map_err(|e| Error::kernel("opening the log ring for reading", e))?;
        let rb = builder
            .build()
            .map_err(|e| Error::kernel("opening the log ring for reading", e))?;
        let timeout_ms = i32::try_from(poll.as_millis()).unwrap_or(i32::MAX);
        while !stop.load(Ordering::Relaxed) {
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
                    return Err(Error::io("waiting for the log ring", e));
                }
            }
            let n = rb.consume_raw_n(BATCH);
            if n < 0 {
                return Err(Error::io(
                    "reading the log ring",
                    std::io::Error::from_raw_os_error(-n),
                ));
            }
            if !again() {
                break;
            }
        }
        Ok(())
    }
}

/// Kernel id of the map pinned at `pin`, None when there is none.
pub fn pinned_id(pin: &Path) -> Option<u32> {
    super::pinned_map_id(pin).ok()
}
