"""Checks one perf measurement (examples/perf/PROTOCOL.md): the role that times reports one
complete result for the size and count it was asked for."""
import math

from . import events

FIELDS = {"thr-sink": "msg_per_s", "inproc-thr": "msg_per_s", "tcp-sink": "msg_per_s", "lat-ping": "latency_us", "tcp-ping": "latency_us"}


def check(spec, transcripts):
    problems = []
    for t in transcripts:
        if t.role not in FIELDS:
            continue
        results = events(t, "result")
        if len(results) != 1:
            problems.append(f"{t.label}: {len(results)} result events, expected 1")
            continue
        result = results[0]
        for key in ("size", "count"):
            if result.get(key) != int(t.flags[key]):
                problems.append(f"{t.label}: result {key} {result.get(key)}, asked for {t.flags[key]}")
        for key in ("seconds", FIELDS[t.role]) + (("mbit_per_s",) if FIELDS[t.role] == "msg_per_s" else ()):
            value = result.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                problems.append(f"{t.label}: result {key} is {value!r}, not a finite number")
    return problems
