//! The web dashboard (`serve --api-listen`, page at `/`) in a real browser while real
//! machines boot: Debian's headless Chromium driven through chromedriver (WebDriver),
//! both in the test's network namespace beside serve and the TCG guests.
//!
//! Fleet: a registered BIOS guest boots; its row appears, its stage advances live on the
//! page (no reload) through ipxe-dhcp, script and the iSCSI logins, and the page's
//! timeline is the one `node show` keeps. An unregistered guest asks to boot; it shows
//! up among the discovered machines, is adopted from the page (confirm dialog) and then
//! boots from its own overlay. A read-only token shows no actions; a forged one gets the
//! sign-in error.
//!
//! Scale: 2000 nodes added through the API; the time from sign-in to the list drawn,
//! from a scroll to the end to the last row drawn, and the per-frame cost of a burst of
//! 2000 real stage events (each node's iPXE script fetched) are measured and printed.
//!
//! Screenshots go to a directory under the system temp dir, printed at the end.
//!
//! - `fleet`: the real boots, the adoption, the tokens.
//! - `scale`: 2000 nodes and the burst of events.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bootd_tests::diskless::{last_boot, Firmware, Lan, PxeBoot, PxeGuest};
use bootd_tests::env::{e2e_required, Needs};
use bootd_tests::export::Server;
use bootd_tests::golden::{self, GoldenImage, Markers};
use bootd_tests::guest;
use bootd_tests::netns::NetNs;
use bootd_tests::serve::{DataDir, ServeOptions};
use bootd_tests::webdriver::{self, http, Browser};
use serde_json::{json, Value};

mod fleet;
mod scale;

const SERVER_IP: &str = "192.0.2.1";
const POOL: &str = "192.0.2.100-192.0.2.120";
/// The API (and the page) inside the namespace.
const API_PORT: u16 = 9090;
const REGISTERED: (&str, &str, &str) = ("n1", "52:54:00:da:5b:01", "tap1");
/// Not registered: serve records it (`--unknown discover`) and the page adopts it.
const NEWCOMER: (&str, &str) = ("52:54:00:da:5b:02", "tap2");
const BOOT_LIMIT: Duration = Duration::from_secs(180);
const SIGN_IN: Duration = Duration::from_secs(30);
const NODES: usize = 2000;

fn page() -> String {
    format!("http://127.0.0.1:{API_PORT}/")
}

/// The stage the page shows in `node`'s row (null when the row is not drawn).
const ROW_STAGE: &str = "const r = [...document.querySelectorAll('#list .row')]
      .find(e => !e.hidden && e.dataset.node === arguments[0]);
    return r ? (r.children[4].dataset.stage || r.children[4].textContent) : null;";

/// Signed in, and the node list drawn.
const SIGNED_IN: &str = "return !document.getElementById('app').hidden
    && window.bootdPerf && window.bootdPerf.listDrawnMs >= 0";

/// Visible, enabled action buttons (reset, move, adopt).
const ACTIONS: &str =
    "return [...document.querySelectorAll('#list .row .actions button, #discovered button')]
    .filter(b => b.offsetParent !== null && !b.disabled).length";

fn shots_dir(test: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("bootd-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn can_run(test: &str, guests: bool) -> bool {
    if Server::from_env() != Server::Bootd {
        println!("{test}: skipped: serve is bootd's own (BOOTD_TEST_TARGET)");
        return false;
    }
    let mut needs = Needs::new().root().server().tool("curl", "curl");
    for (tool, package) in webdriver::TOOLS {
        needs = needs.tool(tool, package);
    }
    if guests {
        for (tool, package) in guest::TOOLS.iter().chain(golden::TOOLS) {
            needs = needs.tool(tool, package);
        }
    }
    if !needs.met(test) {
        return false;
    }
    match Firmware::Bios.missing() {
        Some(why) if guests && e2e_required() => {
            panic!("{test}: BOOTD_E2E=1 but {why} (scripts/install-test-deps.sh installs it)")
        }
        Some(why) if guests => {
            println!("{test}: skipped: {why}");
            false
        }
        _ => true,
    }
}

fn token(data: &DataDir, name: &str, read_only: bool) -> Result<String> {
    let mut args = vec!["token", "add", name];
    if read_only {
        args.push("--read-only");
    }
    Ok(data.run(&args)?.stdout.trim().to_string())
}

/// Opens the page signed in with `token` (from the URL fragment), in a fresh document.
fn open_with(b: &Browser, token: &str) -> Result<()> {
    b.goto("about:blank")?;
    b.goto(&format!("{}#token={token}", page()))
}
