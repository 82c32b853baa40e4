//! The gRPC API between the bpfleet operator and its node agents.
//!
//! This crate owns only the wire contract: the generated prost messages and
//! tonic client/server for `bpfleet.agent.v1.Agent`, built from
//! `proto/bpfleet/agent/v1/agent.proto` at compile time. It holds no logic;
//! the agent implements the server, the operator and the agent CLI use the
//! client.

/// `bpfleet.agent.v1`: the node agent service.
pub mod agent {
    /// Version 1 of the agent API.
    pub mod v1 {
        tonic::include_proto!("bpfleet.agent.v1");
    }
}

pub use agent::v1;

/// Prints the user name only: requests are logged with `{:?}` and a
/// registry password must never reach a log line.
impl std::fmt::Debug for v1::RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::v1::{HookKind, LoadRequest, ProgramEntry, load_request::Source};
    use prost::Message;

    #[test]
    fn credentials_never_print_the_password() {
        let c = super::v1::RegistryCredentials {
            username: "ci".into(),
            password: "s3cret-value".into(),
        };
        let req = LoadRequest {
            source: Some(Source::Image(super::v1::ImageSource {
                reference: "r.example/p@sha256:00".into(),
                credentials: Some(c),
            })),
            ..Default::default()
        };
        let shown = format!("{req:?} {req:#?}");
        assert!(shown.contains("\"ci\""), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn load_request_round_trips_through_the_wire_format() {
        let req = LoadRequest {
            program: "syscount".into(),
            revision: "v2".into(),
            source: Some(Source::Object(vec![0x7f, b'E', b'L', b'F'])),
            sha256: "ab".repeat(32),
            entries: vec![ProgramEntry {
                bpf_program: "count".into(),
                hook: HookKind::Tracepoint as i32,
                target: "syscalls/sys_enter_getppid".into(),
                pid: 0,
            }],
            persistent_maps: vec!["counts".into()],
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        let back = LoadRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, req);
        assert_eq!(back.entries[0].hook(), HookKind::Tracepoint);
    }
}
