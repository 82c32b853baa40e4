/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* syscount, sampled and costly: it keeps the share of getppid(2) calls
 * the policy's sampling says (bpfleet_sampled(), slot 8; 0 keeps all) and
 * spends a fixed loop of arithmetic on every event it keeps before
 * counting it into slot 2, so its BPF run time follows its sampling. The
 * program a CPU budget (maxCpuOverheadPercent) cuts and restores. */
#include "syscount.h"

#define BURN_ROUNDS 4096

BPFLEET_DECLARE_SAMPLING(all);

SEC("tracepoint/syscalls/sys_enter_getppid")
int count_getppid(void *ctx)
{
	volatile __u64 acc;

	if (!bpfleet_sampled())
		return 0;
	/* volatile: the loop is the point, the compiler must keep it. */
	acc = bpf_get_current_pid_tgid();
	for (int i = 0; i < BURN_ROUNDS; i++)
		acc = acc * 6364136223846793005ULL + 1442695040888963407ULL;
	return syscount_hit(2);
}
