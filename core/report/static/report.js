// gdx report: sort a table by clicking a header, filter rows by text. Plain JS, no dependencies.
(function () {
  "use strict";

  function cellValue(row, index, type) {
    var text = row.cells[index] ? row.cells[index].textContent.trim() : "";
    if (type === "num") {
      var v = parseFloat(text);
      return isNaN(v) ? -Infinity : v;
    }
    return text.toLowerCase();
  }

  function sortBy(table, th) {
    var index = Array.prototype.indexOf.call(th.parentNode.children, th);
    var type = th.getAttribute("data-type");
    var descending = !th.classList.contains("desc");
    if (!th.classList.contains("asc") && !th.classList.contains("desc")) {
      descending = type === "num";  // numbers: largest first on the first click
    }
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.classList.remove("asc", "desc"); });
    th.classList.add(descending ? "desc" : "asc");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, index, type), y = cellValue(b, index, type);
      if (x < y) { return descending ? 1 : -1; }
      if (x > y) { return descending ? -1 : 1; }
      return 0;
    });
    var fragment = document.createDocumentFragment();
    rows.forEach(function (r) { fragment.appendChild(r); });
    body.appendChild(fragment);
  }

  function applyFilter(container) {
    var table = container.querySelector("table.units");
    var input = container.querySelector("input.filter");
    var only = container.querySelector("input.only-interp");
    var count = container.querySelector(".count");
    var needle = input ? input.value.trim().toLowerCase() : "";
    var shown = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      // the filter matches a unit's own label and category, not its runner-up concepts
      var own = Array.prototype.filter.call(row.cells, function (c) { return !c.querySelector(".also"); });
      var text = own.map(function (c) { return c.textContent; }).join(" ").toLowerCase();
      var visible = (!needle || text.indexOf(needle) >= 0) && (!only || !only.checked || !row.classList.contains("weak"));
      row.classList.toggle("hidden", !visible);
      if (visible) { shown += 1; }
    });
    if (count) { count.textContent = shown + " of " + table.tBodies[0].rows.length + " rows"; }
  }

  document.querySelectorAll("table.units").forEach(function (table) {
    table.querySelectorAll("th[data-type]").forEach(function (th) {
      th.addEventListener("click", function () { sortBy(table, th); });
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sortBy(table, th); } });
    });
    var container = table.parentNode;
    container.querySelectorAll("input.filter, input.only-interp").forEach(function (input) {
      input.addEventListener("input", function () { applyFilter(container); });
      input.addEventListener("change", function () { applyFilter(container); });
    });
    applyFilter(container);
  });

  document.querySelectorAll("table.concepts").forEach(function (table) {
    table.querySelectorAll("th[data-type]").forEach(function (th) {
      th.addEventListener("click", function () { sortBy(table, th); });
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sortBy(table, th); } });
    });
  });
}());
