// Sync now: the date inputs only matter for a date-range run.
(function () {
  "use strict";
  document.querySelectorAll("form.sync").forEach(function (form) {
    var mode = form.querySelector("select.mode");
    var range = form.querySelector(".range");
    if (!mode || !range) return;
    function update() { range.hidden = mode.value !== "range"; }
    mode.addEventListener("change", update);
    update();
  });
})();
