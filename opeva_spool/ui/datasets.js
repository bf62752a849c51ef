// Datasets: list, build (with its progress), download, delete; a chart of a site's recent data.
// Without MongoDB the site routes answer 503: the page says so and the rest keeps working.
import {$, ApiError, Chart, api, apiFetch, apiUrl, bytes, confirmAction, describeError, el, localTime, numericFields, progressBar,
  query, renderShell, showError, showMessage} from "./common.js";

const BUILD_POLL_MS = 1000;
const PERIODS = [5, 10, 15, 30, 60, 120, 180, 360, 720, 1440]; // minutes; each divides a day
const DEFAULT_PERIOD = 60;
const SITE_DATA_LIMIT = 2000;

renderShell("datasets");

// ----- list ----------------------------------------------------------------------------------

async function loadDatasets() {
  try {
    const datasets = await api("datasets");
    $("#datasets tbody").replaceChildren(...(datasets.length ? datasets.map((d) => el("tr", {dataset: {name: d.name}},
      el("td", {}, el("strong", {}, d.name), d.description ? el("div", {class: "muted"}, d.description) : ""),
      el("td", {}, d.site || "—"),
      el("td", {}, d.period ? `${d.period} min` : "—"),
      el("td", {class: "wrap"}, d.from_ts ? `${d.from_ts} → ${d.until_ts}` : "—"),
      el("td", {}, bytes(d.size)),
      el("td", {class: "hide-narrow"}, localTime(d.created_at)),
      el("td", {},
        el("a", {class: "button", href: apiUrl(`dataset/download/${encodeURIComponent(d.name)}`)}, "Download"), " ",
        el("button", {type: "button", class: "danger", dataset: {needs: "submit"}, onclick: () => remove(d.name)}, "Delete"))))
      : [el("tr", {}, el("td", {colspan: 7, class: "muted"}, "no datasets yet"))]));
  } catch (err) {
    showError(err);
  }
}

async function remove(name) {
  if (!(await confirmAction(`Delete dataset ${name}?`, "Delete"))) return;
  try {
    await api(`dataset/${encodeURIComponent(name)}`, {method: "DELETE"});
    showMessage(`deleted ${name}`, "info");
    loadDatasets();
  } catch (err) {
    showError(err);
  }
}

// ----- build ---------------------------------------------------------------------------------

function buildCard(name) {
  const card = el("div", {class: "card build", dataset: {name}}, el("strong", {}, name), " ",
    el("span", {class: "state"}), " ", el("span", {class: "progress"}), " ", el("span", {class: "muted stage"}),
    el("div", {class: "notes muted"}));
  $("#builds").prepend(card);
  return card;
}

async function watchBuild(name) {
  const card = buildCard(name);
  for (;;) {
    let status;
    try {
      status = await api(`dataset/status/${encodeURIComponent(name)}`);
    } catch (err) {
      card.querySelector(".notes").textContent = describeError(err);
      return;
    }
    card.querySelector(".state").replaceChildren(el("span", {class: `badge ${status.state}`}, status.state));
    card.querySelector(".progress").replaceChildren(progressBar(status.progress_pct));
    card.querySelector(".stage").textContent = status.stage || "";
    const warnings = status.warnings || [];
    card.querySelector(".notes").replaceChildren(
      status.error ? el("div", {class: "error-text"}, status.error) : "",
      warnings.length ? el("details", {}, el("summary", {}, `${warnings.length} warning${warnings.length > 1 ? "s" : ""}`),
        el("ul", {}, warnings.map((warning) => el("li", {}, warning)))) : "");
    if (status.state !== "building") {
      loadDatasets();
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, BUILD_POLL_MS));
  }
}

async function build(event) {
  event.preventDefault();
  const form = event.target;
  const body = {name: form.elements.name.value.trim(), site_id: form.elements.site_id.value,
    period: Number(form.elements.period.value), from_ts: form.elements.from_ts.value,
    until_ts: form.elements.until_ts.value};
  if (form.elements.description.value.trim()) body.description = form.elements.description.value.trim();
  $("#build-button").disabled = true;
  try {
    const accepted = await api("dataset", {method: "POST", body});
    watchBuild(accepted.name);
  } catch (err) {
    showError(err);
  } finally {
    $("#build-button").disabled = false;
  }
}

// ----- sites and their recent data -----------------------------------------------------------------

async function loadSites() {
  try {
    const {sites} = await api("sites");
    for (const select of [$("#b-site"), $("#rt-site")]) {
      select.replaceChildren(...sites.map((site) => el("option", {value: site}, site)));
    }
    if (!sites.length) $("#site-plot").replaceChildren(el("p", {class: "muted"}, "no sites yet"));
    else loadSiteData();
  } catch (err) {
    // 503 without MongoDB: say so where site data would be, keep the rest of the page.
    const note = err instanceof ApiError && err.status === 503
      ? `Site data is unavailable: ${err.detail}` : describeError(err);
    $("#sitedata-note").replaceChildren(el("div", {class: "card muted", id: "sitedata-unavailable"}, note));
    $("#site-plot").replaceChildren(el("p", {class: "muted"}, note));
    $("#build-button").disabled = true;
  }
}

// The site's recent data as the original API answers it: {collection: [documents, oldest first]}, the newest
// SITE_DATA_LIMIT of each; the per-collection totals come in a header (name=total&...).
let siteAnswer = null;
let siteTotals = new URLSearchParams();

async function loadSiteData() {
  const site = $("#rt-site").value;
  if (!site) return;
  try {
    const response = await apiFetch(`real-time-data/${encodeURIComponent(site)}` +
      query({minutes: $("#rt-minutes").value, limit: SITE_DATA_LIMIT}));
    siteAnswer = await response.json();
    siteTotals = new URLSearchParams(response.headers.get("X-Collection-Totals") || "");
  } catch (err) {
    $("#site-plot").replaceChildren(el("p", {class: "muted"}, describeError(err)));
    return;
  }
  const names = Object.keys(siteAnswer || {});
  const select = $("#rt-collection");
  const chosen = names.includes(select.value) ? select.value : names[0];
  select.replaceChildren(...names.map((name) => el("option", {value: name}, name)));
  if (chosen) select.value = chosen;
  plotCollection();
}

function plotCollection() {
  const name = $("#rt-collection").value;
  const documents = siteAnswer?.[name];
  const chart = new Chart($("#site-plot"), {time: true, xLabel: "time"});
  if (!Array.isArray(documents)) return;
  chart.add(documents.map((doc) => ({x: Date.parse(doc.timestamp) / 1000, values: numericFields(doc)}))
    .filter((row) => Number.isFinite(row.x)));
  const total = Number(siteTotals.get(name));
  if (total > documents.length) {
    $("#site-plot").append(el("p", {class: "muted"}, `newest ${documents.length} of ${total} shown`));
  }
}

// ----- start ---------------------------------------------------------------------------------

$("#b-period").replaceChildren(...PERIODS.map((p) => el("option", {value: p, selected: p === DEFAULT_PERIOD}, String(p))));
$("#build-form").addEventListener("submit", build);
$("#rt-site").addEventListener("change", loadSiteData);
$("#rt-minutes").addEventListener("change", loadSiteData);
$("#rt-collection").addEventListener("change", plotCollection);
loadDatasets();
loadSites();
