//! What an image costs a Load: the HTTP tracer object loaded by the real
//! agent process over gRPC from (1) a file on the node (`object_path`,
//! a blob signature checked), (2) an image in a real registry with an
//! empty node cache (pull over TLS with basic auth, every digest checked,
//! the cosign signature fetched and verified), (3) the same image from the
//! node cache (the cached cosign signature checked again). Each round does
//! the three in turn and unloads after each, so the kernel part (verifier,
//! attach of twelve tracepoints) is in every figure alike.
//!
//! Reported per source: the Load call's wall time, median and min-max
//! over the rounds, and the whole machine's busy CPU per Load
//! (/proc/stat); the cached and cold figures as ratios to the file's.
//! Goal (issue 14): cached within 1.2x of the file.
//!
//! Run as root: `cargo bench -p bpfleet-agent --bench image_load`
//! (`BENCH_ROUNDS`, default 15). Needs the registry and cosign that
//! `scripts/setup.sh` installs and builds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Instant;

use bpfleet_oci::Credentials;
use bpfleet_oci::format::{self, Format, Labels};
use bpfleet_proto::v1::{self as pb, load_request::Source};
use bpfleet_testsupport::agent::{AgentFiles, AgentProcess};
use bpfleet_testsupport::registry::{Registry, RegistryOpts};
use bpfleet_testsupport::request::{load_request, tracepoints};
use bpfleet_testsupport::{cosign, machine_cpu_seconds};

const USER: &str = "bench";
const PASS: &str = "bench-pw";
const PROGRAM: &str = "http-tracer";

struct Figures {
    wall_ms: Vec<f64>,
    /// Wall time minus the agent's own kernel load time (`load_nanos`):
    /// what the source costs (read, pull, verify, gRPC).
    source_ms: Vec<f64>,
    cpu_ms: Vec<f64>,
}

fn median_range(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let m = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (m, v[0], v[n - 1])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let scratch = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOpts {
        tls: true,
        users: vec![(USER.into(), PASS.into())],
    });
    let obj = bpfleet_bpf::HTTP_TRACER;
    let obj_path = scratch.path().join("http_tracer.bpf.o");
    std::fs::write(&obj_path, obj).unwrap();
    let keys = scratch.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (key, public) = cosign::generate_key_pair(&keys, "pw");
    let blob_sig = cosign::sign_blob(&obj_path, &key, "pw");

    let programs: Labels = Labels {
        programs: Some(
            bpfleet_tracer::PROGRAMS
                .iter()
                .map(|(p, _)| (p.to_string(), "tracepoint".to_string()))
                .collect(),
        ),
        maps: None,
    };
    let client = reg.client();
    let built = format::build(Format::Bpfman, obj, "http_tracer.bpf.o", &programs).unwrap();
    let repo = format!("{}/bpf/http-tracer", reg.host());
    let creds = Credentials {
        username: USER.into(),
        password: PASS.into(),
    };
    let digest = client
        .push(&repo, "bench", &built, Some(&creds))
        .await
        .unwrap();
    let reference = format!("{repo}@{digest}");
    cosign::sign_image(&reference, &key, "pw", &reg, Some((USER, PASS)));

    let pin_root =
        Path::new("/sys/fs/bpf").join(format!("bpfleet-bench-image-{}", std::process::id()));
    std::fs::create_dir_all(&pin_root).unwrap();
    let cache = scratch.path().join("images");
    let files = AgentFiles::new(&pin_root, scratch.path());
    let ca = reg.ca_file().display().to_string();
    let cache_arg = cache.display().to_string();
    let public_arg = public.display().to_string();
    let agent = AgentProcess::start(
        Path::new(env!("CARGO_BIN_EXE_bpfleet-agent")),
        &files,
        None,
        &[
            "--registry-ca",
            &ca,
            "--image-cache-dir",
            &cache_arg,
            "--trusted-key",
            &public_arg,
            "--no-http-tracer",
        ],
        &[],
    );
    let mut c = bpfleet_agent::cli::connect_unix(files.socket.clone())
        .await
        .unwrap();

    let base = load_request(
        PROGRAM,
        "r",
        obj,
        tracepoints(&bpfleet_tracer::PROGRAMS),
        &bpfleet_tracer::PERSISTENT_MAPS,
    );
    let file_req = pb::LoadRequest {
        source: Some(Source::ObjectPath(obj_path.display().to_string())),
        signature: blob_sig,
        ..base.clone()
    };
    let image_req = pb::LoadRequest {
        source: Some(Source::Image(pb::ImageSource {
            reference: reference.clone(),
            credentials: Some(pb::RegistryCredentials {
                username: USER.into(),
                password: PASS.into(),
            }),
        })),
        ..base.clone()
    };
    let names = ["file", "image, cold", "image, cached"];
    let mut figs: Vec<Figures> = names
        .iter()
        .map(|_| Figures {
            wall_ms: vec![],
            source_ms: vec![],
            cpu_ms: vec![],
        })
        .collect();
    // One warm-up round, not counted.
    for round in 0..=rounds {
        for (i, fig) in figs.iter_mut().enumerate() {
            let req = if i == 0 {
                file_req.clone()
            } else {
                image_req.clone()
            };
            if i == 1 {
                let _ = std::fs::remove_dir_all(&cache);
            }
            let cpu0 = machine_cpu_seconds();
            let t = Instant::now();
            let r = c
                .load(req)
                .await
                .unwrap_or_else(|e| panic!("{} load: {e}", names[i]));
            let wall = t.elapsed().as_secs_f64() * 1e3;
            let kernel = r.into_inner().revision.map_or(0, |r| r.load_nanos) as f64 / 1e6;
            let cpu = (machine_cpu_seconds() - cpu0) * 1e3;
            c.unload(pb::UnloadRequest {
                program: PROGRAM.into(),
                revision: String::new(),
            })
            .await
            .unwrap();
            if round > 0 {
                fig.wall_ms.push(wall);
                fig.source_ms.push(wall - kernel);
                fig.cpu_ms.push(cpu);
            }
        }
    }
    drop(c);
    drop(agent);
    let _ = std::fs::remove_dir_all(&pin_root);

    println!(
        "image load bench: HTTP tracer ({} bytes, 12 tracepoints), {rounds} rounds, signed (blob or cosign)",
        obj.len()
    );
    let file_wall = median_range(&figs[0].wall_ms).0;
    let file_cpu = median_range(&figs[0].cpu_ms).0;
    for (n, f) in names.iter().zip(&figs) {
        let (wm, wlo, whi) = median_range(&f.wall_ms);
        let (cm, clo, chi) = median_range(&f.cpu_ms);
        let (sm, slo, shi) = median_range(&f.source_ms);
        println!(
            "{n:>14}: wall {wm:7.1} ms ({wlo:.1}-{whi:.1}), x{:.2} of file; outside the kernel load {sm:6.1} ms ({slo:.1}-{shi:.1}); machine CPU {cm:7.1} ms ({clo:.1}-{chi:.1}), x{:.2}",
            wm / file_wall,
            cm / file_cpu.max(1e-9)
        );
    }
}
