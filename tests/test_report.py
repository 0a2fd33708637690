"""The reports of a grid run (JUnit, Markdown, HTML), from one set of results with every kind of
cell: passes, a failure whose reason holds bytes XML cannot carry, a timeout, an unsupported cell,
an interrupted one, over two grids (a refusal case is a grid of its own)."""
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

import pytest

from orchestrator.report import GridRun, write_html, write_junit, write_markdown
from orchestrator.runner import CellResult, RoleTranscript
from orchestrator.spec import load_spec

DIMENSIONS = {"server": ["c", "rust"], "client": ["c", "python"]}


@pytest.fixture
def grids(tmp_path):
    def cell(server, client, status, problems=()):
        logs = [RoleTranscript(role, 0, lang, {}, [], events_path=tmp_path / f"{role}-{server}{client}.jsonl",
                               stderr_path=tmp_path / f"{role}-{server}{client}.stderr") for role, lang in (("server", server), ("client", client))]
        return CellResult("chat", {"server": [server], "client": [client] * 3}, status, 1.25,
                          "; ".join(problems), logs, list(problems))

    spec = load_spec("chat")
    first = [cell("c", "c", "pass"), cell("c", "python", "fail", ["client 0 (python): sent \x01\x1b[31m garbage \ud800"]),
             cell("rust", "c", "timeout", ["timeout after 60 s; still running: client 1 (c)"]),
             cell("rust", "python", "interrupted", ["interrupted: every role was killed when the run was stopped"])]
    second = [cell("c", "c", "unsupported")]
    second[0].detail = "c lacks zap"
    started = datetime(2026, 12, 6, 21, 0, tzinfo=timezone.utc)
    return [GridRun(spec, first, 12.5, tmp_path / "chat-1", started),
            GridRun(spec.with_security("curve", "unknown-client-key"), second, 2.0, tmp_path / "chat-2", started)]


def test_junit_is_one_suite_per_grid_well_formed_with_the_replay_and_the_logs(tmp_path, grids):
    path = tmp_path / "grid.xml"
    write_junit(path, grids)
    top = ET.parse(path).getroot()  # a strict parser: a stray control character would fail here
    assert top.tag == "testsuites" and top.get("tests") == "5" and top.get("failures") == "1" and top.get("errors") == "1"
    suites = top.findall("testsuite")
    assert [s.get("name") for s in suites] == [f"{grid.spec.title()} (process runner)" for grid in grids]
    assert "curve" in suites[1].get("name") and "unknown-client-key" in suites[1].get("name")
    for suite in suites:
        assert suite.get("timestamp") == "2026-12-06T21:00:00+00:00" and suite.get("hostname") and float(suite.get("time")) > 0
    failure = suites[0].find("testcase[@name='server c, client python']/failure")
    assert "\x01" not in failure.text and "\\x01\\x1b[31m garbage \\xd800" in failure.text
    assert "replay: invoke run chat --server c --client python" in failure.text
    assert "client 0 (python) stderr: " in failure.text and "server 0 (c) events: " in failure.text
    assert suites[0].find("testcase[@name='server rust, client c']/error") is not None
    assert suites[0].find("testcase[@name='server rust, client python']/skipped").get("message").startswith("interrupted")
    assert suites[1].find("testcase/skipped").get("message") == "unsupported: c lacks zap"


def test_markdown_keeps_the_grids_and_adds_the_reasons(tmp_path, grids):
    path = tmp_path / "grid.md"
    write_markdown(path, grids, DIMENSIONS)
    text = path.read_text()
    assert "| **c** | pass 1.2s | fail 1.2s |" in text
    assert "* **fail** server c, client python: client 0 (python): sent" in text
    assert "  replay: `invoke run chat --server rust --client c`" in text


def test_html_is_one_page_with_every_grid_the_reasons_and_links_to_the_logs(tmp_path, grids):
    path = tmp_path / "grid.html"
    write_html(path, grids, DIMENSIONS)
    page = path.read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained
    assert page.count('<table class="cells">') == 2
    assert '<td class="fail" title="server c, client python"><a href="#g0-c1">fail 1.2s</a></td>' in page
    assert 'id="g0-c1"' in page and "invoke run chat --server c --client python" in page
    assert 'href="client-cpython.stderr"' in page and 'href="server-cpython.jsonl"' in page
    assert "&lt;" not in page.split("<body>")[0]  # escaped content stays in the body: autoescape
