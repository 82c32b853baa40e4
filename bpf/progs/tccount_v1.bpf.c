/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* tccount revision 1: counts into slot 0. */
#include "tccount.h"

SEC("tcx/ingress")
int tc_count(struct __sk_buff *skb)
{
	return tc_hit(skb, 0);
}
