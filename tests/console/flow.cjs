// Drives the console in Debian's Chromium (playwright-core), as its users would. Run by
// tests/console.rs with PLAYWRIGHT, CHROMIUM, GW, MODEL, the customer's and the platform
// admin's sign-ins; SHOTS (optional) is where to save a screenshot of each page.
const { chromium } = require(process.env.PLAYWRIGHT);

const { GW, MODEL, CUSTOMER, CUSTOMER_PASSWORD, ADMIN, ADMIN_PASSWORD, TENANT_ADMIN, SHOTS } = process.env;
const out = {};

// Every page is checked when it is shot: a form control without a label (a <label>, an
// aria-label) is noted with the page's name.
const unlabelled = [];

async function shot(page, name) {
  const missing = await page.evaluate(() => [...document.querySelectorAll("input, select, textarea, button")]
    .filter((e) => !e.labels?.length && !e.getAttribute("aria-label") && !e.textContent.trim())
    .map((e) => e.id || e.outerHTML.slice(0, 80)));
  for (const m of missing) unlabelled.push(`${name}: ${m}`);
  if (SHOTS) await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
}

async function signIn(page, email, password) {
  await page.goto(`${GW}/console`);
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#balance").waitFor();
}

(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM, args: ["--no-sandbox"] });
  const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  // Script errors and CSP refusals; an API refusal the page shows (a 4xx) is not one.
  page.on("console", (m) => {
    if (m.type() === "error" && !/status of 4\d\d/.test(m.text())) problems.push(m.text());
  });
  page.on("dialog", (d) => d.accept());

  // A customer: balance, a new key (shown once), a call with it, usage and balance moved.
  // Signed in with the keyboard alone: the email box has the focus, Tab, Enter.
  await page.goto(`${GW}/console`);
  await page.locator("#email:focus").waitFor();
  await shot(page, "sign-in");
  await page.keyboard.type(CUSTOMER);
  await page.keyboard.press("Tab");
  await page.keyboard.type(CUSTOMER_PASSWORD);
  await page.keyboard.press("Enter");
  await page.locator("#balance").waitFor();
  out.balance_before = await page.locator("#balance").textContent();
  await shot(page, "overview");
  await page.getByRole("link", { name: "Keys" }).click();
  await page.getByLabel("Name", { exact: true }).fill("from the console");
  await page.getByLabel("Budget in all").fill("50");
  await page.getByRole("button", { name: "Create key" }).click();
  const first = (await page.locator("#plaintext").textContent()).trim();
  out.key_shown = first.startsWith("vk_");
  // The list is fetched again after the key is shown: wait for its row.
  await page.locator("#keys tbody tr").first().waitFor();
  out.keys_listed = await page.locator("#keys tbody tr").count();
  // Rotated at once: a new secret shown once, the old one refused.
  await page.getByRole("button", { name: "Rotate from the console" }).click();
  await page.locator("#plaintext", { hasText: /^vk_/ }).filter({ hasNotText: first }).waitFor();
  const key = (await page.locator("#plaintext").textContent()).trim();
  out.rotated = key !== first && key.startsWith("vk_");
  out.old_key_status = (await fetch(`${GW}/v1/models`, { headers: { authorization: `Bearer ${first}` } })).status;
  // Renamed in place.
  const nameBox = page.locator("[data-key-name]").first();
  await nameBox.fill("renamed in the console");
  await nameBox.press("Enter");
  await nameBox.blur();
  await page.locator("#status", { hasText: "Renamed" }).waitFor();
  await page.getByRole("link", { name: "Overview" }).click();
  await page.getByRole("link", { name: "Keys" }).click();
  out.renamed = await page.locator("[data-key-name]").first().inputValue();
  out.key_spend = (await page.locator("[data-spend]").first().textContent()).trim();
  await shot(page, "keys");
  const r = await fetch(`${GW}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "Hello from the browser test" }] }),
  });
  out.chat_status = r.status;
  // The charge reaches the usage log through the ledger: look again until it shows.
  for (let i = 0; i < 50; i++) {
    // Away and back: each visit renders the page afresh.
    await page.getByRole("link", { name: "Overview" }).click();
    await page.locator("#balance").waitFor();
    await page.getByRole("link", { name: "Usage" }).click();
    await page.locator("#ledger").waitFor();
    if ((await page.locator("#calls").textContent()) === "1") break;
    await page.waitForTimeout(100);
  }
  out.calls = await page.locator("#calls").textContent();
  out.usage_rows = await page.locator("#usage tbody tr").count();
  out.by_model = await page.locator("#by-model").textContent();
  out.ledger_rows = await page.locator("#ledger tbody tr").count();
  await shot(page, "usage");
  await page.getByRole("link", { name: "Prices" }).click();
  await page.locator("#prices tbody tr").first().waitFor();
  out.prices = await page.locator("#prices").textContent();
  await shot(page, "prices");
  await page.getByRole("link", { name: "Overview" }).click();
  await page.locator("#balance").waitFor();
  out.balance_after = await page.locator("#balance").textContent();
  // An admin page: not in the navigation, and the forbidden view when opened anyway.
  out.admin_link = await page.getByRole("link", { name: "Rates" }).count();
  await page.goto(`${GW}/console#/admin/rates`);
  await page.locator("#forbidden").waitFor();
  out.forbidden = true;
  await shot(page, "forbidden");
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("Email").waitFor();

  // The platform admin changes a rate.
  await signIn(page, ADMIN, ADMIN_PASSWORD);
  await page.getByRole("link", { name: "Rates" }).click();
  await page.getByLabel("Provider").fill("dashscope");
  await page.getByLabel("Model").fill("qwen-turbo");
  await page.getByLabel("Input rate (per token)").fill("0.005");
  await page.getByLabel("Output rate (per token)").fill("0.006");
  await page.getByRole("button", { name: "Save rate" }).click();
  await page.locator("#rates td", { hasText: "0.005" }).waitFor();
  out.rate_shown = true;
  await shot(page, "rates");

  // Tenants, codes, a model's plan (an invalid one refused inline).
  await page.getByRole("link", { name: "Tenants" }).click();
  await page.getByLabel("Name", { exact: true }).fill("from-the-console");
  await page.getByLabel("Markup (percent)").fill("12.5");
  await page.getByRole("button", { name: "Create tenant" }).click();
  await page.locator("#tenants td", { hasText: "from-the-console" }).waitFor();
  out.tenant_created = true;
  await shot(page, "tenants");
  // A tenant's page: its terms changed, one of its users opened and topped up.
  await page.getByRole("link", { name: "console-tenant" }).click();
  await page.getByLabel("Markup (percent)").fill("11");
  await page.getByRole("button", { name: "Save settings" }).click();
  await page.locator("#status", { hasText: "Settings saved" }).waitFor();
  await page.locator("#tenant-users tbody tr").first().waitFor();
  out.admin_tenant_markup = await page.getByLabel("Markup (percent)").inputValue();
  out.role_choices = await page.getByLabel("Role of tadmin@console.example").locator("option").count();
  await shot(page, "tenant-admin-view");
  await page.getByRole("link", { name: "tadmin@console.example" }).click();
  await page.locator("#keys").waitFor();
  await page.getByLabel("Amount", { exact: true }).fill("3");
  await page.getByRole("button", { name: "Top up" }).click();
  await page.locator("#balance", { hasText: "3" }).waitFor();
  out.user_page_balance = await page.locator("#balance").textContent();
  await shot(page, "user");
  await page.getByRole("link", { name: "Codes" }).click();
  await page.getByLabel("Amount each").fill("5");
  await page.getByLabel("How many").fill("2");
  await page.getByRole("button", { name: "Mint" }).click();
  await page.locator("#minted .secret").nth(1).waitFor();
  out.codes_minted = await page.locator("#minted .secret").count();
  await shot(page, "codes");
  await page.getByRole("link", { name: "Models" }).click();
  await page.getByLabel("Public model name").fill("console-model");
  await page.getByLabel("Strategy").selectOption("fallback");
  await page.locator("#t0-provider").fill("bad provider!");
  await page.getByRole("button", { name: "Save model" }).click();
  await page.locator("#plan-error").filter({ hasText: /./ }).waitFor();
  out.plan_refused = await page.locator("#plan-error").textContent();
  await page.locator("#t0-provider").fill("mock");
  await page.getByRole("button", { name: "Add a target" }).click();
  await page.locator("#t1-provider").fill("mock");
  await page.locator("#t1-model").fill("mock-large");
  out.plan_json = JSON.parse(await page.locator("#plan-json").inputValue());
  await page.getByRole("button", { name: "Save model" }).click();
  await page.locator("#models td", { hasText: "console-model" }).waitFor();
  out.model_saved = true;
  // A plan saved as raw JSON.
  await page.getByLabel("Public model name").fill("raw-model");
  await page.getByLabel("The plan as JSON").fill(JSON.stringify({ strategy: { mode: "loadbalance" },
    targets: [{ provider: "mock", weight: 1 }, { provider: "mock", weight: 3 }] }));
  await page.getByRole("button", { name: "Save the JSON" }).click();
  await page.locator("#models tr", { hasText: "raw-model" }).waitFor();
  out.raw_model = await page.locator("#models tr", { hasText: "raw-model" }).textContent();
  await shot(page, "models");
  await page.getByRole("link", { name: "Portkey" }).click();
  // The models page's "Public model name" also matches a loose "Name": wait for this page.
  await page.locator("#new-portkey").waitFor();
  await page.getByLabel("Name", { exact: true }).fill("console-portkey");
  await page.getByLabel("Tenant id").fill(process.env.TENANT_ID);
  await page.getByRole("button", { name: "Create config" }).click();
  await page.locator("#portkey-configs td", { hasText: "console-portkey" }).waitFor();
  out.portkey_created = true;
  await shot(page, "portkey");

  // The operator panics the key's actor and sees its restart count rise.
  await page.getByRole("link", { name: "Actors" }).click();
  const actor = page.locator("li[data-name^='key:']").first();
  await actor.waitFor();
  const name = await actor.getAttribute("data-name");
  const restarts = async () =>
    Number(await page.locator(`li[data-name='${name}'] > [data-restarts]`).getAttribute("data-restarts"));
  out.restarts_before = await restarts();
  // The search (on the server) leaves the key's actor and its parents, nothing else.
  await page.getByLabel("Find an actor").fill(name.slice(4));
  await page.getByRole("button", { name: "Find" }).click();
  await page.locator("#tree li[data-name='keys']").waitFor();
  await page.locator("#tree li[data-name='balances']").waitFor({ state: "detached" });
  out.visible_after_search = await page.locator("#tree li").count();
  // Paging: one actor per page, the next page of the key actors shows the other one.
  await page.getByLabel("Find an actor").fill("");
  await page.getByLabel("Per page").fill("1");
  await page.getByRole("button", { name: "Find" }).click();
  await page.locator("#tree li[data-name='keys'] .pager").waitFor();
  const keyPage = () => page.locator("#tree li[data-name='keys'] > ul > li").getAttribute("data-name");
  const firstPage = await keyPage();
  out.pager = (await page.locator("#tree li[data-name='keys'] > .pager").textContent()).trim();
  await page.getByRole("button", { name: "Next page of keys" }).click();
  await page.locator(`#tree li[data-name='keys'] > ul > li:not([data-name='${firstPage}'])`).waitFor();
  out.paged = [firstPage, await keyPage()];
  out.pager_next = (await page.locator("#tree li[data-name='keys'] > .pager").textContent()).trim();
  await page.getByLabel("Per page").fill("50");
  await page.getByRole("button", { name: "Find" }).click();
  await page.locator(`li[data-name='${name}']`).waitFor();
  out.fault_form = await page.locator("#fault-form").count();
  // Live figures replace the placeholder within a refresh (every 3 s).
  await page.locator("[data-figure='Requests/s']").waitFor({ timeout: 10000 });
  out.live_figures = await page.locator("#live [data-figure]").count();
  await page.getByLabel("Actor", { exact: true }).fill(name);
  await page.getByLabel("Fault").selectOption("panic");
  await page.getByRole("button", { name: "Inject" }).click();
  await page.locator("#status", { hasText: "Injected" }).waitFor();
  for (let i = 0; i < 50 && (await restarts()) <= out.restarts_before; i++) {
    await page.waitForTimeout(100);
    await page.getByRole("button", { name: "Refresh" }).click();
    await page.locator(`li[data-name='${name}']`).waitFor();
  }
  out.restarts_after = await restarts();
  await shot(page, "actors");
  await page.getByRole("button", { name: "Sign out" }).click();

  // A tenant admin sees the tenant's users and adds one.
  await signIn(page, TENANT_ADMIN, CUSTOMER_PASSWORD);
  await page.getByRole("link", { name: "Tenant" }).click();
  await page.locator("#tenant-users tbody tr").first().waitFor();
  const before = await page.locator("#tenant-users tbody tr").count();
  await page.getByLabel("Email").fill("added@console.example");
  await page.getByLabel("Username").fill("added");
  await page.getByLabel("Password").fill("a-long-password-9");
  await page.getByRole("button", { name: "Add user" }).click();
  await page.locator("#tenant-users td", { hasText: "added@console.example" }).waitFor();
  out.tenant_users = [before, await page.locator("#tenant-users tbody tr").count()];
  // Its users: a markup below the tenant's refused, one above saved, a suspension.
  const markup = page.getByLabel("Markup override of added@console.example");
  await markup.fill("5");
  await markup.press("Enter");
  await page.locator("#status.error").waitFor();
  out.low_markup = await page.locator("#status").textContent();
  await markup.fill("15");
  await markup.press("Enter");
  await page.locator("#status", { hasText: "Markup saved" }).waitFor();
  await page.getByRole("button", { name: "Suspend added@console.example" }).click();
  await page.getByRole("button", { name: "Reinstate added@console.example" }).waitFor();
  out.suspended_row = await page.locator("#tenant-users tr", { hasText: "added@console.example" }).textContent();
  // The threshold is the tenant admin's; the markup is locked.
  out.markup_locked = await page.getByLabel("Markup (percent)").isDisabled();
  await page.getByLabel(/^Overdue threshold/).fill("1");
  await page.getByRole("button", { name: "Save settings" }).click();
  await page.locator("#status", { hasText: "Settings saved" }).waitFor();
  out.threshold = await page.getByLabel(/^Overdue threshold/).inputValue();
  await shot(page, "tenant");
  out.problems = problems;
  out.unlabelled = unlabelled;
  await browser.close();
  console.log(JSON.stringify(out));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
