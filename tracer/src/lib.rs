//! The HTTP tracer's userspace runtime. The kernel side
//! (`bpf/progs/http_tracer.bpf.c`) reports syscall payload prefixes on a ring
//! buffer; this crate decodes those events ([`event`]), keeps one
//! [`bpfleet_httptrace::Connection`] per traced connection and turns events
//! into exchanges ([`pipeline`]).
//!
//! In production the node agent loads the tracer like any other managed
//! program and hands the pinned ring buffer to a [`pipeline::Pipeline`];
//! [`standalone`] loads and attaches it directly, for tests and benchmarks.

pub mod event;
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
