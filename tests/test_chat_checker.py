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
