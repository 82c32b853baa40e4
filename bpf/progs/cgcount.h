/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* cgroup_skb example: counts egress packets of the cgroup into slot
 * CG_SLOT of the persistent map `cgpkts` (slot 3: total) and lets them go.
 * Switched by bpf_link_update on the cgroup link.
 *
 * With CGCOUNT_LOG defined (revision 2) it logs its one failure through
 * bpfleet_log.h: message 1 (error), `cgpkts` has no slot [slot]. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#ifdef CGCOUNT_LOG
#include "bpfleet_log.h"
#define CGCOUNT_NO_SLOT(slot) BPFLEET_LOG_ERROR(1, slot)
#else
#define CGCOUNT_NO_SLOT(slot)
#endif

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} cgpkts SEC(".maps");

static __always_inline int cg_hit(__u32 slot)
{
	__u32 total = 3;
	__u64 *v = bpf_map_lookup_elem(&cgpkts, &slot);

	if (v)
		__sync_fetch_and_add(v, 1);
	else
		CGCOUNT_NO_SLOT(slot);
	v = bpf_map_lookup_elem(&cgpkts, &total);
	if (v)
		__sync_fetch_and_add(v, 1);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
