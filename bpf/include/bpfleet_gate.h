/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * bpfleet_gate.h: what a program managed by bpfleet may include to take
 * part in bpfleet's revision handling.
 *
 * Switching between revisions needs nothing from the program. On hooks with
 * bpf_link_update (xdp, tcx, cgroup) the agent swaps the link's program; on
 * the others (tracepoints, raw tracepoints, uprobes) it attaches one small
 * dispatcher of its own per hook, which tail-calls the active revision
 * through a one-slot program array. Activate and rollback replace that slot:
 * the slot is read once per event, so each event runs exactly one revision.
 *
 * What this header provides:
 *   bpfleet_revision  the revision's token, written by the agent before
 *                     load (programs that report events can stamp it)
 *   bpfleet_config    16 x u64 runtime settings written by UpdateConfig,
 *                     shared by every revision of the program: slots 0-7
 *                     are the program's own, slots 8-15 carry the
 *                     targeting TracerPolicy's spec.config (below)
 *   bpfleet_pids,     the process and port lists of that policy, shared by
 *   bpfleet_ports     every revision like bpfleet_config
 *   BPFLEET_ERROR()   counts a program-reported error (Stats program_errors)
 *   BPFLEET_LOST()    counts an event the program had to drop, a full ring
 *                     buffer say (Stats events_lost, the maxEventsLost gate)
 *   bpfleet_sampled() whether to keep this event under the policy's
 *                     sampling (slot BPFLEET_CFG_SAMPLE_PPM)
 *   BPFLEET_DECLARE_SAMPLING(all|none)
 *                     tells the agent that the program honours that slot,
 *                     so a CPU budget (maxCpuOverheadPercent) may lower it
 *
 * Logging (JSON lines on the agent's stdout) is in bpfleet_log.h, which
 * includes this header.
 */
#ifndef __BPFLEET_GATE_H
#define __BPFLEET_GATE_H

#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} bpfleet_config SEC(".maps");

/* Per revision, per CPU: slot 0 program errors (BPFLEET_ERROR), slot 1
 * events dropped (BPFLEET_LOST). Objects built before slot 1 existed have
 * one entry: their Stats carry no events_lost, and a maxEventsLost gate
 * reports no data for them rather than a pass. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} bpfleet_errors SEC(".maps");

/* Set by the agent before load; a section of its own so that the agent
 * finds it without parsing BTF. */
const volatile __u64 bpfleet_revision SEC(".rodata.bpfleet") = 0;

/*
 * The TracerPolicy contract. The operator writes these slots and maps from
 * the policy that targets the program (spec.config) on every node holding
 * it, without a reload; a program honours the ones it documents and
 * ignores the rest. All zero: no policy, program defaults.
 */
/* Share kept, per million (connections, events: the program's unit); 0 =
 * the program's default (all, unless the program documents otherwise: the
 * HTTP tracer's metrics mode samples none). */
#define BPFLEET_CFG_SAMPLE_PPM 8
/* Payload bytes captured per message; 0 = the program's default. */
#define BPFLEET_CFG_PAYLOAD_BYTES 9
/* 1: only processes whose tgid is in bpfleet_pids. */
#define BPFLEET_CFG_PID_FILTER 10
/* Bit 0 (BPFLEET_PORTS_ONLY): only ports marked BPFLEET_PORT_TRACE in
 * bpfleet_ports; bit 1 (BPFLEET_PORTS_SKIP): never ports marked
 * BPFLEET_PORT_SKIP. 0: the map is not looked at. */
#define BPFLEET_CFG_PORT_FILTER 11
#define BPFLEET_PORTS_ONLY 1
#define BPFLEET_PORTS_SKIP 2
/* Which end of a connection is traced: bit 0 (BPFLEET_ENDS_SERVER) the
 * accepting end, bit 1 (BPFLEET_ENDS_CLIENT) the connecting end; 0 = the
 * program's default. */
#define BPFLEET_CFG_ENDS 12
#define BPFLEET_ENDS_SERVER 1
#define BPFLEET_ENDS_CLIENT 2
/* 1: report every event on its own (no summary in the kernel); 0 = the
 * program's default. */
#define BPFLEET_CFG_EVENTS 13
/* Digest of the policy configuration in force (0: none). The operator
 * writes it last and compares it with what it wants, so a node that
 * missed a change, or a half-written one, is written again. */
#define BPFLEET_CFG_POLICY_STAMP 15

#define BPFLEET_PORT_TRACE 1
#define BPFLEET_PORT_SKIP 2

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u8);
} bpfleet_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 128);
	__type(key, __u16);
	__type(value, __u8);
} bpfleet_ports SEC(".maps");

static __always_inline __u64 bpfleet_config_get(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&bpfleet_config, &idx);

	return v ? *v : 0;
}

/*
 * Sampling and CPU budgets. A program that keeps only the share of its
 * events that slot BPFLEET_CFG_SAMPLE_PPM says declares it once, at file
 * scope:
 *
 *   BPFLEET_DECLARE_SAMPLING(all);   0 in the slot keeps every event
 *   BPFLEET_DECLARE_SAMPLING(none);  0 keeps none of what the slot selects
 *
 * The agent finds the declaration (a global variable named
 * bpfleet_sampling_zero_all or bpfleet_sampling_zero_none, in the
 * object's BTF) at load. When the program's TracerPolicy sets
 * budgets.maxCpuOverheadPercent with reduceSamplingOnBreach, the agent
 * lowers the share in the slot while the program is over budget and
 * raises it back to the policy's value when the load falls. A program
 * without the declaration is never written; the agent reports it as over
 * budget and unable to sample.
 */
#define BPFLEET_DECLARE_SAMPLING(zero)                                         \
	const volatile __u32 bpfleet_sampling_zero_##zero = 1

/* Whether this event is kept: 0 in the slot or a share of a million or
 * more keeps every event, any other value that share per million, drawn
 * at random for each event. For programs declared with (all). */
static __always_inline int bpfleet_sampled(void)
{
	__u64 ppm = bpfleet_config_get(BPFLEET_CFG_SAMPLE_PPM);

	return !ppm || ppm >= 1000000 || bpf_get_prandom_u32() % 1000000 < ppm;
}

#define __BPFLEET_COUNT(slot)                                                  \
	do {                                                                   \
		__u32 __bpfleet_slot = (slot);                                 \
		__u64 *__bpfleet_e =                                           \
			bpf_map_lookup_elem(&bpfleet_errors, &__bpfleet_slot); \
		if (__bpfleet_e)                                               \
			*__bpfleet_e += 1;                                     \
	} while (0)

#define BPFLEET_ERROR() __BPFLEET_COUNT(0)
#define BPFLEET_LOST() __BPFLEET_COUNT(1)

#endif /* __BPFLEET_GATE_H */
