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

EMPTY(enter_read, "sys_enter_read")
EMPTY(exit_read, "sys_exit_read")
EMPTY(enter_readv, "sys_enter_readv")
EMPTY(exit_readv, "sys_exit_readv")
EMPTY(enter_recvfrom, "sys_enter_recvfrom")
EMPTY(exit_recvfrom, "sys_exit_recvfrom")
EMPTY(enter_recvmsg, "sys_enter_recvmsg")
EMPTY(exit_recvmsg, "sys_exit_recvmsg")
EMPTY(enter_write, "sys_enter_write")
EMPTY(exit_write, "sys_exit_write")
EMPTY(enter_writev, "sys_enter_writev")
EMPTY(exit_writev, "sys_exit_writev")
EMPTY(enter_sendto, "sys_enter_sendto")
EMPTY(exit_sendto, "sys_exit_sendto")
EMPTY(enter_sendmsg, "sys_enter_sendmsg")
EMPTY(exit_sendmsg, "sys_exit_sendmsg")
EMPTY(enter_accept, "sys_enter_accept")
EMPTY(exit_accept, "sys_exit_accept")
EMPTY(enter_accept4, "sys_enter_accept4")
EMPTY(exit_accept4, "sys_exit_accept4")
EMPTY(enter_connect, "sys_enter_connect")
EMPTY(exit_connect, "sys_exit_connect")
EMPTY(enter_close, "sys_enter_close")

char LICENSE[] SEC("license") = "Dual BSD/GPL";
