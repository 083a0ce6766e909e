// @ts-check
// bootd's dashboard: reads /api/v1 with a bearer token and follows
// /api/v1/events. No framework, no build step; every string from the API
// reaches the page through textContent, never as HTML.
//
// Where each node's boot got to comes with the list (`last_stage`); a
// node's whole timeline is fetched only when it is opened, then follows
// the event stream.
//
// Rendering: the node list is virtualised (only the rows in view exist in
// the DOM, reused as it scrolls) and every change (an event, a reply) only
// marks what is dirty; one requestAnimationFrame callback draws it. A burst
// of thousands of events costs one frame of drawing, not thousands.
"use strict";

/**
 * @typedef {{stage: string, at_ms: number, detail: string}} Stage
 * @typedef {{stage: string, at_ms: number, boot_started_ms: number}} LastStage
 * @typedef {{name: string, mac: string, image: string, image_version: number,
 *   state: string, ip: string|null, pinned_server: string|null, owner: string|null,
 *   last_stage: LastStage|null}} ApiNode
 * @typedef {{n: ApiNode, stages: Stage[], full: boolean, started: number, rd: number,
 *   wr: number, ioAt: number, key: string}} NodeRow
 *   `stages`: this boot's stages known so far (from the list only the newest;
 *   `full` once the node's timeline was fetched).
 * @typedef {{node: string, mac: string, stage: string, at_ms: number,
 *   boot_started_ms: number, new_boot: boolean, detail: string}} StageEvent
 * @typedef {{node: string, read_bytes_per_s: number, written_bytes_per_s: number}} IoNode
 */

const ROW = 30; // px; matches --row in style.css
const OVERSCAN = 8;
const SLOW_POLL_MS = 10000; // df, images, servers, discovered

/** @param {string} id */
function $(id) {
  const e = document.getElementById(id);
  if (!e) throw new Error(`#${id} missing`);
  return e;
}

/**
 * @param {string} tag
 * @param {string} [cls]
 * @param {string} [text]
 */
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** @param {number} b */
function bytes(b) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) {
    b /= 1024;
    i++;
  }
  return `${b >= 100 || i === 0 ? b.toFixed(0) : b.toFixed(1)} ${u[i]}`;
}

/**
 * `iscsi-login-3` → `iscsi-login`: the kind of a stage, for colours and counts.
 * @param {string} s
 */
function kind(s) {
  return s.replace(/-\d+$/, "");
}

/** Measurements the end-to-end test reads (and anyone can, in the console). */
const perf = {
  /** sign-in submitted (performance.now()) */ signinAt: 0,
  /** ms from sign-in to the node list drawn with every node counted */ listDrawnMs: -1,
  /** ms each frame spent drawing */ frames: /** @type {number[]} */ ([]),
  events: 0,
  longTasks: 0,
  nodes: 0,
  rowsInDom: 0,
};
// @ts-ignore: exposed for tests and the curious
window.bootdPerf = perf;
try {
  new PerformanceObserver((l) => {
    perf.longTasks += l.getEntries().length;
  }).observe({ type: "longtask", buffered: true });
} catch (_) {
  /* longtask not supported: the count stays 0 */
}

const state = {
  token: "",
  readOnly: true,
  /** @type {Map<string, NodeRow>} */ nodes: new Map(),
  /** @type {NodeRow[]} */ shown: [],
  filter: "",
  /** @type {any[]} */ images: [],
  /** @type {any[]} */ templates: [],
  /** @type {any[]} */ servers: [],
  /** @type {any[]} */ discovered: [],
  /** @type {any} */ df: null,
  ioTotal: [0, 0],
  dirty: { list: false, rows: false, summary: false, side: false, detail: false },
  /** @type {string|null} */ detail: null,
  /** @type {AbortController|null} */ stream: null,
  frame: 0,
  /** the node list has been read once since sign-in */ loaded: false,
  /** the slow poll's interval (one, whatever the sign-ins) */ poll: 0,
};

class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} code
   * @param {string} message
   */
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * One API call with the token; JSON in and out; errors as ApiError.
 * @param {string} method
 * @param {string} path under /api/v1
 * @param {any} [body]
 */
async function api(method, path, body) {
  /** @type {Record<string,string>} */
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(`/api/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const text = await r.text();
  /** @type {any} */
  let v = null;
  try {
    v = text ? JSON.parse(text) : null;
  } catch (_) {
    v = null;
  }
  if (!r.ok) {
    const e = v && v.error ? v.error : { code: "http_" + r.status, message: text.slice(0, 200) };
    throw new ApiError(r.status, e.code, e.message);
  }
  return v;
}

// ---- drawing ---------------------------------------------------------------

/**
 * Marks parts dirty; one animation frame draws them all.
 * @param {...("list"|"rows"|"summary"|"side"|"detail")} parts
 */
function dirty(...parts) {
  for (const p of parts) state.dirty[p] = true;
  if (!state.frame) state.frame = requestAnimationFrame(draw);
}

function draw() {
  state.frame = 0;
  const t0 = performance.now();
  const d = state.dirty;
  if (d.list) {
    refilter();
    d.rows = true;
    d.summary = true;
  }
  if (d.summary) drawSummary();
  if (d.side) drawSide();
  if (d.rows) drawRows();
  if (d.detail) drawDetail();
  state.dirty = { list: false, rows: false, summary: false, side: false, detail: false };
  const spent = performance.now() - t0;
  if (perf.frames.length < 10000) perf.frames.push(spent);
  if (perf.listDrawnMs < 0 && perf.signinAt && state.loaded && !$("app").hidden) {
    perf.listDrawnMs = performance.now() - perf.signinAt;
  }
}

function refilter() {
  const f = state.filter.toLowerCase();
  const all = [...state.nodes.values()];
  all.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  state.shown = f
    ? all.filter((r) => {
        const s = r.stages.length ? r.stages[r.stages.length - 1].stage : "";
        return `${r.n.name} ${r.n.mac} ${r.n.image} ${r.n.state} ${s}`.toLowerCase().includes(f);
      })
    : all;
  $("spacer").style.height = `${state.shown.length * ROW}px`;
  $("node-count").textContent = f
    ? `${state.shown.length} of ${state.nodes.size}`
    : `${state.nodes.size}`;
}

/**
 * @param {HTMLElement} ul
 * @param {Map<string, number>} counts
 */
function drawCounts(ul, counts) {
  const items = [...counts.entries()].sort((a, b) => b[1] - a[1]);
  ul.replaceChildren(
    ...items.map(([k, n]) => {
      const li = el("li");
      li.dataset.key = k;
      li.append(el("span", `stage s-${k}`, k), el("b", "", String(n)));
      return li;
    }),
  );
}

function drawSummary() {
  /** @type {Map<string, number>} */
  const byState = new Map();
  /** @type {Map<string, number>} */
  const byStage = new Map();
  for (const r of state.nodes.values()) {
    byState.set(r.n.state, (byState.get(r.n.state) || 0) + 1);
    const k = r.stages.length ? kind(r.stages[r.stages.length - 1].stage) : "never booted";
    byStage.set(k, (byStage.get(k) || 0) + 1);
  }
  drawCounts($("by-state"), byState);
  drawCounts($("by-stage"), byStage);
  const [rd, wr] = state.ioTotal;
  $("io-total").textContent = `↓ ${bytes(rd)}/s  ↑ ${bytes(wr)}/s`;
  let busy = 0;
  const now = Date.now();
  for (const r of state.nodes.values()) if (now - r.ioAt < 3000 && r.rd + r.wr > 0) busy++;
  $("io-note").textContent = `${busy} node${busy === 1 ? "" : "s"} moving bytes (iSCSI)`;
}

function drawSide() {
  const df = state.df;
  if (df) {
    $("df-saved").textContent = `${bytes(df.saved_bytes)} saved`;
    $("df-note").textContent =
      `${df.saving_percent}% against full copies · ${bytes(df.physical_bytes)} on disk for ` +
      `${bytes(df.logical_bytes)} of disks · ${bytes(df.headroom_bytes)} headroom`;
  }
  $("images").replaceChildren(
    ...state.images.map((i) => {
      const tr = el("tr");
      tr.append(
        el("td", "", i.name),
        el("td", "", `v${i.version}${i.latest ? " (latest)" : ""}`),
        el("td", "", String(i.nodes ?? "")),
        el("td", "", bytes(i.bytes)),
        el("td", "", bytes(i.allocated_bytes)),
      );
      return tr;
    }),
  );
  $("servers").replaceChildren(
    ...state.servers.map((s) => {
      const tr = el("tr");
      tr.append(
        el("td", "", s.id),
        el("td", "", s.iscsi),
        el("td", "", s.live ? "live" : `dead (${(s.heartbeat_age_ms / 1000).toFixed(0)} s)`),
        el("td", "", String(s.nodes_owned)),
        el("td", "", String(s.sessions)),
        el("td", "", bytes(s.bytes_served)),
      );
      return tr;
    }),
  );
  $("disc-count").textContent = String(state.discovered.length);
  $("discovered").replaceChildren(
    ...state.discovered.map((d) => {
      const tr = el("tr");
      tr.dataset.mac = d.mac;
      const b = /** @type {HTMLButtonElement} */ (el("button", "adopt", "Adopt…"));
      b.type = "button";
      b.disabled = state.readOnly;
      b.addEventListener("click", () => adopt(d.mac));
      const td = el("td");
      td.append(b);
      tr.append(
        el("td", "mac", d.mac),
        el("td", "", d.ipxe ? "iPXE" : "firmware"),
        el("td", "", d.vendor_class || "–"),
        el("td", "", new Date(d.last_seen * 1000).toLocaleTimeString()),
        el("td", "", String(d.requests)),
        td,
      );
      return tr;
    }),
  );
}

/**
 * Row elements in the DOM, reused as the list scrolls.
 * @type {HTMLElement[]}
 */
const pool = [];

/** @param {HTMLElement} div */
function rowCells(div) {
  return /** @type {HTMLElement[]} */ ([...div.children]);
}

function newRow() {
  const div = el("div", "row");
  for (let i = 0; i < 7; i++) div.append(el("span"));
  const actions = el("span", "actions");
  for (const [label, what] of [
    ["Reset", "reset"],
    ["Move", "move"],
  ]) {
    const b = /** @type {HTMLButtonElement} */ (el("button", "", label));
    b.type = "button";
    b.dataset.action = what;
    actions.append(b);
  }
  div.append(actions);
  return div;
}

/**
 * The timeline of this boot: one tick per stage along its first 120 s
 * (or the boot's length if longer).
 * @param {HTMLElement} cell
 * @param {NodeRow} r
 */
function drawTimeline(cell, r) {
  const st = r.stages;
  if (!st.length) {
    cell.textContent = "–";
    return;
  }
  const t0 = r.started || st[0].at_ms;
  const span = Math.max(120000, st[st.length - 1].at_ms - t0);
  const bar = el("div", "tl");
  for (const s of st) {
    const i = el("i", `s-${kind(s.stage)}`);
    i.style.left = `${(((s.at_ms - t0) / span) * 100).toFixed(2)}%`;
    i.title = `${s.stage} +${((s.at_ms - t0) / 1000).toFixed(2)} s ${s.detail}`;
    bar.append(i);
  }
  bar.append(el("em", "", `+${((st[st.length - 1].at_ms - t0) / 1000).toFixed(1)} s`));
  cell.replaceChildren(bar);
}

function drawRows() {
  const list = $("list");
  const first = Math.max(0, Math.floor(list.scrollTop / ROW) - OVERSCAN);
  const count = Math.ceil(list.clientHeight / ROW) + 2 * OVERSCAN;
  const last = Math.min(state.shown.length, first + count);
  while (pool.length < last - first) {
    const r = newRow();
    pool.push(r);
    list.append(r);
  }
  for (let i = 0; i < pool.length; i++) {
    const div = pool[i];
    const r = state.shown[first + i];
    if (!r) {
      div.hidden = true;
      continue;
    }
    div.hidden = false;
    div.style.top = `${(first + i) * ROW}px`;
    if (div.dataset.node !== r.n.name) div.dataset.node = r.n.name;
    const c = rowCells(div);
    const last = r.stages.length ? r.stages[r.stages.length - 1] : null;
    c[0].textContent = r.n.name;
    c[1].textContent = r.n.mac;
    c[2].textContent = `${r.n.image} v${r.n.image_version}`;
    c[3].textContent = r.n.state;
    c[4].textContent = last ? last.stage : "never booted";
    c[4].className = last ? `stage s-${kind(last.stage)}` : "";
    c[4].dataset.stage = last ? last.stage : "";
    drawTimeline(c[5], r);
    const fresh = Date.now() - r.ioAt < 3000;
    c[6].textContent = fresh && r.rd + r.wr > 0 ? `↓${bytes(r.rd)}/s ↑${bytes(r.wr)}/s` : "";
    for (const b of c[7].querySelectorAll("button")) b.disabled = state.readOnly;
  }
  perf.rowsInDom = list.querySelectorAll(".row:not([hidden])").length;
}

function drawDetail() {
  const name = state.detail;
  const sec = $("detail");
  const r = name ? state.nodes.get(name) : undefined;
  if (!r) {
    sec.hidden = true;
    return;
  }
  sec.hidden = false;
  $("detail-title").textContent = `${r.n.name} (${r.n.mac}) · ${r.n.image} v${r.n.image_version}`;
  const st = r.stages;
  const t0 = r.started || (st[0] ? st[0].at_ms : 0);
  $("detail-stages").replaceChildren(
    ...st.map((s) => {
      const li = el("li");
      li.append(
        el("span", "t", `+${((s.at_ms - t0) / 1000).toFixed(2)} s`),
        el("span", `stage s-${kind(s.stage)}`, s.stage),
        el("span", "", ` ${s.detail}`),
      );
      return li;
    }),
  );
}

// ---- data --------------------------------------------------------------------

/**
 * The newest stage a list entry carries, as this page's partial timeline.
 * @param {ApiNode} n
 * @returns {Stage[]}
 */
function listedStages(n) {
  const l = n.last_stage;
  return l ? [{ stage: l.stage, at_ms: l.at_ms, detail: "" }] : [];
}

/**
 * The whole timeline of the node opened (one request, not one per node).
 * @param {string} name
 */
function fetchTimeline(name) {
  const r = state.nodes.get(name);
  if (!r || r.full) return;
  api("GET", `/nodes/${encodeURIComponent(name)}/boot`)
    .then((v) => {
      const cur = state.nodes.get(name);
      if (!cur) return;
      /** @type {Stage[]} */
      const st = v.stages || [];
      const started = st.length ? st[0].at_ms : 0;
      // Events of the same boot that came during the fetch and are newer
      // than its answer stay; a newer boot seen live wins outright.
      if (cur.stages.length && cur.started > started) return;
      const end = st.length ? st[st.length - 1].at_ms : 0;
      const seen = new Set(st.map((s) => s.stage));
      const newer =
        cur.started === started
          ? cur.stages.filter((s) => s.at_ms >= end && !seen.has(s.stage))
          : [];
      cur.stages = [...st, ...newer];
      cur.started = started;
      cur.full = true;
      dirty("rows", "summary");
      if (state.detail === name) dirty("detail");
    })
    .catch(() => {});
}

async function loadNodes() {
  /** @type {ApiNode[]} */
  const list = await api("GET", "/nodes");
  /** @type {Map<string, NodeRow>} */
  const next = new Map();
  for (const n of list) {
    const old = state.nodes.get(n.name);
    const l = n.last_stage;
    // What this page already has of the boot the list names is kept if it
    // reaches as far (live events may be ahead of the list, never behind).
    const oldLast = old && old.stages.length ? old.stages[old.stages.length - 1] : null;
    const keep =
      old &&
      (l
        ? old.started === l.boot_started_ms && oldLast !== null && oldLast.at_ms >= l.at_ms
        : !old.stages.length);
    next.set(n.name, {
      n,
      stages: keep && old ? old.stages : listedStages(n),
      full: keep && old ? old.full : false,
      started: keep && old ? old.started : l ? l.boot_started_ms : 0,
      rd: old ? old.rd : 0,
      wr: old ? old.wr : 0,
      ioAt: old ? old.ioAt : 0,
      key: n.name,
    });
  }
  state.nodes = next;
  perf.nodes = next.size;
  state.loaded = true;
  dirty("list");
  if (state.detail) {
    fetchTimeline(state.detail);
    dirty("detail");
  }
}

async function loadSide() {
  const [df, images, servers, discovered, templates] = await Promise.all([
    api("GET", "/df"),
    api("GET", "/images"),
    api("GET", "/servers"),
    api("GET", "/discovered"),
    api("GET", "/templates"),
  ]);
  Object.assign(state, { df, images, servers, discovered, templates });
  dirty("side");
}

let nodesReload = 0;
/** A stage of a node not listed yet (just added or adopted): reload, once. */
function reloadNodesSoon() {
  if (nodesReload) return;
  nodesReload = window.setTimeout(() => {
    nodesReload = 0;
    loadNodes().catch(() => {});
    loadSide().catch(() => {});
  }, 300);
}

/** @param {StageEvent} e */
function onStage(e) {
  perf.events++;
  const r = state.nodes.get(e.node);
  if (!r) {
    reloadNodesSoon();
    return;
  }
  const s = { stage: e.stage, at_ms: e.at_ms, detail: e.detail };
  if (e.new_boot || r.started !== e.boot_started_ms) {
    // A new boot starts a new timeline (the earlier stages are gone); a
    // boot this page knew only the newest stage of is known from here on.
    r.stages = e.new_boot ? [s] : [...r.stages, s];
    r.full = e.new_boot;
  } else {
    r.stages.push(s);
  }
  r.started = e.boot_started_ms;
  dirty("rows", "summary");
  if (state.detail === e.node) dirty("detail");
}

/** @param {{nodes: IoNode[]}} e */
function onIo(e) {
  perf.events++;
  const now = Date.now();
  let rd = 0;
  let wr = 0;
  for (const n of e.nodes || []) {
    const r = state.nodes.get(n.node);
    rd += n.read_bytes_per_s;
    wr += n.written_bytes_per_s;
    if (!r) continue;
    r.rd = n.read_bytes_per_s;
    r.wr = n.written_bytes_per_s;
    r.ioAt = now;
  }
  state.ioTotal = [rd, wr];
  dirty("rows", "summary");
}

/** @param {boolean} on */
function connected(on) {
  const c = $("conn");
  c.textContent = on ? "live" : "reconnecting";
  c.className = `conn ${on ? "on" : "off"}`;
}

/** Follows /api/v1/events with fetch() (EventSource cannot send the
 * Authorization header, and a token in the URL would reach logs). */
async function follow() {
  let delay = 500;
  while (state.token) {
    const ctl = new AbortController();
    state.stream = ctl;
    try {
      const r = await fetch("/api/v1/events", {
        headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" },
        signal: ctl.signal,
        cache: "no-store",
      });
      if (r.status === 401) {
        signOut("the token was revoked or is unknown");
        return;
      }
      if (!r.ok || !r.body) throw new Error(`events: ${r.status}`);
      connected(true);
      delay = 500;
      // Missed while away: take the list again.
      loadNodes().catch(() => {});
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          dispatch(buf.slice(0, end));
          buf = buf.slice(end + 2);
        }
        if (buf.length > 1 << 20) buf = ""; // never grow without bound
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    connected(false);
    await new Promise((ok) => setTimeout(ok, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

/**
 * One server-sent event block.
 * @param {string} block
 */
function dispatch(block) {
  let ev = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) ev = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length) return;
  let v;
  try {
    v = JSON.parse(data.join("\n"));
  } catch (_) {
    return;
  }
  if (ev === "stage") onStage(v);
  else if (ev === "io") onIo(v);
  else if (ev === "lagged") {
    // Stages were missed: the list again (it has each node's newest stage),
    // and the open node's whole timeline.
    for (const r of state.nodes.values()) r.full = false;
    loadNodes().catch(() => {});
  }
}

// ---- actions ---------------------------------------------------------------

/**
 * The confirmation dialog; resolves to the choice (or "" without one) on
 * OK, null on Cancel. `act` runs on OK; its error stays in the dialog.
 * @param {string} title
 * @param {string} text
 * @param {{label: string, options: [string, string][]}|null} choice
 * @param {(choice: string) => Promise<void>} act
 */
function confirmThen(title, text, choice, act) {
  const dlg = /** @type {HTMLDialogElement} */ ($("confirm"));
  const sel = /** @type {HTMLSelectElement} */ ($("confirm-choice"));
  const ok = /** @type {HTMLButtonElement} */ ($("confirm-ok"));
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-error").textContent = "";
  $("confirm-choice-label").hidden = !choice;
  if (choice) {
    $("confirm-choice-name").textContent = choice.label;
    sel.replaceChildren(
      ...choice.options.map(([v, label]) => {
        const o = /** @type {HTMLOptionElement} */ (el("option", "", label));
        o.value = v;
        return o;
      }),
    );
  }
  ok.disabled = false;
  const close = () => {
    ok.onclick = null;
    $("confirm-cancel").onclick = null;
    dlg.close();
  };
  $("confirm-cancel").onclick = close;
  ok.onclick = async () => {
    ok.disabled = true;
    try {
      await act(choice ? sel.value : "");
      close();
    } catch (e) {
      $("confirm-error").textContent = e instanceof Error ? e.message : String(e);
      ok.disabled = false;
    }
  };
  dlg.showModal();
}

/** @param {string} msg */
function toast(msg) {
  const t = $("toast");
  t.textContent = msg;
  t.hidden = false;
  setTimeout(() => {
    t.hidden = true;
  }, 4000);
}

/** @param {string} name */
function reset(name) {
  confirmThen(
    `Reset ${name}?`,
    `Every write ${name} made to its disk is discarded; it boots clean from its image next time.`,
    null,
    async () => {
      await api("POST", `/nodes/${encodeURIComponent(name)}/reset`, {});
      toast(`${name} reset`);
      await loadNodes();
    },
  );
}

/** @param {string} name */
function move(name) {
  /** @type {[string, string][]} */
  const options = [["latest", "the newest version of its image (discards its writes)"]];
  for (const s of state.servers) options.push([`server:${s.id}`, `pin to server ${s.id}`]);
  options.push(["server:none", "unpin (any server)"]);
  confirmThen(`Move ${name}?`, `Where should ${name} go?`, { label: "to", options }, async (c) => {
    const body = c === "latest" ? { latest: true } : { server: c.slice("server:".length) };
    await api("POST", `/nodes/${encodeURIComponent(name)}/move`, body);
    toast(`${name} moved`);
    await loadNodes();
  });
}

/** @param {string} mac */
function adopt(mac) {
  /** @type {[string, string][]} */
  const options = [];
  for (const i of state.images) if (i.latest) options.push([`image:${i.name}`, `image ${i.name}`]);
  for (const t of state.templates) options.push([`template:${t.name}`, `template ${t.name}`]);
  confirmThen(
    `Adopt ${mac}?`,
    `${mac} becomes a node and boots from the image or template chosen. Anyone on the boot network can make a MAC appear here: adopt only machines you know.`,
    { label: "from", options },
    async (c) => {
      const [k, v] = [c.slice(0, c.indexOf(":")), c.slice(c.indexOf(":") + 1)];
      const added = await api("POST", "/discovered/adopt", { macs: [mac], [k]: v });
      toast(`adopted as ${added.map((/** @type {any} */ n) => n.name).join(", ")}`);
      await Promise.all([loadNodes(), loadSide()]);
    },
  );
}

// ---- sign-in -------------------------------------------------------------------

/** @param {string} why */
function signOut(why) {
  state.token = "";
  sessionStorage.removeItem("bootd-token");
  if (state.stream) state.stream.abort();
  $("app").hidden = true;
  $("signout").hidden = true;
  $("who").textContent = "";
  $("signin").hidden = false;
  $("signin-error").textContent = why;
  connected(false);
}

/** @param {string} token */
async function signIn(token) {
  perf.signinAt = performance.now();
  perf.listDrawnMs = -1;
  state.token = token.trim();
  state.loaded = false;
  $("signin-error").textContent = "";
  try {
    await Promise.all([loadNodes(), loadSide()]);
  } catch (e) {
    const why =
      e instanceof ApiError && e.status === 401
        ? "token refused: unknown or revoked"
        : `cannot sign in: ${e instanceof Error ? e.message : e}`;
    signOut(why);
    return;
  }
  sessionStorage.setItem("bootd-token", state.token);
  // What the token may do, as the API says (GET /token).
  /** @type {{name: string, read_only: boolean}} */
  let me;
  try {
    me = await api("GET", "/token");
  } catch (e) {
    signOut(`cannot sign in: ${e instanceof Error ? e.message : e}`);
    return;
  }
  state.readOnly = me.read_only !== false;
  document.body.classList.toggle("readonly", state.readOnly);
  $("who").textContent = `${me.name} (${state.readOnly ? "read-only" : "full"} token)`;
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  dirty("list", "side");
  follow();
  if (!state.poll) {
    state.poll = window.setInterval(() => {
      if (state.token) loadSide().catch(() => {});
    }, SLOW_POLL_MS);
  }
}

function start() {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn(/** @type {HTMLInputElement} */ ($("token")).value);
  });
  $("signout").addEventListener("click", () => signOut(""));
  $("list").addEventListener("scroll", () => dirty("rows"), { passive: true });
  window.addEventListener("resize", () => dirty("rows"));
  $("filter").addEventListener("input", (e) => {
    state.filter = /** @type {HTMLInputElement} */ (e.target).value;
    $("list").scrollTop = 0;
    dirty("list");
  });
  // One listener for every row's buttons and clicks.
  $("list").addEventListener("click", (e) => {
    const t = /** @type {HTMLElement} */ (e.target);
    const row = /** @type {HTMLElement|null} */ (t.closest(".row"));
    const name = row && row.dataset.node;
    if (!name) return;
    const action = t.dataset.action;
    if (action === "reset") reset(name);
    else if (action === "move") move(name);
    else {
      state.detail = name;
      fetchTimeline(name);
      dirty("detail");
    }
  });
  $("detail-close").addEventListener("click", () => {
    state.detail = null;
    dirty("detail");
  });
  // `/#token=...`: a bookmarkable view. Fragments never reach the server;
  // the token leaves the address bar at once and lives in this tab only.
  const m = /^#token=([^&]+)/.exec(location.hash);
  if (m) history.replaceState(null, "", location.pathname);
  const token = m ? decodeURIComponent(m[1]) : sessionStorage.getItem("bootd-token");
  if (token) signIn(token);
  else signOut("");
}

start();
