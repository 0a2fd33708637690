"""query: a key-value engine and its facades over RFC 12/CHP (examples/query/PROTOCOL.md).

The engine combines three patterns on three sockets: ROUTER answers snapshot requests, XPUB
publishes updates, SUB collects writes; a fourth socket, SUB, takes ticks from example 2's
publisher. A facade asks for snapshots on a DEALER, follows updates on a SUB and writes on an XPUB."""
import argparse
import math
import os
import re
import struct
import time

import zmq

from .contract import Deadline, Failure, StopSignal, at_least, bind, connect, emit, name, recv_if_ready
from .monitor import watch
from .ticker import is_topic, symbol, symbols, topic

# [max size] ZMQ_MAXMSGSIZE on every socket, set before bind or connect: the largest legal frame is
# a 256-byte value; between 257 and 1024 bytes it reaches us and is reported, above that the
# library drops it with the connection.
MAX_MESSAGE = 1024
MAX_VALUE = 256
MAX_FRAMES = 7  # frames kept of a message (5, a routing id, and one to tell "more"); the rest are dropped
KEY = re.compile(rb"(/[A-Za-z0-9._-]+)+")
SUBTREE = re.compile(rb"(/[A-Za-z0-9._-]+)+/")
PROPERTY = re.compile(rb"([A-Za-z0-9_-]{1,32})=([\x20-\x7e]*)\n")
HUGZ = b"HUGZ"
ICANHAZ, KTHXBAI = b"ICANHAZ?", b"KTHXBAI"


def add_roles(roles):
    engine = roles.add_parser("engine")
    engine.add_argument("--snapshot", default="tcp://127.0.0.1:5556")
    engine.add_argument("--updates", default="tcp://127.0.0.1:5557")
    engine.add_argument("--collector", default="tcp://127.0.0.1:5558")
    engine.add_argument("--ticks", default="")
    engine.add_argument("--name", type=name, default="engine")
    engine.add_argument("--symbols", type=symbols, default="AAPL,GOOG,GOOGL,MSFT,IBM")
    engine.add_argument("--hugz", type=at_least(1), default=1000)
    engine.add_argument("--max-keys", type=at_least(1), default=10000)
    engine.add_argument("--timeout", type=at_least(0), default=0)
    engine.set_defaults(run=run_engine)

    facade = roles.add_parser("facade")
    facade.add_argument("--snapshot", default="tcp://127.0.0.1:5556")
    facade.add_argument("--updates", default="tcp://127.0.0.1:5557")
    facade.add_argument("--collector", default="tcp://127.0.0.1:5558")
    facade.add_argument("--name", type=segment, required=True)
    facade.add_argument("--subtrees", type=subtree_list, required=True)
    facade.add_argument("--count", type=at_least(1), default=100)
    facade.add_argument("--writes", type=at_least(0), default=0)
    facade.add_argument("--ttl", type=ttl_seconds, default=1)
    facade.add_argument("--silence", type=at_least(1), default=3000)
    facade.add_argument("--timeout", type=at_least(0), default=30000)
    facade.set_defaults(run=run_facade)

    derive = roles.add_parser("derive")
    derive.add_argument("--symbol", type=symbol, required=True)
    derive.add_argument("--prices", type=price_list, required=True)
    derive.add_argument("--sequence", type=at_least(0), default=0)
    derive.set_defaults(run=run_derive)


def segment(value):
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", value):
        raise argparse.ArgumentTypeError("a name is 1 to 32 of A-Z a-z 0-9 _ - (a key segment)")
    return value


def subtree_list(value):
    trees = [b"" if part == "all" else part.encode() for part in value.split(",")]
    for tree, part in zip(trees, value.split(",")):
        if part != "all" and not (len(tree) <= 255 and SUBTREE.fullmatch(tree)):
            raise argparse.ArgumentTypeError(f"{tree.decode()!r} is not a subtree like /prices/ (or all)")
    if len(set(trees)) != len(trees):
        raise argparse.ArgumentTypeError("a subtree is listed twice")
    return trees


def ttl_seconds(value):
    number = int(value)
    if not 1 <= number <= 86400:
        raise argparse.ArgumentTypeError("a ttl is 1 to 86400 seconds")
    return number


def price_list(value):
    try:
        prices = [bytes.fromhex(part) for part in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("prices are 8-byte binary64 values in hex") from None
    if any(len(price) != 8 for price in prices):
        raise argparse.ArgumentTypeError("prices are 8-byte binary64 values in hex")
    return prices


# --- the protocol's pieces -----------------------------------------------------------------


def is_key(data):
    return 2 <= len(data) <= 255 and KEY.fullmatch(data) is not None


def is_subtree(data):
    return data == b"" or (len(data) <= 255 and SUBTREE.fullmatch(data) is not None)


def properties(data):
    """The properties frame as [(name, value)], or None when it is not `name=value\\n` lines."""
    if len(data) > 255:
        return None
    found, at = [], 0
    while at < len(data):
        line = PROPERTY.match(data, at)
        if not line:
            return None
        found.append(line.groups())
        at = line.end()
    return found


def ttl_of(data):
    """The `ttl` property in seconds, 0 for none, or None when the properties are not valid or
    hold a ttl that is not one decimal number of 1 to 86400."""
    found = properties(data)
    ttls = [value for key, value in found or [] if key == b"ttl"]
    if found is None or len(ttls) > 1:
        return None
    if not ttls:
        return 0
    ok = re.fullmatch(rb"[1-9][0-9]{0,4}", ttls[0]) and int(ttls[0]) <= 86400
    return int(ttls[0]) if ok else None


def check_kv(frames):
    """Why a KVSYNC, KVPUB or KVSET (5 frames) is malformed, or None."""
    if len(frames) != 5:
        return f"expected 5 frames, got {len(frames)}{' or more' if len(frames) == MAX_FRAMES else ''}"
    key, sequence, uuid, props, value = frames
    if not is_key(key):
        return f"not a key: {key[:32]!r}"
    if len(sequence) != 8:
        return f"a sequence of {len(sequence)} bytes, not 8"
    if len(uuid) not in (0, 16):
        return f"a UUID of {len(uuid)} bytes, not 0 or 16"
    if ttl_of(props) is None:
        return f"properties that are not name=value lines with at most one ttl of 1 to 86400: {props[:32]!r}"
    if len(value) > MAX_VALUE:
        return f"a value of {len(value)} bytes, more than {MAX_VALUE}"
    return None


def seq(number):
    return struct.pack(">Q", number)  # 8 bytes, big-endian (network order)


def kvset(key, value, ttl=0):
    """A client's write: sequence 0 (the engine numbers it), no UUID, a ttl property if any."""
    return [key, seq(0), b"", f"ttl={ttl}\n".encode() if ttl else b"", value]


def shape(frames):
    """A message for a reason: its frame sizes, and at most 32 bytes of its first frame."""
    return f"{[len(frame) for frame in frames[:MAX_FRAMES]]} bytes, beginning {frames[0][:32]!r}"


def recv_message(socket):
    """The next message, read frame by frame without waiting: at most MAX_FRAMES frames are kept
    (the rest are read and dropped), so no message can make us allocate without bound.
    None if there was nothing after all (POLLIN is a hint)."""
    first = recv_if_ready(socket, whole=False)
    if first is None:
        return None
    frames = [first]
    # [multipart] A message arrives whole or not at all: once its first frame is here, so are the
    # others, and reading them cannot block. Their number is the sender's choice: every command
    # checks it (check_kv and the others), and more than MAX_FRAMES are not even kept.
    while socket.rcvmore:
        frame = socket.recv()
        if len(frames) < MAX_FRAMES:
            frames.append(frame)
    return frames


# --- the map fed by ticks ------------------------------------------------------------------


def tick_cents(price):
    """floor(price x 100 + 0.5): two binary64 operations and an exact floor; None if unusable."""
    if not math.isfinite(price) or not 0 <= price <= 1e9:
        return None
    return math.floor(price * 100 + 0.5)


def decimal(cents):
    return f"{cents // 100}.{cents % 100:02d}".encode()


def derived(stats, symbol, cents):
    """The four derived keys of one tick and their new values; `stats` keeps, per symbol, the
    highest and lowest price in cents and the number of ticks."""
    high, low, count = stats.get(symbol, (cents, cents, 0))
    stats[symbol] = high, low, count = max(high, cents), min(low, cents), count + 1
    return [
        (f"/prices/{symbol}".encode(), decimal(cents)),
        (f"/stats/{symbol}/high".encode(), decimal(high)),
        (f"/stats/{symbol}/low".encode(), decimal(low)),
        (f"/stats/{symbol}/ticks".encode(), str(count).encode()),
    ]


def run_derive(args):
    values, stats, sequence = {}, {}, args.sequence
    for price in args.prices:
        cents = tick_cents(struct.unpack(">d", price)[0])
        if cents is None:
            raise Failure("malformed-tick", f"price {price.hex()} cannot be cents")
        for key, value in derived(stats, args.symbol, cents):
            if values.get(key) != value:  # only what changes is an update
                values[key] = value
                sequence += 1
                emit("encoded", frames=[frame.hex() for frame in (key, seq(sequence), b"", b"", value)])
    emit("done")


# --- engine --------------------------------------------------------------------------------


class Engine:
    """The map (key -> (value, sequence)), its expiries and its sockets' replies."""

    def __init__(self, snapshots, updates, max_keys):
        self.snapshots, self.updates, self.max_keys = snapshots, updates, max_keys
        self.map, self.expiries, self.stats = {}, {}, {}
        self.sequence = self.served = self.abandoned = 0
        self.last_hugz = time.monotonic()
        self.uuid = os.urandom(16)  # who we are: an engine started again draws another

    def update(self, key, value, cause, uuid=b"", props=b""):
        """One update: the next sequence, the map, the KVPUB to every subscriber, the event."""
        self.sequence += 1
        if value:
            self.map[key] = (value, self.sequence)
        else:
            self.map.pop(key, None)
        self.expiries.pop(key, None)
        self.updates.send_multipart([key, seq(self.sequence), uuid, props, value])  # XPUB never blocks
        emit("update", sequence=self.sequence, key=key.decode(), value=value.hex(), cause=cause)

    def hugz(self):
        # The RFC's HUGZ carries 0 and no UUID; ours our sequence (as the Guide's clonesrv) and our
        # UUID, so that a facade knows when the engine it hears is not the one it synced with.
        self.updates.send_multipart([HUGZ, seq(self.sequence), self.uuid, b"", b""])
        self.last_hugz = time.monotonic()

    def on_icanhaz(self, frames):
        if len(frames) != 3 or frames[1] != ICANHAZ or not is_subtree(frames[2]):
            emit("error", code="malformed-icanhaz", reason=f"not [ICANHAZ?, subtree]: {shape(frames[1:] or [b''])}")
            return
        identity, subtree = frames[0], frames[2]
        keys = sorted(key for key in self.map if key.startswith(subtree))
        for sent, key in enumerate(keys):
            value, sequence = self.map[key]
            if why := self.send_to(identity, [key, seq(sequence), b"", b"", value]):
                return self.abandon(subtree, sent, why)
        highest = max((self.map[key][1] for key in keys), default=0)
        if why := self.send_to(identity, [KTHXBAI, seq(highest), b"", b"", subtree]):
            return self.abandon(subtree, len(keys), why)
        self.served += 1
        emit("snapshot", subtree=subtree.decode(), keys=len(keys), sequence=highest, at=self.sequence)

    def send_to(self, identity, frames):
        """Send to one peer through ROUTER, without waiting. With ROUTER_MANDATORY the first frame
        fails when the peer is gone or its queue is full; None when it went out."""
        try:
            self.snapshots.send_multipart([identity, *frames], zmq.DONTWAIT)
        except zmq.Again:
            return "full"
        except zmq.ZMQError as error:
            if error.errno == zmq.EHOSTUNREACH:
                return "gone"
            raise
        return None

    def abandon(self, subtree, sent, why):
        self.abandoned += 1
        emit("abandoned", subtree=subtree.decode(), keys=sent, why=why)

    def on_kvset(self, frames):
        problem = check_kv(frames)
        if problem:
            emit("error", code="malformed-kvset", reason=problem)
            return
        key, _, uuid, props, value = frames
        if value and key not in self.map and len(self.map) >= self.max_keys:
            emit("error", code="map-full", reason=f"{key[:32]!r} would be key {self.max_keys + 1}")
            return
        self.update(key, value, "kvset", uuid, props)
        ttl = ttl_of(props)
        if ttl and value:
            self.expiries[key] = time.monotonic() + ttl

    def on_tick(self, frames, symbols_wanted):
        # A tick as examples/ticker/PROTOCOL.md has it: [symbol NUL, sequence, timestamp, price].
        if len(frames) != 4 or not is_topic(frames[0]) or any(len(frame) != 8 for frame in frames[1:]):
            emit("error", code="malformed-tick", reason=f"not a tick: {shape(frames)}")
            return
        symbol = frames[0][:-1].decode()
        cents = tick_cents(struct.unpack(">d", frames[3])[0])
        if symbol not in symbols_wanted or cents is None:
            emit("error", code="malformed-tick", reason=f"{symbol}: not subscribed, or price {frames[3].hex()} cannot be cents")
            return
        for key, value in derived(self.stats, symbol, cents):
            if self.map.get(key, (None,))[0] != value:
                self.update(key, value, "tick")

    def on_subscription(self, frame):
        if not frame or frame[0] not in (0, 1):
            emit("error", code="malformed-subscription", reason=f"not a subscription: {frame[:32]!r}")
        elif frame[0] == 1 and b"HUGZ".startswith(frame[1:]):
            self.hugz()  # a new subscriber learns at once that its subscriptions are in place

    def expire(self, now):
        for when, key in sorted((when, key) for key, when in self.expiries.items() if when <= now):
            self.update(key, b"", "expired")

    def next_timer(self, hugz_ms):
        due = [self.last_hugz + hugz_ms / 1000, *self.expiries.values()]
        return max(0, int((min(due) - time.monotonic()) * 1000) + 1)


def run_engine(args):
    stop = StopSignal()
    deadline = Deadline(args.timeout)
    context = zmq.Context()
    # [ROUTER] every request arrives with the routing id of its peer in front, and every reply is
    # routed by the routing id we put in front; what it cannot route, it drops in silence, unless
    # MANDATORY: then the send fails instead (EHOSTUNREACH: gone; EAGAIN: its queue is full).
    snapshots = context.socket(zmq.ROUTER)
    snapshots.router_mandatory = 1
    # [HWM] Room for a whole snapshot per peer: the library learns that a peer has read its messages
    # only in batches, so a loop of sends would find 1000 (the default high-water mark) "full" at
    # once. The other queues keep the default: at it, XPUB drops a facade's updates.
    snapshots.sndhwm = min(args.max_keys, 2**31 - 2) + 1  # an int in the library
    # [XPUB] verbose: a PUB on the wire, that hands us every subscription as a message (first byte 1
    # or 0, then the topic), repeated ones too: the engine answers HUGZ to each (slow joiner, below).
    updates = context.socket(zmq.XPUB)
    updates.xpub_verbose = 1
    collector = context.socket(zmq.SUB)  # the facades' writes: subscribed to everything
    collector.subscribe(b"")
    ticks = context.socket(zmq.SUB) if args.ticks else None
    sockets = [s for s in (snapshots, updates, collector, ticks) if s is not None]
    # [linger] 0 on every engine socket: it stops only when told to, and a snapshot or an update
    # still queued then is worth nothing to a facade, which will start over with the next engine.
    for sock in sockets:
        sock.linger = 0
        sock.maxmsgsize = MAX_MESSAGE
    for sock, flag in ((snapshots, "snapshot"), (updates, "updates"), (collector, "collector"), (ticks, "ticks")):
        if sock is not None:
            watch(sock, flag, args)
    endpoints = {"snapshot": bind(snapshots, args.snapshot), "updates": bind(updates, args.updates),
                 "collector": bind(collector, args.collector)}
    if ticks is not None:
        # [SUB] receives only ticks whose frame 0 begins with a subscription. It connects first,
        # then subscribes (PROTOCOL.md): after connect, subscriptions go out in the order made, so
        # the @name the publisher counts comes last; made before connect, they would go out sorted.
        connect(ticks, args.ticks)
        for symbol in args.symbols:  # the symbols first, then the @name the publisher counts
            ticks.subscribe(topic(symbol))
        ticks.subscribe(b"@" + args.name.encode())
    emit("ready", **endpoints)

    engine = Engine(snapshots, updates, args.max_keys)
    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock, zmq.POLLIN)
    while not stop.raised:
        if deadline.expired():
            raise Failure("timeout", f"still serving after {args.timeout} ms")
        # [poll] The four sockets at once, with a timeout up to the next HUGZ or expiry, never past
        # the deadline; each ready one is then read without blocking (POLLIN is a hint). pyzmq
        # resumes a poll a signal interrupted (EINTR) after running the handler, for the time left.
        ready = dict(poller.poll(deadline.cap(engine.next_timer(args.hugz))))
        # One message from each socket that has one, in PROTOCOL.md's order: a flood on one cannot
        # starve the others.
        if snapshots in ready and (frames := recv_message(snapshots)):
            engine.on_icanhaz(frames)
        if updates in ready and (frame := recv_if_ready(updates, whole=False)) is not None:
            engine.on_subscription(frame)  # one frame at a time: each is one subscription
        if collector in ready and (frames := recv_message(collector)):
            engine.on_kvset(frames)
        if ticks in ready and (frames := recv_message(ticks)):
            engine.on_tick(frames, args.symbols)
        now = time.monotonic()
        engine.expire(now)
        if now - engine.last_hugz >= args.hugz / 1000:
            engine.hugz()  # every --hugz ms, busy or not: a facade that hears nothing knows we are gone
    emit("done", sequence=engine.sequence, keys=len(engine.map), snapshots=engine.served, abandoned=engine.abandoned)
    context.destroy()


# --- facade --------------------------------------------------------------------------------


class Mirror:
    """A client's copy of some subtrees of the engine's map: the snapshots, the per-subtree
    watermarks and the updates above them. Events go to `emit` (the desk's query agent sends them
    up its pipe instead of printing them)."""

    def __init__(self, subtrees, emit=emit):
        self.subtrees, self.emit = subtrees, emit
        self.map = {}
        self.waiting = list(subtrees)  # subtrees asked for, whose KTHXBAI is not in yet
        self.watermark = {}  # subtree -> its KTHXBAI's sequence
        self.synced_keys = {tree: 0 for tree in subtrees}
        self.first = self.last = self.applied = self.discarded = 0

    def subtrees_of(self, key):
        return [tree for tree in self.subtrees if key.startswith(tree)]

    def on_snapshot(self, frames):
        if frames[0] == KTHXBAI:
            if len(frames) != 5 or len(frames[1]) != 8 or not is_subtree(frames[4]):
                self.emit("error", code="malformed-kthxbai", reason=f"not [KTHXBAI, sequence, -, -, subtree]: {shape(frames)}")
            elif frames[4] not in self.waiting:
                self.emit("error", code="unexpected-kthxbai", reason=f"no request waits for subtree {frames[4][:32]!r}")
            else:
                tree = frames[4]
                self.waiting.remove(tree)
                self.watermark[tree] = struct.unpack(">Q", frames[1])[0]
                self.emit("synced", subtree=tree.decode(), sequence=self.watermark[tree], keys=self.synced_keys[tree])
            return
        problem = check_kv(frames)
        if not problem and not any(frames[0].startswith(tree) for tree in self.waiting):
            problem = f"{frames[0][:32]!r} is in no subtree still being sent"
        if problem:
            self.emit("error", code="malformed-kvsync", reason=problem)
            return
        key, value = frames[0], frames[4]
        for tree in self.waiting:
            if key.startswith(tree):
                self.synced_keys[tree] += 1
        self.set(key, value)

    def set(self, key, value):
        if value:
            self.map[key] = value
        else:
            self.map.pop(key, None)

    def on_update(self, frames):
        """Apply a KVPUB; (key, sequence, value) when it was applied, None otherwise."""
        if frames[0] == b"HUGZ":
            return None  # a keep-alive: the engine is there
        problem = check_kv(frames)
        trees = [] if problem else self.subtrees_of(frames[0])
        if problem or not trees:
            code = "malformed-kvpub" if problem else "unexpected-key"
            self.emit("error", code=code, reason=problem or f"{frames[0][:32]!r} is in none of our subtrees")
            return None
        key, sequence, value = frames[0], struct.unpack(">Q", frames[1])[0], frames[4]
        # The RFC's late-joiner rule: only what is newer than the snapshot, and than the last update.
        if sequence <= max(self.watermark[tree] for tree in trees) or sequence <= self.last:
            self.discarded += 1
            return None
        self.set(key, value)
        self.first = self.first or sequence
        self.last = sequence
        self.applied += 1
        return key, sequence, value

    def summary(self):
        """The counters and the map, as the facade's `done` (and the query agent's `stopped`) report them."""
        return {"sequence": self.last, "first": self.first,
                "map": {key.decode(): value.hex() for key, value in sorted(self.map.items())},
                "applied": self.applied, "discarded": self.discarded}


class Restarted(Exception):
    """The engine is gone or is a new one (PROTOCOL.md, "Restarts"): start over on new sockets."""

    def __init__(self, why, last):
        super().__init__(why)
        self.why, self.last = why, last


class Facade(Mirror):
    """The facade's scenario on top of its mirror: its writes, and whether they all came back."""

    def __init__(self, args):
        super().__init__(args.subtrees)
        self.args = args
        prefix = f"/facades/{args.name}/".encode()
        self.sees_own = any(prefix.startswith(tree) for tree in args.subtrees)
        self.writes = {prefix + str(n).encode(): f"{args.name}/{n}".encode() for n in range(1, args.writes + 1)}
        self.echoed, self.expired, self.deleted = set(), set(), False
        self.delete_sent = False
        self.seen = 0  # the highest sequence read from the SUB: HUGZ, and KVPUBs applied or not
        self.engine = None  # the UUID in the HUGZ that started the session (empty from an RFC server)

    def follow_engine(self, frames):
        """Whether the SUB still hears the engine of this session: the same UUID in every HUGZ, and
        sequences that only rise (every update above the HUGZ before it, every HUGZ at least the
        updates before it). Anything else comes from another engine."""
        if frames[0] == HUGZ:
            whole = len(frames) == 5 and len(frames[1]) == 8
            uuid, sequence = (frames[2], struct.unpack(">Q", frames[1])[0]) if whole else (b"", 0)
            if self.engine is None:
                self.engine = uuid
            elif uuid != self.engine:
                raise Restarted("engine", self.seen)
            if sequence and sequence < self.seen:  # 0: an RFC server's HUGZ, which says nothing
                raise Restarted("sequence", self.seen)
            self.seen = max(self.seen, sequence)
        elif not check_kv(frames):
            sequence = struct.unpack(">Q", frames[1])[0]
            if sequence <= self.seen:
                raise Restarted("sequence", self.seen)
            self.seen = sequence

    def on_update(self, frames):
        self.follow_engine(frames)
        applied = super().on_update(frames)
        if applied is None:
            return None
        key, _, value = applied
        if key in self.writes and value == self.writes[key]:
            self.echoed.add(key)
        elif key in self.writes and not value:
            if key == min(self.writes) and self.delete_sent:
                self.deleted = True
            elif key in self.echoed:
                self.expired.add(key)
        return applied

    def finished(self):
        if self.waiting or self.applied < self.args.count:
            return False
        if self.last <= max(self.watermark.values(), default=0):
            return False
        if self.sees_own and self.writes:
            ttl_keys = {key for n, key in enumerate(self.writes, 1) if n % 2 == 0}
            return len(self.echoed) == len(self.writes) and self.deleted and ttl_keys <= self.expired
        return True


def connect_facade(updates, snapshot, args):
    """A facade's first steps (the desk's query agent's too): connect the SUB, subscribe to every
    subtree, then to HUGZ, and connect the DEALER."""
    # [SUB] receives only the updates whose key begins with one of its subtrees, and the HUGZ. It
    # connects first, then subscribes (PROTOCOL.md, Facade step 1): after connect, subscriptions
    # go out in the order made, HUGZ last; made before connect, they would go out sorted by bytes.
    connect(updates, args.updates)
    for tree in args.subtrees:
        updates.subscribe(tree)
    updates.subscribe(b"HUGZ")  # last: once a HUGZ arrives, every subscription before it is in place
    connect(snapshot, args.snapshot)


def open_facade(context, args):
    """The facade's sockets, new and connected: [SUB, DEALER, XPUB or None]."""
    # [DEALER] requests go out and replies come in freely, several at a time: no lockstep as with
    # REQ, and no envelope of its own, so which request a reply answers is ours to track (KTHXBAI).
    snapshot = context.socket(zmq.DEALER)
    updates = context.socket(zmq.SUB)
    # XPUB to the collector: a PUB that tells us when the collector's subscription has arrived.
    collector = context.socket(zmq.XPUB) if args.writes else None
    for sock in (snapshot, updates, collector):
        if sock is not None:
            sock.linger = 0  # a session that ends leaves nothing worth sending on these
            sock.maxmsgsize = MAX_MESSAGE
    if collector is not None:
        # [linger] 1000 ms on the collector XPUB alone: the last write (a delete) may still be
        # queued when we exit, and closing waits that long for it to go out.
        collector.linger = 1000
    for sock, flag in ((snapshot, "snapshot"), (updates, "updates"), (collector, "collector")):
        if sock is not None:
            watch(sock, flag, args)
    connect_facade(updates, snapshot, args)
    if collector is not None:
        connect(collector, args.collector)
    return [updates, snapshot, collector]


def run_facade(args):
    deadline = Deadline(args.timeout)
    context = zmq.Context()
    sockets = open_facade(context, args)
    emit("ready", name=args.name, subtrees=[tree.decode() for tree in args.subtrees])
    while True:
        try:
            facade = follow(args, deadline, *sockets)
            break
        except Restarted as restart:
            # Start over on new sockets: the old ones may still hold the old engine's messages.
            for sock in sockets:
                if sock is not None:
                    sock.close(linger=0)  # writes queued for a dead engine are worth nothing
            emit("resynced", why=restart.why, last=restart.last)
            sockets = open_facade(context, args)
    emit("done", **facade.summary())
    context.destroy()


def follow(args, deadline, updates, snapshot, collector):
    """One session with one engine: steps 2 to 6 of the facade. Returns the finished facade, or
    raises Restarted when the engine turns out to be gone or new."""
    facade = Facade(args)
    # [slow joiner] Subscriptions reach the engine some time after connect, and an update published
    # before then never reaches us. The engine answers each subscription to HUGZ with a HUGZ at once,
    # and ours is the last one made: once a HUGZ arrives, every subtree is live. Whatever comes
    # before it is dropped (the snapshot covers it).
    while True:
        if deadline.expired():
            raise Failure("timeout", f"no HUGZ from {args.updates} within {args.timeout} ms")
        frames = recv_message(updates) if updates.poll(deadline.cap(100)) else None
        if frames and frames[0] == HUGZ:
            facade.follow_engine(frames)  # which engine, and its sequence now: every update after it is higher
            break

    heard = time.monotonic()  # when the engine was last heard from: silence means it is gone

    def silent():
        return time.monotonic() - heard >= args.silence / 1000

    for tree in args.subtrees:  # all requests in flight at once on the one DEALER
        snapshot.send_multipart([ICANHAZ, tree])
    while facade.waiting:  # the SUB stays unread meanwhile: its updates wait, in order
        if deadline.expired():
            raise Failure("timeout", f"subtrees {[t.decode() for t in facade.waiting]} never completed")
        frames = recv_message(snapshot) if snapshot.poll(deadline.cap(100)) else None
        if frames:
            heard = time.monotonic()
            facade.on_snapshot(frames)
        elif silent():  # the timer: no KVSYNC or KTHXBAI for --silence ms
            raise Restarted("silence", facade.seen)

    poller = zmq.Poller()
    for sock in (snapshot, updates, collector):
        if sock is not None:
            poller.register(sock, zmq.POLLIN)
    collector_live = False
    while not facade.finished():
        if deadline.expired():
            raise Failure("timeout", f"applied {facade.applied} updates, up to {facade.last}, and was not done")
        ready = dict(poller.poll(deadline.cap(100)))
        # The ready sockets in PROTOCOL.md's order, one message each: DEALER, SUB, XPUB.
        if snapshot in ready and (frames := recv_message(snapshot)):
            emit("error", code="unexpected-snapshot", reason=f"{frames[0][:32]!r} after every KTHXBAI")
        if updates in ready and (frames := recv_message(updates)):
            heard = time.monotonic()
            facade.on_update(frames)
        elif silent():  # the timer, checked before the XPUB: a silent engine gets no write from us
            raise Restarted("silence", facade.seen)  # not even a HUGZ, which it sends every --hugz ms
        if collector in ready and (frame := recv_if_ready(collector, whole=False)) is not None:
            if frame == b"\x01" and not collector_live:  # the collector's subscription to everything
                collector_live = True
                for n, (key, value) in enumerate(facade.writes.items(), 1):
                    ttl = args.ttl if n % 2 == 0 else 0
                    collector.send_multipart(kvset(key, value, ttl))
                    emit("wrote", key=key.decode(), value=value.hex(), ttl=ttl)
        if collector_live and not facade.delete_sent and len(facade.echoed) == len(facade.writes):
            first = next(iter(facade.writes))
            collector.send_multipart(kvset(first, b""))
            facade.delete_sent = True
            emit("wrote", key=first.decode(), value="", ttl=0)
    return facade
