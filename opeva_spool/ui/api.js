// API: every route of GET /openapi.json, grouped by its first path segment, each unfolding into its
// parameters, body and replies. Rendered as text only (never as HTML): the document is data.
import {$, api, el, renderShell, showError} from "./common.js";

renderShell("api");
let operations = [];

/** A schema as indented JSON (a shared one shows as its $ref). */
function schemaText(schema) {
  return JSON.stringify(schema ?? {}, null, 2);
}

function parameterRows(parameters) {
  return parameters.map((p) => el("tr", {},
    el("td", {}, el("code", {}, p.name)), el("td", {}, p.in), el("td", {}, p.required ? "required" : ""),
    el("td", {}, el("code", {}, JSON.stringify(p.schema ?? {})))));
}

function replies(responses) {
  return Object.entries(responses).map(([status, reply]) => el("div", {class: "part"},
    el("strong", {}, status), " ", el("span", {class: "muted"}, reply.description || ""),
    Object.entries(reply.content || {}).map(([type, media]) => el("details", {},
      el("summary", {}, type), el("pre", {class: "json"}, schemaText(media.schema)))),
    reply.headers ? el("div", {class: "muted"}, "headers: ", Object.keys(reply.headers).join(", ")) : null));
}

function operationCard(op) {
  const {method, path, spec} = op;
  return el("details", {class: "card", id: spec.operationId, dataset: {method, path}},
    el("summary", {}, el("span", {class: `badge method-${method}`}, method.toUpperCase()), " ", el("code", {}, path),
      " ", el("span", {class: "muted"}, spec.summary || "")),
    spec.description ? el("p", {}, spec.description) : null,
    spec.parameters?.length ? el("div", {class: "table-wrap"}, el("table", {class: "kv"},
      el("thead", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "in"), el("th", {}, ""),
        el("th", {}, "schema"))),
      el("tbody", {}, parameterRows(spec.parameters)))) : null,
    spec.requestBody ? el("details", {}, el("summary", {}, "body (application/json)"),
      el("pre", {class: "json"}, schemaText(spec.requestBody.content?.["application/json"]?.schema))) : null,
    el("h3", {}, "replies"), replies(spec.responses || {}));
}

function render() {
  const words = $("#api-filter").value.trim().toLowerCase().split(/\s+/).filter(Boolean);
  const shown = operations.filter((op) => words.every((word) =>
    `${op.method} ${op.path} ${op.spec.summary || ""}`.toLowerCase().includes(word)));
  const groups = new Map();
  for (const op of shown) {
    const tag = op.spec.tags?.[0] || "other";
    if (!groups.has(tag)) groups.set(tag, []);
    groups.get(tag).push(op);
  }
  $("#api-operations").replaceChildren(...(shown.length ? [...groups].map(([tag, ops]) =>
    el("section", {}, el("h2", {}, tag), ops.map(operationCard)))
    : [el("p", {class: "muted"}, "no route matches")]));
  $("#api-count").textContent = `${shown.length} of ${operations.length} operations`;
  $("#api-operations").dataset.loaded = String(Date.now());
}

async function load() {
  try {
    const document_ = await api("openapi.json");
    $("#api-version").textContent = `(OpenAPI ${document_.openapi}, ${document_.info?.title} ${document_.info?.version})`;
    operations = Object.entries(document_.paths || {}).flatMap(([path, methods]) =>
      Object.entries(methods).map(([method, spec]) => ({method, path, spec})));
    render();
  } catch (err) {
    showError(err);
  }
}

$("#api-filter").addEventListener("input", render);
load();
