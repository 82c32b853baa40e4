//! bpfleet's BPF side: `include/bpfleet_gate.h`, the header a managed
//! program may include (revision token, runtime config map, error counter),
//! `include/bpfleet_log.h` (structured log records to the node's log ring),
//! the node agent's dispatcher (one per hook without bpf_link_update; it
//! tail-calls the active revision), and the example programs the agent's
//! tests and benchmarks load. The objects are compiled from `progs/*.bpf.c`
//! by the build script (CO-RE, `vmlinux.h` dumped from the running kernel)
//! and embedded here; this crate has no logic and touches no kernel state.

macro_rules! object {
    ($(#[$doc:meta])* $name:ident, $file:literal) => {
        $(#[$doc])*
        pub const $name: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/", $file));
    };
}

object!(
    /// The agent's dispatcher: programs `dispatch_tp` (tracepoint),
    /// `dispatch_raw_tp` (raw tracepoint) and `dispatch_uprobe` (uprobe and
    /// uretprobe), each tail-calling slot 0 of the program array `slot`.
    DISPATCH, "bpfleet_dispatch.bpf.o"
);
object!(
    /// Tracepoint `syscalls/sys_enter_getppid`, program `count_getppid`:
    /// counts into slot 0 of the map `counts` (slot 3: total). Switched by the dispatcher.
    SYSCOUNT_V1, "syscount_v1.bpf.o"
);
object!(
    /// Like [`SYSCOUNT_V1`] but counts into slot 1.
    SYSCOUNT_V2, "syscount_v2.bpf.o"
);
object!(
    /// A syscount revision the verifier rejects (unchecked map value).
    SYSCOUNT_BAD, "syscount_bad.bpf.o"
);
object!(
    /// A syscount revision that loads and counts (slot 2) but reports a
    /// program error (`bpfleet_errors`) on every event while active: the
    /// unhealthy revision a health gate must roll back.
    SYSCOUNT_FAULTY, "syscount_faulty.bpf.o"
);
object!(
    /// A syscount revision that counts (slot 2) and reports no error but
    /// runs a fixed loop on every event: several times the BPF run time
    /// per run of the others, the costly revision a `maxRunTimeRatio` gate
    /// must roll back.
    SYSCOUNT_COSTLY, "syscount_costly.bpf.o"
);
object!(
    /// A syscount revision that keeps the share of events slot 8 of
    /// `bpfleet_config` says (`bpfleet_sampled()`, declared with
    /// `BPFLEET_DECLARE_SAMPLING(all)`) and runs the costly revision's loop
    /// on each event kept before counting it (slot 2): its run time follows
    /// its sampling, the program a CPU budget cuts and restores.
    SYSCOUNT_BURNER, "syscount_burner.bpf.o"
);
object!(
    /// A syscount revision that counts (slot 2) and reports no error but
    /// reports every event as dropped (`BPFLEET_LOST`): the lossy revision
    /// a `maxEventsLost` gate must roll back.
    SYSCOUNT_LOSSY, "syscount_lossy.bpf.o"
);
object!(
    /// A syscount revision that counts (slot 2) and logs (`bpfleet_log.h`)
    /// every getppid of the thread `bpfleet_config[0]`: message 7, warn,
    /// fields [thread id, count]; at most 5 records a second per CPU. The
    /// object of the BPF log tests.
    SYSCOUNT_CHATTY, "syscount_chatty.bpf.o"
);
object!(
    /// Syscount built against an older `bpfleet_gate.h`: its own
    /// `bpfleet_config` but no `bpfleet_pids` or `bpfleet_ports`, so it cannot
    /// honour a TracerPolicy's process or port filter. Counts into slot 0.
    SYSCOUNT_LEGACY, "syscount_legacy.bpf.o"
);
object!(
    /// Syscount whose `counts` values are the same 8 bytes read as a struct
    /// of two `u32` (BTF shape changed, sizes not): a revision the agent
    /// must refuse to share the pinned map with. Counts into slot 0.
    SYSCOUNT_RESHAPED, "syscount_reshaped.bpf.o"
);
object!(
    /// Raw tracepoint `sys_enter`, program `count_raw`: counts getppid into
    /// slot 2 of `counts`. Switched by the dispatcher.
    SYSCOUNT_RAW, "syscount_raw.bpf.o"
);
object!(
    /// XDP program `xdp_count`: counts EtherType 0x88b5 frames into slot 0
    /// of the map `pkts` (slot 3: total). Switched by link update.
    XDPCOUNT_V1, "xdpcount_v1.bpf.o"
);
object!(
    /// Like [`XDPCOUNT_V1`] but counts into slot 1.
    XDPCOUNT_V2, "xdpcount_v2.bpf.o"
);
object!(
    /// tcx ingress program `tc_count`: counts EtherType 0x88b5 frames into
    /// slot 0 of the map `tcpkts` (slot 3: total). Switched by link update.
    TCCOUNT_V1, "tccount_v1.bpf.o"
);
object!(
    /// Like [`TCCOUNT_V1`] but counts into slot 1.
    TCCOUNT_V2, "tccount_v2.bpf.o"
);
object!(
    /// uprobe program `count_call`: counts calls into slot 0 of `calls`. Switched by the dispatcher.
    UCOUNT, "ucount.bpf.o"
);
object!(
    /// cgroup_skb egress program `cg_count`: counts packets into slot 0 of
    /// `cgpkts` (slot 3: total). Switched by link update.
    CGCOUNT_V1, "cgcount_v1.bpf.o"
);
object!(
    /// Like [`CGCOUNT_V1`] but counts into slot 1.
    CGCOUNT_V2, "cgcount_v2.bpf.o"
);
object!(
    /// A kprobe program (`on_open`), for the "unsupported on this node" path.
    KPROBE_PROBE, "kprobe_probe.bpf.o"
);

object!(
    /// The HTTP tracer: syscall tracepoints for the read/write family,
    /// accept, connect and close; exchanges counted in `http_aggs`
    /// (metrics mode), events in the ring buffer `http_events` (layouts in
    /// `progs/http_tracer.h`), drops counted in `http_lost`. Switched by the
    /// dispatcher; the maps `bpfleet_tracer::PERSISTENT_MAPS` lists are
    /// meant to be persistent across revisions.
    HTTP_TRACER, "http_tracer.bpf.o"
);

object!(
    /// The HTTP tracer's programs (same names, same tracepoints) with empty
    /// bodies: the floor the tracer benchmark compares each hook with.
    HTTP_TRACER_FLOOR, "http_tracer_floor.bpf.o"
);

/// Every example object by the file name the build gives it, for tools that
/// write them to disk (the demo, `bpfleet-objects`).
pub const OBJECTS: [(&str, &[u8]); 20] = [
    ("syscount_v1.bpf.o", SYSCOUNT_V1),
    ("syscount_v2.bpf.o", SYSCOUNT_V2),
    ("syscount_bad.bpf.o", SYSCOUNT_BAD),
    ("syscount_faulty.bpf.o", SYSCOUNT_FAULTY),
    ("syscount_costly.bpf.o", SYSCOUNT_COSTLY),
    ("syscount_lossy.bpf.o", SYSCOUNT_LOSSY),
    ("syscount_chatty.bpf.o", SYSCOUNT_CHATTY),
    ("syscount_legacy.bpf.o", SYSCOUNT_LEGACY),
    ("syscount_raw.bpf.o", SYSCOUNT_RAW),
    ("syscount_reshaped.bpf.o", SYSCOUNT_RESHAPED),
    ("xdpcount_v1.bpf.o", XDPCOUNT_V1),
    ("xdpcount_v2.bpf.o", XDPCOUNT_V2),
    ("tccount_v1.bpf.o", TCCOUNT_V1),
    ("tccount_v2.bpf.o", TCCOUNT_V2),
    ("ucount.bpf.o", UCOUNT),
    ("cgcount_v1.bpf.o", CGCOUNT_V1),
    ("cgcount_v2.bpf.o", CGCOUNT_V2),
    ("kprobe_probe.bpf.o", KPROBE_PROBE),
    ("http_tracer.bpf.o", HTTP_TRACER),
    ("http_tracer_floor.bpf.o", HTTP_TRACER_FLOOR),
];

/// Directory holding `bpfleet_gate.h`, for building programs out of tree.
pub const INCLUDE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/include");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_bpf_elf() {
        for obj in [
            DISPATCH,
            SYSCOUNT_V1,
            SYSCOUNT_V2,
            SYSCOUNT_BAD,
            SYSCOUNT_FAULTY,
            SYSCOUNT_COSTLY,
            SYSCOUNT_LOSSY,
            SYSCOUNT_CHATTY,
            SYSCOUNT_LEGACY,
            SYSCOUNT_RAW,
            XDPCOUNT_V1,
            XDPCOUNT_V2,
            TCCOUNT_V1,
            TCCOUNT_V2,
            UCOUNT,
            CGCOUNT_V1,
            CGCOUNT_V2,
            KPROBE_PROBE,
            HTTP_TRACER,
        ] {
            assert_eq!(&obj[..4], b"\x7fELF");
            // e_machine at offset 18, little endian: 247 = EM_BPF.
            assert_eq!(u16::from_le_bytes([obj[18], obj[19]]), 247);
        }
    }
}
