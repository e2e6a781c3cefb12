// Browser test of the inferd console against a running server:
//   node tests/ui/console.spec.mjs <base-url> <artifact-dir>
// Drives Debian's chromium through playwright-core. Exit code 0 = every step passed.
// Env: UI_TEST_V2_SOURCE  model file to load as v2 when the server has no ready v2
//      UI_TEST_V2_DTYPE   its dtype (default f32)
//      UI_TEST_ADMIN_KEY  an admin key, when the server has keys configured
//      UI_DIST            development only: serve /ui from this folder instead of the server

import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { extname, join } from "node:path";
import { chromium } from "playwright-core";
import { assert, harness, until } from "./lib/harness.mjs";
import { shoot } from "./lib/screenshot.mjs";

const [base, artifacts = "target/ui-artifacts"] = process.argv.slice(2);
if (!base) {
  console.error("usage: node console.spec.mjs <base-url> <artifact-dir>");
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const MODEL = process.env.UI_TEST_MODEL ?? "smollm2";
const V2_SOURCE = process.env.UI_TEST_V2_SOURCE ?? "";
const V2_DTYPE = process.env.UI_TEST_V2_DTYPE ?? "f32";

// ---- server-side probes --------------------------------------------------------------
async function runningCount() {
  const body = await (await fetch(`${base}/stats`)).json();
  const rows = body.models ?? body.replicas ?? [];
  return rows.reduce((a, r) => a + (r.running ?? 0) + (r.waiting ?? 0), 0);
}

// ---- browser -----------------------------------------------------------------------------
const profile = mkdtempSync(join(tmpdir(), "inferd-ui-profile-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    // A page fulfilled by the test (UI_DIST) has no loopback origin, so Chromium would block its WebSocket to the server.
    ...(process.env.UI_DIST ? ["--disable-features=LocalNetworkAccessChecks"] : []),
  ],
  viewport: { width: 1280, height: 900 },
});
const page = context.pages()[0] ?? (await context.newPage());
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(e.message));
page.on("console", (m) => m.type() === "error" && console.log(`  [browser console] ${m.text()}`));
if (process.env.UI_DIST) {
  console.log(`WARNING: serving /ui from ${process.env.UI_DIST}, not from the server (development only)`);
  const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css" };
  // The same Content-Security-Policy as src/ui.rs sends with the page.
  const csp = readFileSync(new URL("../../src/ui.rs", import.meta.url), "utf8").match(/const CSP: &str = "(.*)";/)?.[1];
  await context.route(`${base}/ui**`, (route) => {
    const path = new URL(route.request().url()).pathname.replace(/^\/ui\/?/, "");
    const file = path && extname(path) ? path : "index.html";
    const headers = file.endsWith(".html") && csp ? { "content-security-policy": csp } : {};
    route.fulfill({ body: readFileSync(join(process.env.UI_DIST, file)), contentType: types[extname(file)] ?? "application/octet-stream", headers });
  });
}

const region = (name) => page.getByRole("region", { name, exact: true });
const nav = (name) => page.getByRole("navigation", { name: "Console" }).getByRole("link", { name, exact: true });
const playground = region("Playground");
const lastReply = () => playground.locator("article.msg-assistant, article.msg-completion").last();

async function setMode(mode) {
  await playground.getByLabel(mode === "chat" ? "Chat" : "Completion", { exact: true }).check();
}
async function setField(label, value) {
  await playground.getByLabel(label, { exact: true }).fill(String(value));
}

/** Send `text` and watch the reply in the page: the lengths its text had while streaming, and its end. */
async function sendAndWatch(text, { onStreaming } = {}) {
  const replies = await playground.locator("article.msg-assistant, article.msg-completion").count();
  const watch = page.evaluate(
    (before) =>
      new Promise((resolve) => {
        const log = document.querySelector(".log");
        const lengths = [];
        const check = () => {
          const all = log.querySelectorAll("article.msg-assistant, article.msg-completion");
          if (all.length <= before) return;
          const el = all[all.length - 1];
          const text = el.querySelector("[data-testid=content]").textContent;
          if (el.dataset.state === "streaming") {
            if (text !== "…" && lengths[lengths.length - 1] !== text.length) lengths.push(text.length);
          } else {
            obs.disconnect();
            resolve({ lengths, state: el.dataset.state, text, finish: el.querySelector("[data-testid=finish]")?.textContent ?? "", error: el.querySelector(".error")?.textContent ?? "" });
          }
        };
        const obs = new MutationObserver(check);
        obs.observe(log, { childList: true, subtree: true, characterData: true });
      }),
    replies,
  );
  await playground.getByLabel("Message", { exact: true }).fill(text);
  await playground.getByRole("button", { name: "Send" }).click();
  if (onStreaming) await onStreaming();
  return watch;
}

// ---- steps ---------------------------------------------------------------------------------
const t = harness();

const loaded = await t.step("console loads from the server at /ui", async () => {
  const res = await page.goto(`${base}/ui`);
  assert(res && res.ok(), `GET /ui answered ${res?.status()}`);
  await until("the model list", async () => (await playground.getByLabel("Model", { exact: true }).locator("option").allTextContents()).includes(MODEL));
  await playground.getByLabel("Model", { exact: true }).selectOption(MODEL);
});

if (!loaded) {
  // Nothing else can pass without the page: stop here rather than time out step by step.
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  t.summary();
  process.exit(1);
}

await t.step("playground: a chat message streams tokens and finishes", async () => {
  await setMode("chat");
  await setField("Temperature", 0);
  await setField("Max tokens", 48);
  const r = await sendAndWatch("Name three colors.");
  console.log(`  streamed lengths ${JSON.stringify(r.lengths.slice(0, 12))}…, ${r.finish}, text ${JSON.stringify(r.text.slice(0, 80))}`);
  assert(r.state === "done", `reply state ${r.state} ${r.error}`);
  assert(r.lengths.length >= 3, `saw the text grow only ${r.lengths.length} times while streaming`);
  assert(r.text.trim().length > 0, "empty reply");
  assert(/finish (stop|length)/.test(r.finish), `finish shows "${r.finish}"`);
  const reply = lastReply();
  assert(/\d+ ms/.test(await reply.getByTestId("stat-ttft").textContent()), "TTFT shown");
  assert(/tok\/s/.test(await reply.getByTestId("stat-speed").textContent()), "tokens/s shown");
  assert(Number((await reply.getByTestId("stat-tokens").textContent()).replace(/\D/g, "")) > 0, "token count shown");
  await shoot(page, artifacts, "playground");
});

await t.step("playground: the conversation survives a reload", async () => {
  await page.reload();
  await until("the stored messages", async () => (await playground.locator("article.msg-user").count()) >= 1);
  assert((await playground.locator("article.msg-user").first().textContent()).includes("Name three colors."), "user message kept");
  await until("the model list", async () => (await playground.getByLabel("Model", { exact: true }).inputValue()) === MODEL);
});

await t.step("playground: stop cancels mid-stream and the server's running count returns to 0", async () => {
  await setMode("completion");
  await setField("Temperature", 0);
  await setField("Max tokens", 600);
  const r = await sendAndWatch("1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", {
    onStreaming: async () => {
      await until("a few streamed tokens", async () => Number(((await lastReply().getByTestId("stat-tokens").textContent().catch(() => "")) ?? "").replace(/\D/g, "")) >= 8, { everyMs: 20 });
      assert((await runningCount()) > 0, "the server shows the generation running");
      await playground.getByRole("button", { name: "Stop" }).click();
    },
  });
  console.log(`  stopped after ${r.text.length} chars: ${r.finish}`);
  assert(/finish cancelled/.test(r.finish), `finish shows "${r.finish}"`);
  await until("running + waiting = 0 on /stats", async () => (await runningCount()) === 0, { timeoutMs: 10_000 });
  assert(await playground.getByRole("button", { name: "Send" }).isEnabled(), "Send enabled again");
});

await t.step("models page: a failed admin action is shown as an error", async () => {
  await nav("Models").click();
  const models = region("Models");
  if (process.env.UI_TEST_ADMIN_KEY) {
    await models.getByLabel("Admin key").fill(process.env.UI_TEST_ADMIN_KEY);
    await models.getByRole("button", { name: "Use key" }).click();
  }
  const form = models.getByRole("form", { name: `Load a version of ${MODEL}` });
  await form.getByLabel("New version").fill("broken");
  await form.getByLabel("Source").fill("/nonexistent/model.gguf");
  await form.getByRole("button", { name: "Load version" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Confirm" }).click();
  const alert = models.getByRole("alert");
  await until("the error alert", async () => (await alert.isVisible()) && /failed: .+/.test(await alert.textContent()), { timeoutMs: 60_000 });
  console.log(`  alert: ${await alert.textContent()}`);
});

await t.step("models page: activate v2, and the next reply is served by it", async () => {
  const models = region("Models");
  const table = models.getByRole("table", { name: `Versions of ${MODEL}` });
  const v2 = table.locator('tr[data-version="v2"]');
  if ((await v2.count()) === 0 || (await v2.getAttribute("data-state")) !== "ready") {
    assert(V2_SOURCE, "the server has no ready v2 and UI_TEST_V2_SOURCE is not set");
    const form = models.getByRole("form", { name: `Load a version of ${MODEL}` });
    await form.getByLabel("New version").fill("v2");
    await form.getByLabel("Source").fill(V2_SOURCE);
    await form.getByLabel("Dtype").selectOption(V2_DTYPE);
    await form.getByRole("button", { name: "Load version" }).click();
    await page.getByRole("dialog").getByRole("button", { name: "Confirm" }).click();
    await until("v2 ready", async () => (await v2.getAttribute("data-state", { timeout: 500 })) === "ready", { timeoutMs: 180_000, everyMs: 500 });
  }
  await models.getByRole("button", { name: "Activate v2" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Confirm" }).click();
  await until("v2 active", async () => (await v2.getAttribute("data-active")) === "true", { timeoutMs: 60_000 });
  assert((await models.getByRole("alert").isHidden()) || !/Activate/.test(await models.getByRole("alert").textContent()), "no activation error");
  await shoot(page, artifacts, "models");

  await nav("Playground").click();
  await setMode("chat");
  await setField("Max tokens", 16);
  await playground.getByLabel("Version", { exact: true }).selectOption("").catch(() => {});
  const r = await sendAndWatch("Hello!");
  assert(r.state === "done", `reply state ${r.state} ${r.error}`);
  const version = await until("the served version", () => lastReply().getByTestId("served-version").getAttribute("data-version", { timeout: 500 }), { timeoutMs: 10_000 });
  const how = await lastReply().getByTestId("served-version").getAttribute("title");
  console.log(`  reply served by ${version} (${how})`);
  assert(version === "v2", `reply served by ${version}`);
});

await t.step("live page: charts show data after traffic", async () => {
  await nav("Live").click();
  const live = region("Live");
  const charts = ["Throughput", "Time to first token", "Inter-token latency", "Requests", "KV cache usage", "Prefix-hit rate"];
  const empty = await until(
    "every chart to have points",
    async () => {
      const missing = [];
      for (const name of charts) {
        const points = Number(await live.getByRole("figure", { name: `${name} chart` }).getAttribute("data-points"));
        if (!(points > 0)) missing.push(name);
      }
      return missing.length === 0 ? [] : null;
    },
    { timeoutMs: 15_000, everyMs: 500 },
  ).catch(async (e) => {
    const missing = [];
    for (const name of charts) if (!(Number(await live.getByRole("figure", { name: `${name} chart` }).getAttribute("data-points")) > 0)) missing.push(name);
    throw new Error(`charts without data: ${missing.join(", ")} (${e.message})`);
  });
  assert(empty.length === 0, "charts with data");
  for (const name of charts) assert((await live.getByRole("figure", { name: `${name} chart` }).locator("canvas").count()) > 0, `${name} drawn`);
  const maxThroughput = Number(await live.getByRole("figure", { name: "Throughput chart" }).getAttribute("data-max"));
  assert(maxThroughput > 0, `throughput peaked at ${maxThroughput} tok/s`);
  await shoot(page, artifacts, "live");
});

await t.step("no uncaught errors in the page", async () => {
  assert(pageErrors.length === 0, `page errors: ${pageErrors.join(" | ")}`);
});

await context.close();
rmSync(profile, { recursive: true, force: true });
process.exit(t.summary() === 0 ? 0 : 1);
