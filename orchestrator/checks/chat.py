"""Checks one chat cell (examples/chat/PROTOCOL.md, "What the orchestrator checks")."""
from collections import Counter, defaultdict

from . import events


def post_text(name, number):
    """Text number `number` (from 1) that the client called `name` posts; PROTOCOL.md, client step 5."""
    return f"{name} #{number}: héllo wörld 🌍"


def utf8_sorted(handles):
    return sorted(handles, key=lambda handle: handle.encode("utf-8"))


def check(spec, transcripts):
    problems = []
    clients = [t for t in transcripts if t.role == "client"]
    for server in (t for t in transcripts if t.role == "server"):
        ready = events(server, "ready")
        if not ready or not all(isinstance(ready[0].get(key), str) for key in ("requests", "broadcasts")):
            problems.append(f"{server.label}: no ready event with both endpoints")
    names = [t.flags["name"] for t in clients]
    expected = {t.flags["name"]: texts_of(t) for t in clients}

    for t in clients:
        me = t.flags["name"]
        sent = [event.get("text") for event in events(t, "sent")]
        if sent != expected[me]:
            problems.append(f"{t.label}: sent {len(sent)} texts {_first_difference(sent, expected[me])}")
        for event in events(t, "sent"):
            roster = event.get("roster")
            if not isinstance(roster, list) or not all(isinstance(h, str) for h in roster):
                problems.append(f"{t.label}: the reply to {event.get('text')!r} has no roster list")
                continue
            absent = [name for name in names if name not in roster]
            if absent:
                problems.append(f"{t.label}: the roster in the reply to {event.get('text')!r} lacks {', '.join(absent)}")
            if roster != utf8_sorted(roster):
                problems.append(f"{t.label}: roster {roster} is not sorted by UTF-8 bytes")

        received = defaultdict(list)
        for event in events(t, "received"):
            received[event.get("handle")].append(event.get("text"))
        for sender in names:
            problems += compare_posts(t.label, sender, received.get(sender, []), expected[sender])
        for stranger in set(received) - set(names):
            problems.append(f"{t.label}: received {len(received[stranger])} post(s) from unknown handle {stranger!r}")
    return problems


def texts_of(client):
    """What a client posts: its --count texts numbered from 1, or what it says it was given (the
    desk's agent: its scenario's texts, then what its page asked it to post)."""
    texts = getattr(client, "texts", None)
    if texts is not None:
        return texts
    return [post_text(client.flags["name"], i + 1) for i in range(int(client.flags["count"]))]


def compare_posts(label, sender, got, want):
    """Problems with the posts `label` received from `sender`: each exactly once, in sending order."""
    problems = []
    counts = Counter(got)
    missing = [text for text in want if counts[text] == 0]
    duplicated = [text for text, n in counts.items() if n > 1 and text in want]
    foreign = [text for text in counts if text not in want]
    if missing:
        problems.append(f"{label}: missing {len(missing)} of {len(want)} posts from {sender}, first {missing[0]!r}")
    if duplicated:
        problems.append(f"{label}: received {duplicated[0]!r} from {sender} {counts[duplicated[0]]} times")
    if foreign:
        problems.append(f"{label}: received a post {sender} never sent: {foreign[0]!r}")
    arrived = [text for text in dict.fromkeys(got) if text in want]
    if arrived != [text for text in want if text in arrived]:
        problems.append(f"{label}: posts from {sender} out of order: {arrived}")
    return problems


def _first_difference(got, want):
    for index, (g, w) in enumerate(zip(got, want)):
        if g != w:
            return f"(number {index + 1} is {g!r}, expected {w!r})"
    return f"(expected {len(want)})"
