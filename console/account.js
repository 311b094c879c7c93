// A customer's own pages (overview, keys, usage, prices), also shown to an admin for one of
// its users: every function takes the user's id.

import { state, main, el, api, say, figures, button } from "./lib.js";

export async function home(uid = state.user) {
  const b = await api("GET", `/api/users/${uid}/balance`);
  const p = await api("GET", `/api/users/${uid}`);
  main.append(figures("account", [["Balance", b.balance, "balance"], ["Status", b.status, "account-status"],
    ["Reserved", b.reserved]]),
  el("p", { class: "dim" }, `${p.email} · tenant ${p.tenant_id}`));
  if (uid !== state.user) return p;
  const code = el("input", { id: "code", autocomplete: "off" });
  const form = el("form", { class: "stack" }, el("label", { for: "code" }, "Redeem a code", code),
    el("button", { type: "submit" }, "Redeem"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await api("POST", `/api/users/${uid}/redemptions`, { code: code.value });
      say("Redeemed");
      window.dispatchEvent(new HashChangeEvent("hashchange"));
    } catch (err) { say(err.message, true); }
  });
  main.append(el("h2", {}, "Redeem"), form);
  return p;
}

export async function keys(uid = state.user) {
  const list = () => api("GET", `/api/users/${uid}/virtual-keys`);
  const name = el("input", { id: "key-name", required: "" });
  const models = el("input", { id: "key-models", placeholder: "all models" });
  const rpm = el("input", { id: "key-rpm", type: "number", min: "1" });
  const tpm = el("input", { id: "key-tpm", type: "number", min: "1" });
  const budget = el("input", { id: "key-budget", inputmode: "decimal" });
  const monthly = el("input", { id: "key-monthly", inputmode: "decimal" });
  const expires = el("input", { id: "key-expires", type: "date" });
  const ips = el("input", { id: "key-ips", placeholder: "anywhere" });
  const shown = el("div", { id: "new-key", "aria-live": "polite" });
  const error = el("p", { class: "error", role: "alert", id: "new-key-error" });
  const form = el("form", { class: "stack", id: "new-key-form" },
    el("label", { for: "key-name" }, "Name", name),
    el("label", { for: "key-models" }, "Allowed models (comma-separated)", models),
    el("label", { for: "key-rpm" }, "Requests per minute", rpm),
    el("label", { for: "key-tpm" }, "Tokens per minute", tpm),
    el("label", { for: "key-budget" }, "Budget in all", budget),
    el("label", { for: "key-monthly" }, "Budget per month", monthly),
    el("label", { for: "key-expires" }, "Expires on", expires),
    el("label", { for: "key-ips" }, "Allowed addresses (CIDR, comma-separated)", ips),
    el("button", { type: "submit" }, "Create key"), error, shown);
  let t;
  const redraw = async () => { const fresh = keyTable((await list()).data); t.replaceWith(fresh); t = fresh; };
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    const body = { name: name.value };
    const allowed = models.value.split(",").map((m) => m.trim()).filter(Boolean);
    if (allowed.length) body.allowed_models = allowed;
    if (rpm.value) body.rate_limit_rpm = Number(rpm.value);
    if (tpm.value) body.rate_limit_tpm = Number(tpm.value);
    if (budget.value.trim()) body.budget_total = budget.value.trim();
    if (monthly.value.trim()) body.budget_monthly = monthly.value.trim();
    if (expires.value) body.expires_at = `${expires.value}T00:00:00Z`;
    const ranges = ips.value.split(",").map((r) => r.trim()).filter(Boolean);
    if (ranges.length) body.allowed_ips = ranges;
    try {
      const k = await api("POST", `/api/users/${uid}/virtual-keys`, body);
      shown.replaceChildren(...secret("Your new key, shown once:", k.virtual_key));
      await redraw();
    } catch (err) { error.textContent = err.message; }
  });
  t = keyTable((await list()).data);
  main.append(el("h2", {}, "New key"), form, el("h2", {}, uid === state.user ? "Your keys" : "Keys"), t);

  function keyTable(rows) {
    return el("table", { id: "keys" },
      el("thead", {}, el("tr", {}, ["Name", "Key", "Models", "rpm", "tpm", "Spent / budget", "Expires", "Active", ""]
        .map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows.map((k) => {
        const rotate = button("Rotate", async () => {
          if (!confirm(`Rotate ${k.name}? The current secret stops working at once.`)) return;
          const r = await api("POST", `/api/virtual-keys/${k.id}/rotate`, {});
          shown.replaceChildren(...secret(`New secret for ${k.name}, shown once:`, r.virtual_key));
          await redraw();
        }, { "aria-label": `Rotate ${k.name}` });
        const toggle = button(k.is_active ? "Deactivate" : "Activate", async () => {
          await api("POST", `/api/virtual-keys/${k.id}/${k.is_active ? "deactivate" : "activate"}`, {});
          await redraw();
        }, { "aria-label": `${k.is_active ? "Deactivate" : "Activate"} ${k.name}` });
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
          el("td", {}, k.rate_limit_tpm ?? "—"),
          el("td", { "data-spend": k.id }, spend(k)),
          el("td", {}, k.expires_at ? k.expires_at.slice(0, 10) : "—"),
          el("td", {}, k.is_active ? "yes" : "no"),
          el("td", {}, rotate, " ", toggle));
      })));
  }
}

// What a key spent, against its budgets when it has any.
function spend(k) {
  const parts = [];
  if (k.budget_total) parts.push(`${k.spent_total} / ${k.budget_total}`);
  if (k.budget_monthly) parts.push(`${k.spent_this_month} / ${k.budget_monthly} this month`);
  return parts.length ? parts.join("; ") : k.spent_total;
}

// A secret shown once, with a copy button.
function secret(caption, plaintext) {
  const copy = button("Copy", async () => {
    await navigator.clipboard.writeText(plaintext);
    say("Copied");
  });
  return [el("p", {}, caption), el("p", { class: "secret", id: "plaintext" }, plaintext), copy];
}

export async function usage(uid = state.user) {
  const u = await api("GET", `/api/users/${uid}/usage?limit=100`);
  const t = u.totals;
  main.append(figures("usage-totals", [["Calls", t.requests, "calls"],
    ["Tokens in / out", `${t.input_tokens} / ${t.output_tokens}`], ["Cost", t.cost, "cost"]]));
  const rows = u.data || [];
  const csv = ["request_id,model,input_tokens,output_tokens,cost,created_at",
    ...rows.map((r) => [r.request_id, r.model, r.input_tokens, r.output_tokens, r.cost, r.created_at].join(","))].join("\n");
  const download = el("a", { href: URL.createObjectURL(new Blob([csv], { type: "text/csv" })), download: "usage.csv" }, "Download CSV");
  for (const by of ["day", "model", "key"]) {
    const g = await api("GET", `/api/users/${uid}/usage?group_by=${by}`);
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
  const ledger = await api("GET", `/api/users/${uid}/ledger?limit=50`);
  main.append(el("h2", {}, "Ledger"), el("table", { id: "ledger" },
    el("thead", {}, el("tr", {}, ["When", "Kind", "Calls", "Amount", "Status after"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ledger.data.map((e) => el("tr", {}, el("td", {}, e.created_at), el("td", {}, e.kind),
      el("td", {}, e.calls ?? ""), el("td", {}, e.amount), el("td", {}, e.status_after))))));
}

export async function prices(uid = state.user) {
  const p = await api("GET", `/api/users/${uid}/prices`);
  main.append(el("p", { class: "dim" }, `Markup ${p.markup_percent} % (${p.markup_source})`),
    el("table", { id: "prices" },
      el("thead", {}, el("tr", {}, ["Model", "Provider", "Input / 1M tokens", "Output / 1M tokens", "Currency"]
        .map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, p.models.flatMap((m) => m.targets.map((t) => el("tr", {}, el("td", {}, m.model),
        el("td", {}, t.provider), el("td", {}, t.input_price_per_million ?? "—"),
        el("td", {}, t.output_price_per_million ?? "—"), el("td", {}, t.currency ?? "—")))))));
}
