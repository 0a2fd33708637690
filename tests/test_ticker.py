"""The ticker in every language: test vectors, malformed ticks, the command line; the checker."""
import json
import struct
import subprocess
import time

import pytest
import zmq

from conftest import languages, require
from orchestrator import ROOT
from orchestrator.checks import check
from orchestrator.checks.ticker import price
from orchestrator.runner import RoleTranscript
from orchestrator.spec import load_spec

VECTORS = json.loads((ROOT / "examples/ticker/vectors.json").read_text())
WAIT = 30


def run_role(language, args):
    argv = language.command("ticker", args[0], {}) + args[1:]
    return subprocess.run(argv, env=language.environment(), capture_output=True, timeout=WAIT, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("lang", languages("ticker", "encode"))
def test_encode_reproduces_every_vector(built, lang):
    for vector in VECTORS:
        done = run_role(built[lang], ["encode", "--seed", str(vector["seed"]), "--symbol", vector["symbol"],
                                      "--sequence", str(vector["sequence"]), "--timestamp", str(vector["timestamp"])])
        assert done.returncode == 0, done.stderr
        encoded, last = [json.loads(line) for line in done.stdout.splitlines()]
        assert encoded["event"] == "encoded" and last["event"] == "done"
        assert encoded["frames"] == vector["frames"], vector
        assert encoded["cents"] == vector["cents"]


def test_the_checker_recomputes_the_vectors_too():
    for vector in VECTORS:
        assert struct.pack(">d", price(vector["seed"], vector["symbol"], vector["sequence"])).hex() == vector["frames"][3]


@pytest.mark.parametrize("lang", languages())
@pytest.mark.parametrize(
    "args",
    [
        ["subscriber", "--symbols", "GOOG"],  # --name is required
        ["subscriber", "--name", "a", "--symbols", "goog"],
        ["subscriber", "--name", "a", "--symbols", "GOOG,TOOLONGSYM"],
        ["subscriber", "--name", "a", "--symbols", "GOOG", "--seed", "-1"],
        ["subscriber", "--name", "a", "--symbols", "GOOG", "--seed", "18446744073709551616"],
        ["subscriber", "--name", "a", "--symbols", "GOOG", "--switch", "AAPL:MSFT"],
        ["subscriber", "--name", "a", "--symbols", "GOOG,MSFT", "--switch", "GOOG:MSFT"],
        ["publisher", "--interval", "0"],
        ["encode", "--seed", "1", "--symbol", "GOOG"],
    ],
)
def test_a_bad_command_line_exits_2(built, lang, args):
    require(lang, "ticker", args[0])  # the role is a parameter: skipped here, per case
    done = run_role(built[lang], args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == b""


def good_tick(seed, symbol, sequence):
    now = int(time.time() * 1000)
    return [symbol.encode() + b"\0", struct.pack(">Q", sequence), struct.pack(">q", now), struct.pack(">d", price(seed, symbol, sequence))]


@pytest.mark.parametrize("lang", languages("ticker", "subscriber"))
def test_a_subscriber_reports_malformed_ticks_and_carries_on(start_role, lang):
    context = zmq.Context()
    try:
        pub = context.socket(zmq.XPUB)  # the rogue publisher: XPUB, to see the subscriber arrive
        pub.linger = 0
        pub.rcvtimeo = WAIT * 1000
        pub.bind("tcp://127.0.0.1:*")
        subscriber = start_role(lang, "ticker", "subscriber", ticks=pub.last_endpoint.decode(), name="ana",
                                symbols="GOOG", count=2, seed=7, timeout=WAIT * 1000)
        while pub.recv() != b"\x01@ana":  # its symbols come first, then its name
            pass
        bad = [
            ("malformed-tick", [b"GOOG\0", b"\0" * 8, b"\0" * 8]),  # 3 frames
            ("malformed-tick", [b"GOOG\0", b"\0" * 7, b"\0" * 8, b"\0" * 8]),  # a short sequence
            ("malformed-tick", [b"GOOG\0"] + good_tick(7, "GOOG", 1)[1:3] + [b"\0" * 9]),  # a long price
            ("wrong-price", good_tick(7, "GOOG", 1)[:3] + [struct.pack(">d", 1.5)]),
            ("malformed-tick", good_tick(7, "GOOG", 1 << 63)),  # a good price, but a sequence past JSON's portable range
        ]
        for _, frames in bad:
            pub.send_multipart(frames)
        pub.send_multipart(good_tick(7, "GOOG", 1))
        pub.send_multipart(good_tick(7, "GOOG", 2))
        assert subscriber.wait_exit(time.monotonic() + WAIT)
        assert subscriber.t.exit_code == 0, subscriber.t.events[-3:]
        codes = [e["code"] for e in subscriber.t.events if e["event"] == "error"]
        assert codes == [code for code, _ in bad]
        ticks = [e["sequence"] for e in subscriber.t.events if e["event"] == "tick"]
        assert ticks == [1, 2]
        assert subscriber.t.events[-1] == {"event": "done", "ticks": 2, "malformed": len(bad)}
    finally:
        context.destroy(linger=0)


@pytest.mark.parametrize("lang", languages("ticker", "subscriber"))
def test_a_stream_of_useless_ticks_cannot_keep_a_subscriber_past_its_deadline(start_role, lang):
    """Its deadline is checked after every message, not only when a poll comes back empty
    (examples/README.md, "Stopping"): it times out while the rogue publisher is still sending."""
    context = zmq.Context()
    try:
        pub = context.socket(zmq.XPUB)
        pub.linger = 0
        pub.rcvtimeo = WAIT * 1000
        pub.bind("tcp://127.0.0.1:*")
        subscriber = start_role(lang, "ticker", "subscriber", ticks=pub.last_endpoint.decode(), name="ana",
                                symbols="GOOG", count=2, seed=7, timeout=1500)
        while pub.recv() != b"\x01@ana":
            pass
        flood_ends = time.monotonic() + WAIT
        sent = 0
        while subscriber.process.poll() is None and time.monotonic() < flood_ends and sent < 20000:
            pub.send_multipart([b"GOOG\0", b"\0" * 8, b"\0" * 8])  # malformed: counts for nothing
            sent += 1
            time.sleep(0.002)  # a bounded flood: one message every 2 ms
        still_flooding = time.monotonic() < flood_ends and sent < 20000
        assert subscriber.wait_exit(time.monotonic() + WAIT)
        assert still_flooding, f"the subscriber outlived a {WAIT} s flood of {sent} useless ticks"
        assert subscriber.t.exit_code == 1 and subscriber.t.events[-1]["code"] == "timeout", subscriber.t.events[-2:]
    finally:
        context.destroy(linger=0)


# --- the checker ---------------------------------------------------------------------------------

FLAGS = {"name": "ana", "symbols": "GOOG,AAPL", "switch": "AAPL:MSFT", "switch-after": 2, "count": 3, "seed": 5}


def subscriber_events():
    now = int(time.time() * 1000)
    events = [{"event": "ready", "name": "ana", "symbols": ["GOOG", "AAPL"]}]

    def tick(symbol, sequence):
        return {"event": "tick", "symbol": symbol, "sequence": sequence, "timestamp": now, "price": price(5, symbol, sequence)}

    events += [tick("GOOG", 1), tick("AAPL", 1), tick("GOOG", 2), tick("AAPL", 2)]
    events += [{"event": "unsubscribed", "symbol": "AAPL"}, {"event": "subscribed", "symbol": "MSFT"}]
    events += [tick("GOOG", 3), tick("MSFT", 5), tick("MSFT", 6), tick("MSFT", 7)]
    events.append({"event": "done", "ticks": 9, "malformed": 0})
    return events


def cell(events):
    started = time.time() - 5
    publisher = RoleTranscript("publisher", 0, "c", {}, [], exit_code=0, events=[{"event": "ready", "ticks": "x"}, {"event": "done"}],
                               started_at=started, ended_at=time.time() + 5)
    subscriber = RoleTranscript("subscriber", 0, "vb", dict(FLAGS), [], exit_code=0, events=events,
                                started_at=started, ended_at=time.time() + 5)
    return [publisher, subscriber]


def problems_with(change):
    events = subscriber_events()
    change(events)
    return check(load_spec("ticker"), cell(events))


def test_the_ticker_checker_accepts_a_good_transcript():
    assert check(load_spec("ticker"), cell(subscriber_events())) == []


def test_a_gap_is_reported():
    problems = problems_with(lambda events: events.pop(9))  # MSFT 6 goes missing
    assert problems == ["subscriber 0 (vb): MSFT #7 after #5: a gap, not reported as one (gap event: None)",
                        "subscriber 0 (vb): 2 ticks of MSFT, expected at least 3"]


def test_a_gap_the_subscriber_reports_still_fails_a_cell_without_a_restart():
    def lose(events):
        lost = events.pop(9)  # MSFT 6 goes missing, and the subscriber says so
        events.insert(9, {"event": "gap", "symbol": "MSFT", "after": lost["sequence"] - 1, "next": lost["sequence"] + 1})
    assert problems_with(lose)[0] == "subscriber 0 (vb): MSFT #7 after #5: a gap, and nothing was restarted"


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda e: e.insert(9, dict(e[8])), "MSFT #5 after #5: a repeat"),
        (lambda e: e.insert(8, {**e[2], "sequence": 3, "price": price(5, "AAPL", 3)}), "AAPL #3 delivered after unsubscribing"),
        (lambda e: e.insert(1, {**e[1], "symbol": "GOOGL", "price": price(5, "GOOGL", 1)}), "GOOGL #1 delivered without subscribing"),
        (lambda e: e[3].update(price=1.0), "GOOG #2: price 1.0"),
        (lambda e: e[3].update(timestamp=0), "GOOG #2: timestamp 0 outside"),
        (lambda e: e.__delitem__(slice(5, 7)), "never switched from AAPL to MSFT"),
    ],
)
def test_the_ticker_checker_rejects(change, words):
    problems = problems_with(change)
    assert any(words in p for p in problems), problems


@pytest.mark.parametrize("lang", languages("ticker", "publisher"))
def test_the_publisher_reports_malformed_subscriptions(start_role, lang):
    publisher = start_role(lang, "ticker", "publisher", ticks="tcp://127.0.0.1:*", subscribers=1, timeout=WAIT * 1000)
    ready = publisher.wait_event("ready", time.monotonic() + WAIT)
    context = zmq.Context()
    try:
        xsub = context.socket(zmq.XSUB)  # a rogue downstream: subscription messages by hand
        xsub.linger = 0
        xsub.connect(ready["ticks"])
        bad = [b"\x01@", b"\x01@\xff\xfe", b"\x01@" + b"n" * 33, b"\x01goog\x00", b"\x01GOOG"]
        for message in bad:
            xsub.send(message)
        xsub.send(b"\x01@ana")  # the one good subscriber: publishing starts
        assert publisher.wait_event("started", time.monotonic() + WAIT), publisher.t.events
        assert publisher.wait_for(lambda e: e["event"] == "error", time.monotonic() + WAIT, count=len(bad))
        publisher.terminate()
        assert publisher.wait_exit(time.monotonic() + WAIT) and publisher.t.exit_code == 0
        assert [e["code"] for e in publisher.t.events if e["event"] == "error"] == ["malformed-subscription"] * len(bad)
        assert [e["subscriber"] for e in publisher.t.events if e["event"] == "joined"] == ["ana"]
    finally:
        context.destroy(linger=0)


@pytest.mark.parametrize("lang", languages("ticker", "publisher"))
def test_the_publisher_judges_every_frame_and_reports_each_topic_once(start_role, lang):
    """Multipart messages and repeated subscribes from a rogue downstream: every frame is one change
    or one error, whatever its library passes on (PROTOCOL.md, Publisher step 2)."""
    publisher = start_role(lang, "ticker", "publisher", ticks="tcp://127.0.0.1:*", subscribers=1, timeout=WAIT * 1000)
    ready = publisher.wait_event("ready", time.monotonic() + WAIT)
    context = zmq.Context()
    try:
        xsub = context.socket(zmq.XSUB)
        xsub.linger = 0
        xsub.connect(ready["ticks"])
        xsub.send_multipart([b"junk1", b"junk2"])
        xsub.send_multipart([b"\x01AAPL\0", b"\x01AAPL\0"])
        xsub.send(b"\x01GOOG\0")
        xsub.send(b"\x01GOOG\0")
        xsub.send_multipart([b"\x01MSFT\0", b"\x01GOOG\0", b"zz"])
        xsub.send_multipart([b"zz", b"\x01IBM\0"])
        xsub.send(b"\x01@ana")
        assert publisher.wait_event("started", time.monotonic() + WAIT), publisher.t.events
        publisher.terminate()
        assert publisher.wait_exit(time.monotonic() + WAIT) and publisher.t.exit_code == 0
        seen = [(e["event"], e.get("symbol") or e.get("code") or e.get("subscriber")) for e in publisher.t.events
                if e["event"] in ("subscribed", "unsubscribed", "joined", "error")]
        assert seen[:8] == [("error", "malformed-subscription")] * 2 + [("subscribed", "AAPL"), ("subscribed", "GOOG"), ("subscribed", "MSFT")] \
            + [("error", "malformed-subscription")] * 2 + [("subscribed", "IBM")]
        assert seen[8:] == [("joined", "ana")], seen
    finally:
        context.destroy(linger=0)
