"""The validation rules and the event order of every example's PROTOCOL.md that no other test checks
in every language: each rule is implemented by all six languages or by none. Test-made peers on 127.0.0.1 say what each rule is about; every wait is
bounded; no test sleeps.

An order the documents give between an event and a message (`posted` before the reply, the reply
before `joined`...) is checked with the role's stdout in the test's own hands (Gated): the launch
contract flushes every event line as it is written, so whatever a role wrote before it sent a
message is in the pipe by the time the message arrives; and a pipe the test has filled holds the
role's next line back (its write blocks) while the messages it sent before go out."""
import itertools
import json
import os
import select
import signal
import struct
import subprocess
import time

import pytest
import zmq

from conftest import languages
from orchestrator.checks.ticker import price
from orchestrator.checks.valuation import order_value
from orchestrator.runner import DIE_WITH_US
from test_chat_roles import WAIT, RogueServer, deadline, events_named, socket, start_server, stop
from test_desk import desk_flags
from test_query import seq, writer
from test_web import exchange, post, start_desk


# --- a role whose stdout the test reads itself ------------------------------------------------


class Gated:
    """One role under the launch contract, its stdout a pipe that the test reads when it likes
    (`drain`), and can fill (`hold`) so that the role's next event line waits, until `release`."""

    def __init__(self, language, example, role, flags, stderr_path):
        read_end, write_end = os.pipe()
        # The test's own way into the pipe: a file description of its own, so that O_NONBLOCK
        # stays the test's (the role's stdout blocks, as any stdout does).
        self.filler = os.open(f"/proc/self/fd/{write_end}", os.O_WRONLY | os.O_NONBLOCK)
        argv = language.command(example, role, flags)
        with open(stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", *argv] if DIE_WITH_US else argv,
                                            stdin=subprocess.DEVNULL, stdout=write_end, stderr=stderr,
                                            env=language.environment(), start_new_session=True)
        os.close(write_end)
        os.set_blocking(read_end, False)
        self.fd, self.rest, self.events, self.eof = read_end, b"", [], False

    def drain(self):
        """Take in every line the role has written so far; the events so far."""
        while not self.eof:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            self.eof = not chunk
            *lines, self.rest = (self.rest + chunk).split(b"\n")
            self.events += [json.loads(line) for line in lines if line.strip()]  # the filler is empty lines
        return self.events

    def wait_for(self, wanted, count=1):
        """The `count`-th event for which `wanted` holds, within WAIT seconds, or None."""
        end = deadline()
        while True:
            found = [event for event in self.drain() if wanted(event)]
            if len(found) >= count:
                return found[count - 1]
            if self.eof or time.monotonic() >= end:
                return None
            self.readable(min(0.1, max(0, end - time.monotonic())))

    def readable(self, seconds):
        """Wait up to `seconds` for the role's stdout to have something. poll(2), not select(2): a
        whole test run holds many descriptors, and select cannot watch one numbered 1024 or more."""
        waiter = select.poll()
        waiter.register(self.fd, select.POLLIN)
        waiter.poll(int(seconds * 1000))

    def hold(self):
        """Fill the pipe: from now on the role's next write to stdout waits for `release`."""
        self.drain()
        for size in (4096, 1):
            while True:
                try:
                    os.write(self.filler, b"\n" * size)
                except BlockingIOError:
                    break

    def release(self):
        self.drain()

    def terminate(self):
        os.killpg(self.process.pid, signal.SIGTERM)

    def wait_exit(self):
        """The exit code, every line read; None if the role is still running after WAIT seconds."""
        os.close(self.filler)  # no more holding: the pipe ends when the role's stdout closes
        self.filler = None
        end = deadline()
        while not self.eof and time.monotonic() < end:
            self.drain()
            self.readable(0.1)
        try:
            return self.process.wait(timeout=max(0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            return None

    def reap(self):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        os.close(self.fd)
        if self.filler is not None:
            os.close(self.filler)


@pytest.fixture
def gated(built, tmp_path):
    started = []

    def start(lang, example, role, **flags):
        started.append(Gated(built[lang], example, role, flags, tmp_path / f"{role}{len(started)}-{lang}.stderr"))
        return started[-1]

    yield start
    for role in started:
        role.reap()


def named(kind, **fields):
    """A test of events: an event `kind` with these fields."""
    return lambda e: e["event"] == kind and all(e.get(key) == value for key, value in fields.items())


def recv(sock, what):
    """The next message of `sock`, within WAIT seconds, or the test fails saying `what` never came."""
    if not sock.poll(WAIT * 1000):
        pytest.fail(f"{what} never came")
    return sock.recv_multipart()


def bound(context, kind, verbose=False):
    sock = context.socket(kind)
    sock.linger = 0
    if verbose:
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, repeats included
    sock.bind("tcp://127.0.0.1:*")
    return sock, sock.last_endpoint.decode()


def codes_of(events):
    return [e["code"] for e in events if e["event"] == "error"]


# --- chat: the server ---------------------------------------------------------------------------

# A request that breaks several rules is answered with the first of the table (PROTOCOL.md,
# "Server behaviour" 2): each case breaks a later rule too.
FIRST_BROKEN = [
    ("frame-count", [b"", b"", b""]),
    ("frame-count", [b"\xff", b"x" * 5000, b""]),
    ("empty-handle", [b"", b"x" * 5000]),
    ("empty-handle", [b"", b"\xff"]),
    ("handle-too-long", [b"\xff" * 33]),
    ("handle-too-long", [b"h" * 33, b""]),
    ("empty-text", [b"\xff", b""]),
    ("text-too-long", [b"\xff", b"x" * 4097]),
    ("invalid-utf8", [b"bob", b"\xff"]),  # bob never joined: invalid-utf8 comes before unknown-handle
]


@pytest.mark.parametrize("lang", languages("chat", "server"))
def test_the_chat_server_answers_the_first_broken_rule_of_its_table(start_role, context, lang):
    server, ready = start_server(start_role, lang)
    for number, (code, frames) in enumerate(FIRST_BROKEN, start=1):
        req = socket(context, zmq.REQ, ready["requests"])
        req.send_multipart(frames)
        assert req.recv_multipart() == [b"", code.encode()], f"request {frames!r:.60}"
        req.close()
        event = server.wait_for(lambda e: e["event"] == "error", deadline(), count=number)
        assert event and event["code"] == code, (frames[:3], event)
    done = stop(server)
    assert done["rejected"] == len(FIRST_BROKEN) and done["requests"] == 0


def join(req, handle):
    req.send_multipart([handle.encode()])
    return recv(req, f"the reply to [{handle}]")


def utf8_sorted(handles):
    return [handle.encode() for handle in sorted(handles, key=str.encode)]


def live_subscriber(context, ready, req):
    """A SUB whose subscription has reached a server of a far-off heartbeat: handles join one by one
    until a roster broadcast arrives (one goes out at once for each new handle); then every
    broadcast still on its way is read, up to the one listing every handle. The handles."""
    sub = socket(context, zmq.SUB, ready["broadcasts"])
    handles, end = [], deadline()
    for number in itertools.count():
        handles.append(f"s{number}")
        join(req, handles[-1])
        if sub.poll(100):
            break
        assert time.monotonic() < end, "no roster broadcast ever reached the test's SUB"
    while (frames := recv(sub, "a roster broadcast")) != [b""] + utf8_sorted(handles):
        assert frames[0] == b"", frames
    return sub, handles


@pytest.mark.parametrize("lang", languages("chat", "server"))
def test_the_chat_server_reports_and_sends_in_the_documented_order(gated, context, lang):
    """PROTOCOL.md, "Server behaviour" 2 and "Events": a post is broadcast, then `posted`, then its
    reply; a join's reply, then `joined`, then the roster broadcast, at once and only for a new
    handle; a rejected request's error reply, then its `error`."""
    server = gated(lang, "chat", "server", requests="tcp://127.0.0.1:*", broadcasts="tcp://127.0.0.1:*",
                   heartbeat=60000, timeout=WAIT * 4 * 1000)  # no heartbeat broadcast, no expiry, during the test
    ready = server.wait_for(named("ready"))
    assert ready, server.events
    req = socket(context, zmq.REQ, ready["requests"])
    sub, handles = live_subscriber(context, ready, req)

    # A keep-alive of a known handle broadcasts nothing; a new handle's roster goes out at once,
    # sorted by UTF-8 bytes, after `joined` (U+FF5E before U+1F600: UTF-16 would say otherwise).
    assert join(req, handles[0]) == utf8_sorted(handles)
    for handle in ("😀", "～"):
        join(req, handle)
        handles.append(handle)
        assert recv(sub, f"the roster broadcast of {handle}'s join") == [b""] + utf8_sorted(handles)
        assert any(named("joined", handle=handle)(e) for e in server.drain()), f"the roster broadcast of {handle} came before joined"

    # `posted` before the reply.
    req.send_multipart(["😀".encode(), b"first"])
    assert recv(req, "the reply to a post") == utf8_sorted(handles)
    assert any(named("posted", handle="😀", text="first")(e) for e in server.drain()), "the reply to a post came before posted"
    assert recv(sub, "the broadcast of a post") == ["😀".encode(), b"first"]

    # The broadcast before `posted`: it comes while `posted` is held back.
    server.hold()
    req.send_multipart([b"s0", b"second"])
    assert recv(sub, "the broadcast of a post whose posted event is held back") == [b"s0", b"second"]
    server.release()
    assert recv(req, "the reply to the post") == utf8_sorted(handles)
    assert server.wait_for(named("posted", handle="s0", text="second"))

    # The reply to a join before `joined`; the roster broadcast after it.
    server.hold()
    req.send_multipart([b"newcomer"])
    handles.append("newcomer")
    assert recv(req, "the reply to a join whose joined event is held back") == utf8_sorted(handles)
    server.release()
    assert server.wait_for(named("joined", handle="newcomer"))
    assert recv(sub, "the roster broadcast of the newcomer") == [b""] + utf8_sorted(handles)

    # A rejected request: its error reply before its `error`.
    server.hold()
    req.send_multipart([b""])
    assert recv(req, "the error reply to a request whose error event is held back") == [b"", b"empty-handle"]
    server.release()
    assert server.wait_for(named("error", code="empty-handle"))


@pytest.mark.parametrize("lang", languages("chat", "server"))
def test_the_chat_server_reports_an_expiry_before_that_heartbeats_roster(gated, context, lang):
    server = gated(lang, "chat", "server", requests="tcp://127.0.0.1:*", broadcasts="tcp://127.0.0.1:*",
                   heartbeat=50, expiry=1000, timeout=WAIT * 2 * 1000)
    ready = server.wait_for(named("ready"))
    sub = socket(context, zmq.SUB, ready["broadcasts"])
    req = socket(context, zmq.REQ, ready["requests"])
    assert join(req, "ghost") == [b"ghost"]
    while recv(sub, "a roster with ghost") != [b"", b"ghost"]:
        pass
    while recv(sub, "a roster without ghost") == [b"", b"ghost"]:
        pass
    # The first roster without ghost: its heartbeat reported the expiry before broadcasting it.
    assert any(named("expired", handle="ghost")(e) for e in server.drain()), "a roster without ghost came before expired"
    server.terminate()
    assert server.wait_exit() == 0


# --- chat: the client ---------------------------------------------------------------------------


def next_request(rogue, heartbeat):
    """As RogueServer.next_request, with another broadcast as the heartbeat."""
    end = deadline()
    while time.monotonic() < end:
        rogue.pub.send_multipart(heartbeat)
        if rogue.rep.poll(50):
            return rogue.rep.recv_multipart()
    pytest.fail("the client sent no request")


@pytest.mark.parametrize("lang", languages("chat", "client"))
def test_a_chat_client_reports_its_rosters_in_the_documented_order(start_role, context, lang):
    """PROTOCOL.md, client "Event order": the join's reply is a roster, so `roster` comes before
    `ready`; a roster is reported only when it differs from the last one seen; the client checks
    neither the order of a roster nor repeats in it; a post is exactly 2 frames."""
    rogue = RogueServer(context)
    client = start_role(lang, "chat", "client", name="alice", count=1, clients=2, **rogue.flags)
    assert rogue.next_request() == [b"alice"]
    rogue.rep.send_multipart([b"zed", b"alice"])  # not sorted: the client does not check the order
    for _ in range(3):  # the same roster three times: one `roster` event
        rogue.pub.send_multipart([b"", b"alice", b"alice", b"zed"])  # a repeat: not checked either
    rogue.pub.send_multipart([b"alice"])  # one frame that is not empty: no post (a post is exactly 2 frames)
    text = "alice #1: héllo wörld 🌍".encode()
    assert next_request(rogue, [b"", b"alice", b"alice", b"zed"]) == [b"alice", text]
    rogue.rep.send_multipart([b"alice", b"zed"])
    rogue.pub.send_multipart([b"alice", text])
    rogue.pub.send_multipart([b"zed", "zed #1: héllo wörld 🌍".encode()])
    assert client.wait_exit(deadline()) and client.t.exit_code == 0, client.t.events
    events = client.t.events
    names = [e["event"] for e in events]
    assert codes_of(events) == ["malformed-broadcast"], events
    replied = next(i for i, e in enumerate(events) if named("roster", handles=["zed", "alice"])(e))
    assert replied < names.index("ready"), "the roster of the join's reply is reported before ready"
    rosters = [e["handles"] for e in events if e["event"] == "roster"]
    assert all(a != b for a, b in zip(rosters, rosters[1:])), f"a roster reported twice in a row: {rosters}"
    assert rosters.count(["alice", "alice", "zed"]) == 1, rosters
    assert names[-1] == "done" and names.count("done") == 1


@pytest.mark.parametrize("lang", languages("chat", "client"))
def test_a_malformed_broadcast_still_ends_the_slow_joiners_wait(start_role, context, lang):
    """PROTOCOL.md, client step 6: a malformed broadcast is an `error`, neither `received` nor a
    roster, but it counts as the first broadcast of step 2."""
    rogue = RogueServer(context)
    client = start_role(lang, "chat", "client", name="alice", count=1, clients=1, **rogue.flags)
    assert next_request(rogue, [b"x", b"y", b"z"]) == [b"alice"]  # only malformed broadcasts before the join
    rogue.rep.send_multipart([b"alice"])
    text = "alice #1: héllo wörld 🌍".encode()
    assert next_request(rogue, [b""]) == [b"alice", text]
    rogue.rep.send_multipart([b"alice"])
    rogue.pub.send_multipart([b"alice", text])
    assert client.wait_exit(deadline()) and client.t.exit_code == 0, client.t.events
    errors = codes_of(client.t.events)
    assert errors and set(errors) == {"malformed-broadcast"}, errors
    names = [e["event"] for e in client.t.events]
    assert names.index("error") < names.index("ready"), "the malformed broadcast was not taken as the first one"
    assert [e["text"] for e in events_named(client, "received")] == [text.decode()]


@pytest.mark.parametrize("lang", languages("chat", "client"))
@pytest.mark.parametrize("retry", [300, 60000], ids=["retrying", "waiting"])
def test_a_chat_client_without_a_reply_at_its_deadline_fails_with_no_reply(start_role, context, lang, retry):
    """PROTOCOL.md, client: "A missing reply at the deadline is fatal: error with code no-reply,
    exit 1" (whether Lazy Pirate is still resending or the one wait outlasts the deadline)."""
    rogue = RogueServer(context)
    rogue.flags["timeout"] = 4000  # time enough to start and join on a loaded machine
    client = start_role(lang, "chat", "client", name="alice", retry=retry, **rogue.flags)
    assert rogue.next_request() == [b"alice"]  # and never an answer, while heartbeats go on
    end = deadline()
    while client.process.poll() is None and time.monotonic() < end:
        rogue.pub.send_multipart([b""])
        rogue.rep.poll(50)
    assert client.wait_exit(deadline())
    assert client.t.exit_code == 1, client.t.events[-3:]
    assert client.t.events[-1]["event"] == "error" and client.t.events[-1]["code"] == "no-reply", client.t.events[-3:]


@pytest.mark.parametrize("lang", languages("chat", "client"))
def test_an_error_reply_to_a_post_is_fatal(start_role, context, lang):
    """PROTOCOL.md, client: an error reply to the client's own request is `rejected`, exit 1, but
    `unknown-handle`; a post as well as a join."""
    rogue = RogueServer(context)
    client = start_role(lang, "chat", "client", name="alice", count=1, clients=1, **rogue.flags)
    assert rogue.next_request() == [b"alice"]
    rogue.rep.send_multipart([b"alice"])
    assert rogue.next_request()[0] == b"alice"
    rogue.rep.send_multipart([b"", b"text-too-long"])
    assert client.wait_exit(deadline())
    assert client.t.exit_code == 1
    assert client.t.events[-1]["event"] == "error" and client.t.events[-1]["code"] == "rejected", client.t.events[-3:]
    assert "text-too-long" in client.t.events[-1]["reason"]
    assert not events_named(client, "sent")


# --- ticker -----------------------------------------------------------------------------------


def good_tick(seed, symbol, sequence):
    now = int(time.time() * 1000)
    return [symbol.encode() + b"\0", struct.pack(">Q", sequence), struct.pack(">q", now), struct.pack(">d", price(seed, symbol, sequence))]


def rogue_publisher(context):
    xpub, endpoint = bound(context, zmq.XPUB)
    xpub.rcvtimeo = WAIT * 1000
    return xpub, endpoint


def wait_subscription(xpub, topic):
    end = deadline()
    while time.monotonic() < end:
        if xpub.poll(100) and xpub.recv() == b"\x01" + topic:
            return
    pytest.fail(f"no subscription to {topic!r} reached the rogue publisher")


@pytest.mark.parametrize("lang", languages("ticker", "subscriber"))
def test_a_subscriber_checks_frame_0_and_every_size_first_and_reports_each_gap_before_its_tick(start_role, context, lang):
    """PROTOCOL.md, subscriber step 2: frame 0 is 2 to 9 bytes, A-Z then a NUL (the SUB filter
    lets through anything that begins with a subscription); frames 1-3 are 8 bytes; a sequence of
    2^63 or more is malformed before its price is looked at. A gap is reported, then its tick, with
    `after` the last sequence received, even a lower one."""
    xpub, endpoint = rogue_publisher(context)
    subscriber = start_role(lang, "ticker", "subscriber", ticks=endpoint, name="ana", symbols="GOOG", count=4, seed=7,
                            timeout=WAIT * 1000)
    wait_subscription(xpub, b"@ana")
    body = good_tick(7, "GOOG", 1)[1:]
    bad = [
        [b"@ana"] + body,  # it passes the filter of the subscriber's own topic
        [b"GOOG\0X"] + body,  # not ending in NUL
        [b"GOOG\0\0"] + body,  # a NUL among the letters
        [b"GOOG\0ABCD\0"] + body,  # 10 bytes
        [b"GOOG\0", body[0], b"\0" * 7, body[2]],  # a 7-byte timestamp
        good_tick(7, "GOOG", 1)[:3] + [b"\0" * 8, b"extra"],  # 5 frames
        good_tick(7, "GOOG", 1 << 63)[:3] + [struct.pack(">d", 1.5)],  # malformed before wrong-price
    ]
    for frames in bad:
        xpub.send_multipart(frames)
    for sequence in (1, 3, 2, 4):
        xpub.send_multipart(good_tick(7, "GOOG", sequence))
    assert subscriber.wait_exit(deadline())
    assert subscriber.t.exit_code == 0, subscriber.t.events[-3:]
    events = subscriber.t.events
    assert codes_of(events) == ["malformed-tick"] * len(bad)
    assert [e["sequence"] for e in events if e["event"] == "tick"] == [1, 3, 2, 4]
    gaps = [(i, e) for i, e in enumerate(events) if e["event"] == "gap"]
    assert [(e["symbol"], e["after"], e["next"]) for _, e in gaps] == [("GOOG", 1, 3), ("GOOG", 2, 4)]
    for i, gap in gaps:
        assert named("tick", symbol="GOOG", sequence=gap["next"])(events[i + 1]), "a gap is reported right before its tick"
    assert events[-1] == {"event": "done", "ticks": 4, "malformed": len(bad)}


@pytest.mark.parametrize("lang", languages("ticker", "subscriber"))
def test_a_subscriber_switches_after_the_tick_that_makes_the_count(start_role, context, lang):
    """PROTOCOL.md, subscriber step 3: once --switch-after ticks of OLD have arrived, `unsubscribed`
    OLD, then `subscribed` NEW, and NEW counts from its first tick."""
    xpub, endpoint = rogue_publisher(context)
    subscriber = start_role(lang, "ticker", "subscriber", ticks=endpoint, name="ana", symbols="GOOG,AAPL", count=1, seed=7,
                            switch="AAPL:MSFT", **{"switch-after": 1}, timeout=WAIT * 1000)
    wait_subscription(xpub, b"@ana")
    xpub.send_multipart(good_tick(7, "AAPL", 1))
    wait_subscription(xpub, b"MSFT\0")
    xpub.send_multipart(good_tick(7, "MSFT", 5))
    xpub.send_multipart(good_tick(7, "GOOG", 1))
    assert subscriber.wait_exit(deadline())
    assert subscriber.t.exit_code == 0, subscriber.t.events[-3:]
    shown = [(e["event"], e.get("symbol")) for e in subscriber.t.events if e["event"] not in ("ready", "done")]
    assert shown == [("tick", "AAPL"), ("unsubscribed", "AAPL"), ("subscribed", "MSFT"), ("tick", "MSFT"), ("tick", "GOOG")]
    assert subscriber.t.events[-1] == {"event": "done", "ticks": 3, "malformed": 0}


@pytest.mark.parametrize("lang", languages("ticker", "publisher"))
def test_the_publisher_judges_every_kind_of_frame_and_starts_before_its_first_tick(gated, context, lang):
    """PROTOCOL.md, publisher step 2: an empty frame, another first byte and an empty topic are
    `malformed-subscription`; `unsubscribed` only for a symbol topic in the set, nothing for an
    @name or a symbol it does not hold. Step 3: `started` once the @name is there, and nothing is
    published before it."""
    publisher = gated(lang, "ticker", "publisher", ticks="tcp://127.0.0.1:*", subscribers=1, symbols="GOOG",
                      interval=20, timeout=WAIT * 1000)
    ready = publisher.wait_for(named("ready"))
    xsub = context.socket(zmq.XSUB)
    xsub.linger = 0
    xsub.connect(ready["ticks"])
    for frame in (b"", b"\x02GOOG\0", b"\x01", b"\x00"):
        xsub.send(frame)
    xsub.send(b"\x01GOOG\0")
    xsub.send(b"\x00GOOG\0")
    xsub.send(b"\x01GOOG\0")
    xsub.send(b"\x01@ana")
    ticks = recv(xsub, "a tick")
    assert ticks[0] == b"GOOG\0"
    assert any(named("started")(e) for e in publisher.drain()), "a tick was published before started"
    xsub.send(b"\x00@ana")  # a subscriber that leaves: nothing to report
    xsub.send(b"\x00MSFT\0")  # a symbol it never held: nothing (if the library passes it on at all)
    xsub.send(b"\x01IBM\0")
    assert publisher.wait_for(named("subscribed", symbol="IBM")), publisher.events[-3:]
    publisher.terminate()
    assert publisher.wait_exit() == 0
    seen = [(e["event"], e.get("symbol") or e.get("code") or e.get("subscriber")) for e in publisher.events
            if e["event"] in ("subscribed", "unsubscribed", "joined", "started", "error")]
    assert seen == [("error", "malformed-subscription")] * 4 + [("subscribed", "GOOG"), ("unsubscribed", "GOOG"), ("subscribed", "GOOG"),
                                                                ("joined", "ana"), ("started", None), ("subscribed", "IBM")], seen


@pytest.mark.parametrize("lang", languages("ticker", "publisher"))
def test_a_subscriber_that_comes_back_is_joined_again_and_counted_once(start_role, context, lang):
    """PROTOCOL.md, publisher step 2 and "Restarts" 2: an unsubscribe takes any topic out of the
    publisher's set, so when a subscriber's topics come back (a proxy that restarted, here the
    subscriber itself) it reports `subscribed` and `joined` again; the subscriber still counted
    towards --subscribers while it was away."""
    publisher = start_role(lang, "ticker", "publisher", ticks="tcp://127.0.0.1:*", subscribers=1, symbols="GOOG", timeout=WAIT * 1000)
    ready = publisher.wait_event("ready", deadline())
    first = context.socket(zmq.XSUB)
    first.linger = 0
    first.connect(ready["ticks"])
    first.send(b"\x01GOOG\0")
    first.send(b"\x01@ana")
    assert publisher.wait_event("started", deadline())
    first.close()  # its topics leave with it: XPUB passes on their unsubscriptions
    assert publisher.wait_for(named("unsubscribed", symbol="GOOG"), deadline()), publisher.t.events[-3:]
    again = context.socket(zmq.XSUB)
    again.linger = 0
    again.connect(ready["ticks"])
    again.send(b"\x01GOOG\0")
    again.send(b"\x01@ana")
    again.send(b"\x01IBM\0")  # after the @name: once it is reported, the @name has been judged
    assert publisher.wait_for(named("subscribed", symbol="IBM"), deadline()), publisher.t.events[-3:]
    publisher.terminate()
    assert publisher.wait_exit(deadline()) and publisher.t.exit_code == 0
    assert [e["subscriber"] for e in events_named(publisher, "joined")] == ["ana", "ana"], \
        [e for e in publisher.t.events if e["event"] != "tick"]
    assert len([e for e in events_named(publisher, "subscribed") if e["symbol"] == "GOOG"]) == 2
    assert len(events_named(publisher, "started")) == 1  # counted once: publishing never stopped


# --- valuation ---------------------------------------------------------------------------------


def result(order_id, amount, name=b"w1"):
    return [b"result", name, struct.pack(">Q", order_id), struct.pack(">q", amount)]


def start_sink(start_role, context, lang, **flags):
    sink = start_role(lang, "valuation", "sink", results="tcp://127.0.0.1:*", control="tcp://127.0.0.1:*", seed=7,
                      timeout=WAIT * 2 * 1000, **flags)
    ready = sink.wait_event("ready", deadline())
    push = context.socket(zmq.PUSH)
    push.linger = 0
    push.connect(ready["results"])
    sub = socket(context, zmq.SUB, ready["control"])
    assert recv(sub, "a state")  # the subscription is live
    return sink, push, sub


def until(sub, wanted):
    while (frames := recv(sub, f"control message {wanted}"))[:1] != [wanted]:
        pass
    return frames


@pytest.mark.parametrize("lang", languages("valuation", "sink"))
def test_the_sink_checks_every_frame_of_a_result_in_the_documented_order(start_role, context, lang):
    """PROTOCOL.md, sink step 2: each worker once (`worker`), `started` once --workers different
    names are ready; every malformed-result of the table; the first failing rule wins (malformed,
    unknown-id, wrong-value, duplicate); a reason quotes at most 32 bytes of what a peer sent."""
    sink, push, sub = start_sink(start_role, context, lang, workers=2, count=3, quiet=60000)
    for frames in ([b"ready", b"w1"], [b"ready", b"w1"], [b"ready", b"n" * 200], [b"ready", b"w2"]):
        push.send_multipart(frames)
    until(sub, b"go")
    good = order_value(7, 1)
    bad = [
        ("malformed-result", result(1, good, b"n" * 200)),
        ("malformed-result", result(1, good, b"n" * 33)),
        ("malformed-result", [b"result", b"w1", b"\0" * 6 + b"\1", struct.pack(">q", good)]),  # a 7-byte id
        ("malformed-result", [b"result", b"w1", struct.pack(">Q", 1), b"\0" * 9]),
        ("malformed-result", result(1, good) + [b""]),
        ("malformed-result", result(99, 1, b"")),  # malformed before unknown-id
        ("unknown-id", result(99, 1)),  # unknown-id before wrong-value
    ]
    for _, frames in bad:
        push.send_multipart(frames)
    push.send_multipart(result(1, good))
    push.send_multipart(result(1, good + 1))  # a second result, and a wrong one: wrong-value first
    push.send_multipart(result(1, good))
    assert sink.wait_for(lambda e: e["event"] == "error", deadline(), count=len(bad) + 3), sink.t.events[-3:]
    for order_id in (3, 2):  # the last result completes the batch: `result`, then `complete`
        push.send_multipart(result(order_id, order_value(7, order_id), b"w2"))
    until(sub, b"finished")
    sink.terminate()
    assert sink.wait_exit(deadline()) and sink.t.exit_code == 0
    events = sink.t.events
    assert codes_of(events) == ["malformed-ready"] + [code for code, _ in bad] + ["wrong-value", "duplicate"], \
        [(e["code"], e["reason"]) for e in events if e["event"] == "error"]
    shown = [(e["event"], e.get("name")) for e in events if e["event"] in ("worker", "started")]
    assert shown == [("worker", "w1"), ("worker", "w2"), ("started", None)]
    assert [e["id"] for e in events if e["event"] == "result"] == [1, 3, 2]
    last = max(i for i, e in enumerate(events) if e["event"] == "result")
    assert events[last + 1]["event"] == "complete" and events[last + 1]["workers"] == {"w1": 1, "w2": 2}, events[last:]
    for event in events:
        assert "n" * 33 not in event.get("reason", ""), f"a reason quotes more than 32 bytes of a peer: {event}"
    total = sum(order_value(7, order_id) for order_id in (1, 2, 3))
    assert events[-1] == {"event": "done", "orders": 3, "total": total}


@pytest.mark.parametrize("lang", languages("valuation", "sink"))
def test_the_sink_resends_in_batches_of_1000_and_counts_a_late_duplicate_once(start_role, context, lang):
    """PROTOCOL.md, sink step 2: missing ids go out ascending, at most 1000 per resend message; a
    second result for a re-dispatched id is `late-duplicate`, not counted; for any other, `duplicate`."""
    sink, push, sub = start_sink(start_role, context, lang, workers=1, count=2500, quiet=500)
    push.send_multipart([b"ready", b"w1"])
    until(sub, b"go")
    push.send_multipart(result(1, order_value(7, 1)))
    batches = [until(sub, b"resend")]
    while sum(len(b) - 1 for b in batches) < 2499:
        batches.append(recv(sub, "the rest of the resend"))
    assert all(frames[0] == b"resend" and len(frames) - 1 <= 1000 for frames in batches), [len(b) for b in batches]
    ids = [struct.unpack(">Q", frame)[0] for frames in batches for frame in frames[1:]]
    assert ids == list(range(2, 2501)), ids[:5]
    push.send_multipart(result(2, order_value(7, 2)))  # the re-dispatched id's first result: counted
    push.send_multipart(result(2, order_value(7, 2), b"w2"))  # the slow first worker's: late
    push.send_multipart(result(1, order_value(7, 1)))  # never re-dispatched: a duplicate
    assert sink.wait_for(lambda e: e["event"] == "error", deadline()), sink.t.events[-3:]
    sink.terminate()
    assert sink.wait_exit(deadline()) and sink.t.exit_code == 0
    events = sink.t.events
    assert events_named(sink, "resend")[0]["ids"] == list(range(2, 2501))
    assert [e["id"] for e in events_named(sink, "result")] == [1, 2]
    assert [(e["id"], e["worker"]) for e in events_named(sink, "late-duplicate")] == [(2, "w2")]
    assert codes_of(events) == ["duplicate"]
    assert events[-1] == {"event": "done", "orders": 2, "total": order_value(7, 1) + order_value(7, 2)}


@pytest.mark.parametrize("lang", languages("valuation", "worker"))
def test_a_worker_checks_every_range_answers_every_waiting_and_reports_after_it_sends(gated, context, lang):
    """PROTOCOL.md, worker: `ready` is sent, then reported; every `waiting` heard after it is
    answered with another ready; the table's sizes and ranges; a result is sent, then `priced`."""
    orders, orders_at = bound(context, zmq.PUSH)
    results, results_at = bound(context, zmq.PULL)
    control, control_at = bound(context, zmq.PUB)
    worker = gated(lang, "valuation", "worker", orders=orders_at, results=results_at, control=control_at, name="w",
                   timeout=WAIT * 1000)
    worker.hold()  # from the start: its `ready` event waits, its ready message must not
    end = deadline()
    while not results.poll(50):
        control.send(b"go")  # a first control message of any kind; `go` is never answered
        assert time.monotonic() < end and worker.process.poll() is None, "no ready message while the ready event waits"
    assert results.recv_multipart() == [b"ready", b"w"]
    worker.release()
    assert worker.wait_for(named("ready", name="w"))
    control.send(b"waiting")  # heard after its ready: answered again
    assert recv(results, "a ready again for a waiting") == [b"ready", b"w"]

    good = [struct.pack(">Q", 7), b"IBM", b"S", struct.pack(">I", 3), struct.pack(">q", 250)]
    bad = [good[:3] + [struct.pack(">I", 0)] + good[4:], good[:3] + [struct.pack(">I", 1001)] + good[4:],
           good[:4] + [struct.pack(">q", 99)], good[:4] + [struct.pack(">q", 100100)],
           [good[0], b"ABCDEFGHI"] + good[2:], [good[0], b""] + good[2:], good + [b""], good[:2] + [b"b"] + good[3:],
           good[:2] + [b"BS"] + good[3:], [good[0], b"IB\xc3\x89"] + good[2:]]
    for frames in bad:
        orders.send_multipart(frames)
    assert worker.wait_for(named("error"), count=len(bad)), worker.events[-3:]
    assert [e["code"] for e in worker.events if e["event"] == "error"] == ["malformed-order"] * len(bad)
    worker.hold()
    orders.send_multipart(good)
    assert recv(results, "the result of an order whose priced event waits") == [b"result", b"w", struct.pack(">Q", 7), struct.pack(">q", -750)]
    worker.release()
    assert worker.wait_for(named("priced", id=7))
    control.send(b"finished")
    assert worker.wait_exit() == 0
    assert worker.events[-1] == {"event": "done", "priced": 1}


@pytest.mark.parametrize("lang", languages("valuation", "source"))
def test_the_source_reports_sent_and_resent_after_the_orders_went_out(gated, context, lang):
    """PROTOCOL.md, source steps 3 and 4: every order is sent, then `sent`; a resend's orders are
    sent again (the same bytes), then `resent`; what names no order of the source is ignored."""
    control, control_at = bound(context, zmq.PUB)
    source = gated(lang, "valuation", "source", orders="tcp://127.0.0.1:*", control=control_at, count=3, seed=7,
                   timeout=WAIT * 1000)
    ready = source.wait_for(named("ready"))
    pull = socket(context, zmq.PULL, ready["orders"])
    source.hold()
    end = deadline()
    while not pull.poll(50):
        control.send(b"go")  # until its SUB hears it
        assert time.monotonic() < end, "no order while the sent event waits"
    got = [pull.recv_multipart()] + [recv(pull, f"order {n}") for n in (2, 3)]
    assert [struct.unpack(">Q", frames[0])[0] for frames in got] == [1, 2, 3]
    source.release()
    assert source.wait_for(named("sent", orders=3))
    source.hold()
    control.send_multipart([b"resend", struct.pack(">Q", 2)])
    assert recv(pull, "a re-dispatched order whose resent event waits") == got[1]
    source.release()
    assert source.wait_for(named("resent", ids=[2]))
    # Step 4: a frame that is not 8 bytes and ids outside 1 to --count name no order of the source.
    control.send_multipart([b"resend", b"\x03", struct.pack(">Q", 0), struct.pack(">Q", 4), struct.pack(">Q", 3)])
    assert recv(pull, "the one order of the source that the resend names") == got[2]
    assert source.wait_for(named("resent", ids=[3]))
    control.send(b"finished")
    assert source.wait_exit() == 0
    assert source.events[-1] == {"event": "done", "sent": 5}
    assert not pull.poll(0), "an order the resend did not name"


# --- query ---------------------------------------------------------------------------------------


def start_engine(start_role, lang, **flags):
    engine = start_role(lang, "query", "engine", snapshot="tcp://127.0.0.1:*", updates="tcp://127.0.0.1:*",
                        collector="tcp://127.0.0.1:*", timeout=WAIT * 1000, **flags)
    return engine, engine.wait_event("ready", deadline())


@pytest.mark.parametrize("lang", languages("query", "engine"))
def test_the_engine_reports_ticks_that_break_the_rules_or_cannot_be_cents(start_role, context, lang):
    """PROTOCOL.md, "The map, fed by ticks": a tick is checked as the ticker's subscriber checks
    its shape, and a price that is not finite, is negative or is above 10^9 is `malformed-tick`."""
    xpub, endpoint = rogue_publisher(context)
    engine, ready = start_engine(start_role, lang, ticks=endpoint, symbols="GOOG", name="eng")
    wait_subscription(xpub, b"@eng")
    tick = good_tick(7, "GOOG", 1)

    def priced(value):
        return tick[:3] + [struct.pack(">d", value)]

    bad = [tick[:3], [b"@eng"] + tick[1:], [b"GOOG\0X"] + tick[1:], tick[:1] + [b"\0" * 7] + tick[2:], tick[:3] + [b"\0" * 9],
           tick + [b""], priced(float("nan")), priced(float("inf")), priced(-0.01), priced(1e9 + 0.5)]
    for frames in bad:
        xpub.send_multipart(frames)
    xpub.send_multipart(priced(1e9))  # the highest price there is
    assert engine.wait_for(lambda e: e["event"] == "update", deadline(), count=4), engine.t.events[-3:]
    engine.terminate()
    assert engine.wait_exit(deadline()) and engine.t.exit_code == 0, engine.t.events[-3:]
    assert codes_of(engine.t.events) == ["malformed-tick"] * len(bad)
    updates = [(e["key"], bytes.fromhex(e["value"]), e["cause"]) for e in events_named(engine, "update")]
    assert updates == [(key, b"1000000000.00", "tick") for key in ("/prices/GOOG", "/stats/GOOG/high", "/stats/GOOG/low")] \
        + [("/stats/GOOG/ticks", b"1", "tick")]


@pytest.mark.parametrize("lang", languages("query", "engine"))
def test_the_engine_answers_every_prefix_of_hugz_at_once_and_reports_an_empty_frame(start_role, context, lang):
    """PROTOCOL.md, engine step 2: an XPUB frame that is empty is `malformed-subscription`; a
    subscription to any prefix of HUGZ (the empty one too) is answered by a HUGZ at once."""
    engine, ready = start_engine(start_role, lang, hugz=60000)  # no timer HUGZ during the test
    xsub = context.socket(zmq.XSUB)
    xsub.linger = 0
    xsub.connect(ready["updates"])
    xsub.send(b"")
    xsub.send(b"\x01H")
    hugz = recv(xsub, "a HUGZ for a subscription to H")
    assert hugz[0] == b"HUGZ" and len(hugz) == 5
    xsub.send(b"\x01")
    assert recv(xsub, "a HUGZ for a subscription to everything")[0] == b"HUGZ"
    # Its next timer is a minute away, and so is the stop flag (examples/README.md, "Stopping"): no
    # SIGTERM, the events so far say it all.
    assert engine.wait_for(named("error"), deadline())
    assert codes_of(engine.t.events) == ["malformed-subscription"]


@pytest.mark.parametrize("lang", languages("query", "engine"))
def test_the_engine_expires_keys_in_the_order_of_their_expiry_time(start_role, context, lang):
    """PROTOCOL.md, engine step 2, "Timers": expired keys are deleted in order of expiry time (then
    key): not in the order written, nor by key. A later KVSET of a key without a ttl cancels it."""
    engine, ready = start_engine(start_role, lang)
    xpub = writer(context, ready)
    xpub.send_multipart([b"/t/a", seq(0), b"", b"ttl=2\n", b"1"])  # written first, expires last
    xpub.send_multipart([b"/t/c", seq(0), b"", b"ttl=1\n", b"1"])
    xpub.send_multipart([b"/t/c", seq(0), b"", b"", b"2"])  # no ttl: it stays
    xpub.send_multipart([b"/t/b", seq(0), b"", b"ttl=1\n", b"1"])
    assert engine.wait_for(named("update", cause="expired"), deadline(), count=2), engine.t.events[-3:]
    assert [e["key"] for e in events_named(engine, "update") if e["cause"] == "expired"] == ["/t/b", "/t/a"]
    engine.terminate()
    assert engine.wait_exit(deadline()) and engine.t.exit_code == 0
    assert engine.t.events[-1]["keys"] == 1  # /t/c


@pytest.mark.parametrize("lang", languages("query", "engine"))
def test_the_engine_reports_an_update_and_a_snapshot_after_sending_them(gated, context, lang):
    """PROTOCOL.md, engine steps 2 and 3: an update publishes its KVPUB, then is reported; a
    snapshot's KVSYNCs and KTHXBAI are sent, then `snapshot`."""
    engine = gated(lang, "query", "engine", snapshot="tcp://127.0.0.1:*", updates="tcp://127.0.0.1:*",
                   collector="tcp://127.0.0.1:*", hugz=60000, timeout=WAIT * 1000)
    ready = engine.wait_for(named("ready"))
    xpub = writer(context, ready)
    sub = socket(context, zmq.SUB, ready["updates"])  # subscribed to everything: answered by a HUGZ at once
    assert recv(sub, "a HUGZ")[0] == b"HUGZ"
    dealer = socket(context, zmq.DEALER, ready["snapshot"])
    engine.hold()
    xpub.send_multipart([b"/t/a", seq(0), b"", b"", b"1"])
    while (kvpub := recv(sub, "the KVPUB of an update whose event waits"))[0] == b"HUGZ":
        pass
    assert kvpub == [b"/t/a", seq(1), b"", b"", b"1"]
    engine.release()
    assert engine.wait_for(named("update", sequence=1, key="/t/a"))
    engine.hold()
    dealer.send_multipart([b"ICANHAZ?", b"/t/"])
    assert recv(dealer, "a KVSYNC")[0] == b"/t/a"
    assert recv(dealer, "the KTHXBAI of a snapshot whose event waits") == [b"KTHXBAI", seq(1), b"", b"", b"/t/"]
    engine.release()
    assert engine.wait_for(named("snapshot", subtree="/t/", keys=1))


@pytest.mark.parametrize("lang", languages("query", "facade"))
def test_the_facade_checks_keys_properties_and_sizes_of_every_command(start_role, context, lang):
    """PROTOCOL.md, facade steps 3 and 4: a KVSYNC or KVPUB is 5 frames of a key (the syntax), an
    8-byte sequence, a UUID of 0 or 16 bytes, valid properties and a value of at most 256 bytes; a
    KTHXBAI is 5 frames with an 8-byte sequence and a subtree, matched against the requests."""
    router, router_at = bound(context, zmq.ROUTER)
    xpub, xpub_at = bound(context, zmq.XPUB, verbose=True)
    facade = start_role(lang, "query", "facade", snapshot=router_at, updates=xpub_at, name="f", subtrees="/a/",
                        count=1, timeout=WAIT * 1000)
    wait_subscription(xpub, b"HUGZ")
    xpub.send_multipart([b"HUGZ", seq(0), b"", b"", b""])
    peer, *request = recv(router, "an ICANHAZ?")
    assert request == [b"ICANHAZ?", b"/a/"]
    bad = [
        ("malformed-kvsync", [b"/a//x", seq(1), b"", b"", b"v"]),  # not a key, though /a/ is its prefix
        ("malformed-kvsync", [b"/a/x", seq(1), b"", b"no-equals-sign\n", b"v"]),
        ("malformed-kvsync", [b"/a/x", seq(1), b"", b"n" * 33 + b"=1\n", b"v"]),  # a property name of 33
        ("malformed-kvsync", [b"/a/x", seq(1), b"", b"a=\x01\n", b"v"]),  # a value not printable
        ("malformed-kvsync", [b"/a/x", seq(1), b"", b"", b"v" * 257]),
        ("malformed-kvsync", [b"/a/x", seq(1), b"", b"", b"v", b""]),
        ("malformed-kthxbai", [b"KTHXBAI", b"\0" * 7, b"", b"", b"/a/"]),
        ("malformed-kthxbai", [b"KTHXBAI", seq(1), b"", b"", b"/a//"]),
        ("unexpected-kthxbai", [b"KTHXBAI", seq(1), b"", b"", b""]),  # the whole map: not asked for
    ]
    for _, frames in bad:
        router.send_multipart([peer, *frames])
    router.send_multipart([peer, b"/a/x", seq(1), b"\0" * 16, b"note=x y\n", b"1"])  # a UUID and a property: fine
    router.send_multipart([peer, b"KTHXBAI", seq(1), b"", b"", b"/a/"])
    assert facade.wait_for(named("synced"), deadline()), facade.t.events[-3:]
    late = [
        ("malformed-kvpub", [b"/a//y", seq(2), b"", b"", b"v"]),
        ("malformed-kvpub", [b"/a/y", seq(2), b"", b"", b"v" * 257]),
        ("malformed-kvpub", [b"/a/y", seq(2), b"", b"x\n", b"v"]),
        ("malformed-kvpub", [b"/a/y", seq(2), b"", b"", b"v", b""]),
    ]
    for _, frames in late:
        xpub.send_multipart(frames)
    xpub.send_multipart([b"/a/y", seq(2), b"", b"", b"2"])
    assert facade.wait_exit(deadline()) and facade.t.exit_code == 0, facade.t.events[-3:]
    assert codes_of(facade.t.events) == [code for code, _ in bad + late]
    assert facade.t.events[-1] == {"event": "done", "sequence": 2, "first": 2, "map": {"/a/x": "31", "/a/y": "32"},
                                   "applied": 1, "discarded": 0}


@pytest.mark.parametrize("lang", languages("query", "facade"))
def test_the_facade_reports_a_write_after_sending_it(gated, context, lang):
    """PROTOCOL.md, facade step 5: once every KTHXBAI is in and the collector's subscription has
    arrived, a KVSET is sent, then reported as `wrote`."""
    router, router_at = bound(context, zmq.ROUTER)
    xpub, xpub_at = bound(context, zmq.XPUB, verbose=True)
    collector, collector_at = bound(context, zmq.SUB)  # not subscribed yet: the facade may not write
    facade = gated(lang, "query", "facade", snapshot=router_at, updates=xpub_at, collector=collector_at, name="f",
                   subtrees="/a/", count=1, writes=1, timeout=WAIT * 1000)
    wait_subscription(xpub, b"HUGZ")
    xpub.send_multipart([b"HUGZ", seq(0), b"", b"", b""])
    peer, *request = recv(router, "an ICANHAZ?")
    router.send_multipart([peer, b"KTHXBAI", seq(0), b"", b"", b"/a/"])
    assert facade.wait_for(named("synced"))
    facade.hold()
    collector.subscribe(b"")
    assert recv(collector, "a KVSET whose wrote event waits") == [b"/facades/f/1", seq(0), b"", b"", b"f/1"]
    facade.release()
    assert facade.wait_for(named("wrote", key="/facades/f/1", value=b"f/1".hex(), ttl=0))
    xpub.send_multipart([b"/a/x", seq(1), b"", b"", b"1"])
    assert facade.wait_exit() == 0
    assert facade.events[-1]["event"] == "done"


# --- desk ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", languages("desk", "trader"))
def test_a_chat_server_that_rejects_the_desk_fails_it_after_every_agent_stopped(start_role, context, lang):
    """PROTOCOL.md (desk), "The agents": the chat server rejects the agent's join (chat's fatal
    `rejected`): the chat agent reports it and stops unasked; the desk stops the others and fails
    with `agent-failed`, written after every agent's `stopped`, as its last line."""
    rogue = RogueServer(context)
    desk = start_role(lang, "desk", "trader", **desk_flags(**{"chat-requests": rogue.flags["requests"],
                                                              "chat-broadcasts": rogue.flags["broadcasts"]}))
    assert rogue.next_request() == [b"d1"]
    rogue.rep.send_multipart([b"", b"banned"])
    assert desk.wait_exit(deadline()), desk.t.events[-3:]
    assert desk.t.exit_code == 1, desk.t.events[-3:]
    events = desk.t.events
    assert events[-1]["event"] == "error" and events[-1]["code"] == "agent-failed" and "agent" not in events[-1], events[-3:]
    chat = [e for e in events if e.get("agent") == "chat"]
    assert [e["event"] for e in chat][-2:] == ["error", "stopped"] and chat[-2]["code"] == "rejected", chat[-3:]
    # The rejection may come while the desk is still starting its agents: every agent started stops.
    started = [e["agent"] for e in events if e["event"] == "ready" and "agent" in e]
    stopped = [e["agent"] for e in events if e["event"] == "stopped"]
    assert "chat" in started and sorted(stopped) == sorted(started), (started, stopped)
    assert [e["event"] for e in events if "agent" not in e].count("error") == 1
    assert not [e for e in events if e["event"] == "done"]


def page_post(port, target, body):
    status, _, _ = exchange(port, post(target, body))
    return status


@pytest.mark.parametrize("lang", languages("desk", "trader"))
def test_the_chat_agent_refuses_a_101st_waiting_post_as_busy(start_role, lang):
    """PROTOCOL.md (desk), chat agent: `POST text` queues the text, at most 100 waiting; more is
    `bad-command`, reason "busy". With no chat server, nothing is ever posted."""
    desk, port = start_desk(start_role, lang)
    for number in range(1, 102):
        assert page_post(port, "/chat", f"text {number}".encode()) == 204
    refused = desk.wait_for(lambda e: e["event"] == "error" and e.get("agent") == "chat", deadline())
    assert refused and refused["code"] == "bad-command" and "busy" in refused["reason"], desk.t.events[-3:]
    assert desk.wait_for(named("command", command="POST"), deadline(), count=101)
    desk.terminate()
    assert desk.wait_exit(deadline()) and desk.t.exit_code == 0, desk.t.events[-3:]
    assert [e["code"] for e in desk.t.events if e["event"] == "error"] == ["bad-command"]


@pytest.mark.parametrize("lang", languages("desk", "trader"))
def test_the_ticker_agent_follows_and_forgets_only_what_changes(start_role, lang):
    """PROTOCOL.md (desk), commands: FOLLOW a symbol it follows already, or FORGET one it does not
    follow: nothing. The desk reports a page's command before handing it to the agent."""
    desk, port = start_desk(start_role, lang, follow="AAPL,GOOG")
    for symbol in ("AAPL", "GOOG"):
        assert desk.wait_for(lambda e: e.get("agent") == "ticker" and named("subscribed", symbol=symbol)(e), deadline())
    assert page_post(port, "/follow", b"AAPL") == 204
    assert page_post(port, "/forget", b"IBM") == 204
    assert page_post(port, "/follow", b"IBM") == 204
    assert desk.wait_for(lambda e: e.get("agent") == "ticker" and named("subscribed", symbol="IBM")(e), deadline())
    desk.terminate()
    assert desk.wait_exit(deadline()) and desk.t.exit_code == 0
    ticker = [(e["event"], e["symbol"]) for e in desk.t.events if e.get("agent") == "ticker" and e["event"] in ("subscribed", "unsubscribed")]
    assert ticker == [("subscribed", "AAPL"), ("subscribed", "GOOG"), ("subscribed", "IBM")], ticker
    commanded = next(i for i, e in enumerate(desk.t.events) if named("command", command="FOLLOW", symbol="IBM")(e))
    subscribed = next(i for i, e in enumerate(desk.t.events) if e.get("agent") == "ticker" and named("subscribed", symbol="IBM")(e))
    assert commanded < subscribed, "the command event comes before the agent acts on it"
    assert not [e for e in desk.t.events if e["event"] == "error"]


@pytest.mark.parametrize("lang", languages("desk", "trader"))
def test_the_ticker_agent_follows_at_most_32_symbols(start_role, lang):
    """PROTOCOL.md (desk), commands: `FOLLOW symbol` subscribes and reports `subscribed`; with 32
    symbols followed already (--follow's bound) it is `bad-command` `busy`, and a FORGET makes room."""
    desk, port = start_desk(start_role, lang, follow="AAPL,GOOG,MSFT")
    more = [f"X{chr(65 + i // 26)}{chr(65 + i % 26)}" for i in range(30)]  # 33 symbols in all
    for symbol in more:
        assert page_post(port, "/follow", symbol.encode()) == 204
    ticker_said = lambda e: e.get("agent") == "ticker" and e["event"] in ("subscribed", "unsubscribed", "error")
    assert desk.wait_for(ticker_said, deadline(), count=3 + len(more)), desk.t.events[-3:]
    assert page_post(port, "/forget", b"AAPL") == 204
    assert page_post(port, "/follow", b"ZZZ") == 204
    assert desk.wait_for(ticker_said, deadline(), count=5 + len(more)), desk.t.events[-3:]
    desk.terminate()
    assert desk.wait_exit(deadline()) and desk.t.exit_code == 0
    # A reason may say more ("FOLLOW in 2 frames: busy"), but it says busy.
    said = [(e["event"], e.get("symbol") or ("busy" if "busy" in e["reason"] else e["reason"]))
            for e in desk.t.events if ticker_said(e)]
    assert said == ([("subscribed", s) for s in ["AAPL", "GOOG", "MSFT"] + more[:29]] + [("error", "busy"),
                    ("unsubscribed", "AAPL"), ("subscribed", "ZZZ")]), said
    busy = [e for e in desk.t.events if e.get("agent") == "ticker" and e["event"] == "error"]
    assert [e["code"] for e in busy] == ["bad-command"]