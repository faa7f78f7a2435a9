// Sync now: the date inputs matter only for a date-range run, the fiscal year only for a
// fiscal-year run; each part is shown for its choice (without JavaScript all are shown and
// the server reads only the chosen one).
(function () {
  "use strict";
  document.querySelectorAll("form.sync").forEach(function (form) {
    var mode = form.querySelector("select.mode");
    var parts = form.querySelectorAll("[data-choice]");
    if (!mode || !parts.length) return;
    function update() {
      parts.forEach(function (part) { part.hidden = mode.value !== part.dataset.choice; });
    }
    mode.addEventListener("change", update);
    update();
  });
})();
