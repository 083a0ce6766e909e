//! bootd-storm: N simulated nodes boot from one or more `bootd serve`
//! processes at once, end to end (DHCP, TFTP, DHCP as iPXE, HTTP, iSCSI
//! login, the boot's I/O, logout, RELEASE), each node from its own
//! address, and every server's cost is measured. See `--help`.

mod cli;
mod dhcp;
mod http;
mod iscsi;
mod netns;
mod node;
mod procstat;
mod redirect;
mod registry;
mod report;
mod setup;
mod stats;
mod takeover;
mod tftp;
mod trace;

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use netns::Wire;
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
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let kind = match args.registry {
        Some(k) => k,
        None if args.servers > 1 => registry::Kind::Postgres,
        None => registry::Kind::Sqlite,
    };
    if kind == registry::Kind::Sqlite && args.servers > 1 {
        bail!("several servers share a PostgreSQL registry (--registry postgres)");
    }
    let floating = args.floating || args.kill_server.is_some();
    if let Some(k) = args.kill_server {
        if k == 0 || k > args.servers || args.servers < 2 {
            bail!("--kill-server K needs 1 <= K <= --servers, and at least two servers");
        }
    }
    let (pool, pool_size) = netns::pool(args.nodes)?;
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

    let wire = Wire::create(args.servers)?;
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
        // PostgreSQL (as an unprivileged user, its socket in its own
        // temporary directory) lives as long as this closure.
        let reg = registry::Registry::start(kind)?;
        let bootd = setup::Bootd {
            bin: bin.clone(),
            data: data.clone(),
            env: reg.env.clone(),
        };
        let golden = setup::golden_bytes(image, args.seed);
        let pb = bar(args.nodes as u64, args.json, "registering");
        setup::populate(&bootd, &golden, args.nodes, &|n| {
            pb.set_position(n as u64);
            !*stop_rx.borrow()
        })?;
        pb.finish_and_clear();
        if *stop_rx.borrow() {
            bail!("interrupted");
        }
        let (tftp_dir, ipxe_name, ipxe_bytes) = setup::tftp_dir(work.path(), &args.ipxe)?;
        let opts = setup::ServeOptions {
            bootd: &bootd,
            pool: &pool,
            tftp_dir: &tftp_dir,
            log_level: &args.bootd_log_level,
            lease_secs: args.lease_secs,
            record_io: args.record_io.as_deref(),
        };
        let log_of = |k: usize| match k {
            0 => log.clone(),
            _ => PathBuf::from(format!("{}.s{}", log.display(), k + 1)),
        };
        let mut servers = Vec::new();
        for (k, ns) in wire.servers.iter().enumerate() {
            let f = floating.then(|| takeover::serve_floating(k, args.servers));
            servers.push(setup::Server::start(
                ns,
                &format!("s{}", k + 1),
                &log_of(k),
                &opts,
                f.as_deref(),
            )?);
        }
        let ids: Vec<String> = servers.iter().map(|s| s.id.clone()).collect();
        // keepalived in every server's namespace (stopped after the servers).
        let keepalived = floating
            .then(|| takeover::Keepalived::start(&bootd, &wire.servers, work.path(), &log))
            .transpose()?;
        let placed = registry::wait_placed(
            &bootd,
            &ids,
            args.nodes,
            Duration::from_secs(args.place_limit),
        )?;
        if floating {
            takeover::wait_published(&bootd, &ids, Duration::from_secs(60))?;
        }
        let kill = args.kill_server.map(|k| {
            let s = &servers[k - 1];
            Arc::new(takeover::Kill {
                server: k - 1,
                id: s.id.clone(),
                pid: s.pid,
                own: s.ip,
                vip: takeover::floating_ip(k - 1),
                after_logins: args
                    .kill_after_logins
                    .unwrap_or(args.nodes as u64 / 3)
                    .min(args.nodes as u64),
                logins: Default::default(),
                at: Default::default(),
                moved: Default::default(),
            })
        });
        let setup_secs = t0.elapsed().as_secs_f64();
        let ctx = rt.block_on(async {
            anyhow::Ok(Arc::new(Ctx {
                dhcp: dhcp::Dhcp::bind(&wire.client_if)?,
                servers: servers.iter().map(|s| s.ip).collect(),
                tftp_port: setup::TFTP_PORT,
                http_port: setup::HTTP_PORT,
                misdirect: args.misdirect,
                holders: Default::default(),
                ipxe_name,
                ipxe_bytes,
                plan: plan.clone(),
                golden,
                verify: args.verify,
                pace: args.pace,
                seed: args.seed,
                stats: stats::Stats::default(),
                kill: kill.clone(),
                floating: if floating {
                    (0..args.servers).map(takeover::floating_ip).collect()
                } else {
                    Vec::new()
                },
            }))
        })?;
        let before = servers
            .iter()
            .map(|s| procstat::usage(s.pid))
            .collect::<Result<Vec<_>>>()?;
        let own0 = procstat::own_cpu_secs();
        let t1 = Instant::now();
        let limit = Duration::from_secs(args.time_limit);
        let b = bar(args.nodes as u64, args.json, "booting");
        let mut stop = stop_rx.clone();
        if let Some(k) = kill.clone() {
            let namespaces: Vec<String> = wire.servers.iter().map(|s| s.ns.clone()).collect();
            rt.spawn(async move { k.run(namespaces, Duration::from_secs(60)).await });
        }
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
        let killed = |k: usize| {
            kill.as_ref()
                .is_some_and(|x| x.server == k && x.at.get().is_some())
        };
        // A killed server's figures stay those of the storm's start.
        let after: Vec<_> = servers
            .iter()
            .enumerate()
            .map(|(k, s)| match killed(k) {
                true => Ok(before[k]),
                false => procstat::usage(s.pid),
            })
            .collect();
        let own = procstat::own_cpu_secs() - own0;
        let alive: Vec<bool> = servers
            .iter_mut()
            .enumerate()
            .map(|(k, s)| killed(k) || s.alive())
            .collect();
        let time_limit_hit = outcome?;
        let after = after.into_iter().collect::<Result<Vec<_>>>()?;
        let stopped: Vec<_> = servers
            .iter_mut()
            .enumerate()
            .map(|(k, s)| match killed(k) {
                true => s.reap_killed(),
                false => s.stop(),
            })
            .collect();
        drop(keepalived);
        let totals = ctx.stats.totals(|t| *t);
        let phases = ctx.stats.report(&Phase::BOOT);
        let commands = ctx.stats.report(&Phase::COMMANDS);
        let errors = phases.iter().chain(&commands).map(|p| p.errors).sum();
        // What the nodes did at the killed server's floating address after
        // the kill went to the survivor that holds it.
        let holder = kill.as_ref().and_then(|k| k.moved.get().map(|(h, _)| *h));
        let server_infos = servers
            .iter()
            .enumerate()
            .zip(before.iter().zip(&after))
            .map(|((k, s), (b, a))| ServerInfo {
                id: s.id.clone(),
                address: s.ip.to_string(),
                pid: s.pid,
                nodes_placed: placed.get(&s.id).copied().unwrap_or(0),
                counts: {
                    let mut c = ctx.stats.server(s.ip, |c| *c);
                    if holder == Some(k) {
                        let t = ctx.stats.server(std::net::Ipv4Addr::UNSPECIFIED, |c| *c);
                        c.sessions += t.sessions;
                        c.resumed += t.resumed;
                    }
                    c
                },
                floating_ip: floating.then(|| takeover::floating_ip(k).to_string()),
                killed: killed(k),
                peak_rss_bytes: a.peak_rss_bytes,
                peak_rss_before_bytes: b.peak_rss_bytes,
                cpu_secs: a.cpu_secs - b.cpu_secs,
                cpu_secs_total: a.cpu_secs,
            })
            .collect();
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
            registry: format!("{kind:?}").to_lowercase(),
            servers: server_infos,
            redirects: totals.redirects,
            storm_cpu_secs: own,
            dhcp_pool: pool.clone(),
            dhcp_pool_size: pool_size,
            bootd_log: log.display().to_string(),
            takeover: kill
                .as_ref()
                .map(|k| k.report(ctx.stats.takeover(|t| t.clone()), t1, &ids)),
        };
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print!("{}", report.text());
        }
        let mut clean = report.ok();
        if let Some(k) = kill.as_ref().filter(|k| k.at.get().is_none()) {
            clean = false;
            eprintln!(
                "bootd-storm: {} was never killed ({} logins wanted)",
                k.id, k.after_logins
            );
        }
        for ((s, alive), stopped) in servers.iter().zip(&alive).zip(&stopped) {
            if !alive {
                clean = false;
                eprintln!(
                    "bootd-storm: bootd {} exited during the storm (see its log)",
                    s.id
                );
            }
            if let Err(e) = stopped {
                eprintln!("bootd-storm: {} {e:#} (see its log)", s.id);
            }
        }
        drop(servers);
        drop(reg);
        Ok(clean)
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
