//! Transport security: over TCP the agent accepts only clients whose
//! certificate chains to the configured CA (`--client-ca`) and carries a
//! pinned identity (`--client-identity`): no certificate, another CA's
//! certificate, and the right CA's certificate for another name are all
//! refused, the last on every RPC, read-only ones included, and audited.
//! A TCP listener without `--client-identity` does not start.

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

/// A certificate of `pki` for `cn` with DNS names `sans` (PEM cert, key).
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
    // The right CA, other names: a node's certificate; one whose CN says
    // operator but whose SAN (the identity when present) says otherwise.
    let (node_cert, node_key) = leaf(&good, "bpfleet-node", &[]);
    let (mixed_cert, mixed_key) = leaf(&good, "bpfleet-operator", &["node-1.example"]);
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
            "--client-identity",
            "bpfleet-operator",
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
        Some((op_cert.clone().into(), op_key.clone().into())),
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

    // The right CA, another identity: the handshake succeeds (the chain is
    // good) and every call is refused with PermissionDenied, read-only
    // ones included, each audited with the refused subject.
    let audit_before = std::fs::read_to_string(root.audit_log()).unwrap();
    for (cert, key, subject) in [
        (&node_cert, &node_key, "CN=bpfleet-node"),
        (&mixed_cert, &mixed_key, "CN=bpfleet-operator"),
    ] {
        let mut c = bpfleet_agent::cli::connect_tls(
            &addr,
            good.ca_pem.as_bytes(),
            Some((cert.clone().into(), key.clone().into())),
            "localhost",
        )
        .await
        .unwrap();
        let codes = [
            c.health(pb::HealthRequest {}).await.map(|_| ()),
            c.node_info(pb::NodeInfoRequest {}).await.map(|_| ()),
            c.list(pb::ListRequest::default()).await.map(|_| ()),
            c.stats(pb::StatsRequest::default()).await.map(|_| ()),
            c.load(load_req("p", "v1", b"\x7fELF", vec![], &[]))
                .await
                .map(|_| ()),
            c.activate(pb::ActivateRequest::default()).await.map(|_| ()),
            c.rollback(pb::RollbackRequest::default()).await.map(|_| ()),
            c.unload(pb::UnloadRequest::default()).await.map(|_| ()),
            c.update_config(pb::UpdateConfigRequest::default())
                .await
                .map(|_| ()),
        ];
        for (i, r) in codes.iter().enumerate() {
            let e = r.as_ref().expect_err("a client of another identity got in");
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "call {i}: {e:?}");
            assert!(
                e.message().contains("--client-identity")
                    && e.message().contains(subject)
                    && e.message().contains("bpfleet-operator"),
                "call {i}: {e:?}"
            );
        }
        let audit = std::fs::read_to_string(root.audit_log()).unwrap();
        let refused: Vec<&str> = audit
            .lines()
            .skip(audit_before.lines().count())
            .filter(|l| l.contains(subject) && l.contains("\"denied\""))
            .collect();
        assert!(refused.len() >= codes.len(), "{audit}");
        for method in ["/Health", "/List", "/Load", "/UpdateConfig"] {
            assert!(
                refused.iter().any(|l| l.contains(method)),
                "no audit line for {method}: {audit}"
            );
        }
    }
    // Nothing of theirs was done; the operator still gets in.
    let mut c = bpfleet_agent::cli::connect_tls(
        &addr,
        good.ca_pem.as_bytes(),
        Some((op_cert.into(), op_key.into())),
        "localhost",
    )
    .await
    .unwrap();
    let listed = c
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.programs.is_empty(), "{listed:?}");
    assert!(root.pins().is_empty());
}

/// `--listen` without `--client-identity`: the agent does not start, and
/// says which flag is missing.
#[test]
fn a_tcp_listener_without_a_client_identity_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bpfleet-agent"))
        .args(["serve", "--listen", "127.0.0.1:1"])
        .args([
            "--tls-cert",
            &p("c"),
            "--tls-key",
            &p("k"),
            "--client-ca",
            &p("ca"),
        ])
        .args([
            "--socket",
            &p("agent.sock"),
            "--state-file",
            &p("state.json"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--listen needs --client-identity"), "{err}");
    assert!(!dir.path().join("state.json").exists());
}
