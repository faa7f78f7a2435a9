// Relative times ("12 s ago", "in 5 min") keep ticking: elements with data-ago hold the
// moment in seconds since 1970 (UTC); the wording is the server's (filters.py duration/ago).
(function () {
  "use strict";
  function duration(s) {
    if (s < 1) return s.toFixed(1) + " s";
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return Math.round(s / 86400) + " d";
  }
  function tick() {
    var now = Date.now() / 1000;
    document.querySelectorAll("[data-ago]").forEach(function (el) {
      var at = parseFloat(el.dataset.ago);
      if (isNaN(at)) return;
      var seconds = now - at;
      el.textContent = seconds >= 0 ? duration(seconds) + " ago" : "in " + duration(-seconds);
    });
  }
  setInterval(tick, 5000);
})();
