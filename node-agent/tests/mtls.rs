//! Transport security: over TCP the agent accepts only clients whose
//! certificate chains to the configured CA.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bpfleet_proto::v1 as pb;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

struct Pki {
    ca_pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

fn ca(name: &str) -> Pki {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let issuer = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    Pki {
        ca_pem: issuer.pem(),
        issuer,
    }
}

fn leaf(pki: &Pki, cn: &str, sans: &[&str]) -> (String, String) {
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &pki.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_of_the_configured_ca_get_in() {
    let root = PinRoot::new("mtls");
    let dir = root.scratch.path();
    let good = ca("bpfleet-test-ca");
    let evil = ca("other-ca");
    let (srv_cert, srv_key) = leaf(&good, "agent", &["localhost", "127.0.0.1"]);
    let (op_cert, op_key) = leaf(&good, "bpfleet-operator", &[]);
    let (evil_cert, evil_key) = leaf(&evil, "bpfleet-operator", &[]);
    for (n, v) in [
        ("ca.pem", &good.ca_pem),
        ("srv.pem", &srv_cert),
        ("srv.key", &srv_key),
    ] {
        std::fs::write(dir.join(n), v).unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let f = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let _agent = AgentProc::start(
        &root,
        None,
        &[
            "--listen",
            &listen,
            "--tls-cert",
            &f("srv.pem"),
            "--tls-key",
            &f("srv.key"),
            "--client-ca",
            &f("ca.pem"),
        ],
    );
    let addr = format!("https://localhost:{port}");
    // Wait for the TCP listener (the socket appears first).
    let mut tries = 0;
    while std::net::TcpStream::connect(&listen).is_err() {
        tries += 1;
        assert!(tries < 200, "TCP listener did not come up");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // The operator's certificate works, and the audit log names it.
    let mut c = bpfleet_agent::cli::connect_tls(
        &addr,
        good.ca_pem.as_bytes(),
        Some((op_cert.into(), op_key.into())),
        "localhost",
    )
    .await
    .unwrap();
    assert!(
        c.health(pb::HealthRequest {})
            .await
            .unwrap()
            .into_inner()
            .ok
    );
    c.unload(pb::UnloadRequest {
        program: "nothing".into(),
        revision: String::new(),
    })
    .await
    .unwrap();
    let audit = std::fs::read_to_string(root.audit_log()).unwrap();
    assert!(audit.contains("CN=bpfleet-operator"), "{audit}");

    // No client certificate: refused.
    let res = async {
        let mut c =
            bpfleet_agent::cli::connect_tls(&addr, good.ca_pem.as_bytes(), None, "localhost")
                .await?;
        c.health(pb::HealthRequest {})
            .await
            .map_err(|s| bpfleet_agent::Error::Transport(s.to_string()))
    }
    .await;
    assert!(res.is_err(), "a client without a certificate got in");

    // A certificate from another CA: refused.
    let res = async {
        let mut c = bpfleet_agent::cli::connect_tls(
            &addr,
            good.ca_pem.as_bytes(),
            Some((evil_cert.into(), evil_key.into())),
            "localhost",
        )
        .await?;
        c.health(pb::HealthRequest {})
            .await
            .map_err(|s| bpfleet_agent::Error::Transport(s.to_string()))
    }
    .await;
    assert!(res.is_err(), "a client of another CA got in");
}
