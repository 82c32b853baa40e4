/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* syscount as built against an older bpfleet_gate.h: a config map of its
 * own but none of the TracerPolicy's process and port maps, so a policy
 * that filters by port cannot be put in force on it (the operator must say
 * so, once, not retry every reconcile). Counts getppid(2) into slot 0. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} bpfleet_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int count_getppid(void *ctx)
{
	__u32 slot = 0;
	__u64 *v = bpf_map_lookup_elem(&counts, &slot);

	if (v)
		__sync_fetch_and_add(v, 1);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
