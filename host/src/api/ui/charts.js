// Charts on uPlot (vendored, see vendor/README.md): time series with a shared cursor and drag
// to zoom into a range, a latency histogram and a duration-over-time scatter.
"use strict";

(function () {
  const h = ZS.h;
  const palette = { rate: "#2563eb", errors: "#dc2626", p50: "#16a34a", p95: "#d97706", p99: "#7c3aed", ok: "#2563eb" };

  function width(el) {
    return Math.max(280, Math.floor((el.clientWidth || el.parentElement?.clientWidth || 600) - 4));
  }

  // Keeps charts as wide as their box when the window changes size.
  const live = new Map();
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const [u, box] of live) {
        if (!box.isConnected) { live.delete(u); continue; }
        u.setSize({ width: width(box), height: u.height });
      }
    }, 100);
  });
  function keep(u, box) { live.set(u, box); return u; }

  // A time chart: `series` = [{label, color, values, fmt}], x = unix ms. `onRange(from, to)` is
  // called when the user drags across the chart.
  ZS.timeChart = function timeChart(box, title, xs, series, opts) {
    const o = opts || {};
    const fmt = o.fmt || ((v) => (v === null || v === undefined ? "—" : v.toFixed(2)));
    const u = new uPlot({
      title,
      width: width(box),
      height: o.height || 180,
      cursor: { sync: { key: o.sync || "zs" }, drag: { x: true, y: false, setScale: false } },
      select: { show: true },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [{}, { values: (u, vals) => vals.map((v) => fmt(v)), size: 64 }],
      series: [{ value: (u, v) => (v === null ? "—" : ZS.fmtTime(v * 1000)) },
        ...series.map((s) => ({ label: s.label, stroke: s.color, width: 1.5, spanGaps: false,
          fill: s.fill ? s.color + "22" : undefined, value: (u, v) => fmt(v),
          // Dots where the line alone would not show (few points, or isolated ones between gaps).
          points: { show: xs.length < 60 || s.values.filter((v) => v !== null && v !== undefined).length < 30 } }))],
      hooks: {
        setSelect: [(u) => {
          if (!o.onRange || u.select.width < 3) return;
          const a = u.posToVal(u.select.left, "x"), b = u.posToVal(u.select.left + u.select.width, "x");
          u.setSelect({ left: 0, width: 0 }, false);
          o.onRange(Math.round(a * 1000), Math.round(b * 1000));
        }],
      },
    }, [xs.map((t) => t / 1000), ...series.map((s) => s.values)], box);
    return keep(u, box);
  };

  // Latency histogram: one bar per non-empty log-scale bucket.
  ZS.histogramChart = function histogramChart(box, buckets) {
    const xs = buckets.map((_, i) => i);
    const labels = buckets.map((b) => "≤ " + ZS.fmtMs(b.to_ms));
    const u = new uPlot({
      title: "Latency distribution",
      width: width(box),
      height: 180,
      cursor: { drag: { x: false, y: false } },
      legend: { show: true },
      scales: { x: { time: false, range: (u, min, max) => [min - 0.5, max + 0.5] }, y: { range: (u, min, max) => [0, max * 1.1 || 1] } },
      // Every label when they fit, else every second or third.
      axes: [{ values: (u, vals) => { const every = Math.ceil(labels.length / Math.max(1, Math.floor(u.width / 70))); return vals.map((v) => (Number.isInteger(v) && v % every === 0 && labels[v]) || ""); }, size: 40 }, { size: 50 }],
      series: [{ label: "bucket", value: (u, v) => (v === null ? "—" : labels[v] || "") },
        { label: "requests", stroke: palette.rate, fill: palette.rate + "66", paths: uPlot.paths.bars({ size: [0.85, 40] }), points: { show: false } }],
    }, [xs, buckets.map((b) => b.count)], box);
    return keep(u, box);
  };

  // Trace durations over time; errors in red. `onPick(index)` gets the trace clicked.
  ZS.scatterChart = function scatterChart(box, rows, onPick) {
    const order = rows.map((_, i) => i).sort((a, b) => rows[a].start_ms - rows[b].start_ms);
    const xs = order.map((i) => rows[i].start_ms / 1000);
    const ok = order.map((i) => (rows[i].error ? null : rows[i].duration_ms));
    const bad = order.map((i) => (rows[i].error ? rows[i].duration_ms : null));
    const dots = { show: true, size: 7, fill: undefined };
    const u = new uPlot({
      title: "Trace duration over time (click a dot)",
      width: width(box),
      height: 200,
      cursor: { drag: { x: false, y: false }, points: { size: 10 } },
      scales: { x: { time: true }, y: { distr: 3 } },
      axes: [{}, { values: (u, vals) => vals.map((v) => ZS.fmtMs(v)), size: 64 }],
      series: [{ value: (u, v) => (v === null ? "—" : ZS.fmtTime(v * 1000)) },
        { label: "ok", stroke: palette.ok, paths: () => null, points: { ...dots, fill: palette.ok }, value: (u, v) => ZS.fmtMs(v) },
        { label: "error", stroke: palette.errors, paths: () => null, points: { ...dots, fill: palette.errors }, value: (u, v) => ZS.fmtMs(v) }],
    }, [xs, ok, bad], box);
    u.over.addEventListener("click", () => {
      const i = u.cursor.idx;
      if (i !== null && i !== undefined) onPick(order[i]);
    });
    return keep(u, box);
  };

  ZS.palette = palette;
})();
