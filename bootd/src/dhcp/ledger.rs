//! Where the DHCP driver keeps leases: the lease file for one server (the
//! default, and always with SQLite), or the registry's `leases` table when
//! several servers share a PostgreSQL registry. The sans-IO core decides
//! from its in-memory table as before; with the registry, every address it
//! puts in an OFFER or ACK is first claimed in PostgreSQL (the unique
//! address settles races between servers), a lost claim sends the core
//! back for another address (OFFER) or becomes a NAK (ACK), and the table
//! follows the registry's rows every second, so each server sees every
//! server's leases. Each second's read fetches only the rows written since
//! the last one ([`PgLeases::changes`]) into a mirror of the registry's
//! rows; the table is then set from the mirror in memory.

use super::lease::{Change, Lease, LeaseStore, Leases, DECLINE_HOLD_SECS, OFFER_HOLD_SECS};
use super::lease_file::FileLeaseStore;
use super::reply::{self, Reply};
use super::server::Params;
use super::Request;
use crate::store::postgres::leases::{Claim, LeaseRow, LeaseState, PgLeases};
use crate::store::postgres::off_runtime;
use crate::store::url::PgTarget;
use anyhow::{Context, Result};
use bootd_plan::Mac;
use dhcproto::v4::MessageType;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often a server reads the other servers' lease changes into its table.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Where `--dhcp full` keeps its leases.
#[derive(Debug, Clone)]
pub enum LeaseHome {
    /// The data directory's `dhcp-leases` file: one server.
    File(PathBuf),
    /// The PostgreSQL registry's `leases` table, rows granted as server `me`.
    Registry { target: Box<PgTarget>, me: String },
}

/// The core's lease table, opened from its home, and the registry's side
/// when leases live there.
pub fn open(home: &LeaseHome, pool: (Ipv4Addr, Ipv4Addr)) -> Result<(Leases, Option<Ledger>)> {
    match home {
        LeaseHome::File(path) => {
            let l = Leases::open(pool, Box::new(FileLeaseStore::new(path.clone())))
                .with_context(|| format!("reading leases {}", path.display()))?;
            Ok((l, None))
        }
        LeaseHome::Registry { target, me } => {
            // Connecting blocks: off serve's runtime.
            let (pg, (rows, since)) = off_runtime::run(|| -> Result<_> {
                let mut pg = PgLeases::open(target, me)?;
                let rows = pg.changes(0)?;
                Ok((pg, rows))
            })
            .with_context(|| format!("DHCP leases in registry {}", target.shown))?;
            let now = unix_now();
            let store = RegistryRows(
                rows.iter()
                    .filter(|r| r.state != LeaseState::Declined)
                    .filter_map(|r| local(r, now))
                    .collect(),
            );
            let mut l = Leases::open(pool, Box::new(store))?;
            l.search_from(spread(me, pool));
            let mut ledger = Ledger {
                pg: Some(pg),
                pool,
                synced: Instant::now(),
                since,
                mirror: HashMap::new(),
                granted: HashMap::new(),
                fresh: Vec::new(),
            };
            ledger.absorb(rows, now);
            ledger.apply(&mut l, now);
            Ok((l, Some(ledger)))
        }
    }
}

/// Where server `me` starts looking for a free address: a point in the
/// pool fixed by its id, so that servers sharing the pool mostly try
/// different addresses instead of all claiming the first free one.
fn spread(me: &str, pool: (Ipv4Addr, Ipv4Addr)) -> Ipv4Addr {
    use sha2::{Digest, Sha256};
    let (first, last) = (u32::from(pool.0), u32::from(pool.1));
    let size = u64::from(last.saturating_sub(first)) + 1;
    let h = Sha256::digest(me.as_bytes());
    let n = h
        .iter()
        .take(8)
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    // `n % size` < size <= 2^32: fits.
    Ipv4Addr::from(first.saturating_add(u32::try_from(n % size).unwrap_or(0)))
}

/// The core's [`LeaseStore`] with the registry: it starts from the rows
/// live at start, and has nothing left to write, because every change
/// reached the registry (claim or release) before its answer was decided.
struct RegistryRows(HashMap<Mac, Lease>);

impl LeaseStore for RegistryRows {
    fn load(&mut self) -> std::io::Result<HashMap<Mac, Lease>> {
        Ok(std::mem::take(&mut self.0))
    }
    fn append(&mut self, _: &[Change]) -> std::io::Result<()> {
        Ok(())
    }
    fn rewrite(&mut self, _: &HashMap<Mac, Lease>) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A registry row as the core's lease, its expiry on this server's clock
/// (rounded up: a lease is never taken as over before the registry says so).
fn local(r: &LeaseRow, now: u64) -> Option<(Mac, Lease)> {
    let mac = r.mac.parse().ok()?;
    let left = u64::try_from(r.left_ms).ok()?.div_ceil(1000);
    Some((
        mac,
        Lease {
            ip: r.address,
            expires: now + left,
        },
    ))
}

/// What the driver does with a decided reply.
pub enum Verdict {
    /// Send this (or nothing).
    Send(Option<Reply>),
    /// The address went to another server's client: decide again.
    Again,
}

/// A registry row as last read, its expiry on this server's clock (0 once
/// it ended).
#[derive(Debug, Clone)]
struct Mirrored {
    mac: Mac,
    state: LeaseState,
    expires: u64,
}

/// One server's connection to the registry's leases.
pub struct Ledger {
    /// `None` only while dropping.
    pg: Option<PgLeases>,
    pool: (Ipv4Addr, Ipv4Addr),
    synced: Instant,
    /// Where the next read of changed rows starts.
    since: i64,
    /// Every row of the registry's `leases` as last read, by address
    /// (rows are never deleted: at most one per pool address).
    mirror: HashMap<Ipv4Addr, Mirrored>,
    /// Bound leases already handed to the HTTP side's grants: a sync hands
    /// over only what changed.
    granted: HashMap<Mac, (Ipv4Addr, u64)>,
    /// Bound leases learnt but not yet handed over.
    fresh: Vec<(Mac, Ipv4Addr, u64)>,
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // The `postgres` crate's client may not be dropped on a runtime thread.
        if let Some(pg) = self.pg.take() {
            off_runtime::run(move || drop(pg));
        }
    }
}

impl Ledger {
    /// Every second: the registry's lease changes into `leases` (other
    /// servers' grants in, the ones that ended there out). Returns the
    /// bound rows new since the last call, for the HTTP side's grants.
    pub fn sync(&mut self, leases: &mut Leases, now: u64) -> Vec<(Mac, Ipv4Addr, u64)> {
        if self.synced.elapsed() >= SYNC_EVERY {
            self.refresh(leases, now);
        }
        std::mem::take(&mut self.fresh)
    }

    /// Reads the rows changed since the last read, then sets `leases`
    /// from the registry's rows.
    fn refresh(&mut self, leases: &mut Leases, now: u64) {
        self.synced = Instant::now();
        let Some(pg) = self.pg.as_mut() else {
            return;
        };
        match pg.changes(self.since) {
            Ok((rows, next)) => {
                self.since = next;
                self.absorb(rows, now);
            }
            Err(e) => {
                tracing::warn!("reading the registry's DHCP leases: {e}");
                return;
            }
        }
        self.apply(leases, now);
    }

    /// Changed rows into the mirror.
    fn absorb(&mut self, rows: Vec<LeaseRow>, now: u64) {
        for r in rows {
            let Ok(mac) = r.mac.parse::<Mac>() else {
                continue;
            };
            let expires = local(&r, now).map_or(0, |(_, l)| l.expires);
            self.mirror.insert(
                r.address,
                Mirrored {
                    mac,
                    state: r.state,
                    expires,
                },
            );
        }
    }

    /// The mirror's live rows into `leases`; what ended there ends here.
    fn apply(&mut self, leases: &mut Leases, now: u64) {
        let live = || self.mirror.iter().filter(|(_, m)| m.expires > now);
        let mut held = HashSet::new();
        let mut bound = Vec::new();
        for (ip, m) in live() {
            match m.state {
                LeaseState::Declined => {
                    // Nobody's lease: the address stays out of every offer.
                    leases.hold_declined(*ip, m.expires);
                    continue;
                }
                LeaseState::Bound => bound.push((m.mac, *ip, m.expires)),
                // An offer (another server's, or one whose row another
                // server's offer of the same address took over) to a MAC
                // this table already has a running lease for elsewhere:
                // the core keeps one address per MAC, and learning this one
                // would NAK the client's REQUEST for the address this
                // server offered it (the NAKs seen with three servers: the
                // row naming the server was the only guard, and a same-MAC
                // claim by another server rewrites it). A claim of this
                // address loses and teaches it instead.
                LeaseState::Offered
                    if leases
                        .get(m.mac)
                        .is_some_and(|l| l.expires > now && l.ip != *ip) =>
                {
                    continue
                }
                LeaseState::Offered => {}
            }
            held.insert((m.mac, *ip));
            leases.bind(m.mac, *ip, m.expires, false);
        }
        // Rows that ended in the registry (released, or an offer whose
        // client took another server's) end here too.
        let gone: Vec<_> = leases
            .active(now)
            .filter(|(mac, ip, _)| !held.contains(&(*mac, *ip)))
            .collect();
        for (mac, ip, _) in gone {
            leases.release(mac, ip, now);
        }
        for b @ (mac, ip, exp) in &bound {
            if self.granted.get(mac) != Some(&(*ip, *exp)) {
                self.fresh.push(*b);
            }
        }
        self.granted = bound.into_iter().map(|(m, ip, e)| (m, (ip, e))).collect();
    }

    /// The core NAKed a REQUEST addressed to this server because its table,
    /// a mirror of the registry, remembers another address for the client
    /// (learnt from a peer's row between this server's OFFER and the
    /// REQUEST). The registry is the authority on leases: when nobody holds
    /// the requested address in the table, the client holds it there again
    /// and the caller decides once more, so the ACK's claim in the registry
    /// settles it (a NAK only when the registry gives the address to
    /// someone else). `true` when the caller should decide again.
    pub fn second_look(
        &self,
        req: &Request,
        decided: &Option<Reply>,
        leases: &mut Leases,
        p: &Params,
        now: u64,
    ) -> bool {
        let nak = decided
            .as_ref()
            .is_some_and(|r| r.msg.opts().msg_type() == Some(MessageType::Nak));
        if !nak || req.msg_type != MessageType::Request {
            return false;
        }
        if req.server_id().is_some_and(|id| id != p.server) {
            return false;
        }
        let ciaddr = req.msg.ciaddr();
        let Some(want) = req
            .requested_ip()
            .or((!ciaddr.is_unspecified()).then_some(ciaddr))
        else {
            return false;
        };
        let mac = req.mac();
        let had = leases.get(mac).map(|l| l.ip);
        let again = leases.take_requested(mac, want, now);
        tracing::info!(%mac, %want, ?had, again, "REQUEST for an address the lease table did not give the client");
        again
    }

    /// Claims the address in `reply` (an OFFER's or ACK's) before it goes out.
    pub fn confirm(
        &mut self,
        req: &Request,
        reply: Option<Reply>,
        leases: &mut Leases,
        p: &Params,
        now: u64,
    ) -> Verdict {
        let Some(r) = reply else {
            return Verdict::Send(None);
        };
        let ip = r.msg.yiaddr();
        let (state, hold_secs) = match r.msg.opts().msg_type() {
            _ if ip.is_unspecified() => return Verdict::Send(Some(r)),
            Some(MessageType::Offer) => (LeaseState::Offered, OFFER_HOLD_SECS),
            Some(MessageType::Ack) => (LeaseState::Bound, u64::from(p.lease_secs)),
            _ => return Verdict::Send(Some(r)),
        };
        let Some(pg) = self.pg.as_mut() else {
            return Verdict::Send(None);
        };
        let mac = req.mac();
        let hold_ms = i64::try_from(hold_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        match pg.claim(ip, &mac.to_string(), state, hold_ms) {
            Ok(Claim::Won) => Verdict::Send(Some(r)),
            Ok(Claim::Lost(Some(h))) if h.mac == mac.to_string() && h.address != ip => {
                // The client has a running lease elsewhere (granted by
                // another server, not read here yet): offer it that one.
                if let Some((m, l)) = local(&h, now) {
                    leases.bind(m, l.ip, l.expires, false);
                }
                Verdict::Again
            }
            Ok(Claim::Lost(holder)) => {
                tracing::debug!(%mac, %ip, ?state, "address held by another client in the registry");
                let declined = holder.as_ref().map(|h| h.state) == Some(LeaseState::Declined);
                match holder.as_ref().and_then(|h| local(h, now)) {
                    Some((_, l)) if declined => leases.hold_declined(l.ip, l.expires),
                    Some((m, l)) => leases.bind(m, l.ip, l.expires, false),
                    // Ended meanwhile: the next sync shows who has it.
                    None => leases.release(mac, ip, now),
                }
                match state {
                    LeaseState::Offered => {
                        // Servers racing from the same first free address
                        // lose one address after another: learn every
                        // taken one at once, and search on from a random
                        // point, so that a server one step behind another
                        // does not follow it through the pool.
                        self.refresh(leases, now);
                        let (first, last) = (u32::from(self.pool.0), u32::from(self.pool.1));
                        let n =
                            rand::Rng::gen_range(&mut rand::thread_rng(), first..=last.max(first));
                        leases.search_from(Ipv4Addr::from(n));
                        Verdict::Again
                    }
                    // (Declined is never claimed.)
                    LeaseState::Bound | LeaseState::Declined => {
                        tracing::info!(%mac, %ip, holder = ?holder.map(|h| (h.mac, h.state)), "NAK: the registry gives the address to another client");
                        Verdict::Send(Some(reply::nak(req, p.server)))
                    }
                }
            }
            Err(e) => {
                // No answer that the registry does not back: the client
                // asks again.
                tracing::warn!(%mac, %ip, "claiming a DHCP lease in the registry: {e}");
                Verdict::Send(None)
            }
        }
    }

    /// RELEASE of `ip` by `mac`: its row ends now.
    pub fn release(&mut self, mac: Mac, ip: Ipv4Addr) {
        let Some(pg) = self.pg.as_mut() else {
            return;
        };
        if let Err(e) = pg.release(ip, &mac.to_string()) {
            tracing::warn!(%mac, %ip, "releasing a DHCP lease in the registry: {e}");
        }
    }

    /// DECLINE of `ip` by `mac`: no server offers it for the decline hold.
    pub fn decline(&mut self, mac: Mac, ip: Ipv4Addr) {
        let Some(pg) = self.pg.as_mut() else {
            return;
        };
        let hold_ms = i64::try_from(DECLINE_HOLD_SECS.saturating_mul(1000)).unwrap_or(i64::MAX);
        if let Err(e) = pg.decline(ip, &mac.to_string(), hold_ms) {
            tracing::warn!(%mac, %ip, "declining a DHCP lease in the registry: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> Ledger {
        Ledger {
            pg: None,
            pool: (Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(192, 0, 2, 20)),
            synced: Instant::now(),
            since: 0,
            mirror: HashMap::new(),
            granted: HashMap::new(),
            fresh: Vec::new(),
        }
    }

    fn row(ip: u8, mac: &str, server: &str, state: LeaseState, left_ms: i64) -> LeaseRow {
        LeaseRow {
            address: Ipv4Addr::new(192, 0, 2, ip),
            mac: mac.into(),
            server: server.into(),
            state,
            left_ms,
        }
    }

    /// This server offered X to a client; by its next read, another server
    /// offered the same client X too (taking the row over: it now names
    /// that server) and a third offered W. The client's REQUEST for X must
    /// find X in the table: learning W as the client's lease would NAK it.
    #[test]
    fn another_servers_offer_never_replaces_the_clients_running_lease() -> anyhow::Result<()> {
        let pool = (Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(192, 0, 2, 20));
        let mut l = Leases::open(pool, Box::new(RegistryRows(HashMap::new())))?;
        let mut lg = ledger();
        let now = 1_000;
        let m1 = "02:00:00:00:00:01";
        let mac: Mac = m1.parse()?;
        let x = Ipv4Addr::new(192, 0, 2, 12);
        l.bind(mac, x, now + 60, false);
        lg.absorb(
            vec![
                row(12, m1, "t", LeaseState::Offered, 60_000),
                row(15, m1, "u", LeaseState::Offered, 60_000),
            ],
            now,
        );
        lg.apply(&mut l, now);
        assert_eq!(l.get(mac).map(|l| l.ip), Some(x));
        // The client took u's offer after all: the bound row wins.
        lg.absorb(vec![row(15, m1, "u", LeaseState::Bound, 600_000)], now);
        lg.apply(&mut l, now);
        assert_eq!(l.get(mac).map(|l| l.ip), Some(Ipv4Addr::new(192, 0, 2, 15)));
        assert_eq!(lg.fresh.len(), 1, "the bound lease goes to the grants");
        // A declined address is kept out of this server's offers.
        let m2: Mac = "02:00:00:00:00:02".parse()?;
        lg.absorb(
            vec![row(
                10,
                "02:00:00:00:00:03",
                "u",
                LeaseState::Declined,
                600_000,
            )],
            now,
        );
        lg.apply(&mut l, now);
        assert_ne!(
            l.choose(m2, None, Some(Ipv4Addr::new(192, 0, 2, 10)), now),
            Some(Ipv4Addr::new(192, 0, 2, 10))
        );
        Ok(())
    }
}
