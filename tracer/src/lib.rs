//! The HTTP tracer's userspace runtime. The kernel side
//! (`bpf/progs/http_tracer.bpf.c`) reports syscall payload prefixes on a ring
//! buffer; this crate decodes those events ([`event`]), keeps one
//! [`bpfleet_httptrace::Connection`] per traced connection and turns events
//! into exchanges ([`pipeline`]); metrics mode's in-kernel counts are
//! decoded and turned into their growth per read in [`aggregate`].
//!
//! In production the node agent loads the tracer like any other managed
//! program and hands the pinned ring buffer to a [`pipeline::Pipeline`];
//! [`standalone`] loads and attaches it directly, for tests and benchmarks.

/// Every program of the tracer object with the tracepoint it attaches to,
/// as a TracerProgram (or an agent Load request) lists them.
pub const PROGRAMS: [(&str, &str); 12] = [
    ("exit_read", "syscalls/sys_exit_read"),
    ("exit_readv", "syscalls/sys_exit_readv"),
    ("exit_recvfrom", "syscalls/sys_exit_recvfrom"),
    ("exit_recvmsg", "syscalls/sys_exit_recvmsg"),
    ("exit_write", "syscalls/sys_exit_write"),
    ("exit_writev", "syscalls/sys_exit_writev"),
    ("exit_sendto", "syscalls/sys_exit_sendto"),
    ("exit_sendmsg", "syscalls/sys_exit_sendmsg"),
    ("exit_accept", "syscalls/sys_exit_accept"),
    ("exit_accept4", "syscalls/sys_exit_accept4"),
    ("exit_connect", "syscalls/sys_exit_connect"),
    ("enter_close", "syscalls/sys_enter_close"),
];

/// Maps that must be shared by every revision so a switch neither drops nor
/// doubles a syscall, and the reader keeps one ring buffer. (The policy's
/// `bpfleet_config`, `bpfleet_pids` and `bpfleet_ports` are shared by the
/// agent without being named.)
pub const PERSISTENT_MAPS: [&str; 6] = [
    "http_aggs",
    "http_conns",
    "http_events",
    "http_lost",
    "http_paths",
    "http_socks",
];

pub mod aggregate;
pub mod event;
pub mod pinned;
pub mod pipeline;
pub mod standalone;

/// Everything that can fail here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed tracer event: {0}")]
    Event(&'static str),
    #[error("{what}: {source}")]
    Bpf {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error(
        "tracefs is not mounted at /sys/kernel/tracing: tracepoints cannot be attached (mount -t tracefs tracefs /sys/kernel/tracing)"
    )]
    NoTracefs,
    #[error("map {0} not found in the tracer object")]
    MissingMap(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn bpf(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> Error {
    let what = what.into();
    move |source| Error::Bpf { what, source }
}
