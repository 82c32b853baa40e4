//! BPF objects in OCI registries.
//!
//! A program travels as an image pinned by digest. Two formats are read:
//! bpfman's bytecode image (one tar layer, gzip or not, holding the `.o` at
//! its root; the programs and maps it holds in the image config's labels
//! `io.ebpf.programs` and `io.ebpf.maps`, JSON objects of name to type) and
//! bpfleet's own artifact (the object itself as the single layer, of media
//! type [`format::OBJECT_MEDIA_TYPE`], the same labels as manifest
//! annotations). Both are written by [`client::Registry::push`].
//!
//! Signatures are cosign's classic ones: a `sha256-<hex>.sig` tag in the
//! image's repository whose layers are simple-signing payloads naming the
//! signed manifest digest, each signed with ECDSA P-256 ([`cosign`]). This
//! crate finds and checks the payloads; the caller verifies the signature
//! bytes against its own trusted keys.
//!
//! [`reference`], [`format`] and [`cosign`] are pure and tested here;
//! [`client`] talks to a registry and is tested against a real one by the
//! agent's tests.

pub mod client;
pub mod cosign;
pub mod format;
pub mod reference;

pub use client::{Credentials, Pulled, Registry, RegistryOptions};
pub use format::{Format, Labels};
pub use reference::Pinned;

/// What can go wrong with an image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The registry could not be asked or refused to answer (network,
    /// TLS, 401/403, 404, 5xx): the image may load later.
    #[error("{0}")]
    Unavailable(String),
    /// The content is not what it must be (digest mismatch, unknown
    /// format, no object, bad labels): it will never load.
    #[error("{0}")]
    Invalid(String),
}

/// Result with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}
