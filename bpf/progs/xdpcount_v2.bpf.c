/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* xdpcount revision 2: counts into slot 1, and logs (see xdpcount.h). */
#define XDPCOUNT_LOG
#include "xdpcount.h"

SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
	return xdp_hit(ctx, 1);
}
