"""valuation: a PUSH/PULL pipeline with a control channel (examples/valuation/PROTOCOL.md)."""
import argparse
import struct
import time

import zmq

from .contract import MAX_NAME, Deadline, Failure, StopSignal, at_least, bind, connect, emit, name, recv_if_ready
from .monitor import watch
from .ticker import GOLDEN, MASK, seed, splitmix64

SYMBOLS = ["AAPL", "GOOG", "GOOGL", "MSFT", "IBM"]
RESEND_BATCH = 1000  # ids per resend message
# [max size] ZMQ_MAXMSGSIZE, on every socket, send-only ones too (a library still decodes what a
# peer sends), set before bind or connect: libzmq drops a bigger frame together with the sender's
# connection. The largest legal frames are a 32-byte worker name, `finished` and 8-byte ids.
MAX_MESSAGE = 256


def add_roles(roles):
    sink = roles.add_parser("sink")
    sink.add_argument("--results", default="tcp://127.0.0.1:5560")
    sink.add_argument("--control", default="tcp://127.0.0.1:5561")
    sink.add_argument("--workers", type=at_least(1), default=1)
    sink.add_argument("--count", type=at_least(1), default=100)
    sink.add_argument("--quiet", type=at_least(1), default=1000)
    sink.add_argument("--heartbeat", type=at_least(1), default=100)
    sink.add_argument("--seed", type=seed, default=1)
    sink.add_argument("--timeout", type=at_least(0), default=0)
    sink.set_defaults(run=run_sink)

    source = roles.add_parser("source")
    source.add_argument("--orders", default="tcp://127.0.0.1:5562")
    source.add_argument("--control", default="tcp://127.0.0.1:5561")
    source.add_argument("--count", type=at_least(1), default=100)
    source.add_argument("--seed", type=seed, default=1)
    source.add_argument("--timeout", type=at_least(0), default=30000)
    source.set_defaults(run=run_source)

    worker = roles.add_parser("worker")
    worker.add_argument("--orders", default="tcp://127.0.0.1:5562")
    worker.add_argument("--results", default="tcp://127.0.0.1:5560")
    worker.add_argument("--control", default="tcp://127.0.0.1:5561")
    worker.add_argument("--name", type=name, required=True)
    worker.add_argument("--rate", type=at_least(0), default=0)
    worker.add_argument("--timeout", type=at_least(0), default=30000)
    worker.set_defaults(run=run_worker)

    encode = roles.add_parser("encode")
    encode.add_argument("--seed", type=seed, required=True)
    encode.add_argument("--id", type=seed, required=True)
    encode.set_defaults(run=run_encode)


# --- orders: a generator anyone can recompute -------------------------------------------------


def order(seed_value, order_id):
    """(symbol, side, quantity, cents) of order `order_id`."""
    z1 = splitmix64(seed_value ^ ((order_id * GOLDEN) & MASK))
    z2 = splitmix64(z1)
    z3 = splitmix64(z2)
    return SYMBOLS[z1 % 5], "B" if z2 % 2 == 0 else "S", 1 + (z2 >> 1) % 1000, 100 + z3 % 100000


def order_frames(seed_value, order_id):
    symbol, side, quantity, cents = order(seed_value, order_id)
    # ">" is big-endian: Q unsigned 64-bit, I unsigned 32-bit, q signed 64-bit.
    return [struct.pack(">Q", order_id), symbol.encode(), side.encode(), struct.pack(">I", quantity), struct.pack(">q", cents)]


def value(side, quantity, cents):
    return quantity * cents * (1 if side == "B" else -1)


def send_when_room(socket, frames, deadline, what):
    """Send on a PUSH socket, waiting for room with a poll, never past the deadline. The send
    itself does not wait: should the room the poll saw be gone (the peer left), back to the poll."""
    while True:
        # [HWM] PUSH blocks (the mute state) while no puller is connected, or while every connected
        # puller's queue is at its high-water mark (1000 messages); it never drops. POLLOUT says
        # when there is room again.
        if socket.poll(deadline.cap(1000), zmq.POLLOUT):
            try:
                return socket.send_multipart(frames, zmq.DONTWAIT)
            except zmq.Again:
                pass
        if deadline.expired():
            raise Failure("timeout", f"no room to send {what}")


def run_encode(args):
    frames = order_frames(args.seed, args.id)
    _, side, quantity, cents = order(args.seed, args.id)
    emit("encoded", frames=[frame.hex() for frame in frames], value=value(side, quantity, cents))
    emit("done")


# --- sink ------------------------------------------------------------------------------------


def name_problem(frame):
    """Why a worker name is not 1 to 32 bytes of UTF-8, or None. Never more than 32 bytes of the
    peer's frame go into the reason."""
    if not 1 <= len(frame) <= MAX_NAME:
        return f"a worker name of {len(frame)} bytes, not 1 to {MAX_NAME}"
    try:
        frame.decode()
    except UnicodeDecodeError:
        return f"the worker name {frame!r} is not UTF-8"
    return None


def check_ready(frames):
    """The first broken rule of a ready, as (code, reason), or None when it is well formed."""
    # [multipart] A message arrives whole or not at all: recv_multipart gives every frame of it.
    # The frame count is the sender's choice, so it is checked here, never assumed.
    if len(frames) != 2:
        return "malformed-ready", f"a ready has 2 frames, got {len(frames)}"
    problem = name_problem(frames[1])
    return ("malformed-ready", problem) if problem else None


def check_result(frames, count, seed_value):
    """(worker, id, value) of a result, or (code, reason). The sink trusts nothing a worker says:
    the value must be the one it recomputes from the seed, so the total is a sum of known values,
    each within ±1000 × 100099, and cannot overflow a signed 64-bit integer in any language."""
    if len(frames) != 4 or frames[0] != b"result" or len(frames[2]) != 8 or len(frames[3]) != 8:
        return "malformed-result", f"not [result, name, id, value]: {[len(f) for f in frames][:8]} bytes"
    problem = name_problem(frames[1])
    if problem:
        return "malformed-result", problem
    (order_id,) = struct.unpack(">Q", frames[2])
    if not 1 <= order_id <= count:
        return "unknown-id", f"id {order_id} is not in 1..{count}"
    (amount,) = struct.unpack(">q", frames[3])
    _, side, quantity, cents = order(seed_value, order_id)
    if amount != value(side, quantity, cents):
        return "wrong-value", f"order {order_id} is worth {value(side, quantity, cents)}, not {amount}"
    return frames[1].decode(), order_id, amount


def run_sink(args):
    stop = StopSignal()
    deadline = Deadline(args.timeout)
    context = zmq.Context()
    # [PULL] fair-queues: readiness and results are read from every connected worker in turn.
    results = context.socket(zmq.PULL)
    # [PUB] the control channel: every message to every connected subscriber (the source, the
    # workers); it never blocks, and drops for a subscriber not connected yet or past its HWM.
    control = context.socket(zmq.PUB)
    # [linger] 0 on both: the sink leaves only when told to, and the source and the workers leave
    # only on `finished`, which comes once every result is in; nothing queued at exit is needed.
    for sock in (results, control):
        sock.linger = 0
        sock.maxmsgsize = MAX_MESSAGE  # PUB too: it still decodes what subscribers send it
    watch(results, "results", args)
    watch(control, "control", args)
    emit("ready", results=bind(results, args.results), control=bind(control, args.control))

    state = b"waiting"
    ready, values, priced, resent = set(), {}, {}, set()
    next_beat = quiet_since = time.monotonic()

    def set_state(new):
        nonlocal state
        state = new
        control.send(state)  # at once; the heartbeat repeats it for late joiners

    while not stop.raised:
        if deadline.expired():
            raise Failure("timeout", f"still running after {args.timeout} ms with {len(values)} results")
        wait_ms = max(0, int((next_beat - time.monotonic()) * 1000))
        # [poll] PULL is the one socket to read (PUB only sends): polled with a timeout up to the
        # next heartbeat, never past the deadline, then read without blocking (POLLIN is a hint).
        # pyzmq resumes a poll a signal interrupted (EINTR) after running the handler, for the time
        # left: a heartbeat at most, then the stop flag is seen. One message per turn.
        frames = recv_if_ready(results) if results.poll(deadline.cap(wait_ms), zmq.POLLIN) else None
        if frames is None:
            pass  # no message (the poll timed out, or had nothing after all): on to the timers
        elif frames[0] == b"ready" and (problem := check_ready(frames)):
            emit("error", code=problem[0], reason=problem[1])  # not a worker: --workers waits on
        elif frames[0] == b"ready":
            worker = frames[1].decode()
            if worker not in ready:
                ready.add(worker)
                emit("worker", name=worker)
            if state == b"waiting" and len(ready) >= args.workers:
                set_state(b"go")
                emit("started", workers=len(ready))
                quiet_since = time.monotonic()
        elif len(checked := check_result(frames, args.count, args.seed)) == 2:
            emit("error", code=checked[0], reason=checked[1])  # not counted: the id stays missing
        else:
            worker, order_id, amount = checked
            if order_id in values and order_id in resent:
                emit("late-duplicate", id=order_id, worker=worker)  # we asked for it twice
            elif order_id in values:
                emit("error", code="duplicate", reason=f"a second result for order {order_id}, from {worker}")
            else:
                values[order_id] = amount
                priced[worker] = priced.get(worker, 0) + 1
                quiet_since = time.monotonic()
                emit("result", id=order_id, worker=worker)
                if len(values) == args.count:
                    set_state(b"finished")
                    emit("complete", total=sum(values.values()), workers=priced, resent=sorted(resent))
        now = time.monotonic()
        if state == b"go" and now - quiet_since >= args.quiet / 1000:
            # PUSH dropped what was queued for a worker that died: ask the source again.
            missing = [i for i in range(1, args.count + 1) if i not in values]
            for start in range(0, len(missing), RESEND_BATCH):
                batch = missing[start:start + RESEND_BATCH]
                control.send_multipart([b"resend"] + [struct.pack(">Q", i) for i in batch])
            resent.update(missing)
            emit("resend", ids=missing)
            quiet_since = now
        if now >= next_beat:
            # [slow joiner] A subscriber hears only what is published once its subscription has
            # reached us: the state is level-triggered, repeated every heartbeat, so a late one
            # learns it within a heartbeat instead of missing an edge.
            control.send(state)
            next_beat = now + args.heartbeat / 1000
    emit("done", orders=len(values), total=sum(values.values()))
    context.destroy()


# --- source ----------------------------------------------------------------------------------


def run_source(args):
    deadline = Deadline(args.timeout)
    context = zmq.Context()
    # [PUSH] deals orders round-robin to the connected workers; at the high-water mark it blocks
    # and never drops (send_when_room, above). What is queued for a worker that dies is lost.
    orders = context.socket(zmq.PUSH)
    # [SUB] subscribed to "" before it connects: every control message, states and resends alike.
    control = context.socket(zmq.SUB)
    for sock in (orders, control):
        sock.linger = 0  # we leave only on `finished`: nothing we sent is still needed
        sock.maxmsgsize = MAX_MESSAGE  # PUSH too: it still decodes what a peer sends it
    control.subscribe(b"")
    watch(orders, "orders", args)
    watch(control, "control", args)
    bound = bind(orders, args.orders)
    connect(control, args.control)
    emit("ready", orders=bound)

    def next_control():
        """One turn of the source's loops: the deadline, then the next control message, or None
        after a second without one (no timer to serve: the wait is the deadline, a second at most)."""
        if deadline.expired():
            raise Failure("timeout", f"not finished after {args.timeout} ms")
        if control.poll(deadline.cap(1000), zmq.POLLIN):
            return recv_if_ready(control)
        return None

    def send(order_id):
        send_when_room(orders, order_frames(args.seed, order_id), deadline, f"order {order_id}")

    while (message := next_control()) != [b"go"]:
        pass
    for order_id in range(1, args.count + 1):
        send(order_id)
    emit("sent", orders=args.count)
    sent = args.count
    while (message := next_control()) != [b"finished"]:
        if message and message[0] == b"resend":
            # The ids of our orders, 8 bytes each; anything else is no order of ours: ignored.
            ids = [i for i in (struct.unpack(">Q", frame)[0] for frame in message[1:] if len(frame) == 8)
                   if 1 <= i <= args.count]
            for order_id in ids:
                send(order_id)
            sent += len(ids)
            emit("resent", ids=ids)
    emit("done", sent=sent)
    context.destroy()


# --- worker ----------------------------------------------------------------------------------


def check_order(frames):
    """(id, side, quantity, cents) of an order, or (code, reason)."""
    sizes = [len(frame) for frame in frames]
    if len(frames) != 5 or sizes[0] != 8 or not 1 <= sizes[1] <= 8 or sizes[2] != 1 or sizes[3] != 4 or sizes[4] != 8:
        return "malformed-order", f"frame sizes {sizes}, expected [8, 1-8, 1, 4, 8]"
    if not (frames[1].isalpha() and frames[1].isupper()) or frames[2] not in (b"B", b"S"):
        return "malformed-order", f"symbol {frames[1]!r} or side {frames[2]!r}"
    (order_id,) = struct.unpack(">Q", frames[0])
    (quantity,) = struct.unpack(">I", frames[3])
    (cents,) = struct.unpack(">q", frames[4])
    if not (1 <= quantity <= 1000 and 100 <= cents <= 100099):  # so no value can overflow
        return "malformed-order", f"quantity {quantity} or price {cents} cents out of range"
    return order_id, frames[2].decode(), quantity, cents


def run_worker(args):
    deadline = Deadline(args.timeout)
    context = zmq.Context()
    orders = context.socket(zmq.PULL)  # fair-queued from every source connected (here, one)
    results = context.socket(zmq.PUSH)  # to the one sink; at its high-water mark, a send waits
    control = context.socket(zmq.SUB)
    # We leave only on `finished`, once the sink has every result. If we die instead, the orders
    # queued for us are lost, whatever the linger: the sink has them sent again.
    for sock in (orders, results, control):
        sock.linger = 0
        sock.maxmsgsize = MAX_MESSAGE
    control.subscribe(b"")
    for sock, flag in ((orders, "orders"), (results, "results"), (control, "control")):
        watch(sock, flag, args)
    connect(orders, args.orders)  # PULL first: connected long before the source deals the batch
    connect(results, args.results)
    connect(control, args.control)

    # The slow joiner: once one control message has arrived, no later one can be missed.
    first = None
    while first is None:
        if deadline.expired():
            raise Failure("timeout", "no control message from the sink")
        first = recv_if_ready(control) if control.poll(deadline.cap(1000), zmq.POLLIN) else None
    finished = first == [b"finished"]
    hello = [b"ready", args.name.encode()]
    send_when_room(results, hello, deadline, "ready")
    emit("ready", name=args.name)

    both = zmq.Poller()  # one wait for both sockets: no busy loop
    both.register(orders, zmq.POLLIN)
    both.register(control, zmq.POLLIN)
    control_only = zmq.Poller()
    control_only.register(control, zmq.POLLIN)
    count = 0
    next_order = time.monotonic()
    while not finished:
        if deadline.expired():
            raise Failure("timeout", f"not finished after {args.timeout} ms")
        wait_ms = int((next_order - time.monotonic()) * 1000)
        if args.rate and wait_ms > 0:  # --rate: until the next order is due, listen to control only
            ready = dict(control_only.poll(deadline.cap(wait_ms)))
        else:  # no timer to serve: a second at most
            ready = dict(both.poll(deadline.cap(1000)))
        # The ready sockets in PROTOCOL.md's order, one message each: PULL, then SUB.
        frames = recv_if_ready(orders) if orders in ready else None
        if frames is not None and len(checked := check_order(frames)) == 2:
            emit("error", code=checked[0], reason=checked[1])
        elif frames is not None:
            order_id, side, quantity, cents = checked
            result = [b"result", args.name.encode(), struct.pack(">Q", order_id), struct.pack(">q", value(side, quantity, cents))]
            send_when_room(results, result, deadline, f"the result of order {order_id}")
            count += 1
            emit("priced", id=order_id)
            if args.rate:
                next_order = time.monotonic() + 1 / args.rate
        if control in ready:
            state = recv_if_ready(control)  # states and resends; resends are the source's business
            finished = state == [b"finished"]
            if state == [b"waiting"]:  # a sink waiting for its workers, a restarted one too: ready again
                send_when_room(results, hello, deadline, "ready")
    emit("done", priced=count)
    context.destroy()
