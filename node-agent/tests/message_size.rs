//! gRPC message limits of the agent process: a request larger than
//! `MAX_MESSAGE` is refused with a clear status before the agent decodes
//! it, one just under the limit reaches the agent's own object-size check,
//! and the agent keeps serving afterwards. Replies are bounded by the
//! agent's budgets (see docs/reliability.md, "Security checks"), far below
//! the limit, and the server's encoding limit turns any that were not into
//! an error status. Needs root (the agent's pin root on bpffs).

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bpfleet_agent::server::MAX_MESSAGE;
use bpfleet_proto::v1::{self as pb, agent_client::AgentClient};
use common::*;
use hyper_util::rt::TokioIo;
use tonic::transport::{Endpoint, Uri};

/// A client whose own limits are far above the agent's, so the agent's
/// limit is what is tested.
async fn big_client(socket: std::path::PathBuf) -> AgentClient<tonic::transport::Channel> {
    let ch = Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap();
    AgentClient::new(ch)
        .max_encoding_message_size(4 * MAX_MESSAGE)
        .max_decoding_message_size(4 * MAX_MESSAGE)
}

fn inline_load(revision: &str, size: usize) -> pb::LoadRequest {
    let obj = vec![0x42u8; size];
    load_req(
        "big",
        revision,
        &obj,
        vec![entry("x", pb::HookKind::Tracepoint, GETPPID_TP)],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_limit_is_refused_and_the_agent_keeps_serving() {
    let root = PinRoot::new("msgsize");
    let agent = AgentProc::start(&root, None, &["--allow-unsigned"]);
    let mut c = big_client(agent.socket.clone()).await;

    // Over the limit: refused by the transport with the sizes named.
    let t = std::time::Instant::now();
    let e = c
        .load(inline_load("over", MAX_MESSAGE + 1024))
        .await
        .expect_err("a request over MAX_MESSAGE was accepted");
    let over_ms = t.elapsed().as_millis();
    assert!(
        matches!(
            e.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{e:?}"
    );
    assert!(
        e.message().contains(&MAX_MESSAGE.to_string()),
        "the refusal names the limit: {e:?}"
    );

    // Under the limit but over the agent's object size: the agent's own
    // check answers, naming the bound.
    let e = c
        .load(inline_load("under", MAX_MESSAGE - 1024))
        .await
        .expect_err("an object over max_object_bytes was accepted");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("at most"), "{e:?}");

    // Still serving, on the same connection and on a new one; nothing
    // loaded, the process alive.
    for mut c in [c.clone(), agent.client().await] {
        assert!(
            c.health(pb::HealthRequest {})
                .await
                .unwrap()
                .into_inner()
                .ok
        );
        let l = c
            .list(pb::ListRequest {
                program: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(l.programs.is_empty(), "{l:?}");
    }
    let mut agent = agent;
    assert!(agent.0.child.try_wait().unwrap().is_none(), "agent exited");
    assert!(root.pins().is_empty(), "pins: {:?}", root.pins());
    eprintln!("over-limit request refused in {over_ms} ms");
}
