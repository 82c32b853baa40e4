/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* A syscount revision that counts (slot 2) and logs every getppid(2) of
 * the thread bpfleet_config[0] (no thread when 0) through bpfleet_log.h:
 * message 7 (warn) [thread id, count so far]. The object the log tests
 * load: one call logs once, a flood meets the rate limit. */
#define BPFLEET_LOG_RATE 5
#include "syscount.h"
#include "bpfleet_log.h"

SEC("tracepoint/syscalls/sys_enter_getppid")
int count_getppid(void *ctx)
{
	__u64 want = bpfleet_config_get(0);
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u32 slot = 2;
	__u64 *v;

	if (!want || tid != want)
		return 0;
	syscount_hit(slot);
	v = bpf_map_lookup_elem(&counts, &slot);
	BPFLEET_LOG_WARN(7, tid, v ? *v : 0);
	return 0;
}
