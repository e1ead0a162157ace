// Live run status over the websocket: badges update in place; after a dropped connection the table (or the page's
// badge) is read again, so nothing that changed meanwhile is missed.
function liveStatus(path, runId) {
  const labels = {draft: "Draft", queued: "Queued", launching: "Launching", running: "Running",
    remediating: "Remediating", succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled"};
  function setBadge(el, status) {
    if (!el) return;
    el.className = "badge " + status;
    el.textContent = labels[status] || status;
  }
  async function readBack() {
    const resp = await fetch(location.href, {headers: {Accept: "text/html"}, cache: "no-store"});
    if (!resp.ok) return;
    const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
    for (const selector of ["#run-table tbody", "#run-count", "#run-status"]) {
      const fresh = doc.querySelector(selector), here = document.querySelector(selector);
      if (fresh && here && fresh.innerHTML !== here.innerHTML) here.replaceWith(document.importNode(fresh, true));
    }
  }
  cpSocket(path, {
    onState: cpShowConnection,
    onOpen: (again) => { if (again) readBack().catch(() => {}); },
    onMessage: (msg) => {
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
    },
  });
}

(function start() {
  const tag = document.getElementById("live-status-script");
  if (tag) liveStatus(tag.dataset.path, tag.dataset.run ? Number(tag.dataset.run) : undefined);
})();
