// The run page's live view: a websocket relays the worker's progress; if it cannot be
// opened or drops before the run ends, the page polls the JSON endpoint instead.
(function () {
  "use strict";
  var root = document.getElementById("run");
  if (!root) return;
  var TERMINAL = ["completed", "failed", "cancelled"];
  var POLL_MS = 2000;
  var lastAt = parseFloat(root.dataset.lastMessageAt || "0");
  var lastUpdate = 0;
  var ended = TERMINAL.indexOf(root.dataset.status) >= 0;
  var polling = null;

  function $(id) { return document.getElementById(id); }
  function text(id, value) { var el = $(id); if (el) el.textContent = value; }
  function fmt(n, digits) { return (n === null || n === undefined) ? "—" : Number(n).toFixed(digits); }
  function duration(s) {
    if (s === null || s === undefined) return "—";
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }
  function clock(epoch) {
    var d = new Date(epoch * 1000);
    return d.toISOString().substring(11, 19);
  }

  function render(state) {
    if (!state || (state.updated_at && state.updated_at < lastUpdate)) return;
    lastUpdate = state.updated_at || lastUpdate;
    var percent = state.percent;
    if (percent !== null && percent !== undefined) {
      $("bar").value = percent;
      $("bar").textContent = percent + "%";
    }
    text("percent", fmt(percent, 1) + "%");
    text("processed", state.processed || 0);
    text("total", state.total === null || state.total === undefined ? "?" : state.total);
    text("rate", fmt(state.rate, 1));
    text("eta", duration(state.eta_seconds));
    text("phase", state.phase || "—");
    if (state.duration_seconds !== null && state.duration_seconds !== undefined) text("duration", duration(state.duration_seconds));
    if (state.attempt) text("attempt", state.attempt);
    renderStreams(state.streams);
    var counters = state.counters || {};
    ["seen", "created", "updated", "unchanged", "deleted", "failed"].forEach(function (k) {
      if (k in counters) text("c-" + k, counters[k]);
    });
    var status = $("run-status");
    if (status) {
      status.innerHTML = "";
      var badge = document.createElement("span");
      badge.className = "status status-" + state.status;
      badge.textContent = state.status;
      status.appendChild(badge);
    }
    root.dataset.status = state.status;
    var waiting = $("waiting");
    if (waiting) {
      waiting.hidden = !state.waiting_reason;
      if (state.waiting_reason || state.status !== "waiting") waiting.textContent = state.waiting_reason || "";
    }
    var error = $("error");
    if (error) {
      error.hidden = !state.error_message;
      var words = state.error_words ? state.error_words.charAt(0).toUpperCase() + state.error_words.slice(1) + ": " : "";
      error.textContent = state.error_message ? words + state.error_message : "";
    }
    (state.messages || []).forEach(function (m) {
      if (m.at > lastAt) { appendLog(m.at, m.message); lastAt = m.at; }
    });
    if (TERMINAL.indexOf(state.status) >= 0 && !ended) finish();
  }

  function appendLog(at, message) {
    var log = $("log");
    var li = document.createElement("li");
    var time = document.createElement("time");
    time.textContent = clock(at);
    li.appendChild(time);
    li.appendChild(document.createTextNode(" " + message));
    log.appendChild(li);
    log.scrollTop = log.scrollHeight;
  }

  function renderStreams(streams) {
    var table = $("streams");
    if (!table || !streams) return;
    table.hidden = streams.length < 2;
    var body = table.querySelector("tbody");
    body.innerHTML = "";
    streams.forEach(function (s) {
      var tr = document.createElement("tr");
      tr.dataset.stream = s.name;
      var progress = s.done ? "done" : s.total ? Math.round(100 * s.processed / s.total) + "%" :
        (s.processed ? "reading" : "waiting");
      [s.name, s.processed, s.total === null || s.total === undefined ? "?" : s.total, progress].forEach(function (v, i) {
        var cell = document.createElement(i === 0 ? "th" : "td");
        if (i === 0) cell.scope = "row";
        cell.textContent = v;
        tr.appendChild(cell);
      });
      body.appendChild(tr);
    });
  }

  function renderErrors(errors, count) {
    var body = document.querySelector("#record-errors tbody");
    if (!body || !errors) return;
    body.innerHTML = "";
    errors.forEach(function (e) {
      var tr = document.createElement("tr");
      [e.stream || "", e.record_key || "—", e.message].forEach(function (v) {
        var td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    text("error-count", "(" + count + ")");
  }

  function finish() {
    ended = true;
    var cancel = $("cancel");
    if (cancel) cancel.hidden = true;
    if (polling) { clearInterval(polling); polling = null; }
    poll();  // once more, for the record errors and the final row
  }

  function poll() {
    fetch(root.dataset.pollUrl, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) return;
        render(data.state);
        renderErrors(data.record_errors, data.record_error_count);
      })
      .catch(function () { /* next tick tries again */ });
  }

  function startPolling() {
    if (polling || ended) return;
    root.dataset.transport = "polling";
    poll();
    polling = setInterval(function () { if (ended) { clearInterval(polling); polling = null; } else { poll(); } }, POLL_MS);
  }

  function connect() {
    if (!("WebSocket" in window)) { startPolling(); return; }
    // Flask builds websocket URLs absolute (ws:// or wss://); a path is completed here.
    var url = root.dataset.wsUrl;
    if (url.indexOf("ws") !== 0) url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + url;
    var ws;
    try { ws = new WebSocket(url); } catch (e) { startPolling(); return; }
    ws.onopen = function () { root.dataset.transport = "websocket"; };
    ws.onmessage = function (event) {
      try { render(JSON.parse(event.data)); } catch (e) { /* ignore a malformed frame */ }
    };
    ws.onclose = function () { if (!ended) startPolling(); };
  }

  var log = $("log");
  if (log) log.scrollTop = log.scrollHeight;  // the newest line in view, after a reload too
  if (!ended) connect();
})();
