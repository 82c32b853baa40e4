/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * bpfleet HTTP tracer, kernel side: syscall tracepoints only (no kprobes).
 *
 * Enter hooks remember the arguments of read/write-family syscalls keyed by
 * thread; exit hooks copy a bounded prefix of the bytes actually moved into
 * the ring buffer, for connections learnt from accept/connect or recognised
 * by an HTTP start line. close ends a connection. Userspace
 * (bpfleet-tracer) reassembles HTTP from these events.
 *
 * Revision switching: the agent's dispatcher runs exactly one revision per
 * event. Enter hooks stamp the stored arguments with their revision; an exit
 * hook takes whatever arguments the thread stored, also when the enter ran
 * under the previous revision. With http_args, http_conns, http_events and
 * http_lost declared persistent (shared by all revisions), every syscall is
 * reported by exactly one revision across a switch: none lost, none twice.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "bpfleet_gate.h"
#include "http_tracer.h"

#define EINPROGRESS 115
/* Wake the reader when this many bytes wait in the ring (batched wake-ups). */
#define WAKEUP_BYTES (64 * 1024)

enum arg_kind {
	ARG_BUF = 0,    /* buf pointer */
	ARG_IOV = 1,    /* struct iovec array */
	ARG_MSG = 2,    /* struct user_msghdr */
	ARG_ACCEPT = 3, /* accept/accept4 */
	ARG_CONNECT = 4,
};

struct args {
	__u64 ptr;
	__u64 rev;
	__u32 fd;
	__u8 kind;
	__u8 dir;
	/* 1 between an enter hook and its exit hook. */
	__u8 set;
	__u8 pad;
};

struct conn_key {
	__u32 tgid;
	__u32 fd;
};

struct conn {
	__u64 sock_id;
	__u16 local_port;
	__u16 remote_port;
	__u8 role;
	/* 1: not HTTP or filtered out; kept so it is not probed again. */
	__u8 ignored;
	/* 1: data has been seen (the HTTP check is done on the first bytes). */
	__u8 seen;
	__u8 pad;
};

/* Arguments of the syscall in progress, per thread: task-local storage is
 * a pointer away from the task, where a hash keyed by thread id cost an
 * update on every enter and a lookup and delete on every exit. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct args);
} http_args SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct conn);
} http_conns SEC(".maps");

/* 8 MiB: about 250 ms of both ends of 50K requests/s. The reader maps the
 * ring twice (for records that wrap) and the kernel fills in every page at
 * mmap time, so the ring counts twice its size in the reader's RSS. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} http_events SEC(".maps");

/* Events dropped because the ring buffer was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} http_lost SEC(".maps");

/* Per-CPU scratch space: an event is built here, then copied out with its
 * real size. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct http_event);
} http_scratch SEC(".maps");

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

static __always_inline void store_args(__u32 fd, __u64 ptr, __u8 kind, __u8 dir)
{
	struct args *a;

	if (!traced_process(bpf_get_current_pid_tgid() >> 32))
		return;
	a = bpf_task_storage_get(&http_args, bpf_get_current_task_btf(), 0,
				 BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!a)
		return;
	a->ptr = ptr;
	a->rev = bpfleet_revision;
	a->fd = fd;
	a->kind = kind;
	a->dir = dir;
	a->set = 1;
}

/* Takes this thread's stored arguments, whichever revision stored them
 * (the revisions share http_args and its layout). */
static __always_inline int take_args(struct args *out)
{
	struct args *a = bpf_task_storage_get(&http_args, bpf_get_current_task_btf(), 0, 0);

	if (!a || !a->set)
		return 0;
	*out = *a;
	a->set = 0;
	return 1;
}

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&http_lost, &zero);

	if (lost)
		*lost += 1;
}

static __always_inline void submit(struct http_event *e, __u32 cap)
{
	__u64 size = sizeof(e->hdr) + (cap & (HTTP_MAX_CAPTURE - 1));
	__u64 avail = bpf_ringbuf_query(&http_events, BPF_RB_AVAIL_DATA);
	__u64 flags = BPF_RB_NO_WAKEUP;

	/* Wake the reader once, when this record takes the backlog over the
	 * threshold; not on every record while the backlog stays above it
	 * (a wake-up costs microseconds). The reader also polls on a timer. */
	if (avail < WAKEUP_BYTES && avail + size >= WAKEUP_BYTES)
		flags = BPF_RB_FORCE_WAKEUP;
	if (bpf_ringbuf_output(&http_events, e, size, flags))
		count_lost();
}

static __always_inline struct http_event *scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&http_scratch, &zero);
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

static __always_inline int sampled(void)
{
	__u64 ppm = bpfleet_config_get(BPFLEET_CFG_SAMPLE_PPM);

	return !ppm || ppm >= 1000000 || bpf_get_prandom_u32() % 1000000 < ppm;
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
	c.ignored = !port_wanted(&c) || !sampled();
	bpf_map_update_elem(&http_conns, &k, &c, BPF_ANY);
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

static __always_inline void data_exit(long ret)
{
	struct args a;
	struct conn_key k;
	struct conn *c, fresh = {};
	struct http_event *e;
	struct iovec iov;
	__u64 src;
	__u64 cap_cfg;
	__u32 n;

	if (!take_args(&a) || ret <= 0)
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

	k.tgid = bpf_get_current_pid_tgid() >> 32;
	k.fd = a.fd;
	c = bpf_map_lookup_elem(&http_conns, &k);
	if (c && c->ignored)
		return;
	if (!c) {
		/* Most unknown fds are files and pipes: look at four bytes
		 * before copying more. */
		__u8 peek[4];

		if (ret < 4 || bpf_probe_read_user(peek, sizeof(peek), (void *)src) ||
		    !looks_like_http(peek))
			return;
	}

	e = scratch();
	if (!e)
		return;
	cap_cfg = bpfleet_config_get(BPFLEET_CFG_PAYLOAD_BYTES);
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
		return;

	if (!c || !c->seen) {
		/* A connection is traced only if its first bytes are HTTP. */
		int http = n >= 4 && looks_like_http(e->data);

		if (!c) {
			if (!http)
				return;
			/* A connection older than the tracer: learn it now. */
			socket_ports(k.fd, &fresh);
			fresh.seen = 1;
			fresh.ignored = !port_wanted(&fresh) || !sampled();
			bpf_map_update_elem(&http_conns, &k, &fresh, BPF_ANY);
			c = bpf_map_lookup_elem(&http_conns, &k);
			if (!c || c->ignored)
				return;
		} else {
			c->seen = 1;
			if (!http) {
				c->ignored = 1;
				return;
			}
		}
	}
	fill_hdr(e, &k, c, HTTP_EV_DATA);
	e->hdr.len = ret;
	e->hdr.cap = n;
	e->hdr.dir = a.dir;
	submit(e, n);
}

/* Data syscalls: fd, buffer (or iovec / msghdr). */
SEC("tracepoint/syscalls/sys_enter_read")
int enter_read(struct trace_event_raw_sys_enter *ctx)
{
	store_args(ctx->args[0], ctx->args[1], ARG_BUF, HTTP_DIR_READ);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int enter_recvfrom(struct trace_event_raw_sys_enter *ctx)
{
	store_args(ctx->args[0], ctx->args[1], ARG_BUF, HTTP_DIR_READ);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_readv")
int enter_readv(struct trace_event_raw_sys_enter *ctx)
{
	store_args(ctx->args[0], ctx->args[1], ARG_IOV, HTTP_DIR_READ);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_recvmsg")
int enter_recvmsg(struct trace_event_raw_sys_enter *ctx)
{
	store_args(ctx->args[0], ctx->args[1], ARG_MSG, HTTP_DIR_READ);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_write")
int enter_write(struct trace_event_raw_sys_enter *ctx)
{
	store_args(ctx->args[0], ctx->args[1], ARG_BUF, HTTP_DIR_WRITE);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int enter_sendto(struct trace_event_raw_sys_enter *ctx)
{
	store_args(ctx->args[0], ctx->args[1], ARG_BUF, HTTP_DIR_WRITE);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_writev")
int enter_writev(struct trace_event_raw_sys_enter *ctx)
{
	store_args(ctx->args[0], ctx->args[1], ARG_IOV, HTTP_DIR_WRITE);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendmsg")
int enter_sendmsg(struct trace_event_raw_sys_enter *ctx)
{
	store_args(ctx->args[0], ctx->args[1], ARG_MSG, HTTP_DIR_WRITE);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_read")
int exit_read(struct trace_event_raw_sys_exit *ctx)
{
	data_exit(ctx->ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_recvfrom")
int exit_recvfrom(struct trace_event_raw_sys_exit *ctx)
{
	data_exit(ctx->ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_readv")
int exit_readv(struct trace_event_raw_sys_exit *ctx)
{
	data_exit(ctx->ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_recvmsg")
int exit_recvmsg(struct trace_event_raw_sys_exit *ctx)
{
	data_exit(ctx->ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_write")
int exit_write(struct trace_event_raw_sys_exit *ctx)
{
	data_exit(ctx->ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_sendto")
int exit_sendto(struct trace_event_raw_sys_exit *ctx)
{
	data_exit(ctx->ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_writev")
int exit_writev(struct trace_event_raw_sys_exit *ctx)
{
	data_exit(ctx->ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_sendmsg")
int exit_sendmsg(struct trace_event_raw_sys_exit *ctx)
{
	data_exit(ctx->ret);
	return 0;
}

/* Connection lifecycle. */
SEC("tracepoint/syscalls/sys_enter_accept4")
int enter_accept4(struct trace_event_raw_sys_enter *ctx)
{
	store_args(ctx->args[0], 0, ARG_ACCEPT, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_accept")
int enter_accept(struct trace_event_raw_sys_enter *ctx)
{
	store_args(ctx->args[0], 0, ARG_ACCEPT, 0);
	return 0;
}

static __always_inline void accept_exit(long ret)
{
	struct args a;

	if (!take_args(&a) || ret < 0)
		return;
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

SEC("tracepoint/syscalls/sys_enter_connect")
int enter_connect(struct trace_event_raw_sys_enter *ctx)
{
	store_args(ctx->args[0], 0, ARG_CONNECT, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	struct args a;

	if (!take_args(&a))
		return 0;
	if (ctx->ret == 0 || ctx->ret == -EINPROGRESS)
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
	if (!c->ignored && c->seen) {
		e = scratch();
		if (e) {
			fill_hdr(e, &k, c, HTTP_EV_CLOSE);
			submit(e, 0);
		}
	}
	bpf_map_delete_elem(&http_conns, &k);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
