// What every dashboard page shares: the shell (nav, token field, message line), API calls, live
// events with a polling fallback, a confirmation dialog, DOM building and formatting.

// The API sits one level above /ui/: relative, so the dashboard also works behind a path prefix.
export const API_BASE = new URL("../", location.href);
const TOKEN_KEY = "opeva.token";
// The token also travels as this cookie, for what cannot send a header: the event stream (EventSource) and
// download links. The server takes the cookie for reads only, so it cannot be used to change anything.
const TOKEN_COOKIE = "opeva_token";
const TOKEN_CHANGED = "opeva-token-changed";
export const TERMINAL = new Set(["finished", "failed", "stopped", "canceled"]);
// Every job state, in the order a job goes through them (waiting: for the jobs it depends on).
export const STATES = ["waiting", "queued", "dispatched", "running", "finished", "failed", "stopped", "canceled"];
const PAGES = [["jobs", "Jobs"], ["queue", "Queue"], ["sweeps", "Sweeps"], ["hosts", "Hosts"], ["usage", "Usage"],
  ["configs", "Configs"], ["datasets", "Datasets"], ["api", "API"]];
// While /events is unreachable (not served, or the connection dropped) pages poll; the stream is tried again this often.
const EVENTS_RETRY_MS = 30000;

// ----- DOM -----------------------------------------------------------------------------------

/** el("a", {href: "x", class: "y", onclick: fn}, "text", childNode, [nested, [lists]], ...): text is never parsed
 * as HTML. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : String(c))));
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

// ----- the shell -----------------------------------------------------------------------------

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

/** The session's token as the read-only cookie (a session cookie, this server's paths only), or none. */
function setTokenCookie(value) {
  const scope = `; path=${API_BASE.pathname}; SameSite=Strict${location.protocol === "https:" ? "; Secure" : ""}`;
  document.cookie = value ? `${TOKEN_COOKIE}=${encodeURIComponent(value)}${scope}`
    : `${TOKEN_COOKIE}=${scope}; max-age=0`;
}

/** Nav, token field and message line at the top of the page; ``active`` is the page's nav key. */
export function renderShell(active) {
  const tokenInput = el("input", {type: "password", id: "token", placeholder: "API token", autocomplete: "off",
    value: token(), "aria-label": "API token"});
  tokenInput.addEventListener("change", () => {
    const value = tokenInput.value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    setTokenCookie(value);
    showMessage(value ? "token saved for this browser session" : "token cleared", "info");
    window.dispatchEvent(new Event(TOKEN_CHANGED)); // a refused event stream tries again with it
  });
  setTokenCookie(token());
  const header = el("header", {class: "shell"},
    el("a", {class: "brand", href: "./"}, "opeva-spool"),
    el("nav", {}, PAGES.map(([key, label]) =>
      el("a", {href: key === "jobs" ? "./" : key, class: key === active ? "active" : null}, label))),
    el("span", {id: "whoami", class: "muted"}),
    el("label", {class: "token", title: "sent as 'Authorization: Bearer'; kept for this session only"},
      "token ", tokenInput));
  document.body.prepend(header, el("div", {id: "message", role: "status", hidden: true}));
  showIdentity();
  window.addEventListener(TOKEN_CHANGED, showIdentity);
}

/** Who the token is (GET /whoami): its user in the nav, its roles on <body data-roles>, where app.css hides the
 * buttons marked data-needs="<role>" that the roles do not allow. Without an accepted token nothing is hidden:
 * the server's 401 then says a token is needed. */
async function showIdentity() {
  const shown = $("#whoami");
  delete document.body.dataset.roles;
  shown.textContent = "";
  if (!token()) return;
  try {
    const who = await api("whoami");
    if (!who.user) return; // auth off: everybody may do everything
    document.body.dataset.roles = who.roles.join(" ");
    shown.textContent = who.user;
    shown.title = `roles: ${who.roles.join(", ")}`;
  } catch {
    // a token the server refuses: the page's own calls show why
  }
}

let messageTimer = null;

/** A visible message under the nav: kind "error" stays until closed, "info" fades after a while. */
export function showMessage(text, kind = "error") {
  const box = $("#message");
  clearTimeout(messageTimer);
  box.replaceChildren(el("span", {class: "text"}, text),
    el("button", {type: "button", class: "close", "aria-label": "close", onclick: () => { box.hidden = true; }}, "×"));
  box.className = kind;
  box.hidden = false;
  if (kind !== "error") messageTimer = setTimeout(() => { box.hidden = true; }, 4000);
}

export function showError(err) {
  showMessage(describeError(err), "error");
}

export function describeError(err) {
  if (err instanceof ApiError) return `${err.status} ${err.error}: ${err.detail}`;
  return `cannot reach the server: ${err.message || err}`;
}

// ----- the API -------------------------------------------------------------------------------

export class ApiError extends Error {
  constructor(status, body) {
    super(body.detail || body.error || `HTTP ${status}`);
    this.status = status;
    this.error = body.error || `http_${status}`;
    this.detail = body.detail || "";
    this.body = body;
  }
}

export function apiUrl(path) {
  return new URL(path.replace(/^\//, ""), API_BASE).toString();
}

/** fetch an API path; resolves to the Response when ok, else throws an ApiError from the JSON error body. */
export async function apiFetch(path, {method = "GET", body, headers = {}, signal} = {}) {
  const init = {method, headers: {...headers}, signal};
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  if (token()) init.headers.Authorization = `Bearer ${token()}`; // reads too: with a tokens file they need it
  const response = await fetch(apiUrl(path), init);
  if (!response.ok) {
    let error;
    try {
      error = await response.json();
    } catch {
      error = {error: `http_${response.status}`, detail: response.statusText};
    }
    throw new ApiError(response.status, error);
  }
  return response;
}

/** An API call answering JSON. */
export async function api(path, options) {
  return (await apiFetch(path, options)).json();
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value !== "" && value != null) search.set(key, value);
  const text = search.toString();
  return text ? `?${text}` : "";
}

// ----- live updates --------------------------------------------------------------------------

/**
 * Call ``onChange(event)`` for each server event of ``types`` (job, host) from GET /events, and
 * ``onChange(null)`` every ``pollMs`` while the stream is not connected (not served yet, dropped,
 * server restarting): the page then refreshes by polling. EventSource resumes with Last-Event-ID
 * itself after a drop; a stream the server refused (closed) is tried again every EVENTS_RETRY_MS.
 * Nothing runs while the tab is hidden (see whileVisible). Returns a function that stops everything.
 */
export function liveUpdates(onChange, {types = ["job"], pollMs = 3000} = {}) {
  let source = null, pollTimer = null, retryTimer = null;
  // How the page is kept live, for a glance in the inspector (and the tests): "events" or "polling".
  const mode = (how) => { document.body.dataset.live = how; };
  const startPolling = () => {
    mode("polling");
    if (!pollTimer) pollTimer = setInterval(() => onChange(null), pollMs);
  };
  const stopPolling = () => {
    clearInterval(pollTimer);
    pollTimer = null;
  };
  const connect = () => {
    if (typeof EventSource === "undefined") return startPolling();
    source = new EventSource(apiUrl("events"));
    source.onopen = () => {
      stopPolling();
      mode("events");
      onChange(null); // anything missed while polling between two ticks
    };
    for (const type of types) {
      source.addEventListener(type, (message) => {
        let event = null;
        try {
          event = JSON.parse(message.data);
        } catch {
          return;
        }
        onChange(event);
      });
    }
    source.onerror = () => {
      startPolling();
      if (source.readyState === EventSource.CLOSED) {
        retryTimer = setTimeout(connect, EVENTS_RETRY_MS);
      }
    };
  };
  const disconnect = () => {
    stopPolling();
    clearTimeout(retryTimer);
    if (source) source.close();
    source = null;
  };
  window.addEventListener(TOKEN_CHANGED, () => {
    if (source && source.readyState === EventSource.CLOSED) {
      clearTimeout(retryTimer);
      connect();
    }
  });
  return whileVisible(connect, disconnect, () => onChange(null));
}

/**
 * Run ``start`` while the page is visible and ``stop`` when it is hidden or left (``resumed`` on coming back).
 * Why: a browser opens at most 6 HTTP/1.1 connections to one server, shared by all its tabs; an event
 * stream or a followed log holds one each, so a few background dashboard tabs would otherwise leave
 * none for the tab in front (its requests would just wait). Returns a function that stops for good.
 */
export function whileVisible(start, stop, resumed = () => {}) {
  let running = false, ended = false;
  const update = () => {
    const visible = document.visibilityState === "visible" && !ended;
    if (visible && !running) {
      running = true;
      start();
    } else if (!visible && running) {
      running = false;
      stop();
    }
  };
  const onShow = (event) => {
    update();
    if (event.type === "pageshow" && event.persisted) resumed(); // back from the back/forward cache
  };
  document.addEventListener("visibilitychange", () => {
    const wasRunning = running;
    update();
    if (running && !wasRunning) resumed();
  });
  window.addEventListener("pagehide", () => {
    if (running) {
      running = false;
      stop();
    }
  });
  window.addEventListener("pageshow", onShow);
  update();
  return () => {
    ended = true;
    update();
  };
}

/** Calls ``fn`` at most once per ``ms``, with the last arguments (bursts of events, one refresh). */
export function throttle(fn, ms) {
  let timer = null, pending = false;
  return (...args) => {
    if (timer) {
      pending = true;
      return;
    }
    fn(...args);
    timer = setTimeout(() => {
      timer = null;
      if (pending) {
        pending = false;
        fn(...args);
      }
    }, ms);
  };
}

// ----- confirmation --------------------------------------------------------------------------

/** A modal yes/no dialog; resolves true when confirmed. */
export function confirmAction(question, confirmLabel = "Confirm") {
  return new Promise((resolve) => {
    const dialog = el("dialog", {class: "confirm"},
      el("form", {method: "dialog"},
        el("p", {}, question),
        el("menu", {},
          el("button", {value: "cancel", id: "confirm-cancel"}, "Cancel"),
          el("button", {value: "ok", id: "confirm-ok", class: "danger"}, confirmLabel))));
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

// ----- formatting ----------------------------------------------------------------------------

export function badge(status) {
  return el("span", {class: `badge ${status}`}, status || "?");
}

/** A job's page, linked by its name (or the start of its id). */
export function jobLink(jobId, label) {
  return el("a", {href: `job?id=${encodeURIComponent(jobId)}`, class: label ? null : "mono"}, label || jobId.slice(0, 8));
}

/** A sweep's page, linked by its id. */
export function sweepLink(sweepId) {
  return el("a", {href: `sweep?id=${encodeURIComponent(sweepId)}`, class: "mono sweep-link"}, sweepId);
}

/** Counts by state ({running: 3, finished: 5}) as one bar of coloured parts with the numbers beside it. */
export function countsBar(counts, total) {
  const states = STATES.filter((state) => counts?.[state]);
  const sum = total || states.reduce((n, state) => n + counts[state], 0);
  const bar = el("span", {class: "stack", title: states.map((state) => `${counts[state]} ${state}`).join(", ")},
    states.map((state) => el("span", {class: `part ${state}`, style: `width:${(100 * counts[state]) / (sum || 1)}%`})));
  return el("span", {class: "counts"}, bar, " ",
    states.map((state, i) => [i ? " · " : "", el("span", {class: `count ${state}`}, `${counts[state]} ${state}`)]));
}

/** A value of a result or an override as a cell shows it: numbers to 6 digits, the rest as JSON or text. */
export function cellValue(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") return value.toLocaleString(undefined, {maximumFractionDigits: 6});
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** Seconds as a span (42 s, 5 min); "—" when unknown. */
export function seconds(value) {
  return typeof value === "number" ? span(value * 1000) : "—";
}

export function progressBar(pct) {
  if (pct === null || pct === undefined || Number.isNaN(Number(pct))) return el("span", {class: "muted"}, "—");
  const value = Math.max(0, Math.min(100, Number(pct)));
  return el("span", {class: "bar", title: `${value}%`},
    el("span", {class: "fill", style: `width:${value}%`}), el("span", {class: "label"}, `${Math.round(value)}%`));
}

export function parseTime(iso) {
  const ms = iso ? Date.parse(iso) : NaN;
  return Number.isNaN(ms) ? null : ms;
}

/** 42 s, 5 min, 3 h 10 min, 2 d 4 h */
export function span(ms) {
  if (ms === null || ms === undefined || ms < 0) return "—";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

export function age(iso) {
  const at = parseTime(iso);
  return at === null ? "—" : `${span(Date.now() - at)} ago`;
}

/** From start to end, or to now while it runs. */
export function duration(startIso, endIso) {
  const start = parseTime(startIso);
  if (start === null) return "—";
  return span((parseTime(endIso) ?? Date.now()) - start);
}

export function localTime(iso) {
  const at = parseTime(iso);
  return at === null ? "—" : new Date(at).toLocaleString();
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function isScalar(value) {
  return value === null || ["string", "number", "boolean"].includes(typeof value);
}

// ----- plots (uPlot, loaded by the page as a classic script: vendor/uplot/) --------------------

const PLOT_COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
const PLOT_HEIGHT = 260;

/** Every finite number in ``obj`` as "a.b.c" -> value (arrays and strings left out). */
export function numericFields(obj, prefix = "", out = {}) {
  for (const [key, value] of Object.entries(obj || {})) {
    const name = prefix + key;
    if (typeof value === "number" && Number.isFinite(value)) out[name] = value;
    else if (value && typeof value === "object" && !Array.isArray(value)) numericFields(value, `${name}.`, out);
  }
  return out;
}

/**
 * A line chart of rows ({x, values: {field: number}}) with a checkbox per field. Fields ending in
 * "pct" get a 0-100 scale on the right axis, the rest share the left one. ``time``: x is Unix seconds.
 */
export class Chart {
  constructor(container, {time = true, xLabel = "", preferred = () => true, maxDefault = 4} = {}) {
    this.container = container;
    this.time = time;
    this.xLabel = xLabel;
    this.preferred = preferred;
    this.maxDefault = maxDefault;
    this.rows = [];
    this.fields = [];
    this.selected = new Set();
    this.plot = null;
    this.picker = el("div", {class: "fields"});
    this.area = el("div", {class: "plot-area"});
    this.empty = el("p", {class: "muted empty"}, "no data yet");
    container.replaceChildren(this.picker, this.area, this.empty);
    new ResizeObserver(() => this.plot && this.plot.setSize(this.size())).observe(this.area);
  }

  size() {
    return {width: Math.max(280, this.area.clientWidth || this.container.clientWidth), height: PLOT_HEIGHT};
  }

  /** Add rows (sorted by x on the way in) and redraw. */
  add(rows) {
    if (!rows.length) return;
    this.rows.push(...rows);
    this.rows.sort((a, b) => a.x - b.x);
    let newFields = false;
    for (const row of rows) {
      for (const name of Object.keys(row.values)) {
        if (!this.fields.includes(name)) {
          this.fields.push(name);
          newFields = true;
          if (this.preferred(name) && this.selected.size < this.maxDefault) this.selected.add(name);
        }
      }
    }
    if (newFields) this.renderPicker();
    this.draw(newFields);
  }

  renderPicker() {
    this.picker.replaceChildren(...this.fields.map((name) => el("label", {},
      el("input", {type: "checkbox", value: name, checked: this.selected.has(name), onchange: (event) => {
        if (event.target.checked) this.selected.add(name);
        else this.selected.delete(name);
        this.draw(true);
      }}), ` ${name}`)));
  }

  draw(rebuild) {
    const names = this.fields.filter((name) => this.selected.has(name));
    this.empty.hidden = this.rows.length > 0;
    const data = [this.rows.map((row) => row.x), ...names.map((name) => this.rows.map((row) => row.values[name] ?? null))];
    this.area.dataset.points = String(this.rows.length);
    if (this.plot && !rebuild) {
      this.plot.setData(data);
      return;
    }
    if (this.plot) this.plot.destroy();
    const pct = (name) => /pct$/.test(name);
    const hasPct = names.some(pct), hasOther = names.some((name) => !pct(name));
    const axes = [{label: this.xLabel}];
    if (hasOther || !hasPct) axes.push({scale: "y"});
    if (hasPct) axes.push({scale: "%", side: hasOther ? 1 : 3, grid: {show: !hasOther}, values: (u, ticks) => ticks.map((t) => `${t}%`)});
    this.plot = new uPlot({
      ...this.size(),
      scales: {x: {time: this.time}, "%": {range: [0, 100]}},
      series: [{label: this.xLabel || (this.time ? "time" : "x")},
        ...names.map((name, i) => ({label: name, scale: pct(name) ? "%" : "y", stroke: PLOT_COLOURS[i % PLOT_COLOURS.length],
          width: 2, spanGaps: true, points: {show: this.rows.length < 60}}))],
      axes,
      legend: {live: true},
    }, data, this.area);
  }
}
