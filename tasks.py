"""invoke tasks: build, run one cell, run a grid, test. `invoke --list` shows them."""
import sys

from invoke import Exit, task
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator import LANGUAGES
from orchestrator.config import ConfigError
from orchestrator.matrix import evaluate, failed, new_run_dir, run_matrix
from orchestrator.registry import BuildError, load_registry
from orchestrator.report import grid_table, print_details, summary_line, write_json, write_junit, write_markdown
from orchestrator.runner import kill_everything
from orchestrator.spec import load_spec

# Piped output (CI logs, files) gets room for the 6-column grid instead of rich's default of 80.
console = Console(width=None if sys.stdout.isatty() else 120)
# invoke declares flags statically: one per role name of every example (keep the task signatures
# of `run` and `matrix` in step with this tuple).
ROLES = ("server", "client")


def _load(example):
    try:
        return load_spec(example), load_registry()
    except ConfigError as error:
        raise Exit(f"error: {error}", code=2) from error


def _languages(text, registry, what):
    langs = [lang.strip() for lang in text.split(",") if lang.strip()] if text else registry.names()
    unknown = [lang for lang in langs if lang not in registry]
    if unknown:
        raise Exit(f"error: {what}: unknown language {unknown[0]!r} (known: {', '.join(registry.names())})", code=2)
    return langs


def _build(registry, langs):
    for lang in dict.fromkeys(langs):
        with console.status(f"building {lang}"):
            try:
                registry[lang].run_build()
            except BuildError as error:
                raise Exit(str(error), code=1) from error


@task(help={"lang": "build one language (python, c, rust, csharp, fsharp, vb); default: all"})
def build(c, lang=None):
    """Build the btb program of every language (or one)."""
    registry = load_registry()
    _build(registry, _languages(lang, registry, "--lang"))
    console.print("built: " + ", ".join(_languages(lang, registry, "--lang")))


@task(
    iterable=list(ROLES),
    help={
        "example": "the example to run (chat)",
        **{role: f"language of the {role}; repeat to run one instance per language" for role in ROLES},
        "no-build": "skip building the languages first",
        "quiet": "do not print the live transcript",
    },
)
def run(c, example, server=None, client=None, no_build=False, quiet=False):
    """Run one cell and show its live transcript, then the verdict."""
    roles = {"server": server, "client": client}
    spec, registry = _load(example)
    chosen = {}
    for role in spec.role_names():
        langs = roles.get(role) or ["python"]
        chosen[role] = _languages(",".join(langs), registry, f"--{role}")
    extra = [role for role, langs in roles.items() if langs and role not in spec.role_names()]
    if extra:
        raise Exit(f"error: {example} has no role {extra[0]!r} (roles: {', '.join(spec.role_names())})", code=2)
    if not no_build:
        _build(registry, [lang for langs in chosen.values() for lang in langs])

    def show(transcript, event):
        if not quiet:
            fields = " ".join(f"{k}={v!r}" for k, v in event.items() if k != "event")
            style = "red" if event["event"] in ("error", "_not-an-event") else "cyan"
            console.print(f"[dim]{transcript.role}{transcript.index}[/] [bold]{transcript.lang:>6}[/] [{style}]{event['event']}[/] {fields}", markup=True, highlight=False)

    try:
        result = evaluate(spec, chosen, registry, new_run_dir(example), on_event=show)
    except KeyboardInterrupt:
        kill_everything()
        raise Exit("interrupted", code=130)
    print_details(console, spec, [result])
    console.print(f"verdict: [bold]{result.status}[/] in {result.seconds:.1f} s" + (f" ({result.detail})" if result.detail else ""))
    if result.status in ("fail", "timeout"):
        raise Exit(code=1)


@task(
    help={
        "example": "the example whose grid to run (chat)",
        **{role: f"comma-separated {role} languages; default: all" for role in ROLES},
        "parallel": "cells run at once (default 3)",
        "json": "write the results as JSON to this path",
        "junit": "write JUnit XML to this path",
        "markdown": "write the grid as Markdown to this path",
        "no-build": "skip building the languages first",
    },
)
def matrix(c, example, server=None, client=None, parallel=3, json=None, junit=None, markdown=None, no_build=False):
    """Run every combination of one language per role and print the compatibility grid."""
    roles = {"server": server, "client": client}
    spec, registry = _load(example)
    row_role, column_role = spec.matrix
    extra = [role for role, langs in roles.items() if langs and role not in spec.matrix]
    if extra:
        raise Exit(f"error: the {example} grid has no dimension {extra[0]!r} (it is {row_role} × {column_role})", code=2)
    rows = _languages(roles.get(row_role), registry, f"--{row_role}")
    columns = _languages(roles.get(column_role), registry, f"--{column_role}")
    if not no_build:
        _build(registry, rows + columns)

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as progress:
        bar = progress.add_task(f"{example} grid", total=len(rows) * len(columns))

        def done(result):
            progress.advance(bar)
            if result.status in ("fail", "timeout"):
                progress.console.print(f"[red]{result.status}[/]: {result.roles} {result.detail}", markup=True, highlight=False)

        try:
            results, wall, run_dir = run_matrix(spec, rows, columns, registry, int(parallel), on_done=done)
        except KeyboardInterrupt:
            raise Exit("interrupted: every role process was killed", code=130)

    console.print(grid_table(spec, results, rows, columns))
    console.print(summary_line(results, wall) + f"; logs in runs/{run_dir.name}")
    print_details(console, spec, results)
    if json:
        write_json(json, spec, results, wall)
    if junit:
        write_junit(junit, spec, results)
    if markdown:
        write_markdown(markdown, spec, results, rows, columns, wall)
    if failed(results):
        raise Exit(code=1)


@task(help={"k": "only tests matching this pytest expression", "fast": "skip the full grids"})
def test(c, k=None, fast=False):
    """Build everything, then run the whole test suite (unit, bad input, full grids)."""
    registry = load_registry()
    _build(registry, registry.names())
    args = [sys.executable, "-m", "pytest", "tests"]
    if k:
        args += ["-k", k]
    if fast:
        args += ["-m", "not grid"]
    c.run(" ".join(args), pty=False)
