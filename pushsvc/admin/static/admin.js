// pushsvc inside view: dashboard, request timeline and debug console. No build step, no
// framework; under the page's CSP (no inline script or style attributes, no eval). Every value
// from the server goes into the page as text, never as HTML.
"use strict";

const MAX_CONSOLE = 500;
const state = {
  history: [], requests: [], selected: null, apps: new Set(),
  paused: false, consoleItems: [], held: [],
};

function $(id) { return document.getElementById(id); }

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store", credentials: "same-origin" });
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

function ms(v) {
  if (v === null || v === undefined) return "–";
  return v >= 100 ? `${v.toFixed(0)} ms` : v >= 1 ? `${v.toFixed(1)} ms` : `${v.toFixed(2)} ms`;
}

function num(v) {
  if (v === null || v === undefined) return "–";
  return Number.isInteger(v) ? v.toLocaleString() : v.toLocaleString(undefined, { maximumFractionDigits: 1 });
}

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString(undefined, { hour12: false }) +
    "." + String(Math.floor((t % 1) * 1000)).padStart(3, "0");
}

// -- views ------------------------------------------------------------------------------

function route() {
  const hash = location.hash || "#dashboard";
  const consoleView = hash === "#console";
  $("view-dashboard").hidden = consoleView;
  $("view-console").hidden = !consoleView;
  $("nav-dashboard").classList.toggle("active", !consoleView);
  $("nav-console").classList.toggle("active", consoleView);
  const m = /^#request=(\d+)$/.exec(hash);
  if (m) showTimeline(Number(m[1]));
}

// -- figures and chart ------------------------------------------------------------------

function showFigures(f) {
  if (!f) return;
  $("fig-connections").textContent = num(f.connections);
  $("fig-channels").textContent = num(f.channels);
  $("fig-deliveries").textContent = num(f.deliveries_per_s);
  $("fig-publishes").textContent = num(f.publishes_per_s);
  const hooks = Object.values(f.apps || {}).map(a => a.webhooks).filter(v => v !== null && v !== undefined);
  $("fig-webhooks").textContent = hooks.length ? num(hooks.reduce((a, b) => a + b, 0)) : "–";
  const body = $("apps-table").tBodies[0];
  body.replaceChildren();
  for (const [id, a] of Object.entries(f.apps || {})) {
    if (!state.apps.has(id)) {
      state.apps.add(id);
      const opt = el("option", "", id);
      opt.value = id;
      $("console-app").append(opt);
    }
    const tr = el("tr");
    tr.append(el("td", "mono", id), el("td", "n", num(a.connections)), el("td", "n", num(a.channels)),
      el("td", "n", num(a.deliveries_per_s)), el("td", "n", num(a.publishes_per_s)),
      el("td", "n", a.webhooks === null || a.webhooks === undefined ? "–" : num(a.webhooks)));
    body.append(tr);
  }
  if (!body.rows.length) emptyRow(body, 6, "No app has connections yet");
}

function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== w * ratio) { canvas.width = w * ratio; canvas.height = h * ratio; }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const pts = state.history.slice(-300);
  const pad = { l: 42, r: 42, t: 10, b: 20 };
  const iw = w - pad.l - pad.r, ih = h - pad.t - pad.b;
  // Round the scales up to a multiple of 4 so that the 4 grid lines fall on whole numbers.
  const nice = v => Math.max(4, Math.ceil(v / 4) * 4);
  const maxD = nice(Math.max(0, ...pts.map(p => p.deliveries_per_s)));
  const maxC = nice(Math.max(0, ...pts.map(p => p.connections)));
  g.strokeStyle = "#e3e7ef"; g.lineWidth = 1; g.font = "11px system-ui"; g.fillStyle = "#6b7385";
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + ih * i / 4;
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(pad.l + iw, y); g.stroke();
    g.textAlign = "right"; g.fillText(num(Math.round(maxD * (4 - i) / 4)), pad.l - 6, y + 4);
    g.textAlign = "left"; g.fillText(num(Math.round(maxC * (4 - i) / 4)), pad.l + iw + 6, y + 4);
  }
  g.textAlign = "center";
  g.fillText("-5 min", pad.l, h - 4); g.fillText("now", pad.l + iw, h - 4);
  const series = (key, max, color, fill) => {
    if (!pts.length) return;
    const x = i => pad.l + iw * (300 - pts.length + i) / 299;
    const y = v => pad.t + ih * (1 - v / max);
    g.beginPath();
    pts.forEach((p, i) => (i ? g.lineTo(x(i), y(p[key])) : g.moveTo(x(i), y(p[key]))));
    g.strokeStyle = color; g.lineWidth = 2; g.stroke();
    if (fill) {
      g.lineTo(x(pts.length - 1), pad.t + ih); g.lineTo(x(0), pad.t + ih); g.closePath();
      g.fillStyle = fill; g.fill();
    }
  };
  series("deliveries_per_s", maxD, "#3b5bdb", "rgba(59,91,219,0.10)");
  series("connections", maxC, "#2f9e44", null);
}

// -- requests ---------------------------------------------------------------------------

function emptyRow(body, span, text) {
  const tr = el("tr", "empty");
  const td = el("td", "", text);
  td.colSpan = span;
  tr.append(td);
  body.append(tr);
}

function statusClass(s) {
  return s === null ? "" : s >= 500 ? "status-bad" : s >= 400 ? "status-warn" : "status-ok";
}

function showRequests() {
  const text = $("req-filter").value.trim().toLowerCase();
  const hide = $("req-hide-static").checked;
  const body = $("requests-table").tBodies[0];
  body.replaceChildren();
  for (const r of state.requests) {
    if (hide && (r.endpoint === "static" || r.endpoint === "/healthz" || r.endpoint === "/metrics")) continue;
    const hay = `${r.method} ${r.path} ${r.app_id || ""} ${r.status || ""} ${r.endpoint}`.toLowerCase();
    if (text && !hay.includes(text)) continue;
    const tr = el("tr");
    tr.dataset.id = r.id;
    if (r.id === state.selected) tr.classList.add("selected");
    tr.append(el("td", "mono", r.id), el("td", "mono", clock(r.started_at)), el("td", "", r.method),
      el("td", "mono", r.path), el("td", "mono", r.app_id || "–"),
      el("td", `n ${statusClass(r.status)}`, r.status === null ? "…" : r.status),
      el("td", "n", ms(r.duration_ms)), el("td", "n", r.calls.length));
    tr.addEventListener("click", () => { location.hash = `#request=${r.id}`; });
    body.append(tr);
  }
  if (!body.rows.length) emptyRow(body, 8, "No request matches");
}

function showStats(stats) {
  for (const [id, rows] of [["endpoints-table", stats.endpoints || {}], ["calls-table", stats.calls || {}]]) {
    const body = $(id).tBodies[0];
    body.replaceChildren();
    for (const [name, s] of Object.entries(rows)) {
      const tr = el("tr");
      tr.append(el("td", "mono", name), el("td", "n", num(s.count)),
        el("td", `n ${s.errors ? "status-bad" : ""}`, num(s.errors)), el("td", "n", ms(s.mean_ms)),
        el("td", "n", ms(s.p50_ms)), el("td", "n", ms(s.p95_ms)), el("td", "n", ms(s.p99_ms)));
      body.append(tr);
    }
    if (!body.rows.length) emptyRow(body, 7, stats.recording === false ? "Recording is off" : "Nothing recorded yet");
  }
}

async function refresh() {
  try {
    const [requests, stats] = await Promise.all([getJSON("api/requests?limit=200"), getJSON("api/stats")]);
    state.requests = requests;
    showRequests();
    showStats(stats);
    if (!state.history.length && stats.history) { state.history = stats.history; drawChart(); }
  } catch (e) {
    // The recorder may be off (404): the figures still come through the stream.
  }
}

// -- timeline ---------------------------------------------------------------------------

const tip = () => $("tip");

function showTip(ev, pairs) {
  const t = tip();
  const dl = el("dl");
  for (const [k, v] of pairs) dl.append(el("dt", "", k), el("dd", "", typeof v === "object" ? JSON.stringify(v) : v));
  t.replaceChildren(dl);
  t.hidden = false;
  moveTip(ev);
}

function moveTip(ev) {
  const t = tip();
  t.style.left = `${Math.min(ev.clientX + 14, window.innerWidth - t.offsetWidth - 8)}px`;
  t.style.top = `${ev.clientY + 14}px`;
}

function hideTip() { tip().hidden = true; }

async function showTimeline(id) {
  let r;
  try { r = await getJSON(`api/requests/${id}`); } catch (e) { return; }
  state.selected = id;
  showRequests();
  $("timeline-panel").hidden = false;
  $("timeline-title").textContent = `#${r.id} ${r.method} ${r.path}`;
  $("timeline-meta").textContent =
    `${clock(r.started_at)} · status ${r.status === null ? "in progress" : r.status} · ${ms(r.duration_ms)} · ` +
    `${r.calls.length} call${r.calls.length === 1 ? "" : "s"}${r.app_id ? " · app " + r.app_id : ""}`;
  const box = $("timeline");
  box.replaceChildren();
  const total = Math.max(r.duration_ms || 0, ...r.calls.map(c => c.start_ms + c.duration_ms), 0.001);
  const axis = el("div", "tl-axis");
  for (let i = 0; i <= 4; i++) {
    const tick = el("span", i === 0 ? "tl-tick first" : i === 4 ? "tl-tick last" : "tl-tick", ms(total * i / 4));
    tick.style.left = `${i * 25}%`;
    axis.append(tick);
  }
  box.append(axis);
  const row = (label, kind, start, dur, pairs, error) => {
    const tr = el("div", "tl-row");
    const lab = el("div", "tl-label");
    lab.append(el("span", `kind ${kind}`, kind), document.createTextNode(" " + label));
    const track = el("div", "tl-track");
    const bar = el("div", `tl-bar ${kind}${error ? " error" : ""}`);
    const left = 100 * start / total, width = Math.max(0.4, 100 * dur / total);
    bar.style.left = `${left}%`;
    bar.style.width = `${width}%`;
    bar.dataset.kind = kind;
    bar.addEventListener("mouseenter", ev => showTip(ev, pairs));
    bar.addEventListener("mousemove", moveTip);
    bar.addEventListener("mouseleave", hideTip);
    // The duration after its bar; before it when the bar ends near the right edge, or inside it
    // when it also starts near the left one.
    const late = left + width > 85;
    const d = el("span", late && left <= 15 ? "tl-dur inside" : "tl-dur", ms(dur));
    if (!late) d.style.left = `calc(${left + width}% + 6px)`;
    else if (left > 15) d.style.right = `calc(${100 - left}% + 6px)`;
    else d.style.right = `${100 - left - width}%`;
    track.append(bar, d);
    tr.append(lab, track);
    box.append(tr);
  };
  row(r.path, "request", 0, r.duration_ms || 0,
    [["request", `${r.method} ${r.path}`], ["status", r.status], ["duration", ms(r.duration_ms)]], false);
  for (const c of r.calls) {
    const pairs = [["call", `${c.kind} · ${c.name}`], ["start", ms(c.start_ms)], ["duration", ms(c.duration_ms)]];
    for (const [k, v] of Object.entries(c.detail || {})) pairs.push([k, v]);
    row(c.name, c.kind, c.start_ms, c.duration_ms, pairs, c.error);
  }
  if (!r.calls.length) box.append(el("p", "hint", "This request made no recorded calls."));
}

// -- debug console ----------------------------------------------------------------------

function consoleVisible(item) {
  const app = $("console-app").value;
  const channel = $("console-channel").value.trim();
  if (app && item.app_id !== app) return false;
  if (channel && !(item.channel || "").includes(channel)) return false;
  return true;
}

function consoleRow(item) {
  const tr = el("tr");
  const details = [];
  if (item.data !== undefined) details.push(item.data);
  if (item.socket_id) details.push(`socket ${item.socket_id}`);
  if (item.user_id) details.push(`user ${item.user_id}`);
  const badge = el("span", `badge ${item.kind}`, item.kind.replace("_", " "));
  const type = el("td");
  type.append(badge);
  tr.append(el("td", "mono", clock(item.at)), type, el("td", "mono", item.app_id),
    el("td", "mono", item.channel || "–"), el("td", "mono", item.event || "–"),
    el("td", "mono", details.join(" · ")));
  return tr;
}

function showConsole() {
  const body = $("console-table").tBodies[0];
  body.replaceChildren();
  for (const item of state.consoleItems) if (consoleVisible(item)) body.prepend(consoleRow(item));
  if (!body.rows.length) emptyRow(body, 6, "Waiting for events…");
}

function addConsole(item) {
  if (state.paused) {
    state.held.push(item);
    if (state.held.length > MAX_CONSOLE) state.held.shift();
    return;
  }
  state.consoleItems.push(item);
  if (state.consoleItems.length > MAX_CONSOLE) state.consoleItems.shift();
  if (!consoleVisible(item)) return;
  const body = $("console-table").tBodies[0];
  if (body.rows.length === 1 && body.rows[0].classList.contains("empty")) body.replaceChildren();
  body.prepend(consoleRow(item));
  while (body.rows.length > MAX_CONSOLE) body.deleteRow(-1);
}

function togglePause() {
  state.paused = !state.paused;
  const b = $("console-pause");
  b.setAttribute("aria-pressed", String(state.paused));
  b.textContent = state.paused ? `Resume` : "Pause";
  $("live").dataset.state = state.paused ? "paused" : "live";
  $("live").textContent = state.paused ? "console paused" : "live";
  if (!state.paused) {
    const held = state.held;
    state.held = [];
    for (const item of held) addConsole(item);
  }
}

// -- live stream ------------------------------------------------------------------------

function connect() {
  const source = new EventSource("api/stream");
  source.addEventListener("open", () => {
    if (!state.paused) { $("live").dataset.state = "live"; $("live").textContent = "live"; }
  });
  source.addEventListener("error", () => {
    $("live").dataset.state = "connecting"; $("live").textContent = "reconnecting";
  });
  source.addEventListener("figures", ev => {
    const f = JSON.parse(ev.data);
    state.history.push(f);
    if (state.history.length > 300) state.history.shift();
    showFigures(f);
    drawChart();
  });
  source.addEventListener("console", ev => addConsole(JSON.parse(ev.data)));
}

function start() {
  window.addEventListener("hashchange", route);
  window.addEventListener("resize", drawChart);
  $("req-filter").addEventListener("input", showRequests);
  $("req-hide-static").addEventListener("change", showRequests);
  $("timeline-close").addEventListener("click", () => {
    $("timeline-panel").hidden = true; state.selected = null; location.hash = "#dashboard";
  });
  $("console-pause").addEventListener("click", togglePause);
  $("console-clear").addEventListener("click", () => { state.consoleItems = []; state.held = []; showConsole(); });
  $("console-app").addEventListener("change", showConsole);
  $("console-channel").addEventListener("input", showConsole);
  showConsole();
  route();
  connect();
  refresh();
  setInterval(refresh, 2000);
}

start();
