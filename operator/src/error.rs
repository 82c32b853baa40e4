//! The crate's one error type. Every error here is permanent for the object
//! that caused it (a spec the apiserver accepted but the operator cannot act
//! on): retrying with the same spec gives the same error.

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
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
