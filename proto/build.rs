//! Compiles the agent API into OUT_DIR. protoc comes from the
//! `protoc-bin-vendored` crate unless `PROTOC` is set, so no system package
//! is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing reads the
        // environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    println!("cargo:rerun-if-changed=bpfleet/agent/v1/agent.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Hand-written below: a password must never reach a log line.
        .skip_debug(["bpfleet.agent.v1.RegistryCredentials"])
        .compile_protos(&["bpfleet/agent/v1/agent.proto"], &["."])?;
    Ok(())
}
