//! bootd-storm: N simulated nodes boot from one `bootd serve` at once,
//! end to end (DHCP, TFTP, DHCP as iPXE, HTTP, iSCSI login, the boot's
//! I/O, logout, RELEASE), and the server's cost is measured. See `--help`.

mod cli;
mod dhcp;
mod http;
mod iscsi;
mod netns;
mod node;
mod procstat;
mod report;
mod setup;
mod stats;
mod tftp;
mod trace;

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use netns::{Wire, POOL_SIZE, SERVER_IP};
use node::Ctx;
use report::{Report, ServerInfo, TraceInfo};
use stats::Phase;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use trace::{Plan, Trace};

fn main() -> ExitCode {
    let args = cli::Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bootd-storm: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().nth(2).unwrap_or(here).to_path_buf()
}

fn bar(n: u64, hidden: bool, what: &str) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(&format!(
        "{what:<11} {{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    b.set_style(style.progress_chars("=> "));
    b
}

/// A real boot of the end-to-end test image (iPXE's sanboot, then Linux
/// through the iBFT), as `serve --record-io` wrote it.
const RECORDED_BOOT: &str = include_str!("../fixtures/golden-boot.trace");

/// Returns whether the storm ran clean (no error, no failed or unfinished node).
fn run(args: cli::Args) -> Result<bool> {
    let (trace, source) = match &args.trace {
        Some(p) if p.as_os_str() == "synthetic" => {
            (Trace::synthetic(args.seed), "synthetic".to_string())
        }
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let t = Trace::parse(&text).with_context(|| format!("in {}", p.display()))?;
            (t, p.display().to_string())
        }
        None => (
            Trace::parse(RECORDED_BOOT).context("in the built-in recorded boot")?,
            "recorded boot of the test image".to_string(),
        ),
    };
    let plan = Plan::new(&trace, args.read_set_mib << 20)?;
    if let Some(out) = &args.emit_trace {
        let replayed = Trace {
            block_size: trace::SECTOR,
            cmds: plan.cmds.clone(),
        };
        std::fs::write(out, replayed.to_text())
            .with_context(|| format!("writing {}", out.display()))?;
        return Ok(true);
    }
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if args.concurrency == 0 || args.concurrency > POOL_SIZE {
        bail!("--concurrency must be 1 to {POOL_SIZE} (the DHCP pool of a /24)");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (network namespaces, DHCP port 68)");
    }
    let bin = match &args.bootd {
        Some(b) => b.clone(),
        None => workspace_root().join("build/release/bootd"),
    };
    if !bin.is_file() {
        bail!(
            "no bootd at {} (cargo build --release -p bootd, or --bootd PATH)",
            bin.display()
        );
    }
    let bin = bin.canonicalize()?;
    let mib = 1u64 << 20;
    let image = match args.image_mib {
        Some(m) if m * mib < plan.extent_bytes => bail!(
            "--image-mib {m} is smaller than the plan's extent ({} MiB)",
            plan.extent_bytes.div_ceil(mib)
        ),
        Some(m) => m * mib,
        None => plan.extent_bytes.div_ceil(mib).max(128) * mib,
    };
    let log = args.bootd_log.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("bootd-storm-{}.log", std::process::id()))
    });
    let work = tempfile::Builder::new()
        .prefix("bootd-storm-")
        .tempdir()
        .context("creating the work directory")?;

    let wire = Wire::create()?;
    wire.enter_client()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // Ctrl-C or SIGTERM: stop the storm, then clean up as on any exit.
    let (stop_tx, stop_rx) = watch::channel(false);
    rt.spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        let _ = stop_tx.send(true);
    });
    let result = (|| {
        let t0 = Instant::now();
        let data = work.path().join("data");
        std::fs::create_dir_all(&data)?;
        let golden = setup::golden_bytes(image, args.seed);
        let reg = bar(args.nodes as u64, args.json, "registering");
        setup::populate(&bin, &data, &golden, args.nodes, &|n| {
            reg.set_position(n as u64);
            !*stop_rx.borrow()
        })?;
        reg.finish_and_clear();
        if *stop_rx.borrow() {
            bail!("interrupted");
        }
        let (tftp_dir, ipxe_name, ipxe_bytes) = setup::tftp_dir(work.path(), &args.ipxe)?;
        let mut server = setup::Server::start(
            &wire,
            &setup::ServeOptions {
                bin: &bin,
                data: &data,
                tftp_dir: &tftp_dir,
                log: &log,
                log_level: &args.bootd_log_level,
                lease_secs: args.lease_secs,
                record_io: args.record_io.as_deref(),
            },
        )?;
        let setup_secs = t0.elapsed().as_secs_f64();
        let ctx = rt.block_on(async {
            anyhow::Ok(Arc::new(Ctx {
                dhcp: dhcp::Dhcp::bind(&wire.client_if, SERVER_IP)?,
                server: SERVER_IP,
                tftp: server.tftp,
                http_port: server.http.port(),
                ipxe_name,
                ipxe_bytes,
                plan: plan.clone(),
                golden,
                verify: args.verify,
                pace: args.pace,
                seed: args.seed,
                stats: stats::Stats::default(),
            }))
        })?;
        let before = procstat::usage(server.pid)?;
        let own0 = procstat::own_cpu_secs();
        let t1 = Instant::now();
        let limit = Duration::from_secs(args.time_limit);
        let b = bar(args.nodes as u64, args.json, "booting");
        let mut stop = stop_rx.clone();
        let outcome = rt.block_on(async {
            tokio::select! {
                r = tokio::time::timeout(limit, storm(ctx.clone(), args.nodes, args.concurrency, &b)) => {
                    Ok(r.is_err())
                }
                _ = stop.wait_for(|s| *s) => Err(anyhow::anyhow!("interrupted")),
            }
        });
        let wall = t1.elapsed().as_secs_f64();
        b.finish_and_clear();
        let after = procstat::usage(server.pid);
        let own = procstat::own_cpu_secs() - own0;
        let alive = server.alive();
        let time_limit_hit = outcome?;
        let after = after?;
        let stopped = server.stop();
        let totals = ctx.stats.totals(|t| *t);
        let phases = ctx.stats.report(&Phase::BOOT);
        let commands = ctx.stats.report(&Phase::COMMANDS);
        let errors = phases.iter().chain(&commands).map(|p| p.errors).sum();
        let report = Report {
            nodes: args.nodes,
            concurrency: args.concurrency,
            completed: totals.nodes_done,
            failed: totals.nodes_failed,
            unfinished: args.nodes as u64 - totals.nodes_done - totals.nodes_failed,
            time_limit_hit,
            errors,
            setup_secs,
            wall_secs: wall,
            trace: TraceInfo {
                source,
                reads: plan.reads,
                writes: plan.writes,
                flushes: plan.flushes,
                read_bytes: plan.read_bytes,
                write_bytes: plan.write_bytes,
                distinct_read_bytes: plan.distinct_read_bytes,
                passes: plan.passes,
            },
            phases,
            commands,
            bytes_read: totals.bytes_read,
            bytes_written: totals.bytes_written,
            tftp_bytes: totals.tftp_bytes,
            read_mib_per_sec: totals.bytes_read as f64 / (1 << 20) as f64 / wall.max(1e-9),
            server: ServerInfo {
                pid: server.pid,
                peak_rss_bytes: after.peak_rss_bytes,
                peak_rss_before_bytes: before.peak_rss_bytes,
                cpu_secs: after.cpu_secs - before.cpu_secs,
                cpu_secs_total: after.cpu_secs,
            },
            storm_cpu_secs: own,
            dhcp_pool_size: POOL_SIZE,
            dhcp_pool_reused: args.nodes > POOL_SIZE,
            bootd_log: log.display().to_string(),
        };
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print!("{}", report.text());
        }
        if !alive {
            eprintln!(
                "bootd-storm: bootd exited during the storm (see {})",
                log.display()
            );
        }
        if let Err(e) = stopped {
            eprintln!("bootd-storm: {e:#} (see {})", log.display());
        }
        Ok(report.ok() && alive)
    })();
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(wire);
    if args.keep {
        eprintln!(
            "bootd-storm: work directory kept: {}",
            work.keep().display()
        );
    }
    result
}

/// Boots every node, `concurrency` at a time, in node order.
async fn storm(ctx: Arc<Ctx>, nodes: usize, concurrency: usize, bar: &ProgressBar) {
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut set = tokio::task::JoinSet::new();
    let tick = |bar: &ProgressBar| {
        bar.inc(1);
        let failed = ctx.stats.totals(|t| t.nodes_failed);
        if failed > 0 {
            bar.set_message(format!("{failed} failed"));
        }
    };
    for i in 0..nodes {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let c = ctx.clone();
        set.spawn(async move {
            let r = node::boot(c, i).await;
            drop(permit);
            r
        });
        while set.try_join_next().is_some() {
            tick(bar);
        }
    }
    while set.join_next().await.is_some() {
        tick(bar);
    }
}
