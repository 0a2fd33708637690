"""Checkers: each example's module verifies the transcripts of one cell; this module holds the
checks that the launch contract makes the same for every example."""
import importlib
from dataclasses import replace

from ..security import INTRUDER

# A socket monitor's events (examples/README.md, "Socket monitors"), the same names in every language.
SOCKET_EVENTS = ("connected", "connect-delayed", "connect-retried", "listening", "bind-failed", "accepted",
                 "accept-failed", "closed", "close-failed", "disconnected", "handshake-succeeded",
                 "handshake-failed-no-detail", "handshake-failed-protocol", "handshake-failed-auth")


def check(spec, transcripts):
    """Every problem found in one cell's transcripts, as sentences; an empty list means pass."""
    problems = []
    # Errors a restarted role may report, by role: the example's checker verifies them instead.
    allowed = getattr(checker(spec.example), "RESTART_ERRORS", {})
    for t in transcripts:
        if t.role != INTRUDER:  # an intruder is meant to fail: checks/security.py says how
            problems += contract_problems(t, allowed.get(t.role, ()) if t.restarted else ())
        problems += monitor_problems(spec, t)
    # The examples' checks read the role's own events: a monitor's come from another thread, at
    # any point of the stream, and say nothing of the example.
    unmonitored = [replace(t, events=[e for e in t.events if e["event"] != "socket-event"]) for t in transcripts]
    problems += checker(spec.example).check(spec, unmonitored)
    if spec.secure:
        problems += checker("security").check(spec, unmonitored)
    return problems


def monitor_problems(spec, t):
    """socket-events only with --monitor on, each naming one of the role's endpoint flags and a
    kind of the contract's table."""
    found = events(t, "socket-event")
    if found and not spec.monitor:
        return [f"{t.label}: {len(found)} socket-event(s) without --monitor on"]
    for event in found:
        if event.get("kind") not in SOCKET_EVENTS:
            return [f"{t.label}: a socket-event of unknown kind {event.get('kind')!r}"]
        if event.get("socket") not in t.flags or not isinstance(event.get("endpoint"), str):
            return [f"{t.label}: a socket-event for {event.get('socket')!r}, which is none of its endpoint flags, "
                    f"or without an endpoint: {event}"]
        if not (event.get("value") is None or isinstance(event.get("value"), int)):
            return [f"{t.label}: a socket-event whose value is neither a number nor null: {event}"]
    return []


def notes(spec, transcripts):
    """What a passing cell could not show, and why; shown with the grid."""
    return checker("security").notes(spec, transcripts) if spec.secure else []


def checker(name):
    """The module of checks/ for an example, or for what security adds to any example. (Imported
    when first needed: each of them uses `events` below.)"""
    return importlib.import_module(f"{__name__}.{name}")


def contract_problems(t, allowed=()):
    """What the launch contract requires of any role: JSON events only, exit 0 after `done`, no
    `error` but those of an `allowed` code."""
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
    errors = [e for e in t.events if e["event"] == "error" and e.get("code") not in allowed]
    if errors and t.exit_code == 0:
        first = errors[0]
        problems.append(f"{t.label}: {len(errors)} error event(s), first {first.get('code')}: {first.get('reason')}")
    return problems


def events(t, name):
    return [event for event in t.events if event["event"] == name]
