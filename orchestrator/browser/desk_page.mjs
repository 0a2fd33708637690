// Drives the desk's page (examples/desk/page.html) in Debian's chromium, headless, through
// Playwright's core (no browser download). Run by orchestrator/browser.py:
//   node desk_page.mjs '{"url": ..., "mode": "trade" | "states", ...}'
// It reports each step as one JSON line on stdout ({"step", "ok", ...what it saw}) and stops at
// the first step that fails (exit 1). Logs go to stderr.
import { launch } from "./chromium.mjs";

const options = JSON.parse(process.argv[2]);
const STEP_MS = options.stepMs ?? 20000;

function report(step, fields) {
  process.stdout.write(JSON.stringify({ step, ok: true, ...fields }) + "\n");
}

let current = "launch";
async function step(name, action) {
  current = name;
  const seen = await action();
  report(name, seen || {});
  return seen;
}

const text = (page, selector) => page.locator(selector).first().textContent();
const row = (symbol) => `#prices tr[data-symbol="${symbol}"]`;
const ticksOf = async (page, symbol) => Number(await text(page, `${row(symbol)} .ticks`));

async function waitTicks(page, symbol, count) {
  await page.waitForFunction(([selector, n]) => {
    const cell = document.querySelector(selector);
    return cell && Number(cell.textContent) >= n;
  }, [`${row(symbol)} .ticks`, count], { timeout: STEP_MS });
}

async function trade(page) {
  await step("open", async () => {
    await page.goto(options.url, { timeout: STEP_MS });
    await page.waitForFunction(() => document.getElementById("desk-name").textContent !== "" &&
      document.getElementById("desk-state").textContent === "live", null, { timeout: STEP_MS });
    return { desk: await text(page, "#desk-name"), title: await page.title() };
  });
  await step("prices", async () => {
    // Prices change live, each with the direction of its last change.
    const first = await text(page, `${row(options.watch)} .price`);
    await waitTicks(page, options.watch, Number(await ticksOf(page, options.watch)) + 3);
    await page.waitForSelector(`${row(options.watch)}[data-direction]`, { timeout: STEP_MS });
    return { symbol: options.watch, first, later: await text(page, `${row(options.watch)} .price`),
             direction: await page.locator(row(options.watch)).getAttribute("data-direction") };
  });
  const forgotten = await step("forget", async () => {
    await waitTicks(page, options.forget, 1);
    await page.click(`${row(options.forget)} button.toggle`);
    await page.waitForSelector(`${row(options.forget)}[data-following="false"]`, { timeout: STEP_MS });
    return { symbol: options.forget, ticks: await ticksOf(page, options.forget) };
  });
  await step("follow", async () => {
    await page.fill("#follow-symbol", options.follow);
    await page.click("#follow");
    await page.waitForSelector(`${row(options.follow)}[data-following="true"]`, { timeout: STEP_MS });
    await waitTicks(page, options.follow, options.tickCount);  // what the desk's checker asks of a followed symbol
    return { symbol: options.follow, ticks: await ticksOf(page, options.follow),
             price: await text(page, `${row(options.follow)} .price`) };
  });
  await step("value", async () => {
    await page.fill("#trade-size", String(options.orders));
    await page.click("#value");
    await page.waitForFunction(() => document.getElementById("total-cents").textContent !== "", null,
      { timeout: STEP_MS * 3 });
    return { total: await text(page, "#total"), cents: await text(page, "#total-cents"),
             progress: await text(page, "#progress") };
  });
  await step("chat", async () => {
    await page.fill("#chat-text", options.text);
    await page.click("#chat-send");
    await page.waitForFunction((said) => [...document.querySelectorAll("#chat-log li.mine .text")]
      .some((item) => item.textContent === said), options.text, { timeout: STEP_MS });
    return { text: options.text, roster: await text(page, "#roster") };
  });
  await step("forgotten", async () => {
    // Nothing of the forgotten symbol reached the page since the Forget.
    return { symbol: options.forget, before: forgotten.ticks, now: await ticksOf(page, options.forget) };
  });
}

async function states(page) {
  const badges = async () => Object.fromEntries(await Promise.all(["desk", "chat", "ticker", "valuation", "query"]
    .map(async (name) => [name, await text(page, name === "desk" ? "#desk-state" : `#state-${name}`)])));
  await step("open", async () => {
    await page.goto(options.url, { timeout: STEP_MS });
    await page.waitForFunction(() => document.getElementById("desk-state").textContent === "live", null, { timeout: STEP_MS });
    // Two refreshes of the state badges since the stream opened (the page counts them).
    const since = Number(await page.locator("body").getAttribute("data-refreshed"));
    await page.waitForFunction((n) => Number(document.body.dataset.refreshed) >= n + 2, since, { timeout: STEP_MS });
    return { states: await badges() };
  });
  await step("desk-gone", async () => {
    // The test stops the desk once it has read "open": the page must say so.
    await page.waitForFunction(() => document.getElementById("desk-state").textContent.includes("unreachable"), null,
      { timeout: STEP_MS });
    return { states: await badges() };
  });
}

const browser = await launch(options.chromium);
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
page.on("console", (message) => process.stderr.write(`page console: ${message.text()}\n`));
page.on("pageerror", (error) => process.stderr.write(`page error: ${error.message}\n`));
let failed = false;
try {
  await (options.mode === "states" ? states(page) : trade(page));
} catch (error) {
  failed = true;
  process.stdout.write(JSON.stringify({ step: current, ok: false, error: String(error.message).split("\n")[0] }) + "\n");
} finally {
  if (options.screenshot) {
    await page.screenshot({ path: options.screenshot, fullPage: true }).catch(() => {});
  }
  await browser.close();
}
process.exit(failed ? 1 : 0);
