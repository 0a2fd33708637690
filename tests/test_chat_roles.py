"""Each language's chat roles against test-made peers: bad input, expiry, rogue servers, the
command line and the deadline. Every wait is bounded; no test sleeps."""
import subprocess
import time

import pytest
import zmq

from conftest import languages, require

WAIT = 30  # seconds any single step may take, however loaded the machine


def deadline():
    return time.monotonic() + WAIT


def socket(context, kind, endpoint=None, bind=False):
    sock = context.socket(kind)
    sock.linger = 0
    sock.rcvtimeo = WAIT * 1000
    if kind == zmq.SUB:
        sock.subscribe(b"")
    if endpoint:
        (sock.bind if bind else sock.connect)(endpoint)
    return sock


def start_server(start_role, lang, **flags):
    server = start_role(lang, "chat", "server", requests="tcp://127.0.0.1:*", broadcasts="tcp://127.0.0.1:*", timeout=WAIT * 4 * 1000, **flags)
    ready = server.wait_event("ready", deadline())
    assert ready, f"{lang} server did not report ready: {server.t.events}"
    return server, ready


def stop(server):
    server.terminate()
    assert server.wait_exit(deadline()), "the server ignored SIGTERM"
    assert server.t.exit_code == 0, server.t.events[-3:]
    assert server.t.events[-1]["event"] == "done"
    return server.t.events[-1]


BAD_REQUESTS = [
    ("frame-count", [b"alice", b"hi", b"extra"]),
    ("empty-handle", [b""]),
    ("empty-handle", [b"", b"hi"]),
    ("handle-too-long", [b"h" * 33]),
    ("empty-text", [b"alice", b""]),
    ("text-too-long", [b"alice", b"x" * 8000]),  # under the 8 KiB maximum message size: the server's own rule
    ("invalid-utf8", [b"\xff"]),
    ("invalid-utf8", [b"alice", b"\xc3\x28"]),
    ("invalid-utf8", [b"alice", b"\xed\xa0\x80"]),  # an encoded surrogate
    ("invalid-utf8", [b"alice", b"\xc0\xaf"]),  # an overlong "/"
    ("invalid-utf8", [b"alice", b"caf\xc3"]),  # cut short
    ("unknown-handle", [b"alice", b"hi"]),  # a post before a join
]


@pytest.mark.parametrize("lang", languages("chat", "server"))
def test_the_server_rejects_bad_input_and_keeps_serving(start_role, context, lang):
    server, ready = start_server(start_role, lang)
    for number, (code, frames) in enumerate(BAD_REQUESTS, start=1):
        req = socket(context, zmq.REQ, ready["requests"])  # REQ is lockstep: a fresh one per try
        req.send_multipart(frames)
        assert req.recv_multipart() == [b"", code.encode()], f"request {frames!r:.60}"
        req.close()
        event = server.wait_for(lambda e: e["event"] == "error", deadline(), count=number)
        assert event and event["code"] == code and event["reason"], event
    # A 32-byte handle is still fine, and the server answers good requests as before.
    req = socket(context, zmq.REQ, ready["requests"])
    req.send_multipart([("ü" * 16).encode()])  # 32 bytes of UTF-8
    assert req.recv_multipart() == [("ü" * 16).encode()]
    req.send_multipart([b"alice"])
    assert req.recv_multipart() == [b"alice", ("ü" * 16).encode()]
    req.send_multipart([b"alice", "héllo 🌍".encode()])
    assert req.recv_multipart() == [b"alice", ("ü" * 16).encode()]
    done = stop(server)
    assert done["rejected"] == len(BAD_REQUESTS) and done["requests"] == 3


@pytest.mark.parametrize("lang", languages("chat", "server"))
def test_the_server_drops_oversized_frames_and_requests_without_an_envelope(start_role, context, lang):
    """Above the 8 KiB maximum message size the library drops the frame with its sender; a request
    from a DEALER without the empty delimiter frame is dropped inside REP. Neither may stop the
    server's heartbeat (its loop never blocks in a receive) nor its answers to a correct client."""
    server, ready = start_server(start_role, lang, heartbeat=50)
    big = socket(context, zmq.REQ, ready["requests"])
    big.send_multipart([b"alice", b"x" * 8193])
    bare = socket(context, zmq.DEALER, ready["requests"])
    bare.send_multipart([b"bob"])  # no delimiter
    sub = socket(context, zmq.SUB, ready["broadcasts"])
    for _ in range(3):  # heartbeats keep coming
        assert sub.recv_multipart()[0] == b""
    req = socket(context, zmq.REQ, ready["requests"])
    req.send_multipart([b"carol"])
    assert req.recv_multipart() == [b"carol"]
    assert big.poll(200) == 0  # the oversized request got no answer: its connection was dropped
    done = stop(server)
    assert done == {"event": "done", "requests": 1, "rejected": 0}
    assert not [e for e in server.t.events if e["event"] == "error"]


@pytest.mark.parametrize("lang", languages("chat", "server"))
def test_rosters_are_sorted_by_utf8_bytes_and_silent_handles_expire(start_role, context, lang):
    server, ready = start_server(start_role, lang, expiry=300, heartbeat=50)
    sub = socket(context, zmq.SUB, ready["broadcasts"])
    assert sub.recv_multipart()  # a heartbeat: our subscription is live
    req = socket(context, zmq.REQ, ready["requests"])
    # U+FF5E sorts after U+1F600 in UTF-16 code units but before it in UTF-8 bytes.
    handles = ["😀", "～", "zed", "Zed", "ghost"]
    for handle in handles:
        req.send_multipart([handle.encode()])
        req.recv_multipart()
    expected = [h.encode() for h in sorted(handles, key=str.encode)]
    assert expected[-2:] == ["～".encode(), "😀".encode()]
    req.send_multipart([b"zed"])
    assert req.recv_multipart() == expected
    # Keep "zed" alive while the others fall silent; wait for a roster with zed alone.
    end = deadline()
    while time.monotonic() < end:
        frames = sub.recv_multipart()
        if frames[0] == b"" and frames[1:] == [b"zed"]:
            break
        req.send_multipart([b"zed"])
        req.recv_multipart()
    else:
        pytest.fail("the silent handles never expired")
    # The events come through a pipe: wait for them rather than read what has arrived so far.
    assert server.wait_for(lambda e: e["event"] == "expired", deadline(), count=len(handles) - 1)
    expired = {e["handle"] for e in server.t.events if e["event"] == "expired"}
    assert expired == set(handles) - {"zed"}
    stop(server)


class RogueServer:
    """A test-made chat server that says what the test wants, to see how a client copes."""

    def __init__(self, context):
        self.rep = socket(context, zmq.REP, "tcp://127.0.0.1:*", bind=True)
        self.pub = socket(context, zmq.PUB, "tcp://127.0.0.1:*", bind=True)
        self.flags = {
            "requests": self.rep.last_endpoint.decode(),
            "broadcasts": self.pub.last_endpoint.decode(),
            "timeout": WAIT * 1000,
        }

    def next_request(self):
        """Heartbeat (an empty roster) until a request arrives, as a real server would."""
        end = deadline()
        while time.monotonic() < end:
            self.pub.send_multipart([b""])
            if self.rep.poll(50):
                return self.rep.recv_multipart()
        pytest.fail("the client sent no request")


@pytest.mark.parametrize("lang", languages("chat", "client"))
def test_a_client_reports_malformed_broadcasts_and_carries_on(start_role, context, lang):
    rogue = RogueServer(context)
    client = start_role(lang, "chat", "client", name="alice", count=1, clients=1, **rogue.flags)
    assert rogue.next_request() == [b"alice"]
    rogue.rep.send_multipart([b"alice"])
    # The client saw a broadcast before it joined, so its subscription is live: nothing is lost.
    malformed = [
        [b"alice", b"two", b"many"],  # a post of 3 frames
        [b"\xff\xfe", b"not utf-8"],  # a handle that is not UTF-8
        [b"alice", b"\xc3\x28"],  # a text that is not UTF-8
        [b"a" * 33, b"a handle of 33 bytes"],
        [b"alice", b""],  # an empty text
        [b"alice", b"x" * 4097],  # a text of 4097 bytes (the socket takes up to 8192)
        [b"", b"alice", b""],  # a roster with an empty handle
        [b"", b"b" * 33],  # a roster with a handle of 33 bytes
        [b"", b"\xc3\x28"],  # a roster with a handle that is not UTF-8
    ]
    for frames in malformed:
        rogue.pub.send_multipart(frames)
    post = rogue.next_request()
    assert post == [b"alice", "alice #1: héllo wörld 🌍".encode()]
    rogue.rep.send_multipart([b"alice"])
    rogue.pub.send_multipart(post)
    assert client.wait_exit(deadline())
    assert client.t.exit_code == 0, client.t.events
    codes = [e["code"] for e in client.t.events if e["event"] == "error"]
    assert codes == ["malformed-broadcast"] * len(malformed)
    assert not [e for e in client.t.events if e["event"] == "roster" and set(e["handles"]) - {"alice"}]
    assert [e["text"] for e in client.t.events if e["event"] == "received"] == [post[1].decode()]


def events_named(client, name):
    return [e for e in client.t.events if e["event"] == name]


@pytest.mark.parametrize("lang", languages("chat", "client"))
def test_a_client_whose_reply_is_lost_resends_on_a_new_socket(start_role, context, lang):
    """Lazy Pirate: the server takes the join and never answers; after --retry ms the client sends
    it again on a new REQ socket (a new connection, so a new routing id at a ROUTER)."""
    rogue = RogueServer(context)
    rogue.rep.close()
    router = socket(context, zmq.ROUTER, "tcp://127.0.0.1:*", bind=True)
    rogue.flags["requests"] = router.last_endpoint.decode()
    client = start_role(lang, "chat", "client", name="alice", count=1, clients=1, retry=300, **rogue.flags)

    def next_request():
        end = deadline()
        while time.monotonic() < end:
            rogue.pub.send_multipart([b""])
            if router.poll(50):
                return router.recv_multipart()
        pytest.fail("the client sent no request")

    lost = next_request()
    assert lost[1:] == [b"", b"alice"]  # a REQ's envelope: the empty delimiter, then the request
    again = next_request()
    assert again[1:] == [b"", b"alice"] and again[0] != lost[0], "the same request, from another socket"
    assert events_named(client, "retried") == [{"event": "retried", "text": ""}]
    router.send_multipart([again[0], b"", b"alice"])
    post = next_request()
    assert post[1:] == [b"", b"alice", "alice #1: héllo wörld 🌍".encode()] and post[0] == again[0]
    router.send_multipart([post[0], b"", b"alice"])
    rogue.pub.send_multipart(post[2:])
    assert client.wait_exit(deadline()) and client.t.exit_code == 0, client.t.events
    assert len(events_named(client, "retried")) == 1


@pytest.mark.parametrize("lang", languages("chat", "client"))
def test_a_client_told_unknown_handle_rejoins_on_a_new_sub_once_it_hears_the_server(start_role, context, lang):
    """A post answered `unknown-handle`: the client opens a new SUB socket (its subscription reaches
    the server again), sends nothing until a first broadcast arrives on it, joins, then posts the
    same text again."""
    rogue = RogueServer(context)
    rogue.pub.close()
    rogue.pub = socket(context, zmq.XPUB, "tcp://127.0.0.1:*", bind=True)  # a PUB that shows subscriptions
    rogue.pub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every one, repeats included
    rogue.flags["broadcasts"] = rogue.pub.last_endpoint.decode()
    client = start_role(lang, "chat", "client", name="alice", count=1, clients=1, **rogue.flags)
    assert rogue.pub.recv() == b"\x01"  # the first SUB subscribes to everything
    assert rogue.next_request() == [b"alice"]
    rogue.rep.send_multipart([b"alice"])
    text = "alice #1: héllo wörld 🌍".encode()
    assert rogue.rep.recv_multipart() == [b"alice", text]
    rogue.rep.send_multipart([b"", b"unknown-handle"])
    while rogue.pub.recv() != b"\x01":  # a second subscription: a new SUB
        pass
    # Not a broadcast since the reply, so not a request either.
    assert not rogue.rep.poll(300), "the client sent a request before a broadcast reached its new SUB"
    rogue.pub.send_multipart([b"", b"alice"])  # even a roster that lists it: the new SUB hears the server
    assert rogue.next_request() == [b"alice"]
    rogue.rep.send_multipart([b"alice"])
    assert rogue.next_request() == [b"alice", text]  # the same post, again
    rogue.rep.send_multipart([b"alice"])
    rogue.pub.send_multipart([b"alice", text])
    assert client.wait_exit(deadline()) and client.t.exit_code == 0, client.t.events
    assert events_named(client, "rejoined") == [{"event": "rejoined", "handles": ["alice"]}]
    assert [e["text"] for e in events_named(client, "sent")] == [text.decode()]
    assert not events_named(client, "error")


@pytest.mark.parametrize("lang", languages("chat", "client"))
def test_a_roster_that_drops_the_client_makes_it_rejoin(start_role, context, lang):
    """After a roster broadcast with its handle, one without it: the server forgot it. A roster
    without it before that one proves nothing (it may be older than the join)."""
    rogue = RogueServer(context)
    client = start_role(lang, "chat", "client", name="alice", count=1, clients=2, **rogue.flags)
    assert rogue.next_request() == [b"alice"]
    rogue.rep.send_multipart([b"alice"])
    rogue.pub.send_multipart([b""])  # older than the join, as far as the client knows: nothing
    rogue.pub.send_multipart([b"", b"alice"])
    rogue.pub.send_multipart([b""])  # forgotten
    assert rogue.next_request() == [b"alice"]
    rogue.rep.send_multipart([b"alice", b"bob"])
    text = "alice #1: héllo wörld 🌍".encode()
    assert rogue.next_request() == [b"alice", text]
    rogue.rep.send_multipart([b"alice", b"bob"])
    rogue.pub.send_multipart([b"alice", text])
    rogue.pub.send_multipart([b"bob", "bob #1: héllo wörld 🌍".encode()])
    assert client.wait_exit(deadline()) and client.t.exit_code == 0, client.t.events
    assert events_named(client, "rejoined") == [{"event": "rejoined", "handles": ["alice", "bob"]}]


@pytest.mark.parametrize("lang", languages("chat", "client"))
def test_a_jump_in_a_peers_numbers_is_reported_missed(start_role, context, lang):
    """Only a restart loses posts; a client says which: every number skipped, up to --count. It is
    done with a peer at --count different texts (a person's are not numbered), or at the post
    numbered --count."""
    rogue = RogueServer(context)
    client = start_role(lang, "chat", "client", name="alice", count=4, clients=2, **rogue.flags)
    assert rogue.next_request() == [b"alice"]
    rogue.rep.send_multipart([b"alice", b"bob"])
    for number in (1, 2, 3, 4):
        text = f"alice #{number}: héllo wörld 🌍".encode()
        assert rogue.next_request() == [b"alice", text]
        rogue.rep.send_multipart([b"alice", b"bob"])
        rogue.pub.send_multipart([b"alice", text])
    for text in ("bob #1: x", "bob: no number", "bob #99999999999: too long a number", "bob #1000000: x"):
        rogue.pub.send_multipart([b"bob", text.encode()])
    assert client.wait_exit(deadline()) and client.t.exit_code == 0, client.t.events
    assert [(e["handle"], e["number"]) for e in events_named(client, "missed")] == [("bob", 2), ("bob", 3), ("bob", 4)]
    assert client.t.events[-1] == {"event": "done", "sent": 4, "received": 8}


@pytest.mark.parametrize("lang", languages("chat", "client"))
def test_a_peers_texts_count_without_numbers(start_role, context, lang):
    """A person's post (the desk's page) is any text: --count different texts from a peer are
    enough, and a text received twice counts once."""
    rogue = RogueServer(context)
    client = start_role(lang, "chat", "client", name="alice", count=2, clients=2, **rogue.flags)
    assert rogue.next_request() == [b"alice"]
    rogue.rep.send_multipart([b"alice", b"bob"])
    for number in (1, 2):
        text = f"alice #{number}: héllo wörld 🌍".encode()
        assert rogue.next_request() == [b"alice", text]
        rogue.rep.send_multipart([b"alice", b"bob"])
        rogue.pub.send_multipart([b"alice", text])
    for text in ("hi all", "hi all", "a person's post ✓"):
        rogue.pub.send_multipart([b"bob", text.encode()])
    assert client.wait_exit(deadline()) and client.t.exit_code == 0, client.t.events
    assert not events_named(client, "missed")
    assert client.t.events[-1] == {"event": "done", "sent": 2, "received": 5}


@pytest.mark.parametrize("lang", languages("chat", "client"))
@pytest.mark.parametrize(
    "reply, code",
    [([b"", b"banned"], "rejected"), ([b"", b"a", b"b"], "malformed-reply"), ([b"\xff"], "malformed-reply"),
     ([b"alice", b""], "malformed-reply"), ([b"alice", b"b" * 33], "malformed-reply")],
)
def test_a_client_fails_cleanly_on_a_bad_reply(start_role, context, lang, reply, code):
    rogue = RogueServer(context)
    client = start_role(lang, "chat", "client", name="alice", count=1, clients=1, **rogue.flags)
    assert rogue.next_request() == [b"alice"]
    rogue.rep.send_multipart(reply)
    assert client.wait_exit(deadline())
    assert client.t.exit_code == 1
    assert client.t.events[-1]["event"] == "error" and client.t.events[-1]["code"] == code


@pytest.mark.parametrize("lang", languages("chat", "client"))
def test_a_client_gives_up_at_its_deadline(start_role, context, lang):
    rogue = RogueServer(context)  # bound, but it never publishes nor answers
    rogue.flags["timeout"] = 500
    client = start_role(lang, "chat", "client", name="alice", **rogue.flags)
    assert client.wait_exit(deadline())
    assert client.t.exit_code == 1
    assert client.t.events[-1]["event"] == "error" and client.t.events[-1]["code"] == "timeout"


@pytest.mark.parametrize("lang", languages("chat", "client"))
@pytest.mark.parametrize(
    "args",
    [
        ["chat", "client", "--count", "3"],  # --name is required
        ["chat", "client", "--name", "alice", "--count", "abc"],
        ["chat", "client", "--name", "alice", "--colour", "red"],
        ["chat", "client", "--name", "h" * 33],
        ["chat", "server", "--heartbeat", "0"],
        ["chat", "referee"],
        ["karaoke", "server"],
    ],
)
def test_a_bad_command_line_exits_2(built, lang, args):
    # The one server case: a language without a chat server would exit 2 for the unknown role,
    # which says nothing of its flag checks.
    if args[:2] == ["chat", "server"]:
        require(lang, "chat", "server")
    language = built[lang]
    argv = language.command(args[0], args[1], {}) + args[2:]
    done = subprocess.run(argv, env=language.environment(), capture_output=True, timeout=WAIT, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == b"", "no events on a bad command line"


@pytest.mark.parametrize("lang", languages("chat", "server"))
def test_a_server_that_cannot_bind_says_so(start_role, context, lang):
    taken = socket(context, zmq.REP, "tcp://127.0.0.1:*", bind=True)
    server = start_role(lang, "chat", "server", requests=taken.last_endpoint.decode(), broadcasts="tcp://127.0.0.1:*", timeout=WAIT * 1000)
    assert server.wait_exit(deadline())
    assert server.t.exit_code == 1
    assert server.t.events[-1]["event"] == "error" and server.t.events[-1]["code"] == "bind"


@pytest.mark.parametrize("lang", languages("chat", "client"))
def test_a_client_with_a_bad_endpoint_says_so(start_role, lang):
    client = start_role(lang, "chat", "client", name="alice", requests="tcp://127.0.0.1:5555", broadcasts="bogus://nowhere", timeout=WAIT * 1000)
    assert client.wait_exit(deadline())
    assert client.t.exit_code == 1
    assert client.t.events[-1]["event"] == "error" and client.t.events[-1]["code"] == "connect"
