"""The hostile-peer battery (`invoke fuzz`): every role that binds an endpoint, in every language,
attacked by peers that break the transport (raw TCP and ZMTP bytes, orchestrator/zmtp.py) or the
example's protocol (malformed, generated and flooding messages, wrong socket types, long and many
subscriptions). After each attack the role must still serve a correct peer, stay under a memory
bound, and stop on SIGTERM with `done`.

Each run is one fresh role process, one attack, one language: a cell of the table target × attack
× language. A cell that breaks the rules in the way a library defect recorded in
orchestrator/languages.yaml (`defects:`) predicts is `defect`, with the defect's name; anything
else that is not `survived` fails the battery. Loopback only; every loop is bounded in count and
in time.
"""
import itertools
import os
import random
import re
import string
import struct
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from . import zmtp
from .checks.valuation import order_value
from .runner import RoleProcess, RoleTranscript

MEMORY_BOUND_MB = 512  # resident memory a role may hold after an attack (a .NET role starts near 90)
START_SECONDS = 30  # for `ready`: a .NET role on a loaded two-core machine can take seconds
PROBE_SECONDS = 5  # for each answer of the correct peer after the attack
SETTLE_SECONDS = 20  # for a flooded target to take in the whole flood
STOP_SECONDS = 10  # for `done` and exit 0 after SIGTERM
SEED = 20261206  # every random choice of the battery derives from it: a rerun sends the same bytes

OUTCOMES = ("survived", "defect", "crashed", "hung", "no-stop", "memory", "broke-protocol", "could-not-start")


# --- targets: the roles that bind, how to start them, how a correct peer checks them -------------


@dataclass
class Target:
    name: str  # "chat-server"
    example: str
    role: str
    flags: dict
    sockets: dict  # the flag of each bound endpoint -> (its socket type, a correct peer's socket type)
    max_frame: int  # the example's maximum message size (PROTOCOL.md)
    seed: int = 1
    # A topic the target publishes that no probe uses: a flooding XSUB subscribes to it last, and
    # hearing it proves the target has taken in everything the XSUB sent before (one connection
    # keeps its order). PUB endpoints that broadcast everything use "".
    marker: bytes = b""

    def endpoints(self, ready):
        """flag -> (host, port, socket type, peer type), from the `ready` event."""
        found = {}
        for flag, (kind, peer) in self.sockets.items():
            host, port = ready[flag].removeprefix("tcp://").rsplit(":", 1)
            found[flag] = (host, int(port), kind, peer)
        return found


ANY = "tcp://127.0.0.1:*"
TARGETS = {
    "chat-server": Target(
        "chat-server", "chat", "server", {"requests": ANY, "broadcasts": ANY, "heartbeat": 100, "expiry": 60000},
        {"requests": ("REP", "REQ"), "broadcasts": ("PUB", "SUB")}, max_frame=8192),
    "ticker-publisher": Target(
        "ticker-publisher", "ticker", "publisher", {"ticks": ANY, "symbols": "AAPL,GOOG", "subscribers": 1, "interval": 10},
        {"ticks": ("XPUB", "SUB")}, max_frame=256, marker=b"GOOG\0"),
    "ticker-proxy": Target(
        "ticker-proxy", "ticker", "proxy", {"downstream": ANY},
        {"downstream": ("XPUB", "SUB")}, max_frame=256, marker=b"MARK\0"),
    "valuation-sink": Target(
        "valuation-sink", "valuation", "sink",
        {"results": ANY, "control": ANY, "workers": 1000, "count": 10, "quiet": 60000, "heartbeat": 100, "seed": 7},
        {"results": ("PULL", "PUSH"), "control": ("PUB", "SUB")}, max_frame=256, seed=7),
    "desk-valuation": Target(  # the desk binds only its valuation agent's sockets; its other agents
        # connect to a port where nothing listens, and the trade waits for workers that never come
        "desk-valuation", "desk", "trader",
        {"name": "fuzzed", **dict.fromkeys(("chat-requests", "chat-broadcasts", "ticks", "snapshot", "updates", "collector"),
                                           "tcp://127.0.0.1:9"),
         "orders": ANY, "results": ANY, "control": ANY, "trade": 10, "workers": 1000, "quiet": 60000, "heartbeat": 100, "seed": 7},
        {"results": ("PULL", "PUSH"), "control": ("PUB", "SUB"), "orders": ("PUSH", "PULL")}, max_frame=256, seed=7),
    "query-engine": Target(  # no ticks: every update comes from the battery's own writes
        "query-engine", "query", "engine", {"snapshot": ANY, "updates": ANY, "collector": ANY, "hugz": 100},
        {"snapshot": ("ROUTER", "DEALER"), "updates": ("XPUB", "SUB"), "collector": ("SUB", "PUB")},
        max_frame=1024, marker=b"HUGZ"),  # a subscription to HUGZ is answered by a HUGZ at once
}


class Upstream:
    """The ticker proxy's publisher: a PUB that sends an AAPL tick (for the probe) and a MARK tick
    (for settling floods) every 10 ms from its own thread until stopped (a real publisher of some
    language would mix another target in)."""

    def __init__(self, context):
        self.context, self.stopped = context, threading.Event()
        pub = context.socket(zmq.PUB)
        pub.linger = 0
        pub.bind(ANY)
        self.endpoint = pub.last_endpoint.decode()
        self.thread = threading.Thread(target=self._run, args=(pub,), daemon=True)
        self.thread.start()

    def _run(self, pub):
        sequence = 0
        while not self.stopped.wait(0.01):  # the pace of the ticks, not a synchronisation
            sequence += 1
            for topic in (b"AAPL\0", b"MARK\0"):
                pub.send_multipart([topic, struct.pack(">Q", sequence), struct.pack(">q", 0), struct.pack(">d", 1.0)])
        pub.close()

    def stop(self):
        self.stopped.set()
        self.thread.join()


def _socket(context, kind, endpoint, **options):
    sock = context.socket(kind)
    sock.linger = 0
    for name, value in options.items():
        setattr(sock, name, value)
    sock.connect(endpoint)
    return sock


def _heard(sock, topic, seconds):
    """True once a message whose frame 0 starts with `topic` arrives within `seconds`."""
    end = time.monotonic() + seconds
    while sock.poll(max(0, int((end - time.monotonic()) * 1000))):
        if sock.recv_multipart()[0].startswith(topic):
            return True
    return False


def probe(target, ready, role, context, number):
    """A correct peer after the attack: None when it was served, else what went wrong."""
    endpoint = {flag: ready[flag] for flag in target.sockets}
    sockets = []
    try:
        if target.name == "chat-server":
            sub = _socket(context, zmq.SUB, endpoint["broadcasts"], subscribe=b"")
            req = _socket(context, zmq.REQ, endpoint["requests"])
            sockets += [sub, req]
            # The heartbeat first: a server wedged in a receive stops broadcasting, and a request
            # would unblock it.
            if not _heard(sub, b"", PROBE_SECONDS):
                return "a correct subscriber got no broadcast (no heartbeat)"
            handle = f"probe{number}".encode()
            req.send_multipart([handle])
            if not req.poll(PROBE_SECONDS * 1000):
                return "a correct client got no reply to its join"
            reply = req.recv_multipart()
            if handle not in reply or reply[0] == b"":
                return f"a correct client's join got {reply!r:.80}"
        elif target.name in ("ticker-publisher", "ticker-proxy"):
            sub = _socket(context, zmq.SUB, endpoint[next(iter(target.sockets))])
            sockets.append(sub)
            sub.subscribe(b"AAPL\0")
            sub.subscribe(f"@probe{number}".encode())  # starts a publisher that waits for one subscriber
            if not _heard(sub, b"AAPL\0", PROBE_SECONDS):
                return "a correct subscriber got no AAPL tick"
        elif target.name == "query-engine":
            sub = _socket(context, zmq.SUB, endpoint["updates"], subscribe=b"HUGZ")
            dealer = _socket(context, zmq.DEALER, endpoint["snapshot"])
            sockets += [sub, dealer]
            if not _heard(sub, b"HUGZ", PROBE_SECONDS):
                return "a correct facade got no HUGZ for its subscription"
            dealer.send_multipart([b"ICANHAZ?", b""])
            if not _heard(dealer, b"KTHXBAI", PROBE_SECONDS):
                return "a correct facade's ICANHAZ? got no KTHXBAI"
        elif target.name in ("valuation-sink", "desk-valuation"):
            sub = _socket(context, zmq.SUB, endpoint["control"], subscribe=b"")
            push = _socket(context, zmq.PUSH, endpoint["results"])
            sockets += [sub, push]
            if not _heard(sub, b"", PROBE_SECONDS):
                return "a correct worker heard no state on the control channel"
            name = f"probe{number}"
            push.send_multipart([b"ready", name.encode()])
            if not role.wait_for(lambda e: e["event"] == "worker" and e.get("name") == name, time.monotonic() + PROBE_SECONDS):
                return "the sink did not report a correct worker's ready"
        return None
    finally:
        for sock in sockets:
            sock.close()


# --- attacks ------------------------------------------------------------------------------------


@dataclass
class Attack:
    target: Target
    endpoints: dict  # flag -> (host, port, socket type, peer type)
    role: RoleProcess
    context: zmq.Context
    rng: random.Random
    held: list = field(default_factory=list)  # connections kept open during the probe
    problems: list = field(default_factory=list)  # protocol answers that broke PROTOCOL.md
    stalled: str = None  # the target did not take in a flood within SETTLE_SECONDS

    def each(self, kinds=None):
        for flag, (host, port, kind, peer) in self.endpoints.items():
            if kinds is None or kind in kinds:
                yield flag, host, port, kind, peer

    def endpoint(self, flag):
        host, port, _, _ = self.endpoints[flag]
        return f"tcp://{host}:{port}"

    def peer(self, host, port):
        try:
            return zmtp.Peer(host, port)
        except OSError:
            return None


def _send_raw(attack, host, port, data, shake=None, wait=0.1):
    """One connection: an optional handshake as `shake`, then `data`, then a short read and close."""
    peer = attack.peer(host, port)
    if peer is None:
        return
    if shake is None or peer.handshake(shake):
        peer.send(data)
        peer.sock.settimeout(wait)
        peer.read(1 << 12)
    peer.close()


def garbage(attack):
    """Random bytes where a greeting should be: plain noise, a signature followed by noise, and
    noise that libzmq reads as a ZMTP/1.0 peer (a length byte, then a flags byte)."""
    for _, host, port, _, _ in attack.each():
        noise = attack.rng.randbytes(4096)
        for data in (noise, zmtp.SIGNATURE + noise, b"\x05\x00" + noise):
            _send_raw(attack, host, port, data)


def greetings(attack):
    """Greetings of every ZMTP version and unknown or unconfigured mechanisms, and cut-short ones."""
    for _, host, port, _, _ in attack.each():
        variants = [
            b"\x01\x00" + b"\x06\x00hello",  # ZMTP/1.0: an empty identity, then a message
            zmtp.SIGNATURE + b"\x01\x03\x00" + b"\x01\x00",  # ZMTP/2.0: revision 1, socket type, identity
            zmtp.greeting(mechanism=b"BOGUS"),
            zmtp.greeting(mechanism=b"PLAIN"),
            zmtp.greeting(mechanism=b"CURVE"),
            zmtp.greeting(mechanism=b"GSSAPI"),
            zmtp.greeting(mechanism=b""),
            zmtp.greeting(minor=1, as_server=True),
            zmtp.greeting(major=4, minor=0),
            zmtp.greeting(major=255, minor=255),
            zmtp.greeting()[:12],
            b"\xff" + b"\0" * 8 + b"\x00" + zmtp.greeting()[10:],  # a signature with a wrong last byte
        ]
        for data in variants:
            _send_raw(attack, host, port, data)


def bad_commands(attack):
    """After a correct NULL handshake: commands a library never sends."""
    for _, host, port, _, peer in attack.each():
        for data in (
            zmtp.command(b"BOGUS", b"x" * 10),
            zmtp.ready(peer),  # READY twice
            zmtp.header(zmtp.COMMAND, 6) + b"\x20READY",  # a name longer than the command
            zmtp.command(b"PING"),  # PING without its TTL
            zmtp.command(b"ERROR", b"\x05oops!"),
            zmtp.command(b"SUBSCRIBE", b"A" * 200),
            zmtp.command(b"CANCEL", b""),
            zmtp.header(zmtp.COMMAND | zmtp.MORE, 7) + b"\x05READY\x00",  # a command with more set
        ):
            _send_raw(attack, host, port, data, shake=peer)


def empty_command(attack):
    """After a correct NULL handshake, the two bytes 04 00: a command frame of length 0."""
    for _, host, port, _, peer in attack.each():
        _send_raw(attack, host, port, b"\x04\x00", shake=peer)


def huge_declared(attack):
    """Frames that declare 2^62, 2^63 and 2^64-1 bytes (the long form) and never send them."""
    for _, host, port, _, peer in attack.each():
        for flags, size in ((0, 1 << 62), (zmtp.COMMAND, 1 << 63), (zmtp.MORE, (1 << 64) - 1)):
            _send_raw(attack, host, port, bytes([flags | zmtp.LONG]) + struct.pack(">Q", size) + b"x" * 64, shake=peer)


def oversize(attack):
    """Frames just above the example's maximum message size, 60 KB and 1 MiB, actually sent: the
    library must drop them with their sender (for PUB and XPUB endpoints: huge subscriptions)."""
    for _, host, port, kind, peer in attack.each():
        for size in (attack.target.max_frame + 1, 60_000, 1 << 20):
            body = b"\x01" + b"A" * (size - 1)
            data = zmtp.frame(b"", more=True) + zmtp.frame(body) if peer == "REQ" else zmtp.frame(body)
            _send_raw(attack, host, port, data, shake=peer)


def slowloris(attack):
    """Twenty connections that send a greeting one byte every 50 ms (1.6 s at most), kept open
    while the correct peer is served."""
    peers = [p for _, host, port, _, _ in attack.each() for p in [attack.peer(host, port) for _ in range(10)] if p]
    data = zmtp.greeting()[:32]
    for index in range(len(data)):
        for peer in peers:
            peer.send(data[index:index + 1])
        time.sleep(0.05)  # the attacker's pace, not a synchronisation
    attack.held += peers


def half_open(attack):
    """Three hundred connections per endpoint that never say anything, open during the probe."""
    for _, host, port, _, _ in attack.each():
        for _ in range(300 // len(attack.endpoints)):
            peer = attack.peer(host, port)
            if peer:
                attack.held.append(peer)


def churn(attack):
    """A thousand connect/close cycles, fifty of them after a complete handshake."""
    for _, host, port, _, peer in attack.each():
        for index in range(1000 // len(attack.endpoints)):
            connection = attack.peer(host, port)
            if connection is None:
                continue
            if index % 20 == 0:
                connection.handshake(peer)
            connection.close()


WRONG_TYPES = {  # socket types that must not be paired with each endpoint's (RFC 28/29/...)
    "REP": ["PUB", "SUB", "PUSH", "PULL", "PAIR", "REP", "ROUTER", "XPUB", "BOGUS"],
    "PUB": ["PUB", "PUSH", "PULL", "REQ", "REP", "DEALER", "PAIR", "BOGUS"],
    "XPUB": ["PUB", "XPUB", "PUSH", "PULL", "REQ", "REP", "DEALER", "PAIR", "BOGUS"],
    "PULL": ["PULL", "PUB", "SUB", "REQ", "REP", "DEALER", "ROUTER", "PAIR", "BOGUS"],
    "PUSH": ["PUSH", "PUB", "SUB", "REQ", "REP", "DEALER", "ROUTER", "PAIR", "BOGUS"],
    "ROUTER": ["PUB", "SUB", "XPUB", "XSUB", "PUSH", "PULL", "REP", "PAIR", "BOGUS"],
    "SUB": ["SUB", "XSUB", "PUSH", "PULL", "REQ", "REP", "DEALER", "ROUTER", "PAIR", "BOGUS"],
}


def wrong_type(attack):
    """Handshakes that announce a socket type the endpoint must refuse, each followed by a message."""
    for _, host, port, kind, _ in attack.each():
        for wrong in WRONG_TYPES[kind]:
            peer = attack.peer(host, port)
            if peer is None:
                continue
            if peer.send(zmtp.greeting()) and len(peer.read(64)) == 64:
                peer.send(zmtp.ready(wrong) + zmtp.message([b"", b"hello"]))
                peer.sock.settimeout(0.1)
                peer.read(1 << 12)
            peer.close()


def long_subscriptions(attack):
    """Subscriptions of 60 KB, 1 MiB and 16 MiB (stack overflows in the subscription trie, and
    1.2 GiB of memory, before maximum message sizes were set). Sent as raw frames: a libzmq XSUB
    here would apply them to its own trie first, and overflow this process's stack."""
    for _, host, port, _, peer in attack.each({"PUB", "XPUB"}):
        for size in (60_000, 1 << 20, 16 << 20):
            _send_raw(attack, host, port, zmtp.frame(b"\x01" + b"Q" * size), shake=peer)


def many_subscriptions(attack):
    """Twenty thousand different subscriptions (then their cancellations) from one XSUB."""
    for flag, *_ in attack.each({"PUB", "XPUB"}):
        xsub = _socket(attack.context, zmq.XSUB, attack.endpoint(flag), sndhwm=0)
        topics = dict.fromkeys("".join(attack.rng.choices(string.ascii_uppercase, k=8)).encode() + b"\0" for _ in range(20000))
        for topic in topics:
            xsub.send(b"\x01" + topic)
        for topic in topics:
            xsub.send(b"\x00" + topic)
        _settle(attack, xsub)


def unfinished(attack):
    """A subscription, then (once the target has taken it in) a multipart message whose last frame
    repeats it: XPUB passes the first frame on with MORE set and drops the last, so the message
    never ends. libzmq's built-in proxy gave up on it (EAGAIN) and forwarded nothing more. The
    XSUB stays connected while the correct peer is served, so nothing completes the message."""
    for flag, *_ in attack.each({"PUB", "XPUB"}):
        xsub = _socket(attack.context, zmq.XSUB, attack.endpoint(flag))
        attack.held.append(xsub)
        marker = attack.target.marker
        if attack.target.name == "ticker-publisher":
            xsub.send(b"\x01@unfinished")  # a publisher publishes once a subscriber has joined
        xsub.send(b"\x01" + marker)
        if not _heard(xsub, marker, SETTLE_SECONDS):
            attack.stalled = f"the subscription to {marker!r} was not taken in within {SETTLE_SECONDS} s"
            return
        xsub.send_multipart([b"unfinished", b"\x01" + marker])


def _settle(attack, xsub):
    """Subscribe the flooding XSUB to the target's marker topic last, and wait for a message of it:
    then the target has taken in the whole flood, and the probe comes after it, not during it."""
    if attack.target.name == "ticker-publisher":
        xsub.send(b"\x01@flood")  # a publisher publishes once a subscriber has joined
    xsub.send(b"\x01" + attack.target.marker)
    if not _heard(xsub, attack.target.marker, SETTLE_SECONDS):
        attack.stalled = f"the flood was not taken in within {SETTLE_SECONDS} s (no {attack.target.marker!r} message after it)"
    xsub.close()


# -- the example's own messages: malformed, generated, flooding --


def chat_expected(frames, known=()):
    """The reply PROTOCOL.md prescribes for a chat request: an error code, or None for a roster.
    `known`: the handles that joined before it (a post from any other is `unknown-handle`)."""
    if len(frames) not in (1, 2):
        return "frame-count"
    if not frames[0]:
        return "empty-handle"
    if len(frames[0]) > 32:
        return "handle-too-long"
    if len(frames) == 2 and not frames[1]:
        return "empty-text"
    if len(frames) == 2 and len(frames[1]) > 4096:
        return "text-too-long"
    for frame in frames:
        try:
            frame.decode("utf-8")
        except UnicodeDecodeError:
            return "invalid-utf8"
    if len(frames) == 2 and frames[0] not in known:
        return "unknown-handle"
    return None


def _generated(strategy, count):
    """`count` values of a hypothesis strategy, the same on every run (derandomized, no database)."""
    values = []

    @settings(max_examples=count, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), deadline=None)
    @given(strategy)
    def collect(value):
        values.append(value)

    collect()
    return values[:count]


SMALL_FRAME = st.one_of(  # frames of any content, all below every example's maximum message size
    st.binary(max_size=40),
    st.text(max_size=12).map(str.encode),
    st.sampled_from([b"", b"\xff", b"\xed\xa0\x80", b"\xc0\xaf", "é".encode() * 16, "é".encode() * 17]),
)
CHAT_FRAME = st.one_of(SMALL_FRAME, st.sampled_from([b"a" * 4096, b"a" * 4097, "é".encode() * 2049]))


def chat_requests(attack):
    """Malformed requests from a DEALER (no lockstep to protect the server), then generated ones,
    each reply compared with PROTOCOL.md's rules; and requests without the empty delimiter frame,
    which REP drops inside its receive."""
    endpoint = attack.endpoint("requests")
    bare = _socket(attack.context, zmq.DEALER, endpoint)
    for frames in ([b"bob"], [b"bob", b"text"], [b"", b""], [b"\x00" * 5000]):
        bare.send_multipart(frames)  # no delimiter: REP must drop them and go on
    raw = attack.peer(*attack.endpoints["requests"][:2])
    if raw and raw.handshake("REQ"):
        raw.send(zmtp.frame(b"", more=True) + zmtp.frame(b"cut", more=True))  # a message that never ends
        attack.held.append(raw)
    dealer = _socket(attack.context, zmq.DEALER, endpoint)
    requests = [[b"a", b"b", b"c"], [b""], [b"x" * 33], [b"ok", b""], [b"ok", b"t" * 4097], [b"\xff"]]
    requests += _generated(st.lists(CHAT_FRAME, min_size=1, max_size=4), 120)
    known = set()  # the handles that joined: only they may post
    for frames in requests:
        dealer.send_multipart([b""] + frames)
        if not dealer.poll(PROBE_SECONDS * 1000):
            attack.problems.append(f"no reply to {frames!r:.80}")
            return
        reply = dealer.recv_multipart()
        want = chat_expected(frames, known)
        if want is None and len(frames) == 1:
            known.add(frames[0])
        if want is None and (reply[:1] != [b""] or frames[0] not in reply[1:]):
            attack.problems.append(f"{frames!r:.80}: expected a roster with the handle, got {reply!r:.80}")
        elif want is not None and reply != [b"", b"", want.encode()]:
            attack.problems.append(f"{frames!r:.80}: expected error {want}, got {reply!r:.80}")


def orphaned_request(attack):
    """A request without the empty delimiter frame, from a peer that hangs up at once, before REP
    reads it: libzmq's and NetMQ's REP then drop the reply to the next request (a recorded defect,
    tests/defects/rep-reply-lost-after-orphaned-request)."""
    peer = attack.peer(*attack.endpoints["requests"][:2])
    if peer and peer.handshake("DEALER"):
        peer.send(zmtp.message([b"no", b"delimiter"]))
    if peer:
        peer.close()


def chat_flood(attack):
    """Five thousand posts pipelined from DEALERs as fast as they go (ten seconds at most)."""
    dealer = _socket(attack.context, zmq.DEALER, attack.endpoint("requests"), sndhwm=0, rcvhwm=0)
    sent = 0
    for number in range(5000):
        dealer.send_multipart([b"", b"flood", f"post {number}".encode()])
        sent += 1
    end, got = time.monotonic() + 10, 0
    while got < sent and dealer.poll(max(0, int((end - time.monotonic()) * 1000))):
        dealer.recv_multipart()
        got += 1
    if got < sent:
        attack.problems.append(f"{got} replies to {sent} pipelined posts within 10 s")


def sink_expected(frames, seed, count, counted):
    """The sink's answer to one message (PROTOCOL.md): 'worker', an error code, or 'result'."""
    if frames[0] == b"ready":
        if len(frames) != 2 or not 1 <= len(frames[1]) <= 32 or not _utf8(frames[1]):
            return "malformed-ready"
        return "worker"
    if (len(frames) != 4 or frames[0] != b"result" or not 1 <= len(frames[1]) <= 32 or not _utf8(frames[1])
            or len(frames[2]) != 8 or len(frames[3]) != 8):
        return "malformed-result"
    order_id, value = struct.unpack(">Q", frames[2])[0], struct.unpack(">q", frames[3])[0]
    if not 1 <= order_id <= count:
        return "unknown-id"
    if value != order_value(seed, order_id):
        return "wrong-value"
    if order_id in counted:
        return "duplicate"
    counted.add(order_id)
    return "result"


def _utf8(data):
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def sink_messages(attack):
    """Forged and malformed readies and results (hand-made, then generated), each answer compared
    with PROTOCOL.md's rules: a forged value is `wrong-value`, never part of the total."""
    target = attack.target
    seed, count = target.seed, int(target.flags.get("count") or target.flags["trade"])  # a sink's batch, a desk's trade

    def result(order_id, value, name=b"w"):
        return [b"result", name, struct.pack(">Q", order_id), struct.pack(">q", value)]

    messages = [
        [b"ready", b""], [b"ready", b"\xff"], [b"ready", b"n" * 33], [b"ready"], [b"ready", b"a", b"b"],
        result(1, (1 << 63) - 1), result(2, 1), result(3, -(1 << 63)), result(0, 0), result(count + 1, 0),
        result(4, order_value(seed, 4)), result(4, order_value(seed, 4)), [b"result"], [b"hello"],
    ]
    ids = st.integers(min_value=0, max_value=count + 2)
    generated_result = st.builds(
        lambda name, order_id, forged, delta: result(order_id, order_value(seed, max(order_id, 1)) + (delta if forged else 0), name),
        st.one_of(st.just(b"w"), SMALL_FRAME), ids, st.booleans(), st.integers(min_value=-(1 << 40), max_value=1 << 40))
    messages += _generated(st.one_of(generated_result, st.lists(SMALL_FRAME, min_size=1, max_size=5),
                                     st.tuples(st.just(b"ready"), SMALL_FRAME).map(list)), 120)
    counted, wanted = set(), []  # the error codes PROTOCOL.md prescribes, in order; the ids it counts
    for frames in messages:
        outcome = sink_expected(frames, seed, count, counted)
        if outcome not in ("worker", "result"):
            wanted.append(outcome)
    push = _socket(attack.context, zmq.PUSH, attack.endpoint("results"), sndhwm=0)
    for frames in messages:
        push.send_multipart(frames)
    role = attack.role
    if not role.wait_for(lambda e: e["event"] == "error", time.monotonic() + PROBE_SECONDS * 2, count=len(wanted)):
        attack.problems.append(f"expected {len(wanted)} errors, got {sum(e['event'] == 'error' for e in role.t.events)}")
        return
    got = [e["code"] for e in role.t.events if e["event"] == "error"]
    if got != wanted:
        attack.problems.append(f"errors {_difference(got, wanted)}")
    results = sorted(e["id"] for e in role.t.events if e["event"] == "result")
    if results != sorted(counted):
        attack.problems.append(f"counted ids {results}, expected {sorted(counted)}")


def _difference(got, wanted):
    for index, (a, b) in enumerate(zip(got, wanted)):
        if a != b:
            return f"differ at {index}: got {a!r}, expected {b!r}"
    return f"got {len(got)}, expected {len(wanted)}"


def sink_flood(attack):
    """Twenty thousand results for unknown ids as fast as they go: reported, not counted."""
    push = _socket(attack.context, zmq.PUSH, attack.endpoint("results"), sndhwm=0)
    before = sum(e["event"] == "error" for e in attack.role.t.events)
    for number in range(20000):
        push.send_multipart([b"result", b"flood", struct.pack(">Q", 1000 + number), struct.pack(">q", 0)])
    if not attack.role.wait_for(lambda e: e["event"] == "error", time.monotonic() + SETTLE_SECONDS, count=before + 20000):
        attack.stalled = f"the sink had not reported the 20000 results within {SETTLE_SECONDS} s"


def subscriptions(attack):
    """Malformed subscription frames and multipart messages (hand-made, then generated)."""
    frames = [b"", b"\x02AAPL\0", b"\x01", b"\x01@", b"\x01@" + b"n" * 33, b"\x01goog\0", b"\x01GOOG", b"\x00NEVER\0"]
    frames += [bytes([kind]) + body for kind, body in _generated(st.tuples(st.sampled_from([0, 1, 2, 65]), SMALL_FRAME), 150)]
    xsub = _socket(attack.context, zmq.XSUB, attack.endpoint(next(iter(attack.target.sockets))))
    for frame in frames:
        xsub.send(frame)
    for group in (frames[:3], frames[3:7], [b"\x01AAPL\0", b"\x01AAPL\0"], [b"zz", b"\x01IBM\0"]):
        xsub.send_multipart(group)
    _settle(attack, xsub)


def subscription_flood(attack):
    """Fifty thousand subscribe/cancel pairs for one topic, as fast as they go."""
    xsub = _socket(attack.context, zmq.XSUB, attack.endpoint(next(iter(attack.target.sockets))), sndhwm=0)
    for _ in range(50000):
        xsub.send(b"\x01FLOOD\0")
        xsub.send(b"\x00FLOOD\0")
    _settle(attack, xsub)


KEY = re.compile(rb"(/[A-Za-z0-9._-]+)+")
SUBTREE = re.compile(rb"((/[A-Za-z0-9._-]+)+/)?")
PROPERTIES = re.compile(rb"([A-Za-z0-9_-]{1,32}=[\x20-\x7e]*\n)*")


def kvset_expected(frames):
    """The engine's answer to one KVSET (query PROTOCOL.md, engine step 2): an error code, or
    'update'. The rules again, written here on their own."""
    if len(frames) != 5:
        return "malformed-kvset"
    key, sequence, uuid, props, value = frames
    ttls = [line[4:] for line in props.split(b"\n") if line.startswith(b"ttl=")]
    if (not 2 <= len(key) <= 255 or not KEY.fullmatch(key) or len(sequence) != 8 or len(uuid) not in (0, 16)
            or len(props) > 255 or not PROPERTIES.fullmatch(props) or len(ttls) > 1 or len(value) > 256):
        return "malformed-kvset"
    if ttls and not (re.fullmatch(rb"[1-9][0-9]{0,4}", ttls[0]) and int(ttls[0]) <= 86400):
        return "malformed-kvset"
    return "update"


def icanhaz_expected(frames):
    ok = len(frames) == 2 and frames[0] == b"ICANHAZ?" and len(frames[1]) <= 255 and SUBTREE.fullmatch(frames[1])
    return "snapshot" if ok else "malformed-icanhaz"


QUERY_FRAME = st.one_of(SMALL_FRAME, st.sampled_from([b"/a", b"/a/b", b"/a/", b"//", b"/" + b"k" * 254, b"/" + b"k" * 255,
                                                      b"\0" * 8, b"\0" * 16, b"ttl=1\n", b"ttl=0\n", b"ttl=86401\n",
                                                      b"a=b\nttl=2\n", b"v" * 256, b"v" * 257, b"ICANHAZ?"]))


def query_messages(attack):
    """Malformed and generated ICANHAZ? requests and KVSETs, each answer compared with PROTOCOL.md's
    rules: the engine reports each broken one with its code, applies each good one, and answers
    every good request with a KTHXBAI."""
    requests = [[b"ICANHAZ?"], [b"ICANHAZ?", b"/a/", b"x"], [b"ICANHAZ", b""], [b"ICANHAZ?", b"/a"], [b"ICANHAZ?", b"/a/"]]
    requests += _generated(st.one_of(st.lists(QUERY_FRAME, min_size=1, max_size=3),
                                     st.tuples(st.just(b"ICANHAZ?"), QUERY_FRAME).map(list)), 80)
    good = [b"/a/b", b"\0" * 8, b"", b"", b"v"]
    writes = [good[:4], good + [b""], [b"/a//b"] + good[1:], good[:3] + [b"ttl=1\nttl=2\n"] + good[4:], good]
    writes += _generated(st.one_of(st.lists(QUERY_FRAME, min_size=4, max_size=6),
                                   st.tuples(st.just(b"/q/k"), QUERY_FRAME, QUERY_FRAME, QUERY_FRAME, QUERY_FRAME).map(list)), 150)
    xpub = _socket(attack.context, zmq.XPUB, attack.endpoint("collector"), sndhwm=0)
    if not _heard(xpub, b"\x01", PROBE_SECONDS):
        attack.problems.append("the collector never subscribed")
        return

    def answer(event):  # an expiry (a write with a ttl, a second later) is no answer to anything
        if event["event"] == "update":
            return "update" if event.get("cause") == "kvset" else None
        return event.get("code") if event["event"] == "error" else event["event"] if event["event"] == "snapshot" else None

    role, before = attack.role, len(attack.role.t.events)
    for frames in writes:
        xpub.send_multipart(frames)
    dealer = _socket(attack.context, zmq.DEALER, attack.endpoint("snapshot"))
    for frames in requests:
        dealer.send_multipart(frames)
    wanted = Counter(kvset_expected(frames) for frames in writes) + Counter(icanhaz_expected(frames) for frames in requests)
    already = sum(answer(e) is not None for e in role.t.events[:before])
    role.wait_for(lambda e: answer(e) is not None, time.monotonic() + PROBE_SECONDS * 2, count=already + sum(wanted.values()))
    got = Counter(answer(e) for e in role.t.events[before:] if answer(e) is not None)
    if got != wanted:
        attack.problems.append(f"answers {dict(got)}, expected {dict(wanted)}")


def query_flood(attack):
    """Five thousand ICANHAZ? pipelined from one DEALER, and twenty thousand KVSETs of one key, as fast
    as they go: every request answered within ten seconds, every write applied."""
    xpub = _socket(attack.context, zmq.XPUB, attack.endpoint("collector"), sndhwm=0)
    if not _heard(xpub, b"\x01", PROBE_SECONDS):
        attack.problems.append("the collector never subscribed")
        return
    dealer = _socket(attack.context, zmq.DEALER, attack.endpoint("snapshot"), sndhwm=0, rcvhwm=0)
    for number in range(20000):
        xpub.send_multipart([b"/flood/key", b"\0" * 8, b"", b"", str(number).encode()])
    for _ in range(5000):
        dealer.send_multipart([b"ICANHAZ?", b"/flood/"])
    end, got = time.monotonic() + 10, 0
    while got < 5000 and dealer.poll(max(0, int((end - time.monotonic()) * 1000))):
        got += dealer.recv_multipart()[0] == b"KTHXBAI"
    if got < 5000:
        attack.problems.append(f"{got} KTHXBAI for 5000 pipelined ICANHAZ? within 10 s")
    if not attack.role.wait_for(lambda e: e["event"] == "update", time.monotonic() + SETTLE_SECONDS, count=20000):
        attack.stalled = f"the engine had not applied the 20000 writes within {SETTLE_SECONDS} s"


TRANSPORT = {
    "garbage": garbage, "greetings": greetings, "bad-commands": bad_commands, "empty-command": empty_command,
    "huge-declared": huge_declared, "oversize": oversize, "slowloris": slowloris, "half-open": half_open,
    "churn": churn, "wrong-type": wrong_type,
}
SUBSCRIPTIONS = {"long-subscriptions": long_subscriptions, "many-subscriptions": many_subscriptions, "unfinished": unfinished}
PROTOCOL = {
    "chat-server": {"requests": chat_requests, "orphaned-request": orphaned_request, "flood": chat_flood},
    "ticker-publisher": {"subscriptions": subscriptions, "flood": subscription_flood},
    "ticker-proxy": {"subscriptions": subscriptions, "flood": subscription_flood},
    "valuation-sink": {"messages": sink_messages, "flood": sink_flood},
    "desk-valuation": {"messages": sink_messages, "flood": sink_flood},  # the same rules: the desk's agent is a sink
    "query-engine": {"messages": query_messages, "flood": query_flood},
}


def attacks_of(target):
    return {**TRANSPORT, **SUBSCRIPTIONS, **PROTOCOL[target.name]}


def attack_names():
    names = list(TRANSPORT) + list(SUBSCRIPTIONS)
    for extra in PROTOCOL.values():
        names += [name for name in extra if name not in names]
    return names


# --- one run: start, attack, probe, measure, stop --------------------------------------------------


@dataclass
class Outcome:
    target: str
    attack: str
    lang: str
    status: str
    detail: str = ""
    seconds: float = 0.0
    rss_mb: float = None
    defect: str = None
    logs: dict = field(default_factory=dict)

    def replay(self):
        return f"invoke fuzz --target {self.target} --attack {self.attack} --lang {self.lang}"


def resident_mb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_one(registry, target, attack_name, lang, run_dir, number=0):
    started = time.monotonic()
    language = registry[lang]
    context = zmq.Context()
    upstream = Upstream(context) if target.name == "ticker-proxy" else None
    flags = dict(target.flags, timeout=0)
    if upstream:
        flags["upstream"] = upstream.endpoint
    stem = f"{target.name}-{attack_name}-{lang}"
    transcript = RoleTranscript(target.role, 0, lang, flags, language.command(target.example, target.role, flags),
                                events_path=run_dir / f"{stem}.jsonl", stderr_path=run_dir / f"{stem}.stderr")
    outcome = Outcome(target.name, attack_name, lang, "survived",
                      logs={"events": str(transcript.events_path), "stderr": str(transcript.stderr_path)})
    role = RoleProcess(transcript, language.environment(), None)
    attack = None
    try:
        ready = role.wait_event("ready", time.monotonic() + START_SECONDS)
        if ready is None:
            outcome.status, outcome.detail = "could-not-start", f"no ready event within {START_SECONDS} s"
            return outcome
        rng = random.Random(f"{SEED}/{target.name}/{attack_name}")  # the same bytes for every language
        attack = Attack(target, target.endpoints(ready), role, context, rng)
        try:
            attacks_of(target)[attack_name](attack)
        except (zmq.ZMQError, OSError) as error:
            attack.problems.append(f"the attack itself failed: {error}")
        problem = None if role.process.poll() is not None else probe(target, ready, role, context, number)
        outcome.rss_mb = resident_mb(role.process.pid)
        for peer in attack.held:
            peer.close()
        if role.process.poll() is not None:
            outcome.status, outcome.detail = "crashed", f"exit {role.process.returncode}" + _last_words(transcript)
        elif attack.stalled or problem:
            outcome.status, outcome.detail = "hung", attack.stalled or problem
        elif outcome.rss_mb is not None and outcome.rss_mb > MEMORY_BOUND_MB:
            outcome.status, outcome.detail = "memory", f"{outcome.rss_mb:.0f} MB resident, over {MEMORY_BOUND_MB} MB"
        if outcome.status == "survived" or outcome.status in ("hung", "memory"):
            role.terminate()
            stopped = role.wait_exit(time.monotonic() + STOP_SECONDS)
            last = transcript.events[-1]["event"] if transcript.events else None
            if outcome.status == "survived" and not (stopped and transcript.exit_code == 0 and last == "done"):
                outcome.status = "no-stop"
                outcome.detail = (f"exit {transcript.exit_code}, last event {last!r}" if stopped
                                  else f"still running {STOP_SECONDS} s after SIGTERM")
        odd = [e for e in transcript.events if e["event"] == "_not-an-event"]
        if outcome.status == "survived" and (attack.problems or odd):
            outcome.status = "broke-protocol"
            outcome.detail = "; ".join(attack.problems[:3]) or f"not JSON on stdout: {odd[0]['line']:.80}"
        return outcome
    finally:
        role.reap()
        if upstream:
            upstream.stop()
        context.destroy(linger=0)
        outcome.seconds = time.monotonic() - started
        known = registry[lang].defect_for(target.name, attack_name)
        if known and outcome.status not in ("survived", "could-not-start"):
            outcome.status, outcome.defect = "defect", known.name
            outcome.detail = f"{known.name}: {outcome.detail}"
        elif known and outcome.status == "survived":
            outcome.detail = f"the recorded defect {known.name} did not show in this run"


def _last_words(transcript):
    try:
        lines = [line for line in transcript.stderr_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f": {lines[0].strip()[:160]}" if lines else ""


def run_battery(registry, targets, attacks, langs, run_dir, parallel=3, on_done=None):
    """Every (target, attack, language) run, `parallel` at a time; the outcomes in a stable order."""
    run_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(TARGETS[t], a, lang) for t in targets for a in attacks if a in attacks_of(TARGETS[t]) for lang in langs]
    counter = itertools.count()

    def one(job):
        outcome = run_one(registry, *job, run_dir, next(counter))
        if on_done:
            on_done(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(one, jobs))


def failed(outcomes):
    return [o for o in outcomes if o.status not in ("survived", "defect")]
