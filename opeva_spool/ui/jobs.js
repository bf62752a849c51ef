// Jobs: newest first, filters in the URL, cursor pages, live refresh, and a submit form.
import {$, STATES, age, api, apiFetch, badge, duration, el, liveUpdates, progressBar, query, renderShell, seconds,
  showError, showMessage, sweepLink, throttle} from "./common.js";

const PAGE_SIZE = 50;
// Progress of running jobs changes without a state event: the visible page is refreshed this often while one runs.
const ACTIVE_REFRESH_MS = 5000;
const FILTERS = ["status", "host", "submitter", "q"];
const ACTIVE = new Set(["waiting", "queued", "dispatched", "running"]);
const COLUMNS = 9;
// A performance mark at the first frame painted with jobs in the table: bench/dashboard.py reads it.
const FIRST_DATA_MARK = "opeva:jobs-first-data";

renderShell("jobs");
const params = new URLSearchParams(location.search);
const filters = Object.fromEntries(FILTERS.map((name) => [name, params.get(name) || ""]));
let cursors = [""]; // cursors[i] opens page i; the last one is the page shown
let loading = null;

const jobsTable = $("#jobs tbody");

function field(item, name) {
  return item[name] ?? item.job_info?.[name] ?? null;
}

/** The job's sweep, linked to its page, with the job's index in it. */
function sweepCell(item) {
  const sweep = field(item, "sweep");
  if (!sweep) return "—";
  const index = field(item, "sweep_index");
  return [sweepLink(String(sweep)), index === null ? "" : el("span", {class: "muted"}, ` #${index}`)];
}

/** Run time: the server's sum over attempts when it gives one, else the current attempt's start to end. */
function ran(item) {
  return typeof item.run_seconds === "number" && item.run_seconds > 0 ? seconds(item.run_seconds)
    : duration(item.started_at, item.ended_at);
}

function row(item) {
  const name = field(item, "job_name");
  const link = el("a", {href: `job?id=${encodeURIComponent(item.job_id)}`, class: "job-link"},
    name || item.job_id.slice(0, 8));
  return el("tr", {dataset: {jobId: item.job_id, status: item.status}},
    el("td", {}, badge(item.status)),
    el("td", {}, link, " ", el("span", {class: "muted mono hide-narrow"}, item.job_id.slice(0, 8))),
    el("td", {}, item.host || field(item, "target_host") || "—"),
    el("td", {class: "hide-narrow"}, field(item, "submitted_by") || "—"),
    el("td", {class: "hide-narrow"}, sweepCell(item)),
    el("td", {}, progressBar(item.progress_pct)),
    el("td", {title: item.submitted_at || ""}, age(item.submitted_at)),
    el("td", {class: "hide-narrow", title: "from submit to the first claim"}, seconds(item.queue_wait_seconds)),
    el("td", {class: "hide-narrow"}, ran(item)));
}

async function load() {
  const controller = new AbortController();
  if (loading) loading.abort(); // a newer request (filter typed, page turned) wins
  loading = controller;
  const cursor = cursors[cursors.length - 1];
  try {
    const response = await apiFetch("jobs" + query({...filters, limit: PAGE_SIZE, cursor}), {signal: controller.signal});
    const items = await response.json();
    const next = response.headers.get("X-Next-Cursor");
    const total = response.headers.get("X-Total-Count");
    jobsTable.replaceChildren(...(items.length ? items.map(row)
      : [el("tr", {}, el("td", {colspan: COLUMNS, class: "muted"}, "no jobs match"))]));
    $("#total").textContent = total !== null ? `(${Number(total).toLocaleString()})` : "";
    $("#older").disabled = !next;
    $("#older").dataset.cursor = next || "";
    $("#newer").disabled = cursors.length <= 1;
    $("#page-info").textContent = `page ${cursors.length}`;
    $("#jobs").dataset.loaded = String(Date.now());
    if (!performance.getEntriesByName(FIRST_DATA_MARK).length) requestAnimationFrame(() => performance.mark(FIRST_DATA_MARK));
    scheduleActiveRefresh(items.some((item) => ACTIVE.has(item.status)) && document.visibilityState === "visible");
  } catch (err) {
    if (err.name !== "AbortError") showError(err);
  } finally {
    if (loading === controller) loading = null;
  }
}

let activeTimer = null;

function scheduleActiveRefresh(anyActive) {
  clearTimeout(activeTimer);
  if (anyActive) activeTimer = setTimeout(load, ACTIVE_REFRESH_MS);
}

function applyFilters() {
  const form = $("#filters");
  for (const name of FILTERS) filters[name] = form.elements[name].value.trim();
  history.replaceState(null, "", location.pathname + query(filters));
  cursors = [""];
  load();
}

function setUpFilters() {
  const form = $("#filters");
  const status = $("#f-status");
  status.append(...STATES.map((state) => el("option", {value: state}, state)));
  for (const name of FILTERS) {
    const input = form.elements[name];
    if (filters[name] && input.tagName === "SELECT" && ![...input.options].some((o) => o.value === filters[name])) {
      input.append(el("option", {value: filters[name]}, filters[name]));
    }
    input.value = filters[name];
  }
  let typing = null;
  form.addEventListener("input", (event) => {
    clearTimeout(typing);
    typing = setTimeout(applyFilters, event.target.tagName === "SELECT" ? 0 : 300);
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    applyFilters();
  });
  $("#older").addEventListener("click", () => {
    cursors.push($("#older").dataset.cursor);
    load();
  });
  $("#newer").addEventListener("click", () => {
    cursors.pop();
    load();
  });
}

// After the first page is shown: the lists that fill the host filter and the submit form.
async function loadChoices() {
  try {
    const {hosts} = await api("hosts");
    const names = hosts.map((host) => host.host);
    for (const select of [$("#f-host"), $("#submit-host")]) {
      const known = new Set([...select.options].map((option) => option.value));
      select.append(...names.filter((name) => !known.has(name)).map((name) => el("option", {value: name}, name)));
    }
    $("#f-host").value = filters.host;
  } catch (err) {
    showError(err);
  }
}

async function loadConfigNames() {
  try {
    const names = await api("experiment-configs");
    $("#config-names").replaceChildren(...names.map((name) => el("option", {value: name})));
  } catch (err) {
    showError(err);
  }
}

/** dashboard-20261207-120500.yaml: a name for a pasted config that was given none. */
function defaultConfigName() {
  const stamp = new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
  return `dashboard-${stamp}.yaml`;
}

function setUpSubmit() {
  $("#show-submit").addEventListener("click", () => {
    const card = $("#submit-card");
    card.hidden = !card.hidden;
    if (!card.hidden) {
      loadConfigNames();
      $("#submit-config").focus();
    }
  });
  $("#submit-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const yaml = form.elements.yaml.value;
    const body = {config_path: form.elements.config_path.value.trim(), submitted_by: "dashboard"};
    if (form.elements.target_host.value) body.target_host = form.elements.target_host.value;
    if (form.elements.job_name.value.trim()) body.job_name = form.elements.job_name.value.trim();
    if (form.elements.priority.value) body.priority = Number(form.elements.priority.value);
    if (Number(form.elements.gpus.value)) body.gpus = Number(form.elements.gpus.value);
    const after = form.elements.after.value.split(",").map((id) => id.trim()).filter(Boolean);
    if (after.length) body.after = after;
    $("#submit-button").disabled = true;
    try {
      if (yaml.trim()) {
        // /run-simulation takes an inline config as JSON only: YAML is saved as a config (never over
        // another one), and the job runs that, as it would from the config's name.
        const saved = await api("experiment-configs/create", {method: "POST",
          body: {file_name: form.elements.save_as.value.trim() || defaultConfigName(), config: yaml, overwrite: false}});
        body.config_path = saved.file;
      }
      const job = await api("run-simulation", {method: "POST", body});
      showMessage(`job ${job.job_id} ${job.status || "queued"}`, "info");
      location.href = `job?id=${encodeURIComponent(job.job_id)}`;
    } catch (err) {
      showError(err);
    } finally {
      $("#submit-button").disabled = false;
    }
  });
}

setUpFilters();
load().then(loadChoices);
setUpSubmit();
const refresh = throttle(() => { if (!loading) load(); }, 1000);
liveUpdates(refresh, {types: ["job"]});
