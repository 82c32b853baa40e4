//! Pinned maps as the agent reads and writes them outside a load: the
//! config map (List's view, UpdateConfig's writes, the policy stamp), the
//! per-revision error counter, dispatcher-independent map memory. Owns the
//! libbpf map handle ([`PinnedMap`]); what to write is decided above.

use std::path::Path;

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use crate::error::{Error, Result};

/// The layout of a map, as checks above the kernel boundary need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapShape {
    /// The kernel's map type, as a name for messages (`Hash`, `Array`...).
    pub kind: String,
    /// Whether entries can be deleted (hash and LRU hash maps).
    pub is_hash: bool,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Most entries.
    pub max_entries: u32,
}

/// A map opened from its pin.
#[derive(Debug)]
pub struct PinnedMap(MapHandle);

impl PinnedMap {
    /// Opens the map pinned at `pin`.
    pub fn open(pin: &Path) -> Result<Self> {
        MapHandle::from_pinned_path(pin)
            .map(Self)
            .map_err(|e| Error::kernel(format!("opening {}", pin.display()), e))
    }

    /// Its layout.
    pub fn shape(&self) -> MapShape {
        let t = self.0.map_type();
        MapShape {
            kind: format!("{t:?}"),
            is_hash: matches!(t, MapType::Hash | MapType::LruHash),
            key_size: self.0.key_size(),
            value_size: self.0.value_size(),
            max_entries: self.0.max_entries(),
        }
    }

    /// Kernel memlock of the map.
    pub fn memory(&self) -> u64 {
        self.0
            .query_fdinfo()
            .ok()
            .and_then(|i| i.memlock)
            .unwrap_or(0)
    }

    /// Sum of the u64 values of all CPUs for key 0 of a per-CPU counter map.
    pub fn percpu_sum(&self) -> u64 {
        self.percpu_sum_at(0).unwrap_or(0)
    }

    /// The sum over CPUs of the u64 under `key` of a per-CPU array;
    /// `None` when the map has no such key (an older, smaller layout).
    pub fn percpu_sum_at(&self, key: u32) -> Option<u64> {
        self.0
            .lookup_percpu(&key.to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()
            .map(|vals| {
                vals.iter()
                    .filter_map(|v| {
                        v.get(..8)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_ne_bytes)
                    })
                    .fold(0u64, u64::saturating_add)
            })
    }

    /// The value under `key`, if any.
    pub fn lookup(&self, key: &[u8], what: &str) -> Result<Option<Vec<u8>>> {
        self.0
            .lookup(key, MapFlags::ANY)
            .map_err(|e| Error::kernel(what, e))
    }

    /// Writes one entry (creating or replacing it).
    pub fn update(&self, key: &[u8], value: &[u8], what: &str) -> Result<()> {
        self.0
            .update(key, value, MapFlags::ANY)
            .map_err(|e| Error::kernel(what, e))
    }

    /// Every key in the map now.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        self.0.keys().collect()
    }

    /// Deletes `key`; a key already gone (deleted meanwhile by someone
    /// else) is not an error.
    pub fn delete(&self, key: &[u8], what: &str) -> Result<()> {
        match self.0.delete(key) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::kernel(what, e)),
        }
    }
}

/// Memory of the map pinned at `pin` (0 when it cannot be opened).
pub fn pinned_memory(pin: &Path) -> u64 {
    PinnedMap::open(pin).map_or(0, |m| m.memory())
}

/// Writes one u64 slot of a u32 -> u64 map pinned at `pin`.
pub fn write_u64(pin: &Path, slot: u32, value: u64) -> Result<()> {
    PinnedMap::open(pin)?.update(
        &slot.to_ne_bytes(),
        &value.to_ne_bytes(),
        &format!("writing {}", pin.display()),
    )
}

/// Reads one u64 slot of a u32 -> u64 map pinned at `pin` (None when the
/// map cannot be read or the slot is empty).
pub fn read_u64(pin: &Path, slot: u32) -> Option<u64> {
    let m = PinnedMap::open(pin).ok()?;
    let v = m.lookup(&slot.to_ne_bytes(), "reading").ok()??;
    <[u8; 8]>::try_from(v.get(..8)?)
        .ok()
        .map(u64::from_ne_bytes)
}

/// `bpfleet_config` as it holds now (every slot), for List.
pub fn read_config(pin: &Path) -> Result<Vec<u64>> {
    let h = PinnedMap::open(pin)?;
    let shape = h.shape();
    if shape.key_size != 4 || shape.value_size != 8 {
        return Err(Error::Invalid(format!(
            "{} takes {}-byte keys and {}-byte values, not the u32 -> u64 of bpfleet_gate.h",
            pin.display(),
            shape.key_size,
            shape.value_size
        )));
    }
    let what = format!("reading {}", pin.display());
    (0..shape.max_entries)
        .map(|i| {
            let v = h.lookup(&i.to_ne_bytes(), &what)?;
            Ok(v.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map_or(0, u64::from_ne_bytes))
        })
        .collect()
}
