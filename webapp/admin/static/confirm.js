// Buttons that destroy or stop something ask first: data-confirm holds the question.
// Without JavaScript the action happens at once, as before.
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-confirm]");
    if (button && !window.confirm(button.dataset.confirm)) event.preventDefault();
  });
})();
