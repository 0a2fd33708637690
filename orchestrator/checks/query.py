"""Checks one query cell (examples/query/PROTOCOL.md, "What the orchestrator checks"): every
facade's map is the engine's map at the facade's sequence, restricted to its subtrees."""
import math
from collections import Counter
from dataclasses import replace

from . import events
from ..spec import render
from .ticker import price

LATE_SLACK = 50  # a subtree's newest key may be this many updates older than the whole map


def decimal(cents):
    return f"{cents // 100}.{cents % 100:02d}".encode().hex()


def derive(stats, symbol, tick_price):
    """The four derived keys of one tick, as (key, value in hex), recomputed here on their own."""
    cents = math.floor(tick_price * 100 + 0.5)
    high, low, count = stats.get(symbol, (cents, cents, 0))
    stats[symbol] = high, low, count = max(high, cents), min(low, cents), count + 1
    return [(f"/prices/{symbol}", decimal(cents)), (f"/stats/{symbol}/high", decimal(high)),
            (f"/stats/{symbol}/low", decimal(low)), (f"/stats/{symbol}/ticks", str(count).encode().hex())]


def subtrees(t):
    return ["" if tree == "all" else tree for tree in str(t.flags["subtrees"]).split(",")]


def map_at(updates, sequence):
    """The engine's map after its update `sequence` (updates[i] has sequence i + 1)."""
    state = {}
    for update in updates[:sequence]:
        if update["value"]:
            state[update["key"]] = update["value"]
        else:
            state.pop(update["key"], None)
    return state


def check(spec, transcripts):
    engines = [t for t in transcripts if t.role == "engine"]
    if not engines:
        return []
    publishers = [t for t in transcripts if t.role == "publisher"]
    killed = next((t for t in engines if t.killed and not t.restarted), None)
    if killed:  # a restart cell: the facades end up following the second engine
        engine = next((t for t in engines if t.restarted), None)
        if engine is None:
            return []  # the runner already says why the engine did not start again
        problems = check_engine(killed, events(killed, "update"), publishers, killed=True)
        problems += check_engine(engine, events(engine, "update"), publishers, restarted=True)
    else:
        engine = engines[0]
        problems = check_engine(engine, events(engine, "update"), publishers)
    if problems:
        return problems  # every facade is compared with the engine's updates: they must be whole
    updates = events(engine, "update")
    role = next((r for r in spec.roles if r.name == "facade"), None)  # the desk's query agent is a facade too
    for t in transcripts:
        if t.role != "facade":
            continue
        resynced = [i for i, e in enumerate(t.events) if e["event"] == "resynced"]
        if len(resynced) != (1 if killed else 0):
            early = killed and not resynced and not check_facade(t, events(killed, "update"))
            problems.append(f"{t.label}: {len(resynced)} resynced event(s), "
                            + ("not exactly one across the engine's restart" if killed else "though the engine never restarted")
                            + (" (it was done with the first engine before the kill: the scenario must keep it busy longer)" if early else ""))
            continue
        if killed:  # its session with the second engine: what it reported after it started over
            t = replace(t, events=t.events[resynced[0] + 1:])
        problems += check_facade(t, updates) + check_writes(t, updates)
        if role and role.start_after and not killed:
            problems += check_late(t, int(render(str(role.start_after["count"]), spec.context(role, t.index, {}))))
    return problems


def check_engine(engine, updates, publishers, restarted=False, killed=False):
    """`restarted`: an engine started again mid-cell, whose ticks of each symbol start at the
    first one it received, not at the publisher's first. `killed`: SIGKILL may have cut its last
    tick short, between two of its updates."""
    problems = []
    sequences = [update.get("sequence") for update in updates]
    if sequences != list(range(1, len(updates) + 1)):
        wrong = next(i for i, s in enumerate(sequences, 1) if s != i)
        return [f"{engine.label}: update {wrong} has sequence {sequences[wrong - 1]}: sequences must be 1, 2, 3..."]
    done = events(engine, "done")
    if done and done[0].get("sequence") != len(updates):
        problems.append(f"{engine.label}: done says sequence {done[0].get('sequence')}, after {len(updates)} updates")
    if publishers:
        seed = int(publishers[0].flags["seed"])
        if restarted:
            starts, problems = tick_starts(engine, updates, seed)
            if problems:
                return problems
            problems += check_ticks(engine, updates, seed, starts)
        else:
            problems += check_ticks(engine, updates, seed, cut=killed)
    return problems


def tick_starts(engine, updates, seed, furthest=100000):
    """For an engine started mid-cell: symbol -> the publisher's sequence of the first tick it got.
    The first tick of a symbol sets its price in an empty map; every publisher tick with that
    price is a candidate, and the first whose run the engine's updates follow is the one."""
    starts = {}
    for symbol in sorted({u["key"].split("/")[2] for u in updates if u.get("cause") == "tick" and u["key"].startswith("/prices/")}):
        keys = {f"/prices/{symbol}", f"/stats/{symbol}/high", f"/stats/{symbol}/low", f"/stats/{symbol}/ticks"}
        own = [u for u in updates if u["key"] in keys]
        first = next(u["value"] for u in own if u["key"] == f"/prices/{symbol}")
        starts[symbol] = next((k for k in range(1, furthest + 1)
                               if decimal(math.floor(price(seed, symbol, k) * 100 + 0.5)) == first
                               and not check_ticks(engine, own, seed, {symbol: k})), None)
        if starts[symbol] is None:
            return starts, [f"{engine.label}: the ticks of {symbol} follow no run of the publisher's ticks"]
    return starts, []


def check_ticks(engine, updates, seed, starts=None, cut=False):
    """Replay the ticks: the engine's k-th tick of S is the publisher's tick of sequence k (the
    publisher starts once the engine is subscribed, and PUB/SUB loses nothing below the HWM);
    for an engine started again, its k-th tick of S is the publisher's starts[S] + k - 1. `cut`:
    the last tick's updates may stop short of its ticks key (the engine was killed)."""
    starts = starts or {}
    state, stats, burst = {}, {}, []
    for update in updates:
        if update.get("cause") == "tick":
            burst.append(update)  # applied to `state` once the tick's last key is in
            parts = update["key"].split("/")
            if len(parts) == 4 and parts[1] == "stats" and parts[3] == "ticks":
                symbol = parts[2]
                count = stats.get(symbol, (0, 0, 0))[2] + 1
                expected = [(key, value) for key, value in derive(stats, symbol, price(seed, symbol, starts.get(symbol, 1) + count - 1))
                            if state.get(key) != value]
                got = [(u["key"], u["value"]) for u in burst]
                if got != expected:
                    return [f"{engine.label}: tick {count} of {symbol} made {got}, expected {expected}"]
                state.update(got)
                burst = []
        elif update["value"]:
            state[update["key"]] = update["value"]
        else:
            state.pop(update["key"], None)
    return [f"{engine.label}: tick updates without their ticks key: {burst[:3]}"] if burst and not cut else []


def check_facade(t, updates):
    done = events(t, "done")
    if not done:
        return []  # the contract's checks already say it did not finish
    done = done[0]
    trees = subtrees(t)
    sequence = done.get("sequence")
    if not isinstance(sequence, int) or not 0 < sequence <= len(updates):
        return [f"{t.label}: done at sequence {sequence!r}, but the engine made {len(updates)} updates"]
    within = lambda key: any(key.startswith(tree) for tree in trees)  # noqa: E731
    expected = {key: value for key, value in map_at(updates, sequence).items() if within(key)}
    got = done.get("map") or {}
    problems = []
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    stale = sorted(key for key in set(got) & set(expected) if got[key] != expected[key])
    for what, keys in (("missing", missing), ("stale (deleted in the engine's map)", extra), ("stale", stale)):
        if keys:
            problems.append(f"{t.label}: at sequence {sequence}, {len(keys)} key(s) {what}: {keys[:3]}")

    # How many KVPUBs it had to apply: those of its subtrees above the watermark of the key's
    # subtrees, from the first it applied (before that, the engine's updates may have predated its
    # subscriptions) up to its sequence. One applied twice, or skipped, changes the count.
    marks = {e.get("subtree"): e.get("sequence", 0) for e in events(t, "synced")}
    if set(marks) != set(trees):
        return problems + [f"{t.label}: synced subtrees {sorted(marks)}, asked for {sorted(trees)}"]
    first = done.get("first")
    if not isinstance(first, int) or not 0 < first <= sequence:
        return problems + [f"{t.label}: done gives first {first!r}: the first update it applied, from 1 to its sequence"]
    owed = sum(1 for update in updates[:sequence] if within(update["key"]) and update["sequence"] >= first
               and update["sequence"] > max(marks[tree] for tree in trees if update["key"].startswith(tree)))
    applied = done.get("applied")
    if applied != owed:
        why = ("some twice" if isinstance(applied, int) and applied > owed else
               "it missed some: PUB/SUB drops what a subscriber 1000 messages behind (the high-water mark) cannot take")
        problems.append(f"{t.label}: applied {applied} updates from sequence {first} to {sequence}; "
                        f"the engine made {owed} in its subtrees above their watermarks ({why})")
    return problems


def check_writes(t, updates):
    """Every write came back as a `kvset` update; a write with a ttl, when the facade could see its
    own keys (it then waited for that), was deleted later by an `expired` one."""
    problems = []
    sees_own = any(f"/facades/{t.flags['name']}/".startswith(tree) for tree in subtrees(t))
    made = Counter((u["key"], u["value"]) for u in updates if u.get("cause") == "kvset")
    for wrote in events(t, "wrote"):
        key, value = wrote.get("key"), wrote.get("value")
        if not made[(key, value)]:
            problems.append(f"{t.label}: wrote {key}={value!r}, which the engine never applied")
            continue
        made[(key, value)] -= 1
        if wrote.get("ttl") and sees_own:
            at = next(u["sequence"] for u in updates if u.get("cause") == "kvset" and (u["key"], u["value"]) == (key, value))
            if not any(u["key"] == key and u["sequence"] > at and u.get("cause") == "expired" for u in updates):
                problems.append(f"{t.label}: {key} had a ttl of {wrote['ttl']} s, and never expired")
    return problems


def check_late(t, after):
    """A facade started after the engine's `after`-th update got a snapshot with real state."""
    synced = events(t, "synced")
    if after <= 0 or not synced:
        return []
    keys, highest = sum(e.get("keys", 0) for e in synced), max(e.get("sequence", 0) for e in synced)
    if keys == 0 or highest < after - LATE_SLACK:
        return [f"{t.label}: joined after update {after}, but its snapshots held {keys} keys up to sequence {highest}"]
    return []
