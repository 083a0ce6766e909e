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

/// Polls the page while `guest` runs: every stage `node`'s row showed, in order.
fn watch_stages(b: &Browser, guest: &mut PxeGuest, node: &str) -> Result<Vec<String>> {
    let mut seen: Vec<String> = Vec::new();
    while guest.running()? && guest.elapsed() < BOOT_LIMIT {
        if let Some(s) = b.js(ROW_STAGE, json!([node]))?.as_str() {
            if seen.last().map(String::as_str) != Some(s) {
                println!(
                    "  page: {node} at {s} (+{:.1}s)",
                    guest.elapsed().as_secs_f64()
                );
                seen.push(s.to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    Ok(seen)
}

/// After a boot: the stages the page lists in `node`'s detail are `node show`'s.
fn detail_matches_registry(b: &Browser, data: &DataDir, node: &str) -> Result<Vec<String>> {
    let want: Vec<String> = last_boot(data, node)?
        .into_iter()
        .map(|s| s.stage)
        .collect();
    b.click(&format!("#list .row[data-node=\"{node}\"] span"))?;
    let script = "const want = arguments[0];
        const got = [...document.querySelectorAll('#detail-stages .stage')].map(e => e.textContent);
        return JSON.stringify(got) === JSON.stringify(want) ? got : null;";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = b.js(script, json!([want]))?;
        if !got.is_null() {
            return Ok(want);
        }
        ensure!(
            Instant::now() < deadline,
            "the page's timeline of {node} is not node show's {want:?}: {}",
            b.js(
                "return [...document.querySelectorAll('#detail-stages .stage')].map(e => e.textContent)",
                json!([])
            )?
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn boot(ns: &NetNs, dir: &Path, what: &str, mac: &str, tap: &str) -> Result<PxeGuest> {
    PxeGuest::start(
        ns,
        &PxeBoot {
            firmware: Firmware::Bios,
            tap: tap.to_string(),
            mac: mac.to_string(),
            console: dir.join(format!("{what}.console")),
            limit: BOOT_LIMIT,
            memory_mib: 512,
            default_devices: true,
        },
    )
}

#[test]
fn dashboard_follows_real_boots_and_adopts_a_discovered_machine() -> Result<()> {
    let test = "dashboard_follows_real_boots_and_adopts_a_discovered_machine";
    if !can_run(test, true) {
        return Ok(());
    }
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let shots = shots_dir(test)?;
    let image = GoldenImage::build()?;
    let data = DataDir::new()?;
    data.import("golden", &image.path)?;
    data.add_node(REGISTERED.1, "golden", REGISTERED.0)?;
    let full = token(&data, "ops", false)?;
    let ro = token(&data, "wall", true)?;

    let ns = NetNs::new()?;
    let lan = Lan::new(&ns, "lan0", &format!("{SERVER_IP}/24"))?;
    lan.add_tap(REGISTERED.2)?;
    lan.add_tap(NEWCOMER.1)?;
    let api_listen = format!("127.0.0.1:{API_PORT}");
    let serve = lan.serve_full(
        &data,
        SERVER_IP,
        POOL,
        &["--unknown", "discover", "--api-listen", &api_listen],
    )?;
    // The boot network's HTTP port never serves the page.
    let (s, body) = http(
        Some(&ns),
        SERVER_IP,
        serve.http_port(),
        "GET",
        "/",
        &[],
        None,
    )?;
    ensure!(
        s != 200 && !body.contains("app.js"),
        "the boot network's HTTP port served the page ({s})"
    );

    let b = Browser::start(&ns, &shots, 1400, 1100)?;
    open_with(&b, &full)?;
    b.wait("signed in with the full token", SIGN_IN, SIGNED_IN)?;
    let url = b.cmd("GET", "/url", None)?;
    ensure!(
        !url.to_string().contains("bootd_"),
        "the token stayed in the address bar: {url}"
    );
    b.wait(
        "the event stream",
        SIGN_IN,
        "return document.getElementById('conn').textContent === 'live'",
    )?;
    b.js("window.__sameDocument = 'yes'; return 1", json!([]))?;
    let before = b.wait(
        "n1's row",
        SIGN_IN,
        &ROW_STAGE.replace("arguments[0]", "'n1'"),
    )?;
    println!("{test}: n1 listed, stage {before}");
    ensure!(
        b.js(ACTIONS, json!([]))?.as_u64() >= Some(2),
        "a full token shows no actions"
    );

    // A real boot, watched on the page.
    let mut g = boot(&ns, dir.path(), "n1", REGISTERED.1, REGISTERED.2)?;
    let seen = watch_stages(&b, &mut g, REGISTERED.0)?;
    let outcome = g.wait()?;
    Markers::of(&outcome).with_context(|| serve.log())?;
    println!(
        "{test}: n1 booted in {:.1}s; the page showed {seen:?}",
        outcome.elapsed.as_secs_f64()
    );
    ensure!(
        seen.iter().any(|s| s == "script")
            && seen.iter().any(|s| s.starts_with("iscsi-login"))
            && seen.len() >= 3,
        "the page did not follow n1's boot live: {seen:?}"
    );
    let stages = detail_matches_registry(&b, &data, REGISTERED.0)?;
    println!("{test}: the page's timeline of n1 is node show's: {stages:?}");
    ensure!(
        b.js("return window.__sameDocument", json!([]))? == "yes",
        "the page reloaded"
    );
    println!("{}", b.screenshot("fleet")?.display());

    // An unregistered machine asks to boot: discovered, adopted on the page, booted.
    let g = boot(&ns, dir.path(), "newcomer", NEWCOMER.0, NEWCOMER.1)?;
    let row = format!("#discovered tr[data-mac=\"{}\"]", NEWCOMER.0);
    b.wait(
        "the newcomer among the discovered machines",
        Duration::from_secs(90),
        &format!("return !!document.querySelector('{row}')"),
    )
    .with_context(|| serve.log())?;
    println!(
        "{test}: {} discovered after {:.1}s",
        NEWCOMER.0,
        g.elapsed().as_secs_f64()
    );
    drop(g); // powered off: it boots once adopted
    b.click(&format!("{row} button.adopt"))?;
    b.wait(
        "the confirm dialog",
        Duration::from_secs(5),
        "return document.getElementById('confirm').open",
    )?;
    let options = b.js(
        "return [...document.querySelectorAll('#confirm-choice option')].map(o => o.value)",
        json!([]),
    )?;
    ensure!(
        options
            .as_array()
            .is_some_and(|o| o.contains(&json!("image:golden"))),
        "adopt offers {options}"
    );
    b.js(
        "document.getElementById('confirm-choice').value = 'image:golden'; return 1",
        json!([]),
    )?;
    println!("{}", b.screenshot("adopt-confirm")?.display());
    ensure!(
        data.json(&["node", "list", "--json"])?
            .as_array()
            .is_some_and(|a| a.len() == 1),
        "a node was made before the dialog was confirmed"
    );
    b.click("#confirm-ok")?;
    b.wait(
        "the dialog closed",
        Duration::from_secs(30),
        "return !document.getElementById('confirm').open",
    )?;
    let nodes = data.json(&["node", "list", "--json"])?;
    let adopted = nodes
        .as_array()
        .and_then(|a| a.iter().find(|n| n["mac"] == NEWCOMER.0))
        .and_then(|n| n["name"].as_str())
        .map(str::to_string)
        .with_context(|| format!("{} not adopted: {nodes}", NEWCOMER.0))?;
    b.wait(
        "the adopted node's row",
        Duration::from_secs(10),
        &ROW_STAGE.replace("arguments[0]", &format!("'{adopted}'")),
    )?;
    let mut g = boot(&ns, dir.path(), "adopted", NEWCOMER.0, NEWCOMER.1)?;
    let seen = watch_stages(&b, &mut g, &adopted)?;
    let outcome = g.wait()?;
    Markers::of(&outcome).with_context(|| serve.log())?;
    println!(
        "{test}: adopted as {adopted}, booted in {:.1}s; the page showed {seen:?}",
        outcome.elapsed.as_secs_f64()
    );
    ensure!(
        seen.iter().any(|s| s.starts_with("iscsi-login")),
        "the page did not follow {adopted}'s boot: {seen:?}"
    );
    detail_matches_registry(&b, &data, &adopted)?;
    println!("{}", b.screenshot("after-adopt")?.display());

    // Node actions, each behind the confirm dialog: Cancel changes nothing, OK does.
    let generation = || -> Result<Value> {
        Ok(data.json(&["node", "show", REGISTERED.0, "--json"])?["overlay_generation"].take())
    };
    let before = generation()?;
    let reset = format!(
        "#list .row[data-node=\"{}\"] button[data-action=reset]",
        REGISTERED.0
    );
    let dialog_open = "return document.getElementById('confirm').open";
    let dialog_closed = "return !document.getElementById('confirm').open";
    b.click(&reset)?;
    b.wait("the reset dialog", Duration::from_secs(5), dialog_open)?;
    b.click("#confirm-cancel")?;
    b.wait("the dialog closed", Duration::from_secs(5), dialog_closed)?;
    ensure!(generation()? == before, "Cancel reset the node");
    b.click(&reset)?;
    b.wait("the reset dialog", Duration::from_secs(5), dialog_open)?;
    b.click("#confirm-ok")?;
    b.wait("the reset done", Duration::from_secs(30), dialog_closed)?;
    let after = generation()?;
    ensure!(
        after.as_i64() > before.as_i64(),
        "reset from the page: overlay generation {before} -> {after}"
    );
    println!("{test}: n1 reset from the page (overlay generation {before} -> {after})");
    b.click(&reset.replace("reset", "move"))?;
    b.wait("the move dialog", Duration::from_secs(5), dialog_open)?;
    let server = b.js(
        "const o = [...document.querySelectorAll('#confirm-choice option')]
            .find(o => o.value.startsWith('server:') && o.value !== 'server:none');
         if (!o) return null;
         document.getElementById('confirm-choice').value = o.value;
         return o.value.slice('server:'.length);",
        json!([]),
    )?;
    let server = server.as_str().context("no server to move to")?.to_string();
    b.click("#confirm-ok")?;
    b.wait("the move done", Duration::from_secs(30), dialog_closed)?;
    let pinned = data.json(&["node", "show", REGISTERED.0, "--json"])?["pinned_server"].take();
    ensure!(
        pinned == server.as_str(),
        "moved to {server} from the page: pinned {pinned}"
    );
    println!("{test}: n1 pinned to server {server} from the page");

    // A read-only token: the fleet, no actions.
    open_with(&b, &ro)?;
    b.wait("signed in read-only", SIGN_IN, SIGNED_IN)?;
    b.wait(
        "n1's row",
        SIGN_IN,
        &ROW_STAGE.replace("arguments[0]", "'n1'"),
    )?;
    ensure!(
        b.js(
            "return document.getElementById('who').textContent",
            json!([])
        )? == "wall (read-only token)",
        "not shown as read-only"
    );
    let actions = b.js(ACTIONS, json!([]))?;
    ensure!(actions == 0, "a read-only token shows {actions} actions");
    println!("{}", b.screenshot("read-only")?.display());

    // A forged token: the sign-in error, nothing else.
    open_with(&b, &format!("bootd_{}", "0".repeat(64)))?;
    let err = b.wait(
        "the sign-in error",
        SIGN_IN,
        "return document.getElementById('app').hidden
            && document.getElementById('signin-error').textContent",
    )?;
    ensure!(
        err.as_str().is_some_and(|e| e.contains("token refused")),
        "forged token: {err}"
    );
    println!("{}", b.screenshot("forged-token")?.display());

    drop(b);
    serve.stop()?;
    println!(
        "{test}: passed in {:.1}s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
    Ok(())
}

/// Summary of frame costs (ms): count, mean, p95, max.
fn frames(v: &Value) -> (usize, f64, f64, f64) {
    let mut f: Vec<f64> = v
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    f.sort_by(f64::total_cmp);
    let n = f.len();
    if n == 0 {
        return (0, 0.0, 0.0, 0.0);
    }
    let mean = f.iter().sum::<f64>() / n as f64;
    (n, mean, f[(n * 95 / 100).min(n - 1)], f[n - 1])
}

#[test]
fn dashboard_renders_2000_nodes_and_a_burst_of_events() -> Result<()> {
    let test = "dashboard_renders_2000_nodes_and_a_burst_of_events";
    if !can_run(test, false) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let shots = shots_dir(test)?;
    let data = DataDir::new()?;
    let img = dir.path().join("tiny.raw");
    std::fs::File::create(&img)?.set_len(4 << 20)?;
    data.import("tiny", &img)?;
    let full = token(&data, "ops", false)?;
    let ns = NetNs::new()?;
    let api_listen = format!("127.0.0.1:{API_PORT}");
    let serve = data.serve_with(&ServeOptions {
        netns: Some(&ns),
        listen_ip: "127.0.0.1".to_string(),
        // Scripts to any address: one client plays all 2000 machines in the burst.
        extra: ["--api-listen", &api_listen, "--script-access", "open"]
            .map(String::from)
            .to_vec(),
    })?;

    // 2000 nodes through the API, four clients at once.
    let adding = Instant::now();
    let auth = format!("Bearer {full}");
    let mac = |i: usize| format!("52:54:01:00:{:02x}:{:02x}", i >> 8, i & 0xff);
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (ns, auth, mac) = (&ns, &auth, &mac);
                s.spawn(move || -> Result<()> {
                    for i in (w..NODES).step_by(4) {
                        let body =
                            json!({"mac": mac(i), "image": "tiny", "name": format!("node{i:04}")});
                        let (st, text) = http(
                            Some(ns),
                            "127.0.0.1",
                            API_PORT,
                            "POST",
                            "/api/v1/nodes",
                            &[("Authorization", auth)],
                            Some(&body.to_string()),
                        )?;
                        ensure!(st == 201, "adding node{i:04}: {st} {text}");
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("adder panicked"))??;
        }
        Ok(())
    })?;
    println!(
        "{test}: {NODES} nodes added through the API in {:.1}s",
        adding.elapsed().as_secs_f64()
    );

    // Sign in by typing the token, as an operator would.
    let b = Browser::start(&ns, &shots, 1400, 1100)?;
    b.goto(&page())?;
    b.wait(
        "the sign-in form",
        SIGN_IN,
        "return !document.getElementById('signin').hidden",
    )?;
    // Every request the page makes is counted (the default buffer keeps 250).
    b.js(
        "performance.setResourceTimingBufferSize(100000); return 1",
        json!([]),
    )?;
    b.type_into("#token", &full)?;
    b.click("#signin-form button")?;
    b.wait("signed in", Duration::from_secs(60), SIGNED_IN)?;
    let perf = b.js("return window.bootdPerf", json!([]))?;
    let drawn_ms = perf["listDrawnMs"].as_f64().unwrap_or(-1.0);
    let in_dom = perf["rowsInDom"].as_u64().unwrap_or(0);
    let total = b.js(
        "return [...document.querySelectorAll('#by-state b')].reduce((n, b) => n + Number(b.textContent), 0)",
        json!([]),
    )?;
    println!(
        "{test}: sign-in to {NODES} nodes listed and drawn: {drawn_ms:.0} ms; rows in the DOM: {in_dom}"
    );
    ensure!(total == NODES, "the page counts {total} nodes by state");
    // Every node counted by boot stage from the list alone: no request
    // per node for its timeline (a second for any that would come late).
    let by_stage = "return [...document.querySelectorAll('#by-stage b')].reduce((n, b) => n + Number(b.textContent), 0)";
    let staged = b.wait(
        "every node counted by boot stage",
        SIGN_IN,
        &format!("const n = (function() {{ {by_stage} }})(); return n === {NODES} ? n : null"),
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let requests = b.js(
        "const r = performance.getEntriesByType('resource').map(e => new URL(e.name).pathname);
         return [r.filter(p => p.startsWith('/api/v1/')).length,
                 r.filter(p => p.startsWith('/api/v1/nodes/') && p.endsWith('/boot')).length]",
        json!([]),
    )?;
    println!(
        "{test}: {staged} nodes counted by stage; API requests since sign-in: {}, of them per-node timelines: {}",
        requests[0], requests[1]
    );
    ensure!(
        requests[1] == 0 && requests[0].as_u64().is_some_and(|n| n < 20),
        "the page asked per node: {requests}"
    );
    ensure!(
        in_dom > 10 && in_dom < 200,
        "{in_dom} rows in the DOM: the list is not virtualised"
    );
    ensure!(
        drawn_ms > 0.0 && drawn_ms < 10_000.0,
        "sign-in to list drawn took {drawn_ms} ms"
    );
    // To the end of the list: the last row drawn.
    let last = format!("node{:04}", NODES - 1);
    let scroll_ms = b.js_async(
        "const [last, done] = arguments;
         const l = document.getElementById('list');
         const t = performance.now();
         l.scrollTop = l.scrollHeight;
         (function poll() {
           if (document.querySelector(`#list .row[data-node=\"${last}\"]:not([hidden])`))
             done(performance.now() - t);
           else requestAnimationFrame(poll);
         })();",
        json!([last]),
    )?;
    let scroll_ms = scroll_ms.as_f64().unwrap_or(-1.0);
    println!("{test}: scroll to the end to {last} drawn: {scroll_ms:.1} ms");
    ensure!(scroll_ms >= 0.0, "the last row was not drawn");

    // A burst of real events: every node's iPXE script fetched from the boot port.
    let http_port = serve.http_port();
    let url = |i: usize| {
        format!(
            "http://127.0.0.1:{http_port}/boot/{}.ipxe",
            mac(i).replace(':', "-")
        )
    };
    let (st, _) = http(
        Some(&ns),
        "127.0.0.1",
        http_port,
        "GET",
        &url(NODES - 1)[format!("http://127.0.0.1:{http_port}").len()..],
        &[],
        None,
    )?;
    ensure!(st == 200, "serve has no script for {last} yet ({st})");
    b.js(
        "const p = window.bootdPerf; p.frames.length = 0; p.events = 0; p.longTasks = 0; return 1",
        json!([]),
    )?;
    let config = dir.path().join("burst.curl");
    let lines: String = (0..NODES)
        .map(|i| format!("url = \"{}\"\noutput = \"/dev/null\"\n", url(i)))
        .collect();
    std::fs::write(&config, lines)?;
    let fired = Instant::now();
    let out = ns
        .command("curl")
        .args([
            "-sS",
            "--parallel",
            "--parallel-max",
            "16",
            "--max-time",
            "30",
        ])
        .arg("-K")
        .arg(&config)
        .output()?;
    ensure!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = fired.elapsed();
    let applied = b.wait(
        "every script stage on the page",
        Duration::from_secs(60),
        &format!(
            "const li = document.querySelector('#by-stage li[data-key=\"script\"] b');
             return li && Number(li.textContent) >= {NODES} ? window.bootdPerf.events : null"
        ),
    )?;
    let got = fired.elapsed();
    let perf = b.js("return window.bootdPerf", json!([]))?;
    let (n, mean, p95, max) = frames(&perf["frames"]);
    println!(
        "{test}: burst of {NODES} script fetches sent in {:.2}s, all {applied} events on the \
         page after {:.2}s; {n} frames drew them: mean {mean:.2} ms, p95 {p95:.2} ms, max \
         {max:.2} ms; long tasks (>50 ms): {}",
        sent.as_secs_f64(),
        got.as_secs_f64(),
        perf["longTasks"]
    );
    ensure!(
        n > 0 && (n as u64) < applied.as_u64().unwrap_or(0),
        "{n} frames for {applied} events: updates are not batched per frame"
    );
    ensure!(max < 200.0, "a frame took {max:.1} ms");
    println!("{}", b.screenshot("2000-nodes")?.display());
    drop(b);
    serve.stop()?;
    println!("{test}: passed; screenshots in {}", shots.display());
    Ok(())
}
