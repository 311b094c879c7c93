// Routing plans: a model's plan (a form for single, fallback and load-balance targets, or its
// JSON edited directly) and Portkey configs for a tenant or a user.

import { main, el, api, say, field, value, form, table } from "./lib.js";

const again = () => window.dispatchEvent(new HashChangeEvent("hashchange"));

function parsed(text) {
  try { return JSON.parse(text); } catch { throw new Error("the plan is not valid JSON"); }
}

export async function models() {
  const list = await api("GET", "/api/admin/model-configs");
  const targets = el("div", { id: "targets" });
  let n = 0;
  const addTarget = () => {
    const i = n++;
    targets.append(el("fieldset", { class: "stack", "data-target": String(i) },
      el("legend", {}, `Target ${i + 1}`),
      field(`t${i}-provider`, "Provider", { required: "" }),
      field(`t${i}-model`, "Model at the provider (optional)"),
      field(`t${i}-host`, "Custom host (optional)", { type: "url" }),
      field(`t${i}-weight`, "Weight (load balance)", { inputmode: "decimal" })));
  };
  addTarget();
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
  const json = el("textarea", { id: "plan-json", rows: "10", cols: "60" });
  const show = () => { json.value = JSON.stringify(plan(), null, 2); };
  const add = el("button", { type: "button", on: { click: () => { addTarget(); show(); } } }, "Add a target");
  const f = form("plan", [field("plan-model", "Public model name", { required: "" }),
    el("label", { for: "plan-mode" }, "Strategy", el("select", { id: "plan-mode" },
      ["single", "fallback", "loadbalance"].map((m) => el("option", { value: m }, m)))),
    targets, add, el("button", { type: "submit" }, "Save model")],
  () => api("PUT", "/api/admin/model-configs", { model: value("plan-model"), config: plan() }),
  () => { say("Model saved"); again(); });
  // The JSON follows the targets and strategy (not the name, so an edited JSON survives it).
  f.addEventListener("input", (e) => { if (e.target.id !== "plan-model") show(); });
  // The same plan as JSON: follows the form, and may be edited and saved as it is (any
  // field Portkey's format allows, such as retries or nested strategies).
  const raw = form("plan-raw", [el("label", { for: "plan-json" }, "The plan as JSON", json),
    el("button", { type: "submit" }, "Save the JSON")],
  () => {
    if (!value("plan-model")) throw new Error("give the public model name above");
    return api("PUT", "/api/admin/model-configs", { model: value("plan-model"), config: parsed(json.value) });
  }, () => { say("Model saved"); again(); });
  const edit = (m) => el("button", { type: "button", "aria-label": `Edit ${m.model}`, on: { click: () => {
    document.getElementById("plan-model").value = m.model;
    json.value = JSON.stringify(m.config, null, 2);
    json.focus();
  } } }, "Edit JSON");
  main.append(table("models", ["Model", "Strategy", "Targets", ""],
    (list.data || []).map((m) => [m.model, m.config?.strategy?.mode ?? "single",
      (m.config?.targets || []).map((t) => t.provider).join(", "), edit(m)])),
  el("h2", {}, "Set a model's plan"), f, el("h2", {}, "Or its JSON"), raw);
  show();
}

export async function portkey() {
  const list = await api("GET", "/api/admin/portkey-configs");
  const rows = (list.data || []).map((c) => {
    const toggle = el("button", { type: "button", on: { click: async () => {
      try {
        await api("POST", `/api/admin/portkey-configs/${c.id}/${c.is_active ? "deactivate" : "activate"}`, {});
        again();
      } catch (err) { say(err.message, true); }
    } } }, c.is_active ? "Deactivate" : "Activate");
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
      const body = { config_name: value("portkey-name"), config: parsed(json.value) };
      if (value("portkey-tenant")) body.tenant_id = value("portkey-tenant");
      if (value("portkey-user")) body.user_id = value("portkey-user");
      return api("POST", "/api/admin/portkey-configs", body);
    }, () => { say("Config created"); again(); }));
}
