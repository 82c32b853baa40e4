/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * bpfleet HTTP tracer, kernel side: syscall tracepoints only (no kprobes).
 *
 * Exit hooks of the read/write-family syscalls read the syscall's arguments
 * from the task's saved registers and look at the bytes actually moved, for
 * connections learnt from accept/connect or recognised by an HTTP start
 * line (one program run per syscall: there are no enter hooks). close
 * ends a connection. By default only the accepting (server) end is traced
 * (bpfleet_config[BPFLEET_CFG_ENDS] selects the ends).
 *
 * Two modes per connection:
 * - metrics (the default): the exit hooks read the request line (method,
 *   path up to '?', hashed into a path key) and the response's status
 *   code, pair them in the connection's state, and count the exchange in
 *   http_aggs (per CPU, per process, revision, role, method, status and
 *   path key: a count, the latency sum and OpenTelemetry latency buckets).
 *   Nothing reaches the ring buffer but each new path key's bytes, once.
 * - events: every read and write goes to the ring buffer with a prefix of
 *   its bytes, and userspace (bpfleet-tracer) reassembles HTTP: for the
 *   connections sampled for events (BPFLEET_CFG_SAMPLE_PPM; in metrics
 *   mode 0 samples none), for every connection when BPFLEET_CFG_EVENTS is
 *   1, and for what metrics mode cannot frame (pipelined requests, a
 *   request line cut across reads): such a connection is handed over to
 *   events with its pending request (HTTP_EV_HANDOVER) and stays there.
 *   An exchange is counted by one mode only.
 *
 * Revision switching: the agent's dispatcher runs exactly one revision per
 * event, and each syscall is one event (its exit). With http_conns,
 * http_socks, http_aggs, http_paths, http_events and http_lost declared
 * persistent (shared by all revisions), every syscall is handled by exactly
 * one revision across a switch, and every exchange is counted once, under
 * the revision whose program saw its response.
 *
 * Its warnings go to the node's log (bpfleet_log.h), only on the paths
 * where something is lost: message 1, an event the ring buffer refused
 * [event kind, tgid]; message 2, an exchange http_aggs had no room for
 * [tgid]. Both are also counted in http_lost and BPFLEET_LOST.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>
#include "bpfleet_gate.h"
#include "bpfleet_log.h"
#include "http_tracer.h"

/* Slot 8 picks the connections traced as events: in metrics mode 0 picks
 * none, so a CPU budget has nothing to cut until the policy samples. */
BPFLEET_DECLARE_SAMPLING(none);

#define EINPROGRESS 115
/* Message ids of the tracer's log records (bpfleet_log.h). */
#define HTTP_LOG_RING_FULL 1
#define HTTP_LOG_AGGS_FULL 2
/* Wake the reader when this many bytes wait in the ring (batched wake-ups). */
#define WAKEUP_BYTES (64 * 1024)
/* Request head bytes looked at for a second request (pipelining). */
#define HEAD_SCAN 256

enum arg_kind {
	ARG_BUF = 0, /* buf pointer */
	ARG_IOV = 1, /* struct iovec array */
	ARG_MSG = 2, /* struct user_msghdr */
};

enum conn_mode {
	CONN_METRICS = 0,
	CONN_EVENTS = 1,
};

/* The arguments of the syscall an exit hook runs for. */
struct args {
	__u64 ptr;
	__u32 fd;
	__u8 kind;
	__u8 dir;
	__u8 pad[2];
};

struct conn_key {
	__u32 tgid;
	__u32 fd;
};

/* Per fd: what the tracer decided about it. */
struct conn {
	__u64 sock_id;
	__u16 local_port;
	__u16 remote_port;
	__u8 role;
	/* 1: not HTTP, not a traced end, or filtered out; kept so it is not
	 * probed again. */
	__u8 ignored;
	/* 1: data has been seen (the HTTP check is done on the first bytes). */
	__u8 seen;
	/* The mode this fd's socket starts in. */
	__u8 mode;
};

/* Per socket (the fds of one socket, dup'ed or not, share it): the mode it
 * is in and, in metrics mode, the request read and not yet answered. */
struct xchg {
	/* When the pending request was read (0: none pending). */
	__u64 req_ts;
	__u64 path_key;
	/* The last path key this socket saw announced (or already known),
	 * in paths epoch named_epoch: a keep-alive connection repeating its
	 * path skips http_paths. */
	__u64 named;
	__u32 named_epoch;
	__u8 method;
	__u8 mode;
	__u8 pad[2];
};

/* LRU: a flood of connections (or of files the tracer learnt are not
 * HTTP) evicts the least recently used instead of failing. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct conn);
} http_conns SEC(".maps");

/* Keyed by the socket (struct sock address), or tgid << 32 | fd for an fd
 * that is not a socket. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct xchg);
} http_socks SEC(".maps");

/* Metrics mode's counts. Cumulative: the agent reads them (and deletes the
 * entries of processes that exited once it has their last values). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, struct http_agg_key);
	__type(value, struct http_agg_val);
} http_aggs SEC(".maps");

/* Path keys already announced to the agent (HTTP_EV_PATH). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, HTTP_PATHS_MAX);
	__type(key, __u64);
	__type(value, __u8);
} http_paths SEC(".maps");

/* 8 MiB: about 250 ms of both ends of 50K requests/s in events mode. The
 * reader maps the ring twice (for records that wrap) and the kernel fills
 * in every page at mmap time, so the ring counts twice its size in the
 * reader's RSS. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} http_events SEC(".maps");

/* Events dropped because the ring buffer was full, and exchanges metrics
 * mode could not count (http_aggs full). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} http_lost SEC(".maps");

/* Per-CPU scratch space: an event is built here, then copied out with its
 * real size. Slot 0 for data, slot 1 for the records sent beside it. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct http_event);
} http_scratch SEC(".maps");

/* Never written: the zero value a new http_aggs entry starts from. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct http_agg_val);
} http_agg_zero SEC(".maps");

static __always_inline int traced_process(__u32 tgid)
{
	__u64 ignore = bpfleet_config_get(CFG_IGNORE_TGID);

	if (ignore && tgid == ignore)
		return 0;
	if (bpfleet_config_get(BPFLEET_CFG_PID_FILTER) &&
	    !bpf_map_lookup_elem(&bpfleet_pids, &tgid))
		return 0;
	return 1;
}

/* The syscall's fd and buffer, from the registers the task entered the
 * kernel with (still saved at the syscall's exit). */
static __always_inline void syscall_args(struct args *a, __u8 kind, __u8 dir)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());

	a->fd = PT_REGS_PARM1_SYSCALL(regs);
	a->ptr = PT_REGS_PARM2_SYSCALL(regs);
	a->kind = kind;
	a->dir = dir;
}

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&http_lost, &zero);

	if (lost)
		*lost += 1;
	/* http_lost is shared by every revision; this one is the revision's
	 * own, for its Stats and the maxEventsLost gate. */
	BPFLEET_LOST();
}

/* Clears the first cap bytes of e->data. http_scratch is pinned with the
 * revision's maps: without this, the last bytes captured on each CPU
 * (request heads with their Authorization and Cookie values, before the
 * agent redacts them) stayed readable there (`bpftool map dump`) until the
 * next capture. bpf_probe_read_kernel zero-fills its destination when the
 * read fails, and a read from address 0 always fails: a memset of a
 * variable length the verifier accepts, in one helper call. */
static __always_inline void wipe(struct http_event *e, __u32 cap)
{
	__u32 n = cap & (HTTP_MAX_CAPTURE - 1);

	asm volatile("" : "+r"(n));
	n &= HTTP_MAX_CAPTURE - 1;
	bpf_probe_read_kernel(e->data, n, (void *)0);
}

/* 0 when the record went out. The captured bytes are wiped from the
 * scratch space either way. */
static __always_inline int submit(struct http_event *e, __u32 cap)
{
	__u64 size = sizeof(e->hdr) + (cap & (HTTP_MAX_CAPTURE - 1));
	__u64 avail = bpf_ringbuf_query(&http_events, BPF_RB_AVAIL_DATA);
	__u64 flags = BPF_RB_NO_WAKEUP;
	int err = 0;

	/* Wake the reader once, when this record takes the backlog over the
	 * threshold; not on every record while the backlog stays above it
	 * (a wake-up costs microseconds). The reader also polls on a timer. */
	if (avail < WAKEUP_BYTES && avail + size >= WAKEUP_BYTES)
		flags = BPF_RB_FORCE_WAKEUP;
	if (bpf_ringbuf_output(&http_events, e, size, flags)) {
		count_lost();
		BPFLEET_LOG_WARN(HTTP_LOG_RING_FULL, e->hdr.kind, e->hdr.tgid);
		err = -1;
	}
	wipe(e, cap);
	return err;
}

static __always_inline struct http_event *scratch(__u32 slot)
{
	return bpf_map_lookup_elem(&http_scratch, &slot);
}

/* Local and remote port of a socket fd of the current task (CO-RE). */
static __always_inline void socket_ports(__u32 fd, struct conn *c)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct file **fds = BPF_CORE_READ(task, files, fdt, fd);
	struct file *f = NULL;
	struct socket *sock;
	struct sock *sk;

	if (!fds || bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return;
	sock = BPF_CORE_READ(f, private_data);
	if (!sock)
		return;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return;
	c->sock_id = (__u64)sk;
	c->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	c->remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
}

static __always_inline int port_wanted(struct conn *c)
{
	__u64 mode = bpfleet_config_get(BPFLEET_CFG_PORT_FILTER);
	__u8 *l, *r;

	if (!mode)
		return 1;
	l = bpf_map_lookup_elem(&bpfleet_ports, &c->local_port);
	r = bpf_map_lookup_elem(&bpfleet_ports, &c->remote_port);
	if ((mode & BPFLEET_PORTS_SKIP) &&
	    ((l && *l == BPFLEET_PORT_SKIP) || (r && *r == BPFLEET_PORT_SKIP)))
		return 0;
	if (!(mode & BPFLEET_PORTS_ONLY))
		return 1;
	return (l && *l == BPFLEET_PORT_TRACE) || (r && *r == BPFLEET_PORT_TRACE);
}

static __always_inline int end_wanted(__u8 role)
{
	__u64 ends = bpfleet_config_get(BPFLEET_CFG_ENDS);

	if (!ends)
		ends = BPFLEET_ENDS_SERVER;
	if (role == HTTP_ROLE_SERVER)
		return ends & BPFLEET_ENDS_SERVER;
	if (role == HTTP_ROLE_CLIENT)
		return ends & BPFLEET_ENDS_CLIENT;
	return 0;
}

/* Whether a connection is traced and in which mode, once its role and
 * ports are known. */
static __always_inline void decide(struct conn *c)
{
	__u64 ppm = bpfleet_config_get(BPFLEET_CFG_SAMPLE_PPM);
	int hit = ppm >= 1000000 || (ppm && bpf_get_prandom_u32() % 1000000 < ppm);

	c->ignored = !end_wanted(c->role) || !port_wanted(c);
	if (c->ignored)
		return;
	if (bpfleet_config_get(BPFLEET_CFG_EVENTS) & 1) {
		/* Every event on its own: the share sampled is traced (0: all),
		 * the rest not at all. */
		c->mode = CONN_EVENTS;
		c->ignored = ppm && !hit;
	} else {
		/* Every connection counted; the share sampled also as events. */
		c->mode = hit ? CONN_EVENTS : CONN_METRICS;
	}
}

static __always_inline void fill_hdr(struct http_event *e, struct conn_key *k, struct conn *c,
				     __u8 kind)
{
	__u64 id = bpf_get_current_pid_tgid();

	e->hdr.ts_ns = bpf_ktime_get_ns();
	e->hdr.sock_id = c->sock_id;
	e->hdr.cgroup_id = bpf_get_current_cgroup_id();
	e->hdr.tgid = id >> 32;
	e->hdr.pid = (__u32)id;
	e->hdr.fd = k->fd;
	e->hdr.len = 0;
	e->hdr.cap = 0;
	e->hdr.local_port = c->local_port;
	e->hdr.remote_port = c->remote_port;
	e->hdr.kind = kind;
	e->hdr.dir = 0;
	e->hdr.role = c->role;
	e->hdr.pad = 0;
	e->hdr.rev = (__u32)bpfleet_revision;
}

static __always_inline void open_conn(__u32 fd, __u8 role)
{
	struct conn_key k = { .tgid = bpf_get_current_pid_tgid() >> 32, .fd = fd };
	struct conn c = { .role = role };

	socket_ports(fd, &c);
	decide(&c);
	bpf_map_update_elem(&http_conns, &k, &c, BPF_ANY);
	/* A new socket may sit at the address of one closed unseen. */
	if (c.sock_id)
		bpf_map_delete_elem(&http_socks, &c.sock_id);
}

/* First bytes of an HTTP/1.x request or response. */
static __always_inline int looks_like_http(const __u8 *p)
{
	switch (p[0]) {
	case 'G': return p[1] == 'E' && p[2] == 'T' && p[3] == ' ';
	case 'P': return (p[1] == 'O' && p[2] == 'S' && p[3] == 'T') ||
			 (p[1] == 'U' && p[2] == 'T' && p[3] == ' ') ||
			 (p[1] == 'A' && p[2] == 'T' && p[3] == 'C');
	case 'D': return p[1] == 'E' && p[2] == 'L' && p[3] == 'E';
	case 'H': return (p[1] == 'E' && p[2] == 'A' && p[3] == 'D') ||
			 (p[1] == 'T' && p[2] == 'T' && p[3] == 'P');
	case 'O': return p[1] == 'P' && p[2] == 'T' && p[3] == 'I';
	default: return 0;
	}
}

static __always_inline int is_response(const __u8 *p)
{
	return p[0] == 'H' && p[1] == 'T' && p[2] == 'T' && p[3] == 'P';
}

/* The method of a request line (its first four bytes already matched
 * looks_like_http) and where its target starts. */
static __always_inline __u8 request_method(const __u8 *p, __u32 *target)
{
	switch (p[0]) {
	case 'G': *target = 4; return HTTP_M_GET;
	case 'D': *target = 7; return HTTP_M_DELETE;
	case 'O': *target = 8; return HTTP_M_OPTIONS;
	case 'H': *target = 5; return HTTP_M_HEAD;
	default: break;
	}
	if (p[1] == 'O') {
		*target = 5;
		return HTTP_M_POST;
	}
	if (p[1] == 'U') {
		*target = 4;
		return HTTP_M_PUT;
	}
	*target = 6;
	return HTTP_M_PATCH;
}

/* Latency bucket: the first OpenTelemetry bound (5 ms .. 10 s) the
 * duration does not exceed, else +Inf (index 14). */
static __always_inline __u32 bucket_of(__u64 ns)
{
	const __u64 ms = 1000000;

	if (ns <= 100 * ms) {
		if (ns <= 5 * ms) return 0;
		if (ns <= 10 * ms) return 1;
		if (ns <= 25 * ms) return 2;
		if (ns <= 50 * ms) return 3;
		if (ns <= 75 * ms) return 4;
		return 5;
	}
	if (ns <= 250 * ms) return 6;
	if (ns <= 500 * ms) return 7;
	if (ns <= 750 * ms) return 8;
	if (ns <= 1000 * ms) return 9;
	if (ns <= 2500 * ms) return 10;
	if (ns <= 5000 * ms) return 11;
	if (ns <= 7500 * ms) return 12;
	if (ns <= 10000 * ms) return 13;
	return 14;
}

/* Counts the pending exchange of `x` with `status` (0: no response). */
static __always_inline void count_exchange(struct conn_key *k, struct conn *c, struct xchg *x,
					  __u16 status)
{
	struct http_agg_key key = {
		.tgid = k->tgid,
		.rev = (__u32)bpfleet_revision,
		.path_key = x->path_key,
		.status = status,
		.method = x->method,
		.role = c->role,
	};
	__u64 took = bpf_ktime_get_ns() - x->req_ts;
	struct http_agg_val *v;
	__u32 zero = 0, b;

	x->req_ts = 0;
	v = bpf_map_lookup_elem(&http_aggs, &key);
	if (!v) {
		struct http_agg_val *z = bpf_map_lookup_elem(&http_agg_zero, &zero);

		if (z)
			bpf_map_update_elem(&http_aggs, &key, z, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&http_aggs, &key);
		if (!v) {
			count_lost();
			BPFLEET_LOG_WARN(HTTP_LOG_AGGS_FULL, k->tgid);
			return;
		}
	}
	v->count += 1;
	v->sum_ns += took;
	b = bucket_of(took);
	if (b < HTTP_BUCKETS)
		v->buckets[b] += 1;
}

/* What metrics mode takes from a request head. */
struct req_line {
	__u64 key;
	/* The path is e->data[target..end). */
	__u32 target;
	__u32 end;
	__u8 method;
	/* 0: the request line ends in a later read, or a second request
	 * follows this one in the same read: userspace must frame it. */
	__u8 framed;
	__u8 pad[6];
};

/* A byte of `w` that is `c`: its top bit set in the result, exactly (no
 * borrow from a neighbour, unlike the shorter zero-byte test). */
static __always_inline __u64 bytes_equal(__u64 w, __u64 c)
{
	const __u64 lo7 = 0x7f7f7f7f7f7f7f7fULL;
	__u64 t = w ^ (c * 0x0101010101010101ULL);

	return ~(((t & lo7) + lo7) | t | lo7);
}

/* 1 when a second request starts right after the head that starts before
 * `from` (its blank line, then a method), within e->data[0..n). The blank
 * line is found eight bytes at a time: "\n\r" appears in a head only
 * inside "\r\n\r\n", so a window of 8 bytes is tested for a '\n' followed
 * by '\r' at once, and only a hit is looked at byte by byte (windows step
 * by 7: a pair across two windows is whole in the second). Global, so the
 * verifier checks it once for any `from`. */
__noinline int head_pipelined(struct http_event *e, __u32 from, __u32 n)
{
	__u32 i, j, at, pos;
	__u64 w, pairs, bit;
	__u8 next[4];

	if (!e || from > HTTP_MAX_CAPTURE / 4)
		return 0;
	for (i = 0; i < HEAD_SCAN / 7 + 1; i++) {
		at = from + i * 7;
		if (at + 3 >= n)
			return 0;
		w = *(__u64 *)&e->data[at & (HTTP_MAX_CAPTURE / 2 - 1)];
		/* Byte k is '\n' and byte k + 1 is '\r' (little endian). */
		pairs = bytes_equal(w, '\n') & (bytes_equal(w, '\r') >> 8);
		for (j = 0; j < 7 && pairs; j++) {
			bit = pairs & -pairs;
			pairs &= pairs - 1;
			/* The '\n' at byte k: k from the lowest set bit (8k + 7). */
			pos = at + (bit == 1ULL << 7 ? 0 : bit == 1ULL << 15 ? 1 :
				    bit == 1ULL << 23 ? 2 : bit == 1ULL << 31 ? 3 :
				    bit == 1ULL << 39 ? 4 : bit == 1ULL << 47 ? 5 : 6);
			/* "\r\n\r\n" starts one byte before the pair. */
			if (pos < 1 || pos + 2 >= n)
				return 0;
			if (e->data[(pos - 1) & (HTTP_MAX_CAPTURE - 1)] != '\r' ||
			    e->data[(pos + 2) & (HTTP_MAX_CAPTURE - 1)] != '\n')
				continue;
			pos += 3;
			if (pos + 4 > n)
				return 0;
			next[0] = e->data[pos & (HTTP_MAX_CAPTURE - 1)];
			next[1] = e->data[(pos + 1) & (HTTP_MAX_CAPTURE - 1)];
			next[2] = e->data[(pos + 2) & (HTTP_MAX_CAPTURE - 1)];
			next[3] = e->data[(pos + 3) & (HTTP_MAX_CAPTURE - 1)];
			return looks_like_http(next);
		}
	}
	return 0;
}

/* Parses the request head in e->data[0..n) (ret bytes were read; its first
 * four bytes are a request's). A global function: the verifier checks it
 * once, not once per caller path.
 *
 * The path key: FNV-1a over the path up to '?', '#', a space or
 * HTTP_PATH_MAX bytes, a segment that starts with a digit hashed as one
 * '#' (so /users/1 and /users/2 share a key and the agent's route rules
 * name it from the first one seen). Pipelining: a second request starting
 * right after the head's blank line, when the whole read was captured
 * (a bigger read is not a few small pipelined requests). */
__noinline int parse_request(struct http_event *e, __u32 n, __u32 ret, struct req_line *out)
{
	__u64 h = 0xcbf29ce484222325ULL;
	__u32 i, pos, target = 0;
	int skipping = 0, done = 0;
	__u8 prev = 0, ch;

	if (!e || !out)
		return 0;
	if (n > HTTP_MAX_CAPTURE - 1)
		n = HTTP_MAX_CAPTURE - 1;
	out->method = request_method(e->data, &target);
	out->target = target;
	out->end = target;
	out->framed = 0;
	for (i = 0; i < HTTP_PATH_MAX; i++) {
		pos = target + i;
		if (pos >= n)
			break;
		ch = e->data[pos & (HTTP_MAX_CAPTURE - 1)];
		if (ch == ' ' || ch == '?' || ch == '#' || ch == '\r' || ch == '\n') {
			done = 1;
			break;
		}
		out->end = pos + 1;
		if (skipping && ch != '/')
			continue;
		skipping = 0;
		if (prev == '/' && ch >= '0' && ch <= '9') {
			skipping = 1;
			ch = '#';
		}
		prev = ch;
		h = (h ^ ch) * 0x100000001b3ULL;
	}
	/* Keys 0 and HTTP_PATH_OVERFLOW are reserved. */
	out->key = h > HTTP_PATH_OVERFLOW ? h : h + 2;
	/* Longer than what is hashed: the prefix names it. */
	if (i == HTTP_PATH_MAX)
		done = 1;
	if (!done && n == ret)
		return 0;
	out->framed = 1;
	if (n == ret && head_pipelined(e, out->end, n))
		out->framed = 0;
	return 0;
}

/* Announces a path key's bytes the first time it is counted; a key that
 * does not fit in http_paths becomes HTTP_PATH_OVERFLOW. x->named is the
 * key once the agent has its bytes (or they are in the ring). */
static __always_inline __u64 announce_path(struct conn_key *k, struct conn *c, struct xchg *x,
					   __u64 key, __u64 src, __u32 at, __u32 len)
{
	__u32 epoch = bpfleet_config_get(CFG_PATHS_EPOCH);
	struct http_event *p;
	__u8 one = 1;

	if (x->named == key && x->named_epoch == epoch)
		return key;
	x->named_epoch = epoch;
	if (bpf_map_lookup_elem(&http_paths, &key)) {
		x->named = key;
		return key;
	}
	x->named = 0;
	if (bpf_map_update_elem(&http_paths, &key, &one, BPF_NOEXIST)) {
		if (!bpf_map_lookup_elem(&http_paths, &key))
			return HTTP_PATH_OVERFLOW;
		x->named = key;
		return key;
	}
	p = scratch(1);
	if (!p) {
		bpf_map_delete_elem(&http_paths, &key);
		return key;
	}
	fill_hdr(p, k, c, HTTP_EV_PATH);
	*(__u64 *)p->data = key;
	if (len > HTTP_PATH_MAX)
		len = HTTP_PATH_MAX;
	asm volatile("" : "+r"(len));
	len &= HTTP_PATH_MAX * 2 - 1;
	if (len > HTTP_PATH_MAX)
		len = HTTP_PATH_MAX;
	if (len && bpf_probe_read_user(p->data + 8, len, (void *)(src + at)))
		len = 0;
	p->hdr.cap = 8 + len;
	/* Not announced (ring full): forget it, so the next request tries
	 * again and the agent never holds a key it cannot name. */
	if (submit(p, 8 + len))
		bpf_map_delete_elem(&http_paths, &key);
	else
		x->named = key;
	return key;
}

/* Copies min(ret, the capture size) bytes from src into e->data; the
 * count, or 0. */
static __always_inline __u32 capture(struct http_event *e, __u64 src, long ret)
{
	__u64 cap_cfg = bpfleet_config_get(BPFLEET_CFG_PAYLOAD_BYTES);
	__u32 n;

	if (!cap_cfg)
		cap_cfg = HTTP_DEFAULT_CAPTURE;
	n = ret < cap_cfg ? ret : cap_cfg;
	if (n > HTTP_MAX_CAPTURE - 1)
		n = HTTP_MAX_CAPTURE - 1;
	/* Keep clang from merging the bound into something the verifier
	 * cannot follow. */
	asm volatile("" : "+r"(n));
	n &= HTTP_MAX_CAPTURE - 1;
	if (n == 0 || bpf_probe_read_user(e->data, n, (void *)src))
		return 0;
	return n;
}

static __always_inline void send_data(struct http_event *e, struct conn_key *k, struct conn *c,
				      long ret, __u32 n, __u8 dir)
{
	fill_hdr(e, k, c, HTTP_EV_DATA);
	e->hdr.len = ret;
	e->hdr.cap = n;
	e->hdr.dir = dir;
	submit(e, n);
}

/* Metrics mode cannot frame this connection: hand its pending request (if
 * any) over to userspace and report its events from now on. */
static __always_inline void hand_over(struct conn_key *k, struct conn *c, struct xchg *x,
				      __u8 req_dir)
{
	struct http_event *h;

	x->mode = CONN_EVENTS;
	if (!x->req_ts)
		return;
	h = scratch(1);
	if (h) {
		struct http_handover *ho = (void *)h->data;

		fill_hdr(h, k, c, HTTP_EV_HANDOVER);
		h->hdr.ts_ns = x->req_ts;
		h->hdr.dir = req_dir;
		h->hdr.cap = sizeof(*ho);
		ho->path_key = x->path_key;
		ho->method = x->method;
		submit(h, sizeof(*ho));
	}
	x->req_ts = 0;
}

/* Metrics mode: one read or write of a traced connection. */
static __always_inline void metrics_exit(struct conn_key *k, struct conn *c, struct xchg *x,
					 struct args *a, __u64 src, long ret)
{
	__u8 req_dir = c->role == HTTP_ROLE_SERVER ? HTTP_DIR_READ : HTTP_DIR_WRITE;
	struct http_event *e;
	struct req_line rl = {};
	__u8 peek[4];
	__u32 n;

	if (a->dir != req_dir) {
		/* A response starts with its status line; anything else is a
		 * body, or an answer to a request from before the tracer. */
		__u8 line[12];
		__u16 status;

		if (!x->req_ts) {
			/* An fd whose socket had no request yet speaks first:
			 * not HTTP. */
			if (!c->seen)
				c->ignored = 1;
			return;
		}
		c->seen = 1;
		if (ret < 12 || bpf_probe_read_user(line, sizeof(line), (void *)src) ||
		    !is_response(line))
			return;
		if (line[9] < '0' || line[9] > '9' || line[10] < '0' || line[10] > '9' ||
		    line[11] < '0' || line[11] > '9')
			return;
		status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
		/* Interim responses (100 Continue) are not the answer; 101
		 * ends HTTP on the connection. */
		if (status >= 100 && status < 200 && status != 101)
			return;
		count_exchange(k, c, x, status);
		if (status == 101)
			c->ignored = 1;
		return;
	}
	if (x->req_ts) {
		/* More of the pending request (headers, body), or the next
		 * request before the answer: pipelining. */
		if (ret < 4 || bpf_probe_read_user(peek, sizeof(peek), (void *)src) ||
		    !looks_like_http(peek) || is_response(peek))
			return;
		e = scratch(0);
		if (!e)
			return;
		n = capture(e, src, ret);
		hand_over(k, c, x, req_dir);
		if (n)
			send_data(e, k, c, ret, n, a->dir);
		return;
	}
	e = scratch(0);
	if (!e)
		return;
	n = capture(e, src, ret);
	if (n < 4 || !looks_like_http(e->data) || is_response(e->data)) {
		wipe(e, n);
		if (!c->seen)
			c->ignored = 1;
		return;
	}
	c->seen = 1;
	parse_request(e, n, ret, &rl);
	if (!rl.framed) {
		/* The request line ends in a later read, or a second request
		 * follows this one: userspace frames it. */
		hand_over(k, c, x, req_dir);
		send_data(e, k, c, ret, n, a->dir);
		return;
	}
	x->method = rl.method;
	x->path_key = announce_path(k, c, x, rl.key, src, rl.target, rl.end - rl.target);
	/* Counted in the kernel: the captured head goes nowhere. */
	wipe(e, n);
	x->req_ts = bpf_ktime_get_ns();
}

/* Events mode: the bytes go to the ring buffer. */
static __always_inline void events_exit(struct conn_key *k, struct conn *c, struct args *a,
					__u64 src, long ret)
{
	struct http_event *e = scratch(0);
	__u32 n;

	if (!e)
		return;
	n = capture(e, src, ret);
	if (!n)
		return;
	if (!c->seen) {
		/* A connection is traced only if its first bytes are HTTP. */
		c->seen = 1;
		if (n < 4 || !looks_like_http(e->data)) {
			wipe(e, n);
			c->ignored = 1;
			return;
		}
	}
	send_data(e, k, c, ret, n, a->dir);
}

static __always_inline __u64 sock_key(struct conn_key *k, struct conn *c)
{
	return c->sock_id ? c->sock_id : ((__u64)k->tgid << 32 | k->fd);
}

/* The socket's state, made in the fd's mode the first time. */
static __always_inline struct xchg *sock_state(struct conn_key *k, struct conn *c)
{
	__u64 key = sock_key(k, c);
	struct xchg *x = bpf_map_lookup_elem(&http_socks, &key);
	struct xchg fresh = { .mode = c->mode };

	if (x)
		return x;
	bpf_map_update_elem(&http_socks, &key, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&http_socks, &key);
}

static __always_inline void data_exit(long ret, __u8 kind, __u8 dir)
{
	struct args a;
	struct conn_key k;
	struct conn *c;
	struct xchg *x;
	struct iovec iov;
	__u64 src;

	if (ret <= 0)
		return;
	syscall_args(&a, kind, dir);
	k.tgid = bpf_get_current_pid_tgid() >> 32;
	k.fd = a.fd;
	c = bpf_map_lookup_elem(&http_conns, &k);
	/* The early exit: a connection known not to be traced (an untraced
	 * end, a filtered port, not HTTP) costs this one lookup. */
	if (c && c->ignored)
		return;
	if (!traced_process(k.tgid))
		return;
	src = a.ptr;
	if (a.kind == ARG_MSG) {
		struct user_msghdr msg;

		if (bpf_probe_read_user(&msg, sizeof(msg), (void *)a.ptr))
			return;
		src = (__u64)msg.msg_iov;
	}
	if (a.kind == ARG_IOV || a.kind == ARG_MSG) {
		if (bpf_probe_read_user(&iov, sizeof(iov), (void *)src))
			return;
		src = (__u64)iov.iov_base;
	}
	if (!c) {
		/* A connection older than the tracer, or not a connection:
		 * four bytes tell. What is not HTTP is remembered as ignored
		 * (until close), so it costs one lookup from now on. */
		struct conn fresh = {};
		__u8 peek[4];

		if (ret < 4 || bpf_probe_read_user(peek, sizeof(peek), (void *)src) ||
		    !looks_like_http(peek)) {
			fresh.ignored = 1;
			bpf_map_update_elem(&http_conns, &k, &fresh, BPF_NOEXIST);
			return;
		}
		/* Who speaks first says which end this is: reading a request
		 * or writing a response is the server. */
		fresh.role = (a.dir == HTTP_DIR_READ) != is_response(peek) ? HTTP_ROLE_SERVER
									   : HTTP_ROLE_CLIENT;
		socket_ports(k.fd, &fresh);
		decide(&fresh);
		bpf_map_update_elem(&http_conns, &k, &fresh, BPF_ANY);
		c = bpf_map_lookup_elem(&http_conns, &k);
		if (!c || c->ignored)
			return;
		if (c->mode == CONN_METRICS)
			c->seen = 1;
	}
	x = sock_state(&k, c);
	if (!x)
		return;
	if (x->mode == CONN_EVENTS)
		events_exit(&k, c, &a, src, ret);
	else
		metrics_exit(&k, c, x, &a, src, ret);
}

/* Data syscalls: fd, buffer (or iovec / msghdr). */
#define DATA_EXIT(name, tp, kind, dir)                                         \
	SEC("tracepoint/syscalls/" tp)                                         \
	int name(struct trace_event_raw_sys_exit *ctx)                         \
	{                                                                      \
		data_exit(ctx->ret, kind, dir);                                \
		return 0;                                                      \
	}

DATA_EXIT(exit_read, "sys_exit_read", ARG_BUF, HTTP_DIR_READ)
DATA_EXIT(exit_recvfrom, "sys_exit_recvfrom", ARG_BUF, HTTP_DIR_READ)
DATA_EXIT(exit_readv, "sys_exit_readv", ARG_IOV, HTTP_DIR_READ)
DATA_EXIT(exit_recvmsg, "sys_exit_recvmsg", ARG_MSG, HTTP_DIR_READ)
DATA_EXIT(exit_write, "sys_exit_write", ARG_BUF, HTTP_DIR_WRITE)
DATA_EXIT(exit_sendto, "sys_exit_sendto", ARG_BUF, HTTP_DIR_WRITE)
DATA_EXIT(exit_writev, "sys_exit_writev", ARG_IOV, HTTP_DIR_WRITE)
DATA_EXIT(exit_sendmsg, "sys_exit_sendmsg", ARG_MSG, HTTP_DIR_WRITE)

/* Connection lifecycle. accept's return value is the new fd. */
static __always_inline void accept_exit(long ret)
{
	if (ret >= 0 && traced_process(bpf_get_current_pid_tgid() >> 32))
		open_conn(ret, HTTP_ROLE_SERVER);
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int exit_accept4(struct trace_event_raw_sys_exit *ctx)
{
	accept_exit(ctx->ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept")
int exit_accept(struct trace_event_raw_sys_exit *ctx)
{
	accept_exit(ctx->ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	struct args a;

	if (ctx->ret != 0 && ctx->ret != -EINPROGRESS)
		return 0;
	if (!traced_process(bpf_get_current_pid_tgid() >> 32))
		return 0;
	syscall_args(&a, ARG_BUF, 0);
	open_conn(a.fd, HTTP_ROLE_CLIENT);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_close")
int enter_close(struct trace_event_raw_sys_enter *ctx)
{
	struct conn_key k = { .tgid = bpf_get_current_pid_tgid() >> 32, .fd = ctx->args[0] };
	struct conn *c;
	struct http_event *e;

	c = bpf_map_lookup_elem(&http_conns, &k);
	if (!c)
		return 0;
	if (!c->ignored) {
		__u64 key = sock_key(&k, c);
		struct xchg *x = bpf_map_lookup_elem(&http_socks, &key);

		if (c->seen && x && x->mode == CONN_METRICS) {
			/* A request that never got its answer. */
			if (x->req_ts)
				count_exchange(&k, c, x, 0);
		} else if (c->seen) {
			e = scratch(0);
			if (e) {
				fill_hdr(e, &k, c, HTTP_EV_CLOSE);
				submit(e, 0);
			}
		}
		/* The socket's state goes with its first fd closed (a dup'ed
		 * fd left open starts afresh in its fd's mode). */
		if (x)
			bpf_map_delete_elem(&http_socks, &key);
	}
	bpf_map_delete_elem(&http_conns, &k);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
