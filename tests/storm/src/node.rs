//! One simulated node's boot, phase by phase, as its firmware, iPXE and
//! OS would do it; every phase timed and every error counted.

use crate::dhcp::{Dhcp, Lease};
use crate::iscsi::{Identity, Session};
use crate::setup::mac;
use crate::stats::{Phase, Stats};
use crate::takeover::Kill;
use crate::trace::{Op, Plan, SECTOR};
use crate::{http, tftp};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// iPXE asks for the largest block that fits a 1500-byte MTU.
const BLKSIZE: u16 = 1428;
/// Login attempts (a new connection each) before the node gives up.
const LOGIN_TRIES: u32 = 3;
/// GET attempts per script.
const HTTP_TRIES: u32 = 3;
/// Boots a node starts from DHCP again when the server it was booting
/// from died under it (a PXE ROM or iPXE retrying, or the machine's
/// firmware going round its boot order again).
const BOOT_TRIES: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Verify {
    /// The first and last block of every read.
    Sample,
    /// Every byte read.
    Full,
    /// No check (the client's CPU goes to the protocol only).
    Off,
}

/// What every node shares.
pub struct Ctx {
    pub dhcp: Dhcp,
    /// Every server's address, in order (server k is `servers[k]`).
    pub servers: Vec<Ipv4Addr>,
    pub tftp_port: u16,
    pub http_port: u16,
    /// Every this many nodes log in at a server other than their script's
    /// portal (0: none), to be redirected to the owner.
    pub misdirect: usize,
    /// Who holds which address now: a second holder is an error.
    pub holders: Mutex<HashMap<Ipv4Addr, usize>>,
    pub ipxe_name: String,
    pub ipxe_bytes: Vec<u8>,
    pub plan: Plan,
    pub golden: Vec<u8>,
    pub verify: Verify,
    pub pace: bool,
    pub seed: u64,
    pub stats: Stats,
    /// `--kill-server`: the server killed mid-storm.
    pub kill: Option<Arc<Kill>>,
    /// Each server's floating address (`--floating`), by index.
    pub floating: Vec<Ipv4Addr>,
}

/// Why a phase stopped the boot.
#[derive(Debug)]
pub enum Stop {
    /// The node gave up (counted as a failure).
    Failed,
    /// The server the phase depended on was killed: start the boot over
    /// (counted as a retry of the kill's).
    Restart,
}

impl Ctx {
    /// Whether `ip` is the killed server's and the kill has happened.
    pub fn killed(&self, ip: Option<Ipv4Addr>) -> bool {
        match (&self.kill, ip) {
            (Some(k), Some(ip)) => k.involves(ip),
            _ => false,
        }
    }

    /// A retry: the kill's doing when it was talking to the dead server,
    /// else an error.
    fn retried(&self, p: Phase, at: Option<Ipv4Addr>, msg: String) {
        if self.killed(at) {
            self.stats.takeover(|t| t.retry(p, msg));
        } else {
            self.stats.error(p, msg);
        }
    }

    /// The key a session at `ip` is counted under: server k's own address
    /// for its own or floating address; [`Ipv4Addr::UNSPECIFIED`] for the
    /// killed server's floating address after the kill (whoever holds it
    /// now: the report credits the survivor keepalived gave it to).
    pub fn server_key(&self, ip: Ipv4Addr) -> Ipv4Addr {
        if let Some(k) = &self.kill {
            if k.at.get().is_some() && ip == k.vip {
                return Ipv4Addr::UNSPECIFIED;
            }
        }
        match self.floating.iter().position(|v| *v == ip) {
            Some(k) => self.servers[k],
            None => ip,
        }
    }
}

/// Runs `f` up to the phase's end, timing it; its error is the node's,
/// unless the server at `at` was killed: then the boot starts over.
async fn phase<T>(
    ctx: &Ctx,
    p: Phase,
    at: Option<Ipv4Addr>,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T, Stop> {
    let t0 = Instant::now();
    match f.await {
        Ok(v) => {
            ctx.stats.ok(p, t0.elapsed());
            Ok(v)
        }
        Err(e) if ctx.killed(at) => {
            ctx.stats
                .takeover(|t| t.retry(p, format!("{e:#} (boot started over)")));
            Err(Stop::Restart)
        }
        Err(e) => {
            ctx.stats.fail(p, format!("{e:#}"));
            Err(Stop::Failed)
        }
    }
}

/// The whole boot of node `i`. `Err` once a phase gave up (already
/// counted). A boot whose server was killed under it starts over.
pub async fn boot(ctx: Arc<Ctx>, i: usize) -> Result<(), ()> {
    for _ in 1..BOOT_TRIES {
        match boot_once(&ctx, i).await {
            Err(Stop::Restart) => {
                ctx.stats.takeover(|t| t.boot_restarts += 1);
                // The firmware's pause before it tries again.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            r => return r.map_err(|_| ()),
        }
    }
    match boot_once(&ctx, i).await {
        Ok(()) => Ok(()),
        Err(Stop::Failed) => Err(()),
        Err(Stop::Restart) => {
            ctx.stats.fail(
                Phase::DhcpPxe,
                format!("boot started over {BOOT_TRIES} times"),
            );
            Err(())
        }
    }
}

async fn boot_once(c: &Ctx, i: usize) -> Result<(), Stop> {
    let m = mac(i);
    let mut retry = |msg: String, at: Option<Ipv4Addr>| c.retried(Phase::DhcpPxe, at, msg);

    // 1. The PXE ROM: DORA, expecting the iPXE binary over TFTP.
    let lease = phase(c, Phase::DhcpPxe, None, async {
        let l = c.dhcp.dora(m, false, &mut retry).await?;
        if l.boot_file != c.ipxe_name {
            bail!("boot file {:?}, expected {:?}", l.boot_file, c.ipxe_name);
        }
        if l.next_server != l.server_id || !c.servers.contains(&l.server_id) {
            bail!(
                "next-server {}, expected the answering server {}",
                l.next_server,
                l.server_id
            );
        }
        Ok(l)
    })
    .await?;
    if let Err(e) = c.hold(i, &lease) {
        c.stats.fail(Phase::DhcpPxe, format!("{e:#}"));
        return Err(Stop::Failed);
    }
    c.stats.server(lease.server_id, |s| s.dhcp_acks += 1);

    let r = after_lease(c, i, m, &lease).await;
    if r.is_err() {
        // Give the address back at once, as a node that gives up would not,
        // but the next storm on this pool should not wait for its expiry.
        c.unhold(i, lease.ip);
        let _ = c.dhcp.release(m, &lease).await;
    }
    r
}

impl Ctx {
    /// Node `i` holds `lease`: no other node may hold its address now.
    fn hold(&self, i: usize, lease: &Lease) -> Result<()> {
        let mut h = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        match h.insert(lease.ip, i) {
            Some(other) if other != i => {
                bail!(
                    "address {} leased to node {i} by {} while node {other} holds it",
                    lease.ip,
                    lease.server_id
                )
            }
            _ => Ok(()),
        }
    }

    fn unhold(&self, i: usize, ip: Ipv4Addr) {
        let mut h = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        if h.get(&ip) == Some(&i) {
            h.remove(&ip);
        }
    }
}

/// Everything after the first lease.
async fn after_lease(c: &Ctx, i: usize, m: [u8; 6], lease: &Lease) -> Result<(), Stop> {
    let by = Some(lease.server_id);
    // 2. The ROM fetches iPXE.
    let got = phase(c, Phase::Tftp, Some(lease.next_server), async {
        let tftp = SocketAddr::new(lease.next_server.into(), c.tftp_port);
        tftp::fetch(
            lease.ip,
            tftp,
            &lease.boot_file,
            BLKSIZE,
            &c.ipxe_bytes,
            &mut |msg| c.retried(Phase::Tftp, Some(lease.next_server), msg),
        )
        .await
    })
    .await?;
    c.stats.totals(|t| t.tftp_bytes += got);

    // 3. iPXE: DORA again, now expecting the script URL.
    // The ROM's lease came from `by`: if it died, so did the lease's
    // server, and the node starts over.
    let ipxe_lease = phase(c, Phase::DhcpIpxe, by, async {
        let mut retry = |msg: String, at: Option<Ipv4Addr>| c.retried(Phase::DhcpIpxe, at, msg);
        let l = c.dhcp.dora(m, true, &mut retry).await?;
        let want = format!("http://{}:{}/boot.ipxe", l.server_id, c.http_port);
        if l.boot_file != want {
            bail!("boot file {:?}, expected {want:?}", l.boot_file);
        }
        if l.ip != lease.ip {
            bail!("address {} for iPXE, {} for the ROM", l.ip, lease.ip);
        }
        Ok(l)
    })
    .await?;

    // 4. iPXE's scripts: /boot.ipxe, then the node's own.
    let script = phase(c, Phase::Http, Some(ipxe_lease.server_id), async {
        let (addr, path) = http::parse_url(&ipxe_lease.boot_file)?;
        let chain = get_retrying(c, lease.ip, addr, &path).await?;
        let (addr, path) = http::parse_url(&http::chain_url(&chain, m)?)?;
        let body = get_retrying(c, lease.ip, addr, &path).await?;
        c.stats.server(ipxe_lease.server_id, |s| s.scripts += 1);
        http::parse_sanboot(&body).with_context(|| format!("in {path}"))
    })
    .await?;

    // 5. iSCSI: login (CHAP) as the node's initiator, disk ready.
    let mut session = phase(c, Phase::IscsiLogin, None, async {
        let n = i as u32;
        let id = Identity {
            local: lease.ip,
            portal: c.login_portal(i, script.portal),
            initiator: script.initiator_iqn.clone(),
            target: script.target_iqn.clone(),
            user: script.username.clone(),
            secret: script.password.clone(),
            isid: [0x80, 0x00, 0x02, (n >> 16) as u8, (n >> 8) as u8, n as u8],
        };
        let mut tries = 0;
        let started = Instant::now();
        let mut pause = Duration::from_millis(250);
        let portal_ip = match id.portal.ip() {
            std::net::IpAddr::V4(v) => Some(v),
            _ => None,
        };
        loop {
            let attempt = async {
                let (mut s, hops) = Session::login_following(&id).await?;
                s.ready().await?;
                anyhow::Ok((s, hops))
            };
            match attempt.await {
                Ok((s, hops)) => {
                    if let std::net::IpAddr::V4(at) = s.portal.ip() {
                        c.stats.server(c.server_key(at), |v| v.sessions += 1);
                    }
                    if let Some(k) = &c.kill {
                        k.login();
                    }
                    c.stats.totals(|t| t.redirects += u64::from(hops));
                    let v4 = |ip: std::net::IpAddr| match ip {
                        std::net::IpAddr::V4(v) => Some(v),
                        _ => None,
                    };
                    let at = v4(s.portal.ip());
                    let server = |ip: Option<Ipv4Addr>| ip.map(|v| c.server_key(v));
                    let after_kill = c.kill.as_ref().is_some_and(|k| k.at.get().is_some());
                    if (c.killed(portal_ip) || c.killed(at) || after_kill) && hops > 0 {
                        // After the kill, nodes move to their new owners:
                        // a login redirected to the registry's owner (it may
                        // have claimed the node behind the dead server's
                        // floating address) is the takeover at work.
                        c.stats.takeover(|t| t.redirected_relogins += 1);
                    } else if server(at) != server(v4(script.portal.ip())) {
                        // The same server at its own or its floating
                        // address is the script's portal all the same.
                        bail!(
                            "session on {}, the script's portal is {}",
                            s.portal,
                            script.portal
                        );
                    }
                    break Ok(s);
                }
                // The script's portal is the dead server's floating
                // address: a real initiator keeps trying it (keepalived
                // moves it, a survivor takes the node).
                Err(e)
                    if c.killed(portal_ip)
                        && started.elapsed() < crate::iscsi::REPLACEMENT_TIMEOUT =>
                {
                    let msg = format!("{e:#} (retried)");
                    match misdirected(&msg) {
                        true => c.stats.error(Phase::IscsiLogin, msg),
                        false => c.stats.takeover(|t| t.retry(Phase::IscsiLogin, msg)),
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) if tries + 1 < LOGIN_TRIES => {
                    tries += 1;
                    c.stats.error(Phase::IscsiLogin, format!("{e:#} (retried)"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => break Err(e),
            }
        }
    })
    .await?;

    // 6. The boot's I/O, then logout (the OS shutting the disk down).
    let io = phase(c, Phase::Io, None, replay(c, i, &mut session)).await;
    let seen = outages(c, &session, 0);
    io?;
    let out = phase(c, Phase::Logout, None, session.logout()).await;
    outages(c, &session, seen);
    out?;

    // 7. The address goes back to the pool.
    c.unhold(i, ipxe_lease.ip);
    phase(c, Phase::Release, None, c.dhcp.release(m, &ipxe_lease)).await?;
    c.stats.totals(|t| t.nodes_done += 1);
    Ok(())
}

/// Counts the session's drops from `from` on: one at the killed server is
/// the kill's (the node's wait until its I/O was served again, the
/// survivor that served it); any other is an error (recovered). Returns
/// how many it has seen.
fn outages(c: &Ctx, s: &Session, from: usize) -> usize {
    let mut dropped_here = from > 0 && s.outages[..from].iter().any(|o| c.killed(ip4(o.portal)));
    for o in s.outages.iter().skip(from) {
        let at = ip4(o.portal);
        if !c.killed(at) {
            c.stats.error(
                Phase::Io,
                format!("connection lost: {} (logged in again)", o.error),
            );
            continue;
        }
        let kill_at = c.kill.as_ref().and_then(|k| k.at.get().copied());
        for f in o.failures.iter().filter(|f| misdirected(f)) {
            c.stats.error(Phase::Io, format!("re-login: {f}"));
        }
        c.stats.takeover(|t| {
            for f in o.failures.iter().filter(|f| !misdirected(f)) {
                t.retry(Phase::Io, format!("re-login: {f}"));
            }
            // Failed attempts beyond the few texts kept.
            let more =
                u64::from(o.attempts.saturating_sub(1)).saturating_sub(o.failures.len() as u64);
            *t.retries.entry(Phase::Io.name()).or_default() += more;
            if o.hops > 0 {
                t.redirected_relogins += 1;
            }
            if !dropped_here {
                t.sessions_dropped += 1;
                if let (Some((back, _)), Some(k)) = (o.back, kill_at) {
                    t.resumed_ms
                        .push(back.saturating_duration_since(k).as_secs_f64() * 1000.0);
                }
            }
        });
        if !dropped_here {
            if let Some((_, where_)) = o.back {
                if let Some(ip) = ip4(where_) {
                    c.stats.server(c.server_key(ip), |v| v.resumed += 1);
                }
            }
        }
        dropped_here = true;
    }
    s.outages.len()
}

/// A login failure that is bootd's fault even after a kill: redirected
/// back to the address it came in at. (A few redirects back and forth
/// while the survivors settle who takes a dead server's node are retried.)
fn misdirected(msg: &str) -> bool {
    msg.contains("the address it logged in at")
}

fn ip4(a: SocketAddr) -> Option<Ipv4Addr> {
    match a.ip() {
        std::net::IpAddr::V4(v) => Some(v),
        _ => None,
    }
}

impl Ctx {
    /// Where node `i` sends its login: the script's portal, or with
    /// `misdirect`, for every such node, the next server's (same port).
    fn login_portal(&self, i: usize, portal: SocketAddr) -> SocketAddr {
        if self.misdirect == 0 || !i.is_multiple_of(self.misdirect) || self.servers.len() < 2 {
            return portal;
        }
        let at = self.servers.iter().position(|s| portal.ip() == *s);
        let other = at.map_or(0, |k| (k + 1) % self.servers.len());
        SocketAddr::new(self.servers[other].into(), portal.port())
    }
}

/// GET with up to [`HTTP_TRIES`] attempts; each failed one is counted.
async fn get_retrying(c: &Ctx, local: Ipv4Addr, addr: SocketAddr, path: &str) -> Result<String> {
    let mut tries = 0;
    loop {
        match http::get(local, addr, path).await {
            Ok(body) => return Ok(body),
            Err(e) if tries + 1 < HTTP_TRIES => {
                tries += 1;
                c.retried(Phase::Http, ip4(addr), format!("{e:#} (retried)"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Replays the plan: reads checked against the golden image (or what this
/// node wrote), writes of random data, flushes.
async fn replay(c: &Ctx, i: usize, s: &mut Session) -> Result<()> {
    if s.block_size as u64 != SECTOR {
        bail!(
            "LUN block size {}, the plan is in {SECTOR}-byte blocks",
            s.block_size
        );
    }
    if c.plan.extent_bytes > s.blocks * SECTOR {
        bail!(
            "the plan reaches byte {}, the disk has {}",
            c.plan.extent_bytes,
            s.blocks * SECTOR
        );
    }
    let mut rng = StdRng::seed_from_u64(c.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    // Blocks this node wrote: later reads of them must return these bytes.
    let mut written: HashMap<u64, Bytes> = HashMap::new();
    let mut lat = [Vec::new(), Vec::new(), Vec::new()];
    let (mut read_bytes, mut write_bytes) = (0u64, 0u64);
    let t0 = Instant::now();
    for cmd in &c.plan.cmds {
        if c.pace {
            let at = t0 + Duration::from_millis(cmd.ms);
            tokio::time::sleep_until(at.into()).await;
        }
        let start = Instant::now();
        let slot = match cmd.op {
            Op::Read => {
                let data = s.read(cmd.lba, cmd.blocks).await?;
                check(c, &written, cmd.lba, cmd.blocks, &data)?;
                read_bytes += u64::from(cmd.blocks) * SECTOR;
                0
            }
            Op::Write => {
                let mut buf = vec![0u8; cmd.blocks as usize * SECTOR as usize];
                rng.fill_bytes(&mut buf);
                s.write(cmd.lba, &buf).await?;
                let buf = Bytes::from(buf);
                for b in 0..u64::from(cmd.blocks) {
                    let at = (b * SECTOR) as usize;
                    written.insert(cmd.lba + b, buf.slice(at..at + SECTOR as usize));
                }
                write_bytes += buf.len() as u64;
                1
            }
            Op::Flush => {
                s.flush().await?;
                2
            }
        };
        lat[slot].push(u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    for (p, l) in Phase::COMMANDS.iter().zip(&lat) {
        c.stats.ok_many(*p, l);
    }
    c.stats.totals(|t| {
        t.bytes_read += read_bytes;
        t.bytes_written += write_bytes;
    });
    Ok(())
}

/// Compares what a read returned with what the disk must hold.
fn check(
    c: &Ctx,
    written: &HashMap<u64, Bytes>,
    lba: u64,
    blocks: u32,
    data: &[(u32, Bytes)],
) -> Result<()> {
    if c.verify == Verify::Off {
        return Ok(());
    }
    let sector = SECTOR as usize;
    for (offset, seg) in data {
        let first = u64::from(*offset) / SECTOR;
        let n = seg.len() / sector;
        let end_block = lba + u64::from(blocks);
        for k in 0..n {
            let block = lba + first + k as u64;
            let edge = block == lba || block + 1 == end_block;
            if c.verify == Verify::Sample && !edge {
                continue;
            }
            let got = &seg[k * sector..(k + 1) * sector];
            let want: &[u8] = match written.get(&block) {
                Some(w) => w,
                None => {
                    let at = (block * SECTOR) as usize;
                    c.golden
                        .get(at..at + sector)
                        .context("read beyond the golden image")?
                }
            };
            if got != want {
                bail!("block {block}: data differs from what the disk holds");
            }
        }
    }
    Ok(())
}
