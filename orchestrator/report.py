"""What a grid run prints and writes: the rich grid, failure details, and the reports (JSON, JUnit,
Markdown, HTML), all made from the same GridRun records."""
import itertools
import json
import os
import re
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import jinja2
from rich.table import Table

from .matrix import counts, relative, replay_of

NOT_PASSED = ("fail", "timeout", "known-failure", "interrupted")


@dataclass
class GridRun:
    """One grid of a run (a refusal case is a grid of its own), as every report shows it."""

    spec: object
    results: list
    wall: float
    run_dir: Path
    started: datetime  # UTC
    runner: str = "process"

    @property
    def suite(self):
        return f"{self.spec.title()} ({self.runner} runner)"

    def not_passed(self):
        return [r for r in self.results if r.status in NOT_PASSED or r.known_failure_passed]

STYLE = {"pass": "green", "fail": "bold red", "timeout": "yellow", "unsupported": "dim", "known-failure": "magenta",
         "interrupted": "cyan"}


def slices(dimensions, results, spec=None):
    """(title, rows, columns, cells) per table: the first two dimensions are a table's rows and
    columns; every combination of the further ones (a proxy, a sink) gets a table of its own. The
    title names the roles that run in a dimension's language without being one (the desk's
    services: publisher, engine and workers in the chat server's language)."""
    row_role, column_role, *further = dimensions
    along = {dimension: [role.name for role in (spec.roles if spec else []) if role.language_of == dimension]
             for dimension in (row_role, column_role)}
    grid = [r for r in results if not r.extra]
    for fixed in itertools.product(*(dimensions[role] for role in further)):
        where = dict(zip(further, fixed))
        cells = {
            (r.roles[row_role][0], r.roles[column_role][0]): r
            for r in grid
            if all(r.roles.get(role, [None])[0] == lang for role, lang in where.items())
        }
        title = f"{row_role} (rows) × {column_role} (columns)"
        for dimension, names in along.items():
            if names:
                title += f"; {', '.join(names)} in the {dimension}'s language"
        if where:
            title += ", " + ", ".join(f"{role} {lang}" for role, lang in where.items())
        yield title, dimensions[row_role], dimensions[column_role], cells


def label(result):
    if result.status == "unsupported":
        return "unsupported"
    mark = "*" if result.known_failure_passed else ""
    return f"{result.status}{mark} {result.seconds:.1f}s"


def grid_tables(spec, results, dimensions):
    row_role, column_role = list(dimensions)[:2]
    for title, rows, columns, cells in slices(dimensions, results, spec):
        table = Table(title=f"{spec.title()}: {title}")
        table.add_column(f"{row_role} \\ {column_role}", style="bold")
        for column in columns:
            table.add_column(column, justify="center")
        for row in rows:
            line = [row]
            for column in columns:
                result = cells.get((row, column))
                line.append("[dim]-[/]" if result is None else f"[{STYLE[result.status]}]{label(result)}[/]")
            table.add_row(*line)
        yield table
    extras = [r for r in results if r.extra]
    if extras:
        table = Table(title=f"{spec.title()}: further cells")
        table.add_column("roles", style="bold")
        table.add_column("status", justify="center")
        for result in extras:
            table.add_row(roles_text(result.roles), f"[{STYLE[result.status]}]{label(result)}[/]")
        yield table


def roles_text(roles):
    return ", ".join(f"{role} {'+'.join(langs) if len(set(langs)) > 1 else langs[0]}" for role, langs in roles.items())


def summary_line(results, wall_seconds):
    tally = counts(results)
    parts = [f"{tally['pass']}/{len(results)} pass"]
    parts += [f"{n} {status}" for status, n in tally.items() if n and status != "pass"]
    return ", ".join(parts) + f" in {wall_seconds:.1f} s wall time"


def print_notes(console, results):
    """Why cells are unsupported, and what passing cells could not show: each reason once, with
    the number of cells it applies to."""
    cells = {}
    for result in results:
        if result.status == "pass" and result.detail:
            for note in result.detail.split("; "):
                cells.setdefault(("note", "passing cells"), {}).setdefault(note, []).append(result)
        elif result.status == "unsupported":
            cells.setdefault(("unsupported", "cells"), {}).setdefault(result.detail, []).append(result)
    for (kind, what), notes in cells.items():
        for note, where in notes.items():
            console.print(f"{kind} ({len(where)} {what}): {note}", style="dim", markup=False, highlight=False)


def timeline(t):
    """A role's connection timeline from its socket-events, one line per socket in the order of
    their first event, repeated runs counted: `requests: connect-delayed, (closed, connect-retried,
    connect-delayed) ×40`."""
    sockets = {}
    for event in t.events:
        if event["event"] == "socket-event":
            sockets.setdefault(str(event.get("socket")), []).append(str(event.get("kind")))
    if not sockets:
        return [f"{t.label}: no socket events (it never opened a socket, or died first)"]
    return [f"{t.label} {socket}: {', '.join(runs(kinds))}" for socket, kinds in sockets.items()]


def runs(kinds, longest=4):
    """`kinds` with every block of up to `longest` kinds repeated back to back written once, with
    its count: a reconnecting socket's cycle shows as one item, not hundreds."""
    out, i = [], 0
    while i < len(kinds):
        best, times = 1, 1
        for size in range(1, longest + 1):
            block, n = kinds[i:i + size], 1
            while kinds[i + n * size:i + (n + 1) * size] == block and len(block) == size:
                n += 1
            if n > 1 and n * size > best * times:
                best, times = size, n
        block = kinds[i:i + best]
        text = block[0] if best == 1 else f"({', '.join(block)})"
        out.append(text + (f" ×{times}" if times > 1 else ""))
        i += best * times
    return out


def timelines(spec, result):
    """Every role's timeline, for a cell run with --monitor."""
    return [line for t in result.transcripts for line in timeline(t)] if spec.monitor else []


def print_details(console, spec, results, limit=12):
    """For every cell that did not pass: the reasons, the saved logs, and how to replay it."""
    for result in results:
        if result.status in ("pass", "unsupported") and not result.known_failure_passed:
            continue
        style = STYLE.get(result.status, "")
        console.print(f"[{style}]{result.status}[/]: {roles_text(result.roles)}")
        problems = result.problems or [result.detail]
        for problem in problems[:limit]:
            console.print(f"    {problem}", markup=False, highlight=False)
        if len(problems) > limit:
            console.print(f"    ... and {len(problems) - limit} more (all of them with --json)")
        if result.known_failure_passed:
            console.print(f"    {result.detail}", markup=False)
        lines = timelines(spec, result)
        if lines:
            console.print("    connections (socket monitors):", markup=False)
        for line in lines:
            console.print(f"      {line}", markup=False, highlight=False)
        for t in result.transcripts:
            console.print(f"    {t.label} events: {relative(t.events_path)}", markup=False, highlight=False)
            console.print(f"    {t.label} stderr: {relative(t.stderr_path)}", markup=False, highlight=False)
        if result.placement:
            console.print(f"    nodes: {result.nodes_text()}", markup=False, highlight=False)
        console.print(f"    replay: {replay_of(spec, result)}", markup=False, highlight=False)


def cell_json(spec, result):
    roles = {role: langs[0] if len(set(langs)) == 1 else langs for role, langs in result.roles.items()}
    return {
        "roles": roles,
        "security": spec.secure.mechanism if spec.secure else "null",
        "refusal": spec.secure.refusal if spec.secure else None,
        "status": result.status,
        "seconds": result.seconds,
        "detail": result.detail,
        "problems": result.problems,
        "transport": spec.transport,
        "timeline": timelines(spec, result),
        "replay": replay_of(spec, result),
        "runner": result.runner,
        "nodes": {t.label: t.node for t in result.transcripts if t.node} or None,
        "logs": {t.label: {"events": relative(t.events_path), "stderr": relative(t.stderr_path)} for t in result.transcripts},
    }


def write_json(path, grids):
    """Every cell of every grid of the run."""
    results = [r for grid in grids for r in grid.results]
    document = {
        "example": grids[0].spec.example,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(sum(grid.wall for grid in grids), 2),
        "counts": counts(results),
        "cells": [cell_json(grid.spec, r) for grid in grids for r in grid.results],
    }
    with open(path, "w", encoding="utf-8", errors="backslashreplace") as stream:  # a role's lone surrogate
        json.dump(document, stream, ensure_ascii=False, indent=2)


# XML 1.0 cannot carry these at all, not even escaped: a role's stray control byte becomes \xNN.
NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text):
    return NOT_XML.sub(lambda match: f"\\x{ord(match.group()):02x}", str(text))


def failure_text(spec, result):
    """What a CI system shows of a cell that did not pass: the reasons, the replay, the logs."""
    lines = list(result.problems or [result.detail])
    lines += [f"connections: {line}" for line in timelines(spec, result)]
    if result.placement:
        lines.append(f"nodes: {result.nodes_text()}")
    lines.append(f"replay: {replay_of(spec, result)}")
    for t in result.transcripts:
        lines.append(f"{t.label} events: {relative(t.events_path)}")
        lines.append(f"{t.label} stderr: {relative(t.stderr_path)}")
    return xml_text("\n".join(lines))


def write_junit(path, grids):
    """<testsuites>, one <testsuite> per grid (named by example, security, refusal and runner),
    one <testcase> per cell; a cell that did not pass carries its reasons, replay and logs."""
    everything = [r for grid in grids for r in grid.results]
    tally = counts(everything)
    top = ET.Element("testsuites", name=grids[0].spec.example, tests=str(len(everything)), failures=str(tally["fail"]),
                     errors=str(tally["timeout"]), skipped=str(tally["unsupported"] + tally["known-failure"] + tally["interrupted"]),
                     time=f"{sum(grid.wall for grid in grids):.2f}")
    for grid in grids:
        tally = counts(grid.results)
        suite = ET.SubElement(
            top, "testsuite", name=xml_text(grid.suite), tests=str(len(grid.results)), failures=str(tally["fail"]),
            errors=str(tally["timeout"]), skipped=str(tally["unsupported"] + tally["known-failure"] + tally["interrupted"]),
            time=f"{grid.wall:.2f}", timestamp=grid.started.isoformat(timespec="seconds"), hostname=socket.gethostname(),
        )
        for result in grid.results:
            case = ET.SubElement(suite, "testcase", classname=xml_text(grid.suite), name=xml_text(roles_text(result.roles)),
                                 time=f"{result.seconds:.2f}")
            kind = {"fail": "failure", "timeout": "error"}.get(result.status)
            if kind:
                ET.SubElement(case, kind, message=xml_text(result.detail), type=result.status).text = failure_text(grid.spec, result)
            elif result.status in ("unsupported", "known-failure", "interrupted"):
                ET.SubElement(case, "skipped", message=xml_text(f"{result.status}: {result.detail}"))
    ET.ElementTree(top).write(path, encoding="utf-8", xml_declaration=True)


def write_markdown(path, grids, dimensions):
    lines = []
    for grid in grids:
        lines += markdown_grid(grid.spec, grid.results, dimensions, grid.wall)
        if grid.not_passed():
            lines += [f"#### {grid.spec.title()}: the cells that did not pass", ""]
            for result in grid.not_passed():
                lines.append(f"* **{result.status}** {roles_text(result.roles)}: {result.detail}")
                lines += [f"  - {line}" for line in timelines(grid.spec, result)]
                lines.append(f"  replay: `{replay_of(grid.spec, result)}`")
            lines.append("")
    with open(path, "w", encoding="utf-8", errors="backslashreplace") as stream:
        stream.write("\n".join(lines))


def write_html(path, grids, dimensions):
    """One self-contained page (no network needed to view it): every grid, coloured cells with their
    time, and for every cell that did not pass its reasons, replay command and links to its logs."""
    folder = Path(path).resolve().parent

    def link(log):
        return os.path.relpath(Path(log).resolve(), folder)

    row_role, column_role = list(dimensions)[:2]
    model = []
    for index, grid in enumerate(grids):
        anchor = {id(r): f"g{index}-c{n}" for n, r in enumerate(grid.results)}
        tables = [{"title": title, "corner": f"{row_role} \\ {column_role}", "columns": columns,
                   "rows": [(row, [cells.get((row, column)) for column in columns]) for row in rows]}
                  for title, rows, columns, cells in slices(dimensions, grid.results, grid.spec)]
        model.append({"grid": grid, "tables": tables, "extras": [r for r in grid.results if r.extra], "anchor": anchor,
                      "summary": summary_line(grid.results, grid.wall),
                      "problems": [{"result": r, "replay": replay_of(grid.spec, r), "timeline": timelines(grid.spec, r),
                                    "logs": [(t.label, link(t.events_path), link(t.stderr_path)) for t in r.transcripts]}
                                   for r in grid.not_passed()]})
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                                     autoescape=True, trim_blocks=True, lstrip_blocks=True)
    environment.filters["id"] = id  # a cell's anchor: g.anchor is keyed by the result's identity
    page = environment.get_template("report.html.j2").render(
        example=grids[0].spec.example, grids=model, label=label, roles_text=roles_text,
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"), host=socket.gethostname())
    Path(path).write_text(page, encoding="utf-8", errors="backslashreplace")


def markdown_grid(spec, results, dimensions, wall_seconds):
    lines = []
    row_role, column_role = list(dimensions)[:2]
    for title, rows, columns, cells in slices(dimensions, results, spec):
        lines += [
            f"### {spec.title()}: {title}", "",
            "| " + " | ".join([f"{row_role} \\ {column_role}"] + list(columns)) + " |",
            "|" + "---|" * (len(columns) + 1),
        ]
        for row in rows:
            line = [f"**{row}**"] + [label(cells[(row, c)]) if (row, c) in cells else "-" for c in columns]
            lines.append("| " + " | ".join(line) + " |")
        lines.append("")
    extras = [r for r in results if r.extra]
    if extras:
        lines += [f"### {spec.title()}: further cells", "", "| roles | status |", "|---|---|"]
        lines += [f"| {roles_text(r.roles)} | {label(r)} |" for r in extras]
        lines.append("")
    notes = sorted({note for r in results if r.status == "pass" and r.detail for note in r.detail.split("; ")})
    unsupported = sorted({r.detail for r in results if r.status == "unsupported"})
    lines += [f"* note: {note}" for note in notes] + [f"* unsupported: {reason}" for reason in unsupported]
    lines += ["", summary_line(results, wall_seconds), ""]
    return lines


# --- the hostile-peer battery (invoke fuzz) ---------------------------------------------------

FUZZ_STYLE = {"survived": "green", "defect": "magenta"}


def fuzz_cells(outcomes, targets, attacks, langs):
    """(target, [(attack, [outcome or None per language])]) for each attacked role."""
    by_cell = {(o.target, o.attack, o.lang): o for o in outcomes}
    for target in targets:
        rows = [a for a in attacks if any((target, a, lang) in by_cell for lang in langs)]
        yield target, [(attack, [by_cell.get((target, attack, lang)) for lang in langs]) for attack in rows]


def fuzz_label(outcome):
    return "-" if outcome is None else outcome.status if outcome.status != "defect" else f"defect: {outcome.defect}"


def fuzz_tables(outcomes, targets, attacks, langs):
    """One table per attacked role: attacks (rows) × languages (columns)."""
    for target, rows in fuzz_cells(outcomes, targets, attacks, langs):
        table = Table(title=f"fuzz: {target}, attack (rows) × language (columns)")
        table.add_column("attack", style="bold")
        for lang in langs:
            table.add_column(lang, justify="center")
        for attack, cells in rows:
            table.add_row(attack, *(f"[{FUZZ_STYLE.get(o.status if o else 'survived', 'bold red')}]{fuzz_label(o)}[/]" for o in cells))
        yield table


def write_fuzz_markdown(path, outcomes, targets, attacks, langs, wall):
    lines = []
    for target, rows in fuzz_cells(outcomes, targets, attacks, langs):
        lines += [f"#### {target}: attack (rows) × language (columns)", "",
                  "| attack | " + " | ".join(langs) + " |", "|---|" + "---|" * len(langs)]
        lines += [f"| {attack} | " + " | ".join(fuzz_label(o) for o in cells) + " |" for attack, cells in rows]
        lines.append("")
    lines.append(fuzz_summary(outcomes, wall))
    with open(path, "w", encoding="utf-8") as stream:
        stream.write("\n".join(lines) + "\n")


def fuzz_summary(outcomes, wall):
    tally = {status: sum(o.status == status for o in outcomes) for status in dict.fromkeys(o.status for o in outcomes)}
    return f"{len(outcomes)} runs in {wall:.1f} s wall time: " + ", ".join(f"{n} {status}" for status, n in tally.items())


def fuzz_details(outcomes, registry):
    """What every run that did not survive saw, how to replay it, and each recorded defect once."""
    lines, shown = [], set()
    for o in outcomes:
        if o.status == "survived":
            if o.detail:
                lines.append(f"* note: {o.target} {o.attack} {o.lang}: {o.detail}")
            continue
        lines.append(f"* {o.status}: {o.target} {o.attack} {o.lang}: {o.detail}\n  replay: {o.replay()}\n"
                     f"  logs: {o.logs['events']}, {o.logs['stderr']}")
        if o.defect and o.defect not in shown:
            shown.add(o.defect)
            defect = registry[o.lang].defect_for(o.target, o.attack)
            lines.append(f"* defect {defect.name}: {defect.reason} (reproduction and write-up: {defect.reproduction})")
    return lines


def write_fuzz_json(path, outcomes, wall):
    from dataclasses import asdict

    with open(path, "w", encoding="utf-8") as stream:
        json.dump({"wall_seconds": round(wall, 1), "runs": [dict(asdict(o), seconds=round(o.seconds, 2), replay=o.replay()) for o in outcomes]},
                  stream, ensure_ascii=False, indent=2)
