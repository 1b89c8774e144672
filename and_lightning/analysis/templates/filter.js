(function () {
  var box = document.getElementById("search");
  var layer = document.getElementById("layer");
  var count = document.getElementById("count");
  var rows = Array.prototype.slice.call(document.querySelectorAll(".neuron"));
  function apply() {
    var terms = box.value.toLowerCase().split(/\s+/).filter(function (t) { return t.length > 0; });
    var want = layer.value;
    var shown = 0;
    rows.forEach(function (row) {
      var text = row.getAttribute("data-search");
      var ok = (want === "" || row.getAttribute("data-layer") === want) &&
        terms.every(function (t) { return text.indexOf(t) !== -1; });
      row.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " neurons";
  }
  box.addEventListener("input", apply);
  layer.addEventListener("change", apply);
  apply();
})();
