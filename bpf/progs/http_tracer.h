/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Wire format between the HTTP tracer's kernel side (http_tracer.bpf.c) and
 * its userspace reader (the bpfleet-tracer crate, which mirrors these
 * layouts and checks their sizes in a test).
 */
#ifndef __BPFLEET_HTTP_TRACER_H
#define __BPFLEET_HTTP_TRACER_H

/* Largest payload prefix captured per syscall. */
#define HTTP_MAX_CAPTURE 4096
/* Captured when bpfleet_config[BPFLEET_CFG_PAYLOAD_BYTES] is 0. */
#define HTTP_DEFAULT_CAPTURE 256

/* The tracer's own bpfleet_config slot (the agent writes it). */
#define CFG_IGNORE_TGID 2  /* never trace this process (the reader itself) */
/* A socket's "path key announced" mark holds in this epoch only: a new
 * reader empties http_paths, then changes it (every key announced again). */
#define CFG_PATHS_EPOCH 3
/* From the TracerPolicy (bpfleet_gate.h): BPFLEET_CFG_SAMPLE_PPM samples
 * connections, BPFLEET_CFG_PAYLOAD_BYTES caps the capture per syscall,
 * BPFLEET_CFG_PID_FILTER and BPFLEET_CFG_PORT_FILTER (a connection is
 * traced when its local or remote port is marked, skipped when either is
 * marked to skip). */

enum http_event_kind {
	/* Bytes moved on a connection in events mode. */
	HTTP_EV_DATA = 1,
	/* A connection in events mode was closed. */
	HTTP_EV_CLOSE = 3,
	/* The first time a path key is counted: payload = struct
	 * http_path_rec. */
	HTTP_EV_PATH = 4,
	/* A connection left metrics mode with a request pending (pipelining,
	 * a request line split across reads): payload = struct
	 * http_handover, the request the kernel had read; the connection's
	 * data events follow. */
	HTTP_EV_HANDOVER = 5,
};

/* Metrics mode: every exchange of a connection not sampled for events is
 * counted in http_aggs, keyed by process, revision, role, method, status
 * and path key; nothing reaches the ring buffer for it. */
enum http_method {
	HTTP_M_OTHER = 0,
	HTTP_M_GET = 1,
	HTTP_M_POST = 2,
	HTTP_M_PUT = 3,
	HTTP_M_DELETE = 4,
	HTTP_M_HEAD = 5,
	HTTP_M_OPTIONS = 6,
	HTTP_M_PATCH = 7,
};

/* Bytes of the path hashed into a path key (the query is never part). */
#define HTTP_PATH_MAX 128
/* Path keys counted per node before new paths share HTTP_PATH_OVERFLOW. */
#define HTTP_PATHS_MAX 4096
#define HTTP_PATH_OVERFLOW 1
/* Latency buckets: the OpenTelemetry HTTP bounds (5 ms .. 10 s), then +Inf. */
#define HTTP_BUCKETS 15

struct http_agg_key {
	__u32 tgid;
	/* Gate token of the revision that counted the exchange. */
	__u32 rev;
	__u64 path_key;
	/* 0: the connection closed before a response. */
	__u16 status;
	__u8 method;
	__u8 role;
	__u32 pad;
};

struct http_agg_val {
	__u64 count;
	__u64 sum_ns;
	__u64 buckets[HTTP_BUCKETS];
};

struct http_path_rec {
	__u64 key;
	__u8 path[HTTP_PATH_MAX];
};

struct http_handover {
	__u64 path_key;
	__u8 method;
	__u8 pad[7];
};

_Static_assert(sizeof(struct http_agg_key) == 24, "http_agg_key size");
_Static_assert(sizeof(struct http_agg_val) == 136, "http_agg_val size");

enum http_direction {
	HTTP_DIR_READ = 0,
	HTTP_DIR_WRITE = 1,
};

enum http_role {
	HTTP_ROLE_UNKNOWN = 0,
	HTTP_ROLE_SERVER = 1,
	HTTP_ROLE_CLIENT = 2,
};

struct http_event_hdr {
	__u64 ts_ns;
	/* The kernel socket behind the fd, as an opaque id: dup'ed fds of one
	 * connection share it. 0 when the fd is not a socket. */
	__u64 sock_id;
	__u64 cgroup_id;
	__u32 tgid;
	__u32 pid;
	__u32 fd;
	/* Bytes the syscall moved (its return value). */
	__u32 len;
	/* Bytes of payload that follow this header. */
	__u32 cap;
	__u16 local_port;
	__u16 remote_port;
	__u8 kind;
	__u8 dir;
	__u8 role;
	__u8 pad;
	/* Gate token of the revision whose program reported this event, so
	 * the reader attributes exchanges to revisions (0: not loaded by the
	 * agent). */
	__u32 rev;
};

/* The userspace decoder (bpfleet-tracer, src/event.rs) hard-codes these. */
_Static_assert(sizeof(struct http_event_hdr) == 56, "http_event_hdr size");
_Static_assert(__builtin_offsetof(struct http_event_hdr, tgid) == 24, "tgid offset");
_Static_assert(__builtin_offsetof(struct http_event_hdr, cap) == 40, "cap offset");
_Static_assert(__builtin_offsetof(struct http_event_hdr, local_port) == 44, "port offset");
_Static_assert(__builtin_offsetof(struct http_event_hdr, kind) == 48, "kind offset");
_Static_assert(__builtin_offsetof(struct http_event_hdr, rev) == 52, "rev offset");

struct http_event {
	struct http_event_hdr hdr;
	__u8 data[HTTP_MAX_CAPTURE];
};

#endif /* __BPFLEET_HTTP_TRACER_H */
