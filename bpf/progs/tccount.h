/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Shared body of the tcx example: counts ingress frames of EtherType 0x88b5
 * into slot TC_SLOT of the persistent map `tcpkts` (slot 3: total) and hands
 * every frame on. Switched by bpf_link_update on the tcx link.
 *
 * With TCCOUNT_LOG defined (revision 2) it logs its one failure through
 * bpfleet_log.h: message 1 (error), `tcpkts` has no slot [slot]. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#ifdef TCCOUNT_LOG
#include "bpfleet_log.h"
#define TCCOUNT_NO_SLOT(slot) BPFLEET_LOG_ERROR(1, slot)
#else
#define TCCOUNT_NO_SLOT(slot)
#endif

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} tcpkts SEC(".maps");

static __always_inline int tc_hit(struct __sk_buff *skb, __u32 slot)
{
	__u32 total = 3;
	__u64 *v;

	if (skb->protocol != bpf_htons(0x88b5))
		return TCX_NEXT;
	v = bpf_map_lookup_elem(&tcpkts, &slot);
	if (v)
		__sync_fetch_and_add(v, 1);
	else
		TCCOUNT_NO_SLOT(slot);
	v = bpf_map_lookup_elem(&tcpkts, &total);
	if (v)
		__sync_fetch_and_add(v, 1);
	return TCX_NEXT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
