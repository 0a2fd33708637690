"""Checks one valuation cell (examples/valuation/PROTOCOL.md, "What the orchestrator checks")."""
from collections import Counter

from . import events
from .ticker import GOLDEN, MASK, splitmix64


def order_value(seed, order_id):
    """The value of one order, recomputed here independently of any language."""
    z1 = splitmix64(seed ^ ((order_id * GOLDEN) & MASK))
    z2 = splitmix64(z1)
    z3 = splitmix64(z2)
    quantity, cents = 1 + (z2 >> 1) % 1000, 100 + z3 % 100000
    return quantity * cents * (1 if z2 % 2 == 0 else -1)


def check(spec, transcripts):
    problems = []
    sinks = [t for t in transcripts if t.role == "sink"]
    sink = sinks[-1] if sinks else None  # with --restart sink: the second run, the one that completes
    restarted = len(sinks) > 1  # the first run was killed mid-batch: its credits are gone with it
    sources = [t for t in transcripts if t.role == "source"]
    workers = [t for t in transcripts if t.role == "worker"]
    if sink is None or not sources:
        return problems
    count, seed = int(sink.flags["count"]), int(sources[0].flags["seed"])
    complete = events(sink, "complete")
    if not complete:
        return [f"{sink.label}: the batch never completed ({len(events(sink, 'result'))} of {count} results)"]
    complete = complete[0]
    counted = [e.get("id") for e in events(sink, "result")]
    if sorted(counted) != list(range(1, count + 1)):
        duplicates = [i for i, n in Counter(counted).items() if n > 1]
        problems.append(f"{sink.label}: counted {len(set(counted))} distinct ids of {count}, duplicates {duplicates[:5]}")
    total = sum(order_value(seed, i) for i in range(1, count + 1))
    if complete.get("total") != total:
        problems.append(f"{sink.label}: total {complete.get('total')}, expected {total}")

    credited = complete.get("workers") or {}
    if sum(credited.values()) != count:
        problems.append(f"{sink.label}: the workers are credited {sum(credited.values())} orders, not {count}")
    for t in workers:
        priced = len(events(t, "priced"))
        mine = credited.get(t.flags["name"], 0)
        # A worker sends a result, then reports `priced`: one killed in between has one result
        # credited that it never reported.
        if (mine > priced + (1 if t.killed else 0)) if (t.killed or restarted) else (mine != priced):
            problems.append(f"{t.label}: priced {priced} orders, the sink credits it {mine}")
        if count >= 10 * len(workers) and not t.killed and priced == 0:
            problems.append(f"{t.label}: priced nothing out of {count} orders")

    # Every re-dispatched id was missing when the sink asked, and the source did send it again.
    have, asked = set(), set()
    for event in sink.events:
        if event["event"] == "result":
            have.add(event.get("id"))
        elif event["event"] == "resend":
            ids = set(event.get("ids") or [])
            if ids & have:
                problems.append(f"{sink.label}: re-dispatched ids it already had: {sorted(ids & have)[:5]}")
            asked |= ids
    if sorted(asked) != complete.get("resent"):
        problems.append(f"{sink.label}: complete lists resent {complete.get('resent')[:5]}..., its resend events {sorted(asked)[:5]}...")
    again = {i for t in sources for e in events(t, "resent") for i in e.get("ids") or []}
    if any(i not in again for i in asked if i in have):
        problems.append(f"{sources[0].label}: did not re-send every id the sink asked for")
    return problems
