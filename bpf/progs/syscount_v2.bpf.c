/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* syscount revision 2: counts into slot 1, and logs its failure (message
 * 1, see syscount.h). */
#define SYSCOUNT_LOG
#include "syscount.h"

SEC("tracepoint/syscalls/sys_enter_getppid")
int count_getppid(void *ctx)
{
	return syscount_hit(1);
}
