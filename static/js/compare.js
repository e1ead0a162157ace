// Compare page: a parallel-coordinates view of the runs' differing numeric settings against their final metrics,
// and their curves overlaid (static/js/charts.js).
(function comparePage() {
  const data = JSON.parse(document.getElementById("compare-data").textContent);
  const theme = themeColors();
  const box = document.getElementById("parcoords");
  if (data.coordinates.length >= 2) {
    Plotly.newPlot(box, [{
      type: "parcoords",
      line: {color: data.runs.map((_, i) => i), colorscale: "Viridis"},
      dimensions: data.coordinates.map((c) => ({label: c.label, values: c.values})),
      labelfont: {size: 11}, tickfont: {size: 10},
    }], {height: 320, margin: {l: 60, r: 60, t: 50, b: 20}, paper_bgcolor: "rgba(0,0,0,0)", font: {color: theme.ink}},
    PLOT_CONFIG);
  } else {
    box.innerHTML = '<p class="muted">Fewer than two numeric settings or metrics differ: nothing to draw.</p>';
    box.classList.remove("chart");
  }
  const charts = window.charts = new RunCharts(document.getElementById("overlay"), data.runs,
    {keys: ["loss", "lr", "grad_norm", "tokens_per_s", "mfu", "mem_gb"], tokensPerStep: data.tokens_per_step});
  charts.load();
  const x = document.getElementById("x-axis"), s = document.getElementById("smoothing"), log = document.getElementById("log-scale");
  x.addEventListener("change", () => charts.setX(x.value));
  s.addEventListener("change", () => charts.setSmoothing(Number(s.value)));
  log.addEventListener("change", () => charts.setLog(log.checked));
})();
