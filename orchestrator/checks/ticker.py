"""Checks one ticker cell (examples/ticker/PROTOCOL.md, "What the orchestrator checks")."""
import struct


MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def splitmix64(x):
    z = (x + GOLDEN) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & MASK
    return h


def price(seed, symbol, sequence):
    """The price the publisher must have sent, recomputed here independently of any language."""
    cents = 1000 + splitmix64(seed ^ fnv1a64(symbol.encode()) ^ ((sequence * GOLDEN) & MASK)) % 99001
    return struct.unpack(">d", struct.pack(">d", cents / 100))[0]


def run_window(transcripts):
    """The cell's run in milliseconds since the epoch, with a second of slack at each end: every
    tick's timestamp must lie within it."""
    starts = [t.started_at for t in transcripts if t.started_at]
    ends = [t.ended_at for t in transcripts if t.ended_at]
    return (min(starts) * 1000 - 1000, max(ends) * 1000 + 1000) if starts and ends else None


def check(spec, transcripts):
    problems = []
    window = run_window(transcripts)
    for t in transcripts:
        if t.role == "subscriber":
            problems += check_subscriber(t, window)
    return problems


def check_subscriber(t, window, subscribed=None):
    """`subscribed`: the symbols it follows from the start (default: its --symbols); the desk's
    ticker agent starts with none and reports a `subscribed` for each."""
    flags = t.flags
    seed, count, switch_after = int(flags["seed"]), int(flags["count"]), int(flags.get("switch-after", 0))
    old, _, new = str(flags.get("switch") or "").partition(":")
    subscribed = set(str(flags["symbols"]).split(",")) if subscribed is None else set(subscribed)
    received, last, gone = {}, {}, set()
    problems = []
    for event in t.events:
        kind = event["event"]
        if kind == "unsubscribed":
            subscribed.discard(event.get("symbol"))
            gone.add(event.get("symbol"))
        elif kind == "subscribed":
            subscribed.add(event.get("symbol"))
        elif kind == "tick":
            symbol, sequence = event.get("symbol"), event.get("sequence")
            where = f"{t.label}: {symbol} #{sequence}"
            if symbol not in subscribed:
                reason = "after unsubscribing from it" if symbol in gone else "without subscribing to it"
                problems.append(f"{where} delivered {reason}")
                continue
            if symbol in last and sequence != last[symbol] + 1:
                problems.append(f"{where} after #{last[symbol]}: a gap or a repeat")
            last[symbol] = sequence
            received[symbol] = received.get(symbol, 0) + 1
            if event.get("price") != price(seed, symbol, sequence):
                problems.append(f"{where}: price {event.get('price')}, expected {price(seed, symbol, sequence)}")
            stamp = event.get("timestamp")
            if window and not (isinstance(stamp, int) and window[0] <= stamp <= window[1]):
                problems.append(f"{where}: timestamp {stamp} outside the cell's run")
    if old:
        if not any(e["event"] == "unsubscribed" and e.get("symbol") == old for e in t.events):
            problems.append(f"{t.label}: never switched from {old} to {new}")
        elif received.get(old) != switch_after:
            problems.append(f"{t.label}: {received.get(old, 0)} ticks of {old} before switching, expected {switch_after}")
    for symbol in sorted(subscribed):
        if received.get(symbol, 0) < count:
            problems.append(f"{t.label}: {received.get(symbol, 0)} ticks of {symbol}, expected at least {count}")
    return problems[:20]
