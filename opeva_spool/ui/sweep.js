// One sweep: its facts and counts by state, its jobs with their overrides and status, sorted by a value of
// their result.json when one is named (GET /sweeps/<id>?sort=<key>&order=asc|desc); Stop and Delete.
import {$, ApiError, TERMINAL, age, api, badge, cellValue, confirmAction, countsBar, el, jobLink, liveUpdates,
  numericFields, query, renderShell, showError, showMessage, throttle} from "./common.js";

const REFRESH_MS = 10000;
const ORDERS = ["asc", "desc"];

renderShell("sweeps");
const params = new URLSearchParams(location.search);
const id = params.get("id") || "";
const enc = encodeURIComponent(id);
const sort = {key: params.get("sort") || "", order: ORDERS.includes(params.get("order")) ? params.get("order") : "desc"};
let sweep = null;
let keysSuggested = false;

/** The override keys of the jobs, in the order they first appear. */
function overrideKeys(jobs) {
  const keys = [];
  for (const job of jobs) for (const key of Object.keys(job.overrides || {})) if (!keys.includes(key)) keys.push(key);
  return keys;
}

function renderFacts() {
  document.title = `Sweep ${sweep.name || id} · opeva-spool`;
  $("#sweep-title").textContent = sweep.sweep_id;
  $("#sweep-name").textContent = sweep.name || "";
  const after = sweep.job_fields?.after || [];
  const facts = [["status", sweep.status], ["submitted by", sweep.submitted_by],
    ["submitted", age(sweep.submitted_at)], ["config", sweep.config_path], ["jobs", sweep.job_count],
    ["stop requested", sweep.stop_requested_at ? age(sweep.stop_requested_at) : null],
    ["after", after.length ? after.map((job, i) => [i ? ", " : "", jobLink(job)]) : null]]
    .filter(([, value]) => value !== null && value !== undefined && value !== "" && value !== "—");
  $("#sweep-facts").replaceChildren(...facts.flatMap(([name, value], i) =>
    [i ? " · " : "", `${name} `, el("strong", {class: "mono"}, value)]));
  $("#sweep-counts").replaceChildren(countsBar(sweep.counts, sweep.job_count));
  // Something left to stop: a job neither ended nor deleted (not_found).
  $("#stop-sweep").disabled = !Object.entries(sweep.counts).some(([state, n]) => n && !TERMINAL.has(state)
    && state !== "not_found");
}

function header(keys) {
  const value = sort.key ? el("th", {class: "num sortable", id: "value-header", title: "click to reverse the order",
    onclick: () => setSort(sort.key, sort.order === "desc" ? "asc" : "desc")},
  `${sort.key} ${sort.order === "desc" ? "↓" : "↑"}`) : null;
  return el("tr", {}, el("th", {class: "num"}, "#"), el("th", {}, "job"), el("th", {}, "status"),
    keys.map((key) => el("th", {class: "mono"}, key)), value);
}

function row(job, keys) {
  return el("tr", {dataset: {jobId: job.job_id, status: job.status, index: job.sweep_index}},
    el("td", {class: "num"}, job.sweep_index ?? "—"),
    el("td", {}, jobLink(job.job_id, job.job_id)),
    el("td", {}, badge(job.status)),
    keys.map((key) => el("td", {class: "mono"}, cellValue((job.overrides || {})[key]))),
    sort.key ? el("td", {class: "num mono value"}, cellValue(job.value)) : null);
}

function renderJobs() {
  const jobs = sweep.jobs;
  const keys = overrideKeys(jobs);
  $("#sweep-jobs thead").replaceChildren(header(keys));
  const columns = 3 + keys.length + (sort.key ? 1 : 0);
  $("#sweep-jobs tbody").replaceChildren(...(jobs.length ? jobs.map((job) => row(job, keys))
    : [el("tr", {}, el("td", {colspan: columns, class: "muted"}, "no jobs"))]));
  $("#sweep-jobs").dataset.loaded = String(Date.now());
  $("#sweep-jobs").dataset.sort = sort.key ? `${sort.key}:${sort.order}` : "";
  if (!keysSuggested) suggestKeys(jobs);
}

/** The numeric fields of one finished job's result.json, offered as keys to sort by. */
async function suggestKeys(jobs) {
  const done = jobs.find((job) => job.status === "finished");
  if (!done) return;
  keysSuggested = true;
  try {
    const result = await api(`result/${encodeURIComponent(done.job_id)}`);
    $("#result-keys").replaceChildren(...Object.keys(numericFields(result)).map((key) => el("option", {value: key})));
  } catch {
    keysSuggested = false; // e.g. deleted meanwhile: another job next time
  }
}

async function load() {
  try {
    sweep = await api(`sweeps/${enc}` + query({sort: sort.key, order: sort.key ? sort.order : ""}));
  } catch (err) {
    showError(err);
    return;
  }
  renderFacts();
  renderJobs();
}

function setSort(key, order) {
  sort.key = key.trim();
  sort.order = order;
  $("#sort-key").value = sort.key;
  $("#sort-order").value = sort.order;
  history.replaceState(null, "", location.pathname + query({id, sort: sort.key, order: sort.key ? sort.order : ""}));
  load();
}

function setUp() {
  $("#sort-key").value = sort.key;
  $("#sort-order").value = sort.order;
  $("#sort-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setSort($("#sort-key").value, $("#sort-order").value);
  });
  $("#sort-clear").addEventListener("click", () => setSort("", sort.order));
  $("#stop-sweep").addEventListener("click", async () => {
    if (!(await confirmAction("Stop this sweep? Its queued and waiting jobs are canceled, its running jobs stopped.",
      "Stop"))) return;
    try {
      const answer = await api(`sweeps/${enc}/stop`, {method: "POST"});
      showMessage(answer.message || `sweep ${id}: stop requested`, "info");
      load();
    } catch (err) {
      showError(err);
    }
  });
  $("#delete-sweep").addEventListener("click", async () => {
    if (!(await confirmAction("Delete this sweep and all its jobs' files (logs, results)? This cannot be undone.",
      "Delete"))) return;
    try {
      await api(`sweeps/${enc}`, {method: "DELETE"});
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 409)) return showError(err);
      // Jobs of it still run: deleting them too is a second, explicit choice.
      if (!(await confirmAction(`${err.detail} Stop them and delete everything?`, "Stop and delete"))) return;
      try {
        await api(`sweeps/${enc}?force=1`, {method: "DELETE"});
      } catch (again) {
        return showError(again);
      }
    }
    location.href = "sweeps";
  });
}

if (!id) {
  showMessage("no sweep given: open one from the Sweeps page");
} else {
  setUp();
  load();
  const refresh = throttle(load, 2000);
  // A sweep's jobs are named <sweep id>-<index>: other jobs' events leave this page alone.
  liveUpdates((event) => { if (!event || String(event.job_id || "").startsWith(`${id}-`)) refresh(); },
    {types: ["job"], pollMs: REFRESH_MS});
}
