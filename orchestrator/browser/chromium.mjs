// Debian's chromium, headless, through Playwright's core (no browser download): the one launch
// both page scripts use. As root it needs --no-sandbox; the other flags keep it off a network it
// cannot reach (background updates, sync, QUIC).
import { chromium } from "playwright-core";

export function launch(executablePath) {
  return chromium.launch({
    executablePath: executablePath || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
}
