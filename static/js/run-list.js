// Runs table: select all, compare the ticked runs, "/" to search.
(function runList() {
  const all = document.getElementById("select-all");
  const boxes = () => [...document.querySelectorAll('#run-table tbody input[name="run"]')];
  if (all) all.addEventListener("change", () => boxes().forEach((b) => { b.checked = all.checked; }));
  const compare = document.getElementById("compare-selected");
  if (compare) compare.addEventListener("click", (ev) => {
    ev.preventDefault();
    const ids = boxes().filter((b) => b.checked).map((b) => "run=" + b.value);
    location.href = "/runs/compare/" + (ids.length ? "?" + ids.join("&") : "");
  });
  for (const select of document.querySelectorAll("#run-filters select")) {
    select.addEventListener("change", () => select.form.submit());
  }
  if (typeof cpShortcut === "function") {
    cpShortcut("/", "Search runs", () => document.getElementById("f-q").focus());
    cpShortcut("j", "Next row", () => moveRow(1));
    cpShortcut("k", "Previous row", () => moveRow(-1));
    cpShortcut("o", "Open the selected row", () => { const r = current(); if (r) r.querySelector("a").click(); });
    cpShortcut("x", "Tick the selected row", () => { const r = current(); if (r) { const b = r.querySelector("input"); b.checked = !b.checked; } });
  }
  let index = -1;
  function rows() { return [...document.querySelectorAll("#run-table tbody tr[data-run]")]; }
  function current() { return rows()[index]; }
  function moveRow(by) {
    const list = rows();
    if (!list.length) return;
    list.forEach((r) => r.classList.remove("cursor"));
    index = Math.max(0, Math.min(list.length - 1, index + by));
    list[index].classList.add("cursor");
    list[index].scrollIntoView({block: "nearest"});
  }
})();
