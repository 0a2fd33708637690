"""Checkers: each example's module verifies the transcripts of one cell; this module holds the
checks that the launch contract makes the same for every example."""
import importlib

from ..security import INTRUDER


def check(spec, transcripts):
    """Every problem found in one cell's transcripts, as sentences; an empty list means pass."""
    problems = []
    for t in transcripts:
        if t.role != INTRUDER:  # an intruder is meant to fail: checks/security.py says how
            problems += contract_problems(t)
    problems += checker(spec.example).check(spec, transcripts)
    if spec.secure:
        problems += checker("security").check(spec, transcripts)
    return problems


def notes(spec, transcripts):
    """What a passing cell could not show, and why; shown with the grid."""
    return checker("security").notes(spec, transcripts) if spec.secure else []


def checker(name):
    """The module of checks/ for an example, or for what security adds to any example. (Imported
    when first needed: each of them uses `events` below.)"""
    return importlib.import_module(f"{__name__}.{name}")


def contract_problems(t):
    """What the launch contract requires of any role: JSON events only, exit 0 after `done`."""
    problems = []
    for event in t.events:
        if event["event"] == "_not-an-event":
            problems.append(f"{t.label}: stdout line is not a JSON event: {event['line'][:80]!r}")
            break
    if t.killed:  # a fault the orchestrator injected: it must not have finished first
        if any(event["event"] == "done" for event in t.events):
            problems.append(f"{t.label}: finished before the fault struck ({t.killed})")
        return problems
    if t.exit_code is None:
        problems.append(f"{t.label}: did not exit by itself (killed)")
    elif t.exit_code != 0:
        why = t.last_error() or "no error event"
        problems.append(f"{t.label}: exit code {t.exit_code} ({why})")
    elif not t.events or t.events[-1]["event"] != "done":
        problems.append(f"{t.label}: exit code 0 but its last event is not done")
    errors = [e for e in t.events if e["event"] == "error"]
    if errors and t.exit_code == 0:
        first = errors[0]
        problems.append(f"{t.label}: {len(errors)} error event(s), first {first.get('code')}: {first.get('reason')}")
    return problems


def events(t, name):
    return [event for event in t.events if event["event"] == name]
