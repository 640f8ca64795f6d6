// Service map: services, databases and external systems laid out in layers by dagre (vendored),
// callers left of callees. A node's colour is its health: error rate, and p95 against its own
// baseline (the same service over the six windows before the one shown).
"use strict";

(function () {
  const h = ZS.h, S = ZS.s;
  const NODE_W = 210, NODE_H = 56;
  // Edge labels sit above their edge; dagre reserves their size between the layers.
  const labelWidth = (text) => Math.ceil(text.length * 6.4) + 12;

  function health(s, base) {
    if (!s.count) return { cls: "idle", why: "no requests in this range" };
    if (s.error_rate >= 0.05) return { cls: "bad", why: `errors ${ZS.fmtPct(s.error_rate)}` };
    const slower = base && base.count >= 10 && base.p95_ms > 0 ? s.p95_ms / base.p95_ms : 1;
    if (s.error_rate >= 0.01) return { cls: "warn", why: `errors ${ZS.fmtPct(s.error_rate)}` };
    if (slower >= 1.5) return { cls: "warn", why: `p95 ${ZS.fmtMs(s.p95_ms)}, ${slower.toFixed(1)}× its baseline ${ZS.fmtMs(base.p95_ms)}` };
    return { cls: "ok", why: base && base.count ? `p95 ${ZS.fmtMs(s.p95_ms)} (baseline ${ZS.fmtMs(base.p95_ms)})` : "healthy" };
  }

  function edgeLabel(e) {
    return `${e.rate_per_min.toFixed(1)}/min` + (e.errors ? ` · ${ZS.fmtPct(e.error_rate)} err` : "") + ` · p95 ${ZS.fmtMs(e.p95_ms)}`;
  }

  function curve(points) {
    if (!points.length) return "";
    let d = `M${points[0].x},${points[0].y}`;
    if (points.length === 2) return d + ` L${points[1].x},${points[1].y}`;
    for (let i = 1; i < points.length - 1; i++) {
      const p = points[i], n = points[i + 1];
      const mx = (p.x + n.x) / 2, my = (p.y + n.y) / 2;
      d += ` Q${p.x},${p.y} ${i === points.length - 2 ? n.x : mx},${i === points.length - 2 ? n.y : my}`;
    }
    return d;
  }

  ZS.serviceMap = function serviceMap(services, edges, baseline) {
    const g = new dagre.graphlib.Graph({ multigraph: false });
    g.setGraph({ rankdir: "LR", nodesep: 36, ranksep: 120, edgesep: 20, marginx: 20, marginy: 20 });
    g.setDefaultEdgeLabel(() => ({}));
    const byName = new Map(services.map((s) => [s.name, s]));
    // Callees that are not in the services list (an external host) still get a node.
    for (const e of edges) for (const n of [e.caller, e.callee]) if (!byName.has(n)) byName.set(n, { name: n, kind: e.callee === n ? e.callee_kind || "external" : "service", count: 0, errors: 0, error_rate: 0, rate_per_min: 0, p95_ms: 0, technology: "" });
    for (const s of byName.values()) g.setNode(s.name, { width: NODE_W, height: NODE_H });
    for (const e of edges) if (e.caller !== e.callee) g.setEdge(e.caller, e.callee, { width: labelWidth(edgeLabel(e)), height: 30, labelpos: "c" });
    dagre.layout(g);
    const G = g.graph();
    const W = Math.max(G.width || 0, 400), H = Math.max(G.height || 0, 160);
    const svg = S("svg", { class: "map", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": "service map" },
      S("defs", {}, S("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto" },
        S("path", { d: "M0,0 L10,5 L0,10 z", fill: "#64748b" }))));
    for (const e of edges) {
      const le = g.edge(e.caller, e.callee);
      if (!le) continue;
      const callee = byName.get(e.callee);
      const href = callee && callee.kind === "service"
        ? ZS.link("/traces", { service: e.callee, caller: e.caller })
        : ZS.link("/traces", { service: e.caller, attr: "db.system=" + e.callee });
      const a = S("a", { href, class: "edge-link", "aria-label": `${e.caller} to ${e.callee}: ${edgeLabel(e)}` },
        S("path", { class: "edge" + (e.errors ? " failing" : ""), d: curve(le.points), fill: "none",
          "stroke-width": 1.2 + Math.min(5, Math.log10(1 + e.count)), "marker-end": "url(#arrow)" }),
        S("title", {}, `${e.caller} → ${e.callee}: ${e.count} calls, ${e.errors} errors, p50 ${ZS.fmtMs(e.p50_ms)}, p95 ${ZS.fmtMs(e.p95_ms)}, p99 ${ZS.fmtMs(e.p99_ms)}`),
        S("rect", { x: le.x - labelWidth(edgeLabel(e)) / 2, y: le.y - 24, width: labelWidth(edgeLabel(e)), height: 17, rx: 3, class: "edge-label-bg" }),
        S("text", { x: le.x, y: le.y - 11, class: "edge-label" + (e.errors ? " err" : "") }, edgeLabel(e)));
      svg.append(a);
    }
    for (const s of byName.values()) {
      const n = g.node(s.name);
      const hl = health(s, baseline.get(s.name));
      const href = s.kind === "service" ? ZS.link("/endpoints", { service: s.name }) : ZS.link("/endpoints", { service: s.name });
      const shape = s.kind === "service"
        ? S("rect", { x: -NODE_W / 2, y: -NODE_H / 2, width: NODE_W, height: NODE_H, rx: 8 })
        : S("rect", { x: -NODE_W / 2, y: -NODE_H / 2, width: NODE_W, height: NODE_H, rx: 24 });
      svg.append(S("a", { href, class: `node ${s.kind} ${hl.cls}`, transform: `translate(${n.x},${n.y})`, "aria-label": `${s.name}: ${hl.why}` },
        shape,
        S("title", {}, `${s.name} (${s.technology || s.kind}): ${s.rate_per_min.toFixed(1)}/min, errors ${ZS.fmtPct(s.error_rate)}, p95 ${ZS.fmtMs(s.p95_ms)} — ${hl.why}`),
        S("text", { y: -6, class: "name" }, s.name.length > 26 ? s.name.slice(0, 25) + "…" : s.name),
        S("text", { y: 13, class: "muted" }, s.count ? `${s.rate_per_min.toFixed(1)}/min · ${ZS.fmtPct(s.error_rate)} err · p95 ${ZS.fmtMs(s.p95_ms)}` : s.technology || s.kind)));
    }
    return h("div", { class: "map-box" }, svg,
      h("div", { class: "legend" }, h("span", { class: "dot ok" }), "healthy ", h("span", { class: "dot warn" }),
        "errors ≥ 1 % or p95 ≥ 1.5× baseline ", h("span", { class: "dot bad" }), "errors ≥ 5 % ", h("span", { class: "dot idle" }), "idle"));
  };

  ZS.healthOf = health;
})();
