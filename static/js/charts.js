// Live metric charts for one run (or several overlaid): history from the series API, new points over the
// websocket with Plotly.extendTraces, min/max envelopes when zoomed out, full resolution when zoomed in.
const CHART_GROUPS = [
  {id: "loss", title: "Loss", match: (k) => k === "loss" || k.startsWith("loss/")},
  {id: "lr", title: "Learning rate", match: (k) => k === "lr"},
  {id: "grad_norm", title: "Grad norm", match: (k) => k === "grad_norm"},
  {id: "tokens_per_s", title: "Tokens/s", match: (k) => k === "tokens_per_s" || k === "samples_per_s"},
  {id: "mfu", title: "MFU", match: (k) => k === "mfu"},
  {id: "mem_gb", title: "Memory (GB)", match: (k) => k === "mem_gb"},
  {id: "expert_load", title: "MoE expert load", match: (k) => k.startsWith("expert_load/")},
  {id: "tokens", title: "Tokens consumed per source", match: (k) => k.startsWith("tokens/")},
];
const MAX_POINTS = 1500;

function groupOf(key) {
  return CHART_GROUPS.find((g) => g.match(key)) || {id: "other:" + key, title: key, match: (k) => k === key};
}

async function fetchJSON(url) {
  const resp = await fetch(url, {headers: {Accept: "application/json"}});
  if (!resp.ok) throw new Error(`${url}: ${resp.status}`);
  return resp.json();
}

function seriesURL(runId, keys, lo, hi) {
  const q = new URLSearchParams({keys: keys.join(","), max_points: MAX_POINTS});
  if (lo != null) q.set("lo", Math.floor(lo));
  if (hi != null) q.set("hi", Math.ceil(hi));
  return `/api/v1/runs/${runId}/series/?${q}`;
}

// Traces for one series: an envelope (max, then min filled up to it) plus the line of last values.
function tracesFor(name, s, color) {
  const nul = (v) => (v == null ? null : v);
  if (s.mode === "envelope") {
    return [
      {x: s.steps, y: s.max.map(nul), mode: "lines", line: {width: 0, color}, hoverinfo: "skip", showlegend: false, name: name + " max"},
      {x: s.steps, y: s.min.map(nul), mode: "lines", line: {width: 0, color}, fill: "tonexty", fillcolor: color + "33", hoverinfo: "skip", showlegend: false, name: name + " min"},
      {x: s.steps, y: s.last.map(nul), mode: "lines", line: {width: 1.5, color}, name},
    ];
  }
  return [{x: s.steps, y: s.values.map(nul), mode: "lines", line: {width: 1.5, color}, name}];
}

const PALETTE = ["#2f5bd3", "#d9480f", "#2b8a3e", "#7048e8", "#c2255c", "#0b7285", "#e67700", "#5c940d", "#495057", "#1971c2"];

class RunCharts {
  constructor(container, runIds, opts = {}) {
    this.container = container;
    this.runIds = runIds;
    this.overlay = runIds.length > 1;
    this.onlyKeys = opts.keys || null;
    this.charts = new Map(); // group id -> {div, keys: [{run, key, lineIndex}], zoomed}
    this.lastStep = new Map(); // run -> last step seen
    this.alertSteps = [];
    this.held = []; // [run, points] that arrived while the charts were being built
    this.loader = null;
  }

  label(run, key) { return this.overlay ? `#${run} ${key}` : key; }

  // Builds the charts from the stored series, one build at a time: points that arrive meanwhile are held and drawn
  // after it (those its read had already are skipped), and a key that still has no chart starts another build.
  // Without this, a build started while another ran (the first points of a new run, keys that appear one by one)
  // left the first build's charts on the page, frozen, beside the second's.
  load() {
    this.loader ||= this.build();
    return this.loader;
  }

  async build() {
    try {
      let again = true;
      for (let builds = 0; again && builds < 3; builds++) {
        again = false;
        await this.loadCharts();
        while (this.held.length && !again) {
          const [runId, points] = this.held.shift();
          again = !this.queue(runId, points);
        }
      }
      this.held = [];
    } finally {
      this.loader = null;
    }
  }

  async loadCharts() {
    this.charts.clear();
    const byGroup = new Map();
    for (const run of this.runIds) {
      const info = await fetchJSON(`/api/v1/runs/${run}/keys/`);
      const keys = (info.keys || []).map((k) => (typeof k === "string" ? k : k.key))
        .filter((k) => !this.onlyKeys || this.onlyKeys.includes(k));
      for (const key of keys) {
        const g = groupOf(key);
        if (!byGroup.has(g.id)) byGroup.set(g.id, {group: g, items: []});
        byGroup.get(g.id).items.push({run, key});
      }
    }
    const order = (id) => { const i = CHART_GROUPS.findIndex((g) => g.id === id); return i < 0 ? 99 : i; };
    const groups = [...byGroup.values()].sort((a, b) => order(a.group.id) - order(b.group.id));
    if (!groups.length) {
      this.container.innerHTML = '<p class="muted" id="no-metrics">No metrics yet. They appear here as the job reports them.</p>';
      return false;
    }
    this.container.innerHTML = "";
    for (const {group, items} of groups) {
      const div = document.createElement("div");
      div.className = "chart";
      div.id = "chart-" + group.id.replace(/[^a-z0-9_-]/gi, "_");
      this.container.appendChild(div);
      this.charts.set(group.id, {div, group, items, zoomed: false});
      await this.draw(group.id);
      div.on("plotly_relayout", (ev) => this.relayout(group.id, ev));
      div.addEventListener("pointerenter", () => this.hover(this.charts.get(group.id), true));
      div.addEventListener("pointerleave", () => this.hover(this.charts.get(group.id), false));
    }
    return true;
  }

  async draw(groupId, lo = null, hi = null) {
    const chart = this.charts.get(groupId);
    if (!chart) return; // the charts are being built again
    chart.pending = null; // queued live points are stored already: the read below has them
    chart.stale = false;
    const traces = [];
    let color = 0;
    for (const item of chart.items) {
      const data = await fetchJSON(seriesURL(item.run, [item.key], lo, hi));
      const s = data.keys[item.key];
      this.lastStep.set(item.run, Math.max(this.lastStep.get(item.run) ?? -1, data.last_step ?? -1));
      const tr = tracesFor(this.label(item.run, item.key), s, PALETTE[color++ % PALETTE.length]);
      item.lineIndex = traces.length + tr.length - 1;
      item.lastX = s.steps.length ? s.steps[s.steps.length - 1] : -Infinity;
      item.mode = s.mode;
      traces.push(...tr);
    }
    const layout = {
      title: {text: chart.group.title, font: {size: 13}}, height: 260, margin: {l: 50, r: 10, t: 30, b: 30},
      xaxis: {title: {text: "step"}, ...(lo != null ? {range: [lo, hi]} : {})},
      showlegend: chart.items.length > 1, legend: {orientation: "h", y: -0.25}, shapes: this.alertShapes(),
    };
    await Plotly.react(chart.div, traces, layout, {displaylogo: false, responsive: true});
    chart.div.dataset.points = String(traces.reduce((n, t) => n + t.x.length, 0));
  }

  async relayout(groupId, ev) {
    const chart = this.charts.get(groupId);
    if (!chart || chart.busy) return;
    chart.busy = true;
    try {
      if (ev["xaxis.autorange"]) {
        chart.zoomed = false;
        await this.draw(groupId);
      } else if (ev["xaxis.range[0]"] != null) {
        chart.zoomed = true;
        await this.draw(groupId, ev["xaxis.range[0]"], ev["xaxis.range[1]"]);
      }
    } finally {
      chart.busy = false;
    }
  }

  alertShapes() {
    return this.alertSteps.map((step) => ({type: "line", x0: step, x1: step, yref: "paper", y0: 0, y1: 1,
      line: {color: "#b42318", width: 1, dash: "dot"}}));
  }

  markAlert(step) {
    if (step == null) return;
    this.alertSteps.push(step);
    for (const chart of this.charts.values()) Plotly.relayout(chart.div, {shapes: this.alertShapes()});
  }

  async extend(runId, points) {
    if (this.loader) {
      this.held.push([runId, points]);
      return;
    }
    if (!this.queue(runId, points)) await this.load();
  }

  // Queues live points for their charts' next frame; false if a key has no chart.
  queue(runId, points) {
    let unknown = false;
    for (const [key, pairs] of Object.entries(points)) {
      if (this.onlyKeys && !this.onlyKeys.includes(key)) continue;
      const g = groupOf(key);
      const chart = this.charts.get(g.id);
      const item = chart && chart.items.find((i) => i.run === runId && i.key === key);
      if (!item) { unknown = true; continue; }
      // A point at or before the line's last one was drawn already (pushed and read back after a reconnect), or
      // came late: the line stays in step order, and the next full read of the chart has every point.
      const fresh = pairs.filter(([x]) => x > (item.lastX ?? -Infinity));
      if (chart.zoomed || !fresh.length) continue;
      const queued = (chart.pending ||= new Map()).get(item) || {x: [], y: []};
      for (const [x, y] of fresh) { queued.x.push(x); queued.y.push(y); }
      item.lastX = fresh[fresh.length - 1][0];
      chart.pending.set(item, queued);
      chart.frame ||= requestAnimationFrame(() => this.flush(chart));
    }
    for (const pairs of Object.values(points)) {
      for (const [step] of pairs) this.lastStep.set(runId, Math.max(this.lastStep.get(runId) ?? -1, step));
    }
    return !unknown;
  }

  // Live points are drawn once per chart and animation frame: a redraw costs milliseconds whatever the number of
  // points, so a page that falls behind (many charts, a busy machine) draws larger batches instead of queueing a
  // redraw per message. A hidden tab draws what it queued when it is shown again.
  flush(chart) {
    const pending = chart.pending;
    chart.pending = chart.frame = null;
    if (!pending || chart.zoomed || this.charts.get(chart.group.id) !== chart) return;
    const items = [...pending.keys()];
    let drawn = null;
    // The line each item's points can be appended to; none while the pointer is on the chart.
    const paths = chart.hovered ? null : items.map((i) => this.appendablePath(chart, i, pending.get(i)));
    if (!paths || paths.includes(null)) {
      this.makeRoom(chart, items.map((i) => pending.get(i)));
      drawn = Plotly.extendTraces(chart.div, {x: items.map((i) => pending.get(i).x), y: items.map((i) => pending.get(i).y)},
        items.map((i) => i.lineIndex));
      chart.stale = false;
    } else {
      items.forEach((i, k) => this.append(chart, i, pending.get(i), paths[k]));
      chart.stale = true;
    }
    chart.div.dataset.points = String(Number(chart.div.dataset.points || 0) + items.reduce((n, i) => n + pending.get(i).x.length, 0));
    Promise.resolve(drawn).then(() => { // bench/freshness.py measures with this hook
      if (typeof window.cpOnDrawn === "function") for (const i of items) window.cpOnDrawn(i.run, i.key, pending.get(i).x);
    });
  }

  // A full Plotly redraw of one chart costs ~15 ms of a browser's CPU here, most of it axes and tick labels that new
  // points rarely change; ten steps a second on a few charts and pages fill a core. So live points that follow the
  // line's last point inside the axes' current ranges are appended to the drawn SVG path itself (~3 ms), and the
  // trace's arrays, so any later redraw (a zoom, an alert marker, a resize) draws them too. Plotly's own redraw runs
  // when a point falls outside the ranges (which then grow with room to spare), comes out of order or is missing,
  // and while the pointer is over the chart, so hover labels always see every point.
  appendablePath(chart, item, queued) {
    const gd = chart.div, full = gd._fullLayout, trace = gd.data && gd.data[item.lineIndex];
    const xa = full && full.xaxis, ya = full && full.yaxis;
    if (!trace || !xa || !ya || xa.type !== "linear" || ya.type !== "linear" || !Array.isArray(trace.x)) return null;
    let prev = trace.x[trace.x.length - 1];
    if (prev == null || !Number.isFinite(trace.y[trace.y.length - 1])) return null;
    const [x0, x1] = xa.range, [y0, y1] = ya.range;
    for (let k = 0; k < queued.x.length; k++) {
      const x = queued.x[k], y = queued.y[k];
      if (!(x > prev && x >= x0 && x <= x1 && Number.isFinite(y) && y >= Math.min(y0, y1) && y <= Math.max(y0, y1))) return null;
      prev = x;
    }
    return this.linePath(chart, item);
  }

  // The SVG path Plotly drew last for the trace (a line broken by gaps is several paths).
  linePath(chart, item) {
    for (const g of chart.div.querySelectorAll(".scatterlayer .trace")) {
      const cd = g.__data__;
      if (cd && cd[0] && cd[0].trace && cd[0].trace.index === item.lineIndex) {
        const paths = g.querySelectorAll("path.js-line");
        return paths.length ? paths[paths.length - 1] : null;
      }
    }
    return null;
  }

  append(chart, item, queued, path) {
    const full = chart.div._fullLayout, trace = chart.div.data[item.lineIndex];
    const px = (v) => Math.round(v * 100) / 100;
    let d = "";
    for (let k = 0; k < queued.x.length; k++) {
      trace.x.push(queued.x[k]);
      trace.y.push(queued.y[k]);
      d += `L${px(full.xaxis.l2p(queued.x[k]))},${px(full.yaxis.l2p(queued.y[k]))}`;
    }
    path.setAttribute("d", path.getAttribute("d") + d);
  }

  // Before a live redraw: axes the new points overflow are widened past them (steps by a fifth of the span, values
  // by a tenth), so the points after them can be appended without a redraw. A reset zoom returns to autorange.
  makeRoom(chart, queued) {
    const gd = chart.div, full = gd._fullLayout;
    if (!full || !full.xaxis || !full.yaxis || full.xaxis.type !== "linear" || full.yaxis.type !== "linear") return;
    const xs = queued.flatMap((q) => q.x), ys = queued.flatMap((q) => q.y).filter(Number.isFinite);
    const grow = (range, values, lead, minPad) => {
      if (!values.length) return null;
      let [lo, hi] = range;
      const vlo = Math.min(...values), vhi = Math.max(...values);
      if (vlo >= lo && vhi <= hi) return null;
      const pad = Math.max(minPad, (Math.max(hi, vhi) - Math.min(lo, vlo)) * lead);
      if (vlo < lo) lo = vlo - pad;
      if (vhi > hi) hi = vhi + pad;
      return [lo, hi];
    };
    const x = grow(full.xaxis.range, xs, 0.2, 10);
    const y = grow(full.yaxis.range, ys, 0.1, 1e-9);
    if (x) gd.layout.xaxis = {...gd.layout.xaxis, range: x, autorange: false};
    if (y) gd.layout.yaxis = {...gd.layout.yaxis, range: y, autorange: false};
  }

  hover(chart, inside) {
    if (!chart) return;
    chart.hovered = inside;
    if (inside && chart.stale && !chart.zoomed) {
      chart.stale = false;
      Plotly.redraw(chart.div);
    }
  }

  // Once the run's socket is open (first or again): points stored after the page read its history and before the
  // socket joined the run's group were never pushed to it, so read what came after the last step drawn.
  async catchUp(runId) {
    await this.loader; // a build under way
    if (this.charts.size) await this.backfill(runId);
  }

  // Fetch what was missed since the last step drawn.
  async backfill(runId) {
    if (!this.charts.size) { await this.load(); return; }
    const since = (this.lastStep.get(runId) ?? -1) + 1;
    for (const chart of this.charts.values()) {
      for (const item of chart.items.filter((i) => i.run === runId)) {
        const data = await fetchJSON(seriesURL(runId, [item.key], since, null));
        const s = data.keys[item.key];
        if (!s || !s.steps.length) continue;
        const ys = s.mode === "envelope" ? s.last : s.values;
        await this.extend(runId, {[item.key]: s.steps.map((x, i) => [x, ys[i]])});
      }
    }
  }
}

function liveRun(runId, charts) {
  let delay = 500;
  const banner = document.getElementById("alert-banner");
  const labels = {draft: "Draft", queued: "Queued", launching: "Launching", running: "Running", remediating: "Remediating",
    succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled"};
  function setStatus(status) {
    const badge = document.getElementById("run-status");
    if (badge && status) { badge.className = "badge " + status; badge.textContent = labels[status] || status; }
  }
  // The line the page's template writes for an alert: the evidence as its JSON text, at most 200 characters.
  function alertText(a) {
    let evidence = a.evidence && Object.keys(a.evidence).length ? JSON.stringify(a.evidence) : "";
    if (evidence.length > 200) evidence = evidence.slice(0, 199) + "\u2026";
    const step = a.step != null ? " at step " + a.step : "";
    return `${a.kind_label || a.kind}${step}: ${a.message}${evidence ? " — " + evidence : ""}${a.resolved_at ? " (resolved)" : ""}`;
  }
  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/ws/runs/${runId}/`);
    ws.onopen = async () => {
      delay = 500;
      // Re-read the status: it may have changed before this socket was open.
      fetchJSON(`/runs/${runId}/state/`).then((st) => setStatus(st.status)).catch(() => {});
      await charts.catchUp(runId);
    };
    ws.onmessage = async (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.type === "run.points") {
        await charts.extend(runId, msg.points);
      } else if (msg.type === "run.alert") {
        const a = msg.alert;
        banner.hidden = false;
        // A resolution comes as the same alert with resolved_at set: it updates the alert's line.
        let li = banner.querySelector(`[data-alert-id="${a.id}"]`);
        if (!li) {
          li = document.createElement("div");
          li.dataset.alertId = a.id;
          banner.appendChild(li);
          charts.markAlert(a.step);
        }
        li.className = "alert " + (a.severity || "warning") + (a.resolved_at ? " resolved" : "");
        li.textContent = alertText(a);
      } else if (msg.type === "run.status") {
        setStatus(msg.status);
        if (["running", "succeeded", "failed", "cancelled"].includes(msg.status) && !charts.charts.size) charts.load();
      }
    };
    ws.onclose = (ev) => {
      if (ev.code >= 4400 && ev.code < 4500) return;
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  }
  connect();
}
