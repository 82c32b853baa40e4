//! Who a TLS client is, and whether it may call the agent: the identities
//! a client certificate carries and the check against `--client-identity`.
//! The chain to `--client-ca` is verified by rustls during the handshake;
//! this module adds the second half, the pinned identity, so a certificate
//! the CA issued to anyone else (another component, a node) is refused.
//!
//! The rule, as TLS name checks go since RFC 6125: the certificate's DNS and
//! URI subject alternative names are its identities; only a certificate with
//! neither is known by its subject common name (the chart's and many
//! hand-made client certificates carry only `CN=bpfleet-operator`). DNS
//! names compare without regard to case, URIs and common names exactly.
//! No wildcard is expanded on either side. Pure: no I/O, tested without
//! root or a network.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{Error, Result};

/// What a certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identities {
    /// The subject distinguished name, for logs and the audit line.
    pub subject: String,
    /// DNS subject alternative names.
    pub dns: Vec<String>,
    /// URI subject alternative names (SPIFFE IDs and the like).
    pub uris: Vec<String>,
    /// The subject common name, when there is one.
    pub common_name: Option<String>,
}

impl Identities {
    /// Reads a DER certificate.
    pub fn of(der: &[u8]) -> Result<Self> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| Error::Denied(format!("client certificate unreadable: {e}")))?;
        let mut dns = Vec::new();
        let mut uris = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(d) => dns.push((*d).to_string()),
                    GeneralName::URI(u) => uris.push((*u).to_string()),
                    _ => {}
                }
            }
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        Ok(Self {
            subject: cert.subject().to_string(),
            dns,
            uris,
            common_name,
        })
    }

    /// The names this certificate is known by, as `dns:`, `uri:` or `cn:`
    /// strings (the CN only when there is no DNS or URI name).
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.dns.iter().map(|d| format!("dns:{d}")).collect();
        v.extend(self.uris.iter().map(|u| format!("uri:{u}")));
        if v.is_empty()
            && let Some(cn) = &self.common_name
        {
            v.push(format!("cn:{cn}"));
        }
        v
    }

    /// Whether one of the certificate's identities is in `allowed`.
    pub fn matches(&self, allowed: &[String]) -> bool {
        if self.dns.is_empty() && self.uris.is_empty() {
            return self
                .common_name
                .as_ref()
                .is_some_and(|cn| allowed.iter().any(|a| a == cn));
        }
        self.dns
            .iter()
            .any(|d| allowed.iter().any(|a| a.eq_ignore_ascii_case(d)))
            || self.uris.iter().any(|u| allowed.iter().any(|a| a == u))
    }
}

/// The verdict on a client's leaf certificate (DER): Ok when it carries an
/// allowed identity, otherwise a refusal naming the subject, what the
/// certificate carries and what is allowed.
pub fn admit(leaf: &[u8], allowed: &[String]) -> Result<Identities> {
    let ids = Identities::of(leaf)?;
    if ids.matches(allowed) {
        return Ok(ids);
    }
    let names = ids.names();
    Err(Error::Denied(format!(
        "client certificate {} (identities [{}]) is not an allowed client identity [{}] (--client-identity)",
        ids.subject,
        names.join(", "),
        allowed.join(", ")
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.subject_alt_names = sans;
        p.self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .to_vec()
    }

    fn dns(s: &str) -> SanType {
        SanType::DnsName(s.try_into().unwrap())
    }

    fn allowed(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_certificate_without_names_is_known_by_its_common_name() {
        let c = cert(Some("bpfleet-operator"), vec![]);
        let ids = admit(&c, &allowed(&["bpfleet-operator"])).unwrap();
        assert_eq!(ids.names(), ["cn:bpfleet-operator"]);
        let e = admit(&c, &allowed(&["bpfleet-operator2"])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let m = e.to_string();
        assert!(
            m.contains("CN=bpfleet-operator") && m.contains("--client-identity"),
            "{m}"
        );
        // Exact: no prefix, suffix or case folding of a common name.
        for other in ["bpfleet", "Bpfleet-Operator", "bpfleet-operator "] {
            assert!(admit(&c, &allowed(&[other])).is_err(), "{other}");
        }
    }

    #[test]
    fn subject_alternative_names_win_over_the_common_name() {
        // CN says operator, the SAN says node: the SAN is the identity.
        let c = cert(Some("bpfleet-operator"), vec![dns("node-1.example")]);
        assert!(admit(&c, &allowed(&["bpfleet-operator"])).is_err());
        assert!(admit(&c, &allowed(&["NODE-1.example"])).is_ok());
        let c = cert(
            None,
            vec![SanType::URI(
                "spiffe://cluster.local/ns/bpfleet/sa/bpfleet-operator"
                    .try_into()
                    .unwrap(),
            )],
        );
        let ids = admit(
            &c,
            &allowed(&["x", "spiffe://cluster.local/ns/bpfleet/sa/bpfleet-operator"]),
        )
        .unwrap();
        assert_eq!(
            ids.names(),
            ["uri:spiffe://cluster.local/ns/bpfleet/sa/bpfleet-operator"]
        );
        assert!(
            admit(
                &c,
                &allowed(&["spiffe://cluster.local/ns/bpfleet/sa/other"])
            )
            .is_err()
        );
    }

    #[test]
    fn wildcards_are_not_expanded() {
        let c = cert(None, vec![dns("*.example")]);
        assert!(admit(&c, &allowed(&["op.example"])).is_err());
        let c = cert(None, vec![dns("op.example")]);
        assert!(admit(&c, &allowed(&["*.example"])).is_err());
    }

    #[test]
    fn no_name_at_all_and_garbage_are_refused() {
        let c = cert(None, vec![]);
        assert!(admit(&c, &allowed(&["bpfleet-operator"])).is_err());
        assert!(admit(b"not a certificate", &allowed(&["bpfleet-operator"])).is_err());
        assert!(admit(&cert(Some("a"), vec![]), &[]).is_err());
    }
}
