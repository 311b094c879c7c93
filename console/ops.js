// Operations: database, Redis and journal health, live figures from /metrics, the live
// supervision tree (searched and paged on the server) and fault injection for testers.

import { state, main, el, api, say, field, value, figures } from "./lib.js";

// Prometheus text: every sample of `name`, as [labels, value].
function samples(text, name) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const m = line.match(/^([a-z_]+)(\{(.*)\})? ([0-9.eE+-]+|NaN|\+Inf)$/);
    if (!m || m[1] !== name) continue;
    const labels = Object.fromEntries([...(m[3] || "").matchAll(/([a-z_]+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    out.push([labels, Number(m[4])]);
  }
  return out;
}

// Figures since the previous sample: requests/s, server errors, p50/p99 of request time,
// the journal's depth, the ledger's p99 flush time.
function sample(prev, text, seconds) {
  const reqs = samples(text, "neuropia_http_requests_total");
  const total = reqs.reduce((s, [, v]) => s + v, 0);
  const errors = reqs.filter(([l]) => l.status?.startsWith("5")).reduce((s, [, v]) => s + v, 0);
  const buckets = {};
  for (const [l, v] of samples(text, "neuropia_http_request_duration_seconds_bucket")) {
    buckets[l.le] = (buckets[l.le] || 0) + v;
  }
  const now = { total, errors, buckets };
  if (!prev) return { now };
  const les = Object.keys(buckets).filter((le) => le !== "+Inf").map(Number).sort((a, b) => a - b);
  const delta = (le) => (buckets[String(le)] || 0) - (prev.buckets[String(le)] || 0);
  const count = (buckets["+Inf"] || 0) - (prev.buckets["+Inf"] || 0);
  const quantile = (q) => {
    if (count <= 0) return "—";
    const le = les.find((b) => delta(b) >= q * count);
    return le === undefined ? "> 60 s" : `≤ ${le * 1000} ms`;
  };
  // The ledger's flushes since start: the p99 from its buckets.
  const flushes = samples(text, "neuropia_ledger_flush_seconds_bucket").map(([l, v]) => [l.le, v]);
  const flushCount = flushes.find(([le]) => le === "+Inf")?.[1] || 0;
  const flushLe = flushes.filter(([le]) => le !== "+Inf").map(([le, v]) => [Number(le), v])
    .sort((x, y) => x[0] - y[0]).find(([, v]) => v >= 0.99 * flushCount)?.[0];
  return {
    now,
    shown: {
      "Requests/s": ((total - prev.total) / seconds).toFixed(1),
      "Server errors": errors - prev.errors,
      "p50": quantile(0.5),
      "p99": quantile(0.99),
      "Journal depth": samples(text, "neuropia_journal_depth")[0]?.[1] ?? 0,
      "Ledger flush p99": flushCount && flushLe !== undefined ? `≤ ${flushLe * 1000} ms` : "—",
    },
  };
}

async function live(box) {
  let prev = null;
  let at = Date.now();
  const tick = async () => {
    const text = await (await fetch("/metrics")).text();
    const seconds = Math.max(0.001, (Date.now() - at) / 1000);
    at = Date.now();
    const f = sample(prev, text, seconds);
    prev = f.now;
    if (f.shown) {
      box.replaceChildren(...Object.entries(f.shown).map(([k, v]) =>
        el("div", {}, el("div", { class: "dim" }, k), el("div", { class: "figure", "data-figure": k }, v))));
    }
  };
  await tick();
  state.live = setInterval(() => tick().catch(() => {}), 3000);
}

// The tree as the operator pages it: a search (server-side, by name) and each
// supervisor's offset.
const view = { find: "", per: 50, offsets: {} };

const actors = (offset) => api("GET", `/api/admin/actors?limit=${view.per}&offset=${offset}` +
  (view.find ? `&find=${encodeURIComponent(view.find)}` : ""));

function byName(n, name) {
  if (n.name === name) return n;
  for (const c of n.children || []) {
    const found = byName(c, name);
    if (found) return found;
  }
  return null;
}

// The whole tree, each supervisor at its own page.
async function fetchTree() {
  const root = await actors(0);
  for (const [name, offset] of Object.entries(view.offsets)) {
    if (!offset) continue;
    const paged = byName(await actors(offset), name);
    const i = root.children.findIndex((c) => c.name === name);
    if (paged && i >= 0) root.children[i] = paged;
  }
  return root;
}

function node(n, depth) {
  const chosen = el("button", { type: "button", class: "link", title: "Pick as the target below",
    on: { click: () => {
      const box = document.getElementById("fault-actor");
      if (box) { box.value = n.name; box.focus(); }
    } } }, n.name);
  const shown = n.children?.length || 0;
  const offset = view.offsets[n.name] || 0;
  const pager = depth === 1 && (n.children_total > shown || offset > 0)
    ? el("span", { class: "pager" }, ` ${shown ? offset + 1 : 0}–${offset + shown} of ${n.children_total} `,
      el("button", { type: "button", disabled: offset === 0, "aria-label": `Previous page of ${n.name}`,
        on: { click: () => turn(n.name, Math.max(0, offset - view.per)) } }, "Previous"), " ",
      el("button", { type: "button", disabled: offset + shown >= n.children_total, "aria-label": `Next page of ${n.name}`,
        on: { click: () => turn(n.name, offset + view.per) } }, "Next"))
    : "";
  return el("li", { "data-name": n.name },
    chosen, ` ${n.status}`,
    el("span", { class: "dim", "data-restarts": n.restarts }, ` restarts ${n.restarts}`),
    n.backlog ? el("span", { class: "dim" }, ` backlog ${n.backlog}`) : "",
    pager,
    n.state && Object.keys(n.state).length
      ? el("details", {}, el("summary", {}, "state"), el("pre", {}, JSON.stringify(n.state, null, 1))) : "",
    shown ? el("ul", {}, n.children.map((c) => node(c, depth + 1))) : "");
}

function draw(root) {
  // While searching, supervisors with no match are left out.
  const kids = view.find ? root.children.filter((c) => c.children_total > 0) : root.children;
  const tree = el("ul", { id: "tree" }, node({ ...root, children: kids }, 0));
  document.getElementById("tree").replaceWith(tree);
}

async function redraw() {
  draw(await fetchTree());
}

async function turn(name, offset) {
  view.offsets[name] = offset;
  await redraw().catch((err) => say(err.message, true));
  document.querySelector(`li[data-name='${name}'] .pager button:not([disabled])`)?.focus();
}

export async function tree() {
  const health = await api("GET", "/health");
  main.append(figures("health", [["Database", health.database],
    ["Redis", health.redis?.state ?? health.redis ?? "—"], ["Journal depth", health.journal_depth]]));
  const liveBox = el("div", { class: "figures", id: "live", "aria-live": "off" },
    el("p", { class: "dim" }, "Live figures in a few seconds…"));
  main.append(liveBox);
  await live(liveBox);

  const search = el("input", { id: "tree-search", type: "search", placeholder: "key id, user id or provider", value: view.find });
  const per = el("input", { id: "tree-per", type: "number", min: "1", max: "1000", value: String(view.per) });
  const find = el("form", { class: "row", id: "tree-find" },
    el("label", { for: "tree-search" }, "Find an actor", search),
    el("label", { for: "tree-per" }, "Per page", per),
    el("button", { type: "submit" }, "Find"),
    el("button", { type: "button", id: "refresh", on: { click: () => redraw().catch((err) => say(err.message, true)) } }, "Refresh"));
  find.addEventListener("submit", async (e) => {
    e.preventDefault();
    view.find = search.value.trim();
    view.per = Math.min(1000, Math.max(1, Number(per.value) || 50));
    view.offsets = {};
    await redraw().catch((err) => say(err.message, true));
  });
  main.append(el("h2", {}, "Supervision tree"), find, el("ul", { id: "tree" }));
  await redraw();
  // Shown only when the gateway runs with NEUROPIA_FAULTS=1.
  if (health.faults) main.append(el("h2", {}, "Inject a fault"), faultForm());
}

function faultForm() {
  const fault = el("form", { class: "stack", id: "fault-form" },
    el("p", { class: "dim" }, "Choose an actor in the tree, or type its name."),
    el("label", { for: "fault-actor" }, "Actor", el("input", { id: "fault-actor", required: "" })),
    el("label", { for: "fault-kind" }, "Fault", el("select", { id: "fault-kind" },
      ["panic", "panic_next", "delay", "drop"].map((k) => el("option", { value: k }, k)))),
    field("fault-count", "Count (panic_next, drop)", { type: "number", min: "1" }),
    field("fault-ms", "Delay per message in ms (delay)", { type: "number", min: "1" }),
    field("fault-seconds", "For how many seconds (delay)", { type: "number", min: "0.1", step: "0.1" }),
    el("button", { type: "submit" }, "Inject"));
  fault.addEventListener("submit", async (e) => {
    e.preventDefault();
    const actor = value("fault-actor");
    const kind = value("fault-kind");
    if (!confirm(`Inject ${kind} into ${actor}?`)) return;
    try {
      const body = { actor, fault: kind };
      if (value("fault-count")) body.count = Number(value("fault-count"));
      if (value("fault-ms")) body.ms = Number(value("fault-ms"));
      if (value("fault-seconds")) body.seconds = Number(value("fault-seconds"));
      await api("POST", "/api/admin/faults", body);
      say(`Injected ${kind} into ${actor}`);
    } catch (err) { say(err.message, true); }
  });
  return fault;
}
