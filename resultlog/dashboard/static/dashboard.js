// resultlog dashboard: plots (uPlot, shipped beside this file) and live transitions
// (server-sent events from /live). Task data is only ever put in the page as text
// (textContent), never as HTML.
"use strict";

const COLORS = { RECEIVED: "#78909c", STARTED: "#1e88e5", RETRY: "#ef6c00",
  SUCCESS: "#2e7d32", FAILURE: "#c62828", REVOKED: "#6a1b9a",
  success: "#2e7d32", failure: "#c62828", retry: "#ef6c00",
  p50: "#1e88e5", p95: "#ef6c00", p99: "#c62828" };

function plot(id, x, named, yLabel) {
  const el = document.getElementById(id);
  if (!el) return;
  const labels = Object.keys(named);
  let points = 0;
  for (const l of labels) for (const v of named[l]) if (v !== null && v !== undefined) points++;
  el.dataset.points = String(points);
  if (!x.length || !labels.length) { el.textContent = "No data in this window."; return; }
  const opts = {
    width: 440, height: 220,
    series: [{}].concat(labels.map(l => ({ label: l, stroke: COLORS[l] || "#555", width: 1.5,
      spanGaps: true, points: { show: true, size: 4 } }))),
    axes: [{}, { label: yLabel, size: 60 }],
  };
  new uPlot(opts, [x].concat(labels.map(l => named[l])), el);
}

function drawPlots() {
  const data = document.getElementById("plot-data");
  if (!data) return;
  const p = JSON.parse(data.textContent);
  plot("plot-states", p.states.x, p.states.series, "events/s");
  plot("plot-rates", p.name.x, p.name.rates, "share");
  plot("plot-runtime", p.name.x, p.name.runtime, "seconds");
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function isoTime(ms) { return new Date(ms).toISOString().replace(".000Z", "Z"); }

function showLive(list) {
  const table = document.querySelector("#live-table tbody");
  if (table) {
    for (const t of list) {
      const row = document.createElement("tr");
      row.className = "fresh state-" + t.state;
      cell(row, isoTime(t.timestamp));
      const link = document.createElement("a");
      link.href = t.href;  // made by the server as the pages' links are (task_href)
      link.textContent = t.task_id;
      cell(row, "").appendChild(link);
      cell(row, t.task_name || "");
      cell(row, t.state, "state");
      cell(row, String(t.attempt), "n");
      cell(row, t.worker || "");
      table.insertBefore(row, table.firstChild);
    }
    while (table.rows.length > 100) table.deleteRow(table.rows.length - 1);
  }
  const timeline = document.getElementById("timeline");
  if (timeline) {
    // JSON in the attribute: a NUL in the id would not survive as plain HTML.
    const pageTask = JSON.parse(timeline.dataset.taskId);
    for (const t of list) {
      if (t.task_id !== pageTask) continue;
      const body = timeline.tBodies[0];
      const row = document.createElement("tr");
      row.className = "transition fresh state-" + t.state;
      cell(row, String(body.rows.length + 1), "n");
      cell(row, isoTime(t.timestamp));
      cell(row, ""); cell(row, "");
      cell(row, t.state, "state");
      cell(row, String(t.attempt), "n");
      cell(row, t.worker || "");
      cell(row, ""); cell(row, "");
      body.appendChild(row);
      const state = document.getElementById("task-state");
      if (state) { state.textContent = t.state; state.className = "state-" + t.state; }
    }
  }
}

function connectLive() {
  const status = document.getElementById("live-status");
  const source = new EventSource("/live");
  source.addEventListener("ready", () => { status.textContent = "live"; status.className = "live-on"; });
  source.onerror = () => { status.textContent = "live: reconnecting"; status.className = "live-off"; };
  source.addEventListener("transitions", ev => showLive(JSON.parse(ev.data)));
  // A page left open in the back/forward cache would keep its stream, and browsers
  // allow only six connections per server: close it when the page goes away.
  window.addEventListener("pagehide", () => source.close());
}

drawPlots();
connectLive();
