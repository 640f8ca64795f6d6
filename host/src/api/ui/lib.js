// zerostep UI helpers shared by every page: DOM building, the one API client, formatting,
// sortable tables and the view state kept in the URL. Every value from the API is set as text
// (never as HTML): span names and attributes come from traced applications.
"use strict";

const ZS = (window.ZS = {});

function build(svg, tag, attrs, children) {
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// An HTML element: h(tag, {attr: value, onclick: fn}, ...children).
ZS.h = (tag, attrs, ...children) => build(false, tag, attrs, children);
// The same for SVG elements (an SVG <a> is not an HTML <a>).
ZS.s = (tag, attrs, ...children) => build(true, tag, attrs, children);

// Every request to the agent goes through here. The credential is the session from /login
// (host/src/api/auth.rs), kept in this origin's localStorage and sent as a bearer token; never a
// cookie (cookies go to every port of the host).
ZS.requestHeaders = function requestHeaders() {
  const session = localStorage.getItem("zerostep_session");
  return session ? { Authorization: "Bearer " + session } : {};
};

ZS.api = async function api(path, options) {
  const opts = options || {};
  const headers = { ...ZS.requestHeaders(), ...(opts.body !== undefined ? { "Content-Type": "application/json" } : {}) };
  const r = await fetch(path, {
    method: opts.method || "GET",
    headers,
    body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined,
    credentials: "omit",
  });
  // No session, or a refused one: log in again (unless the agent opens reads on loopback).
  if (r.status === 401) {
    location.assign("/login");
    throw new Error("not logged in");
  }
  const text = await r.text();
  let body;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = { error: text.trim() || r.statusText };
  }
  if (!r.ok) throw new Error((body && body.error) || r.statusText || "HTTP " + r.status);
  return body;
};

ZS.qs = function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (Array.isArray(v)) v.filter((x) => x !== "").forEach((x) => p.append(k, x));
    else if (v !== "" && v !== undefined && v !== null) p.set(k, v);
  }
  return p.toString();
};

ZS.fmtMs = (ms) => (ms === null || ms === undefined ? "—" : ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : ms >= 10 ? ms.toFixed(0) + " ms" : ms.toFixed(2) + " ms");
ZS.fmtPct = (x) => (x * 100).toFixed(x > 0 && x < 0.01 ? 2 : 1) + " %";
// Local time zone, the browser's locale.
ZS.fmtTime = (ms) => new Date(ms).toLocaleString();
ZS.fmtClock = (ms) => new Date(ms).toLocaleTimeString();

// The view's state lives in the hash: "#/page?key=value&…", so every view can be shared.
ZS.route = function route() {
  const [path, query] = (location.hash.slice(1) || "/map").split("?");
  return { path, params: new URLSearchParams(query || "") };
};

ZS.go = function go(path, params, replace) {
  const q = params instanceof URLSearchParams ? params.toString() : ZS.qs(params || {});
  const hash = "#" + path + (q ? "?" + q : "");
  if (replace) history.replaceState(null, "", hash);
  else location.hash = hash;
};

// Time range: a relative window ("range" ms back from now; live) or a fixed one (from/to, set by
// dragging on a chart). Both kept in the URL.
ZS.timeRange = function timeRange(params) {
  const from = Number(params.get("from"));
  const to = Number(params.get("to"));
  if (from > 0 && to > from) return { from, to, fixed: true };
  const span = Number(params.get("range")) || Number(document.getElementById("range").value) || 3600000;
  const now = Date.now();
  return { from: now - span, to: now, fixed: false };
};

// Link to a page keeping the time range of the current view.
ZS.link = function link(path, params) {
  const cur = ZS.route().params;
  const p = new URLSearchParams();
  for (const k of ["range", "from", "to"]) if (cur.get(k)) p.set(k, cur.get(k));
  for (const [k, v] of Object.entries(params || {})) {
    if (Array.isArray(v)) v.forEach((x) => p.append(k, x));
    else if (v !== "" && v !== undefined && v !== null) p.set(k, v);
  }
  const q = p.toString();
  return "#" + path + (q ? "?" + q : "");
};

// A table whose column headers sort it (click or Enter); rows are links when `href` is given.
ZS.table = function table(columns, rows, href, opts) {
  const h = ZS.h;
  const o = opts || {};
  let sortCol = o.sort === undefined ? -1 : o.sort;
  let desc = o.desc !== undefined ? o.desc : true;
  const tbody = h("tbody");
  const ths = [];
  const render = () => {
    const sorted = rows.slice();
    if (sortCol >= 0) {
      const key = columns[sortCol].sort || columns[sortCol].value;
      sorted.sort((a, b) => {
        const x = key(a), y = key(b);
        const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return desc ? -c : c;
      });
    }
    ths.forEach((th, i) => th.setAttribute("aria-sort", i === sortCol ? (desc ? "descending" : "ascending") : "none"));
    tbody.replaceChildren(...sorted.map((r) => {
      const link = href ? href(r) : null;
      const tr = h("tr", { class: link ? "click" : "", tabindex: link ? 0 : undefined },
        columns.map((c) => h("td", { class: c.num ? "num" : "" }, (c.render || c.value)(r))));
      if (link) {
        tr.addEventListener("click", (ev) => { if (!ev.target.closest("a,button")) location.hash = link; });
        tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter") location.hash = link; });
      }
      return tr;
    }));
  };
  const head = h("tr", {}, columns.map((c, i) => {
    const th = h("th", { class: c.num ? "num sortable" : "sortable", tabindex: 0, scope: "col" }, c.title);
    const toggle = () => {
      if (sortCol === i) desc = !desc;
      else { sortCol = i; desc = !!c.num; }
      render();
    };
    th.addEventListener("click", toggle);
    th.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); toggle(); } });
    ths.push(th);
    return th;
  }));
  render();
  // Wide tables scroll sideways in a narrow window instead of widening the page.
  return h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, head), tbody));
};

ZS.statCols = [
  { title: "Rate /min", num: true, value: (r) => r.rate_per_min, render: (r) => r.rate_per_min.toFixed(1) },
  { title: "Count", num: true, value: (r) => r.count },
  { title: "Errors", num: true, value: (r) => r.error_rate,
    render: (r) => ZS.h("span", { class: r.errors ? "err" : "" }, `${r.errors} (${ZS.fmtPct(r.error_rate)})`) },
  { title: "p50", num: true, value: (r) => r.p50_ms, render: (r) => ZS.fmtMs(r.p50_ms) },
  { title: "p95", num: true, value: (r) => r.p95_ms, render: (r) => ZS.fmtMs(r.p95_ms) },
  { title: "p99", num: true, value: (r) => r.p99_ms, render: (r) => ZS.fmtMs(r.p99_ms) },
];

ZS.empty = (text) => ZS.h("p", { class: "muted" }, text);
