//! Benchmarks of the node agent on the real kernel (run as root):
//!
//! 1. Activate / Rollback latency over many switches, for a tracepoint and
//!    an XDP program (dispatcher slot) and a tcx program (bpf_link_update),
//!    in-process and through gRPC over the Unix socket, against
//!    unload + reload + activate of the same revision in the same run;
//! 2. load time of the example objects against `bpftool prog loadall`;
//! 3. RSS of an idle agent process holding 10 programs.
//!
//! Everything runs under a pin root and a network namespace of its own,
//! both removed at the end (also on error).
//!
//! `cargo run --release -p bpfleet-agent --bin bpfleet-agent-bench -- --switches 2000`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bpfleet_agent::{Agent, Config};
use bpfleet_bpf as objs;
use bpfleet_proto::v1::{self as pb, HookKind, load_request::Source};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "bpfleet node agent benchmarks (root, real kernel)")]
struct Args {
    /// Activate+Rollback pairs per measurement.
    #[arg(long, default_value_t = 2000)]
    switches: usize,
    /// Unload+reload rounds.
    #[arg(long, default_value_t = 50)]
    reloads: usize,
    /// Load-time rounds (agent and bpftool each).
    #[arg(long, default_value_t = 30)]
    loads: usize,
}

struct Cleanup {
    root: PathBuf,
    netns: String,
    scratch: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = std::fs::remove_dir_all(&self.scratch);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn sh(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!("{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn req(
    program: &str,
    revision: &str,
    obj: &[u8],
    hook: HookKind,
    bpf: &str,
    target: &str,
    persistent: &str,
) -> pb::LoadRequest {
    pb::LoadRequest {
        program: program.into(),
        revision: revision.into(),
        source: Some(Source::Object(obj.to_vec())),
        sha256: bpfleet_agent::trust::sha256_hex(obj),
        signature: String::new(),
        entries: vec![pb::ProgramEntry {
            bpf_program: bpf.into(),
            hook: hook as i32,
            target: target.into(),
            pid: 0,
        }],
        persistent_maps: vec![persistent.into()],
        recreate_incompatible_maps: Vec::new(),
        budget: None,
    }
}

fn syscount(program: &str, revision: &str, obj: &[u8]) -> pb::LoadRequest {
    req(
        program,
        revision,
        obj,
        HookKind::Tracepoint,
        "count_getppid",
        "syscalls/sys_enter_getppid",
        "counts",
    )
}

fn xdpcount(revision: &str, obj: &[u8]) -> pb::LoadRequest {
    req(
        "xdpcount",
        revision,
        obj,
        HookKind::Xdp,
        "xdp_count",
        "veth1",
        "pkts",
    )
}

/// Summary of a sample in microseconds.
struct Summary {
    n: usize,
    p50: f64,
    p99: f64,
    min: f64,
    max: f64,
}

fn summarize(mut v: Vec<Duration>) -> Summary {
    v.sort();
    let us = |d: Duration| d.as_nanos() as f64 / 1000.0;
    let at = |q: f64| us(v[((v.len() as f64 - 1.0) * q).round() as usize]);
    Summary {
        n: v.len(),
        p50: at(0.5),
        p99: at(0.99),
        min: us(v[0]),
        max: us(v[v.len() - 1]),
    }
}

fn row(what: &str, s: &Summary) {
    println!(
        "{what:<58} n={:<5} p50={:>10.1}us p99={:>10.1}us min={:>9.1}us max={:>10.1}us",
        s.n, s.p50, s.p99, s.min, s.max
    );
}

fn switch_loop(
    a: &mut Agent,
    program: &str,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, Vec<Duration>)> {
    let (mut act, mut rb, mut kernel) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(2 * n),
    );
    for _ in 0..n {
        let t = Instant::now();
        let s = a.activate(program, "v2", "bench")?;
        act.push(t.elapsed());
        kernel.push(Duration::from_nanos(s.nanos));
        let t = Instant::now();
        let s = a.rollback(program, "", "bench")?;
        rb.push(t.elapsed());
        kernel.push(Duration::from_nanos(s.nanos));
    }
    Ok((act, rb, kernel))
}

fn reload_loop(
    a: &mut Agent,
    load: impl Fn() -> pb::LoadRequest,
    program: &str,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        a.unload(program, "", "bench")?;
        a.load(load(), "bench")?;
        a.activate(program, "v1", "bench")?;
        v.push(t.elapsed());
    }
    Ok(v)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pid = std::process::id();
    let guard = Cleanup {
        root: PathBuf::from(format!("/sys/fs/bpf/bpfleet-bench-{pid}")),
        netns: format!("bpfleet-bench-{pid}"),
        scratch: std::env::temp_dir().join(format!("bpfleet-bench-{pid}")),
    };
    std::fs::create_dir_all(&guard.scratch)?;
    bpfleet_agent::kernel::ensure_bpffs(Path::new("/sys/fs/bpf"))?;
    sh("ip", &["netns", "add", &guard.netns])?;
    let nsp = format!("--net=/run/netns/{}", guard.netns);
    sh(
        "nsenter",
        &[
            &nsp, "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
        ],
    )?;
    sh("nsenter", &[&nsp, "ip", "link", "set", "veth0", "up"])?;
    sh("nsenter", &[&nsp, "ip", "link", "set", "veth1", "up"])?;
    // This thread does every agent call; it lives in the bench namespace so
    // the XDP interface resolves there.
    {
        use std::os::fd::AsFd;
        let f = std::fs::File::open(format!("/run/netns/{}", guard.netns))?;
        bpfleet_agent::kernel::sys::enter_netns(f.as_fd())?;
    }

    println!(
        "bpfleet agent benchmarks, kernel {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim()
    );
    let mut cfg = Config::new(&guard.root, guard.scratch.join("state.json"));
    cfg.allow_unsigned = true;
    // As in production: every switch is audited.
    cfg.audit_log = Some(guard.scratch.join("audit.jsonl"));
    let mut a = Agent::new(cfg)?;

    // 1. switches
    a.load(syscount("syscount", "v1", objs::SYSCOUNT_V1), "bench")?;
    a.load(syscount("syscount", "v2", objs::SYSCOUNT_V2), "bench")?;
    a.activate("syscount", "v1", "bench")?;
    let (act, rb, k) = switch_loop(&mut a, "syscount", args.switches)?;
    let disp_act = summarize(act);
    row("activate, dispatcher (tracepoint), in-process", &disp_act);
    row(
        "rollback, dispatcher (tracepoint), in-process",
        &summarize(rb),
    );
    row(
        "  kernel part: slot write (+ run figures read)",
        &summarize(k),
    );
    let disp_reload = summarize(reload_loop(
        &mut a,
        || syscount("syscount", "v1", objs::SYSCOUNT_V1),
        "syscount",
        args.reloads,
    )?);
    row(
        "unload+load+activate, tracepoint (the reload path)",
        &disp_reload,
    );

    a.load(xdpcount("v1", objs::XDPCOUNT_V1), "bench")?;
    a.load(xdpcount("v2", objs::XDPCOUNT_V2), "bench")?;
    a.activate("xdpcount", "v1", "bench")?;
    let (act, rb, k) = switch_loop(&mut a, "xdpcount", args.switches)?;
    let xdp_act = summarize(act);
    row("activate, dispatcher (xdp), in-process", &xdp_act);
    row("rollback, dispatcher (xdp), in-process", &summarize(rb));
    row(
        "  kernel part: slot write (+ run figures read)",
        &summarize(k),
    );
    let xdp_reload = summarize(reload_loop(
        &mut a,
        || xdpcount("v1", objs::XDPCOUNT_V1),
        "xdpcount",
        args.reloads,
    )?);
    row("unload+load+activate, xdp (the reload path)", &xdp_reload);

    let tc = |rev: &str, obj: &[u8]| {
        req(
            "tccount",
            rev,
            obj,
            HookKind::TcxIngress,
            "tc_count",
            "veth1",
            "tcpkts",
        )
    };
    a.load(tc("v1", objs::TCCOUNT_V1), "bench")?;
    a.load(tc("v2", objs::TCCOUNT_V2), "bench")?;
    a.activate("tccount", "v1", "bench")?;
    let (act, rb, k) = switch_loop(&mut a, "tccount", args.switches)?;
    let tc_act = summarize(act);
    row(
        "activate, bpf_link_update (tcx ingress), in-process",
        &tc_act,
    );
    row(
        "rollback, bpf_link_update (tcx ingress), in-process",
        &summarize(rb),
    );
    row("  kernel part: bpf_link_update", &summarize(k));
    let tc_reload = summarize(reload_loop(
        &mut a,
        || tc("v1", objs::TCCOUNT_V1),
        "tccount",
        args.reloads,
    )?);
    row("unload+load+activate, tcx (the reload path)", &tc_reload);
    a.unload("tccount", "", "bench")?;
    println!(
        "  reload/switch p50 ratio: tracepoint {:.0}x, xdp {:.1}x, tcx {:.0}x",
        disp_reload.p50 / disp_act.p50,
        xdp_reload.p50 / xdp_act.p50,
        tc_reload.p50 / tc_act.p50
    );

    // Through gRPC over the Unix socket.
    a.load(syscount("syscount", "v2", objs::SYSCOUNT_V2), "bench")?;
    let sock = guard.scratch.join("agent.sock");
    // The server on a runtime like the agent binary's (multi-thread, one
    // worker per core); the client on a runtime of its own on this thread,
    // as the operator is another process: no task of one waits in the
    // other's queues.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listen = bpfleet_agent::server::Listen {
        unix: Some(sock.clone()),
        ..Default::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(bpfleet_agent::server::serve(a, listen, async move {
        let _ = stop_rx.await;
    }));
    let (act, rb, floor) = client_rt.block_on(async {
        let mut tries = 0;
        while !sock.exists() && tries < 500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tries += 1;
        }
        let mut c = bpfleet_agent::cli::connect_unix(sock.clone()).await?;
        let (mut act, mut rb, mut floor) = (Vec::new(), Vec::new(), Vec::new());
        // The floor: the same call for a program the agent does not hold
        // (a lock and a map lookup, then NotFound): what the round trip
        // costs without a switch.
        for _ in 0..args.switches {
            let t = Instant::now();
            let r = c
                .activate(pb::ActivateRequest {
                    program: "no-such-program".into(),
                    revision: "v1".into(),
                })
                .await;
            floor.push(t.elapsed());
            if !matches!(&r, Err(s) if s.code() == tonic::Code::NotFound) {
                anyhow::bail!("activate of an unknown program answered {r:?}, not NotFound");
            }
        }
        for _ in 0..args.switches {
            let t = Instant::now();
            c.activate(pb::ActivateRequest {
                program: "syscount".into(),
                revision: "v2".into(),
            })
            .await?;
            act.push(t.elapsed());
            let t = Instant::now();
            c.rollback(pb::RollbackRequest {
                program: "syscount".into(),
                to_revision: String::new(),
            })
            .await?;
            rb.push(t.elapsed());
        }
        for p in ["syscount", "xdpcount"] {
            c.unload(pb::UnloadRequest {
                program: p.into(),
                revision: String::new(),
            })
            .await?;
        }
        anyhow::Ok((act, rb, floor))
    })?;
    row(
        "activate of an unknown program, gRPC over unix socket (round trip, no switch)",
        &summarize(floor),
    );
    row(
        "activate, dispatcher, gRPC over unix socket",
        &summarize(act),
    );
    row(
        "rollback, dispatcher, gRPC over unix socket",
        &summarize(rb),
    );
    // The client's connection lives on its runtime: drop that first, or
    // the server's graceful stop waits for the connection forever.
    drop(client_rt);
    let _ = stop_tx.send(());
    rt.block_on(server)??;

    // 2. load time vs bpftool prog loadall
    let mut cfg = Config::new(&guard.root, guard.scratch.join("state2.json"));
    cfg.allow_unsigned = true;
    let mut a = Agent::new(cfg)?;
    let obj_file = guard.scratch.join("syscount_v1.bpf.o");
    std::fs::write(&obj_file, objs::SYSCOUNT_V1)?;
    let (mut agent_t, mut tool_t) = (Vec::new(), Vec::new());
    for i in 0..args.loads {
        let t = Instant::now();
        a.load(syscount("loadbench", "v1", objs::SYSCOUNT_V1), "bench")?;
        agent_t.push(t.elapsed());
        a.unload("loadbench", "", "bench")?;
        let pin = guard.root.join(format!("bpftool{i}"));
        let t = Instant::now();
        sh(
            "bpftool",
            &[
                "prog",
                "loadall",
                obj_file.to_str().unwrap_or_default(),
                pin.to_str().unwrap_or_default(),
            ],
        )?;
        tool_t.push(t.elapsed());
        std::fs::remove_dir_all(&pin)?;
    }
    let (sa, st) = (summarize(agent_t), summarize(tool_t));
    row(
        "load syscount (verify+pin+attach+state), agent in-process",
        &sa,
    );
    row(
        "bpftool prog loadall of the same object (process incl.)",
        &st,
    );
    println!("  agent/bpftool p50 ratio: {:.2}", sa.p50 / st.p50);
    drop(a);

    // 3. idle RSS with 10 programs, as a separate agent process.
    let bin = std::env::current_exe()?.with_file_name("bpfleet-agent");
    let sock = guard.scratch.join("rss.sock");
    let mut child = Command::new(&bin)
        .args(["serve", "--allow-unsigned", "--pin-root"])
        .arg(&guard.root)
        .arg("--state-file")
        .arg(guard.scratch.join("state3.json"))
        .arg("--socket")
        .arg(&sock)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let res = rt.block_on(async {
        let mut tries = 0;
        while !sock.exists() && tries < 500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tries += 1;
        }
        let mut c = bpfleet_agent::cli::connect_unix(sock.clone()).await?;
        for i in 0..10 {
            let p = format!("idle{i}");
            c.load(syscount(&p, "v1", objs::SYSCOUNT_V1)).await?;
            c.activate(pb::ActivateRequest {
                program: p,
                revision: "v1".into(),
            })
            .await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
        let rss = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap_or("VmRSS: ?")
            .to_string();
        println!(
            "{:<58} {}",
            "idle agent process with 10 programs loaded",
            rss.replace("VmRSS:", "RSS")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        );
        for i in 0..10 {
            c.unload(pb::UnloadRequest {
                program: format!("idle{i}"),
                revision: String::new(),
            })
            .await?;
        }
        anyhow::Ok(())
    });
    let _ = child.kill();
    let _ = child.wait();
    res?;
    drop(guard);
    Ok(())
}
