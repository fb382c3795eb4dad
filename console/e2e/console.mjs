// The web console in a real browser (Debian's Chromium driven by playwright-core), run by
// console/tests/browser.rs against a name server, a broker and the console it started.
//
// Environment: CONSOLE_URL, SHOT_DIR (screenshots, one per page), CHROMIUM,
// FILTER_KEEP, FILTER_HOSTILE and FILTER_SQL92 (component files), WEIR_VERSION (the
// broker's version the Cluster page must show). What a browser cannot do (run a
// consumer) it asks of the test on stdout, one line `@@ <action> <group>`, and waits for
// the test's `ok` (or `error …`) on stdin. Every wait is for a selector or a text, with a
// deadline; nothing sleeps. Exits non-zero on the first failed check.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { join } from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const URL_ = env("CONSOLE_URL");
const SHOTS = env("SHOT_DIR");
const T = 60_000;
const TOPIC = "ConsoleT";
const GROUP = "console-g";
const BAD_GROUP = "console-bad";
const SCRIPT_BODY = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">';

const replies = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(action, group) {
  console.log(`@@ ${action} ${group}`);
  const { value, done } = await replies.next();
  if (done || value.trim() !== "ok") throw new Error(`the test could not ${action} ${group}: ${done ? "stdin closed" : value}`);
}

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
  console.log("ok - " + what);
}

const browser = await chromium.launch({ executablePath: env("CHROMIUM"), args: ["--no-sandbox"], headless: true });
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
page.setDefaultTimeout(T);
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(e.message));
page.on("dialog", (d) => d.accept());

const shot = (name) => page.screenshot({ path: join(SHOTS, name + ".png"), fullPage: true });
const go = async (path) => {
  await page.goto(URL_ + path);
  await page.waitForSelector("body[data-ready]");
};
const lag = (n) => page.waitForSelector(`[data-testid=total-lag][data-lag="${n}"]`);
let sent = 0;

async function sendMessage({ tag = "", keys = "", props = "", body }) {
  await go("/topic?" + new URLSearchParams({ name: TOPIC }));
  const f = page.locator("[data-testid=send-message]");
  await f.locator("[name=tag]").fill(tag);
  await f.locator("[name=keys]").fill(keys);
  await f.locator("[name=props]").fill(props);
  await f.locator("[name=body]").fill(body);
  await f.locator("button[type=submit]").click();
  await page.locator("[data-testid=send-message-result] .ok").getByText("SEND_OK").waitFor();
  sent += 1;
}

try {
  // Cluster: the broker is there, with its counters.
  await go("/");
  await page.locator("[data-testid=brokers]").getByText("broker", { exact: false }).first().waitFor();
  check((await page.locator("[data-testid=brokers] tbody tr").count()) >= 1, "the cluster page lists the broker");
  const version = (await page.locator("[data-testid=broker-version]").first().textContent()).trim();
  check(version === env("WEIR_VERSION"), `the cluster page shows the broker's version (${version})`);
  await shot("cluster");

  // Topics: create one.
  await go("/topics");
  const create = page.locator("[data-testid=create-topic]");
  await create.locator("[name=name]").fill(TOPIC);
  await create.locator("[name=queues]").fill("2");
  await create.locator("button[type=submit]").click();
  await page.locator("[data-testid=create-topic-result] .ok").getByText("Created").waitFor();
  await page.locator("[data-testid=topics]").getByRole("link", { name: TOPIC, exact: true }).waitFor();
  // Its row (from the same answer that listed it): two read and two write queues, rw.
  const topicRow = page.locator("[data-testid=topics] tr", { has: page.getByRole("link", { name: TOPIC, exact: true }) });
  const topicCells = (await topicRow.locator("td").allTextContents()).slice(3).join(" ");
  check(topicCells === "2 2 rw", `the topic list shows the topic's queues and permission (${topicCells})`);
  await shot("topics");

  // A test message whose body is a script, another whose body is JSON.
  await sendMessage({ tag: "TagA", keys: "k-script", props: "region=<b>eu</b>", body: SCRIPT_BODY });
  await sendMessage({ keys: "k-json", body: '{"order":7,"items":[1,2]}' });
  await page.locator("[data-testid=queues]").first().waitFor();
  await shot("topic");

  // Found by key, shown as text.
  await go("/messages?" + new URLSearchParams({ topic: TOPIC, key: "k-script" }));
  const body = page.locator("[data-testid=message-body]").first();
  await body.waitFor();
  check((await body.textContent()) === SCRIPT_BODY, "the <script> body shows as text, byte for byte");
  check(await page.evaluate(() => window.__pwned === undefined), "the body's script did not run");
  check((await page.locator("main script, main img").count()) === 0, "no element was made from the body");
  await page.locator("[data-testid=properties]").getByText("<b>eu</b>").waitFor();
  await shot("messages");
  await go("/messages?" + new URLSearchParams({ topic: TOPIC, key: "k-json" }));
  await page.getByRole("button", { name: "JSON" }).click();
  check((await page.locator("[data-testid=message-body]").textContent()).includes('\n  "order": 7'), "a JSON body pretty-prints");
  await page.getByRole("button", { name: "Hex" }).click();
  check((await page.locator("[data-testid=message-body]").textContent()).startsWith("00000000  7b 22 6f 72"), "a body shows as hex");

  // A consumer group's lag: to 0 while a consumer runs, up again after new messages,
  // down to 0 again, and back to everything after a reset to the earliest offsets.
  await ask("start-consumer", GROUP);
  await go("/group?" + new URLSearchParams({ name: GROUP }));
  await page.waitForSelector(`[data-testid=progress] tr[data-topic="${TOPIC}"]`);
  await lag(0);
  await ask("stop-consumer", GROUP);
  for (let i = 0; i < 3; i++) await sendMessage({ keys: `k-${i}`, body: `more ${i}` });
  await go("/group?" + new URLSearchParams({ name: GROUP }));
  await lag(3);
  check(true, "the group's lag shows the 3 new messages");
  await shot("group-lag");
  await ask("start-consumer", GROUP);
  await lag(0);
  await page.locator("[data-testid=members] tbody tr").first().waitFor();
  check(true, "the lag fell to 0 while the consumer ran");
  await shot("group");
  await ask("stop-consumer", GROUP);
  await page.waitForSelector('[data-testid=member-count]:text-is("0")');

  // The message's delivery trail: stored where, and the group done with it.
  await go("/messages?" + new URLSearchParams({ topic: TOPIC, key: "k-json" }));
  await page.locator("[data-testid=trail-button]").first().click();
  await page.locator("[data-testid=trail-stored]").getByText(`${TOPIC} queue`).waitFor();
  await page.locator(`[data-testid=trail-groups] tr[data-group="${GROUP}"] [data-testid=trail-state]`).getByText("consumed").waitFor();
  check(true, "a message's trail shows where it is stored and that the group consumed it");
  await shot("trail");

  await go("/group?" + new URLSearchParams({ name: GROUP }));
  const reset = page.locator("[data-testid=reset-offsets]");
  await reset.locator("[name=topic]").selectOption(TOPIC);
  await reset.locator("[name=to]").selectOption("earliest");
  await reset.locator("[name=confirm]").fill("not-the-group");
  await reset.locator("button[type=submit]").click();
  await page.locator("[data-testid=reset-offsets-result] [data-testid=error]").getByText("type the group's name").waitFor();
  check(true, "a reset without the group's name typed is refused, saying why");
  await reset.locator("[name=confirm]").fill(GROUP);
  await reset.locator("button[type=submit]").click();
  await page.locator("[data-testid=reset-offsets-result] .ok").getByText("Reset").waitFor();
  await lag(sent);
  check(true, `the lag returned to all ${sent} messages after the reset`);
  await go("/groups");
  await page.locator("[data-testid=groups]").getByRole("link", { name: GROUP, exact: true }).waitFor();
  const groupCells = await page.locator(`[data-testid=groups] tr[data-group="${GROUP}"] td`).allTextContents();
  check(groupCells[4] === sent.toLocaleString("en-US"), `the group list shows the group's lag (${groupCells.join(" | ")})`);
  await shot("groups");

  // Filters: one that keeps everything, its counters moving as the group consumes.
  await go("/filters");
  const up = page.locator("[data-testid=upload-filter]");
  const upload = async (group, file, params) => {
    await up.locator("[name=group]").fill(group);
    await up.locator("[name=topic]").fill(TOPIC);
    await up.locator("[data-testid=filter-file]").setInputFiles(file);
    await up.locator("[name=params]").fill(params);
    await up.locator("button[type=submit]").click();
    await page.locator("[data-testid=upload-filter-result] .ok").getByText("version 1").waitFor();
    await page.locator("[data-testid=upload-filter-result] .ok").evaluate((e) => e.remove());
  };
  await upload(GROUP, env("FILTER_KEEP"), "");
  const row = (g) => page.locator(`[data-testid=filters] tr[data-group="${g}"]`);
  await row(GROUP).waitFor();
  check((await row(GROUP).locator("[data-testid=filter-calls]").textContent()) === "0", "a new filter has made no call");
  await ask("start-consumer", GROUP);
  await page.waitForFunction(
    ({ g, n }) => {
      const e = document.querySelector(`[data-testid=filters] tr[data-group="${g}"] [data-testid=filter-in]`);
      return e && Number(e.textContent.replace(/,/g, "")) >= n;
    },
    { g: GROUP, n: sent },
    { timeout: T },
  );
  check(true, "the filter's counters moved as the group consumed");
  await ask("stop-consumer", GROUP);
  // One that traps: marked failed, its cause in the page.
  await upload(BAD_GROUP, env("FILTER_HOSTILE"), "mode=trap");
  await ask("start-consumer", BAD_GROUP);
  await row(BAD_GROUP).locator("[data-testid=filter-state]").getByText(/failed: .*trap/).waitFor({ timeout: 90_000 });
  check(true, "a failing filter shows as failed with its cause");
  await shot("filters");
  await ask("stop-consumer", BAD_GROUP);

  // The preview: SQL92 keeps the one message with a region, drops the others; nothing
  // is uploaded. Then a filter that panics: its cause and its log line in the page.
  const pv = page.locator("[data-testid=preview-filter]");
  const tryIt = async (file, params) => {
    await pv.locator("[name=topic]").fill(TOPIC);
    await pv.locator("[name=count]").fill("100");
    await pv.locator("[data-testid=preview-file]").setInputFiles(file);
    await pv.locator("[name=params]").fill(params);
    await pv.locator("button[type=submit]").click();
  };
  await tryIt(env("FILTER_SQL92"), "expr=region IS NOT NULL");
  await page.locator("[data-testid=preview-summary]").getByText("1 kept").waitFor();
  check((await page.locator("[data-testid=preview] tr[data-verdict=kept]").count()) === 1, "the preview marks the one message kept");
  check((await page.locator("[data-testid=preview] tr[data-verdict=dropped]").count()) === sent - 1, `and the other ${sent - 1} dropped`);
  await shot("filters-preview");
  await tryIt(env("FILTER_HOSTILE"), "mode=panic");
  await page.locator("[data-testid=preview-error]").getByText("trapped").waitFor();
  await page.locator("[data-testid=preview-log]").getByText("deliberate panic").waitFor();
  check(true, "a failing preview names the cause and shows the filter's log");
  check((await row("weir-console-preview").count()) === 0, "a preview uploads nothing");

  // Transactions: none pending here; the page says so.
  await go("/transactions");
  await page.getByText("No pending transaction.").waitFor();
  await shot("transactions");

  // Deleting a topic names it, and refuses without it.
  await go("/topic?" + new URLSearchParams({ name: TOPIC }));
  const del = page.locator("[data-testid=delete-topic]");
  await del.locator("[name=confirm]").fill("wrong");
  await del.locator("button[type=submit]").click();
  await page.locator("[data-testid=delete-topic-result] [data-testid=error]").getByText(`type the topic's name (${TOPIC})`).waitFor();
  await del.locator("[name=confirm]").fill(TOPIC);
  await del.locator("button[type=submit]").click();
  await page.locator("[data-testid=delete-topic-result] .ok").getByText(`Deleted ${TOPIC}`).waitFor();
  check(true, "a topic is deleted once its name is typed");

  check(pageErrors.length === 0, "no script error in any page: " + pageErrors.join("; "));
  console.log("console browser test: all checks passed");
} catch (e) {
  await shot("failure").catch(() => {});
  console.error("console browser test failed:", e.message);
  process.exitCode = 1;
} finally {
  await browser.close();
  replies.return?.();
  process.stdin.destroy();
}
