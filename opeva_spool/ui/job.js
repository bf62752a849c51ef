// One job: live progress bar, metric plots, the log following live, result, attempts, config, actions.
import {$, ApiError, Chart, TERMINAL, api, apiFetch, apiUrl, badge, cellValue, confirmAction, describeError, duration,
  el, isScalar, jobLink, localTime, numericFields, renderShell, seconds, showError, showMessage, sweepLink,
  whileVisible} from "./common.js";

// While the job has not ended its state, progress, history and metrics are polled this often. (No event
// stream here: the progress needs polling anyway, and the followed log already holds one connection.)
const REFRESH_MS = 1500;
// The log shown keeps at most this many characters (the newest); the download has all of it.
const LOG_KEEP_CHARS = 400000;
const LOG_TAIL_LINES = 2000;
const LOG_RETRY_MS = 2000;
// Candidates for the x axis of metrics.jsonl lines, the first one present wins.
const METRIC_X = ["global_step", "step", "episode", "timestamp", "time"];
// Counters and totals in progress.json: plotted only when picked.
const HISTORY_DEFAULT = (name) => name === "progress_pct" || name.startsWith("rewards.");

renderShell("jobs");
const jobId = new URLSearchParams(location.search).get("id") || "";
const enc = encodeURIComponent(jobId);
let status = null;
let info = {};
let historySince = null;
let metricsOffset = 0;
let metricsX = null;
let refreshTimer = null;
let visible = true; // polling and the log stream pause while the tab is hidden (whileVisible)
const historyChart = new Chart($("#history-plot"), {time: true, xLabel: "time", preferred: HISTORY_DEFAULT});
let metricsChart = null;

// ----- status, facts, progress ---------------------------------------------------------------

let refreshing = null, refreshAgain = false;

/** One refresh at a time (timer, events and actions all ask): a request during one runs once right after. */
async function refresh() {
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = refreshOnce();
  try {
    await refreshing;
  } finally {
    refreshing = null;
  }
  if (refreshAgain) {
    refreshAgain = false;
    await refresh();
  }
}

async function refreshOnce() {
  clearTimeout(refreshTimer);
  try {
    info = await api(`job-info/${enc}`);
  } catch (err) {
    showError(err);
    if (err instanceof ApiError && err.status === 404) return; // deleted: nothing more to follow
    if (visible) refreshTimer = setTimeout(refresh, REFRESH_MS * 2);
    return;
  }
  if (info.status === "queued") await loadQueuePlace();
  const ended = TERMINAL.has(info.status);
  const changed = info.status !== status;
  status = info.status;
  renderFacts();
  await Promise.all([loadProgress(), loadHistory(), loadMetrics()]);
  if (changed) {
    renderAttempts();
    loadResult();
    if (ended) followLog(); // a last read of the whole tail, so nothing written at the end is missed
  }
  $("#stop").disabled = ended;
  document.body.dataset.status = status;
  if (!ended && visible) refreshTimer = setTimeout(refresh, REFRESH_MS);
}

function renderFacts() {
  document.title = `${info.job_name || jobId} · opeva-spool`;
  $("#job-title").textContent = info.job_name || jobId;
  $("#job-status").replaceChildren(badge(info.status));
  const facts = [
    ["id", jobId], ["host", info.host || info.target_host],
    ["target", (info.target_hosts || []).length ? info.target_hosts.join(", ") : info.target_host],
    ["submitted by", info.submitted_by], ["submitted", localTime(info.submitted_at)],
    ["started", localTime(info.started_at)], ["duration", duration(info.started_at, info.ended_at)],
    ["queue wait", seconds(info.queue_wait_seconds)], ["run time", seconds(info.run_seconds)],
    ["attempt", info.attempt], ["priority", info.priority], ["gpus", info.gpus || null], ["config", info.config_path],
    ["exit code", info.exit_code], ["reason", info.reason],
    ["dependency", info.dependency ? [jobLink(info.dependency.job_id), ` ${info.dependency.status}`] : null],
    ["sweep", info.sweep ? [sweepLink(info.sweep), typeof info.sweep_index === "number" ? ` #${info.sweep_index}` : ""] : null],
    ["overrides", Object.entries(info.overrides || {}).map(([key, value]) => `${key}=${cellValue(value)}`).join(" ")],
    ["after", jobLinks(info.after)], ["after any", jobLinks(info.after_any)], ["retries", retries()],
  ].filter(([, value]) => value !== null && value !== undefined && value !== "" && value !== "—");
  $("#job-facts").replaceChildren(...facts.flatMap(([name, value], i) =>
    [i ? " · " : "", `${name} `, el("strong", {class: "mono"}, value instanceof Array ? value : String(value))]));
  renderWaiting();
  $("#info").textContent = JSON.stringify(info, null, 2);
}

/** A queued job's place in the queue and why it waits: /status tells them (job-info does not). */
async function loadQueuePlace() {
  try {
    const place = await api(`status/${enc}`);
    info.queue_position = place.queue_position;
    info.waiting_reason = place.waiting_reason;
  } catch {
    // the facts without them; the next refresh asks again
  }
}

/** Links to jobs (after, after_any); null when there are none. */
function jobLinks(ids) {
  return (ids || []).length ? ids.map((id, i) => [i ? ", " : "", jobLink(id)]) : null;
}

function retries() {
  if (!info.max_retries) return null;
  return `up to ${info.max_retries}${info.retry_on_failure ? " (also after a non-zero exit)" : ""}`;
}

/** What a waiting or queued job waits for: its dependencies and their states, why, and its place in the queue. */
function renderWaiting() {
  const waitingFor = info.waiting_for || [];
  const parts = [];
  if (waitingFor.length) {
    parts.push(el("span", {}, "waiting for ", waitingFor.map((dep, i) => [i ? ", " : "", jobLink(dep.job_id), " ",
      badge(dep.status)])));
  }
  if (info.waiting_reason) parts.push(el("span", {id: "waiting-reason"}, info.waiting_reason));
  if (info.queue_position !== null && info.queue_position !== undefined) {
    parts.push(el("span", {}, "position ", el("strong", {}, String(info.queue_position)), " in the ",
      el("a", {href: "queue"}, "queue")));
  }
  const box = $("#job-waiting");
  box.hidden = !parts.length || TERMINAL.has(info.status);
  box.replaceChildren(...parts.flatMap((part, i) => [i ? " · " : "", part]));
}

async function loadProgress() {
  try {
    const progress = await api(`progress/${enc}`);
    const known = typeof progress.progress_pct === "number";
    const pct = known ? Math.max(0, Math.min(100, progress.progress_pct)) : 0;
    const target = $("#progress");
    target.querySelector(".fill").style.width = `${pct}%`;
    target.querySelector(".label").textContent = known
      ? `${Math.round(pct)}%${progress.status ? ` · ${progress.status}` : ""}` : String(progress.progress || "—");
    target.dataset.pct = String(pct);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) showError(err);
  }
}

// ----- plots ---------------------------------------------------------------------------------

async function loadHistory() {
  try {
    const answer = await api(`progress/${enc}/history` + (historySince ? `?since=${encodeURIComponent(historySince)}` : ""));
    const entries = answer.history || [];
    if (entries.length) historySince = entries[entries.length - 1].at;
    historyChart.add(entries.map((entry) => ({x: Date.parse(entry.at) / 1000, values: numericFields(entry.progress)}))
      .filter((row) => !Number.isNaN(row.x)));
  } catch (err) {
    historyChart.empty.textContent = `no progress history: ${describeError(err)}`;
  }
}

function metricX(line, index) {
  const value = line[metricsX];
  if (metricsX === "timestamp" || metricsX === "time") {
    return typeof value === "number" ? value : Date.parse(value) / 1000;
  }
  return typeof value === "number" ? value : index;
}

async function loadMetrics() {
  try {
    const answer = await api(`job-metrics/${enc}?offset=${metricsOffset}`);
    const lines = answer.metrics || [];
    metricsOffset = answer.offset ?? metricsOffset;
    if (!lines.length) return;
    if (!metricsChart) {
      metricsX = METRIC_X.find((name) => name in lines[0]) || null;
      const time = metricsX === "timestamp" || metricsX === "time";
      metricsChart = new Chart($("#metrics-plot"), {time, xLabel: metricsX || "line"});
    }
    const start = metricsChart.rows.length;
    metricsChart.add(lines.map((line, i) => {
      const values = numericFields(line);
      for (const name of METRIC_X) delete values[name];
      return {x: metricX(line, start + i), values};
    }).filter((row) => Number.isFinite(row.x)));
  } catch (err) {
    $("#metrics-plot").replaceChildren(el("p", {class: "muted"}, `no metrics: ${describeError(err)}`));
  }
}

// ----- log -----------------------------------------------------------------------------------

let logReader = null;

/** Read the log (its last lines, then new ones while following) into the page; one reader at a time. */
async function followLog() {
  if (logReader) logReader.abort();
  const controller = new AbortController();
  logReader = controller;
  const attempt = $("#log-attempt").hidden ? "" : $("#log-attempt").value;
  const current = !attempt || Number(attempt) === info.attempt;
  const follow = $("#log-follow").checked && current && !TERMINAL.has(status);
  const params = new URLSearchParams({tail: LOG_TAIL_LINES});
  if (follow) params.set("follow", "1");
  if (attempt) params.set("attempt", attempt);
  const download = new URLSearchParams(attempt ? {attempt} : {});
  $("#log-download").href = apiUrl(`logs/${enc}` + (download.size ? `?${download}` : ""));
  $("#log-download").download = `${jobId}${attempt ? `-attempt-${attempt}` : ""}.log`;
  const pre = $("#log");
  $("#log-state").textContent = follow ? "following" : "";
  try {
    const response = await apiFetch(`logs/${enc}?${params}`, {signal: controller.signal});
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    pre.textContent = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      appendLog(pre, value);
    }
  } catch (err) {
    if (err.name === "AbortError") return;
    $("#log-state").textContent = describeError(err);
  }
  if (logReader !== controller) return;
  logReader = null;
  $("#log-state").textContent = "";
  // The stream ended while the job still runs (server restarting, proxy timeout): pick it up again.
  if (follow && !TERMINAL.has(status)) setTimeout(() => { if (!logReader && visible) followLog(); }, LOG_RETRY_MS);
}

function appendLog(pre, text) {
  const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
  let all = pre.textContent + text;
  if (all.length > LOG_KEEP_CHARS) all = all.slice(all.length - LOG_KEEP_CHARS);
  pre.textContent = all;
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

// ----- result, attempts, config ----------------------------------------------------------------

async function loadResult() {
  let result;
  try {
    result = await api(`result/${enc}`);
  } catch (err) {
    $("#result").textContent = describeError(err);
    return;
  }
  const scalars = [];
  const rest = {};
  for (const [key, value] of Object.entries(result)) {
    if (isScalar(value)) scalars.push([key, value]);
    else if (key === "kpis" && value && typeof value === "object" && !Array.isArray(value)) {
      for (const [name, kpi] of Object.entries(value)) {
        if (isScalar(kpi)) scalars.push([`kpis.${name}`, kpi]);
        else rest[`kpis.${name}`] = kpi;
      }
    } else rest[key] = value;
  }
  const table = el("table", {class: "kv", id: "result-table"}, el("tbody", {}, scalars.map(([name, value]) =>
    el("tr", {}, el("th", {}, name), el("td", {class: "wrap mono"}, typeof value === "number"
      ? value.toLocaleString(undefined, {maximumFractionDigits: 6}) : String(value))))));
  $("#result").className = "";
  $("#result").replaceChildren(table,
    Object.keys(rest).length ? el("pre", {class: "json"}, JSON.stringify(rest, null, 2)) : "");
}

function renderAttempts() {
  const attempts = info.attempts || (info.attempt ? [{attempt: info.attempt, host: info.host, state: info.status,
    started_at: info.started_at, ended_at: info.ended_at, exit_code: info.exit_code, reason: info.reason}] : []);
  $("#attempts tbody").replaceChildren(...attempts.map((a) => el("tr", {dataset: {attempt: a.attempt}},
    el("td", {}, a.attempt), el("td", {}, a.host || "—"), el("td", {}, badge(a.state)),
    el("td", {}, localTime(a.started_at || a.claimed_at)), el("td", {}, localTime(a.ended_at)),
    el("td", {}, a.exit_code ?? "—"), el("td", {class: "wrap"}, a.reason || "—"),
    el("td", {}, a.retry_at ? localTime(a.retry_at) : "—"),
    el("td", {}, a.started_at || a.log ? el("a", {href: apiUrl(`logs/${enc}?attempt=${a.attempt}`),
      download: `${jobId}-attempt-${a.attempt}.log`, class: "attempt-log"}, "log") : "—"))));
  const select = $("#log-attempt");
  if (attempts.length > 1) {
    const chosen = select.value;
    select.replaceChildren(...attempts.map((a) => el("option", {value: a.attempt}, `attempt ${a.attempt}`)));
    select.value = chosen || String(info.attempt);
    select.hidden = false;
  }
}

async function loadConfig() {
  try {
    const response = await apiFetch(`job-config/${enc}`);
    $("#config").textContent = await response.text();
  } catch (err) {
    $("#config").textContent = err instanceof ApiError && err.status === 404 ? "no config snapshot (a command job)"
      : describeError(err);
  }
}

// ----- actions ---------------------------------------------------------------------------------

function action(button, question, label, run) {
  button.addEventListener("click", async () => {
    if (!(await confirmAction(question, label))) return;
    button.disabled = true;
    try {
      await run();
    } catch (err) {
      showError(err);
    } finally {
      button.disabled = TERMINAL.has(status) && button.id === "stop";
    }
  });
}

action($("#stop"), "Stop this job? A running job gets its stop signal; a queued one is canceled.", "Stop", async () => {
  const answer = await api(`stop/${enc}`, {method: "POST"});
  showMessage(answer.message || "stop requested", "info");
  refresh();
});
action($("#delete"), "Delete this job and all its files (logs, results)? This cannot be undone.", "Delete", async () => {
  await api(`job/${enc}`, {method: "DELETE"});
  location.href = "./";
});
action($("#resubmit"), "Submit this job again (same config snapshot, image and command)?", "Resubmit", async () => {
  const job = await api(`resubmit/${enc}`, {method: "POST", body: {}});
  location.href = `job?id=${encodeURIComponent(job.job_id)}`;
});

// ----- start ---------------------------------------------------------------------------------

if (!jobId) {
  showMessage("no job given: open a job from the Jobs page");
} else {
  $("#log-follow").addEventListener("change", followLog);
  $("#log-attempt").addEventListener("change", followLog);
  loadConfig();
  whileVisible(() => {
    visible = true;
    refresh().then(() => {
      if (!logReader) followLog();
    });
  }, () => {
    visible = false;
    clearTimeout(refreshTimer);
    if (logReader) logReader.abort();
    logReader = null;
  });
}
