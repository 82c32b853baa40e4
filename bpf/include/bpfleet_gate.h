/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * bpfleet_gate.h: what a program managed by bpfleet includes so that the
 * node agent can switch between its revisions atomically on hooks that have
 * no bpf_link_update (tracepoints, raw tracepoints, uprobes).
 *
 * Every revision of a program shares one pinned array map, bpfleet_gate,
 * whose single u64 holds the token of the active revision. The agent writes
 * this revision's token into bpfleet_revision before load. A program calls
 * BPFLEET_GATE() first; while another revision is active it returns at once.
 * Activate and rollback are then one word written to the gate: no reload, no
 * verifier run, and each event is seen by exactly one revision.
 *
 * Also provided:
 *   bpfleet_config  16 x u64 runtime settings written by UpdateConfig
 *   BPFLEET_ERROR() counts a program-reported error (Stats program_errors)
 */
#ifndef __BPFLEET_GATE_H
#define __BPFLEET_GATE_H

#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} bpfleet_gate SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} bpfleet_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} bpfleet_errors SEC(".maps");

/* Set by the agent before load; a section of its own so that the agent
 * finds it without parsing BTF. */
const volatile __u64 bpfleet_revision SEC(".rodata.bpfleet") = 0;

static __always_inline int bpfleet_is_active(void)
{
	__u32 zero = 0;
	__u64 *active = bpf_map_lookup_elem(&bpfleet_gate, &zero);

	return active && *active == bpfleet_revision;
}

static __always_inline __u64 bpfleet_config_get(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&bpfleet_config, &idx);

	return v ? *v : 0;
}

#define BPFLEET_GATE(ret)                                                      \
	do {                                                                   \
		if (!bpfleet_is_active())                                      \
			return (ret);                                          \
	} while (0)

#define BPFLEET_ERROR()                                                        \
	do {                                                                   \
		__u32 __bpfleet_zero = 0;                                      \
		__u64 *__bpfleet_e =                                           \
			bpf_map_lookup_elem(&bpfleet_errors, &__bpfleet_zero); \
		if (__bpfleet_e)                                               \
			*__bpfleet_e += 1;                                     \
	} while (0)

#endif /* __BPFLEET_GATE_H */
