// The Neuropia console: plain ES modules over the gateway's HTTP API. The token lives in
// memory only (a reload asks to sign in again) and is refreshed before it expires.

import { state, main, el, api } from "./lib.js";
import { home, keys, usage, prices } from "./account.js";
import { tenant, user, tenants, rates, models, codes, portkey } from "./admin.js";
import { tree } from "./ops.js";

const nav = document.getElementById("nav");
const everyone = ["user", "tenant_admin", "platform_admin"];
const admins = ["tenant_admin", "platform_admin"];

// Pages by hash (`#/path?query`), with the roles that may open them and those that see
// them in the navigation (the API checks again).
const PAGES = {
  "#/home": { title: "Overview", roles: everyone, show: () => home() },
  "#/keys": { title: "Keys", roles: everyone, show: () => keys() },
  "#/usage": { title: "Usage", roles: everyone, show: () => usage() },
  "#/prices": { title: "Prices", roles: everyone, show: () => prices() },
  "#/tenant": { title: "Tenant", roles: admins, nav: ["tenant_admin"], show: tenant },
  "#/user": { title: "User", roles: admins, nav: [], show: user },
  "#/admin/tenants": { title: "Tenants", roles: ["platform_admin"], show: tenants },
  "#/admin/rates": { title: "Rates", roles: ["platform_admin"], show: rates },
  "#/admin/models": { title: "Models", roles: ["platform_admin"], show: models },
  "#/admin/codes": { title: "Codes", roles: ["platform_admin"], show: codes },
  "#/admin/portkey": { title: "Portkey", roles: ["platform_admin"], show: portkey },
  "#/ops/tree": { title: "Actors", roles: ["platform_admin"], show: tree },
};

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
      start(await api("POST", "/api/auth/login", { email: email.value, password: password.value }));
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
  if (!PAGES[location.hash.split("?")[0]]) location.hash = "#/home";
  else route();
}

function signOut() {
  clearTimeout(state.refresh);
  clearInterval(state.live);
  Object.assign(state, { token: null, user: null, role: null, tenant: null });
  location.hash = "";
  signIn();
}

function forbidden(message) {
  main.replaceChildren(el("h1", {}, "Forbidden"), el("p", { id: "forbidden" }, message));
}

function route() {
  clearInterval(state.live);
  if (!state.token) return signIn();
  const [path, query] = location.hash.split("?");
  const page = PAGES[path] || PAGES["#/home"];
  nav.replaceChildren(...Object.entries(PAGES)
    .filter(([, p]) => (p.nav || p.roles).includes(state.role))
    .map(([hash, p]) => el("a", { href: hash, "aria-current": hash === path ? "page" : null }, p.title)));
  if (!page.roles.includes(state.role)) return forbidden("Your role may not open this page.");
  main.replaceChildren(el("h1", {}, page.title));
  page.show(new URLSearchParams(query || "")).catch((err) => {
    if (err.status === 401) return signOut();
    if (err.status === 403) return forbidden(err.message);
    main.append(el("p", { class: "error", role: "alert" }, err.message));
  });
  main.focus();
}

document.getElementById("sign-out").addEventListener("click", signOut);
window.addEventListener("hashchange", route);
route();
