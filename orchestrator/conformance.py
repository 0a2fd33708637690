"""The conformance kit's checklist (`invoke conform LANG`): pytest runs every test that runs the
language (`--lang`, tests/conftest.py), and its JUnit report becomes one line per test module,
labelled by the module's own docstring, with what passed, failed and was skipped, and why."""
import ast
import xml.etree.ElementTree as ET
from collections import defaultdict

from rich.table import Table

from . import ROOT

TESTS = ROOT / "tests"


def label(module):
    """The first sentence of a test module's docstring: what it checks, in its own words."""
    path = TESTS / f"{module}.py"
    doc = ast.get_docstring(ast.parse(path.read_text())) if path.exists() else None
    first = " ".join((doc or module).split()).split(". ")[0]
    return first if len(first) <= 90 else first[:89] + "…"


def results(report):
    """module -> {"passed": [names], "failed": [(name, message)], "skipped": [reasons]} from a JUnit file."""
    modules = defaultdict(lambda: {"passed": [], "failed": [], "skipped": []})
    for case in ET.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[-1] or "?"
        name = case.get("name", "")
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if problem is not None:
            first_line = (problem.get("message") or "").splitlines()[:1]
            modules[module]["failed"].append((name, "".join(first_line)[:160]))
        elif skipped is not None:
            modules[module]["skipped"].append((skipped.get("message") or "").removeprefix("Skipped: "))
        else:
            modules[module]["passed"].append(name)
    return dict(modules)


def checklist(report, lang):
    """A rich table, one row per test module that ran the language, and how many checks failed."""
    table = Table(title=f"conformance of {lang}", title_justify="left")
    for column in ("", "what", "passed", "failed", "skipped", "why"):
        table.add_column(column, overflow="fold")
    failed = 0
    for module, outcome in sorted(results(report).items()):
        failed += len(outcome["failed"])
        mark = "[red]✗[/]" if outcome["failed"] else "[green]✓[/]" if outcome["passed"] else "[yellow]–[/]"
        why = [f"{name}: {message}" for name, message in outcome["failed"][:5]]
        why += sorted(set(outcome["skipped"]))[:5]
        table.add_row(mark, f"{label(module)} ({module})", str(len(outcome["passed"])), str(len(outcome["failed"])),
                      str(len(outcome["skipped"])), "\n".join(why))
    return table, failed
