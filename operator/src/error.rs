//! The crate's one error type. Errors of the pure logic are permanent for
//! the object that caused it (a spec the apiserver accepted but the
//! operator cannot act on): retrying with the same spec gives the same
//! error. Errors of the reconciler's I/O ([`Error::Kube`], [`Error::Agent`])
//! are transient and retried with backoff; [`Error::is_transient`] tells.

/// What can go wrong in the operator's pure logic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `pause.duration` that is not a Go-style duration (`30s`, `5m`, `1h30m`).
    #[error("invalid duration {0:?}: expected digits followed by s, m or h, e.g. 1h30m")]
    InvalidDuration(String),
    /// A Kubernetes quantity (e.g. `maxMapMemory`) that cannot be read.
    #[error(
        "invalid quantity {0:?}: expected a number with an optional suffix such as Ki, Mi, Gi, k, M, G"
    )]
    InvalidQuantity(String),
    /// `strategy` with none or several of immediate, canary and blueGreen.
    #[error("strategy must set exactly one of immediate, canary or blueGreen")]
    InvalidStrategy,
    /// A canary step with none or several of setNodePercent, pause, analysis.
    #[error("canary step {0} must set exactly one of setNodePercent, pause or analysis")]
    InvalidStep(usize),
    /// The spec could not be serialized to compute its revision.
    #[error("cannot serialize the spec to compute its revision: {0}")]
    Serialize(#[from] serde_json::Error),
    /// A label selector the operator cannot evaluate.
    #[error("invalid label selector: {0}")]
    InvalidSelector(String),
    /// A spec field the operator cannot act on, named in the message.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// Something valid that this operator or agent does not do.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Reaching an agent failed (endpoint, TLS material, transport).
    #[error("agent: {0}")]
    Agent(String),
    /// The operator's own configuration (flags, files).
    #[error("configuration: {0}")]
    Config(String),
    /// The apiserver refused or failed a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A finalizer step failed (wraps the reconcile error).
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// Whether retrying later may succeed without a spec change.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Kube(_) | Error::Agent(_) | Error::Finalizer(_))
    }

    /// Every [`Error::kind`], so that the error counters start at 0 for
    /// each (a dashboard's "errors by kind" shows 0, not "no data").
    pub const KINDS: [&'static str; 7] = [
        "invalid_spec",
        "serialize",
        "unsupported",
        "agent",
        "config",
        "kube",
        "finalizer",
    ];

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidDuration(_)
            | Error::InvalidQuantity(_)
            | Error::InvalidStrategy
            | Error::InvalidStep(_)
            | Error::InvalidSelector(_)
            | Error::InvalidSpec(_) => "invalid_spec",
            Error::Serialize(_) => "serialize",
            Error::Unsupported(_) => "unsupported",
            Error::Agent(_) => "agent",
            Error::Config(_) => "config",
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
