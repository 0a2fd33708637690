"""Checks one ticker cell (examples/ticker/PROTOCOL.md, "What the orchestrator checks")."""
import struct


MASK = (1 << 64) - 1
SLACK = 0.002  # seconds: a timestamp is in whole milliseconds
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
    restart = restart_window(transcripts, "proxy")
    for t in transcripts:
        if t.role == "subscriber":
            problems += check_subscriber(t, window, restart=restart)
    return problems


def restart_window(transcripts, role):
    """(when the first run of `role` was killed, when its second run was started), wall-clock
    seconds, for a cell that restarted it (PROTOCOL.md, "Restarts"), or None. A restart that never
    started leaves the window open to the end."""
    killed = [t for t in transcripts if t.role == role and t.killed_at and not t.restarted]
    if not killed:
        return None
    again = [t.started_at for t in transcripts if t.role == role and t.restarted]
    return killed[0].killed_at, (again[0] if again else float("inf"))


def check_subscriber(t, window, subscribed=None, restart=None):
    """`subscribed`: the symbols it follows from the start (default: its --symbols); the desk's
    ticker agent starts with none and reports a `subscribed` for each. `restart`: the window in
    which a proxy was away (restart_window): one reported gap per symbol may straddle it."""
    flags = t.flags
    seed, count, switch_after = int(flags["seed"]), int(flags["count"]), int(flags.get("switch-after", 0))
    old, _, new = str(flags.get("switch") or "").partition(":")
    subscribed = set(str(flags["symbols"]).split(",")) if subscribed is None else set(subscribed)
    received, last, gone = {}, {}, set()
    stamps, gaps, reported = {}, set(), None  # each symbol's last tick's timestamp; symbols with a gap
    problems = []
    for event in t.events:
        kind = event["event"]
        if kind == "gap":
            reported = event
            continue
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
                problems += gap_problems(where, event, last[symbol], stamps[symbol], reported, restart, symbol in gaps)
                gaps.add(symbol)
            elif reported:
                problems.append(f"{where}: a gap event ({reported.get('after')} to {reported.get('next')}) where there was none")
            reported = None
            last[symbol], stamps[symbol] = sequence, event.get("timestamp")
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


def gap_problems(where, tick, before, stamp, reported, restart, again):
    """What is wrong with a jump in a symbol's sequence: a repeat, a gap not reported as such just
    before the tick, a gap without a restart, a second one, or one outside the restart's window."""
    sequence = tick.get("sequence")
    if not isinstance(sequence, int) or sequence <= before:
        return [f"{where} after #{before}: a repeat"]
    if not reported or (reported.get("symbol"), reported.get("after"), reported.get("next")) != (tick.get("symbol"), before, sequence):
        return [f"{where} after #{before}: a gap, not reported as one (gap event: {reported})"]
    if restart is None:
        return [f"{where} after #{before}: a gap, and nothing was restarted"]
    if again:
        return [f"{where} after #{before}: a second gap of the symbol"]
    # Straddling the restart, by the publisher's own clock (a tick's timestamp, in ms; the same
    # machine's clock as the orchestrator's): the tick before the gap came through the first proxy,
    # so it was published before the kill; the tick after it came through the second, so it was
    # published after that one started. (When a subscriber *read* them says nothing: its queue may
    # hold the first proxy's ticks long after the second is up.)
    after = tick.get("timestamp")
    if isinstance(stamp, int) and isinstance(after, int) and not (stamp / 1000 <= restart[0] + SLACK and after / 1000 >= restart[1] - SLACK):
        return [f"{where} after #{before}: a gap that does not straddle the restart (the tick before it was published "
                f"{stamp / 1000 - restart[0]:+.3f} s after the kill, the tick after it {after / 1000 - restart[1]:+.3f} s after the "
                f"second proxy started)"]
    return []
