"""Cells and grids: decides each cell's status (running it when it can run), in parallel."""
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from . import ROOT
from . import transport
from .runner import CellResult, Interrupted, aborting, kill_everything, run_cell
from .security import INTRUDER

STATUSES = ("pass", "fail", "timeout", "unsupported", "known-failure", "interrupted")


def new_run_dir(example):
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = ROOT / "runs" / f"{example}-{stamp}"
    path.mkdir(parents=True)
    return path


def assign(spec, chosen):
    """The cell's spec and its languages per role instance. `chosen[role]` is one language for
    every instance, or a list with one language per instance (which also sets the number of
    instances). Optional roles that `chosen` leaves out are left out of the cell."""
    chosen = {role: [langs] if isinstance(langs, str) else list(langs) for role, langs in chosen.items()}
    base = spec.intruder_of()
    if base and INTRUDER not in chosen:
        chosen[INTRUDER] = chosen[base][:1]  # a refusal cell's intruder speaks the column's language
    for role in spec.roles:  # the query's ticker publisher speaks the engine's language
        if role.language_of and role.name not in chosen:
            chosen[role.name] = chosen[role.language_of][:1]
    counts = {role: len(langs) for role, langs in chosen.items() if len(langs) > 1}
    spec = spec.for_cell(counts, set(chosen))
    return spec, {role.name: (chosen[role.name] * role.instances)[: role.instances] for role in spec.roles}


def replay_command(spec, roles, runner="process", placement=None):
    """The `invoke run` that runs this cell again: its languages, its variant, its runner and,
    on a swarm, the nodes its roles ran on."""
    parts = [f"invoke run {spec.example}"]
    for role, langs in roles.items():
        uniform = len(set(langs)) == 1
        for lang in ([langs[0]] if uniform else langs):
            parts.append(f"--{role} {lang}")
    if spec.secure and spec.secure.mechanism != "null":
        parts.append(f"--security {spec.secure.mechanism}")
    if spec.secure and spec.secure.refusal:
        parts.append(f"--refusal {spec.secure.refusal}")
    if spec.transport != "tcp":
        parts.append(f"--transport {spec.transport}")
    if spec.monitor:
        parts.append("--monitor")
    if spec.fault:
        parts.append(f"--restart {spec.fault.role} --after {spec.fault.count}")
    if runner != "process":
        parts.append(f"--runner {runner}")
    for role, nodes in (placement or {}).items():
        parts.append(f"--place {role}={','.join(nodes)}")
    return " ".join(parts)


def replay_of(spec, result):
    return replay_command(spec, result.roles, result.runner, result.placement)


def evaluate(spec, chosen, registry, run_dir, on_event=None, fault=None, launcher=None, driver=None):
    """One cell: unsupported, or run; a known failure is labelled as such either way."""
    spec, roles = assign(spec, chosen)
    langsets = {role: set(langs) for role, langs in roles.items()}
    playing = {role: langs for role, langs in langsets.items() if role != INTRUDER}
    if INTRUDER in langsets:  # the intruder runs the program of the role it copies
        playing.setdefault(spec.intruder_of(), set()).update(langsets[INTRUDER])
    reason = registry.unsupported(spec.programs(playing))
    if not reason and spec.secure:
        reason = spec.secure.unsupported(roles, registry)
    every = {lang for langs in langsets.values() for lang in langs}
    runner = getattr(launcher, "name", "process") if launcher else "process"
    if not reason:
        reason = transport.unsupported(spec.transport, every, registry, runner)
    if not reason and hasattr(launcher, "unsupported"):  # what the runner itself cannot do (a swarm)
        reason = launcher.unsupported(spec, roles, fault or spec.fault)
    if reason:
        return CellResult(spec.example, roles, "unsupported", 0.0, reason, runner=runner)
    result = run_cell(spec, roles, registry, run_dir, on_event, fault, launcher(roles) if launcher else None, driver)
    result.runner = runner
    if any(t.node for t in result.transcripts):
        result.placement = {}
        for t in result.transcripts:
            if not t.restarted:
                result.placement.setdefault(t.role, []).append(t.node or "?")
    note = transport.note(spec.transport, every, registry)
    if note and result.status == "pass":
        result.detail = "; ".join(filter(None, [result.detail, note]))
    known = registry.known_failure(spec.example, langsets)
    if known and result.status == "pass":
        result.known_failure_passed = known.reason
        result.detail = f"listed as a known failure ({known.reason}) but passed: remove the entry"
    elif known:
        result.status = "known-failure"
        result.detail = f"{known.reason} | this run: {result.detail}"
    return result


def grid_cells(dimensions, extra_cells=()):
    """Every combination of one language per dimension (role -> languages, rows first, then
    columns, then any further dimension), then `extra_cells` (role -> language or list)."""
    return [dict(zip(dimensions, combination)) for combination in itertools.product(*dimensions.values())] + list(extra_cells)


def run_matrix(spec, dimensions, registry, parallel, on_done=None, extra_cells=(), launcher=None):
    """Every cell of the grid (grid_cells), `parallel` at a time. `launcher` makes each cell's
    launcher (containers); by default roles are local processes."""
    cells = grid_cells(dimensions, extra_cells)
    return run_cells(spec, cells, registry, parallel, on_done, launcher, extra_from=len(cells) - len(extra_cells))


def run_cells(spec, cells, registry, parallel, on_done=None, launcher=None, extra_from=None):
    """Some cells of one spec, `parallel` at a time: (the results of those that ran, in order, the
    wall time, the run folder). A cell from index `extra_from` on is one of the grid's extra cells.
    A signal (Interrupted) kills the running cells and leaves the queued ones unstarted."""
    run_dir = new_run_dir(spec.example)
    started = time.monotonic()
    results = [None] * len(cells)

    def one(index):
        if aborting.is_set():
            return
        results[index] = evaluate(spec, cells[index], registry, run_dir, launcher=launcher)
        results[index].extra = extra_from is not None and index >= extra_from
        if on_done:
            on_done(results[index])

    pool = ThreadPoolExecutor(max_workers=max(1, parallel))
    stopped = None
    try:
        for future in [pool.submit(one, index) for index in range(len(cells))]:
            future.result()
    except KeyboardInterrupt as signal_:
        kill_everything()  # the running cells end at once (interrupted); the queued ones never start
        stopped = signal_ if isinstance(signal_, Interrupted) else Interrupted(2)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    finished = [r for r in results if r is not None], time.monotonic() - started, run_dir
    if stopped:
        stopped.partial = finished  # the reports of what ran are still written
        raise stopped
    return finished


def mixed_cells(spec, dimensions):
    """The spec's extra cells: for each language of `per`, one cell whose `role` runs one instance
    in every language of its dimension (valuation: a pool of six workers per sink language); then
    its fixed `further` cells (desk: every service in another language), each one only when the
    grid asked for all of its languages."""
    cells = []
    if spec.mixed:
        role, per = spec.mixed["role"], spec.mixed["per"]
        cells += [{r: list(dimensions[r]) if r == role else lang for r in dimensions} for lang in dimensions[per]]
    asked = {lang for langs in dimensions.values() for lang in langs}
    for cell in spec.further or []:
        langs = {lang for value in cell.values() for lang in ([value] if isinstance(value, str) else value)}
        if langs <= asked:
            cells.append(dict(cell))
    return cells


def counts(results):
    return {status: sum(1 for r in results if r.status == status) for status in STATUSES}


def failed(results):
    return [r for r in results if r.status in ("fail", "timeout")]


def relative(path):
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return str(path)
