"""The query engine and its facades (RFC 12/CHP) in every language: the test vectors, bad input to
every engine and every facade, a snapshot nobody reads and a peer that vanishes, the command line;
and the checker, against transcripts broken on purpose."""
import json
import struct
import subprocess
import time
from collections import Counter

import pytest
import zmq

from conftest import languages, require
from orchestrator import ROOT
from orchestrator.checks import check
from orchestrator.checks.query import check_late, derive
from orchestrator.checks.ticker import price
from orchestrator.runner import RoleTranscript
from orchestrator.spec import load_spec

VECTORS = json.loads((ROOT / "examples/query/vectors.json").read_text())
WAIT = 30


def run_role(language, args):
    argv = language.command("query", args[0], {}) + args[1:]
    return subprocess.run(argv, env=language.environment(), capture_output=True, timeout=WAIT, stdin=subprocess.DEVNULL)


def seq(number):
    return struct.pack(">Q", number)


@pytest.mark.parametrize("lang", languages("query", "derive"))
def test_derive_reproduces_every_vector(built, lang):
    for vector in VECTORS:
        done = run_role(built[lang], ["derive", "--symbol", vector["symbol"], "--sequence", str(vector["sequence"]),
                                      "--prices", ",".join(vector["prices"])])
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        assert lines[-1] == {"event": "done"}
        assert [e["frames"] for e in lines[:-1]] == vector["kvpubs"], vector


def test_the_vectors_agree_with_the_checkers_own_derivation():
    for vector in VECTORS:
        stats, state, expected, number = {}, {}, [], vector["sequence"]
        for hex_price in vector["prices"]:
            for key, value in derive(stats, vector["symbol"], struct.unpack(">d", bytes.fromhex(hex_price))[0]):
                if state.get(key) != value:
                    state[key], number = value, number + 1
                    expected.append([key.encode().hex(), seq(number).hex(), "", "", value])
        assert vector["kvpubs"] == expected


@pytest.mark.parametrize("lang", languages())
@pytest.mark.parametrize(
    "args",
    [
        ["facade", "--subtrees", "all"],  # --name is required
        ["facade", "--name", "a", "--subtrees", "/prices"],  # a subtree ends with /
        ["facade", "--name", "a", "--subtrees", "prices/"],  # and starts with one
        ["facade", "--name", "a", "--subtrees", "/a/,/a/"],  # each subtree once: KTHXBAI is matched by it
        ["facade", "--name", "a", "--subtrees", "/a/,,/b/"],  # the whole map is `all`, not an empty item
        ["facade", "--name", "a b", "--subtrees", "all"],  # a name is a key segment
        ["facade", "--name", "a", "--subtrees", "all", "--ttl", "0"],
        ["engine", "--hugz", "0"],
        ["derive", "--symbol", "A", "--prices", "00"],
        ["derive", "--symbol", "a/b", "--prices", "408e9428f5c28f5c"],  # a symbol as the ticker has them
    ],
)
def test_a_bad_command_line_exits_2(built, lang, args):
    require(lang, "query", args[0])  # the role is a parameter: skipped here, per case
    done = run_role(built[lang], args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == b""


def socket(context, kind, endpoint, bind=False, **options):
    sock = context.socket(kind)
    sock.linger = 0
    sock.rcvtimeo = WAIT * 1000
    for name, value in options.items():
        setattr(sock, name, value)
    if bind:
        sock.bind("tcp://127.0.0.1:*")
        return sock, sock.last_endpoint.decode()
    sock.connect(endpoint)
    return sock


def start_engine(start_role, lang, **flags):
    engine = start_role(lang, "query", "engine", snapshot="tcp://127.0.0.1:*", updates="tcp://127.0.0.1:*",
                        collector="tcp://127.0.0.1:*", timeout=WAIT * 1000, **flags)
    return engine, engine.wait_event("ready", time.monotonic() + WAIT)


def writer(context, ready):
    """An XPUB to the engine's collector, like a facade's: it writes once the subscription is in.
    No high-water mark: a test's burst of writes must all arrive, however slow the engine reads (at
    the default 1000, a loaded CI machine once dropped some of 1500 before a Python engine read them)."""
    xpub = socket(context, zmq.XPUB, ready["collector"], sndhwm=0)
    assert xpub.recv() == b"\x01"
    return xpub


def snapshot(dealer, subtree):
    """Ask for one subtree; the KVSYNCs as {key: (sequence, value)} and the KTHXBAI's frames."""
    dealer.send_multipart([b"ICANHAZ?", subtree])
    found = {}
    while (frames := dealer.recv_multipart())[0] != b"KTHXBAI":
        found[frames[0]] = (struct.unpack(">Q", frames[1])[0], frames[4])
    return found, frames


def stop(role):
    role.terminate()
    assert role.wait_exit(time.monotonic() + WAIT) and role.t.exit_code == 0, role.t.events[-3:]
    assert role.t.events[-1]["event"] == "done"


def codes(role):
    return Counter(e["code"] for e in role.t.events if e["event"] == "error")


@pytest.mark.parametrize("lang", languages("query", "engine"))
def test_the_engine_reports_malformed_requests_and_writes_and_keeps_serving(start_role, context, lang):
    engine, ready = start_engine(start_role, lang, **{"max-keys": 3})
    dealer = socket(context, zmq.DEALER, ready["snapshot"])
    xpub = writer(context, ready)
    xsub = socket(context, zmq.XSUB, ready["updates"])  # a rogue subscriber: subscriptions by hand
    good = [b"/t/a", seq(0), b"", b"", b"v"]
    bad_requests = [[b"ICANHAZ?"], [b"ICANHAZ?", b"/t/", b"x"], [b"ICANHAZ", b""], [b"ICANHAZ?", b"/t"], [b"ICANHAZ?", b"t/"],
                    [b"ICANHAZ?", b"/t//"]]
    bad_writes = [good[:4], good + [b""], good + [b""] * 9, [b"nokey"] + good[1:], [b"/a//b"] + good[1:], [b"/a/"] + good[1:],
                  good[:1] + [b"\0" * 7] + good[2:], good[:1] + [b"\0" * 9] + good[2:], good[:2] + [b"\0" * 5] + good[3:],
                  good[:3] + [b"nonewline"] + good[4:], good[:3] + [b"ttl=0\n"] + good[4:], good[:3] + [b"ttl=abc\n"] + good[4:],
                  good[:3] + [b"ttl=1\nttl=2\n"] + good[4:], good[:3] + [b"t" * 40 + b"=1\n"] + good[4:], good[:4] + [b"v" * 257]]
    for frames in bad_requests:
        dealer.send_multipart(frames)
    for frames in bad_writes:
        xpub.send_multipart(frames)
    xsub.send(b"\x05x")  # neither subscribe nor unsubscribe
    for key in (b"/t/a", b"/t/b", b"/t/c", b"/t/d"):  # the fourth key is one too many
        xpub.send_multipart([key, seq(0), b"\0" * 16, b"note=x\n", key[-1:]])
    xpub.send_multipart([b"/t/b", seq(0), b"", b"", b""])  # a delete makes room again
    expected = Counter({"malformed-icanhaz": len(bad_requests), "malformed-kvset": len(bad_writes),
                        "malformed-subscription": 1, "map-full": 1})
    assert engine.wait_for(lambda e: e["event"] == "error", time.monotonic() + WAIT, count=expected.total())
    assert engine.wait_for(lambda e: e["event"] == "update", time.monotonic() + WAIT, count=4)
    assert codes(engine) == expected, engine.t.events
    reasons = [e["reason"] for e in engine.t.events if e.get("code") == "malformed-kvset"]
    assert any("7 or more" in reason for reason in reasons), reasons  # 14 frames: 7 kept, the rest dropped

    found, kthxbai = snapshot(dealer, b"/t/")  # and it serves a correct facade as if nothing happened
    assert found == {b"/t/a": (1, b"a"), b"/t/c": (3, b"c")}
    assert kthxbai == [b"KTHXBAI", seq(3), b"", b"", b"/t/"]
    sub = socket(context, zmq.SUB, ready["updates"])
    sub.subscribe(b"HUGZ")  # answered at once with a HUGZ: the subscription is in place
    hugz = sub.recv_multipart()
    assert hugz[:2] == [b"HUGZ", seq(4)] and hugz[3:] == [b"", b""]  # with the engine's sequence: 4 updates
    assert len(hugz[2]) == 16  # and its UUID
    stop(engine)
    updates = [(e["sequence"], e["key"], e["value"], e["cause"]) for e in engine.t.events if e["event"] == "update"]
    assert updates == [(1, "/t/a", "61", "kvset"), (2, "/t/b", "62", "kvset"), (3, "/t/c", "63", "kvset"), (4, "/t/b", "", "kvset")]
    assert engine.t.events[-1] == {"event": "done", "sequence": 4, "keys": 2, "snapshots": 1, "abandoned": 0}


@pytest.mark.parametrize("lang", languages("query", "engine"))
def test_the_engine_abandons_snapshots_nobody_reads_and_serves_the_others(start_role, context, lang):
    """A DEALER that asks and never reads fills its queue (HWM 1000): ROUTER_MANDATORY makes that
    send fail, and the engine gives up on that snapshot instead of blocking or sending one with holes.
    A DEALER that asks and vanishes costs nothing either."""
    engine, ready = start_engine(start_role, lang)
    xpub = writer(context, ready)
    keys = 1500  # of 200 bytes each: 40 snapshots of 300 KB overflow every buffer on the way
    for n in range(keys):
        xpub.send_multipart([b"/k/%d" % n, seq(0), b"", b"", b"x" * 200])
    assert engine.wait_for(lambda e: e["event"] == "update", time.monotonic() + WAIT, count=keys)
    deaf = socket(context, zmq.DEALER, ready["snapshot"])
    for _ in range(40):
        deaf.send_multipart([b"ICANHAZ?", b""])
    gone = socket(context, zmq.DEALER, ready["snapshot"])
    gone.send_multipart([b"ICANHAZ?", b""])
    gone.close(linger=1000)  # the request still leaves; the peer is gone before its snapshot is
    assert engine.wait_for(lambda e: e.get("why") == "full", time.monotonic() + WAIT), engine.t.events[-3:]
    found, kthxbai = snapshot(socket(context, zmq.DEALER, ready["snapshot"]), b"/k/")
    assert len(found) == keys and kthxbai[1] == seq(keys)
    stop(engine)
    abandoned = [e for e in engine.t.events if e["event"] == "abandoned"]
    assert {e["why"] for e in abandoned} <= {"full", "gone"}
    assert not codes(engine)


@pytest.mark.parametrize("lang", languages("query", "facade"))
def test_the_facade_reports_malformed_snapshots_and_updates_and_keeps_its_map_right(start_role, context, lang):
    """A fake engine answers two requests in flight with every kind of bad KVSYNC and KTHXBAI, then
    sends bad and stale KVPUBs: each is reported or discarded, and the map is what the good ones say."""
    router, router_at = socket(context, zmq.ROUTER, None, bind=True)
    xpub, xpub_at = socket(context, zmq.XPUB, None, bind=True)
    xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
    facade = start_role(lang, "query", "facade", snapshot=router_at, updates=xpub_at, name="f", subtrees="/a/,/b/",
                        count=2, timeout=WAIT * 1000)
    while xpub.recv() != b"\x01HUGZ":  # its subtrees first, then HUGZ
        pass
    xpub.send_multipart([b"HUGZ", bytes(8), b"", b"", b""])
    requests = [router.recv_multipart(), router.recv_multipart()]  # both in flight before any answer
    assert [frames[1:] for frames in requests] == [[b"ICANHAZ?", b"/a/"], [b"ICANHAZ?", b"/b/"]]
    peer = requests[0][0]
    bad = [
        ("malformed-kvsync", [b"/a/x", seq(3)]),
        ("malformed-kvsync", [b"/c/x", seq(3), b"", b"", b"v"]),  # in no subtree being sent
        ("malformed-kvsync", [b"/a/x", b"\0" * 7, b"", b"", b"v"]),
        ("malformed-kvsync", [b"/a/x", seq(3), b"\0" * 3, b"", b"v"]),
        ("malformed-kthxbai", [b"KTHXBAI", seq(3), b"", b""]),
        ("malformed-kthxbai", [b"KTHXBAI", seq(3), b"", b"", b"/a"]),
        ("unexpected-kthxbai", [b"KTHXBAI", seq(3), b"", b"", b"/z/"]),
    ]
    for _, frames in bad:
        router.send_multipart([peer, *frames])
    for frames in ([b"/a/x", seq(3), b"", b"", b"1"], [b"KTHXBAI", seq(3), b"", b"", b"/a/"],
                   [b"/b/y", seq(5), b"", b"", b"2"], [b"/b/z", seq(4), b"", b"", b"3"], [b"KTHXBAI", seq(5), b"", b"", b"/b/"]):
        router.send_multipart([peer, *frames])
    assert facade.wait_for(lambda e: e["event"] == "synced", time.monotonic() + WAIT, count=2)
    router.send_multipart([peer, b"KTHXBAI", seq(5), b"", b"", b"/b/"])
    late = [
        ("malformed-kvpub", [b"/a/x", seq(6)]),
        ("malformed-kvpub", [b"/a/x", b"\0" * 3, b"", b"", b"v"]),
        ("malformed-kvpub", [b"/a/x", seq(6), b"\0" * 5, b"", b"v"]),
        ("malformed-kvpub", [b"/a/x", seq(6), b"", b"ttl=1", b"v"]),
        ("malformed-kvpub", [b"HUGZZ", seq(6), b"", b"", b""]),  # past the HUGZ subscription, and no key
    ]
    for _, frames in late:
        xpub.send_multipart(frames)
    xpub.send_multipart([b"/a/x", seq(2), b"", b"", b"old"])  # not above /a/'s watermark: discarded
    xpub.send_multipart([b"HUGZ", bytes(8), b"", b"", b""])  # ignored
    xpub.send_multipart([b"/a/x", seq(7), b"", b"", b"9"])
    xpub.send_multipart([b"/b/z", seq(8), b"", b"", b""])  # a delete
    assert facade.wait_exit(time.monotonic() + WAIT) and facade.t.exit_code == 0, facade.t.events[-3:]
    expected = Counter(code for code, _ in bad + late) + Counter({"unexpected-snapshot": 1})
    assert codes(facade) == expected, facade.t.events
    synced = [(e["subtree"], e["sequence"], e["keys"]) for e in facade.t.events if e["event"] == "synced"]
    assert synced == [("/a/", 3, 1), ("/b/", 5, 2)]
    assert facade.t.events[-1] == {"event": "done", "sequence": 8, "first": 7, "map": {"/a/x": "39", "/b/y": "32"},
                                   "applied": 2, "discarded": 1}


# --- interoperability with CHP peers written to the RFC alone --------------------------------


@pytest.mark.parametrize("lang", languages("query", "engine"))
def test_a_client_written_to_the_rfc_alone_works_with_every_engine(start_role, context, lang):
    """A CHP client that knows RFC 12 and nothing of PROTOCOL.md: no HUGZ handshake, a plain PUB for
    its writes (it sends again until it sees the write come back), and the RFC's checks of every
    command. Our choices must stay inside what the RFC allows."""
    engine, ready = start_engine(start_role, lang, hugz=200)
    xpub = writer(context, ready)  # some state first, in and out of the client's subtree
    for key, value in ((b"/r/a", b"1"), (b"/other/x", b"2"), (b"/r/b", b"3")):
        xpub.send_multipart([key, seq(0), b"", b"", value])
    assert engine.wait_for(lambda e: e["event"] == "update", time.monotonic() + WAIT, count=3)

    sub = socket(context, zmq.SUB, ready["updates"])  # the RFC: SUBSCRIBER to P + 1, then a snapshot
    sub.subscribe(b"/r/")
    sub.subscribe(b"HUGZ")
    dealer = socket(context, zmq.DEALER, ready["snapshot"])
    dealer.send_multipart([b"ICANHAZ?", b"/r/"])
    snapshot = []
    while (frames := dealer.recv_multipart())[0] != b"KTHXBAI":
        snapshot.append(frames)
    assert all(len(f) == 5 and len(f[1]) == 8 and f[2] == f[3] == b"" for f in snapshot)
    assert sorted((f[0], f[4]) for f in snapshot) == [(b"/r/a", b"1"), (b"/r/b", b"3")]
    assert frames == [b"KTHXBAI", max(f[1] for f in snapshot), b"", b"", b"/r/"]  # the highest KVSYNC's
    last = struct.unpack(">Q", frames[1])[0]

    pub = socket(context, zmq.PUB, ready["collector"])  # a PUB, as the RFC says: no way to know when it is heard
    uuid = bytes(range(16))
    kvset = [b"/r/c", seq(0), uuid, b"ttl=1\n", b"4"]
    seen, hugz, highest, uuids, end = [], 0, 0, set(), time.monotonic() + WAIT
    while len(seen) < 2 and time.monotonic() < end:  # the write, then its expiry; HUGZ meanwhile
        if not any(f[0] == b"/r/c" for f in seen):
            pub.send_multipart(kvset)  # again until it comes back: the RFC client's only way
        if not sub.poll(100):
            continue
        frames = sub.recv_multipart()
        assert len(frames) == 5 and len(frames[1]) == 8, frames
        number = struct.unpack(">Q", frames[1])[0]
        if frames[0] == b"HUGZ":  # the engine's sequence and UUID (our choice; the RFC's 0 says nothing)
            assert number >= highest, "a HUGZ below an update it came after"
            uuids.add(frames[2])
            hugz += 1
            continue
        highest = max(highest, number)
        if number <= last:
            continue  # the RFC: discard what is not above the KTHXBAI or the last KVPUB
        last = number
        if frames[0] == b"/r/c" and frames[4] == b"4" and not seen:
            assert frames[2:4] == [uuid, b"ttl=1\n"]  # the KVSET's UUID and properties, passed on
            seen.append(frames)
        elif frames[0] == b"/r/c" and frames[4] == b"" and seen:
            seen.append(frames)  # deleted when the ttl ran out
        assert engine.process.poll() is None
    assert len(seen) == 2, f"saw {seen} of the write and its expiry"
    stop(engine)
    assert hugz >= 1  # every 200 ms, whatever else was published
    assert len(uuids) == 1 and len(uuids.pop()) == 16  # one engine, one UUID
    assert not codes(engine)


@pytest.mark.parametrize("lang", languages("query", "facade"))
def test_the_facade_works_with_a_server_like_the_guides_clonesrv(start_role, context, lang):
    """A CHP server with the Guide's choices, which the RFC allows too: a plain PUB, HUGZ on a timer
    whatever the subscriptions, carrying its current sequence, KVSYNCs with a UUID and properties,
    and KTHXBAI carrying its current sequence rather than the highest KVSYNC's."""
    router, router_at = socket(context, zmq.ROUTER, None, bind=True)
    pub, pub_at = socket(context, zmq.PUB, None, bind=True)
    facade = start_role(lang, "query", "facade", snapshot=router_at, updates=pub_at, name="g", subtrees="/a/",
                        count=3, timeout=WAIT * 1000)
    current, published = 8, False
    end = time.monotonic() + WAIT
    while facade.process.poll() is None and time.monotonic() < end:
        pub.send_multipart([b"HUGZ", seq(current), b"", b"", b""])  # every 100 ms: the server's pace
        if not router.poll(100):
            continue
        peer, *request = router.recv_multipart()
        assert request == [b"ICANHAZ?", b"/a/"]
        pub.send_multipart([b"/a/x", seq(9), b"", b"", b"stale"])  # made while the snapshot goes out
        current = 10
        router.send_multipart([peer, b"/a/x", seq(4), bytes(16), b"ttl=60\n", b"old"])
        router.send_multipart([peer, b"/a/y", seq(7), b"", b"", b"kept"])
        router.send_multipart([peer, b"KTHXBAI", seq(current), b"", b"", b"/a/"])
        assert facade.wait_for(lambda e: e["event"] == "synced", time.monotonic() + WAIT)
        for current, key, value in ((11, b"/a/x", b"new"), (12, b"/a/z", b"z"), (13, b"/a/y", b"")):
            pub.send_multipart([key, seq(current), b"", b"", value])
        published = True
    assert published and facade.wait_exit(time.monotonic() + WAIT) and facade.t.exit_code == 0, facade.t.events[-3:]
    assert not codes(facade)
    assert facade.t.events[-1] == {"event": "done", "sequence": 13, "first": 11, "map": {"/a/x": "6e6577", "/a/z": "7a"},
                                   "applied": 3, "discarded": 1}


# --- the checker, against transcripts broken on purpose -------------------------------------

UPDATES = [  # (key, value in hex, cause): sequences 1, 2, 3...
    ("/prices/A", "3130", "kvset"), ("/stats/A/ticks", "31", "kvset"), ("/facades/ana/1", "61", "kvset"),
    ("/prices/B", "3230", "kvset"), ("/facades/ana/2", "62", "kvset"), ("/prices/A", "3131", "kvset"),
    ("/facades/ana/2", "", "expired"), ("/prices/B", "", "kvset"), ("/stats/A/ticks", "32", "kvset"),
]


def transcripts(updates=UPDATES, **done):
    """An engine and one facade (ana: /prices/ and /facades/, snapshots at 4 and 3) that did it right:
    it applied updates 5 to 8, and its map is the engine's at 8 on its subtrees."""
    engine = RoleTranscript("engine", 0, "python", {}, [], exit_code=0)
    engine.events = [{"event": "update", "sequence": n, "key": k, "value": v, "cause": c} for n, (k, v, c) in enumerate(updates, 1)]
    engine.events.append({"event": "done", "sequence": len(updates), "keys": 3, "snapshots": 2, "abandoned": 0})
    facade = RoleTranscript("facade", 0, "python", {"name": "ana", "subtrees": "/prices/,/facades/"}, [], exit_code=0)
    facade.events = [
        {"event": "synced", "subtree": "/prices/", "sequence": 4, "keys": 2},
        {"event": "synced", "subtree": "/facades/", "sequence": 3, "keys": 1},
        {"event": "wrote", "key": "/facades/ana/1", "value": "61", "ttl": 0},
        {"event": "wrote", "key": "/facades/ana/2", "value": "62", "ttl": 1},
        {"event": "done", "sequence": 8, "first": 5, "map": {"/prices/A": "3131", "/facades/ana/1": "61"}, "applied": 4,
         "discarded": 0, **done},
    ]
    return [engine, facade]


def test_the_query_checker_passes_a_good_cell():
    assert check(load_spec("query"), transcripts()) == []


@pytest.mark.parametrize(
    "broken, words",
    [
        (dict(map={"/facades/ana/1": "61"}), "1 key(s) missing: ['/prices/A']"),
        (dict(map={"/prices/A": "3130", "/facades/ana/1": "61"}), "1 key(s) stale: ['/prices/A']"),
        (dict(map={"/prices/A": "3131", "/prices/B": "3230", "/facades/ana/1": "61"}), "stale (deleted in the engine's map)"),
        (dict(applied=5), "above their watermarks (some twice)"),  # one applied twice
        (dict(applied=3), "(it missed some"),  # one skipped
        (dict(sequence=40), "done at sequence 40"),
        (dict(first=None), "done gives first None"),
        (dict(first=9), "done gives first 9"),
    ],
)
def test_the_query_checker_rejects_a_facade_that(broken, words):
    problems = check(load_spec("query"), transcripts(**broken))
    assert any(words in p for p in problems), problems


def test_the_query_checker_rejects_a_gap_in_the_engine_sequence():
    engine, facade = transcripts()
    engine.events[3]["sequence"] = 5
    assert any("sequences must be 1, 2, 3" in p for p in check(load_spec("query"), [engine, facade]))


def test_the_query_checker_rejects_a_write_never_applied_and_a_ttl_never_expired():
    updates = [(k, v, "kvset" if c == "expired" else c) for k, v, c in UPDATES]
    engine, facade = transcripts(updates, map={"/prices/A": "3131", "/facades/ana/1": "61"})
    facade.events.insert(2, {"event": "wrote", "key": "/facades/ana/3", "value": "63", "ttl": 0})
    problems = check(load_spec("query"), [engine, facade])
    assert any("wrote /facades/ana/3='63', which the engine never applied" in p for p in problems), problems
    assert any("/facades/ana/2 had a ttl of 1 s, and never expired" in p for p in problems), problems


def test_the_query_checker_replays_the_ticks_from_the_publishers_seed():
    seed, stats, state, updates = 5, {}, {}, []
    for k in (1, 2, 3):
        for key, value in derive(stats, "AAPL", price(seed, "AAPL", k)):
            if state.get(key) != value:
                state[key] = value
                updates.append((key, value, "tick"))
    publisher = RoleTranscript("publisher", 0, "python", {"seed": seed}, [], exit_code=0, events=[{"event": "done"}])
    engine, _ = transcripts(updates)
    assert not [p for p in check(load_spec("query"), [publisher, engine]) if "tick" in p]
    engine.events[len(updates) - 2]["value"] = "3939"
    assert any("tick 3 of AAPL made" in p for p in check(load_spec("query"), [publisher, engine]))


def test_the_query_checker_rejects_a_late_joiner_whose_snapshot_was_empty():
    facade = RoleTranscript("facade", 2, "python", {}, [], events=[{"event": "synced", "subtree": "", "sequence": 0, "keys": 0}])
    assert check_late(facade, 400)
    facade.events = [{"event": "synced", "subtree": "", "sequence": 412, "keys": 25}]
    assert not check_late(facade, 400)


# --- across an engine restart (PROTOCOL.md, "Restarts: the engine dies and comes back") -------


def tick_updates(seed, symbol, ticks):
    """The updates an engine with an empty map makes for the publisher's ticks `ticks` of `symbol`."""
    stats, state, updates = {}, {}, []
    for k in ticks:
        for key, value in derive(stats, symbol, price(seed, symbol, k)):
            if state.get(key) != value:
                state[key] = value
                updates.append((key, value, "tick"))
    return updates


def restart_cell(seed=5):
    """The first engine made ticks 1-4 of AAPL and died; the second got ticks 7-9 and ana's writes
    of its second session. ana resynced once in between."""
    publisher = RoleTranscript("publisher", 0, "python", {"seed": seed}, [], exit_code=0, events=[{"event": "done"}])
    killed, _ = transcripts(tick_updates(seed, "AAPL", range(1, 5)))
    killed.events.pop()  # no done: SIGKILL
    killed.killed, killed.exit_code = "killed with SIGKILL", -9
    second = tick_updates(seed, "AAPL", range(7, 10)) + [("/facades/ana/1", "61", "kvset")]
    engine, facade = transcripts(second)
    engine.restarted = True
    at = len(second)
    wanted = {key: value for key, value, _ in second if key.startswith(("/prices/", "/facades/"))}
    facade.events = [
        {"event": "synced", "subtree": "/prices/", "sequence": 3, "keys": 1},  # the first session
        {"event": "resynced", "why": "sequence", "last": 9},
        {"event": "synced", "subtree": "/prices/", "sequence": 1, "keys": 1},
        {"event": "synced", "subtree": "/facades/", "sequence": 0, "keys": 0},
        {"event": "wrote", "key": "/facades/ana/1", "value": "61", "ttl": 0},
        {"event": "done", "sequence": at, "first": 5, "map": wanted,
         "applied": sum(1 for key, _, _ in second[4:] if key.startswith(("/prices/", "/facades/"))), "discarded": 0},
    ]
    return [publisher, killed, engine, facade]


def test_the_query_checker_follows_a_facade_into_its_session_with_the_second_engine():
    spec = load_spec("query").with_restart("engine")
    cell = restart_cell()
    assert check(spec, cell) == []
    cell[3].events = [e for e in cell[3].events if e["event"] != "resynced"]
    assert any("0 resynced event(s), not exactly one" in p for p in check(spec, cell))


def test_the_query_checker_compares_the_last_session_with_the_second_engine():
    spec = load_spec("query").with_restart("engine")
    cell = restart_cell()
    cell[3].events[-1]["map"] = {"/prices/AAPL": cell[1].events[0]["value"]}  # the first engine's price
    assert any("key(s)" in p for p in check(spec, cell))


def test_the_query_checker_finds_where_the_second_engines_ticks_start():
    spec = load_spec("query").with_restart("engine")
    cell = restart_cell()
    assert not [p for p in check(spec, cell) if "tick" in p]
    for event in cell[2].events:  # a value no run of the publisher's ticks gives
        if event.get("key") == "/stats/AAPL/high":
            event["value"] = "393939"
            break
    assert any("AAPL follow no run of the publisher's ticks" in p for p in check(spec, cell))


def test_without_a_restart_a_resynced_facade_fails():
    engine, facade = transcripts()
    facade.events.insert(0, {"event": "resynced", "why": "silence", "last": 0})
    assert any("though the engine never restarted" in p for p in check(load_spec("query"), [engine, facade]))


@pytest.mark.parametrize("lang", languages("query", "facade"))
def test_a_facade_starts_over_on_new_sockets_when_the_sequence_falls_or_the_engine_falls_silent(start_role, context, lang):
    """A fake engine syncs a facade again and again, and each time shows it another way that the
    engine is not the one it synced with: an update below one already read, silence, a HUGZ below
    the sequence seen, an update below the HUGZ that started the session, a HUGZ with another
    UUID. Each time the facade says so and starts over from new connections (a new routing id at
    the ROUTER)."""
    router, router_at = socket(context, zmq.ROUTER, None, bind=True)
    xpub, xpub_at = socket(context, zmq.XPUB, None, bind=True)
    xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
    facade = start_role(lang, "query", "facade", snapshot=router_at, updates=xpub_at, name="f", subtrees="/a/",
                        count=2, silence=1000, timeout=WAIT * 1000)
    peers = []

    def sync(hugz, sequence, uuid=b""):
        while xpub.recv() != b"\x01HUGZ":  # the subtree, then HUGZ, on each new SUB
            pass
        xpub.send_multipart([b"HUGZ", seq(hugz), uuid, b"", b""])
        peer, *request = router.recv_multipart()
        assert request == [b"ICANHAZ?", b"/a/"] and peer not in peers, "a new DEALER: a new connection"
        peers.append(peer)
        router.send_multipart([peer, b"/a/x", seq(sequence), b"", b"", b"1"])
        router.send_multipart([peer, b"KTHXBAI", seq(sequence), b"", b"", b"/a/"])

    def restarted(count):
        assert facade.wait_for(lambda e: e["event"] == "resynced", time.monotonic() + WAIT, count=count), facade.t.events[-3:]

    sync(0, 10)  # a HUGZ of 0 says nothing (an RFC server's)
    xpub.send_multipart([b"/a/x", seq(11), b"", b"", b"2"])
    xpub.send_multipart([b"/a/x", seq(3), b"", b"", b"3"])  # not above 11: another engine
    restarted(1)
    sync(0, 2)  # then nothing at all, not even a HUGZ: gone, after --silence ms
    restarted(2)
    sync(20, 20)
    xpub.send_multipart([b"HUGZ", seq(4), b"", b"", b""])  # below 20
    restarted(3)
    sync(30, 30)
    xpub.send_multipart([b"/a/x", seq(2), b"", b"", b"4"])  # below the HUGZ of the session's start
    restarted(4)
    sync(40, 40, b"A" * 16)
    xpub.send_multipart([b"/a/x", seq(41), b"", b"", b"5"])
    xpub.send_multipart([b"HUGZ", seq(50), b"B" * 16, b"", b""])  # higher, but another engine
    restarted(5)
    sync(5, 5, b"C" * 16)
    xpub.send_multipart([b"/a/x", seq(6), b"", b"", b"5"])
    xpub.send_multipart([b"HUGZ", seq(6), b"C" * 16, b"", b""])  # not below, the same UUID: the same engine
    xpub.send_multipart([b"/a/x", seq(7), b"", b"", b"6"])
    assert facade.wait_exit(time.monotonic() + WAIT) and facade.t.exit_code == 0, facade.t.events[-3:]
    resynced = [(e["why"], e["last"]) for e in facade.t.events if e["event"] == "resynced"]
    assert resynced == [("sequence", 11), ("silence", 0), ("sequence", 20), ("sequence", 30), ("engine", 41)]
    assert [e["event"] for e in facade.t.events].count("ready") == 1
    assert facade.t.events[-1] == {"event": "done", "sequence": 7, "first": 6, "map": {"/a/x": "36"}, "applied": 2, "discarded": 0}
