"""ticker: data distribution over PUB/SUB with an XSUB/XPUB proxy (examples/ticker/PROTOCOL.md)."""
import argparse
import struct
import threading
import time

import zmq

from .contract import MAX_NAME, Deadline, Failure, StopSignal, Usage, at_least, bind, connect, emit, name, recv_if_ready
from .monitor import watch

MASK = (1 << 64) - 1  # arithmetic modulo 2**64, as the protocol says
GOLDEN = 0x9E3779B97F4A7C15
# [max size] ZMQ_MAXMSGSIZE, on every network socket, set before bind or connect: libzmq drops a
# bigger frame together with the sender's connection. The largest legal frames are a subscription,
# 1 + "@" + a 32-byte name = 34 bytes, and a tick's 9-byte topic; a huge subscription would
# otherwise grow the XPUB's topic trie.
MAX_MESSAGE = 256


def add_roles(roles):
    publisher = roles.add_parser("publisher")
    publisher.add_argument("--ticks", default="tcp://127.0.0.1:5557")
    publisher.add_argument("--symbols", type=symbols, default="AAPL,GOOG,GOOGL,MSFT,IBM")
    publisher.add_argument("--seed", type=seed, default=1)
    publisher.add_argument("--subscribers", type=at_least(1), default=1)
    publisher.add_argument("--interval", type=at_least(1), default=2)
    publisher.add_argument("--timeout", type=at_least(0), default=0)
    publisher.set_defaults(run=run_publisher)

    proxy = roles.add_parser("proxy")
    proxy.add_argument("--upstream", default="tcp://127.0.0.1:5557")
    proxy.add_argument("--downstream", default="tcp://127.0.0.1:5558")
    proxy.add_argument("--timeout", type=at_least(0), default=0)
    proxy.set_defaults(run=run_proxy)

    subscriber = roles.add_parser("subscriber")
    subscriber.add_argument("--ticks", default="tcp://127.0.0.1:5557")
    subscriber.add_argument("--name", type=name, required=True)
    subscriber.add_argument("--symbols", type=symbols, required=True)
    subscriber.add_argument("--count", type=at_least(1), default=20)
    subscriber.add_argument("--seed", type=seed, default=1)
    subscriber.add_argument("--switch", type=switch, default=None)
    subscriber.add_argument("--switch-after", type=at_least(1), default=10)
    subscriber.add_argument("--timeout", type=at_least(0), default=30000)
    subscriber.set_defaults(run=run_subscriber)

    encode = roles.add_parser("encode")
    encode.add_argument("--seed", type=seed, required=True)
    encode.add_argument("--symbol", type=symbol, required=True)
    encode.add_argument("--sequence", type=seed, required=True)
    encode.add_argument("--timestamp", type=timestamp, required=True)
    encode.set_defaults(run=run_encode)


def symbol(value):
    if not (1 <= len(value) <= 8 and value.isascii() and value.isalpha() and value.isupper()):
        raise argparse.ArgumentTypeError("a symbol is 1 to 8 letters A-Z")
    return value


MAX_SYMBOLS = 32  # symbols in one list flag (a subscriber's subscriptions, a publisher's round)


def symbols(value):
    names = [symbol(part) for part in value.split(",")]
    if len(names) > MAX_SYMBOLS or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"1 to {MAX_SYMBOLS} symbols, none twice")
    return names


def seed(value):
    number = int(value)
    if not 0 <= number <= MASK:
        raise argparse.ArgumentTypeError("must be an unsigned 64-bit integer")
    return number


def timestamp(value):
    number = int(value)
    if not -(1 << 63) <= number < (1 << 63):
        raise argparse.ArgumentTypeError("must be a signed 64-bit integer")
    return number


def switch(value):
    old, _, new = value.partition(":")
    return symbol(old), symbol(new)


# --- the tick: prices anyone can recompute ---------------------------------------------------


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & MASK
    return h


def splitmix64(x):
    z = (x + GOLDEN) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def cents(seed_value, name, sequence):
    return 1000 + splitmix64(seed_value ^ fnv1a64(name.encode()) ^ ((sequence * GOLDEN) & MASK)) % 99001


def topic(name):
    """Frame 0: the symbol and a NUL, so that subscribing to GOOG does not also match GOOGL."""
    return name.encode() + b"\0"


def is_name(data):
    try:
        return 1 <= len(data) <= MAX_NAME and bool(data.decode())
    except UnicodeDecodeError:
        return False


def is_topic(data):
    """1 to 8 letters A-Z, then the NUL."""
    return 2 <= len(data) <= 9 and data.endswith(b"\0") and data[:-1].isalpha() and data[:-1].isupper()


def tick_frames(seed_value, name, sequence, timestamp):
    # ">" is big-endian (network order): Q unsigned 64-bit, q signed 64-bit, d IEEE binary64.
    price = cents(seed_value, name, sequence) / 100
    return [topic(name), struct.pack(">Q", sequence), struct.pack(">q", timestamp), struct.pack(">d", price)]


def run_encode(args):
    frames = tick_frames(args.seed, args.symbol, args.sequence, args.timestamp)
    emit("encoded", frames=[frame.hex() for frame in frames], cents=cents(args.seed, args.symbol, args.sequence))
    emit("done")


# --- publisher -------------------------------------------------------------------------------


def run_publisher(args):
    stop = StopSignal()
    deadline = Deadline(args.timeout)
    context = zmq.Context()
    # [XPUB] a PUB that also hands us each subscription coming from downstream, as a message: first
    # byte 1 (subscribe) or 0 (unsubscribe), then the topic.
    ticks = context.socket(zmq.XPUB)
    # [linger] 0: the publisher stops only when told to, and ticks still queued then are for
    # subscribers that have what they need; closing drops them.
    ticks.linger = 0
    ticks.maxmsgsize = MAX_MESSAGE
    # [HWM] Like PUB, XPUB queues at most 1000 ticks (the default high-water mark) for each
    # subscriber, and drops that subscriber's ticks at the mark: it never blocks the publisher.
    watch(ticks, "ticks", args)
    emit("ready", ticks=bind(ticks, args.ticks))

    topics = set()  # the topics reported as subscribed or joined and not unsubscribed since
    subscribers = set()  # every @name ever joined
    sequence = 0  # every symbol gets one tick per round, so they share the round number
    next_round = None  # publishing starts once every subscriber is there
    while not stop.raised:
        if deadline.expired():
            raise Failure("timeout", f"still publishing after {args.timeout} ms")
        wait_ms = 100 if next_round is None else max(0, int((next_round - time.monotonic()) * 1000))
        # [poll] The one socket, polled with a timeout up to the next round (100 ms before the
        # first), never past the deadline; then read without blocking, as POLLIN is a hint. pyzmq
        # resumes a poll that a signal interrupted (EINTR) after running the handler.
        # [multipart] Here, one frame at a time, whatever its more flag: each is one subscription
        # change on its own, and a peer can send several in one multipart message.
        frame = recv_if_ready(ticks, whole=False) if ticks.poll(deadline.cap(wait_ms), zmq.POLLIN) else None
        if frame is not None:
            on_subscription(frame, topics, subscribers)
            # [slow joiner] Nothing is published before --subscribers @name topics have arrived: a
            # tick sent before a subscriber's subscriptions reach us is dropped for it. Each
            # subscriber subscribes to its @name last, so by then its symbols are in place.
            if next_round is None and len(subscribers) >= args.subscribers:
                emit("started", subscribers=len(subscribers))
                next_round = time.monotonic()
        if next_round is not None and time.monotonic() >= next_round:
            sequence += 1
            now_ms = int(time.time() * 1000)
            for name in args.symbols:
                ticks.send_multipart(tick_frames(args.seed, name, sequence, now_ms))
            next_round += args.interval / 1000
    emit("done", rounds=sequence, ticks=sequence * len(args.symbols))
    context.destroy()


def on_subscription(frame, topics, subscribers):
    """A subscription frame: 1 (subscribe) or 0 (unsubscribe), then the topic. XPUB passes on one
    subscribe per topic and one unsubscribe when its last subscriber leaves, but not every library
    keeps to that for every frame of a multipart message; so the publisher keeps its own set,
    `topics`, and reports a change only when it changes that set."""
    if len(frame) < 2 or frame[0] not in (0, 1):
        emit("error", code="malformed-subscription", reason=f"not a subscription: {frame[:40]!r}")
        return
    on, topic_bytes = frame[0] == 1, frame[1:]
    is_subscriber = topic_bytes.startswith(b"@") and is_name(topic_bytes[1:])
    if not (is_subscriber or is_topic(topic_bytes)):
        emit("error", code="malformed-subscription", reason=f"unknown topic {topic_bytes[:40]!r}")
    elif on and topic_bytes not in topics:
        topics.add(topic_bytes)
        if is_subscriber:
            subscribers.add(topic_bytes[1:].decode())
            emit("joined", subscriber=topic_bytes[1:].decode())
        else:
            emit("subscribed", symbol=topic_bytes[:-1].decode())
    elif not on and topic_bytes in topics:
        topics.remove(topic_bytes)
        if not is_subscriber:  # a subscriber that leaves is still counted: nothing to report
            emit("unsubscribed", symbol=topic_bytes[:-1].decode())


# --- proxy -----------------------------------------------------------------------------------


def run_steerable_proxy(upstream, downstream, control):
    """libzmq's proxy gives up (EAGAIN) when it finds a message unfinished: a subscriber can leave
    one, since XPUB passes on the first frames of a multipart message and drops a last frame that
    repeats a subscription (PROTOCOL.md, "Proxy"). The sockets are still good: start it again."""
    while True:
        try:
            return zmq.proxy_steerable(upstream, downstream, None, control)
        except zmq.Again:
            emit("error", code="proxy-restarted", reason="the library's proxy found a message left unfinished by a peer")


def run_proxy(args):
    stop = StopSignal()
    deadline = Deadline(args.timeout)
    context = zmq.Context()
    # [XSUB] faces the publisher: a SUB whose subscriptions are messages that someone sends it,
    # here the proxy, passing on what arrives at the XPUB; it receives the ticks.
    upstream = context.socket(zmq.XSUB)
    # [XPUB] faces the subscribers: sends them ticks, and hands each subscription to the proxy.
    downstream = context.socket(zmq.XPUB)
    # [PAIR] The proxy's own control channel: two PAIR sockets, each with exactly one peer.
    # [inproc] It never leaves the process: the context itself carries the messages, so both ends
    # share it, and the end that binds does so before the other connects.
    control, steer = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    # [linger] 0 on all four: the proxy stops only when told to, and what is queued then, either
    # way, is not worth waiting for.
    for sock in (upstream, downstream, control, steer):
        sock.linger = 0
    for sock in (upstream, downstream):  # not the inproc PAIRs: nothing is decoded there
        sock.maxmsgsize = MAX_MESSAGE
    # [HWM] Subscriptions go upstream once per topic (XPUB passes on only the first): one dropped at
    # the send high-water mark during a flood would be lost for good. No limit on XSUB's sends.
    upstream.sndhwm = 0
    watch(upstream, "upstream", args)
    watch(downstream, "downstream", args)
    bound = bind(downstream, args.downstream)
    connect(upstream, args.upstream)
    control.bind("inproc://proxy-control")
    steer.connect("inproc://proxy-control")

    # [proxy] The library's own loop moves ticks downstream and subscriptions upstream, in a thread
    # of its own, until it reads TERMINATE on its control socket: that is how it is stopped. Sockets
    # are not thread-safe: from here on only that thread touches upstream, downstream and control.
    # [poll] The proxy polls its sockets itself; this thread only waits for a signal or the deadline.
    proxy = threading.Thread(target=run_steerable_proxy, args=(upstream, downstream, control))
    proxy.start()
    emit("ready", downstream=bound)
    stopped = stop.wait(deadline.remaining_ms())
    steer.send(b"TERMINATE")
    proxy.join()
    if not stopped:
        raise Failure("timeout", f"still proxying after {args.timeout} ms")
    emit("done")
    context.destroy()


# --- subscriber ------------------------------------------------------------------------------


def check_tick(frames, subscribed, seed_value):
    """The tick's (symbol, sequence, timestamp, price), or (code, reason) for a bad one."""
    # [multipart] A tick arrives whole or not at all: recv_multipart hands us all of its frames.
    # Whoever sent them chose how many, so the count is checked, never assumed.
    if len(frames) != 4:
        return "malformed-tick", f"expected 4 frames, got {len(frames)}"
    name_bytes = frames[0]
    if not is_topic(name_bytes):
        return "malformed-tick", f"frame 0 is not a symbol and a NUL: {name_bytes[:12]!r}"
    if any(len(frame) != 8 for frame in frames[1:]):
        return "malformed-tick", f"frames 1-3 have {[len(f) for f in frames[1:]]} bytes, not 8 each"
    (sequence,) = struct.unpack(">Q", frames[1])
    if sequence >= 1 << 63:  # past what every language's JSON numbers carry alike; no publisher gets there
        return "malformed-tick", f"sequence {sequence} is 2^63 or more"
    name = name_bytes[:-1].decode()
    if name not in subscribed:
        return "unexpected-symbol", f"{name} is not subscribed"
    (timestamp,) = struct.unpack(">q", frames[2])
    expected = tick_frames(seed_value, name, sequence, timestamp)[3]
    if frames[3] != expected:
        return "wrong-price", f"{name} #{sequence}: price bytes {frames[3].hex()}, expected {expected.hex()}"
    (price,) = struct.unpack(">d", frames[3])
    return name, sequence, timestamp, price


def run_subscriber(args):
    if args.switch and (args.switch[0] not in args.symbols or args.switch[1] in args.symbols):
        raise Usage("--switch OLD:NEW needs OLD among --symbols and NEW not")
    deadline = Deadline(args.timeout)
    context = zmq.Context()
    # [SUB] receives only ticks whose frame 0 begins with one of its subscriptions (a symbol and
    # its NUL). Unlike most SUBs here it connects BEFORE it subscribes, as PROTOCOL.md says: after
    # connect, each subscription is queued for the publisher in the order made, while those made
    # before connect go out sorted by bytes, which would put our @name ("@" < "A") first.
    sub = context.socket(zmq.SUB)
    # [linger] 0: we leave once every symbol has delivered; nothing we could still send matters.
    sub.linger = 0
    sub.maxmsgsize = MAX_MESSAGE
    watch(sub, "ticks", args)
    connect(sub, args.ticks)
    subscribed = list(args.symbols)
    for name in subscribed:
        sub.subscribe(topic(name))
    # Last, our own topic: the publisher waits for it, and by then our symbols are in place.
    sub.subscribe(b"@" + args.name.encode())
    emit("ready", name=args.name, symbols=subscribed)

    received = {name: 0 for name in subscribed}
    last = {}  # each symbol's last sequence: a jump is a gap, reported as such
    old, new = args.switch or (None, None)
    switched = old is None
    total = malformed = 0
    while not (switched and all(received[name] >= args.count for name in subscribed)):
        if deadline.expired():
            missing = {name: n for name, n in received.items() if n < args.count}
            raise Failure("timeout", f"not done after {args.timeout} ms; ticks so far: {missing}")
        # No timer to serve: the wait is the deadline, a second at most, which is checked above
        # after every message as well as after an idle poll.
        frames = recv_if_ready(sub) if sub.poll(deadline.cap(1000), zmq.POLLIN) else None
        if frames is None:
            continue
        checked = check_tick(frames, subscribed, args.seed)
        if len(checked) == 2:
            malformed += 1
            emit("error", code=checked[0], reason=checked[1])
            continue
        name, sequence, timestamp, price = checked
        total += 1
        received[name] += 1
        # PUB/SUB drops silently: ticks published while the path to us was down (a proxy that
        # restarted) or while a queue was full (the HWM) are gone. Say so, never hide it.
        if name in last and sequence > last[name] + 1:
            emit("gap", symbol=name, after=last[name], next=sequence)
        last[name] = sequence
        emit("tick", symbol=name, sequence=sequence, timestamp=timestamp, price=price)
        if name == old and received[old] == args.switch_after:
            # The SUB socket filters by its current subscriptions as it delivers: no tick of OLD
            # comes after this, even one already queued.
            sub.unsubscribe(topic(old))
            subscribed.remove(old)
            emit("unsubscribed", symbol=old)
            sub.subscribe(topic(new))
            subscribed.append(new)
            received.setdefault(new, 0)
            emit("subscribed", symbol=new)
            switched = True
    emit("done", ticks=total, malformed=malformed)
    context.destroy()

