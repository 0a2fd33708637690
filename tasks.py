"""invoke tasks: build, run one cell, run a grid, test. `invoke --list` shows them."""
import json as jsonlib
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import docker as docker_sdk
from invoke import Collection, Exit, ParseError, task
from invoke.parser import Parser
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator import ROOT, browser, conformance, containers, helptext, localswarm, reading, stacks
from orchestrator import swarm as swarming
from orchestrator import bench as benchmarks
from orchestrator import fuzz as battery
from orchestrator.config import ConfigError
from orchestrator.matrix import evaluate, failed, mixed_cells, new_run_dir, run_matrix
from orchestrator.registry import BuildError, load_registry
from orchestrator.report import (GridRun, fuzz_details, fuzz_summary, fuzz_tables, grid_tables, print_details, print_notes,
                                 roles_text, summary_line, write_fuzz_json, write_fuzz_markdown, write_html, write_json,
                                 write_junit, write_markdown)
from orchestrator.runner import Fault, Interrupted, kill_everything, stop_on_signals
from orchestrator.security import INTRUDER, REFUSALS, refusals_of
from orchestrator.spec import load_spec

# Piped output (CI logs, files) gets room for the 6-column grid instead of rich's default of 80.
stop_on_signals()  # SIGTERM and SIGHUP end a run as Ctrl-C does: every role stopped, reports written


def _exit_2_on_parse_errors(parse_argv):
    """invoke exits 1 on a mistyped task or flag (`invoke matrix chat --paralel 2`); a bad command
    line exits 2 everywhere else in the project, so its task parser's errors do too. (invoke parses
    the tasks' arguments after loading this file; its own options, before: those still exit 1.)"""

    def parse(self, argv):
        try:
            return parse_argv(self, argv)
        except ParseError as error:
            raise Exit(f"error: {error}", code=2) from None

    return parse


Parser.parse_argv = _exit_2_on_parse_errors(Parser.parse_argv)
console = Console(width=None if sys.stdout.isatty() else 120)
# invoke declares flags statically: one per role name of every example (keep the task signatures
# of `run` and `matrix` in step with this tuple).
RUNNERS = ("process", "docker", "swarm")
PARALLEL = 3  # cells (or battery runs) at once, by default
PERSON_MINUTES = 30  # how long `invoke run desk --open` serves the page for a person
ROLES = ("server", "client", "publisher", "proxy", "subscriber", "source", "worker", "sink", "engine", "facade", "desk")


def _load(example):
    try:
        return load_spec(example), load_registry()
    except ConfigError as error:
        raise Exit(f"error: {error}", code=2) from error


def _languages(text, registry, what, repeats=False):
    """The languages of a comma-separated list; not given (None) or `all`: every language. An
    empty name, an unknown one, or (unless `repeats`) one given twice is exit 2, before anything runs."""
    if text is None or text.strip() == "all":
        return registry.names()
    langs = [lang.strip() for lang in text.split(",")]
    if not all(langs):
        raise Exit(f"error: {what}: an empty language name in {text!r} (known: {', '.join(registry.names())}, or all)", code=2)
    unknown = [lang for lang in langs if lang not in registry]
    if unknown:
        raise Exit(f"error: {what}: unknown language {unknown[0]!r} (known: {', '.join(registry.names())})", code=2)
    twice = [lang for lang, n in Counter(langs).items() if n > 1]
    if twice and not repeats:
        raise Exit(f"error: {what}: {twice[0]} is given twice", code=2)
    return langs


def _count(text, what, least=1):
    """A whole number of at least `least` from the command line, or exit 2 saying so."""
    try:
        number = int(text)
    except (TypeError, ValueError):
        raise Exit(f"error: {what}: {text!r} is not a whole number", code=2) from None
    if number < least:
        raise Exit(f"error: {what}: {number} is less than {least}", code=2)
    return number


def _writable(path, what):
    """Check an output path before anything runs: its folder exists and can be written, and it is
    not a folder itself."""
    if path is None:
        return None
    target = Path(path).expanduser()
    folder = target.parent
    if target.is_dir():
        raise Exit(f"error: {what}: {path} is a folder, not a file", code=2)
    if not folder.is_dir():
        raise Exit(f"error: {what}: cannot write {path}: no folder {folder}", code=2)
    if not os.access(folder, os.W_OK):
        raise Exit(f"error: {what}: cannot write {path}: the folder {folder} is not writable", code=2)
    return target


def _build(registry, langs, force=False):
    """Build what changed; the languages actually built."""
    built = []
    for lang in dict.fromkeys(langs):
        with console.status(f"building {lang}"):
            try:
                if registry[lang].run_build(force=force):
                    built.append(lang)
            except BuildError as error:
                raise Exit(str(error), code=1) from error
    return built


@task(help={"lang": "build one language (python, c, rust, csharp, fsharp, vb); default: all",
            "force": "build even the languages whose inputs have not changed since their last build"})
def build(c, lang=None, force=False):
    """Build the btb program of every language (or one), skipping what has not changed."""
    registry = load_registry()
    langs = _languages(lang, registry, "--lang")
    built = _build(registry, langs, force)
    unchanged = [lang for lang in langs if lang not in built and registry[lang].build]
    console.print("built: " + (", ".join(built) or "nothing") + (f"; unchanged: {', '.join(unchanged)}" if unchanged else ""))


def _check_roles(spec, given):
    extra = [role for role, langs in given.items() if langs and role not in spec.role_names()]
    if extra:
        raise Exit(f"error: {spec.example} has no role {extra[0]!r} (roles: {', '.join(spec.role_names())})", code=2)


@task(
    iterable=list(ROLES) + ["place"],
    help={
        "example": "the example to run (chat, ticker, valuation, query, desk)",
        **{role: f"language of the {role}; repeat to run one instance per language" for role in ROLES},
        "no-build": "skip building the languages first",
        "quiet": "do not print the live transcript",
        "kill-worker-after": "valuation, desk: SIGKILL worker 0 once it has priced this many orders",
        "runner": "process (default): local processes; docker: one container per role; swarm: one service per role on a Docker Swarm (DOCKER_HOST's manager)",
        "place": "swarm: run ROLE's instances on these nodes, ROLE=NODE[,NODE...] (hostname or ID); repeatable; other roles spread over the nodes",
        "registry": "swarm: ship the images through this registry (host:port) instead of loading them into each node's engine",
        "security": "null (default), plain or curve: the ZMTP mechanism of every role (examples that allow it)",
        "refusal": "add an intruder whose credentials are wrong: " + ", ".join(REFUSALS),
        "intruder": "language of the intruder (default: the client's)",
        "transport": "tcp (default) or ipc: the transport of every endpoint the orchestrator hands out",
        "monitor": "every role reports its sockets' connection events (socket-event, --monitor on)",
        "restart": "SIGKILL this role mid-run and start it again on the same endpoints (chat server, ticker proxy, valuation sink, query engine: the example's spec.yaml, restart:)",
        "after": "with --restart: after this many of the spec's events (default: the spec's count)",
        "open": "desk: serve the desk's page for you (examples/desk/page.yaml): print its address and open a browser",
    },
)
def run(c, example, server=None, client=None, publisher=None, proxy=None, subscriber=None, source=None, worker=None, sink=None,
        engine=None, facade=None, desk=None, no_build=False, quiet=False, kill_worker_after=None, runner="process", security="null", refusal=None, intruder=None,
        open=False, transport="tcp", monitor=False, restart=None, after=None, place=None, registry=None):
    """Run one cell and show its live transcript, then the verdict."""
    if open and not client:
        client = ["python"]  # the page cell's other trader, who waits for your post
    given = {"server": server, "client": client, "publisher": publisher, "proxy": proxy, "subscriber": subscriber,
             "source": source, "worker": worker, "sink": sink, "engine": engine, "facade": facade, "desk": desk}
    image_registry = registry  # --registry: where a swarm's nodes get the images (`registry` is the languages')
    spec, registry = _load(example)
    driver = None
    if open:
        if example != "desk":
            raise Exit("error: --open serves the desk's page: invoke run desk --open", code=2)
        spec = replace(load_spec(ROOT / "examples" / "desk" / "page.yaml"), cell_timeout=PERSON_MINUTES * 60)
        driver = partial(browser.person, open_browser=True)
        driver.__name__ = "you"
    spec = _restarted(_transported(_secured(spec, security, refusal), transport, monitor), restart, after)
    if intruder and not refusal:
        raise Exit("error: --intruder needs --refusal", code=2)
    fault = None
    if kill_worker_after is not None:
        kill_worker_after = _count(kill_worker_after, "--kill-worker-after")
        if "worker" not in spec.role_names():
            raise Exit(f"error: {example} has no workers to kill", code=2)
        fault = Fault("worker", "priced", kill_worker_after)
        spec = spec.with_parameters(rate=spec.parameters.get("fault_rate", 0),
                                    orders=spec.parameters.get("fault_orders", spec.parameters.get("orders")))
    _check_roles(spec, given)
    chosen = {}
    for role in spec.roles:
        langs = given.get(role.name)
        if langs:
            chosen[role.name] = _languages(",".join(langs), registry, f"--{role.name}", repeats=True)
            if len(chosen[role.name]) > 1 and role.instances == 1 and not role.each:
                raise Exit(f"error: --{role.name}: the {example} {role.name} runs once; give one language, "
                           f"not {', '.join(chosen[role.name])}", code=2)
        elif not role.optional and role.name != INTRUDER and not role.language_of:  # the intruder defaults to the client's language, the query's publisher to the engine's
            chosen[role.name] = ["python"]
    if intruder:
        chosen[INTRUDER] = _languages(intruder, registry, "--intruder")[:1]
    _check_restart(spec, chosen)
    placed = _placed(spec, runner, place, image_registry)
    if not no_build:
        _build(registry, [lang for langs in chosen.values() for lang in langs])

    def show(transcript, event):
        if open and event["event"] not in ("ready", "command", "error", "complete", "done"):
            return  # a person's page: the transcript shows only what matters to them
        if not quiet:
            fields = escape(" ".join(f"{k}={v!r}" for k, v in event.items() if k != "event"))  # a peer's text is no markup
            style = "red" if event["event"] in ("error", "_not-an-event") else "cyan"
            console.print(f"[dim]{transcript.role}{transcript.index}[/] [bold]{transcript.lang:>6}[/] [{style}]{escape(str(event['event']))}[/] {fields}", markup=True, highlight=False)

    with _runner(runner, registry, [lang for langs in chosen.values() for lang in langs], placed, image_registry) as launcher:
        try:
            result = evaluate(spec, chosen, registry, new_run_dir(example), on_event=show, fault=fault, launcher=launcher,
                              driver=driver)
        except KeyboardInterrupt as stop:
            raise _interrupted(stop, "every role of the cell was stopped") from None
    print_details(console, spec, [result])
    print_notes(console, [result])
    if result.placement and result.status == "pass":
        console.print(f"nodes: {result.nodes_text()}", markup=False, highlight=False)
    console.print(f"verdict: [bold]{result.status}[/] in {result.seconds:.1f} s" + (f" ({escape(result.detail)})" if result.detail else ""))
    if result.status in ("fail", "timeout"):
        raise Exit(code=1)


@task(
    iterable=["place"],
    help={
        "example": "the example whose grid to run (chat, ticker, valuation, query, desk)",
        **{role: f"comma-separated {role} languages, or all (the default for the grid's roles)" for role in ROLES},
        "parallel": "cells run at once (default 3)",
        "json": "write the results as JSON to this path",
        "junit": "write JUnit XML to this path",
        "markdown": "write the grids as Markdown to this path",
        "html": "write one self-contained HTML page with every grid, the reasons, replays and log links",
        "no-build": "skip building the languages first",
        "runner": "process (default): local processes; docker: one container per role; swarm: one service per role on a Docker Swarm (DOCKER_HOST's manager)",
        "place": "swarm: run ROLE's instances on these nodes, ROLE=NODE[,NODE...] (hostname or ID); repeatable; other roles spread over the nodes",
        "registry": "swarm: ship the images through this registry (host:port) instead of loading them into each node's engine",
        "security": "null (default), plain or curve: the ZMTP mechanism of every cell (examples that allow it)",
        "refusals": "under plain or curve, also run the refusal grids (an intruder per cell); default on",
        "transport": "tcp (default) or ipc: the transport of every cell (NetMQ with libzmq over ipc: unsupported)",
        "monitor": "every role reports its sockets' events; a cell that fails shows its roles' connection timelines",
        "restart": "in every cell, SIGKILL this role mid-run and start it again on the same endpoints",
        "after": "with --restart: after this many of the spec's events (default: the spec's count)",
    },
)
def matrix(c, example, server=None, client=None, publisher=None, proxy=None, subscriber=None, source=None, worker=None, sink=None,
           engine=None, facade=None, desk=None, parallel=None, json=None, junit=None, markdown=None, html=None, no_build=False, runner="process", security="null", refusals=True,
           transport="tcp", monitor=False, restart=None, after=None, place=None, registry=None):
    """Run every combination of one language per role and print the compatibility grids."""
    image_registry = registry  # --registry: where a swarm's nodes get the images (`registry` is the languages')
    parallel = _count(PARALLEL if parallel is None else parallel, "--parallel")
    json, junit, markdown = _writable(json, "--json"), _writable(junit, "--junit"), _writable(markdown, "--markdown")
    html = _writable(html, "--html")
    given = {"server": server, "client": client, "publisher": publisher, "proxy": proxy, "subscriber": subscriber,
             "source": source, "worker": worker, "sink": sink, "engine": engine, "facade": facade, "desk": desk}
    spec, registry = _load(example)
    variants = [_secured(spec, security)] + [_secured(spec, security, case) for case in (refusals_of(security) if refusals else [])]
    variants = [_restarted(_transported(variant, transport, monitor), restart, after) for variant in variants]
    _check_roles(spec, given)
    dimensions = {role: _languages(given.get(role), registry, f"--{role}") for role in spec.matrix}
    for role in spec.optional_roles():  # an optional role joins the grid when it is asked for
        if given.get(role) is not None:
            dimensions[role] = _languages(given[role], registry, f"--{role}")
    langs = [lang for langs in dimensions.values() for lang in langs]
    _check_restart(variants[0], dimensions)
    placed = _placed(spec, runner, place, image_registry)
    if not no_build:
        _build(registry, langs)
    grids = []  # GridRun: one grid, plus one per refusal case
    stopped = None  # the signal that ended the run early: what ran is still shown and reported
    with _runner(runner, registry, langs, placed, image_registry) as launcher:
        for variant in variants:
            extra = mixed_cells(variant, dimensions) if variant is variants[0] else []
            started = datetime.now(timezone.utc)
            try:
                grids.append(GridRun(variant, *_run_grid(variant, registry, dimensions, parallel, extra, launcher), started, runner))
            except Interrupted as stop:
                grids.append(GridRun(variant, *stop.partial, started, runner))
                stopped = stop
                break

    for grid in grids:
        for table in grid_tables(grid.spec, grid.results, dimensions):
            console.print(table)
        console.print(f"{grid.spec.title()}: " + summary_line(grid.results, grid.wall) + f" ({runner} runner); logs in runs/{grid.run_dir.name}")
        print_notes(console, grid.results)
        print_details(console, grid.spec, grid.results)
    everything = [result for grid in grids for result in grid.results]
    for path, write in ((json, write_json), (junit, write_junit)):
        if path:
            write(path, grids)
    for path, write in ((markdown, write_markdown), (html, write_html)):
        if path:
            write(path, grids, dimensions)
    if stopped:
        written = [str(path) for path in (json, junit, markdown, html) if path]
        raise _interrupted(stop=stopped, what=f"every role was stopped after {len(everything)} cells"
                           + (f"; the reports of those are in {', '.join(written)}" if written else ""))
    if failed(everything):
        raise Exit(code=1)


def _interrupted(stop, what="every role process was killed"):
    """The one line and the exit code (128 + the signal) of a run that a signal ended."""
    kill_everything()
    number = stop.number if isinstance(stop, Interrupted) else signal.SIGINT
    return Exit(f"interrupted by {signal.Signals(number).name}: {what}", code=128 + number)


def _secured(spec, mechanism, refusal=None):
    try:
        return spec.with_security(mechanism, refusal)
    except ValueError as error:
        raise Exit(f"error: {error}", code=2) from error


def _transported(spec, transport, monitor):
    try:
        return spec.with_transport(transport, monitor)
    except ValueError as error:
        raise Exit(f"error: --transport: {error}", code=2) from error


def _restarted(spec, role, after):
    if role is None:
        if after is not None:
            raise Exit("error: --after needs --restart ROLE", code=2)
        return spec
    try:
        return spec.with_restart(role, _count(after, "--after") if after is not None else None)
    except ValueError as error:
        raise Exit(f"error: --restart: {error}", code=2) from error


def _check_restart(spec, roles):
    """A restarted role must be in the cells: the ticker's proxy only when --proxy gives it one."""
    if spec.fault and spec.fault.role not in roles:
        raise Exit(f"error: --restart {spec.fault.role}: these cells have no {spec.fault.role} (give --{spec.fault.role} LANGS)", code=2)


def _run_grid(spec, registry, dimensions, parallel, extra_cells=(), launcher=None):
    total = math.prod(len(langs) for langs in dimensions.values()) + len(extra_cells)
    tally, started = Counter(), time.monotonic()
    plain = not console.is_terminal  # a CI log: one line per cell instead of a bar nobody sees
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=plain,
    ) as progress:
        bar = progress.add_task(f"{spec.title()} grid", total=total)

        def done(result):
            tally[result.status] += 1
            finished = sum(tally.values())
            so_far = ", ".join(f"{n} {status}" for status, n in tally.most_common())
            if plain:
                left = (time.monotonic() - started) / finished * (total - finished)
                console.print(f"[{finished}/{total}] {result.status} {roles_text(result.roles)} {result.seconds:.1f} s "
                              f"({so_far}; about {left:.0f} s left)", markup=False, highlight=False)
            else:
                progress.update(bar, advance=1, description=f"{spec.title()} grid: {so_far}")
            if result.status in ("fail", "timeout"):
                progress.console.print(f"[red]{result.status}[/]: {roles_text(result.roles)}: {escape(result.detail)}", markup=True, highlight=False)

        return run_matrix(spec, dimensions, registry, parallel, on_done=done, extra_cells=extra_cells, launcher=launcher)


@task(
    help={
        "size": "comma-separated message sizes in bytes (default 64,1024)",
        "count": "messages per throughput run (default 1000000); latency runs make a hundredth as many round trips; both are capped at 256 MiB of payload; the plain-TCP ceiling sends 10 times as many messages (at most 1 GiB)",
        "repeat": "runs of every figure; the median is shown (default 3)",
        "source": "comma-separated languages that send (throughput) and ping (latency); default all",
        "sink": "comma-separated languages that receive (throughput) and echo (latency); default all",
        "untuned": "also run every language that has an untuned way (the registry's untuned:, the .NET ones) that way, beside C and itself",
        "compare": "print every figure's change against an earlier run's --json file",
        "json": "write every figure as JSON to this path",
        "markdown": "write the tables as Markdown to this path",
        "plot": "write a PNG chart to this path",
        "no-build": "skip building the languages first",
    },
)
def bench(c, size="64,1024", count=1000000, repeat=3, source=None, sink=None, untuned=False, compare=None, json=None, markdown=None,
          plot=None, no_build=False):
    """Throughput and latency of every language pair, next to C↔C and plain TCP (examples/perf)."""
    json, markdown, plot = _writable(json, "--json"), _writable(markdown, "--markdown"), _writable(plot, "--plot")
    earlier = _earlier_bench(compare) if compare else None
    registry = load_registry()
    senders = _languages(source, registry, "--source")
    receivers = _languages(sink, registry, "--sink")
    try:
        sizes = [int(part) for part in str(size).split(",")]
        count, repeat = int(count), int(repeat)
        if min(sizes) < 0 or count < 1 or repeat < 1:
            raise ValueError
    except ValueError:
        raise Exit("error: --size takes sizes in bytes (0 or more), --count and --repeat positive numbers", code=2) from None
    langs = list(dict.fromkeys(senders + receivers))
    if not no_build:
        _build(registry, list(dict.fromkeys(langs + ["c"])))
    per_round = len(benchmarks.plan_bench(registry, sizes, count, senders, receivers, untuned))
    described = benchmarks.describe_stacks(registry, langs, untuned)
    for line in benchmarks.settings_lines(described):
        console.print(f"[bold]settings[/] {escape(line)}", highlight=False)
    started = time.monotonic()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        bar = progress.add_task("bench", total=per_round * repeat)

        def step(entry):
            way = " untuned" if entry.untuned else ""
            progress.update(bar, advance=1, description=f"{entry.kind} {entry.sender}→{entry.receiver} {entry.size} B{way}")

        try:
            figures, run_dir = benchmarks.run_bench(registry, sizes, count, repeat, senders, receivers, untuned, progress=step)
        except KeyboardInterrupt as stop:
            raise _interrupted(stop) from None
    wall = time.monotonic() - started
    for table in benchmarks.rich_tables(figures, sizes, senders, receivers):
        console.print(table)
    info = stacks.machine()
    console.print(f"{len(figures)} figures × {repeat} runs in {wall:.0f} s on {info['cpu']} ({info['cores']} cores); logs in runs/{run_dir.name}")
    command = "invoke bench " + " ".join(sys.argv[sys.argv.index("bench") + 1:]) if "bench" in sys.argv else "invoke bench"
    report = {**benchmarks.as_json(figures, sizes, count, repeat, described, untuned), "wall_seconds": round(wall, 1), "command": command}
    if json:
        with open(json, "w", encoding="utf-8") as stream:
            jsonlib.dump(report, stream, ensure_ascii=False, indent=2)
    if markdown:
        with open(markdown, "w", encoding="utf-8") as stream:
            stream.write(benchmarks.markdown(figures, sizes, senders, receivers, info, command, described))
    if plot:
        benchmarks.plot(figures, sizes, senders, receivers, plot)
    if earlier is not None:
        _print_comparison(compare, earlier, report)
    broken = [f for f in figures if f.failures]
    for entry in broken:
        way = " untuned" if entry.untuned else ""
        console.print(f"[red]{entry.kind} {entry.sender}→{entry.receiver} {entry.size} B{way}[/]: {len(entry.failures)} failed run(s): {escape(str(entry.failures[0]))}", highlight=False)
    if any(not f.samples for f in figures):
        raise Exit(code=1)


@task(
    help={
        "source": "comma-separated languages that send (default csharp)",
        "sink": "comma-separated languages that receive (default c)",
        "size": "message size in bytes (default 64)",
        "count": "messages per run (default 1000000)",
        "repeat": "runs of every pair; medians are shown (default 3)",
        "no-build": "skip building the languages first",
    },
)
def profile(c, source="csharp", sink="c", size=64, count=1000000, repeat=3, no_build=False):
    """CPU time per message on each side of throughput pairs, and the rate the machine's cores allow at that cost."""
    from rich.table import Table

    from orchestrator import profile as profiling

    registry = load_registry()
    senders, receivers = _languages(source, registry, "--source"), _languages(sink, registry, "--sink")
    for flag, langs, role in (("--source", senders, "thr-source"), ("--sink", receivers, "thr-sink")):
        lacking = [lang for lang in langs if not registry[lang].supports("perf", role)]
        if lacking:
            raise Exit(f"error: {flag}: {lacking[0]} does not implement perf {role}", code=2)
    size, count, repeat = _count(size, "--size", 0), _count(count, "--count"), _count(repeat, "--repeat")
    if not no_build:
        _build(registry, list(dict.fromkeys(senders + receivers)))
    table = Table(title=f"CPU per message at {size} B, {count} messages, user + system, every thread, start-up taken off",
                  caption=f"cores allow: {os.cpu_count()} cores / the CPU both sides need per message")
    for name in ("source → sink", "msg/s", "source µs", "sink µs", "both µs", "cores allow", "measured / allowed"):
        table.add_column(name, justify="left" if name == "source → sink" else "right")
    failed = False
    for sender in senders:
        for receiver in receivers:
            try:
                found = profiling.profile(registry, sender, receiver, size, count, repeat)
            except profiling.ProfileError as error:
                console.print(f"[red]{escape(str(error))}[/]", highlight=False)
                failed = True
                continue
            table.add_row(f"{sender} → {receiver}", benchmarks.amount(found.msg_per_s, "msg/s"), f"{found.source_us:.2f}",
                          f"{found.sink_us:.2f}", f"{found.source_us + found.sink_us:.2f}", benchmarks.amount(found.bound, "msg/s"),
                          f"{found.msg_per_s / found.bound:.0%}")
    console.print(table)
    if failed:
        raise Exit(code=1)


def _earlier_bench(path):
    """The report of an earlier `invoke bench --json`, read before anything runs."""
    try:
        with open(Path(path).expanduser(), encoding="utf-8") as stream:
            earlier = jsonlib.load(stream)
        if earlier.get("example") != "perf" or not isinstance(earlier.get("figures"), list):
            raise ValueError("not the JSON of invoke bench")
        for figure in earlier["figures"]:
            missing = [key for key in ("kind", "sender", "receiver", "size", "unit", "median", "min", "max") if key not in figure]
            if missing:
                raise ValueError(f"a figure without {', '.join(missing)}")
    except OSError as error:
        raise Exit(f"error: --compare: cannot read {path}: {error.strerror}", code=2) from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise Exit(f"error: --compare: {path} is not the JSON of `invoke bench --json`: {error}", code=2) from None
    return earlier


def _print_comparison(path, earlier, report):
    from rich.table import Table

    changes, notes = benchmarks.compare(earlier, report)
    when = earlier.get("command", "an earlier run")
    for note in notes:
        console.print(f"[yellow]differs[/] {escape(note)}", highlight=False)
    table = Table(title=f"against {escape(str(path))}", caption=f"then: {escape(when)}; ratio: now / then, of the medians; "
                  "spread: the wider (max − min) / median of the two; faster or slower only when the repeats do not overlap")
    for name in ("figure", "then", "now", "ratio", "spread", "verdict"):
        table.add_column(name, justify="left" if name in ("figure", "verdict") else "right")
    colour = {"faster": "green", "slower": "red"}
    for change in changes:
        then = benchmarks.amount(change.old["median"], change.unit) if change.old else "-"
        table.add_row(change.name, then, benchmarks.amount(change.new["median"], change.unit),
                      f"×{change.ratio:.2f}" if change.ratio else "-", f"{change.noise * 100:.0f} %" if change.noise is not None else "-",
                      f"[{colour[change.verdict.split()[0]]}]{change.verdict}[/]" if change.verdict.split()[0] in colour else change.verdict)
    console.print(table)
    tally = Counter(change.verdict.split(" (")[0] for change in changes)
    console.print("compared: " + ", ".join(f"{number} {verdict}" for verdict, number in tally.most_common()), highlight=False)


def _placed(spec, runner, place, image_registry):
    """--place ROLE=NODE[,NODE...] as {role: [node names]}, checked against the example's roles
    (the nodes are checked once the swarm is known); --place and --registry are the swarm's."""
    if runner not in RUNNERS:
        raise Exit(f"error: --runner is {', '.join(RUNNERS)}, not {runner!r}", code=2)
    if runner != "swarm" and (place or image_registry):
        raise Exit(f"error: {'--place' if place else '--registry'} is for --runner swarm", code=2)
    placed = {}
    for item in place or []:
        role, _, nodes = item.partition("=")
        names = [name.strip() for name in nodes.split(",")]
        if not role or not all(names):
            raise Exit(f"error: --place {item!r}: write ROLE=NODE or ROLE=NODE,NODE", code=2)
        if role not in spec.role_names():
            raise Exit(f"error: --place: {spec.example} has no role {role!r} (roles: {', '.join(spec.role_names())})", code=2)
        if role in placed:
            raise Exit(f"error: --place: {role} is placed twice", code=2)
        placed[role] = names
    return placed


@contextmanager
def _runner(name, registry, langs, placed=None, image_registry=None):
    """The launcher factory for `--runner`: None for local processes; for docker and swarm, the
    images are built first (their build time reported apart), on a swarm shipped to its nodes, and
    everything the run made is removed by its label afterwards, whatever happened."""
    if name == "process":
        yield None
        return
    engine = _engine()
    swarm = _swarm(engine) if name == "swarm" else None
    images = _images(engine, registry, langs)
    if swarm:
        try:
            images = swarm.ship(images, image_registry, log=console.print)
            placement = swarming.Placement(swarm, placed)
        except containers.DockerUnavailable as error:
            raise Exit(f"error: {error}", code=1) from error
        except ValueError as error:
            raise Exit(f"error: --place: {error}", code=2) from error
        for note in swarm.notes:
            console.print(note, highlight=False)
        console.print(f"swarm: roles on {', '.join(n.hostname + ('' if n.engine else ' (no engine)') for n in swarm.usable)}, "
                      + ("placed by --place, then spread" if placed else "spread (--place ROLE=NODE to choose)"), highlight=False)
    run_label = containers.new_run_label()
    watchdog = containers.start_watchdog(run_label)  # removes them if this process dies of SIGKILL
    launchers = swarming.SwarmLaunchers(swarm, images, run_label, placement) if swarm else containers.DockerLaunchers(images, run_label)
    try:
        yield launchers
    finally:
        if swarm:
            launchers.sweep()  # on every node whose engine is known, too
        else:
            containers.remove_labelled(engine, run_label)
        watchdog.terminate()  # the run is over: nothing left for it to do
        watchdog.wait(30)


def _engine():
    try:
        return containers.client()
    except containers.DockerUnavailable as error:
        raise Exit(f"error: {error}", code=1) from error


def _swarm(engine):
    try:
        return swarming.Swarm(engine)
    except containers.DockerUnavailable as error:
        raise Exit(f"error: {error}", code=1) from error


def _images(engine, registry, langs):
    images, built, started = {}, [], time.monotonic()
    for lang in dict.fromkeys(langs):
        try:
            images[lang], seconds = containers.ensure_image(engine, registry[lang], log=console.print)
        except containers.DockerUnavailable as error:
            raise Exit(f"error: {error}", code=1) from error
        if seconds:
            built.append(f"{lang} {seconds:.1f} s")
    console.print(f"images ready in {time.monotonic() - started:.1f} s" + (f" (built: {', '.join(built)})" if built else " (all cached)"))
    return images


@task(
    help={
        "lang": "comma-separated languages, or all (default)",
        "target": "comma-separated roles to attack: " + ", ".join(battery.TARGETS) + "; default all",
        "attack": "comma-separated attacks: " + ", ".join(battery.attack_names()) + "; default all",
        "parallel": "runs at once (default 3)",
        "json": "write every run's outcome as JSON to this path",
        "markdown": "write the tables as Markdown to this path",
        "no-build": "skip building the languages first",
    },
)
def fuzz(c, lang=None, target=None, attack=None, parallel=None, json=None, markdown=None, no_build=False):
    """The hostile-peer battery: every role that binds, in every language, against every attack;
    after each, the role must serve a correct peer, stay under a memory bound and stop with done."""
    parallel = _count(PARALLEL if parallel is None else parallel, "--parallel")
    json, markdown = _writable(json, "--json"), _writable(markdown, "--markdown")
    registry = load_registry()
    langs = _languages(lang, registry, "--lang")
    targets = _names(target, list(battery.TARGETS), "--target")
    attacks = _names(attack, battery.attack_names(), "--attack")
    if not no_build:
        _build(registry, langs)
    run_dir = new_run_dir("fuzz")
    started = time.monotonic()
    total = sum(1 for t in targets for a in attacks if a in battery.attacks_of(battery.TARGETS[t])) * len(langs)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        bar = progress.add_task("fuzz", total=total)

        def done(outcome):
            progress.advance(bar)
            if outcome.status not in ("survived", "defect"):
                progress.console.print(f"[red]{outcome.status}[/]: {outcome.target} {outcome.attack} {outcome.lang}: {escape(outcome.detail)}",
                                       markup=True, highlight=False)

        try:
            outcomes = battery.run_battery(registry, targets, attacks, langs, run_dir, parallel, on_done=done)
        except KeyboardInterrupt as stop:
            raise _interrupted(stop) from None
    wall = time.monotonic() - started
    for table in fuzz_tables(outcomes, targets, attacks, langs):
        console.print(table)
    console.print(fuzz_summary(outcomes, wall) + f"; logs in runs/{run_dir.name}")
    for line in fuzz_details(outcomes, registry):
        console.print(line, highlight=False)
    if json:
        write_fuzz_json(json, outcomes, wall)
    if markdown:
        write_fuzz_markdown(markdown, outcomes, targets, attacks, langs, wall)
    if battery.failed(outcomes):
        raise Exit(code=1)


def _names(text, known, what):
    if not text or text.strip() == "all":
        return list(known)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise Exit(f"error: {what}: unknown name {(unknown or [text])[0]!r} (known: {', '.join(known)})", code=2)
    return names


@task(help={"lang": "one language; default: all"})
def docker_build(c, lang=None):
    """Build (or find cached) the container image of every language: tag, size, build time."""
    registry = load_registry()
    langs = _languages(lang, registry, "--lang")
    _build(registry, langs)
    engine = _engine()
    images = _images(engine, registry, langs)
    for name, tag in images.items():
        console.print(f"{name:>7}  {tag}  {containers.image_size(engine, tag) / 1e6:.0f} MB")


@task(help={"force": "rebuild it even if it exists"})
def docker_base(c, force=False):
    """Build the Debian bookworm base image offline (debootstrap + import), for machines that
    reach no image registry. Needs root and debootstrap."""
    engine = _engine()
    if not force and engine.images.list(name=containers.OFFLINE_BASE):
        console.print(f"{containers.OFFLINE_BASE} exists (--force rebuilds it)")
        return
    if shutil.which("debootstrap") is None:
        raise Exit("error: debootstrap is missing (apt-get install debootstrap)", code=1)
    started = time.monotonic()
    with console.status("debootstrap bookworm"):
        containers.build_offline_base(engine, log=console.print)
    console.print(f"{containers.OFFLINE_BASE} built in {time.monotonic() - started:.1f} s")


@task
def docker_up(c):
    """Make sure a Docker engine answers: DOCKER_HOST's, or a local dockerd started here (docker.io
    from Debian is installed when it is missing)."""
    try:
        containers.client()
        console.print("a Docker engine answers")
        return
    except containers.DockerUnavailable:
        if os.environ.get("DOCKER_HOST"):
            raise Exit(f"error: DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer", code=1)
    if shutil.which("dockerd") is None:
        c.run("apt-get install -y -q --no-install-recommends docker.io", hide="out")
    log = ROOT / "runs" / "dockerd.log"
    log.parent.mkdir(exist_ok=True)
    with open(log, "ab") as output:
        subprocess.Popen(["dockerd"], stdout=output, stderr=output, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:  # the daemon has no readiness signal but its API: ask it, for a minute at most
        try:
            containers.client()
            break
        except containers.DockerUnavailable:
            if time.monotonic() > deadline:
                raise Exit(f"error: dockerd did not answer within 60 s; see {log}", code=1)
            time.sleep(0.5)
    console.print(f"dockerd started (log: {log.relative_to(ROOT)})")


@task
def docker_clean(c):
    """Remove every container and network the project created (by label)."""
    console.print(f"removed {containers.remove_labelled(_engine())} containers and networks")


@task(help={"workers": "worker nodes, each a Docker engine in a container (default 0: this engine alone, on loopback)"})
def swarm_up(c, workers=0):
    """Make a throw-away Docker Swarm on this machine for `--runner swarm`: this engine as its
    manager, and N Docker-in-Docker workers (orchestrator/localswarm.py)."""
    workers = _count(workers, "--workers", least=0)
    engine = _engine()
    try:
        localswarm.up(engine, workers, containers.base_image(engine) if workers else None, log=console.print)
    except (localswarm.SwarmError, containers.DockerUnavailable) as error:
        raise Exit(f"error: {error}", code=1) from error
    except docker_sdk.errors.APIError as error:
        raise Exit(f"error: the engine cannot make a swarm: {error.explanation or error}", code=1) from error
    for line in localswarm.hosts_lines(engine):
        console.print(line, highlight=False)


@task
def swarm_down(c):
    """Take down the swarm `invoke swarm.up` made (its workers, then this engine leaves it); a
    swarm it did not make is left as it is."""
    try:
        localswarm.down(_engine(), log=console.print)
    except localswarm.SwarmError as error:
        raise Exit(f"error: {error}", code=1) from error


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
    c.run(shlex.join(args), pty=False)  # quoted: -k "a and b" stays one argument


@task(help={"lang": "the registry entry to check (BTB_REGISTRY may name another registry file)",
            "grids": "also every grid cell the language plays in (default: yes)",
            "docker": "also the container tests (needs `invoke docker.up` and `invoke docker.base`)",
            "junit": "also write pytest's JUnit report to PATH"})
def conform(c, lang, grids=True, docker=False, junit=None):
    """The conformance kit: everything one language must pass on its own, then a checklist."""
    registry = load_registry()
    if lang not in registry.names():
        raise Exit(f"error: conform: unknown language {lang!r} (registry {registry.path}: {', '.join(registry.names())})", code=2)
    if junit:
        _writable(junit, "--junit")
    _build(registry, registry.names())  # the grid cells pair it with every other language
    run_dir = new_run_dir(f"conform-{lang}")
    report = Path(junit) if junit else run_dir / "junit.xml"
    markers = " and ".join(["not docker"] * (not docker) + ["not grid"] * (not grids)) or "docker or not docker"
    args = [sys.executable, "-m", "pytest", "tests", "--lang", lang, "-m", markers, "-q", "-p", "no:cacheprovider",
            f"--junitxml={report}", "-o", f"junit_suite_name=conform {lang}"]
    console.print(f"[bold]conform {lang}[/]: {shlex.join(args[2:])}", highlight=False)
    done = subprocess.run(args, cwd=ROOT)
    if done.returncode not in (0, 1) or not report.exists():
        raise Exit(f"error: conform: pytest exited {done.returncode} without a report", code=done.returncode or 1)
    table, failed_count = conformance.checklist(report, lang)
    console.print(table)
    console.print(f"{'conforms' if not failed_count else f'{failed_count} checks failed'}; report {report}", highlight=False)
    if failed_count:
        raise Exit(code=1)


@task(name="help", help={"check": "only check that examples/help.txt is current: exit 1 if not"})
def help_text(c, check=False):
    """Write examples/help.txt, every language's `btb --help`, from the PROTOCOL.md flags tables."""
    try:
        text = helptext.render(helptext.load(load_registry()))
    except (helptext.TableError, ConfigError) as error:
        raise Exit(f"help: {error}", code=1) from None
    current = helptext.HELP_PATH.read_text() if helptext.HELP_PATH.exists() else None
    if check:
        if text != current:
            raise Exit("help: examples/help.txt is not what the tables give: run `invoke help`", code=1)
        console.print("examples/help.txt is current")
    elif text != current:
        helptext.HELP_PATH.write_text(text)
        console.print(f"wrote {helptext.HELP_PATH.relative_to(ROOT)}: rebuild the languages that embed it (invoke build)")
    else:
        console.print("examples/help.txt is current")


@task(help={"example": "one example (or security, monitor); default: all",
            "markdown": "also write the tables to this Markdown file"})
def concepts(c, example=None, markdown=None):
    """Which ZeroMQ concepts each example explains, in which language (examples/concepts.yaml):
    one table per example, a concept per row; exit 1 if a note is missing."""
    registry = load_registry()
    try:
        notes = reading.survey(registry)
    except ConfigError as error:
        raise Exit(f"concepts: {error}", code=1) from None
    places = list(dict.fromkeys(note.place for note in notes))
    if example:
        places = _names(example, places, "example")
    langs = registry.names()
    marks = {"present": "✓", "not-required": "n/a", "missing": "MISSING"}
    lines = []
    for place in places:
        mine = [note for note in notes if note.place == place]
        table = Table(title=place, show_lines=False)
        table.add_column("concept")
        for lang in langs:
            table.add_column(lang, justify="center")
        lines += [f"### {place}", "", "| concept | " + " | ".join(langs) + " |", "|---" * (len(langs) + 1) + "|"]
        for tag in dict.fromkeys(note.concept for note in mine):
            cells = {note.language: note for note in mine if note.concept == tag}
            marked = [marks[cells[lang].status] if lang in cells else "" for lang in langs]
            table.add_row(escape(f"[{tag}]"), *[("[red]" + m + "[/]") if m == "MISSING" else m for m in marked])
            lines.append(f"| [{tag}] | " + " | ".join(marked) + " |")
        lines.append("")
        console.print(table)
    for note in notes:
        if note.status != "present" and note.place in places:
            console.print(f"{note.place} " + escape(f"[{note.concept}]") + f" {note.language}: {note.status}: {escape(note.detail)}")
    if markdown:
        Path(markdown).write_text("\n".join(lines))
    missing = sum(note.status == "missing" and note.place in places for note in notes)
    if missing:
        raise Exit(f"concepts: {missing} notes missing", code=1)
    console.print(f"{sum(note.place in places for note in notes)} notes, none missing")


docker = Collection("docker")
docker.add_task(docker_up, "up")
docker.add_task(docker_base, "base")
docker.add_task(docker_build, "build")
docker.add_task(docker_clean, "clean")
swarm = Collection("swarm")
swarm.add_task(swarm_up, "up")
swarm.add_task(swarm_down, "down")
ns = Collection(build, run, matrix, bench, profile, fuzz, conform, test, help_text, concepts, docker, swarm)
