// Opens a page in Debian's chromium, headless (Playwright's core), and reports what it shows:
//   node look.mjs '{"url": ..., "selector": "td", "screenshot": PATH}'
// prints one JSON line {"title", "texts": [the text of every element matching the selector]}, and
// keeps a screenshot of the whole page. Used by the tests of the HTML report.
import { launch } from "./chromium.mjs";

const options = JSON.parse(process.argv[2]);
const browser = await launch(options.chromium);
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(options.url, { timeout: 20000 });
  await page.waitForSelector(options.selector, { timeout: 20000 });
  const texts = await page.locator(options.selector).allTextContents();
  await page.screenshot({ path: options.screenshot, fullPage: true });
  process.stdout.write(JSON.stringify({ title: await page.title(), texts: texts.map((t) => t.trim()) }) + "\n");
} finally {
  await browser.close();
}
