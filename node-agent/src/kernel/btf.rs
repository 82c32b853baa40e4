//! The BTF shapes of a map's key and value: from an object about to be
//! loaded, and from a map already pinned (the BTF the kernel kept when the
//! map was created). Turned into `crate::map_layout::Layout`, which holds
//! the comparison.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libbpf_rs::btf::types::{Array, Composite, Int, IntEncoding, MemberAttr};
use libbpf_rs::btf::{Btf, BtfKind, BtfType, HasSize, TypeId};
use libbpf_rs::{AsRawLibbpf, MapCore, MapHandle, OpenObject};

use crate::map_layout::{Field, Layout, MAX_DEPTH};

/// Key and value shapes of one map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapShapes {
    pub key: Layout,
    pub value: Layout,
}

/// The shapes of every map of `open` that has BTF for both key and value
/// (maps declared the old way, without `__type`, have none), by name.
pub fn object_shapes(open: &OpenObject) -> std::collections::BTreeMap<String, MapShapes> {
    let mut out = std::collections::BTreeMap::new();
    // SAFETY: the pointer comes from a live OpenObject borrowed for the
    // whole function; libbpf parsed its BTF at open.
    let Ok(Some(btf)) = Btf::from_bpf_object(unsafe { open.as_libbpf_object().as_ref() }) else {
        return out;
    };
    for m in open.maps() {
        let raw = m.as_libbpf_object().as_ptr();
        // SAFETY: `raw` is a map of the live object; both calls only read it.
        let (key, value) = unsafe {
            (
                libbpf_sys::bpf_map__btf_key_type_id(raw),
                libbpf_sys::bpf_map__btf_value_type_id(raw),
            )
        };
        if let Some(shapes) = shapes_of(&btf, key, value) {
            out.insert(m.name().to_string_lossy().into_owned(), shapes);
        }
    }
    out
}

/// What the object declares of its sampling (`BPFLEET_DECLARE_SAMPLING`
/// in `bpfleet_gate.h`): a global variable `bpfleet_sampling_zero_all`
/// or `bpfleet_sampling_zero_none` in its BTF. None when it declares
/// neither (or has no BTF).
pub fn declared_sampling(open: &OpenObject) -> Option<crate::state::ZeroMeans> {
    use crate::state::ZeroMeans;
    use libbpf_rs::btf::types::Var;
    // SAFETY: as in object_shapes: a live OpenObject whose BTF libbpf
    // parsed at open.
    let btf = Btf::from_bpf_object(unsafe { open.as_libbpf_object().as_ref() }).ok()??;
    if btf
        .type_by_name::<Var<'_>>("bpfleet_sampling_zero_all")
        .is_some()
    {
        Some(ZeroMeans::All)
    } else if btf
        .type_by_name::<Var<'_>>("bpfleet_sampling_zero_none")
        .is_some()
    {
        Some(ZeroMeans::None)
    } else {
        None
    }
}

/// The shapes the kernel recorded for a pinned map, when it was created
/// with BTF. None when it has none or its BTF cannot be read: the caller
/// then compares sizes only.
pub fn pinned_shapes(map: &MapHandle) -> Option<MapShapes> {
    let info = map.info().ok()?.info;
    if info.btf_id == 0 || info.btf_value_type_id == 0 {
        return None;
    }
    let btf = kernel_btf(info.btf_id)?;
    shapes_of(&btf, info.btf_key_type_id, info.btf_value_type_id)
}

fn shapes_of(btf: &Btf<'_>, key: u32, value: u32) -> Option<MapShapes> {
    if key == 0 || value == 0 {
        return None;
    }
    Some(MapShapes {
        key: describe(btf, TypeId::from(key), 0)?,
        value: describe(btf, TypeId::from(value), 0)?,
    })
}

/// Loads the kernel's BTF object `id`. libbpf-rs reads BTF from a file or
/// an object only, so its raw bytes go through an anonymous memory file.
fn kernel_btf(id: u32) -> Option<Btf<'static>> {
    // SAFETY: plain libbpf calls; the returned btf is freed below and its
    // raw data copied out before.
    let bytes = unsafe {
        let b = libbpf_sys::btf__load_from_kernel_by_id(id);
        if b.is_null() || libbpf_sys::libbpf_get_error(b.cast()) != 0 {
            return None;
        }
        let mut size = 0u32;
        let data = libbpf_sys::btf__raw_data(b, &mut size);
        let bytes = if data.is_null() {
            None
        } else {
            Some(std::slice::from_raw_parts(data.cast::<u8>(), size as usize).to_vec())
        };
        libbpf_sys::btf__free(b);
        bytes?
    };
    // SAFETY: memfd_create takes a NUL-terminated name and flags.
    let fd = unsafe { libc::memfd_create(c"bpfleet-map-btf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just created and is owned here alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    file.write_all(&bytes).ok()?;
    Btf::from_path(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

/// One type as a `Layout`, typedefs and qualifiers looked through.
fn describe(btf: &Btf<'_>, id: TypeId, depth: usize) -> Option<Layout> {
    let t: BtfType<'_> = btf.type_by_id(id)?;
    let t = t.skip_mods_and_typedefs();
    let size = |t: BtfType<'_>| -> u32 {
        match t.kind() {
            BtfKind::Int => Int::try_from(t).map_or(0, |i| u32::from(i.bits).div_ceil(8)),
            BtfKind::Struct | BtfKind::Union => {
                Composite::try_from(t).map_or(0, |c| c.size() as u32)
            }
            BtfKind::Enum | BtfKind::Enum64 | BtfKind::Float => {
                libbpf_rs::btf::types::Enum::try_from(t)
                    .map(|e| e.size() as u32)
                    .or_else(|t| {
                        libbpf_rs::btf::types::Enum64::try_from(t).map(|e| e.size() as u32)
                    })
                    .or_else(|t| libbpf_rs::btf::types::Float::try_from(t).map(|e| e.size() as u32))
                    .unwrap_or(0)
            }
            _ => 0,
        }
    };
    let layout = match t.kind() {
        BtfKind::Int => {
            let i = Int::try_from(t).ok()?;
            Layout::Int {
                bytes: u32::from(i.bits).div_ceil(8),
                signed: matches!(i.encoding, IntEncoding::Signed),
            }
        }
        BtfKind::Ptr => Layout::Pointer,
        BtfKind::Enum | BtfKind::Enum64 => Layout::Enum { bytes: size(t) },
        BtfKind::Struct | BtfKind::Union if depth < MAX_DEPTH => {
            let c = Composite::try_from(t).ok()?;
            let mut fields = Vec::new();
            for m in c.iter() {
                let (bit_offset, bit_size) = match m.attr {
                    MemberAttr::Normal { offset } => (offset, 0),
                    MemberAttr::BitField { size, offset } => (offset, u32::from(size)),
                };
                fields.push(Field {
                    name: m
                        .name
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    bit_offset,
                    bit_size,
                    layout: describe(btf, m.ty, depth + 1)?,
                });
            }
            Layout::Record {
                union: !c.is_struct,
                name: t
                    .name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                bytes: c.size() as u32,
                fields,
            }
        }
        BtfKind::Array if depth < MAX_DEPTH => {
            let a = Array::try_from(t).ok()?;
            Layout::Array {
                len: a.capacity() as u32,
                elem: Box::new(describe(btf, a.ty(), depth + 1)?),
            }
        }
        kind => Layout::Opaque {
            kind: format!("{kind:?}").to_lowercase(),
            bytes: size(t),
        },
    };
    Some(layout)
}
