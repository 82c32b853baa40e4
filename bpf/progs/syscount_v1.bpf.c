/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* syscount revision 1: counts into slot 0. */
#include "syscount.h"

SEC("tracepoint/syscalls/sys_enter_getppid")
int count_getppid(void *ctx)
{
	return syscount_hit(0);
}
