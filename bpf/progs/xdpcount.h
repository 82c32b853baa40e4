/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Shared body of the XDP example: counts frames of EtherType 0x88b5 (IEEE
 * local experimental) into slot XDP_SLOT of the persistent map `pkts`, slot
 * 3 being a total every revision bumps, and lets every frame pass. Switched
 * by bpf_link_update, so it needs no gate.
 *
 * With XDPCOUNT_LOG defined (revision 2) it logs through bpfleet_log.h:
 * message 1 (error), `pkts` has no slot [slot]; message 2 (warn), a frame
 * of the counted EtherType shorter than the 60-byte Ethernet minimum
 * [length]. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#ifdef XDPCOUNT_LOG
#include "bpfleet_log.h"
#define XDPCOUNT_NO_SLOT(slot) BPFLEET_LOG_ERROR(1, slot)
#define XDPCOUNT_RUNT(len) BPFLEET_LOG_WARN(2, len)
#else
#define XDPCOUNT_NO_SLOT(slot)
#define XDPCOUNT_RUNT(len)
#endif

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} pkts SEC(".maps");

static __always_inline int xdp_hit(struct xdp_md *ctx, __u32 slot)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 total = 3;
	__u64 *v;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(0x88b5))
		return XDP_PASS;
	if (data + 60 > end)
		XDPCOUNT_RUNT(bpf_xdp_get_buff_len(ctx));
	v = bpf_map_lookup_elem(&pkts, &slot);
	if (v)
		__sync_fetch_and_add(v, 1);
	else
		XDPCOUNT_NO_SLOT(slot);
	v = bpf_map_lookup_elem(&pkts, &total);
	if (v)
		__sync_fetch_and_add(v, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
