// Data pages: a source's count and a prep run's progress arrive over their websocket (runs/realtime/data.py).
function dataSocket(path, onMessage) {
  cpSocket(path, {onMessage});  // app.js: quick retries after a drop
}

let leavingPage = false;
document.addEventListener("submit", (ev) => { if (!ev.defaultPrevented) leavingPage = true; });
window.addEventListener("beforeunload", () => { leavingPage = true; });

function sourcePage(sourceId, counting) {
  const badge = document.getElementById("count-status");
  dataSocket(`/ws/data/sources/${sourceId}/`, (msg) => {
    if (leavingPage || msg.type !== "source.update") return;
    if (msg.count_status !== badge.textContent.trim()) { location.reload(); return; }
    const live = document.getElementById("count-live");
    const p = msg.progress || {};
    if (live && p.documents !== undefined) live.textContent = `${p.documents} documents, ${p.characters} characters so far`;
  });
}

const STAGE_ORDER = ["read", "normalise", "language", "quality", "toxicity", "exact_dedup", "near_dedup", "tokenize", "mix"];

function renderCounts(counts) {
  // While the job runs, the stage table follows the counts in its progress.
  const body = document.querySelector("#stage-counts tbody");
  if (!body || !counts) return;
  const rows = [];
  for (const [source, stages] of Object.entries(counts)) {
    for (const stage of STAGE_ORDER.filter((s) => s in stages)) {
      const c = stages[stage];
      const kept = c.docs_in ? (100 * c.docs_out / c.docs_in).toFixed(1) : "0.0";
      const tokens = (stage === "tokenize" || stage === "mix") ? c.tokens_out : "—";
      rows.push(`<tr data-source="${source}" data-stage="${stage}"><td>${source}</td><td>${stage}</td><td class="num">${c.docs_in}</td>` +
        `<td class="num" data-role="docs-out">${c.docs_out}</td><td class="num">${c.docs_in - c.docs_out}</td><td class="num">${kept} %</td>` +
        `<td class="num">${c.chars_out}</td><td class="num">${tokens}</td></tr>`);
    }
  }
  if (rows.length) body.innerHTML = rows.join("");
}

function prepPage(prepId) {
  const badge = document.getElementById("prep-status");
  dataSocket(`/ws/data/prep/${prepId}/`, (msg) => {
    if (leavingPage || msg.type !== "prep.update") return;
    if (msg.status !== badge.dataset.status) { location.reload(); return; }
    const p = msg.progress || {};
    document.getElementById("prep-bar").style.width = `${Math.round((p.fraction || 0) * 100)}%`;
    const detail = p.detail || {};
    let stage = p.stage || "";
    if (detail.tasks) stage += ` (${detail.tasks_done}/${detail.tasks} tasks${detail.docs ? `, ${detail.docs} documents read` : ""})`;
    document.getElementById("prep-stage").textContent = stage;
    document.getElementById("prep-message").textContent = p.message || "";
    renderCounts(p.counts);
  });
}
