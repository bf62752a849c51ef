// Hosts: liveness, capacity, GPU slots, running jobs, and drain on/off.
import {$, api, badge, el, liveUpdates, renderShell, showError, showMessage, throttle} from "./common.js";

// Heartbeat ages move on their own: the table is refreshed this often even without events.
const REFRESH_MS = 5000;
// After a drain request the host says it is draining in its next heartbeat: look this often until it does.
const PENDING_REFRESH_MS = 1000;
const PENDING_GIVE_UP_MS = 60000;
const pending = new Map(); // host -> {draining: wanted, since: ms}
let pendingTimer = null;

renderShell("hosts");

function gpuSlots(host) {
  const total = (host.gpu_ids || []).length;
  if (!total) return "—";
  const free = (host.free_gpus || []).length;
  return `${total - free} used / ${free} free`;
}

function drainButton(host) {
  const wanted = pending.get(host.host);
  if (wanted && (wanted.draining === host.draining || Date.now() - wanted.since > PENDING_GIVE_UP_MS)) {
    pending.delete(host.host);
  }
  if (pending.has(host.host)) {
    return el("button", {type: "button", disabled: true, dataset: {host: host.host}},
      pending.get(host.host).draining ? "drain requested…" : "resume requested…");
  }
  const button = el("button", {type: "button", class: host.draining ? "primary" : null,
    dataset: {host: host.host, needs: "admin"}},
    host.draining ? "draining — resume" : "drain");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const answer = await api(`hosts/${encodeURIComponent(host.host)}/drain`, {method: host.draining ? "DELETE" : "POST"});
      showMessage(answer.message || `${host.host}: ${answer.draining ? "drain requested" : "drain lifted"}`, "info");
      pending.set(host.host, {draining: answer.draining, since: Date.now()});
      await load();
    } catch (err) {
      showError(err);
      button.disabled = false;
    }
  });
  return button;
}

function row(host) {
  const running = host.running || [];
  return el("tr", {dataset: {host: host.host, state: host.state}},
    el("td", {}, el("strong", {}, host.host), host.configured ? "" : el("span", {class: "muted"}, " (not configured)")),
    el("td", {}, badge(host.state), host.draining ? [" ", badge("draining")] : ""),
    el("td", {}, host.seconds_since_seen === null || host.seconds_since_seen === undefined ? "never"
      : `${host.seconds_since_seen} s ago`),
    el("td", {}, host.capacity ?? "—"),
    el("td", {}, gpuSlots(host)),
    el("td", {class: "wrap"}, running.length ? running.map((job, i) => {
      const id = typeof job === "string" ? job : job.job_id;
      return [i ? ", " : "", el("a", {href: `job?id=${encodeURIComponent(id)}`, class: "mono"}, id.slice(0, 8))];
    }) : el("span", {class: "muted"}, "none")),
    el("td", {class: "hide-narrow"}, host.runtime || "—"),
    el("td", {}, drainButton(host)));
}

async function load() {
  try {
    const {hosts} = await api("hosts");
    $("#hosts tbody").replaceChildren(...(hosts.length ? hosts.map(row)
      : [el("tr", {}, el("td", {colspan: 8, class: "muted"}, "no hosts"))]));
    const online = hosts.filter((host) => host.state === "online").length;
    $("#summary").textContent = `(${online} of ${hosts.length} online)`;
    clearTimeout(pendingTimer);
    if (pending.size) pendingTimer = setTimeout(load, PENDING_REFRESH_MS);
  } catch (err) {
    showError(err);
  }
}

load();
setInterval(load, REFRESH_MS);
liveUpdates(throttle(load, 1000), {types: ["host", "job"], pollMs: REFRESH_MS});
