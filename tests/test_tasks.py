"""The invoke commands as a CI system sees them: output to a pipe, not a terminal."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from orchestrator import ROOT

PROGRESS = re.compile(r"\[(\d+)/4\] (pass|fail|timeout|unsupported|known-failure) server \w+, client \w+ "
                      r"\d+\.\d s \((\d+ [a-z-]+(, )?)+; about \d+ s left\)")


def test_a_grid_in_a_pipe_prints_one_line_per_cell_as_it_finishes(built):
    """Not a progress bar nobody sees: a plain line per finished cell, with running counts and the
    time left, each written while the grid still runs."""
    for lang in ("c", "rust", "python"):
        built[lang]
    grid = subprocess.Popen([sys.executable, "-m", "invoke", "matrix", "chat", "--server", "c,rust", "--client", "python,c",
                             "--no-build", "--parallel", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = grid.stdout.readline()
    still_running = grid.poll() is None
    rest = grid.stdout.read()
    assert grid.wait(120) == 0, first + rest
    assert PROGRESS.fullmatch(first.strip()) and first.startswith("[1/4] "), first
    assert still_running, "the first cell's line came only when the grid was over"
    lines = [first.strip()] + [line for line in rest.splitlines() if PROGRESS.fullmatch(line)]
    assert [line.split("]")[0] for line in lines] == ["[1/4", "[2/4", "[3/4", "[4/4"], rest
    assert "(4 pass; about 0 s left)" in lines[-1]


def test_a_peers_text_is_printed_as_it_came_not_read_as_markup(built):
    """The console colours what the orchestrator says, never what a role or its peer says: the
    restarted chat server's reason "join with [handle] before posting" keeps its brackets."""
    built["python"]
    run = subprocess.run([sys.executable, "-m", "invoke", "run", "chat", "--restart", "server", "--no-build"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:]
    assert "reason='join with [handle] before posting'" in run.stdout


@pytest.mark.parametrize("args, words", [
    (["matrix", "chat", "--parallel", "abc"], "--parallel: 'abc' is not a whole number"),
    (["matrix", "chat", "--parallel", "0"], "--parallel: 0 is less than 1"),
    (["fuzz", "--parallel", "-1"], "--parallel: -1 is less than 1"),
    (["matrix", "chat", "--json", "/nonexistent/dir/x.json"], "--json: cannot write /nonexistent/dir/x.json: no folder"),
    (["matrix", "chat", "--junit", "/nonexistent/x.xml"], "--junit: cannot write"),
    (["matrix", "chat", "--markdown", "/tmp"], "--markdown: /tmp is a folder"),
    (["bench", "--json", "/nonexistent/x.json"], "--json: cannot write"),
    (["bench", "--compare", "/nonexistent/x.json"], "--compare: cannot read /nonexistent/x.json"),
    (["run", "valuation", "--kill-worker-after", "abc"], "--kill-worker-after: 'abc' is not a whole number"),
    (["run", "chat", "--client", ""], "--client: an empty language name"),
    (["matrix", "chat", "--client", ""], "--client: an empty language name"),
    (["matrix", "chat", "--client", "c,c"], "--client: c is given twice"),
    (["run", "chat", "--server", "c", "--server", "rust"], "--server: the chat server runs once"),
    (["run", "chat", "--server", "cobol"], "--server: unknown language 'cobol'"),
    (["run", "chat", "--publisher", "c"], "chat has no role 'publisher'"),
    (["run", "nope"], "no such example"),
    (["matrix", "chat", "--paralel", "2"], "No idea what '--paralel' is!"),  # invoke's own parser
    (["matrx", "chat"], "No idea what 'matrx' is!"),
    (["run", "chat", "--transport", "pgm"], "--transport: transports: tcp, ipc, not 'pgm'"),
    (["matrix", "valuation", "--restart", "worker"], "--restart: valuation restarts sink, not 'worker'"),
    (["matrix", "chat", "--restart", "client"], "--restart: chat restarts server, not 'client'"),
    (["matrix", "desk", "--restart", "desk"], "--restart: desk restarts none, not 'desk'"),
    (["run", "valuation", "--after", "5"], "--after needs --restart ROLE"),
    (["run", "valuation", "--restart", "sink", "--after", "0"], "--after: 0 is less than 1"),
    (["run", "ticker", "--restart", "proxy"], "--restart proxy: these cells have no proxy (give --proxy LANGS)"),
    (["matrix", "ticker", "--restart", "proxy"], "--restart proxy: these cells have no proxy"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_a_mistyped_command_is_one_line_and_exit_2_before_anything_runs(args, words):
    before = set((ROOT / "runs").iterdir())
    done = subprocess.run([sys.executable, "-m", "invoke", *args, "--no-build"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 2, output
    assert "Traceback" not in output and len(output.splitlines()) == 1 and words in output, output
    assert set((ROOT / "runs").iterdir()) == before, "something ran (a run folder was made)"


def processes_marked(marker):
    """The processes whose environment carries `marker` (every role inherits the orchestrator's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes() and (entry / "stat").read_text().split()[2] != "Z":
                    found.append(int(entry.name))
            except OSError:
                pass  # gone meanwhile, or not ours to read
    return found


def none_left(marker, within=10):
    """True once no process of the run is left (a killed process takes a moment to go)."""
    deadline = time.monotonic() + within
    while processes_marked(marker) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling /proc: there is nothing to wait on for processes that are not our children
    return not processes_marked(marker)


def start_marked(args, marker):
    env = {**os.environ, "BTB_TEST_RUN": marker}
    return subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda n: signal.Signals(n).name)
def test_a_signal_stops_every_role_marks_cut_cells_interrupted_and_writes_the_reports(built, tmp_path, number):
    for lang in ("c", "python"):
        built[lang]
    marker, report = f"signal-{uuid.uuid4().hex}", tmp_path / "grid.json"
    grid = start_marked(["matrix", "desk", "--desk", "c,python", "--server", "c,python", "--parallel", "2",
                         "--no-build", "--json", str(report)], marker)
    first = grid.stdout.readline()
    assert first.startswith("[1/4] "), first  # a cell has finished; others run
    os.kill(grid.pid, number)
    rest = grid.stdout.read()
    assert grid.wait(60) == 128 + number, rest[-1500:]
    last = rest.strip().splitlines()[-1]
    assert last.startswith(f"interrupted by {signal.Signals(number).name}: every role was stopped after "), last
    assert none_left(marker), f"left running: {processes_marked(marker)}"
    statuses = [cell["status"] for cell in json.loads(report.read_text())["cells"]]
    assert "pass" in statuses and set(statuses) <= {"pass", "interrupted"}, statuses
    assert len(statuses) < 4 or "interrupted" in statuses, f"the run was not cut short: {statuses}"
    assert "fail" not in rest.split("interrupted by")[0].split(), "a cut cell was shown as a failure"


def test_roles_die_with_the_orchestrator_even_when_it_is_killed(built):
    """SIGKILL leaves no handler to run: the roles go because they were started to die with it."""
    built["python"]
    marker = f"sigkill-{uuid.uuid4().hex}"
    run = start_marked(["run", "desk", "--open", "--no-build"], marker)
    assert any("The desk's page: http://" in line for line in run.stdout), "the page never came up"
    assert len(processes_marked(marker)) >= 7  # invoke, and the roles: server, publisher, engine, desk, 2 workers, yara
    run.kill()
    run.wait()
    assert none_left(marker), f"left running after SIGKILL: {processes_marked(marker)}"


def test_invoke_test_passes_a_k_expression_with_spaces_as_one_argument():
    done = subprocess.run([sys.executable, "-m", "invoke", "test", "-k", "skipped_while_its_inputs and registry"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-1000:] + done.stderr[-1000:]
