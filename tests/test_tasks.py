"""The invoke commands as a CI system sees them: output to a pipe, not a terminal."""
import re
import subprocess
import sys

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
