// zerostep UI pages and router: hash routes hold each view's state (shareable URLs); lists,
// charts and the map refresh themselves every few seconds while the range is relative to now.
"use strict";

(function () {
  const h = ZS.h;
  const view = document.getElementById("view");
  const rangeSel = document.getElementById("range");
  const liveBox = document.getElementById("live");
  const REFRESH_MS = 10000;

  const setRange = (from, to) => {
    const { path, params } = ZS.route();
    params.set("from", from);
    params.set("to", to);
    params.delete("range");
    ZS.go(path, params);
  };

  // --- Service map ---------------------------------------------------------------------------
  async function showMap(params) {
    const r = ZS.timeRange(params);
    const span = r.to - r.from;
    const [services, edges, base] = await Promise.all([
      ZS.api("/api/v1/services?" + ZS.qs({ from: r.from, to: r.to })),
      ZS.api("/api/v1/edges?" + ZS.qs({ from: r.from, to: r.to })),
      ZS.api("/api/v1/services?" + ZS.qs({ from: Math.max(0, r.from - 6 * span), to: r.from })).catch(() => []),
    ]);
    const baseline = new Map(base.map((s) => [s.name, s]));
    return [h("h2", {}, "Service map"),
      services.length ? ZS.serviceMap(services, edges, baseline) : ZS.empty("No services in this range yet."),
      h("h3", {}, "Services"),
      ZS.table([{ title: "Service", value: (s) => s.name },
        { title: "Health", value: (s) => ZS.healthOf(s, baseline.get(s.name)).cls, render: (s) => { const x = ZS.healthOf(s, baseline.get(s.name)); return h("span", { class: "health " + x.cls, title: x.why }, x.cls); } },
        { title: "Kind", value: (s) => s.technology || s.kind },
        { title: "PIDs", value: (s) => s.pids.join(" ") }, ...ZS.statCols], services,
      (s) => ZS.link("/endpoints", { service: s.name }), { sort: 0, desc: false })];
  }

  // --- Endpoints over time -------------------------------------------------------------------
  async function showEndpoints(params) {
    const r = ZS.timeRange(params);
    const service = params.get("service") || "";
    const endpoint = params.get("endpoint") || "";
    const [services, rows, series] = await Promise.all([
      ZS.api("/api/v1/services?" + ZS.qs({ from: r.from, to: r.to })),
      ZS.api("/api/v1/endpoints?" + ZS.qs({ from: r.from, to: r.to, service })),
      ZS.api("/api/v1/series?" + ZS.qs({ from: r.from, to: r.to, service, endpoint })),
    ]);
    const pick = h("form", { class: "filters", onsubmit: (ev) => ev.preventDefault() },
      h("label", {}, "Service ", h("select", { name: "service", onchange: (ev) => ZS.go("/endpoints", withRange({ service: ev.target.value })) },
        h("option", { value: "" }, "all services"),
        services.map((s) => h("option", { value: s.name, selected: s.name === service }, s.name)))),
      h("label", {}, "Endpoint ", h("select", { name: "endpoint", onchange: (ev) => ZS.go("/endpoints", withRange({ service, endpoint: ev.target.value })) },
        h("option", { value: "" }, "all endpoints"),
        rows.filter((e) => !service || e.service === service).map((e) => h("option", { value: e.endpoint, selected: e.endpoint === endpoint }, (service ? "" : e.service + " ") + e.endpoint)))),
      r.fixed ? h("button", { type: "button", onclick: () => { const p = ZS.route().params; p.delete("from"); p.delete("to"); ZS.go("/endpoints", p); } }, "Back to live range") : "",
      h("a", { href: ZS.link("/traces", { service, endpoint }) }, "Traces of this selection →"));
    const change = service && endpoint
      ? await ZS.api("/api/v1/endpoint-change?" + ZS.qs({ service, endpoint, from: r.from, to: r.to })).catch(() => null)
      : null;
    const charts = h("div", { class: "charts" });
    const title = [service || "All services", endpoint].filter(Boolean).join(" · ");
    const out = [h("h2", {}, "Endpoints over time: " + title), pick, change ? changeBox(change) : "", charts,
      h("p", { class: "muted" }, `Buckets of ${series.step_ms / 60000} min from the store's rollups; drag across a chart to zoom into that range.`),
      h("h3", {}, "Endpoints"),
      rows.length ? ZS.table([{ title: "Service", value: (e) => e.service }, { title: "Endpoint", value: (e) => e.endpoint }, ...ZS.statCols,
        { title: "", value: () => "", render: (e) => h("a", { href: ZS.link("/traces", { service: e.service, endpoint: e.endpoint }) }, "traces") }],
      rows, (e) => ZS.link("/endpoints", { service: e.service, endpoint: e.endpoint }), { sort: 3, desc: true }) : ZS.empty("No requests in this range.")];
    // Charts need their box in the page to know its width.
    out.after = () => {
      if (!series.points.length) { charts.append(ZS.empty("No data for this selection.")); return; }
      const xs = series.points.map((p) => p.t_ms);
      // A point is its bucket's start: a selection covers the buckets of the points nearest its
      // ends, whole.
      const zoom = (from, to) => setRange(Math.round(from / series.step_ms) * series.step_ms, Math.min(Date.now(), (Math.round(to / series.step_ms) + 1) * series.step_ms));
      // All boxes first: the grid gives each its width, which a chart reads when it is made.
      const boxes = [0, 1, 2, 3].slice(0, series.histogram.length ? 4 : 3).map(() => { const b = h("div", { class: "chart" }); charts.append(b); return b; });
      const box = () => boxes.shift();
      ZS.timeChart(box(), "Requests per minute", xs, [
        { label: "requests/min", color: ZS.palette.rate, values: series.points.map((p) => p.rate_per_min), fill: true },
        { label: "errors/min", color: ZS.palette.errors, values: series.points.map((p) => (p.rate_per_min * p.error_rate)) }],
      { onRange: zoom, fmt: (v) => (v === null || v === undefined ? "—" : v.toFixed(1)) });
      ZS.timeChart(box(), "Error rate", xs, [
        { label: "error rate", color: ZS.palette.errors, values: series.points.map((p) => (p.count ? p.error_rate * 100 : null)), fill: true }],
      { onRange: zoom, fmt: (v) => (v === null || v === undefined ? "—" : v.toFixed(1) + " %") });
      ZS.timeChart(box(), "Latency", xs, [
        { label: "p50", color: ZS.palette.p50, values: series.points.map((p) => p.p50_ms) },
        { label: "p95", color: ZS.palette.p95, values: series.points.map((p) => p.p95_ms) },
        { label: "p99", color: ZS.palette.p99, values: series.points.map((p) => p.p99_ms) }],
      { onRange: zoom, fmt: ZS.fmtMs });
      if (series.histogram.length) ZS.histogramChart(box(), series.histogram);
    };
    return out;
  }

  // What grew since the window before: the endpoint's p95 and its operations' time per request.
  function changeBox(c) {
    const grew = c.operations.filter((o) => o.delta_ms > 0).slice(0, 5);
    return h("section", { class: "rootcause", "aria-label": "change against the previous window" },
      h("h3", {}, c.baseline_requests ? `p95 ${ZS.fmtMs(c.p95_ms)} against ${ZS.fmtMs(c.baseline_p95_ms)} in the window before` : `p95 ${ZS.fmtMs(c.p95_ms)}; nothing in the window before`),
      c.baseline_requests === 0 ? ZS.empty("No requests in the window before to compare with.")
        : grew.length ? [h("p", { class: "muted" }, `Time per request by operation, from the newest ${c.requests} and ${c.baseline_requests} requests:`),
          h("ol", {}, grew.map((o) => h("li", {}, h("b", {}, `+${ZS.fmtMs(o.delta_ms)}`), ` ${o.service}: ${o.name} — ${ZS.fmtMs(o.baseline_ms_per_request)} → ${ZS.fmtMs(o.ms_per_request)} per request`,
            Math.abs(o.calls_per_request - o.baseline_calls_per_request) >= 0.1 ? ` (calls per request ${o.baseline_calls_per_request.toFixed(1)} → ${o.calls_per_request.toFixed(1)})` : "")))]
          : ZS.empty("No operation takes longer per request than in the window before."));
  }

  function withRange(p) {
    const cur = ZS.route().params;
    const out = { ...p };
    for (const k of ["range", "from", "to"]) if (cur.get(k)) out[k] = cur.get(k);
    return out;
  }

  // --- Traces --------------------------------------------------------------------------------
  const SHORTCUTS = [
    ["status_code", "HTTP status", "http.response.status_code=", 5],
    ["db_contains", "db.query.text contains", "db.query.text~=", 18],
    ["path_prefix", "url.path starts with", "url.path^=", 14],
  ];

  async function showTraces(params) {
    const r = ZS.timeRange(params);
    const attrs = params.getAll("attr");
    const keys = await ZS.api("/api/v1/attribute-keys").catch(() => []);
    // Shortcut fields are attr conditions with a fixed key; the rest are free conditions.
    const shortcut = {};
    const free = [];
    for (const a of attrs) {
      const s = SHORTCUTS.find(([, , prefix]) => a.startsWith(prefix));
      if (s && !(s[0] in shortcut)) shortcut[s[0]] = a.slice(s[2].length);
      else free.push(a);
    }
    const form = h("form", { class: "filters", onsubmit: (ev) => {
      ev.preventDefault();
      const d = new FormData(form);
      const conds = [];
      for (const [name, , prefix] of SHORTCUTS) if (d.get(name)) conds.push(prefix + d.get(name));
      for (const line of String(d.get("attrs") || "").split("\n")) if (line.trim()) conds.push(line.trim());
      ZS.go("/traces", withRange({ service: d.get("service"), caller: params.get("caller") || "", endpoint: d.get("endpoint"), status: d.get("status"),
        min_duration_ms: d.get("min_duration_ms"), limit: d.get("limit"), attr: conds }));
    } },
    h("label", {}, "Service ", h("input", { name: "service", value: params.get("service") || "", size: 12 })),
    h("label", {}, "Endpoint ", h("input", { name: "endpoint", value: params.get("endpoint") || "", size: 22 })),
    h("label", {}, "Status ", h("select", { name: "status" }, ["", "ok", "error"].map((s) => h("option", { value: s, selected: (params.get("status") || "") === s }, s || "any")))),
    h("label", {}, "Min ms ", h("input", { name: "min_duration_ms", value: params.get("min_duration_ms") || "", size: 6, inputmode: "decimal" })),
    SHORTCUTS.map(([name, label, , size]) => h("label", {}, label + " ", h("input", { name, value: shortcut[name] || "", size }))),
    h("label", { class: "wide" }, "Other attributes (one per line: key=value, key~=part, key^=prefix, key) ",
      h("textarea", { name: "attrs", rows: 1, cols: 36, list: "attr-keys" }, free.join("\n"))),
    h("datalist", { id: "attr-keys" }, keys.map((k) => h("option", { value: k }))),
    h("label", {}, "Limit ", h("input", { name: "limit", value: params.get("limit") || "100", size: 4 })),
    h("button", {}, "Search"));
    const q = { from: r.from, to: r.to, attr: attrs, limit: params.get("limit") || "100" };
    for (const f of ["service", "endpoint", "status", "min_duration_ms"]) if (params.get(f)) q[f] = params.get(f);
    // From a map edge: requests `service` handled in traces that `caller` is part of.
    const caller = params.get("caller") || "";
    const all = await ZS.api("/api/v1/traces?" + ZS.qs(q));
    const rows = caller ? all.filter((t) => t.services.includes(caller)) : all;
    const chart = h("div", { class: "chart" });
    const out = [h("h2", {}, "Traces"), caller ? h("p", {}, `Calls from ${caller} into ${params.get("service")}: traces with both. `,
      h("a", { href: ZS.link("/traces", { service: params.get("service") }) }, "All of " + params.get("service"))) : "", form, chart,
      rows.length ? ZS.table([
        { title: "Start", value: (t) => t.start_ms, render: (t) => ZS.fmtTime(t.start_ms) },
        { title: "Root", value: (t) => `${t.root_service}: ${t.root_name}` },
        { title: "Duration", num: true, value: (t) => t.duration_ms, render: (t) => ZS.fmtMs(t.duration_ms) },
        { title: "Spans", num: true, value: (t) => t.span_count },
        { title: "Status", value: (t) => (t.error ? "error" : "ok"), render: (t) => h("span", { class: "tag" + (t.error ? " error" : "") }, t.error ? "error" : "ok") },
        { title: "Services", value: (t) => t.services.join(", ") },
      ], rows, (t) => ZS.link("/trace/" + t.trace_id), { sort: 0, desc: true }) : ZS.empty("No matching traces.")];
    out.after = () => { if (rows.length) ZS.scatterChart(chart, rows, (i) => (location.hash = ZS.link("/trace/" + rows[i].trace_id))); };
    return out;
  }

  // --- Processes and sensors -----------------------------------------------------------------
  async function showProcesses() {
    const rows = await ZS.api("/api/v1/processes");
    const detach = async (p) => {
      if (!confirm(`Detach the tracer from process ${p.pid} (${p.service || "?"})? It stops being traced until it restarts.`)) return;
      try {
        const res = await ZS.api("/api/v1/detach", { method: "POST", body: { pid: p.pid } });
        alert(`Detached: ${res.detached.join(", ") || "nothing"}`);
      } catch (e) {
        alert("Detach failed: " + e.message);
      }
      route();
    };
    return [h("h2", {}, "Processes"), rows.length ? ZS.table([
      { title: "PID", num: true, value: (p) => p.pid },
      { title: "Service", value: (p) => p.service || "", render: (p) => (p.service ? h("a", { href: ZS.link("/endpoints", { service: p.service }) }, p.service) : "") },
      { title: "Match", value: (p) => `${p.technology || "?"} ${p.role || ""}` + (p.service_name_source ? ` · name from ${p.service_name_source}` : "") },
      { title: "Python", value: (p) => p.python || "" },
      { title: "State", value: (p) => p.state, render: (p) => h("span", { class: "tag" + (/fail|error|refused/i.test(p.state) ? " error" : "") }, p.state) },
      { title: "Reason", value: (p) => p.reason || "" },
      { title: "Since", value: (p) => p.since_unix_ms, render: (p) => (p.since_unix_ms ? ZS.fmtTime(p.since_unix_ms) : "") },
      { title: "", value: () => "", render: (p) => (/traced/.test(p.state) ? h("button", { onclick: () => detach(p) }, "Detach…") : "") },
    ], rows, null, { sort: 0, desc: false }) : ZS.empty("No Python web server processes found.")];
  }

  async function showSensors() {
    const rows = await ZS.api("/api/v1/sensors");
    const refusal = (r) => (r ? `${r.reason} (sha256 ${String(r.sha256).slice(0, 12)}…, ${ZS.fmtTime(r.at_unix_ms)})` : "");
    return [h("h2", {}, "Sensors"), ZS.table([
      { title: "Name", value: (s) => s.name },
      { title: "Version", value: (s) => (s.serving ? s.serving.version || "" : "—") },
      { title: "State", value: (s) => s.state, render: (s) => h("span", { class: "tag" + (s.state === "quarantined" ? " error" : "") }, s.state) },
      { title: "Technologies", value: (s) => (s.serving && s.serving.technologies ? s.serving.technologies.join(", ") : "") },
      { title: "Calls", num: true, value: (s) => s.calls || 0 },
      { title: "Errors", num: true, value: (s) => s.errors || 0 },
      { title: "Traps", num: true, value: (s) => s.traps || 0 },
      { title: "p50 µs", num: true, value: (s) => s.p50_us || 0, render: (s) => (s.p50_us || 0).toFixed(0) },
      { title: "p99 µs", num: true, value: (s) => s.p99_us || 0, render: (s) => (s.p99_us || 0).toFixed(0) },
      { title: "Loaded", value: (s) => (s.serving ? s.serving.loaded_at_unix_ms || 0 : 0), render: (s) => (s.serving && s.serving.loaded_at_unix_ms ? ZS.fmtTime(s.serving.loaded_at_unix_ms) : "") },
      { title: "Source · sha256", value: (s) => s.source, render: (s) => h("span", { class: "small" }, s.source, s.serving && s.serving.sha256 ? h("div", { class: "muted" }, s.serving.sha256.slice(0, 16) + "…") : "") },
      { title: "History", value: (s) => refusal(s.quarantined) + refusal(s.last_refused),
        render: (s) => [s.quarantined ? h("div", { class: "err" }, "quarantined: " + refusal(s.quarantined)) : "",
          s.last_refused ? h("div", {}, "last refused: " + refusal(s.last_refused)) : "", !s.quarantined && !s.last_refused ? "—" : ""] },
    ], rows, null, { sort: 0, desc: false })];
  }

  // --- Router and live refresh ---------------------------------------------------------------
  let generation = 0;
  let timer = null;

  async function route(opts) {
    const quiet = opts && opts.quiet;
    const mine = ++generation;
    const { path, params } = ZS.route();
    if (params.get("range") && rangeSel.value !== params.get("range")) rangeSel.value = params.get("range");
    for (const a of document.querySelectorAll("header nav a")) {
      const on = path.startsWith(a.getAttribute("href").slice(1)) || (path.startsWith("/trace/") && a.getAttribute("href") === "#/traces");
      a.classList.toggle("active", on);
      if (on) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    }
    const scroll = window.scrollY;
    try {
      if (path.startsWith("/trace/")) {
        if (quiet) return;
        await ZS.showTrace(view, decodeURIComponent(path.slice(7)));
      } else {
        const page = path === "/traces" ? showTraces : path === "/endpoints" ? showEndpoints
          : path === "/processes" ? showProcesses : path === "/sensors" ? showSensors : showMap;
        const nodes = await page(params);
        if (mine !== generation) return; // a newer navigation won
        // Focus inside a form survives a live refresh: skip the refresh while the user types.
        if (quiet && view.contains(document.activeElement) && /INPUT|TEXTAREA|SELECT/.test(document.activeElement.tagName)) return;
        view.replaceChildren(...nodes);
        if (nodes.after) nodes.after();
        if (quiet) window.scrollTo(0, scroll);
      }
      document.body.dataset.view = path.split("/")[1] || "map";
      document.body.dataset.ready = String(mine);
      document.getElementById("updated").textContent = "updated " + ZS.fmtClock(Date.now());
    } catch (e) {
      if (mine !== generation) return;
      view.replaceChildren(h("p", { class: "err", role: "alert" }, "Could not load: " + e.message));
      document.body.dataset.ready = String(mine);
    }
  }

  function schedule() {
    clearInterval(timer);
    timer = setInterval(() => {
      const { params } = ZS.route();
      if (liveBox.checked && !document.hidden && !(params.get("from") && params.get("to"))) route({ quiet: true });
    }, REFRESH_MS);
  }

  window.addEventListener("hashchange", () => route());
  rangeSel.addEventListener("change", () => {
    const { path, params } = ZS.route();
    params.set("range", rangeSel.value);
    params.delete("from");
    params.delete("to");
    ZS.go(path, params);
  });
  liveBox.addEventListener("change", schedule);
  ZS.refresh = route;
  schedule();
  route();
})();
