/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* syscount, a deliberately unhealthy revision: it loads and counts like
 * the others (into slot 2) but reports a program error on every event it
 * handles while active, so a health gate on program failures rejects it. */
#include "syscount.h"

SEC("tracepoint/syscalls/sys_enter_getppid")
int count_getppid(void *ctx)
{
	__u64 want = bpfleet_config_get(0);
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	if (want && tid != want)
		return 0;
	BPFLEET_ERROR();
	return syscount_hit(2);
}
