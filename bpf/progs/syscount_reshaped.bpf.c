/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* syscount with a reshaped persistent map: `counts` holds the same 8-byte
 * values, read as two 32-bit halves (calls and errors). The sizes agree
 * with the other syscount revisions, the meaning of the bytes does not:
 * the agent must refuse to share the pinned map with this revision. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "bpfleet_gate.h"

struct count_pair {
	__u32 calls;
	__u32 errors;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct count_pair);
} counts SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int count_getppid(void *ctx)
{
	__u32 slot = 0;
	struct count_pair *v = bpf_map_lookup_elem(&counts, &slot);

	if (v)
		__sync_fetch_and_add(&v->calls, 1);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
