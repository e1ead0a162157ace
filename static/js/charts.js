// Metric charts for one run (or several overlaid): history from the series API (one request per chart group's
// keys, min/max envelopes when zoomed out, full resolution when zoomed in), new points over the websocket.
// Charts are grouped in collapsible sections; a closed section reads nothing until it is opened.
const CHART_GROUPS = [
  {id: "loss", title: "Loss", section: "training", match: (k) => k === "loss" || k.startsWith("loss/")},
  {id: "lr", title: "Learning rate", section: "training", match: (k) => k === "lr"},
  {id: "grad_norm", title: "Grad norm", section: "training", match: (k) => k === "grad_norm"},
  {id: "aux_loss", title: "MoE auxiliary loss", section: "training", match: (k) => k === "aux_loss"},
  {id: "tokens_per_s", title: "Throughput", section: "speed", match: (k) => k === "tokens_per_s" || k === "samples_per_s"},
  {id: "mfu", title: "MFU", section: "speed", match: (k) => k === "mfu"},
  {id: "step_time_s", title: "Step time (s)", section: "speed", match: (k) => k === "step_time_s"},
  {id: "mem_gb", title: "Memory per device (GB)", section: "speed", match: (k) => k === "mem_gb"},
  {id: "expert_load", title: "MoE expert load", section: "data", match: (k) => k.startsWith("expert_load/")},
  {id: "tokens", title: "Tokens consumed per source", section: "data", match: (k) => k === "tokens" || k.startsWith("tokens/")},
  {id: "sys_cpu", title: "CPU (%)", section: "system", match: (k) => k === "sys/cpu_pct"},
  {id: "sys_mem", title: "Host memory (GB)", section: "system", match: (k) => k === "sys/mem_gb"},
  {id: "sys_net", title: "Network (MB/s)", section: "system", match: (k) => k.startsWith("sys/net_")},
  {id: "sys_gpu_util", title: "GPU utilisation (%)", section: "system", match: (k) => /^sys\/gpu\d+\/util_pct$/.test(k)},
  {id: "sys_gpu_mem", title: "GPU memory (GB)", section: "system", match: (k) => /^sys\/gpu\d+\/mem_gb$/.test(k)},
  {id: "sys_gpu_temp", title: "GPU temperature (°C)", section: "system", match: (k) => /^sys\/gpu\d+\/temp_c$/.test(k)},
  {id: "sys_gpu_power", title: "GPU power (W)", section: "system", match: (k) => /^sys\/gpu\d+\/power_w$/.test(k)},
];
const SECTIONS = [
  {id: "training", title: "Training", open: true},
  {id: "speed", title: "Throughput and memory", open: true},
  {id: "data", title: "Data and experts", open: true},
  {id: "system", title: "System", open: true},
  {id: "other", title: "Other metrics", open: true},
];
// Keys that only serve the x-axis, never a chart of their own.
const AXIS_KEYS = new Set(["wall_time"]);
const UNITS = {tokens_per_s: "tokens/s", samples_per_s: "samples/s", "sys/net_rx_mb_s": "MB/s", "sys/net_tx_mb_s": "MB/s"};
const MAX_KEYS_PER_READ = 20;
const OVERLAY_RUNS_PER_READ = 10;
// A section of more charts than this starts closed: a run with hundreds of keys opens quickly.
const OPEN_SECTION_MAX = 16;

function groupOf(key) {
  return CHART_GROUPS.find((g) => g.match(key)) ||
    {id: "other:" + key, title: key, section: key.startsWith("sys/") ? "system" : "other", match: (k) => k === key};
}

// The run page's scripts start reading before plotly.js is evaluated (it comes after them, so that the read and
// the evaluation overlap): drawing waits for it.
function plotlyLoaded() {
  if (window.Plotly || document.readyState !== "loading") return Promise.resolve();
  return new Promise((resolve) => document.addEventListener("DOMContentLoaded", resolve, {once: true}));
}

async function fetchJSON(url) {
  const resp = await fetch(url, {headers: {Accept: "application/json"}});
  if (!resp.ok) throw new Error(`${url}: ${resp.status}`);
  return resp.json();
}

function seriesURL(runId, keys, lo, hi, maxPoints) {
  const q = new URLSearchParams({keys: keys.join(","), max_points: maxPoints});
  if (lo != null) q.set("lo", Math.max(0, Math.floor(lo)));
  if (hi != null) q.set("hi", Math.max(0, Math.ceil(hi)));
  return `/api/v1/runs/${runId}/series/?${q}`;
}

function overlayURL(runIds, keys, lo, hi, maxPoints) {
  const q = new URLSearchParams({runs: runIds.join(","), keys: keys.join(","), max_points: maxPoints});
  if (lo != null) q.set("lo", Math.max(0, Math.floor(lo)));
  if (hi != null) q.set("hi", Math.max(0, Math.ceil(hi)));
  return `/api/v1/series/?${q}`;
}

function chunks(list, size) {
  const out = [];
  for (let i = 0; i < list.length; i += size) out.push(list.slice(i, i + size));
  return out;
}

const PALETTE = ["#2f5bd3", "#d9480f", "#2b8a3e", "#7048e8", "#c2255c", "#0b7285", "#e67700", "#5c940d", "#495057", "#1971c2"];

// Exponential moving average as TensorBoard and W&B draw it (debiased), skipping gaps.
function smooth(values, weight) {
  if (!weight) return values;
  const out = new Array(values.length);
  let last = 0, n = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v == null || !Number.isFinite(v)) { out[i] = null; continue; }
    last = last * weight + (1 - weight) * v;
    n++;
    // Twelve significant digits: a constant series stays exactly constant (autorange would magnify the last bits).
    out[i] = Number((last / (1 - Math.pow(weight, n))).toPrecision(12));
  }
  return out;
}

function themeColors() {
  const css = getComputedStyle(document.documentElement);
  const v = (name, fallback) => (css.getPropertyValue(name) || "").trim() || fallback;
  return {ink: v("--ink", "#1d2330"), line: v("--line", "#e3e6ec"), muted: v("--muted", "#667085")};
}

// Plotly's mode bar without its "send to cloud" and Chart Studio buttons or its logo.
const PLOT_CONFIG = {displaylogo: false, responsive: true, showSendToCloud: false, showEditInChartStudio: false,
  modeBarButtonsToRemove: ["sendDataToCloud", "lasso2d", "select2d"]};

class RunCharts {
  constructor(container, runIds, opts = {}) {
    this.container = container;
    this.runIds = runIds;
    this.overlay = runIds.length > 1;
    this.onlyKeys = opts.keys || null;
    this.tokensPerStep = opts.tokensPerStep || null; // run -> tokens per step, or one number for all
    this.initialKeys = opts.initialKeys || null; // run -> keys the page was rendered with (the first build's)
    this.charts = new Map(); // group id -> {div, group, items: [{run, key, lineIndex, ...}], zoomed}
    this.lastStep = new Map(); // run -> last step seen
    this.alertSteps = [];
    this.replaced = [];
    this.held = []; // [run, points] that arrived while the charts were being built
    this.loader = null;
    this.xMode = "step"; // step | tokens | time
    this.smoothing = 0;
    this.logY = false;
    this.clock = new Map(); // run -> {steps: [], times: []}: wall time of steps, for the time axis
  }

  label(run, key) { return this.overlay ? `#${run} ${key}` : key; }

  // --- x-axis: step, tokens or wall time -------------------------------------------------------------------------
  tokensOf(run) {
    const t = this.tokensPerStep;
    return t == null ? null : (typeof t === "object" ? t[run] : t);
  }

  xOf(run, step) {
    if (this.xMode === "tokens") { const t = this.tokensOf(run); return t ? (step + 1) * t : step; }
    if (this.xMode === "time") {
      const c = this.clock.get(run);
      if (!c || !c.steps.length) return null;
      let lo = 0, hi = c.steps.length - 1;
      if (step <= c.steps[0]) return new Date(c.times[0] * 1000);
      if (step >= c.steps[hi]) return new Date(c.times[hi] * 1000);
      while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (c.steps[mid] <= step) lo = mid; else hi = mid; }
      const f = (step - c.steps[lo]) / (c.steps[hi] - c.steps[lo]);
      return new Date((c.times[lo] + f * (c.times[hi] - c.times[lo])) * 1000);
    }
    return step;
  }

  // The step an x value stands for (zooming reads that range of steps at full resolution).
  stepOf(run, x) {
    if (this.xMode === "tokens") { const t = this.tokensOf(run); return t ? x / t - 1 : x; }
    if (this.xMode === "time") {
      const c = this.clock.get(run), t = (typeof x === "string" ? Date.parse(x) : x) / 1000;
      if (!c || !c.steps.length) return null;
      let i = 0;
      while (i < c.times.length - 1 && c.times[i + 1] <= t) i++;
      return c.steps[i];
    }
    return x;
  }

  axisTitle() {
    return {step: "step", tokens: "tokens", time: "wall time"}[this.xMode];
  }

  async loadClock(run) {
    const data = await fetchJSON(seriesURL(run, ["wall_time"], null, null, 4000));
    const s = data.keys.wall_time;
    const times = s.mode === "envelope" ? s.last : s.values;
    const steps = [], out = [];
    for (let i = 0; i < s.steps.length; i++) if (times[i] != null) { steps.push(s.steps[i]); out.push(times[i]); }
    this.clock.set(run, {steps, times: out});
  }

  async setX(mode) {
    this.xMode = mode;
    if (mode === "time") await Promise.all(this.runIds.map((r) => this.loadClock(r)));
    await this.redrawAll();
  }

  async setSmoothing(weight) { this.smoothing = weight; await this.redrawAll(false); }

  async setLog(on) {
    this.logY = on;
    const type = on ? "log" : "linear";
    for (const chart of this.charts.values()) {
      if (!chart.drawn) continue;
      const update = {"yaxis.type": type, "yaxis.autorange": true};
      if (chart.div.layout.yaxis2) Object.assign(update, {"yaxis2.type": type, "yaxis2.autorange": true});
      await Plotly.relayout(chart.div, update);
    }
  }

  async redrawAll(read = true) {
    this.redrawing = (this.redrawing || 0) + 1;
    try {
      for (const chart of this.charts.values()) {
        if (!chart.drawn) continue;
        if (read || !chart.cache) await this.draw(chart.group.id);
        else await this.render(chart);
      }
    } finally {
      this.redrawing -= 1;
    }
  }

  // --- building the charts ---------------------------------------------------------------------------------------
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
    const byGroup = new Map();
    const initial = this.initialKeys;
    this.initialKeys = null; // a later build (new keys, a new attempt) asks the server
    const infos = initial ? this.runIds.map((run) => ({keys: initial[run] || []}))
      : await Promise.all(this.runIds.map((run) => fetchJSON(`/api/v1/runs/${run}/keys/`)));
    this.runIds.forEach((run, i) => {
      const keys = (infos[i].keys || []).map((k) => (typeof k === "string" ? k : k.key))
        .filter((k) => !AXIS_KEYS.has(k) && (!this.onlyKeys || this.onlyKeys.includes(k)));
      for (const key of keys) {
        const g = groupOf(key);
        if (!byGroup.has(g.id)) byGroup.set(g.id, {group: g, items: []});
        byGroup.get(g.id).items.push({run, key});
      }
    });
    this.charts.clear();
    this.nearWindow?.disconnect(); // the charts it watched are replaced
    const order = (id) => { const i = CHART_GROUPS.findIndex((g) => g.id === id); return i < 0 ? 999 : i; };
    const groups = [...byGroup.values()].sort((a, b) => order(a.group.id) - order(b.group.id) || a.group.id.localeCompare(b.group.id));
    if (!groups.length) {
      this.container.innerHTML = '<p class="muted" id="no-metrics">No metrics yet. They appear here as the job reports them.</p>';
      return false;
    }
    if (this.xMode === "time") await Promise.all(this.runIds.map((r) => this.loadClock(r)));
    const previous = new Map([...this.container.querySelectorAll("details.chart-group")].map((d) => [d.dataset.section, d.open]));
    this.container.innerHTML = "";
    const sections = new Map();
    for (const s of SECTIONS) {
      const members = groups.filter((g) => g.group.section === s.id);
      if (!members.length) continue;
      const details = document.createElement("details");
      details.className = "chart-group";
      details.dataset.section = s.id;
      details.id = "section-" + s.id;
      details.open = previous.has(s.id) ? previous.get(s.id) : s.open && members.length <= OPEN_SECTION_MAX;
      details.innerHTML = `<summary>${s.title} <span class="muted">(${members.length})</span></summary><div class="charts"></div>`;
      this.container.appendChild(details);
      sections.set(s.id, details);
      // Setting `open` above queues a toggle event too: the charts the build reads are skipped by drawSection.
      details.addEventListener("toggle", () => { if (details.open) this.drawSection(s.id); });
    }
    for (const {group, items} of groups) {
      const details = sections.get(group.section);
      const box = document.createElement("div");
      box.className = "chart-box";
      const div = document.createElement("div");
      div.className = "chart";
      div.id = "chart-" + group.id.replace(/[^a-z0-9_-]/gi, "_");
      box.appendChild(div);
      box.appendChild(this.exportLinks(group, items));
      details.querySelector(".charts").appendChild(box);
      this.charts.set(group.id, {div, group, items, zoomed: false, drawn: false});
    }
    const open = [...this.charts.values()].filter((c) => sections.get(c.group.section).open);
    await this.drawCharts(open);
    return true;
  }

  exportLinks(group, items) {
    const p = document.createElement("div");
    p.className = "chart-export muted";
    const runs = [...new Set(items.map((i) => i.run))];
    p.append("Export ");
    for (const run of runs) {
      const keys = items.filter((i) => i.run === run).map((i) => i.key).slice(0, MAX_KEYS_PER_READ).join(",");
      for (const format of ["csv", "json"]) {
        const a = document.createElement("a");
        a.href = `/api/v1/runs/${run}/export/?keys=${encodeURIComponent(keys)}&format=${format}`;
        a.textContent = (runs.length > 1 ? `#${run} ` : "") + format.toUpperCase();
        a.setAttribute("download", "");
        a.className = "export-" + format;
        p.append(a, " ");
      }
    }
    return p;
  }

  async drawSection(sectionId) {
    await this.drawCharts([...this.charts.values()].filter((c) => c.group.section === sectionId && !c.drawn && !c.reading));
  }

  // Charts of an open section are read and drawn at once, unless the section holds more than OPEN_SECTION_MAX (a run
  // of hundreds of keys): those are read and drawn as they come near the window, a few reads for what is in view,
  // where all of them took seconds of Plotly's time before the first screenful was usable.
  async drawCharts(list) {
    const count = new Map();
    for (const c of this.charts.values()) count.set(c.group.section, (count.get(c.group.section) || 0) + 1);
    const lazy = list.filter((c) => count.get(c.group.section) > OPEN_SECTION_MAX);
    if (lazy.length) {
      if (!this.nearWindow) {
        this.nearWindow = new IntersectionObserver((entries) => this.cameNear(entries), {rootMargin: "400px 0px"});
      }
      for (const chart of lazy) this.nearWindow.observe(chart.div);
    }
    await this.readAndDraw(list.filter((c) => !lazy.includes(c)));
  }

  async cameNear(entries) {
    const byDiv = new Map([...this.charts.values()].map((c) => [c.div, c]));
    const list = [];
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      this.nearWindow.unobserve(entry.target);
      const chart = byDiv.get(entry.target);
      if (chart && !chart.drawn && !chart.reading) list.push(chart);
    }
    await this.readAndDraw(list);
  }

  pointsFor(chart) {
    // About one bucket per horizontal pixel: more is not drawn, and each costs transfer and Plotly's time.
    return Math.max(200, Math.min(1500, Math.round(chart.div.clientWidth || 600)));
  }

  // Reads every chart's series with as few requests as the API allows, then draws each chart.
  async readAndDraw(list, lo = null, hi = null) {
    if (!list.length) return;
    const maxPoints = this.pointsFor(list[0]);
    const wanted = new Map(); // run -> keys
    for (const chart of list) for (const item of chart.items) {
      if (!wanted.has(item.run)) wanted.set(item.run, []);
      wanted.get(item.run).push(item.key);
    }
    const results = new Map(); // `${run} ${key}` -> series
    // Live points that arrive while the read is under way are kept: those the read was answered without (stored
    // after the server read) are drawn again after it.
    const live = new Map(list.map((chart) => [chart, new Map()]));
    for (const [chart, kept] of live) (chart.live ||= new Set()).add(kept);
    for (const chart of list) chart.reading = (chart.reading || 0) + 1;
    const reads = [];
    const answered = (run, data) => {
      this.lastStep.set(run, Math.max(this.lastStep.get(run) ?? -1, data.last_step ?? -1));
      for (const [key, s] of Object.entries(data.keys)) if (wanted.get(run).includes(key)) results.set(`${run} ${key}`, s);
    };
    if (wanted.size > 1) {
      // Overlaid runs: their keys read together, several runs a request (one round trip, where a request per run
      // queued behind each other in the server).
      const keys = [...new Set([...wanted.values()].flat())];
      for (const runs of chunks([...wanted.keys()], OVERLAY_RUNS_PER_READ)) {
        for (const part of chunks(keys, MAX_KEYS_PER_READ)) {
          reads.push(fetchJSON(overlayURL(runs, part, lo, hi, maxPoints)).then((data) => {
            for (const run of runs) answered(run, data.runs[String(run)]);
          }));
        }
      }
    } else {
      for (const [run, keys] of wanted) {
        for (const part of chunks(keys, MAX_KEYS_PER_READ)) {
          reads.push(fetchJSON(seriesURL(run, part, lo, hi, maxPoints)).then((data) => answered(run, data)));
        }
      }
    }
    const done = {value: false};
    const framing = this.frame(list, done);
    try {
      await Promise.all(reads);
      done.value = true;
      await framing;
      for (const chart of list) {
        if (this.charts.get(chart.group.id) !== chart) continue; // rebuilt meanwhile
        chart.cache = chart.items.map((item) => results.get(`${item.run} ${item.key}`));
        chart.range = lo != null ? [lo, hi] : null;
        chart.live.delete(live.get(chart));
        await this.render(chart);
        this.replay(chart, live.get(chart));
      }
    } finally {
      for (const [chart, kept] of live) chart.live.delete(kept);
      for (const chart of list) chart.reading -= 1;
    }
  }

  // Live points kept during a read, after the read's line: queued again, the ones the read had are skipped.
  replay(chart, live) {
    if (!live || !live.size) return;
    const byRun = new Map();
    for (const item of chart.items) {
      const pairs = live.get(`${item.run} ${item.key}`);
      if (!pairs) continue;
      if (!byRun.has(item.run)) byRun.set(item.run, {});
      byRun.get(item.run)[item.key] = pairs;
    }
    for (const [run, points] of byRun) this.queue(run, points);
  }

  async draw(groupId, lo = null, hi = null) {
    const chart = this.charts.get(groupId);
    if (!chart) return; // the charts are being built again
    await this.readAndDraw([chart], lo, hi);
  }

  // Traces for one series: an envelope (the band from min to max, one filled shape per run of buckets that have
  // both) plus the line of last values. One trace for the band, where a max line filled down to a min line took
  // two: Plotly's time grows with traces, and an overlay of 8 runs draws 16 instead of 24 per chart.
  tracesFor(item, s, color, yaxis) {
    const name = this.label(item.run, item.key);
    const nul = (v) => (v == null ? null : v);
    const x = s.steps.map((step) => this.xOf(item.run, step));
    const common = {x, mode: "lines", yaxis};
    if (s.mode === "envelope") {
      const bx = [], by = [];
      for (let a = 0; a < x.length;) {
        if (s.min[a] == null || s.max[a] == null) { a++; continue; }
        let b = a;
        while (b + 1 < x.length && s.min[b + 1] != null && s.max[b + 1] != null) b++;
        for (let i = a; i <= b; i++) { bx.push(x[i]); by.push(s.max[i]); }
        for (let i = b; i >= a; i--) { bx.push(x[i]); by.push(s.min[i]); }
        bx.push(null); by.push(null); // the shapes' gaps: "toself" closes each shape on its own
        a = b + 1;
      }
      return [
        {x: bx, y: by, mode: "lines", yaxis, line: {width: 0, color}, fill: "toself", fillcolor: color + "33", hoverinfo: "skip", showlegend: false, name: name + " range"},
        {...common, y: smooth(s.last.map(nul), this.smoothing), line: {width: 1.5, color}, name},
      ];
    }
    return [{...common, y: smooth(s.values.map(nul), this.smoothing), line: {width: 1.5, color}, name}];
  }

  // Draws the chart from its cache: the last read plus the live points accepted since (queue() adds them to it).
  async render(chart) {
    if (!window.Plotly) await plotlyLoaded();
    chart.pending = null; // queued live points are in the cache
    chart.stale = false;
    const traces = [];
    const units = [...new Set(chart.items.map((i) => UNITS[i.key] || ""))];
    let color = 0;
    chart.items.forEach((item, n) => {
      const s = chart.cache[n] || {mode: "full", steps: [], values: []};
      const axis = units.length > 1 && units.indexOf(UNITS[item.key] || "") > 0 ? "y2" : "y";
      const tr = this.tracesFor(item, s, PALETTE[color++ % PALETTE.length], axis);
      item.lineIndex = traces.length + tr.length - 1;
      item.lastX = s.steps.length ? s.steps[s.steps.length - 1] : -Infinity;
      const ys = s.mode === "envelope" ? s.last : s.values;
      item.smoothState = this.smoothing ? {y: tr[tr.length - 1].y[tr[tr.length - 1].y.length - 1], n: ys.length} : null;
      item.mode = s.mode;
      traces.push(...tr);
    });
    await Plotly.react(chart.div, traces, this.layoutOf(chart), PLOT_CONFIG);
    chart.div.dataset.points = String(traces.reduce((n, t) => n + t.x.length, 0));
    if (!chart.drawn) {
      chart.drawn = true;
      chart.div.on("plotly_relayout", (ev) => this.relayout(chart.group.id, ev));
      chart.div.addEventListener("pointerenter", () => this.hover(this.charts.get(chart.group.id), true));
      chart.div.addEventListener("pointerleave", () => this.hover(this.charts.get(chart.group.id), false));
    }
  }

  // While the server answers a chart's first read: its frame (axes, title, mode bar) drawn without traces, so that
  // drawing the answer costs only what the data changes, and Plotly's code is warm by then. Stops when the answer
  // has come (`done`): the charts not framed yet are drawn whole.
  async frame(list, done) {
    await plotlyLoaded();
    for (const chart of list) {
      if (done.value) return;
      if (chart.drawn || chart.framed || this.charts.get(chart.group.id) !== chart) continue;
      chart.framed = true;
      await Plotly.newPlot(chart.div, [], this.layoutOf(chart), PLOT_CONFIG);
      await new Promise((resolve) => setTimeout(resolve)); // the answer's handler may run between two frames
    }
  }

  layoutOf(chart) {
    const units = [...new Set(chart.items.map((i) => UNITS[i.key] || ""))];
    const theme = themeColors();
    const axis = {gridcolor: theme.line, zerolinecolor: theme.line, linecolor: theme.line};
    const [lo, hi] = chart.range || [null, null];
    const first = chart.items[0];
    const xRange = lo != null ? [this.xOf(first.run, lo), this.xOf(first.run, hi)] : null;
    const layout = {
      title: {text: chart.group.title, font: {size: 13}}, height: chart.items.length > 1 ? 290 : 260,
      margin: {l: 55, r: units.length > 1 ? 55 : 10, t: 30, b: chart.items.length > 1 ? 70 : 40},
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: {color: theme.ink},
      xaxis: {...axis, title: {text: this.axisTitle()}, type: this.xMode === "time" ? "date" : "linear", ...(xRange ? {range: xRange} : {})},
      yaxis: {...axis, type: this.logY ? "log" : "linear", title: {text: units.length > 1 ? units[0] : ""}},
      showlegend: chart.items.length > 1, legend: {orientation: "h", y: -0.3, yanchor: "top"}, shapes: this.alertShapes(first && first.run),
    };
    if (units.length > 1) {
      layout.yaxis2 = {...axis, overlaying: "y", side: "right", type: this.logY ? "log" : "linear", title: {text: units.slice(1).join(", ")}, showgrid: false};
    }
    return layout;
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
        const run = chart.items[0].run;
        const lo = this.stepOf(run, ev["xaxis.range[0]"]), hi = this.stepOf(run, ev["xaxis.range[1]"]);
        if (lo != null && hi != null) await this.draw(groupId, lo, hi);
      }
    } finally {
      chart.busy = false;
    }
  }

  alertShapes(run) {
    const lines = this.alertSteps.map((step) => ({type: "line", x0: this.xOf(run, step), x1: this.xOf(run, step), yref: "paper", y0: 0, y1: 1,
      line: {color: "#b42318", width: 1, dash: "dot"}}));
    // Steps an attempt logged and a later attempt redid: the curve shows the later attempt's points, the band marks them.
    const bands = (this.replaced || []).map((r) => ({type: "rect", x0: this.xOf(run, r.lo), x1: this.xOf(run, r.hi), yref: "paper",
      y0: 0, y1: 1, fillcolor: "#f79009", opacity: 0.12, line: {width: 0}, name: `redone after attempt ${r.attempt}`}));
    return [...bands, ...lines];
  }

  markAlert(step) {
    if (step == null) return;
    this.alertSteps.push(step);
    for (const chart of this.charts.values()) {
      if (chart.drawn) Plotly.relayout(chart.div, {shapes: this.alertShapes(chart.items[0].run)});
    }
  }

  // --- live points -----------------------------------------------------------------------------------------------
  async extend(runId, points) {
    if (points.wall_time) {
      const c = this.clock.get(runId);
      if (c) for (const [s, t] of points.wall_time) if (!c.steps.length || s > c.steps[c.steps.length - 1]) { c.steps.push(s); c.times.push(t); }
    }
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
      if (AXIS_KEYS.has(key) || (this.onlyKeys && !this.onlyKeys.includes(key))) continue;
      const g = groupOf(key);
      const chart = this.charts.get(g.id);
      const item = chart && chart.items.find((i) => i.run === runId && i.key === key);
      if (!item) { unknown = true; continue; }
      for (const kept of chart.live || []) { // reads under way
        const id = `${runId} ${key}`;
        kept.set(id, [...(kept.get(id) || []), ...pairs]);
      }
      // A point at or before the line's last one was drawn already (pushed, then read), or came late: the line stays
      // in step order, and the next read of the chart (every reconnect reads them all) has every point.
      const fresh = pairs.filter(([x]) => x > (item.lastX ?? -Infinity));
      if (chart.zoomed || !chart.drawn || !fresh.length) continue;
      const queued = (chart.pending ||= new Map()).get(item) || {x: [], y: [], steps: []};
      for (const [x, y] of fresh) {
        let shown = y;
        if (this.smoothing && y != null && Number.isFinite(y)) { // the EMA continues from the drawn line's end
          const st = item.smoothState || {y: null, n: 0};
          const w = this.smoothing, raw = st.raw ?? (st.y ?? y);
          const next = raw * w + (1 - w) * y;
          st.raw = next; st.n += 1; st.y = next;
          item.smoothState = st;
          shown = next;
        }
        queued.x.push(this.xOf(runId, x)); queued.y.push(shown); queued.steps.push(x);
      }
      item.lastX = fresh[fresh.length - 1][0];
      chart.pending.set(item, queued);
      this.cacheAppend(chart, item, fresh);
      chart.frame ||= requestAnimationFrame(() => this.flush(chart));
    }
    for (const pairs of Object.values(points)) {
      for (const [step] of pairs) this.lastStep.set(runId, Math.max(this.lastStep.get(runId) ?? -1, step));
    }
    return !unknown;
  }

  // The cache a chart is drawn from again (smoothing, x-axis) keeps the live points too.
  cacheAppend(chart, item, pairs) {
    const s = chart.cache && chart.cache[chart.items.indexOf(item)];
    if (!s) return;
    for (const [step, y] of pairs) {
      s.steps.push(step);
      if (s.mode === "envelope") { s.last.push(y); s.min.push(y); s.max.push(y); } else s.values.push(y);
    }
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
      if (typeof window.cpOnDrawn === "function") for (const i of items) window.cpOnDrawn(i.run, i.key, pending.get(i).steps);
    });
  }

  // A full Plotly redraw of one chart spends most of its CPU on axes and tick labels that new points rarely change;
  // ten steps a second on a few charts and pages fill a core (bench/README.md, freshness). So live points that follow
  // the line's last point inside the axes' current ranges are appended to the drawn SVG path itself, and the
  // trace's arrays, so any later redraw (a zoom, an alert marker, a resize) draws them too. Plotly's own redraw runs
  // when a point falls outside the ranges (which then grow with room to spare), comes out of order or is missing,
  // and while the pointer is over the chart, so hover labels always see every point.
  appendablePath(chart, item, queued) {
    const gd = chart.div, full = gd._fullLayout, trace = gd.data && gd.data[item.lineIndex];
    const xa = full && full.xaxis, ya = full && (trace && trace.yaxis === "y2" ? full.yaxis2 : full.yaxis);
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
    const ya = trace.yaxis === "y2" ? full.yaxis2 : full.yaxis;
    const px = (v) => Math.round(v * 100) / 100;
    let d = "";
    for (let k = 0; k < queued.x.length; k++) {
      trace.x.push(queued.x[k]);
      trace.y.push(queued.y[k]);
      d += `L${px(full.xaxis.l2p(queued.x[k]))},${px(ya.l2p(queued.y[k]))}`;
    }
    path.setAttribute("d", path.getAttribute("d") + d);
  }

  // Before a live redraw: axes the new points overflow are widened past them (steps by a fifth of the span, values
  // by a tenth), so the points after them can be appended without a redraw. A reset zoom returns to autorange.
  makeRoom(chart, queued) {
    const gd = chart.div, full = gd._fullLayout;
    if (!full || !full.xaxis || !full.yaxis || full.xaxis.type !== "linear" || full.yaxis.type !== "linear" || full.yaxis2) return;
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

  // Once the run's socket is open (first or again): points stored after the page read its charts and before the
  // socket joined the run's group were never pushed to it. Every write bumps its series' version, and each read
  // says the version it holds every point of: the charts with a series written since are read again in full (a
  // read from the last step drawn would miss what a push that overtook it, the first after a reconnect while the
  // reporter was still sending its backlog, made look drawn already). The page's first reads need not wait for the
  // socket, and cost no second read when nothing was written meanwhile.
  // `known`: the series' versions ({key: version}) read after the socket opened, if the caller has them.
  async catchUp(runId, known = null) {
    await this.loader; // a build under way
    if (!this.charts.size) { await this.load(); return; }
    const given = await known;
    const versions = given ? new Map(Object.entries(given))
      : new Map(((await fetchJSON(`/api/v1/runs/${runId}/keys/`)).keys || []).map((k) => [k.key, k.version]));
    if (this.hasNewKeys(runId, versions)) { await this.load(); return; }
    const list = [...this.charts.values()].filter((c) => c.drawn && !c.zoomed &&
      c.items.some((item, n) => item.run === runId && versions.get(item.key) !== c.cache?.[n]?.version));
    if (!list.length) return;
    if (this.xMode === "time") await this.loadClock(runId);
    await this.readAndDraw(list);
  }

  hasNewKeys(runId, versions) {
    const have = new Set([...this.charts.values()].flatMap((c) => c.items.filter((i) => i.run === runId).map((i) => i.key)));
    return [...versions.keys()].some((k) => !AXIS_KEYS.has(k) && (!this.onlyKeys || this.onlyKeys.includes(k)) && !have.has(k));
  }

  // Dark mode follows the system setting: charts take the page's colours again when it changes.
  retheme() {
    const theme = themeColors();
    for (const chart of this.charts.values()) {
      if (!chart.drawn) continue;
      Plotly.relayout(chart.div, {"font.color": theme.ink, "xaxis.gridcolor": theme.line, "yaxis.gridcolor": theme.line});
    }
  }
}

window.matchMedia?.("(prefers-color-scheme: dark)").addEventListener?.("change", () => {
  if (window.charts instanceof RunCharts) window.charts.retheme();
});
