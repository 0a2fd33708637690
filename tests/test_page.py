"""The desk's page in a real browser (Debian's chromium, headless, driven by Playwright's core), for
a desk in each language of the registry: a page cell (examples/desk/page.yaml) whose commands come
from the page, checked by the desk's checkers (the chat checker sees the page's post reach the
other trader; the ticker checker, that nothing of a forgotten symbol came), and what the page
showed checked against the desk's lines. A screenshot per language stays in the cell's folder."""
import re
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from conftest import LANGS, REGISTRY, first_language, languages
from orchestrator import ROOT
from orchestrator.browser import BrowserDriver, look, missing, page_url, run_script
from orchestrator.checks.chat import post_text
from orchestrator.matrix import evaluate, new_run_dir
from orchestrator.spec import load_spec
from test_desk import WAIT, desk_flags, services_language

pytestmark = pytest.mark.skipif(bool(missing()), reason=missing() or "")


def page_spec():
    return replace(load_spec(ROOT / "examples" / "desk" / "page.yaml"), cell_timeout=90)


@pytest.mark.parametrize("lang", languages("desk", "trader"))
def test_a_trader_uses_the_page_of_the_desk(built, lang):
    spec = page_spec()
    services, other = services_language(spec), first_language([("chat", "client")])  # the other trader
    built[lang], built[services], built[other]
    driver = BrowserDriver(lang, tick_count=int(spec.role("desk").flags["tick-count"]))
    result = evaluate(spec, {"desk": lang, "server": services, "client": other}, built.registry,
                      new_run_dir("desk-page"), driver=driver)
    assert result.status == "pass", result.problems
    [desk] = [t for t in result.transcripts if t.role == "desk"]
    [yara] = [t for t in result.transcripts if t.role == "client"]
    # The page's post went through the desk to the other trader; its trade's total is the desk's.
    text = post_text("desk", 1)
    assert {"event": "command", "command": "POST", "text": text} in desk.events
    assert [e["text"] for e in yara.events if e["event"] == "received" and e["handle"] == "desk"] == [text]
    [complete] = [e for e in desk.events if e["event"] == "complete" and e.get("agent") == "valuation"]
    assert driver.check_total(complete) == []
    # Follow and Forget changed what the ticker agent receives.
    ticker = [e for e in desk.events if e.get("agent") == "ticker"]
    forgot = next(i for i, e in enumerate(ticker) if e["event"] == "unsubscribed" and e["symbol"] == "GOOG")
    followed = next(i for i, e in enumerate(ticker) if e["event"] == "subscribed" and e["symbol"] == "IBM")
    assert not [e for e in ticker[forgot:] if e["event"] == "tick" and e["symbol"] == "GOOG"]
    assert [e for e in ticker[followed:] if e["event"] == "tick" and e["symbol"] == "IBM"]
    assert driver.screenshot.stat().st_size > 10000


def test_the_page_says_which_services_are_unreachable_and_when_the_desk_is_gone(start_role, tmp_path):
    """A desk with no service anywhere: the page shows each service waiting; then the desk stops,
    and the page says the desk is unreachable."""
    desk = start_role(first_language([("desk", "trader")]), "desk", "trader", **desk_flags(http="tcp://127.0.0.1:*", trade=0))
    ready = desk.wait_for(lambda e: e["event"] == "ready" and "agent" not in e, time.monotonic() + WAIT)

    def on_step(step):
        if step["step"] == "open":
            desk.terminate()

    steps = run_script({"url": page_url(ready), "mode": "states", "log": str(tmp_path / "browser.log"),
                        "screenshot": str(tmp_path / "unreachable.png")}, time.monotonic() + WAIT, on_step)
    assert [s["step"] for s in steps if s["ok"]] == ["open", "desk-gone"], steps
    assert steps[0]["states"] == {"desk": "live", "chat": "waiting for the chat server", "ticker": "waiting for prices",
                                  "valuation": "no workers yet", "query": "waiting for the engine"}
    assert steps[1]["states"]["desk"] == "desk unreachable: reconnecting…"
    assert desk.wait_exit(time.monotonic() + WAIT) and desk.t.exit_code == 0


def test_the_html_report_of_a_grid_renders_in_a_real_browser(built, tmp_path):
    """`invoke matrix --html`: chromium shows the grid's cells; a screenshot is kept next to it."""
    # A grid of two languages each way: the first two of the registry with both chat roles.
    pair = [n for n in LANGS if REGISTRY[n].supports("chat", "server") and REGISTRY[n].supports("chat", "client")][:2]
    if len(pair) < 2:
        pytest.skip(f"fewer than two languages of the registry implement chat server and client: {pair}")
    for lang in pair:
        built[lang]
    report = tmp_path / "chat.html"
    done = subprocess.run([sys.executable, "-m", "invoke", "matrix", "chat", "--server", ",".join(pair), "--client", ",".join(pair),
                           "--no-build", "--html", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    shown = look(report.as_uri(), "table.cells td", report.with_suffix(".png"))
    assert shown["title"] == "chat: compatibility grid"
    assert len(shown["texts"]) == len(pair) ** 2 and all(re.fullmatch(r"pass \d+\.\ds", text) for text in shown["texts"]), shown
    assert report.with_suffix(".png").stat().st_size > 5000
