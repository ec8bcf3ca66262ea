// Browser tests of the /console web console: Debian's chromium driven by
// playwright-core (never a downloaded browser), against the real binary in
// development mode on a fresh SQLite data directory.
//
//   cargo build && (cd tests/browser && npm ci && npm test)
//
// Env: TB_BIN (default ../../target/debug/token-broker, or $CARGO_TARGET_DIR),
// CHROMIUM (default /usr/bin/chromium), SCREENSHOTS (default target/screenshots).
// Every test asserts visible content; screenshots of each page are saved.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import net from "node:net";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const targetDir = process.env.CARGO_TARGET_DIR || path.join(root, "target");
const BIN = process.env.TB_BIN || path.join(targetDir, "debug", "token-broker");
const SHOTS = process.env.SCREENSHOTS || path.join(targetDir, "screenshots");
mkdirSync(SHOTS, { recursive: true });

let server, base, demoKey, sessionId, rivalKey, rivalKeyId, browser, context, page, dataDir;
const cspViolations = [];

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function cli(...args) {
  return execFileSync(BIN, ["--data-dir", dataDir, ...args], { encoding: "utf8" });
}

async function api(method, p, key, body) {
  const r = await fetch(base + p, {
    method,
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: body && JSON.stringify(body),
  });
  return { status: r.status, json: await r.json().catch(() => null) };
}

async function shot(name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

before(async () => {
  dataDir = mkdtempSync(path.join(tmpdir(), "tb-console-"));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  server = spawn(BIN, ["--data-dir", dataDir, "--listen", `127.0.0.1:${port}`, "serve", "--dev"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let err = "";
  server.stderr.on("data", (d) => (err += d));
  server.stdout.on("data", (d) => (err += d));
  const deadline = Date.now() + 30_000;
  while (!/export TB_KEY=(tkb_\S+)/.test(err) || !/issued the demo's first tokens/.test(err) || !(await fetch(base + "/healthz").then((r) => r.ok, () => false))) {
    if (Date.now() > deadline || server.exitCode !== null) throw new Error("broker did not start:\n" + err);
    await new Promise((r) => setTimeout(r, 200));
  }
  demoKey = err.match(/export TB_KEY=(tkb_\S+)/)[1];
  sessionId = err.match(/"session_id":"(1_[^"\\]+)"/)[1];
  assert.match(err, /\/console/, "serve --dev prints the console URL");
  // The demo's first tokens (a moderator for a host, a publisher, and a
  // refusal) come from `serve --dev` itself: the overview below must show
  // them without this test issuing anything (the loop above waited for it).
  // A second tenant with its own key: the console must show none of it.
  cli("tenant", "create", "rival");
  rivalKey = cli("key", "create", "--tenant", "rival", "--scope", "audit", "--scope", "admin").match(/tkb_[a-z0-9]+_[0-9a-f]+/)[0];
  rivalKeyId = rivalKey.slice(4, 20);

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  context = await browser.newContext({ timezoneId: "Asia/Tokyo", acceptDownloads: true });
  page = await context.newPage();
  page.on("console", (m) => {
    if (/Content Security Policy|Refused to/.test(m.text())) cspViolations.push(m.text());
  });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

test("sign-in with the keyboard only lands on the overview with the demo's tokens", async () => {
  await page.goto(base + "/console");
  await page.waitForURL(/\/console\/sign-in$/);
  await shot("sign-in");
  // The key field has focus: type and press Enter, no mouse.
  await page.keyboard.type(demoKey);
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/console\/overview$/);
  assert.equal(await page.locator("h1").innerText(), "Overview");
  assert.equal(await page.locator("#tenant").innerText(), "demo");
  assert.ok(Number(await page.locator("#issued").innerText()) >= 2);
  assert.ok(Number(await page.locator("#refused").innerText()) >= 1);
  assert.equal(await page.locator("#moderator-grants").innerText(), "1");
  assert.match(await page.locator("#chain").innerText(), /verifies/);
  assert.equal(await page.locator("svg.chart rect").count() > 0, true);
  assert.equal(await page.locator("#refusals tbody tr").count() >= 1, true);
  // Times in the viewer's zone (Tokyo), UTC on hover.
  const cookies = await context.cookies();
  const c = cookies.find((c) => c.name === "tb_console");
  assert.ok(c.httpOnly && c.sameSite === "Strict", JSON.stringify(c));
  assert.ok(!JSON.stringify(cookies).includes(demoKey.slice(21)), "the key is not in the browser");
  await shot("overview");
  await page.setViewportSize({ width: 375, height: 800 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `no horizontal scrolling on a narrow screen (${overflow}px)`);
  await shot("overview-narrow");
  await page.setViewportSize({ width: 1280, height: 800 });
});

test("who got moderator: grants, a filter, the empty state and a CSV export", async () => {
  await page.goto(base + "/console/moderators");
  const rows = page.locator("#grants tbody tr");
  assert.equal(await rows.count(), 1);
  const row = await rows.first().innerText();
  assert.match(row, /alice/);
  assert.match(row, /hosts-moderate/);
  const t = page.locator("#grants time").first();
  assert.match(await t.getAttribute("title"), /\(UTC\)$/);
  assert.match(await t.innerText(), /GMT\+9/, "localised to the viewer's time zone");
  await shot("moderators");
  await page.fill("input[name=user]", "bob");
  await page.press("input[name=user]", "Enter");
  await page.waitForURL(/user=bob/);
  assert.match(await page.locator("#empty").innerText(), /No moderator tokens/);
  await page.fill("input[name=user]", "alice");
  await page.press("input[name=user]", "Enter");
  await page.waitForURL(/user=alice/);
  assert.equal(await page.locator("#grants tbody tr").count(), 1);
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#export")]);
  const csv = readFileSync(await download.path(), "utf8");
  assert.match(csv.split("\r\n")[0], /^audit_id,tenant,seq/);
  assert.match(csv, /,alice,/);
  assert.equal(csv.trim().split("\r\n").length, 2);
  const audit = await api("GET", "/v1/audit?kind=audit_read", demoKey);
  assert.ok(audit.json.items.some((r) => (r.detail || "").includes('"csv"')), "the export is an audit event");
});

test("audit browser: a filter, keyset pages and an event's detail", async () => {
  await page.goto(base + "/console/audit?kind=token_refused");
  const rows = page.locator("#events tbody tr");
  assert.ok((await rows.count()) >= 1);
  assert.match(await rows.first().innerText(), /token_refused/);
  await shot("audit");
  await page.goto(base + "/console/audit?limit=2");
  assert.equal(await page.locator("#events tbody tr").count(), 2);
  const firstPage = await page.locator("#events tbody").innerText();
  await page.click("#next");
  assert.notEqual(await page.locator("#events tbody").innerText(), firstPage);
  await page.goto(base + "/console/audit?kind=token_issued&user=alice");
  await page.locator("#events tbody a").first().click();
  await page.waitForURL(/\/console\/audit\/\d+$/);
  assert.match(await page.locator("h1").innerText(), /Audit event #\d+/);
  assert.match(await page.locator("#event").innerText(), /alice/);
  assert.match(await page.locator("#explanation").innerText(), /Issued a moderator token .* to alice under rule hosts-moderate of policy v1/);
  await shot("audit-event");
});

test("policy: versions, the current text, a dry run with its diff and a refused one", async () => {
  await page.goto(base + "/console/policy");
  assert.match(await page.locator("#versions").innerText(), /v1/);
  const current = await page.locator("#current").innerText();
  assert.match(current, /tenant = "demo"/);
  await page.fill("#source", current.replace('max_ttl = "8h"', 'max_ttl = "4h"'));
  await page.click("text=Check and show the diff");
  assert.match(await page.locator("#dry-run-ok").innerText(), /Nothing was applied/);
  assert.match(await page.locator("#diff").innerText(), /\+max_ttl = "4h"/);
  await shot("policy-dry-run");
  await page.goto(base + "/console/policy");
  await page.fill("#source", 'tenant = "demo"\n[[rules]]\nid = 7');
  await page.click("text=Check and show the diff");
  assert.equal(await page.locator("#error-code").innerText(), "invalid_policy");
  await page.goto(base + "/console/policy");
  await shot("policy");
  await page.click("#versions a[href$='/versions/1']");
  assert.match(await page.locator("#diff").innerText(), /tenant = "demo"/);
  // Rollback with confirmation: apply v2 through the API, roll back to v1 here.
  const r = await api("POST", "/v1/policy", demoKey, { source: current.replace('max_ttl = "8h"', 'max_ttl = "5h"') });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  await page.goto(base + "/console/policy");
  await page.click("text=Roll back to v1…");
  assert.equal(await page.locator("h1").innerText(), "Confirm rollback");
  await shot("policy-rollback-confirm");
  await page.click("text=Yes, roll back to v1");
  await page.waitForURL(/\/console\/policy$/);
  assert.match(await page.locator("#versions").innerText(), /rollback to 1/);
  assert.match(await page.locator("#current").innerText(), /max_ttl = "8h"/);
});

test("keys: create one (its secret shown once), then revoke it", async () => {
  await page.goto(base + "/console/keys");
  await page.fill("input[name=name]", "browser-made");
  await page.check("input[name=scope_audit]");
  await page.click("text=Create key");
  const key = await page.locator("#new-key").innerText();
  assert.match(key, /^tkb_[a-z0-9]{16}_[0-9a-f]{64}$/);
  assert.equal((await api("GET", "/v1/whoami", key)).status, 200);
  await shot("keys-created");
  await page.goto(base + "/console/keys");
  assert.ok(!(await page.content()).includes(key.slice(21)), "the secret is shown once only");
  const row = page.locator(`tr[data-key="${key.slice(4, 20)}"]`);
  await row.locator("button", { hasText: "Revoke" }).click();
  await page.waitForURL(/\/console\/keys$/);
  assert.match(await page.locator(`tr[data-key="${key.slice(4, 20)}"]`).innerText(), /revoked/);
  assert.equal((await api("GET", "/v1/whoami", key)).status, 401);
  await shot("keys");
});

test("another tenant's data and keys are out of reach through console URLs", async () => {
  for (const p of ["/console/overview", "/console/audit", `/console/audit?key_id=${rivalKeyId}`, "/console/keys",
                   "/console/moderators", "/console/audit/1", "/console/audit/2"]) {
    await page.goto(base + p);
    const text = await page.locator("main").innerText();
    assert.ok(!text.includes("rival"), `${p} shows the other tenant`);
    if (p.includes("key_id")) assert.match(text, /No events match/);
  }
  // Revoking the rival's key with a valid form (this session's CSRF token): refused.
  await page.goto(base + "/console/keys");
  const csrf = await page.locator("input[name=csrf]").first().inputValue();
  const r = await page.request.post(`${base}/console/keys/${rivalKeyId}/revoke`, { form: { csrf }, maxRedirects: 0 });
  assert.equal(r.status(), 404);
  assert.match(await r.text(), /not_found/);
  assert.equal((await api("GET", "/v1/whoami", rivalKey)).status, 200, "the rival key still works");
});

test("CSRF: a hostile site's form and a forged token change nothing", async () => {
  const before = (await api("GET", "/v1/keys", demoKey)).json.items.length;
  // A page on another site that posts to the console as soon as it loads.
  const evil = createServer((_, res) => {
    res.setHeader("content-type", "text/html");
    res.end(`<form id=f method=post action="${base}/console/keys"><input name=scope_admin value=1><input name=csrf value=x></form>
             <script>document.getElementById('f').submit()</script>`);
  });
  await new Promise((r) => evil.listen(0, "localhost", r));
  const evilPage = await context.newPage();
  await evilPage.goto(`http://localhost:${evil.address().port}/`);
  await evilPage.waitForLoadState("load");
  await evilPage.waitForTimeout(500);
  const landed = await evilPage.locator("body").innerText();
  assert.ok(/Sign in|csrf_failed/.test(landed), landed);
  await evilPage.close();
  evil.close();
  // Same origin but without this session's token.
  const r = await page.request.post(`${base}/console/keys`, { form: { scope_admin: "1", csrf: "forged" }, maxRedirects: 0 });
  assert.equal(r.status(), 403);
  assert.match(await r.text(), /csrf_failed/);
  assert.equal((await api("GET", "/v1/keys", demoKey)).json.items.length, before, "no key was created");
  await page.goto(base + "/console/overview");
  assert.equal(await page.locator("h1").innerText(), "Overview", "still signed in");
});

test("sign-out ends the session; no CSP violations on any page", async () => {
  await page.goto(base + "/console/overview");
  await page.click("text=Sign out");
  await page.waitForURL(/\/console\/sign-in$/);
  await page.goto(base + "/console/moderators");
  await page.waitForURL(/\/console\/sign-in$/);
  assert.match(await page.locator("h1").innerText(), /Sign in/);
  assert.deepEqual(cspViolations, []);
});
