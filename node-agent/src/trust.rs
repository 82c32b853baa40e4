//! Trust before load: the sha256 digest and the cosign-compatible signature
//! (`cosign sign-blob --key`: ECDSA P-256 over SHA-256 of the blob, DER
//! signature, base64) against the configured public keys.

use base64::Engine;
use p256::ecdsa::{Signature, VerifyingKey, signature::Verifier};
use p256::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Refuses unless `bytes` hash to `expected` (hex, any case); returns the
/// object's digest (lower-case hex), so a caller never hashes it twice.
pub fn check_digest(bytes: &[u8], expected: &str) -> Result<String> {
    let expected = expected.trim().to_ascii_lowercase();
    let expected = expected.strip_prefix("sha256:").unwrap_or(&expected);
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Invalid(format!(
            "sha256 must be 64 hex digits, got {:?}",
            bpfleet_oci::format::excerpt(expected, 80)
        )));
    }
    let actual = sha256_hex(bytes);
    if actual != expected {
        return Err(Error::Denied(format!(
            "sha256 mismatch: expected {expected}, object has {actual}"
        )));
    }
    Ok(actual)
}

/// The public keys signatures are checked against.
#[derive(Debug, Clone, Default)]
pub struct Verifiers {
    keys: Vec<(String, VerifyingKey)>,
    allow_unsigned: bool,
}

impl Verifiers {
    /// Keys from PEM files (`cosign.pub` format); `allow_unsigned` lets
    /// objects without a signature through.
    pub fn new(pems: &[(String, String)], allow_unsigned: bool) -> Result<Self> {
        let mut keys = Vec::new();
        for (name, pem) in pems {
            let key = VerifyingKey::from_public_key_pem(pem).map_err(|e| {
                Error::Invalid(format!("public key {name} is not a P-256 PEM key: {e}"))
            })?;
            keys.push((name.clone(), key));
        }
        Ok(Self {
            keys,
            allow_unsigned,
        })
    }

    /// Whether objects without any signature are let through.
    pub fn allows_unsigned(&self) -> bool {
        self.allow_unsigned
    }

    /// Checks a signature that is there (an image's cosign signature over
    /// its payload): the name of the trusted key that verifies it.
    pub fn check_signed(&self, bytes: &[u8], signature_b64: &str) -> Result<String> {
        if signature_b64.trim().is_empty() {
            return Err(Error::Denied("the signature is empty".into()));
        }
        self.check(bytes, signature_b64)?
            .ok_or_else(|| Error::Denied("the signature is empty".into()))
    }

    /// Checks `signature_b64` over `bytes`; returns the name of the key that
    /// verified it, or `None` for an allowed unsigned object.
    pub fn check(&self, bytes: &[u8], signature_b64: &str) -> Result<Option<String>> {
        let sig_b64 = signature_b64.trim();
        if sig_b64.is_empty() {
            if self.allow_unsigned {
                return Ok(None);
            }
            return Err(Error::Denied(
                "object is unsigned and the agent requires signatures \
                 (start it with --allow-unsigned to opt out)"
                    .into(),
            ));
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sig_b64)
            .map_err(|e| Error::Denied(format!("signature is not base64: {e}")))?;
        let sig = Signature::from_der(&raw)
            .or_else(|_| Signature::from_slice(&raw))
            .map_err(|e| {
                Error::Denied(format!("signature is not an ECDSA P-256 signature: {e}"))
            })?;
        if self.keys.is_empty() {
            return Err(Error::Denied(
                "object is signed but the agent has no trusted public key (--trusted-key)".into(),
            ));
        }
        for (name, key) in &self.keys {
            if key.verify(bytes, &sig).is_ok() {
                return Ok(Some(name.clone()));
            }
        }
        Err(Error::Denied(format!(
            "signature does not verify against any of the {} trusted keys",
            self.keys.len()
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use p256::ecdsa::{SigningKey, signature::Signer};
    use p256::pkcs8::{EncodePublicKey, LineEnding};

    fn key(seed: u8) -> (SigningKey, String) {
        let sk = SigningKey::from_slice(&[seed; 32]).unwrap();
        let pem = sk
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        (sk, pem)
    }

    fn sign(sk: &SigningKey, data: &[u8]) -> String {
        let sig: Signature = sk.sign(data);
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    }

    #[test]
    fn digest_must_match() {
        let d = sha256_hex(b"abc");
        assert!(check_digest(b"abc", &d).is_ok());
        assert!(check_digest(b"abc", &format!("sha256:{}", d.to_uppercase())).is_ok());
        assert!(matches!(check_digest(b"abd", &d), Err(Error::Denied(_))));
        assert!(matches!(
            check_digest(b"abc", "xyz"),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn cosign_style_signature_verifies_and_tampering_is_refused() {
        let (sk, pem) = key(7);
        let v = Verifiers::new(&[("ops".into(), pem)], false).unwrap();
        let sig = sign(&sk, b"object");
        assert_eq!(v.check(b"object", &sig).unwrap(), Some("ops".into()));
        assert!(matches!(v.check(b"objecT", &sig), Err(Error::Denied(_))));
        let (other, _) = key(9);
        assert!(matches!(
            v.check(b"object", &sign(&other, b"object")),
            Err(Error::Denied(_))
        ));
        assert!(matches!(v.check(b"object", "%%%"), Err(Error::Denied(_))));
    }

    #[test]
    fn unsigned_needs_the_opt_out() {
        let strict = Verifiers::new(&[], false).unwrap();
        let e = strict.check(b"x", "").unwrap_err().to_string();
        assert!(e.contains("unsigned"), "{e}");
        let lax = Verifiers::new(&[], true).unwrap();
        assert_eq!(lax.check(b"x", "").unwrap(), None);
    }
}
