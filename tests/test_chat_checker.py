"""The chat checker accepts a good transcript and rejects each kind of bad one."""
import copy

import pytest

from orchestrator.checks import check
from orchestrator.checks.chat import post_text
from orchestrator.runner import RoleTranscript
from orchestrator.spec import load_spec

NAMES = ["alice", "bob", "chloé"]
M = 3


def good_cell():
    roster = sorted(NAMES, key=str.encode)
    server = RoleTranscript("server", 0, "c", {}, [], exit_code=0, events=[
        {"event": "ready", "requests": "tcp://127.0.0.1:1", "broadcasts": "tcp://127.0.0.1:2"},
        {"event": "done", "requests": 12, "rejected": 0},
    ])
    clients = []
    for index, name in enumerate(NAMES):
        events = [{"event": "ready", "handle": name}]
        events += [{"event": "sent", "text": post_text(name, i), "roster": roster} for i in range(1, M + 1)]
        # Interleave senders, as a real cell does; each sender's own order is kept.
        for i in range(1, M + 1):
            events += [{"event": "received", "handle": sender, "text": post_text(sender, i)} for sender in NAMES]
        events.append({"event": "done", "sent": M, "received": M * len(NAMES)})
        clients.append(RoleTranscript("client", index, "vb", {"name": name, "count": M}, [], exit_code=0, events=events))
    return [server] + clients


def received(transcript):
    return [e for e in transcript.events if e["event"] == "received"]


@pytest.fixture
def spec():
    return load_spec("chat")


def test_a_good_transcript_passes(spec):
    assert check(spec, good_cell()) == []


def problems_after(spec, change):
    cell = copy.deepcopy(good_cell())
    change(cell)
    return check(spec, cell)


def test_a_missing_post_is_reported(spec):
    def drop(cell):
        cell[2].events.remove(received(cell[2])[4])
    [problem] = problems_after(spec, drop)
    assert "client 1 (vb): missing 1 of 3 posts from bob" in problem


def test_a_duplicated_post_is_reported(spec):
    def duplicate(cell):
        cell[1].events.insert(3, dict(received(cell[1])[0]))
    problems = problems_after(spec, duplicate)
    assert any("received 'alice #1: héllo wörld 🌍' from alice 2 times" in p for p in problems), problems


def test_reordered_posts_are_reported(spec):
    def swap(cell):
        events = cell[3].events
        first, second = [i for i, e in enumerate(events) if e.get("handle") == "alice" and e["event"] == "received"][:2]
        events[first], events[second] = events[second], events[first]
    [problem] = problems_after(spec, swap)
    assert "client 2 (vb): posts from alice out of order" in problem


def test_a_foreign_text_is_reported(spec):
    def forge(cell):
        received(cell[1])[0]["text"] = "alice #9: forged"
    problems = problems_after(spec, forge)
    assert any("a post alice never sent: 'alice #9: forged'" in p for p in problems), problems


def test_a_foreign_handle_is_reported(spec):
    def stranger(cell):
        cell[1].events.insert(1, {"event": "received", "handle": "mallory", "text": "hi"})
    [problem] = problems_after(spec, stranger)
    assert "unknown handle 'mallory'" in problem


def test_a_roster_without_every_client_is_reported(spec):
    def shrink(cell):
        cell[1].events[1]["roster"] = ["alice", "bob"]
    [problem] = problems_after(spec, shrink)
    assert "lacks chloé" in problem


def test_an_unsorted_roster_is_reported(spec):
    def unsort(cell):
        cell[1].events[1]["roster"] = ["chloé", "alice", "bob"]
    [problem] = problems_after(spec, unsort)
    assert "not sorted by UTF-8 bytes" in problem


def test_a_wrong_sent_text_is_reported(spec):
    def misspell(cell):
        cell[1].events[2]["text"] = "alice #2: hello world"
    [problem] = problems_after(spec, misspell)
    assert "number 2 is 'alice #2: hello world'" in problem


def test_a_failed_role_is_reported_with_its_error(spec):
    def crash(cell):
        cell[0].exit_code = 1
        cell[0].events.append({"event": "error", "code": "bind", "reason": "address in use"})
    problems = problems_after(spec, crash)
    assert "server 0 (c): exit code 1 (bind: address in use)" in problems


def test_error_events_fail_a_cell_even_on_exit_0(spec):
    def complain(cell):
        cell[1].events.insert(1, {"event": "error", "code": "malformed-broadcast", "reason": "3 frames"})
    [problem] = problems_after(spec, complain)
    assert "1 error event(s), first malformed-broadcast" in problem


def test_stdout_that_is_not_json_is_reported(spec):
    def chatter(cell):
        cell[2].events.insert(0, {"event": "_not-an-event", "line": "Hello from bob"})
    [problem] = problems_after(spec, chatter)
    assert "not a JSON event: 'Hello from bob'" in problem


def test_a_killed_role_is_reported(spec):
    def kill(cell):
        cell[3].exit_code = None
    assert "client 2 (vb): did not exit by itself (killed)" in problems_after(spec, kill)


# --- across a server restart (PROTOCOL.md, "Restarts: Lazy Pirate and rejoining") -------------


def post(sender, number):
    return {"handle": sender, "text": post_text(sender, number)}


def restart_cell(before=2):
    """Each client posts M texts; the first server posts everyone's first `before`, then dies;
    the second one posts the rest. Each client received all of them, rejoining in between."""
    roster = sorted(NAMES, key=str.encode)
    first = [post(s, i) for i in range(1, before + 1) for s in NAMES]
    second = [post(s, i) for i in range(before + 1, M + 1) for s in NAMES]
    killed = RoleTranscript("server", 0, "c", {}, [], exit_code=-9, killed="killed with SIGKILL", events=[
        {"event": "ready", "requests": "tcp://127.0.0.1:1", "broadcasts": "tcp://127.0.0.1:2"},
    ] + [dict(p, event="posted") for p in first])
    again = RoleTranscript("server", 0, "c", {}, [], exit_code=0, restarted=True, events=[
        {"event": "ready", "requests": "tcp://127.0.0.1:1", "broadcasts": "tcp://127.0.0.1:2"},
        {"event": "error", "code": "unknown-handle", "reason": "join first"},
    ] + [{"event": "joined", "handle": n} for n in NAMES] + [dict(p, event="posted") for p in second]
      + [{"event": "done", "requests": 12, "rejected": 1}])
    clients = []
    for index, name in enumerate(NAMES):
        events = [{"event": "ready", "handle": name}]
        events += [{"event": "sent", "text": post_text(name, i), "roster": roster} for i in range(1, M + 1)]
        events += [dict(p, event="received") for p in first]
        events.append({"event": "rejoined", "handles": roster})
        events += [dict(p, event="received") for p in second]
        events.append({"event": "done", "sent": M, "received": M * len(NAMES)})
        clients.append(RoleTranscript("client", index, "vb", {"name": name, "count": M}, [], exit_code=0, events=events))
    return [killed, again] + clients


def restart_problems(spec, change=None):
    cell = copy.deepcopy(restart_cell())
    if change:
        change(cell)
    return check(spec.with_restart("server"), cell)


def test_a_restart_that_lost_nothing_passes(spec):
    assert restart_problems(spec) == []


def test_the_tail_of_the_killed_server_may_be_lost_if_reported_missed(spec):
    """bob #2 and chloé #2 were still in the dying server's queue for client 0 (alice)."""
    def lose_tail(cell):
        alice = cell[2].events
        for lost in (post("bob", 2), post("chloé", 2)):
            alice.remove(dict(lost, event="received"))
        at = alice.index(next(e for e in alice if e["event"] == "rejoined"))
        alice[at + 1:at + 1] = [{"event": "missed", "handle": "bob", "number": 2}, {"event": "missed", "handle": "chloé", "number": 2}]
    assert restart_problems(spec, lose_tail) == []


def test_a_loss_not_at_the_tail_fails(spec):
    """Losing alice #1 but receiving the killed server's later posts breaks the in-order stream."""
    def lose_early(cell):
        cell[3].events.remove(dict(post("alice", 1), event="received"))
        cell[3].events.insert(-1, {"event": "missed", "handle": "alice", "number": 1})
    [problem] = restart_problems(spec, lose_early)
    assert "client 1 (vb): received 8 posts across the restart, wrong" in problem


def test_a_post_of_the_second_server_may_not_be_lost(spec):
    def lose(cell):
        cell[4].events.remove(dict(post("bob", 3), event="received"))
        cell[4].events.insert(-1, {"event": "missed", "handle": "bob", "number": 3})
    problems = restart_problems(spec, lose)
    assert any("it never got ('bob', 'bob #3: héllo wörld 🌍'), which the second server posted" in p for p in problems)
    assert any("reported 'bob #3: héllo wörld 🌍' missed, which no dying server took with it" in p for p in problems)


def test_a_lost_post_must_be_reported_missed(spec):
    def lose_silently(cell):
        cell[2].events.remove(dict(post("chloé", 2), event="received"))
    [problem] = restart_problems(spec, lose_silently)
    assert "client 0 (vb): neither received nor reported missed 1 post(s) of chloé" in problem


def test_a_post_twice_needs_its_sender_to_have_retried_it(spec):
    def twice(cell, retried):
        # bob's #3: the second server posted it again, as if bob resent it after a lost reply.
        cell[1].events.insert(-1, dict(post("bob", 3), event="posted"))
        for client in cell[2:]:
            client.events.insert(-1, dict(post("bob", 3), event="received"))
        if retried:
            cell[3].events.insert(3, {"event": "retried", "text": post_text("bob", 3)})
    problems = restart_problems(spec, lambda cell: twice(cell, False))
    assert any("received 'bob #3: héllo wörld 🌍' 2 times, though bob sent it 1 time(s)" in p for p in problems)
    assert restart_problems(spec, lambda cell: twice(cell, True)) == []


def test_a_client_that_never_rejoined_fails(spec):
    def no_rejoin(cell):
        cell[2].events.remove(next(e for e in cell[2].events if e["event"] == "rejoined"))
    [problem] = restart_problems(spec, no_rejoin)
    assert "client 0 (vb): reported rejoined 0 times, not once (it joined the new server without rejoining" in problem


def test_other_errors_of_the_second_server_fail(spec):
    def bad(cell):
        cell[1].events.insert(1, {"event": "error", "code": "frame-count", "reason": "3 frames"})
    [problem] = restart_problems(spec, bad)
    assert "server 0 (c), restarted: 1 error event(s), first frame-count" in problem


def test_without_a_restart_missed_and_rejoined_fail_but_a_retried_duplicate_passes(spec):
    def missed(cell):
        cell[1].events.insert(-1, {"event": "missed", "handle": "bob", "number": 2})
    assert "though no server was restarted" in problems_after(spec, missed)[0]

    def retried(cell):
        cell[2].events.insert(2, {"event": "retried", "text": post_text("bob", 1)})
        for client in cell[1:]:
            client.events.insert(-1, dict(post("bob", 1), event="received"))
    assert problems_after(spec, retried) == []


def test_a_stale_copy_of_a_resent_post_may_reach_only_some_clients(spec):
    """alice's #3 went out on the REQ she then threw away; that copy reached the new server after
    she rejoined, before bob had: bob missed it, and got the copy she sent again."""
    def stale_copy(cell, retried=True):
        again = cell[1].events
        again.insert(next(i for i, e in enumerate(again) if e["event"] == "posted"), dict(post("alice", 3), event="posted"))
        for client in (cell[2], cell[4]):
            at = client.events.index(next(e for e in client.events if e["event"] == "rejoined"))
            client.events.insert(at + 1, dict(post("alice", 3), event="received"))
        if retried:
            cell[2].events.insert(3, {"event": "retried", "text": post_text("alice", 3)})
    assert restart_problems(spec, stale_copy) == []
    problems = restart_problems(spec, lambda cell: stale_copy(cell, retried=False))
    assert any("client 1 (vb): received 9 posts across the restart, wrong" in p for p in problems), problems
