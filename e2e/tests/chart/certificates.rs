//! The mTLS material helm generates (helm TLS mode), verified with openssl:
//! each side's certificate chains to its own CA for its purpose and not to
//! the other's, the agent's names `bpfleet-agent`, keys match certificates,
//! and the agent's pod template carries a checksum of the material (so
//! pods restart when it changes).

use std::process::{Command, Output};

use crate::support::{AGENT, docs, named, render, text};

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
    // Pods restart when the material changes: the checksum covers it.
    let a = named(&d, "DaemonSet", AGENT)["spec"]["template"]["metadata"]["annotations"]
        ["checksum/tls"]
        .clone();
    assert!(a.is_string());
}
