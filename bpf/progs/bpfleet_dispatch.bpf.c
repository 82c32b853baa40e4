/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The node agent's dispatcher for hooks without bpf_link_update
 * (tracepoint, raw tracepoint, uprobe/uretprobe) and for XDP, whose link
 * update costs milliseconds (the kernel rebuilds its XDP dispatcher and
 * waits for an RCU grace period on every program change). The agent loads one
 * program of this object per hook of a managed program, pins the
 * one-slot program array and attaches the dispatcher. Each event reads
 * the slot once and tail-calls the active revision's program; an empty slot
 * runs nothing. Activate and rollback replace the slot (one map update),
 * so every event runs exactly one revision, also during a switch.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

/* The slot index, read at run time. With a constant index the JIT patches
 * the target into the dispatcher's code (a direct tail call) and every slot
 * update becomes a live text patch with cross-CPU synchronisation (about
 * 60 us measured); with an index the verifier cannot know it is a plain
 * pointer exchange in the array. */
__u32 slot_index = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} slot SEC(".maps");

SEC("tracepoint")
int dispatch_tp(void *ctx)
{
	bpf_tail_call(ctx, &slot, slot_index);
	return 0;
}

SEC("raw_tracepoint")
int dispatch_raw_tp(void *ctx)
{
	bpf_tail_call(ctx, &slot, slot_index);
	return 0;
}

SEC("uprobe")
int dispatch_uprobe(void *ctx)
{
	bpf_tail_call(ctx, &slot, slot_index);
	return 0;
}

/* An empty slot lets every packet pass, as if nothing were attached. */
SEC("xdp")
int dispatch_xdp(struct xdp_md *ctx)
{
	bpf_tail_call(ctx, &slot, slot_index);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
