// The pre-flight plan panel: rendered from the plan JSON; on the run form, refreshed as fields change.
const fmt = {
  int: (n) => n == null ? "—" : Number(n).toLocaleString("en-US"),
  big: (n) => {
    if (n == null) return "—";
    const a = Math.abs(n);
    if (a >= 1e12) return (n / 1e12).toFixed(2) + " T";
    if (a >= 1e9) return (n / 1e9).toFixed(2) + " B";
    if (a >= 1e6) return (n / 1e6).toFixed(2) + " M";
    if (a >= 1e3) return (n / 1e3).toFixed(1) + " K";
    return String(n);
  },
  gib: (g) => g == null ? "—" : (g >= 100 ? g.toFixed(0) : g >= 1 ? g.toFixed(1) : g.toFixed(3)) + " GiB",
  dur: (s) => {
    if (s == null) return "—";
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return (s / 60).toFixed(1) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " days";
  },
};

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

function row(label, value, id) {
  return `<dt>${esc(label)}</dt><dd${id ? ` id="${id}"` : ""}>${value}</dd>`;
}

function renderPlan(plan) {
  const body = document.getElementById("plan-body");
  if (!body) return;
  if (!plan || !plan.memory_gib) {
    body.innerHTML = '<p class="muted">No plan: fix the fields marked in red.</p>';
    return;
  }
  const m = plan.memory_gib, c = plan.compute || {}, L = plan.layout || {}, p = plan.params || {};
  const parts = [["weights", "#2f5bd3"], ["gradients", "#7c3aed"], ["optimizer_states", "#d97706"],
                 ["activations", "#059669"], ["overhead", "#98a2b3"]];
  const cap = Math.max(m.gpu_memory || 1, m.total || 1);
  const bar = parts.map(([k, col]) => `<span style="width:${(100 * (m[k] || 0) / cap).toFixed(2)}%;background:${col}" title="${k}"></span>`).join("");
  const dev = plan.global_batch_deviation_pct;
  let html = `<div class="fit ${m.fits ? "yes" : "no"}" id="plan-fit">${m.fits ? "Fits" : "Does not fit"}: ${fmt.gib(m.total)} of ${fmt.gib(m.gpu_memory)} per GPU</div>`;
  html += `<div class="bar">${bar}</div>`;
  html += "<dl>";
  html += row("GPUs (world)", fmt.int(plan.world_size));
  html += row("Layout", `TP ${L.tp} · PP ${L.pp} · EP ${L.ep}${L.sp ? " · SP" : ""} · ZeRO ${L.zero_stage}`);
  html += row("Data-parallel size", fmt.int(plan.data_parallel), "plan-dp");
  html += row("Tokens per step", `${fmt.int(plan.tokens_per_step)}${dev ? ` <span class="muted">(${dev > 0 ? "+" : ""}${dev.toFixed(1)} % vs target)</span>` : ""}`, "plan-tokens");
  html += row("Sequences per step", fmt.int(plan.sequences_per_step));
  html += row("Steps to budget", fmt.int(plan.total_steps));
  html += row("Parameters total", fmt.big(p.total), "plan-params");
  html += row("Parameters active", fmt.big(p.active));
  html += row("Params per GPU", fmt.big((plan.params_per_gpu || {}).total));
  html += "</dl><h2 style='margin-top:12px'>Memory per GPU</h2><dl>";
  html += row("Weights", fmt.gib(m.weights));
  html += row("Gradients", fmt.gib(m.gradients));
  html += row("Optimizer states", fmt.gib(m.optimizer_states));
  html += row("Activations (this run)", fmt.gib(m.activations), "plan-act");
  html += row("  with checkpointing", fmt.gib(m.activations_with_checkpointing));
  html += row("  without checkpointing", fmt.gib(m.activations_without_checkpointing));
  html += row("Framework overhead", fmt.gib(m.overhead));
  html += row("Total", `<strong>${fmt.gib(m.total)}</strong>`, "plan-mem");
  if (m.cpu_offload_per_node) html += row("CPU (offload) per node", `${fmt.gib(m.cpu_offload_per_node)}${m.cpu_memory_per_node ? " of " + fmt.gib(m.cpu_memory_per_node) : ""}`);
  const ds = plan.deepspeed_estimate || {};
  if (ds.applies) html += row("DeepSpeed's estimate (model states)", fmt.gib(ds.model_states_gpu));
  html += "</dl>";
  if (!ds.applies && ds.why) html += `<p class="muted" style="font-size:12px">DeepSpeed's estimator: ${esc(ds.why)}</p>`;
  if ((plan.suggestions || []).length) {
    html += "<h2 style='margin-top:12px'>To make it fit</h2><ul class='notes' id='plan-suggestions'>";
    for (const s of plan.suggestions) html += `<li>${esc(s.action)}: ${fmt.gib(s.total_gib)} (saves ${fmt.gib(s.saves_gib)})${s.fits ? " — fits" : ""}</li>`;
    html += "</ul>";
  }
  html += "<h2 style='margin-top:12px'>Time</h2><dl>";
  html += row("FLOPs per token", fmt.big(c.flops_per_token));
  html += row("Peak per GPU", c.peak_tflops_per_gpu ? `${c.peak_tflops_per_gpu} TFLOP/s` : "unknown GPU type");
  html += row("Assumed MFU", c.mfu != null ? (100 * c.mfu).toFixed(c.mfu < 0.1 ? 1 : 0) + " %" : "—", "plan-mfu");
  html += row("Step time", fmt.dur(c.step_time_s));
  html += row("Time to budget", fmt.dur(c.time_to_budget_s), "plan-time");
  html += row("GPU-hours", fmt.int(c.gpu_hours));
  html += "</dl>";
  if (c.mfu_source) html += `<p class="muted" style="font-size:11.5px" id="plan-mfu-source">Assumed MFU: ${esc(c.mfu_source)}</p>`;
  if ((plan.reconciliation_notes || []).length) {
    html += "<h2 style='margin-top:12px'>What gave way</h2><ul class='notes' id='plan-notes'>";
    for (const n of plan.reconciliation_notes) html += `<li><strong>${esc(n.figure)}</strong>: guide ${esc(n.guide)} → ${esc(n.preset)}. ${esc(n.why)}</li>`;
    html += "</ul>";
  }
  if ((plan.assumptions || []).length) {
    html += "<details><summary class='muted'>Assumptions</summary><ul class='notes'>";
    for (const a of plan.assumptions) html += `<li>${esc(a)}</li>`;
    html += "</ul></details>";
  }
  body.innerHTML = html;
}

function showErrors(form, errors) {
  form.querySelectorAll("[data-errors-for]").forEach((ul) => { ul.innerHTML = ""; });
  form.querySelectorAll(".field.has-error").forEach((f) => f.classList.remove("has-error"));
  const top = document.getElementById("form-errors");
  const general = [];
  for (const [name, msgs] of Object.entries(errors || {})) {
    const ul = form.querySelector(`[data-errors-for="${name}"]`);
    if (ul) {
      ul.innerHTML = msgs.map((m) => `<li>${esc(m)}</li>`).join("");
      ul.closest(".field").classList.add("has-error");
    } else {
      general.push(...msgs);
    }
  }
  if (top) {
    top.innerHTML = general.map((m) => `<li>${esc(m)}</li>`).join("");
    top.hidden = general.length === 0;
  }
}

// The panel says so when the plan in it no longer matches the fields: a refused or failed request never leaves a
// frozen plan that contradicts them.
function planUnavailable(message) {
  const body = document.getElementById("plan-body");
  if (!body) return;
  body.innerHTML = `<p class="error" id="plan-error" role="alert">${esc(message)}</p>`;
  const panel = document.getElementById("plan-panel");
  if (panel) panel.dataset.valid = "unknown";
}

(function wireForm() {
  const form = document.getElementById("run-form");
  if (!form) return;
  const override = document.getElementById("fit-override");
  let timer = null, seq = 0;
  async function refresh() {
    const mine = ++seq;
    const data = new FormData(form);
    let resp, out;
    try {
      resp = await fetch("/runs/plan/", {method: "POST", body: data, headers: {"X-CSRFToken": data.get("csrfmiddlewaretoken"), "Accept": "application/json"}});
      out = resp.ok ? await resp.json() : null;
    } catch (e) {
      if (mine === seq) planUnavailable("The plan could not be updated: the control plane did not answer. It retries on your next change.");
      return;
    }
    if (mine !== seq) return;
    if (!out) {
      let detail = "";
      try { detail = (await resp.json()).error || ""; } catch (e) { /* not JSON */ }
      planUnavailable(`The plan could not be computed (HTTP ${resp.status})${detail ? ": " + detail : ""}. The fields were not checked; change one to retry.`);
      return;
    }
    showErrors(form, out.errors);
    renderPlan(out.plan);
    const fits = !out.plan || !out.plan.memory_gib || out.plan.memory_gib.fits !== false;
    if (override) override.hidden = fits && !(out.errors || {}).fit_override_reason;
    document.getElementById("plan-panel").dataset.valid = out.valid ? "yes" : "no";
  }
  function schedule() { clearTimeout(timer); timer = setTimeout(refresh, 200); }
  form.addEventListener("input", schedule);
  form.addEventListener("change", schedule);
  refresh();
})();

// A page that shows a stored plan (the run page) reads it from a JSON data island: no inline script.
(function storedPlan() {
  const data = document.getElementById("plan-data");
  if (data && !document.getElementById("run-form")) renderPlan(JSON.parse(data.textContent));
})();
