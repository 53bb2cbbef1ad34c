// The gateway's dashboard: no build step, no library. Everything that comes from
// devices is put in the page as text (textContent, attributes), never as HTML.
"use strict";

const MAX_ACTIVITY = 300;
const MAX_GRAPH_NODES = 300;

const view = {
  gateway: null,
  devices: new Map(), // id -> row
  order: [],
  scenes: [],
  runs: new Map(), // run id -> run
  activity: [],
  seq: 0,
  selected: null, // the device shown in the device view
  actions: null, // its action schemas
  results: [], // its recent results
  token: "",
  live: false,
  leftOut: 0,
};

// -- building DOM safely -------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  setAttrs(node, attrs);
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

const $ = (id) => document.getElementById(id);

function clear(node) {
  node.replaceChildren();
  return node;
}

function status(text, kind) {
  return el("span", { class: `status ${kind || text}` }, text);
}

function time(seconds) {
  if (!seconds) return "—";
  return new Date(seconds * 1000).toLocaleTimeString();
}

function duration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  return (d ? `${d}d ` : "") + (d || h ? `${h}h ` : "") + `${m}m ${s % 60}s`;
}

function stateText(state) {
  if (!state) return "—";
  return Object.entries(state).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
}

function errorText(error) {
  return error ? `${error.code}: ${error.message}` : "";
}

// -- the live stream -----------------------------------------------------------

function connect() {
  const stream = new EventSource("/api/events");
  stream.addEventListener("snapshot", (e) => snapshot(JSON.parse(e.data)));
  stream.addEventListener("resync", (e) => snapshot(JSON.parse(e.data)));
  stream.addEventListener("update", (e) => update(JSON.parse(e.data)));
  stream.addEventListener("error", () => setLive(false)); // EventSource reconnects by itself
}

function setLive(live) {
  view.live = live;
  $("live").textContent = live ? "live" : "reconnecting…";
  $("live").className = `badge ${live ? "ok" : "bad"}`;
  $("page-banner").hidden = live;
}

function snapshot(data) {
  setLive(true);
  view.devices = new Map(data.devices.map((row) => [row.id, row]));
  view.order = data.devices.map((row) => row.id);
  view.scenes = data.scenes;
  view.runs = new Map(data.runs.map((run) => [run.id, run]));
  view.activity = data.activity.slice(-MAX_ACTIVITY);
  view.seq = data.seq;
  clear($("device-table").tBodies[0]);
  renderGateway(data.gateway);
  for (const id of view.order) renderRow(view.devices.get(id));
  renderCount();
  renderGraph();
  renderScenes();
  renderActivity();
  if (view.selected) openDevice(view.selected);
}

function update(data) {
  setLive(true);
  if (data.gateway) renderGateway(data.gateway); // at most once a second

  for (const changes of data.devices) { // the changing fields; type and dependencies stay
    const row = { ...view.devices.get(changes.id), ...changes };
    view.devices.set(row.id, row);
    renderRow(row);
    if (row.id === view.selected) renderDeviceState(row);
  }
  if (data.devices.length) {
    renderCount();
    if ($("graph-box").open) renderGraph();
  }
  if (data.results_left_out) { // too many to show while busy: counted, not listed
    view.leftOut += data.results_left_out;
    $("activity-note").textContent = `${view.leftOut} results not listed while the gateway was busy`;
  }
  const fresh = data.results.filter((r) => r.seq > view.seq);
  view.seq = Math.max(view.seq, data.seq);
  if (fresh.length) {
    view.activity = view.activity.concat(fresh).slice(-MAX_ACTIVITY);
    renderActivity();
    const mine = fresh.filter((r) => r.device === view.selected);
    if (mine.length) {
      view.results = view.results.concat(mine).slice(-20);
      renderDeviceResults();
    }
  }
  for (const run of data.runs) view.runs.set(run.id, run);
  if (data.runs.length) renderScenes();
}

// -- gateway panel -------------------------------------------------------------

function renderGateway(g) {
  view.gateway = g;
  const banner = $("broker-banner");
  banner.hidden = g.connected;
  banner.textContent = g.connected ? "" :
    `The gateway has no broker connection (${g.broker}) since ${time(g.connected_since)}: ` +
    "it keeps running commands and reconnecting; results wait for the broker.";
  $("read-only").hidden = g.control;
  $("token-form").hidden = !g.control;
  const facts = [
    ["Broker", el("span", {}, status(g.connected ? "connected" : "away", g.connected ? "online" : "offline"),
      ` ${g.broker} since ${time(g.connected_since)}`)],
    ["Version", g.version],
    ["Uptime", el("span", { id: "uptime", "data-started": g.started_at }, duration(Date.now() / 1000 - g.started_at))],
    ["Devices online", `${g.online} of ${g.devices}`],
    ["Commands / min", lastMinute(g.rates.commands, g.rates.bucket_s)],
    ["Errors / min", lastMinute(g.rates.errors, g.rates.bucket_s)],
    ["Reconnects", g.reconnects],
    ["Queued commands", g.queued + busiest(g.busiest_queues)],
    ["Journal", g.journal],
    ["Control", g.control ? "with the token" : "read-only (no http.token set)"],
  ];
  clear($("gateway-facts")).append(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  renderChart(g.rates);
}

function lastMinute(buckets, size) {
  const n = Math.ceil(60 / size);
  return buckets.slice(-n).reduce((a, b) => a + b, 0);
}

function busiest(queues) {
  const parts = Object.entries(queues).map(([id, n]) => `${id} ${n}`);
  return parts.length ? ` (${parts.join(", ")})` : "";
}

function renderChart(rates) {
  const chart = clear($("rate-chart"));
  const n = 30, width = 300 / n;
  const top = Math.max(1, ...rates.commands);
  const pad = n - rates.commands.length;
  rates.commands.forEach((count, i) => {
    const h = (count / top) * 58, e = (rates.errors[i] / top) * 58;
    const x = (pad + i) * width;
    chart.append(svg("rect", { class: "c", x, y: 60 - h, width: width - 1, height: h }, svg("title", {}, `${count} commands`)));
    if (e) chart.append(svg("rect", { class: "e", x, y: 60 - e, width: width - 1, height: e }));
  });
}

setInterval(() => {
  const up = $("uptime");
  if (up) up.textContent = duration(Date.now() / 1000 - Number(up.dataset.started));
}, 1000);

// -- devices -------------------------------------------------------------------

function renderRow(row) {
  const body = $("device-table").tBodies[0];
  let tr = body.querySelector(`tr[data-device="${CSS.escape(row.id)}"]`);
  if (!tr) {
    tr = el("tr", { "data-device": row.id });
    body.append(tr);
  }
  const availability = row.available ? "online" : row.status === "connecting" ? "connecting" : "offline";
  const last = row.last_command;
  tr.replaceChildren(
    el("td", {}, el("button", { class: "link", type: "button", onclick: () => openDevice(row.id) }, row.id)),
    el("td", { class: "availability" }, status(availability)),
    el("td", { class: "state" }, stateText(row.state)),
    el("td", {}, row.type),
    el("td", {}, row.depends_on.join(", ")),
    el("td", { class: "last" }, last ? el("span", {}, `${last.action} `, status(last.status)) : "—"),
    el("td", { class: "last-error" }, row.last_error ? `${time(row.last_error.at)} ${errorText(row.last_error.error)}` : ""),
  );
  tr.dataset.search = `${row.id} ${row.type} ${stateText(row.state)}`.toLowerCase();
  tr.dataset.availability = availability === "online" ? "online" : "offline";
  tr.dataset.failed = last && last.status === "error" ? "yes" : "no";
  filterRow(tr);
}

function filterRow(tr) {
  const text = $("device-search").value.trim().toLowerCase();
  const which = $("device-filter").value;
  const shown = (!text || tr.dataset.search.includes(text)) &&
    (!which || (which === "failed" ? tr.dataset.failed === "yes" : tr.dataset.availability === which));
  tr.hidden = !shown;
}

function renderCount() {
  const online = [...view.devices.values()].filter((r) => r.available).length;
  $("device-count").textContent = `${online} of ${view.devices.size} online`;
}

for (const id of ["device-search", "device-filter"]) {
  $(id).addEventListener("input", () => {
    for (const tr of $("device-table").tBodies[0].rows) filterRow(tr);
  });
}

function renderGraph() {
  const ids = view.order.slice(0, MAX_GRAPH_NODES);
  const shown = new Set(ids);
  $("graph-note").textContent = view.order.length > ids.length ?
    `The first ${ids.length} of ${view.order.length} devices.` : "";
  const depth = new Map(); // the order has dependencies first
  for (const id of ids) {
    const deps = view.devices.get(id).depends_on.filter((d) => shown.has(d));
    depth.set(id, deps.length ? 1 + Math.max(...deps.map((d) => depth.get(d))) : 0);
  }
  const columns = [];
  for (const id of ids) (columns[depth.get(id)] ||= []).push(id);
  const w = 130, h = 28, place = new Map();
  columns.forEach((column, x) => column.forEach((id, y) => place.set(id, [10 + x * (w + 40), 10 + y * (h + 10)])));
  const width = 20 + columns.length * (w + 40), height = 20 + Math.max(1, ...columns.map((c) => c.length)) * (h + 10);
  const graph = clear($("graph"));
  setAttrs(graph, { width, height, viewBox: `0 0 ${width} ${height}` });
  graph.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 6, markerHeight: 6, orient: "auto" }, svg("path", { d: "M0,0 L10,5 L0,10 z" }))));
  for (const id of ids) {
    const [x, y] = place.get(id);
    for (const dep of view.devices.get(id).depends_on.filter((d) => shown.has(d))) {
      const [dx, dy] = place.get(dep);
      graph.append(svg("line", { x1: dx + w, y1: dy + h / 2, x2: x, y2: y + h / 2 }));
    }
  }
  for (const id of ids) {
    const row = view.devices.get(id);
    const [x, y] = place.get(id);
    const kind = row.available ? "online" : row.status;
    graph.append(svg("g", { class: kind, "data-device": id },
      svg("title", {}, `${id} (${row.type}): ${kind}`),
      svg("rect", { x, y, width: w, height: h, rx: 4 }),
      svg("text", { x: x + 6, y: y + 18 }, id.length > 18 ? `${id.slice(0, 17)}…` : id)));
  }
}

$("graph-box").addEventListener("toggle", () => { if ($("graph-box").open) renderGraph(); });

// -- one device ----------------------------------------------------------------

async function openDevice(id) {
  view.selected = id;
  $("device").hidden = false;
  $("device-id").textContent = id;
  $("device-message").textContent = "";
  const response = await fetch(`/api/devices/${encodeURIComponent(id)}`);
  if (!response.ok) {
    $("device-message").textContent = `cannot load ${id}: HTTP ${response.status}`;
    return;
  }
  const device = await response.json();
  if (view.selected !== id) return;
  view.actions = device.actions;
  view.results = device.results;
  renderDeviceState(device);
  renderControls(id, device.actions);
  renderDeviceResults();
  $("device").scrollIntoView({ block: "nearest" });
}

$("device-close").addEventListener("click", () => {
  view.selected = null;
  $("device").hidden = true;
});

function renderDeviceState(row) {
  const availability = row.available ? "online" : row.status;
  clear($("device-summary")).append(status(availability), ` ${row.type}`,
    row.depends_on.length ? `, depends on ${row.depends_on.join(", ")}` : "",
    `, ${row.queue_depth} queued`);
  $("device-state").textContent = row.state ? JSON.stringify(row.state, null, 2) : "state not known yet";
}

function renderDeviceResults() {
  clear($("device-results")).append(...view.results.slice().reverse().map(resultItem));
}

function resultItem(r) {
  const parts = [el("span", { class: "when" }, time(r.at)), `${r.device} ${r.action || "?"} `, status(r.status)];
  if (r.error) parts.push(" ", el("span", { class: "err code" }, r.error.code), " ", el("span", { class: "message" }, r.error.message));
  if (r.duplicate) parts.push(" (duplicate)");
  parts.push(el("span", { class: "when" }, ` ${r.duration_ms} ms`));
  return el("li", { "data-id": r.id, "data-status": r.status }, ...parts);
}

// Controls generated from each action's JSON Schema (pydantic's).
function renderControls(device, actions) {
  const box = clear($("controls"));
  const readOnly = !(view.gateway && view.gateway.control);
  if (readOnly) box.append(el("p", { class: "note" }, "Read-only: set http.token in the gateway's configuration to allow control."));
  for (const [action, schema] of Object.entries(actions)) {
    const fields = Object.entries(schema.properties || {});
    const required = new Set(schema.required || []);
    const form = el("form", { class: "control", "data-action": action });
    for (const [name, prop] of fields) form.append(field(name, resolve(prop, schema), required.has(name)));
    form.append(el("button", { type: "submit", disabled: readOnly, "data-action": action }, action.replaceAll("_", " ")));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      send(device, action, readParams(form, fields), (text) => {
        if (view.selected === device) $("device-message").textContent = text;
      });
    });
    box.append(form);
  }
}

function resolve(prop, root) {
  if (prop.$ref) {
    const name = prop.$ref.split("/").pop();
    return { ...((root.$defs || {})[name] || {}), ...prop, $ref: undefined };
  }
  if (prop.anyOf) { // Optional[X]: the first type that is not null
    const first = prop.anyOf.find((p) => p.type !== "null") || {};
    return { ...resolve(first, root), title: prop.title, default: prop.default, nullable: true };
  }
  return prop;
}

function field(name, prop, required) {
  const label = prop.title || name;
  let input;
  if (prop.enum || prop.const !== undefined) {
    const options = prop.enum || [prop.const];
    input = el("select", { name }, ...options.map((v) => el("option", { value: JSON.stringify(v) }, String(v))));
    if (prop.default !== undefined) input.value = JSON.stringify(prop.default);
  } else if (prop.type === "boolean") {
    input = el("input", { name, type: "checkbox", checked: prop.default === true });
  } else if (prop.type === "integer" || prop.type === "number") {
    input = el("input", {
      name, type: "number", required,
      min: prop.minimum ?? (prop.exclusiveMinimum !== undefined ? prop.exclusiveMinimum + (prop.type === "integer" ? 1 : 0) : null),
      max: prop.maximum ?? (prop.exclusiveMaximum !== undefined ? prop.exclusiveMaximum - (prop.type === "integer" ? 1 : 0) : null),
      step: prop.type === "integer" ? 1 : "any",
      value: prop.default ?? null,
    });
  } else if (prop.type === "string") {
    input = el("input", { name, type: "text", required, minlength: prop.minLength ?? null,
      maxlength: prop.maxLength ?? null, pattern: prop.pattern ?? null, value: prop.default ?? null });
  } else { // anything else: JSON typed in
    input = el("input", { name, type: "text", required, placeholder: "JSON", "data-json": true,
      value: prop.default !== undefined ? JSON.stringify(prop.default) : null });
  }
  return el("label", {}, `${label}${required ? "" : " (optional)"}`, input);
}

function readParams(form, fields) {
  const params = {};
  for (const [name] of fields) {
    const input = form.elements[name];
    if (input.type === "checkbox") params[name] = input.checked;
    else if (input.tagName === "SELECT") params[name] = JSON.parse(input.value);
    else if (input.value === "") continue; // left out: the schema's default, or invalid_params
    else if (input.type === "number") params[name] = Number(input.value);
    else if (input.dataset.json !== undefined) {
      try { params[name] = JSON.parse(input.value); } catch { params[name] = input.value; }
    } else params[name] = input.value;
  }
  return params;
}

function commandId() {
  const random = crypto.getRandomValues(new Uint32Array(2));
  return `dash-${Date.now().toString(36)}-${random[0].toString(36)}${random[1].toString(36)}`;
}

// Sends a command as the MQTT API would carry it; ``say`` shows how it went.
async function send(device, action, params, say) {
  say(`${action}: sent…`);
  const id = commandId();
  let response;
  try {
    response = await fetch(`/api/devices/${encodeURIComponent(device)}/command`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${view.token}` },
      body: JSON.stringify({ action, params, id }),
    });
  } catch (error) {
    say(`${action}: the gateway did not answer (${error})`);
    return;
  }
  const body = await response.json();
  if (!response.ok) say(`${action}: refused (${response.status}): ${body.error}`);
  else say(body.status === "ok" ? `${action}: ok` : `${action}: ${errorText(body.error)}`);
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  view.token = $("token").value.trim(); // kept in this page only: no cookie, no storage
  $("token-note").textContent = view.token ? "token set" : "";
});

// -- scenes --------------------------------------------------------------------

function renderScenes() {
  const box = clear($("scene-list"));
  if (!view.scenes.length) box.append(el("p", {}, "No scenes configured."));
  const runs = [...view.runs.values()];
  for (const scene of view.scenes) {
    const run = runs.filter((r) => r.scene === scene.name).pop();
    const readOnly = !(view.gateway && view.gateway.control);
    const section = el("div", { class: "scene", "data-scene": scene.name },
      el("h3", {}, scene.name, " ",
        el("button", { type: "button", disabled: readOnly, "data-run": scene.name,
          onclick: () => runScene(scene.name) }, "run")),
      stepList(scene, run));
    if (run) {
      section.append(el("p", { class: "run-status" }, `last run ${time(run.started_at)}: `, status(run.status),
        run.error ? ` ${errorText(run.error)}` : ""));
      if (run.status !== "running") section.append(timeline(scene, run));
    }
    box.append(section);
  }
}

function stepList(scene, run) {
  return el("ol", { class: "steps" }, ...scene.steps.map((step) => {
    const s = run && run.steps[step.id];
    const state = s ? s.status : run ? (run.status === "running" ? "pending" : "skipped") : "";
    return el("li", { "data-step": step.id },
      state ? status(state) : "", ` ${step.id}: ${step.device} ${step.action}`,
      step.after.length ? ` after ${step.after.join(", ")}` : "",
      s && s.error ? el("span", { class: "err" }, ` ${errorText(s.error)}`) : "");
  }));
}

// Each step's start and end on one time axis: steps that ran at once overlap.
function timeline(scene, run) {
  const timed = scene.steps.map((step) => [step, run.steps[step.id]]).filter(([, s]) => s && s.started_at && s.finished_at);
  const start = Math.min(...timed.map(([, s]) => s.started_at));
  const end = Math.max(...timed.map(([, s]) => s.finished_at));
  const span = Math.max(end - start, 0.001);
  const rowH = 18, labelW = 110, barW = 300;
  const chart = svg("svg", { class: "timeline", viewBox: `0 0 ${labelW + barW + 70} ${rowH * scene.steps.length + 4}`,
    role: "img", "aria-label": "timeline of the last run" });
  scene.steps.forEach((step, i) => {
    const s = run.steps[step.id];
    const y = i * rowH + 2;
    const g = svg("g", { class: s ? s.status : "skipped", "data-step": step.id });
    g.append(svg("text", { x: 0, y: y + 12 }, step.id.length > 16 ? `${step.id.slice(0, 15)}…` : step.id));
    if (s && s.started_at && s.finished_at) {
      const x = labelW + ((s.started_at - start) / span) * barW;
      const w = Math.max(2, ((s.finished_at - s.started_at) / span) * barW);
      g.append(svg("rect", { x, y, width: w, height: rowH - 4 }, svg("title", {}, `${step.id}: ${s.duration_ms} ms`)));
      g.append(svg("text", { x: x + w + 4, y: y + 12 }, `${Math.round((s.finished_at - s.started_at) * 1000)} ms`));
    } else {
      g.append(svg("text", { x: labelW, y: y + 12 }, s ? s.status : "not run"));
    }
    chart.append(g);
  });
  return chart;
}

function runScene(name) {
  send("gateway", "run_scene", { scene: name }, (text) => {
    $("scene-message").textContent = `${name}: ${text.replace(/^run_scene: /, "")}`;
  });
}

// -- activity ------------------------------------------------------------------

function renderActivity() {
  const device = $("activity-device").value.trim();
  const which = $("activity-status").value;
  const code = $("activity-code").value.trim();
  const shown = view.activity.filter((r) =>
    (!device || r.device === device) && (!which || r.status === which) &&
    (!code || (r.error && r.error.code === code)));
  clear($("activity-list")).append(...shown.slice().reverse().map(resultItem));
}

for (const id of ["activity-device", "activity-status", "activity-code"]) {
  $(id).addEventListener("input", renderActivity);
}

connect();
