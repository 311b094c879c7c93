// The Neuropia console: plain ES module over the gateway's HTTP API. The token lives in
// memory only (a reload asks to sign in again) and is refreshed before it expires.

const state = { token: null, user: null, role: null, tenant: null, refresh: null, live: null };
const main = document.getElementById("main");
const nav = document.getElementById("nav");

// Pages by hash, with the roles that may open them (the API checks again).
const PAGES = {
  "#/home": { title: "Overview", roles: ["user", "tenant_admin", "platform_admin"], show: home },
  "#/keys": { title: "Keys", roles: ["user", "tenant_admin", "platform_admin"], show: keys },
  "#/usage": { title: "Usage", roles: ["user", "tenant_admin", "platform_admin"], show: usage },
  "#/prices": { title: "Prices", roles: ["user", "tenant_admin", "platform_admin"], show: prices },
  "#/tenant": { title: "Tenant", roles: ["tenant_admin"], show: tenant },
  "#/admin/tenants": { title: "Tenants", roles: ["platform_admin"], show: tenants },
  "#/admin/rates": { title: "Rates", roles: ["platform_admin"], show: rates },
  "#/admin/models": { title: "Models", roles: ["platform_admin"], show: models },
  "#/admin/codes": { title: "Codes", roles: ["platform_admin"], show: codes },
  "#/admin/portkey": { title: "Portkey", roles: ["platform_admin"], show: portkey },
  "#/ops/tree": { title: "Actors", roles: ["platform_admin"], show: tree },
};

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "on") for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

async function api(method, path, body) {
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

function say(text, bad = false) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = bad ? "error" : "ok";
}

function signIn() {
  nav.replaceChildren();
  document.getElementById("sign-out").hidden = true;
  document.getElementById("who").textContent = "";
  const email = el("input", { id: "email", type: "email", autocomplete: "username", required: "" });
  const password = el("input", { id: "password", type: "password", autocomplete: "current-password", required: "" });
  const error = el("p", { class: "error", role: "alert" });
  const form = el("form", { class: "stack", "aria-labelledby": "sign-in-title" },
    el("label", { for: "email" }, "Email", email),
    el("label", { for: "password" }, "Password", password),
    el("button", { type: "submit" }, "Sign in"), error);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const t = await api("POST", "/api/auth/login", { email: email.value, password: password.value });
      start(t);
    } catch (err) {
      error.textContent = err.message;
    }
  });
  main.replaceChildren(el("h1", { id: "sign-in-title" }, "Sign in"), form);
  email.focus();
}

function start(t) {
  state.token = t.token;
  state.user = t.user_id;
  state.role = t.role;
  state.tenant = t.tenant_id;
  clearTimeout(state.refresh);
  // Refreshed a minute before it expires.
  const ms = Math.max(10_000, t.expires_at * 1000 - Date.now() - 60_000);
  state.refresh = setTimeout(async () => {
    try { start(await api("POST", "/api/auth/refresh", {})); } catch { signOut(); }
  }, ms);
  document.getElementById("who").textContent = `${state.role.replace("_", " ")}`;
  document.getElementById("sign-out").hidden = false;
  if (!PAGES[location.hash]) location.hash = "#/home";
  else route();
}

function signOut() {
  clearTimeout(state.refresh);
  clearInterval(state.live);
  Object.assign(state, { token: null, user: null, role: null, tenant: null });
  location.hash = "";
  signIn();
}

function route() {
  clearInterval(state.live);
  if (!state.token) return signIn();
  const page = PAGES[location.hash] || PAGES["#/home"];
  nav.replaceChildren(...Object.entries(PAGES)
    .filter(([, p]) => p.roles.includes(state.role))
    .map(([hash, p]) => el("a", { href: hash, "aria-current": hash === location.hash ? "page" : null }, p.title)));
  if (!page.roles.includes(state.role)) {
    main.replaceChildren(el("h1", {}, "Forbidden"),
      el("p", { id: "forbidden" }, "Your role may not open this page."));
    return;
  }
  main.replaceChildren(el("h1", {}, page.title));
  page.show().catch((err) => {
    if (err.status === 401) return signOut();
    if (err.status === 403) {
      main.replaceChildren(el("h1", {}, "Forbidden"), el("p", { id: "forbidden" }, err.message));
      return;
    }
    main.append(el("p", { class: "error", role: "alert" }, err.message));
  });
  main.focus();
}

async function home() {
  const b = await api("GET", `/api/users/${state.user}/balance`);
  const p = await api("GET", `/api/users/${state.user}`);
  main.append(el("div", { class: "figures" },
    el("div", {}, el("div", { class: "dim" }, "Balance"), el("div", { class: "figure", id: "balance" }, b.balance)),
    el("div", {}, el("div", { class: "dim" }, "Status"), el("div", { class: "figure", id: "account-status" }, b.status)),
    el("div", {}, el("div", { class: "dim" }, "Reserved"), el("div", { class: "figure" }, b.reserved))),
    el("p", { class: "dim" }, `${p.email} · tenant ${p.tenant_id}`));
  const code = el("input", { id: "code", autocomplete: "off" });
  const form = el("form", { class: "stack" }, el("label", { for: "code" }, "Redeem a code", code),
    el("button", { type: "submit" }, "Redeem"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await api("POST", `/api/users/${state.user}/redemptions`, { code: code.value });
      say("Redeemed");
      route();
    } catch (err) { say(err.message, true); }
  });
  main.append(el("h2", {}, "Redeem"), form);
}

async function keys() {
  const list = await api("GET", `/api/users/${state.user}/virtual-keys`);
  const name = el("input", { id: "key-name", required: "" });
  const models = el("input", { id: "key-models", placeholder: "all models" });
  const rpm = el("input", { id: "key-rpm", type: "number", min: "1" });
  const shown = el("div", { id: "new-key", "aria-live": "polite" });
  const form = el("form", { class: "stack" },
    el("label", { for: "key-name" }, "Name", name),
    el("label", { for: "key-models" }, "Allowed models (comma-separated)", models),
    el("label", { for: "key-rpm" }, "Requests per minute", rpm),
    el("button", { type: "submit" }, "Create key"), shown);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { name: name.value };
    const allowed = models.value.split(",").map((m) => m.trim()).filter(Boolean);
    if (allowed.length) body.allowed_models = allowed;
    if (rpm.value) body.rate_limit_rpm = Number(rpm.value);
    try {
      const k = await api("POST", `/api/users/${state.user}/virtual-keys`, body);
      const copy = el("button", { type: "button" }, "Copy");
      copy.addEventListener("click", () => navigator.clipboard?.writeText(k.virtual_key));
      shown.replaceChildren(el("p", {}, "Your new key, shown once:"),
        el("p", { class: "secret", id: "plaintext" }, k.virtual_key), copy);
      table.replaceWith(keyTable((await api("GET", `/api/users/${state.user}/virtual-keys`)).data));
    } catch (err) { say(err.message, true); }
  });
  let table = keyTable(list.data);
  main.append(el("h2", {}, "New key"), form, el("h2", {}, "Your keys"), table);

  function keyTable(rows) {
    const t = el("table", { id: "keys" },
      el("thead", {}, el("tr", {}, ["Name", "Key", "Models", "rpm", "Active", ""].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows.map((k) => {
        const rotate = el("button", { type: "button", "aria-label": `Rotate ${k.name}` }, "Rotate");
        rotate.addEventListener("click", async () => {
          if (!confirm(`Rotate ${k.name}? The current secret stops working at once.`)) return;
          try {
            const r = await api("POST", `/api/virtual-keys/${k.id}/rotate`, {});
            shown.replaceChildren(el("p", {}, `New secret for ${k.name}, shown once:`),
              el("p", { class: "secret", id: "plaintext" }, r.virtual_key));
            t.replaceWith(table = keyTable((await api("GET", `/api/users/${state.user}/virtual-keys`)).data));
          } catch (err) { say(err.message, true); }
        });
        const toggle = el("button", { type: "button" }, k.is_active ? "Deactivate" : "Activate");
        toggle.addEventListener("click", async () => {
          try {
            await api("POST", `/api/virtual-keys/${k.id}/${k.is_active ? "deactivate" : "activate"}`, {});
            t.replaceWith(table = keyTable((await api("GET", `/api/users/${state.user}/virtual-keys`)).data));
          } catch (err) { say(err.message, true); }
        });
        // Renamed in place: the name is an input saved on change.
        const nameInput = el("input", { value: k.name, "aria-label": `Name of ${k.masked_key}`, "data-key-name": k.id });
        nameInput.addEventListener("change", async () => {
          try {
            await api("PATCH", `/api/virtual-keys/${k.id}`, { name: nameInput.value.trim() });
            say("Renamed");
          } catch (err) {
            nameInput.value = k.name;
            say(err.message, true);
          }
        });
        return el("tr", {}, el("td", {}, nameInput), el("td", {}, k.masked_key),
          el("td", {}, (k.allowed_models || []).join(", ") || "all"), el("td", {}, k.rate_limit_rpm ?? "—"),
          el("td", {}, k.is_active ? "yes" : "no"), el("td", {}, rotate, " ", toggle));
      })));
    return t;
  }
}

async function usage() {
  const u = await api("GET", `/api/users/${state.user}/usage?limit=100`);
  const t = u.totals;
  main.append(el("div", { class: "figures" },
    el("div", {}, el("div", { class: "dim" }, "Calls"), el("div", { class: "figure", id: "calls" }, t.requests)),
    el("div", {}, el("div", { class: "dim" }, "Tokens in / out"), el("div", { class: "figure" }, `${t.input_tokens} / ${t.output_tokens}`)),
    el("div", {}, el("div", { class: "dim" }, "Cost"), el("div", { class: "figure", id: "cost" }, t.cost))));
  const rows = u.data || [];
  const csv = ["request_id,model,input_tokens,output_tokens,cost,created_at",
    ...rows.map((r) => [r.request_id, r.model, r.input_tokens, r.output_tokens, r.cost, r.created_at].join(","))].join("\n");
  const download = el("a", { href: URL.createObjectURL(new Blob([csv], { type: "text/csv" })), download: "usage.csv" }, "Download CSV");
  for (const by of ["day", "model", "key"]) {
    const g = await api("GET", `/api/users/${state.user}/usage?group_by=${by}`);
    const most = Math.max(1e-12, ...g.groups.map((x) => Number(x.cost)));
    main.append(el("h2", {}, `Cost by ${by}`), el("table", { id: `by-${by}` },
      el("tbody", {}, g.groups.map((x) => el("tr", {}, el("td", {}, x.group ?? "—"),
        el("td", {}, el("meter", { min: "0", max: String(most), value: x.cost, "aria-label": `${x.group} cost` })),
        el("td", {}, x.cost), el("td", { class: "dim" }, `${x.requests} calls`))))));
  }
  main.append(el("h2", {}, "Calls"), el("table", { id: "usage" },
    el("thead", {}, el("tr", {}, ["When", "Model", "In", "Out", "Cost"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, el("td", {}, r.created_at), el("td", {}, r.model),
      el("td", {}, r.input_tokens), el("td", {}, r.output_tokens), el("td", {}, r.cost))))), download);
  const ledger = await api("GET", `/api/users/${state.user}/ledger?limit=50`);
  main.append(el("h2", {}, "Ledger"), el("table", { id: "ledger" },
    el("thead", {}, el("tr", {}, ["When", "Kind", "Amount", "Status after"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ledger.data.map((e) => el("tr", {}, el("td", {}, e.created_at), el("td", {}, e.kind),
      el("td", {}, e.amount), el("td", {}, e.status_after))))));
}

async function prices() {
  const p = await api("GET", `/api/users/${state.user}/prices`);
  main.append(el("p", { class: "dim" }, `Markup ${p.markup_percent} % (${p.markup_source})`),
    el("table", { id: "prices" },
      el("thead", {}, el("tr", {}, ["Model", "Provider", "Input / 1M tokens", "Output / 1M tokens", "Currency"]
        .map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, p.models.flatMap((m) => m.targets.map((t) => el("tr", {}, el("td", {}, m.model),
        el("td", {}, t.provider), el("td", {}, t.input_price_per_million ?? "—"),
        el("td", {}, t.output_price_per_million ?? "—"), el("td", {}, t.currency ?? "—")))))));
}

async function rates() {
  const list = await api("GET", "/api/admin/provider-rates");
  const f = (id, label) => el("label", { for: id }, label, el("input", { id, required: "" }));
  const form = el("form", { class: "stack" }, f("rate-provider", "Provider"), f("rate-model", "Model"),
    f("rate-input", "Input rate (per token)"), f("rate-output", "Output rate (per token)"),
    el("button", { type: "submit" }, "Save rate"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const v = (id) => document.getElementById(id).value;
    try {
      await api("PUT", "/api/admin/provider-rates", { provider: v("rate-provider"), model: v("rate-model"),
        input_rate: v("rate-input"), output_rate: v("rate-output") });
      say("Rate saved");
      route();
    } catch (err) { say(err.message, true); }
  });
  const rows = list.data || list;
  main.append(el("table", { id: "rates" },
    el("thead", {}, el("tr", {}, ["Provider", "Model", "Input", "Output", "Currency"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, el("td", {}, r.provider), el("td", {}, r.model),
      el("td", {}, r.input_rate), el("td", {}, r.output_rate), el("td", {}, r.currency))))),
  el("h2", {}, "Set a rate"), form);
}

// A labelled input.
function field(id, label, attrs = {}) {
  return el("label", { for: id }, label, el("input", { id, ...attrs }));
}

const value = (id) => document.getElementById(id).value.trim();

// A form whose refusal is shown inline, under it.
function form(id, children, submit, onDone) {
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

function table(id, heads, rows) {
  return el("table", { id },
    el("thead", {}, el("tr", {}, heads.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c ?? "—"))))));
}

async function tenant() {
  const t = await api("GET", `/api/tenants/${state.tenant}`);
  const users = await api("GET", `/api/tenants/${state.tenant}/users`);
  main.append(el("p", {}, `${t.name}: markup ${t.markup_percent} %, overdue below ${t.overdue_threshold}`),
    el("h2", {}, "Users"),
    table("tenant-users", ["Email", "Role", "Status", "Balance"],
      (users.data || users).map((u) => [u.email, u.role, u.status, u.balance])),
    el("h2", {}, "Add a user"),
    form("new-user", [field("user-email", "Email", { type: "email", required: "" }),
      field("user-name", "Username", { required: "" }),
      field("user-password", "Password", { type: "password", required: "", autocomplete: "new-password" }),
      el("button", { type: "submit" }, "Add user")],
    () => api("POST", `/api/tenants/${state.tenant}/users`,
      { email: value("user-email"), username: value("user-name"), password: value("user-password") }),
    () => { say("User added"); route(); }));
}

async function tenants() {
  const list = await api("GET", "/api/admin/tenants");
  main.append(table("tenants", ["Name", "Markup %", "Overdue below", "Overdraft"],
    (list.data || list).map((t) => [t.name, t.markup_percent, t.overdue_threshold, t.overdraft_limit])),
  el("h2", {}, "New tenant"),
  form("new-tenant", [field("tenant-name", "Name", { required: "" }),
    field("tenant-markup", "Markup (percent)", { inputmode: "decimal" }),
    field("tenant-threshold", "Overdue threshold", { inputmode: "decimal" }),
    el("button", { type: "submit" }, "Create tenant")],
  () => {
    const body = { name: value("tenant-name") };
    if (value("tenant-markup")) body.markup_percent = value("tenant-markup");
    if (value("tenant-threshold")) body.overdue_threshold = value("tenant-threshold");
    return api("POST", "/api/admin/tenants", body);
  }, () => { say("Tenant created"); route(); }));
}

async function codes() {
  const list = await api("GET", "/api/admin/redemption-codes");
  const minted = el("div", { id: "minted", "aria-live": "polite" });
  const expires = new Date(Date.now() + 30 * 86400_000).toISOString().slice(0, 10);
  main.append(el("h2", {}, "Mint codes"),
    form("mint", [field("code-amount", "Amount each", { required: "", inputmode: "decimal" }),
      field("code-count", "How many", { type: "number", min: "1", max: "100", value: "1" }),
      field("code-expires", "Expires on", { type: "date", required: "", value: expires }),
      el("button", { type: "submit" }, "Mint")],
    async () => {
      const r = await api("POST", "/api/admin/redemption-codes", { amount: value("code-amount"),
        count: Number(value("code-count") || 1), expires_at: `${value("code-expires")}T00:00:00Z` });
      minted.replaceChildren(el("p", {}, "Codes, shown once:"),
        ...r.data.map((c) => el("p", { class: "secret" }, c.code)));
    }, () => say("Minted")),
    minted,
    el("h2", {}, "Codes"),
    table("codes", ["Code", "Amount", "Expires", "Redeemed by"],
      (list.data || []).map((c) => [c.masked_code, c.amount, c.expires_at, c.redeemed_by])));
}

async function models() {
  const list = await api("GET", "/api/admin/model-configs");
  const targets = el("div", { id: "targets" });
  let n = 0;
  const addTarget = () => {
    const i = n++;
    const row = el("fieldset", { class: "stack", "data-target": String(i) },
      el("legend", {}, `Target ${i + 1}`),
      field(`t${i}-provider`, "Provider", { required: "" }),
      field(`t${i}-model`, "Model at the provider (optional)"),
      field(`t${i}-host`, "Custom host (optional)", { type: "url" }),
      field(`t${i}-weight`, "Weight (load balance)", { inputmode: "decimal" }));
    targets.append(row);
  };
  addTarget();
  const json = el("textarea", { id: "plan-json", rows: "8", cols: "60", "aria-label": "The plan as JSON" });
  const plan = () => {
    const t = [...targets.querySelectorAll("fieldset")].map((f) => {
      const i = f.dataset.target;
      const target = { provider: value(`t${i}-provider`) };
      if (value(`t${i}-model`)) target.override_params = { model: value(`t${i}-model`) };
      if (value(`t${i}-host`)) target.custom_host = value(`t${i}-host`);
      if (value(`t${i}-weight`)) target.weight = Number(value(`t${i}-weight`));
      return target;
    }).filter((t) => t.provider);
    return { strategy: { mode: value("plan-mode") }, targets: t };
  };
  const show = () => { json.value = JSON.stringify(plan(), null, 2); };
  const add = el("button", { type: "button" }, "Add a target");
  add.addEventListener("click", () => { addTarget(); show(); });
  // (The JSON view follows the form: shown once both are on the page.)
  const f = form("plan", [field("plan-model", "Public model name", { required: "" }),
    el("label", { for: "plan-mode" }, "Strategy", el("select", { id: "plan-mode" },
      ["single", "fallback", "loadbalance"].map((m) => el("option", { value: m }, m)))),
    targets, add, el("button", { type: "submit" }, "Save model")],
  () => api("PUT", "/api/admin/model-configs", { model: value("plan-model"), config: plan() }),
  () => { say("Model saved"); route(); });
  f.addEventListener("input", show);
  main.append(table("models", ["Model", "Strategy", "Targets"],
    (list.data || []).map((m) => [m.model, m.config?.strategy?.mode ?? "single",
      (m.config?.targets || []).map((t) => t.provider).join(", ")])),
  el("h2", {}, "Set a model's plan"), f, el("h2", {}, "The plan as JSON"), json);
  show();
}

async function portkey() {
  const list = await api("GET", "/api/admin/portkey-configs");
  const rows = (list.data || []).map((c) => {
    const toggle = el("button", { type: "button" }, c.is_active ? "Deactivate" : "Activate");
    toggle.addEventListener("click", async () => {
      try {
        await api("POST", `/api/admin/portkey-configs/${c.id}/${c.is_active ? "deactivate" : "activate"}`, {});
        route();
      } catch (err) { say(err.message, true); }
    });
    return [c.config_name, c.tenant_id, c.user_id, c.is_active ? "active" : "inactive", toggle];
  });
  const json = el("textarea", { id: "portkey-json", rows: "8", cols: "60", required: "" },
    JSON.stringify({ strategy: { mode: "fallback" }, targets: [{ provider: "mock" }] }, null, 2));
  main.append(table("portkey-configs", ["Name", "Tenant", "User", "State", ""], rows),
    el("h2", {}, "New config"),
    form("new-portkey", [field("portkey-name", "Name", { required: "" }),
      field("portkey-tenant", "Tenant id"),
      field("portkey-user", "User id (overrides the tenant's)"),
      el("label", { for: "portkey-json" }, "Plan (Portkey's JSON)", json),
      el("button", { type: "submit" }, "Create config")],
    () => {
      let config;
      try { config = JSON.parse(json.value); } catch { throw new Error("the plan is not valid JSON"); }
      const body = { config_name: value("portkey-name"), config };
      if (value("portkey-tenant")) body.tenant_id = value("portkey-tenant");
      if (value("portkey-user")) body.user_id = value("portkey-user");
      return api("POST", "/api/admin/portkey-configs", body);
    }, () => { say("Config created"); route(); }));
}

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
function figures(prev, text, seconds) {
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
    const f = figures(prev, text, seconds);
    prev = f.now;
    if (f.shown) {
      box.replaceChildren(...Object.entries(f.shown).map(([k, v]) =>
        el("div", {}, el("div", { class: "dim" }, k), el("div", { class: "figure", "data-figure": k }, v))));
    }
  };
  await tick();
  state.live = setInterval(() => tick().catch(() => {}), 3000);
}

async function tree() {
  const health = await api("GET", "/health");
  main.append(el("div", { class: "figures", id: "health" },
    el("div", {}, el("div", { class: "dim" }, "Database"), el("div", { class: "figure" }, health.database)),
    el("div", {}, el("div", { class: "dim" }, "Redis"), el("div", { class: "figure" }, health.redis?.state ?? health.redis ?? "—")),
    el("div", {}, el("div", { class: "dim" }, "Journal depth"), el("div", { class: "figure" }, health.journal_depth))));
  const liveBox = el("div", { class: "figures", id: "live", "aria-live": "off" },
    el("p", { class: "dim" }, "Live figures in a few seconds…"));
  main.append(liveBox);
  await live(liveBox);
  const root = await api("GET", "/api/admin/actors?limit=200");
  const node = (n) => el("li", { "data-name": n.name },
    el("span", { class: "name" }, n.name), ` ${n.status}`,
    el("span", { class: "dim", "data-restarts": n.restarts }, ` restarts ${n.restarts}`),
    n.backlog ? el("span", { class: "dim" }, ` backlog ${n.backlog}`) : "",
    n.children_total > (n.children?.length || 0)
      ? el("span", { class: "dim" }, ` (${n.children.length} of ${n.children_total} shown)`) : "",
    n.state && Object.keys(n.state).length
      ? el("details", {}, el("summary", {}, "state"), el("pre", {}, JSON.stringify(n.state, null, 1))) : "",
    n.children?.length ? el("ul", {}, n.children.map(node)) : "");
  const search = el("input", { id: "tree-search", type: "search", placeholder: "key id or user id" });
  search.addEventListener("input", () => {
    const q = search.value.trim();
    for (const li of document.querySelectorAll("#tree li")) {
      li.hidden = Boolean(q) && !li.dataset.name.includes(q) && !li.querySelector(`[data-name*="${CSS.escape(q)}"]`);
    }
  });
  const fault = el("form", { class: "stack", id: "fault-form" },
    el("label", { for: "fault-actor" }, "Actor", el("input", { id: "fault-actor", required: "" })),
    el("label", { for: "fault-kind" }, "Fault", el("select", { id: "fault-kind" },
      ["panic", "panic_next", "delay", "drop"].map((k) => el("option", { value: k }, k)))),
    field("fault-count", "Count (panic_next, drop)", { type: "number", min: "1" }),
    field("fault-ms", "Delay per message in ms (delay)", { type: "number", min: "1" }),
    field("fault-seconds", "For how many seconds (delay)", { type: "number", min: "0.1", step: "0.1" }),
    el("button", { type: "submit" }, "Inject"));
  fault.addEventListener("submit", async (e) => {
    e.preventDefault();
    const actor = document.getElementById("fault-actor").value;
    const kind = document.getElementById("fault-kind").value;
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
  main.append(el("label", { for: "tree-search" }, "Find an actor", search),
    el("button", { type: "button", id: "refresh", on: { click: route } }, "Refresh"),
    el("ul", { id: "tree" }, node(root)));
  // Shown only when the gateway runs with NEUROPIA_FAULTS=1.
  if (health.faults) main.append(el("h2", {}, "Inject a fault"), fault);
}

document.getElementById("sign-out").addEventListener("click", signOut);
window.addEventListener("hashchange", route);
route();
