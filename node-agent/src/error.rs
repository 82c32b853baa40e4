//! The agent's one error type and its mapping onto gRPC status codes.
//! It names no libbpf or libc type: [`crate::kernel`] converts those.

use tonic::Code;

/// Everything that can go wrong in the agent. Each variant maps onto one
/// gRPC status code; the message is what the caller reads.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed (empty names, unknown hook, absurd sizes).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The named program or revision is not loaded.
    #[error("not found: {0}")]
    NotFound(String),
    /// The (program, revision) exists with different content.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The request is well formed but cannot apply to the current state:
    /// unsupported hook, incompatible persistent map, unloading the active
    /// revision.
    #[error("{0}")]
    Precondition(String),
    /// The kernel verifier refused a program; carries a log excerpt.
    #[error("verifier rejected program {program}: {log}")]
    Verifier {
        /// BPF program (function) the verifier refused.
        program: String,
        /// The end of the verifier log.
        log: String,
    },
    /// Digest, signature or capability check failed.
    #[error("refused: {0}")]
    Denied(String),
    /// A budget (programs, map memory) or a kernel limit (programs on one
    /// tracepoint) would be exceeded.
    #[error("budget exceeded: {0}")]
    Budget(String),
    /// A kernel operation failed.
    #[error("{what}: {detail}")]
    Kernel {
        /// What the agent was doing.
        what: String,
        /// The kernel's (or libbpf's) answer, as text: the libbpf and OS
        /// error types stay behind [`crate::kernel`].
        detail: String,
    },
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the agent was doing.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The object's source (a registry) could not be read now: down,
    /// refusing the credentials, missing the image. The load may succeed
    /// later; the message is the registry's answer.
    #[error("source unavailable: {0}")]
    SourceUnavailable(String),
    /// Transport setup (listeners, TLS) failed.
    #[error("transport: {0}")]
    Transport(String),
}

/// Result with the agent's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A kernel error with what the agent was doing; [`crate::kernel`]
    /// converts libbpf's and the OS's errors through this.
    pub fn kernel(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Self::Kernel {
            what: what.into(),
            // The alternate form: libbpf's error prints its whole chain
            // with it, down to the kernel's errno ("failed to attach
            // tracepoint: Argument list too long"); the plain form stops
            // at libbpf's context and hides why.
            detail: format!("{detail:#}"),
        }
    }

    /// Wraps an I/O error with what the agent was doing.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// The gRPC status code this error maps onto.
    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::Precondition(_) => Code::FailedPrecondition,
            Self::Verifier { .. } => Code::InvalidArgument,
            Self::Denied(_) => Code::PermissionDenied,
            Self::Budget(_) => Code::ResourceExhausted,
            // Not Unavailable: the operator reads that as "agent not
            // reached". Aborted: this call failed, the same call may not.
            Self::SourceUnavailable(_) => Code::Aborted,
            Self::Kernel { .. } | Self::Io { .. } | Self::Transport(_) => Code::Internal,
        }
    }

    /// A short stable word for the kind of error (metrics, audit).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::NotFound(_) => "not_found",
            Self::AlreadyExists(_) => "already_exists",
            Self::Precondition(_) => "precondition",
            Self::Verifier { .. } => "verifier",
            Self::Denied(_) => "denied",
            Self::Budget(_) => "budget",
            Self::Kernel { .. } => "kernel",
            Self::Io { .. } => "io",
            Self::Transport(_) => "transport",
            Self::SourceUnavailable(_) => "source_unavailable",
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}
