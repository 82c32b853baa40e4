/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* uprobe example: counts calls of the probed user function by the thread
 * bpfleet_config[0] (every thread when 0) into slot 0 of `calls`. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "bpfleet_gate.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} calls SEC(".maps");

SEC("uprobe")
int count_call(void *ctx)
{
	__u64 want = bpfleet_config_get(0);
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u32 zero = 0;
	__u64 *v;

	if (want && tid != want)
		return 0;
	v = bpf_map_lookup_elem(&calls, &zero);
	if (v)
		__sync_fetch_and_add(v, 1);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
