(function () {
  var box = document.getElementById("search");
  var layer = document.getElementById("layer");
  var sort = document.getElementById("sort");
  var order = document.getElementById("order");
  var low = document.getElementById("min");
  var high = document.getElementById("max");
  var count = document.getElementById("count");
  var rows = Array.prototype.slice.call(document.querySelectorAll(".neuron"));
  var scores = rows.map(function (row) { return JSON.parse(row.getAttribute("data-scores")); });
  function bound(input) { return input.value === "" ? null : Number(input.value); }
  function score(i, key) { var v = scores[i][key]; return typeof v === "number" ? v : null; }
  function apply() {
    var terms = box.value.toLowerCase().split(/\s+/).filter(function (t) { return t.length > 0; });
    var want = layer.value;
    var key = sort.value;
    var lo = bound(low), hi = bound(high), sign = order.value === "asc" ? 1 : -1;
    var shown = 0;
    rows.forEach(function (row, i) {
      var text = row.getAttribute("data-search");
      var v = key === "" ? null : score(i, key);
      var inRange = key === "" || ((lo === null || (v !== null && v >= lo)) && (hi === null || (v !== null && v <= hi)));
      var ok = inRange && (want === "" || row.getAttribute("data-layer") === want) &&
        terms.every(function (t) { return text.indexOf(t) !== -1; });
      row.hidden = !ok;
      if (ok) { shown += 1; }
    });
    var ranked = rows.map(function (row, i) { return i; });
    if (key !== "") {  // by the chosen score, units without it last, ties in page order
      ranked.sort(function (a, b) {
        var va = score(a, key), vb = score(b, key);
        if ((va === null) !== (vb === null)) { return va === null ? 1 : -1; }
        return (va !== null && va !== vb) ? sign * (va - vb) : a - b;
      });
    }
    ranked.forEach(function (i) { rows[i].parentNode.appendChild(rows[i]); });
    count.textContent = shown + " of " + rows.length + " neurons";
  }
  [box, low, high].forEach(function (el) { el.addEventListener("input", apply); });
  [layer, sort, order].forEach(function (el) { el.addEventListener("change", apply); });
  apply();
})();
