/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* xdpcount revision 1: counts into slot 0. */
#include "xdpcount.h"

SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
	return xdp_hit(ctx, 0);
}
