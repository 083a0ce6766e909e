//! Real TCG guests boot while the page follows them; a discovered machine is adopted
//! from the page; read-only and forged tokens.

use super::*;

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
