// Sweeps: every sweep with its jobs' states, newest first; live.
import {$, age, api, countsBar, el, liveUpdates, renderShell, showError, sweepId, sweepLink, sweepTotal,
  throttle} from "./common.js";

const REFRESH_MS = 10000;
const COLUMNS = 6;

renderShell("sweeps");

function created(sweep) {
  return sweep.created_at || sweep.submitted_at || null;
}

function row(sweep) {
  const id = sweepId(sweep);
  return el("tr", {dataset: {sweepId: id}},
    el("td", {}, sweepLink(id)),
    el("td", {}, sweep.name || "—"),
    el("td", {class: "hide-narrow"}, sweep.submitted_by || "—"),
    el("td", {class: "num"}, sweepTotal(sweep).toLocaleString()),
    el("td", {}, countsBar(sweep.counts || {}, sweepTotal(sweep))),
    el("td", {class: "hide-narrow", title: created(sweep) || ""}, age(created(sweep))));
}

async function load() {
  try {
    const sweeps = await api("sweeps");
    sweeps.sort((a, b) => String(created(b) || "").localeCompare(String(created(a) || "")));
    $("#sweeps tbody").replaceChildren(...(sweeps.length ? sweeps.map(row)
      : [el("tr", {}, el("td", {colspan: COLUMNS, class: "muted"}, "no sweeps yet"))]));
    $("#summary").textContent = `(${sweeps.length})`;
    $("#sweeps").dataset.loaded = String(Date.now());
  } catch (err) {
    showError(err);
  }
}

load();
liveUpdates(throttle(load, 2000), {types: ["job"], pollMs: REFRESH_MS});
