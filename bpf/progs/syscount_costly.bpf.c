/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* syscount, a deliberately costly revision: it counts like the others
 * (into slot 2) and reports no error, but spends a fixed loop of
 * arithmetic on every event first, so its BPF run time per run is several
 * times the other revisions'. The revision a run-time gate
 * (maxRunTimeRatio) must roll back: 4096 rounds make it about fifteen
 * times syscount_v1's run time per run, far from any sane threshold. */
#include "syscount.h"

#define BURN_ROUNDS 4096

SEC("tracepoint/syscalls/sys_enter_getppid")
int count_getppid(void *ctx)
{
	/* volatile: the loop is the point, the compiler must keep it. */
	volatile __u64 acc = bpf_get_current_pid_tgid();

	for (int i = 0; i < BURN_ROUNDS; i++)
		acc = acc * 6364136223846793005ULL + 1442695040888963407ULL;
	return syscount_hit(2);
}
