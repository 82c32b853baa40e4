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
/* From the TracerPolicy (bpfleet_gate.h): BPFLEET_CFG_SAMPLE_PPM samples
 * connections, BPFLEET_CFG_PAYLOAD_BYTES caps the capture per syscall,
 * BPFLEET_CFG_PID_FILTER and BPFLEET_CFG_PORT_FILTER (a connection is
 * traced when its local or remote port is marked, skipped when either is
 * marked to skip). */

enum http_event_kind {
	/* Bytes moved on a traced connection. */
	HTTP_EV_DATA = 1,
	/* A traced connection was closed. */
	HTTP_EV_CLOSE = 3,
};

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
