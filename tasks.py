"""invoke tasks: build, run one cell, run a grid, test. `invoke --list` shows them."""
import sys

from invoke import Exit, task
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator import LANGUAGES
from orchestrator.config import ConfigError
from orchestrator.matrix import evaluate, failed, mixed_cells, new_run_dir, run_matrix
from orchestrator.registry import BuildError, load_registry
from orchestrator.report import grid_tables, print_details, roles_text, summary_line, write_json, write_junit, write_markdown
from orchestrator.runner import Fault, kill_everything
from orchestrator.spec import load_spec

# Piped output (CI logs, files) gets room for the 6-column grid instead of rich's default of 80.
console = Console(width=None if sys.stdout.isatty() else 120)
# invoke declares flags statically: one per role name of every example (keep the task signatures
# of `run` and `matrix` in step with this tuple).
ROLES = ("server", "client", "publisher", "proxy", "subscriber", "source", "worker", "sink")


def _load(example):
    try:
        return load_spec(example), load_registry()
    except ConfigError as error:
        raise Exit(f"error: {error}", code=2) from error


def _languages(text, registry, what):
    all_of_them = not text or text.strip() == "all"
    langs = registry.names() if all_of_them else [lang.strip() for lang in text.split(",") if lang.strip()]
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


def _check_roles(spec, given):
    extra = [role for role, langs in given.items() if langs and role not in spec.role_names()]
    if extra:
        raise Exit(f"error: {spec.example} has no role {extra[0]!r} (roles: {', '.join(spec.role_names())})", code=2)


@task(
    iterable=list(ROLES),
    help={
        "example": "the example to run (chat, ticker, valuation)",
        **{role: f"language of the {role}; repeat to run one instance per language" for role in ROLES},
        "no-build": "skip building the languages first",
        "quiet": "do not print the live transcript",
        "kill-worker-after": "valuation: SIGKILL worker 0 once it has priced this many orders",
    },
)
def run(c, example, server=None, client=None, publisher=None, proxy=None, subscriber=None, source=None, worker=None, sink=None,
        no_build=False, quiet=False, kill_worker_after=None):
    """Run one cell and show its live transcript, then the verdict."""
    given = {"server": server, "client": client, "publisher": publisher, "proxy": proxy, "subscriber": subscriber,
             "source": source, "worker": worker, "sink": sink}
    spec, registry = _load(example)
    fault = None
    if kill_worker_after:
        if "worker" not in spec.role_names():
            raise Exit(f"error: {example} has no workers to kill", code=2)
        fault = Fault("worker", "priced", int(kill_worker_after))
        spec = spec.with_parameters(rate=spec.parameters.get("fault_rate", 0))
    _check_roles(spec, given)
    chosen = {}
    for role in spec.roles:
        langs = given.get(role.name)
        if langs:
            chosen[role.name] = _languages(",".join(langs), registry, f"--{role.name}")
        elif not role.optional:
            chosen[role.name] = ["python"]
    if not no_build:
        _build(registry, [lang for langs in chosen.values() for lang in langs])

    def show(transcript, event):
        if not quiet:
            fields = " ".join(f"{k}={v!r}" for k, v in event.items() if k != "event")
            style = "red" if event["event"] in ("error", "_not-an-event") else "cyan"
            console.print(f"[dim]{transcript.role}{transcript.index}[/] [bold]{transcript.lang:>6}[/] [{style}]{event['event']}[/] {fields}", markup=True, highlight=False)

    try:
        result = evaluate(spec, chosen, registry, new_run_dir(example), on_event=show, fault=fault)
    except KeyboardInterrupt:
        kill_everything()
        raise Exit("interrupted", code=130)
    print_details(console, spec, [result])
    console.print(f"verdict: [bold]{result.status}[/] in {result.seconds:.1f} s" + (f" ({result.detail})" if result.detail else ""))
    if result.status in ("fail", "timeout"):
        raise Exit(code=1)


@task(
    help={
        "example": "the example whose grid to run (chat, ticker, valuation)",
        **{role: f"comma-separated {role} languages, or all (the default for the grid's roles)" for role in ROLES},
        "parallel": "cells run at once (default 3)",
        "json": "write the results as JSON to this path",
        "junit": "write JUnit XML to this path",
        "markdown": "write the grids as Markdown to this path",
        "no-build": "skip building the languages first",
    },
)
def matrix(c, example, server=None, client=None, publisher=None, proxy=None, subscriber=None, source=None, worker=None, sink=None,
           parallel=3, json=None, junit=None, markdown=None, no_build=False):
    """Run every combination of one language per role and print the compatibility grids."""
    given = {"server": server, "client": client, "publisher": publisher, "proxy": proxy, "subscriber": subscriber,
             "source": source, "worker": worker, "sink": sink}
    spec, registry = _load(example)
    _check_roles(spec, given)
    dimensions = {role: _languages(given.get(role), registry, f"--{role}") for role in spec.matrix}
    for role in spec.optional_roles():  # an optional role joins the grid when it is asked for
        if given.get(role):
            dimensions[role] = _languages(given[role], registry, f"--{role}")
    if not no_build:
        _build(registry, [lang for langs in dimensions.values() for lang in langs])
    results, wall, run_dir = _run_grid(spec, registry, dimensions, int(parallel), mixed_cells(spec, dimensions))

    for table in grid_tables(spec, results, dimensions):
        console.print(table)
    console.print(summary_line(results, wall) + f"; logs in runs/{run_dir.name}")
    print_details(console, spec, results)
    if json:
        write_json(json, spec, results, wall)
    if junit:
        write_junit(junit, spec, results)
    if markdown:
        write_markdown(markdown, spec, results, dimensions, wall)
    if failed(results):
        raise Exit(code=1)


def _run_grid(spec, registry, dimensions, parallel, extra_cells=()):
    total = 1
    for langs in dimensions.values():
        total *= len(langs)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as progress:
        bar = progress.add_task(f"{spec.example} grid", total=total + len(extra_cells))

        def done(result):
            progress.advance(bar)
            if result.status in ("fail", "timeout"):
                progress.console.print(f"[red]{result.status}[/]: {roles_text(result.roles)}: {result.detail}", markup=True, highlight=False)

        try:
            return run_matrix(spec, dimensions, registry, parallel, on_done=done, extra_cells=extra_cells)
        except KeyboardInterrupt:
            raise Exit("interrupted: every role process was killed", code=130)


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
