//! cosign's classic image signatures: for an image at digest
//! `sha256:<hex>`, the tag `sha256-<hex>.sig` in the same repository holds
//! a manifest whose layers are simple-signing payloads
//! ([`PAYLOAD_MEDIA_TYPE`]), each with its base64 ECDSA signature over the
//! payload bytes in the [`SIGNATURE_ANNOTATION`] annotation. A payload
//! names the manifest digest it vouches for; a signature is worth
//! something only when that digest is the one being loaded.

use serde_json::Value;

use crate::{Error, Result};

/// Media type of a signature layer.
pub const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Layer annotation carrying the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The `critical.type` of an image signature payload.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";

/// The tag cosign stores the signatures of `digest` under.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// One signature layer: the payload's descriptor and the signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureLayer {
    pub digest: String,
    pub size: u64,
    pub signature_b64: String,
}

/// The signature layers of a signature manifest (layers of other types
/// or without the annotation are skipped).
pub fn signature_layers(manifest: &[u8]) -> Result<Vec<SignatureLayer>> {
    let v: Value = serde_json::from_slice(manifest)
        .map_err(|e| Error::Invalid(format!("signature manifest is not JSON: {e}")))?;
    let layers = v
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(layers
        .iter()
        .filter(|l| l.get("mediaType").and_then(Value::as_str) == Some(PAYLOAD_MEDIA_TYPE))
        .filter_map(|l| {
            Some(SignatureLayer {
                digest: l.get("digest")?.as_str()?.to_string(),
                size: l.get("size")?.as_u64()?,
                signature_b64: l
                    .get("annotations")?
                    .get(SIGNATURE_ANNOTATION)?
                    .as_str()?
                    .to_string(),
            })
        })
        .collect())
}

/// Checks that `payload` is an image signature payload for `digest`;
/// the reason names what differs.
pub fn check_payload(payload: &[u8], digest: &str) -> Result<()> {
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| Error::Invalid(format!("signature payload is not JSON: {e}")))?;
    let critical = v
        .get("critical")
        .ok_or_else(|| Error::Invalid("signature payload has no critical section".into()))?;
    let kind = critical.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != PAYLOAD_TYPE {
        return Err(Error::Invalid(format!(
            "signature payload type is {kind:?}, not {PAYLOAD_TYPE:?}"
        )));
    }
    let signed = critical
        .get("image")
        .and_then(|i| i.get("docker-manifest-digest"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if signed != digest {
        return Err(Error::Invalid(format!(
            "signature payload vouches for {signed:?}, not for {digest}"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_is_the_digest_with_a_dash() {
        assert_eq!(signature_tag("sha256:ab12"), "sha256-ab12.sig");
    }

    #[test]
    fn payloads_must_name_the_digest_loaded() {
        let p = |d: &str, t: &str| {
            serde_json::json!({"critical":{"identity":{"docker-reference":"r/x"},
                "image":{"docker-manifest-digest":d},"type":t},"optional":null})
            .to_string()
        };
        check_payload(p("sha256:aa", PAYLOAD_TYPE).as_bytes(), "sha256:aa").unwrap();
        let e = check_payload(p("sha256:bb", PAYLOAD_TYPE).as_bytes(), "sha256:aa").unwrap_err();
        assert!(e.to_string().contains("sha256:bb"), "{e}");
        assert!(check_payload(p("sha256:aa", "other").as_bytes(), "sha256:aa").is_err());
        assert!(check_payload(b"[]", "sha256:aa").is_err());
    }

    #[test]
    fn only_annotated_payload_layers_count() {
        let m = serde_json::json!({"layers":[
            {"mediaType":PAYLOAD_MEDIA_TYPE,"digest":"sha256:1","size":3,"annotations":{SIGNATURE_ANNOTATION:"c2ln"}},
            {"mediaType":PAYLOAD_MEDIA_TYPE,"digest":"sha256:2","size":3},
            {"mediaType":"other","digest":"sha256:3","size":3,"annotations":{SIGNATURE_ANNOTATION:"x"}}]});
        let l = signature_layers(m.to_string().as_bytes()).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(
            (l[0].digest.as_str(), l[0].signature_b64.as_str()),
            ("sha256:1", "c2ln")
        );
    }
}
