// The timeline page: reads /ui/api/* with the bearer token kept in this tab's sessionStorage. Event
// content is untrusted (any agent may write anything): it is only ever set as textContent, never as HTML.
"use strict";

const TOKEN_KEY = "msm-timeline-token";
const MAX_ROWS = 500;
const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 15000;

const $ = (id) => document.getElementById(id);
const state = { token: null, me: null, scope: "", agent: "", type: "", cursor: null, stream: null, seen: new Set() };

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, params) {
  const query = new URLSearchParams(Object.entries(params || {}).filter(([, v]) => v !== "" && v != null));
  const response = await fetch(`/ui/api/${path}?${query}`, {
    headers: { Authorization: `Bearer ${state.token}`, Accept: "application/json" },
    cache: "no-store",
  });
  return readJson(response);
}

async function readJson(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const text = body && (body.error_description || body.error);
    throw new ApiError(response.status, text || `the server answered ${response.status}`);
  }
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text != null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

// sign in and out

function signedOut(message) {
  stopStream();
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.me = null;
  $("app").hidden = true;
  $("who").hidden = true;
  $("sign-out").hidden = true;
  $("timeline").replaceChildren();
  $("result-rows").replaceChildren();
  $("login").hidden = false;
  $("token").value = "";
  showError(message || "");
  $("token").focus();
}

async function signIn(token) {
  state.token = token;
  try {
    state.me = await api("me");
  } catch (error) {
    signedOut(error.status === 401 ? "The server refused this token: check it, or create one with "
      + "mcp-shared-memory token create." : error.message);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  showError("");
  $("login").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  $("who").hidden = false;
  $("who").textContent = `${state.me.agent_id} (${state.me.agent_type}) · tenant ${state.me.tenant}`;
  const scopes = $("scopes");
  scopes.replaceChildren();
  const names = state.me.grants.map((g) => g.split("=")[0]).filter((g) => !g.includes("*"));
  for (const ws of state.me.workspaces) names.push(`workspace:${ws.id}`);
  for (const name of new Set(names)) {
    const option = el("option");
    option.value = name;
    const ws = state.me.workspaces.find((w) => `workspace:${w.id}` === name);
    if (ws) option.label = `${ws.task} (${ws.status})`;
    scopes.append(option);
  }
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("scope");
  $("scope").value = fromHash || state.me.default_scope || names[0] || "";
  show();
}

// the timeline

function show() {
  state.scope = $("scope").value.trim();
  state.agent = $("agent").value;
  state.type = $("type").value;
  history.replaceState(null, "", `#${new URLSearchParams({ scope: state.scope })}`);
  $("timeline").replaceChildren();
  $("result-rows").replaceChildren();
  $("results").hidden = true;
  $("clear-search").hidden = true;
  state.seen.clear();
  state.cursor = null;
  updateCount();
  showError("");
  loadWorkspace();
  startStream();
}

function eventRow(event) {
  const row = el("tr");
  row.dataset.seq = String(event.seq);
  row.dataset.agent = event.agent_id;
  row.dataset.type = event.event_type;
  const at = new Date(event.created_at);
  const time = el("td", at.toLocaleTimeString([], { hour12: false }), "time");
  time.title = event.created_at;
  const agent = el("td", event.agent_id, "agent");
  agent.title = event.agent_type;
  const importance = el("td", Number(event.importance).toFixed(2), "importance");
  if (event.importance >= 0.7) importance.classList.add("high");
  row.append(time, agent, el("td", event.event_type, "type"), importance, el("td", event.content, "content"));
  return row;
}

function addEvents(events, fresh) {
  const body = $("timeline");
  for (const event of events) { // oldest first: each goes on top
    if (state.seen.has(event.id)) continue;
    state.seen.add(event.id);
    const row = eventRow(event);
    if (fresh) row.classList.add("fresh");
    body.prepend(row);
    remember($("agent"), event.agent_id);
    remember($("type"), event.event_type);
    state.cursor = Math.max(state.cursor || 0, event.seq);
  }
  while (body.rows.length > MAX_ROWS) body.deleteRow(-1);
  updateCount();
}

function remember(select, value) {
  if ([...select.options].some((o) => o.value === value)) return;
  const option = el("option", value);
  option.value = value;
  select.append(option);
}

function updateCount() {
  const rows = $("timeline").rows.length;
  $("count").textContent = rows ? `(${rows})` : "";
  $("empty").hidden = rows > 0;
}

async function loadWorkspace() {
  const aside = $("workspace");
  if (!state.scope.startsWith("workspace:")) {
    aside.hidden = true;
    return;
  }
  try {
    showWorkspace(await api("workspace", { id: state.scope.slice("workspace:".length) }));
  } catch (error) {
    aside.hidden = true;
    if (error.status === 401) signedOut("The token is no longer valid.");
  }
}

function showWorkspace(summary) {
  const ws = summary.workspace;
  $("ws-task").textContent = ws.task;
  $("ws-status").textContent = ws.status;
  $("ws-status").className = `status ${ws.status}`;
  $("ws-owner").textContent = ws.created_by;
  const roster = $("ws-roster");
  roster.replaceChildren(...ws.agents.map((agent) => el("li", agent)));
  for (const agent of [ws.created_by, ...ws.agents]) remember($("agent"), agent);
  $("workspace").hidden = false;
}

// the live stream: fetch() read as text/event-stream, so the token travels in a header, never in a URL

function stopStream() {
  if (state.stream) state.stream.abort();
  state.stream = null;
}

function setLive(text, className) {
  $("live").textContent = text;
  $("live").className = `live ${className}`;
}

async function startStream() {
  stopStream();
  const controller = new AbortController();
  state.stream = controller;
  let delay = RETRY_FIRST_MS;
  while (!controller.signal.aborted) {
    setLive("connecting", "waiting");
    try {
      await follow(controller.signal);
      delay = RETRY_FIRST_MS;
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof ApiError && error.status === 401) {
        signedOut("The token was refused (revoked or expired?).");
        return;
      }
      if (error instanceof ApiError && error.status < 500 && error.status !== 429) {
        setLive("stopped", "down");
        showError(error.message);
        return;
      }
      setLive("reconnecting", "down");
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, RETRY_MAX_MS);
  }
}

async function follow(signal) {
  const params = { scope: state.scope, agent: state.agent, type: state.type };
  if (state.cursor != null) params.since = state.cursor;
  const response = await fetch(`/ui/api/stream?${new URLSearchParams(Object.entries(params).filter(([, v]) => v !== ""))}`, {
    headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" },
    cache: "no-store",
    signal,
  });
  if (!response.ok) await readJson(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the stream ended");
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      dispatch(block);
    }
  }
}

function dispatch(block) {
  let kind = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") kind = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return;
  const payload = JSON.parse(data.join("\n"));
  if (kind === "ready") {
    setLive("live", "up");
    if (state.cursor == null) state.cursor = payload.cursor;
  } else if (kind === "backlog" || kind === "events") {
    addEvents(payload, kind === "events");
  } else if (kind === "workspace") {
    showWorkspace(payload);
  } else if (kind === "notice") {
    setLive("degraded", "waiting");
  } else if (kind === "failed") {
    showError(payload.error);
    stopStream();
    setLive("stopped", "down");
  }
}

// search

async function runSearch(query) {
  const rows = $("result-rows");
  try {
    const found = await api("search", { scope: state.scope, q: query, agent: state.agent, type: state.type });
    rows.replaceChildren(...found.events.map(eventRow));
    $("results-title").textContent = `${found.events.length} results for “${query}”`;
    $("degraded").textContent = found.degraded || "";
    $("degraded").hidden = !found.degraded;
    $("results").hidden = false;
    $("clear-search").hidden = false;
    showError("");
  } catch (error) {
    if (error.status === 401) signedOut("The token was refused (revoked or expired?).");
    else showError(error.message);
  }
}

function clearSearch() {
  $("query").value = "";
  $("results").hidden = true;
  $("clear-search").hidden = true;
  $("result-rows").replaceChildren();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("token").value.trim());
  });
  $("sign-out").addEventListener("click", () => signedOut(""));
  $("controls").addEventListener("submit", (e) => {
    e.preventDefault();
    show();
  });
  $("agent").addEventListener("change", show);
  $("type").addEventListener("change", show);
  $("search").addEventListener("submit", (e) => {
    e.preventDefault();
    const query = $("query").value.trim();
    if (query) runSearch(query);
    else clearSearch();
  });
  $("clear-search").addEventListener("click", clearSearch);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else signedOut("");
});
