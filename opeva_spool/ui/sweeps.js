// Sweeps: every sweep with its jobs' states, newest first; live.
import {$, age, api, countsBar, el, liveUpdates, renderShell, showError, showMessage, sweepLink,
  throttle} from "./common.js";

const REFRESH_MS = 10000;
const COLUMNS = 6;

renderShell("sweeps");

function row(sweep) {
  const id = sweep.sweep_id;
  return el("tr", {dataset: {sweepId: id}},
    el("td", {}, sweepLink(id)),
    el("td", {}, sweep.name || "—"),
    el("td", {class: "hide-narrow"}, sweep.submitted_by || "—"),
    el("td", {class: "num"}, sweep.job_count.toLocaleString()),
    el("td", {}, countsBar(sweep.counts, sweep.job_count)),
    el("td", {class: "hide-narrow", title: sweep.submitted_at || ""}, age(sweep.submitted_at)));
}

async function load() {
  try {
    const sweeps = await api("sweeps"); // newest first
    $("#sweeps tbody").replaceChildren(...(sweeps.length ? sweeps.map(row)
      : [el("tr", {}, el("td", {colspan: COLUMNS, class: "muted"}, "no sweeps yet"))]));
    $("#summary").textContent = `(${sweeps.length})`;
    $("#sweeps").dataset.loaded = String(Date.now());
  } catch (err) {
    showError(err);
  }
}

/** "a.b: 1, 2\nc: x" -> {"a.b": [1, 2], "c": ["x"]}: each value JSON when it parses, else the text. Throws
 * an Error naming the line that is not "key: values". */
function parseGrid(text) {
  const grid = {};
  text.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    const colon = line.indexOf(":");
    const key = colon > 0 ? line.slice(0, colon).trim() : "";
    const values = colon > 0 ? line.slice(colon + 1).split(",").map((value) => value.trim()).filter(Boolean) : [];
    if (!key || !values.length) throw new Error(`grid line ${i + 1}: expected "dotted.key: value, value", not "${line.trim()}"`);
    grid[key] = values.map((value) => {
      try {
        return JSON.parse(value);
      } catch {
        return value;
      }
    });
  });
  if (!Object.keys(grid).length) throw new Error("the grid is empty: give at least one key and its values");
  return grid;
}

function combinations(text) {
  try {
    return Object.values(parseGrid(text)).reduce((n, values) => n * values.length, 1);
  } catch {
    return null;
  }
}

async function loadChoices() {
  try {
    const [configs, {hosts}] = await Promise.all([api("experiment-configs"), api("hosts")]);
    $("#config-names").replaceChildren(...configs.map((name) => el("option", {value: name})));
    const select = $("#s-host");
    const known = new Set([...select.options].map((option) => option.value));
    select.append(...hosts.map((host) => host.host).filter((name) => !known.has(name))
      .map((name) => el("option", {value: name}, name)));
  } catch (err) {
    showError(err);
  }
}

function setUpSubmit() {
  $("#show-submit").addEventListener("click", () => {
    const card = $("#submit-card");
    card.hidden = !card.hidden;
    if (!card.hidden) {
      loadChoices();
      $("#s-config").focus();
    }
  });
  $("#s-grid").addEventListener("input", () => {
    const count = combinations($("#s-grid").value);
    $("#s-count").textContent = count ? `${count.toLocaleString()} job(s)` : "";
  });
  $("#sweep-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    let grid;
    try {
      grid = parseGrid(form.elements.grid.value);
    } catch (err) {
      showMessage(err.message);
      return;
    }
    const body = {config_path: form.elements.config_path.value.trim(), grid, submitted_by: "dashboard",
      allow_new_keys: form.elements.allow_new_keys.checked};
    if (form.elements.name.value.trim()) body.name = form.elements.name.value.trim();
    if (form.elements.target_host.value) body.target_host = form.elements.target_host.value;
    if (Number(form.elements.gpus.value)) body.gpus = Number(form.elements.gpus.value);
    if (form.elements.priority.value) body.priority = Number(form.elements.priority.value);
    $("#sweep-button").disabled = true;
    try {
      const answer = await api("sweeps", {method: "POST", body});
      location.href = `sweep?id=${encodeURIComponent(answer.sweep_id)}`;
    } catch (err) {
      showError(err);
    } finally {
      $("#sweep-button").disabled = false;
    }
  });
}

setUpSubmit();
load();
liveUpdates(throttle(load, 2000), {types: ["job"], pollMs: REFRESH_MS});
