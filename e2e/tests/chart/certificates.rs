//! The mTLS material helm generates (helm TLS mode), verified with openssl:
//! each side's certificate chains to its own CA for its purpose and not to
//! the other's, the agent's names `bpfleet-agent`, keys match certificates,
//! and both pod templates carry a checksum of the certificates installed
//! (so pods restart when, and only when, they change).

use std::process::{Command, Output};

use sha2::{Digest, Sha256};

use crate::support::{AGENT, OPERATOR, docs, named, render, text};

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (scripts/setup.sh)")
}

#[test]
fn helm_generated_certificates_chain_to_separate_cas() {
    use base64::Engine;
    let d = docs(&render(&[]));
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    for (secret, prefix) in [
        ("bpfleet-agent-tls", "agent"),
        ("bpfleet-operator-tls", "op"),
    ] {
        let s = named(&d, "Secret", secret);
        assert_eq!(s["type"], "kubernetes.io/tls");
        for key in ["tls.crt", "tls.key", "ca.crt"] {
            let b = base64::engine::general_purpose::STANDARD
                .decode(s["data"][key].as_str().unwrap())
                .unwrap();
            std::fs::write(p(&format!("{prefix}-{key}")), b).unwrap();
        }
    }
    let ok = |args: &[&str]| {
        let out = openssl(args);
        assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
        text(&out)
    };
    // Each side's certificate chains to its own CA, for its purpose.
    ok(&[
        "verify",
        "-purpose",
        "sslserver",
        "-CAfile",
        &p("agent-ca.crt"),
        &p("agent-tls.crt"),
    ]);
    ok(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        &p("op-ca.crt"),
        &p("op-tls.crt"),
    ]);
    // ...and not to the other's: an agent's key cannot drive other agents.
    for (ca, cert) in [
        ("op-ca.crt", "agent-tls.crt"),
        ("agent-ca.crt", "op-tls.crt"),
    ] {
        let out = openssl(&["verify", "-CAfile", &p(ca), &p(cert)]);
        assert!(!out.status.success(), "{cert} verifies against {ca}");
    }
    let san = ok(&[
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        "-in",
        &p("agent-tls.crt"),
    ]);
    assert!(san.contains("DNS:bpfleet-agent"), "{san}");
    // Keys match certificates.
    for side in ["agent", "op"] {
        let a = ok(&[
            "x509",
            "-noout",
            "-pubkey",
            "-in",
            &p(&format!("{side}-tls.crt")),
        ]);
        let b = ok(&["pkey", "-pubout", "-in", &p(&format!("{side}-tls.key"))]);
        assert_eq!(a, b, "{side} key matches its certificate");
    }
    // Pods restart when the material changes: both pod templates carry a
    // checksum of the certificates this very rendering installs (a second,
    // freshly issued set once stood there: the first upgrade after an
    // install restarted every pod).
    let crt = |secret: &str| {
        named(&d, "Secret", secret)["data"]["tls.crt"]
            .as_str()
            .expect("tls.crt")
            .to_string()
    };
    let want = hex::encode(Sha256::digest(format!(
        "{}\n{}\n",
        crt("bpfleet-agent-tls"),
        crt("bpfleet-operator-tls")
    )))[..16]
        .to_string();
    for (kind, name) in [("DaemonSet", AGENT), ("Deployment", OPERATOR)] {
        let got =
            &named(&d, kind, name)["spec"]["template"]["metadata"]["annotations"]["checksum/tls"];
        assert_eq!(got.as_str(), Some(want.as_str()), "{kind} {name}");
    }
}
