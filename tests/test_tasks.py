"""The invoke commands as a CI system sees them: output to a pipe, not a terminal."""
import re
import subprocess
import sys

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


@pytest.mark.parametrize("args, words", [
    (["matrix", "chat", "--parallel", "abc"], "--parallel: 'abc' is not a whole number"),
    (["matrix", "chat", "--parallel", "0"], "--parallel: 0 is less than 1"),
    (["fuzz", "--parallel", "-1"], "--parallel: -1 is less than 1"),
    (["matrix", "chat", "--json", "/nonexistent/dir/x.json"], "--json: cannot write /nonexistent/dir/x.json: no folder"),
    (["matrix", "chat", "--junit", "/nonexistent/x.xml"], "--junit: cannot write"),
    (["matrix", "chat", "--markdown", "/tmp"], "--markdown: /tmp is a folder"),
    (["bench", "--json", "/nonexistent/x.json"], "--json: cannot write"),
    (["run", "valuation", "--kill-worker-after", "abc"], "--kill-worker-after: 'abc' is not a whole number"),
    (["run", "chat", "--client", ""], "--client: an empty language name"),
    (["matrix", "chat", "--client", ""], "--client: an empty language name"),
    (["matrix", "chat", "--client", "c,c"], "--client: c is given twice"),
    (["run", "chat", "--server", "c", "--server", "rust"], "--server: the chat server runs once"),
    (["run", "chat", "--server", "cobol"], "--server: unknown language 'cobol'"),
    (["run", "chat", "--publisher", "c"], "chat has no role 'publisher'"),
    (["run", "nope"], "no such example"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_a_mistyped_command_is_one_line_and_exit_2_before_anything_runs(args, words):
    before = set((ROOT / "runs").iterdir())
    done = subprocess.run([sys.executable, "-m", "invoke", *args, "--no-build"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 2, output
    assert "Traceback" not in output and len(output.splitlines()) == 1 and words in output, output
    assert set((ROOT / "runs").iterdir()) == before, "something ran (a run folder was made)"
