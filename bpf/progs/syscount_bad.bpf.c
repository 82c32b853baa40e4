/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* syscount revision the verifier rejects: the map value is dereferenced
 * without the NULL check the verifier demands. */
#include "syscount.h"

SEC("tracepoint/syscalls/sys_enter_getppid")
int count_getppid(void *ctx)
{
	__u32 slot = 2;
	__u64 *v;

	v = bpf_map_lookup_elem(&counts, &slot);
	*v += 1;
	return 0;
}
