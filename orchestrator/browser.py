"""The desk's page in a real browser: Debian's chromium, headless, driven by Playwright's core from
npm (orchestrator/browser/desk_page.mjs, installed by setup.sh into the repository's node_modules).
A driver of a page cell (examples/desk/page.yaml) for the runner, and the person's view of it
(`invoke run desk --open`)."""
import json
import shutil
import subprocess
import time
import webbrowser

from . import ROOT
from .checks.chat import post_text

SCRIPT = ROOT / "orchestrator" / "browser" / "desk_page.mjs"
CHROMIUM = "/usr/bin/chromium"


def page_url(ready):
    """The desk's page, from the `http` endpoint in its ready event (tcp://HOST:PORT)."""
    host, _, port = ready["http"].removeprefix("tcp://").rpartition(":")
    return f"http://{host}:{port}/"


def missing():
    """Why the browser tests cannot run here, or None."""
    if not shutil.which("node"):
        return "node is not installed"
    if not (ROOT / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed: run ./setup.sh (npm ci)"
    if not shutil.which(CHROMIUM):
        return f"{CHROMIUM} is not installed: run ./setup.sh (Debian's chromium)"
    return None


def look(url, selector, screenshot, timeout=60):
    """What chromium shows of `url`: its title and the text of each element matching `selector`;
    a screenshot of the whole page is kept at `screenshot`."""
    options = {"url": url, "selector": selector, "screenshot": str(screenshot), "chromium": CHROMIUM}
    done = subprocess.run(["node", str(SCRIPT.parent / "look.mjs"), json.dumps(options)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"chromium could not show {url}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def run_script(options, deadline, on_step=None):
    """Run the page script; its steps as dicts, in order. `on_step` sees each as it comes."""
    process = subprocess.Popen(["node", str(SCRIPT), json.dumps(options)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=open(options["log"], "wb"), start_new_session=True)
    steps = []
    try:
        for line in process.stdout:
            steps.append(json.loads(line))
            if on_step:
                on_step(steps[-1])
        process.wait(max(1, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return steps


class BrowserDriver:
    """Drives a page cell from a browser: open the page, see prices change, Forget one symbol and
    Follow another, value a trade, post the desk's first chat text; then checks what the page
    showed against the desk's own lines. Its steps and the screenshot stay in the cell's folder."""

    __name__ = "chromium"

    def __init__(self, lang, tick_count, orders=200, watch="AAPL", forget="GOOG", follow="IBM"):
        """`tick_count`: the desk's --tick-count, the ticks the page waits for after Follow."""
        self.lang, self.tick_count, self.orders = lang, tick_count, orders
        self.watch, self.forget, self.follow = watch, forget, follow
        self.steps, self.screenshot = [], None

    def __call__(self, ready, cell_dir, deadline):
        desk = ready["desk"]
        self.screenshot = cell_dir / f"page-{self.lang}.png"
        options = {"url": page_url(desk), "mode": "trade", "watch": self.watch, "forget": self.forget,
                   "follow": self.follow, "orders": self.orders, "text": post_text(desk["name"], 1), "tickCount": self.tick_count,
                   "screenshot": str(self.screenshot), "log": str(cell_dir / f"browser-{self.lang}.log"),
                   "chromium": CHROMIUM}
        self.steps = run_script(options, deadline)
        (cell_dir / f"browser-{self.lang}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in self.steps))
        failed = [s for s in self.steps if not s.get("ok")]
        if failed:
            return [f"browser: step {failed[0]['step']} failed: {failed[0].get('error')}"]
        if [s["step"] for s in self.steps] != ["open", "prices", "forget", "follow", "value", "chat", "forgotten"]:
            return [f"browser: the page script stopped after {[s['step'] for s in self.steps]}"]
        return self.problems(desk)

    def step(self, name):
        return next(s for s in self.steps if s["step"] == name)

    def problems(self, desk_ready):
        """What the page showed that a person could not trust."""
        problems = []
        prices = self.step("prices")
        if prices["first"] == prices["later"] and prices["direction"] != "same":
            problems.append(f"browser: {self.watch} showed {prices['first']} twice with the direction {prices['direction']}")
        forgotten = self.step("forgotten")
        if forgotten["now"] != forgotten["before"]:
            problems.append(f"browser: {self.forget} went from {forgotten['before']} to {forgotten['now']} ticks after Forget")
        if self.step("open")["desk"] != desk_ready["name"]:
            problems.append(f"browser: the page names the desk {self.step('open')['desk']!r}")
        return problems

    def check_total(self, complete):
        """The page's total is the desk's `complete` total, exactly, in cents and in dollars."""
        cents = int(complete["total"])
        value = self.step("value")
        sign, whole, part = "-" if cents < 0 else "", abs(cents) // 100, abs(cents) % 100
        shown = (value["total"], value["cents"])
        wanted = (f"{sign}{whole:,}.{part:02d}", f"({cents} cents)")
        return [] if shown == wanted else [f"browser: the page shows the total as {shown}, the desk's is {wanted}"]


def person(ready, cell_dir, deadline, open_browser=False):
    """`invoke run desk --open`: a person is the driver. Print the page's address (and open it when
    asked); the cell goes on until the person's trade is priced and post delivered."""
    url = page_url(ready["desk"])
    print(f"\nThe desk's page: {url}\n  Forget and Follow symbols, value a trade, and post to the chat: the cell ends\n"
          f"  when the other trader has your post and the workers have priced your trade (or at Ctrl-C).\n", flush=True)
    if open_browser:
        webbrowser.open(url)
    return []
