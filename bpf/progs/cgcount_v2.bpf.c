/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* cgcount revision 2: counts into slot 1, and logs (see cgcount.h). */
#define CGCOUNT_LOG
#include "cgcount.h"

SEC("cgroup_skb/egress")
int cg_count(struct __sk_buff *skb)
{
	return cg_hit(1);
}
