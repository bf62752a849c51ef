// Queue: the queued jobs in dispatch order (GET /queue) with why each one waits; live.
import {$, api, el, jobLink, liveUpdates, renderShell, showError, throttle} from "./common.js";

// Waiting reasons change with hosts' heartbeats, not only with job events: refreshed this often regardless.
const REFRESH_MS = 5000;
const LIMIT = 1000;
const COLUMNS = 8;

renderShell("queue");

function target(item) {
  return (item.target_hosts || []).length ? item.target_hosts.join(", ") : item.target_host || "—";
}

function row(item) {
  return el("tr", {dataset: {jobId: item.job_id, position: item.position}},
    el("td", {class: "num"}, item.position ?? "—"),
    el("td", {}, jobLink(item.job_id, item.job_name),
      item.job_name ? [" ", el("span", {class: "muted mono hide-narrow"}, item.job_id.slice(0, 8))] : ""),
    el("td", {}, target(item)),
    el("td", {class: "num"}, item.priority ?? "—"),
    el("td", {class: "num"}, item.gpus || "—"),
    el("td", {class: "hide-narrow"}, item.submitted_by || "—"),
    el("td", {class: "hide-narrow num"}, item.attempt ?? "—"),
    el("td", {class: "reason"}, item.waiting_reason || "—"));
}

async function load() {
  try {
    const items = await api(`queue?limit=${LIMIT}`);
    $("#queue tbody").replaceChildren(...(items.length ? items.map(row)
      : [el("tr", {}, el("td", {colspan: COLUMNS, class: "muted"}, "nothing is queued"))]));
    $("#summary").textContent = `(${items.length.toLocaleString()}${items.length >= LIMIT ? "+" : ""} queued)`;
    $("#queue").dataset.loaded = String(Date.now());
  } catch (err) {
    showError(err);
  }
}

load();
setInterval(load, REFRESH_MS);
liveUpdates(throttle(load, 1000), {types: ["job", "host"], pollMs: REFRESH_MS});
