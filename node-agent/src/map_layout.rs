//! The shape of a map's key or value as its BTF describes it, and the
//! readable difference between two shapes. A persistent map outlives the
//! revision that created it; a new revision that reads the same bytes as
//! another struct (a field added, moved, resized or retyped) would corrupt
//! what the old one wrote even when the sizes still agree. Pure: the kernel
//! side that reads BTF is `kernel::btf`.

use std::fmt;

/// Deepest nesting described; deeper types are compared by size only.
pub const MAX_DEPTH: usize = 6;

/// A type reduced to what decides how its bytes are read: typedefs,
/// `const` and `volatile` are looked through, type names of scalars are
/// dropped (`__u64` and `unsigned long long` are the same thing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// An integer of `bytes` bytes.
    Int { bytes: u32, signed: bool },
    /// A struct or union, with its members in declaration order.
    Record {
        union: bool,
        name: String,
        bytes: u32,
        fields: Vec<Field>,
    },
    /// `len` elements of `elem`.
    Array { len: u32, elem: Box<Layout> },
    /// An enum of `bytes` bytes.
    Enum { bytes: u32 },
    /// A pointer (as a map value: 8 bytes the kernel does not interpret).
    Pointer,
    /// Anything else (floats, types past `MAX_DEPTH`), by kind and size.
    Opaque { kind: String, bytes: u32 },
}

/// One member of a struct or union.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// Offset in bits from the start of the record.
    pub bit_offset: u32,
    /// Width of a bitfield, 0 for a whole member.
    pub bit_size: u32,
    pub layout: Layout,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::Int { bytes, signed } => {
                write!(f, "{}{}", if *signed { "s" } else { "u" }, bytes * 8)
            }
            Layout::Record {
                union, name, bytes, ..
            } => {
                let kind = if *union { "union" } else { "struct" };
                if name.is_empty() {
                    write!(f, "{kind} ({bytes} bytes)")
                } else {
                    write!(f, "{kind} {name} ({bytes} bytes)")
                }
            }
            Layout::Array { len, elem } => write!(f, "{elem}[{len}]"),
            Layout::Enum { bytes } => write!(f, "enum ({bytes} bytes)"),
            Layout::Pointer => write!(f, "pointer"),
            Layout::Opaque { kind, bytes } => write!(f, "{kind} ({bytes} bytes)"),
        }
    }
}

/// Where a field sits, for a message: `byte 8` or `bit 67 (3 bits)`.
fn place(field: &Field) -> String {
    if field.bit_size == 0 && field.bit_offset.is_multiple_of(8) {
        format!("byte {}", field.bit_offset / 8)
    } else {
        format!("bit {} ({} bits)", field.bit_offset, field.bit_size)
    }
}

/// The differences between the pinned map's `old` shape and a new
/// revision's `new` one, each a line naming the path (`value.conn.pid`)
/// and what changed; empty when they read the same bytes the same way.
/// Names of records are not compared (renaming a struct is harmless);
/// names of fields are (a renamed field is how a changed meaning shows).
pub fn diff(path: &str, old: &Layout, new: &Layout) -> Vec<String> {
    let mut out = Vec::new();
    diff_into(path, old, new, &mut out);
    out
}

fn diff_into(path: &str, old: &Layout, new: &Layout, out: &mut Vec<String>) {
    match (old, new) {
        (
            Layout::Record {
                union: ou,
                bytes: ob,
                fields: of,
                ..
            },
            Layout::Record {
                union: nu,
                bytes: nb,
                fields: nf,
                ..
            },
        ) if ou == nu => {
            if ob != nb {
                out.push(format!("{path}: size {ob} -> {nb} bytes"));
            }
            for o in of {
                match nf.iter().find(|n| n.name == o.name) {
                    None => out.push(format!(
                        "{path}.{}: field removed (was {} at {})",
                        o.name,
                        o.layout,
                        place(o)
                    )),
                    Some(n) => {
                        let sub = format!("{path}.{}", o.name);
                        if (o.bit_offset, o.bit_size) != (n.bit_offset, n.bit_size) {
                            out.push(format!("{sub}: moved from {} to {}", place(o), place(n)));
                        }
                        diff_into(&sub, &o.layout, &n.layout, out);
                    }
                }
            }
            for n in nf.iter().filter(|n| !of.iter().any(|o| o.name == n.name)) {
                out.push(format!(
                    "{path}.{}: field added ({} at {})",
                    n.name,
                    n.layout,
                    place(n)
                ));
            }
        }
        (Layout::Array { len: ol, elem: oe }, Layout::Array { len: nl, elem: ne }) => {
            if ol != nl {
                out.push(format!("{path}: {ol} -> {nl} elements"));
            }
            diff_into(&format!("{path}[]"), oe, ne, out);
        }
        (o, n) if o != n => out.push(format!("{path}: {o} -> {n}")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(bytes: u32) -> Layout {
        Layout::Int {
            bytes,
            signed: false,
        }
    }

    fn field(name: &str, byte: u32, layout: Layout) -> Field {
        Field {
            name: name.into(),
            bit_offset: byte * 8,
            bit_size: 0,
            layout,
        }
    }

    fn record(name: &str, bytes: u32, fields: Vec<Field>) -> Layout {
        Layout::Record {
            union: false,
            name: name.into(),
            bytes,
            fields,
        }
    }

    #[test]
    fn the_same_shape_under_other_type_names_has_no_difference() {
        let a = record(
            "conn",
            16,
            vec![field("ts", 0, u(8)), field("pid", 8, u(4))],
        );
        let b = record(
            "conn_v2",
            16,
            vec![field("ts", 0, u(8)), field("pid", 8, u(4))],
        );
        assert!(diff("value", &a, &b).is_empty());
        assert!(diff("key", &u(4), &u(4)).is_empty());
    }

    #[test]
    fn an_added_field_a_resize_and_a_move_are_each_named() {
        let old = record(
            "conn",
            16,
            vec![field("ts", 0, u(8)), field("pid", 8, u(4))],
        );
        let new = record(
            "conn",
            24,
            vec![
                field("ts", 0, u(8)),
                field("flags", 8, u(4)),
                field("pid", 12, u(8)),
            ],
        );
        assert_eq!(
            diff("value", &old, &new),
            [
                "value: size 16 -> 24 bytes",
                "value.pid: moved from byte 8 to byte 12",
                "value.pid: u32 -> u64",
                "value.flags: field added (u32 at byte 8)",
            ]
        );
    }

    #[test]
    fn same_size_other_meaning_is_a_difference() {
        // A u64 counter read as two u32 halves: the sizes agree, the bytes
        // do not mean the same.
        let pair = record("pair", 8, vec![field("lo", 0, u(4)), field("hi", 4, u(4))]);
        assert_eq!(
            diff("value", &u(8), &pair),
            ["value: u64 -> struct pair (8 bytes)"]
        );
        let signed = Layout::Int {
            bytes: 8,
            signed: true,
        };
        assert_eq!(diff("value", &u(8), &signed), ["value: u64 -> s64"]);
        // A renamed field: removed and added.
        let renamed = record("pair", 8, vec![field("low", 0, u(4)), field("hi", 4, u(4))]);
        assert_eq!(
            diff("value", &pair, &renamed),
            [
                "value.lo: field removed (was u32 at byte 0)",
                "value.low: field added (u32 at byte 0)",
            ]
        );
    }

    #[test]
    fn nested_records_and_arrays_name_the_path() {
        let inner = |b: u32| record("stats", 8, vec![field("n", 0, u(b))]);
        let old = Layout::Array {
            len: 4,
            elem: Box::new(inner(8)),
        };
        let new = Layout::Array {
            len: 8,
            elem: Box::new(inner(4)),
        };
        assert_eq!(
            diff("value", &old, &new),
            ["value: 4 -> 8 elements", "value[].n: u64 -> u32"]
        );
        let bits = Field {
            name: "flag".into(),
            bit_offset: 67,
            bit_size: 3,
            layout: u(4),
        };
        let a = record("f", 16, vec![bits.clone()]);
        let b = record(
            "f",
            16,
            vec![Field {
                bit_offset: 64,
                ..bits
            }],
        );
        assert_eq!(
            diff("key", &a, &b),
            ["key.flag: moved from bit 67 (3 bits) to bit 64 (3 bits)"]
        );
    }
}
