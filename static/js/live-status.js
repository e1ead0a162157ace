// Live run status over the websocket: badges update in place; reconnects with back-off.
function liveStatus(path, runId) {
  const labels = {draft: "Draft", queued: "Queued", launching: "Launching", running: "Running",
    remediating: "Remediating", succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled"};
  let delay = 500;
  function setBadge(el, status) {
    if (!el) return;
    el.className = "badge " + status;
    el.textContent = labels[status] || status;
  }
  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}${path}`);
    ws.onopen = () => { delay = 500; };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.type === "run.status") {
        if (runId) setBadge(document.getElementById("run-status"), msg.status);
        const row = document.querySelector(`tr[data-run="${msg.run_id}"] [data-status]`);
        setBadge(row, msg.status);
      } else if (msg.type === "run.created" && !runId) {
        const note = document.getElementById("new-runs") || document.createElement("p");
        note.id = "new-runs";
        note.innerHTML = 'New runs were created. <a href="">Reload</a> to see them.';
        document.querySelector("main").prepend(note);
      }
    };
    ws.onclose = (ev) => {
      if (ev.code >= 4400 && ev.code < 4500) return;  // refused: not logged in or no role
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  }
  connect();
}

(function start() {
  const tag = document.getElementById("live-status-script");
  if (tag) liveStatus(tag.dataset.path, tag.dataset.run ? Number(tag.dataset.run) : undefined);
})();
