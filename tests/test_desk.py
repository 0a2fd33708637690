"""The trading desk in every language: its command line, its shut-down on a timeout and on SIGTERM,
garbage from a peer of each agent (through a tap in the middle of the real services' streams), a
worker killed mid-trade; and the desk checker against transcripts broken on purpose."""
import itertools
import struct
import threading
import time
from collections import Counter

import pytest
import zmq

from conftest import first_language, languages
from orchestrator.checks.desk import AGENTS, check_order
from orchestrator.matrix import evaluate, new_run_dir
from orchestrator.runner import Fault, RoleTranscript
from orchestrator.spec import load_spec

WAIT = 30
NOWHERE = "tcp://127.0.0.1:9"  # the discard port: nothing listens there, a connect just retries


def desk_flags(**changes):
    flags = {"name": "d1", "chat-requests": NOWHERE, "chat-broadcasts": NOWHERE, "ticks": NOWHERE, "snapshot": NOWHERE,
             "updates": NOWHERE, "collector": NOWHERE, "orders": "tcp://127.0.0.1:*", "results": "tcp://127.0.0.1:*",
             "control": "tcp://127.0.0.1:*", "timeout": WAIT * 1000}
    flags.update(changes)
    return flags


def services_language(spec, column="server"):
    """The first language that can play `column` of `spec` with every role that runs in its
    language (`language_of`): for the desk, the chat server, the ticker publisher, the query
    engine and the valuation workers."""
    return first_language(spec.programs({role.name: set() for role in spec.roles if column in (role.name, role.language_of)}))


def agent_events(role, agent):
    return [e for e in role.t.events if e.get("agent") == agent]


def assert_every_agent_stopped(role):
    """Each agent's first event is ready and its last stopped, the desk's ready after all four."""
    for agent in AGENTS:
        mine = [e["event"] for e in agent_events(role, agent)]
        assert mine[0] == "ready" and mine[-1] == "stopped" and mine.count("stopped") == 1, (agent, mine)
    own = [e["event"] for e in role.t.events if "agent" not in e]
    assert own[0] == "ready", own
    last_stopped = max(i for i, e in enumerate(role.t.events) if e["event"] == "stopped")
    assert all(i > last_stopped for i, e in enumerate(role.t.events) if "agent" not in e and e["event"] in ("done", "error")
               and e.get("code") != "bad-command")


@pytest.mark.parametrize("lang", languages("desk", "trader"))
@pytest.mark.parametrize(
    "changes",
    [
        {"name": "a b"},
        {"name": "x" * 33},
        {"follow": ""},
        {"follow": "AAPL,aapl"},
        {"forget": "IBM"},
        {"trade": -1},
        {"trade": 1000001},
        {"workers": 0},
        {"subtrees": "/prices/"},
        {"seed": -1},
        {"tick-count": 0},
        {"posts": "many"},
        {"no-such-flag": 1},
    ],
    ids=lambda changes: "-".join(f"{k}={v}" for k, v in changes.items())[:40],
)
def test_a_bad_command_line_exits_2_before_any_thread_starts(start_role, lang, changes):
    role = start_role(lang, "desk", "trader", **desk_flags(**changes))
    assert role.wait_exit(time.monotonic() + WAIT)
    assert role.t.exit_code == 2 and role.t.events == [], role.t.events[:3]


@pytest.mark.parametrize("lang", languages("desk", "trader"))
def test_at_its_timeout_the_desk_stops_every_agent_and_fails(start_role, lang):
    """No service anywhere: the agents connect and wait; the deadline stops them all, in order."""
    role = start_role(lang, "desk", "trader", **desk_flags(timeout=2000))
    assert role.wait_exit(time.monotonic() + WAIT)
    assert role.t.exit_code == 1, role.t.events[-3:]
    assert role.t.events[-1]["event"] == "error" and role.t.events[-1]["code"] == "timeout", role.t.events[-3:]
    assert_every_agent_stopped(role)
    ready = next(e for e in role.t.events if e["event"] == "ready" and "agent" not in e)
    assert all(ready[key].startswith("tcp://127.0.0.1:") and not ready[key].endswith(":*") for key in ("orders", "results", "control"))


@pytest.mark.parametrize("lang", languages("desk", "trader"))
def test_sigterm_stops_every_agent_and_the_desk_reports_done(start_role, lang):
    role = start_role(lang, "desk", "trader", **desk_flags())
    assert role.wait_event("ready", time.monotonic() + WAIT)
    started = time.monotonic()
    role.terminate()
    assert role.wait_exit(time.monotonic() + WAIT) and role.t.exit_code == 0, role.t.events[-3:]
    assert time.monotonic() - started < 5
    assert role.t.events[-1] == {"event": "done", "complete": False, "agents": list(AGENTS)}
    assert_every_agent_stopped(role)


# --- garbage from the peers of every agent ---------------------------------------------------


class Tap:
    """A peer in the middle of a PUB/SUB stream: an XSUB connected to the real publisher, an XPUB
    the role under test connects to; messages go down and subscriptions up, unchanged, and the test
    adds what it likes. Its sockets live in its own thread; the test talks to it over inproc."""

    count = itertools.count()

    def __init__(self, context, upstream):
        self.context, self.upstream = context, upstream
        self.control = f"inproc://tap-{next(self.count)}"
        self.inject_end = context.socket(zmq.PAIR)
        self.inject_end.bind(self.control)
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        assert self.ready.wait(WAIT)

    def run(self):
        xsub, xpub, pipe = (self.context.socket(kind) for kind in (zmq.XSUB, zmq.XPUB, zmq.PAIR))
        for sock in (xsub, xpub, pipe):
            sock.linger = 0
        xsub.connect(self.upstream)
        xpub.bind("tcp://127.0.0.1:*")
        self.endpoint = xpub.last_endpoint.decode()
        pipe.connect(self.control)
        self.ready.set()
        poller = zmq.Poller()
        for sock in (xsub, xpub, pipe):
            poller.register(sock, zmq.POLLIN)
        forward = {xsub: xpub, xpub: xsub, pipe: xpub}
        while not self.stopping.is_set():
            for sock, _ in poller.poll(100):
                forward[sock].send_multipart(sock.recv_multipart())
        for sock in (xsub, xpub, pipe):
            sock.close()

    def inject(self, frames):
        self.inject_end.send_multipart(frames)

    def close(self):
        self.stopping.set()
        self.thread.join()
        self.inject_end.close()


@pytest.fixture
def taps(context):
    made = []

    def tap(upstream):
        made.append(Tap(context, upstream))
        return made[-1]

    yield tap
    for t in made:
        t.close()


def start_services(start_role, lang):
    later = time.monotonic() + WAIT
    server = start_role(lang, "chat", "server", requests="tcp://127.0.0.1:*", broadcasts="tcp://127.0.0.1:*", timeout=WAIT * 1000)
    publisher = start_role(lang, "ticker", "publisher", ticks="tcp://127.0.0.1:*", subscribers=2, interval=10, seed=7,
                           timeout=WAIT * 1000)
    ticks = publisher.wait_event("ready", later)["ticks"]
    engine = start_role(lang, "query", "engine", snapshot="tcp://127.0.0.1:*", updates="tcp://127.0.0.1:*",
                        collector="tcp://127.0.0.1:*", ticks=ticks, timeout=WAIT * 1000)
    return server.wait_event("ready", later), ticks, engine.wait_event("ready", later)


def waited(role, wanted):
    event = role.wait_for(wanted, time.monotonic() + WAIT)
    assert event, role.t.events[-5:]
    return event


@pytest.mark.parametrize("lang", languages("desk", "trader"))
def test_garbage_to_every_agent_is_reported_by_that_agent_and_the_desk_still_finishes(start_role, context, taps, lang):
    """Real services (in the first language of the registry that has them all), with a tap in the
    middle of the chat broadcasts, the ticks and the query updates, and a forger among the workers:
    each agent reports its garbage with its own code, and the desk's scenario completes all the same."""
    services = services_language(load_spec("desk"))
    chat, ticks, engine = start_services(start_role, services)
    broadcasts, prices, updates = taps(chat["broadcasts"]), taps(ticks), taps(engine["updates"])
    desk = start_role(lang, "desk", "trader", **desk_flags(
        **{"chat-requests": chat["requests"], "chat-broadcasts": broadcasts.endpoint, "ticks": prices.endpoint,
           "snapshot": engine["snapshot"], "updates": updates.endpoint, "collector": engine["collector"],
           "follow": "AAPL,MSFT", "tick-count": 20, "posts": 3, "trade": 100, "workers": 2, "seed": 7}))
    ready = waited(desk, lambda e: e["event"] == "ready" and "agent" not in e)
    for index in range(2):  # throttled: the trade lasts about 0.5 s, so the forger's results land before it ends
        start_role(services, "valuation", "worker", orders=ready["orders"], results=ready["results"],
                   control=ready["control"], name=f"w{index}", rate=100, timeout=WAIT * 1000)
    waited(desk, lambda e: e["event"] == "roster" and e.get("agent") == "chat")  # after a broadcast came through
    broadcasts.inject([b"d1", b"three", b"frames"])
    broadcasts.inject([b"d1", b"\xff\xfe"])  # not UTF-8
    # A real AAPL tick first: it proves the subscription has reached the tap's XPUB, which would
    # drop what it has no subscriber for (the slow joiner, from the tap's side).
    waited(desk, lambda e: e["event"] == "tick" and e.get("symbol") == "AAPL")
    prices.inject([b"AAPL\0", struct.pack(">Q", 1)])  # 2 frames, not 4
    prices.inject([b"AAPL\0", bytes(8), bytes(8), bytes(7)])  # a 7-byte price
    waited(desk, lambda e: e["event"] == "started" and e.get("agent") == "valuation")
    forger = context.socket(zmq.PUSH)
    forger.linger = 0
    forger.connect(ready["results"])
    forger.send_multipart([b"result", b"forger", struct.pack(">Q", 1)])  # 3 frames
    forger.send_multipart([b"result", b"forger", struct.pack(">Q", 2), struct.pack(">q", 1)])  # a wrong value
    waited(desk, lambda e: e["event"] == "synced" and e.get("agent") == "query")  # its HUGZ came through, after /prices/
    updates.inject([b"/prices/AAPL", struct.pack(">Q", 1 << 40)])  # 2 frames
    updates.inject([b"/prices/AAPL", b"\0" * 3, b"", b"", b"1.00"])  # a 3-byte sequence
    assert desk.wait_exit(time.monotonic() + WAIT) and desk.t.exit_code == 0, desk.t.events[-5:]
    assert desk.t.events[-1] == {"event": "done", "complete": True, "agents": list(AGENTS)}
    codes = Counter((e.get("agent"), e["code"]) for e in desk.t.events if e["event"] == "error")
    assert codes == {("chat", "malformed-broadcast"): 2, ("ticker", "malformed-tick"): 2,
                     ("valuation", "malformed-result"): 1, ("valuation", "wrong-value"): 1,
                     ("query", "malformed-kvpub"): 2}, codes
    assert_every_agent_stopped(desk)
    forger.close()


@pytest.mark.parametrize("lang", languages("desk", "trader"))
def test_a_worker_killed_mid_trade_costs_the_desk_nothing(built, lang):
    """The desk's own cell, with worker 0 killed by SIGKILL after 50 orders: the quiet period
    re-dispatches what it took with it, and every check of the cell passes (the total exact)."""
    spec = load_spec("desk")
    services = services_language(spec)
    built[lang], built[services]
    spec = spec.with_parameters(rate=spec.parameters["fault_rate"], orders=spec.parameters["fault_orders"])
    result = evaluate(spec, {"desk": lang, "server": services}, built.registry, new_run_dir("desk"),
                      fault=Fault("worker", "priced", 50))
    assert result.status == "pass", result.problems
    [desk] = [t for t in result.transcripts if t.role == "desk"]
    [complete] = [e for e in desk.events if e.get("agent") == "valuation" and e["event"] == "complete"]
    assert complete["resent"], "the killed worker's orders were never sent again"
    assert [t.killed for t in result.transcripts if t.role == "worker"][0]


# --- the checker, against transcripts broken on purpose ---------------------------------------


def desk_transcript(events):
    return RoleTranscript("desk", 0, "python", {}, [], events=events, exit_code=0)


GOOD = (
    [{"event": "ready", "agent": agent} for agent in AGENTS]
    + [{"event": "ready", "name": "d1"}]
    + [{"event": "stopped", "agent": agent} for agent in AGENTS]
    + [{"event": "done", "complete": True, "agents": list(AGENTS)}]
)


def test_the_desk_checker_passes_a_good_start_and_stop():
    assert check_order(desk_transcript(GOOD)) == []


@pytest.mark.parametrize(
    "events, words",
    [
        (GOOD[:-1] + [{"event": "tick", "agent": "ticker"}] + GOOD[-1:], "ticker agent's last event is tick"),
        (GOOD[1:4] + GOOD[4:5] + GOOD[0:1] + GOOD[5:], "ready before its chat agent"),
        (GOOD[:5] + GOOD[6:], "chat agent's last event is ready"),
        (GOOD[:-1] + [{"event": "done", "complete": False, "agents": list(AGENTS)}], "complete False"),
        (GOOD[:-1] + [{"event": "done", "complete": True, "agents": ["chat"]}], "names the agents"),
        (GOOD[:-2] + GOOD[-1:] + GOOD[-2:-1], "done before the query agent stopped"),
    ],
    ids=["event-after-stopped", "desk-ready-first", "agent-never-stopped", "incomplete", "agents-missing", "done-early"],
)
def test_the_desk_checker_rejects_a_desk_that(events, words):
    problems = check_order(desk_transcript(events))
    assert any(words in problem for problem in problems), problems
