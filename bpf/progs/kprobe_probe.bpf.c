/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* A kprobe program, used to check that the agent refuses hooks this node
 * lacks with a clear message. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("kprobe/do_sys_openat2")
int on_open(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
