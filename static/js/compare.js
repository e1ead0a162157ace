// Compare page: the runs' curves overlaid (static/js/charts.js), and a parallel-coordinates view of their differing
// numeric settings against their final metrics. The curves come first: the view needs plotly.js's full bundle,
// several times the size of the basic one the curves are drawn with, so it is loaded once they are drawn.
(function comparePage() {
  const data = JSON.parse(document.getElementById("compare-data").textContent);
  const charts = window.charts = new RunCharts(document.getElementById("overlay"), data.runs,
    {keys: ["loss", "lr", "grad_norm", "tokens_per_s", "mfu", "mem_gb"], tokensPerStep: data.tokens_per_step,
     initialKeys: data.keys});
  const drawn = charts.load();
  const x = document.getElementById("x-axis"), s = document.getElementById("smoothing"), log = document.getElementById("log-scale");
  x.addEventListener("change", () => charts.setX(x.value));
  s.addEventListener("change", () => charts.setSmoothing(Number(s.value)));
  log.addEventListener("change", () => charts.setLog(log.checked));

  const box = document.getElementById("parcoords");
  if (data.coordinates.length < 2) {
    box.innerHTML = '<p class="muted">Fewer than two numeric settings or metrics differ: nothing to draw.</p>';
    box.classList.remove("chart");
    return;
  }
  drawn.finally(() => {
    // The full bundle defines window.Plotly again: the curves keep the basic one they were drawn with.
    const basic = window.Plotly;
    const script = document.createElement("script");
    script.src = box.dataset.plotly;
    script.onload = () => {
      const full = window.Plotly;
      window.Plotly = basic;
      full.newPlot(box, [{
        type: "parcoords",
        line: {color: data.runs.map((_, i) => i), colorscale: "Viridis"},
        dimensions: data.coordinates.map((c) => ({label: c.label, values: c.values})),
        labelfont: {size: 11}, tickfont: {size: 10},
      }], {height: 320, margin: {l: 60, r: 60, t: 50, b: 20}, paper_bgcolor: "rgba(0,0,0,0)", font: {color: themeColors().ink}},
      PLOT_CONFIG);
    };
    document.head.appendChild(script);
  });
})();
