/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* tccount revision 2: counts into slot 1, and logs (see tccount.h). */
#define TCCOUNT_LOG
#include "tccount.h"

SEC("tcx/ingress")
int tc_count(struct __sk_buff *skb)
{
	return tc_hit(skb, 1);
}
