// Behaviour every page shares, driven by data attributes (the pages run under a strict CSP: no inline scripts or
// handlers): confirmations before destructive actions, copy buttons, and keyboard shortcuts.

// <form data-confirm="..."> (or a submit button with data-confirm) asks before it is sent.
document.addEventListener("submit", (ev) => {
  const button = ev.submitter;
  const question = (button && button.dataset.confirm) || ev.target.dataset.confirm;
  if (question && !window.confirm(question)) ev.preventDefault();
}, true);

// <button data-copy="#selector"> copies the element's text (or an input's value) to the clipboard.
document.addEventListener("click", async (ev) => {
  const button = ev.target.closest("[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  if (!source) return;
  const text = "value" in source && source.tagName !== "BUTTON" ? source.value : source.textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) { // no clipboard permission (plain http on another host): select it for Ctrl-C instead
    const range = document.createRange();
    range.selectNodeContents(source);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
  }
  const label = button.textContent;
  button.textContent = "Copied";
  button.dataset.copied = "yes";
  setTimeout(() => { button.textContent = label; }, 1500);
});

// Keyboard shortcuts. Pages add their own with cpShortcut(key, description, action); "?" lists them all.
const cpShortcuts = [];
function cpShortcut(key, description, action) { cpShortcuts.push({key, description, action}); }
cpShortcut("g r", "Go to the runs table", () => { location.href = "/runs/"; });
cpShortcut("g c", "Go to compare", () => { location.href = "/runs/compare/"; });
cpShortcut("g d", "Go to deployments", () => { location.href = "/deployments/"; });
cpShortcut("g m", "Go to data mixes", () => { location.href = "/recipes/"; });
cpShortcut("n", "Plan a new run", () => { location.href = "/runs/new/"; });
cpShortcut("?", "Show or hide this list", () => toggleShortcutHelp());

function toggleShortcutHelp() {
  let box = document.getElementById("shortcut-help");
  if (box) { box.remove(); return; }
  box = document.createElement("div");
  box.id = "shortcut-help";
  box.className = "card shortcut-help";
  box.setAttribute("role", "dialog");
  box.innerHTML = "<h2>Keyboard shortcuts</h2><dl class='kv'></dl><p class='muted'>Esc closes this list.</p>";
  const dl = box.querySelector("dl");
  for (const s of cpShortcuts) {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.innerHTML = s.key.split(" ").map((k) => `<kbd>${k.replace(/[<>&]/g, "")}</kbd>`).join(" then ");
    dd.textContent = s.description;
    dl.append(dt, dd);
  }
  document.body.appendChild(box);
}

(function keys() {
  let prefix = "", prefixAt = 0;
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const t = ev.target;
    if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))) {
      if (ev.key === "Escape") t.blur();
      return;
    }
    if (ev.key === "Escape") { document.getElementById("shortcut-help")?.remove(); return; }
    const now = Date.now();
    const typed = prefix && now - prefixAt < 1200 ? `${prefix} ${ev.key}` : ev.key;
    const hit = cpShortcuts.find((s) => s.key === typed);
    if (hit) {
      ev.preventDefault();
      prefix = "";
      hit.action(ev);
    } else if (cpShortcuts.some((s) => s.key.startsWith(ev.key + " "))) {
      prefix = ev.key;
      prefixAt = now;
    } else {
      prefix = "";
    }
  });
})();

document.addEventListener("click", (ev) => { if (ev.target.closest("#shortcuts-button")) toggleShortcutHelp(); });

// A websocket that comes back on its own: retried quickly (a server back after a restart is rejoined within a
// second or two, never after a long back-off), with the page told when it is live, down, or refused.
// onOpen(again) runs on every open; `again` is true after a drop, when the page should read back what it missed.
const CP_RETRY_MS = [100, 250, 500, 1000];
function cpSocket(path, {onMessage, onOpen, onState} = {}) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  let attempts = 0, everOpen = false, socket = null;
  function connect() {
    const ws = socket = new WebSocket(`${proto}//${location.host}${path}`);
    ws.onopen = () => {
      attempts = 0;
      onState?.("live");
      onOpen?.(everOpen);
      everOpen = true;
    };
    ws.onmessage = (ev) => onMessage?.(JSON.parse(ev.data));
    ws.onclose = (ev) => {
      if (ws !== socket) return;
      if (ev.code >= 4400 && ev.code < 4500) { onState?.("refused"); return; } // not logged in, no role, no such object
      onState?.("reconnecting");
      setTimeout(connect, CP_RETRY_MS[Math.min(attempts++, CP_RETRY_MS.length - 1)]);
    };
  }
  onState?.("connecting");
  connect();
  window.addEventListener("online", () => { if (socket && socket.readyState === WebSocket.CLOSED) connect(); });
}

// The connection indicator (<span class="conn" id="conn">) pages that follow something live carry.
function cpShowConnection(state) {
  const conn = document.getElementById("conn");
  if (!conn) return;
  conn.dataset.state = state;
  conn.className = "conn " + (state === "live" ? "live" : "down");
  conn.textContent = {live: "live", reconnecting: "reconnecting…", refused: "not allowed to follow this"}[state] || "connecting…";
  conn.title = state === "live" ? "Following live" : "The live connection is down; retrying. What changed meanwhile is read back when it returns.";
}
