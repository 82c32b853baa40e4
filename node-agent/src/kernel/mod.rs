//! The agent's one kernel boundary: every libbpf-rs, libbpf-sys and libc
//! call of the crate lives below this module (the binary's `main.rs` only
//! sets up signals through tokio). One file per mechanism:
//!
//! - [`layout`]: where the agent pins what (pure path arithmetic, no calls);
//! - [`load`] and [`verifier`]: opening, checking and loading an object
//!   with its pins ([`ObjectLoad`]), and the verifier log of a refusal;
//! - [`helpers`]: BPF helpers by name and id, and the refusal of programs
//!   calling a helper denied on this node (`--deny-helper`);
//! - [`btf`]: the BTF shapes of map keys and values, of an object and of a
//!   pinned map, for the persistent-map check;
//! - [`dispatch`]: dispatcher programs, their one-slot program arrays
//!   ([`Slot`]) and attaching them to their hooks;
//! - [`link`]: switchable links and `bpf_link_update`;
//! - [`object`]: pin/get of any BPF object, program figures, BPF stats;
//! - [`maps`]: pinned map handles ([`PinnedMap`]): reads, writes, memory;
//! - [`logring`]: the node's BPF log ring, read from its pin;
//! - [`bpffs`]: mounting and recognising the BPF filesystem;
//! - [`probe`] and [`caps`]: what this kernel supports and which
//!   capabilities the process holds or drops;
//! - [`sys`]: plain syscalls (uname, the monotonic clock, interfaces,
//!   network namespaces).
//!
//! No bookkeeping lives here: the agent decides what to do, this module does
//! it. libbpf and OS errors are turned into the crate's [`Error`] here, so
//! nothing above sees a libbpf type.

pub mod bpffs;
pub mod btf;
pub mod caps;
pub mod dispatch;
pub mod helpers;
pub mod layout;
pub mod link;
pub mod load;
pub mod logring;
pub mod maps;
pub mod object;
pub mod probe;
pub mod sys;
pub mod verifier;

pub use bpffs::{ensure_bpffs, is_bpffs};
pub use dispatch::Slot;
pub use layout::{
    CONFIG_MAP, DISPLACED_PREFIX, DispatcherPins, ERRORS_MAP, LOG_DROPS_MAP, LOG_MAP, LOG_SECTION,
    PORTS_MAP, REVISION_SECTION, SHARED_MAPS, dispatcher_pin, displaced_map_pin, entry_keys,
    hook_of, log_ring_pin, shared_link_key, shared_link_pin, shared_map_pin, slot_pin,
};
pub use link::{create_shared_link, link_ids, link_update};
pub use load::{Loaded, ObjectLoad, Recreated, load, program_tags};
pub use maps::PinnedMap;
pub use object::{
    ProgFigures, enable_stats, obj_get, obj_pin, pinned_map_id, prog_figures, prog_map_ids,
};

/// Installs the libbpf log hook (once per process; see [`verifier`]).
pub fn install_libbpf_log() {
    verifier::install_libbpf_log();
}
