// The run page follows its run live, whatever state it was opened in: points over the websocket into the charts
// (which start drawing with the first points, even on a page opened before launch), status, buttons, summary,
// failure card, planned vs actual and events re-rendered by the server when the run changes, a visible
// "reconnecting" state while the socket is down, and a back-fill of what was stored meanwhile on every reconnect.

// Retries after a dropped socket: quick at first so that a server back after a restart is rejoined within a second
// or two; never slower than RECONNECT_MAX_MS.
const RECONNECT_DELAYS_MS = [100, 250, 500, 1000];
const RECONNECT_MAX_MS = 1000;

function liveRun(runId, charts, hooks = {}) {
  const banner = document.getElementById("alert-banner");
  const conn = document.getElementById("conn");
  const labels = {draft: "Draft", queued: "Queued", launching: "Launching", running: "Running", remediating: "Remediating",
    succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled"};
  let attempts = 0, socket = null, everOpen = false;
  function setStatus(status) {
    const badge = document.getElementById("run-status");
    if (!badge || !status) return false;
    const changed = !badge.classList.contains(status);
    badge.className = "badge " + status;
    badge.textContent = labels[status] || status;
    return changed;
  }
  function setConnection(state) {
    if (!conn) return;
    conn.dataset.state = state;
    conn.className = "conn " + (state === "live" ? "live" : "down");
    conn.textContent = state === "live" ? "live" : state === "reconnecting" ? "reconnecting…" : "connecting…";
    conn.title = state === "live" ? "Following the run live" : "The live connection is down; retrying. What happens meanwhile is read back when it returns.";
  }
  // The line the page's template writes for an alert: the evidence as its JSON text, at most 200 characters.
  function alertText(a) {
    let evidence = a.evidence && Object.keys(a.evidence).length ? JSON.stringify(a.evidence) : "";
    if (evidence.length > 200) evidence = evidence.slice(0, 199) + "\u2026";
    const step = a.step != null ? " at step " + a.step : "";
    return `${a.kind_label || a.kind}${step}: ${a.message}${evidence ? " — " + evidence : ""}${a.resolved_at ? " (resolved)" : ""}`;
  }
  function showAlert(a) {
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
  }
  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = socket = new WebSocket(`${proto}//${location.host}/ws/runs/${runId}/`);
    ws.onopen = async () => {
      attempts = 0;
      setConnection("live");
      // Whatever changed while there was no socket (or before the first one) is read back now.
      const again = everOpen;
      everOpen = true;
      const state = fetchJSON(`/runs/${runId}/state/`);
      state.then((st) => {
        if (setStatus(st.status) || again) hooks.refresh?.();
      }).catch(() => {});
      if (again) hooks.reopened?.();
      // The state carries the series' versions: the catch-up needs no request of its own.
      await charts.catchUp(runId, state.then((st) => st.versions).catch(() => null));
      hooks.progress?.(charts.lastStep.get(runId));
    };
    ws.onmessage = async (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.type === "run.points") {
        await charts.extend(runId, msg.points);
        hooks.progress?.(charts.lastStep.get(runId));
      } else if (msg.type === "run.alert") {
        showAlert(msg.alert);
      } else if (msg.type === "run.log") {
        hooks.log?.(msg);
      } else if (msg.type === "run.status") {
        setStatus(msg.status);
        hooks.refresh?.();
        if (msg.status !== "draft" && !charts.charts.size) charts.load();
      } else if (msg.type === "run.attempt" && msg.state === "pending" && msg.attempt > 1) {
        // A new attempt restarts from its checkpoint: the steps after it are redone, so mark them and read the
        // charts afresh (the stored points after the checkpoint were superseded).
        const last = charts.lastStep.get(runId), from = msg.checkpoint_step ?? 0;
        if (last != null && last > from) charts.replaced.push({lo: from + 1, hi: last, attempt: msg.attempt - 1});
        charts.lastStep.set(runId, from);
        hooks.refresh?.();
        charts.load();
      } else if (typeof msg.type === "string" && msg.type.startsWith("run.")) {
        // Attempts, remediation, failure reasons, events: the server renders the page's panels anew.
        hooks.refresh?.();
      }
    };
    ws.onclose = (ev) => {
      if (ws !== socket) return;
      if (ev.code >= 4400 && ev.code < 4500) { setConnection("refused"); conn && (conn.textContent = "not allowed to follow this run"); return; }
      setConnection("reconnecting");
      const delay = RECONNECT_DELAYS_MS[Math.min(attempts, RECONNECT_DELAYS_MS.length - 1)];
      attempts++;
      setTimeout(connect, Math.min(delay, RECONNECT_MAX_MS));
    };
  }
  setConnection("connecting");
  connect();
  // A laptop waking up or a network coming back: try at once instead of waiting for the next retry.
  window.addEventListener("online", () => { if (socket && socket.readyState === WebSocket.CLOSED) connect(); });
  return {reconnectNow: () => socket && socket.close()};
}

// The server renders the panels ([data-live-panel] with an id) again; the page swaps them in place. One refresh at a
// time, and one more if something changed while it ran.
function panelRefresher() {
  let running = null, again = false;
  async function once() {
    const resp = await fetch(location.pathname, {headers: {Accept: "text/html"}, cache: "no-store"});
    if (!resp.ok) return;
    const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
    for (const fresh of doc.querySelectorAll("[data-live-panel][id]")) {
      const here = document.getElementById(fresh.id);
      if (here && here.innerHTML !== fresh.innerHTML) here.replaceWith(document.importNode(fresh, true));
    }
    const badge = doc.getElementById("run-status"), here = document.getElementById("run-status");
    if (badge && here) { here.className = badge.className; here.textContent = badge.textContent; }
    const root = doc.getElementById("run-page"), page = document.getElementById("run-page");
    if (root && page) for (const k of ["status", "totalSteps", "started", "finished"]) page.dataset[k] = root.dataset[k];
  }
  return async function refresh() {
    if (running) { again = true; return running; }
    running = (async () => {
      try {
        do { again = false; await once(); } while (again);
      } catch (e) { /* offline: the next reconnect refreshes */ } finally { running = null; }
    })();
    return running;
  };
}

function formatLeft(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} days`;
}

(function runPage() {
  const root = document.getElementById("run-page");
  if (!root) return;
  const runId = Number(root.dataset.run);
  const tokensPerStep = Number(root.dataset.tokensPerStep) || null;
  const rendered = document.getElementById("metric-keys");
  const initialKeys = rendered ? {[runId]: JSON.parse(rendered.textContent)} : null;
  const charts = window.charts = new RunCharts(document.getElementById("charts"), [runId], {tokensPerStep, initialKeys});
  charts.alertSteps = JSON.parse(document.getElementById("alert-steps").textContent);
  charts.replaced = JSON.parse(document.getElementById("replaced-ranges")?.textContent || "[]");

  // Step N of total with the time left at the pace kept since the start.
  function progress(step) {
    const total = Number(root.dataset.totalSteps), started = Number(root.dataset.started);
    if (!total || step == null || step < 0) return;
    const done = step + 1, pct = Math.min(100, 100 * done / total);
    const label = document.getElementById("progress-step"), bar = document.getElementById("progress-bar");
    if (label) label.textContent = `Step ${step} of ${total}`;
    if (bar) bar.style.width = pct.toFixed(2) + "%";
    const pctEl = document.getElementById("progress-pct");
    if (pctEl) pctEl.textContent = pct.toFixed(1) + " %";
    const eta = document.getElementById("progress-eta");
    if (eta && started && !Number(root.dataset.finished)) {
      const elapsed = Date.now() / 1000 - started;
      eta.textContent = `· about ${formatLeft(Math.max(0, elapsed * (total - done) / done))} left`;
    }
  }

  // The charts' read first: the server answers requests of one page in turn, and this one is the longest.
  charts.load();
  const refresh = panelRefresher();
  const logs = jobLogs(runId);
  window.runPage = liveRun(runId, charts, {refresh, progress, log: logs.push, reopened: logs.load});

  const xAxis = document.getElementById("x-axis"), smoothing = document.getElementById("smoothing");
  const smoothingValue = document.getElementById("smoothing-value"), logScale = document.getElementById("log-scale");
  if (!tokensPerStep && xAxis) xAxis.querySelector('option[value="tokens"]').disabled = true;
  xAxis?.addEventListener("change", () => charts.setX(xAxis.value));
  let smoothTimer = null;
  smoothing?.addEventListener("input", () => {
    smoothingValue.textContent = Number(smoothing.value).toFixed(2);
    clearTimeout(smoothTimer);
    smoothTimer = setTimeout(() => charts.setSmoothing(Number(smoothing.value)), 120);
  });
  logScale?.addEventListener("change", () => charts.setLog(logScale.checked));

  if (typeof cpShortcut === "function") {
    cpShortcut("l", "Charts: log scale on or off", () => { logScale.checked = !logScale.checked; logScale.dispatchEvent(new Event("change")); });
    cpShortcut("s", "Charts: smoothing off, 0.6, 0.9", () => {
      const steps = [0, 0.6, 0.9], now = Number(smoothing.value);
      smoothing.value = steps[(steps.findIndex((v) => v >= now - 1e-9) + 1) % steps.length] ?? 0;
      smoothing.dispatchEvent(new Event("input"));
    });
    cpShortcut("x", "Charts: x-axis by step, tokens, wall time", () => {
      const options = [...xAxis.options].filter((o) => !o.disabled);
      xAxis.value = options[(options.findIndex((o) => o.value === xAxis.value) + 1) % options.length].value;
      xAxis.dispatchEvent(new Event("change"));
    });
    cpShortcut("c", "Charts: open or close every section", () => {
      const all = [...document.querySelectorAll("details.chart-group")];
      const open = !all.every((d) => d.open);
      all.forEach((d) => { d.open = open; });
    });
    cpShortcut("e", "Events: jump to the run's events", () => document.getElementById("panel-events")?.scrollIntoView());
  }
})();
