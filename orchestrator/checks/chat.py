"""Checks one chat cell (examples/chat/PROTOCOL.md, "What the orchestrator checks")."""
from collections import Counter, defaultdict

from . import events


def post_text(name, number):
    """Text number `number` (from 1) that the client called `name` posts; PROTOCOL.md, client step 5."""
    return f"{name} #{number}: héllo wörld 🌍"


def utf8_sorted(handles):
    return sorted(handles, key=lambda handle: handle.encode("utf-8"))


# A restarted server may answer the posts of clients it does not know yet (PROTOCOL.md, "Restarts").
RESTART_ERRORS = {"server": {"unknown-handle"}}


def check(spec, transcripts):
    problems = []
    clients = [t for t in transcripts if t.role == "client"]
    servers = [t for t in transcripts if t.role == "server"]
    for server in servers:
        ready = events(server, "ready")
        if not ready or not all(isinstance(ready[0].get(key), str) for key in ("requests", "broadcasts")):
            problems.append(f"{server.label}: no ready event with both endpoints")
    names = [t.flags["name"] for t in clients]
    expected = {t.flags["name"]: texts_of(t) for t in clients}
    # Lazy Pirate sends a post again when its reply is lost: the only way a post reaches a server twice.
    retried = {t.flags["name"]: Counter(e.get("text") for e in events(t, "retried")) for t in clients}
    killed = next((t for t in servers if t.killed and not t.restarted), None)
    again = next((t for t in servers if t.restarted), None)

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
        if killed:
            problems += restart_problems(t, killed, again, expected, retried)
            continue
        for name in ("missed", "rejoined"):
            if events(t, name):
                problems.append(f"{t.label}: {len(events(t, name))} {name} event(s), first {events(t, name)[0]}, "
                                f"though no server was restarted")
        received = defaultdict(list)
        for event in events(t, "received"):
            received[event.get("handle")].append(event.get("text"))
        for sender in names:
            problems += compare_posts(t.label, sender, received.get(sender, []), expected[sender], retried.get(sender))
        for stranger in set(received) - set(names):
            problems.append(f"{t.label}: received {len(received[stranger])} post(s) from unknown handle {stranger!r}")
    return problems


def restart_problems(t, killed, again, expected, retried):
    """What client `t` received across a server restart, against PROTOCOL.md's rules: a prefix of
    the killed server's posts merged with all of the second server's, every other post reported
    `missed`, and nothing twice unless its sender sent it twice."""
    problems = []
    rejoined = events(t, "rejoined")
    if len(rejoined) != 1:
        joined_again = again and any(e.get("handle") == t.flags["name"] for e in events(again, "joined"))
        how = " (it joined the new server without rejoining: a keep-alive, PROTOCOL.md \"Not closed\")" if joined_again and not rejoined else ""
        problems.append(f"{t.label}: reported rejoined {len(rejoined)} times, not once{how}")
    got = [(e.get("handle"), e.get("text")) for e in events(t, "received")]
    first = [(e.get("handle"), e.get("text")) for e in events(killed, "posted")]
    second = [(e.get("handle"), e.get("text")) for e in events(again, "posted")] if again else []
    resent = {(sender, text) for sender, texts in retried.items() for text in texts}
    # The post the killed server was broadcasting when it died has no posted event; its sender resent it.
    dying = resent - set(first)
    # A resent post's other copy, still queued in the thrown-away REQ, may reach the second server
    # before every client has rejoined: some miss that copy, and get the one sent after rejoining.
    both = Counter(first + second)
    extra = {post for post in second if post in resent and both[post] > 1}
    if not merges(got, first, second, dying, extra):
        foreign = [post for post in got if post not in set(first) | set(second) | dying]
        lost = [post for post in second if post not in got]
        why = (f"a post neither server posted: {foreign[0]}" if foreign else
               f"it never got {lost[0]}, which the second server posted" if lost else
               "they are not a prefix of the killed server's posts merged with the second server's, in order")
        problems.append(f"{t.label}: received {len(got)} posts across the restart, wrong: {why}")
    counts = Counter(got)
    for (sender, text), n in counts.items():
        if n > 1 + retried.get(sender, Counter())[text]:
            problems.append(f"{t.label}: received {text!r} {n} times, though {sender} sent it {1 + retried.get(sender, Counter())[text]} time(s)")
    missed = {(e.get("handle"), post_text(e.get("handle"), e.get("number"))) for e in events(t, "missed")}
    for post in sorted(missed):
        if post in counts:
            problems.append(f"{t.label}: reported {post[1]!r} missed, yet received it")
        elif post not in first or post in second:
            problems.append(f"{t.label}: reported {post[1]!r} missed, which no dying server took with it")
    for sender, texts in expected.items():
        unaccounted = [text for text in texts if (sender, text) not in counts and (sender, text) not in missed]
        if unaccounted:
            problems.append(f"{t.label}: neither received nor reported missed {len(unaccounted)} post(s) of {sender}, "
                            f"first {unaccounted[0]!r}")
    return problems


def merges(got, first, second, dying, extra=()):
    """Whether `got` is a prefix of `first` (perhaps followed by one post of `dying`) merged with
    all of `second` but perhaps some copies of `extra`, each in its order: a SUB reads its old and
    new connections in turn."""
    def step_over_extra(states):  # a copy of `extra` this client may not have seen
        while skipped := {(a, b + 1, d) for a, b, d in states if b < len(second) and second[b] in extra} - states:
            states = states | skipped
        return states

    states = {(0, 0, False)}  # (posts of first taken, of second taken, the dying post taken)
    for post in got:
        states = step_over_extra(states)
        states = ({(a + 1, b, d) for a, b, d in states if not d and a < len(first) and first[a] == post}
                  | {(a, b + 1, d) for a, b, d in states if b < len(second) and second[b] == post}
                  | {(a, b, True) for a, b, d in states if not d and a == len(first) and post in dying})
        if not states:
            return False
    return any(b == len(second) for _, b, _ in step_over_extra(states))


def texts_of(client):
    """What a client posts: its --count texts numbered from 1, or what it says it was given (the
    desk's agent: its scenario's texts, then what its page asked it to post)."""
    texts = getattr(client, "texts", None)
    if texts is not None:
        return texts
    return [post_text(client.flags["name"], i + 1) for i in range(int(client.flags["count"]))]


def compare_posts(label, sender, got, want, retried=None):
    """Problems with the posts `label` received from `sender`: each exactly once, in sending order;
    once more for each time its sender `retried` it (Lazy Pirate: a reply was lost, not the post)."""
    problems = []
    counts = Counter(got)
    retried = retried or Counter()
    missing = [text for text in want if counts[text] == 0]
    duplicated = [text for text, n in counts.items() if n > 1 + retried[text] and text in want]
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
