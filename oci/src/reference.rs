//! References pinned by digest: `registry/repository[:tag]@sha256:<hex>`.
//! A tag alone moves; only the digest says what a node loads.

use crate::{Error, Result};

/// A reference with a sha256 digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pinned {
    inner: oci_client::Reference,
    digest: String,
}

impl Pinned {
    /// Parses `s`, refusing a reference without a sha256 digest or with a
    /// malformed one (the reason names the part at fault).
    pub fn parse(s: &str) -> Result<Self> {
        let inner: oci_client::Reference = s
            .parse()
            .map_err(|e| Error::Invalid(format!("image reference {s:?} does not parse: {e}")))?;
        let digest = inner
            .digest()
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "image reference {s:?} has no digest: pin it as <registry>/<repository>@sha256:<64 hex> (a tag alone can move)"
                ))
            })?
            .to_string();
        let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
            Error::Invalid(format!(
                "image reference {s:?}: only sha256 digests are accepted"
            ))
        })?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(Error::Invalid(format!(
                "image reference {s:?}: the digest must be 64 lowercase hex digits"
            )));
        }
        Ok(Self { inner, digest })
    }

    /// The registry's host (and port), as credentials are keyed; Docker
    /// Hub is `docker.io`.
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The repository, e.g. `bpfleet/http-tracer`.
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// `sha256:<hex>`.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The pinned digest's hex.
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }

    /// The same repository at another digest (a manifest of an index).
    pub fn at(&self, digest: &str) -> oci_client::Reference {
        oci_client::Reference::with_digest(
            self.inner.registry().to_string(),
            self.inner.repository().to_string(),
            digest.to_string(),
        )
    }

    /// The same repository at a tag (cosign's signature tag).
    pub fn tagged(&self, tag: &str) -> oci_client::Reference {
        oci_client::Reference::with_tag(
            self.inner.registry().to_string(),
            self.inner.repository().to_string(),
            tag.to_string(),
        )
    }

    /// The reference by digest only (a tag beside it is informative).
    pub fn by_digest(&self) -> oci_client::Reference {
        self.at(&self.digest)
    }
}

impl std::fmt::Display for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.inner.whole())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_digest_pinned_reference_parses_with_or_without_a_tag() {
        let p = Pinned::parse(&format!("127.0.0.1:5000/bpf/http@{D}")).unwrap();
        assert_eq!(p.registry(), "127.0.0.1:5000");
        assert_eq!(p.repository(), "bpf/http");
        assert_eq!(p.digest(), D);
        let t = Pinned::parse(&format!("reg.example/bpf/http:v1@{D}")).unwrap();
        assert_eq!(t.registry(), "reg.example");
        assert_eq!(t.by_digest().tag(), None);
        assert_eq!(t.tagged("sha256-x.sig").tag(), Some("sha256-x.sig"));
    }

    #[test]
    fn tags_alone_and_bad_digests_are_refused_naming_the_reason() {
        let e = Pinned::parse("reg.example/bpf/http:v1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no digest"), "{e}");
        let e = Pinned::parse("reg.example/bpf/http@sha256:abc")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not parse") || e.contains("64"), "{e}");
        let upper = format!(
            "reg.example/x@{}",
            D.to_uppercase().replace("SHA256", "sha256")
        );
        assert!(Pinned::parse(&upper).is_err());
        assert!(Pinned::parse("").is_err());
        assert!(Pinned::parse("UPPER/case@sha256:00").is_err());
    }

    #[test]
    fn docker_hub_references_name_docker_io() {
        let p = Pinned::parse(&format!("bpfleet/http@{D}")).unwrap();
        assert_eq!(p.registry(), "docker.io");
    }
}
