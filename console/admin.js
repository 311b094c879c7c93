// Tenant and platform administration: a tenant with its users, one user's account, tenants,
// provider rates, model plans, redemption codes and Portkey configs.

import { state, main, el, api, say, field, value, form, table, button } from "./lib.js";
import { home, keys, usage } from "./account.js";

const again = () => window.dispatchEvent(new HashChangeEvent("hashchange"));
const isPlatform = () => state.role === "platform_admin";

// A tenant: its settings, its users (role, markup override, suspension, their accounts),
// its usage by user, and a form to add a user. The tenant admin's own; any for the platform.
export async function tenant(params) {
  const id = params.get("id") || state.tenant;
  const t = await api("GET", `/api/tenants/${id}`);
  const users = (await api("GET", `/api/tenants/${id}/users?limit=500`)).data;
  main.querySelector("h1").textContent = `Tenant ${t.name}`;

  // Settings: the markup and overdraft are the platform's terms; the threshold is the tenant's.
  const locked = !isPlatform();
  main.append(el("h2", {}, "Settings"),
    form("tenant-settings", [
      field("tenant-markup", "Markup (percent)", { value: t.markup_percent, inputmode: "decimal", disabled: locked }),
      field("tenant-threshold", "Overdue threshold (an overdue account is active again from this balance)",
        { value: t.overdue_threshold, inputmode: "decimal" }),
      field("tenant-overdraft", "Overdraft allowed per call", { value: t.overdraft_limit, inputmode: "decimal", disabled: locked }),
      locked ? el("p", { class: "dim" }, "The markup and overdraft are set by the platform.") : "",
      el("button", { type: "submit" }, "Save settings")],
    () => {
      const body = { overdue_threshold: value("tenant-threshold") };
      if (!locked) Object.assign(body, { markup_percent: value("tenant-markup"), overdraft_limit: value("tenant-overdraft") });
      return api("PATCH", `/api/admin/tenants/${id}`, body);
    }, () => { say("Settings saved"); again(); }));

  main.append(el("h2", {}, "Users"), table("tenant-users",
    ["Email", "Role", "Status", "Balance", "Markup override %", "Suspended", ""],
    users.map((u) => userRow(u, t))));

  const byUser = (await api("GET", `/api/tenants/${id}/usage?group_by=user`)).groups;
  const email = Object.fromEntries(users.map((u) => [u.user_id, u.email]));
  main.append(el("h2", {}, "Usage by user"), table("tenant-usage", ["User", "Calls", "Cost"],
    byUser.map((g) => [email[g.group] ?? g.group, g.requests, g.cost])));

  const role = el("select", { id: "user-role" }, ["user", "tenant_admin"].map((r) => el("option", { value: r }, r)));
  main.append(el("h2", {}, "Add a user"),
    form("new-user", [field("user-email", "Email", { type: "email", required: "" }),
      field("user-name", "Username", { required: "" }),
      field("user-password", "Password", { type: "password", required: "", autocomplete: "new-password" }),
      isPlatform() ? el("label", { for: "user-role" }, "Role", role) : "",
      el("button", { type: "submit" }, "Add user")],
    () => api("POST", `/api/tenants/${id}/users`, { email: value("user-email"), username: value("user-name"),
      password: value("user-password"), role: isPlatform() ? role.value : "user" }),
    () => { say("User added"); again(); }));
}

// One user of a tenant as a row; the caller's own row has no controls.
function userRow(u, t) {
  const patch = (body) => api("PATCH", `/api/admin/users/${u.user_id}`, body);
  const link = el("a", { href: `#/user?id=${u.user_id}` }, u.email);
  if (u.user_id === state.user) return [u.email, u.role, u.status, u.balance, u.markup_percent, u.suspended ? "yes" : "no", "(you)"];
  const role = isPlatform()
    ? el("select", { "aria-label": `Role of ${u.email}`, on: { change: async (e) => {
      if (!confirm(`Make ${u.email} a ${e.target.value}? Their sessions end.`)) { e.target.value = u.role; return; }
      try { await patch({ role: e.target.value }); say("Role changed"); again(); } catch (err) { e.target.value = u.role; say(err.message, true); }
    } } }, ["user", "tenant_admin"].map((r) => el("option", { value: r, selected: r === u.role }, r)))
    : u.role;
  const markup = el("input", { value: u.markup_percent ?? "", placeholder: `tenant's (${t.markup_percent})`, inputmode: "decimal",
    "aria-label": `Markup override of ${u.email}`, "data-markup": u.email, size: "8" });
  markup.addEventListener("change", async () => {
    const v = markup.value.trim();
    try {
      await patch({ markup_percent: v === "" ? null : v });
      say("Markup saved");
    } catch (err) {
      markup.value = u.markup_percent ?? "";
      say(err.message, true);
    }
  });
  const suspend = button(u.suspended ? "Reinstate" : "Suspend", async () => {
    const what = u.suspended ? `Reinstate ${u.email}?` : `Suspend ${u.email}? Their sessions end and every call with their keys is refused.`;
    if (!confirm(what)) return;
    await patch({ suspended: !u.suspended });
    say(u.suspended ? "Reinstated" : "Suspended");
    again();
  }, { "aria-label": `${u.suspended ? "Reinstate" : "Suspend"} ${u.email}` });
  return [link, role, u.status, u.balance, markup, u.suspended ? "yes" : "no", suspend];
}

// One user's account as its admin sees it: balance, keys, usage; a top-up for the platform.
export async function user(params) {
  const uid = params.get("id");
  const p = await home(uid);
  main.querySelector("h1").textContent = `User ${p.email}`;
  main.append(el("p", {}, el("a", { href: `#/tenant?id=${p.tenant_id}` }, "Back to the tenant")));
  if (isPlatform()) {
    main.append(el("h2", {}, "Top up"), form("top-up", [field("top-up-amount", "Amount", { required: "", inputmode: "decimal" }),
      el("button", { type: "submit" }, "Top up")],
    () => api("POST", `/api/users/${uid}/topups`, { amount: value("top-up-amount") }),
    () => { say("Topped up"); again(); }));
  }
  await keys(uid);
  main.append(el("h2", {}, "Usage"));
  await usage(uid);
}

export async function tenants() {
  const list = await api("GET", "/api/admin/tenants");
  main.append(table("tenants", ["Name", "Markup %", "Overdue below", "Overdraft"],
    (list.data || list).map((t) => [el("a", { href: `#/tenant?id=${t.tenant_id}` }, t.name),
      t.markup_percent, t.overdue_threshold, t.overdraft_limit])),
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
  }, () => { say("Tenant created"); again(); }));
}

export async function rates() {
  const list = await api("GET", "/api/admin/provider-rates");
  main.append(table("rates", ["Provider", "Model", "Input", "Output", "Currency"],
    (list.data || list).map((r) => [r.provider, r.model, r.input_rate, r.output_rate, r.currency])),
  el("h2", {}, "Set a rate"),
  form("rate", [field("rate-provider", "Provider", { required: "" }), field("rate-model", "Model", { required: "" }),
    field("rate-input", "Input rate (per token)", { required: "", inputmode: "decimal" }),
    field("rate-output", "Output rate (per token)", { required: "", inputmode: "decimal" }),
    el("button", { type: "submit" }, "Save rate")],
  () => api("PUT", "/api/admin/provider-rates", { provider: value("rate-provider"), model: value("rate-model"),
    input_rate: value("rate-input"), output_rate: value("rate-output") }),
  () => { say("Rate saved"); again(); }));
}

export async function codes() {
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

export { models, portkey } from "./plans.js";
