/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Shared body of the syscount example: counts getppid(2) calls of the
 * thread whose id is bpfleet_config[0] (every thread when 0) into slot
 * SYSCOUNT_SLOT of the persistent map `counts`; slot 3 is a running total
 * that every revision bumps.
 *
 * With SYSCOUNT_LOG defined (revision 2) it logs its one failure through
 * bpfleet_log.h: message 1 (error), `counts` has no slot [slot]. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "bpfleet_gate.h"
#ifdef SYSCOUNT_LOG
#include "bpfleet_log.h"
#define SYSCOUNT_NO_SLOT(slot) BPFLEET_LOG_ERROR(1, slot)
#else
#define SYSCOUNT_NO_SLOT(slot)
#endif

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

static __always_inline int syscount_hit(__u32 slot)
{
	__u64 want = bpfleet_config_get(0);
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u32 total = 3;
	__u64 *v;

	if (want && tid != want)
		return 0;
	v = bpf_map_lookup_elem(&counts, &slot);
	if (!v) {
		BPFLEET_ERROR();
		SYSCOUNT_NO_SLOT(slot);
		return 0;
	}
	__sync_fetch_and_add(v, 1);
	v = bpf_map_lookup_elem(&counts, &total);
	if (v)
		__sync_fetch_and_add(v, 1);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
