//! Command-line options.

use crate::node::Verify;
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "bootd-storm",
    version,
    about = "Boot storm: N simulated nodes boot from one or more bootd servers at once, end to end",
    long_about = "Boot storm: N simulated nodes boot from one or more bootd servers at once, end to end.\n\n\
Needs root. Builds a throw-away data directory (a golden image of random bytes, N \
registered nodes with MACs 52:54:00:xx:xx:xx), a private LAN (a namespace for the nodes \
holding a bridge, and one namespace per server on it; addresses in 198.18.0.0/15, \
nothing touches the host's interfaces), and runs `bootd serve --server-id sK --dhcp full` \
in each server namespace. With --servers above 1 the servers share one PostgreSQL \
registry the storm starts and the one data directory, and bootd's rendezvous placement \
spreads the nodes over them. Each node then does what a diskless machine does: DHCP as a PXE BIOS ROM \
(expects undionly.kpxe), TFTP of that file (blksize 1428, checked byte for byte), DHCP \
again as iPXE (expects the /boot.ipxe URL), HTTP /boot.ipxe and its chain to the \
node's script, iSCSI login with the script's initiator IQN and CHAP secret (following \
a login redirect if the server reached does not own the node), the boot's \
I/O (a trace, scaled to --read-set-mib of distinct reads; reads checked against the \
golden image or the node's own writes), logout, and DHCP RELEASE.",
    after_help = "ADDRESSES: servers at 198.18.0.1..N/15, the DHCP pool from 198.19.0.1 \
with an address for every node and some to spare (at most 65534 nodes). Every node's \
TFTP, HTTP, iSCSI and DHCP RELEASE traffic comes from the address its lease gave it: \
the nodes' namespace holds the pool's /16 as a local route, so any leased address can be \
bound at once. Scripts are served only to the node's leased address (bootd's default \
--script-access bound).\n\n\
TRACE FORMAT (--trace, --emit-trace; `bootd serve --record-io DIR` writes it):\n  \
# bootd-io-trace v1 block_size=512\n  <ms since login> R|W|F <lba> <blocks>\n\
F is SYNCHRONIZE CACHE (lba and blocks 0). Without --trace, the recorded boot of the \
end-to-end test image is replayed (iPXE's sanboot reading syslinux, the kernel and the \
initramfs, then Linux attaching the disk through the iBFT and writing its marker; \
recorded with `scripts/demo.sh` and DEMO_RECORD_IO). --trace synthetic uses a synthetic \
boot instead: sequential 4-128 KiB reads through the first 64 MiB with holes, 10% random \
4 KiB reads, 300 4 KiB writes in 20 bursts, each followed by a flush.\n\n\
The run is bounded: --time-limit stops it (unfinished nodes are reported), and \
every network wait has a timeout and a bounded number of retries. The exit status is \
1 when any node failed or any error (even a recovered one) was counted."
)]
pub struct Args {
    /// Simulated nodes.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Nodes booting at the same time.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// bootd serve processes, each in its own namespace on the one LAN.
    #[arg(long, default_value_t = 1)]
    pub servers: usize,
    /// The registry: sqlite (the data directory's, one server only) or
    /// postgres (started by the storm) [default: sqlite for one server,
    /// postgres for more].
    #[arg(long, value_enum)]
    pub registry: Option<crate::registry::Kind>,
    /// Every Nth node sends its iSCSI login to a server that does not own
    /// it (and must be redirected to the owner); 0: none.
    #[arg(long, default_value_t = 0)]
    pub misdirect: usize,
    /// SIGKILL server K (1-based: sK) in the middle of the storm, once
    /// --kill-after-logins nodes have logged in. Implies --floating: the
    /// dead server's nodes must come back at the floating address their
    /// script named, on whichever survivor keepalived moved it to.
    #[arg(long, value_name = "K")]
    pub kill_server: Option<usize>,
    /// iSCSI logins (over all servers) before --kill-server strikes
    /// [default: a third of --nodes].
    #[arg(long, value_name = "N")]
    pub kill_after_logins: Option<u64>,
    /// Give each server a floating portal address (198.18.1.K, `serve
    /// --floating-ip`) moved by real keepalived (VRRP) running in every
    /// server's namespace with the configuration `bootd server
    /// keepalived-config` prints: node scripts name the floating address.
    #[arg(long)]
    pub floating: bool,
    /// Seconds the servers may take to place every node (setup).
    #[arg(long, default_value_t = 120)]
    pub place_limit: u64,
    /// Seconds the storm may run before it stops by itself (setup not included).
    #[arg(long, default_value_t = 300)]
    pub time_limit: u64,
    /// Distinct MiB each node reads: the trace's reads are repeated (shifted
    /// past each other) or cut short to reach it; 0 replays the trace as is.
    #[arg(long, default_value_t = 64)]
    pub read_set_mib: u64,
    /// Boot I/O trace to replay: a file, or `synthetic` for the built-in
    /// synthetic pattern [default: the recorded boot of the end-to-end test
    /// image, tests/storm/fixtures/golden-boot.trace].
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Write what each node would replay (the trace scaled to
    /// --read-set-mib; 0 for the trace as it is) to FILE and exit (needs no root).
    #[arg(long, value_name = "FILE")]
    pub emit_trace: Option<PathBuf>,
    /// Replay the trace's timing (sleep until each command's ms since
    /// login) instead of as fast as the server answers.
    #[arg(long)]
    pub pace: bool,
    /// How reads are checked: sample (first and last block of each read),
    /// full (every byte) or off.
    #[arg(long, value_enum, default_value_t = Verify::Sample)]
    pub verify: Verify,
    /// The bootd binary [default: <workspace>/build/release/bootd].
    #[arg(long)]
    pub bootd: Option<PathBuf>,
    /// The iPXE binary served over TFTP (copied into a private TFTP directory).
    #[arg(long, default_value = "/usr/lib/ipxe/undionly.kpxe")]
    pub ipxe: PathBuf,
    /// Golden image size in MiB [default: the plan's extent rounded up, at least 128].
    #[arg(long)]
    pub image_mib: Option<u64>,
    /// Where bootd's stderr goes [default: bootd-storm-PID.log in the temp
    /// directory]; with several servers, server K's goes to FILE.sK.
    #[arg(long)]
    pub bootd_log: Option<PathBuf>,
    /// Pass `--record-io DIR` to bootd serve: every node's I/O as bootd saw
    /// it, in the trace format (a recorded node replays what it was given).
    #[arg(long, value_name = "DIR")]
    pub record_io: Option<PathBuf>,
    /// BOOTD_LOG for bootd serve.
    #[arg(long, default_value = "info")]
    pub bootd_log_level: String,
    /// DHCP lease time handed out, seconds (bootd's minimum is 60).
    #[arg(long, default_value_t = 600)]
    pub lease_secs: u32,
    /// Seed for the synthetic trace, the golden image and the written data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of the table (no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Keep the work directory (data dir, TFTP dir) and print its path.
    #[arg(long)]
    pub keep: bool,
}
