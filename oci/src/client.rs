//! Talking to a registry: pull an image pinned by digest (every manifest
//! and blob checked against its digest), read its cosign signatures, push
//! a new image. Built on `oci-client`; errors are sorted into
//! [`Error::Unavailable`] (ask again later) and [`Error::Invalid`] (never).

use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;

use crate::cosign::{self, SignatureLayer};
use crate::format::{self, Descriptor, Format, Labels, Manifest};
use crate::reference::Pinned;
use crate::{Error, Result, digest_of};

/// How the registry is reached.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// PEM bundles of CAs trusted beside the system's.
    pub ca_pems: Vec<Vec<u8>>,
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub insecure: Vec<String>,
    /// Connect and read timeout (default 10 s).
    pub timeout: Option<Duration>,
}

/// HTTP basic credentials for one registry. Its `Debug` prints neither
/// field: credentials may end up inside a logged value.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &"<redacted>")
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What a pull brings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pulled {
    /// The object's bytes.
    pub object: Vec<u8>,
    /// The format the image is in.
    pub format: Format,
    /// What the image declares.
    pub labels: Labels,
    /// The image manifest's digest (the platform's, under an index).
    pub manifest_digest: String,
}

/// A registry client. Each operation gets a connection pool and token
/// cache of its own: `oci-client` keeps the first credentials it saw for a
/// registry, and one request's credentials must never serve another's.
pub struct Registry {
    opts: RegistryOptions,
}

impl Registry {
    /// A client with `opts`; refuses a CA bundle that holds no certificate.
    pub fn new(opts: &RegistryOptions) -> Result<Self> {
        // kube and tonic here use ring; rustls needs one provider chosen
        // for the process. Installing twice is refused, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        for pem in &opts.ca_pems {
            if !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(Error::Invalid(
                    "a registry CA bundle holds no PEM certificate".into(),
                ));
            }
        }
        Ok(Self { opts: opts.clone() })
    }

    fn client(&self) -> oci_client::Client {
        let timeout = self.opts.timeout.unwrap_or(Duration::from_secs(10));
        oci_client::Client::new(ClientConfig {
            protocol: if self.opts.insecure.is_empty() {
                ClientProtocol::Https
            } else {
                ClientProtocol::HttpsExcept(self.opts.insecure.clone())
            },
            extra_root_certificates: self
                .opts
                .ca_pems
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            platform_resolver: None,
            read_timeout: Some(timeout),
            connect_timeout: Some(timeout),
            user_agent: concat!("bpfleet/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    /// Pulls `image`: the manifest at the pinned digest (under an index,
    /// this node's platform's), its config and its one layer, each checked
    /// against its digest, and the object out of the layer (at most
    /// `max_object` bytes).
    pub async fn pull(
        &self,
        image: &Pinned,
        creds: Option<&Credentials>,
        max_object: u64,
    ) -> Result<Pulled> {
        let auth = auth(creds);
        let client = self.client();
        let (bytes, digest) = self
            .manifest(&client, image, &image.by_digest(), image.digest(), &auth)
            .await?;
        let (config, layers, annotations, digest) = match Manifest::parse(&bytes)? {
            Manifest::Index(entries) => {
                let d = format::pick_platform(&entries, format::node_arch())?.clone();
                let r = image.at(&d.digest);
                let (bytes, digest) = self.manifest(&client, image, &r, &d.digest, &auth).await?;
                match Manifest::parse(&bytes)? {
                    Manifest::Image {
                        config,
                        layers,
                        annotations,
                    } => (config, layers, annotations, digest),
                    Manifest::Index(_) => {
                        return Err(Error::Invalid(format!(
                            "{image}: the index's {} entry is itself an index",
                            format::node_arch()
                        )));
                    }
                }
            }
            Manifest::Image {
                config,
                layers,
                annotations,
            } => (config, layers, annotations, digest),
        };
        let (fmt, layer) = format::classify(&config, &layers)?;
        let labels = match fmt {
            Format::Artifact => Labels::from_map(annotations.as_ref())?,
            Format::Bpfman => {
                let c = blob(&client, image, &config, format::MAX_METADATA).await?;
                format::config_labels(&c)?
            }
        };
        // A gzip layer is smaller than what it holds; the extraction
        // bounds the object itself.
        let blob = blob(
            &client,
            image,
            &layer,
            max_object.saturating_mul(2).max(1 << 20),
        )
        .await?;
        let object = format::extract(&layer, &blob, max_object)?;
        Ok(Pulled {
            object,
            format: fmt,
            labels,
            manifest_digest: digest,
        })
    }

    /// cosign's signatures of `image`'s pinned digest: `(payload,
    /// base64 signature)` per signature layer whose payload names that
    /// digest. Empty when the image has no signature tag.
    pub async fn signatures(
        &self,
        image: &Pinned,
        creds: Option<&Credentials>,
    ) -> Result<Vec<(Vec<u8>, String)>> {
        let auth = auth(creds);
        let tag = image.tagged(&cosign::signature_tag(image.digest()));
        let accepted = [format::OCI_MANIFEST, format::DOCKER_MANIFEST];
        let client = self.client();
        let bytes = match client.pull_manifest_raw(&tag, &auth, &accepted).await {
            Ok((b, _)) => b,
            Err(e) if not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(unavailable(image, "reading its cosign signatures", e)),
        };
        let mut out = Vec::new();
        for SignatureLayer {
            digest,
            size,
            signature_b64,
        } in cosign::signature_layers(&bytes)?
        {
            let d = Descriptor {
                media_type: cosign::PAYLOAD_MEDIA_TYPE.into(),
                digest,
                size,
            };
            let payload = blob(&client, image, &d, format::MAX_METADATA).await?;
            if cosign::check_payload(&payload, image.digest()).is_ok() {
                out.push((payload, signature_b64));
            }
        }
        Ok(out)
    }

    /// Pushes `built` to `repo` (`registry/repository`) under `tag`;
    /// returns the manifest digest.
    pub async fn push(
        &self,
        repo: &str,
        tag: &str,
        built: &format::Built,
        creds: Option<&Credentials>,
    ) -> Result<String> {
        let reference: oci_client::Reference = format!("{repo}:{tag}")
            .parse()
            .map_err(|e| Error::Invalid(format!("{repo}:{tag} is not a reference: {e}")))?;
        let auth = auth(creds);
        let client = self.client();
        client
            .auth(&reference, &auth, oci_client::RegistryOperation::Push)
            .await
            .map_err(|e| unavailable(&reference, "signing in to push", e))?;
        for (d, bytes) in &built.blobs {
            client
                .push_blob(&reference, bytes.clone(), &d.digest)
                .await
                .map_err(|e| unavailable(&reference, "pushing a blob", e))?;
        }
        let ct = http_header(built.manifest_type)?;
        client
            .push_manifest_raw(&reference, built.manifest.clone(), ct)
            .await
            .map_err(|e| unavailable(&reference, "pushing the manifest", e))?;
        Ok(built.digest())
    }

    /// A manifest at `at` (a digest reference of `image`'s repository),
    /// checked to hash to `want`.
    async fn manifest(
        &self,
        client: &oci_client::Client,
        image: &Pinned,
        at: &oci_client::Reference,
        want: &str,
        auth: &RegistryAuth,
    ) -> Result<(Vec<u8>, String)> {
        let accepted = [
            format::OCI_MANIFEST,
            format::DOCKER_MANIFEST,
            format::OCI_INDEX,
            format::DOCKER_LIST,
        ];
        let (bytes, _) = client
            .pull_manifest_raw(at, auth, &accepted)
            .await
            .map_err(|e| unavailable(image, "pulling its manifest", e))?;
        if bytes.len() as u64 > format::MAX_METADATA {
            return Err(Error::Invalid(format!(
                "{image}: manifest {want} is larger than 1 MiB"
            )));
        }
        let got = digest_of(&bytes);
        if got != want {
            return Err(Error::Invalid(format!(
                "{image}: the registry served manifest {got} for digest {want}"
            )));
        }
        Ok((bytes.to_vec(), got))
    }
}

/// A blob, refused when its descriptor says more than `max` bytes or
/// its bytes do not hash to its digest.
async fn blob(
    client: &oci_client::Client,
    image: &Pinned,
    d: &Descriptor,
    max: u64,
) -> Result<Vec<u8>> {
    if d.size > max {
        return Err(Error::Invalid(format!(
            "{image}: blob {} is {} bytes, at most {max} accepted",
            d.digest, d.size
        )));
    }
    let desc = OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size as i64,
        ..Default::default()
    };
    let mut out = Vec::with_capacity(d.size as usize);
    match client.pull_blob(&image.by_digest(), &desc, &mut out).await {
        Ok(()) => {}
        Err(OciDistributionError::DigestError(e)) => {
            return Err(Error::Invalid(format!(
                "{image}: blob {} does not match its digest ({e})",
                d.digest
            )));
        }
        Err(e) => return Err(unavailable(image, &format!("pulling blob {}", d.digest), e)),
    }
    let got = digest_of(&out);
    if got != d.digest || out.len() as u64 != d.size {
        return Err(Error::Invalid(format!(
            "{image}: blob {} does not match its digest (the registry served {got}, {} bytes)",
            d.digest,
            out.len()
        )));
    }
    Ok(out)
}

fn auth(creds: Option<&Credentials>) -> RegistryAuth {
    match creds {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    }
}

fn http_header(v: &str) -> Result<http::HeaderValue> {
    http::HeaderValue::from_str(v).map_err(|e| Error::Invalid(format!("media type {v}: {e}")))
}

fn not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            format!("{:?}", x.code).contains("NotFound")
                || format!("{:?}", x.code).contains("Unknown")
        }),
        _ => false,
    }
}

/// A registry failure as the caller reads it: what was being done and the
/// registry's (or the network's) answer, the whole chain of causes.
fn unavailable(image: &dyn std::fmt::Display, doing: &str, e: OciDistributionError) -> Error {
    let status = match &e {
        OciDistributionError::UnauthorizedError { .. } => {
            " (HTTP 401 Unauthorized: the registry refused the credentials, or needs some)"
        }
        OciDistributionError::AuthenticationFailure(_) => " (authentication failed)",
        OciDistributionError::ImageManifestNotFoundError(_) => " (HTTP 404: not in the registry)",
        _ => "",
    };
    let mut msg = format!("{image}: {doing}: {e}{status}");
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    Error::Unavailable(msg)
}
