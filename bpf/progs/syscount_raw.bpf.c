/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* syscount on the raw tracepoint sys_enter: counts getppid into slot 2. */
#include "syscount.h"

SEC("raw_tracepoint/sys_enter")
int count_raw(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[1] != 110 /* __NR_getppid on x86_64 */)
		return 0;
	return syscount_hit(2);
}
