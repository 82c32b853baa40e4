/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * bpfleet_log.h: structured log records from a program managed by bpfleet.
 *
 *   BPFLEET_LOG_WARN(id, a, b);      // up to four u64 fields
 *   BPFLEET_LOG_ERROR(id);           // none
 *   BPFLEET_LOG_INFO(id, a, b, c, d);
 *   BPFLEET_LOG_DEBUG(id, a);
 *
 * Each call puts one fixed record (level, the program's own message id,
 * the fields given, the time) into `bpfleet_log`, a ring buffer the agent
 * keeps ONE of per node (pinned at <pin-root>/_bpfleet_log and handed to
 * every object that declares it), and the agent prints it as one JSON line
 * on its stdout, named with the program and revision that logged it:
 *
 *   {"ts":"...","level":"warn","source":"bpf","node":"n1","program":"p",
 *    "revision":"v2","msg_id":7,"fields":[12,34],"token":2}
 *
 * Message ids are the program's own numbers; the agent does not name them.
 * Document them beside the program (the HTTP tracer's are in
 * docs/tracer.md).
 *
 * Rate limit, in the kernel, per revision and per CPU: a token bucket of
 * BPFLEET_LOG_BURST records refilled at BPFLEET_LOG_RATE records per second
 * (define either before including this header to change it). A record the
 * limit refuses, or that finds the ring full, is counted in
 * bpfleet_log_drops (slot 0: rate limited, slot 1: ring full), which the
 * agent exports as bpfleet_bpf_log_dropped_total. A call returns 1 when the
 * record went out, 0 when it was dropped.
 *
 * Cost: a call is a BPF-to-BPF call, a per-CPU map lookup and the clock,
 * plus the ring reservation when the bucket allows: put calls on rare
 * paths (a full table, a failed lookup), not on every event.
 *
 * Without the agent (another loader), the object gets a ring of its own
 * that nobody reads, and records name no program (origin 0).
 */
#ifndef __BPFLEET_LOG_H
#define __BPFLEET_LOG_H

#include <bpf/bpf_helpers.h>
#include "bpfleet_gate.h"

#ifndef BPFLEET_LOG_RATE
#define BPFLEET_LOG_RATE 10
#endif
#ifndef BPFLEET_LOG_BURST
#define BPFLEET_LOG_BURST BPFLEET_LOG_RATE
#endif

#define BPFLEET_LVL_ERROR 1
#define BPFLEET_LVL_WARN 2
#define BPFLEET_LVL_INFO 3
#define BPFLEET_LVL_DEBUG 4

/* "BFLG" read as a little-endian u32. */
#define BPFLEET_LOG_MAGIC 0x474c4642
#define BPFLEET_LOG_VERSION 1

/* The record, 72 bytes. A later version only appends. */
struct bpfleet_log_record {
	__u32 magic;
	__u16 version;
	__u8 level;
	/* How many of fields[] the call gave (the rest are 0). */
	__u8 nfields;
	__u32 msg_id;
	__u32 pad;
	/* bpf_ktime_get_ns() when logged. */
	__u64 ts_ns;
	/* bpfleet_revision: the revision's token (per program). */
	__u64 revision;
	/* bpfleet_log_origin: which program and revision, node-wide. */
	__u64 origin;
	__u64 fields[4];
};

/* The node's log ring. The agent sets its size (--bpf-log-ring-bytes);
 * this one is for other loaders. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} bpfleet_log SEC(".maps");

/* Per revision, per CPU: slot 0 records refused by the rate limit, slot 1
 * records that found the ring full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} bpfleet_log_drops SEC(".maps");

struct bpfleet_log_tokens {
	/* Time up to which tokens were credited. */
	__u64 refill_ns;
	__u64 tokens;
};

/* Per revision, per CPU: the rate limit's bucket. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfleet_log_tokens);
} bpfleet_log_bucket SEC(".maps");

/* Set by the agent before load, like bpfleet_revision: a node-wide name of
 * this program and revision (a hash of both names). */
const volatile __u64 bpfleet_log_origin SEC(".rodata.bpflog") = 0;

#define __BPFLEET_LOG_NS 1000000000ULL

/* head: level << 40 | nfields << 32 | msg_id (a BPF call takes at most
 * five arguments). Not inlined: the record is built once per object. */
static __noinline __attribute__((unused)) int
__bpfleet_log(__u64 head, __u64 a, __u64 b, __u64 c, __u64 d)
{
	const __u64 step = __BPFLEET_LOG_NS / BPFLEET_LOG_RATE;
	struct bpfleet_log_tokens *t;
	struct bpfleet_log_record *r;
	__u32 zero = 0, why;
	__u64 now, add, *n;

	t = bpf_map_lookup_elem(&bpfleet_log_bucket, &zero);
	if (!t)
		return 0;
	now = bpf_ktime_get_ns();
	if (now - t->refill_ns >= step) {
		add = (now - t->refill_ns) / step;
		if (add > BPFLEET_LOG_BURST)
			add = BPFLEET_LOG_BURST;
		t->tokens += add;
		if (t->tokens >= BPFLEET_LOG_BURST) {
			t->tokens = BPFLEET_LOG_BURST;
			t->refill_ns = now;
		} else {
			t->refill_ns += add * step;
		}
	}
	if (!t->tokens) {
		why = 0;
		goto drop;
	}
	t->tokens -= 1;
	r = bpf_ringbuf_reserve(&bpfleet_log, sizeof(*r), 0);
	if (!r) {
		why = 1;
		goto drop;
	}
	r->magic = BPFLEET_LOG_MAGIC;
	r->version = BPFLEET_LOG_VERSION;
	r->level = (head >> 40) & 0xff;
	r->nfields = (head >> 32) & 0xff;
	r->msg_id = (__u32)head;
	r->pad = 0;
	r->ts_ns = now;
	r->revision = bpfleet_revision;
	r->origin = bpfleet_log_origin;
	r->fields[0] = a;
	r->fields[1] = b;
	r->fields[2] = c;
	r->fields[3] = d;
	bpf_ringbuf_submit(r, 0);
	return 1;
drop:
	n = bpf_map_lookup_elem(&bpfleet_log_drops, &why);
	if (n)
		*n += 1;
	return 0;
}

/* Number of arguments (0-4) and the four fields, zero-padded. */
#define __BPFLEET_NARG(...) __BPFLEET_NARG_(_, ##__VA_ARGS__, 4, 3, 2, 1, 0, 0)
#define __BPFLEET_NARG_(_, a, b, c, d, n, ...) n
#define __BPFLEET_FIELDS(_, a, b, c, d, ...) (__u64)(a), (__u64)(b), (__u64)(c), (__u64)(d)

#define BPFLEET_LOG(level, id, ...)                                            \
	__bpfleet_log(((__u64)(level) << 40) |                                 \
			      ((__u64)__BPFLEET_NARG(__VA_ARGS__) << 32) |     \
			      (__u32)(id),                                     \
		      __BPFLEET_FIELDS(_, ##__VA_ARGS__, 0, 0, 0, 0, 0))

#define BPFLEET_LOG_ERROR(id, ...) BPFLEET_LOG(BPFLEET_LVL_ERROR, id, ##__VA_ARGS__)
#define BPFLEET_LOG_WARN(id, ...) BPFLEET_LOG(BPFLEET_LVL_WARN, id, ##__VA_ARGS__)
#define BPFLEET_LOG_INFO(id, ...) BPFLEET_LOG(BPFLEET_LVL_INFO, id, ##__VA_ARGS__)
#define BPFLEET_LOG_DEBUG(id, ...) BPFLEET_LOG(BPFLEET_LVL_DEBUG, id, ##__VA_ARGS__)

#endif /* __BPFLEET_LOG_H */
