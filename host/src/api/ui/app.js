// zerostep UI: plain DOM, hash routes, data from /api/v1. Every value from the API is set as
// text (never as HTML): span names and attributes come from traced applications.
"use strict";

const view = document.getElementById("view");
const rangeSel = document.getElementById("range");

function h(tag, attrs, ...children) {
  const svg = ["svg", "g", "circle", "line", "path", "text", "title", "marker", "defs"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// The session from /login (host/src/api/auth.rs), kept per origin; without one or when it is
// refused, log in again (unless the agent opens reads on loopback).
async function api(path) {
  const session = localStorage.getItem("zerostep_session");
  const r = await fetch(path, session ? { headers: { Authorization: "Bearer " + session } } : {});
  if (r.status === 401) {
    location.assign("/login");
    throw new Error("not logged in");
  }
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function range() {
  const to = Date.now();
  return { from: to - Number(rangeSel.value), to };
}

function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== undefined && v !== null) p.set(k, v);
  return p.toString();
}

const fmtMs = (ms) => (ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : ms >= 10 ? ms.toFixed(0) + " ms" : ms.toFixed(2) + " ms");
const fmtPct = (x) => (x * 100).toFixed(x > 0 && x < 0.01 ? 2 : 1) + " %";
const fmtTime = (ms) => new Date(ms).toLocaleString();

function table(columns, rows, onClick) {
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : "" }, c.title)))),
    h("tbody", {}, rows.map((r) => h("tr", { class: onClick ? "click" : "", onclick: onClick ? () => onClick(r) : undefined },
      columns.map((c) => h("td", { class: c.num ? "num" : "" }, c.value(r)))))));
}

const statCols = [
  { title: "Rate /min", num: true, value: (r) => r.rate_per_min.toFixed(1) },
  { title: "Count", num: true, value: (r) => r.count },
  { title: "Errors", num: true, value: (r) => h("span", { class: r.errors ? "err" : "" }, `${r.errors} (${fmtPct(r.error_rate)})`) },
  { title: "p50", num: true, value: (r) => fmtMs(r.p50_ms) },
  { title: "p95", num: true, value: (r) => fmtMs(r.p95_ms) },
  { title: "p99", num: true, value: (r) => fmtMs(r.p99_ms) },
];

// Service map: services on a circle, edges as arrows; red when errors.
async function showMap() {
  const q = qs(range());
  const [services, edges] = await Promise.all([api("/api/v1/services?" + q), api("/api/v1/edges?" + q)]);
  const W = 1000, H = 560, R = Math.min(W, H) / 2 - 70;
  const pos = new Map();
  services.forEach((s, i) => {
    const a = (2 * Math.PI * i) / Math.max(services.length, 1) - Math.PI / 2;
    pos.set(s.name, { x: W / 2 + R * Math.cos(a), y: H / 2 + R * Math.sin(a) });
  });
  const svg = h("svg", { class: "map", viewBox: `0 0 ${W} ${H}` },
    h("defs", {}, h("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 30, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
      h("path", { d: "M0,0 L10,5 L0,10 z", fill: "#64748b" }))));
  for (const e of edges) {
    const a = pos.get(e.caller), b = pos.get(e.callee);
    if (!a || !b) continue;
    svg.append(h("g", {},
      h("line", { class: "edge" + (e.errors ? " failing" : ""), x1: a.x, y1: a.y, x2: b.x, y2: b.y,
        "stroke-width": 1 + Math.min(6, Math.log10(1 + e.count)), "marker-end": "url(#arrow)" }),
      h("title", {}, `${e.caller} → ${e.callee}: ${e.count} calls, ${e.errors} errors, p95 ${fmtMs(e.p95_ms)}`),
      h("text", { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 - 4, class: "muted" }, `${e.rate_per_min.toFixed(1)}/min`)));
  }
  for (const s of services) {
    const p = pos.get(s.name);
    svg.append(h("g", { class: `node ${s.kind}` + (s.errors ? " failing" : ""), transform: `translate(${p.x},${p.y})`,
      style: "cursor:pointer", onclick: () => (location.hash = "#/endpoints?service=" + encodeURIComponent(s.name)) },
      h("circle", { r: 22 }),
      h("title", {}, `${s.name} (${s.technology || s.kind}): ${s.rate_per_min.toFixed(1)}/min, errors ${fmtPct(s.error_rate)}, p95 ${fmtMs(s.p95_ms)}`),
      h("text", { y: 38 }, s.name),
      h("text", { y: 52, class: "muted" }, s.count ? `${s.rate_per_min.toFixed(1)}/min · ${fmtMs(s.p95_ms)}` : "")));
  }
  view.replaceChildren(h("h2", {}, "Service map"), services.length ? svg : h("p", { class: "muted" }, "No services in this range yet."),
    h("h3", {}, "Services"),
    table([{ title: "Service", value: (r) => r.name }, { title: "Kind", value: (r) => r.technology || r.kind },
      { title: "PIDs", value: (r) => r.pids.join(" ") }, ...statCols], services,
      (r) => (location.hash = "#/traces?service=" + encodeURIComponent(r.name))));
}

async function showEndpoints(params) {
  const rows = await api("/api/v1/endpoints?" + qs({ ...range(), service: params.get("service") || "" }));
  view.replaceChildren(h("h2", {}, "Endpoints" + (params.get("service") ? " of " + params.get("service") : "")),
    rows.length ? table([{ title: "Service", value: (r) => r.service }, { title: "Endpoint", value: (r) => r.endpoint }, ...statCols], rows,
      (r) => (location.hash = "#/traces?" + qs({ service: r.service, endpoint: r.endpoint })))
      : h("p", { class: "muted" }, "No requests in this range."));
}

async function showTraces(params) {
  const fields = ["service", "endpoint", "status", "min_duration_ms", "limit"];
  const form = h("form", { class: "filters", onsubmit: (ev) => {
    ev.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    location.hash = "#/traces?" + qs(data);
  } },
  h("label", {}, "Service", h("input", { name: "service", value: params.get("service") || "" })),
  h("label", {}, "Endpoint", h("input", { name: "endpoint", value: params.get("endpoint") || "", size: 30 })),
  h("label", {}, "Status", h("select", { name: "status" }, ["", "ok", "error"].map((s) =>
    h("option", { value: s, selected: params.get("status") === s }, s || "any")))),
  h("label", {}, "Min duration (ms)", h("input", { name: "min_duration_ms", value: params.get("min_duration_ms") || "", size: 8 })),
  h("label", {}, "Limit", h("input", { name: "limit", value: params.get("limit") || "50", size: 5 })),
  h("button", {}, "Search"));
  const q = { ...range() };
  for (const f of fields) if (params.get(f)) q[f] = params.get(f);
  const rows = await api("/api/v1/traces?" + qs(q));
  view.replaceChildren(h("h2", {}, "Traces"), form,
    rows.length ? table([
      { title: "Start", value: (r) => fmtTime(r.start_ms) },
      { title: "Root", value: (r) => `${r.root_service}: ${r.root_name}` },
      { title: "Duration", num: true, value: (r) => fmtMs(r.duration_ms) },
      { title: "Spans", num: true, value: (r) => r.span_count },
      { title: "Status", value: (r) => h("span", { class: "tag" + (r.error ? " error" : "") }, r.error ? "error" : "ok") },
      { title: "Services", value: (r) => r.services.join(", ") },
    ], rows, (r) => (location.hash = "#/trace/" + r.trace_id)) : h("p", { class: "muted" }, "No matching traces."));
}

function spanDetail(s) {
  const attrs = s.attributes.map((a) => `${a.key} = ${JSON.stringify(a.value.value)}`).join("\n");
  const events = s.events.map((e) => `${e.name} @ ${new Date(e.time_unix_nano / 1e6).toISOString()}\n` +
    e.attributes.map((a) => `    ${a.key} = ${a.value.value}`).join("\n")).join("\n");
  return h("div", { class: "detail" },
    h("div", {}, h("b", {}, s.name), ` · ${s.service} (pid ${s.pid}) · ${s.kind} · ${fmtMs(s.duration_ms)} (self ${fmtMs(s.self_ms)})`,
      s.status === "error" ? h("span", { class: "err" }, " · error " + s.status_message) : ""),
    h("div", { class: "muted" }, `span ${s.span_id}` + (s.parent_span_id ? ` · parent ${s.parent_span_id}` : "")),
    attrs ? h("pre", {}, attrs) : "", events ? h("pre", { class: "err" }, events) : "");
}

async function showTrace(id) {
  const t = await api("/api/v1/traces/" + encodeURIComponent(id));
  const culprit = t.culprit ? t.culprit.span_id : null;
  // Children under their parents, in start order.
  const byParent = new Map();
  const ids = new Set(t.spans.map((s) => s.span_id));
  for (const s of t.spans) {
    const p = s.parent_span_id && ids.has(s.parent_span_id) ? s.parent_span_id : "";
    if (!byParent.has(p)) byParent.set(p, []);
    byParent.get(p).push(s);
  }
  const ordered = [];
  const seen = new Set();
  const walk = (p, depth) => (byParent.get(p) || []).forEach((s) => {
    if (seen.has(s.span_id)) return;
    seen.add(s.span_id);
    ordered.push([s, depth]);
    walk(s.span_id, depth + 1);
  });
  walk("", 0);
  for (const s of t.spans) if (!seen.has(s.span_id)) ordered.push([s, 0]);
  const total = Math.max(t.duration_ms, 1e-6);
  const wf = h("div", { class: "waterfall" });
  for (const [s, depth] of ordered) {
    const left = ((s.start_ms - t.start_ms) / total) * 100;
    const width = (s.duration_ms / total) * 100;
    const isCulprit = s.span_id === culprit;
    let detail = null;
    const row = h("div", { class: "row" + (isCulprit ? " culprit" : ""), onclick: () => {
      if (detail) { detail.remove(); detail = null; } else { detail = spanDetail(s); row.after(detail); }
    } },
    h("div", { class: "label", style: `padding-left:${depth * 14 + 4}px`, title: s.name },
      h("span", { class: "muted" }, s.service + " "), s.name, isCulprit ? h("span", { class: "tag error" }, t.culprit.reason === "error" ? " failing" : " slowest") : ""),
    h("div", { class: "track" },
      h("div", { class: "bar" + (s.status === "error" ? " error" : "") + (isCulprit ? " culprit" : ""), style: `left:${left}%;width:${width}%` }),
      h("span", { class: "dur", style: `left:${Math.min(left + width, 88)}%` }, " " + fmtMs(s.duration_ms))));
    wf.append(row);
  }
  const c = t.spans.find((s) => s.span_id === culprit);
  view.replaceChildren(h("h2", {}, "Trace " + t.trace_id),
    h("p", {}, `${fmtTime(t.start_ms)} · ${fmtMs(t.duration_ms)} · ${t.spans.length} spans · ${t.services.join(", ")}`),
    c ? h("p", {}, h("b", {}, t.culprit.reason === "error" ? "Failing span: " : "Slowest span (self time): "),
      `${c.service}: ${c.name} (${fmtMs(c.self_ms)} self)`) : "", wf, c ? spanDetail(c) : "");
}

async function showProcesses() {
  const rows = await api("/api/v1/processes");
  view.replaceChildren(h("h2", {}, "Processes"), table([
    { title: "PID", num: true, value: (r) => r.pid },
    { title: "Service", value: (r) => r.service },
    { title: "Technology", value: (r) => `${r.technology} ${r.role || ""}` },
    { title: "Python", value: (r) => r.python || "" },
    { title: "State", value: (r) => h("span", { class: "tag" + (/fail|error/i.test(r.state) ? " error" : "") }, r.state) },
    { title: "Reason", value: (r) => r.reason || "" },
  ], rows));
}

async function showSensors() {
  const rows = await api("/api/v1/sensors");
  view.replaceChildren(h("h2", {}, "Sensors"), table([
    { title: "Name", value: (r) => r.name },
    { title: "State", value: (r) => h("span", { class: "tag" + (r.state === "quarantined" ? " error" : "") }, r.state) },
    { title: "Serving", value: (r) => (r.serving ? r.serving.version || JSON.stringify(r.serving) : "—") },
    { title: "Source", value: (r) => r.source },
    { title: "Details", value: (r) => {
      const { name, state, serving, source, ...rest } = r;
      return h("pre", {}, JSON.stringify(rest));
    } },
  ], rows));
}

async function route() {
  const [path, query] = (location.hash.slice(1) || "/map").split("?");
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", path.startsWith(a.getAttribute("href").slice(1)));
  try {
    if (path.startsWith("/trace/")) await showTrace(path.slice(7));
    else if (path === "/traces") await showTraces(params);
    else if (path === "/endpoints") await showEndpoints(params);
    else if (path === "/processes") await showProcesses();
    else if (path === "/sensors") await showSensors();
    else await showMap();
  } catch (e) {
    view.replaceChildren(h("p", { class: "err" }, "Could not load: " + e.message));
  }
}

window.addEventListener("hashchange", route);
rangeSel.addEventListener("change", route);
route();
