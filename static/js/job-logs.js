// The run page's job output: the tail of stdout or stderr read from /runs/<id>/logs/, filtered by rank and text on
// the server, then followed through the run's websocket ("run.log" messages the watcher pushes as it reads lines).

const LOG_KEEP_LINES = 5000;

function jobLogs(runId) {
  const pre = document.getElementById("log-lines");
  if (!pre) return {push() {}, load() {}};
  const stream = document.getElementById("log-stream"), rank = document.getElementById("log-rank");
  const search = document.getElementById("log-search"), follow = document.getElementById("log-follow");
  const info = document.getElementById("log-info");
  let lines = [], loading = null;

  function filters() {
    return {stream: stream.value, rank: rank.value.trim() === "" ? null : Number(rank.value), q: search.value.trim()};
  }
  function keeps(line, f) {
    if (f.rank !== null && line.rank !== f.rank) return false;
    return !f.q || line.text.toLowerCase().includes(f.q.toLowerCase());
  }
  function render() {
    pre.textContent = lines.map((l) => l.text).join("\n");
    if (follow.checked) pre.scrollTop = pre.scrollHeight;
  }
  async function load() {
    const f = filters();
    const params = new URLSearchParams({stream: f.stream, limit: "1000"});
    if (f.rank !== null && !Number.isNaN(f.rank)) params.set("rank", String(f.rank));
    if (f.q) params.set("q", f.q);
    const mine = loading = fetch(`/runs/${runId}/logs/?${params}`, {cache: "no-store"});
    try {
      const resp = await mine;
      if (mine !== loading) return;  // a newer request replaced this one
      const body = await resp.json();
      if (!resp.ok) { info.textContent = body.error || "The output could not be read."; return; }
      lines = body.lines;
      info.textContent = body.lines.length
        ? `${body.matched > body.lines.length ? `last ${body.lines.length} of ${body.matched}` : body.lines.length} line(s)` +
          (body.partial ? " (searched the last 4 MiB)" : "")
        : (f.q || f.rank !== null ? "No line matches." : "No output yet.");
      render();
    } catch (e) { info.textContent = "The output could not be read; it is retried on the next change."; }
  }
  function push(msg) {
    const f = filters();
    if (msg.stream !== f.stream || !follow.checked) return;
    const fresh = msg.lines.filter((l) => keeps(l, f));
    if (!fresh.length && !msg.skipped) return;
    if (msg.skipped) { load(); return; }  // more came at once than a message holds: read the tail instead
    lines = lines.concat(fresh).slice(-LOG_KEEP_LINES);
    info.textContent = `${lines.length} line(s), following`;
    render();
  }
  let timer = null;
  const later = () => { clearTimeout(timer); timer = setTimeout(load, 250); };
  stream.addEventListener("change", load);
  rank.addEventListener("input", later);
  search.addEventListener("input", later);
  follow.addEventListener("change", () => { if (follow.checked) load(); });
  load();
  return {push, load};
}
