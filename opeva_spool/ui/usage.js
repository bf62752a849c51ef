// Usage: jobs, attempts, run hours and GPU hours per user or per host (GET /usage?by=&since=).
import {$, api, el, query, renderShell, showError} from "./common.js";

const REFRESH_MS = 30000;
const DAY_MS = 86400000;
const HOURS = {maximumFractionDigits: 2, minimumFractionDigits: 2};

renderShell("usage");
const params = new URLSearchParams(location.search);
const form = {by: params.get("by") === "host" ? "host" : "user", days: params.get("days") || ""};

function cells(name, row, tag = "td") {
  return [el(tag, {}, name), el(tag, {class: "num"}, (row.jobs ?? 0).toLocaleString()),
    el(tag, {class: "num"}, (row.attempts ?? 0).toLocaleString()),
    el(tag, {class: "num"}, (row.run_hours ?? 0).toLocaleString(undefined, HOURS)),
    el(tag, {class: "num"}, (row.gpu_hours ?? 0).toLocaleString(undefined, HOURS))];
}

async function load() {
  const since = form.days ? new Date(Date.now() - Number(form.days) * DAY_MS).toISOString() : "";
  try {
    const answer = await api("usage" + query({by: form.by, since}));
    const rows = answer.rows || [];
    $("#u-name").textContent = form.by;
    $("#usage tbody").replaceChildren(...(rows.length ? rows.map((row) => el("tr", {dataset: {name: row[form.by]}},
      cells(row[form.by] || "(nobody)", row)))
      : [el("tr", {}, el("td", {colspan: 5, class: "muted"}, "nothing ran in this time"))]));
    $("#usage tfoot").replaceChildren(...(rows.length > 1 && answer.total ? [el("tr", {}, cells("total", answer.total, "th"))] : []));
    $("#window").textContent = answer.since ? `(since ${new Date(answer.since).toLocaleString()})` : "(all time)";
    $("#usage").dataset.loaded = String(Date.now());
  } catch (err) {
    showError(err);
  }
}

function setUp() {
  $("#u-by").value = form.by;
  $("#u-since").value = form.days;
  $("#usage-form").addEventListener("change", () => {
    form.by = $("#u-by").value;
    form.days = $("#u-since").value;
    history.replaceState(null, "", location.pathname + query({by: form.by, days: form.days}));
    load();
  });
}

setUp();
load();
setInterval(load, REFRESH_MS);
