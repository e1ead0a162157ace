// Checkpoints page: quantize progress and benchmark status arrive over the run's websocket.
// Deployment page: status over the run's websocket; the playground streams tokens over its own websocket.
function wsUrl(path) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}${path}`;
}

function reconnecting(path, onMessage) {
  cpSocket(path, {onMessage});  // app.js: quick retries after a drop
}

// True once the page is submitting a form or going away: a reload then would cancel that navigation.
let leaving = false;
document.addEventListener("submit", (ev) => { if (!ev.defaultPrevented) leaving = true; });
window.addEventListener("beforeunload", () => { leaving = true; });

function artifactProgress(path) {
  reconnecting(path, (msg) => {
    if (leaving) return;
    if (msg.type === "deployment.update") { location.reload(); return; }
    if (msg.type !== "artifact.update") return;
    const box = document.querySelector(`[data-artifact="${msg.artifact_id}"]`);
    // A new artifact, a finished job or a finished benchmark changes the page's shape: re-render it.
    if (!box || box.dataset.status !== msg.status || box.dataset.latency !== (msg.latency_status || "")) {
      location.reload();
      return;
    }
    const p = msg.progress || {};
    const bar = box.querySelector('[data-role="bar"]');
    const text = box.querySelector('[data-role="progress"]');
    if (bar) bar.style.width = `${Math.round((p.fraction || 0) * 100)}%`;
    if (text) text.textContent = `${p.stage || ""} — ${p.message || ""}`;
  });
}

function deploymentPage(deploymentId, runId) {
  const badge = document.getElementById("deployment-status");
  reconnecting(`/ws/runs/${runId}/`, (msg) => {
    if (leaving) return;
    if (msg.type === "deployment.update" && msg.deployment_id === deploymentId && badge.className !== `badge ${msg.status}`) {
      location.reload();
    }
  });
  const form = document.getElementById("playground-form");
  if (!form) return;
  const out = document.getElementById("output");
  const stats = document.getElementById("playground-stats");
  const send = document.getElementById("send");
  let ws = null;
  function open() {
    return new Promise((resolve) => {
      if (ws && ws.readyState === WebSocket.OPEN) { resolve(ws); return; }
      ws = new WebSocket(wsUrl(`/ws/deployments/${deploymentId}/playground/`));
      ws.onopen = () => resolve(ws);
      ws.onmessage = (ev) => {
        const msg = JSON.parse(ev.data);
        if (msg.type === "token") {
          out.textContent += msg.text;
        } else if (msg.type === "done") {
          stats.textContent = `${msg.completion_tokens} tokens · first token after ${msg.ttft_ms} ms · ${msg.tokens_per_s} tokens/s`;
          send.disabled = false;
        } else if (msg.type === "error") {
          stats.textContent = msg.message;
          stats.className = "error";
          send.disabled = false;
        }
      };
      ws.onclose = (ev) => {
        send.disabled = false;
        if (ev.code >= 4400 && ev.code < 4500) { stats.textContent = "Not allowed to use this playground."; }
      };
    });
  }
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    out.textContent = data.get("prompt");
    stats.textContent = "generating…";
    stats.className = "muted";
    send.disabled = true;
    const sock = await open();
    sock.send(JSON.stringify({
      prompt: data.get("prompt"),
      max_tokens: Number(data.get("max_tokens")),
      temperature: Number(data.get("temperature")),
      top_p: Number(data.get("top_p")),
    }));
  });
}

// Started from the script tag's data attributes (no inline script: the pages run under a strict CSP).
(function start() {
  const tag = document.getElementById("serving-script");
  if (!tag) return;
  if (tag.dataset.deployment) deploymentPage(Number(tag.dataset.deployment), Number(tag.dataset.run));
  if (tag.dataset.artifactsOf) artifactProgress(`/ws/runs/${tag.dataset.artifactsOf}/`);
})();
