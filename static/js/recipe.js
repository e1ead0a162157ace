// Recipe form: the running total of the weights.
(function recipeForm() {
  const form = document.getElementById("recipe-form");
  if (!form) return;
  const out = document.getElementById("weight-sum");
  function sum() {
    const t = [...form.querySelectorAll('input[name^="w_"]')].reduce((a, i) => a + (parseFloat(i.value) || 0), 0);
    out.textContent = `Total: ${t.toFixed(2)} %` + (Math.abs(t - 100) < 0.005 ? "" : " (must be 100 %)");
  }
  form.addEventListener("input", sum);
  sum();
})();
