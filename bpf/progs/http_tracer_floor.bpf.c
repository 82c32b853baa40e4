/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The HTTP tracer's hooks with nothing in them: every program of
 * http_tracer.bpf.c, by the same names on the same tracepoints, returning
 * at once. The tracer benchmark loads it through the agent like the tracer
 * (same dispatchers) to measure the floor each hook's early exit is
 * compared with.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define EMPTY(name, tp)                                                        \
	SEC("tracepoint/syscalls/" tp)                                         \
	int name(void *ctx)                                                    \
	{                                                                      \
		return 0;                                                      \
	}

EMPTY(exit_read, "sys_exit_read")
EMPTY(exit_readv, "sys_exit_readv")
EMPTY(exit_recvfrom, "sys_exit_recvfrom")
EMPTY(exit_recvmsg, "sys_exit_recvmsg")
EMPTY(exit_write, "sys_exit_write")
EMPTY(exit_writev, "sys_exit_writev")
EMPTY(exit_sendto, "sys_exit_sendto")
EMPTY(exit_sendmsg, "sys_exit_sendmsg")
EMPTY(exit_accept, "sys_exit_accept")
EMPTY(exit_accept4, "sys_exit_accept4")
EMPTY(exit_connect, "sys_exit_connect")
EMPTY(enter_close, "sys_enter_close")

char LICENSE[] SEC("license") = "Dual BSD/GPL";
