//! 2000 nodes added through the API and a burst of 2000 real stage events: the
//! page's drawing costs, measured and printed.

use super::*;

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
