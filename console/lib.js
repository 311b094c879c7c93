// What every page of the console shares: the session, the API client and small DOM helpers.

export const state = { token: null, user: null, role: null, tenant: null, refresh: null, live: null };

export const main = document.getElementById("main");

// An element with attributes (`on` takes event listeners) and children (text or nodes).
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "on") for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

// One API call with the session's token; a refusal throws its message and status.
export async function api(method, path, body) {
  const headers = { "content-type": "application/json" };
  if (state.token) headers.authorization = `Bearer ${state.token}`;
  const r = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const err = new Error(data?.error?.message || `${r.status}`);
    err.status = r.status;
    throw err;
  }
  return data;
}

// A line in the status corner.
export function say(text, bad = false) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = bad ? "error" : "ok";
}

// A labelled input.
export function field(id, label, attrs = {}) {
  return el("label", { for: id }, label, el("input", { id, ...attrs }));
}

export const value = (id) => document.getElementById(id).value.trim();

// A form whose refusal is shown inline, under it.
export function form(id, children, submit, onDone) {
  const error = el("p", { class: "error", role: "alert", id: `${id}-error` });
  const f = el("form", { class: "stack", id }, children, error);
  f.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    try {
      await submit();
      onDone();
    } catch (err) {
      error.textContent = err.message;
    }
  });
  return f;
}

// A table with a header row; `null` cells show a dash.
export function table(id, heads, rows) {
  return el("table", { id },
    el("thead", {}, el("tr", {}, heads.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c ?? "—"))))));
}

// Large figures with a caption each: [[caption, value, id?], ...].
export function figures(id, items) {
  return el("div", { class: "figures", id },
    items.map(([caption, v, fid]) => el("div", {}, el("div", { class: "dim" }, caption),
      el("div", { class: "figure", id: fid }, v ?? "—"))));
}

// A button that runs `action`, saying its refusal.
export function button(text, action, attrs = {}) {
  return el("button", { type: "button", ...attrs, on: { click: () => action().catch((err) => say(err.message, true)) } }, text);
}
