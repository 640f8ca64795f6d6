// One trace: the root cause at the top (where the error originated, or where the time went),
// then a collapsible waterfall; a span's details show its attributes, events and exception
// stacks, the process and sensor that produced it, and links to its service and endpoint.
"use strict";

(function () {
  const h = ZS.h;

  const valueText = (v) => (v && typeof v === "object" && "value" in v ? (Array.isArray(v.value) ? v.value.join(", ") : String(v.value)) : String(v));
  const attrOf = (s, key) => { const a = s.attributes.find((x) => x.key === key); return a ? valueText(a.value) : null; };

  function shareBar(share) {
    return h("span", { class: "share" }, h("span", { style: `width:${Math.min(100, share * 100).toFixed(1)}%` }));
  }

  function rootCause(t, spanById, select) {
    const a = t.analysis || {};
    const box = h("section", { class: "rootcause", "aria-label": "root cause" });
    const spanLink = (id, text) => h("a", { href: "#", onclick: (ev) => { ev.preventDefault(); select(id); } }, text);
    if (a.error) {
      const e = a.error;
      box.classList.add("failed");
      box.append(h("h3", {}, "Root cause: ", h("span", { class: "err" }, `${e.service}: ${e.name}`)),
        h("p", { class: "reason" }, e.reason),
        e.path.length > 1 ? h("p", { class: "path muted" }, "Error path: ", e.path.map((id, i) => {
          const s = spanById.get(id);
          return [i ? " → " : "", spanLink(id, s ? `${s.service}: ${s.name}` : id)];
        })) : "",
        e.callee_missing ? h("p", { class: "muted" }, "The called side has no spans in this trace (not traced, or not delivered yet): the cause may lie further on.") : "",
        e.other_failures ? h("p", { class: "muted" }, `${e.other_failures} other failing span(s) did not lead here (retries or handled errors).`) : "",
        h("p", {}, spanLink(e.span_id, "Show this span")));
    }
    if (a.time) {
      const tb = a.time;
      const list = (title, rows) => h("div", { class: "breakdown" }, h("h4", {}, title),
        rows.length ? h("ol", {}, rows.map((r) => h("li", {}, shareBar(r.share), ` ${ZS.fmtPct(r.share)} · ${ZS.fmtMs(r.ms)} · `, spanLink(r.span_id, `${r.service}: ${r.name}`)))) : ZS.empty("—"));
      box.append(h("div", { class: "time" },
        list(`Critical path of ${ZS.fmtMs(tb.total_ms)}`, tb.critical_path),
        list("Largest self time", tb.self_time)));
    }
    return box;
  }

  function detail(s, t, processes) {
    const proc = processes.get(s.pid);
    const events = s.events.map((e) => {
      const attrs = new Map(e.attributes.map((a) => [a.key, valueText(a.value)]));
      const stack = attrs.get("exception.stacktrace");
      const isExc = e.name === "exception";
      return h("div", { class: "event" + (isExc ? " exception" : "") },
        h("div", {}, h("b", {}, e.name), " ", h("span", { class: "muted" }, ZS.fmtTime(e.time_unix_nano / 1e6))),
        isExc ? h("div", { class: "err" }, `${attrs.get("exception.type") || "exception"}: ${attrs.get("exception.message") || ""}`) : "",
        stack ? h("pre", { class: "stack" }, stack) : "",
        h("table", { class: "attrs" }, [...attrs].filter(([k]) => k !== "exception.stacktrace").map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))));
    });
    return h("div", { class: "detail", role: "region", "aria-label": "span details" },
      h("div", {}, h("b", {}, s.name), ` · ${s.kind} · ${ZS.fmtMs(s.duration_ms)} (self ${ZS.fmtMs(s.self_ms)}) · started ${ZS.fmtTime(s.start_ms)}`,
        s.status === "error" ? h("span", { class: "err" }, " · error " + s.status_message) : ""),
      h("div", {}, "Service ", h("a", { href: ZS.link("/endpoints", { service: s.service }) }, s.service),
        s.endpoint ? [" · endpoint ", h("a", { href: ZS.link("/endpoints", { service: s.service, endpoint: s.endpoint }) }, s.endpoint)] : "",
        ` · process ${s.pid}`, proc ? ` (${proc.technology || "?"}${proc.role ? " " + proc.role : ""}, sensor ${proc.technology || "?"}, ${proc.state})` : ""),
      h("div", { class: "muted" }, `span ${s.span_id}` + (s.parent_span_id ? ` · parent ${s.parent_span_id}` : "")),
      s.attributes.length ? h("table", { class: "attrs" }, s.attributes.map((a) => h("tr", {}, h("th", {}, a.key), h("td", {}, valueText(a.value))))) : "",
      events.length ? h("div", { class: "events" }, h("h4", {}, "Events"), events) : "");
  }

  ZS.showTrace = async function showTrace(view, id) {
    const [t, procs] = await Promise.all([
      ZS.api("/api/v1/traces/" + encodeURIComponent(id)),
      ZS.api("/api/v1/processes").catch(() => []),
    ]);
    const processes = new Map(procs.map((p) => [p.pid, p]));
    const spanById = new Map(t.spans.map((s) => [s.span_id, s]));
    const children = new Map();
    for (const s of t.spans) {
      const p = s.parent_span_id && spanById.has(s.parent_span_id) ? s.parent_span_id : "";
      if (!children.has(p)) children.set(p, []);
      children.get(p).push(s);
    }
    const errorPath = new Set((t.analysis && t.analysis.error && t.analysis.error.path) || []);
    const origin = t.analysis && t.analysis.error ? t.analysis.error.span_id : null;
    const collapsed = new Set();
    let selected = origin || (t.culprit && t.culprit.span_id) || null;
    const total = Math.max(t.duration_ms, 1e-6);
    const wf = h("div", { class: "waterfall", role: "tree", "aria-label": "spans" });
    const detailBox = h("div", { class: "detail-box" });

    const ordered = [];
    const seen = new Set();
    const walk = (p, depth) => (children.get(p) || []).forEach((s) => {
      if (seen.has(s.span_id)) return;
      seen.add(s.span_id);
      ordered.push([s, depth]);
      walk(s.span_id, depth + 1);
    });
    walk("", 0);
    for (const s of t.spans) if (!seen.has(s.span_id)) ordered.push([s, 0]);
    const parentOf = (s) => (s.parent_span_id && spanById.has(s.parent_span_id) ? s.parent_span_id : null);
    const hidden = (s) => { for (let p = parentOf(s), n = 0; p && n < 1000; p = parentOf(spanById.get(p)), n++) if (collapsed.has(p)) return true; return false; };

    const render = () => {
      wf.replaceChildren();
      for (const [s, depth] of ordered) {
        if (hidden(s)) continue;
        const left = ((s.start_ms - t.start_ms) / total) * 100;
        const width = Math.max((s.duration_ms / total) * 100, 0.15);
        const kids = (children.get(s.span_id) || []).length;
        const isOrigin = s.span_id === origin;
        const row = h("div", { class: "row" + (isOrigin ? " culprit" : "") + (errorPath.has(s.span_id) ? " on-path" : "") + (s.span_id === selected ? " selected" : ""),
          role: "treeitem", tabindex: 0, "data-span": s.span_id, "aria-expanded": kids ? String(!collapsed.has(s.span_id)) : undefined },
        h("div", { class: "label", style: `padding-left:${depth * 14 + 4}px`, title: s.name },
          kids ? h("button", { class: "twisty", tabindex: -1, "aria-label": collapsed.has(s.span_id) ? "expand" : "collapse",
            onclick: (ev) => { ev.stopPropagation(); toggle(s.span_id); } }, collapsed.has(s.span_id) ? "▸" : "▾") : h("span", { class: "twisty-space" }),
          h("span", { class: "muted" }, s.service + " "), s.name,
          isOrigin ? h("span", { class: "tag error" }, "root cause") : ""),
        h("div", { class: "track" },
          h("div", { class: "bar" + (s.status === "error" ? " error" : "") + (isOrigin ? " culprit" : ""), style: `left:${left}%;width:${width}%` }),
          h("span", { class: "dur", style: `left:${Math.min(left + width, 86)}%` }, " " + ZS.fmtMs(s.duration_ms))));
        row.addEventListener("click", () => select(s.span_id));
        row.addEventListener("keydown", (ev) => onKey(ev, s));
        wf.append(row);
      }
    };
    const toggle = (sid) => { if (collapsed.has(sid)) collapsed.delete(sid); else collapsed.add(sid); render(); focusRow(sid); };
    const focusRow = (sid) => { const r = wf.querySelector(`[data-span="${CSS.escape(sid)}"]`); if (r) r.focus(); };
    const select = (sid) => {
      // Uncollapse the ancestors of a span picked from the root-cause box.
      for (let p = parentOf(spanById.get(sid) || {}); p; p = parentOf(spanById.get(p))) collapsed.delete(p);
      selected = sid;
      render();
      const s = spanById.get(sid);
      detailBox.replaceChildren(s ? detail(s, t, processes) : "");
      const r = wf.querySelector(`[data-span="${CSS.escape(sid)}"]`);
      if (r) { r.scrollIntoView({ block: "nearest" }); r.focus({ preventScroll: true }); }
    };
    const onKey = (ev, s) => {
      const rows = [...wf.querySelectorAll(".row")];
      const i = rows.indexOf(ev.currentTarget);
      if (ev.key === "ArrowDown" && rows[i + 1]) { ev.preventDefault(); rows[i + 1].focus(); }
      else if (ev.key === "ArrowUp" && rows[i - 1]) { ev.preventDefault(); rows[i - 1].focus(); }
      else if (ev.key === "ArrowLeft" && (children.get(s.span_id) || []).length && !collapsed.has(s.span_id)) toggle(s.span_id);
      else if (ev.key === "ArrowRight" && collapsed.has(s.span_id)) toggle(s.span_id);
      else if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); select(s.span_id); }
    };
    render();
    const rootSpan = ordered.length ? ordered[0][0] : null;
    view.replaceChildren(
      h("h2", {}, "Trace ", h("code", {}, t.trace_id)),
      h("p", {}, `${ZS.fmtTime(t.start_ms)} · ${ZS.fmtMs(t.duration_ms)} · ${t.spans.length} spans · `,
        t.services.map((s, i) => [i ? ", " : "", h("a", { href: ZS.link("/endpoints", { service: s }) }, s)]),
        rootSpan && rootSpan.endpoint ? [" · ", h("a", { href: ZS.link("/endpoints", { service: rootSpan.service, endpoint: rootSpan.endpoint }) }, rootSpan.endpoint)] : ""),
      rootCause(t, spanById, select),
      h("div", { class: "wf-head muted" }, "Spans (↑↓ move, ← → collapse/expand, Enter details)"),
      wf, detailBox);
    if (selected) select(selected);
    window.scrollTo(0, 0);
  };
})();
