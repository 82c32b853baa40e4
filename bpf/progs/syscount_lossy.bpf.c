/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* syscount, a revision that loses events: it counts (into slot 2) and
 * reports no error, but reports every event as dropped (BPFLEET_LOST), as
 * a program whose ring buffer is always full would. The revision a
 * maxEventsLost gate must roll back. */
#include "syscount.h"

SEC("tracepoint/syscalls/sys_enter_getppid")
int count_getppid(void *ctx)
{
	__u64 want = bpfleet_config_get(0);
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	if (want && tid != want)
		return 0;
	BPFLEET_LOST();
	return syscount_hit(2);
}
