// Configs: list, view, create, edit and delete the YAML files under configs/; a save the server
// refuses shows its message and marks the line it names.
import {$, ApiError, api, apiFetch, confirmAction, describeError, el, renderShell, showError,
  showMessage} from "./common.js";

renderShell("configs");
const text = $("#config-text");
const gutter = $("#gutter");
const nameInput = $("#config-name");
let current = new URLSearchParams(location.search).get("file") || "";
let badLine = null;

function renderGutter() {
  const lines = text.value.split("\n").length;
  gutter.replaceChildren(...Array.from({length: lines}, (_, i) =>
    [el("span", {class: i + 1 === badLine ? "bad" : null}, String(i + 1)), "\n"]).flat());
  gutter.scrollTop = text.scrollTop;
}

/** Show a refused save under the editor, mark its line; returns where it is ("line 3, column 5") or "". */
function markError(err) {
  // The line comes as a field of the 400 (1-based); older servers only name it in the detail.
  const named = /line (\d+)(?:, column (\d+))?/.exec(err.detail || "");
  const line = err.body?.line ?? (named ? Number(named[1]) : null);
  const column = err.body?.column ?? (named && named[2] ? Number(named[2]) : null);
  badLine = line;
  renderGutter();
  const where = line ? `line ${line}${column ? `, column ${column}` : ""}` : "";
  $("#config-error").className = "error-text";
  $("#config-error").textContent = where ? `${where}: ${err.detail}` : err.detail;
  if (line) {
    const lines = text.value.split("\n");
    const start = lines.slice(0, line - 1).reduce((sum, l) => sum + l.length + 1, 0);
    text.focus();
    text.setSelectionRange(start, start + (lines[line - 1] || "").length);
    text.scrollTop = Math.max(0, (line - 5) * 18);
  }
  return where;
}

function clearError() {
  badLine = null;
  $("#config-error").className = "muted";
  $("#config-error").textContent = "";
  renderGutter();
}

async function loadList() {
  try {
    const names = await api("experiment-configs");
    $("#config-list").replaceChildren(...(names.length ? names.map((name) => el("li", {},
      el("a", {href: `configs?file=${encodeURIComponent(name)}`, class: name === current ? "active" : null,
        dataset: {file: name}, onclick: (event) => {
          event.preventDefault();
          open(name);
        }}, name))) : [el("li", {class: "muted"}, "no configs yet")]));
  } catch (err) {
    showError(err);
  }
}

async function open(name) {
  try {
    const response = await apiFetch(`experiment-configs/${encodeURIComponent(name)}?format=yaml`);
    text.value = await response.text();
    current = name;
    nameInput.value = name;
    $("#delete-config").disabled = false;
    history.replaceState(null, "", `configs?file=${encodeURIComponent(name)}`);
    clearError();
    for (const link of document.querySelectorAll("#config-list a")) link.classList.toggle("active", link.dataset.file === name);
  } catch (err) {
    showError(err);
  }
}

function startNew() {
  current = "";
  nameInput.value = "";
  text.value = "experiment:\n  name: my-experiment\n  run_name: first\n";
  $("#delete-config").disabled = true;
  history.replaceState(null, "", "configs");
  for (const link of document.querySelectorAll("#config-list a.active")) link.classList.remove("active");
  clearError();
  nameInput.focus();
}

async function save(event) {
  event.preventDefault();
  const fileName = nameInput.value.trim();
  $("#save-config").disabled = true;
  try {
    // Saving under a new name must not replace someone else's file; saving the open file replaces it.
    const answer = await api("experiment-configs/create", {method: "POST",
      body: {file_name: fileName, config: text.value, overwrite: fileName === current}});
    clearError();
    showMessage(answer.message || `saved ${fileName}`, "info");
    current = answer.file || fileName;
    nameInput.value = current;
    $("#delete-config").disabled = false;
    history.replaceState(null, "", `configs?file=${encodeURIComponent(current)}`);
    await loadList();
  } catch (err) {
    // A 400 is explained under the editor, at its line; the line at the top only says so.
    const where = err instanceof ApiError && err.status === 400 ? markError(err) : "";
    showMessage(where ? `${err.status} ${err.error}: not saved, see ${where} under the editor` : describeError(err));
  } finally {
    $("#save-config").disabled = false;
  }
}

async function remove() {
  if (!current || !(await confirmAction(`Delete config ${current}? (its last version is kept in the history)`, "Delete"))) return;
  try {
    await api(`experiment-configs/${encodeURIComponent(current)}`, {method: "DELETE"});
    showMessage(`deleted ${current}`, "info");
    startNew();
    await loadList();
  } catch (err) {
    showError(err);
  }
}

text.addEventListener("input", () => {
  if (badLine) clearError();
  else renderGutter();
});
text.addEventListener("scroll", () => { gutter.scrollTop = text.scrollTop; });
$("#config-form").addEventListener("submit", save);
$("#new-config").addEventListener("click", startNew);
$("#delete-config").addEventListener("click", remove);
loadList();
if (current) open(current);
else startNew();
