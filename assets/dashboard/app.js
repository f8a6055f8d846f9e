// The node dashboard: polls /dashboard/data once a step and draws the last five minutes with
// uPlot. Every figure comes from the node; the page computes nothing but units.
"use strict";

(() => {
  const WINDOW = 300;
  const RETRY_MS = 2000;
  const PALETTE = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04",
    "#db2777", "#4b5563", "#65a30d"];

  // What the page has done, for a person at the console and for the browser test.
  const state = { polls: 0, points: 0, draws: 0, errors: [], status: "connecting" };
  window.triggersDashboard = state;
  // A copy of one column the charts draw, e.g. "rate.committed" or "ms.ingest.p99".
  state.series = (key) => cols?.series.get(key)?.slice() ?? [];
  document.addEventListener("securitypolicyviolation", (e) => {
    state.errors.push(`blocked by the page's policy: ${e.violatedDirective}`);
  });

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs = {}, text) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };

  const count = (v) => v == null ? "–" : Math.round(v).toLocaleString("en-US");
  const rate = (v) => v == null ? "–" : v < 10 && v > 0 ? v.toFixed(1) : count(v);
  const ms = (v) => v == null ? "–"
    : v < 1 ? v.toFixed(3) : v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : count(v);
  const duration = (s) => {
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${Math.floor(s % 60)}s`
      : `${Math.floor(s)}s`;
  };

  // The columns the charts draw: x (Unix seconds), then named series, as uPlot wants them.
  let cols = null;
  const fresh = () => ({ t: [], x: [], series: new Map() });
  const column = (name) => {
    if (!cols.series.has(name)) cols.series.set(name, new Array(cols.x.length).fill(null));
    return cols.series.get(name);
  };

  // Appends the server's columnar points: rates per second, latencies in ms, levels.
  function append(points) {
    const n = points.t.length;
    if (n === 0) return;
    const before = cols.x.length;
    cols.t.push(...points.t);
    cols.x.push(...points.unix_s);
    const put = (name, values, scale = 1) => {
      const c = column(name);
      c.length = before;
      c.push(...values.map((v) => v == null ? null : v / scale));
    };
    for (const [name, values] of Object.entries(points.rates)) put(`rate.${name}`, values);
    for (const [name, qs] of Object.entries(points.latency_us)) {
      for (const [q, values] of Object.entries(qs)) {
        if (q !== "count") put(`ms.${name}.${q}`, values, 1000);
      }
    }
    for (const [name, values] of Object.entries(points.levels)) put(`level.${name}`, values);
    for (const c of cols.series.values()) while (c.length < cols.x.length) c.push(null);
    const extra = cols.x.length - WINDOW;
    if (extra > 0) {
      cols.t.splice(0, extra);
      cols.x.splice(0, extra);
      for (const c of cols.series.values()) c.splice(0, extra);
    }
    state.points = cols.x.length;
  }

  const latency = (name, what) => [
    { label: `${what} p50`, key: `ms.${name}.p50` },
    { label: "p90", key: `ms.${name}.p90` },
    { label: "p99", key: `ms.${name}.p99` },
    { label: "p99.9", key: `ms.${name}.p99_9` },
    { label: "max", key: `ms.${name}.max` },
  ];

  // The charts: title, what it shows, unit, log scale or not, series.
  const CHARTS = [
    {
      id: "throughput", title: "Requests and events", unit: "/s", fmt: rate,
      note: "per second: requests answered, events accepted (2xx) and committed, and refusals",
      series: [
        { label: "requests", key: "rate.requests" },
        { label: "accepted", key: "rate.accepted" },
        { label: "committed", key: "rate.committed" },
        { label: "duplicates", key: "rate.duplicates" },
        { label: "rejected 4xx", key: "rate.rejected" },
        { label: "503 overloaded", key: "rate.overloaded" },
        { label: "503 storage", key: "rate.storage_unavailable" },
      ],
    },
    {
      id: "ingest", title: "Ingest latency", unit: " ms", fmt: ms, log: true,
      note: "POST /api/events, request read to response written, each second's own percentiles",
      series: latency("ingest", "ingest"),
    },
    {
      id: "queue_wait", title: "Queue wait", unit: " ms", fmt: ms, log: true,
      note: "an event's time in its core's ring before a persister takes it",
      series: latency("queue_wait", "wait"),
    },
    {
      id: "commit", title: "Commit", unit: " ms", fmt: ms, log: true,
      note: "one batch, COPY through COMMIT",
      series: latency("commit", "commit"),
    },
    {
      id: "batches", title: "Batches", unit: "/s", fmt: rate,
      note: "batches committed per second, and batches retried after a lost connection",
      series: [
        { label: "committed", key: "rate.batches" },
        { label: "retried", key: "rate.batch_retries" },
      ],
    },
    {
      id: "queues", title: "Queue depth per core", unit: "", fmt: rate,
      note: "events waiting in each core's ring, as sampled",
      series: (node) => node.cores.map(({ core }) =>
        ({ label: `core ${core}`, key: `level.queue_depth/${core}` })),
    },
    {
      id: "delivery", title: "Webhook delivery", unit: "", fmt: rate,
      note: "attempts per second by outcome, and deliveries waiting",
      series: [
        { label: "delivered/s", key: "rate.delivered" },
        { label: "retrying/s", key: "rate.retrying" },
        { label: "failed/s", key: "rate.failed" },
        { label: "backlog", key: "level.delivery_backlog" },
        { label: "in memory", key: "level.delivery_in_memory" },
      ],
    },
    {
      id: "delivery_latency", title: "Delivery latency", unit: " ms", fmt: ms, log: true,
      note: "event created to delivered",
      series: latency("delivery_end_to_end", "delivered"),
    },
  ];

  const plots = [];

  // Axis labels: three significant digits, no trailing zeros.
  const tick = (v) => v == null ? "" : v >= 1000 ? count(v) : String(+v.toPrecision(3));
  const clock = (s) => new Date(s * 1000).toLocaleTimeString([], { hour12: false });

  function build(node) {
    const host = $("charts");
    host.replaceChildren();
    plots.length = 0;
    // Every card first, so that the grid has its columns when each plot measures its card.
    const cards = CHARTS.map((chart) => {
      const card = el("div", { class: "chart", id: `chart-${chart.id}` });
      card.append(el("h2", {}, chart.title), el("p", {}, chart.note));
      host.append(card);
      return card;
    });
    CHARTS.forEach((chart, c) => {
      const card = cards[c];
      const series = typeof chart.series === "function" ? chart.series(node) : chart.series;
      const y = chart.log
        ? { distr: 3, log: 10, range: (u, lo, hi) => lo == null ? [0.1, 10] : uPlot.rangeLog(lo, hi, 10, true) }
        : { range: (u, lo, hi) => [0, hi == null || hi <= 0 ? 1 : hi * 1.15] };
      const opts = {
        width: width(card),
        height: 220,
        cursor: { sync: { key: "triggers" } },
        scales: { x: { time: true }, y },
        axes: [
          {
            stroke: "#6b7280", grid: { stroke: "#f0f1f3" }, ticks: { stroke: "#e5e7eb" }, space: 70,
            incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300],
            values: (u, splits) => splits.map(clock),
          },
          {
            stroke: "#6b7280", grid: { stroke: "#f0f1f3" }, ticks: { stroke: "#e5e7eb" }, size: 70,
            values: (u, splits) => splits.map((v) => v == null ? "" : tick(v) + chart.unit),
          },
        ],
        series: [
          { value: (u, v) => v == null ? "–" : clock(v) },
          ...series.map((s, i) => ({
            label: s.label,
            stroke: PALETTE[i % PALETTE.length],
            width: 1.5,
            points: { show: false },
            value: (u, v) => v == null ? "–" : chart.fmt(v) + chart.unit,
          })),
        ],
      };
      const keys = series.map((s) => s.key);
      const plot = new uPlot(opts, [[], ...keys.map(() => [])], card);
      plots.push({ plot, keys, card });
    });
  }

  const width = (card) => Math.max(300, card.clientWidth - 24);

  function draw() {
    for (const { plot, keys } of plots) {
      plot.setData([cols.x, ...keys.map((k) => cols.series.get(k) ?? cols.x.map(() => null))]);
      // Off the chart, the legend shows the latest second.
      if (plot.cursor.left < 0 && cols.x.length) plot.setLegend({ idx: cols.x.length - 1 });
    }
    state.draws += 1;
  }

  function tile(title, value, detail, tone) {
    const t = el("div", { class: "tile" });
    if (tone) t.dataset.tone = tone;
    t.append(el("h2", {}, title), el("p", {}, value));
    if (detail) t.append(el("small", {}, detail));
    return t;
  }

  function tiles(node, uptime) {
    const last = (key) => {
      const c = cols.series.get(key);
      return c && c.length ? c[c.length - 1] : null;
    };
    const p = node.persisters, pg = node.embedded_postgres, hooks = node.webhook_delivery;
    const refused = (last("rate.overloaded") ?? 0) + (last("rate.storage_unavailable") ?? 0);
    $("tiles").replaceChildren(
      tile("Requests", `${rate(last("rate.requests"))}/s`, `${count(node.requests)} since start`),
      tile("Events committed", `${rate(last("rate.committed"))}/s`,
        `${count(node.events.committed)} since start`),
      tile("Ingest p99", `${ms(last("ms.ingest.p99"))} ms`,
        `p50 ${ms(last("ms.ingest.p50"))} · max ${ms(last("ms.ingest.max"))}`),
      tile("Refused 503", `${rate(refused)}/s`,
        `${count(node.events.overloaded + node.events.storage_unavailable)} since start`,
        refused > 0 ? "warn" : undefined),
      tile("Queued", count(node.queue_depth), `of ${count(node.queue_capacity)} slots`,
        node.queue_depth > node.queue_capacity / 2 ? "warn" : undefined),
      tile("Persisters", `${p.connected} of ${p.running}`, "connected",
        p.connected < p.running ? "bad" : undefined),
      tile("Storage", pg.lost ? "lost" : "ok",
        `${node.ack_mode} acks · ${count(pg.restarts)} restarts`,
        pg.lost ? "bad" : undefined),
      tile("Webhook backlog", count(hooks.backlog), `${count(hooks.backlog_paused)} paused`),
      tile("Uptime", duration(uptime), `${node.cores.length} cores`),
    );
  }

  function show(status, text) {
    state.status = status;
    const s = $("status");
    s.dataset.state = status;
    s.textContent = text;
  }

  function problem(text) {
    const p = $("problem");
    p.hidden = !text;
    p.textContent = text ?? "";
    if (text) state.errors.push(text);
  }

  let step = 1000;

  async function poll() {
    let wait = step;
    try {
      const since = cols && cols.t.length ? `?since=${cols.t[cols.t.length - 1]}` : "";
      const resp = await fetch(`/dashboard/data${since}`, { cache: "no-store" });
      if (resp.status === 401) {
        show("refused", "admin token needed");
        problem("This node needs its admin token: reload the page and give it as the password.");
        return;
      }
      const body = await resp.json();
      if (!resp.ok) throw new Error(`${resp.status} ${body.code ?? ""}: ${body.error ?? ""}`);
      state.polls += 1;
      step = body.step_s * 1000;
      wait = step;
      const restarted = cols && cols.t.length && body.uptime_s < cols.t[cols.t.length - 1];
      if (!cols || restarted) {
        cols = fresh();
        append(body.points);
        build(body.node);
      } else {
        append(body.points);
      }
      draw();
      tiles(body.node, body.uptime_s);
      problem(null);
      show("live", `live · ${new Date().toLocaleTimeString()}`);
    } catch (e) {
      wait = RETRY_MS;
      show("stale", "cannot reach the node");
      problem(`The last update failed (${e.message}); retrying every ${RETRY_MS / 1000} s.`);
    } finally {
      if (state.status !== "refused") setTimeout(poll, wait);
    }
  }

  window.addEventListener("resize", () => {
    for (const { plot, card } of plots) plot.setSize({ width: width(card), height: 220 });
  });

  poll();
})();
